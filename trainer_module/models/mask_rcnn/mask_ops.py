"""Mask post-processing: 28x28 mask probabilities of detections pasted into the image."""
from __future__ import annotations

import tensorflow as tf


def _paste_weights(lo, hi, size: int, mask_size: int):
    """[B, D, size, mask_size] bilinear weights from output pixel centres to mask cells; zero
    outside [lo, hi] so nothing leaks outside the box."""
    centres = tf.range(size, dtype=tf.float32) + 0.5
    extent = tf.maximum(hi - lo, 1e-6)[..., None]
    pos = (centres - lo[..., None]) / extent * mask_size - 0.5
    inside = (centres >= lo[..., None]) & (centres <= hi[..., None])
    pos = tf.clip_by_value(pos, 0.0, mask_size - 1.0)
    cells = tf.range(mask_size, dtype=tf.float32)
    w = tf.maximum(0.0, 1.0 - tf.abs(pos[..., None] - cells))
    return w * tf.cast(inside, tf.float32)[..., None]


def paste_masks(mask_probs, boxes, height, width, threshold: float = 0.5):
    """Paste [B, D, S, S] mask probabilities into [B, D, height, width] uint8 0/1 masks; boxes
    [B, D, 4] in pixels of that canvas. Bilinear resize as two small matrix products."""
    s = mask_probs.shape[-1]
    wy = _paste_weights(boxes[..., 0], boxes[..., 2], height, s)
    wx = _paste_weights(boxes[..., 1], boxes[..., 3], width, s)
    rows = tf.einsum("bdyi,bdij->bdyj", wy, tf.cast(mask_probs, tf.float32))
    full = tf.einsum("bdyj,bdxj->bdyx", rows, wx)
    return tf.cast(full >= threshold, tf.uint8)
