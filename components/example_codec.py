"""The tf.Example codec shared by both ExampleGens: the keys of `components.contract`, described in
docs/ARCHITECTURE.md ("The tf.Example contract").

Image bytes are stored unchanged; masks are PNGs (instance masks 0/1, class maps of class ids with
IGNORE_LABEL = ignore), always full image size. Problems with the input raise `BadInput(reason)`; the
caller turns them into quarantine records.
"""
from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

from components import contract as keys
from components import paths

_FORMATS = {"JPEG": "jpeg", "PNG": "png"}


class BadInput(Exception):
    """An image or annotation that cannot be used; `reason` is a short, countable phrase."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def inspect_image(data: bytes) -> tuple[str, int, int]:
    """(format, height, width) of JPEG/PNG bytes, decoding them fully so corrupt files are caught."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt = img.format
            width, height = img.size
            img.load()
    except Exception as err:  # PIL raises many types (OSError, SyntaxError, ...) for bad bytes
        raise BadInput("unreadable image", f"{type(err).__name__}: {err}") from None
    if fmt not in _FORMATS:
        raise BadInput("unsupported image format", str(fmt))
    return _FORMATS[fmt], height, width


def encode_png(array: np.ndarray) -> bytes:
    """Lossless single-channel PNG of a 2-D uint8 array."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8), mode="L").save(
        buf, format="PNG", compress_level=1)  # speed over size: masks compress well anyway
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """2-D uint8 array of a single-channel or palette PNG (palette indices, not colours)."""
    with Image.open(io.BytesIO(data)) as img:
        if img.mode not in ("L", "P", "1"):
            raise BadInput("mask is not single-channel", f"PNG mode {img.mode}")
        return np.asarray(img, dtype=np.uint8)


def read_bytes(path: str) -> bytes:
    """File contents (local or gs://); a missing file raises BadInput("missing file")."""
    if paths.is_remote(path) and not paths.exists(path):
        raise BadInput("missing file", path)
    try:
        with paths.open_file(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise BadInput("missing file", path) from None
    except OSError as err:
        raise BadInput("unreadable file", f"{path}: {err}") from None


def normalized_box(x0: float, y0: float, x1: float, y1: float, height: int, width: int):
    return (x0 / width, y0 / height, x1 / width, y1 / height)


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Tight pixel box (x0, y0, x1, y1), exclusive max, of a non-empty binary mask."""
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    return int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1


def finite(*values) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
               for v in values)


def make_example(*, encoded: bytes, fmt: str, height: int, width: int, source_id: str,
                 filename: str, objects: list[dict] | None = None,
                 class_png: bytes | None = None):
    """tf.train.Example with exactly the contract's keys.

    `objects`: None for no object features at all (semantic-only VOC), else a list (possibly
    empty) of dicts with box (normalised xmin, ymin, xmax, ymax), label, text, is_crowd, area,
    mask (PNG bytes). `class_png`: the class-id PNG, VOC only.
    """
    import tensorflow as tf  # workers only; keeps importing this module cheap

    def ints(values):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=values))

    def floats(values):
        return tf.train.Feature(float_list=tf.train.FloatList(value=values))

    def byts(values):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))

    feature = {
        keys.IMAGE_ENCODED: byts([encoded]),
        keys.IMAGE_FORMAT: byts([fmt.encode()]),
        keys.IMAGE_HEIGHT: ints([height]),
        keys.IMAGE_WIDTH: ints([width]),
        keys.IMAGE_SOURCE_ID: byts([str(source_id).encode()]),
        keys.IMAGE_FILENAME: byts([filename.encode()]),
    }
    if objects is not None:
        feature.update({
            keys.OBJECT_XMIN: floats([o["box"][0] for o in objects]),
            keys.OBJECT_YMIN: floats([o["box"][1] for o in objects]),
            keys.OBJECT_XMAX: floats([o["box"][2] for o in objects]),
            keys.OBJECT_YMAX: floats([o["box"][3] for o in objects]),
            keys.OBJECT_LABEL: ints([o["label"] for o in objects]),
            keys.OBJECT_TEXT: byts([o["text"].encode() for o in objects]),
            keys.OBJECT_IS_CROWD: ints([o["is_crowd"] for o in objects]),
            keys.OBJECT_AREA: floats([o["area"] for o in objects]),
            keys.OBJECT_MASK: byts([o["mask"] for o in objects]),
        })
    if class_png is not None:
        feature[keys.CLASS_MAP_ENCODED] = byts([class_png])
        feature[keys.CLASS_MAP_FORMAT] = byts([b"png"])
    return tf.train.Example(features=tf.train.Features(feature=feature))


def parse_example(serialized: bytes) -> dict:
    """A serialized Example as a plain dict of python values (lists for list features)."""
    import tensorflow as tf

    example = tf.train.Example.FromString(serialized)
    out = {}
    for key, feat in example.features.feature.items():
        kind = feat.WhichOneof("kind")
        out[key] = list(getattr(feat, kind).value) if kind else []
    return out
