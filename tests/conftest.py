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
