"""Runs the real `segpipe` command in a subprocess, as a user would, and reads its JSON last line."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def segpipe(*args: str, timeout: int = 1500) -> tuple[dict, str]:
    """(the JSON summary, stderr) of a successful `segpipe ARGS...`; fails the test otherwise."""
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert proc.returncode == 0, proc.stderr[-6000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr
