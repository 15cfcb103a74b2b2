"""Transform's semantic `preprocessing_fn`: raw tf.Examples (components.contract) -> training-ready features.

Outputs (all fixed-size, so the Trainer parses them with static shapes):
  image            float32 [H, W, 3]  resized (bilinear) to image_size (S for S x S, or [H, W]),
                                      normalised with the dataset's per-channel pixel mean/std
                                      (tft analyzers)
  label            int64   [H, W]     class-id PNG resized with nearest neighbour (IGNORE_LABEL kept)
  class_frequency  float32 [N]        dataset-wide pixel frequency of each class (tft analyzer; the
                                      same vector in every example: the Trainer reads it once for
                                      class-balanced loss weights)
  pixel_mean, pixel_std float32 [3]   the analyzer values used for `image` (identical in every
                                      example, like class_frequency: the export bakes them into the
                                      on-device signature, serving_tflite, which takes uint8 pixels)
The transform graph is exported with the model, so serving applies exactly this preprocessing.
"""
from __future__ import annotations

import tensorflow as tf
import tensorflow_transform as tft

from components.contract import CLASS_MAP_ENCODED, IMAGE_ENCODED, image_hw, semantic_num_classes
from components.errors import InputError
from trainer_module.semantic.hparams import hparams_from_config


def _one_string_per_example(feature):
    """[B] strings from a schema-fixed [B, 1] dense tensor or a variable-length SparseTensor."""
    if isinstance(feature, tf.SparseTensor):
        feature = tf.sparse.to_dense(feature, default_value="")
        feature = tf.pad(feature, [[0, 0], [0, 1]])  # an example without the value still has column 0
    elif feature.shape.rank == 1:
        return feature
    return feature[:, 0]


def decode_images(images, size):
    """[B] encoded JPEG/PNG -> float32 [B, H, W, 3] in 0..255 (bilinear resize to image_size `size`)."""
    height, width = image_hw(size)

    def one(image_bytes):
        image = tf.image.decode_image(image_bytes, channels=3, expand_animations=False)
        image.set_shape([None, None, 3])
        return tf.image.resize(tf.cast(image, tf.float32), [height, width], method="bilinear")

    return tf.map_fn(one, images, fn_output_signature=tf.TensorSpec([height, width, 3], tf.float32))


def decode_labels(labels, size):
    """[B] single-channel class-id PNGs -> int64 [B, H, W] (nearest neighbour keeps IGNORE_LABEL intact)."""
    height, width = image_hw(size)

    def one(label_bytes):
        label = tf.image.decode_png(label_bytes, channels=1)
        return tf.cast(tf.image.resize(label, [height, width], method="nearest")[..., 0], tf.int64)

    return tf.map_fn(one, labels, fn_output_signature=tf.TensorSpec([height, width], tf.int64))


def preprocessing_fn(inputs, custom_config):
    hp = hparams_from_config(custom_config)
    num_classes = semantic_num_classes(hp.get("label_map"))
    for key in (IMAGE_ENCODED, CLASS_MAP_ENCODED):
        if key not in inputs:
            raise InputError(f"raw examples lack the feature {key!r} (features: {sorted(inputs)})")
    size = image_hw(hp["image_size"])
    # Decoded separately so that serving, which feeds only images, prunes the label branch away.
    images = decode_images(_one_string_per_example(inputs[IMAGE_ENCODED]), size)
    labels = decode_labels(_one_string_per_example(inputs[CLASS_MAP_ENCODED]), size)

    # Per-channel mean/std over all pixels: every image has H*W pixels after resizing, so the mean
    # of per-image means is the pixel mean.
    channel_mean = tft.mean(tf.reduce_mean(images, axis=[1, 2]), reduce_instance_dims=False)
    channel_sq_mean = tft.mean(tf.reduce_mean(tf.square(images), axis=[1, 2]), reduce_instance_dims=False)
    channel_std = tf.sqrt(tf.maximum(channel_sq_mean - tf.square(channel_mean), 1e-6))
    normalized = (images - channel_mean) / channel_std

    # Per-class pixel counts (ignore and out-of-range values land in an extra bin, dropped).
    flat = tf.reshape(labels, [-1, size[0] * size[1]])
    binned = tf.where((flat >= 0) & (flat < num_classes), flat, tf.cast(num_classes, tf.int64))
    counts = tf.math.bincount(tf.cast(binned, tf.int32), minlength=num_classes + 1,
                              maxlength=num_classes + 1, axis=-1, dtype=tf.float32)[:, :num_classes]
    counts.set_shape([None, num_classes])  # static, so the output feature is FixedLen [N]
    total_counts = tft.sum(counts, reduce_instance_dims=False)
    frequency = total_counts / tf.maximum(tf.reduce_sum(total_counts), 1.0)
    batch = tf.shape(images)[0]
    return {
        "image": normalized,
        "label": labels,
        "class_frequency": tf.tile(tf.expand_dims(frequency, 0), [batch, 1]),
        "pixel_mean": tf.tile(tf.expand_dims(channel_mean, 0), [batch, 1]),
        "pixel_std": tf.tile(tf.expand_dims(channel_std, 0), [batch, 1]),
    }
