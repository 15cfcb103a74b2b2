"""TFMA metric for instance segmentation: COCO box AP and mask AP through pycocotools.

Used by the instance Evaluator as two metrics, `tfma.MetricConfig(class_name="InstanceSegmentationAP",
module="trainer_module.metrics.coco_tfma", config='{"iou_type": "bbox"|"segm", ...}')`, named `box_ap`
and `mask_ap` so that each carries its own gate (see `metric_config`; the thresholds are the
pipeline's, built in pipelines/pipeline.py). Ground truth is rebuilt from each evaluation
example's raw serialized bytes by `coco_eval.ground_truth_from_examples`, detections are turned
into COCO results by `coco_eval.detections_to_coco`, and the final numbers come from
`coco_eval.evaluate` — the same code `segpipe evaluate-coco` runs, so both report identical
figures for the same model and data.

Per example only compact RLEs travel through the combiner, never images. COCOeval needs every
image at once, so extraction happens on the merged accumulator.

Produced keys, for the `box_ap` metric: `box_ap`, `box_ap50`, `box_ap75`, `box_ap_small`,
`box_ap_medium`, `box_ap_large`, `box_ar100`, and per category `box_ap/<category name>` (COCOeval's
per-category precision, IoU .50:.95, all areas, 100 detections) for the categories with ground
truth in the evaluated data; with `every_class` (set by the per-class gate) for every category,
one without ground truth scoring 1.0 (nothing to find; a gated key must exist). The same with
`mask_` for `mask_ap`.
"""
from __future__ import annotations

import json
from typing import Optional

import apache_beam as beam
import numpy as np
from tensorflow_model_analysis import constants
from tensorflow_model_analysis.metrics import metric_types

from trainer_module.metrics import coco_eval

# Suffix after the metric's prefix ("box"/"mask") -> the COCOeval stat of coco_eval.STAT_NAMES.
_STATS = {"ap": "AP", "ap50": "AP50", "ap75": "AP75", "ap_small": "APs", "ap_medium": "APm",
          "ap_large": "APl", "ar100": "AR100"}
_PREFIX = {"bbox": "box", "segm": "mask"}


def _as_dict(predictions) -> dict:
    if not isinstance(predictions, dict):
        raise ValueError("InstanceSegmentationAP needs the model's detection outputs as a dict "
                         "(set ModelSpec.prediction_key to '')")
    return predictions


class _Accumulator:
    __slots__ = ("images", "annotations", "detections")

    def __init__(self):
        self.images, self.annotations, self.detections = [], [], []


class _COCOCombiner(beam.CombineFn):
    def __init__(self, keys: dict, label_map: dict, iou_type: str, model_name: str,
                 category_keys: dict, every_class: bool):
        self._keys = keys
        self._label_map = label_map
        self._iou_type = iou_type
        self._model_name = model_name
        self._category_keys = category_keys  # category id -> MetricKey
        self._every_class = every_class

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
        masks = predictions.get("detection_masks") if self._iou_type == "segm" else None
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
        stats = coco_eval.evaluate(gt, accumulator.detections, self._iou_type)
        output = {self._keys[suffix]: stats[stat] for suffix, stat in _STATS.items()}
        with_truth = {a["category_id"] for a in annotations}
        per_category = stats.get("per_category_ap", {})
        for category_id, key in self._category_keys.items():
            if category_id in with_truth:
                output[key] = per_category.get(category_id, 0.0)  # no detections: 0
            elif self._every_class:
                output[key] = 1.0
        return output


def category_key_name(iou_type: str, category_name: str) -> str:
    """The per-category key, e.g. `box_ap/dog`."""
    return f"{_PREFIX[iou_type]}_ap/{category_name}"


def _computations(label_map: dict, iou_type: str, name: Optional[str] = None,
                  model_names: Optional[list] = None, example_weighted: bool = False,
                  every_class: bool = False) -> metric_types.MetricComputations:
    if iou_type not in _PREFIX:
        raise ValueError(f"iou_type must be one of {sorted(_PREFIX)}, got {iou_type!r}")
    prefix = _PREFIX[iou_type]
    computations = []
    for model_name in model_names or [""]:
        # The headline key is the metric's own name, which its MetricConfig threshold binds to.
        keys = {suffix: metric_types.MetricKey(
                    name=name if suffix == "ap" and name else f"{prefix}_{suffix}",
                    model_name=model_name, example_weighted=example_weighted)
                for suffix in _STATS}
        category_keys = {c["id"]: metric_types.MetricKey(
                             name=category_key_name(iou_type, c["name"]), model_name=model_name,
                             example_weighted=example_weighted)
                         for c in label_map["classes"]}
        computations.append(metric_types.MetricComputation(
            keys=list(keys.values()) + list(category_keys.values()),
            # The raw serialized example (for ground truth) plus the model's predictions.
            preprocessors=[metric_types.InputPreprocessor(include_default_inputs=True)],
            combiner=_COCOCombiner(keys, label_map, iou_type, model_name, category_keys,
                                   every_class)))
    return computations


class InstanceSegmentationAP(metric_types.Metric):
    """COCO AP, AP50, AP75, AP small/medium/large and AR100 via pycocotools, for boxes (bbox) or
    masks (segm). Default names: box_ap / mask_ap."""

    def __init__(self, label_map: dict, iou_type: str = "bbox", name: Optional[str] = None,
                 every_class: bool = False):
        super().__init__(_computations, label_map=label_map, iou_type=iou_type,
                         name=name or f"{_PREFIX.get(iou_type, iou_type)}_ap",
                         every_class=bool(every_class))


def metric_config(label_map: dict, iou_type: str, threshold=None, every_class: bool = False):
    """The `tfma.MetricConfig` of `box_ap` (iou_type "bbox") or `mask_ap` ("segm"); `threshold`
    (a `tfma.MetricThreshold`) gates that metric; `every_class`: see the module docstring."""
    import tensorflow_model_analysis as tfma

    name = f"{_PREFIX[iou_type]}_ap"
    config = {"label_map": label_map, "iou_type": iou_type, "name": name}
    if every_class:
        config["every_class"] = True
    return tfma.MetricConfig(
        class_name=InstanceSegmentationAP.__name__, module=__name__,
        config=json.dumps(config, sort_keys=True), threshold=threshold)
