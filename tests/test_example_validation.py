"""The ExampleGens inside TFX: ExampleGen -> StatisticsGen -> ImportSchemaGen -> ExampleValidator
(LocalDagRunner) on real labelme data, with no anomalies against schemas/<task>.pbtxt."""
import json
import os
import shutil
from pathlib import Path

from conftest import REPO, shared_data

from components.beam_options import IN_PROCESS_ARGS
from components.contract import LABEL_MAP_FILE


def _run(tmp_path: Path, example_gen, task: str) -> Path:
    """Run the 4-component pipeline; returns the pipeline root."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    from tfx import v1 as tfx

    statistics = tfx.components.StatisticsGen(examples=example_gen.outputs["examples"])
    schema = tfx.components.ImportSchemaGen(schema_file=str(REPO / "schemas" / f"{task}.pbtxt"))
    validator = tfx.components.ExampleValidator(statistics=statistics.outputs["statistics"],
                                                schema=schema.outputs["schema"])
    root = tmp_path / "root"
    pipeline = tfx.dsl.Pipeline(
        pipeline_name=f"ingest-{task}", pipeline_root=str(root),
        components=[example_gen, statistics, schema, validator],
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
            str(tmp_path / "mlmd.sqlite")),
        beam_pipeline_args=list(IN_PROCESS_ARGS))
    tfx.orchestration.LocalDagRunner().run(pipeline)
    return root


def _single_dir(pattern_root: Path, component: str, output: str) -> Path:
    [uri] = list((pattern_root / component / output).iterdir())
    return uri


def _anomalies(root: Path, validator_id: str = "ExampleValidator") -> dict:
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    found = {}
    uri = _single_dir(root, validator_id, "anomalies")
    for split_dir in sorted(uri.glob("Split-*")):
        anomalies = anomalies_pb2.Anomalies.FromString((split_dir / "SchemaDiff.pb").read_bytes())
        found[split_dir.name] = {k: [r.description for r in v.reason]
                                 for k, v in anomalies.anomaly_info.items()}
    assert found, f"no anomalies output under {uri}"
    return found


def test_coco_pipeline_validates(tmp_path):
    src = shared_data("labelme/instance_segmentation/data_dataset_coco")
    from components.coco_example_gen import CocoExampleGen

    gen = CocoExampleGen(input_base=str(src), annotations="annotations.json", image_dir=".",
                         hash_split={"train": 2, "val": 1})
    root = _run(tmp_path, gen, "instance")
    assert _anomalies(root) == {"Split-train": {}, "Split-val": {}}
    examples = _single_dir(root, "FileBasedExampleGen", "examples")
    summary = json.loads((examples / "summary.json").read_text())
    assert summary["images"] == 3 and summary["quarantined"] == 0 and summary["instances"] == 12
    assert sum(summary["examples"].values()) == 3
    assert (examples / "quarantine.jsonl").read_text() == ""
    label_map = json.loads((examples / LABEL_MAP_FILE).read_text())
    assert label_map["task"] == "instance" and len(label_map["classes"]) == 20
    assert sorted(p.name for p in examples.glob("Split-*")) == ["Split-train", "Split-val"]


def test_voc_pipeline_validates(tmp_path):
    src = shared_data("labelme/semantic_segmentation/data_dataset_voc")
    from components.voc_example_gen import VocExampleGen

    voc = tmp_path / "voc"  # the labelme set plus split lists, to exercise the list path
    shutil.copytree(src, voc)
    lists = voc / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("2011_000003\n2011_000006\n")
    (lists / "val.txt").write_text("2011_000025\n")
    root = _run(tmp_path, VocExampleGen(input_base=str(voc)), "semantic")
    assert _anomalies(root) == {"Split-train": {}, "Split-val": {}}
    examples = _single_dir(root, "FileBasedExampleGen", "examples")
    summary = json.loads((examples / "summary.json").read_text())
    assert summary["examples"] == {"train": 2, "val": 1} and summary["quarantined"] == 0
    assert json.loads((examples / LABEL_MAP_FILE).read_text())["classes"][0] == \
        {"label": 0, "id": 0, "name": "_background_"}
