"""`segpipe bench train`: time full training steps (forward, loss, backward, update) on random data.

Each task's `bench_step.build_train_step(model_name, image_size, batch_size)` builds the step its
training runs (model, optimizer and train step from the task's own modules); this module picks the
task by model name and times the steps.
"""
from __future__ import annotations

import importlib
import sys
import time

from components.errors import InputError

TASK_BY_MODEL = {
    "deeplabv3plus_mobilenetv2": "semantic",
    "deeplabv3plus_resnet50": "semantic",
    "lraspp_mobilenetv3_large": "semantic",
    "lraspp_mobilenetv3_small": "semantic",
    "maskrcnn_resnet50_fpn": "instance",
    "maskrcnn_mobilenetv2_fpn": "instance",
}


def build_train_step(model_name: str, image_size: int, batch_size: int):
    if model_name not in TASK_BY_MODEL:
        raise InputError(f"unknown model {model_name!r}; choose one of {', '.join(TASK_BY_MODEL)}")
    task_bench = importlib.import_module(f"trainer_module.{TASK_BY_MODEL[model_name]}.bench_step")
    return task_bench.build_train_step(model_name, image_size, batch_size)


def time_steps(run_step, seconds: float, warmup_steps: int) -> tuple[int, float]:
    """Runs `run_step` warmup_steps times (tracing, compilation), then for at least `seconds`;
    per-step timings go to stderr. Returns (timed steps, elapsed seconds)."""
    for i in range(max(warmup_steps, 1)):
        t0 = time.perf_counter()
        run_step()
        print(f"warm-up step {i + 1}: {time.perf_counter() - t0:.3f}s", file=sys.stderr, flush=True)
    steps, start = 0, time.perf_counter()
    while True:
        t0 = time.perf_counter()
        run_step()
        steps += 1
        now = time.perf_counter()
        print(f"step {steps}: {now - t0:.3f}s", file=sys.stderr, flush=True)
        if now - start >= seconds:
            return steps, now - start


def benchmark(model_name: str, image_size: int, batch_size: int, seconds: float, warmup_steps: int) -> dict:
    steps, elapsed = time_steps(build_train_step(model_name, image_size, batch_size), seconds, warmup_steps)
    return {"model": model_name, "image_size": image_size, "batch_size": batch_size, "steps": steps,
            "seconds": round(elapsed, 3), "img_per_s": round(steps * batch_size / elapsed, 4)}
