"""On-device export (trainer_module.on_device): a tiny semantic model trained and exported by the real
run_fn (in-process Transform over the sample-data generator's examples), converted to TFLite float16
and int8, evaluated and gated; its .tflite files served by the runtime and by `segpipe predict` like
the SavedModel; and the instance conversion (float16)."""
from __future__ import annotations

import io
import json
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from test_semantic_trainer import LABEL_MAP, RAW_FEATURE_SPEC, TINY, fn_args, raw_examples, rows, serialize

from components.contract import IGNORE_LABEL, IMAGE_ENCODED
from trainer_module import on_device

NUM_EVAL = 4
# A rectangle (height 48, width 64): the export, the TFLite signature and metadata, representative
# inputs, the runtime and `bench infer` all keep H and W apart (CamVid trains on its 4:3 aspect).
# With test-time flip, as pipelines/configs/camvid.yaml exports: it must survive the conversion.
SIZE = [48, 64]
TINY_RECT = {**TINY, "image_size": SIZE, "serving_flip": True}


@pytest.fixture(scope="module")
def semantic(tmp_path_factory, run_transform):
    """A 6-step DeepLab (48x64 px) exported by run_fn, the raw eval split as GZIP TFRecords, and
    export_and_evaluate's result over both variants."""
    from trainer_module.run import run_fn

    work = tmp_path_factory.mktemp("tflite_semantic")
    examples = raw_examples(8 + NUM_EVAL, 96)
    paths = run_transform(rows(examples[:8]), rows(examples[8:]), RAW_FEATURE_SPEC, TINY_RECT, work)
    args = fn_args(paths, TINY_RECT, work, train_steps=6, eval_steps=0)
    run_fn(args)
    raw_eval = str(work / "raw_eval" / "data.tfrecord.gz")
    os.makedirs(os.path.dirname(raw_eval))
    with tf.io.TFRecordWriter(raw_eval, options="GZIP") as writer:
        for example in examples[8:]:
            writer.write(serialize(example))
    result = on_device.export_and_evaluate(
        args.serving_model_dir, paths["train_files"], [raw_eval], str(work / "tflite"),
        {"task": "semantic", "label_map": LABEL_MAP, "representative_examples": 8})
    return {"work": work, "model": args.serving_model_dir, "paths": paths, "raw_eval": raw_eval,
            "examples": examples[8:], "result": result}


def test_export_and_evaluate_converts_gates_and_reports_both_variants(semantic):
    result = semantic["result"]
    json.dumps(result)  # JSON-able
    assert result["task"] == "semantic" and set(result["variants"]) == set(on_device.VARIANTS)
    reference = result["saved_model"]
    assert reference["num_images"] == NUM_EVAL and 0.0 <= reference["mean_iou"] <= 1.0

    # The SavedModel's number is the Evaluator's: serving_default over the serialized raw examples,
    # one confusion matrix per example against the ground-truth PNG, summed, scored.
    from components.example_codec import decode_png
    from trainer_module.metrics.iou import confusion_matrix, scores_from_confusion

    loaded = tf.saved_model.load(semantic["model"])
    total = np.zeros((len(LABEL_MAP["classes"]),) * 2, np.int64)
    for example in semantic["examples"]:
        ids = loaded.signatures["serving_default"](examples=tf.constant([serialize(example)]))["class_ids"].numpy()
        truth = decode_png(example["image/segmentation/class/encoded"])
        total += confusion_matrix(truth, ids, len(LABEL_MAP["classes"]))
    assert reference["mean_iou"] == pytest.approx(scores_from_confusion(total)["mean_iou"], abs=1e-12)

    sizes = {}
    for variant, entry in result["variants"].items():
        assert entry["file"] == os.path.join(str(semantic["work"] / "tflite"), on_device.TFLITE_FILE[variant])
        assert os.path.getsize(entry["file"]) == entry["size_bytes"] > 0
        sizes[variant] = entry["size_bytes"]
        assert entry["metrics"]["num_images"] == NUM_EVAL
        assert entry["drop"]["mean_iou"] == pytest.approx(reference["mean_iou"] - entry["metrics"]["mean_iou"])
        assert entry["blessed"] == (entry["drop"]["mean_iou"] <= 0.015), entry["reason"]
        assert entry["reason"].startswith("blessed" if entry["blessed"] else "not blessed")
        assert entry["ops"]["select_tf_ops"] == []
        assert entry["convert_seconds"] > 0 and entry["eval_seconds"] > 0
        meta = on_device.read_metadata(entry["file"])
        assert meta["task"] == "semantic" and meta["image_size"] == SIZE and meta["variant"] == variant
        assert meta["label_map"] == LABEL_MAP and meta["signature"] == on_device.TFLITE_SIGNATURE
        assert meta["inputs"] == {"image": {"shape": [1, *SIZE, 3], "dtype": "uint8"}}
    # int8 weights take a quarter of float32's bytes, float16's half
    assert sizes["int8"] < sizes["float16"]

    # The int8 model is full-integer: uint8 image in, int8 convolutions inside.
    interpreter = tf.lite.Interpreter(model_path=result["variants"]["int8"]["file"])
    runner = interpreter.get_signature_runner(on_device.TFLITE_SIGNATURE)
    assert runner.get_input_details()["image"]["dtype"] == np.uint8
    assert runner.get_output_details()["logits"]["dtype"] == np.float32
    assert any(d["dtype"] == np.int8 for d in interpreter.get_tensor_details())
    assert result["variants"]["int8"]["supported_ops"][0] == "TFLITE_BUILTINS_INT8"


def test_test_time_flip_is_in_every_exported_form(semantic):
    """serving_flip: the SavedModel's on-device signature and both .tflite files answer a mirrored
    image with the mirrored logits (the plain model does not: see test_semantic_trainer)."""
    image = np.random.default_rng(0).integers(0, 256, size=(1, *SIZE, 3)).astype(np.uint8)
    mirror = image[:, :, ::-1].copy()
    signature = tf.saved_model.load(semantic["model"]).signatures[on_device.TFLITE_SIGNATURE]
    logits = signature(image=tf.constant(image))["logits"].numpy()
    np.testing.assert_allclose(signature(image=tf.constant(mirror))["logits"].numpy()[:, :, ::-1], logits,
                               atol=1e-4)
    for variant in on_device.VARIANTS:
        runner = tf.lite.Interpreter(model_path=semantic["result"]["variants"][variant]["file"]) \
            .get_signature_runner(on_device.TFLITE_SIGNATURE)
        got, got_mirror = runner(image=image)["logits"], runner(image=mirror)["logits"][:, :, ::-1]
        # int8 rounds the two halves of the batch alike, float16 too: a mirrored answer up to rounding
        np.testing.assert_allclose(got_mirror, got, atol=0.05 * float(np.abs(got).max()) + 1e-4)


def test_saved_model_mean_iou_is_the_evaluators(semantic, tmp_path):
    """TFMA with the Evaluator's SemanticSegmentationIoU metric over the same raw eval examples gives
    the SavedModel's mIoU that export_and_evaluate reports (the drops compare like with like)."""
    import tensorflow_model_analysis as tfma

    from pipelines.sample_data import SEMANTIC_CLASSES
    from trainer_module.metrics.segmentation import metric_config

    data = str(tmp_path / "eval.tfrecord")
    with tf.io.TFRecordWriter(data) as writer:
        for example in semantic["examples"]:
            writer.write(serialize(example))
    eval_config = tfma.EvalConfig(
        model_specs=[tfma.ModelSpec(signature_name="serving_default")],
        metrics_specs=[tfma.MetricsSpec(metrics=[metric_config(len(SEMANTIC_CLASSES), SEMANTIC_CLASSES)])],
        slicing_specs=[tfma.SlicingSpec()])
    shared = tfma.default_eval_shared_model(eval_saved_model_path=semantic["model"], eval_config=eval_config)
    tfma.run_model_analysis(eval_shared_model=shared, eval_config=eval_config, data_location=data,
                            output_path=str(tmp_path / "tfma"), file_format="tfrecords")
    (slice_key, by_output), = tfma.load_eval_result(str(tmp_path / "tfma")).slicing_metrics
    tfma_mean_iou = by_output[""][""]["mean_iou"]["doubleValue"]
    assert tfma_mean_iou == pytest.approx(semantic["result"]["saved_model"]["mean_iou"], abs=1e-9)


def _sample_images(semantic) -> list[bytes]:
    """The eval JPEGs (various sizes) and one as PNG."""
    images = [e[IMAGE_ENCODED] for e in semantic["examples"]]
    buf = io.BytesIO()
    semantic["examples"][0]["image_pil"].save(buf, format="PNG")
    return images + [buf.getvalue()]


def test_tflite_predictions_match_the_saved_model(semantic):
    images = _sample_images(semantic)
    reference = on_device.load_predictor(semantic["model"])
    assert reference.task == "semantic" and reference.label_map == LABEL_MAP
    expected = reference.predict_images(images)["class_ids"]
    padding = expected == IGNORE_LABEL
    assert padding.any()  # the batch mixes sizes
    for variant in on_device.VARIANTS:
        model = on_device.load_predictor(semantic["result"]["variants"][variant]["file"])
        assert isinstance(model, on_device.TFLiteModel)
        assert (model.task, model.image_size, model.label_map) == ("semantic", SIZE, LABEL_MAP)
        got = model.predict_images(images)
        assert set(got) == {"class_ids"}
        ids = got["class_ids"]
        assert ids.dtype == expected.dtype == np.int32 and ids.shape == expected.shape
        np.testing.assert_array_equal(ids == IGNORE_LABEL, padding)  # same sizes, same padding
        agreement = float(np.mean(ids[~padding] == expected[~padding]))
        if variant == "float16":
            # float16 weights and a uint8-rounded input (half a grey level): the argmax changes
            # only at near-ties.
            assert agreement >= 0.99, agreement
        else:
            # int8 activations carry ~1/256 of each tensor's range as error; after six training
            # steps the logits of neighbouring classes are often close, so pixels at near-ties flip.
            # Measured ~99.5% on this model; 90% leaves room for a different build's rounding while
            # still catching a broken quantisation (wrong input scale, mis-ordered channels: ~1/C).
            assert agreement >= 0.90, agreement
        # one image at a time gives the same as the batch (cropped to its size)
        single = model.predict_images(images[1:2])["class_ids"][0]
        h, w = single.shape
        np.testing.assert_array_equal(single, ids[1][:h, :w])


def test_bench_infer_times_saved_model_and_both_variants(semantic):
    """`segpipe bench infer`: one JSON-able result per format, at the model's own size; a SavedModel
    or a .tflite cannot be timed at another size (both have static shapes)."""
    from components.errors import InputError
    from pipelines.bench_infer import benchmark

    saved = benchmark(semantic["model"], seconds=0.2, threads=1)
    assert saved["format"] == "saved_model" and saved["image_size"] == SIZE and saved["runs"] >= 5
    for variant, entry in semantic["result"]["variants"].items():
        timed = benchmark(entry["file"], seconds=0.2, threads=1, image_size=SIZE)
        assert (timed["format"], timed["precision"], timed["image_size"]) == ("tflite", variant, SIZE)
        assert timed["size_bytes"] == entry["size_bytes"] and 0 < timed["p50_ms"] <= timed["p90_ms"]
    for static in (semantic["model"], semantic["result"]["variants"]["int8"]["file"]):
        for other in (SIZE[::-1], SIZE[1]):  # transposed, or the square of one side
            with pytest.raises(InputError, match=f"takes {SIZE[0]}x{SIZE[1]} images"):
                benchmark(static, image_size=other, seconds=0.2)


def test_gate_function():
    ok, drops, reason = on_device.gate({"box_ap": 0.5, "mask_ap": 0.4}, {"box_ap": 0.49, "mask_ap": 0.35},
                                       {"box_ap": 0.02, "mask_ap": 0.02})
    assert not ok and drops == pytest.approx({"box_ap": 0.01, "mask_ap": 0.05})
    assert "mask_ap dropped 0.0500" in reason and "box_ap dropped" not in reason
    ok, drops, reason = on_device.gate({"mean_iou": 0.5}, {"mean_iou": 0.51}, {"mean_iou": 0.015})
    assert ok and drops["mean_iou"] == pytest.approx(-0.01) and reason.startswith("blessed")
    ok, _, reason = on_device.gate({"mean_iou": 0.5}, {"mean_iou": float("nan")}, {"mean_iou": 0.015})
    assert not ok and "not available" in reason


def test_a_model_without_the_tflite_signature_is_not_blessed_and_does_not_crash(semantic, tmp_path):
    """A SavedModel with serving_images only (as exported before serving_tflite existed)."""

    class Constant(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
        def serving_images(self, images):
            shape = tf.shape(tf.io.decode_image(images[0], channels=3, expand_animations=False))
            return {"class_ids": tf.zeros([tf.shape(images)[0], shape[0], shape[1]], tf.int32)}

    module = Constant()
    tf.saved_model.save(module, str(tmp_path / "model"), signatures={"serving_images": module.serving_images})
    result = on_device.export_and_evaluate(
        str(tmp_path / "model"), semantic["paths"]["train_files"], [semantic["raw_eval"]], str(tmp_path / "out"),
        {"task": "semantic", "label_map": LABEL_MAP, "max_eval_examples": 1})
    assert result["saved_model"]["num_images"] == 1
    for entry in result["variants"].values():
        assert entry["blessed"] is False and entry["file"] is None
        assert "serving_tflite" in entry["reason"]


def test_predict_with_a_tflite_model_writes_what_the_saved_model_writes(semantic, tmp_path):
    from pipelines.predict import predict

    images_dir = tmp_path / "images"
    images_dir.mkdir()
    for i, data in enumerate(_sample_images(semantic)):
        suffix = ".png" if data.startswith(b"\x89PNG") else ".jpg"
        (images_dir / f"{i:04d}{suffix}").write_bytes(data)
    by_saved = predict(semantic["model"], images_dir, tmp_path / "saved", overlay=True)
    tflite = semantic["result"]["variants"]["float16"]["file"]
    by_tflite = predict(tflite, images_dir, tmp_path / "tflite", overlay=True)
    assert by_tflite["model"] == tflite
    assert {k: v for k, v in by_tflite.items() if k not in ("model", "out")} == \
        {k: v for k, v in by_saved.items() if k not in ("model", "out")}
    files = sorted(p.name for p in (tmp_path / "saved").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "tflite").iterdir())
    for name in files:
        if name.endswith(".png"):
            a = Image.open(tmp_path / "saved" / name)
            b = Image.open(tmp_path / "tflite" / name)
            assert a.mode == b.mode == "P" and a.size == b.size and a.getpalette() == b.getpalette()
            assert np.mean(np.asarray(a) == np.asarray(b)) >= 0.99


# ---------------------------------------------------------------------------------------------
# Instance


@pytest.fixture(scope="module")
def instance(tmp_path_factory, run_transform):
    """A 4-step Mask R-CNN (64 px) exported by run_fn on the COCO sample data."""
    from test_mask_rcnn_trainer import ingest_and_transform
    from tfx.components.trainer.fn_args_utils import FnArgs

    from trainer_module.run import run_fn

    work = tmp_path_factory.mktemp("tflite_instance")
    data = ingest_and_transform(work, run_transform)
    raw, paths, config, label_map = data["raw"], data["paths"], data["config"], data["label_map"]
    serving = str(work / "serving")
    run_fn(FnArgs(train_files=paths["train_files"], eval_files=paths["eval_files"],
                  transform_output=paths["transform_output"], serving_model_dir=serving,
                  model_run_dir=str(work / "model_run"), train_steps=4, eval_steps=0, custom_config=config))
    return {"work": work, "model": serving, "paths": paths, "label_map": label_map, "raw": raw,
            "raw_eval": sorted(str(p) for p in (work / "ingested" / "Split-val").glob("*.gz"))}


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def test_instance_signature_on_the_host_equals_serving_images(instance):
    """serving_tflite run by TensorFlow with the host's pre- and post-processing (instance/tflite.py)
    gives serving_images' outputs, so the on-device graph and the host code are right whatever the
    converter does. The images' longer side is the model's 64 px, so the canvas is the image itself
    and its uint8 rounding loses nothing: the two paths see the same pixels."""
    from trainer_module.instance import tflite as host

    loaded = tf.saved_model.load(instance["model"])
    signature = loaded.signatures[on_device.TFLITE_SIGNATURE]
    val = [tf.train.Example.FromString(r).features.feature[IMAGE_ENCODED].bytes_list.value[0]
           for r in instance["raw"]["val"][:2]]
    images = [_png(np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize(size)))
              for data, size in zip(val, [(64, 48), (40, 64)])]  # PIL sizes are (width, height)
    expected = {k: v.numpy() for k, v in loaded.signatures["serving_images"](images=tf.constant(images)).items()}
    outputs, contexts = [], []
    for data in images:
        inputs, context = host.prepare(data, 64)
        assert inputs["image"].dtype == np.uint8 and inputs["image"].shape == (1, 64, 64, 3)
        outputs.append({k: v.numpy() for k, v in signature(**{k: tf.constant(v) for k, v in inputs.items()}).items()})
        contexts.append(context)
    np.testing.assert_array_equal(contexts[0][0], (48, 64))
    got = host.finish(outputs, contexts)
    assert set(got) == set(expected)
    for key in expected:
        assert got[key].dtype == expected[key].dtype and got[key].shape == expected[key].shape, key
    np.testing.assert_array_equal(got["num_detections"], expected["num_detections"])
    np.testing.assert_array_equal(got["detection_classes"], expected["detection_classes"])
    np.testing.assert_allclose(got["detection_scores"], expected["detection_scores"], atol=1e-4)
    np.testing.assert_allclose(got["detection_boxes"], expected["detection_boxes"], atol=1e-4)
    assert np.mean(got["detection_masks"] == expected["detection_masks"]) >= 0.999


def test_instance_float16_conversion_evaluates_and_predicts_like_the_saved_model(instance):
    result = on_device.export_and_evaluate(
        instance["model"], instance["paths"]["train_files"], instance["raw_eval"], str(instance["work"] / "tflite"),
        {"task": "instance", "label_map": instance["label_map"], "variants": ["float16"]})
    entry = result["variants"]["float16"]
    # With branch mrcnn-tflite merged, TFLite builtins only; without it Mask R-CNN converted through a
    # TF Select op (6-D StridedSlice): either way recorded, and the Python runtime runs both.
    assert entry["file"], entry["reason"]
    assert ("SELECT_TF_OPS" in entry["supported_ops"]) == bool(entry["ops"]["select_tf_ops"])
    assert set(entry["metrics"]) >= {"box_ap", "mask_ap"} and set(entry["drop"]) == {"box_ap", "mask_ap"}
    model = on_device.load_predictor(entry["file"])
    assert model.task == "instance" and model.label_map == instance["label_map"]
    images = [tf.train.Example.FromString(r).features.feature[IMAGE_ENCODED].bytes_list.value[0]
              for r in instance["raw"]["val"][:1]]
    expected = on_device.load_predictor(instance["model"]).predict_images(images)
    got = model.predict_images(images)
    for key in expected:
        assert got[key].dtype == expected[key].dtype and got[key].shape == expected[key].shape, key
    # After four training steps many scores sit near the 0.05 threshold, so the count may move by
    # a detection or two with float16 weights and the uint8 input; the gate judges the quality.
    assert 0 <= int(got["num_detections"][0]) <= got["detection_scores"].shape[1]

    # segpipe predict on the .tflite writes what it writes for the SavedModel.
    from pipelines.predict import predict

    images_dir = instance["work"] / "predict_images"
    images_dir.mkdir()
    for i, data in enumerate(images):
        (images_dir / f"{i + 1:04d}.jpg").write_bytes(data)
    by_saved = predict(instance["model"], images_dir, instance["work"] / "by_saved", overlay=True)
    by_tflite = predict(entry["file"], images_dir, instance["work"] / "by_tflite", overlay=True)
    assert by_tflite["task"] == by_saved["task"] == "instance" and by_tflite["overlays"] == by_saved["overlays"]
    assert sorted(p.name for p in (instance["work"] / "by_tflite").iterdir()) == \
        sorted(p.name for p in (instance["work"] / "by_saved").iterdir())
    assert (instance["work"] / "by_tflite" / "image_ids.json").read_text() == \
        (instance["work"] / "by_saved" / "image_ids.json").read_text()
    detections = json.loads((instance["work"] / "by_tflite" / "detections.json").read_text())
    ids = {c["id"] for c in instance["label_map"]["classes"]}
    assert len(detections) == int(got["num_detections"][0])
    for d in detections:
        assert d["image_id"] == 1 and d["category_id"] in ids and set(d) == {"image_id", "category_id", "bbox",
                                                                            "score", "segmentation"}
