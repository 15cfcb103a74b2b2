"""Semantic Transform + Trainer: a real tf.Transform analyze-and-transform (Beam, in process) over raw
tf.Examples from the sample-data generator, then run_fn, then both export signatures; and resuming
training after an interruption."""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from components.contract import (
    CLASS_MAP_ENCODED,
    IGNORE_LABEL,
    IMAGE_ENCODED,
    IMAGE_FORMAT,
    IMAGE_HEIGHT,
    IMAGE_SOURCE_ID,
    IMAGE_WIDTH,
    LABEL_MAP_FILE,
)
from pipelines.sample_data import SEMANTIC_CLASSES, render_semantic

LABEL_MAP = {"task": "semantic",
             "classes": [{"label": i, "id": i, "name": n} for i, n in enumerate(SEMANTIC_CLASSES)]}


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def raw_examples(num: int, image_size: int, seed: int = 0) -> list[dict]:
    """Raw examples as components.contract has them (original JPEG bytes, single-channel label PNG)."""
    out = []
    for i in range(num):
        image, label = render_semantic(seed, i, image_size)
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=92)
        out.append({IMAGE_ENCODED: buf.getvalue(), CLASS_MAP_ENCODED: _png(label), IMAGE_FORMAT: b"jpeg",
                    IMAGE_HEIGHT: label.shape[0], IMAGE_WIDTH: label.shape[1],
                    IMAGE_SOURCE_ID: str(i).encode(), "label_array": label, "image_pil": image})
    return out


def serialize(example: dict) -> bytes:
    feature = {
        IMAGE_ENCODED: tf.train.Feature(bytes_list=tf.train.BytesList(value=[example[IMAGE_ENCODED]])),
        CLASS_MAP_ENCODED: tf.train.Feature(bytes_list=tf.train.BytesList(value=[example[CLASS_MAP_ENCODED]])),
        IMAGE_FORMAT: tf.train.Feature(bytes_list=tf.train.BytesList(value=[example[IMAGE_FORMAT]])),
        IMAGE_HEIGHT: tf.train.Feature(int64_list=tf.train.Int64List(value=[example[IMAGE_HEIGHT]])),
        IMAGE_WIDTH: tf.train.Feature(int64_list=tf.train.Int64List(value=[example[IMAGE_WIDTH]])),
        IMAGE_SOURCE_ID: tf.train.Feature(bytes_list=tf.train.BytesList(value=[example[IMAGE_SOURCE_ID]])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


# The image as a variable-length feature (SparseTensor in preprocessing_fn) and the label PNG as a
# fixed [1] feature (dense [B, 1]): both forms a TFMD schema can give.
RAW_FEATURE_SPEC = {
    IMAGE_ENCODED: tf.io.VarLenFeature(tf.string),
    CLASS_MAP_ENCODED: tf.io.FixedLenFeature([1], tf.string),
    IMAGE_FORMAT: tf.io.FixedLenFeature([1], tf.string),
    IMAGE_HEIGHT: tf.io.FixedLenFeature([1], tf.int64),
    IMAGE_WIDTH: tf.io.FixedLenFeature([1], tf.int64),
    IMAGE_SOURCE_ID: tf.io.FixedLenFeature([1], tf.string),
}


def rows(examples: list[dict]) -> list[dict]:
    """Raw examples as tft_beam takes them: every feature here holds exactly one value (a list of one)."""
    return [{k: [ex[k]] for k in RAW_FEATURE_SPEC} for ex in examples]


def fn_args(paths: dict, custom_config: dict, work: Path, train_steps: int, eval_steps: int = 2):
    from tfx.components.trainer.fn_args_utils import FnArgs

    return FnArgs(train_files=paths["train_files"], eval_files=paths["eval_files"],
                  transform_output=paths["transform_output"], serving_model_dir=str(work / "serving"),
                  model_run_dir=str(work / "model_run"), train_steps=train_steps, eval_steps=eval_steps,
                  custom_config=custom_config)


TINY = {"task": "semantic", "label_map": LABEL_MAP, "image_size": 64, "width_multiplier": 0.35,
        "aspp_filters": 32, "decoder_filters": 32, "low_level_filters": 16, "batch_size": 4,
        "steps_per_execution": 2, "checkpoint_every": 4, "warmup_steps": 2}


@pytest.fixture(scope="module")
def transformed(tmp_path_factory, run_transform):
    work = tmp_path_factory.mktemp("semantic_transform")
    examples = raw_examples(12, 96)
    paths = run_transform(rows(examples[:8]), rows(examples[8:]), RAW_FEATURE_SPEC, TINY, work)
    return {"paths": paths, "examples": examples}


def test_transform_outputs_normalised_images_labels_and_class_frequencies(transformed):
    import tensorflow_transform as tft

    output = tft.TFTransformOutput(transformed["paths"]["transform_output"])
    spec = output.transformed_feature_spec()
    assert spec["image"].shape == [64, 64, 3] and spec["label"].shape == [64, 64]
    files = tf.io.gfile.glob(transformed["paths"]["train_files"][0])
    records = list(tf.data.TFRecordDataset(files, compression_type="GZIP"))
    assert len(records) == 8
    parsed = [tf.io.parse_single_example(r, spec) for r in records]
    images = np.stack([p["image"].numpy() for p in parsed])
    # normalised with the train split's own statistics: mean ~0, std ~1 per channel
    np.testing.assert_allclose(images.mean(axis=(0, 1, 2)), 0.0, atol=0.05)
    np.testing.assert_allclose(images.std(axis=(0, 1, 2)), 1.0, atol=0.05)
    labels = np.stack([p["label"].numpy() for p in parsed])
    assert set(np.unique(labels)) <= set(range(len(SEMANTIC_CLASSES))) | {IGNORE_LABEL}
    assert (labels == IGNORE_LABEL).any() and (labels == 0).any()
    # frequencies equal the class pixel counts of the resized train labels
    counts = np.array([(labels == c).sum() for c in range(len(SEMANTIC_CLASSES))], np.float64)
    np.testing.assert_allclose(parsed[0]["class_frequency"].numpy(), counts / counts.sum(), rtol=1e-5)


def test_run_fn_trains_exports_and_both_signatures_serve(transformed, tmp_path):
    from trainer_module.run import run_fn

    args = fn_args(transformed["paths"], TINY, tmp_path, train_steps=6)
    run_fn(args)
    assert tf.train.latest_checkpoint(os.path.join(args.model_run_dir, "checkpoints")).endswith("-6")
    assert json.loads((Path(args.serving_model_dir) / "assets" / LABEL_MAP_FILE).read_text()) == LABEL_MAP
    metrics = json.loads((Path(args.model_run_dir) / "eval_metrics.json").read_text())
    assert 0.0 <= metrics["mean_iou"] <= 1.0 and 0.0 <= metrics["pixel_accuracy"] <= 1.0
    assert set(metrics["iou"]) <= {str(c) for c in range(len(SEMANTIC_CLASSES))}

    loaded = tf.saved_model.load(args.serving_model_dir)
    examples = transformed["examples"][8:11]
    sizes = [e["label_array"].shape for e in examples]
    assert len(set(sizes)) > 1, "the sample generator should vary image sizes"
    hmax, wmax = max(s[0] for s in sizes), max(s[1] for s in sizes)

    out = loaded.signatures["serving_default"](examples=tf.constant([serialize(e) for e in examples]))
    ids = out["class_ids"].numpy()
    assert ids.dtype == np.int32 and ids.shape == (3, hmax, wmax)
    for row, (h, w) in zip(ids, sizes):
        assert set(np.unique(row[:h, :w])) <= set(range(len(SEMANTIC_CLASSES)))
        assert (row[h:] == IGNORE_LABEL).all() and (row[:, w:] == IGNORE_LABEL).all()

    from_images = loaded.signatures["serving_images"](images=tf.constant([e[IMAGE_ENCODED] for e in examples]))
    np.testing.assert_array_equal(from_images["class_ids"].numpy(), ids)
    # PNG input decodes too
    buf = io.BytesIO()
    examples[0]["image_pil"].save(buf, format="PNG")
    single = loaded.signatures["serving_images"](images=tf.constant([buf.getvalue()]))["class_ids"].numpy()
    assert single.shape == (1,) + sizes[0]


def test_training_resumes_from_last_checkpoint_after_interruption(transformed, tmp_path):
    """Interrupt after 4 of 8 steps (checkpoint at 4), rebuild everything as a restarted process would,
    and check training continues at step 4 with the restored weights and optimizer state."""
    import tensorflow_transform as tft

    from trainer_module.semantic.hparams import hparams_from_config
    from trainer_module.semantic.input_pipeline import make_dataset
    from trainer_module.semantic.model import build_model, make_train_step
    from trainer_module.training import build_optimizer, run_training

    hp = hparams_from_config(TINY)
    spec = tft.TFTransformOutput(transformed["paths"]["transform_output"]).transformed_feature_spec()
    strategy = tf.distribute.get_strategy()

    def fresh_trainer():
        model = build_model(hp, len(SEMANTIC_CLASSES))
        optimizer = build_optimizer(hp, total_steps=8, policy="float32")
        ds = make_dataset(transformed["paths"]["train_files"], spec, hp, 4, training=True)
        return model, optimizer, dict(strategy=strategy, model=model, optimizer=optimizer,
                                      step_fn=make_train_step(model, optimizer, hp), dataset=ds, total_steps=8,
                                      steps_per_execution=2, checkpoint_dir=str(tmp_path / "ckpt"),
                                      checkpoint_every=4)

    model, optimizer, kwargs = fresh_trainer()
    first = run_training(stop_after=5, **kwargs)  # stops at 5: the last checkpoint is step 4
    assert (first["start_step"], first["final_step"]) == (0, 5)
    # The loop's own rate leaves out the first chunk (tracing): chunks 0-2 | 2-4, 4-5.
    assert first["steady_steps"] == 3 and first["steady_seconds"] > 0
    assert tf.train.latest_checkpoint(str(tmp_path / "ckpt")).endswith("-4")  # step 5 was lost

    model2, optimizer2, kwargs2 = fresh_trainer()
    restored = run_training(stop_after=0, **kwargs2)  # restore only
    assert restored["start_step"] == 4 and int(optimizer2.iterations.numpy()) == 4
    assert restored["steady_steps"] == 0
    # The weights are those of checkpoint 4, read independently of run_training.
    reference = build_model(hp, len(SEMANTIC_CLASSES))
    assert not np.allclose(reference.get_layer("classifier").kernel.numpy(),
                           model2.get_layer("classifier").kernel.numpy())
    tf.train.Checkpoint(model=reference).restore(str(tmp_path / "ckpt" / "ckpt-4")).expect_partial()
    for a, b in zip(reference.weights, model2.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    second = run_training(**kwargs2)
    assert (second["start_step"], second["final_step"]) == (4, 8) and second["steady_steps"] == 2
    assert int(optimizer2.iterations.numpy()) == 8
    assert tf.train.latest_checkpoint(str(tmp_path / "ckpt")).endswith("-8")


def test_color_jitter_changes_colours_only_and_is_seeded():
    """Photometric jitter keeps every pixel where it was (the result is one colour-affine map of the
    input: x' = M x + c per image) and the labels untouched; the same seed gives the same image."""
    from trainer_module.semantic.input_pipeline import augment

    rng = np.random.default_rng(0)
    image = tf.constant(rng.normal(size=(32, 32, 3)), tf.float32)
    label = tf.constant(rng.integers(0, 5, size=(32, 32)), tf.int32)
    plain, plain_label = augment(image, label, 32, 1.0, 1.0, False, tf.constant([1, 2], tf.int64))
    np.testing.assert_array_equal(plain.numpy(), image.numpy())  # jitter 0: off
    changed = 0
    for index in range(4):
        seed = tf.constant([1, index], tf.int64)
        out, out_label = augment(image, label, 32, 1.0, 1.0, False, seed, jitter=0.3)
        again, _ = augment(image, label, 32, 1.0, 1.0, False, seed, jitter=0.3)
        np.testing.assert_array_equal(out.numpy(), again.numpy())
        np.testing.assert_array_equal(out_label.numpy(), label.numpy())
        x = np.concatenate([image.numpy().reshape(-1, 3), np.ones((32 * 32, 1))], axis=1)
        y = out.numpy().reshape(-1, 3)
        fit, *_ = np.linalg.lstsq(x, y, rcond=None)
        assert np.abs(x @ fit - y).max() < 1e-4
        changed += not np.allclose(y, image.numpy().reshape(-1, 3), atol=1e-3)
    assert changed == 4


def test_augment_keeps_a_rectangle_and_its_labels_in_register():
    """On an H x W (not square) image, scale, crop/pad and flip return H x W, and move image and label
    together: where the label names a class, the image (built as one channel = the class) agrees,
    apart from the bilinear blend at class borders; padding is IGNORE_LABEL in the label."""
    from components.contract import IGNORE_LABEL
    from trainer_module.semantic.input_pipeline import augment

    height, width = 24, 40
    rows_, cols = np.mgrid[0:height, 0:width]
    label_np = (rows_ // 8) * 3 + (cols // 14)  # 3 x 3 blocks, classes 0..8, wider than tall
    label = tf.constant(label_np, tf.int32)
    image = tf.constant(np.repeat(label_np[..., None], 3, axis=2), tf.float32)
    padded = 0
    for index in range(12):
        out, out_label = augment(image, label, [height, width], 0.6, 1.6, True,
                                 tf.constant([3, index], tf.int64))
        assert out.shape == (height, width, 3) and out_label.shape == (height, width)
        out, out_label = out.numpy(), out_label.numpy()
        valid = out_label != IGNORE_LABEL
        padded += int((~valid).sum())
        agree = np.abs(out[..., 0] - out_label) < 0.5
        assert agree[valid].mean() > 0.85, (index, agree[valid].mean())
        np.testing.assert_array_equal(out[~valid], 0.0)  # padding is the mean colour (0 when normalised)
    assert padded > 0  # some draws scaled below 1 and padded


def test_test_time_flip_is_the_mean_over_the_mirror_and_mirror_symmetric():
    """predict_logits with flip: the mean of the logits of the image and of its mirror (flipped back),
    so mirroring the input mirrors the prediction exactly, which the plain model does not do."""
    from trainer_module.semantic.hparams import hparams_from_config
    from trainer_module.semantic.model import build_model, predict_logits

    model = build_model(hparams_from_config({**TINY, "image_size": [32, 48]}), len(SEMANTIC_CLASSES))
    images = tf.random.stateless_normal([2, 32, 48, 3], [0, 1])
    mirror = tf.reverse(images, [2])
    plain = model(images, training=False).numpy()
    plain_of_mirror = model(mirror, training=False).numpy()
    flipped = predict_logits(model, images, flip=True).numpy()
    scale = float(np.abs(plain).max())  # an untrained model's logits are small: compare relative to them
    tolerance = 1e-4 * scale
    np.testing.assert_allclose(flipped, (plain + plain_of_mirror[:, :, ::-1]) / 2, atol=tolerance)
    np.testing.assert_allclose(predict_logits(model, mirror, flip=True).numpy()[:, :, ::-1], flipped, atol=tolerance)
    assert np.abs(plain_of_mirror[:, :, ::-1] - plain).max() > 0.1 * scale  # the plain model is not symmetric
    np.testing.assert_array_equal(predict_logits(model, images).numpy(), plain)
