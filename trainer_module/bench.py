"""`segpipe bench train`: time full training steps (forward, loss, backward, SGD update) on random data.

DeepLab models are built here; `maskrcnn*` names go to `trainer_module.instance.bench_step`. Both
follow one protocol: `build_train_step(model_name, image_size, batch_size)` returns a zero-arg
callable that runs ONE training step synchronously.
"""
from __future__ import annotations

import importlib
import os
import sys
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from components.errors import InputError  # noqa: E402

BENCH_NUM_CLASSES = 21  # PASCAL VOC


def build_train_step(model_name: str, image_size: int, batch_size: int, **overrides):
    """The spec'd DeepLab v3+ (OS 16, ASPP 256 at 6/12/18 + pooling, 48-ch stride-4 decoder, two
    3x3 convs of 256) at width 1.0, on random data; `overrides` change hyper-parameters (variants)."""
    import tensorflow as tf

    from trainer_module.distribute import strategy_and_policy, use_jit
    from trainer_module.hparams import SEMANTIC_DEFAULTS
    from trainer_module.models.deeplab import MODEL_NAMES
    from trainer_module.semantic.model import build_model, make_step_fn
    from trainer_module.training import make_optimizer
    import tf_keras as keras

    if model_name not in MODEL_NAMES:
        raise InputError(f"unknown model {model_name!r}; deeplab models: {sorted(MODEL_NAMES)}")
    hp = dict(SEMANTIC_DEFAULTS, backbone=MODEL_NAMES[model_name], image_size=image_size,
              width_multiplier=1.0, aspp_filters=256, decoder_filters=256, low_level_filters=48,
              output_stride=16, separable=False)
    hp.update(overrides)
    strategy, policy = strategy_and_policy(hp)
    keras.mixed_precision.set_global_policy(policy)
    with strategy.scope():
        model = build_model(hp, BENCH_NUM_CLASSES)
        optimizer = make_optimizer(hp, total_steps=10**6, policy=policy)
    step = make_step_fn(model, optimizer, jit_compile=use_jit(hp, strategy))
    rng = tf.random.Generator.from_seed(0)
    batch = {"image": rng.normal([batch_size, image_size, image_size, 3]),
             "label": rng.uniform([batch_size, image_size, image_size], 0, BENCH_NUM_CLASSES, dtype=tf.int32)}

    @tf.function
    def run_one():
        return strategy.run(step, args=(batch,))

    return lambda: float(run_one().numpy())


def _step_builder(model_name: str):
    if model_name.startswith("maskrcnn"):
        return importlib.import_module("trainer_module.instance.bench_step").build_train_step
    return build_train_step


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


def benchmark(model_name: str, image_size: int, batch_size: int, seconds: float, warmup_steps: int,
              **overrides) -> dict:
    builder = _step_builder(model_name)
    run_step = builder(model_name, image_size, batch_size, **overrides) if overrides else \
        builder(model_name, image_size, batch_size)
    steps, elapsed = time_steps(run_step, seconds, warmup_steps)
    return {"model": model_name, "image_size": image_size, "batch_size": batch_size, "steps": steps,
            "seconds": round(elapsed, 3), "img_per_s": round(steps * batch_size / elapsed, 4)}


def cli_main(args) -> dict:
    return benchmark(args.model, args.image_size, args.batch_size, args.seconds, args.warmup_steps)
