"""DeepLab v3+ model, backbones, distribution/precision choice, LR schedules and optimizers, the semantic
train step and the bench step."""
from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
from conftest import learnable_batch

from components.contract import IGNORE_LABEL
from components.errors import InputError
from trainer_module.models.backbones import build_backbone
from trainer_module.models.deeplab import deeplab_v3_plus


def _dilations(model, prefix):
    return [layer.dilation_rate[0] for layer in model.layers
            if layer.name.startswith(prefix) and isinstance(layer, keras.layers.Conv2D)]


@pytest.mark.parametrize("backbone,output_stride,high_channels,low_channels", [
    ("mobilenetv2", 16, 320, 24), ("mobilenetv2", 8, 320, 24),
    ("resnet50", 16, 2048, 256), ("resnet50", 8, 2048, 256)])
def test_backbone_feature_strides(backbone, output_stride, high_channels, low_channels):
    net = build_backbone(backbone, (64, 64, 3), output_stride)
    features = net(tf.zeros([2, 64, 64, 3]))
    assert features["high_level"].shape == (2, 64 // output_stride, 64 // output_stride, high_channels)
    assert features["low_level"].shape == (2, 16, 16, low_channels)


def test_resnet50_atrous_rates():
    os16 = build_backbone("resnet50", (64, 64, 3), 16)
    assert set(_dilations(os16, "conv5_block")) - {1} == {2}
    assert set(_dilations(os16, "conv4_block")) == {1}
    os8 = build_backbone("resnet50", (64, 64, 3), 8)
    assert set(_dilations(os8, "conv4_block")) - {1} == {2}
    assert set(_dilations(os8, "conv5_block")) - {1} == {4}


@pytest.mark.parametrize("backbone,output_stride", [("mobilenetv2", 16), ("mobilenetv2", 8),
                                                    ("resnet50", 16), ("resnet50", 8)])
def test_deeplab_head_structure_and_logit_shape(backbone, output_stride):
    model, _ = deeplab_v3_plus(6, 64, backbone=backbone, output_stride=output_stride)
    logits = model(tf.random.normal([2, 64, 64, 3]), training=False)
    assert logits.shape == (2, 64, 64, 6) and logits.dtype == tf.float32
    rates = [model.get_layer(f"aspp_{i}_conv").dilation_rate[0] for i in (1, 2, 3)]
    assert rates == ([6, 12, 18] if output_stride == 16 else [12, 24, 36])
    assert model.get_layer("aspp_0_conv").filters == 256 and model.get_layer("aspp_pool").conv.filters == 256
    assert model.get_layer("aspp_project_conv").filters == 256
    assert model.get_layer("decoder_low_level_conv").filters == 48
    for name in ("decoder_conv1_conv", "decoder_conv2_conv"):
        layer = model.get_layer(name)
        assert layer.filters == 256 and layer.kernel_size == (3, 3)
    # decoder runs at stride 4
    decoder = keras.Model(model.input, model.get_layer("decoder_conv2_relu").output)
    assert decoder(tf.zeros([1, 64, 64, 3])).shape == (1, 16, 16, 256)


def test_bad_configuration_is_an_input_error():
    with pytest.raises(InputError):
        deeplab_v3_plus(6, 64, output_stride=4)
    with pytest.raises(InputError):
        build_backbone("vgg", (64, 64, 3), 16)


def test_strategy_and_policy_on_cpu():
    from trainer_module.distribute import cpu_has_native_bfloat16, strategy_and_policy, use_jit

    strategy, policy = strategy_and_policy({})
    # auto: bfloat16 where oneDNN runs it natively (AVX512-BF16 / AMX), float32 on other CPUs.
    assert strategy.num_replicas_in_sync == 1
    assert policy == ("mixed_bfloat16" if cpu_has_native_bfloat16() else "float32")
    assert strategy_and_policy({"mixed_precision": "float32"})[1] == "float32"
    assert strategy_and_policy({"mixed_precision": "mixed_bfloat16"})[1] == "mixed_bfloat16"
    # LR-ASPP (mostly depthwise convolutions) trains faster in float32 on every CPU; asked, bfloat16.
    from trainer_module.semantic.hparams import hparams_from_config

    lraspp_hp = hparams_from_config({"model": "lraspp", "backbone": "mobilenetv3_large"})
    assert strategy_and_policy(lraspp_hp)[1] == "float32"
    assert strategy_and_policy({**lraspp_hp, "mixed_precision": "mixed_bfloat16"})[1] == "mixed_bfloat16"
    assert strategy_and_policy(hparams_from_config({}))[1] == policy
    assert use_jit({}, strategy) is False and use_jit({"jit_compile": True}, strategy) is True
    with pytest.raises(InputError):
        strategy_and_policy({"mixed_precision": "fp8"})


def test_learning_rate_schedules_and_optimizers():
    from trainer_module.training import WarmupPolyDecay, WarmupStepDecay, build_optimizer

    lr = WarmupPolyDecay(0.1, total_steps=110, warmup_steps=10, power=0.9)
    values = [float(lr(s)) for s in (0, 9, 10, 60, 110, 200)]
    assert values[0] == pytest.approx(0.01) and values[1] == pytest.approx(0.1)
    assert values[2] == pytest.approx(0.1) and values[3] == pytest.approx(0.1 * 0.5 ** 0.9, rel=1e-5)
    assert values[4] == pytest.approx(0.0) and values[5] == pytest.approx(0.0)
    lr = WarmupStepDecay(0.1, warmup_steps=10, boundaries=[50, 80])
    values = [float(lr(s)) for s in (0, 9, 10, 49, 50, 80)]
    assert values[:4] == pytest.approx([0.01, 0.1, 0.1, 0.1]) and values[4:] == pytest.approx([0.01, 0.001])

    hp = {"learning_rate": 0.1, "warmup_steps": 10, "momentum": 0.9, "lr_schedule": "poly", "poly_power": 0.9,
          "decay_at": [0.5]}
    sgd = build_optimizer(dict(hp, optimizer="sgd"), 110, "float32")
    assert isinstance(sgd, keras.optimizers.SGD) and float(sgd.momentum) == pytest.approx(0.9)
    assert sgd.get_config()["learning_rate"]["class_name"] == "WarmupPolyDecay"
    step = build_optimizer(dict(hp, optimizer="sgd", lr_schedule="step"), 110, "float32")
    schedule = step.get_config()["learning_rate"]
    assert schedule["class_name"] == "WarmupStepDecay" and schedule["config"]["boundaries"] == [55]
    assert isinstance(build_optimizer(dict(hp, optimizer="adam"), 110, "float32"), keras.optimizers.Adam)
    assert isinstance(build_optimizer(dict(hp, optimizer="sgd"), 110, "mixed_float16"),
                      keras.mixed_precision.LossScaleOptimizer)
    with pytest.raises(InputError):
        build_optimizer(dict(hp, optimizer="lamb"), 110, "float32")
    with pytest.raises(InputError):
        build_optimizer(dict(hp, optimizer="sgd", lr_schedule="cosine"), 110, "float32")


def test_segmentation_loss_ignores_the_ignore_label():
    from trainer_module.semantic.model import segmentation_loss

    logits = tf.constant([[[[5.0, 0.0], [0.0, 5.0], [5.0, 0.0]]]])  # [1, 1, 3, 2]
    ignored = segmentation_loss(tf.constant([[[0, 1, IGNORE_LABEL]]]), logits)
    correct = segmentation_loss(tf.constant([[[0, 1]]]), logits[:, :, :2])
    assert float(ignored) == pytest.approx(float(correct))
    wrong = segmentation_loss(tf.constant([[[0, 1, 1]]]), logits)
    assert float(wrong) > float(ignored)


def test_segmentation_loss_is_the_weighted_sparse_cross_entropy_in_value_and_gradient():
    """The loss writes -log softmax out (faster on CPU); it must equal TF's sparse softmax
    cross-entropy, class-weighted and averaged over the valid pixels, and so must its gradient."""
    from trainer_module.semantic.model import segmentation_loss

    rng = np.random.default_rng(0)
    logits = tf.constant(rng.normal(0, 4, (2, 6, 7, 5)), tf.float32)
    labels = rng.integers(0, 5, (2, 6, 7))
    labels[0, :2] = IGNORE_LABEL
    class_weights = tf.constant([0.5, 2.0, 1.0, 3.0, 1.5])

    def reference(x):
        valid = labels != IGNORE_LABEL
        safe = np.where(valid, labels, 0)
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=safe, logits=x)
        weights = tf.cast(valid, tf.float32) * tf.gather(class_weights, safe)
        return tf.reduce_sum(ce * weights) / tf.reduce_sum(weights)

    def value_and_gradient(fn):
        with tf.GradientTape() as tape:
            tape.watch(logits)
            loss = fn(logits)
        return float(loss), tape.gradient(loss, logits).numpy()

    ours, ours_grad = value_and_gradient(lambda x: segmentation_loss(tf.constant(labels), x, class_weights))
    expected, expected_grad = value_and_gradient(reference)
    assert ours == pytest.approx(expected, rel=1e-5)
    np.testing.assert_allclose(ours_grad, expected_grad, atol=1e-6)
    assert np.abs(ours_grad[0, :2]).max() == 0.0  # ignored pixels get no gradient


@pytest.mark.parametrize("loss_stride", [2, 4])
def test_strided_loss_is_the_loss_on_the_labels_nearest_grid_and_logits_resized_to_it(loss_stride):
    """loss_stride s: the loss of the logits resized to H/s x W/s against the labels tf.image.resize
    (nearest) puts on that grid; at s = 1 it is the loss of the logits resized to the labels' size."""
    from trainer_module.semantic.model import segmentation_loss

    rng = np.random.default_rng(2)
    coarse = tf.constant(rng.normal(0, 3, (2, 4, 6, 5)), tf.float32)  # a stride-4 classifier output
    labels = rng.integers(0, 5, (2, 16, 24)).astype(np.int32)
    labels[1, 3:9] = IGNORE_LABEL
    class_weights = tf.constant([0.5, 2.0, 1.0, 3.0, 1.5])
    grid = (16 // loss_stride, 24 // loss_stride)
    grid_labels = tf.image.resize(labels[..., None], grid, method="nearest")[..., 0]
    assert not np.array_equal(grid_labels, labels[:, ::loss_stride, ::loss_stride])  # the grid matters

    def value_and_gradient(fn):
        with tf.GradientTape() as tape:
            tape.watch(coarse)
            loss = fn(coarse)
        return float(loss), tape.gradient(loss, coarse).numpy()

    ours = value_and_gradient(lambda x: segmentation_loss(labels, x, class_weights, loss_stride))
    expected = value_and_gradient(lambda x: segmentation_loss(grid_labels, tf.image.resize(x, grid), class_weights))
    assert ours[0] == pytest.approx(expected[0], rel=1e-6)
    np.testing.assert_allclose(ours[1], expected[1], rtol=1e-5, atol=1e-7)
    full = value_and_gradient(lambda x: segmentation_loss(labels, x, class_weights))
    full_expected = value_and_gradient(lambda x: segmentation_loss(labels, tf.image.resize(x, (16, 24)), class_weights))
    assert full[0] == pytest.approx(full_expected[0], rel=1e-6)
    assert full[0] != pytest.approx(ours[0], rel=1e-3)  # a different grid, a different estimate


@pytest.mark.parametrize("stride,image_size", [(3, 128), (0, 128), (True, 128), (2.0, 128), (8, [240, 324])])
def test_loss_stride_must_divide_the_image(stride, image_size):
    from trainer_module.semantic.hparams import hparams_from_config

    with pytest.raises(InputError, match="loss_stride"):
        hparams_from_config({"loss_stride": stride, "image_size": image_size})
    assert hparams_from_config({"loss_stride": 4, "image_size": [240, 320]})["loss_stride"] == 4


@pytest.mark.parametrize("out_hw", [(20, 28), (17, 26)])  # the model's x4, and a non-integer scale
@pytest.mark.parametrize("dtype", [tf.float32, tf.bfloat16])
def test_logits_upsampling_in_training_has_tf_resize_value_and_gradient(dtype, out_hw):
    """In training the logits layer takes its gradient one image at a time (faster on CPU): the
    output and the gradient must be tf.image.resize's."""
    from trainer_module.models.deeplab import ResizeLike

    rng = np.random.default_rng(1)
    x = tf.constant(rng.normal(0, 2, (3, 5, 7, 4)), dtype)
    like = tf.zeros([3, *out_hw, 1])
    upstream = tf.constant(rng.normal(0, 1, (3, *out_hw, 4)), tf.float32)

    def value_and_gradient(fn):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = fn(x)
            loss = tf.reduce_sum(tf.cast(y, tf.float32) * upstream)
        return y.numpy(), tape.gradient(loss, x).numpy()

    layer = ResizeLike(dtype="float32" if dtype == tf.float32 else "mixed_bfloat16")
    ours, ours_grad = value_and_gradient(lambda t: layer([t, like], training=True))
    expected, expected_grad = value_and_gradient(lambda t: tf.cast(tf.image.resize(t, out_hw), dtype))
    np.testing.assert_array_equal(ours, expected)
    np.testing.assert_array_equal(ours_grad, expected_grad)


TINY = {"image_size": 32, "width_multiplier": 0.35, "aspp_filters": 16, "decoder_filters": 16,
        "low_level_filters": 8, "dropout": 0.0}


def test_weight_decay_is_an_explicit_l2_penalty_on_regular_conv_kernels():
    """The semantic step adds weight_decay * sum(l2_loss) over the non-depthwise kernels: with
    the default 8e-5 that is 4e-5 * sum(kernel^2), the Keras l2(4e-5) regularizers of before."""
    from trainer_module.semantic.hparams import DEFAULTS
    from trainer_module.semantic.model import build_model, make_train_step
    from trainer_module.training import decayed_kernels

    hp = dict(DEFAULTS, **TINY, separable=True)
    model = build_model(hp, 3)
    assert not model.losses  # no Keras regularizers any more
    kernels = decayed_kernels(model, depthwise=False)
    names = [v.name for v in kernels]
    assert any("classifier" in n for n in names) and any("Conv1" in n for n in names)
    assert not any("depthwise" in n or "bias" in n or "gamma" in n for n in names)
    assert len(decayed_kernels(model, depthwise=True)) > len(kernels)

    batch = {"image": tf.zeros([1, 32, 32, 3]), "label": tf.fill([1, 32, 32], IGNORE_LABEL)}  # no pixel loss
    optimizer = keras.optimizers.SGD(0.0)
    loss = make_train_step(model, optimizer, hp)(batch)
    keras_l2 = sum(float(keras.regularizers.l2(4e-5)(v)) for v in kernels)
    assert float(loss) == pytest.approx(keras_l2, rel=1e-4)


def test_train_step_learns_a_learnable_batch():
    """At a fixed learning rate the loss of a batch the model can fit falls to under half in 30 steps
    (measured with the default separable ASPP/decoder: to 0.33-0.37 of the first loss for seeds 0, 1,
    2; full 3x3 convs get there in 15)."""
    from trainer_module.semantic.hparams import DEFAULTS
    from trainer_module.semantic.model import build_model, make_train_step
    from trainer_module.training import build_optimizer

    keras.utils.set_random_seed(0)
    hp = dict(DEFAULTS, **dict(TINY, image_size=64), optimizer="adam", learning_rate=1e-3,
              lr_schedule="step", decay_at=[], warmup_steps=0)  # a constant learning rate
    model = build_model(hp, 2)
    step = make_train_step(model, build_optimizer(hp, 100, "float32"), hp)
    batch = learnable_batch(64)
    losses = [float(step(batch)) for _ in range(30)]
    assert all(np.isfinite(losses)) and losses[-1] < 0.5 * losses[0], losses


def _weights(model):
    return [w.numpy().copy() for w in model.trainable_weights]


def test_bench_step_is_the_training_step(monkeypatch):
    """The bench builds its step with semantic.model.make_train_step; one call is one full training
    step: the optimizer counts it and every trainable weight that gets a gradient moves."""
    from trainer_module.bench import build_train_step, time_steps
    from trainer_module.semantic import bench_step
    from trainer_module.semantic import model as semantic_model

    built = []

    def recording(*args, **kwargs):
        built.append(args)
        return semantic_model.make_train_step(*args, **kwargs)

    monkeypatch.setattr(bench_step, "make_train_step", recording)
    step = build_train_step("deeplabv3plus_mobilenetv2", 64, 2)
    assert len(built) == 1 and built[0][0] is step.model and built[0][1] is step.optimizer
    before = _weights(step.model)
    loss = step()
    assert np.isfinite(loss) and int(step.optimizer.iterations.numpy()) == 1
    moved = [not np.array_equal(a, b.numpy()) for a, b in zip(before, step.model.trainable_weights)]
    assert all(moved), [w.name for w, m in zip(step.model.trainable_weights, moved) if not m]
    assert step.model.get_layer("aspp_0_conv").filters == 256  # the paper-size model
    steps, elapsed = time_steps(step, seconds=0.5, warmup_steps=1)
    assert steps >= 1 and elapsed >= 0.5 and int(step.optimizer.iterations.numpy()) == 2 + steps
    with pytest.raises(InputError):
        build_train_step("deeplabv3plus_vgg", 64, 2)
