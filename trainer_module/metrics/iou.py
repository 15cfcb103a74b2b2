"""Pixel confusion matrices and the IoU scores derived from them (NumPy only): the one IoU code
shared by the TFMA metric (`segmentation.py`) and the trainer's own evaluation."""
from __future__ import annotations

import numpy as np

from components.contract import IGNORE_LABEL


def confusion_matrix(ground_truth: np.ndarray, prediction: np.ndarray, num_classes: int,
                     ignore_label: int = IGNORE_LABEL) -> np.ndarray:
    """C x C pixel counts (rows: ground truth, columns: prediction) of one image.

    `prediction` may be larger than `ground_truth` (padded batch output); its top-left
    ground-truth-sized corner is the prediction of this image.
    """
    if ground_truth.ndim != 2:
        raise ValueError(f"ground truth must be a 2-D class-id image, got shape {ground_truth.shape}")
    prediction = np.asarray(prediction)
    while prediction.ndim > 2 and prediction.shape[0] == 1:  # an unsplit batch of one
        prediction = prediction[0]
    height, width = ground_truth.shape
    if prediction.ndim != 2 or prediction.shape[0] < height or prediction.shape[1] < width:
        raise ValueError(f"prediction of shape {prediction.shape} cannot cover the ground truth "
                         f"of shape {ground_truth.shape}")
    prediction = prediction[:height, :width].astype(np.int64)
    valid = ground_truth != ignore_label
    truth = ground_truth[valid].astype(np.int64)
    predicted = prediction[valid]
    if truth.size and truth.max() >= num_classes:
        raise ValueError(f"ground truth holds class id {truth.max()}, but num_classes is {num_classes}")
    if predicted.size and (predicted.min() < 0 or predicted.max() >= num_classes):
        raise ValueError(f"prediction holds class ids outside 0..{num_classes - 1} inside the "
                         f"ground-truth area: {np.unique(predicted[(predicted < 0) | (predicted >= num_classes)])}")
    counts = np.bincount(truth * num_classes + predicted, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def scores_from_confusion(matrix: np.ndarray) -> dict:
    """{"mean_iou", "pixel_accuracy", "iou": {class index: IoU}} for the classes present."""
    matrix = np.asarray(matrix, dtype=np.float64)
    true_pos = np.diag(matrix)
    union = matrix.sum(axis=0) + matrix.sum(axis=1) - true_pos
    present = union > 0
    iou = {int(c): float(true_pos[c] / union[c]) for c in np.flatnonzero(present)}
    total = matrix.sum()
    return {
        "mean_iou": float(np.mean(list(iou.values()))) if iou else float("nan"),
        "pixel_accuracy": float(true_pos.sum() / total) if total else float("nan"),
        "iou": iou,
    }
