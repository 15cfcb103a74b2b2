"""Semantic `run_fn`: train DeepLab v3+ on Transform's output, evaluate, export."""
from __future__ import annotations

import time

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft

from components.contract import IGNORE_LABEL, image_hw, semantic_num_classes
from components.errors import InputError
from trainer_module.metrics.iou import scores_from_confusion
from trainer_module.semantic.export import export_model
from trainer_module.semantic.hparams import hparams_from_config
from trainer_module.semantic.input_pipeline import analyzer_values, class_weights, make_dataset
from trainer_module.semantic.model import build_model, make_train_step, predict_logits
from trainer_module.training import TaskTraining, log, save_for_warm_start, set_up_training, train, write_eval_metrics


def confusion_matrix(model, dataset, num_classes: int, steps: int, flip: bool = False) -> np.ndarray:
    """Pixel confusion matrix [true, predicted] at the training resolution over `steps` batches
    (`flip`: the test-time flip the export applies)."""
    @tf.function
    def batch_confusion(batch):
        pred = tf.argmax(predict_logits(model, batch["image"], flip), axis=-1, output_type=tf.int32)
        valid = tf.not_equal(batch["label"], IGNORE_LABEL)
        return tf.math.confusion_matrix(tf.boolean_mask(batch["label"], valid), tf.boolean_mask(pred, valid),
                                        num_classes=num_classes, dtype=tf.int64)

    total = np.zeros((num_classes, num_classes), np.int64)
    for batch in dataset.take(steps):
        total += batch_confusion(batch).numpy()
    return total


def evaluate(model, eval_files, feature_spec: dict, hp: dict, num_classes: int, steps: int) -> dict:
    """{"mean_iou", "pixel_accuracy", "iou": {class id: IoU}} over `steps` eval batches."""
    dataset = make_dataset(eval_files, feature_spec, hp, max(1, min(int(hp["batch_size"]), 8)), training=False)
    metrics = scores_from_confusion(confusion_matrix(model, dataset, num_classes, steps, hp["serving_flip"]))
    height, width = image_hw(hp["image_size"])
    flip = " with test-time flip" if hp["serving_flip"] else ""
    log(f"eval at {height}x{width} px{flip}: mean IoU {metrics['mean_iou']:.4f}, "
        f"pixel accuracy {metrics['pixel_accuracy']:.4f}")
    return metrics


def prepare_training(fn_args) -> TaskTraining:
    """The model, optimizer, step and train dataset of `fn_args` (run_fn, `segpipe bench loop`)."""
    hp = hparams_from_config(fn_args.custom_config)
    num_classes = semantic_num_classes(hp["label_map"])
    total_steps = int(fn_args.train_steps or 0)
    if total_steps <= 0:
        raise InputError("train_steps must be positive")
    tft_output = tft.TFTransformOutput(fn_args.transform_output)
    feature_spec = tft_output.transformed_feature_spec()
    train_ds = make_dataset(fn_args.train_files, feature_spec, hp, int(hp["batch_size"]), training=True,
                            seed=hp["seed"])
    weights = class_weights(fn_args.train_files, num_classes) if hp["class_weighting"] else None
    if weights is not None:
        log(f"class weights {np.round(weights, 3).tolist()}")
    setup = set_up_training(hp, num_classes, build_model, make_train_step, total_steps, class_weights=weights)
    return TaskTraining(hp, num_classes, tft_output, feature_spec, setup, train_ds)


def run_fn(fn_args) -> None:
    prepared = prepare_training(fn_args)
    hp, num_classes, feature_spec, setup = prepared.hp, prepared.num_classes, prepared.feature_spec, prepared.setup
    train(setup, hp, fn_args, prepared.dataset)
    model = setup.model

    eval_steps = int(fn_args.eval_steps or 0)
    if eval_steps > 0 and fn_args.eval_files:
        write_eval_metrics(fn_args, evaluate(model, fn_args.eval_files, feature_spec, hp, num_classes, eval_steps))

    t0 = time.time()
    pixel_mean, pixel_std = analyzer_values(fn_args.train_files, feature_spec)
    export_model(setup.float32_model(), prepared.tft_output, hp["label_map"], fn_args.serving_model_dir,
                 pixel_mean, pixel_std, flip=hp["serving_flip"])
    save_for_warm_start(model, fn_args.serving_model_dir)  # what a warm-started run loads
    log(f"exported to {fn_args.serving_model_dir} ({time.time() - t0:.0f}s)")
