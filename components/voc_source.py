"""PASCAL VOC layout -> tf.Examples: the source the Beam graph of `ingest_beam` reads
(VocExampleGen's executor and `segpipe ingest voc` alike); imports neither TFX nor TensorFlow.

Layout: JPEGImages/<id>.jpg, SegmentationClass/<id>.png (palette PNG, index = class id,
255 = ignore), optional ImageSets/Segmentation/<split>.txt (the splits; otherwise hash split),
optional class_names.txt (default: the 21 VOC classes). When SegmentationObject/ and
Annotations/ both exist, instances are written too: instance i of SegmentationObject/<id>.png is
the i-th <object> of Annotations/<id>.xml (the VOC convention), with its box and class name.

The class map is stored as a single-channel PNG of class ids (the palette colours dropped).
"""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET

import numpy as np

from components import contract, paths, quarantine
from components import example_codec as codec
from components import label_map as label_map_lib
from components.contract import IGNORE_LABEL
from components.errors import InputError
from components.example_codec import BadInput

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG")


def resolve_class_names(root: str, class_names: str | None) -> list[str]:
    """class_names (absolute, or relative to root), else root/class_names.txt, else VOC's 21."""
    if class_names:
        path = paths.join(root, class_names)
        if not paths.exists(path):
            raise InputError(f"class names file not found: {path}")
        return label_map_lib.read_class_names(path)
    default = os.path.join(root, "class_names.txt")
    return label_map_lib.read_class_names(default if paths.exists(default) else None)


class VocSource:
    format = "voc"

    def __init__(self, root: str, class_names: str | None = None):
        self.root = root
        self.label_map = label_map_lib.from_class_names(resolve_class_names(root, class_names))
        self._names = contract.names_by_label(self.label_map)
        self._label_by_name = {n: lbl for lbl, n in self._names.items()}
        self.instances = (paths.exists(os.path.join(root, "SegmentationObject"))
                          and paths.exists(os.path.join(root, "Annotations")))

    def read(self, split: str, path: str):
        """`path` is a split list (ids one a line) or a glob of SegmentationClass PNGs."""
        if path.endswith(".txt"):
            text = codec.read_bytes(path).decode("utf-8")
            ids = [line.split()[0] for line in text.splitlines() if line.strip()]
        else:
            ids = [os.path.splitext(os.path.basename(p))[0] for p in paths.glob(path)]
        for seq, image_id in enumerate(ids):
            yield "item", image_id, {"seq": seq}

    def describe(self, key, payload):
        return key, self._image_file(key) or f"JPEGImages/{key}.jpg"

    def _image_file(self, key: str) -> str | None:
        for suffix in _IMAGE_SUFFIXES:
            relative = f"JPEGImages/{key}{suffix}"
            if paths.exists(os.path.join(self.root, relative)):
                return relative
        return None

    def convert(self, key, split, payload):
        relative = self._image_file(key)
        if relative is None:
            raise BadInput("missing file", f"JPEGImages/{key}.jpg")
        data = codec.read_bytes(os.path.join(self.root, relative))
        fmt, height, width = codec.inspect_image(data)
        classes = self._mask(f"SegmentationClass/{key}.png", height, width)
        bad = np.setdiff1d(np.unique(classes), list(self._names) + [IGNORE_LABEL])
        if bad.size:
            raise BadInput("class id out of range",
                           f"values {bad.tolist()} with {len(self._names)} classes")
        objects, records, counts = None, [], {}
        if self.instances:
            objects, records = self._objects(key, split, height, width)
            counts["instances"] = len(objects)
        example = codec.make_example(encoded=data, fmt=fmt, height=height, width=width,
                                     source_id=key, filename=relative, objects=objects,
                                     class_png=codec.encode_png(classes))
        return example, counts, records

    def _mask(self, relative: str, height: int, width: int) -> np.ndarray:
        try:
            mask = codec.decode_png(codec.read_bytes(os.path.join(self.root, relative)))
        except BadInput:
            raise
        except Exception as err:  # corrupt PNG
            raise BadInput("unreadable mask", f"{relative}: {err}") from None
        if mask.shape != (height, width):
            raise BadInput("size mismatch", f"{relative} is {mask.shape}, image {(height, width)}")
        return mask

    def _objects(self, key, split, height, width):
        instance_ids = self._mask(f"SegmentationObject/{key}.png", height, width)
        xml_path = os.path.join(self.root, "Annotations", f"{key}.xml")
        try:
            xml_objects = ET.fromstring(codec.read_bytes(xml_path)).findall("object")
        except ET.ParseError as err:
            raise BadInput("unreadable annotation XML", f"{xml_path}: {err}") from None
        objects, records = [], []

        def drop(reason, index, detail=""):
            records.append(quarantine.annotation_record(
                reason, split=split, image_id=key, annotation_id=index, detail=detail))

        for index, obj in enumerate(xml_objects, start=1):
            name = (obj.findtext("name") or "").strip()
            label = self._label_by_name.get(name)
            mask = (instance_ids == index).astype(np.uint8)
            if label is None or label == 0:
                drop("unknown category", index, repr(name))
                continue
            if not mask.any():
                drop("empty mask", index, f"no pixel of value {index} in SegmentationObject")
                continue
            box = obj.find("bndbox")
            try:  # VOC boxes are 1-based, inclusive
                x0, y0 = float(box.findtext("xmin")) - 1, float(box.findtext("ymin")) - 1
                x1, y1 = float(box.findtext("xmax")), float(box.findtext("ymax"))
            except (AttributeError, TypeError, ValueError):
                x0, y0, x1, y1 = codec.mask_box(mask)  # no usable box: the mask's
            x0, y0, x1, y1 = max(0.0, x0), max(0.0, y0), min(width, x1), min(height, y1)
            if x1 <= x0 or y1 <= y0:
                drop("box outside image", index)
                continue
            objects.append({"box": codec.normalized_box(x0, y0, x1, y1, height, width),
                            "label": label, "text": name, "is_crowd": 0,
                            "area": float(mask.sum()), "mask": codec.encode_png(mask)})
        extra = sorted(set(np.unique(instance_ids).tolist()) - {0, IGNORE_LABEL}
                       - set(range(1, len(xml_objects) + 1)))
        for index in extra:
            drop("instance without XML object", index)
        return objects, records


def split_inputs(input_base: str, splits: list[str] | None = None) -> tuple[list[tuple[str, str]], bool]:
    """[(split, pattern relative to input_base)] and whether a hash split is needed.

    `splits` names the ImageSets/Segmentation lists without looking (e.g. compiling offline for
    a dataset in GCS); otherwise the lists present decide.
    """
    if splits:
        return [(name, f"ImageSets/Segmentation/{name}.txt") for name in splits], False
    lists = paths.glob(os.path.join(input_base, "ImageSets", "Segmentation", "*.txt"))
    if lists:
        return [(os.path.splitext(os.path.basename(p))[0],
                 os.path.relpath(p, input_base) if not paths.is_remote(p)
                 else p[len(input_base):].lstrip("/")) for p in lists], False
    return [("all", "SegmentationClass/*.png")], True
