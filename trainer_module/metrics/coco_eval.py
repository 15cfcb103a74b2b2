"""COCO evaluation against ground truth rebuilt from our tf.Examples (pycocotools COCOeval).

Shared by `segpipe evaluate-coco` (`evaluate_examples`), the instance Evaluator metric and
`segpipe predict`. Ground truth comes back out of the examples exactly as ingested: image ids
(`IMAGE_SOURCE_ID`, numeric ids as ints so they match COCO results files), sizes, boxes (absolute
xywh), masks (RLE of the instance PNGs), iscrowd, areas as annotated, and the dataset's category
ids through the label map. Pure python/numpy/pycocotools; TensorFlow only to read TFRecord files.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys

import numpy as np

from components import contract as keys
from components import paths
from components.errors import InputError

BOX_DECIMALS = 2
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl",
              "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def _image_id(source_id: str):
    return int(source_id) if source_id.isdigit() else source_id


def mask_to_rle(mask: np.ndarray) -> dict:
    """COCO compressed RLE of a binary HxW mask, JSON-ready (counts as str)."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def ground_truth_from_examples(serialized_examples, label_map: dict | None = None) -> dict:
    """A COCO ground-truth dataset dict from serialized tf.Examples (the contract's keys).

    label_map (label_map.json contents) maps our labels back to the dataset's category ids;
    without it, category id = label.
    """
    from components.example_codec import decode_png, parse_example

    id_of = keys.id_by_label(label_map) if label_map else None
    images, annotations, names = [], [], {}
    for serialized in serialized_examples:
        ex = parse_example(serialized)
        height, width = ex[keys.IMAGE_HEIGHT][0], ex[keys.IMAGE_WIDTH][0]
        image_id = _image_id(ex[keys.IMAGE_SOURCE_ID][0].decode())
        images.append({"id": image_id, "height": height, "width": width,
                       "file_name": ex[keys.IMAGE_FILENAME][0].decode()})
        labels = ex.get(keys.OBJECT_LABEL, [])
        for i, label in enumerate(labels):
            # Normalised float32 coordinates carry ~1e-4 px of error, enough to flip an IoU that
            # sits exactly on a COCOeval threshold; COCO boxes are given to 2 decimals, so
            # rounding to 2 decimals restores them exactly (and moves others < 0.005 px).
            x0 = round(float(ex[keys.OBJECT_XMIN][i]) * width, BOX_DECIMALS)
            y0 = round(float(ex[keys.OBJECT_YMIN][i]) * height, BOX_DECIMALS)
            x1 = round(float(ex[keys.OBJECT_XMAX][i]) * width, BOX_DECIMALS)
            y1 = round(float(ex[keys.OBJECT_YMAX][i]) * height, BOX_DECIMALS)
            category_id = id_of[label] if id_of else label
            names[category_id] = ex[keys.OBJECT_TEXT][i].decode()
            annotations.append({
                "id": len(annotations) + 1,  # COCOeval needs ids > 0
                "image_id": image_id, "category_id": category_id,
                "bbox": [x0, y0, round(x1 - x0, BOX_DECIMALS), round(y1 - y0, BOX_DECIMALS)],
                "area": float(ex[keys.OBJECT_AREA][i]),
                "iscrowd": int(ex[keys.OBJECT_IS_CROWD][i]),
                "segmentation": mask_to_rle(decode_png(ex[keys.OBJECT_MASK][i])),
            })
    if label_map:
        categories = [{"id": c["id"], "name": c["name"]} for c in label_map["classes"]]
    else:
        categories = [{"id": k, "name": v} for k, v in sorted(names.items())]
    return {"images": images, "annotations": annotations, "categories": categories}


def detections_to_coco(image_id, height: int, width: int, boxes_normalized_yxyx, scores,
                       classes, masks=None, label_map: dict | None = None) -> list[dict]:
    """COCO results entries for one image. classes are our labels (mapped to the dataset's
    category ids through label_map when given); masks are full-image HxW arrays, binary
    (bool/int, nonzero = object) or float probabilities (>= 0.5 = object)."""
    id_of = keys.id_by_label(label_map) if label_map else None
    boxes = np.asarray(boxes_normalized_yxyx, dtype=np.float64).reshape(-1, 4)
    results = []
    for i, (y0, x0, y1, x1) in enumerate(boxes):
        label = int(classes[i])
        entry = {"image_id": image_id, "category_id": id_of[label] if id_of else label,
                 "bbox": [x0 * width, y0 * height, (x1 - x0) * width, (y1 - y0) * height],
                 "score": float(scores[i])}
        if masks is not None:
            mask = np.asarray(masks[i])
            entry["segmentation"] = mask_to_rle(
                mask >= 0.5 if np.issubdtype(mask.dtype, np.floating) else mask != 0)
        results.append(entry)
    return results


def evaluate(gt_dict: dict, detections: list[dict], iou_type: str) -> dict:
    """COCOeval over all ground-truth images; returns the 12 stats by name and as a list."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    result = {"iou_type": iou_type, "num_images": len(gt_dict["images"]),
              "num_detections": len(detections)}
    if not detections:  # loadRes cannot take an empty list; nothing detected scores 0
        stats = [0.0] * len(STAT_NAMES)
    else:
        with contextlib.redirect_stdout(sys.stderr):  # pycocotools prints; stdout is for JSON
            gt = COCO()
            gt.dataset = {k: list(v) for k, v in gt_dict.items()}
            gt.createIndex()
            dt = gt.loadRes([dict(d) for d in detections])
            coco_eval = COCOeval(gt, dt, iou_type)
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
        stats = [float(s) for s in coco_eval.stats]
        result["per_category_ap"] = per_category_ap(coco_eval)
    result["stats"] = stats
    result.update(zip(STAT_NAMES, stats))
    return result


def per_category_ap(coco_eval) -> dict:
    """{category id: AP at IoU .50:.95, all areas, 100 detections} from an accumulated COCOeval,
    for the categories with ground truth (COCO's -1 marks the others, which are left out)."""
    precision = coco_eval.eval["precision"]  # [IoU thresholds, recall, category, area, max dets]
    result = {}
    for index, category_id in enumerate(coco_eval.params.catIds):
        values = precision[:, :, index, 0, -1]
        values = values[values > -1]
        if values.size:
            result[int(category_id)] = float(np.mean(values))
    return result


def read_serialized(files: list[str]):
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    import tensorflow as tf

    for path in files:
        for record in tf.data.TFRecordDataset(path, compression_type=paths.tfrecord_compression(path)):
            yield record.numpy()


def find_label_map(files: list[str]) -> str | None:
    """label_map.json beside the examples: in the files' folder or up to two levels above."""
    folder = os.path.dirname(os.path.abspath(files[0]))
    for _ in range(3):
        candidate = os.path.join(folder, keys.LABEL_MAP_FILE)
        if os.path.isfile(candidate):
            return candidate
        folder = os.path.dirname(folder)
    return None


def evaluate_examples(examples: str, detections_file: str, iou_type: str) -> dict:
    """COCO metrics of a results file against the ground truth in our TFRecords.

    examples: a directory (every TFRecord file beneath it) or a glob; the label map next to them
    (see `find_label_map`) maps labels back to category ids.
    """
    files = paths.tfrecord_files(examples)
    try:
        with open(detections_file, encoding="utf-8") as f:
            detections = json.load(f)
    except json.JSONDecodeError as err:
        raise InputError(f"detections {detections_file}: not JSON ({err})") from err
    if not isinstance(detections, list):
        raise InputError(f"detections {detections_file}: expected a COCO results list")
    if iou_type == "segm" and any("segmentation" not in d for d in detections):
        raise InputError(f"detections {detections_file}: iou type segm needs a 'segmentation' "
                         f"in every detection")
    label_map_path = find_label_map(files)
    label_map = None
    if label_map_path:
        with open(label_map_path, encoding="utf-8") as f:
            label_map = json.load(f)
    print(f"evaluate-coco: {len(files)} file(s), label map {label_map_path}", file=sys.stderr)
    gt = ground_truth_from_examples(read_serialized(files), label_map)
    unknown = {d.get("image_id") for d in detections} - {img["id"] for img in gt["images"]}
    if unknown:
        raise InputError(f"detections for {len(unknown)} image id(s) not in the examples, "
                         f"e.g. {sorted(map(str, unknown))[:5]}")
    result = evaluate(gt, detections, iou_type)
    result.update(examples=files[0] if len(files) == 1 else examples, label_map=label_map_path)
    return result
