"""Loss, model construction from hyper-parameters and the per-replica training step."""
from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

from trainer_module.models.backbones import load_backbone_weights  # noqa: E402
from trainer_module.models.deeplab import deeplab_v3_plus  # noqa: E402

IGNORE_LABEL = 255


def segmentation_loss(labels, logits, class_weights=None):
    """Pixel cross-entropy, ignoring label 255, averaged over the valid pixels of this replica's batch
    (optionally weighted per class)."""
    labels = tf.cast(labels, tf.int32)
    valid = tf.not_equal(labels, IGNORE_LABEL)
    safe = tf.where(valid, labels, tf.zeros_like(labels))
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=safe, logits=tf.cast(logits, tf.float32))
    weights = tf.cast(valid, tf.float32)
    if class_weights is not None:
        weights *= tf.gather(tf.cast(class_weights, tf.float32), safe)
    return tf.reduce_sum(ce * weights) / tf.maximum(tf.reduce_sum(weights), 1.0)


def build_model(hp: dict, num_classes: int) -> keras.Model:
    model, backbone = deeplab_v3_plus(
        num_classes, hp["image_size"], backbone=hp["backbone"], output_stride=hp["output_stride"],
        width_multiplier=hp["width_multiplier"], aspp_filters=hp["aspp_filters"],
        decoder_filters=hp["decoder_filters"], low_level_filters=hp["low_level_filters"],
        dropout=hp["dropout"], weight_decay=hp["weight_decay"], separable=hp["separable"],
        bn_momentum=hp["bn_momentum"])
    if hp.get("backbone_weights"):
        load_backbone_weights(backbone, hp["backbone_weights"])
    return model


def make_step_fn(model: keras.Model, optimizer, class_weights=None, jit_compile: bool = False):
    """Per-replica step: batch {"image", "label"} -> loss (scaled for cross-replica summation)."""
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    loss_scaled = isinstance(optimizer, keras.mixed_precision.LossScaleOptimizer)

    @tf.function(jit_compile=jit_compile)
    def step(batch):
        with tf.GradientTape() as tape:
            logits = model(batch["image"], training=True)
            loss = segmentation_loss(batch["label"], logits, class_weights) / replicas
            if model.losses:  # L2 weight decay from the kernel regularizers
                loss += tf.add_n(model.losses) / replicas
            objective = optimizer.get_scaled_loss(loss) if loss_scaled else loss
        grads = tape.gradient(objective, model.trainable_variables)
        if loss_scaled:
            grads = optimizer.get_unscaled_gradients(grads)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    return step
