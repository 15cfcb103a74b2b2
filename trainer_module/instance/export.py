"""SavedModel export of a trained Mask R-CNN with two serving signatures.

`serving_default(examples)`: serialized raw tf.Examples (only `image/encoded` is read) - for TFMA.
`serving_images(images)`: encoded JPEG/PNG bytes.
Both return, for a batch of B images (Hmax x Wmax = the largest original size in the batch):
  detection_boxes   float32 [B, D, 4] ymin, xmin, ymax, xmax normalised to the ORIGINAL image
  detection_scores  float32 [B, D]
  detection_classes int64   [B, D]   the dataset's own category ids (0 on padding)
  detection_masks   uint8   [B, D, Hmax, Wmax] 0/1, pasted into the original image
  num_detections    int32   [B]
Preprocessing repeats Transform's resize-and-pad with the analyzers' mean/std baked in.
"""
from __future__ import annotations

import json
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
import tensorflow as tf

from trainer_module.instance.preprocessing import IMAGE_KEY, decode_rgb, resize_and_pad
from trainer_module.models.mask_rcnn.model import paste_masks


class InstanceServing(tf.Module):
    def __init__(self, model, image_size: int, label_ids: list[int], pixel_mean, pixel_std):
        super().__init__()
        self.model = model
        self.image_size = int(image_size)
        self.class_ids = tf.constant([0] + [int(i) for i in label_ids], tf.int64)
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

    def detect(self, encoded_images):
        s = self.image_size
        canvas, original, resized = tf.map_fn(
            self._prepare, encoded_images,
            fn_output_signature=(tf.TensorSpec([s, s, 3], tf.float32), tf.TensorSpec([2], tf.int32),
                                 tf.TensorSpec([2], tf.int32)))
        out = self.model(canvas, training=False)
        resized_f = tf.cast(tf.tile(resized, [1, 2]), tf.float32)[:, None, :]
        original_f = tf.cast(tf.tile(original, [1, 2]), tf.float32)[:, None, :]
        boxes = tf.clip_by_value(out["detection_boxes"] / resized_f, 0.0, 1.0)
        height = tf.reduce_max(original[:, 0])
        width = tf.reduce_max(original[:, 1])
        masks = paste_masks(out["detection_mask_probs"], boxes * original_f, height, width)
        classes = tf.gather(self.class_ids, out["detection_classes"])
        return {"detection_boxes": boxes, "detection_scores": out["detection_scores"],
                "detection_classes": classes, "detection_masks": masks,
                "num_detections": out["num_detections"]}


def export_instance_model(model, hp: dict, label_ids: list[int], pixel_mean, pixel_std,
                          label_map: dict, export_dir: str) -> None:
    module = InstanceServing(model, hp["image_size"], label_ids, pixel_mean, pixel_std)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
    def serving_images(images):
        return module.detect(images)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serving_default(examples):
        parsed = tf.io.parse_example(examples, {IMAGE_KEY: tf.io.FixedLenFeature([], tf.string)})
        return module.detect(parsed[IMAGE_KEY])

    tf.saved_model.save(module, export_dir, signatures={"serving_default": serving_default,
                                                        "serving_images": serving_images})
    assets = os.path.join(export_dir, "assets")
    tf.io.gfile.makedirs(assets)
    with tf.io.gfile.GFile(os.path.join(assets, "label_map.json"), "w") as f:
        f.write(json.dumps(label_map))
