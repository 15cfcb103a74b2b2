"""Mask R-CNN from hyper-parameters, its loss, and its per-replica train step."""
from __future__ import annotations

import tensorflow as tf

from trainer_module import training
from trainer_module.instance.hparams import model_config
from trainer_module.models.mask_rcnn.model import MaskRCNN

# Weight decay covers depthwise kernels too (see weight_decay in instance/hparams.py).
DECAY_DEPTHWISE = True


def instance_losses(model: MaskRCNN, batch: dict, training: bool = True) -> dict:
    """The Mask R-CNN losses of a batch {"image", "boxes", "classes", "masks"} (input_pipeline's
    form): rpn_cls, rpn_box, head_cls, head_box, mask and their sum, total."""
    return model.train_forward(batch["image"], batch["boxes"], batch["classes"], batch["masks"],
                               training=training)


def build_model(hp: dict, num_classes: int) -> MaskRCNN:
    size = int(hp["image_size"])
    model = MaskRCNN(num_classes, (size, size), model_config(hp))
    model(tf.zeros([1, size, size, 3]))  # create the variables (checkpoint restore, export)
    return model


def make_train_step(model: MaskRCNN, optimizer, hp: dict, jit_compile: bool = False):
    """Per-replica step: batch -> loss (training.make_train_step around the total of
    `instance_losses`)."""

    def loss_fn(batch):
        return instance_losses(model, batch)["total"]

    return training.make_train_step(model, optimizer, loss_fn, hp["weight_decay"], DECAY_DEPTHWISE,
                                    hp["gradient_clip_norm"], jit_compile)
