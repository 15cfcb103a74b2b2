"""Pictures of predictions and metrics, with PIL only (matplotlib is not a dependency).

- `voc_palette`: the PASCAL VOC colour map of class-id PNGs.
- `overlay`: class-id map blended over an image in the VOC colours.
- `instance_overlay`: instance masks, boxes and "name score" labels over an image.
- `per_class_iou_chart`: horizontal bar chart of per-class IoU with the values written out.
"""
from __future__ import annotations

import colorsys
import math
from typing import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from components.contract import IGNORE_LABEL


def voc_palette() -> list[int]:
    """The PASCAL VOC colour map (256 RGB triples, flattened), as in VOC's own label PNGs."""
    palette = []
    for index in range(256):
        r = g = b = 0
        c = index
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        palette += [r, g, b]
    return palette


def _font(size: int = 12) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _as_rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"image must be HxWx3 (or HxW / HxWx4), got shape {image.shape}")
    return image[..., :3].astype(np.uint8)


def overlay(image: np.ndarray, class_ids: np.ndarray, alpha: float = 0.5,
            palette: Sequence[int] | None = None) -> Image.Image:
    """Blends the colour of each pixel's class over the image.

    Background (0) and IGNORE_LABEL pixels are left as they are. `palette` is a flat
    [r, g, b, r, g, b, ...] list indexed by class id (default: the PASCAL VOC colour map).
    """
    rgb = _as_rgb(image)
    class_ids = np.asarray(class_ids)
    if class_ids.shape != rgb.shape[:2]:
        raise ValueError(f"class_ids shape {class_ids.shape} does not match the image {rgb.shape[:2]}")
    colours = np.zeros((256, 3), dtype=np.float32)
    flat = list(palette if palette is not None else voc_palette())[:768]
    colours[:len(flat) // 3] = np.asarray(flat[:len(flat) // 3 * 3], dtype=np.float32).reshape(-1, 3)
    ids = np.clip(class_ids, 0, 255).astype(np.int64)
    painted = (ids != 0) & (ids != IGNORE_LABEL)
    out = rgb.astype(np.float32)
    out[painted] = (1 - alpha) * out[painted] + alpha * colours[ids[painted]]
    return Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8))


def instance_colour(index: int) -> tuple[int, int, int]:
    """Well separated, saturated colours (golden-ratio hue steps)."""
    r, g, b = colorsys.hsv_to_rgb((index * 0.618033988749895) % 1.0, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def instance_overlay(image: np.ndarray, masks: np.ndarray | None, boxes: np.ndarray,
                     labels: Sequence[int], scores: Sequence[float],
                     names: Mapping[int, str] | Sequence[str] | None = None,
                     alpha: float = 0.45) -> Image.Image:
    """Draws instances over the image.

    masks: [N, H, W] (any non-zero value is foreground) or None; boxes: [N, 4] absolute pixels
    (xmin, ymin, xmax, ymax); labels: category ids; names: category id -> name (a mapping, or a
    sequence indexed by id); scores: [N].
    """
    rgb = _as_rgb(image).astype(np.float32)
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    count = len(boxes)
    if len(labels) != count or len(scores) != count:
        raise ValueError(f"{count} boxes but {len(labels)} labels and {len(scores)} scores")
    if masks is not None:
        masks = np.asarray(masks)
        if masks.shape[0] != count or masks.shape[1:] != rgb.shape[:2]:
            raise ValueError(f"masks shape {masks.shape} does not match {count} instances of an "
                             f"image of size {rgb.shape[:2]}")
        for i in range(count):
            on = masks[i] != 0
            rgb[on] = (1 - alpha) * rgb[on] + alpha * np.asarray(instance_colour(i), dtype=np.float32)
    canvas = Image.fromarray(np.clip(rgb + 0.5, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    font = _font(11)
    for i in range(count):
        colour = instance_colour(i)
        x0, y0, x1, y1 = (float(v) for v in boxes[i])
        draw.rectangle([x0, y0, x1, y1], outline=colour, width=2)
        label = int(labels[i])
        if isinstance(names, Mapping):
            name = names.get(label, str(label))
        elif names is not None and 0 <= label < len(names):
            name = names[label]
        else:
            name = str(label)
        text = f"{name} {float(scores[i]):.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        ty = max(0.0, y0 - (bottom - top) - 3)
        draw.rectangle([x0, ty, x0 + right - left + 4, ty + bottom - top + 3], fill=colour)
        draw.text((x0 + 2, ty + 1 - top), text, fill=(0, 0, 0), font=font)
    return canvas


def per_class_iou_chart(names: Sequence[str], ious: Sequence[float], title: str = "per-class IoU",
                        width: int = 640) -> Image.Image:
    """Horizontal bars, one per class, on a 0..1 axis, with each value written at the bar's end.

    A NaN value (class absent from ground truth and prediction) is shown as "n/a" without a bar.
    """
    if len(names) != len(ious):
        raise ValueError(f"{len(names)} class names but {len(ious)} IoU values")
    font, title_font = _font(13), _font(15)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = max([probe.textlength(str(n), font=font) for n in names] + [40])
    row, top, bottom = 24, 40, 34
    left = int(label_w) + 16
    bar_max = width - left - 60
    height = top + row * len(names) + bottom
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    draw.text((width / 2, 12), title, fill="black", font=title_font, anchor="mt")
    axis_y = top + row * len(names) + 4
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):  # grid lines and tick labels
        x = left + tick * bar_max
        draw.line([(x, top - 4), (x, axis_y)], fill=(215, 215, 215))
        draw.text((x, axis_y + 4), f"{tick:g}", fill="black", font=font, anchor="mt")
    for i, (name, value) in enumerate(zip(names, ious)):
        y = top + i * row
        centre = y + row / 2
        draw.text((left - 8, centre), str(name), fill="black", font=font, anchor="rm")
        value = float(value)
        if math.isnan(value):
            draw.text((left + 4, centre), "n/a", fill=(120, 120, 120), font=font, anchor="lm")
            continue
        length = max(0.0, min(1.0, value)) * bar_max
        draw.rectangle([left, y + 4, left + length, y + row - 4], fill=instance_colour(i))
        draw.text((left + length + 6, centre), f"{value:.3f}", fill="black", font=font, anchor="lm")
    draw.line([(left, top - 4), (left, axis_y)], fill="black")
    return img
