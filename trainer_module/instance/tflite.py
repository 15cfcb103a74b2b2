"""Instance on-device model, host side (trainer_module.on_device; semantic/tflite.py has the same names):
the uint8 canvas (+ its resized size) of `serving_tflite` from encoded images, its canvas detections
back to `serving_images`' outputs, representative inputs from Transform's output, and evaluation on
raw eval examples (COCO box and mask AP with metrics/coco_eval.py, as the Evaluator's
InstanceSegmentationAP computes them)."""
from __future__ import annotations

import numpy as np

from components.contract import IMAGE_ENCODED
from trainer_module.on_device import _tf, to_uint8

TFLITE_OUTPUTS = ["detection_boxes", "detection_scores", "detection_classes", "detection_mask_probs",
                  "num_detections"]
BATCH_SIZE = 1  # masks are [D, H, W] per image: one image per call bounds memory (as pipelines/predict.py)


def prepare(encoded: bytes, image_size: int) -> tuple[dict, tuple]:
    """(signature inputs {"image": uint8 [1, S, S, 3] canvas, "resized_size": int32 [1, 2]},
    (resized (h, w), original (h, w))): the image decoded and placed on the canvas by Transform's own
    `decode_rgb` and `resize_and_pad`, rounded to uint8."""
    tf = _tf()
    from trainer_module.instance.preprocessing import decode_rgb, resize_and_pad

    image = decode_rgb(tf.constant(encoded))
    canvas, (new_h, new_w) = resize_and_pad(image, int(image_size))
    resized = (int(new_h), int(new_w))
    original = tuple(int(v) for v in image.shape[:2])
    return ({"image": to_uint8(canvas.numpy())[None], "resized_size": np.array([resized], np.int32)},
            (resized, original))


def finish(outputs: list[dict], contexts: list[tuple]) -> dict:
    """Per-image signature outputs -> serving_images' outputs for the batch, through the SavedModel's
    own `to_original_image` (boxes normalised to the original image, masks pasted at its size)."""
    tf = _tf()
    from trainer_module.instance.export import to_original_image

    def stack(key, dtype):
        return np.concatenate([np.asarray(o[key]) for o in outputs]).astype(dtype)

    resized = tf.constant([c[0] for c in contexts], tf.int32)
    original = tf.constant([c[1] for c in contexts], tf.int32)
    boxes, masks = to_original_image(tf.constant(stack("detection_boxes", np.float32)),
                                     tf.constant(stack("detection_mask_probs", np.float32)), resized, original)
    return {"detection_boxes": boxes.numpy(), "detection_scores": stack("detection_scores", np.float32),
            "detection_classes": stack("detection_classes", np.int64), "detection_masks": masks.numpy(),
            "num_detections": stack("num_detections", np.int32).reshape(-1)}


def representative_inputs(train_files: list[str], image_size: int, count: int):
    """Up to `count` signature inputs from Transform's transformed train examples: the normalised
    canvas turned back into the uint8 input (x * std + mean, rounded; the padding zero as the host's
    canvas has it) and its resized size."""
    tf = _tf()
    from trainer_module.training import tfrecord_dataset

    s = int(image_size)
    spec = {"image": tf.io.FixedLenFeature([s, s, 3], tf.float32),
            "resized_size": tf.io.FixedLenFeature([2], tf.int64),
            "pixel_mean": tf.io.FixedLenFeature([3], tf.float32),
            "pixel_std": tf.io.FixedLenFeature([3], tf.float32)}
    for record in tfrecord_dataset(train_files).take(int(count)):
        f = {k: v.numpy() for k, v in tf.io.parse_single_example(record, spec).items()}
        h, w = (int(v) for v in f["resized_size"])
        canvas = np.zeros([s, s, 3], np.float32)
        canvas[:h, :w] = f["image"][:h, :w] * f["pixel_std"] + f["pixel_mean"]
        yield {"image": to_uint8(canvas)[None], "resized_size": np.array([[h, w]], np.int32)}


def read_eval_examples(eval_files: list[str], max_examples: int | None = None):
    """Serialized raw eval examples (the ground truth is rebuilt from them by coco_eval)."""
    from components.paths import tfrecord_files
    from trainer_module.metrics.coco_eval import read_serialized

    for i, serialized in enumerate(read_serialized(tfrecord_files(list(eval_files), "eval examples"))):
        if max_examples is not None and i >= int(max_examples):
            return
        yield serialized


def evaluate(predictor, eval_files: list[str], label_map: dict, max_examples: int | None = None,
             batch_size: int = BATCH_SIZE) -> dict:
    """{"box_ap", "box_ap50", "mask_ap", "mask_ap50", "num_images"}: ground truth rebuilt from the raw
    examples by `coco_eval.ground_truth_from_examples`, each image's detections (classes already
    category ids, masks cropped to the image) by `coco_eval.detections_to_coco`, scored by
    `coco_eval.evaluate`: what the Evaluator's InstanceSegmentationAP does."""
    from components.example_codec import parse_example
    from trainer_module.metrics import coco_eval

    serialized = list(read_eval_examples(eval_files, max_examples))
    ground_truth = coco_eval.ground_truth_from_examples(serialized, label_map)
    detections = []
    for start in range(0, len(serialized), batch_size):
        chunk = serialized[start:start + batch_size]
        images = ground_truth["images"][start:start + batch_size]
        out = predictor.predict_images([parse_example(s)[IMAGE_ENCODED][0] for s in chunk])
        for i, image in enumerate(images):
            count = int(np.asarray(out["num_detections"]).reshape(-1)[i])
            height, width = int(image["height"]), int(image["width"])
            detections += coco_eval.detections_to_coco(
                image["id"], height, width, np.asarray(out["detection_boxes"][i])[:count],
                np.asarray(out["detection_scores"][i])[:count],
                np.asarray(out["detection_classes"][i]).astype(np.int64)[:count],
                masks=np.asarray(out["detection_masks"][i])[:count, :height, :width])
    box, mask = (coco_eval.evaluate(ground_truth, detections, t) for t in ("bbox", "segm"))
    return {"box_ap": box["AP"], "box_ap50": box["AP50"], "mask_ap": mask["AP"], "mask_ap50": mask["AP50"],
            "num_images": len(serialized), "num_detections": len(detections)}
