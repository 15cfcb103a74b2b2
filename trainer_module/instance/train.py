"""Instance `run_fn`: train Mask R-CNN on Transform's output (resumable), export to serving_model_dir."""
from __future__ import annotations

import os
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
import tensorflow as tf
import tensorflow_transform as tft
import tf_keras as keras

from components.errors import InputError
from trainer_module.distribute import strategy_and_policy, use_jit
from trainer_module.instance.export import export_instance_model
from trainer_module.instance.hparams import instance_hparams, label_ids, model_config
from trainer_module.instance.input_pipeline import analyzer_values, make_dataset
from trainer_module.models.mask_rcnn.model import MaskRCNN
from trainer_module.training import log, run_training


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


def build_optimizer(hp: dict, total_steps: int, policy: str):
    boundaries = [int(f * total_steps) for f in hp["decay_at"]]
    schedule = WarmupStepDecay(hp["learning_rate"], hp["warmup_steps"], boundaries)
    optimizer = keras.optimizers.SGD(learning_rate=schedule, momentum=hp["momentum"])
    if policy == "mixed_float16":
        optimizer = keras.mixed_precision.LossScaleOptimizer(optimizer)
    return optimizer


def make_step_fn(model: MaskRCNN, optimizer, hp: dict, num_replicas: int, jit_compile: bool):
    """Per-replica step: losses + L2 weight decay on kernels, clipped gradients, SGD update.
    Returns the replica's share of the mean loss (the caller sums over replicas)."""
    decay = float(hp["weight_decay"])
    clip = hp["gradient_clip_norm"]
    scaled = isinstance(optimizer, keras.mixed_precision.LossScaleOptimizer)

    @tf.function(jit_compile=jit_compile)
    def step(batch):
        with tf.GradientTape() as tape:
            losses = model.train_forward(batch["image"], batch["boxes"], batch["classes"], batch["masks"],
                                         training=True)
            loss = losses["total"]
            if decay:
                loss += decay * tf.add_n([tf.nn.l2_loss(tf.cast(v, tf.float32))
                                          for v in model.trainable_variables if "kernel" in v.name])
            loss = loss / num_replicas
            target = optimizer.get_scaled_loss(loss) if scaled else loss
        variables = model.trainable_variables
        grads = tape.gradient(target, variables)
        if scaled:
            grads = optimizer.get_unscaled_gradients(grads)
        if clip:
            grads, _ = tf.clip_by_global_norm(grads, float(clip))
        optimizer.apply_gradients(zip(grads, variables))
        return loss

    return step


def build_model(hp: dict, num_classes: int) -> MaskRCNN:
    size = int(hp["image_size"])
    model = MaskRCNN(num_classes, (size, size), model_config(hp))
    model(tf.zeros([1, size, size, 3]))  # create the variables (checkpoint restore, export)
    return model


def run_fn(fn_args) -> None:
    hp = instance_hparams(fn_args.custom_config)
    ids = label_ids(hp.get("label_map"))
    total_steps = int(fn_args.train_steps or 0)
    if total_steps <= 0:
        raise InputError("train_steps must be positive")
    strategy, policy = strategy_and_policy(hp)
    keras.mixed_precision.set_global_policy(policy)
    log(f"instance: strategy {type(strategy).__name__} x{strategy.num_replicas_in_sync}, policy {policy}, "
        f"{len(ids)} classes, {hp['backbone']} at {hp['image_size']}px")

    tft_output = tft.TFTransformOutput(fn_args.transform_output)
    feature_spec = tft_output.transformed_feature_spec()
    dataset = make_dataset(fn_args.train_files, feature_spec, hp, int(hp["batch_size"]), training=True,
                           seed=int(hp["seed"]))
    pixel_mean, pixel_std = analyzer_values(fn_args.train_files, feature_spec)

    keras.utils.set_random_seed(int(hp["seed"]))
    with strategy.scope():
        model = build_model(hp, len(ids))
        optimizer = build_optimizer(hp, total_steps, policy)
    step_fn = make_step_fn(model, optimizer, hp, strategy.num_replicas_in_sync, use_jit(hp, strategy))
    checkpoint_dir = hp["checkpoint_dir"] or os.path.join(fn_args.model_run_dir, "checkpoints")
    result = run_training(
        strategy=strategy, model=model, optimizer=optimizer, step_fn=step_fn, dataset=dataset,
        total_steps=total_steps, steps_per_execution=int(hp["steps_per_execution"]),
        checkpoint_dir=checkpoint_dir, log_dir=fn_args.model_run_dir,
        checkpoint_every=int(hp["checkpoint_every"]), keep_checkpoints=int(hp["keep_checkpoints"]))
    log(f"trained steps {result['start_step']}->{result['final_step']} in {result['seconds']:.0f}s")

    t0 = time.time()
    export_instance_model(model, hp, ids, pixel_mean, pixel_std, hp["label_map"], fn_args.serving_model_dir)
    log(f"exported to {fn_args.serving_model_dir} ({time.time() - t0:.0f}s)")
