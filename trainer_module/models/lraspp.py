"""LR-ASPP, the Lite Reduced Atrous Spatial Pyramid Pooling head of MobileNetV3 (Howard et al. 2019).

MobileNetV3 backbone (last stage dilated: output stride 16)
  -> high-level branch: 1x1 conv (`head_filters`, 128) + BN + ReLU on the OS-16 features, gated by
     an image-level branch (global average pooling, 1x1 conv, sigmoid) multiplied in channel-wise;
     dropout; 1x1 classifier
  -> low-level branch: 1x1 classifier on the stride-8 features
  -> the high-level logits upsampled bilinearly to stride 8 and summed with the low-level logits
  -> bilinear upsampling of the logits to the input size.

The paper upsamples the 128-channel features before their classifier; a 1x1 conv (bias included)
commutes with bilinear resizing (whose weights sum to 1), so classifying first gives the same
logits while resizing and classifying num_classes instead of 128 channels.

Every op has an int8 TFLite builtin kernel (MEAN, CONV_2D, LOGISTIC, MUL, RESIZE_BILINEAR, ADD, and
the backbone's; see trainer_module.models.mobilenet_v3), so the model quantises fully to int8.
"""
from __future__ import annotations

import tf_keras as keras

from components.contract import image_hw
from components.errors import InputError
from trainer_module.models.backbones import BN_EPSILON, BN_MOMENTUM
from trainer_module.models.deeplab import ResizeLike
from trainer_module.models.mobilenet_v3 import VARIANTS, mobilenet_v3

layers = keras.layers

BACKBONES = tuple(VARIANTS)


def lraspp(num_classes: int, image_size, backbone: str = "mobilenetv3_large", output_stride: int = 16,
           width_multiplier: float = 1.0, head_filters: int = 128, dropout: float = 0.0,
           bn_momentum: float = BN_MOMENTUM) -> tuple[keras.Model, keras.Model]:
    """Returns (model, backbone), like deeplab_v3_plus. model: float image [B, H, W, 3] (normalised;
    image_size is S for S x S or [H, W]) -> float32 logits [B, H, W, num_classes]. The backbone is
    returned so pretrained weights can be loaded into it."""
    if backbone not in BACKBONES:
        raise InputError(f"LR-ASPP backbone must be one of {', '.join(BACKBONES)}, got {backbone!r}")
    if output_stride not in (8, 16):
        raise InputError(f"LR-ASPP output_stride must be 8 or 16, got {output_stride}")
    if num_classes < 2:
        raise InputError(f"num_classes must be >= 2 (background + classes), got {num_classes}")
    if head_filters < 1:
        raise InputError(f"LR-ASPP head_filters must be >= 1, got {head_filters}")
    height, width = image_hw(image_size)
    inputs = keras.Input(shape=(height, width, 3), name="image")
    net = mobilenet_v3(backbone, (height, width, 3), output_stride, width_multiplier, bn_momentum)
    features = net(inputs)
    high, low = features["high_level"], features["low_level"]

    x = layers.Conv2D(head_filters, 1, use_bias=False, name="lraspp_conv")(high)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, momentum=bn_momentum, name="lraspp_bn")(x)
    x = layers.ReLU(name="lraspp_relu")(x)
    gate = layers.GlobalAveragePooling2D(keepdims=True, name="lraspp_pool")(high)
    gate = layers.Conv2D(head_filters, 1, name="lraspp_gate_conv")(gate)
    gate = layers.Activation("sigmoid", name="lraspp_gate_sigmoid")(gate)
    x = layers.Multiply(name="lraspp_gated")([x, gate])
    if dropout:
        x = layers.Dropout(dropout, name="lraspp_dropout")(x)
    x = layers.Conv2D(num_classes, 1, name="high_level_classifier")(x)
    x = ResizeLike(name="lraspp_upsample")([x, low])
    low_logits = layers.Conv2D(num_classes, 1, name="low_level_classifier")(low)
    x = layers.Add(name="lraspp_sum")([x, low_logits])
    # Upsampled in float32 whatever the mixed-precision policy: float32 logits for a stable softmax, and
    # no costlier than resizing in bfloat16 and casting back and forth.
    logits = ResizeLike(name="logits", dtype="float32")([x, inputs])
    return keras.Model(inputs, logits, name=f"lraspp_{backbone}"), net
