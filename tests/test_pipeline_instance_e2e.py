"""The instance pipeline end to end through `segpipe run --task instance` on a tiny configuration,
then the Evaluator's COCO numbers checked against `segpipe predict` + `segpipe evaluate-coco` on
the same model and the same validation examples: the two paths must agree."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import check_report_page, chromium, open_in_chromium

from components.beam_options import IN_PROCESS_ARGS

TINY = [
    "--set", "data.sample.num_images=16",
    "--set", "data.sample.image_size=64",
    "--set", "trainer.image_size=64",
    "--set", "trainer.batch_size=2",
    "--set", "trainer.train_steps=4",
    "--set", "trainer.eval_steps=1",
    "--set", "trainer.steps_per_execution=2",
    "--set", f"beam_args=[{', '.join(IN_PROCESS_ARGS)}]",
    "--set", "evaluator.box_ap_lower_bound=0.0",
    "--set", "evaluator.mask_ap_lower_bound=0.0",
    # The float16 Mask R-CNN, gated loosely: 4 training steps say nothing about quantization.
    "--set", "tflite.variants=[float16]",
    "--set", "tflite.max_quantization_drop=1.0",
]


@pytest.mark.e2e
def test_instance_pipeline_and_evaluator_agrees_with_evaluate_coco(tmp_path, segpipe):
    workdir = tmp_path / "run"
    run, log = segpipe("run", "--task", "instance", "--workdir", str(workdir), *TINY)
    for component in ("CocoExampleGen", "Transform", "Trainer", "Evaluator", "TFLiteExport", "Pusher"):
        assert f"{component} done in" in log, component
    assert run["task"] == "instance" and run["blessed"] is True
    pushed = Path(run["pushed_model"])
    assert (pushed / "saved_model.pb").is_file()
    float16 = run["tflite"]["variants"]["float16"]
    assert float16["blessed"] is True and set(float16["metrics"]) >= {"box_ap", "mask_ap"}, float16
    assert (pushed / "model_float16.tflite").stat().st_size == float16["size_bytes"]
    metrics = run["metrics"]
    for key in ("box_ap", "box_ap50", "box_ap75", "mask_ap", "mask_ap50", "mask_ap_small"):
        assert 0.0 <= metrics[key] <= 1.0, key
    page = check_report_page(run["report_html"], "instance")  # the RunReport component's page
    assert "BLESSED: the candidate passed" in page and "per-category box AP" not in page  # a picture, not text
    # The report's own COCOeval (its charts) agrees with the Evaluator on the same examples.
    for what in ("box", "mask"):
        assert f"candidate {what} AP here {metrics[what + '_ap']:.4f}, Evaluator {what}_ap" in page, what
    if chromium():  # tests/test_run_report.py says so when it is missing
        decoded, total = open_in_chromium(run["report_html"], tmp_path / "report.png")
        assert decoded == total == page.count("<img ")

    # The same model through the user-facing commands, on the same validation examples.
    sample = workdir / "sample_data"
    val_examples = sorted((workdir / "pipeline_root" / "CocoExampleGen" / "examples").glob("*/Split-val"))
    assert val_examples
    val = json.loads((sample / "annotations" / "instances_val.json").read_text())
    val_images = tmp_path / "val_images"
    val_images.mkdir()
    for image in val["images"]:
        (val_images / Path(image["file_name"]).name).symlink_to(sample / "images" / image["file_name"])
    predicted, _ = segpipe("predict", "--model", str(Path(run["model"]) / "Format-Serving"),
                            "--images", str(val_images),
                            "--annotations", str(sample / "annotations" / "instances_val.json"),
                            "--out", str(tmp_path / "predict"))
    assert predicted["images"] == len(val["images"])
    for iou_type, prefix in (("bbox", "box"), ("segm", "mask")):
        coco, _ = segpipe("evaluate-coco", "--examples", str(val_examples[-1]),
                           "--detections", predicted["detections_file"], "--iou-type", iou_type)
        assert coco["num_images"] == len(val["images"])
        for ours, theirs in (("ap", "AP"), ("ap50", "AP50"), ("ap75", "AP75"), ("ar100", "AR100")):
            assert metrics[f"{prefix}_{ours}"] == pytest.approx(coco[theirs], abs=1e-3), (prefix, ours)
