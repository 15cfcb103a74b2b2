"""Synthetic sample datasets (`segpipe sample-data --task {semantic,instance}`): `write(task, out)`.

Both tasks draw shapes at varied scales, with occlusion, over textured, noisy backgrounds of any
hue that carry line distractors. Each class has its own hue band (saturation, brightness, shading
and texture vary per instance): shape alone proved too hard a cue for a from-scratch model in a
CPU-minutes budget (sample val mIoU 0.30 after the default semantic run), hue plus shape is
learnable there. Images vary a little in size so that resizing is exercised downstream.

- semantic: PASCAL VOC layout (`JPEGImages/`, `SegmentationClass/` palette PNGs with a thin 255
  "ignore" band on every object boundary like VOC, `ImageSets/Segmentation/{train,val}.txt`,
  `class_names.txt`).
- instance: COCO layout (`images/`, `annotations/instances_{train,val}.json`) with polygons of the
  VISIBLE part of each object (several polygons when an occluder splits an object), a few crowd
  regions as uncompressed RLE, and non-contiguous category ids to exercise label maps.

Masks are rasterised with pycocotools, the same rasteriser that reads the annotations back, so the
pixels of an image and its annotations agree. Output is deterministic for a given seed: image i is
drawn from its own random generator seeded by (seed, i).
"""
from __future__ import annotations

import colorsys
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from pycocotools import mask as mask_utils
from scipy import ndimage

from components.contract import IGNORE_LABEL
from components.errors import InputError
from pipelines.visualize import voc_palette

SEMANTIC_CLASSES = ("background", "circle", "square", "triangle", "cross")
# COCO category ids on purpose not contiguous (label maps must map them to 1..N).
INSTANCE_CATEGORIES = ({"id": 3, "name": "circle"}, {"id": 7, "name": "square"},
                       {"id": 12, "name": "triangle"})
SEMANTIC_DEFAULTS = {"num_images": 300, "image_size": 140}
INSTANCE_DEFAULTS = {"num_images": 240, "image_size": 160}
VAL_EVERY = 5  # every 5th image goes to val: an 80/20 split independent of num_images
JPEG_QUALITY = 92


# ---------------------------------------------------------------------------------------------
# Geometry and rendering


def _shape_polygon(kind: str, cx: float, cy: float, size: float, rng: np.random.Generator) -> np.ndarray:
    """Vertices (N, 2) as x, y of a shape of about `size` radius, randomly rotated and distorted."""
    angle = rng.uniform(0, 2 * np.pi)
    if kind == "circle":  # a slightly elliptic circle
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        aspect = rng.uniform(0.9, 1.1)
        pts = np.stack([size * aspect * np.cos(t), size / aspect * np.sin(t)], axis=1)
    elif kind == "square":  # a square-ish rectangle
        aspect = rng.uniform(0.8, 1.25)
        hx, hy = 0.85 * size * aspect, 0.85 * size / aspect
        pts = np.array([[-hx, -hy], [hx, -hy], [hx, hy], [-hx, hy]])
    elif kind == "triangle":
        t = np.array([0, 2 * np.pi / 3, 4 * np.pi / 3]) + rng.uniform(-0.15, 0.15, 3)
        radius = size * rng.uniform(1.2, 1.5, 3)  # matches the other shapes' area
        pts = np.stack([radius * np.cos(t), radius * np.sin(t)], axis=1)
    elif kind == "cross":  # a plus sign
        a, w = size, size * rng.uniform(0.28, 0.38)
        pts = np.array([[-w, -a], [w, -a], [w, -w], [a, -w], [a, w], [w, w],
                        [w, a], [-w, a], [-w, w], [-a, w], [-a, -w], [-w, -w]])
    else:
        raise ValueError(f"unknown shape {kind!r}")
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return pts @ rot.T + np.array([cx, cy])


def _rasterize(polygons: list[np.ndarray], height: int, width: int) -> np.ndarray:
    """Union of polygons (pixel-corner coordinates) as a bool mask, with pycocotools' rasteriser."""
    flat = [p.reshape(-1).astype(np.float64).tolist() for p in polygons]
    rles = mask_utils.frPyObjects(flat, height, width)
    return mask_utils.decode(mask_utils.merge(rles)).astype(bool)


def _smooth_field(rng: np.random.Generator, height: int, width: int, channels: int, cells: int) -> np.ndarray:
    """Low-frequency random field in [0, 1], shape (height, width, channels)."""
    grid = rng.uniform(0, 255, (cells, cells, channels)).astype(np.uint8)
    img = Image.fromarray(grid.squeeze(-1) if channels == 1 else grid)
    field = np.asarray(img.resize((width, height), Image.BICUBIC), dtype=np.float32) / 255.0
    return field.reshape(height, width, channels)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Textured background: smooth colour blotches + a periodic pattern + line distractors."""
    base = rng.uniform(40, 215, 3)
    img = base + (_smooth_field(rng, height, width, 3, int(rng.integers(3, 7))) - 0.5) * rng.uniform(30, 90)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    theta, period = rng.uniform(0, np.pi), rng.uniform(3, 8)
    phase = (xx * np.cos(theta) + yy * np.sin(theta)) * 2 * np.pi / period
    pattern = np.sin(phase) if rng.random() < 0.5 else np.sign(np.sin(phase) * np.sin(
        (xx * np.sin(theta) - yy * np.cos(theta)) * 2 * np.pi / period))  # stripes or checks
    img = img + pattern[..., None] * rng.uniform(20, 40) * rng.uniform(0.5, 1.0, 3)
    img = img + rng.normal(0, rng.uniform(6, 12), img.shape)  # grain: objects are smoother
    canvas = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(1, 5))):  # straight and curved strokes: background, not a shape
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        x0, y0 = rng.uniform(0, width), rng.uniform(0, height)
        if rng.random() < 0.5:
            x1, y1 = x0 + rng.uniform(-60, 60), y0 + rng.uniform(-60, 60)
            draw.line([(x0, y0), (x1, y1)], fill=colour, width=int(rng.integers(1, 4)))
        else:
            r = rng.uniform(8, 30)
            start = rng.uniform(0, 360)
            draw.arc([x0 - r, y0 - r, x0 + r, y0 + r], start, start + rng.uniform(60, 200),
                     fill=colour, width=int(rng.integers(1, 3)))
    return np.asarray(canvas, dtype=np.float32)


HUE_JITTER = 0.06  # +-22 degrees around the class hue


def class_hue(kind: str, kinds: list[str]) -> float:
    """The centre of a class's hue band, in [0, 1): classes spread evenly around the colour wheel."""
    return kinds.index(kind) / len(kinds)


def _paint(rng: np.random.Generator, img: np.ndarray, mask: np.ndarray, hue: float) -> None:
    """Paints an object in its class's hue band (random saturation and brightness, contrasting with
    what it covers) with its own shading and texture."""
    height, width = mask.shape
    covered = img[mask].mean(axis=0)
    for _ in range(20):
        h = (hue + rng.uniform(-HUE_JITTER, HUE_JITTER)) % 1.0
        colour = 255.0 * np.array(colorsys.hsv_to_rgb(h, rng.uniform(0.5, 1.0), rng.uniform(0.45, 1.0)))
        if np.abs(colour - covered).sum() > 150:
            break
    shade = _smooth_field(rng, height, width, 1, 3) - 0.5  # gentle lighting gradient
    texture = colour + shade * rng.uniform(15, 40) + rng.normal(0, rng.uniform(2, 6), (height, width, 3))
    img[mask] = texture[mask]


def _finish(rng: np.random.Generator, img: np.ndarray) -> Image.Image:
    """Slight blur and sensor noise, so edges are not perfectly crisp."""
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    pil = pil.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.8)))
    noisy = np.asarray(pil, dtype=np.float32) + rng.normal(0, rng.uniform(2, 4), img.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def _image_size(rng: np.random.Generator, nominal: int) -> tuple[int, int]:
    """(height, width), each within about -12 % .. +12 % of the nominal side."""
    lo, hi = int(round(nominal * 0.88)), int(round(nominal * 1.12))
    return int(rng.integers(lo, hi + 1)), int(rng.integers(lo, hi + 1))


@dataclass
class _Placed:
    kind: str
    mask: np.ndarray  # full (un-occluded) mask
    crowd: bool = False  # a crowd region: many small parts by design, annotated as RLE


def _visible_masks(placed: list[_Placed]) -> list[np.ndarray]:
    """Visible part of each object when drawn in list order (later objects on top)."""
    covered = np.zeros_like(placed[0].mask) if placed else None
    visible = []
    for obj in reversed(placed):
        visible.append(obj.mask & ~covered)
        covered = covered | obj.mask
    return visible[::-1]


def _has_hole(mask: np.ndarray) -> bool:
    """True when the background of `mask` has a component not connected to the image border."""
    padded = np.pad(~mask, 1, constant_values=True)
    _, n = ndimage.label(padded, structure=np.ones((3, 3)))
    return n > 1


def _acceptable(placed: list[_Placed], min_visible: float, min_part: int) -> bool:
    """Each object stays mostly visible, without holes or tiny slivers (so polygons describe it)."""
    for obj, vis in zip(placed, _visible_masks(placed)):
        if vis.sum() < min_visible * max(obj.mask.sum(), 1):
            return False
        if obj.crowd:
            continue
        if _has_hole(vis):
            return False
        labels, n = ndimage.label(vis)
        if n > 1 and np.bincount(labels.ravel())[1:].min() < min_part:
            return False
    return True


def _place_objects(rng: np.random.Generator, height: int, width: int, kinds: list[str],
                   size_range: tuple[float, float], count: int, min_visible: float,
                   base: list[_Placed] | None = None) -> list[_Placed]:
    """Adds up to `count` random shapes on top of `base`, rejecting placements that hide too much."""
    placed = list(base or [])
    side = min(height, width)
    for _ in range(count):
        for _attempt in range(30):
            size = rng.uniform(*size_range) * side
            margin = 0.5 * size
            cx, cy = rng.uniform(margin, width - margin), rng.uniform(margin, height - margin)
            kind = kinds[int(rng.integers(len(kinds)))]
            poly = _shape_polygon(kind, cx, cy, size, rng)
            mask = _rasterize([poly], height, width)
            if mask.sum() < 40:
                continue
            trial = placed + [_Placed(kind, mask)]
            if _acceptable(trial, min_visible, 30):
                placed = trial
                break
    return placed


# ---------------------------------------------------------------------------------------------
# Mask -> polygons (pixel-boundary tracing, then Douglas-Peucker)

# Directions as (dx, dy) in image coordinates (y down); index order makes "turn right" = +1.
_DIRS = [(1, 0), (0, 1), (-1, 0), (0, -1)]  # east, south, west, north


def _trace_outline(component: np.ndarray) -> np.ndarray:
    """Outer boundary of one 4-connected component without holes, as pixel-corner vertices.

    Walks the edges between foreground and background pixels clockwise (foreground on the right);
    at a vertex touched diagonally by two foreground pixels it turns right, which keeps diagonal
    neighbours apart (4-connectivity), so a hole-free component yields exactly one closed loop.
    """
    m = np.pad(component, 1)
    fg = m[1:-1, 1:-1]
    outgoing: dict[tuple[int, int], list[int]] = {}
    ys, xs = np.nonzero(fg & ~m[:-2, 1:-1])  # top edges, heading east
    for y, x in zip(ys, xs):
        outgoing.setdefault((x, y), []).append(0)
    ys, xs = np.nonzero(fg & ~m[1:-1, 2:])  # right edges, heading south
    for y, x in zip(ys, xs):
        outgoing.setdefault((x + 1, y), []).append(1)
    ys, xs = np.nonzero(fg & ~m[2:, 1:-1])  # bottom edges, heading west
    for y, x in zip(ys, xs):
        outgoing.setdefault((x + 1, y + 1), []).append(2)
    ys, xs = np.nonzero(fg & ~m[1:-1, :-2])  # left edges, heading north
    for y, x in zip(ys, xs):
        outgoing.setdefault((x, y + 1), []).append(3)
    start = min(outgoing, key=lambda v: (v[1], v[0]))  # top-left corner: starts an east edge
    vertex, heading = start, outgoing[start][0]
    outgoing[start].remove(heading)
    loop = [start]
    while True:
        dx, dy = _DIRS[heading]
        vertex = (vertex[0] + dx, vertex[1] + dy)
        if vertex == start:
            break
        options = outgoing[vertex]
        heading = next(d for d in ((heading + 1) % 4, heading, (heading + 3) % 4) if d in options)
        options.remove(heading)
        loop.append(vertex)
    return np.array(loop, dtype=np.float64)


def _douglas_peucker(points: np.ndarray, epsilon: float) -> np.ndarray:
    """Simplified open polyline keeping both ends."""
    keep = np.zeros(len(points), dtype=bool)
    keep[0] = keep[-1] = True
    stack = [(0, len(points) - 1)]
    while stack:
        i, j = stack.pop()
        if j <= i + 1:
            continue
        a, b = points[i], points[j]
        seg = b - a
        rel = points[i + 1:j] - a
        norm = np.hypot(*seg)
        dist = np.abs(seg[0] * rel[:, 1] - seg[1] * rel[:, 0]) / norm if norm > 0 else np.hypot(rel[:, 0], rel[:, 1])
        k = int(np.argmax(dist))
        if dist[k] > epsilon:
            keep[i + 1 + k] = True
            stack += [(i, i + 1 + k), (i + 1 + k, j)]
    return points[keep]


def mask_to_polygons(mask: np.ndarray, epsilon: float = 0.8) -> list[list[float]]:
    """COCO polygons ([x0, y0, x1, y1, ...] per connected part) of a hole-free binary mask."""
    labels, n = ndimage.label(mask)
    polygons = []
    for index in range(1, n + 1):
        loop = _trace_outline(labels == index)
        far = int(np.argmax(np.hypot(*(loop - loop[0]).T)))  # split the closed loop in two
        first = _douglas_peucker(loop[:far + 1], epsilon)
        second = _douglas_peucker(np.vstack([loop[far:], loop[:1]]), epsilon)
        simplified = np.vstack([first, second[1:-1]])
        polygons.append([round(float(v), 2) for v in simplified.reshape(-1)])
    return polygons


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO uncompressed RLE (column-major run lengths, starting with a run of zeros)."""
    flat = mask.astype(np.uint8).reshape(-1, order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0]:
        counts = [0] + counts
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": [int(c) for c in counts]}


# ---------------------------------------------------------------------------------------------
# Writers


def _resolve(num_images: int | None, image_size: int | None, defaults: dict) -> tuple[int, int]:
    num = defaults["num_images"] if num_images is None else int(num_images)
    size = defaults["image_size"] if image_size is None else int(image_size)
    if num < 2:
        raise InputError(f"--num-images must be at least 2 (one train and one val image), got {num}")
    if size < 48:
        raise InputError(f"--image-size must be at least 48 pixels, got {size}")
    return num, size


def _split_of(index: int) -> str:
    return "val" if index % VAL_EVERY == VAL_EVERY - 1 else "train"


def render_semantic(seed: int, index: int, image_size: int) -> tuple[Image.Image, np.ndarray]:
    """Image `index` of the semantic set: (RGB image, uint8 class-id map with 255 borders)."""
    rng = np.random.default_rng([seed, index])
    height, width = _image_size(rng, image_size)
    count = int(rng.choice([1, 2, 2, 3, 3, 4]))
    placed = _place_objects(rng, height, width, list(SEMANTIC_CLASSES[1:]), (0.13, 0.3), count,
                            min_visible=0.55)
    img = _background(rng, height, width)
    label = np.zeros((height, width), dtype=np.uint8)
    instance_ids = np.zeros((height, width), dtype=np.uint8)
    for number, obj in enumerate(placed, start=1):
        _paint(rng, img, obj.mask, class_hue(obj.kind, list(SEMANTIC_CLASSES[1:])))
        label[obj.mask] = SEMANTIC_CLASSES.index(obj.kind)
        instance_ids[obj.mask] = number
    # VOC-style ignore band: pixels whose 3x3 neighbourhood spans two instances (or bg + one).
    edge = ndimage.maximum_filter(instance_ids, 3) != ndimage.minimum_filter(instance_ids, 3)
    label[edge] = IGNORE_LABEL
    return _finish(rng, img), label


def write_semantic(out_dir, num_images: int | None = None, image_size: int | None = None,
                   seed: int = 0) -> dict:
    """Writes the semantic sample set in VOC layout under `out_dir`; returns a summary dict."""
    num, size = _resolve(num_images, image_size, SEMANTIC_DEFAULTS)
    out = Path(out_dir)
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    palette = voc_palette()
    splits: dict[str, list[str]] = {"train": [], "val": []}
    pixel_counts = np.zeros(len(SEMANTIC_CLASSES) + 1, dtype=np.int64)  # last bin: ignore
    for index in range(num):
        image, label = render_semantic(seed, index, size)
        stem = f"{index:06d}"
        image.save(out / "JPEGImages" / f"{stem}.jpg", quality=JPEG_QUALITY)
        png = Image.fromarray(label, mode="P")
        png.putpalette(palette)
        png.save(out / "SegmentationClass" / f"{stem}.png")
        splits[_split_of(index)].append(stem)
        values = np.where(label == IGNORE_LABEL, len(SEMANTIC_CLASSES), label)
        pixel_counts += np.bincount(values.ravel(), minlength=len(pixel_counts))
        if (index + 1) % 50 == 0:
            print(f"sample-data semantic: {index + 1}/{num} images", file=sys.stderr)
    for split, stems in splits.items():
        (out / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(s + "\n" for s in stems))
    (out / "class_names.txt").write_text("".join(n + "\n" for n in SEMANTIC_CLASSES))
    total = pixel_counts.sum()
    return {
        "task": "semantic",
        "out": str(out),
        "images": {k: len(v) for k, v in splits.items()},
        "image_size": size,
        "class_names": list(SEMANTIC_CLASSES),
        "class_names_file": str(out / "class_names.txt"),
        "pixel_fraction": {name: round(float(c) / total, 4)
                           for name, c in zip(list(SEMANTIC_CLASSES) + ["ignore"], pixel_counts)},
        "seed": seed,
    }


def _crowd_region(rng: np.random.Generator, height: int, width: int, kinds: list[str]) -> _Placed:
    """A tight cluster of many small shapes of one category: one crowd (iscrowd=1) region."""
    kind = kinds[int(rng.integers(len(kinds)))]
    extent = rng.uniform(0.22, 0.32) * min(height, width)
    x0, y0 = rng.uniform(0, width - extent), rng.uniform(0, height - extent)
    polys = []
    for _ in range(int(rng.integers(6, 11))):
        radius = rng.uniform(3.5, 6.5)
        cx, cy = x0 + rng.uniform(radius, extent - radius), y0 + rng.uniform(radius, extent - radius)
        polys.append(_shape_polygon(kind, cx, cy, radius, rng))
    return _Placed(kind, _rasterize(polys, height, width), crowd=True)


def render_instance(seed: int, index: int, image_size: int) -> tuple[Image.Image, list[dict]]:
    """Image `index` of the instance set: (RGB image, objects bottom to top as dicts with
    `category_id`, `iscrowd` and `visible` (bool mask of the part not hidden by later objects))."""
    rng = np.random.default_rng([seed, index])
    height, width = _image_size(rng, image_size)
    kinds = [c["name"] for c in INSTANCE_CATEGORIES]
    category_id = {c["name"]: c["id"] for c in INSTANCE_CATEGORIES}
    # Crowd regions lie underneath: drawn first, any instance may occlude part of them.
    base = [_crowd_region(rng, height, width, kinds)] if rng.random() < 0.15 else []
    count = int(rng.choice([2, 3, 3, 4]))
    placed = _place_objects(rng, height, width, kinds, (0.12, 0.26), count, min_visible=0.45, base=base)
    img = _background(rng, height, width)
    for obj in placed:
        _paint(rng, img, obj.mask, class_hue(obj.kind, kinds))
    objects = [{"category_id": category_id[obj.kind], "iscrowd": int(obj.crowd), "visible": visible}
               for obj, visible in zip(placed, _visible_masks(placed))]
    return _finish(rng, img), objects


def write_instance(out_dir, num_images: int | None = None, image_size: int | None = None,
                   seed: int = 0) -> dict:
    """Writes the instance sample set in COCO layout under `out_dir`; returns a summary dict."""
    num, size = _resolve(num_images, image_size, INSTANCE_DEFAULTS)
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    datasets = {split: {"info": {"description": "segpipe synthetic instance sample", "version": "1.0"},
                        "licenses": [], "images": [], "annotations": [],
                        "categories": [dict(c, supercategory="shape") for c in INSTANCE_CATEGORIES]}
                for split in ("train", "val")}
    next_ann_id = 1
    crowd_count = 0
    for index in range(num):
        image, objects = render_instance(seed, index, size)
        image_id = index + 1  # file stem == image id, so `segpipe predict` can recover ids
        file_name = f"{image_id:06d}.jpg"
        image.save(out / "images" / file_name, quality=JPEG_QUALITY)
        dataset = datasets[_split_of(index)]
        dataset["images"].append({"id": image_id, "file_name": file_name,
                                  "height": image.height, "width": image.width})
        for obj in objects:
            if obj["iscrowd"]:
                segmentation = _uncompressed_rle(obj["visible"])
                rle = mask_utils.frPyObjects(segmentation, image.height, image.width)
                crowd_count += 1
            else:
                segmentation = mask_to_polygons(obj["visible"])
                rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, image.height, image.width))
            dataset["annotations"].append({
                "id": next_ann_id, "image_id": image_id, "category_id": obj["category_id"],
                "segmentation": segmentation, "area": float(mask_utils.area(rle)),
                "bbox": [round(float(v), 2) for v in mask_utils.toBbox(rle)], "iscrowd": obj["iscrowd"]})
            next_ann_id += 1
        if (index + 1) % 50 == 0:
            print(f"sample-data instance: {index + 1}/{num} images", file=sys.stderr)
    files = {}
    for split, dataset in datasets.items():
        files[split] = str(out / "annotations" / f"instances_{split}.json")
        Path(files[split]).write_text(json.dumps(dataset))
    return {
        "task": "instance",
        "out": str(out),
        "images": {k: len(d["images"]) for k, d in datasets.items()},
        "annotations": {k: len(d["annotations"]) for k, d in datasets.items()},
        "crowd_regions": crowd_count,
        "annotation_files": files,
        "image_dir": str(out / "images"),
        "categories": [dict(c) for c in INSTANCE_CATEGORIES],
        "image_size": size,
        "seed": seed,
    }


def write(task: str, out_dir, num_images: int | None = None, image_size: int | None = None,
          seed: int = 0) -> dict:
    """Writes the sample set of `task` under `out_dir` (defaults per task when None); returns a summary."""
    writers = {"semantic": write_semantic, "instance": write_instance}
    if task not in writers:
        raise InputError(f"unknown task {task!r}; expected one of {sorted(writers)}")
    return writers[task](out_dir, num_images, image_size, seed)
