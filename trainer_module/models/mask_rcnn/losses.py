"""Mask R-CNN losses (Faster R-CNN RPN + Fast R-CNN head + per-class mask BCE)."""
from __future__ import annotations

import tensorflow as tf


def huber(x, delta: float):
    """Smooth-L1 in Huber form (equal to smooth-L1 with beta=delta, times delta)."""
    a = tf.abs(x)
    return tf.where(a < delta, 0.5 * tf.square(x), delta * (a - 0.5 * delta))


def rpn_losses(logits, deltas, labels, weights, box_targets, huber_delta: float = 1.0 / 9.0):
    """Objectness BCE over the sampled anchors; box loss over positives; both normalised by the
    number of sampled anchors (Detectron)."""
    logits = tf.cast(logits, tf.float32)
    deltas = tf.cast(deltas, tf.float32)
    norm = tf.maximum(tf.reduce_sum(weights), 1.0)
    bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits)
    cls_loss = tf.reduce_sum(bce * weights) / norm
    box = tf.reduce_sum(huber(deltas - box_targets, huber_delta), axis=-1)
    box_loss = tf.reduce_sum(box * labels) / norm
    return cls_loss, box_loss


def head_losses(class_logits, box_deltas, samples, huber_delta: float = 1.0):
    """Softmax CE over valid sampled ROIs; box loss on the gt class's deltas of foreground ROIs."""
    class_logits = tf.cast(class_logits, tf.float32)
    box_deltas = tf.cast(box_deltas, tf.float32)
    valid = tf.cast(samples["is_valid"], tf.float32)
    fg = tf.cast(samples["is_fg"], tf.float32)
    norm = tf.maximum(tf.reduce_sum(valid), 1.0)
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=samples["classes"], logits=class_logits)
    cls_loss = tf.reduce_sum(ce * valid) / norm
    gt_deltas = tf.gather(box_deltas, samples["classes"], batch_dims=2)
    box = tf.reduce_sum(huber(gt_deltas - samples["box_targets"], huber_delta), axis=-1)
    box_loss = tf.reduce_sum(box * fg) / norm
    return cls_loss, box_loss


def mask_loss(mask_logits, mask_targets, classes, is_fg):
    """Per-pixel BCE on the channel of the roi's gt class only, averaged over foreground ROIs.
    mask_logits [B, N, S, S, K]; mask_targets [B, N, S, S] in {0, 1}; classes [B, N] (1..K)."""
    mask_logits = tf.cast(mask_logits, tf.float32)
    logits = tf.transpose(mask_logits, [0, 1, 4, 2, 3])
    chosen = tf.gather(logits, tf.maximum(classes - 1, 0), batch_dims=2)
    bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=mask_targets, logits=chosen)
    fg = tf.cast(is_fg, tf.float32)
    per_roi = tf.reduce_mean(bce, axis=[2, 3])
    return tf.reduce_sum(per_roi * fg) / tf.maximum(tf.reduce_sum(fg), 1.0)
