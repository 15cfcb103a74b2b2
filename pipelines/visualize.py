"""Pictures of predictions (PIL) and charts of metrics (matplotlib, drawn off-screen with Agg).

Every function returns a PIL image (`png_bytes` encodes one).

- `voc_palette`: the PASCAL VOC colour map of class-id PNGs.
- `overlay`: class-id map blended over an image in the VOC colours.
- `instance_overlay`: instance masks, boxes and "name score" labels over an image.
- `per_class_bars` / `per_class_iou_chart`: horizontal bars per class, several series (candidate
  vs baseline) side by side, each value written at its bar's end.
- `confusion_heatmap`: a confusion matrix, rows normalised to the ground truth.
- `pr_curves`: precision-recall curves.
- `training_curves`: loss and learning rate against the training step.
"""
from __future__ import annotations

import colorsys
import io
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
                     labels: Sequence[int], scores: Sequence[float] | None,
                     names: Mapping[int, str] | Sequence[str] | None = None,
                     alpha: float = 0.45) -> Image.Image:
    """Draws instances over the image.

    masks: [N, H, W] (any non-zero value is foreground) or None; boxes: [N, 4] absolute pixels
    (xmin, ymin, xmax, ymax); labels: category ids; names: category id -> name (a mapping, or a
    sequence indexed by id); scores: [N], or None to write the names alone (ground truth).
    """
    rgb = _as_rgb(image).astype(np.float32)
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    count = len(boxes)
    if len(labels) != count or (scores is not None and len(scores) != count):
        raise ValueError(f"{count} boxes but {len(labels)} labels and "
                         f"{'no' if scores is None else len(scores)} scores")
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
        text = name if scores is None else f"{name} {float(scores[i]):.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        ty = max(0.0, y0 - (bottom - top) - 3)
        draw.rectangle([x0, ty, x0 + right - left + 4, ty + bottom - top + 3], fill=colour)
        draw.text((x0 + 2, ty + 1 - top), text, fill=(0, 0, 0), font=font)
    return canvas




def png_bytes(picture: Image.Image) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


# Charts (matplotlib). Figures are built with the object API and rendered by Agg: no pyplot state,
# no display needed.

SERIES_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728")  # candidate, baseline, ...


def _figure(width_px: int, height_px: int, dpi: int = 100, layout: str | None = None):
    from matplotlib.figure import Figure

    return Figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi, layout=layout)


def _render(figure) -> Image.Image:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3].copy())


def per_class_bars(names: Sequence[str], series: Mapping[str, Sequence[float]], title: str,
                   xlabel: str = "IoU", width: int = 640) -> Image.Image:
    """Horizontal bars on a 0..1 axis: one group per class (top to bottom in the given order), one
    bar per series (e.g. {"candidate": [...], "baseline": [...]}), the value at each bar's end.
    A NaN value (the class absent from ground truth and prediction) is written "n/a", without a bar.
    """
    names = [str(n) for n in names]
    for label, values in series.items():
        if len(values) != len(names):
            raise ValueError(f"{len(names)} class names but {len(values)} {label} values")
    count = max(len(series), 1)
    row = 0.8 / count
    height = 110 + len(names) * max(22, 15 * count) + (20 if count > 1 else 0)
    figure = _figure(width, height, layout="constrained")
    axes = figure.add_subplot()
    y = np.arange(len(names))
    for k, (label, values) in enumerate(series.items()):
        offsets = y - 0.4 + row * (k + 0.5)
        values = np.asarray([float(v) for v in values], dtype=np.float64)
        shown = np.where(np.isnan(values), 0.0, np.clip(values, 0.0, 1.0))
        axes.barh(offsets, shown, height=row * 0.9, color=SERIES_COLOURS[k % len(SERIES_COLOURS)],
                  label=label)
        for offset, value in zip(offsets, values):
            text = "n/a" if math.isnan(value) else f"{value:.3f}"
            axes.text(0.01 if math.isnan(value) else min(max(value, 0.0), 1.0) + 0.01, offset, text,
                      va="center", fontsize=8, color="#777777" if math.isnan(value) else "black")
    axes.set_yticks(y, names)
    axes.invert_yaxis()
    axes.set_xticks([0, 0.25, 0.5, 0.75, 1.0])
    axes.grid(axis="x", color="#dddddd")
    axes.set_axisbelow(True)
    axes.set_xlabel(xlabel)
    axes.set_title(title)
    axes.set_xlim(0, 1.12)  # room for the values written after full-length bars
    if count > 1:
        figure.legend(loc="outside lower center", ncol=count, frameon=False, fontsize=9)
    return _render(figure)


def per_class_iou_chart(names: Sequence[str], ious: Sequence[float], title: str = "per-class IoU",
                        width: int = 640) -> Image.Image:
    """Horizontal bars, one per class, on a 0..1 axis, with each value written at the bar's end.

    A NaN value (class absent from ground truth and prediction) is shown as "n/a" without a bar.
    """
    if len(names) != len(ious):
        raise ValueError(f"{len(names)} class names but {len(ious)} IoU values")
    return per_class_bars(names, {"IoU": ious}, title, width=width)


def confusion_heatmap(matrix: np.ndarray, names: Sequence[str], title: str = "confusion matrix",
                      size: int = 560) -> Image.Image:
    """Rows: ground truth, columns: prediction; each cell the share of its row's pixels (so the
    diagonal is per-class recall), written in the cell; rows without pixels stay blank."""
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] != len(names):
        raise ValueError(f"confusion matrix of shape {matrix.shape} for {len(names)} class names")
    totals = matrix.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        shares = np.where(totals > 0, matrix / np.where(totals > 0, totals, 1), np.nan)
    n = len(names)
    figure = _figure(size + 120, size, layout="constrained")
    axes = figure.add_subplot()
    image = axes.imshow(np.ma.masked_invalid(shares), cmap="Blues", vmin=0.0, vmax=1.0)
    axes.set_xticks(range(n), [str(x) for x in names], rotation=45, ha="right")
    axes.set_yticks(range(n), [str(x) for x in names])
    axes.set_xlabel("predicted class")
    axes.set_ylabel("ground-truth class")
    axes.set_title(title)
    if n <= 25:
        for i in range(n):
            for j in range(n):
                if not math.isnan(shares[i, j]):
                    axes.text(j, i, f"{shares[i, j]:.2f}", ha="center", va="center", fontsize=8,
                              color="white" if shares[i, j] > 0.6 else "black")
    colorbar = figure.colorbar(image, ax=axes, shrink=0.8)
    colorbar.set_label("share of the ground-truth row's pixels")
    return _render(figure)


def pr_curves(recall: Sequence[float], curves: Mapping[str, Sequence[float]],
              title: str = "precision-recall", width: int = 640, height: int = 420,
              styles: Mapping[str, dict] | None = None) -> Image.Image:
    """One line per curve (label -> precision at each recall); NaN/negative precision (recall
    never reached) is not drawn. styles: label -> matplotlib line options (color, linestyle)."""
    figure = _figure(width, height, layout="constrained")
    axes = figure.add_subplot()
    recall = np.asarray(recall, dtype=np.float64)
    for k, (label, precision) in enumerate(curves.items()):
        precision = np.asarray(precision, dtype=np.float64)
        if precision.shape != recall.shape:
            raise ValueError(f"{label}: {precision.shape[0]} precision values for {recall.shape[0]} recalls")
        precision = np.where(precision < 0, np.nan, precision)
        style = {"color": SERIES_COLOURS[k % len(SERIES_COLOURS)], "linestyle": "-",
                 **((styles or {}).get(label) or {})}
        axes.plot(recall, precision, label=label, linewidth=2, **style)
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.02)
    axes.set_xlabel("recall")
    axes.set_ylabel("precision")
    axes.grid(color="#dddddd")
    axes.set_title(title)
    if curves:
        axes.legend(loc="upper right", fontsize=9)
    return _render(figure)


def training_curves(loss: tuple[Sequence[int], Sequence[float]],
                    learning_rate: tuple[Sequence[int], Sequence[float]],
                    width: int = 900, height: int = 340) -> Image.Image:
    """Training loss (left) and learning rate (right) against the step; a missing series is
    drawn as an empty plot saying so."""
    from matplotlib.ticker import MaxNLocator

    figure = _figure(width, height, layout="constrained")
    for axes, ((steps, values), name, colour) in zip(
            figure.subplots(1, 2),
            ((loss, "loss", SERIES_COLOURS[0]), (learning_rate, "learning rate", SERIES_COLOURS[2]))):
        if len(steps):
            axes.plot(steps, values, color=colour, marker="o" if len(steps) <= 30 else None, markersize=3)
            if len(steps) == 1:  # one summary (a short run): a step either side, whole-number ticks
                axes.set_xlim(steps[0] - 1, steps[0] + 1)
        else:
            axes.text(0.5, 0.5, f"no {name} recorded", ha="center", va="center", transform=axes.transAxes)
        axes.set_xlabel("step")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_title(name)
        axes.grid(color="#dddddd")
        axes.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4))
    return _render(figure)
