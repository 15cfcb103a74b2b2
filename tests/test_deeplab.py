"""DeepLab v3+ model, backbones, distribution/precision choice, LR schedule and the bench step."""
from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

from components.errors import InputError  # noqa: E402
from trainer_module.models.backbones import build_backbone, load_backbone_weights  # noqa: E402
from trainer_module.models.deeplab import deeplab_v3_plus  # noqa: E402


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


def test_backbone_weights_load_from_keras_applications_file(tmp_path):
    """A tf_keras.applications MobileNetV2 weights file (include_top=False) loads by layer name."""
    reference = keras.applications.MobileNetV2(input_shape=(64, 64, 3), include_top=False, weights=None)
    rng = np.random.default_rng(0)
    reference.set_weights([rng.normal(size=w.shape).astype(np.float32) for w in reference.get_weights()])
    path = str(tmp_path / "mobilenet_v2.h5")
    reference.save_weights(path)
    model, backbone = deeplab_v3_plus(3, 64, backbone="mobilenetv2", output_stride=16)
    load_backbone_weights(backbone, path)
    for name in ("Conv1", "block_5_expand", "block_16_project", "block_16_depthwise_BN"):
        for mine, theirs in zip(backbone.get_layer(name).weights, reference.get_layer(name).weights):
            np.testing.assert_array_equal(mine.numpy(), theirs.numpy())
    with pytest.raises(InputError):
        load_backbone_weights(backbone, str(tmp_path / "missing.h5"))


def test_strategy_and_policy_on_cpu():
    from trainer_module.distribute import strategy_and_policy, use_jit

    strategy, policy = strategy_and_policy({})
    assert strategy.num_replicas_in_sync == 1 and policy == "float32"
    assert strategy_and_policy({"mixed_precision": "mixed_bfloat16"})[1] == "mixed_bfloat16"
    assert use_jit({}, strategy) is False and use_jit({"jit_compile": True}, strategy) is True
    with pytest.raises(InputError):
        strategy_and_policy({"mixed_precision": "fp8"})


def test_warmup_poly_schedule_and_optimizers():
    from trainer_module.training import WarmupPolyDecay, make_optimizer

    lr = WarmupPolyDecay(0.1, total_steps=110, warmup_steps=10, power=0.9)
    values = [float(lr(s)) for s in (0, 9, 10, 60, 110, 200)]
    assert values[0] == pytest.approx(0.01) and values[1] == pytest.approx(0.1)
    assert values[2] == pytest.approx(0.1) and values[3] == pytest.approx(0.1 * 0.5 ** 0.9, rel=1e-5)
    assert values[4] == pytest.approx(0.0) and values[5] == pytest.approx(0.0)
    hp = {"learning_rate": 0.1, "warmup_steps": 10, "momentum": 0.9}
    sgd = make_optimizer(dict(hp, optimizer="sgd"), 110, "float32")
    assert isinstance(sgd, keras.optimizers.SGD) and float(sgd.momentum) == pytest.approx(0.9)
    assert isinstance(make_optimizer(dict(hp, optimizer="adam"), 110, "float32"), keras.optimizers.Adam)
    assert isinstance(make_optimizer(dict(hp, optimizer="sgd"), 110, "mixed_float16"),
                      keras.mixed_precision.LossScaleOptimizer)
    with pytest.raises(InputError):
        make_optimizer(dict(hp, optimizer="lamb"), 110, "float32")


def test_segmentation_loss_ignores_255():
    from trainer_module.semantic.model import segmentation_loss

    logits = tf.constant([[[[5.0, 0.0], [0.0, 5.0], [5.0, 0.0]]]])  # [1, 1, 3, 2]
    ignored = segmentation_loss(tf.constant([[[0, 1, 255]]]), logits)
    correct = segmentation_loss(tf.constant([[[0, 1]]]), logits[:, :, :2])
    assert float(ignored) == pytest.approx(float(correct))
    wrong = segmentation_loss(tf.constant([[[0, 1, 1]]]), logits)
    assert float(wrong) > float(ignored)


def test_bench_step_trains_the_spec_model():
    """One bench step is a full training step: the loss on a fixed batch goes down over steps."""
    from trainer_module.bench import build_train_step, time_steps

    step = build_train_step("deeplabv3plus_mobilenetv2", 64, 2)
    losses = [step() for _ in range(6)]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    steps, elapsed = time_steps(step, seconds=0.5, warmup_steps=1)
    assert steps >= 1 and elapsed >= 0.5
    with pytest.raises(InputError):
        build_train_step("deeplabv3plus_vgg", 64, 2)
