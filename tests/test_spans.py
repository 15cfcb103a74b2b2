"""Scheduled runs over spans, through the real `segpipe` command on tiny settings.

- Two runs in one workdir over `D/span-{SPAN}`: the first sees only span 1 (trains from scratch,
  blessed); after span 2 appears, the second ingests span 2, trains on spans 1 and 2, starts from
  the first run's model and is compared against it.
- A span that breaks the schema stops the run before Transform, names the feature, exits 2.
- The span placeholders resolve like TFX's driver (newest span, fixed span, zero padding).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import REPO, run_segpipe

from components.beam_options import IN_PROCESS_ARGS

# In-process Beam; no on-device export (tests/test_pipeline_*_e2e.py cover it).
_IN_PROCESS = ["--set", f"beam_args=[{', '.join(IN_PROCESS_ARGS)}]", "--set", "tflite.variants=[]"]
TINY = {
    "semantic": [
        "--set", "trainer.image_size=64",
        "--set", "trainer.batch_size=4",
        "--set", "trainer.train_steps=6",
        "--set", "trainer.eval_steps=2",
        *_IN_PROCESS,
        "--set", "evaluator.mean_iou_lower_bound=0.0",
        "--set", "evaluator.mean_iou_max_drop=1.0",
    ],
    "instance": [  # as tests/test_pipeline_instance_e2e.py
        "--set", "trainer.image_size=64",
        "--set", "trainer.batch_size=2",
        "--set", "trainer.train_steps=4",
        "--set", "trainer.eval_steps=1",
        "--set", "trainer.steps_per_execution=2",
        *_IN_PROCESS,
        "--set", "evaluator.box_ap_lower_bound=0.0",
        "--set", "evaluator.mask_ap_lower_bound=0.0",
        "--set", "evaluator.box_ap_max_drop=1.0",
        "--set", "evaluator.mask_ap_max_drop=1.0",
    ],
}
SAMPLE_IMAGES = {"semantic": 24, "instance": 16}


def _sample(segpipe, task: str, out: Path, seed: int) -> None:
    segpipe("sample-data", "--task", task, "--seed", str(seed), "--out", str(out),
            "--num-images", str(SAMPLE_IMAGES[task]), "--image-size", "64")


def _run_spans(segpipe, task: str, tmp_path: Path) -> None:
    data = tmp_path / "D"
    workdir = tmp_path / "run"
    args = ["run", "--task", task, "--workdir", str(workdir), "--data-root", str(data / "span-{SPAN}"),
            "--set", "data.train_spans=2", "--set", "trainer.warm_start=true", *TINY[task]]
    _sample(segpipe, task, data / "span-1", seed=1)
    first, log = segpipe(*args)
    assert first["span"] == 1 and first["train_spans"] == [1]
    assert first["warm_start_from"] is None and first["baseline_model"] is None
    assert first["blessed"] is True and first["pushed_model"]
    assert "no blessed model yet, the Trainer started from scratch" in log

    _sample(segpipe, task, data / "span-2", seed=2)
    second, log = segpipe(*args)
    assert second["span"] == 2 and second["train_spans"] == [1, 2]
    assert Path(second["warm_start_from"]) == Path(first["model"])
    assert Path(second["baseline_model"]) == Path(first["model"])
    assert second["blessed"] is True and second["pushed_model"]
    assert second["pushed_model"] != first["pushed_model"]
    assert "started from scratch" not in log
    assert f"warm start: weights of {Path(first['model']) / 'Format-Serving'}" in log


@pytest.mark.e2e
def test_semantic_runs_follow_the_newest_span_and_warm_start(tmp_path, segpipe):
    _run_spans(segpipe, "semantic", tmp_path)


@pytest.mark.e2e
def test_instance_runs_follow_the_newest_span_and_warm_start(tmp_path, segpipe):
    _run_spans(segpipe, "instance", tmp_path)


def _strict_schema(tmp_path: Path) -> Path:
    """schemas/semantic.pbtxt, but images may be at most 32 px wide (the sample's are 64)."""
    text = (REPO / "schemas" / "semantic.pbtxt").read_text()
    block = text.index('name: "image/width"')
    domain = text.index("int_domain { min: 1 }", block)
    text = text[:domain] + "int_domain { min: 1 max: 32 }" + text[domain + len("int_domain { min: 1 }"):]
    out = tmp_path / "schemas"
    out.mkdir()
    (out / "semantic.pbtxt").write_text(text)
    shutil.copy(REPO / "schemas" / "instance.pbtxt", out / "instance.pbtxt")
    return out


@pytest.mark.e2e
def test_a_span_that_breaks_the_schema_stops_before_transform(tmp_path, segpipe):
    data = tmp_path / "D"
    _sample(segpipe, "semantic", data / "span-1", seed=1)
    workdir = tmp_path / "run"
    proc = run_segpipe("run", "--task", "semantic", "--workdir", str(workdir),
                       "--data-root", str(data / "span-{SPAN}"),
                       "--set", f"schema_dir={_strict_schema(tmp_path)}", *TINY["semantic"])
    assert proc.returncode == 2, proc.stderr[-4000:]
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith("segpipe run: error: span 1 breaks the schema"), error
    assert "image/width" in error, error
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {f["feature"] for f in summary["data_gate_failures"]} == {"image/width"}
    assert all(f["reason"] for f in summary["data_gate_failures"])
    assert summary["span"] == 1 and summary["blessed"] is False and summary["pushed_model"] is None
    assert summary["model"] is None and summary["train_spans"] is None
    root = workdir / "pipeline_root"
    assert (root / "ExampleValidator").is_dir()
    for component in ("Transform", "Trainer", "Evaluator", "Pusher"):
        assert not (root / component).exists(), component
    assert not (workdir / "serving").exists() or not any((workdir / "serving").iterdir())
    # The refused span is no longer LIVE, so no later span range (data.train_spans) resolves it.
    from ml_metadata.proto import metadata_store_pb2

    from pipelines.run_results import _store

    [examples] = _store(str(workdir / "metadata.sqlite")).get_artifacts_by_type("Examples")
    assert examples.state == metadata_store_pb2.Artifact.ABANDONED
    assert examples.custom_properties["data_gate"].string_value == "rejected"


def test_span_placeholders_resolve_like_the_tfx_driver(tmp_path):
    from components import spans
    from components.errors import InputError

    for span in ("span-007", "span-010", "span-9"):
        (tmp_path / span / "annotations").mkdir(parents=True)
        (tmp_path / span / "annotations" / "train.json").write_text("{}")
    template = str(tmp_path / "span-{SPAN}" / "annotations" / "train.json")
    resolved, span, version = spans.resolve([template], also=[str(tmp_path / "span-{SPAN}" / "images")])
    assert span == 10 and version is None
    assert resolved == [str(tmp_path / "span-010" / "annotations" / "train.json"),
                        str(tmp_path / "span-010" / "images")]
    assert spans.resolve([template], span=9)[1] == 9
    with pytest.raises(InputError, match="no span found"):
        spans.resolve([template], span=3)
    assert spans.fill("x/span-{SPAN:3}/v{VERSION}", 7, 2) == "x/span-007/v2"
    # A fixed folder is left alone; a templated root becomes TFX's input_base + patterns.
    assert spans.split_base("/d/voc", ["ImageSets/Segmentation/train.txt"]) == (
        "/d/voc", ["ImageSets/Segmentation/train.txt"], None)
    assert spans.split_base("gs://b/coco/span-{SPAN}", ["annotations/train.json"]) == (
        "gs://b/coco", ["span-{SPAN}/annotations/train.json"], "span-{SPAN}")
