"""LR-ASPP with MobileNetV3-Large/-Small: shapes and strides, tf_keras.applications weights files,
the semantic hyper-parameters that choose it, training, full-integer int8 TFLite conversion and the
bench step."""
from __future__ import annotations

import functools
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
from conftest import keras_weight_files, learnable_batch

from components.errors import InputError
from trainer_module import on_device
from trainer_module.models.backbones import load_backbone_weights
from trainer_module.models.lraspp import lraspp
from trainer_module.models.mobilenet_v3 import mobilenet_v3

SIZE = 64
WIDTH = 0.5
VARIANTS = ["mobilenetv3_large", "mobilenetv3_small"]
# The slowest checks run for Small only with `pytest -m slow` (CI time): the two variants share every layer type.
LARGE_THEN_SLOW_SMALL = ["mobilenetv3_large", pytest.param("mobilenetv3_small", marks=pytest.mark.slow)]
KERAS_MODELS = {"mobilenetv3_large": keras.applications.MobileNetV3Large,
                "mobilenetv3_small": keras.applications.MobileNetV3Small}
# Keras layer whose output is the backbone's stride-8 feature (the last stride-8 block's output).
LOW_LEVEL_LAYER = {"mobilenetv3_large": "expanded_conv_5/Add", "mobilenetv3_small": "expanded_conv_2/Add"}
# At width 0.5: (stride-8 channels, last feature channels).
CHANNELS = {"mobilenetv3_large": (24, 480), "mobilenetv3_small": (16, 288)}
# The blocks of the stride-32 stage, which runs dilated at output stride 16.
LAST_STAGE = {"mobilenetv3_large": (12, 13, 14), "mobilenetv3_small": (8, 9, 10)}


def _keras_reference(variant: str, alpha: float = WIDTH) -> keras.Model:
    return KERAS_MODELS[variant](input_shape=(SIZE, SIZE, 3), alpha=alpha, include_top=False,
                                 include_preprocessing=False, minimalistic=False, weights=None)


@pytest.fixture(scope="module")
def keras_files(tmp_path_factory):
    """variant -> (weights file of a randomly weighted tf_keras.applications no-top model, that model)."""
    return keras_weight_files(tmp_path_factory.mktemp("weights"),
                              {variant: functools.partial(_keras_reference, variant) for variant in VARIANTS},
                              tag=f"_{WIDTH}")


def _images(seed: int = 7):
    return tf.constant(np.random.default_rng(seed).normal(size=(2, SIZE, SIZE, 3)).astype(np.float32))


@pytest.mark.parametrize("variant", VARIANTS)
def test_logits_and_backbone_feature_strides(variant):
    model, backbone = lraspp(6, SIZE, backbone=variant, width_multiplier=WIDTH)
    logits = model(_images(), training=False)
    assert logits.shape == (2, SIZE, SIZE, 6) and logits.dtype == tf.float32
    features = backbone(_images(), training=False)
    low_channels, high_channels = CHANNELS[variant]
    assert features["low_level"].shape == (2, SIZE // 8, SIZE // 8, low_channels)
    assert features["high_level"].shape == (2, SIZE // 16, SIZE // 16, high_channels)
    # The stride-32 stage keeps stride 16: its first block drops its stride, the others dilate by 2.
    depthwise = [backbone.get_layer(f"expanded_conv_{i}/depthwise") for i in LAST_STAGE[variant]]
    assert [layer.strides[0] for layer in depthwise] == [1, 1, 1]
    assert [layer.dilation_rate[0] for layer in depthwise] == [1, 2, 2]
    # The head: 128-channel 1x1 conv, a 128-channel sigmoid gate, one classifier per branch.
    assert model.get_layer("lraspp_conv").filters == 128 and model.get_layer("lraspp_gate_conv").filters == 128
    assert model.get_layer("high_level_classifier").filters == 6
    assert model.get_layer("low_level_classifier").filters == 6


@pytest.mark.parametrize("variant", VARIANTS)
def test_backbone_loads_keras_file_and_gives_its_features(keras_files, variant):
    """At output stride 16 the stride-8 feature is the Keras model's and every weight is the file's;
    built at output stride 32 (nothing dilated) the whole network computes the Keras model's output."""
    path, reference = keras_files[variant]
    images = _images()
    want_low = keras.Model(reference.input, reference.get_layer(LOW_LEVEL_LAYER[variant]).output)(
        images, training=False).numpy()
    want_last = reference(images, training=False).numpy()
    assert np.abs(want_low).max() > 0 and np.abs(want_last).max() > 0  # not two zero maps

    ours = mobilenet_v3(variant, (SIZE, SIZE, 3), 16, WIDTH)
    load_backbone_weights(ours, path)
    np.testing.assert_allclose(ours(images, training=False)["low_level"].numpy(), want_low, rtol=1e-4, atol=1e-4)
    weighted = [layer for layer in ours.layers if layer.weights]
    assert len(weighted) == len([layer for layer in reference.layers if layer.weights])
    for layer in weighted:
        for mine, theirs in zip(layer.weights, reference.get_layer(layer.name).weights, strict=True):
            np.testing.assert_array_equal(mine.numpy(), theirs.numpy())

    undilated = mobilenet_v3(variant, (SIZE, SIZE, 3), 32, WIDTH)
    load_backbone_weights(undilated, path)
    np.testing.assert_allclose(undilated(images, training=False)["high_level"].numpy(), want_last,
                               rtol=1e-4, atol=1e-4)


def test_wrong_weights_files_are_one_clear_error(keras_files, tmp_path):
    large_file, _ = keras_files["mobilenetv3_large"]
    v2_file = str(tmp_path / "mobilenetv2_notop.h5")
    keras.applications.MobileNetV2(input_shape=(SIZE, SIZE, 3), include_top=False, weights=None).save_weights(v2_file)
    large = mobilenet_v3("mobilenetv3_large", (SIZE, SIZE, 3), 16, WIDTH)
    with pytest.raises(InputError, match=r"mobilenetv2_notop\.h5: not a mobilenetv3_large weights file") as err:
        load_backbone_weights(large, v2_file)
    assert "\n" not in str(err.value)
    full_width = mobilenet_v3("mobilenetv3_large", (SIZE, SIZE, 3), 16, 1.0)
    with pytest.raises(InputError, match=r"_notop\.h5: does not fit the mobilenetv3_large backbone") as err:
        load_backbone_weights(full_width, large_file)
    assert "\n" not in str(err.value)
    small = mobilenet_v3("mobilenetv3_small", (SIZE, SIZE, 3), 16, WIDTH)  # squeeze-excite where Large has none
    with pytest.raises(InputError, match=r"large_0\.5_notop\.h5: not a mobilenetv3_small weights file") as err:
        load_backbone_weights(small, large_file)
    assert "\n" not in str(err.value)


def test_semantic_hparams_choose_the_model_and_its_backbone(keras_files):
    from trainer_module.semantic.hparams import hparams_from_config
    from trainer_module.semantic.model import build_model

    assert hparams_from_config({})["model"] == "deeplabv3plus"  # the default is unchanged
    for wrong in ({"model": "lraspp"}, {"model": "lraspp", "backbone": "resnet50"},
                  {"backbone": "mobilenetv3_large"}, {"model": "fcn"}):
        with pytest.raises(InputError, match="semantic model") as err:
            hparams_from_config(wrong)
        assert "\n" not in str(err.value)
    with pytest.raises(InputError, match="output_stride"):
        lraspp(3, SIZE, output_stride=32)

    path, reference = keras_files["mobilenetv3_small"]
    hp = hparams_from_config({"model": "lraspp", "backbone": "mobilenetv3_small", "image_size": SIZE,
                              "width_multiplier": WIDTH, "lraspp_filters": 32, "backbone_weights": path})
    model = build_model(hp, 3)
    assert model.name == "lraspp_mobilenetv3_small" and model.get_layer("lraspp_conv").filters == 32
    np.testing.assert_array_equal(
        model.get_layer("mobilenetv3_small").get_layer("expanded_conv_4/expand").kernel.numpy(),
        reference.get_layer("expanded_conv_4/expand").kernel.numpy())


@pytest.mark.parametrize("variant", LARGE_THEN_SLOW_SMALL)
def test_train_step_learns_a_learnable_batch(variant):
    """At a fixed learning rate the loss of a batch the model can fit falls to under half in 15 steps
    (measured: to 0.09-0.15 of the first loss with Large, 0.11-0.19 with Small, for seeds 0, 1, 2)."""
    from trainer_module.semantic.hparams import DEFAULTS
    from trainer_module.semantic.model import build_model, make_train_step
    from trainer_module.training import build_optimizer

    keras.utils.set_random_seed(0)
    hp = dict(DEFAULTS, model="lraspp", backbone=variant, image_size=SIZE, width_multiplier=WIDTH,
              lraspp_filters=32, dropout=0.0, optimizer="adam", learning_rate=1e-3, lr_schedule="step",
              decay_at=[], warmup_steps=0)  # a constant learning rate
    model = build_model(hp, 2)
    step = make_train_step(model, build_optimizer(hp, 100, "float32"), hp)
    batch = learnable_batch(SIZE)
    losses = [float(step(batch)) for _ in range(15)]
    assert all(np.isfinite(losses)) and losses[-1] < 0.5 * losses[0], losses


def _int8_tflite(model: keras.Model) -> bytes:
    """Full-integer post-training quantisation of `model` (float image in, float logits out)."""

    @tf.function(input_signature=[tf.TensorSpec([1, SIZE, SIZE, 3], tf.float32)])
    def serve(image):
        return model(image, training=False)

    # The converter saves what it is given: the variables alone, not the Keras model (fast).
    holder = tf.Module()
    holder.variables_ = model.variables
    converter = tf.lite.TFLiteConverter.from_concrete_functions([serve.get_concrete_function()], holder)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    rng = np.random.default_rng(0)
    converter.representative_dataset = lambda: ([rng.normal(size=(1, SIZE, SIZE, 3)).astype(np.float32)]
                                                for _ in range(4))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return converter.convert()


@pytest.mark.parametrize("variant", VARIANTS)
def test_full_integer_int8_tflite(variant):
    """Both variants convert with int8 builtins only, every op runs on int8 (float only at the
    graph's input QUANTIZE and output DEQUANTIZE), and the interpreter's logits follow the float
    model's; on_device's HARD_SWISH rewrite keeps all that and lets XNNPACK take the whole graph."""
    keras.utils.set_random_seed(0)
    model, _ = lraspp(6, SIZE, backbone=variant, width_multiplier=WIDTH)
    # BatchNorm statistics of a batch, as a trained model has: with the initial ones the random
    # network's activations shrink to ~1e-8 by the last stage, a range no trained model has.
    norms = [layer for layer in model.submodules if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in norms:
        layer.momentum = 0.0
    model(_images(), training=True)
    flat = _int8_tflite(model)
    # The reference kernels (no XNNPACK delegate), so the ops listed are the ones that run.
    interpreter = tf.lite.Interpreter(
        model_content=flat,
        experimental_op_resolver_type=tf.lite.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter.allocate_tensors()
    ops = interpreter._get_ops_details()
    names = [op["op_name"] for op in ops]
    assert not [n for n in names if n in ("CUSTOM", "DELEGATE") or n.startswith("Flex")], names
    assert "HARD_SWISH" in names and "LOGISTIC" in names  # hard-swish fused into its builtin
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    (graph_input,) = [d["index"] for d in interpreter.get_input_details()]
    (graph_output,) = [d["index"] for d in interpreter.get_output_details()]
    assert [op["inputs"].tolist() for op in ops if op["op_name"] == "QUANTIZE"] == [[graph_input]]
    assert [op["outputs"].tolist() for op in ops if op["op_name"] == "DEQUANTIZE"] == [[graph_output]]
    for op in ops:
        if op["op_name"] in ("QUANTIZE", "DEQUANTIZE"):
            continue
        dtypes = {tensors[i]["dtype"] for i in [*op["inputs"], *op["outputs"]] if i >= 0}
        assert dtypes <= {np.int8, np.int32}, (op["op_name"], dtypes)

    image = _images()[:1].numpy()
    interpreter.set_tensor(graph_input, image)
    interpreter.invoke()
    got = interpreter.get_tensor(graph_output)
    want = model(image, training=False).numpy()
    assert got.shape == (1, SIZE, SIZE, 6) and np.isfinite(got).all()
    assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.8

    # What on_device.convert ships: every int8 HARD_SWISH as MUL/ADD/MUL, which XNNPACK (the default
    # delegate) takes, so the whole graph is one delegated partition (HARD_SWISH cut it into pieces).
    rewritten, count = on_device.int8_hard_swish_as_mul_add(flat)
    assert count == names.count("HARD_SWISH") > 0
    partitions = {}
    for name, content in (("converted", flat), ("rewritten", rewritten)):
        delegated = tf.lite.Interpreter(model_content=content)
        delegated.allocate_tensors()
        partitions[name] = [op["op_name"] for op in delegated._get_ops_details()].count("DELEGATE")
    assert partitions == {"converted": count + 1, "rewritten": 1}, partitions
    plain = tf.lite.Interpreter(
        model_content=rewritten,
        experimental_op_resolver_type=tf.lite.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    plain.allocate_tensors()
    ops = plain._get_ops_details()
    assert "HARD_SWISH" not in {op["op_name"] for op in ops}
    tensors = {t["index"]: t for t in plain.get_tensor_details()}
    for op in ops:
        if op["op_name"] not in ("QUANTIZE", "DEQUANTIZE"):
            assert {tensors[i]["dtype"] for i in [*op["inputs"], *op["outputs"]] if i >= 0} <= {np.int8, np.int32}
    plain.set_tensor(plain.get_input_details()[0]["index"], image)
    plain.invoke()
    same = plain.get_tensor(plain.get_output_details()[0]["index"])
    # The same function up to int8 rounding: as close to the float model as the converted graph
    # (each carries its own int8 noise, so the two differ by about as much as each differs from float).
    converted, kept = (np.corrcoef(x.ravel(), want.ravel())[0, 1] for x in (got, same))
    assert kept > 0.8 and kept > converted - 0.02, (converted, kept)


@pytest.mark.parametrize("name", ["lraspp_mobilenetv3_large",
                                  pytest.param("lraspp_mobilenetv3_small", marks=pytest.mark.slow)])
def test_bench_builds_the_training_step(name):
    from trainer_module.bench import build_train_step

    step = build_train_step(name, SIZE, 2)
    before = [w.numpy().copy() for w in step.model.trainable_weights]
    loss = step()
    assert np.isfinite(loss) and int(step.optimizer.iterations.numpy()) == 1
    assert step.model.name == name and step.model.get_layer("lraspp_conv").filters == 128  # the paper's head
    moved = [not np.array_equal(a, b.numpy()) for a, b in zip(before, step.model.trainable_weights)]
    assert all(moved), [w.name for w, m in zip(step.model.trainable_weights, moved) if not m]
