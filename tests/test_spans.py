"""Scheduled runs over spans, through the real `segpipe` command on tiny settings.

- Two runs in one workdir over `D/span-{SPAN}` (the second on spans 1 and 2, warm-started from the
  first and compared against it): tests/test_pipeline_semantic_e2e.py.
- A span that breaks the schema stops the run before Transform, names the feature, exits 2.
- The span placeholders resolve like TFX's driver (newest span, fixed span, zero padding).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import REPO, run_segpipe
from test_pipeline_semantic_e2e import TINY

from pipelines import sample_data

# The semantic e2e's tiny run (in-process Beam), without on-device export and with an open gate:
# only the data gate can stop the run.
TINY_SEMANTIC = [*TINY, "--set", "tflite.variants=[]", "--set", "evaluator.mean_iou_lower_bound=0.0",
                 "--set", "evaluator.mean_iou_max_drop=1.0"]


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
def test_a_span_that_breaks_the_schema_stops_before_transform(tmp_path):
    data = tmp_path / "D"
    sample_data.write_semantic(str(data / "span-1"), num_images=24, image_size=64, seed=1)
    workdir = tmp_path / "run"
    proc = run_segpipe("run", "--task", "semantic", "--workdir", str(workdir),
                       "--data-root", str(data / "span-{SPAN}"),
                       "--set", f"schema_dir={_strict_schema(tmp_path)}", *TINY_SEMANTIC)
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
