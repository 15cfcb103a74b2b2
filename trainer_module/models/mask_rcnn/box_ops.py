"""Box utilities. Boxes are [..., 4] as (ymin, xmin, ymax, xmax) in pixels unless stated."""
from __future__ import annotations

import math

import tensorflow as tf

# Decoded width/height are exp(d); clamping d keeps exp finite for wild early predictions.
BBOX_XFORM_CLIP = math.log(1000.0 / 16.0)

RPN_BOX_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
HEAD_BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)


def _centre_size(boxes):
    ymin, xmin, ymax, xmax = tf.unstack(boxes, axis=-1)
    h = ymax - ymin
    w = xmax - xmin
    return ymin + 0.5 * h, xmin + 0.5 * w, h, w


def encode_boxes(boxes, anchors, weights=RPN_BOX_WEIGHTS):
    """Regression targets (dy, dx, dh, dw) of `boxes` relative to `anchors` (R-CNN parameterisation)."""
    cy, cx, h, w = _centre_size(boxes)
    acy, acx, ah, aw = _centre_size(anchors)
    ah = tf.maximum(ah, 1e-6)
    aw = tf.maximum(aw, 1e-6)
    wy, wx, wh, ww = weights
    dy = wy * (cy - acy) / ah
    dx = wx * (cx - acx) / aw
    dh = wh * tf.math.log(tf.maximum(h, 1e-6) / ah)
    dw = ww * tf.math.log(tf.maximum(w, 1e-6) / aw)
    return tf.stack([dy, dx, dh, dw], axis=-1)


def decode_boxes(deltas, anchors, weights=RPN_BOX_WEIGHTS):
    """Inverse of `encode_boxes`."""
    deltas = tf.cast(deltas, anchors.dtype)
    acy, acx, ah, aw = _centre_size(anchors)
    wy, wx, wh, ww = weights
    dy, dx, dh, dw = tf.unstack(deltas, axis=-1)
    dh = tf.minimum(dh / wh, BBOX_XFORM_CLIP)
    dw = tf.minimum(dw / ww, BBOX_XFORM_CLIP)
    cy = dy / wy * ah + acy
    cx = dx / wx * aw + acx
    h = tf.exp(dh) * ah
    w = tf.exp(dw) * aw
    return tf.stack([cy - 0.5 * h, cx - 0.5 * w, cy + 0.5 * h, cx + 0.5 * w], axis=-1)


def clip_boxes(boxes, height, width):
    """Clip boxes to the image [0, height] x [0, width]."""
    ymin, xmin, ymax, xmax = tf.unstack(boxes, axis=-1)
    height = tf.cast(height, boxes.dtype)
    width = tf.cast(width, boxes.dtype)
    return tf.stack([tf.clip_by_value(ymin, 0.0, height), tf.clip_by_value(xmin, 0.0, width),
                     tf.clip_by_value(ymax, 0.0, height), tf.clip_by_value(xmax, 0.0, width)], axis=-1)


def area(boxes):
    ymin, xmin, ymax, xmax = tf.unstack(boxes, axis=-1)
    return tf.maximum(ymax - ymin, 0.0) * tf.maximum(xmax - xmin, 0.0)


def iou_matrix(boxes_a, boxes_b):
    """Pairwise IoU: [..., N, 4] x [..., M, 4] -> [..., N, M]. Degenerate boxes give IoU 0."""
    a = tf.expand_dims(boxes_a, -2)
    b = tf.expand_dims(boxes_b, -3)
    ymin = tf.maximum(a[..., 0], b[..., 0])
    xmin = tf.maximum(a[..., 1], b[..., 1])
    ymax = tf.minimum(a[..., 2], b[..., 2])
    xmax = tf.minimum(a[..., 3], b[..., 3])
    inter = tf.maximum(ymax - ymin, 0.0) * tf.maximum(xmax - xmin, 0.0)
    union = area(a) + area(b) - inter
    return tf.where(union > 0.0, inter / tf.maximum(union, 1e-9), tf.zeros_like(inter))
