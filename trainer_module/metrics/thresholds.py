"""Gates on keys that another metric computes: the per-class gate (`iou/<class>`, `box_ap/<category>`,
`mask_ap/<category>`).

TFMA binds a `MetricConfig.threshold` to the key named after the metric instance, and
`MetricsSpec.thresholds` only to in-graph metrics (their keys are not `example_weighted=False`
like those of our metrics, so such a threshold would report "Metric not found"). `KeyGate` is a
metric that computes nothing and is named after the key it gates: its MetricConfig carries the
threshold, the key itself comes from the segmentation/COCO metric of the same MetricsSpec. The
Evaluator's validation (and so its blessing) then checks the class like any other metric.
"""
from __future__ import annotations

import json
from typing import Optional

from tensorflow_model_analysis.metrics import metric_types


def _no_computations(name: Optional[str] = None, **_) -> metric_types.MetricComputations:
    return []


class KeyGate(metric_types.Metric):
    """Computes nothing; holds the threshold of the key `name` that a sibling metric computes."""

    def __init__(self, name: str):
        super().__init__(_no_computations, name=name)


def metric_configs(keys: list[str], threshold) -> list:
    """One `tfma.MetricConfig` per key, each gated by `threshold` (a `tfma.MetricThreshold`)."""
    import tensorflow_model_analysis as tfma

    if threshold is None:
        return []
    return [tfma.MetricConfig(class_name=KeyGate.__name__, module=__name__,
                              config=json.dumps({"name": key}), threshold=threshold)
            for key in keys]
