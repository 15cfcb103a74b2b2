"""tf.data over Transform's semantic output: static shapes, augmentation, drop_remainder."""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from components.contract import IGNORE_LABEL, image_hw
from components.errors import InputError
from trainer_module.training import tfrecord_dataset


def color_jitter(image, strength: float, seeds):
    """Photometric augmentation of a normalised image (unit-std channels, so one scale fits all):
    brightness shift in [-strength, strength], contrast and saturation factors in
    [1 - strength, 1 + strength], in random order of the last two. Other light, same labels."""
    brightness = tf.random.stateless_uniform([], seeds[0], -strength, strength)
    contrast = tf.random.stateless_uniform([], seeds[1], 1.0 - strength, 1.0 + strength)
    saturation = tf.random.stateless_uniform([], seeds[2], 1.0 - strength, 1.0 + strength)

    def adjust_contrast(x):
        mean = tf.reduce_mean(x, axis=[0, 1], keepdims=True)
        return (x - mean) * contrast + mean

    def adjust_saturation(x):
        gray = tf.reduce_mean(x, axis=-1, keepdims=True)
        return (x - gray) * saturation + gray

    image = image + brightness
    contrast_first = tf.random.stateless_uniform([], seeds[3]) < 0.5
    return tf.cond(contrast_first, lambda: adjust_saturation(adjust_contrast(image)),
                   lambda: adjust_contrast(adjust_saturation(image)))


def augment(image, label, size, min_scale: float, max_scale: float, flip: bool, seed,
            jitter: float = 0.0):
    """Random scale (one factor for both sides: bilinear image, nearest label), random crop back to
    image_size `size` (S or [H, W]) (padding: 0 for the normalised image = the mean colour, IGNORE_LABEL for the
    label), random horizontal flip, and with `jitter` > 0 photometric jitter (color_jitter)."""
    height, width = image_hw(size)
    seeds = tf.random.experimental.stateless_split(seed, 4)
    scale = tf.random.stateless_uniform([], seeds[0], min_scale, max_scale)
    scaled_h = tf.cast(tf.round(scale * height), tf.int32)
    scaled_w = tf.cast(tf.round(scale * width), tf.int32)
    image = tf.image.resize(image, [scaled_h, scaled_w], method="bilinear")
    label = tf.image.resize(label[..., None], [scaled_h, scaled_w], method="nearest")[..., 0]
    pad_h, pad_w = tf.maximum(height - scaled_h, 0), tf.maximum(width - scaled_w, 0)
    image = tf.pad(image, [[0, pad_h], [0, pad_w], [0, 0]])
    label = tf.pad(label, [[0, pad_h], [0, pad_w]], constant_values=IGNORE_LABEL)
    span = tf.shape(label) - tf.constant([height, width]) + 1
    y = tf.random.stateless_uniform([], seeds[1], 0, span[0], dtype=tf.int32)
    x = tf.random.stateless_uniform([], seeds[2], 0, span[1], dtype=tf.int32)
    image = image[y:y + height, x:x + width]
    label = label[y:y + height, x:x + width]
    if flip:
        do_flip = tf.random.stateless_uniform([], seeds[3]) < 0.5
        image = tf.cond(do_flip, lambda: tf.reverse(image, [1]), lambda: image)
        label = tf.cond(do_flip, lambda: tf.reverse(label, [1]), lambda: label)
    if jitter > 0:
        image = color_jitter(image, jitter, tf.random.experimental.stateless_split(seeds[3], 4))
    image.set_shape([height, width, 3])
    label.set_shape([height, width])
    return image, label


def make_dataset(file_patterns, feature_spec: dict, hp: dict, batch_size: int, training: bool,
                 seed: int = 0) -> tf.data.Dataset:
    """Batches {"image": float32 [B,H,W,3], "label": int32 [B,H,W]}; repeats forever when training."""
    size = image_hw(hp["image_size"])
    spec = {k: feature_spec[k] for k in ("image", "label")}
    ds = tfrecord_dataset(file_patterns)
    if training:
        ds = ds.shuffle(512, seed=seed, reshuffle_each_iteration=True).repeat()
    ds = ds.map(lambda r: tf.io.parse_single_example(r, spec), num_parallel_calls=tf.data.AUTOTUNE)
    do_augment = training and hp["augment"]

    def prepare(index, features):
        image = tf.reshape(features["image"], [*size, 3])
        label = tf.cast(tf.reshape(features["label"], size), tf.int32)
        if do_augment:
            image, label = augment(image, label, size, hp["min_scale"], hp["max_scale"], hp["flip"],
                                   tf.stack([tf.cast(seed, tf.int64), index]), float(hp["color_jitter"]))
        return {"image": image, "label": label}

    ds = ds.enumerate().map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def class_weights(file_patterns, num_classes: int) -> np.ndarray:
    """Loss weights from Transform's class pixel frequencies: 1/sqrt(frequency), scaled so that the
    frequency-weighted mean weight is 1; classes never seen get the largest seen weight."""
    spec = {"class_frequency": tf.io.FixedLenFeature([num_classes], tf.float32)}
    for record in tfrecord_dataset(file_patterns).take(1):
        freq = tf.io.parse_single_example(record, spec)["class_frequency"].numpy().astype(np.float64)
        break
    else:
        raise InputError(f"no transformed examples in {file_patterns}")
    seen = freq > 0
    weights = np.zeros_like(freq)
    weights[seen] = 1.0 / np.sqrt(freq[seen])
    weights[~seen] = weights[seen].max() if seen.any() else 1.0
    weights /= float(np.sum(freq * weights)) or 1.0
    return weights.astype(np.float32)


def analyzer_values(file_patterns, feature_spec: dict):
    """The Transform analyzers' pixel mean and std (stored identically in every example), as lists;
    None, None for a transform graph made before they were output (no on-device signature then)."""
    if "pixel_mean" not in feature_spec or "pixel_std" not in feature_spec:
        return None, None
    spec = {k: feature_spec[k] for k in ("pixel_mean", "pixel_std")}
    for record in tfrecord_dataset(file_patterns).take(1):
        f = tf.io.parse_single_example(record, spec)
        return f["pixel_mean"].numpy().tolist(), f["pixel_std"].numpy().tolist()
    raise InputError(f"no transformed examples in {file_patterns}")
