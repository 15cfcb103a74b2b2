"""`run(config, workdir)` (`segpipe run`): the DAG of pipelines/pipeline.py on LocalDagRunner
(MLMD on SQLite, Beam DirectRunner).

Progress: one stderr line as each component starts and finishes (with its wall time), Beam and
Keras progress from inside the components; the summary of the run is returned.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from pathlib import Path

from components import paths
from components.errors import InputError
from pipelines.config import deep_merge


def ensure_sample_data(config: dict, workdir: Path) -> dict:
    """With no data_root, generate (once) and use the built-in synthetic sample data."""
    if config["data"].get("data_root"):
        return config
    from pipelines import sample_data

    sample = config["data"]["sample"]
    out = workdir / "sample_data"
    marker = out / ".complete"
    if not marker.exists():
        print(f"[segpipe] writing {config['task']} sample data to {out}", file=sys.stderr, flush=True)
        sample_data.write(config["task"], str(out), sample.get("num_images"), sample.get("image_size"),
                          sample.get("seed", 0))
        marker.write_text("ok\n")
    return deep_merge(config, {"data": {"data_root": str(out)}})


class _ComponentProgress(logging.Filter):
    """Turns LocalDagRunner's 'Component X is running/finished.' into one progress line each."""

    def __init__(self):
        super().__init__()
        self.started: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        msg = record.getMessage()
        if msg.startswith("Component ") and msg.endswith(" is running."):
            name = msg[len("Component "):-len(" is running.")]
            self.started[name] = time.time()
            print(f"[segpipe] {time.strftime('%H:%M:%S')} {name} ...", file=sys.stderr, flush=True)
        elif msg.startswith("Component ") and msg.endswith(" is finished."):
            name = msg[len("Component "):-len(" is finished.")]
            took = time.time() - self.started.get(name, time.time())
            print(f"[segpipe] {time.strftime('%H:%M:%S')} {name} done in {took:.0f}s",
                  file=sys.stderr, flush=True)
        return False


def run_pipeline(config: dict, workdir: Path) -> dict:
    """Runs the whole pipeline in workdir; returns the summary of this run."""
    from absl import logging as absl_logging
    from tfx import v1 as tfx

    from pipelines import pipeline as dag
    from pipelines import run_results

    workdir.mkdir(parents=True, exist_ok=True)
    serving_dir = config["pusher"].get("serving_dir") or str(workdir / "serving")
    metadata_path = workdir / "metadata.sqlite"
    pipe = dag.create_pipeline(
        config,
        str(workdir / "pipeline_root"),
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
            str(metadata_path)),
        beam_pipeline_args=list(config["beam_args"]),
        pusher_kwargs={"push_destination": tfx.proto.PushDestination(
            filesystem=tfx.proto.PushDestination.Filesystem(base_directory=serving_dir))},
    )
    absl_logging.set_verbosity(absl_logging.INFO)
    progress = _ComponentProgress()
    absl_logging.get_absl_logger().addFilter(progress)
    started = time.time()
    failure = None
    try:
        # Keras and friends print progress to stdout: keep stdout for the final JSON line only.
        with contextlib.redirect_stdout(sys.stderr):
            tfx.orchestration.LocalDagRunner().run(pipe)
    except Exception as err:  # noqa: BLE001 - a failed component: summarize what ran, then decide
        failure = err
    finally:
        absl_logging.get_absl_logger().removeFilter(progress)
    summary = run_results.summarize(str(metadata_path), since=started, task=config["task"])
    summary.update({"task": config["task"], "workdir": str(workdir), "serving_dir": serving_dir,
                    "seconds": round(time.time() - started, 1)})
    if failure is not None:
        if summary.get("data_gate_failures") and config.get("data_gate", "strict") == "strict":
            # The DataGate stopped the run before Transform: one line naming the anomalies.
            from components import data_gate

            run_results.reject_ingested_span(str(metadata_path), since=started)
            error = data_gate.DataGateError(
                f"span {summary.get('span')} breaks the schema, nothing trained or pushed: "
                + data_gate.message(summary["data_gate_failures"]))
            error.summary = summary
            raise error from None
        raise failure
    if config["trainer"].get("warm_start") and summary.get("warm_start_from") is None:
        print("[segpipe] warm start: no blessed model yet, the Trainer started from scratch",
              file=sys.stderr, flush=True)
    return summary


def run(config: dict, workdir) -> dict:
    """Runs the pipeline of `config` in workdir (pipeline root, MLMD, serving dir), on the
    generated sample data when config data.data_root is not set; returns the summary of the run."""
    from components import spans

    workdir = Path(workdir).resolve()
    data_root = config["data"].get("data_root")
    if spans.has_placeholder(data_root):
        [data_root], _, _ = spans.resolve([data_root], config["data"].get("span"))
    if data_root and not paths.is_remote(data_root) and not os.path.isdir(data_root):
        raise InputError(f"data root {data_root} is not a directory (data.data_root, --data-root)")
    config = ensure_sample_data(config, workdir)
    summary = run_pipeline(config, workdir)
    verdict = "BLESSED and pushed to " + str(summary["pushed_model"]) if summary["blessed"] else (
        "NOT blessed, nothing pushed: " + "; ".join(summary.get("gate_failures") or ["see evaluator output"]))
    print(f"[segpipe] {verdict}", file=sys.stderr, flush=True)
    for name, variant in (summary.get("tflite") or {"variants": {}})["variants"].items():
        pushed = "pushed" if variant["blessed"] and summary["blessed"] else "not pushed"
        print(f"[segpipe] TFLite {name} ({pushed}): {variant['reason']}", file=sys.stderr, flush=True)
    return summary
