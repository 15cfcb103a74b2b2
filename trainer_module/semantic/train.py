"""Semantic `run_fn`: train DeepLab v3+ on Transform's output, evaluate, export."""
from __future__ import annotations

import json
import os
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_transform as tft  # noqa: E402
import tf_keras as keras  # noqa: E402

from components.errors import InputError  # noqa: E402
from trainer_module.distribute import strategy_and_policy, use_jit  # noqa: E402
from trainer_module.hparams import num_classes_from_label_map, semantic_hparams  # noqa: E402
from trainer_module.semantic.data import class_weights, make_dataset  # noqa: E402
from trainer_module.semantic.export import export_semantic_model  # noqa: E402
from trainer_module.semantic.model import IGNORE_LABEL, build_model, make_step_fn  # noqa: E402
from trainer_module.training import log, run_training, make_optimizer  # noqa: E402


def confusion_matrix(model, dataset, num_classes: int, steps: int) -> np.ndarray:
    """Pixel confusion matrix [true, predicted] at the training resolution over `steps` batches."""
    @tf.function
    def batch_confusion(batch):
        pred = tf.argmax(model(batch["image"], training=False), axis=-1, output_type=tf.int32)
        valid = tf.not_equal(batch["label"], IGNORE_LABEL)
        return tf.math.confusion_matrix(tf.boolean_mask(batch["label"], valid), tf.boolean_mask(pred, valid),
                                        num_classes=num_classes, dtype=tf.int64)

    total = np.zeros((num_classes, num_classes), np.int64)
    for batch in dataset.take(steps):
        total += batch_confusion(batch).numpy()
    return total


def iou_metrics(confusion: np.ndarray) -> dict:
    tp = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - tp
    present = union > 0
    iou = np.where(present, tp / np.maximum(union, 1), np.nan)
    return {"mean_iou": float(np.nanmean(iou)) if present.any() else float("nan"),
            "pixel_accuracy": float(tp.sum() / max(confusion.sum(), 1)),
            "per_class_iou": [None if np.isnan(v) else round(float(v), 4) for v in iou]}


def run_fn(fn_args) -> None:
    hp = semantic_hparams(fn_args.custom_config)
    label_map = hp["label_map"]
    num_classes = num_classes_from_label_map(label_map)
    total_steps = int(fn_args.train_steps or 0)
    if total_steps <= 0:
        raise InputError("train_steps must be positive")
    strategy, policy = strategy_and_policy(hp)
    keras.mixed_precision.set_global_policy(policy)
    log(f"strategy {type(strategy).__name__} x{strategy.num_replicas_in_sync}, policy {policy}")

    tft_output = tft.TFTransformOutput(fn_args.transform_output)
    feature_spec = tft_output.transformed_feature_spec()
    batch_size = int(hp["batch_size"])
    train_ds = make_dataset(fn_args.train_files, feature_spec, hp, batch_size, training=True, seed=hp["seed"])
    weights = class_weights(fn_args.train_files, num_classes) if hp["class_weighting"] else None
    if weights is not None:
        log(f"class weights {np.round(weights, 3).tolist()}")

    keras.utils.set_random_seed(hp["seed"])
    with strategy.scope():
        model = build_model(hp, num_classes)
        optimizer = make_optimizer(hp, total_steps, policy)
    step_fn = make_step_fn(model, optimizer, weights, jit_compile=use_jit(hp, strategy))
    checkpoint_dir = hp["checkpoint_dir"] or os.path.join(fn_args.model_run_dir, "checkpoints")
    result = run_training(
        strategy=strategy, model=model, optimizer=optimizer, step_fn=step_fn, dataset=train_ds,
        total_steps=total_steps, steps_per_execution=int(hp["steps_per_execution"]),
        checkpoint_dir=checkpoint_dir, log_dir=fn_args.model_run_dir,
        checkpoint_every=int(hp["checkpoint_every"]), keep_checkpoints=int(hp["keep_checkpoints"]))
    log(f"trained steps {result['start_step']}->{result['final_step']} in {result['seconds']:.0f}s")

    eval_steps = int(fn_args.eval_steps or 0)
    if eval_steps > 0 and fn_args.eval_files:
        eval_batch = max(1, min(batch_size, 8))
        eval_ds = make_dataset(fn_args.eval_files, feature_spec, hp, eval_batch, training=False)
        metrics = iou_metrics(confusion_matrix(model, eval_ds, num_classes, eval_steps))
        log(f"eval at {hp['image_size']}px: mean IoU {metrics['mean_iou']:.4f}, "
            f"pixel accuracy {metrics['pixel_accuracy']:.4f}")
        with tf.io.gfile.GFile(os.path.join(fn_args.model_run_dir, "eval_metrics.json"), "w") as f:
            f.write(json.dumps(metrics))

    t0 = time.time()
    export_semantic_model(model, tft_output, label_map, fn_args.serving_model_dir)
    log(f"exported to {fn_args.serving_model_dir} ({time.time() - t0:.0f}s)")
