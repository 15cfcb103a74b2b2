"""The semantic pipeline end to end, through the real `segpipe run` command, on a tiny configuration,
as a scheduled pipeline runs it: two runs in one workdir over `D/span-{SPAN}`.

Run 1 sees only span 1: it trains from scratch, passes a reachable gate, is blessed and pushed to a
versioned serving dir. Both TFLite variants are converted and measured, and a quantization bound no
variant can meet keeps them out of the push (tests/test_pipeline_instance_e2e.py pushes a blessed
one). After span 2 appears, run 2 ingests it, trains on spans 1 and 2 starting from run 1's model,
has run 1's model as its baseline and an impossible mIoU bound: it must not be blessed, must push
nothing, and say why.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from conftest import check_report_page, chromium, open_in_chromium

from components.beam_options import IN_PROCESS_ARGS
from pipelines import sample_data

TINY = [
    "--set", "trainer.image_size=64",
    "--set", "trainer.batch_size=4",
    "--set", "trainer.train_steps=6",
    "--set", "trainer.eval_steps=2",
    # The multi-process DirectRunner pays a TensorFlow import per worker: not worth it for 24 images.
    "--set", f"beam_args=[{', '.join(IN_PROCESS_ARGS)}]",
    # Scheduled runs: the newest span, trained with the span before it, warm-started.
    "--set", "data.train_spans=2",
    "--set", "trainer.warm_start=true",
]


def _sample_span(data: Path, span: int) -> None:
    sample_data.write_semantic(str(data / f"span-{span}"), num_images=24, image_size=64, seed=span)


def _run(segpipe, workdir: Path, data: Path, *extra: str) -> tuple[dict, str]:
    return segpipe("run", "--task", "semantic", "--workdir", str(workdir), "--data-root",
                   str(data / "span-{SPAN}"), *TINY, *extra)


@pytest.mark.e2e
def test_semantic_pipeline_over_spans_blesses_pushes_then_gates_against_baseline(tmp_path, segpipe):
    workdir, data = tmp_path / "run", tmp_path / "D"
    open_gate = ["--set", "evaluator.mean_iou_lower_bound=0.0", "--set", "evaluator.mean_iou_max_drop=1.0"]
    _sample_span(data, 1)
    first, log = _run(segpipe, workdir, data, *open_gate, "--set", "tflite.max_quantization_drop=-1.0")
    for component in ("VocExampleGen", "Transform", "Trainer", "Evaluator", "TFLiteExport", "Pusher"):
        assert f"{component} done in" in log, component
    assert first["task"] == "semantic" and first["blessed"] is True
    assert first["span"] == 1 and first["train_spans"] == [1]
    assert first["warm_start_from"] is None and first["baseline_model"] is None
    assert "no blessed model yet, the Trainer started from scratch" in log
    assert 0.0 <= first["metrics"]["mean_iou"] <= 1.0
    assert "pixel_accuracy" in first["metrics"]
    pushed = Path(first["pushed_model"])
    assert pushed.parent == Path(first["serving_dir"]) and pushed.name.isdigit()  # versioned
    assert (pushed / "saved_model.pb").is_file()
    # Both on-device variants measured with the SavedModel's metric code; none within a bound of -1,
    # so the version directory holds the SavedModel alone.
    tflite = first["tflite"]
    assert 0.0 <= tflite["saved_model"]["mean_iou"] <= 1.0
    for variant in ("float16", "int8"):
        entry = tflite["variants"][variant]
        assert entry["blessed"] is False and "more than the allowed -1.0000" in entry["reason"], entry
        assert entry["drop"]["mean_iou"] == pytest.approx(
            tflite["saved_model"]["mean_iou"] - entry["metrics"]["mean_iou"], abs=1e-6)
        assert entry["size_bytes"] > 0
        assert f"TFLite {variant} (not pushed)" in log
    assert sorted(p.name for p in pushed.glob("*.tflite")) == []
    page = check_report_page(first["report_html"], "semantic")  # the RunReport component's page
    assert "BLESSED: the candidate passed" in page and "RunReport done in" in log
    assert "On-device models (TFLite)" in page and "not blessed" in page

    _sample_span(data, 2)
    second, log = _run(segpipe, workdir, data, "--set", "evaluator.mean_iou_lower_bound=1.01",
                       "--set", "tflite.variants=[]")
    assert second["span"] == 2 and second["train_spans"] == [1, 2]
    assert Path(second["warm_start_from"]) == Path(first["model"])
    assert f"warm start: weights of {Path(first['model']) / 'Format-Serving'}" in log
    assert "started from scratch" not in log
    assert second["blessed"] is False and second["pushed_model"] is None
    assert second["baseline_model"] and Path(second["baseline_model"]) == Path(first["model"])
    assert "mean_iou" in second["change_vs_baseline"]
    assert any("mean_iou" in f for f in second["gate_failures"]), second
    assert "NOT blessed, nothing pushed" in log
    assert sorted(p.name for p in Path(first["serving_dir"]).iterdir()) == [pushed.name]

    # The second run's page: the verdict with its reason, candidate next to the baseline.
    page = check_report_page(second["report_html"], "semantic")
    assert "NOT BLESSED" in page and "is below the lower bound" in page
    assert "baseline prediction" in page and first["model"] in page
    if chromium():  # tests/test_run_report.py says so when it is missing
        decoded, total = open_in_chromium(second["report_html"], tmp_path / "report.png")
        assert decoded == total == page.count("<img ")

    # `segpipe bench loop` on the newest Trainer's own inputs: its loop against its bare step.
    loop, log = segpipe("bench", "loop", "--workdir", str(workdir), "--steps", "3", "--rounds", "2")
    assert (loop["task"], loop["image_size"], loop["batch_size"]) == ("semantic", 64, 4)
    assert len(loop["loop_steps_per_s"]) == len(loop["fixed_batch_steps_per_s"]) == 2
    assert min(loop["loop_steps_per_s"] + loop["fixed_batch_steps_per_s"]) > 0
    assert "round 2: loop" in log and loop["median_ratio"] > 0

