"""Warm start (trainer.warm_start): the export writes the model's weights beside the SavedModel, and a
Trainer given that model as `base_model` starts from exactly those weights with a fresh optimizer;
without a base model it trains from scratch and says so; a checkpoint to resume wins over both."""
from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np
import tensorflow as tf
import tf_keras as keras

from trainer_module import training
from trainer_module.semantic.hparams import hparams_from_config
from trainer_module.semantic.model import build_model

HP = hparams_from_config({"image_size": 32, "width_multiplier": 0.35, "aspp_filters": 16,
                          "decoder_filters": 16, "low_level_filters": 8})


def _model(seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = build_model(HP, 3)
    model(tf.zeros([1, 32, 32, 3]), training=False)  # variables exist
    return model


def _train(model, tmp_path, base_model, total_steps=0, name="ckpt"):
    strategy = tf.distribute.get_strategy()
    optimizer = training.build_optimizer(HP, 10, "float32")
    dataset = tf.data.Dataset.from_tensors(tf.zeros([1])).repeat()
    result = training.run_training(
        strategy=strategy, model=model, optimizer=optimizer, step_fn=lambda batch: tf.constant(0.0),
        dataset=dataset, total_steps=total_steps, steps_per_execution=1,
        checkpoint_dir=str(tmp_path / name), base_model=base_model)
    return result, optimizer


def _same(a: keras.Model, b: keras.Model) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(a.get_weights(), b.get_weights()))


def test_warm_start_begins_with_the_base_model_weights(tmp_path, capsys):
    base = _model(seed=1)
    serving = tmp_path / "base" / "Format-Serving"  # a Model artifact's serving dir
    path = training.save_for_warm_start(base, str(serving))
    assert path == str(tmp_path / "base" / "warm_start" / "model")

    fresh = _model(seed=2)
    assert not _same(base, fresh)
    result, optimizer = _train(fresh, tmp_path, base_model=str(serving))
    assert result["warm_start_from"] == path
    assert _same(base, fresh)
    assert int(optimizer.iterations.numpy()) == 0  # the optimizer is new
    assert "warm start: weights of" in capsys.readouterr().err


def test_no_base_model_trains_from_scratch_and_says_so(tmp_path, capsys):
    model = _model(seed=2)
    before = model.get_weights()
    result, _ = _train(model, tmp_path, base_model=None)
    assert result["warm_start_from"] is None
    assert all(np.array_equal(x, y) for x, y in zip(before, model.get_weights()))
    assert "from scratch" in capsys.readouterr().err


def test_resuming_wins_over_warm_start(tmp_path):
    base = _model(seed=1)
    serving = tmp_path / "base" / "Format-Serving"
    training.save_for_warm_start(base, str(serving))
    interrupted = _model(seed=3)
    ckpt = tf.train.Checkpoint(model=interrupted,
                               optimizer=training.build_optimizer(HP, 10, "float32"))
    tf.train.CheckpointManager(ckpt, str(tmp_path / "resume"), max_to_keep=1).save(checkpoint_number=0)
    restarted = _model(seed=4)
    result, _ = _train(restarted, tmp_path, base_model=str(serving), name="resume")
    assert result["warm_start_from"] is None and _same(restarted, interrupted)


def test_mask_rcnn_warm_starts_from_its_saved_weights(tmp_path):
    """The same path for the subclassed Mask R-CNN (nested layers, no functional graph)."""
    from trainer_module.instance.hparams import hparams_from_config as instance_hparams
    from trainer_module.instance.model import build_model as build_mask_rcnn

    hp = instance_hparams({"image_size": 64, "fpn_channels": 16, "box_fc_dims": 32, "mask_head_channels": 16})
    models = []
    for seed in (1, 2):
        keras.utils.set_random_seed(seed)
        models.append(build_mask_rcnn(hp, 2))
    base, fresh = models
    serving = tmp_path / "base" / "Format-Serving"
    training.save_for_warm_start(base, str(serving))
    assert not _same(base, fresh)
    result, _ = _train(fresh, tmp_path, base_model=str(serving))
    assert result["warm_start_from"] and _same(base, fresh)
