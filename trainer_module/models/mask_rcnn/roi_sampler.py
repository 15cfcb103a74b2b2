"""Training targets with static shapes: RPN anchor labels and the sampled ROIs of the heads.

Ground truth arrives padded: gt_boxes [B, M, 4] (pixels, yxyx), gt_classes [B, M] int with
labels 1..N; entries with class <= 0 are padding (or crowd regions, which are not matched).
Random subsets are drawn without any dynamic shape: draw a uniform score per candidate, and
keep the candidates at or above the k-th largest score of their own image.
"""
from __future__ import annotations

import tensorflow as tf

from trainer_module.models.mask_rcnn import box_ops


def sample_subset(candidates, num_wanted, max_wanted: int, seed=None):
    """Random subset of the True entries of candidates [B, N]: per image min(num_wanted[b], count)
    of them (num_wanted: int or [B] int32, never more than `max_wanted`). Returns a [B, N] bool."""
    n = candidates.shape[-1]
    k = min(max_wanted, n)
    u = tf.random.uniform(tf.shape(candidates), 0.0, 1.0, seed=seed)
    scores = tf.where(candidates, u, -1.0)
    top = tf.math.top_k(scores, k=k, sorted=True).values
    count = tf.reduce_sum(tf.cast(candidates, tf.int32), axis=-1)
    take = tf.minimum(tf.minimum(tf.cast(num_wanted, tf.int32) + tf.zeros_like(count), count), k)
    threshold = tf.gather(top, tf.maximum(take - 1, 0), batch_dims=1)
    return candidates & (scores >= threshold[:, None]) & (take[:, None] > 0)


def _match(boxes, gt_boxes, gt_valid):
    """IoU of each box with its best valid gt: (max_iou [B, N], matched index [B, N], iou [B, N, M])."""
    iou = box_ops.iou_matrix(boxes, gt_boxes)
    iou = tf.where(gt_valid[:, None, :], iou, -1.0)
    return tf.reduce_max(iou, axis=-1), tf.argmax(iou, axis=-1, output_type=tf.int32), iou


def rpn_targets(anchors, gt_boxes, gt_classes, batch_size_per_image: int = 256,
                positive_fraction: float = 0.5, fg_iou: float = 0.7, bg_iou: float = 0.3):
    """Faster R-CNN RPN labels. anchors [A, 4]. Returns
    labels [B, A] float (1 = object, 0 = background), weights [B, A] (1 on the sampled anchors),
    box_targets [B, A, 4] (encoded, meaningful where labels == 1)."""
    gt_valid = gt_classes > 0
    b = tf.shape(gt_boxes)[0]
    anchors_b = tf.broadcast_to(anchors[None], [b, anchors.shape[0], 4])
    max_iou, matched, iou = _match(anchors_b, gt_boxes, gt_valid)
    # Every gt also claims its best anchor(s), so small objects always get a positive.
    gt_best = tf.reduce_max(iou, axis=1, keepdims=True)
    is_best = tf.reduce_any((iou >= gt_best) & (gt_best > 0.0) & gt_valid[:, None, :], axis=-1)
    positive = (max_iou >= fg_iou) | is_best
    negative = (max_iou < bg_iou) & (max_iou >= 0.0) & ~positive
    # No valid gt at all: every anchor is background.
    negative = negative | (~tf.reduce_any(gt_valid, axis=-1, keepdims=True) & ~positive)
    num_pos = int(batch_size_per_image * positive_fraction)
    pos_sel = sample_subset(positive, num_pos, num_pos)
    n_pos = tf.reduce_sum(tf.cast(pos_sel, tf.int32), axis=-1)
    neg_sel = sample_subset(negative, batch_size_per_image - n_pos, batch_size_per_image)
    matched_boxes = tf.gather(gt_boxes, matched, batch_dims=1)
    box_targets = box_ops.encode_boxes(matched_boxes, anchors_b, box_ops.RPN_BOX_WEIGHTS)
    labels = tf.cast(pos_sel, tf.float32)
    weights = tf.cast(pos_sel | neg_sel, tf.float32)
    return labels, weights, box_targets


def sample_rois(proposals, proposal_valid, gt_boxes, gt_classes, num_samples: int = 512,
                fg_fraction: float = 0.25, fg_iou: float = 0.5):
    """Sample head training ROIs from proposals + the gt boxes themselves (Detectron practice).

    Returns a dict of [B, num_samples, ...] tensors, foreground first:
    rois, classes (0 = background), box_targets (head encoding), matched (gt index),
    is_fg, is_valid (padding when there are too few candidates).
    """
    gt_valid = gt_classes > 0
    candidates = tf.concat([tf.stop_gradient(proposals), gt_boxes], axis=1)
    cand_valid = tf.concat([proposal_valid, gt_valid], axis=1)
    short = num_samples - candidates.shape[1]
    if short > 0:  # tiny configurations: pad with invalid candidates so top_k has enough
        candidates = tf.pad(candidates, [[0, 0], [0, short], [0, 0]])
        cand_valid = tf.pad(cand_valid, [[0, 0], [0, short]])
    max_iou, matched, _ = _match(candidates, gt_boxes, gt_valid)
    fg = cand_valid & (max_iou >= fg_iou)
    bg = cand_valid & (max_iou < fg_iou) & ~fg
    num_fg = int(num_samples * fg_fraction)
    fg_sel = sample_subset(fg, num_fg, num_fg)
    n_fg = tf.reduce_sum(tf.cast(fg_sel, tf.int32), axis=-1)
    bg_sel = sample_subset(bg, num_samples - n_fg, num_samples)
    priority = (2.0 * tf.cast(fg_sel, tf.float32) + tf.cast(bg_sel, tf.float32)
                + 0.5 * tf.random.uniform(tf.shape(max_iou)))
    _, order = tf.math.top_k(priority, k=num_samples, sorted=True)
    rois = tf.gather(candidates, order, batch_dims=1)
    matched = tf.gather(matched, order, batch_dims=1)
    is_fg = tf.gather(fg_sel, order, batch_dims=1)
    is_valid = tf.gather(fg_sel | bg_sel, order, batch_dims=1)
    matched_classes = tf.gather(gt_classes, matched, batch_dims=1)
    classes = tf.where(is_fg, matched_classes, 0)
    matched_boxes = tf.gather(gt_boxes, matched, batch_dims=1)
    box_targets = box_ops.encode_boxes(matched_boxes, rois, box_ops.HEAD_BOX_WEIGHTS)
    return {"rois": rois, "classes": classes, "box_targets": box_targets, "matched": matched,
            "is_fg": is_fg, "is_valid": is_valid}
