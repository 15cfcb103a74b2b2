"""One full Mask R-CNN training step on random data, for `segpipe bench train`."""
from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
import numpy as np
import tensorflow as tf
import tf_keras as keras

from components.errors import InputError
from trainer_module.models.mask_rcnn.model import MaskRCNN, dummy_batch

MODELS = {"maskrcnn_resnet50_fpn": "resnet50", "maskrcnn_mobilenetv2_fpn": "mobilenetv2"}
COCO_NUM_CLASSES = 90  # the class count of Model Garden's COCO Mask R-CNN, for comparable cost
MAX_INSTANCES = 100


def build_train_step(model_name: str, image_size: int, batch_size: int, seed: int = 0,
                     jit_compile: bool | None = None, precision: str = "float32"):
    """Return a zero-arg callable that runs one synchronous training step (forward, losses,
    backward, SGD-momentum update) and returns the total loss as a float.
    precision: a Keras mixed-precision policy name ("float32", "mixed_bfloat16").
    jit_compile None means XLA on TPU/GPU but not on CPU: there XLA's convolutions measured about
    2x slower than TensorFlow's oneDNN kernels (ResNet-50 640x640 batch 2: 32.6 vs 15.6 s/step).
    The whole step does compile under XLA (tested), which is what TPUs need."""
    if jit_compile is None:
        jit_compile = bool(tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"))
    keras.mixed_precision.set_global_policy(precision)
    if model_name not in MODELS:
        raise InputError(f"unknown model {model_name!r}; choose one of {', '.join(MODELS)}")
    size = (int(image_size), int(image_size))
    model = MaskRCNN(COCO_NUM_CLASSES, size, {"backbone": MODELS[model_name]})
    optimizer = keras.optimizers.SGD(learning_rate=0.01, momentum=0.9)
    batch = [tf.constant(a) for a in dummy_batch(batch_size, size, MAX_INSTANCES, COCO_NUM_CLASSES,
                                                   np.random.default_rng(seed))]

    @tf.function(jit_compile=jit_compile)
    def step(images, boxes, classes, masks):
        with tf.GradientTape() as tape:
            loss = model.train_forward(images, boxes, classes, masks, training=True)["total"]
        variables = model.trainable_variables
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    def run_once() -> float:
        return float(step(*batch))  # float() waits for the step to finish

    return run_once
