"""The TFMA mean-IoU metric, through real TFMA runs on a tiny SavedModel built here.

The SavedModel's serving_default parses raw tf.Examples, decodes the label PNG and returns it as
its "prediction" with a known pattern of pixels changed, padded per batch to [Hmax, Wmax] with
IGNORE_LABEL like the real exported models. The expected numbers are computed independently with numpy.
"""
import io
import json
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_model_analysis as tfma
from PIL import Image
from tensorflow_model_analysis.metrics import metric_specs

from components import contract as keys
from components.contract import IGNORE_LABEL
from pipelines import sample_data
from pipelines.pipeline import gate_threshold
from trainer_module.metrics import segmentation
from trainer_module.metrics.iou import confusion_matrix, scores_from_confusion

NUM_CLASSES = len(sample_data.SEMANTIC_CLASSES)
FLIP_MODULUS = 11  # pixels with (3*row + col) % 11 == 0 are predicted as the next class
BLOCK = 6  # the top-left BLOCK x BLOCK pixels are predicted as class 2


def _expected_prediction(label: np.ndarray) -> np.ndarray:
    rows, cols = np.indices(label.shape)
    pred = np.where(label == IGNORE_LABEL, 0, label).astype(np.int64)
    flip = ((3 * rows + cols) % FLIP_MODULUS == 0) & (label != IGNORE_LABEL)
    pred[flip] = (pred[flip] + 1) % NUM_CLASSES
    pred[:BLOCK, :BLOCK] = 2
    return pred


class _LabelEchoModel(tf.Module):
    """serving_default(examples) -> {"class_ids": [batch, Hmax, Wmax]} (+ a second output)."""

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve(self, examples):
        parsed = tf.io.parse_example(examples, {
            keys.IMAGE_HEIGHT: tf.io.FixedLenFeature([], tf.int64),
            keys.IMAGE_WIDTH: tf.io.FixedLenFeature([], tf.int64),
            keys.CLASS_MAP_ENCODED: tf.io.FixedLenFeature([], tf.string)})
        heights = tf.cast(parsed[keys.IMAGE_HEIGHT], tf.int32)
        widths = tf.cast(parsed[keys.IMAGE_WIDTH], tf.int32)
        max_h, max_w = tf.reduce_max(heights), tf.reduce_max(widths)

        def predict_one(encoded):
            label = tf.cast(tf.io.decode_png(encoded, channels=1)[..., 0], tf.int32)
            shape = tf.shape(label)
            rows = tf.range(shape[0])[:, None]
            cols = tf.range(shape[1])[None, :]
            pred = tf.where(label == IGNORE_LABEL, 0, label)
            flip = tf.logical_and((3 * rows + cols) % FLIP_MODULUS == 0, label != IGNORE_LABEL)
            pred = tf.where(flip, (pred + 1) % NUM_CLASSES, pred)
            pred = tf.where(tf.logical_and(rows < BLOCK, cols < BLOCK), 2, pred)
            return tf.pad(pred, [[0, max_h - shape[0]], [0, max_w - shape[1]]], constant_values=IGNORE_LABEL)

        class_ids = tf.map_fn(predict_one, parsed[keys.CLASS_MAP_ENCODED],
                              fn_output_signature=tf.TensorSpec([None, None], tf.int32))
        return {"class_ids": class_ids, "num_pixels": heights * widths}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve_class_ids_only(self, examples):
        """Single output: TFMA hands the metric the bare array instead of a dict."""
        return {"class_ids": self.serve(examples)["class_ids"]}


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array.astype(np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


def _bytes(value: bytes):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int(value: int):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))


@pytest.fixture(scope="module")
def eval_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("segmetric")
    sample_data.write_semantic(root / "voc", num_images=10, image_size=56, seed=11)
    labels = []
    path = str(root / "examples.tfrecord.gz")
    with tf.io.TFRecordWriter(path, options="GZIP") as writer:
        for jpg in sorted((root / "voc" / "JPEGImages").glob("*.jpg")):
            label = np.asarray(Image.open(root / "voc" / "SegmentationClass" / f"{jpg.stem}.png"))
            labels.append(label)
            features = {
                keys.IMAGE_ENCODED: _bytes(jpg.read_bytes()),
                keys.IMAGE_FORMAT: _bytes(b"jpeg"),
                keys.IMAGE_SOURCE_ID: _bytes(jpg.stem.encode()),
                keys.IMAGE_HEIGHT: _int(label.shape[0]),
                keys.IMAGE_WIDTH: _int(label.shape[1]),
                keys.CLASS_MAP_ENCODED: _bytes(_png(label)),
                keys.CLASS_MAP_FORMAT: _bytes(b"png"),
            }
            writer.write(tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString())
    assert len({label.shape for label in labels}) > 1  # padding/cropping is exercised
    model = _LabelEchoModel()
    model_dir = str(root / "model")
    tf.saved_model.save(model, model_dir, signatures={
        "serving_default": model.serve, "class_ids_only": model.serve_class_ids_only})

    matrix = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64)
    for label in labels:
        valid = label != IGNORE_LABEL
        np.add.at(matrix, (label[valid], _expected_prediction(label)[valid]), 1)
    tp = np.diag(matrix).astype(float)
    union = matrix.sum(0) + matrix.sum(1) - tp
    expected = {"iou": {c: tp[c] / union[c] for c in range(NUM_CLASSES) if union[c] > 0},
                "pixel_accuracy": tp.sum() / matrix.sum()}
    expected["mean_iou"] = float(np.mean(list(expected["iou"].values())))
    return root, path, model_dir, expected


def _run(root, path, model_dir, name, threshold=None, signature="serving_default"):
    config = {"num_classes": NUM_CLASSES, "class_names": list(sample_data.SEMANTIC_CLASSES)}
    eval_config = tfma.EvalConfig(
        model_specs=[tfma.ModelSpec(signature_name=signature)],
        metrics_specs=[tfma.MetricsSpec(metrics=[tfma.MetricConfig(
            class_name="SemanticSegmentationIoU", module="trainer_module.metrics.segmentation",
            config=json.dumps(config), threshold=threshold)])],
        slicing_specs=[tfma.SlicingSpec()])
    output = str(root / name)
    shared = tfma.default_eval_shared_model(eval_saved_model_path=model_dir, eval_config=eval_config)
    tfma.run_model_analysis(eval_shared_model=shared, eval_config=eval_config, data_location=path,
                            output_path=output, file_format="tfrecords")
    return output


def _metrics(output):
    result = tfma.load_eval_result(output)
    (slice_key, by_output), = result.slicing_metrics
    assert slice_key == ()
    return {name: value["doubleValue"] for name, value in by_output[""][""].items()}


def test_tfma_mean_iou_matches_numpy(eval_setup):
    root, path, model_dir, expected = eval_setup
    bound = tfma.MetricThreshold(value_threshold=tfma.GenericValueThreshold(
        lower_bound={"value": expected["mean_iou"] - 0.01}))
    output = _run(root, path, model_dir, "pass", bound)
    metrics = _metrics(output)
    assert metrics["mean_iou"] == pytest.approx(expected["mean_iou"], abs=1e-9)
    assert metrics["pixel_accuracy"] == pytest.approx(expected["pixel_accuracy"], abs=1e-9)
    for index, name in enumerate(sample_data.SEMANTIC_CLASSES):
        assert metrics[f"iou/{name}"] == pytest.approx(expected["iou"][index], abs=1e-9)
    assert 0.3 < expected["mean_iou"] < 0.99  # the flips really cost something
    assert tfma.load_validation_result(output).validation_ok


def test_impossible_mean_iou_bound_fails_validation(eval_setup):
    root, path, model_dir, expected = eval_setup
    impossible = tfma.MetricThreshold(value_threshold=tfma.GenericValueThreshold(
        lower_bound={"value": 1.01}))
    output = _run(root, path, model_dir, "fail", impossible, signature="class_ids_only")
    assert _metrics(output)["mean_iou"] == pytest.approx(expected["mean_iou"], abs=1e-9)
    validation = tfma.load_validation_result(output)
    assert not validation.validation_ok
    failed = [f.metric_key.name for m in validation.metric_validations_per_slice for f in m.failures]
    assert failed == ["mean_iou"]


def test_confusion_matrix_crops_padding_and_skips_ignored_pixels():
    truth = np.array([[0, 1, IGNORE_LABEL], [1, 1, 2]], dtype=np.uint8)
    pred = np.full((3, 5), IGNORE_LABEL, dtype=np.int32)
    pred[:2, :3] = [[0, 2, 7], [1, 1, 2]]  # 7 sits on an ignored pixel: not counted
    matrix = confusion_matrix(truth, pred, 3)
    assert matrix.tolist() == [[1, 0, 0], [0, 2, 1], [0, 0, 1]]
    scores = scores_from_confusion(matrix)
    assert scores["iou"] == {0: 1.0, 1: 2 / 3, 2: 0.5}
    assert scores["pixel_accuracy"] == 0.8
    with pytest.raises(ValueError, match="cannot cover"):
        confusion_matrix(truth, pred[:1], 3)
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(truth, np.full((2, 3), 9), 3)


def test_metric_config_carries_the_pipeline_gate():
    config = segmentation.metric_config(5, list(sample_data.SEMANTIC_CLASSES),
                                        threshold=gate_threshold(lower_bound=0.7, max_drop=0.02))
    assert config.module == "trainer_module.metrics.segmentation"
    assert json.loads(config.config)["num_classes"] == 5
    assert config.threshold.value_threshold.lower_bound.value == pytest.approx(0.7)
    assert config.threshold.change_threshold.absolute.value == pytest.approx(-0.02)
    assert config.threshold.change_threshold.direction == tfma.MetricDirection.HIGHER_IS_BETTER
    instance = metric_specs.metric_instance(config)
    assert isinstance(instance, segmentation.SemanticSegmentationIoU) and instance.name == "mean_iou"
