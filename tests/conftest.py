"""Shared test helpers: the real `segpipe` command in a subprocess, the real data of ../shared/data,
and the examples an ingestion wrote."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def shared_data(relative: str) -> Path:
    """A path under ../shared/data; skips the test with a clear message when it is absent."""
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"real data absent: {path} (see ../shared/data/SOURCES.md)")
    return path


def run_segpipe(*args: str, timeout: int = 1500) -> subprocess.CompletedProcess:
    """`segpipe ARGS...` as a user runs it, in a subprocess from the repository root."""
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})


@pytest.fixture(scope="session")
def segpipe():
    """Runs a `segpipe` command that must succeed; returns (its JSON summary, its stderr)."""
    def run(*args: str, timeout: int = 1500) -> tuple[dict, str]:
        proc = run_segpipe(*args, timeout=timeout)
        assert proc.returncode == 0, proc.stderr[-6000:]
        return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr
    return run


def read_examples(examples: Path | str) -> dict[str, dict]:
    """source id -> parsed example, for every TFRecord file under `examples` (a directory or glob)."""
    from components.contract import IMAGE_SOURCE_ID
    from components.example_codec import parse_example
    from components.paths import tfrecord_files
    from trainer_module.metrics.coco_eval import read_serialized

    parsed = [parse_example(s) for s in read_serialized(tfrecord_files(str(examples)))]
    return {ex[IMAGE_SOURCE_ID][0].decode(): ex for ex in parsed}


def transform_in_process(train: list[dict], val: list[dict], raw_feature_spec: dict, custom_config: dict,
                         out_dir: Path) -> dict:
    """The task's preprocessing_fn through tft_beam in this process, writing what TFX's Transform
    writes (the transform graph with the raw metadata, GZIP TFRecords of transformed examples per
    split). `train`/`val` are rows of raw feature values. Returns the Trainer's file arguments."""
    import functools

    import apache_beam as beam
    import tensorflow_transform as tft
    import tensorflow_transform.beam as tft_beam
    from tensorflow_transform.tf_metadata import dataset_metadata, schema_utils

    from trainer_module.preprocessing import preprocessing_fn

    metadata = dataset_metadata.DatasetMetadata(schema_utils.schema_from_feature_spec(raw_feature_spec))
    graph_dir = str(out_dir / "transform_graph")
    with beam.Pipeline() as pipeline, tft_beam.Context(temp_dir=str(out_dir / "tmp")):
        train_data = pipeline | "train" >> beam.Create(train)
        val_data = pipeline | "val" >> beam.Create(val)
        (train_out, train_meta), transform_fn = (
            (train_data, metadata)
            | tft_beam.AnalyzeAndTransformDataset(functools.partial(preprocessing_fn, custom_config=custom_config)))
        val_out, _ = ((val_data, metadata), transform_fn) | tft_beam.TransformDataset()
        _ = transform_fn | tft_beam.WriteTransformFn(graph_dir)
        _ = metadata | tft_beam.WriteMetadata(
            os.path.join(graph_dir, tft.TFTransformOutput.RAW_METADATA_DIR), pipeline)
        coder = tft.coders.ExampleProtoCoder(train_meta.schema)
        for name, data in (("train", train_out), ("val", val_out)):
            _ = (data | f"encode_{name}" >> beam.Map(coder.encode)
                 | f"write_{name}" >> beam.io.WriteToTFRecord(
                     str(out_dir / f"Split-{name}" / "data_tfrecord"), file_name_suffix=".gz",
                     compression_type=beam.io.filesystem.CompressionTypes.GZIP))
    return {"transform_output": graph_dir, "train_files": [str(out_dir / "Split-train" / "*")],
            "eval_files": [str(out_dir / "Split-val" / "*")]}


@pytest.fixture(scope="session")
def run_transform():
    """`transform_in_process`, for tests that train on transformed examples."""
    return transform_in_process
