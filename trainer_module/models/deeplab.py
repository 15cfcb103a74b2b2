"""DeepLab v3+ (Chen et al. 2018) as tf_keras layers.

backbone (atrous, output stride 16 or 8)
  -> ASPP: 1x1 conv, three 3x3 atrous convs (rates 6/12/18 at OS 16, doubled at OS 8), image pooling;
     each `aspp_filters` (256) channels, concatenated and projected by a 1x1 conv
  -> decoder: bilinear upsampling to the stride-4 low-level features (reduced to 48 channels by a
     1x1 conv), concatenation, two 3x3 convs of `decoder_filters` (256), 1x1 classifier
  -> bilinear upsampling of the logits to the input size.

All tensors are NHWC (channels-last); BatchNormalization is Keras' fused kernel. `separable=True`
swaps the ASPP/decoder 3x3 convs for depthwise-separable ones (faster; the trainer's default, see
semantic/hparams.py; `segpipe bench train` times the full convs of the paper's MobileNetV2 model).
"""
from __future__ import annotations

import tensorflow as tf
import tf_keras as keras
from tensorflow.python.ops import gen_image_ops

from components.contract import image_hw
from components.errors import InputError
from trainer_module.models.backbones import BN_EPSILON, BN_MOMENTUM, build_backbone

layers = keras.layers


def resize_bilinear_per_image_gradient(x, size):
    """`tf.image.resize(x, size, "bilinear")` whose gradient is one ResizeBilinearGrad per image
    instead of one for the batch (the same values). That CPU kernel runs on one thread; split, the
    executor runs the pieces side by side: the logits' gradient (4x512x512x21) took 31 ms of wall
    time on 2 cores in one piece, about half that split. Needs a static batch size (training
    batches have one)."""

    @tf.custom_gradient
    def resize(images):
        def grad(dy):
            n = images.shape[0]
            return tf.concat([gen_image_ops.resize_bilinear_grad(g, image, align_corners=False,
                                                                 half_pixel_centers=True)
                              for g, image in zip(tf.split(dy, n), tf.split(images, n))], axis=0)

        return tf.image.resize(images, size, method="bilinear"), grad

    return resize(x)


def resize_bilinear(x, size, training=None):
    """`tf.image.resize(x, size, "bilinear")` in x's dtype (x itself when it has that size); in
    training, with a static batch of more than one image, with the per-image gradient above."""
    if tuple(x.shape[1:3]) == tuple(size):
        return x
    if training and x.shape[0] is not None and x.shape[0] > 1:
        return tf.cast(resize_bilinear_per_image_gradient(x, size), x.dtype)
    return tf.cast(tf.image.resize(x, size, method="bilinear"), x.dtype)


class ResizeLike(layers.Layer):
    """Bilinear resize of the first input to the spatial size of the second (static shapes); in
    training, with the per-image gradient (resize_bilinear)."""

    def call(self, inputs, training=None):
        x, like = inputs
        return resize_bilinear(x, like.shape[1:3], training)


class ImagePooling(layers.Layer):
    """ASPP image-level branch: global average pooling, 1x1 conv+BN+ReLU, broadcast back."""

    def __init__(self, filters, bn_momentum, **kwargs):
        super().__init__(**kwargs)
        self.conv = layers.Conv2D(filters, 1, use_bias=False, name="conv")
        self.bn = layers.BatchNormalization(epsilon=BN_EPSILON, momentum=bn_momentum, name="bn")

    def call(self, x, training=None):
        y = tf.reduce_mean(x, axis=[1, 2], keepdims=True)
        y = tf.nn.relu(self.bn(self.conv(y), training=training))
        return tf.broadcast_to(y, tf.concat([tf.shape(x)[:3], tf.shape(y)[3:]], axis=0))


def _conv_bn_relu(x, filters, kernel, rate, name, bn_momentum, separable=False):
    if separable and kernel > 1:
        x = layers.DepthwiseConv2D(kernel, dilation_rate=rate, padding="same", use_bias=False,
                                   name=name + "_depthwise")(x)
        x = layers.BatchNormalization(epsilon=BN_EPSILON, momentum=bn_momentum, name=name + "_depthwise_bn")(x)
        x = layers.ReLU(name=name + "_depthwise_relu")(x)
        kernel, rate = 1, 1
    x = layers.Conv2D(filters, kernel, dilation_rate=rate, padding="same", use_bias=False,
                      name=name + "_conv")(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, momentum=bn_momentum, name=name + "_bn")(x)
    return layers.ReLU(name=name + "_relu")(x)


def deeplab_v3_plus(num_classes: int, image_size, backbone: str = "mobilenetv2",
                    output_stride: int = 16, width_multiplier: float = 1.0,
                    aspp_filters: int = 256, decoder_filters: int = 256, low_level_filters: int = 48,
                    dropout: float = 0.1, separable: bool = False,
                    bn_momentum: float = BN_MOMENTUM) -> tuple[keras.Model, keras.Model]:
    """Returns (model, backbone). model: float image [B, H, W, 3] (normalised; image_size is S for
    S x S or [H, W]) -> float32 logits [B, H, W, num_classes]. The backbone is returned so pretrained
    weights can be loaded into it."""
    if output_stride not in (8, 16):
        raise InputError(f"DeepLab v3+ output_stride must be 8 or 16, got {output_stride}")
    if num_classes < 2:
        raise InputError(f"num_classes must be >= 2 (background + classes), got {num_classes}")
    rates = [6, 12, 18] if output_stride == 16 else [12, 24, 36]
    height, width = image_hw(image_size)
    inputs = keras.Input(shape=(height, width, 3), name="image")
    net = build_backbone(backbone, (height, width, 3), output_stride, width_multiplier, bn_momentum)
    features = net(inputs)
    high, low = features["high_level"], features["low_level"]

    def conv_bn_relu(y, filters, kernel, rate, name, separable=False):
        return _conv_bn_relu(y, filters, kernel, rate, name, bn_momentum, separable)

    branches = [conv_bn_relu(high, aspp_filters, 1, 1, "aspp_0")]
    for i, rate in enumerate(rates, start=1):
        branches.append(conv_bn_relu(high, aspp_filters, 3, rate, f"aspp_{i}", separable))
    branches.append(ImagePooling(aspp_filters, bn_momentum, name="aspp_pool")(high))
    x = layers.Concatenate(name="aspp_concat")(branches)
    x = conv_bn_relu(x, aspp_filters, 1, 1, "aspp_project")
    if dropout:
        x = layers.Dropout(dropout, name="aspp_dropout")(x)

    low = conv_bn_relu(low, low_level_filters, 1, 1, "decoder_low_level")
    x = ResizeLike(name="decoder_upsample")([x, low])
    x = layers.Concatenate(name="decoder_concat")([x, low])
    x = conv_bn_relu(x, decoder_filters, 3, 1, "decoder_conv1", separable)
    x = conv_bn_relu(x, decoder_filters, 3, 1, "decoder_conv2", separable)
    x = layers.Conv2D(num_classes, 1, name="classifier")(x)
    # Upsampled in float32 whatever the mixed-precision policy: float32 logits for a stable softmax, and
    # no costlier than resizing in bfloat16 and casting back and forth.
    logits = ResizeLike(name="logits", dtype="float32")([x, inputs])
    return keras.Model(inputs, logits, name=f"deeplabv3plus_{backbone}"), net
