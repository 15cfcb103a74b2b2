"""The instance training step on a random batch, for `segpipe bench train` (trainer_module.bench)."""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from components.errors import InputError
from trainer_module.instance.hparams import DEFAULTS
from trainer_module.instance.model import build_model, make_train_step
from trainer_module.models.mask_rcnn.model import MODEL_DEFAULTS
from trainer_module.training import FixedBatchStep, set_up_training

MODELS = {"maskrcnn_resnet50_fpn": "resnet50", "maskrcnn_mobilenetv2_fpn": "mobilenetv2"}
NUM_CLASSES = 90  # the class count of Model Garden's COCO Mask R-CNN, for comparable cost
MAX_INSTANCES = 100


def dummy_batch(batch_size: int, image_size, max_instances: int, num_classes: int, rng=None,
                mask_stride: int = 1) -> dict:
    """Random images with random boxes and box-shaped masks at 1/mask_stride of the image size, in
    the input pipeline's form {"image", "boxes", "classes", "masks"} (NumPy arrays)."""
    rng = rng or np.random.default_rng(0)
    h, w = image_size
    images = rng.standard_normal((batch_size, h, w, 3)).astype(np.float32)
    n = max_instances
    cy = rng.uniform(0, h, (batch_size, n))
    cx = rng.uniform(0, w, (batch_size, n))
    bh = rng.uniform(0.05, 0.5, (batch_size, n)) * h
    bw = rng.uniform(0.05, 0.5, (batch_size, n)) * w
    boxes = np.stack([np.clip(cy - bh / 2, 0, h), np.clip(cx - bw / 2, 0, w),
                      np.clip(cy + bh / 2, 0, h), np.clip(cx + bw / 2, 0, w)], -1).astype(np.float32)
    classes = rng.integers(1, num_classes + 1, (batch_size, n)).astype(np.int32)
    mask_boxes = boxes[..., None, None] / mask_stride
    ys = np.arange(h // mask_stride)[None, None, :, None] + 0.5
    xs = np.arange(w // mask_stride)[None, None, None, :] + 0.5
    masks = ((ys >= mask_boxes[..., 0, :, :]) & (ys < mask_boxes[..., 2, :, :])
             & (xs >= mask_boxes[..., 1, :, :]) & (xs < mask_boxes[..., 3, :, :])).astype(np.uint8)
    return {"image": images, "boxes": boxes, "classes": classes, "masks": masks}


def build_train_step(model_name: str, image_size: int, batch_size: int, **overrides) -> FixedBatchStep:
    """The training step (instance.model.make_train_step, the instance optimizer) of the paper-size
    model (MODEL_DEFAULTS) on a random batch with masks at the training mask_stride; `overrides`
    change hyper-parameters. Each call of the result runs one step."""
    if model_name not in MODELS:
        raise InputError(f"unknown model {model_name!r}; choose one of {', '.join(MODELS)}")
    if isinstance(image_size, (list, tuple)):
        raise InputError(f"{model_name} takes one image size (its square canvas), got {list(image_size)}")
    hp = {**DEFAULTS, **MODEL_DEFAULTS, "backbone": MODELS[model_name], "image_size": image_size, **overrides}
    setup = set_up_training(hp, NUM_CLASSES, build_model, make_train_step, total_steps=10**6)
    batch = dummy_batch(batch_size, (image_size, image_size), MAX_INSTANCES, NUM_CLASSES,
                        np.random.default_rng(hp["seed"]), hp["mask_stride"])
    return FixedBatchStep(setup.strategy, setup.model, setup.optimizer, setup.step_fn,
                          {k: tf.constant(v) for k, v in batch.items()})
