"""`segpipe bench train`: time full training steps (forward, loss, backward, update) on random data.

Each task's `bench_step.build_train_step(model_name, image_size, batch_size)` builds the step its
training runs (model, optimizer and train step from the task's own modules); this module picks the
task by model name and times the steps.

Besides images/s, `benchmark` reports the model's cost and how close a step comes to the machine:
`gflops_per_image_forward` is the forward pass the training step runs (training mode, loss included;
Mask R-CNN: backbone, FPN, RPN, proposals and the box and mask heads on the sampled RoIs), counted
from its graph at batch 1 (`profiling.count_flops`: convolutions, matmuls, einsums and element-wise
arithmetic, a multiply-add = 2 FLOPs); `gflops_per_image_train` is 3x that (the usual convention:
the backward pass costs about twice the forward); `achieved_gflops_per_s` = train GFLOPs per image x
images/s. With `profile_dir`, a few more steps run under the TF profiler and `profile` summarises
where their time goes (see trainer_module.profiling).
"""
from __future__ import annotations

import importlib
import os
import statistics
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


def build_train_step(model_name: str, image_size: int, batch_size: int, mixed_precision: str = "auto"):
    if model_name not in TASK_BY_MODEL:
        raise InputError(f"unknown model {model_name!r}; choose one of {', '.join(TASK_BY_MODEL)}")
    task_bench = importlib.import_module(f"trainer_module.{TASK_BY_MODEL[model_name]}.bench_step")
    return task_bench.build_train_step(model_name, image_size, batch_size, mixed_precision=mixed_precision)


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


TRAIN_FLOPS_PER_FORWARD = 3  # forward + backward (about 2x forward: input and weight gradients)
PROFILE_STEPS = 3


def _semantic_forward(model, batch):
    from trainer_module.semantic.model import segmentation_loss

    return segmentation_loss(batch["label"], model(batch["image"], training=True))


def _instance_forward(model, batch):
    from trainer_module.instance.model import instance_losses

    return instance_losses(model, batch)["total"]


def _model_forward(model, batch):
    return model(batch["image"], training=True)


# The forward pass each task's training step runs, on a batch in its bench_step's form (another
# task: the model on the images, in training mode).
FORWARD_BY_TASK = {"semantic": _semantic_forward, "instance": _instance_forward}


def forward_flops(model_name: str, step) -> dict:
    """`profiling.count_flops` of the training-mode forward pass of `step` (a bench_step
    FixedBatchStep of `model_name`) on the first image of its batch, i.e. per image."""
    import tensorflow as tf

    from trainer_module import profiling

    forward = FORWARD_BY_TASK.get(TASK_BY_MODEL[model_name], _model_forward)
    one = {k: v[:1] for k, v in step.batch.items()}

    def forward_one():
        return forward(step.model, one)

    return profiling.count_flops(tf.function(forward_one).get_concrete_function())


def benchmark(model_name: str, image_size: int, batch_size: int, seconds: float, warmup_steps: int,
              profile_dir: str | None = None, mixed_precision: str = "auto") -> dict:
    """Times training steps (see `time_steps`) and adds the FLOPs figures; with `profile_dir`,
    PROFILE_STEPS more steps are profiled into it and summarised under "profile" (also written as
    profile_dir/profile_summary.json)."""
    step = build_train_step(model_name, image_size, batch_size, mixed_precision)
    steps, elapsed = time_steps(step, seconds, warmup_steps)
    img_per_s = steps * batch_size / elapsed
    flops = forward_flops(model_name, step)
    forward = flops["total"] / 1e9
    train = TRAIN_FLOPS_PER_FORWARD * forward
    result = {"model": model_name, "image_size": image_size, "batch_size": batch_size,
              "policy": step.model.dtype_policy.name, "steps": steps,
              "seconds": round(elapsed, 3), "img_per_s": round(img_per_s, 4),
              "gflops_per_image_forward": round(forward, 3), "gflops_per_image_train": round(train, 3),
              "achieved_gflops_per_s": round(train * img_per_s, 2),
              "gflops_forward_by_op_type": {t: round(f / 1e9, 3) for t, f in sorted(
                  flops["by_type"].items(), key=lambda kv: -kv[1]) if f >= 1e-3 * flops["total"]}}
    if profile_dir:
        from trainer_module import profiling

        os.makedirs(profile_dir, exist_ok=True)
        print(f"profiling {PROFILE_STEPS} steps into {profile_dir}", file=sys.stderr, flush=True)
        result["profile"] = profiling.profile_and_summarize(step, PROFILE_STEPS, profile_dir,
                                                           optimizer_name=step.optimizer.name)
    return result


def loop_vs_step(fn_args, steps: int, rounds: int) -> dict:
    """`segpipe bench loop`: the Trainer's real loop (`training.run_training` on the run's transformed
    examples: tf.data, augmentation, checkpoints and logging) against the same model's step on one
    fixed batch from that dataset (what `bench train` times), alternately, `rounds` times each, in one
    process. `fn_args` is what a finished run's Trainer got (pipelines/bench_loop.py); each loop
    round trains `steps` steps after its first chunk, which traces and fills the input pipeline and
    is left out (the loop's own `steady_*` figures). Returns both steps/s per round and their ratio."""
    import tempfile

    from trainer_module import training

    task = (fn_args.custom_config or {}).get("task")
    if task not in ("semantic", "instance"):
        raise InputError(f"custom_config['task'] must be 'semantic' or 'instance', got {task!r}")
    train_module = importlib.import_module(f"trainer_module.{task}.train")
    prepared = train_module.prepare_training(fn_args)
    hp, setup = prepared.hp, prepared.setup
    chunk = int(hp["steps_per_execution"])
    fixed = training.FixedBatchStep(setup.strategy, setup.model, setup.optimizer, setup.step_fn,
                                    next(iter(prepared.dataset)))
    loop_rates, step_rates = [], []
    with tempfile.TemporaryDirectory(prefix="segpipe_bench_loop_") as checkpoints:
        for _ in range(rounds):
            done = int(setup.optimizer.iterations.numpy())
            result = training.run_training(
                strategy=setup.strategy, model=setup.model, optimizer=setup.optimizer, step_fn=setup.step_fn,
                dataset=prepared.dataset, total_steps=done + chunk + steps, steps_per_execution=chunk,
                checkpoint_dir=checkpoints, checkpoint_every=int(hp["checkpoint_every"]),
                keep_checkpoints=int(hp["keep_checkpoints"]))
            loop_rates.append(result["steady_steps"] / result["steady_seconds"])
            if not step_rates:
                fixed()  # traces the fixed-batch step
            t0 = time.perf_counter()
            for _ in range(steps):
                fixed()
            step_rates.append(steps / (time.perf_counter() - t0))
            print(f"round {len(step_rates)}: loop {loop_rates[-1]:.3f} steps/s, fixed batch "
                  f"{step_rates[-1]:.3f} steps/s", file=sys.stderr, flush=True)
    return {"task": task, "image_size": hp["image_size"], "batch_size": int(hp["batch_size"]),
            "policy": setup.policy, "steps_per_round": steps,
            "loop_steps_per_s": [round(r, 4) for r in loop_rates],
            "fixed_batch_steps_per_s": [round(r, 4) for r in step_rates],
            "median_ratio": round(statistics.median(a / b for a, b in zip(loop_rates, step_rates)), 4)}
