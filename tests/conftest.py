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


def distinct_random_weights(model, seed: int) -> None:
    """Random values for every weight of a Keras model (BN variances and scales positive), unlike
    any initializer: a weights file that only loads right if every layer lands in its place."""
    import numpy as np

    rng = np.random.default_rng(seed)
    values = []
    for w in model.weights:
        if "moving_variance" in w.name or "gamma" in w.name:
            values.append(rng.uniform(0.5, 1.5, w.shape))
        else:
            values.append(rng.normal(0.0, 0.1, w.shape))
    model.set_weights([v.astype(np.float32) for v in values])


def keras_weight_files(tmp: Path, makers: dict, tag: str = "") -> dict:
    """name -> (weights file `<name><tag>_notop.h5` in tmp, model) for each `makers[name]()` Keras
    model, given distinct random weights (seeded by its position)."""
    out = {}
    for seed, (name, make) in enumerate(makers.items()):
        reference = make()
        distinct_random_weights(reference, seed)
        path = str(tmp / f"{name}{tag}_notop.h5")
        reference.save_weights(path)
        out[name] = (path, reference)
    return out


def learnable_batch(size: int) -> dict:
    """Four images whose class is the side of a vertical boundary, visible in every channel: a
    semantic batch any working model and train step fits quickly."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    cut = rng.integers(size // 4, 3 * size // 4, 4)
    label = np.broadcast_to(np.arange(size)[None, None, :] < cut[:, None, None], (4, size, size))
    image = np.where(label[..., None], 1.0, -1.0) + 0.3 * rng.standard_normal((4, size, size, 3))
    return {"image": tf.constant(image, tf.float32), "label": tf.constant(label.astype(np.int32))}


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


def pytest_collection_modifyitems(items):
    """The whole-pipeline tests' files first: with parallel workers (`make test` runs pytest-xdist,
    a file per worker at a time) the longest files then overlap the rest instead of ending last."""
    e2e_files = {item.path for item in items if item.get_closest_marker("e2e")}
    items.sort(key=lambda item: item.path not in e2e_files)  # stable: files stay whole, in order


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
# The run report (pipelines/report.py): its sections, its pictures, and a real browser.
REPORT_SECTIONS = {"semantic": ("gate", "metrics", "per-class", "confusion", "predictions", "data", "training"),
                   "instance": ("gate", "metrics", "per-class", "pr-curve", "predictions", "data", "training")}


def check_report_page(path, task: str) -> str:
    """Asserts the page holds the task's sections, no section that failed to draw, and that every
    embedded picture is a PNG data URI PIL can decode; returns the page's text."""
    import base64
    import io
    import re

    from PIL import Image

    page = Path(path).read_text(encoding="utf-8")
    for section in REPORT_SECTIONS[task]:
        assert f'<section id="{section}">' in page, section
    assert 'class="section-error"' not in page, re.findall(r'section-error">([^<]*)', page)
    sources = re.findall(r'<img src="([^"]*)"', page)
    assert sources, "no pictures"
    for src in sources:
        assert src.startswith("data:image/png;base64,"), src[:60]
        with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as image:
            assert image.format == "PNG" and image.width > 10 and image.height > 10
            image.load()
    return page


def chromium() -> str | None:
    import shutil

    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


def open_in_chromium(page, screenshot) -> tuple[int, int]:
    """Opens the page in headless Chromium: writes a 1280x4000 screenshot and returns (pictures
    decoded, pictures on the page) as counted in the browser by the page's own load script. Skips
    the test when no Chromium binary is installed."""
    import re

    binary = chromium()
    if binary is None:
        pytest.skip("no chromium binary on PATH (apt-get install chromium) to render the run report")
    flags = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--hide-scrollbars", "--virtual-time-budget=10000"]
    url = Path(page).resolve().as_uri()
    shot = subprocess.run([*flags, f"--screenshot={screenshot}", "--window-size=1280,4000", url],
                          capture_output=True, text=True, timeout=180)
    assert Path(screenshot).is_file(), shot.stderr[-3000:]
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=180)
    found = re.search(r'data-images-decoded="(\d+)/(\d+)"', dom.stdout)
    assert found, f"the page's image check did not run: {dom.stdout[:500]!r} {dom.stderr[-2000:]}"
    return int(found.group(1)), int(found.group(2))
