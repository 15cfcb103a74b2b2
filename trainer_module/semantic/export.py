"""Semantic SavedModel: the transform graph applied in the signatures (trainer_module.export_utils).

Both signatures -> {"class_ids": int32 [batch, Hmax, Wmax]}: each image's prediction at its original
size in the top-left corner, the rest padded with IGNORE_LABEL (TFMA splits the batch per example;
the mIoU metric crops to the ground-truth size).

A third signature, `serving_tflite` (TFLITE_SIGNATURE, what trainer_module.on_device converts), has a
static batch of one and no string ops:
  image   uint8 [1, H, W, 3]  the image resized bilinearly to H x W (trainer.image_size) as
                              Transform's `decode_images` does (the host rounds it to uint8:
                              trainer_module.semantic.tflite)
  -> logits float32 [1, H, W, C]  (normalised with the analyzers' pixel mean/std inside the graph;
                              the host resizes them to the original size and takes the argmax with
                              `predict_class_ids`, as the other signatures do)."""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from components.contract import IGNORE_LABEL, IMAGE_ENCODED
from trainer_module.export_utils import ImageServingModule, save_serving_module
from trainer_module.on_device import TFLITE_SIGNATURE
from trainer_module.semantic.model import predict_logits


def predict_class_ids(logits, heights, widths):
    """float [B, H, W, C] logits, int32 [B] sizes -> int32 [B, max h, max w] (IGNORE_LABEL padded)."""
    max_h, max_w = tf.reduce_max(heights), tf.reduce_max(widths)

    def one(args):
        image_logits, h, w = args
        resized = tf.image.resize(image_logits, tf.stack([h, w]), method="bilinear")
        ids = tf.argmax(resized, axis=-1, output_type=tf.int32)
        return tf.pad(ids, [[0, max_h - h], [0, max_w - w]], constant_values=IGNORE_LABEL)

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


class SemanticServingModule(ImageServingModule):
    def __init__(self, model, tft_output, pixel_mean=None, pixel_std=None, flip: bool = False):
        super().__init__(model)
        self._logits = lambda images: predict_logits(model, images, flip)
        if pixel_mean is not None and pixel_std is not None:
            # (x - mean) / std = x * (1 / std) - mean / std, per channel: a 1x1 convolution with a
            # diagonal kernel and a bias (see tflite_function).
            inverse = 1.0 / np.asarray(pixel_std, np.float32).reshape(-1)
            self._normalize_kernel = tf.constant(np.diag(inverse).reshape(1, 1, inverse.size, inverse.size), tf.float32)
            self._normalize_bias = tf.constant(-np.asarray(pixel_mean, np.float32).reshape(-1) * inverse, tf.float32)
        self.tft_layer = tft_output.transform_features_layer()
        # Serving feeds only the image feature; the transform graph prunes the label branch.
        self._image_is_sparse = isinstance(tft_output.raw_feature_spec()[IMAGE_ENCODED], tf.io.VarLenFeature)

    def _raw_features(self, encoded):
        """Encoded images in the raw schema's form (dense [B, 1] or sparse), as Transform saw them."""
        if self._image_is_sparse:
            batch = tf.shape(encoded, out_type=tf.int64)[0]
            indices = tf.stack([tf.range(batch), tf.zeros([batch], tf.int64)], axis=1)
            return {IMAGE_ENCODED: tf.SparseTensor(indices, encoded, tf.stack([batch, 1]))}
        return {IMAGE_ENCODED: tf.reshape(encoded, [-1, 1])}

    def predict(self, encoded_images):
        transformed = self.tft_layer(self._raw_features(encoded_images))
        logits = self._logits(transformed["image"])
        heights, widths = _image_sizes(encoded_images)
        return {"class_ids": predict_class_ids(logits, heights, widths)}

    def tflite_function(self, height: int, width: int):
        """The `serving_tflite` tf.function: uint8 [1, H, W, 3] -> {"logits": float32 [1, H, W, C]}."""

        @tf.function(input_signature=[tf.TensorSpec([1, height, width, 3], tf.uint8, name="image")])
        def serve_tflite(image):
            # The normalisation as one 1x1 CONV_2D in TFLite, not a SUB and a MUL broadcasting 3
            # values over H*W pixels: XNNPACK runs those broadcasts slowly (at 512x512, int8: ~5 ms
            # vs ~1.4 ms; float16: ~4 ms vs ~1.2 ms, one thread). The same numbers up to rounding.
            normalized = tf.nn.conv2d(tf.cast(image, tf.float32), self._normalize_kernel, 1, "VALID")
            normalized = normalized + self._normalize_bias
            return {"logits": tf.cast(self._logits(normalized), tf.float32)}

        return serve_tflite


def export_model(model, tft_output, label_map: dict, export_dir: str, pixel_mean=None, pixel_std=None,
                 flip: bool = False) -> None:
    """The SavedModel; with the analyzers' pixel_mean/pixel_std (semantic.input_pipeline.analyzer_values)
    also `serving_tflite` (without them, e.g. a transform graph made before they were output, not).
    `flip`: every signature predicts with test-time flip (semantic.model.predict_logits)."""
    module = SemanticServingModule(model, tft_output, pixel_mean, pixel_std, flip)
    extra = {}
    if pixel_mean is not None and pixel_std is not None:
        height, width, _ = tft_output.transformed_feature_spec()["image"].shape
        extra[TFLITE_SIGNATURE] = module.tflite_function(int(height), int(width))
    save_serving_module(module, label_map, export_dir, extra)
