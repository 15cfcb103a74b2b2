"""Instance SavedModel (signatures and label map from trainer_module.export_utils).

Both signatures return, for a batch of B images (Hmax x Wmax = the largest original size in the batch):
  detection_boxes   float32 [B, D, 4] ymin, xmin, ymax, xmax normalised to the ORIGINAL image
  detection_scores  float32 [B, D]
  detection_classes int64   [B, D]   the dataset's own category ids (0 on padding)
  detection_masks   uint8   [B, D, Hmax, Wmax] 0/1, pasted into the original image
  num_detections    int32   [B]

A third signature, `serving_tflite` (TFLITE_SIGNATURE, what trainer_module.on_device converts), has a
static batch of one and no string ops:
  image         uint8 [1, S, S, 3]  the `resize_and_pad` canvas (rounded to uint8 by the host:
                                    trainer_module.instance.tflite)
  resized_size  int32 [1, 2]        height, width of the image on the canvas: the padding is zeroed
                                    after normalisation, exactly as in the other signatures
  -> detection_boxes float32 [1, D, 4] in canvas pixels, detection_scores float32 [1, D],
     detection_classes int32 [1, D] dataset category ids (0 on padding), detection_mask_probs
     float32 [1, D, 28, 28], num_detections int32 [1]
The host finishes with `to_original_image` (normalised boxes, masks pasted at the original size),
the function `predict` below ends with.
"""
from __future__ import annotations

import tensorflow as tf

from trainer_module.export_utils import ImageServingModule, save_serving_module
from trainer_module.instance.preprocessing import decode_rgb, resize_and_pad
from trainer_module.models.mask_rcnn.mask_ops import paste_masks
from trainer_module.on_device import TFLITE_SIGNATURE


class InstanceServingModule(ImageServingModule):
    # The transform graph is not applied here: the instance preprocessing_fn decodes and resizes each
    # image in the same map_fn as its boxes and masks, so that graph cannot run on images alone.
    # Serving repeats its image part with the same functions and the analyzers' mean/std.
    def __init__(self, model, image_size: int, category_ids: list[int], pixel_mean, pixel_std):
        super().__init__(model)
        self._detect = lambda images: model(images, training=False)
        self.image_size = int(image_size)
        self.category_ids = tf.constant([0] + [int(i) for i in category_ids], tf.int64)
        self.pixel_mean = tf.constant(pixel_mean, tf.float32)
        self.pixel_std = tf.constant(pixel_std, tf.float32)

    def _normalize(self, canvas, new_h, new_w):
        """[..., S, S, 3] canvas in 0..255 -> normalised, zero outside the new_h x new_w image (scalars)."""
        inside = tf.cast(tf.sequence_mask(new_h, self.image_size)[:, None] &
                         tf.sequence_mask(new_w, self.image_size)[None, :], tf.float32)[..., None]
        return (canvas - self.pixel_mean) / self.pixel_std * inside

    def _prepare(self, image_bytes):
        image = decode_rgb(image_bytes)
        original = tf.shape(image)[:2]
        canvas, (new_h, new_w) = resize_and_pad(image, self.image_size)
        return self._normalize(canvas, new_h, new_w), original, tf.stack([new_h, new_w])

    def predict(self, encoded_images):
        s = self.image_size
        canvas, original, resized = tf.map_fn(
            self._prepare, encoded_images,
            fn_output_signature=(tf.TensorSpec([s, s, 3], tf.float32), tf.TensorSpec([2], tf.int32),
                                 tf.TensorSpec([2], tf.int32)))
        out = self._detect(canvas)
        boxes, masks = to_original_image(out["detection_boxes"], out["detection_mask_probs"], resized, original)
        classes = tf.gather(self.category_ids, out["detection_classes"])
        return {"detection_boxes": boxes, "detection_scores": out["detection_scores"],
                "detection_classes": classes, "detection_masks": masks,
                "num_detections": out["num_detections"]}

    def tflite_function(self):
        """The `serving_tflite` tf.function (see the module docstring)."""
        s = self.image_size

        @tf.function(input_signature=[tf.TensorSpec([1, s, s, 3], tf.uint8, name="image"),
                                      tf.TensorSpec([1, 2], tf.int32, name="resized_size")])
        def serve_tflite(image, resized_size):
            canvas = self._normalize(tf.cast(image, tf.float32), resized_size[0, 0], resized_size[0, 1])
            out = self._detect(canvas)
            classes = tf.gather(tf.cast(self.category_ids, tf.int32), tf.cast(out["detection_classes"], tf.int32))
            return {"detection_boxes": tf.cast(out["detection_boxes"], tf.float32),
                    "detection_scores": tf.cast(out["detection_scores"], tf.float32),
                    "detection_classes": classes,
                    "detection_mask_probs": tf.cast(out["detection_mask_probs"], tf.float32),
                    "num_detections": tf.cast(out["num_detections"], tf.int32)}

        return serve_tflite


def to_original_image(canvas_boxes, mask_probs, resized, original):
    """Detections on the canvas -> the original image: boxes [B, D, 4] in canvas pixels -> normalised
    to the original image (divided by the resized size, clipped to [0, 1]); mask probabilities
    [B, D, 28, 28] -> uint8 0/1 [B, D, Hmax, Wmax] pasted at each original size. resized, original:
    int32 [B, 2] (height, width)."""
    resized_f = tf.cast(tf.tile(resized, [1, 2]), tf.float32)[:, None, :]
    original_f = tf.cast(tf.tile(original, [1, 2]), tf.float32)[:, None, :]
    boxes = tf.clip_by_value(canvas_boxes / resized_f, 0.0, 1.0)
    height = tf.reduce_max(original[:, 0])
    width = tf.reduce_max(original[:, 1])
    return boxes, paste_masks(mask_probs, boxes * original_f, height, width)


def export_model(model, hp: dict, category_ids: list[int], pixel_mean, pixel_std, label_map: dict,
                 export_dir: str) -> None:
    module = InstanceServingModule(model, hp["image_size"], category_ids, pixel_mean, pixel_std)
    save_serving_module(module, label_map, export_dir, {TFLITE_SIGNATURE: module.tflite_function()})
