"""Semantic on-device model, host side (trainer_module.on_device; instance/tflite.py has the same names):
the uint8 input of `serving_tflite` from encoded images, its logits back to `serving_images`'
class_ids, representative inputs from Transform's output, and evaluation on raw eval examples
(mIoU with metrics/iou.py, as the Evaluator's SemanticSegmentationIoU computes it)."""
from __future__ import annotations

import numpy as np

from components.contract import CLASS_MAP_ENCODED, IMAGE_ENCODED, image_hw, semantic_num_classes
from trainer_module.on_device import _tf, to_uint8

TFLITE_OUTPUTS = ["logits"]
BATCH_SIZE = 8  # images per predict_images call when evaluating (pipelines/predict.py uses 8 too)


def prepare(encoded: bytes, image_size) -> tuple[dict, tuple[int, int]]:
    """(signature inputs {"image": uint8 [1, H, W, 3]}, original (height, width)): the image
    resized by Transform's own `decode_images`, rounded to uint8; the size read as serving does."""
    tf = _tf()
    from trainer_module.semantic.export import _image_sizes
    from trainer_module.semantic.preprocessing import decode_images

    batch = tf.constant([encoded])
    heights, widths = _image_sizes(batch)
    return {"image": to_uint8(decode_images(batch, image_size).numpy())}, (int(heights[0]), int(widths[0]))


def finish(outputs: list[dict], contexts: list[tuple[int, int]]) -> dict:
    """Per-image signature outputs -> {"class_ids": int32 [B, Hmax, Wmax]} by the SavedModel's own
    `predict_class_ids` (bilinear resize of the logits to each original size, argmax, IGNORE_LABEL
    padding)."""
    tf = _tf()
    from trainer_module.semantic.export import predict_class_ids

    logits = tf.constant(np.concatenate([o["logits"] for o in outputs]).astype(np.float32))
    heights = tf.constant([c[0] for c in contexts], tf.int32)
    widths = tf.constant([c[1] for c in contexts], tf.int32)
    return {"class_ids": predict_class_ids(logits, heights, widths).numpy()}


def representative_inputs(train_files: list[str], image_size, count: int):
    """Up to `count` signature inputs from Transform's transformed train examples: the normalised
    image turned back into the uint8 input (x * std + mean, rounded)."""
    tf = _tf()
    from trainer_module.training import tfrecord_dataset

    spec = {"image": tf.io.FixedLenFeature([*image_hw(image_size), 3], tf.float32),
            "pixel_mean": tf.io.FixedLenFeature([3], tf.float32),
            "pixel_std": tf.io.FixedLenFeature([3], tf.float32)}
    for record in tfrecord_dataset(train_files).take(int(count)):
        f = {k: v.numpy() for k, v in tf.io.parse_single_example(record, spec).items()}
        yield {"image": to_uint8(f["image"] * f["pixel_std"] + f["pixel_mean"])[None]}


def read_eval_examples(eval_files: list[str], max_examples: int | None = None):
    """(encoded image bytes, ground-truth class map uint8 [H, W]) per raw eval example."""
    from components.example_codec import decode_png, parse_example
    from components.paths import tfrecord_files
    from trainer_module.metrics.coco_eval import read_serialized

    for i, serialized in enumerate(read_serialized(tfrecord_files(list(eval_files), "eval examples"))):
        if max_examples is not None and i >= int(max_examples):
            return
        ex = parse_example(serialized)
        yield ex[IMAGE_ENCODED][0], decode_png(ex[CLASS_MAP_ENCODED][0])


def evaluate(predictor, eval_files: list[str], label_map: dict, max_examples: int | None = None,
             batch_size: int = BATCH_SIZE) -> dict:
    """{"mean_iou", "pixel_accuracy", "iou": {class id: IoU}, "num_images"}: per-example confusion
    matrices of the predicted class_ids against the ground-truth class map (IGNORE_LABEL not counted),
    summed, then scored: what the Evaluator's SemanticSegmentationIoU does."""
    from trainer_module.metrics.iou import confusion_matrix, scores_from_confusion

    num_classes = semantic_num_classes(label_map)
    total = np.zeros((num_classes, num_classes), np.int64)
    count = 0
    batch: list = []

    def flush():
        nonlocal total, count
        ids = predictor.predict_images([data for data, _ in batch])["class_ids"]
        for (_, truth), prediction in zip(batch, ids):
            total += confusion_matrix(truth, prediction, num_classes)
            count += 1
        batch.clear()

    for item in read_eval_examples(eval_files, max_examples):
        batch.append(item)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    scores = scores_from_confusion(total)
    return {"mean_iou": scores["mean_iou"], "pixel_accuracy": scores["pixel_accuracy"],
            "iou": scores["iou"], "num_images": count}
