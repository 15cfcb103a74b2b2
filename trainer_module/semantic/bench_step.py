"""The semantic training step on a random batch, for `segpipe bench train` (trainer_module.bench)."""
from __future__ import annotations

import tensorflow as tf

from components.contract import image_hw
from components.errors import InputError
from trainer_module.semantic.hparams import DEFAULTS, with_derived
from trainer_module.semantic.model import build_model, make_train_step
from trainer_module.training import FixedBatchStep, set_up_training

# bench model name -> (semantic hparams "model", "backbone")
MODELS = {"deeplabv3plus_mobilenetv2": ("deeplabv3plus", "mobilenetv2"),
          "deeplabv3plus_resnet50": ("deeplabv3plus", "resnet50"),
          "lraspp_mobilenetv3_large": ("lraspp", "mobilenetv3_large"),
          "lraspp_mobilenetv3_small": ("lraspp", "mobilenetv3_small")}
NUM_CLASSES = 21  # PASCAL VOC

PAPER_SIZE = {
    # The paper's DeepLab v3+: OS 16, ASPP 256 at rates 6/12/18 + image pooling, 48-channel stride-4
    # decoder input, two 3x3 convs of 256, full-width backbone.
    "deeplabv3plus": {"width_multiplier": 1.0, "aspp_filters": 256, "decoder_filters": 256,
                      "low_level_filters": 48, "output_stride": 16, "separable": False},
    # The MobileNetV3 paper's LR-ASPP: OS 16 (last stage dilated), 128-channel head, full-width backbone.
    "lraspp": {"width_multiplier": 1.0, "lraspp_filters": 128, "output_stride": 16},
}


def build_train_step(model_name: str, image_size, batch_size: int, **overrides) -> FixedBatchStep:
    """The training step (semantic.model.make_train_step, the semantic optimizer) of the paper-size
    model on a random batch; `overrides` change hyper-parameters. Each call of the result runs one step."""
    if model_name not in MODELS:
        raise InputError(f"unknown model {model_name!r}; semantic models: {sorted(MODELS)}")
    model, backbone = MODELS[model_name]
    hp = with_derived({**DEFAULTS, **PAPER_SIZE[model], "model": model, "backbone": backbone,
                       "image_size": image_size, **overrides})
    setup = set_up_training(hp, NUM_CLASSES, build_model, make_train_step, total_steps=10**6)
    rng = tf.random.Generator.from_seed(hp["seed"])
    height, width = image_hw(image_size)
    batch = {"image": rng.normal([batch_size, height, width, 3]),
             "label": rng.uniform([batch_size, height, width], 0, NUM_CLASSES, dtype=tf.int32)}
    return FixedBatchStep(setup.strategy, setup.model, setup.optimizer, setup.step_fn, batch)
