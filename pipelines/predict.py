"""`predict(model, images_dir, out_dir)` (`segpipe predict`): an exported model's
`serving_images` signature over a folder of images. The model is a SavedModel directory or a
converted `.tflite` file (trainer_module.on_device.load_predictor: the same outputs, so the same
files; a .tflite carries its task and label map in its metadata).

Semantic models (output `class_ids`) -> one class-id PNG per image (same stem, original size, VOC
palette like `SegmentationClass/`), and with `overlay` a `<stem>_overlay.jpg` blend.
Instance models (outputs `detection_boxes` normalised yxyx, `detection_scores`,
`detection_classes` = dataset category ids, `detection_masks`, `num_detections`) ->
`detections.json` in COCO results format (abs xywh boxes, RLE masks), `image_ids.json`
(file name -> image id used), and with `overlay` masks, boxes and labels drawn per image.

Image ids: from `annotations` (a COCO file: file_name -> id) when given, else the file stem when it is
an integer, else a running number above the largest integer stem (so ids never collide).
"""
from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from components import contract
from components.errors import InputError
from pipelines.visualize import instance_overlay, voc_palette
from pipelines.visualize import overlay as blend

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
SEMANTIC_BATCH = 8
# Instance outputs carry [max_detections, H, W] masks per image: one image per call bounds memory.
INSTANCE_BATCH = 1
OVERLAY_MIN_SCORE = 0.3  # overlays draw only detections at least this confident (JSON keeps all)
INSTANCE_OUTPUTS = ("detection_boxes", "detection_scores", "detection_classes", "num_detections")


def _log(message: str) -> None:
    print(f"predict: {message}", file=sys.stderr)


def _list_images(images_dir: Path) -> list[Path]:
    if not images_dir.is_dir():
        raise InputError(f"images {images_dir} is not a directory")
    files = sorted(p for p in images_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {images_dir}")
    stems: dict[str, Path] = {}
    for path in files:
        if path.stem in stems:
            raise InputError(f"{stems[path.stem].name} and {path.name} would write the same output "
                             f"files (same stem); keep one of them")
        stems[path.stem] = path
    return files


def _read_image(path: Path) -> tuple[bytes, np.ndarray] | str:
    """(encoded bytes, RGB array) or the reason the file cannot be used."""
    data = path.read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as image:
            rgb = np.asarray(image.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        return f"unreadable image: {err}"
    return data, rgb


def _image_ids(files: list[Path], images_dir: Path, annotations: str | None) -> dict[str, int]:
    """File name -> COCO image id, by the rules in the module docstring."""
    if annotations:
        try:
            coco = json.loads(Path(annotations).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise InputError(f"cannot read annotations {annotations}: {err}") from err
        by_name: dict[str, int] = {}
        for image in coco.get("images", []):
            by_name[image["file_name"]] = image["id"]
            by_name.setdefault(Path(image["file_name"]).name, image["id"])
        missing = [p.name for p in files
                   if str(p.relative_to(images_dir)) not in by_name and p.name not in by_name]
        if missing:
            raise InputError(f"{len(missing)} image(s) are not in {annotations}, e.g. {missing[:3]}")
        return {p.name: by_name.get(str(p.relative_to(images_dir)), by_name.get(p.name)) for p in files}
    numeric = [int(p.stem) for p in files if p.stem.isdigit()]
    next_id = max(numeric, default=0) + 1
    ids = {}
    for path in files:
        if path.stem.isdigit():
            ids[path.name] = int(path.stem)
        else:
            ids[path.name] = next_id
            next_id += 1
    return ids


def _label_names(label_map: dict | None, annotations: str | None) -> dict[int, str]:
    """Category id -> name, from the model's label map (SavedModel asset or .tflite metadata) or the
    annotations file."""
    if label_map and label_map.get("classes"):
        names = contract.names_by_label(label_map)
        return {category_id: names[label] for category_id, label in contract.label_by_id(label_map).items()}
    if annotations:
        return {int(c["id"]): c["name"] for c in json.loads(Path(annotations).read_text()).get("categories", [])}
    return {}


def _batches(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _predict_semantic(predictor, readable, out: Path, overlay: bool) -> dict:
    palette = voc_palette()
    written = overlays = 0
    for batch in _batches(readable, SEMANTIC_BATCH):
        class_ids = np.asarray(predictor.predict_images([data for _, data, _ in batch])["class_ids"])
        for (path, _, rgb), ids in zip(batch, class_ids):
            height, width = rgb.shape[:2]
            if ids.shape[0] < height or ids.shape[1] < width:
                raise RuntimeError(f"the model returned class_ids of shape {ids.shape} for {path.name} "
                                   f"of size {height}x{width}; expected at least the original size")
            ids = ids[:height, :width]
            png = Image.fromarray(ids.astype(np.uint8), mode="P")
            png.putpalette(palette)
            png.save(out / f"{path.stem}.png")
            written += 1
            if overlay:
                blend(rgb, ids).save(out / f"{path.stem}_overlay.jpg", quality=90)
                overlays += 1
        _log(f"{written}/{len(readable)} images")
    return {"task": "semantic", "masks_written": written, "overlays": overlays}


def _predict_instance(predictor, readable, out: Path, overlay: bool, image_ids: dict[str, int],
                      names: dict[int, str]) -> dict:
    from trainer_module.metrics.coco_eval import detections_to_coco

    detections: list[dict] = []
    overlays = 0
    for batch in _batches(readable, INSTANCE_BATCH):
        outputs = {k: np.asarray(v) for k, v in predictor.predict_images([d for _, d, _ in batch]).items()}
        for i, (path, _, rgb) in enumerate(batch):
            height, width = rgb.shape[:2]
            count = int(outputs["num_detections"][i])
            boxes = outputs["detection_boxes"][i][:count]
            scores = outputs["detection_scores"][i][:count]
            classes = np.rint(outputs["detection_classes"][i][:count]).astype(np.int64)
            masks = None
            if "detection_masks" in outputs:
                masks = outputs["detection_masks"][i][:count, :height, :width]
            detections += detections_to_coco(image_ids[path.name], height, width, boxes, scores,
                                             classes, masks)
            if overlay:
                keep = scores >= OVERLAY_MIN_SCORE
                abs_boxes = boxes[keep][:, [1, 0, 3, 2]] * np.array([width, height, width, height])
                picture = instance_overlay(rgb, masks[keep] if masks is not None else None, abs_boxes,
                                           classes[keep].tolist(), scores[keep].tolist(), names)
                picture.save(out / f"{path.stem}_overlay.jpg", quality=90)
                overlays += 1
        _log(f"{len(detections)} detections so far")
    results_file = out / "detections.json"
    results_file.write_text(json.dumps(detections))
    (out / "image_ids.json").write_text(json.dumps(image_ids, indent=1, sort_keys=True))
    return {"task": "instance", "detections": len(detections), "detections_file": str(results_file),
            "overlays": overlays}


def predict(model_dir, images_dir, out_dir, annotations: str | None = None, overlay: bool = False) -> dict:
    """Runs the model (a SavedModel directory or a .tflite file) over every image of images_dir,
    writing into out_dir; returns a summary.

    annotations: a COCO file giving the image ids (instance models); overlay: also write pictures.
    """
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    model_path = Path(model_dir)
    is_tflite = model_path.suffix == ".tflite"
    if is_tflite and not model_path.is_file():
        raise InputError(f"model {model_path} does not exist (a .tflite file or a SavedModel directory)")
    if not is_tflite and not (model_path / "saved_model.pb").is_file():
        raise InputError(f"model {model_path} is not a SavedModel directory (no saved_model.pb) "
                         f"nor a .tflite file")
    images_dir = Path(images_dir)
    files = _list_images(images_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    readable, skipped = [], []
    for path in files:
        loaded = _read_image(path)
        if isinstance(loaded, str):
            _log(f"skipping {path.name}: {loaded}")
            skipped.append({"file": path.name, "reason": loaded})
        else:
            readable.append((path, *loaded))

    from trainer_module.on_device import TFLiteModel, load_predictor

    predictor = load_predictor(str(model_path))
    if isinstance(predictor, TFLiteModel):
        task = predictor.task
        _log(f"{len(readable)} images, {predictor.variant or 'TFLite'} model of task {task}")
    else:
        output_names = predictor.output_names
        _log(f"{len(readable)} images, model outputs {sorted(output_names)}")
        if "class_ids" in output_names:
            task = "semantic"
        elif set(INSTANCE_OUTPUTS) <= output_names:
            task = "instance"
        else:
            raise InputError(f"{model_path}: serving_images returns {sorted(output_names)}; expected "
                             f"class_ids (semantic) or {', '.join(INSTANCE_OUTPUTS)} (instance)")
    if task == "semantic":
        result = _predict_semantic(predictor, readable, out, overlay)
    else:
        image_ids = _image_ids([p for p, _, _ in readable], images_dir, annotations)
        result = _predict_instance(predictor, readable, out, overlay, image_ids,
                                   _label_names(predictor.label_map, annotations))
    return {"model": str(model_path), "images": len(readable), "out": str(out),
            "skipped": skipped, **result}
