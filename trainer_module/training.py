"""Task-independent training helpers: poly learning rate with warm-up, SGD optimizer, a resumable
custom training loop with checkpoints and TensorBoard summaries (reused by the instance task)."""
from __future__ import annotations

import os
import sys
import time
from typing import Callable

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

from components.errors import InputError  # noqa: E402


class WarmupPolyDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0 to `base` over `warmup_steps`, then base * (1 - t/T)^power down to 0."""

    def __init__(self, base: float, total_steps: int, warmup_steps: int = 0, power: float = 0.9):
        self.base, self.total_steps, self.warmup_steps, self.power = base, total_steps, warmup_steps, power

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warmup = tf.cast(max(self.warmup_steps, 1), tf.float32)
        decay_span = tf.cast(max(self.total_steps - self.warmup_steps, 1), tf.float32)
        progress = tf.clip_by_value((step - self.warmup_steps) / decay_span, 0.0, 1.0)
        poly = self.base * tf.pow(1.0 - progress, self.power)
        if self.warmup_steps <= 0:
            return poly
        return tf.where(step < self.warmup_steps, self.base * (step + 1.0) / warmup, poly)

    def get_config(self):
        return {"base": self.base, "total_steps": self.total_steps, "warmup_steps": self.warmup_steps,
                "power": self.power}


def make_optimizer(hp: dict, total_steps: int, policy: str) -> keras.optimizers.Optimizer:
    """hp["optimizer"]: "sgd" (momentum hp["momentum"], the DeepLab recipe) or "adam"; both follow
    the warm-up + poly schedule peaking at hp["learning_rate"]."""
    schedule = WarmupPolyDecay(hp["learning_rate"], total_steps, hp["warmup_steps"], hp.get("poly_power", 0.9))
    name = hp.get("optimizer", "sgd")
    if name == "sgd":
        optimizer = keras.optimizers.SGD(learning_rate=schedule, momentum=hp["momentum"])
    elif name == "adam":
        optimizer = keras.optimizers.Adam(learning_rate=schedule)
    else:
        raise InputError(f"optimizer must be 'sgd' or 'adam', got {name!r}")
    if policy == "mixed_float16":
        optimizer = keras.mixed_precision.LossScaleOptimizer(optimizer)
    return optimizer


def log(msg: str) -> None:
    print(f"[trainer] {msg}", file=sys.stderr, flush=True)


def run_training(*, strategy: tf.distribute.Strategy, model: keras.Model,
                 optimizer: keras.optimizers.Optimizer,
                 step_fn: Callable, dataset: tf.data.Dataset, total_steps: int,
                 steps_per_execution: int, checkpoint_dir: str, log_dir: str | None = None,
                 checkpoint_every: int = 100, keep_checkpoints: int = 2,
                 stop_after: int | None = None) -> dict:
    """Runs `step_fn(batch) -> scalar loss` (per replica) until optimizer.iterations == total_steps.

    Restores the latest checkpoint in `checkpoint_dir` first, so a killed and restarted trainer
    continues from its last checkpoint (model, optimizer slots and step counter). `stop_after` ends
    this call early after that many steps (used to test resuming). Model and optimizer must have
    been created under `strategy.scope()`. Returns {"start_step", "final_step", "last_loss", "seconds"}.
    """
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer)
    manager = tf.train.CheckpointManager(checkpoint, checkpoint_dir, max_to_keep=keep_checkpoints)
    if manager.latest_checkpoint:
        checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        log(f"resumed from {manager.latest_checkpoint} at step {int(optimizer.iterations.numpy())}")
    start = int(optimizer.iterations.numpy())
    iterator = iter(strategy.experimental_distribute_dataset(dataset))

    @tf.function
    def run_steps(iterator, n):
        loss = tf.constant(0.0)
        for _ in tf.range(n):
            per_replica = strategy.run(step_fn, args=(next(iterator),))
            loss = strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)
        return loss

    writer = tf.summary.create_file_writer(log_dir) if log_dir else None
    end = total_steps if stop_after is None else min(total_steps, start + stop_after)
    step, last_loss, t0 = start, float("nan"), time.time()
    checkpoint_every = max(checkpoint_every, 1)
    while step < end:
        # Chunks never cross a checkpoint boundary, so checkpoints land on multiples of checkpoint_every.
        n = min(steps_per_execution, end - step, checkpoint_every - step % checkpoint_every)
        last_loss = float(run_steps(iterator, tf.constant(n)).numpy())
        step = int(optimizer.iterations.numpy())
        lr = optimizer.learning_rate
        lr_value = float(lr(step) if callable(lr) else lr)
        if writer:
            with writer.as_default(step=step):
                tf.summary.scalar("loss", last_loss)
                tf.summary.scalar("learning_rate", lr_value)
        if step % checkpoint_every == 0 or step >= total_steps:
            manager.save(checkpoint_number=step)
        log(f"step {step}/{total_steps} loss {last_loss:.4f} lr {lr_value:.5f} "
            f"({time.time() - t0:.0f}s)")
    if writer:
        writer.flush()
    return {"start_step": start, "final_step": step, "last_loss": last_loss, "seconds": time.time() - t0}
