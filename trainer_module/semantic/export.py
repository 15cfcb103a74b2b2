"""SavedModel export with the transform graph inside.

Signatures:
  serving_default(examples: tf.string [None])  serialized raw tf.Examples as ExampleGen writes them
  serving_images(images: tf.string [None])     encoded JPEG/PNG bytes
both -> {"class_ids": int32 [batch, Hmax, Wmax]}: each image's prediction at its original size in the
top-left corner, the rest padded with 255 (TFMA splits the batch per example; the mIoU metric crops
to the ground-truth size). The label map travels as assets/label_map.json.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf  # noqa: E402

from trainer_module.preprocessing import IMAGE_KEY  # noqa: E402

PAD_LABEL = 255


def predict_class_ids(logits, heights, widths):
    """float [B, S, S, C] logits, int32 [B] sizes -> int32 [B, max h, max w] (255 padded)."""
    max_h, max_w = tf.reduce_max(heights), tf.reduce_max(widths)

    def one(args):
        image_logits, h, w = args
        resized = tf.image.resize(image_logits, tf.stack([h, w]), method="bilinear")
        ids = tf.argmax(resized, axis=-1, output_type=tf.int32)
        return tf.pad(ids, [[0, max_h - h], [0, max_w - w]], constant_values=PAD_LABEL)

    return tf.map_fn(one, (logits, heights, widths),
                     fn_output_signature=tf.TensorSpec([None, None], tf.int32))


def _image_sizes(encoded):
    """Original (height, width) of each encoded image, int32 [B] each (header-only for JPEG)."""

    def one(data):
        is_jpeg = tf.strings.substr(data, 0, 3) == b"\xff\xd8\xff"
        shape = tf.cond(is_jpeg, lambda: tf.image.extract_jpeg_shape(data),
                        lambda: tf.shape(tf.image.decode_image(data, channels=3, expand_animations=False)))
        return tf.cast(shape[:2], tf.int32)

    sizes = tf.map_fn(one, encoded, fn_output_signature=tf.TensorSpec([2], tf.int32))
    return sizes[:, 0], sizes[:, 1]


class SemanticServingModule(tf.Module):
    def __init__(self, model, tft_output, label_map: dict):
        super().__init__()
        # Track the model's variables, not the Keras model: saving a Keras model traces every layer's
        # call (minutes for a backbone); the signatures below capture the variables they use.
        self.model_variables = list(model.variables)
        self._logits = lambda images: model(images, training=False)
        self.tft_layer = tft_output.transform_features_layer()
        # Serving feeds only the image feature; the transform graph prunes the label branch.
        self._image_spec = {IMAGE_KEY: tft_output.raw_feature_spec()[IMAGE_KEY]}
        # Saved as assets/label_map.json (an Asset keeps its file's base name).
        self._asset_dir = tempfile.mkdtemp(prefix="segpipe_label_map_")
        path = os.path.join(self._asset_dir, "label_map.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(label_map, f, indent=1)
        self.label_map_file = tf.saved_model.Asset(path)

    def _predict(self, raw_image_features, encoded):
        transformed = self.tft_layer(raw_image_features)
        logits = self._logits(transformed["image"])
        heights, widths = _image_sizes(encoded)
        return {"class_ids": predict_class_ids(logits, heights, widths)}

    def _raw_features(self, encoded):
        """Feeds encoded images in the raw schema's form (dense [B, 1] or sparse)."""
        spec = self._image_spec[IMAGE_KEY]
        if isinstance(spec, tf.io.VarLenFeature):
            batch = tf.shape(encoded, out_type=tf.int64)[0]
            indices = tf.stack([tf.range(batch), tf.zeros([batch], tf.int64)], axis=1)
            return {IMAGE_KEY: tf.SparseTensor(indices, encoded, tf.stack([batch, 1]))}
        return {IMAGE_KEY: tf.reshape(encoded, [-1, 1])}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve_examples(self, examples):
        features = tf.io.parse_example(examples, self._image_spec)
        encoded = features[IMAGE_KEY]
        if isinstance(encoded, tf.SparseTensor):
            encoded = tf.sparse.to_dense(encoded, default_value="")
        encoded = tf.reshape(encoded, [-1])
        return self._predict(features, encoded)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
    def serve_images(self, images):
        return self._predict(self._raw_features(images), images)


def export_semantic_model(model, tft_output, label_map: dict, export_dir: str) -> None:
    module = SemanticServingModule(model, tft_output, label_map)
    signatures = {
        "serving_default": module.serve_examples.get_concrete_function(),
        "serving_images": module.serve_images.get_concrete_function(),
    }
    try:
        tf.saved_model.save(module, export_dir, signatures=signatures)
    finally:
        shutil.rmtree(module._asset_dir, ignore_errors=True)
