"""Transform's instance `preprocessing_fn`: raw tf.Examples (components.contract) -> fixed-size
training features.

Outputs per example (S = image_size, M = max_instances, Sm = S / mask_stride):
  image        float32 [S, S, 3]  resized keeping aspect ratio (longer side = S), normalised with
                                  the dataset's per-channel mean/std (tft analyzers), zero padding
  boxes        float32 [M, 4]     ymin, xmin, ymax, xmax in pixels of the S x S canvas
  classes      int64   [M]        labels 1..N; 0 = padding or crowd region
  masks        int64   [M, Sm, Sm] 0/1 instance masks on the canvas at 1/mask_stride resolution
  resized_size int64   [2]        height, width of the image on the canvas (before padding)
  pixel_mean, pixel_std float32 [3]  the analyzer values (identical in every example; the export
                                  bakes them into the serving signatures)
Images with more than M instances keep their first M (the ingestion order).
"""
from __future__ import annotations

import tensorflow as tf
import tensorflow_transform as tft

from components.contract import (
    IMAGE_ENCODED,
    OBJECT_IS_CROWD,
    OBJECT_LABEL,
    OBJECT_MASK,
    OBJECT_XMAX,
    OBJECT_XMIN,
    OBJECT_YMAX,
    OBJECT_YMIN,
)
from components.errors import InputError
from trainer_module.instance.hparams import hparams_from_config

BOX_KEYS = (OBJECT_YMIN, OBJECT_XMIN, OBJECT_YMAX, OBJECT_XMAX)


def resized_shape(height, width, size: int):
    """Shape of an image of height x width scaled so its longer side is `size` (int32 pair)."""
    h = tf.cast(height, tf.float32)
    w = tf.cast(width, tf.float32)
    scale = size / tf.maximum(h, w)
    return (tf.cast(tf.maximum(tf.round(h * scale), 1.0), tf.int32),
            tf.cast(tf.maximum(tf.round(w * scale), 1.0), tf.int32))


def resize_and_pad(image, size: int, method: str = "bilinear"):
    """[h, w, c] -> ([size, size, c] float32 resized keeping aspect ratio, top-left aligned,
    zero padded; (new_h, new_w))."""
    new_h, new_w = resized_shape(tf.shape(image)[0], tf.shape(image)[1], size)
    resized = tf.image.resize(tf.cast(image, tf.float32), [new_h, new_w], method=method)
    padded = tf.pad(resized, [[0, size - new_h], [0, size - new_w], [0, 0]])
    padded.set_shape([size, size, image.shape[-1]])
    return padded, (new_h, new_w)


def decode_rgb(image_bytes):
    image = tf.image.decode_image(image_bytes, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def _dense(feature, default, width: int | None = None):
    """Variable-length feature (SparseTensor or dense) -> dense [B, width] padded with default."""
    if isinstance(feature, tf.SparseTensor):
        feature = tf.sparse.to_dense(feature, default_value=default)
    if feature.shape.rank == 1:
        feature = feature[:, None]
    if width is not None:
        feature = feature[:, :width]
        feature = tf.pad(feature, [[0, 0], [0, width - tf.shape(feature)[1]]], constant_values=default)
        feature.set_shape([None, width])
    return feature


def _counts(feature):
    """Number of values per example of a variable-length feature: [B] int32."""
    if isinstance(feature, tf.SparseTensor):
        rows = feature.indices[:, 0]
        counts = tf.math.unsorted_segment_sum(tf.ones_like(rows, tf.int32), rows, feature.dense_shape[0])
    else:
        counts = tf.fill([tf.shape(feature)[0]], tf.shape(feature)[1])
    counts.set_shape([None])
    return counts


def preprocessing_fn(inputs, custom_config):
    hp = hparams_from_config(custom_config)
    missing = [k for k in (IMAGE_ENCODED, OBJECT_LABEL, OBJECT_MASK) + BOX_KEYS if k not in inputs]
    if missing:
        raise InputError(f"raw examples lack the features {missing} (features: {sorted(inputs)})")
    size = int(hp["image_size"])
    m = int(hp["max_instances"])
    stride = int(hp["mask_stride"])
    mask_size = size // stride

    images = _dense(inputs[IMAGE_ENCODED], "")[:, 0]
    counts = tf.minimum(_counts(inputs[OBJECT_LABEL]), m)
    labels = _dense(inputs[OBJECT_LABEL], tf.constant(0, tf.int64), m)
    crowd = (_dense(inputs[OBJECT_IS_CROWD], tf.constant(0, tf.int64), m) if OBJECT_IS_CROWD in inputs
             else tf.zeros_like(labels))
    boxes = tf.stack([_dense(inputs[k], 0.0, m) for k in BOX_KEYS], axis=-1)
    masks = _dense(inputs[OBJECT_MASK], "", m)

    def one(args):
        image_bytes, norm_boxes, mask_bytes, count = args
        image, (new_h, new_w) = resize_and_pad(decode_rgb(image_bytes), size)
        scale = tf.cast(tf.stack([new_h, new_w, new_h, new_w]), tf.float32)
        pixel_boxes = norm_boxes * scale

        def decode_mask(png):
            mask = tf.image.decode_png(png, channels=1)
            small = tf.image.resize(tf.cast(mask, tf.float32),
                                    [tf.maximum(new_h // stride, 1), tf.maximum(new_w // stride, 1)],
                                    method="bilinear")
            small = tf.pad(small, [[0, mask_size - tf.shape(small)[0]], [0, mask_size - tf.shape(small)[1]],
                                   [0, 0]])
            return tf.cast(small[..., 0] >= 0.5, tf.int64)

        decoded = tf.map_fn(decode_mask, mask_bytes[:count],
                            fn_output_signature=tf.TensorSpec([mask_size, mask_size], tf.int64))
        decoded = tf.pad(decoded, [[0, m - count], [0, 0], [0, 0]])
        decoded.set_shape([m, mask_size, mask_size])
        valid = tf.cast(tf.sequence_mask(count, m)[:, None], tf.float32)
        # Pixel statistics over the real image area only (not the padding).
        area = tf.cast(new_h * new_w, tf.float32)
        channel_sum = tf.reduce_sum(image, axis=[0, 1]) / area
        channel_sq = tf.reduce_sum(tf.square(image), axis=[0, 1]) / area
        return (image, pixel_boxes * valid, decoded, tf.stack([new_h, new_w]), channel_sum, channel_sq)

    image, pixel_boxes, decoded_masks, resized, mean_i, sq_i = tf.map_fn(
        one, (images, boxes, masks, counts),
        fn_output_signature=(tf.TensorSpec([size, size, 3], tf.float32), tf.TensorSpec([m, 4], tf.float32),
                             tf.TensorSpec([m, mask_size, mask_size], tf.int64), tf.TensorSpec([2], tf.int32),
                             tf.TensorSpec([3], tf.float32), tf.TensorSpec([3], tf.float32)))
    pixel_mean = tft.mean(mean_i, reduce_instance_dims=False)
    pixel_sq = tft.mean(sq_i, reduce_instance_dims=False)
    pixel_std = tf.sqrt(tf.maximum(pixel_sq - tf.square(pixel_mean), 1e-6))
    inside = tf.cast(tf.sequence_mask(resized[:, 0], size)[:, :, None] &
                     tf.sequence_mask(resized[:, 1], size)[:, None, :], tf.float32)[..., None]
    normalized = (image - pixel_mean) / pixel_std * inside
    valid = tf.sequence_mask(counts, m)
    classes = tf.where(valid & tf.equal(crowd, 0), labels, tf.zeros_like(labels))
    batch = tf.shape(images)[0]
    return {
        "image": normalized,
        "boxes": pixel_boxes,
        "classes": classes,
        "masks": decoded_masks,
        "resized_size": tf.cast(resized, tf.int64),
        "pixel_mean": tf.tile(pixel_mean[None], [batch, 1]),
        "pixel_std": tf.tile(pixel_std[None], [batch, 1]),
    }
