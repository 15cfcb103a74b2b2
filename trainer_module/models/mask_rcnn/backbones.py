"""Backbones returning the C2..C5 feature maps (strides 4, 8, 16, 32) as a tf_keras Model."""
from __future__ import annotations

import tf_keras as keras

from components.errors import InputError
from trainer_module.models.backbones import load_backbone_weights

_FEATURE_LAYERS = {
    "resnet50": ("conv2_block3_out", "conv3_block4_out", "conv4_block6_out", "conv5_block3_out"),
    "mobilenetv2": ("block_2_add", "block_5_add", "block_12_add", "out_relu"),
}
BACKBONES = tuple(_FEATURE_LAYERS)


def build_backbone(name: str, image_size: tuple[int, int], weights_path: str | None = None,
                   bn_momentum: float | None = None) -> keras.Model:
    """Keras Applications network without its top, randomly initialised unless `weights_path`
    (a weights file of the same no-top architecture, see `load_backbone_weights`) is given;
    nothing is downloaded.
    bn_momentum overrides the moving-statistics momentum of every BatchNormalization layer
    (MobileNetV2 ships 0.999, too slow for short runs: inference would use stale statistics)."""
    if name not in _FEATURE_LAYERS:
        raise InputError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    shape = (image_size[0], image_size[1], 3)
    if name == "resnet50":
        net = keras.applications.ResNet50(include_top=False, weights=None, input_shape=shape)
    else:
        net = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=shape)
    if weights_path:
        load_backbone_weights(net, weights_path)
    if bn_momentum is not None:
        for layer in net.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = float(bn_momentum)
    outputs = [net.get_layer(n).output for n in _FEATURE_LAYERS[name]]
    return keras.Model(net.input, outputs, name=f"{name}_c2_c5")
