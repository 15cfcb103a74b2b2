"""The label map: dataset category id <-> contiguous label <-> name.

Written as `label_map.json` next to the examples and carried with the model, so predictions can
be reported in the dataset's own category ids:

    {"task": "instance" | "semantic", "classes": [{"label": int, "id": int, "name": str}, ...]}

- instance (COCO): labels are contiguous 1..N in ascending category-id order (0 is background and
  has no entry); `id` is the dataset's COCO category id.
- semantic (VOC): one entry per class-id pixel value 0..N-1, background (0) included; id == label.

labelme quirk: labelme's COCO export lists a category `_background_` with id 0. Background is not
an object class, so it gets no label; an annotation that uses it is dropped as "unknown category"
(and quarantined with that reason). In labelme's `class_names.txt`, a first line `__ignore__`
names the ignore value (-1 in labelme, 255 in our PNGs), not a class, so it is skipped too.

Lookups in a label map (label -> name, id <-> label, semantic class count) are in
`components.contract`; docs/ARCHITECTURE.md ("The label map") describes the file.
"""
from __future__ import annotations

import json

from components import paths
from components.contract import IGNORE_LABEL
from components.errors import InputError

BACKGROUND_NAMES = ("_background_",)
IGNORE_NAMES = ("__ignore__",)

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)


def from_coco_categories(categories: list[dict]) -> dict:
    """Instance label map from a COCO `categories` list (background categories get no label)."""
    seen: dict[int, str] = {}
    for cat in categories:
        try:
            cat_id, name = int(cat["id"]), str(cat["name"])
        except (KeyError, TypeError, ValueError) as err:
            raise InputError(f"COCO category without a usable id/name: {cat!r}") from err
        if name in BACKGROUND_NAMES:
            continue
        if cat_id in seen and seen[cat_id] != name:
            raise InputError(f"COCO category id {cat_id} is listed twice with different names "
                             f"({seen[cat_id]!r}, {name!r})")
        seen[cat_id] = name
    if not seen:
        raise InputError("the COCO annotations list no (non-background) categories")
    classes = [{"label": i + 1, "id": cat_id, "name": seen[cat_id]}
               for i, cat_id in enumerate(sorted(seen))]
    return {"task": "instance", "classes": classes}


def read_coco_categories(path: str) -> list[dict]:
    """The `categories` list of a COCO annotation file (local or gs://)."""
    try:
        with paths.open_file(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(data, dict) or not isinstance(data.get("categories"), list):
        raise InputError(f"{path}: not a COCO annotation file (no 'categories' list)")
    return data["categories"]


def from_class_names(names: list[str]) -> dict:
    """Semantic label map: the i-th name is the class of pixel value i (0 = background)."""
    names = [n for n in names if n not in IGNORE_NAMES]
    if len(names) < 2:
        raise InputError(f"need at least background and one class, got {names!r}")
    if len(names) > IGNORE_LABEL:
        raise InputError(f"{len(names)} classes: pixel value {IGNORE_LABEL} is reserved for 'ignore'")
    return {"task": "semantic",
            "classes": [{"label": i, "id": i, "name": n} for i, n in enumerate(names)]}


def read_class_names(path: str | None) -> list[str]:
    """Class names, one a line, from `class_names.txt`; None gives the 21 PASCAL VOC classes."""
    if path is None:
        return list(VOC_CLASSES)
    with paths.open_file(path) as f:
        names = [line.strip() for line in f.read().splitlines()]
    return [n for n in names if n]


def load(path: str) -> dict:
    with paths.open_file(path) as f:
        return json.load(f)


def load_given(given: dict | str) -> dict:
    """The config's `data.label_map`: a label map as it is, or the path of a label_map.json (e.g. one
    `segpipe ingest` wrote for a dataset in GCS); a missing file is an InputError."""
    if isinstance(given, dict):
        return given
    if not paths.exists(given):
        raise InputError(f"data.label_map {given}: file not found (the label_map.json that segpipe ingest writes)")
    return load(given)


def write(label_map: dict, path: str) -> None:
    with paths.open_file(path, "w") as f:
        f.write(json.dumps(label_map, indent=1) + "\n")

