"""FPN anchors: one scale and three aspect ratios per level P2..P6 (FPN paper, sec. 4.1)."""
from __future__ import annotations

import numpy as np

ASPECT_RATIOS = (0.5, 1.0, 2.0)  # height / width


def level_anchors(level: int, image_size: tuple[int, int], anchor_scale: float = 8.0,
                  aspect_ratios=ASPECT_RATIOS) -> np.ndarray:
    """Anchors of one level as [H_l * W_l * len(aspect_ratios), 4] (ymin, xmin, ymax, xmax) pixels.

    Order is (row, column, ratio), matching an RPN head output of shape [H_l, W_l, ratios * k].
    The anchor side is anchor_scale * stride, i.e. 32 px at P2 up to 512 px at P6 for scale 8.
    """
    stride = 2 ** level
    fh = int(np.ceil(image_size[0] / stride))
    fw = int(np.ceil(image_size[1] / stride))
    size = anchor_scale * stride
    ratios = np.asarray(aspect_ratios, np.float64)
    half_h = 0.5 * size * np.sqrt(ratios)
    half_w = 0.5 * size / np.sqrt(ratios)
    cy = (np.arange(fh) + 0.5) * stride
    cx = (np.arange(fw) + 0.5) * stride
    cy, cx = np.meshgrid(cy, cx, indexing="ij")
    cy = cy[..., None]
    cx = cx[..., None]
    boxes = np.stack([cy - half_h, cx - half_w, cy + half_h, cx + half_w], axis=-1)
    return boxes.reshape(-1, 4).astype(np.float32)


def multilevel_anchors(image_size: tuple[int, int], min_level: int = 2, max_level: int = 6,
                       anchor_scale: float = 8.0, aspect_ratios=ASPECT_RATIOS):
    """All levels' anchors concatenated, and the per-level counts (for splitting head outputs)."""
    per_level = [level_anchors(level, image_size, anchor_scale, aspect_ratios)
                 for level in range(min_level, max_level + 1)]
    return np.concatenate(per_level, axis=0), [len(a) for a in per_level]
