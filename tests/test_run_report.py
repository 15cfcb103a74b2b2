"""The run report: its charts (matplotlib), the RunReport component's executor, and the page in a
real browser. The page of a real pipeline run is checked by the two e2e tests
(test_pipeline_semantic_e2e.py, test_pipeline_instance_e2e.py); here it is rendered from a
hand-made context with every section filled, so the browser check takes seconds."""
from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import check_report_page, open_in_chromium
from PIL import Image

from pipelines import report, visualize


def _colours(picture: Image.Image) -> set[tuple[int, int, int]]:
    pixels = np.asarray(picture).reshape(-1, 3)
    return {tuple(int(v) for v in p) for p in np.unique(pixels, axis=0)}


def test_per_class_bars_show_candidate_and_baseline_side_by_side():
    names = ["background", "circle", "a much longer class name"]
    chart = visualize.per_class_bars(names, {"candidate": [0.9, 0.4, float("nan")],
                                             "baseline": [0.8, 0.5, 0.1]}, "per-class IoU")
    assert chart.width == 640 and chart.height > 100
    colours = _colours(chart)
    for hex_colour in visualize.SERIES_COLOURS[:2]:  # both series drawn
        assert tuple(int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)) in colours
    with pytest.raises(ValueError):
        visualize.per_class_bars(names, {"candidate": [0.1]}, "wrong length")


def test_heatmap_pr_and_training_charts():
    heat = visualize.confusion_heatmap(np.array([[50, 3, 2], [4, 20, 1], [0, 0, 0]]), ["bg", "circle", "square"])
    assert heat.width > 400 and heat.height > 400
    with pytest.raises(ValueError):
        visualize.confusion_heatmap(np.zeros((2, 3)), ["a", "b"])
    recall = np.linspace(0, 1, 101)
    pr = visualize.pr_curves(recall, {"candidate IoU=.50": 1 - recall ** 2, "baseline IoU=.50": np.full(101, -1.0)})
    assert pr.size == (640, 420)
    curves = visualize.training_curves(([1, 2, 3], [2.0, 1.5, 1.2]), ([], []))
    assert curves.size == (900, 340)
    assert visualize.png_bytes(curves).startswith(b"\x89PNG")


def test_pr_curve_and_per_category_ap_from_a_cocoeval_precision_array():
    class FakeEval:  # the parts of pycocotools' COCOeval the report reads
        class params:
            iouThrs = np.linspace(0.5, 0.95, 10)
            catIds = [3, 7]
        eval = {"precision": np.full((10, 101, 2, 4, 3), -1.0)}

    FakeEval.eval["precision"][:, :, 0, 0, -1] = 0.5   # category 3: precision 0.5 everywhere
    FakeEval.eval["precision"][0, :, 1, 0, -1] = 1.0   # category 7: only at IoU .50
    assert report.per_category_ap(FakeEval, [3, 7, 9]) == pytest.approx([0.5, 1.0, float("nan")], nan_ok=True)
    assert report.pr_curve(FakeEval, 0.5) == pytest.approx(np.full(101, 0.75))
    assert report.pr_curve(FakeEval, 0.75) == pytest.approx(np.full(101, 0.5))


CALLS = []


def record_call(inputs, output_dir, options):
    CALLS.append((inputs, output_dir, options))
    return output_dir + "/report.html"


def test_executor_hands_plain_inputs_to_the_report_fn(tmp_path):
    from tfx.types import artifact_utils, standard_artifacts

    from components import run_report

    def artifact(cls, name):
        a = cls()
        a.uri = str(tmp_path / name)
        return a

    examples = artifact(standard_artifacts.Examples, "examples")
    examples.split_names = artifact_utils.encode_split_names(["train", "val"])
    examples.span = 3
    out = artifact(run_report.RunReport, "report")
    inputs = {"examples": [examples], "model": [artifact(standard_artifacts.Model, "model")],
              "evaluation": [artifact(standard_artifacts.ModelEvaluation, "evaluation")],
              "baseline_model": []}
    run_report.Executor().Do(inputs, {"report": [out]},
                             {"report_fn": f"{__name__}.record_call", "options": json.dumps({"task": "semantic"})})
    given, output_dir, options = CALLS[-1]
    assert output_dir == out.uri and options == {"task": "semantic"}
    assert given["examples"] == [{"uri": examples.uri, "span": 3, "version": 0, "split_names": ["train", "val"]}]
    assert given["model"].endswith("model") and given["baseline_model"] is None and given["model_run"] is None
    assert out.get_string_custom_property("report_file") == out.uri + "/report.html"


def _context(task: str) -> dict:
    """Every section of the page filled, the pictures drawn by the same chart functions."""
    uri = report.data_uri
    rgb = np.zeros((64, 64, 3), np.uint8)
    rgb[..., 1] = 120
    ids = np.zeros((64, 64), np.uint8)
    ids[10:40, 10:40] = 1
    recall = np.linspace(0, 1, 101)
    names = ["background", "circle", "square"]
    return {
        "task": task, "pipeline_name": "segpipe-test", "generated": "now", "model": "/m/2",
        "baseline_model": "/m/1", "evaluation": "/e/2", "eval_split": "val", "errors": {},
        "state": "NOT_BLESSED", "failures": ["mean_iou = 0.4000 is below the lower bound 0.5000"],
        "checks": [{"metric": "mean_iou", "check": "value", "bound": "≥ 0.5000", "value": 0.4, "passed": False},
                   {"metric": "mean_iou", "check": "change vs baseline", "bound": "≥ -0.0100", "value": 0.02,
                    "passed": True}],
        "metrics_rows": [{"name": "mean_iou", "candidate": "0.4000", "baseline": "0.3800", "change": "+0.0200",
                          "worse": False}],
        "per_class": [uri(visualize.per_class_bars(names, {"candidate": [0.9, 0.3, 0.1],
                                                          "baseline": [0.8, 0.3, float("nan")]}, "IoU"))],
        "confusion": uri(visualize.confusion_heatmap(np.array([[9, 1, 0], [2, 7, 1], [0, 3, 5]]), names)),
        "pr": [uri(visualize.pr_curves(recall, {"candidate IoU=.50": 1 - recall}))],
        "images": [{"id": "7", "file": "7.jpg",
                    "pictures": [uri(Image.fromarray(rgb)), uri(visualize.overlay(rgb, ids)),
                                 uri(visualize.overlay(rgb, ids[::-1]))]}],
        "image_columns": ["image", "ground truth", "candidate prediction"], "min_score": 0.3,
        "subset_note": "on all 4 'val' examples",
        "ap_check": ["candidate box AP here 0.5000, Evaluator box_ap 0.5000"],
        "on_device": report.on_device_table({
            "saved_model": {"mean_iou": 0.4}, "max_quantization_drop": {"mean_iou": 0.015},
            "variants": {"float16": {"metrics": {"mean_iou": 0.4}, "drop": {"mean_iou": 0.0}, "size_bytes": 2**20,
                                     "blessed": True, "reason": "blessed: mean_iou drop 0.0000 <= 0.0150"},
                         "int8": {"metrics": {"mean_iou": 0.35}, "drop": {"mean_iou": 0.05}, "size_bytes": 2**19,
                                  "blessed": False, "reason": "not blessed: mean_iou dropped 0.0500"}}}),
        "training": {"picture": uri(visualize.training_curves(([1, 2, 3], [2.0, 1.5, 1.2]),
                                                              ([1, 2, 3], [0.1, 0.05, 0.01]))),
                     "steps": 3, "final_loss": "1.2000"},
        "data": {"spans": [3], "statistics": {"val": {"examples": 4, "features": 9}},
                 "anomalies": {"val": [{"feature": "image/format", "severity": "ERROR",
                                        "what": "Unexpected string values", "description": "png <seen>"}]},
                 "artifacts": [{"uri": "/x/examples/1", "span": 3, "version": None,
                                "summary": {"examples": {"train": 20, "val": 4}, "images": 25, "quarantined": 1,
                                            "instances": 0, "quarantine_reasons": {"unreadable image": 1},
                                            "dropped_annotations": {}, "repaired_annotations": {}},
                                "quarantine": [{"kind": "image", "reason": "unreadable image", "split": "val",
                                                "image_id": "9", "file": "9.jpg", "detail": "<truncated>"}],
                                "quarantine_total": 1}]},
    }


@pytest.mark.parametrize("task", ["semantic", "instance"])
def test_report_page_renders_in_headless_chromium(tmp_path, task):
    page = tmp_path / "report.html"
    page.write_text(report.render(_context(task)), encoding="utf-8")
    text = check_report_page(page, task)
    assert "NOT BLESSED" in text and "below the lower bound" in text
    assert "&lt;truncated&gt;" in text  # data from files is escaped
    decoded, total = open_in_chromium(page, tmp_path / "screenshot.png")
    assert total == text.count("<img ") and decoded == total
    with Image.open(tmp_path / "screenshot.png") as shot:
        assert shot.size == (1280, 4000)
        assert len(_colours(shot.convert("RGB").resize((320, 1000)))) > 50  # not a blank page
