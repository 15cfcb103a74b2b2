"""tf.data over Transform's instance output: static shapes, horizontal flip, drop_remainder."""
from __future__ import annotations

import tensorflow as tf

from components.errors import InputError
from trainer_module.training import tfrecord_dataset

FEATURES = ("image", "boxes", "classes", "masks", "resized_size")


def flip_left_right(image, boxes, classes, masks):
    """Mirror the whole canvas (padding included): boxes and masks follow the image."""
    width = tf.cast(tf.shape(image)[1], tf.float32)
    ymin, xmin, ymax, xmax = tf.unstack(boxes, axis=-1)
    flipped = tf.stack([ymin, width - xmax, ymax, width - xmin], axis=-1)
    flipped = tf.where((classes > 0)[:, None], flipped, boxes)
    return tf.reverse(image, [1]), flipped, tf.reverse(masks, [2])


def make_dataset(file_patterns, feature_spec: dict, hp: dict, batch_size: int, training: bool,
                 seed: int = 0) -> tf.data.Dataset:
    """Batches of {"image" float32 [B,S,S,3], "boxes" [B,M,4], "classes" int32 [B,M],
    "masks" uint8 [B,M,Sm,Sm], "resized_size" int32 [B,2] (the image's extent on the unflipped canvas)};
    shuffled, flipped and repeated forever when training."""
    spec = {k: feature_spec[k] for k in FEATURES}
    ds = tfrecord_dataset(file_patterns)
    if training:
        ds = ds.shuffle(256, seed=seed, reshuffle_each_iteration=True).repeat()
    do_flip = training and hp["flip"]

    def prepare(index, record):
        f = tf.io.parse_single_example(record, spec)
        image = f["image"]
        boxes = f["boxes"]
        classes = tf.cast(f["classes"], tf.int32)
        masks = tf.cast(f["masks"], tf.uint8)
        if do_flip:
            coin = tf.random.stateless_uniform([], tf.stack([tf.cast(seed, tf.int64), index])) < 0.5
            image, boxes, masks = tf.cond(coin, lambda: flip_left_right(image, boxes, classes, masks),
                                          lambda: (image, boxes, masks))
        return {"image": image, "boxes": boxes, "classes": classes, "masks": masks,
                "resized_size": tf.cast(f["resized_size"], tf.int32)}

    ds = ds.enumerate().map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def analyzer_values(file_patterns, feature_spec: dict):
    """The Transform analyzers' pixel mean and std (stored identically in every example)."""
    spec = {k: feature_spec[k] for k in ("pixel_mean", "pixel_std")}
    for record in tfrecord_dataset(file_patterns).take(1):
        f = tf.io.parse_single_example(record, spec)
        return f["pixel_mean"].numpy().tolist(), f["pixel_std"].numpy().tolist()
    raise InputError(f"no transformed examples in {file_patterns}")
