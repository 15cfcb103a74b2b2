"""MobileNetV3-Large and -Small (Howard et al. 2019) as segmentation feature extractors.

Built layer for layer like `tf_keras.applications.MobileNetV3Large/Small(include_top=False,
include_preprocessing=False, minimalistic=False, alpha=width_multiplier)`: same layer names, same
weight shapes, so a weights file saved from those models loads by name (`load_backbone_weights` in
trainer_module.models.backbones). The input is an already normalised image (no Rescaling layer).

The model maps an image batch (NHWC, float) to
`{"low_level": the last stride-8 block's output, "high_level": the last feature map}` (after the
final 1x1 conv `Conv_1` + hard-swish). Once `output_stride` is reached, later stages keep stride 1
and dilate their depthwise convolutions instead (the same `_StrideTracker` as MobileNetV2: the block
that loses its stride keeps rate 1, the blocks after it use rate 2, as in tf-slim / Model Garden's
MobileNet), so at the default output stride 16 the stride-32 stage runs dilated at stride 16, the
paper's segmentation setup. At output stride 32 the network is exactly the Keras one.

Quantisation-friendly: hard-swish is x * (relu6(x + 3) / 6) and hard-sigmoid relu6(x + 3) / 6 (the
patterns the TFLite converter maps to HARD_SWISH / int8 builtins), squeeze-excite is global average
pooling, two 1x1 convs and a multiply: every op has an int8 TFLite builtin kernel.
"""
from __future__ import annotations

import tensorflow as tf
import tf_keras as keras

from components.errors import InputError
from trainer_module.models.backbones import BN_EPSILON, BN_MOMENTUM, _make_divisible, _StrideTracker

layers = keras.layers

SE_RATIO = 0.25

# One row per inverted-residual block, in tf_keras.applications order (block_id = row index):
# (expansion, output channels before width scaling, depthwise kernel, stride, squeeze-excite, activation)
_LARGE = [
    (1, 16, 3, 1, False, "relu"),
    (4, 24, 3, 2, False, "relu"),
    (3, 24, 3, 1, False, "relu"),
    (3, 40, 5, 2, True, "relu"),
    (3, 40, 5, 1, True, "relu"),
    (3, 40, 5, 1, True, "relu"),
    (6, 80, 3, 2, False, "hard_swish"),
    (2.5, 80, 3, 1, False, "hard_swish"),
    (2.3, 80, 3, 1, False, "hard_swish"),
    (2.3, 80, 3, 1, False, "hard_swish"),
    (6, 112, 3, 1, True, "hard_swish"),
    (6, 112, 3, 1, True, "hard_swish"),
    (6, 160, 5, 2, True, "hard_swish"),
    (6, 160, 5, 1, True, "hard_swish"),
    (6, 160, 5, 1, True, "hard_swish"),
]
_SMALL = [
    (1, 16, 3, 2, True, "relu"),
    (72.0 / 16, 24, 3, 2, False, "relu"),
    (88.0 / 24, 24, 3, 1, False, "relu"),
    (4, 40, 5, 2, True, "hard_swish"),
    (6, 40, 5, 1, True, "hard_swish"),
    (6, 40, 5, 1, True, "hard_swish"),
    (3, 48, 5, 1, True, "hard_swish"),
    (3, 48, 5, 1, True, "hard_swish"),
    (6, 96, 5, 2, True, "hard_swish"),
    (6, 96, 5, 1, True, "hard_swish"),
    (6, 96, 5, 1, True, "hard_swish"),
]
VARIANTS = {"mobilenetv3_large": _LARGE, "mobilenetv3_small": _SMALL}


class HardSigmoid(layers.Layer):
    """relu6(x + 3) / 6, written as tf_keras.applications writes it (TFLite: int8 builtins)."""

    def call(self, x):
        return tf.nn.relu6(x + 3.0) * (1.0 / 6.0)


class HardSwish(layers.Layer):
    """x * relu6(x + 3) / 6: the pattern the TFLite converter fuses into its HARD_SWISH builtin."""

    def call(self, x):
        return x * (tf.nn.relu6(x + 3.0) * (1.0 / 6.0))


def _activation(x, kind: str, name: str):
    if kind == "relu":
        return layers.ReLU(name=name + "relu")(x)
    return HardSwish(name=name + "hard_swish")(x)


def _squeeze_excite(x, filters: int, prefix: str):
    inputs = x
    x = layers.GlobalAveragePooling2D(keepdims=True, name=prefix + "squeeze_excite/AvgPool")(x)
    x = layers.Conv2D(_make_divisible(filters * SE_RATIO), 1, padding="same",
                      name=prefix + "squeeze_excite/Conv")(x)
    x = layers.ReLU(name=prefix + "squeeze_excite/Relu")(x)
    x = layers.Conv2D(filters, 1, padding="same", name=prefix + "squeeze_excite/Conv_1")(x)
    x = HardSigmoid(name=prefix + "squeeze_excite/HardSigmoid")(x)
    return layers.Multiply(name=prefix + "squeeze_excite/Mul")([inputs, x])


def _bn(x, name, bn_momentum):
    return layers.BatchNormalization(epsilon=BN_EPSILON, momentum=bn_momentum, name=name)(x)


def _correct_pad(size, kernel: int):
    """tf_keras.applications' explicit padding before a stride-2 valid conv (imagenet_utils.correct_pad):
    one less row/column before than after on an even size (or an unknown one)."""
    pad = kernel // 2
    return tuple((pad - (1 - n % 2 if n is not None else 1), pad) for n in size)


def _inverted_residual(x, expansion, filters, kernel, stride, rate, se, activation, block_id, bn_momentum):
    in_channels = x.shape[-1]
    prefix = f"expanded_conv_{block_id}/" if block_id else "expanded_conv/"
    inputs = x
    expanded = _make_divisible(in_channels * expansion)
    if block_id:
        x = layers.Conv2D(expanded, 1, padding="same", use_bias=False, name=prefix + "expand")(x)
        x = _bn(x, prefix + "expand/BatchNorm", bn_momentum)
        x = _activation(x, activation, prefix + "expand/")
    if stride == 2:
        x = layers.ZeroPadding2D(padding=_correct_pad(x.shape[1:3], kernel), name=prefix + "depthwise/pad")(x)
    x = layers.DepthwiseConv2D(kernel, strides=stride, dilation_rate=rate, use_bias=False,
                               padding="valid" if stride == 2 else "same", name=prefix + "depthwise")(x)
    x = _bn(x, prefix + "depthwise/BatchNorm", bn_momentum)
    x = _activation(x, activation, prefix + "depthwise/")
    if se:
        x = _squeeze_excite(x, expanded, prefix)
    x = layers.Conv2D(filters, 1, padding="same", use_bias=False, name=prefix + "project")(x)
    x = _bn(x, prefix + "project/BatchNorm", bn_momentum)
    if stride == 1 and in_channels == filters:
        x = layers.Add(name=prefix + "Add")([inputs, x])
    return x


def mobilenet_v3(variant: str, input_shape, output_stride: int = 16, width_multiplier: float = 1.0,
                 bn_momentum: float = BN_MOMENTUM) -> keras.Model:
    """MobileNetV3 `variant` ("mobilenetv3_large" | "mobilenetv3_small") without its classification
    top: -> {"low_level": stride 8, "high_level": stride `output_stride` after Conv_1 + hard-swish}."""
    if variant not in VARIANTS:
        raise InputError(f"unknown MobileNetV3 variant {variant!r}: use {' or '.join(map(repr, VARIANTS))}")
    if width_multiplier <= 0:
        raise InputError(f"width_multiplier must be > 0, got {width_multiplier}")
    tracker = _StrideTracker(output_stride)
    inputs = keras.Input(shape=input_shape, name="image")
    stride, _ = tracker.next(2)
    x = layers.Conv2D(16, 3, strides=stride, padding="same", use_bias=False, name="Conv")(inputs)
    x = _bn(x, "Conv/BatchNorm", bn_momentum)
    x = HardSwish(name="Conv/hard_swish")(x)
    low_level = None
    for block_id, (expansion, channels, kernel, block_stride, se, activation) in enumerate(VARIANTS[variant]):
        if block_stride == 2 and low_level is None and tracker.current_stride * tracker.rate == 8:
            low_level = x  # the last block output at stride 8, before the stride-16 stage
        stride, rate = tracker.next(block_stride)
        x = _inverted_residual(x, expansion, _make_divisible(channels * width_multiplier), kernel, stride, rate,
                               se, activation, block_id, bn_momentum)
    x = layers.Conv2D(_make_divisible(x.shape[-1] * 6), 1, padding="same", use_bias=False, name="Conv_1")(x)
    x = _bn(x, "Conv_1/BatchNorm", bn_momentum)
    x = HardSwish(name="Conv_1/hard_swish")(x)
    return keras.Model(inputs, {"low_level": low_level, "high_level": x}, name=variant)
