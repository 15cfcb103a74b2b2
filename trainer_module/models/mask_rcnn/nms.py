"""Greedy non-maximum suppression with static shapes, compilable under XLA (`jit_compile=True`).

Boxes are sorted by score; box j survives when no *surviving* higher-scored box overlaps it by
more than the threshold. That fixed point is computed by iterating
`keep[j] = not any_i<j(keep[i] and iou[i, j] > t)` from keep = all-true: after iteration n the
first n boxes are final, so it reaches the exact greedy result, in practice within a few
iterations, using only dense [K, K] ops (no data-dependent shapes).
"""
from __future__ import annotations

import tensorflow as tf

from trainer_module.models.mask_rcnn import box_ops


def sorted_nms_keep(sorted_boxes, iou_threshold: float, valid=None):
    """Keep mask [..., K] for boxes [..., K, 4] already sorted by decreasing score."""
    k = sorted_boxes.shape[-2]
    iou = box_ops.iou_matrix(sorted_boxes, sorted_boxes)
    # overlaps[i, j]: i is ranked before j and overlaps it too much.
    upper = tf.linalg.band_part(tf.ones([k, k], tf.bool), 0, -1) & ~tf.eye(k, dtype=tf.bool)
    overlaps = tf.cast((iou > iou_threshold) & upper, tf.float32)
    keep0 = tf.ones(tf.shape(sorted_boxes)[:-1], tf.float32)
    if valid is not None:
        keep0 = keep0 * tf.cast(valid, tf.float32)
    valid_f = keep0

    def body(keep, _changed, it):
        suppressed = tf.einsum("...i,...ij->...j", keep, overlaps) > 0.0
        new_keep = tf.where(suppressed, 0.0, valid_f)
        changed = tf.reduce_any(tf.not_equal(new_keep, keep))
        return new_keep, changed, it + 1

    keep, _, _ = tf.while_loop(lambda keep, changed, it: changed & (it < k), body,
                               (keep0, tf.constant(True), tf.constant(0)),
                               maximum_iterations=k)
    return keep > 0.0


def non_max_suppression_padded(boxes, scores, max_output_size: int, iou_threshold: float,
                               pre_nms_top_k: int | None = None, score_threshold: float = float("-inf")):
    """Batched NMS. boxes [B, N, 4], scores [B, N] ->
    (boxes [B, max_output_size, 4], scores [B, max_output_size], indices [B, max_output_size] into N,
    valid [B, max_output_size] bool). Padded slots have score 0, box 0 and index 0.
    Only the `pre_nms_top_k` best-scored boxes enter the O(K^2) suppression.
    """
    n = boxes.shape[-2]
    k = min(pre_nms_top_k or n, n)
    top_scores, top_idx = tf.math.top_k(scores, k=k, sorted=True)
    top_boxes = tf.gather(boxes, top_idx, batch_dims=1)
    keep = sorted_nms_keep(top_boxes, iou_threshold, valid=top_scores > score_threshold)
    # Surviving boxes keep their score order; top_k over masked scores picks them first.
    m = min(max_output_size, k)
    ranked = tf.where(keep, top_scores, tf.fill(tf.shape(top_scores), float("-inf")))
    _, pos = tf.math.top_k(ranked, k=m, sorted=True)
    valid = tf.gather(keep, pos, batch_dims=1)
    out_idx = tf.where(valid, tf.gather(top_idx, pos, batch_dims=1), 0)
    out_boxes = tf.where(valid[..., None], tf.gather(top_boxes, pos, batch_dims=1), 0.0)
    out_scores = tf.where(valid, tf.gather(top_scores, pos, batch_dims=1), 0.0)
    if m < max_output_size:
        pad = max_output_size - m
        out_boxes = tf.pad(out_boxes, [[0, 0], [0, pad], [0, 0]])
        out_scores = tf.pad(out_scores, [[0, 0], [0, pad]])
        out_idx = tf.pad(out_idx, [[0, 0], [0, pad]])
        valid = tf.pad(valid, [[0, 0], [0, pad]])
    return out_boxes, out_scores, out_idx, valid
