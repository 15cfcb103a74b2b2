"""COCO instance-segmentation JSON + images -> tf.Examples: the source the Beam graph of
`ingest_beam` reads (CocoExampleGen's executor and `segpipe ingest coco` alike).

Masks are rasterised exactly as pycocotools' `annToMask` does (polygons: frPyObjects + merge;
uncompressed RLE: frPyObjects; compressed RLE as given), then stored as 0/1 PNGs.
A 4-number polygon is a degenerate polygon (dropped), never read as a box.
Imports neither TFX nor TensorFlow: Beam workers unpickle this source, and importing those costs
each worker process ~15 s.
"""
from __future__ import annotations

import collections
import json

import numpy as np

from components import contract, paths, quarantine
from components import example_codec as codec
from components import label_map as label_map_lib
from components.errors import InputError
from components.example_codec import BadInput


def coco_mask(segmentation, height: int, width: int) -> np.ndarray:
    """Binary HxW mask of a COCO `segmentation` (polygons, RLE or compressed RLE); BadInput if invalid."""
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, list):
        if not segmentation or not all(isinstance(p, list) for p in segmentation):
            raise BadInput("invalid polygon", "segmentation must be a non-empty list of polygons")
        for part in segmentation:
            if len(part) < 6 or len(part) % 2 or not codec.finite(*part):
                raise BadInput("invalid polygon",
                               f"a part with {len(part)} coordinates (needs an even number >= 6)")
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        size = segmentation["size"]
        if list(size) != [height, width]:
            raise BadInput("invalid RLE", f"size {size} != image size {[height, width]}")
        counts = segmentation["counts"]
        if isinstance(counts, list):
            if not all(isinstance(c, int) and c >= 0 for c in counts) or sum(counts) != height * width:
                raise BadInput("invalid RLE", "uncompressed counts must be non-negative ints "
                                              "summing to height*width")
            rle = mask_utils.frPyObjects(segmentation, height, width)
        elif isinstance(counts, (str, bytes)):
            rle = {"size": [height, width],
                   "counts": counts.encode() if isinstance(counts, str) else counts}
        else:
            raise BadInput("invalid RLE", f"counts of type {type(counts).__name__}")
    else:
        raise BadInput("invalid segmentation", f"of type {type(segmentation).__name__}")
    try:
        mask = mask_utils.decode(rle)
    except Exception as err:  # pycocotools raises bare Exceptions for corrupt RLE strings
        raise BadInput("invalid RLE", str(err)) from None
    if mask.shape != (height, width):
        raise BadInput("invalid RLE", f"decodes to {mask.shape}")
    return mask


class CocoSource:
    """COCO JSON files (one per split, or one pooled) with images under `image_root`."""

    format = "coco"

    def __init__(self, image_root: str, label_map: dict):
        self.image_root = image_root
        self.label_map = label_map
        self._label_by_id = contract.label_by_id(label_map)
        self._names = contract.names_by_label(label_map)

    def read(self, split: str, path: str):
        with paths.open_file(path) as f:
            data = json.load(f)
        images = data.get("images") if isinstance(data, dict) else None
        if not isinstance(images, list):
            raise InputError(f"{path}: not a COCO annotation file (no 'images' list)")
        ids = {img.get("id") for img in images if isinstance(img, dict)}
        by_image = collections.defaultdict(list)
        for ann in data.get("annotations") or []:
            if ann.get("image_id") in ids:
                by_image[ann["image_id"]].append(ann)
            else:
                yield "record", quarantine.annotation_record(
                    "unknown image id", split=split, image_id=ann.get("image_id"),
                    annotation_id=ann.get("id"), detail=f"not in the images of {path}")
        for seq, img in enumerate(images):
            if not isinstance(img, dict) or "id" not in img or not img.get("file_name"):
                yield "record", quarantine.image_record(
                    "invalid image entry", split=split, image_id=None, file=None,
                    detail=f"entry {seq} of {path} lacks id/file_name")
                continue
            yield "item", str(img["id"]), {"seq": seq, "image": img,
                                           "annotations": by_image.get(img["id"], [])}

    def describe(self, key, payload):
        return payload["image"]["id"], payload["image"]["file_name"]

    def convert(self, key, split, payload):
        img = payload["image"]
        data = codec.read_bytes(paths.join(self.image_root, img["file_name"]))
        fmt, height, width = codec.inspect_image(data)
        listed = (img.get("height"), img.get("width"))
        if listed != (None, None) and listed != (height, width):
            raise BadInput("size mismatch", f"listed {listed[0]}x{listed[1]}, file {height}x{width}")
        objects, records, counts = [], [], collections.Counter()
        for ann in payload["annotations"]:
            try:
                obj, repaired = self._object(ann, height, width)
            except BadInput as bad:
                records.append(quarantine.annotation_record(
                    bad.reason, split=split, image_id=img["id"], annotation_id=ann.get("id"),
                    detail=bad.detail))
                continue
            counts.update(f"repaired/{r}" for r in repaired)
            objects.append(obj)
        counts["instances"] = len(objects)
        example = codec.make_example(encoded=data, fmt=fmt, height=height, width=width,
                                     source_id=str(img["id"]), filename=img["file_name"],
                                     objects=objects)
        return example, counts, records

    def _object(self, ann: dict, height: int, width: int):
        repaired = []
        label = self._label_by_id.get(ann.get("category_id"))
        if label is None:
            raise BadInput("unknown category", f"category_id {ann.get('category_id')!r}")
        if not ann.get("segmentation"):
            raise BadInput("missing segmentation")
        mask = coco_mask(ann["segmentation"], height, width)
        if not mask.any():
            raise BadInput("empty mask", "the segmentation covers no pixel")
        bbox = ann.get("bbox")
        if bbox is None:
            x0, y0, x1, y1 = codec.mask_box(mask)
            repaired.append("box from mask")
        else:
            if not (isinstance(bbox, list) and len(bbox) == 4 and codec.finite(*bbox)):
                raise BadInput("invalid box", repr(bbox))
            x, y, w, h = bbox
            if w <= 0 or h <= 0:
                raise BadInput("zero-area box", repr(bbox))
            x0, y0 = max(0.0, x), max(0.0, y)
            x1, y1 = min(float(width), x + w), min(float(height), y + h)
            if x1 <= x0 or y1 <= y0:
                raise BadInput("box outside image", repr(bbox))
            if (x0, y0, x1, y1) != (x, y, x + w, y + h):
                repaired.append("box clipped")
        area = ann.get("area")
        if area is None or not codec.finite(area):
            area = float(mask.sum())
            repaired.append("area from mask")
        obj = {"box": codec.normalized_box(x0, y0, x1, y1, height, width), "label": label,
               "text": self._names[label], "is_crowd": int(bool(ann.get("iscrowd", 0))),
               "area": float(area), "mask": codec.encode_png(mask)}
        return obj, repaired


def label_map_for(annotation_paths: list[str]) -> dict:
    """The instance label map of the files' categories (which must agree across split files)."""
    maps = [label_map_lib.from_coco_categories(label_map_lib.read_coco_categories(p))
            for p in annotation_paths]
    for path, other in zip(annotation_paths[1:], maps[1:]):
        if other != maps[0]:
            raise InputError(f"{path} lists other categories than {annotation_paths[0]}")
    return maps[0]
