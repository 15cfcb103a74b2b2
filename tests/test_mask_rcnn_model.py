"""Mask R-CNN model: output shapes, a training loss that goes down on a fixed batch, the full
training step under XLA (TPU readiness), and the benchmark step."""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from trainer_module.models.mask_rcnn.model import MaskRCNN, dummy_batch

TINY = {"backbone": "mobilenetv2", "fpn_channels": 32, "box_fc_dims": 64, "mask_head_channels": 32,
        "rpn_pre_nms_top_k_train": 300, "rpn_post_nms_top_k_train": 100, "roi_samples_per_image": 64,
        "rpn_pre_nms_top_k_test": 200, "rpn_post_nms_top_k_test": 50, "max_detections": 10}
SIZE = (128, 128)


def train_step_fn(model, optimizer, jit_compile):
    @tf.function(jit_compile=jit_compile)
    def step(images, boxes, classes, masks):
        with tf.GradientTape() as tape:
            losses = model.train_forward(images, boxes, classes, masks, training=True)
        grads = tape.gradient(losses["total"], model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return losses
    return step


def test_inference_output_shapes():
    model = MaskRCNN(3, SIZE, TINY)
    images = tf.random.normal([2, *SIZE, 3])
    out = model(images)
    assert out["detection_boxes"].shape == (2, 10, 4)
    assert out["detection_scores"].shape == (2, 10)
    assert out["detection_classes"].shape == (2, 10)
    assert out["detection_mask_probs"].shape == (2, 10, 28, 28)
    n = out["num_detections"].numpy()
    classes = out["detection_classes"].numpy()
    for i in range(2):
        assert np.all((classes[i, :n[i]] >= 1) & (classes[i, :n[i]] <= 3))
        assert np.all(classes[i, n[i]:] == 0)
    boxes = out["detection_boxes"].numpy()
    assert boxes.min() >= 0 and boxes.max() <= SIZE[0]


def test_loss_decreases_on_a_fixed_batch():
    keras.utils.set_random_seed(0)
    model = MaskRCNN(2, SIZE, TINY)
    batch = [tf.constant(a) for a in dummy_batch(2, SIZE, 4, 2, np.random.default_rng(1))]
    step = train_step_fn(model, keras.optimizers.SGD(0.02, momentum=0.9), jit_compile=False)
    totals = []
    for _ in range(12):
        losses = step(*batch)
        totals.append(float(losses["total"]))
        assert all(np.isfinite(float(v)) for v in losses.values())
    assert np.mean(totals[-3:]) < 0.8 * totals[0], totals


@pytest.mark.slow
def test_full_training_step_compiles_under_xla():
    model = MaskRCNN(2, SIZE, TINY)
    batch = [tf.constant(a) for a in dummy_batch(1, SIZE, 3, 2)]
    step = train_step_fn(model, keras.optimizers.SGD(0.01, momentum=0.9), jit_compile=True)
    first = step(*batch)
    second = step(*batch)
    assert np.isfinite(float(first["total"])) and np.isfinite(float(second["total"]))


def test_bench_step_runs_one_step():
    from trainer_module.instance.bench_step import build_train_step

    run = build_train_step("maskrcnn_mobilenetv2_fpn", 128, 1)
    assert np.isfinite(run())
