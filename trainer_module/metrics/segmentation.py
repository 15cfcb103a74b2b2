"""TFMA metrics for semantic segmentation: mean IoU, pixel accuracy and per-class IoU.

Used by the Evaluator through
`tfma.MetricConfig(class_name="SemanticSegmentationIoU", module="trainer_module.metrics.segmentation",
config=json.dumps({"num_classes": C, "class_names": [...]}), threshold=...)` (see `metric_config`;
the gate itself is the pipeline's choice, made in pipelines/pipeline.py).

Per example, a preprocessor decodes the ground-truth label PNG (a raw tf.Example feature, original
resolution), crops the model's prediction to that size (`serving_default` returns each example's
class ids in the top-left corner of a batch-wide [Hmax, Wmax] array padded with IGNORE_LABEL) and reduces
the pair to a small C x C confusion matrix; the Beam combiner only sums matrices, so no image ever
travels through the shuffle. Pixels whose ground truth is `ignore_label` (default: the contract's
IGNORE_LABEL) are not counted.

Produced metric keys: `mean_iou` (the metric's name, which thresholds bind to; mean over the
classes present in the ground truth or the prediction), `pixel_accuracy` and `iou/<class name>`
(for classes present in the ground truth or the prediction; with `every_class`, which the
per-class gate sets, for every class, a class with neither ground truth nor prediction in the
evaluated data scoring 1.0: nothing to get wrong, and a gated key must exist). Example weights are not supported
(TFMA's own segmentation preprocessor mishandles them, and every pixel should count once).
"""
from __future__ import annotations

import io
import json
from typing import Iterator, Optional, Sequence

import apache_beam as beam
import numpy as np
from PIL import Image
from tensorflow_model_analysis.api import types
from tensorflow_model_analysis.metrics import metric_types, metric_util
from tensorflow_model_analysis.utils import util

from components.contract import CLASS_MAP_ENCODED, IGNORE_LABEL
from trainer_module.metrics.iou import confusion_matrix, scores_from_confusion

DEFAULT_PREDICTION_KEY = "class_ids"
MEAN_IOU_NAME = "mean_iou"
PIXEL_ACCURACY_NAME = "pixel_accuracy"
PER_CLASS_PREFIX = "iou/"


def _decode_label_png(value) -> np.ndarray:
    if isinstance(value, np.ndarray):
        if value.size != 1:
            raise ValueError(f"expected one encoded label image per example, got {value.size}")
        value = value.reshape(-1)[0]
    image = Image.open(io.BytesIO(value))
    if image.mode not in ("P", "L", "I", "I;16"):
        raise ValueError(f"the ground-truth label image must hold class ids (mode P or L), got mode {image.mode}")
    return np.asarray(image)


class _ConfusionPreprocessor(metric_types.Preprocessor):
    """Extracts -> one per-example confusion matrix (the combiner's input)."""

    def __init__(self, num_classes: int, ignore_label: int, ground_truth_key: str,
                 prediction_key: str, model_name: str, name: str):
        super().__init__(name=name)
        self._num_classes = num_classes
        self._ignore_label = ignore_label
        self._ground_truth_key = ground_truth_key
        self._prediction_key = prediction_key
        self._model_name = model_name

    def process(self, extracts: types.Extracts) -> Iterator[np.ndarray]:
        extracts = util.StandardExtracts(extracts)
        features = {**(extracts.get_transformed_features(self._model_name) or {}),
                    **(extracts.get_features() or {})}
        if self._ground_truth_key not in features:
            raise ValueError(f"ground-truth feature {self._ground_truth_key!r} not found in the "
                             f"examples (features: {sorted(features)})")
        predictions = extracts.get_predictions(self._model_name)
        if isinstance(predictions, dict):  # several model outputs: pick ours
            if self._prediction_key not in predictions:
                raise ValueError(f"prediction key {self._prediction_key!r} not in the model outputs "
                                 f"{sorted(predictions)}")
            predictions = predictions[self._prediction_key]
        if predictions is None:
            raise ValueError("the extracts hold no predictions (is the model's serving_default wired?)")
        yield confusion_matrix(_decode_label_png(features[self._ground_truth_key]), predictions,
                               self._num_classes, self._ignore_label)


class _ConfusionCombiner(beam.CombineFn):
    """Sums per-example confusion matrices."""

    def __init__(self, key: metric_types.MetricKey, num_classes: int):
        self._key = key
        self._num_classes = num_classes

    def create_accumulator(self) -> np.ndarray:
        return np.zeros((self._num_classes, self._num_classes), dtype=np.int64)

    def add_input(self, accumulator: np.ndarray, element: np.ndarray) -> np.ndarray:
        accumulator += element
        return accumulator

    def merge_accumulators(self, accumulators) -> np.ndarray:
        accumulators = iter(accumulators)
        result = next(accumulators)
        for accumulator in accumulators:
            result += accumulator
        return result

    def extract_output(self, accumulator: np.ndarray) -> dict:
        return {self._key: accumulator}


def _computations(num_classes: int, class_names: Optional[Sequence[str]] = None,
                  ignore_label: int = IGNORE_LABEL, ground_truth_key: str = CLASS_MAP_ENCODED,
                  prediction_key: str = DEFAULT_PREDICTION_KEY, name: str = MEAN_IOU_NAME,
                  model_name: str = "", output_name: str = "", example_weighted: bool = False,
                  every_class: bool = False) -> metric_types.MetricComputations:
    if example_weighted:
        raise ValueError(f"{name}: example weights are not supported; every pixel counts once "
                         "(set MetricsSpec.example_weights.unweighted)")
    names = list(class_names) if class_names else [f"class_{i}" for i in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(f"{name}: {len(names)} class names for num_classes={num_classes}")
    private_name = metric_util.generate_private_name_from_arguments(
        f"_segmentation_confusion_matrix_{name}", num_classes=num_classes, ignore_label=ignore_label,
        ground_truth_key=ground_truth_key, prediction_key=prediction_key)
    matrix_key = metric_types.MetricKey(name=private_name, model_name=model_name,
                                        output_name=output_name, example_weighted=example_weighted)
    preprocessor = _ConfusionPreprocessor(num_classes, ignore_label, ground_truth_key,
                                          prediction_key, model_name,
                                          name=f"{private_name}_preprocessor_{model_name}")

    def key(metric_name: str) -> metric_types.MetricKey:
        return metric_types.MetricKey(name=metric_name, model_name=model_name,
                                      output_name=output_name, example_weighted=example_weighted)

    mean_key, accuracy_key = key(name), key(PIXEL_ACCURACY_NAME)
    class_keys = [key(PER_CLASS_PREFIX + n) for n in names]

    def result(metrics: dict) -> dict:
        scores = scores_from_confusion(metrics[matrix_key])
        output = {mean_key: scores["mean_iou"], accuracy_key: scores["pixel_accuracy"]}
        per_class = scores["iou"]
        if every_class:
            per_class = {index: per_class.get(index, 1.0) for index in range(num_classes)}
        for index, value in per_class.items():
            output[class_keys[index]] = value
        return output

    return [
        metric_types.MetricComputation(keys=[matrix_key], preprocessors=[preprocessor],
                                       combiner=_ConfusionCombiner(matrix_key, num_classes)),
        metric_types.DerivedMetricComputation(keys=[mean_key, accuracy_key] + class_keys, result=result),
    ]


class SemanticSegmentationIoU(metric_types.Metric):
    """Mean IoU, pixel accuracy and per-class IoU from a C x C pixel confusion matrix."""

    def __init__(self, num_classes: int, class_names: Optional[Sequence[str]] = None,
                 ignore_label: int = IGNORE_LABEL, ground_truth_key: str = CLASS_MAP_ENCODED,
                 prediction_key: str = DEFAULT_PREDICTION_KEY, name: Optional[str] = None,
                 every_class: bool = False):
        super().__init__(metric_util.merge_per_key_computations(_computations),
                         num_classes=int(num_classes),
                         class_names=list(class_names) if class_names else None,
                         ignore_label=int(ignore_label), ground_truth_key=ground_truth_key,
                         prediction_key=prediction_key, name=name, every_class=bool(every_class))

    def _default_name(self) -> str:
        return MEAN_IOU_NAME


def metric_config(num_classes: int, class_names: Optional[Sequence[str]] = None,
                  threshold=None, **kwargs):
    """The `tfma.MetricConfig` for this metric; `threshold` (a `tfma.MetricThreshold`) gates mean IoU."""
    import tensorflow_model_analysis as tfma

    config = {"num_classes": int(num_classes), **kwargs}
    if class_names:
        config["class_names"] = list(class_names)
    return tfma.MetricConfig(class_name=SemanticSegmentationIoU.__name__, module=__name__,
                             config=json.dumps(config, sort_keys=True), threshold=threshold)
