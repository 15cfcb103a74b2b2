"""`segpipe predict` on tiny SavedModels built here (test fixtures with known outputs), and the
PIL visualisations it uses."""
import json
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from pycocotools import mask as mask_utils

from components.contract import IGNORE_LABEL
from components.errors import InputError
from pipelines import visualize
from pipelines.predict import predict
from pipelines.visualize import voc_palette

MAX_DETECTIONS = 5


class _ThresholdSegmenter(tf.Module):
    """class_ids = (R > 127) + 2 * (G > 127), at each image's size, padded with IGNORE_LABEL per batch."""

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
    def serving_images(self, images):
        def one(encoded):
            rgb = tf.cast(tf.io.decode_image(encoded, channels=3, expand_animations=False), tf.int32)
            return tf.cast(rgb[..., 0] > 127, tf.int32) + 2 * tf.cast(rgb[..., 1] > 127, tf.int32)

        shapes = tf.map_fn(lambda b: tf.shape(tf.io.decode_image(b, channels=3, expand_animations=False))[:2],
                           images, fn_output_signature=tf.int32)
        max_h, max_w = tf.reduce_max(shapes[:, 0]), tf.reduce_max(shapes[:, 1])

        def padded(encoded):
            ids = one(encoded)
            shape = tf.shape(ids)
            return tf.pad(ids, [[0, max_h - shape[0]], [0, max_w - shape[1]]], constant_values=IGNORE_LABEL)

        return {"class_ids": tf.map_fn(padded, images, fn_output_signature=tf.TensorSpec([None, None], tf.int32))}


class _QuadrantDetector(tf.Module):
    """Two fixed detections per image: the top-left quadrant (category 7, score 0.9) and the
    bottom-right quadrant (category 3, score 0.6), with their masks; padded to MAX_DETECTIONS."""

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
    def serving_images(self, images):
        shapes = tf.map_fn(lambda b: tf.shape(tf.io.decode_image(b, channels=3, expand_animations=False))[:2],
                           images, fn_output_signature=tf.int32)
        max_h, max_w = tf.reduce_max(shapes[:, 0]), tf.reduce_max(shapes[:, 1])
        batch = tf.shape(images)[0]
        pad = MAX_DETECTIONS - 2
        boxes = tf.constant([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]] + [[0.0] * 4] * pad)
        scores = tf.constant([0.9, 0.6] + [0.0] * pad)
        classes = tf.constant([7.0, 3.0] + [0.0] * pad)

        def masks_for(shape):
            h, w = shape[0], shape[1]
            rows = tf.range(max_h)[:, None]
            cols = tf.range(max_w)[None, :]
            top_left = tf.logical_and(rows < h // 2, cols < w // 2)
            bottom_right = tf.logical_and(tf.logical_and(rows >= h // 2, rows < h),
                                          tf.logical_and(cols >= w // 2, cols < w))
            masks = tf.stack([top_left, bottom_right] + [tf.zeros_like(top_left)] * pad)
            return tf.cast(masks, tf.uint8)

        return {
            "detection_boxes": tf.tile(boxes[None], [batch, 1, 1]),
            "detection_scores": tf.tile(scores[None], [batch, 1]),
            "detection_classes": tf.tile(classes[None], [batch, 1]),
            "detection_masks": tf.map_fn(masks_for, shapes, fn_output_signature=tf.uint8),
            "num_detections": tf.fill([batch], 2),
        }


def _save(module, path):
    tf.saved_model.save(module, str(path), signatures={"serving_images": module.serving_images})
    return str(path)


def _random_images(directory, sizes, suffix=".png", seed=0):
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for i, (h, w) in enumerate(sizes):
        rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        name = f"{i:06d}{suffix}" if isinstance(suffix, str) else f"{i:06d}{suffix[i]}"
        Image.fromarray(rgb).save(directory / name)
        arrays[name] = rgb
    return arrays


def test_semantic_predict_writes_class_pngs_at_original_size(tmp_path):
    model = _save(_ThresholdSegmenter(), tmp_path / "model")
    arrays = _random_images(tmp_path / "images", [(40, 52), (33, 47), (64, 30)])
    (tmp_path / "images" / "broken.jpg").write_bytes(b"not an image at all")
    Image.fromarray(np.full((20, 24, 3), 200, np.uint8)).save(tmp_path / "images" / "photo.jpg")
    result = predict(model, tmp_path / "images", tmp_path / "out", overlay=True)
    assert result["task"] == "semantic" and result["images"] == 4 and result["masks_written"] == 4
    assert [s["file"] for s in result["skipped"]] == ["broken.jpg"]
    for name, rgb in arrays.items():
        stem = name.split(".")[0]
        png = Image.open(tmp_path / "out" / f"{stem}.png")
        assert png.mode == "P" and png.size == (rgb.shape[1], rgb.shape[0])
        expected = (rgb[..., 0] > 127).astype(np.uint8) + 2 * (rgb[..., 1] > 127)
        assert np.array_equal(np.asarray(png), expected)
        overlay = Image.open(tmp_path / "out" / f"{stem}_overlay.jpg")
        assert overlay.size == png.size
    assert Image.open(tmp_path / "out" / "photo.png").size == (24, 20)
    assert result["overlays"] == 4


def test_instance_predict_writes_coco_results(tmp_path):
    from trainer_module.metrics.coco_eval import evaluate

    model = _save(_QuadrantDetector(), tmp_path / "model")
    sizes = [(40, 60), (52, 36)]
    arrays = _random_images(tmp_path / "images", sizes, suffix=[".png", ".jpg"])
    names = sorted(arrays)
    coco = {"images": [{"id": 100 + i, "file_name": f"JPEGImages/{n}", "height": h, "width": w}
                       for i, (n, (h, w)) in enumerate(zip(names, sizes))],
            "categories": [{"id": 3, "name": "circle"}, {"id": 7, "name": "square"}],
            "annotations": []}
    for image in coco["images"]:  # ground truth = exactly the two quadrants the model returns
        h, w = image["height"], image["width"]
        for category, (y0, x0) in ((7, (0, 0)), (3, (h // 2, w // 2))):
            mask = np.zeros((h, w), np.uint8)
            mask[y0:y0 + (h // 2 if y0 == 0 else h - y0), x0:x0 + (w // 2 if x0 == 0 else w - x0)] = 1
            rle = mask_utils.encode(np.asfortranarray(mask))
            rle["counts"] = rle["counts"].decode()
            coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": image["id"],
                                        "category_id": category, "segmentation": rle, "iscrowd": 0,
                                        "area": float(mask.sum()),
                                        "bbox": [float(v) for v in mask_utils.toBbox(rle)]})
    annotations = tmp_path / "instances.json"
    annotations.write_text(json.dumps(coco))
    out = tmp_path / "out"
    result = predict(model, tmp_path / "images", out, annotations=str(annotations), overlay=True)
    assert result["task"] == "instance" and result["images"] == 2 and result["detections"] == 4
    detections = json.loads((out / "detections.json").read_text())
    assert {d["image_id"] for d in detections} == {100, 101}
    first = [d for d in detections if d["image_id"] == 100]
    h, w = sizes[0]
    assert first[0]["category_id"] == 7 and first[0]["score"] == pytest.approx(0.9)
    assert first[0]["bbox"] == pytest.approx([0, 0, w / 2, h / 2])
    decoded = mask_utils.decode(first[0]["segmentation"])
    assert decoded.shape == (h, w) and decoded[: h // 2, : w // 2].all() and decoded.sum() == (h // 2) * (w // 2)
    segm = evaluate(coco, detections, "segm")
    assert segm["AP"] == pytest.approx(1.0)
    assert evaluate(coco, detections, "bbox")["AP50"] == pytest.approx(1.0)
    for name in names:
        assert Image.open(out / f"{name.split('.')[0]}_overlay.jpg").size == Image.open(tmp_path / "images" / name).size

    # Without annotations: integer stems are the ids; other names get numbers above them.
    (tmp_path / "images" / "extra.png").write_bytes((tmp_path / "images" / names[0]).read_bytes())
    result = predict(model, tmp_path / "images", tmp_path / "out2")
    ids = json.loads((tmp_path / "out2" / "image_ids.json").read_text())
    assert ids == {names[0]: 0, names[1]: 1, "extra.png": 2}
    with pytest.raises(InputError, match="not in"):
        predict(model, tmp_path / "images", tmp_path / "out3", annotations=str(annotations))


def test_bad_model_and_folder(tmp_path):
    _random_images(tmp_path / "images", [(8, 8)])
    with pytest.raises(InputError, match="SavedModel"):
        predict(str(tmp_path), tmp_path / "images", tmp_path / "o")
    (tmp_path / "empty").mkdir()
    model = _save(_ThresholdSegmenter(), tmp_path / "model")
    with pytest.raises(InputError, match="no images"):
        predict(model, tmp_path / "empty", tmp_path / "o")


def test_overlay_blends_only_labelled_pixels():
    image = np.full((4, 5, 3), 100, np.uint8)
    ids = np.array([[0, 1, IGNORE_LABEL, 2, 0]] * 4)
    out = np.asarray(visualize.overlay(image, ids, alpha=0.5))
    palette = np.asarray(voc_palette()).reshape(-1, 3)
    assert (out[:, [0, 2, 4]] == 100).all()  # background and ignore untouched
    assert np.allclose(out[0, 1], (100 + palette[1]) / 2, atol=1)
    assert np.allclose(out[0, 3], (100 + palette[2]) / 2, atol=1)
    with pytest.raises(ValueError):
        visualize.overlay(image, ids[:3])


def test_instance_overlay_and_iou_chart():
    image = np.zeros((60, 80, 3), np.uint8)
    masks = np.zeros((1, 60, 80), np.uint8)
    masks[0, 10:30, 20:50] = 1
    picture = np.asarray(visualize.instance_overlay(image, masks, [[20, 10, 50, 30]], [7], [0.87], {7: "square"}))
    assert picture.shape == (60, 80, 3)
    assert picture[20, 35].sum() > 0 and picture[50, 70].sum() == 0  # mask painted, rest untouched
    chart = visualize.per_class_iou_chart(["background", "circle", "a much longer class name"],
                                          [0.95, 0.5, float("nan")], "val mIoU 0.725")
    pixels = np.asarray(chart)
    assert chart.size[0] == 640 and chart.size[1] > 3 * 20
    colored = (pixels.max(axis=2) - pixels.min(axis=2)) > 60  # saturated bar pixels
    rows = np.flatnonzero(colored.any(axis=1))
    lengths = [colored[r].sum() for r in rows]
    assert max(lengths) > 1.7 * min(length for length in lengths if length > 20)  # 0.95 bar ~1.9x the 0.5 bar


def test_tflite_model_errors(tmp_path):
    """A .tflite path that does not exist, and a .tflite that segpipe did not export (no metadata
    record saying its task, size and label map), are refused with a one-line reason. (predict on
    converted models: tests/test_tflite.py.)"""
    _random_images(tmp_path / "images", [(8, 8)])
    with pytest.raises(InputError, match="does not exist"):
        predict(str(tmp_path / "missing.tflite"), tmp_path / "images", tmp_path / "o")

    @tf.function(input_signature=[tf.TensorSpec([1, 4], tf.float32)])
    def double(x):
        return {"y": 2.0 * x}

    converter = tf.lite.TFLiteConverter.from_concrete_functions([double.get_concrete_function()], double)
    foreign = tmp_path / "foreign.tflite"
    foreign.write_bytes(converter.convert())
    with pytest.raises(InputError, match="metadata"):
        predict(str(foreign), tmp_path / "images", tmp_path / "o")
