"""TFMA metric for instance segmentation: COCO box AP and mask AP through pycocotools.

Used by the instance Evaluator as
`tfma.MetricConfig(class_name="COCOBoxAndMaskAP", module="trainer_module.metrics.coco_tfma", ...)`
(see `metric_config`). Ground truth is rebuilt from each evaluation example's raw serialized bytes
by `coco_eval.ground_truth_from_examples`, detections are turned into COCO results by
`coco_eval.detections_to_coco`, and the final numbers come from `coco_eval.evaluate` — the same
code `segpipe evaluate-coco` runs, so both report identical figures for the same model and data.

Per example only compact RLEs travel through the combiner, never images. COCOeval needs every
image at once, so extraction happens on the merged accumulator.

Produced keys: `box_ap`, `box_ap50`, `box_ap75`, `box_ap_small`, `box_ap_medium`, `box_ap_large`,
`box_ar100`, and the same with the `mask_` prefix.
"""
from __future__ import annotations

import json
from typing import Optional

import apache_beam as beam
import numpy as np
from tensorflow_model_analysis import constants
from tensorflow_model_analysis.metrics import metric_types, metric_util

from trainer_module.metrics import coco_eval

# Our key suffix -> the COCOeval stat name of coco_eval.STAT_NAMES.
_STATS = {"ap": "AP", "ap50": "AP50", "ap75": "AP75", "ap_small": "APs", "ap_medium": "APm",
          "ap_large": "APl", "ar100": "AR100"}
_IOU_TYPES = {"box": "bbox", "mask": "segm"}
METRIC_NAME = "coco_ap"


def _as_dict(predictions) -> dict:
    if not isinstance(predictions, dict):
        raise ValueError("COCOBoxAndMaskAP needs the model's detection outputs as a dict "
                         "(set ModelSpec.prediction_key to '')")
    return predictions


class _Accumulator:
    __slots__ = ("images", "annotations", "detections")

    def __init__(self):
        self.images, self.annotations, self.detections = [], [], []


class _COCOCombiner(beam.CombineFn):
    def __init__(self, keys: dict, label_map: dict, model_name: str):
        self._keys = keys
        self._label_map = label_map
        self._model_name = model_name

    def create_accumulator(self) -> _Accumulator:
        return _Accumulator()

    def add_input(self, accumulator: _Accumulator, element) -> _Accumulator:
        serialized = element[constants.INPUT_KEY]
        if isinstance(serialized, np.ndarray):
            serialized = serialized.item()
        gt = coco_eval.ground_truth_from_examples([serialized], self._label_map)
        image = gt["images"][0]
        accumulator.images.append(image)
        accumulator.annotations.extend(gt["annotations"])
        predictions = _as_dict(element.get_predictions(self._model_name))
        count = int(np.asarray(predictions["num_detections"]).reshape(-1)[0])
        height, width = int(image["height"]), int(image["width"])
        masks = predictions.get("detection_masks")
        if masks is not None:  # batch-padded to the largest image: crop to this one
            masks = np.asarray(masks)[:count, :height, :width]
        # detection_classes are already the dataset's category ids (the model carries the label map).
        accumulator.detections.extend(coco_eval.detections_to_coco(
            image["id"], height, width,
            np.asarray(predictions["detection_boxes"])[:count],
            np.asarray(predictions["detection_scores"])[:count],
            np.asarray(predictions["detection_classes"]).astype(np.int64)[:count],
            masks=masks))
        return accumulator

    def merge_accumulators(self, accumulators) -> _Accumulator:
        merged = _Accumulator()
        for acc in accumulators:
            merged.images.extend(acc.images)
            merged.annotations.extend(acc.annotations)
            merged.detections.extend(acc.detections)
        return merged

    def extract_output(self, accumulator: _Accumulator) -> dict:
        annotations = [dict(a, id=i + 1) for i, a in enumerate(accumulator.annotations)]
        gt = {"images": accumulator.images, "annotations": annotations,
              "categories": [{"id": c["id"], "name": c["name"]} for c in self._label_map["classes"]]}
        output = {}
        for prefix, iou_type in _IOU_TYPES.items():
            detections = accumulator.detections
            if iou_type == "bbox":
                detections = [{k: v for k, v in d.items() if k != "segmentation"} for d in detections]
            stats = coco_eval.evaluate(gt, detections, iou_type)
            for suffix, stat in _STATS.items():
                output[self._keys[f"{prefix}_{suffix}"]] = stats[stat]
        return output


def _computations(label_map: dict, name: str = METRIC_NAME, model_names: Optional[list] = None,
                  example_weighted: bool = False) -> metric_types.MetricComputations:
    computations = []
    for model_name in model_names or [""]:
        keys = {f"{p}_{s}": metric_types.MetricKey(name=f"{p}_{s}", model_name=model_name,
                                                   example_weighted=example_weighted)
                for p in _IOU_TYPES for s in _STATS}
        computations.append(metric_types.MetricComputation(
            keys=list(keys.values()),
            # The raw serialized example (for ground truth) plus the model's predictions.
            preprocessors=[metric_types.InputPreprocessor(include_default_inputs=True)],
            combiner=_COCOCombiner(keys, label_map, model_name)))
    return computations


class COCOBoxAndMaskAP(metric_types.Metric):
    """COCO box and mask AP (AP, AP50, AP75, small/medium/large, AR100) via pycocotools."""

    def __init__(self, label_map: dict, name: Optional[str] = None):
        super().__init__(_computations, label_map=label_map, name=name)

    def _default_name(self) -> str:
        return METRIC_NAME


def metrics_spec(label_map: dict, box_ap_lower_bound: Optional[float] = None,
                 mask_ap_lower_bound: Optional[float] = None, box_ap_max_drop: Optional[float] = None,
                 mask_ap_max_drop: Optional[float] = None):
    """The MetricsSpec, gated on box_ap and mask_ap: an absolute floor and the largest drop allowed
    against the baseline. One metric yields several keys, so thresholds are keyed by metric name."""
    import tensorflow_model_analysis as tfma

    def threshold(lower, drop):
        t = tfma.MetricThreshold()
        if lower is not None:
            t.value_threshold.lower_bound.value = float(lower)
        if drop is not None:
            t.change_threshold.direction = tfma.MetricDirection.HIGHER_IS_BETTER
            t.change_threshold.absolute.value = -float(drop)
        return t

    return tfma.MetricsSpec(
        metrics=[tfma.MetricConfig(class_name=COCOBoxAndMaskAP.__name__, module=__name__,
                                   config=json.dumps({"label_map": label_map}, sort_keys=True))],
        thresholds={"box_ap": threshold(box_ap_lower_bound, box_ap_max_drop),
                    "mask_ap": threshold(mask_ap_lower_bound, mask_ap_max_drop)})
