"""The semantic model (DeepLab v3+ or LR-ASPP) from hyper-parameters, its loss, and its per-replica train step."""
from __future__ import annotations

import tensorflow as tf
import tf_keras as keras

from components.contract import IGNORE_LABEL
from trainer_module import training
from trainer_module.models.backbones import load_backbone_weights
from trainer_module.models.deeplab import deeplab_v3_plus, resize_bilinear
from trainer_module.models.lraspp import lraspp
from trainer_module.semantic.hparams import check_model

# Weight decay skips depthwise kernels (see weight_decay in semantic/hparams.py).
DECAY_DEPTHWISE = False


def segmentation_loss(labels, logits, class_weights=None, loss_stride: int = 1):
    """Pixel cross-entropy, ignoring IGNORE_LABEL, averaged over the valid pixels of this replica's
    batch (optionally weighted per class), on every `loss_stride`-th row and column of the labels
    (hparams' loss_stride): the labels are taken at those pixels (the pixel nearest each point of the
    H/loss_stride x W/loss_stride grid, as tf.image.resize's nearest neighbour picks it) and the logits,
    which may be coarser (the classifier's output), upsampled bilinearly to that grid."""
    if loss_stride > 1:
        labels = labels[:, loss_stride // 2::loss_stride, loss_stride // 2::loss_stride]
    logits = resize_bilinear(tf.cast(logits, tf.float32), labels.shape[1:3], training=True)
    return _pixel_cross_entropy(labels, logits, class_weights)


# XLA fuses the element-wise passes over the logits (and their gradient) into a few loops: upsampling
# plus loss, forward and backward, 67 -> 57 ms on 2 cores for 4x512x512x21 logits.
@tf.function(jit_compile=True)
def _pixel_cross_entropy(labels, logits, class_weights):
    labels = tf.cast(labels, tf.int32)
    valid = tf.not_equal(labels, IGNORE_LABEL)
    safe = tf.where(valid, labels, tf.zeros_like(labels))
    # -log softmax(logits)[label] written out, the same value and gradient as
    # sparse_softmax_cross_entropy_with_logits, whose CPU kernel is slower.
    picked = tf.reduce_sum(logits * tf.one_hot(safe, tf.shape(logits)[-1], dtype=logits.dtype), axis=-1)
    ce = tf.reduce_logsumexp(logits, axis=-1) - picked
    weights = tf.cast(valid, tf.float32)
    if class_weights is not None:
        weights *= tf.gather(tf.cast(class_weights, tf.float32), safe)
    return tf.reduce_sum(ce * weights) / tf.maximum(tf.reduce_sum(weights), 1.0)


def predict_logits(model: keras.Model, images, flip: bool = False):
    """The model's inference logits; with `flip`, the mean of the logits of the images and of their
    mirror images (flipped back), from one call on the doubled batch."""
    if not flip:
        return model(images, training=False)
    both = model(tf.concat([images, tf.reverse(images, [2])], axis=0), training=False)
    plain, mirrored = tf.split(both, 2, axis=0)
    return (plain + tf.reverse(mirrored, [2])) * 0.5


def build_model(hp: dict, num_classes: int) -> keras.Model:
    """The `hp["model"]` network (DeepLab v3+ or LR-ASPP) with its backbone's pretrained weights if
    `hp["backbone_weights"]` names a file."""
    check_model(hp)
    if hp["model"] == "lraspp":
        model, backbone = lraspp(
            num_classes, hp["image_size"], backbone=hp["backbone"], output_stride=hp["output_stride"],
            width_multiplier=hp["width_multiplier"], head_filters=hp["lraspp_filters"],
            dropout=hp["dropout"], bn_momentum=hp["bn_momentum"])
    else:
        model, backbone = deeplab_v3_plus(
            num_classes, hp["image_size"], backbone=hp["backbone"], output_stride=hp["output_stride"],
            width_multiplier=hp["width_multiplier"], aspp_filters=hp["aspp_filters"],
            decoder_filters=hp["decoder_filters"], low_level_filters=hp["low_level_filters"],
            dropout=hp["dropout"], separable=hp["separable"], bn_momentum=hp["bn_momentum"])
    if hp.get("backbone_weights"):
        load_backbone_weights(backbone, hp["backbone_weights"])
    return model


def make_train_step(model: keras.Model, optimizer, hp: dict, jit_compile: bool = False, class_weights=None):
    """Per-replica step: batch {"image", "label"} -> loss (training.make_train_step around
    `segmentation_loss` at hp["loss_stride"], on the classifier's logits before the model upsamples
    them to the input size: the loss upsamples them only as far as its grid)."""
    classifier_logits = keras.Model(model.inputs, model.get_layer("logits").input[0])

    def loss_fn(batch):
        return segmentation_loss(batch["label"], classifier_logits(batch["image"], training=True),
                                 class_weights, hp["loss_stride"])

    return training.make_train_step(model, optimizer, loss_fn, hp["weight_decay"], DECAY_DEPTHWISE,
                                    hp["gradient_clip_norm"], jit_compile)
