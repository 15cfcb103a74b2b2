"""Training pieces shared by both tasks: hyper-parameter defaults of the training recipe, learning-rate
schedules, the optimizer builder, the per-replica train step (loss, weight decay, loss scaling,
clipping, update), the resumable training loop, and reading Transform's TFRecords."""
from __future__ import annotations

import functools
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable

import tensorflow as tf
import tf_keras as keras

from components.errors import InputError
from components.paths import tfrecord_compression, tfrecord_files
from trainer_module.distribute import strategy_and_policy, use_jit

# Keys every task has; each task's hparams.py sets its own values over these.
TRAINING_DEFAULTS = {
    # Global batch size (split across replicas); drop_remainder keeps shapes static.
    "batch_size": 8,
    # "sgd" (with `momentum`) or "adam".
    "optimizer": "sgd",
    "momentum": 0.9,
    # Peak learning rate, reached after a linear warm-up of `warmup_steps`; then "poly" decays it as
    # (1 - t/T)^poly_power to 0 at the last step (DeepLab), "step" multiplies it by 0.1 at each
    # fraction `decay_at` of the training steps (Mask R-CNN).
    "learning_rate": 0.05,
    "warmup_steps": 50,
    "lr_schedule": "poly",
    "poly_power": 0.9,
    "decay_at": [0.75, 0.92],
    # L2 penalty weight_decay * sum(tf.nn.l2_loss(kernel)) = weight_decay / 2 * sum(kernel^2), added to
    # the loss in the train step; which kernels it covers is the task's (see its hparams.py).
    "weight_decay": 4e-5,
    # Clip the gradients to this global norm (None: no clipping).
    "gradient_clip_norm": None,
    # "auto": bfloat16 on TPU and on CPUs with native bfloat16 (AVX512-BF16/AMX: 1.1-1.6x the float32
    # step on the sample configs), float16 on GPU, float32 on other CPUs; or "float32"/"mixed_bfloat16"/
    # "mixed_float16". The exported SavedModel and TFLite files compute in float32 whatever was chosen.
    "mixed_precision": "auto",
    # TPU name/address (else env TPU_NAME); None and no TPU_NAME = no TPU.
    "tpu": None,
    # XLA-compile the training step ("auto": on for TPU/GPU, off on CPU where oneDNN kernels win).
    "jit_compile": "auto",
    # Training steps run inside one tf.function call (fewer host round trips, TPU friendly).
    "steps_per_execution": 10,
    # Where checkpoints go (None: <model_run_dir>/checkpoints, i.e. per Trainer execution). A
    # restarted trainer resumes from the latest checkpoint found there.
    "checkpoint_dir": None,
    # Checkpoint every N steps (rounded to steps_per_execution) and at the end.
    "checkpoint_every": 100,
    "keep_checkpoints": 2,
    "seed": 0,
}

# custom_config keys that are not hyper-parameters: the pipeline's own and TFX's Vertex training keys.
_NOT_HPARAMS = {"task", "label_map"}


def merge_hparams(defaults: dict, custom_config: dict | None, task: str) -> dict:
    """`defaults` overlaid with custom_config. Unknown keys are rejected (typos must not pass silently),
    except the pipeline's own ("task", "label_map") and TFX's Vertex training keys ("ai_platform_*")."""
    custom_config = dict(custom_config or {})
    unknown = {k for k in set(custom_config) - set(defaults) - _NOT_HPARAMS if not k.startswith("ai_platform")}
    if unknown:
        raise InputError(f"unknown {task} hyper-parameters: {sorted(unknown)}")
    return {**defaults, **custom_config}


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


class WarmupStepDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to `base`, then x0.1 at each step in `boundaries` (the Mask R-CNN recipe)."""

    def __init__(self, base: float, warmup_steps: int, boundaries: list[int]):
        self.base, self.warmup_steps, self.boundaries = float(base), int(warmup_steps), list(boundaries)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        lr = tf.constant(self.base, tf.float32)
        for boundary in self.boundaries:
            lr = tf.where(step >= boundary, lr * 0.1, lr)
        if self.warmup_steps > 0:
            lr = tf.where(step < self.warmup_steps, lr * (step + 1.0) / self.warmup_steps, lr)
        return lr

    def get_config(self):
        return {"base": self.base, "warmup_steps": self.warmup_steps, "boundaries": self.boundaries}


def learning_rate_schedule(hp: dict, total_steps: int) -> keras.optimizers.schedules.LearningRateSchedule:
    name = hp["lr_schedule"]
    if name == "poly":
        return WarmupPolyDecay(hp["learning_rate"], total_steps, hp["warmup_steps"], hp["poly_power"])
    if name == "step":
        return WarmupStepDecay(hp["learning_rate"], hp["warmup_steps"],
                               [int(f * total_steps) for f in hp["decay_at"]])
    raise InputError(f"lr_schedule must be 'poly' or 'step', got {name!r}")


def build_optimizer(hp: dict, total_steps: int, policy: str) -> keras.optimizers.Optimizer:
    """hp["optimizer"] on hp["lr_schedule"]; wrapped for dynamic loss scaling under mixed_float16."""
    schedule = learning_rate_schedule(hp, total_steps)
    name = hp["optimizer"]
    if name == "sgd":
        optimizer = keras.optimizers.SGD(learning_rate=schedule, momentum=hp["momentum"])
    elif name == "adam":
        optimizer = keras.optimizers.Adam(learning_rate=schedule)
    else:
        raise InputError(f"optimizer must be 'sgd' or 'adam', got {name!r}")
    if policy == "mixed_float16":
        optimizer = keras.mixed_precision.LossScaleOptimizer(optimizer)
    return optimizer


def decayed_kernels(model: keras.Model, depthwise: bool) -> list[tf.Variable]:
    """The trainable kernels of conv and dense layers (not biases, not BatchNorm), with or without
    the depthwise-conv kernels."""
    return [v for v in model.trainable_variables if "kernel" in v.name
            and (depthwise or "depthwise_kernel" not in v.name)]


def make_train_step(model: keras.Model, optimizer: keras.optimizers.Optimizer, loss_fn: Callable,
                    weight_decay: float, decay_depthwise: bool, gradient_clip_norm: float | None,
                    jit_compile: bool):
    """Per-replica step of both tasks: batch -> loss_fn(batch) (this replica's mean loss) plus
    weight_decay * sum(l2_loss(kernel)) over `decayed_kernels`, divided by the replica count (the
    caller sums over replicas), loss-scaled under mixed_float16, gradients clipped to their global
    norm, one optimizer update. Returns the replica's share of the loss."""
    scaled = isinstance(optimizer, keras.mixed_precision.LossScaleOptimizer)
    weight_decay = float(weight_decay or 0.0)

    @tf.function(jit_compile=jit_compile)
    def step(batch):
        replicas = tf.distribute.get_replica_context().num_replicas_in_sync
        with tf.GradientTape() as tape:
            loss = loss_fn(batch)
            if weight_decay:
                loss += weight_decay * tf.add_n([tf.nn.l2_loss(tf.cast(v, tf.float32))
                                                 for v in decayed_kernels(model, decay_depthwise)])
            loss = loss / replicas
            objective = optimizer.get_scaled_loss(loss) if scaled else loss
        variables = model.trainable_variables
        grads = tape.gradient(objective, variables)
        if scaled:
            grads = optimizer.get_unscaled_gradients(grads)
        if gradient_clip_norm:
            grads, _ = tf.clip_by_global_norm(grads, float(gradient_clip_norm))
        optimizer.apply_gradients(zip(grads, variables))
        return loss

    return step


def replicated_step(strategy: tf.distribute.Strategy, step_fn: Callable, batch):
    """One step on every replica, their losses summed (call inside a tf.function)."""
    per_replica = strategy.run(step_fn, args=(batch,))
    return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)


@dataclass
class TrainingSetup:
    """What one training run (or one benchmark) is made of; see `set_up_training`."""
    strategy: tf.distribute.Strategy
    policy: str
    model: keras.Model
    optimizer: keras.optimizers.Optimizer
    step_fn: Callable
    build_model: Callable[[], keras.Model]  # a new, untrained model like `model`, under the global policy

    def float32_model(self) -> keras.Model:
        """The trained model with float32 layers, for export. Under a mixed policy the layers compute
        in bfloat16/float16, which a serving CPU may lack and TFLite does not take; the variables are
        float32 either way, so a float32 twin takes them unchanged."""
        if self.policy == "float32":
            return self.model
        policy = keras.mixed_precision.global_policy()
        keras.mixed_precision.set_global_policy("float32")
        try:
            twin = self.build_model()
        finally:
            keras.mixed_precision.set_global_policy(policy)
        twin.set_weights(self.model.get_weights())
        return twin


def set_up_training(hp: dict, num_classes: int, build_model: Callable, make_train_step: Callable,
                    total_steps: int, **step_kwargs) -> TrainingSetup:
    """Strategy and mixed-precision policy from `hp`, then the task's model, the optimizer and the
    task's per-replica step, built in the strategy's scope: the one set-up both tasks' `run_fn`
    and bench steps use."""
    strategy, policy = strategy_and_policy(hp)
    keras.utils.set_random_seed(int(hp["seed"]))
    previous = keras.mixed_precision.global_policy()
    # Layers take the global policy when built; restored after, so that models built later in the
    # same process (the export's float32 twin, another component, another test) are not affected.
    keras.mixed_precision.set_global_policy(policy)
    try:
        with strategy.scope():
            model = build_model(hp, num_classes)
            optimizer = build_optimizer(hp, total_steps, policy)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    step_fn = make_train_step(model, optimizer, hp, use_jit(hp, strategy), **step_kwargs)
    auto = (hp.get("mixed_precision") or "auto") == "auto"
    chosen = ""
    if auto:
        chosen = " (mixed_precision auto: bfloat16 on TPU and on CPUs with native bfloat16"
        faster_in_float32 = policy == "float32" and not hp.get("cpu_bfloat16", True)
        chosen += "; this model trains faster in float32 on CPU)" if faster_in_float32 else ")"
    log(f"strategy {type(strategy).__name__} x{strategy.num_replicas_in_sync}, policy {policy}{chosen}")
    return TrainingSetup(strategy, policy, model, optimizer, step_fn, functools.partial(build_model, hp, num_classes))


@dataclass
class TaskTraining:
    """A task's training, ready to run (each task's `prepare_training(fn_args)`)."""
    hp: dict
    num_classes: int
    tft_output: object  # tft.TFTransformOutput
    feature_spec: dict  # Transform's transformed feature spec
    setup: TrainingSetup
    dataset: tf.data.Dataset  # the train batches


def train(setup: TrainingSetup, hp: dict, fn_args, dataset: tf.data.Dataset) -> dict:
    """`run_training` of a TFX Trainer: checkpoints in hp["checkpoint_dir"] (default: the model
    run's `checkpoints/`), summaries in the model run directory, warm start from the Trainer's
    base model when there is one."""
    checkpoint_dir = hp["checkpoint_dir"] or os.path.join(fn_args.model_run_dir, "checkpoints")
    result = run_training(
        strategy=setup.strategy, model=setup.model, optimizer=setup.optimizer, step_fn=setup.step_fn,
        dataset=dataset, total_steps=int(fn_args.train_steps), steps_per_execution=int(hp["steps_per_execution"]),
        checkpoint_dir=checkpoint_dir, log_dir=fn_args.model_run_dir,
        checkpoint_every=int(hp["checkpoint_every"]), keep_checkpoints=int(hp["keep_checkpoints"]),
        base_model=fn_args.base_model)
    rate = (f", {result['steady_steps'] / result['steady_seconds']:.2f} steps/s after the first chunk"
            if result["steady_steps"] else "")
    log(f"trained steps {result['start_step']}->{result['final_step']} in {result['seconds']:.0f}s{rate}")
    return result


def write_eval_metrics(fn_args, metrics: dict) -> None:
    """The trainer's own evaluation, beside its summaries (the Evaluator's gate is separate)."""
    with tf.io.gfile.GFile(os.path.join(fn_args.model_run_dir, "eval_metrics.json"), "w") as f:
        f.write(json.dumps(metrics))


@dataclass
class FixedBatchStep:
    """Runs a task's train step on one fixed batch through `replicated_step`, exactly as training
    runs it (benchmarks). Calling it runs one synchronous step and returns the loss."""
    strategy: tf.distribute.Strategy
    model: keras.Model
    optimizer: keras.optimizers.Optimizer
    step_fn: Callable
    batch: dict

    def __post_init__(self):
        self._run = tf.function(lambda: replicated_step(self.strategy, self.step_fn, self.batch))

    def __call__(self) -> float:
        return float(self._run().numpy())  # .numpy() waits for the step to finish


def tfrecord_dataset(file_patterns) -> tf.data.Dataset:
    """The records of the files matching `file_patterns` (Transform writes GZIP TFRecords)."""
    files = tfrecord_files(file_patterns, what="transformed examples")
    return tf.data.TFRecordDataset(files, compression_type=tfrecord_compression(files[0]),
                                   num_parallel_reads=tf.data.AUTOTUNE)


def log(msg: str) -> None:
    print(f"[trainer] {msg}", file=sys.stderr, flush=True)


def run_training(*, strategy: tf.distribute.Strategy, model: keras.Model,
                 optimizer: keras.optimizers.Optimizer,
                 step_fn: Callable, dataset: tf.data.Dataset, total_steps: int,
                 steps_per_execution: int, checkpoint_dir: str, log_dir: str | None = None,
                 checkpoint_every: int = 100, keep_checkpoints: int = 2,
                 stop_after: int | None = None, base_model: str | None = None) -> dict:
    """Runs `step_fn(batch) -> scalar loss` (per replica) until optimizer.iterations == total_steps.

    Restores the latest checkpoint in `checkpoint_dir` first, so a killed and restarted trainer
    continues from its last checkpoint (model, optimizer slots and step counter). `stop_after` ends
    this call early after that many steps (used to test resuming). Without a checkpoint to resume,
    `base_model` (fn_args.base_model, warm start) gives the model's starting weights, see
    `restore_warm_start`. Model and optimizer must have been created under `strategy.scope()`.
    Returns {"start_step", "final_step", "last_loss", "seconds", "warm_start_from", "steady_steps",
    "steady_seconds"}: the last two count the steps after the first chunk (which traces the loop and
    fills the input pipeline), checkpoints and logging included: the loop's own steps/s.
    """
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer)
    manager = tf.train.CheckpointManager(checkpoint, checkpoint_dir, max_to_keep=keep_checkpoints)
    warm_start_from = None
    if manager.latest_checkpoint:
        checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        log(f"resumed from {manager.latest_checkpoint} at step {int(optimizer.iterations.numpy())}")
    else:
        warm_start_from = restore_warm_start(model, base_model)
    start = int(optimizer.iterations.numpy())
    iterator = iter(strategy.experimental_distribute_dataset(dataset))

    @tf.function
    def run_steps(iterator, n):
        loss = tf.constant(0.0)
        for _ in tf.range(n):
            loss = replicated_step(strategy, step_fn, next(iterator))
        return loss

    writer = tf.summary.create_file_writer(log_dir) if log_dir else None
    end = total_steps if stop_after is None else min(total_steps, start + stop_after)
    step, last_loss, t0 = start, float("nan"), time.time()
    steady_from = None  # (step, time) once the first chunk is done
    checkpoint_every = max(checkpoint_every, 1)
    while step < end:
        if steady_from is None and step > start:
            steady_from = (step, time.time())
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
    t_end = time.time()
    steady_step, steady_t0 = steady_from or (step, t_end)
    return {"start_step": start, "final_step": step, "last_loss": last_loss, "seconds": t_end - t0,
            "warm_start_from": warm_start_from, "steady_steps": step - steady_step,
            "steady_seconds": t_end - steady_t0}


# Warm start (`trainer.warm_start`): the Trainer's `base_model` is the latest blessed model. Its
# weights come from a checkpoint of the model object written beside the SavedModel at export
# (the SavedModel tracks variables for serving, not the Keras object graph), so they restore into
# a freshly built model by name path; the optimizer is new and the step count the run's own.
WARM_START_DIR = "warm_start"


def warm_start_path(serving_model_dir: str) -> str:
    """The model checkpoint of a Model artifact: <model uri>/warm_start/model, beside Format-Serving
    (Pusher copies only the serving directory)."""
    return os.path.join(os.path.dirname(serving_model_dir.rstrip("/")), WARM_START_DIR, "model")


def save_for_warm_start(model: keras.Model, serving_model_dir: str) -> str:
    """Writes the model's variables (no optimizer) for later runs to start from; returns the path."""
    path = warm_start_path(serving_model_dir)
    tf.train.Checkpoint(model=model).write(path)
    return path


def restore_warm_start(model: keras.Model, base_model: str | None) -> str | None:
    """Loads the weights of `base_model` (a serving directory, fn_args.base_model) into `model`;
    returns the checkpoint read, or None (and says so) when there is nothing to start from."""
    if not base_model:
        log("warm start: no base model (none blessed yet, or trainer.warm_start off): from scratch")
        return None
    path = warm_start_path(base_model)
    if not tf.io.gfile.exists(path + ".index"):
        log(f"warm start: base model {base_model} has no weights checkpoint {path}: from scratch")
        return None
    tf.train.Checkpoint(model=model).read(path).assert_existing_objects_matched()
    log(f"warm start: weights of {base_model}, fresh optimizer")
    return path
