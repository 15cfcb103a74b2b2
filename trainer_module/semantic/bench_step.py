"""The semantic training step on a random batch, for `segpipe bench train` (trainer_module.bench)."""
from __future__ import annotations

import tensorflow as tf
import tf_keras as keras

from components.errors import InputError
from trainer_module.distribute import strategy_and_policy, use_jit
from trainer_module.semantic.hparams import DEFAULTS
from trainer_module.semantic.model import build_model, make_train_step
from trainer_module.training import FixedBatchStep, build_optimizer

MODELS = {"deeplabv3plus_mobilenetv2": "mobilenetv2", "deeplabv3plus_resnet50": "resnet50"}
NUM_CLASSES = 21  # PASCAL VOC

# The paper's DeepLab v3+: OS 16, ASPP 256 at rates 6/12/18 + image pooling, 48-channel stride-4
# decoder input, two 3x3 convs of 256, full-width backbone.
PAPER_SIZE = {"width_multiplier": 1.0, "aspp_filters": 256, "decoder_filters": 256, "low_level_filters": 48,
              "output_stride": 16, "separable": False}


def build_train_step(model_name: str, image_size: int, batch_size: int, **overrides) -> FixedBatchStep:
    """The training step (semantic.model.make_train_step, the semantic optimizer) of the paper-size
    model on a random batch; `overrides` change hyper-parameters. Each call of the result runs one step."""
    if model_name not in MODELS:
        raise InputError(f"unknown model {model_name!r}; deeplab models: {sorted(MODELS)}")
    hp = {**DEFAULTS, **PAPER_SIZE, "backbone": MODELS[model_name], "image_size": image_size, **overrides}
    strategy, policy = strategy_and_policy(hp)
    keras.mixed_precision.set_global_policy(policy)
    with strategy.scope():
        model = build_model(hp, NUM_CLASSES)
        optimizer = build_optimizer(hp, total_steps=10**6, policy=policy)
    step_fn = make_train_step(model, optimizer, hp, use_jit(hp, strategy))
    rng = tf.random.Generator.from_seed(hp["seed"])
    batch = {"image": rng.normal([batch_size, image_size, image_size, 3]),
             "label": rng.uniform([batch_size, image_size, image_size], 0, NUM_CLASSES, dtype=tf.int32)}
    return FixedBatchStep(strategy, model, optimizer, step_fn, batch)
