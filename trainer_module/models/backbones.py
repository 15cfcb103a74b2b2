"""Backbones for DeepLab v3+ with output-stride control (atrous convolution).

Both backbones return a Keras model mapping an image batch (NHWC, float, already normalised) to
`{"low_level": stride-4 features, "high_level": stride-`output_stride` features}`. Once the wanted
output stride is reached, later stages keep stride 1 and dilate their convolutions instead
(DeepLab's atrous trick), so the feature map keeps its resolution.

Layer names follow `tf_keras.applications` (MobileNetV2, ResNet50), so a weights file saved from those
models (HDF5) loads by name: see `load_backbone_weights`. Nothing is ever downloaded.
"""
from __future__ import annotations

import os

import tf_keras as keras

from components.errors import InputError

layers = keras.layers
BN_MOMENTUM = 0.99  # default; short runs want faster-moving statistics (bn_momentum argument)
BN_EPSILON = 1e-3


class _StrideTracker:
    """Turns requested strides into dilation once the output stride is reached."""

    def __init__(self, output_stride: int):
        if output_stride not in (8, 16, 32):
            raise InputError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        self.output_stride = output_stride
        self.current_stride = 1
        self.rate = 1

    def next(self, stride: int) -> tuple[int, int]:
        """(stride, dilation rate) to use for a layer that asks for `stride`."""
        if stride > 1 and self.current_stride * stride > self.output_stride:
            # Past the target resolution: keep the resolution, widen the receptive field instead.
            rate = self.rate
            self.rate *= stride
            return 1, rate
        self.current_stride *= stride
        return stride, self.rate


def _make_divisible(value: float, divisor: int = 8) -> int:
    new_value = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new_value < 0.9 * value:
        new_value += divisor
    return new_value


def _inverted_residual(x, expansion, filters, stride, rate, block_id, bn_momentum):
    in_channels = x.shape[-1]
    prefix = f"block_{block_id}_" if block_id else "expanded_conv_"
    inputs = x
    if block_id:
        x = layers.Conv2D(expansion * in_channels, 1, padding="same", use_bias=False,
                          name=prefix + "expand")(x)
        x = layers.BatchNormalization(epsilon=BN_EPSILON, momentum=bn_momentum, name=prefix + "expand_BN")(x)
        x = layers.ReLU(6.0, name=prefix + "expand_relu")(x)
    if stride == 2:
        # Same padding scheme as tf_keras.applications: explicit pad + valid conv.
        x = layers.ZeroPadding2D(padding=((0, 1), (0, 1)), name=prefix + "pad")(x)
    x = layers.DepthwiseConv2D(3, strides=stride, dilation_rate=rate, use_bias=False,
                               padding="valid" if stride == 2 else "same", name=prefix + "depthwise")(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, momentum=bn_momentum, name=prefix + "depthwise_BN")(x)
    x = layers.ReLU(6.0, name=prefix + "depthwise_relu")(x)
    x = layers.Conv2D(filters, 1, padding="same", use_bias=False,
                      name=prefix + "project")(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, momentum=bn_momentum, name=prefix + "project_BN")(x)
    if in_channels == filters and stride == 1:
        x = layers.Add(name=prefix + "add")([inputs, x])
    return x


# (expansion, output channels, repeats, first stride) of MobileNetV2's bottleneck stages.
_MOBILENET_V2_STAGES = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                        (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


def mobilenet_v2(input_shape, output_stride: int = 16, width_multiplier: float = 1.0,
                 bn_momentum: float = BN_MOMENTUM) -> keras.Model:
    """MobileNetV2 (without its final 1280-channel conv) as a DeepLab feature extractor."""
    tracker = _StrideTracker(output_stride)
    inputs = keras.Input(shape=input_shape, name="image")
    stride, _ = tracker.next(2)
    x = layers.Conv2D(_make_divisible(32 * width_multiplier), 3, strides=stride, padding="same",
                      use_bias=False, name="Conv1")(inputs)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, momentum=bn_momentum, name="bn_Conv1")(x)
    x = layers.ReLU(6.0, name="Conv1_relu")(x)
    block_id = 0
    low_level = None
    for expansion, channels, repeats, first_stride in _MOBILENET_V2_STAGES:
        filters = _make_divisible(channels * width_multiplier)
        for i in range(repeats):
            stride, rate = tracker.next(first_stride if i == 0 else 1)
            x = _inverted_residual(x, expansion, filters, stride, rate, block_id, bn_momentum)
            block_id += 1
        if tracker.current_stride == 4 and low_level is None and channels == 24:
            low_level = x  # last stride-4 feature map (24 channels at width 1.0)
    return keras.Model(inputs, {"low_level": low_level, "high_level": x}, name="mobilenetv2")


def _bottleneck(x, filters, stride, rate, name, conv_shortcut, bn_momentum):
    def conv_bn(y, f, k, s, r, suffix, relu=True):
        y = layers.Conv2D(f, k, strides=s, dilation_rate=r, padding="same",
                          name=f"{name}_{suffix}_conv")(y)
        y = layers.BatchNormalization(epsilon=1.001e-5, momentum=bn_momentum, name=f"{name}_{suffix}_bn")(y)
        return layers.Activation("relu", name=f"{name}_{suffix}_relu")(y) if relu else y

    shortcut = conv_bn(x, 4 * filters, 1, stride, 1, "0", relu=False) if conv_shortcut else x
    y = conv_bn(x, filters, 1, stride, 1, "1")
    y = conv_bn(y, filters, 3, 1, rate, "2")
    y = conv_bn(y, 4 * filters, 1, 1, 1, "3", relu=False)
    y = layers.Add(name=f"{name}_add")([shortcut, y])
    return layers.Activation("relu", name=f"{name}_out")(y)


def resnet50(input_shape, output_stride: int = 16, bn_momentum: float = BN_MOMENTUM) -> keras.Model:
    """ResNet-50 v1 exactly as tf_keras.applications builds it (convolutions with biases, the stride
    in a block's first 1x1 conv, explicitly padded stem), so its ImageNet weights load by name."""
    tracker = _StrideTracker(output_stride)
    inputs = keras.Input(shape=input_shape, name="image")
    stride, _ = tracker.next(2)
    x = layers.ZeroPadding2D(3, name="conv1_pad")(inputs)
    x = layers.Conv2D(64, 7, strides=stride, name="conv1_conv")(x)
    x = layers.BatchNormalization(epsilon=1.001e-5, momentum=bn_momentum, name="conv1_bn")(x)
    x = layers.Activation("relu", name="conv1_relu")(x)
    stride, _ = tracker.next(2)
    x = layers.ZeroPadding2D(1, name="pool1_pad")(x)
    x = layers.MaxPooling2D(3, strides=stride, name="pool1_pool")(x)
    low_level = None
    for stage, (filters, blocks, first_stride) in enumerate(
            [(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)], start=2):
        for block in range(blocks):
            stride, rate = tracker.next(first_stride if block == 0 else 1)
            if block == 0 and stride == 1 and first_stride == 2:
                rate = tracker.rate  # the dilated stage uses its new rate from its first block on
            x = _bottleneck(x, filters, stride, rate, f"conv{stage}_block{block + 1}",
                            conv_shortcut=block == 0, bn_momentum=bn_momentum)
        if stage == 2:
            low_level = x
    return keras.Model(inputs, {"low_level": low_level, "high_level": x}, name="resnet50")


def build_backbone(name: str, input_shape, output_stride: int, width_multiplier: float = 1.0,
                   bn_momentum: float = BN_MOMENTUM) -> keras.Model:
    if name == "mobilenetv2":
        return mobilenet_v2(input_shape, output_stride, width_multiplier, bn_momentum)
    if name == "resnet50":
        if width_multiplier != 1.0:
            raise InputError("width_multiplier applies to mobilenetv2 only")
        return resnet50(input_shape, output_stride, bn_momentum)
    raise InputError(f"unknown backbone {name!r}: use 'mobilenetv2' or 'resnet50'")


def load_backbone_weights(backbone: keras.Model, path: str) -> None:
    """Loads user-given pretrained weights into `backbone`: an HDF5 file by layer name (e.g. one saved
    from a tf_keras.applications model built with include_top=False), otherwise a TF checkpoint of
    this same backbone. Every layer of `backbone` that has weights must be found in the file with
    the same shapes; anything else is an InputError naming the file and what did not match."""
    if not path.endswith(HDF5_SUFFIXES):
        _load_checkpoint(backbone, path)
        return
    if not os.path.isfile(path):
        raise InputError(f"backbone_weights: no such file {path!r}")
    missing = sorted(set(_weighted_layers(backbone)) - set(_hdf5_layer_names(path)))
    if missing:
        raise InputError(f"backbone_weights {path}: not a {backbone.name} weights file: "
                         f"{len(missing)} of its layers are missing, e.g. {missing[:3]}")
    try:
        backbone.load_weights(path, by_name=True, skip_mismatch=False)
    except ValueError as err:
        raise InputError(f"backbone_weights {path}: does not fit the {backbone.name} backbone: "
                         f"{_first_line(err)}") from None


HDF5_SUFFIXES = (".h5", ".hdf5")


def _weighted_layers(model: keras.Model) -> list[str]:
    return [layer.name for layer in model.layers if layer.weights]


def _hdf5_layer_names(path: str) -> list[str]:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            group = f["model_weights"] if "model_weights" in f else f
            return [n.decode() if isinstance(n, bytes) else str(n) for n in group.attrs["layer_names"]]
    except (OSError, KeyError) as err:
        raise InputError(f"backbone_weights {path}: not a readable Keras HDF5 weights file "
                         f"({_first_line(err)})") from None


def _load_checkpoint(backbone: keras.Model, path: str) -> None:
    import tensorflow as tf

    if not tf.io.gfile.exists(path + ".index"):
        raise InputError(f"backbone_weights: no such file {path!r} (an .h5 weights file or a TF "
                         f"checkpoint prefix)")
    try:
        backbone.load_weights(path).assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as err:
        raise InputError(f"backbone_weights {path}: not a checkpoint of the {backbone.name} backbone: "
                         f"{_first_line(err)}") from None


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
