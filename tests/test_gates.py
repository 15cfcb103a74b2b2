"""The per-class gate through real TFMA: a candidate better on average that loses more than
`evaluator.per_class_max_drop` on one class is not blessed, and the failure names that class.

No training: TFMA evaluates materialized predictions (one int64 feature per model, shaped by the
schema) against the ground-truth PNGs with the pipeline's own EvalConfig (pipelines/pipeline.py),
so the outcome is fixed by construction, not by a noisy model.
"""
from __future__ import annotations

import io
import os

import numpy as np
import pytest

from components import contract
from components import label_map as label_maps

SIZE = 8
CLASSES = ["background", "circle", "square"]
PREDICTION_FEATURE = {"candidate": "pred_candidate", "baseline": "pred_baseline"}


def _maps():
    """Ground truth rows 0-1 background, 2-4 circle, 5-7 square. The baseline misses the square's
    last row (IoU bg .667, circle 1, square .667: mean .778); the candidate paints the circle's
    last row as square (bg 1, circle .667, square .75: mean .806, better) - circle drops by .333."""
    truth = np.zeros((SIZE, SIZE), np.int64)
    truth[2:5], truth[5:] = 1, 2
    baseline = truth.copy()
    baseline[7] = 0
    candidate = truth.copy()
    candidate[4] = 2
    return truth, candidate, baseline


def _write_examples(path: str, count: int = 4) -> None:
    import tensorflow as tf
    from PIL import Image

    truth, candidate, baseline = _maps()
    png = io.BytesIO()
    Image.fromarray(truth.astype(np.uint8), mode="L").save(png, format="PNG")
    with tf.io.TFRecordWriter(path) as writer:
        for _ in range(count):
            feature = {
                contract.CLASS_MAP_ENCODED: tf.train.Feature(
                    bytes_list=tf.train.BytesList(value=[png.getvalue()])),
                PREDICTION_FEATURE["candidate"]: tf.train.Feature(
                    int64_list=tf.train.Int64List(value=candidate.reshape(-1).tolist())),
                PREDICTION_FEATURE["baseline"]: tf.train.Feature(
                    int64_list=tf.train.Int64List(value=baseline.reshape(-1).tolist())),
            }
            writer.write(tf.train.Example(
                features=tf.train.Features(feature=feature)).SerializeToString())


def _schema():
    from google.protobuf import text_format
    from tensorflow_metadata.proto.v0 import schema_pb2

    shaped = "".join(f"""
        feature {{ name: "{name}" type: INT
                   presence {{ min_fraction: 1.0 }}
                   shape {{ dim {{ size: {SIZE} }} dim {{ size: {SIZE} }} }} }}"""
                     for name in PREDICTION_FEATURE.values())
    return text_format.Parse(f"""
        feature {{ name: "{contract.CLASS_MAP_ENCODED}" type: BYTES }}{shaped}""",
                             schema_pb2.Schema())


def _evaluate(tmp_path, **gate) -> str:
    """TFMA with the pipeline's EvalConfig for the semantic task; returns the output path."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    import tensorflow_model_analysis as tfma

    from pipelines import pipeline
    from pipelines.config import load_config

    config = load_config("semantic", overrides={"evaluator": {
        "mean_iou_lower_bound": 0.5, "mean_iou_max_drop": 0.01, **gate}})
    eval_config = pipeline.eval_config(config, label_maps.from_class_names(CLASSES))
    del eval_config.model_specs[:]
    for name, feature in PREDICTION_FEATURE.items():
        eval_config.model_specs.add(name=name, prediction_key=feature,
                                    is_baseline=name == "baseline")
    data = str(tmp_path / "examples.tfrecord")
    _write_examples(data)
    out = str(tmp_path / f"tfma_{len(gate)}")
    from tensorflow_model_analysis.api import model_eval_lib
    from tensorflow_model_analysis.utils import config_util

    # TFMA counts the baseline by its loaded models; here both "models" are materialized
    # predictions, so say there is a baseline, as the TFX Evaluator does when it is given one.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(model_eval_lib, "_update_eval_config_with_defaults",
                      lambda config, _: config_util.update_eval_config_with_defaults(
                          config, has_baseline=True, rubber_stamp=False))
        tfma.run_model_analysis(eval_config=eval_config, data_location=data, output_path=out,
                                schema=_schema())
    return out


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gates")
    return {
        "mean_only": _evaluate(tmp),
        "per_class": _evaluate(tmp, per_class_max_drop=0.1, per_class_lower_bound=0.5),
    }


def test_construction_is_better_on_average_but_loses_circle(evaluated):
    from pipelines.run_results import read_metrics

    current, change = read_metrics(evaluated["mean_only"])
    assert current["mean_iou"] == pytest.approx((1 + 2 / 3 + 0.75) / 3, abs=1e-6)
    assert change["mean_iou"] > 0
    assert change["iou/circle"] == pytest.approx(-1 / 3, abs=1e-6)
    assert change["iou/square"] > 0 and change["iou/background"] > 0


def test_mean_gate_alone_blesses(evaluated):
    import tensorflow_model_analysis as tfma

    assert tfma.load_validation_result(evaluated["mean_only"]).validation_ok


def test_per_class_gate_refuses_and_names_the_class(evaluated):
    import tensorflow_model_analysis as tfma

    from pipelines.run_results import read_gate_failures

    result = tfma.load_validation_result(evaluated["per_class"])
    assert not result.validation_ok
    failed = {f.metric_key.name for s in result.metric_validations_per_slice for f in s.failures}
    assert failed == {"iou/circle"}, failed
    [failure] = read_gate_failures(evaluated["per_class"])
    assert failure.startswith("iou/circle changed by -0.3333"), failure


def test_per_class_gate_config_binds_every_class():
    from pipelines import pipeline
    from pipelines.config import load_config

    config = load_config("instance", overrides={"evaluator": {"per_class_lower_bound": 0.1}})
    label_map = label_maps.from_coco_categories([{"id": 3, "name": "circle"}, {"id": 7, "name": "square"}])
    gated = {}
    for metric in pipeline.eval_config(config, label_map).metrics_specs[0].metrics:
        if metric.class_name == "KeyGate":
            import json
            gated[json.loads(metric.config)["name"]] = metric.threshold.value_threshold.lower_bound.value
    assert gated == {k: pytest.approx(0.1) for k in
                     ("box_ap/circle", "box_ap/square", "mask_ap/circle", "mask_ap/square")}


def test_per_category_ap_from_cocoeval():
    from trainer_module.metrics import coco_eval

    gt = {"images": [{"id": 1, "height": 20, "width": 20}],
          "annotations": [
              {"id": 1, "image_id": 1, "category_id": 3, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 0},
              {"id": 2, "image_id": 1, "category_id": 7, "bbox": [10, 10, 8, 8], "area": 64, "iscrowd": 0}],
          "categories": [{"id": 3, "name": "circle"}, {"id": 7, "name": "square"},
                         {"id": 9, "name": "cross"}]}
    detections = [{"image_id": 1, "category_id": 3, "bbox": [0, 0, 10, 10], "score": 0.9}]
    result = coco_eval.evaluate(gt, detections, "bbox")
    # circle found exactly, square missed, cross has no ground truth (left out, not -1).
    assert result["per_category_ap"] == {3: pytest.approx(1.0), 7: pytest.approx(0.0)}
