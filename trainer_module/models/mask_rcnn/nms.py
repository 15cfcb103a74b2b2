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


def nms_op_keep(sorted_boxes, iou_threshold: float, max_kept: int, valid=None):
    """`sorted_nms_keep` through the NonMaxSuppressionV4 op, one op per row: needs a static
    leading dimension. Has no loop in the graph, and TFLite maps the op to its builtin
    NON_MAX_SUPPRESSION_V4 (the dense fixed point needs a while loop, which TFLite's int8
    calibration cannot run). Returns the keep mask [B, K] of the first `max_kept` survivors.

    The op sees scores k - position (candidates) or 0 (not candidates) and a threshold of 0.5:
    distinct scores, so its order is exactly the sorted order, ties included."""
    rows, k = sorted_boxes.shape[0], sorted_boxes.shape[-2]
    position = tf.range(k, dtype=tf.int32)
    rank_scores = tf.cast(k - position, tf.float32) + tf.zeros(tf.shape(sorted_boxes)[:-1], tf.float32)
    if valid is not None:
        rank_scores = tf.where(valid, rank_scores, 0.0)
    keep = []
    for r in range(rows):
        idx, num = tf.raw_ops.NonMaxSuppressionV4(
            boxes=sorted_boxes[r], scores=rank_scores[r], max_output_size=max_kept,
            iou_threshold=iou_threshold, score_threshold=0.5, pad_to_max_output_size=True)
        selected = idx[:, None] == position[None, :]
        selected = selected & (tf.range(max_kept, dtype=tf.int32) < num)[:, None]
        keep.append(tf.reduce_any(selected, axis=0))
    return tf.stack(keep)


def non_max_suppression_padded(boxes, scores, max_output_size: int, iou_threshold: float,
                               pre_nms_top_k: int | None = None, score_threshold: float | None = None,
                               valid=None, use_nms_op: bool = False):
    """Batched NMS. boxes [B, N, 4], scores [B, N] ->
    (boxes [B, max_output_size, 4], scores [B, max_output_size], indices [B, max_output_size] into N,
    valid [B, max_output_size] bool). Padded slots have score 0, box 0 and index 0.
    Only the `pre_nms_top_k` best-scored boxes enter the O(K^2) suppression; of those, only boxes
    scored above `score_threshold` (when given) and with `valid` [B, N] bool (when given) can be kept.
    use_nms_op (static B only): suppress with `nms_op_keep` (no while loop; for TFLite) instead of
    `sorted_nms_keep` (dense, XLA-friendly); both give the exact greedy result.

    No infinities anywhere (TFLite's int8 calibration cannot give an infinite range a scale).
    """
    n = boxes.shape[-2]
    k = min(pre_nms_top_k or n, n)
    top_scores, top_idx = tf.math.top_k(scores, k=k, sorted=True)
    top_boxes = tf.gather(boxes, top_idx, batch_dims=1)
    candidate = None
    if score_threshold is not None:
        candidate = top_scores > score_threshold
    if valid is not None:
        top_valid = tf.gather(valid, top_idx, batch_dims=1)
        candidate = top_valid if candidate is None else candidate & top_valid
    m = min(max_output_size, k)
    if use_nms_op:
        keep = nms_op_keep(top_boxes, iou_threshold, m, valid=candidate)
    else:
        keep = sorted_nms_keep(top_boxes, iou_threshold, valid=candidate)
    # Surviving boxes first, in their (score) order, then the others: an int32 rank, so no
    # -inf score sentinel is needed.
    position = tf.range(k, dtype=tf.int32)
    rank = tf.where(keep, 2 * k - position, k - position)
    _, pos = tf.math.top_k(rank, k=m, sorted=True)
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
