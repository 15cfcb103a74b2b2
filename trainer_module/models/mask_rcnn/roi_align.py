"""Multilevel ROIAlign through gathers (XLA-friendly, differentiable w.r.t. the features).

Each output bin takes one bilinear sample at its centre (Model Garden's choice; Detectron's
sampling_ratio=1). The four neighbours of every sample come from one `tf.gather` over all FPN
levels flattened into a single [B, sum(H_l * W_l), C] tensor, so boxes on different levels are
handled in the same op with static shapes.
"""
from __future__ import annotations

import math

import tensorflow as tf


def _corner_indices_and_weights(coords, size):
    """coords [..., S] continuous positions in cell units; size broadcastable int32 tensor.
    Returns indices [..., S, 2] (floor, floor + 1, clamped to the map) and weights [..., S, 2]."""
    size_f = tf.cast(size, coords.dtype)[..., None]
    coords = tf.clip_by_value(coords, 0.0, size_f - 1.0)
    low = tf.floor(coords)
    frac = coords - low
    low_i = tf.cast(low, tf.int32)
    high_i = tf.minimum(low_i + 1, tf.cast(size, tf.int32)[..., None] - 1)
    return tf.stack([low_i, high_i], axis=-1), tf.stack([1.0 - frac, frac], axis=-1)


def bilinear_sample(flat_features, offsets, heights, widths, ys, xs):
    """Bilinear samples on a separable grid.

    flat_features [B, T, C]: maps flattened row-major and concatenated; offsets/heights/widths
    [B, N] int32 locate box n's map in it; ys [B, N, Sy], xs [B, N, Sx] sample positions in that
    map's cell units (cell centres at integers). Returns [B, N, Sy, Sx, C].
    """
    yi, wy = _corner_indices_and_weights(ys, heights)
    xi, wx = _corner_indices_and_weights(xs, widths)
    b = tf.shape(flat_features)[0]
    n, sy, sx = ys.shape[1], ys.shape[2], xs.shape[2]
    c = flat_features.shape[-1]
    # index[b, n, (y, i), (x, j)] = offset + yi[b,n,y,i] * W + xi[b,n,x,j]. Every tensor here has
    # rank <= 5 and the weighted sums are broadcast products and sums (no 6-D slices, no
    # multi-operand einsum): TFLite's builtin kernels take rank <= 5 (StridedSlice, broadcasts).
    rows = tf.reshape(offsets[..., None, None] + yi * widths[..., None, None], [b, n, sy * 2, 1])
    index = rows + tf.reshape(xi, [b, n, 1, sx * 2])
    gathered = tf.gather(flat_features, tf.reshape(index, [b, -1]), batch_dims=1)
    dtype = flat_features.dtype
    # y first: sum_i wy[b,n,y,i] * g[b,n,y,i,x,j,c], on [B*N*Sy, 2, Sx*2*C].
    gathered = tf.reshape(gathered, [b * n * sy, 2, sx * 2 * c])
    rows = tf.reduce_sum(gathered * tf.reshape(tf.cast(wy, dtype), [b * n * sy, 2, 1]), axis=1)
    # then x: sum_j wx[b,n,x,j] * r[b,n,y,x,j,c], on [B*N, Sy, Sx, 2, C].
    rows = tf.reshape(rows, [b * n, sy, sx, 2, c])
    out = tf.reduce_sum(rows * tf.reshape(tf.cast(wx, dtype), [b * n, 1, sx, 2, 1]), axis=3)
    return tf.reshape(out, [b, n, sy, sx, c])


def bin_centres(lo, hi, output_size: int, stride):
    """Positions in cell units of `output_size` bin centres spanning [lo, hi] (image pixels)."""
    t = (tf.range(output_size, dtype=tf.float32) + 0.5) / output_size
    pos = lo[..., None] + (hi - lo)[..., None] * t
    return pos / stride[..., None] - 0.5


def assign_levels(boxes, min_level: int, max_level: int, canonical_size: float = 224.0,
                  canonical_level: int = 4):
    """FPN paper eq. 1: k = floor(k0 + log2(sqrt(wh) / 224)), clipped to the available levels."""
    h = tf.maximum(boxes[..., 2] - boxes[..., 0], 0.0)
    w = tf.maximum(boxes[..., 3] - boxes[..., 1], 0.0)
    scale = tf.sqrt(h * w)
    level = tf.floor(canonical_level + tf.math.log(scale / canonical_size + 1e-8) / math.log(2.0))
    return tf.cast(tf.clip_by_value(level, min_level, max_level), tf.int32)


def multilevel_roi_align(features: dict, boxes, output_size: int, min_level: int = 2,
                         max_level: int = 5):
    """features {level: [B, H_l, W_l, C]} (stride 2**level); boxes [B, N, 4] image pixels (yxyx).
    Returns [B, N, output_size, output_size, C]."""
    boxes = tf.cast(boxes, tf.float32)
    levels = list(range(min_level, max_level + 1))
    flat, offsets, heights, widths = [], [], [], []
    offset = 0
    for level in levels:
        f = features[level]
        h, w = f.shape[1], f.shape[2]
        flat.append(tf.reshape(f, [tf.shape(f)[0], h * w, f.shape[-1]]))
        offsets.append(offset)
        heights.append(h)
        widths.append(w)
        offset += h * w
    flat = tf.concat(flat, axis=1)
    box_level = assign_levels(boxes, min_level, max_level)
    idx = box_level - min_level
    offsets = tf.gather(tf.constant(offsets, tf.int32), idx)
    heights = tf.gather(tf.constant(heights, tf.int32), idx)
    widths = tf.gather(tf.constant(widths, tf.int32), idx)
    stride = tf.cast(tf.pow(2.0, tf.cast(box_level, tf.float32)), tf.float32)
    ys = bin_centres(boxes[..., 0], boxes[..., 2], output_size, stride)
    xs = bin_centres(boxes[..., 1], boxes[..., 3], output_size, stride)
    return bilinear_sample(flat, offsets, heights, widths, ys, xs)


def crop_and_resize_masks(masks, mask_index, boxes, output_size: int):
    """Crop instance masks into boxes: masks [B, M, H, W] (any real dtype), mask_index [B, N]
    int (which of the M masks), boxes [B, N, 4] in mask pixels. Returns [B, N, S, S] float32."""
    b = tf.shape(masks)[0]
    m, h, w = masks.shape[1], masks.shape[2], masks.shape[3]
    flat = tf.reshape(tf.cast(masks, tf.float32), [b, m * h * w, 1])
    offsets = tf.cast(mask_index, tf.int32) * (h * w)
    heights = tf.fill(tf.shape(offsets), h)
    widths = tf.fill(tf.shape(offsets), w)
    one = tf.ones(tf.shape(offsets), tf.float32)
    ys = bin_centres(boxes[..., 0], boxes[..., 2], output_size, one)
    xs = bin_centres(boxes[..., 1], boxes[..., 3], output_size, one)
    return bilinear_sample(flat, offsets, heights, widths, ys, xs)[..., 0]
