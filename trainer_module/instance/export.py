"""Instance SavedModel (signatures and label map from trainer_module.export_utils).

Both signatures return, for a batch of B images (Hmax x Wmax = the largest original size in the batch):
  detection_boxes   float32 [B, D, 4] ymin, xmin, ymax, xmax normalised to the ORIGINAL image
  detection_scores  float32 [B, D]
  detection_classes int64   [B, D]   the dataset's own category ids (0 on padding)
  detection_masks   uint8   [B, D, Hmax, Wmax] 0/1, pasted into the original image
  num_detections    int32   [B]
"""
from __future__ import annotations

import tensorflow as tf

from trainer_module.export_utils import ImageServingModule, save_serving_module
from trainer_module.instance.preprocessing import decode_rgb, resize_and_pad
from trainer_module.models.mask_rcnn.mask_ops import paste_masks


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

    def _prepare(self, image_bytes):
        image = decode_rgb(image_bytes)
        original = tf.shape(image)[:2]
        canvas, (new_h, new_w) = resize_and_pad(image, self.image_size)
        inside = tf.cast(tf.sequence_mask(new_h, self.image_size)[:, None] &
                         tf.sequence_mask(new_w, self.image_size)[None, :], tf.float32)[..., None]
        canvas = (canvas - self.pixel_mean) / self.pixel_std * inside
        return canvas, original, tf.stack([new_h, new_w])

    def predict(self, encoded_images):
        s = self.image_size
        canvas, original, resized = tf.map_fn(
            self._prepare, encoded_images,
            fn_output_signature=(tf.TensorSpec([s, s, 3], tf.float32), tf.TensorSpec([2], tf.int32),
                                 tf.TensorSpec([2], tf.int32)))
        out = self._detect(canvas)
        resized_f = tf.cast(tf.tile(resized, [1, 2]), tf.float32)[:, None, :]
        original_f = tf.cast(tf.tile(original, [1, 2]), tf.float32)[:, None, :]
        boxes = tf.clip_by_value(out["detection_boxes"] / resized_f, 0.0, 1.0)
        height = tf.reduce_max(original[:, 0])
        width = tf.reduce_max(original[:, 1])
        masks = paste_masks(out["detection_mask_probs"], boxes * original_f, height, width)
        classes = tf.gather(self.category_ids, out["detection_classes"])
        return {"detection_boxes": boxes, "detection_scores": out["detection_scores"],
                "detection_classes": classes, "detection_masks": masks,
                "num_detections": out["num_detections"]}


def export_model(model, hp: dict, category_ids: list[int], pixel_mean, pixel_std, label_map: dict,
                 export_dir: str) -> None:
    module = InstanceServingModule(model, hp["image_size"], category_ids, pixel_mean, pixel_std)
    save_serving_module(module, label_map, export_dir)
