"""Mask R-CNN model: output shapes, the instance train step learning a fixed batch, the full training
step under XLA (TPU readiness), and the benchmark step being the training step."""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from trainer_module.instance.bench_step import dummy_batch
from trainer_module.instance.hparams import DEFAULTS
from trainer_module.instance.model import build_model, make_train_step
from trainer_module.models.mask_rcnn.model import MaskRCNN
from trainer_module.training import build_optimizer

TINY = {"backbone": "mobilenetv2", "fpn_channels": 32, "box_fc_dims": 64, "mask_head_channels": 32,
        "rpn_pre_nms_top_k_train": 300, "rpn_post_nms_top_k_train": 100, "roi_samples_per_image": 64,
        "rpn_pre_nms_top_k_test": 200, "rpn_post_nms_top_k_test": 50, "max_detections": 10}
SIZE = (128, 128)


def tiny_trainer(num_classes: int, jit_compile: bool = False, **overrides):
    """Model, optimizer and the instance train step for the TINY model at a constant learning rate."""
    hp = dict(DEFAULTS, **TINY, image_size=SIZE[0], lr_schedule="step", decay_at=[], warmup_steps=0,
              **overrides)
    model = build_model(hp, num_classes)
    optimizer = build_optimizer(hp, 100, "float32")
    return model, optimizer, make_train_step(model, optimizer, hp, jit_compile)


def as_tensors(batch: dict) -> dict:
    return {k: tf.constant(v) for k, v in batch.items()}


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


def test_dummy_batch_masks_fill_their_boxes_at_the_mask_stride():
    batch = dummy_batch(2, SIZE, 4, 3, np.random.default_rng(0), mask_stride=2)
    assert batch["masks"].shape == (2, 4, 64, 64) and batch["masks"].dtype == np.uint8
    ymin, xmin, ymax, xmax = batch["boxes"][0, 0] / 2
    ys, xs = np.nonzero(batch["masks"][0, 0])
    assert ys.min() >= ymin - 0.5 and ys.max() <= ymax and xs.min() >= xmin - 0.5 and xs.max() <= xmax


def test_train_step_learns_a_fixed_batch():
    """At a fixed learning rate the classification losses (RPN objectness + head class) of a fixed
    batch fall to under half in 15 steps (measured: to 0.19-0.30 for seeds 0, 1, 2), the total to
    under 3/4 (measured: 0.29-0.51; the box losses grow as the heads find the objects)."""
    keras.utils.set_random_seed(0)
    model, _, step = tiny_trainer(2, optimizer="adam", learning_rate=1e-3)
    batch = as_tensors(dummy_batch(2, SIZE, 4, 2, np.random.default_rng(1)))
    losses_of = tf.function(lambda b: model.train_forward(b["image"], b["boxes"], b["classes"], b["masks"]))
    first = {k: float(v) for k, v in losses_of(batch).items()}
    for _ in range(15):
        assert np.isfinite(float(step(batch)))
    last = {k: float(v) for k, v in losses_of(batch).items()}
    assert all(np.isfinite(list(last.values())))
    assert last["rpn_cls"] + last["head_cls"] < 0.5 * (first["rpn_cls"] + first["head_cls"]), (first, last)
    assert last["total"] < 0.75 * first["total"], (first, last)


@pytest.mark.slow
def test_full_training_step_compiles_under_xla():
    _, _, step = tiny_trainer(2, jit_compile=True)
    batch = as_tensors(dummy_batch(1, SIZE, 3, 2))
    assert np.isfinite(float(step(batch))) and np.isfinite(float(step(batch)))


def test_bench_step_is_the_training_step(monkeypatch):
    """The bench builds its step with instance.model.make_train_step: one call is one full training
    step (the optimizer counts it, the weights move)."""
    from trainer_module.bench import build_train_step
    from trainer_module.instance import bench_step
    from trainer_module.instance import model as instance_model

    built = []

    def recording(*args, **kwargs):
        built.append(args)
        return instance_model.make_train_step(*args, **kwargs)

    monkeypatch.setattr(bench_step, "make_train_step", recording)
    step = build_train_step("maskrcnn_mobilenetv2_fpn", 128, 1)
    assert len(built) == 1 and built[0][0] is step.model and built[0][1] is step.optimizer
    assert step.model.cfg["fpn_channels"] == 256 and step.model.num_classes == 90  # paper size, COCO classes
    head = step.model.box_head.cls.kernel
    before = head.numpy().copy()
    assert np.isfinite(step())
    assert int(step.optimizer.iterations.numpy()) == 1 and not np.array_equal(before, head.numpy())


@pytest.mark.parametrize("image_size", [600, 96])
def test_canvas_not_on_the_p6_grid_is_refused_in_hparams_and_in_the_model(image_size):
    from components.errors import InputError
    from trainer_module.instance.hparams import hparams_from_config

    with pytest.raises(InputError, match="multiple of 64"):
        hparams_from_config({"image_size": image_size})
    with pytest.raises(InputError, match="multiple of 64"):
        MaskRCNN(2, (image_size, image_size))
