"""Instance Transform + Trainer: the sample data through the COCO ingestion, a real
tf.Transform analyze-and-transform (Beam, in process), run_fn, and both export signatures."""
from __future__ import annotations

import glob
import json
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
import numpy as np
import pytest
import tensorflow as tf

from components.contract import (
    IMAGE_ENCODED,
    LABEL_MAP_FILE,
    OBJECT_IS_CROWD,
    OBJECT_LABEL,
    OBJECT_MASK,
    OBJECT_XMAX,
    OBJECT_YMIN,
)
from components.errors import InputError
from trainer_module.instance.preprocessing import BOX_KEYS

RAW_FEATURE_SPEC = {
    IMAGE_ENCODED: tf.io.FixedLenFeature([1], tf.string),
    **{k: tf.io.VarLenFeature(tf.float32) for k in BOX_KEYS},
    OBJECT_LABEL: tf.io.VarLenFeature(tf.int64),
    OBJECT_IS_CROWD: tf.io.VarLenFeature(tf.int64),
    OBJECT_MASK: tf.io.VarLenFeature(tf.string),
}
TINY = {"task": "instance", "image_size": 64, "max_instances": 8, "mask_stride": 2,
        "fpn_channels": 32, "box_fc_dims": 64, "mask_head_channels": 32,
        "rpn_pre_nms_top_k_train": 300, "rpn_post_nms_top_k_train": 100, "roi_samples_per_image": 64,
        "rpn_pre_nms_top_k_test": 200, "rpn_post_nms_top_k_test": 50, "max_detections": 10,
        "batch_size": 2, "steps_per_execution": 2, "checkpoint_every": 2, "warmup_steps": 2}


def read_records(pattern: str) -> list[bytes]:
    files = sorted(glob.glob(pattern))
    return [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]


def as_instance(serialized: bytes) -> dict:
    parsed = tf.io.parse_single_example(serialized, RAW_FEATURE_SPEC)
    return {k: (v.values.numpy() if isinstance(v, tf.SparseTensor) else v.numpy()) for k, v in parsed.items()}


def ingest_and_transform(work, run_transform) -> dict:
    """The COCO sample data (10 images) ingested by the real Beam pipeline and transformed in process."""
    from components.coco_source import CocoSource, label_map_for
    from pipelines.ingest import run as ingest
    from pipelines.sample_data import write_instance

    write_instance(work / "sample", num_images=10, image_size=80, seed=3)
    ann = work / "sample" / "annotations"
    splits = [("train", str(ann / "instances_train.json")), ("val", str(ann / "instances_val.json"))]
    label_map = label_map_for([p for _, p in splits])
    ingest(CocoSource(str(work / "sample" / "images"), label_map), splits, str(work / "ingested"),
           beam_args=["--direct_running_mode=in_memory"])
    raw = {s: read_records(str(work / "ingested" / f"Split-{s}" / "*.gz")) for s, _ in splits}
    config = dict(TINY, label_map=label_map)
    paths = run_transform([as_instance(e) for e in raw["train"]], [as_instance(e) for e in raw["val"]],
                          RAW_FEATURE_SPEC, config, work / "transformed")
    return {"work": work, "raw": raw, "paths": paths, "config": config, "label_map": label_map}


@pytest.fixture(scope="module")
def data(tmp_path_factory, run_transform):
    return ingest_and_transform(tmp_path_factory.mktemp("instance"), run_transform)


def test_transform_outputs_fixed_size_ground_truth(data):
    import tensorflow_transform as tft

    spec = tft.TFTransformOutput(data["paths"]["transform_output"]).transformed_feature_spec()
    assert spec["image"].shape == [64, 64, 3] and spec["masks"].shape == [8, 32, 32]
    transformed = read_records(data["paths"]["train_files"][0])
    labels = {c["label"] for c in data["label_map"]["classes"]}
    for serialized, raw in zip(transformed, data["raw"]["train"]):
        f = {k: v.numpy() for k, v in tf.io.parse_single_example(serialized, spec).items()}
        r = as_instance(raw)
        n = len(r[OBJECT_LABEL])
        want = np.where(r[OBJECT_IS_CROWD] == 0, r[OBJECT_LABEL], 0)
        np.testing.assert_array_equal(f["classes"][:n], want[:8])
        assert np.all(f["classes"][n:] == 0) and set(f["classes"][f["classes"] > 0]) <= labels
        h, w = f["resized_size"]
        assert max(h, w) == 64
        np.testing.assert_allclose(f["boxes"][:n, 0], r[OBJECT_YMIN][:8] * h, atol=1e-3)
        np.testing.assert_allclose(f["boxes"][:n, 3], r[OBJECT_XMAX][:8] * w, atol=1e-3)
        assert np.all(f["image"][h:] == 0) and np.all(f["image"][:, w:] == 0)
        for i in range(min(n, 8)):  # each mask lies inside its box (mask pixels are 2x2 image pixels)
            ys, xs = np.nonzero(f["masks"][i])
            if len(ys):
                y0, x0, y1, x1 = f["boxes"][i] / 2
                assert ys.min() >= y0 - 1 and ys.max() <= y1 and xs.min() >= x0 - 1 and xs.max() <= x1
    np.testing.assert_allclose(f["pixel_std"].shape, [3])


def test_run_fn_trains_exports_and_both_signatures_agree(data):
    from tfx.components.trainer.fn_args_utils import FnArgs

    from trainer_module.run import run_fn

    work = data["work"] / "trainer"
    paths = data["paths"]
    run_fn(FnArgs(train_files=paths["train_files"], eval_files=paths["eval_files"],
                  transform_output=paths["transform_output"], serving_model_dir=str(work / "serving"),
                  model_run_dir=str(work / "model_run"), train_steps=4, eval_steps=1,
                  custom_config=data["config"]))
    assert tf.train.latest_checkpoint(str(work / "model_run" / "checkpoints")).endswith("ckpt-4")
    assert json.loads((work / "serving" / "assets" / LABEL_MAP_FILE).read_text()) == data["label_map"]
    metrics = json.loads((work / "model_run" / "eval_metrics.json").read_text())
    assert metrics["num_images"] == 2  # eval_steps=1 batch of batch_size 2
    for key in ("box_ap", "mask_ap", "box_ap50", "mask_ap50"):
        assert 0.0 <= metrics[key] <= 1.0, metrics
    loaded = tf.saved_model.load(str(work / "serving"))
    raw = data["raw"]["val"][:2]
    images = [as_instance(r)[IMAGE_ENCODED][0] for r in raw]
    by_images = {k: v.numpy() for k, v in loaded.signatures["serving_images"](images=tf.constant(images)).items()}
    by_examples = {k: v.numpy() for k, v in loaded.signatures["serving_default"](examples=tf.constant(raw)).items()}
    sizes = [tf.image.decode_image(i).shape[:2] for i in images]
    hmax, wmax = max(s[0] for s in sizes), max(s[1] for s in sizes)
    assert by_images["detection_boxes"].shape == (2, 10, 4)
    assert by_images["detection_masks"].shape == (2, 10, hmax, wmax)
    assert by_images["detection_masks"].dtype == np.uint8
    ids = {c["id"] for c in data["label_map"]["classes"]}
    for i in range(2):
        n = by_images["num_detections"][i]
        assert set(by_images["detection_classes"][i][:n].tolist()) <= ids
        assert np.all(by_images["detection_classes"][i][n:] == 0)
    boxes = by_images["detection_boxes"]
    assert boxes.min() >= 0.0 and boxes.max() <= 1.0
    for key in by_images:
        np.testing.assert_allclose(by_images[key], by_examples[key], atol=1e-5, err_msg=key)


def test_hparams_share_the_training_keys_and_reject_unknown_ones():
    from trainer_module.instance.hparams import hparams_from_config as instance_hparams
    from trainer_module.semantic.hparams import hparams_from_config as semantic_hparams
    from trainer_module.training import TRAINING_DEFAULTS

    for hparams, task in ((semantic_hparams, "semantic"), (instance_hparams, "instance")):
        hp = hparams({"task": task, "bn_momentum": 0.95, "ai_platform_training_args": {}})
        assert set(TRAINING_DEFAULTS) <= set(hp) and hp["bn_momentum"] == 0.95
        with pytest.raises(InputError, match="backbone_bn_momentum"):
            hparams({"task": task, "backbone_bn_momentum": 0.9})
    assert semantic_hparams({})["lr_schedule"] == "poly" and instance_hparams({})["lr_schedule"] == "step"
    with pytest.raises(InputError):
        instance_hparams({"image_size": 100})
