"""Pretrained backbones: a weights file saved from the matching tf_keras.applications no-top model
loads into every backbone of every model, and gives the same features; a wrong file is one clear
error before any training."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
from conftest import keras_weight_files

from components.errors import InputError
from trainer_module.models import backbones as deeplab_backbones
from trainer_module.models.mask_rcnn import backbones as mask_rcnn_backbones

SIZE = 64
KERAS_MODELS = {
    "mobilenetv2": lambda: keras.applications.MobileNetV2(input_shape=(SIZE, SIZE, 3), include_top=False,
                                                          weights=None),
    "resnet50": lambda: keras.applications.ResNet50(input_shape=(SIZE, SIZE, 3), include_top=False,
                                                    weights=None),
}
# Keras layer whose output is the DeepLab backbone's output-stride-32 feature map, and the stride-4 one.
DEEPLAB_ENDPOINTS = {"mobilenetv2": ("block_16_project_BN", "block_2_add"),
                     "resnet50": ("conv5_block3_out", "conv2_block3_out")}


@pytest.fixture(scope="module")
def keras_files(tmp_path_factory):
    """name -> (weights file of a randomly weighted tf_keras.applications model, that model)."""
    return keras_weight_files(tmp_path_factory.mktemp("weights"), KERAS_MODELS)


def _images(seed: int = 7):
    return tf.constant(np.random.default_rng(seed).normal(size=(2, SIZE, SIZE, 3)).astype(np.float32))


@pytest.mark.parametrize("name", ["mobilenetv2", "resnet50"])
def test_deeplab_backbone_loads_keras_file_and_gives_its_features(keras_files, name):
    path, reference = keras_files[name]
    ours = deeplab_backbones.build_backbone(name, (SIZE, SIZE, 3), 32)
    deeplab_backbones.load_backbone_weights(ours, path)
    high_name, low_name = DEEPLAB_ENDPOINTS[name]
    theirs = keras.Model(reference.input, [reference.get_layer(high_name).output,
                                           reference.get_layer(low_name).output])
    images = _images()
    want_high, want_low = (t.numpy() for t in theirs(images, training=False))
    got = ours(images, training=False)
    assert np.abs(want_high).max() > 0  # the comparison is not between two zero maps
    np.testing.assert_allclose(got["high_level"].numpy(), want_high, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got["low_level"].numpy(), want_low, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["mobilenetv2", "resnet50"])
@pytest.mark.parametrize("output_stride", [8, 16])
def test_dilated_deeplab_backbones_load_the_same_file(keras_files, name, output_stride):
    path, reference = keras_files[name]
    ours = deeplab_backbones.build_backbone(name, (SIZE, SIZE, 3), output_stride)
    deeplab_backbones.load_backbone_weights(ours, path)
    layer = DEEPLAB_ENDPOINTS[name][0].replace("_BN", "").replace("_out", "_3_conv")
    for mine, theirs in zip(ours.get_layer(layer).weights, reference.get_layer(layer).weights):
        np.testing.assert_array_equal(mine.numpy(), theirs.numpy())


@pytest.mark.parametrize("name", ["mobilenetv2", "resnet50"])
def test_mask_rcnn_backbone_loads_keras_file_and_gives_its_features(keras_files, name):
    path, reference = keras_files[name]
    ours = mask_rcnn_backbones.build_backbone(name, (SIZE, SIZE), weights_path=path)
    endpoints = [reference.get_layer(n).output for n in mask_rcnn_backbones._FEATURE_LAYERS[name]]
    theirs = keras.Model(reference.input, endpoints)
    images = _images()
    for got, want in zip(ours(images, training=False), theirs(images, training=False)):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-4)


def test_a_file_of_another_architecture_is_one_clear_error(keras_files):
    resnet_file, _ = keras_files["resnet50"]
    mobilenet = deeplab_backbones.build_backbone("mobilenetv2", (SIZE, SIZE, 3), 16)
    with pytest.raises(InputError, match=r"resnet50_notop\.h5: not a mobilenetv2 weights file") as err:
        deeplab_backbones.load_backbone_weights(mobilenet, resnet_file)
    assert "\n" not in str(err.value)
    with pytest.raises(InputError, match="resnet50_notop.h5"):
        mask_rcnn_backbones.build_backbone("mobilenetv2", (SIZE, SIZE), weights_path=resnet_file)


def test_a_file_of_another_width_is_one_clear_error(keras_files):
    mobilenet_file, _ = keras_files["mobilenetv2"]
    narrow = deeplab_backbones.build_backbone("mobilenetv2", (SIZE, SIZE, 3), 16, width_multiplier=0.5)
    with pytest.raises(InputError, match=r"mobilenetv2_notop\.h5: does not fit the mobilenetv2 backbone") as err:
        deeplab_backbones.load_backbone_weights(narrow, mobilenet_file)
    assert "\n" not in str(err.value)


def test_missing_and_truncated_files_are_one_clear_error(keras_files, tmp_path):
    path, _ = keras_files["mobilenetv2"]
    backbone = deeplab_backbones.build_backbone("mobilenetv2", (SIZE, SIZE, 3), 16)
    with pytest.raises(InputError, match="no such file"):
        deeplab_backbones.load_backbone_weights(backbone, str(tmp_path / "missing.h5"))
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(open(path, "rb").read()[:4096])
    with pytest.raises(InputError, match=r"truncated\.h5: not a readable Keras HDF5 weights file") as err:
        deeplab_backbones.load_backbone_weights(backbone, str(truncated))
    assert "\n" not in str(err.value)
    with pytest.raises(InputError, match="no such file"):
        deeplab_backbones.load_backbone_weights(backbone, str(tmp_path / "no_checkpoint"))


def test_trainer_models_load_the_file_given_in_the_hyper_parameters(keras_files):
    """`trainer.backbone_weights` reaches the backbone of both tasks' models."""
    from trainer_module.instance import hparams as instance_hparams
    from trainer_module.instance.model import build_model as build_instance_model
    from trainer_module.semantic import hparams as semantic_hparams
    from trainer_module.semantic.model import build_model as build_semantic_model

    path, reference = keras_files["mobilenetv2"]
    want = reference.get_layer("block_5_expand").kernel.numpy()
    hp = semantic_hparams.hparams_from_config({"image_size": SIZE, "width_multiplier": 1.0,
                                               "backbone_weights": path})
    semantic = build_semantic_model(hp, 3)
    np.testing.assert_array_equal(semantic.get_layer("mobilenetv2").get_layer("block_5_expand").kernel.numpy(),
                                  want)
    hp = instance_hparams.hparams_from_config({"image_size": SIZE, "backbone_weights": path})
    instance = build_instance_model(hp, 2)
    np.testing.assert_array_equal(instance.backbone.get_layer("block_5_expand").kernel.numpy(), want)
