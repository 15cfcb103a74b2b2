"""The run report: one self-contained HTML page (`report.html`, every picture a PNG data URI) about
one pipeline run, written by the RunReport component (components/run_report.py calls
`write_run_report`, named in pipelines/pipeline.py as its `report_fn`).

Sections (their HTML ids): `gate` (blessed or not and every reason, the gate's checks), `metrics`
(candidate vs baseline), `per-class` (per-class IoU or per-category box/mask AP, candidate and
baseline side by side), `confusion` (semantic: the pixel confusion matrix) or `pr-curve` (instance:
COCO precision-recall), `predictions` (a fixed handful of evaluation images: ground truth next to
the candidate's and the baseline's predictions), `data` (examples per split, spans, quarantined
records with reasons, anomalies) and `training` (loss and learning rate).

Headline metrics, gate and per-class IoU come from the Evaluator's own output. What TFMA does not
keep (the confusion matrix, COCO's precision array, per-category AP, the pictures) is computed here
by running the models' `serving_default` over the evaluation split's examples (the first
`max_examples` by image id), with the same IoU and COCO code as the metrics.

A section that cannot be drawn says why on the page (and in the log) instead of failing the run:
the model is judged and pushed before the report runs.
"""
from __future__ import annotations

import base64
import contextlib
import datetime
import heapq
import json
import math
import os
import sys
import traceback
from typing import Any

import numpy as np

from components import contract, paths
from components.quarantine import QUARANTINE_FILE, SUMMARY_FILE

REPORT_FILE = "report.html"
DEFAULT_OPTIONS = {
    "eval_split": "val",
    "num_images": 6,        # evaluation images drawn (the first by image id, so the same every run)
    "max_examples": 200,    # evaluation examples the report predicts on (confusion, PR, per-category AP)
    "min_score": 0.3,       # instance detections drawn at least this confident
    "quarantine_rows": 20,  # quarantine records listed (all are counted)
}
SEMANTIC_BATCH = 8


def _say(message: str) -> None:
    print(f"[report] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- evaluation, gate, metrics

def blessing_state(blessing_uri: str | None) -> str:
    """"BLESSED", "NOT_BLESSED" or "NOT_GATED" (no Evaluator thresholds, so no verdict file)."""
    if blessing_uri:
        for state in ("BLESSED", "NOT_BLESSED"):
            if paths.exists(paths.join(blessing_uri, state)):
                return state
    return "NOT_GATED"


def model_metrics(evaluation_uri: str) -> dict[str, dict[str, float]]:
    """{"candidate": {...}, "baseline": {...}} of the overall slice (baseline empty without one).

    run_results.read_metrics gives the candidate and the change; the baseline's own values are
    read here."""
    import tensorflow_model_analysis as tfma

    out: dict[str, dict[str, float]] = {"candidate": {}, "baseline": {}}
    for metrics_for_slice in tfma.load_metrics(evaluation_uri):
        if metrics_for_slice.slice_key.single_slice_keys:
            continue
        for kv in metrics_for_slice.metric_keys_and_values:
            if kv.key.is_diff or not kv.value.HasField("double_value"):
                continue
            model = "baseline" if kv.key.model_name == "baseline" else "candidate"
            out[model][kv.key.name] = kv.value.double_value.value
    return out


def gate_checks(evaluation_uri: str, metrics: dict[str, dict[str, float]],
                change: dict[str, float]) -> list[dict]:
    """One row per threshold of the Evaluator's config: metric, kind, bound, value, passed."""
    from tensorflow_model_analysis.metrics import metric_specs
    from tensorflow_model_analysis.writers import eval_config_writer

    eval_config, *_ = eval_config_writer.load_eval_run(evaluation_uri)
    if eval_config is None:
        return []
    thresholds = metric_specs.metric_thresholds_from_metrics_specs(eval_config.metrics_specs, eval_config)
    rows, seen = [], set()
    for key, entries in thresholds.items():
        if key.model_name == "baseline":
            continue
        for _, threshold in entries:
            if key.is_diff:
                allowed = threshold.absolute.value if threshold.HasField("absolute") else None
                value = change.get(key.name)
                row = {"metric": key.name, "check": "change vs baseline",
                       "bound": f"≥ {allowed:+.4f}" if allowed is not None else "",
                       "value": value,
                       "passed": None if value is None or allowed is None else value >= allowed - 1e-12}
            else:
                bound = threshold.lower_bound.value if threshold.HasField("lower_bound") else None
                upper = threshold.upper_bound.value if threshold.HasField("upper_bound") else None
                value = metrics["candidate"].get(key.name)
                passed = None
                if value is not None:
                    passed = (bound is None or value >= bound) and (upper is None or value <= upper)
                bounds = " and ".join(b for b in (f"≥ {bound:.4f}" if bound is not None else "",
                                                  f"≤ {upper:.4f}" if upper is not None else "") if b)
                row = {"metric": key.name, "check": "value", "bound": bounds, "value": value,
                       "passed": passed}
            signature = (row["metric"], row["check"], row["bound"])
            if signature not in seen:
                seen.add(signature)
                rows.append(row)
    return sorted(rows, key=lambda r: (r["metric"], r["check"]))


# ---------------------------------------------------------------- examples and predictions

def _source_key(source_id: str):
    return (0, int(source_id), "") if source_id.isdigit() else (1, 0, source_id)


def eval_examples(examples: list[dict], split: str, limit: int) -> tuple[list[bytes], int]:
    """(the first `limit` serialized examples of the split by image id, how many the split holds)."""
    from components.example_codec import parse_example
    from trainer_module.metrics.coco_eval import read_serialized

    files = []
    for artifact in examples:
        folder = paths.join(artifact["uri"], f"Split-{split}")
        if paths.exists(folder):
            files += paths.tfrecord_files(folder)
    if not files:
        raise FileNotFoundError(f"no Split-{split} examples in {[a['uri'] for a in examples]}")
    heap: list = []  # max-heap on the image id (negated keys) keeping the smallest `limit`
    total = 0
    for index, serialized in enumerate(read_serialized(files)):
        total += 1
        source = parse_example(serialized)[contract.IMAGE_SOURCE_ID][0].decode()
        key = _source_key(source)
        inverted = (-key[0], -key[1], tuple(-ord(c) for c in key[2]) + (1,))
        item = (inverted, -index, serialized)
        if len(heap) < limit:
            heapq.heappush(heap, item)
        elif item > heap[0]:
            heapq.heapreplace(heap, item)
    chosen = sorted(heap, reverse=True)
    return [serialized for *_, serialized in chosen], total


def _load_serving(model_uri: str):
    import tensorflow as tf

    model = tf.saved_model.load(paths.join(model_uri, "Format-Serving"))
    return model.signatures["serving_default"]


def _decode_image(serialized_example: dict) -> np.ndarray:
    import io

    from PIL import Image

    with Image.open(io.BytesIO(serialized_example[contract.IMAGE_ENCODED][0])) as image:
        return np.asarray(image.convert("RGB"))


def semantic_predictions(model_uri: str, serialized: list[bytes]) -> list[np.ndarray]:
    """The model's class ids per example, cropped to each image's size."""
    import tensorflow as tf

    from components.example_codec import parse_example

    signature = _load_serving(model_uri)
    out = []
    for start in range(0, len(serialized), SEMANTIC_BATCH):
        batch = serialized[start:start + SEMANTIC_BATCH]
        class_ids = signature(examples=tf.constant(batch))["class_ids"].numpy()
        for example, ids in zip(batch, class_ids):
            parsed = parse_example(example)
            height, width = parsed[contract.IMAGE_HEIGHT][0], parsed[contract.IMAGE_WIDTH][0]
            out.append(ids[:height, :width])
    return out


def instance_predictions(model_uri: str, serialized: list[bytes]) -> list[dict]:
    """Per example: boxes (normalised yxyx), scores, classes (category ids), masks (HxW 0/1)."""
    import tensorflow as tf

    from components.example_codec import parse_example

    signature = _load_serving(model_uri)
    out = []
    for example in serialized:
        parsed = parse_example(example)
        height, width = parsed[contract.IMAGE_HEIGHT][0], parsed[contract.IMAGE_WIDTH][0]
        outputs = {k: v.numpy()[0] for k, v in signature(examples=tf.constant([example])).items()}
        count = int(outputs["num_detections"])
        masks = outputs.get("detection_masks")
        out.append({
            "boxes": outputs["detection_boxes"][:count],
            "scores": outputs["detection_scores"][:count],
            "classes": np.rint(outputs["detection_classes"][:count]).astype(np.int64),
            "masks": None if masks is None else masks[:count, :height, :width],
        })
    return out


def coco_evaluations(gt: dict, image_ids: list, predictions: list[dict], label_map: dict) -> dict:
    """{"bbox": COCOeval, "segm": COCOeval} (accumulated) of one model's predictions; None for an
    IoU type without detections."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from trainer_module.metrics.coco_eval import detections_to_coco

    sizes = {image["id"]: (image["height"], image["width"]) for image in gt["images"]}
    detections = []
    for image_id, pred in zip(image_ids, predictions):
        height, width = sizes[image_id]
        detections += detections_to_coco(image_id, height, width, pred["boxes"], pred["scores"],
                                         pred["classes"], pred["masks"])
    results = {}
    for iou_type in ("bbox", "segm"):
        usable = [d for d in detections if iou_type == "bbox" or "segmentation" in d]
        if not usable:
            results[iou_type] = None
            continue
        with contextlib.redirect_stdout(sys.stderr):
            coco_gt = COCO()
            coco_gt.dataset = {k: list(v) for k, v in gt.items()}
            coco_gt.createIndex()
            coco_eval = COCOeval(coco_gt, coco_gt.loadRes([dict(d) for d in usable]), iou_type)
            coco_eval.evaluate()
            coco_eval.accumulate()
        results[iou_type] = coco_eval
    return results


def per_category_ap(coco_eval, category_ids: list[int]) -> list[float]:
    """AP@[.50:.95] per category (all areas, 100 detections), NaN where it has no ground truth."""
    if coco_eval is None:
        return [0.0] * len(category_ids)
    precision = coco_eval.eval["precision"]  # [T, R, K, A, M]
    index = {c: k for k, c in enumerate(coco_eval.params.catIds)}
    out = []
    for category in category_ids:
        values = precision[:, :, index[category], 0, -1] if category in index else np.array([-1.0])
        values = values[values > -1]
        out.append(float(values.mean()) if values.size else float("nan"))
    return out


def overall_ap(coco_eval) -> float:
    """COCO's AP@[.50:.95] (stats[0]) from the precision array; 0 without detections."""
    if coco_eval is None:
        return 0.0
    precision = coco_eval.eval["precision"][:, :, :, 0, -1]
    valid = precision[precision > -1]
    return float(valid.mean()) if valid.size else -1.0


def pr_curve(coco_eval, iou: float | None) -> np.ndarray:
    """Precision at COCO's 101 recall points, averaged over categories with ground truth; at one
    IoU threshold, or averaged over .50:.95 (iou None)."""
    precision = coco_eval.eval["precision"][:, :, :, 0, -1]  # [T, R, K]
    if iou is not None:
        t = int(np.argmin(np.abs(coco_eval.params.iouThrs - iou)))
        precision = precision[t:t + 1]
    valid = precision > -1
    counts = valid.sum(axis=(0, 2))
    sums = np.where(valid, precision, 0.0).sum(axis=(0, 2))
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


# ---------------------------------------------------------------- training curves, data

def training_scalars(model_run_uri: str) -> dict[str, tuple[list[int], list[float]]]:
    """{"loss": (steps, values), "learning_rate": (...)} from the Trainer's TensorBoard events
    (several event files, e.g. a resumed trainer: the last value written for a step wins)."""
    import tensorflow as tf

    files = paths.glob(paths.join(model_run_uri, "events.out.tfevents*")) + \
        paths.glob(paths.join(model_run_uri, "*/events.out.tfevents*"))
    series: dict[str, dict[int, float]] = {"loss": {}, "learning_rate": {}}
    for path in sorted(files):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag not in series:
                    continue
                if value.HasField("tensor"):
                    number = float(tf.make_ndarray(value.tensor).reshape(-1)[0])
                else:
                    number = float(value.simple_value)
                series[value.tag][int(event.step)] = number
    return {tag: (sorted(points), [points[s] for s in sorted(points)]) for tag, points in series.items()}


def _read_json(path: str):
    with paths.open_file(path) as f:
        return json.load(f)


def data_summary(examples: list[dict], statistics_uri: str | None, anomalies_uri: str | None,
                 quarantine_rows: int) -> dict:
    from tensorflow_metadata.proto.v0 import anomalies_pb2, statistics_pb2

    artifacts = []
    for artifact in examples:
        entry = {"uri": artifact["uri"], "span": artifact.get("span"), "version": artifact.get("version"),
                 "splits": artifact.get("split_names") or [], "summary": None, "quarantine": []}
        summary_path = paths.join(artifact["uri"], SUMMARY_FILE)
        if paths.exists(summary_path):
            entry["summary"] = _read_json(summary_path)
        quarantine_path = paths.join(artifact["uri"], QUARANTINE_FILE)
        if paths.exists(quarantine_path):
            with paths.open_file(quarantine_path) as f:
                for line in f:
                    if line.strip():
                        entry["quarantine"].append(json.loads(line))
        entry["quarantine_total"] = len(entry["quarantine"])
        entry["quarantine"] = entry["quarantine"][:quarantine_rows]
        artifacts.append(entry)

    statistics = {}
    if statistics_uri:
        for path in paths.glob(paths.join(statistics_uri, "Split-*/FeatureStats.pb")):
            split = os.path.basename(os.path.dirname(path))[len("Split-"):]
            with paths.open_file(path, "rb") as f:
                stats = statistics_pb2.DatasetFeatureStatisticsList.FromString(f.read())
            statistics[split] = {"examples": sum(d.num_examples for d in stats.datasets),
                                 "features": sum(len(d.features) for d in stats.datasets)}
    anomalies = {}
    if anomalies_uri:
        for path in paths.glob(paths.join(anomalies_uri, "Split-*/SchemaDiff.pb")):
            split = os.path.basename(os.path.dirname(path))[len("Split-"):]
            with paths.open_file(path, "rb") as f:
                found = anomalies_pb2.Anomalies.FromString(f.read())
            rows = [{"feature": name, "severity": anomalies_pb2.AnomalyInfo.Severity.Name(info.severity),
                     "what": info.short_description, "description": info.description}
                    for name, info in sorted(found.anomaly_info.items())]
            if found.HasField("dataset_anomaly_info"):
                info = found.dataset_anomaly_info
                rows.append({"feature": "(dataset)",
                             "severity": anomalies_pb2.AnomalyInfo.Severity.Name(info.severity),
                             "what": info.short_description, "description": info.description})
            anomalies[split] = rows
    return {"artifacts": artifacts, "statistics": statistics, "anomalies": anomalies,
            "spans": sorted({a["span"] for a in artifacts if a["span"] is not None})}


# ---------------------------------------------------------------- pictures

def data_uri(picture) -> str:
    from pipelines import visualize

    return "data:image/png;base64," + base64.b64encode(visualize.png_bytes(picture)).decode("ascii")


PICTURE_SIZE = 256  # the long side of the pictures drawn on the page


def _scale(rgb: np.ndarray) -> int:
    """Small images are enlarged by a whole factor (pixels stay pixels) before drawing on them,
    so labels and box lines stay legible."""
    return max(1, PICTURE_SIZE // max(rgb.shape[:2]))


def _enlarge(array: np.ndarray | None, factor: int, axes=(0, 1)):
    if array is None or factor == 1:
        return array
    for axis in axes:
        array = np.repeat(array, factor, axis=axis)
    return array


def _fit(picture):
    """The picture with its long side PICTURE_SIZE (smaller ones were enlarged before drawing)."""
    from PIL import Image

    if isinstance(picture, np.ndarray):
        picture = Image.fromarray(picture)
    long_side = max(picture.size)
    if long_side > PICTURE_SIZE:
        ratio = PICTURE_SIZE / long_side
        picture = picture.resize((max(1, round(picture.width * ratio)), max(1, round(picture.height * ratio))),
                                 Image.LANCZOS)
    return picture


def _semantic_gt(parsed: dict) -> np.ndarray:
    from components.example_codec import decode_png

    return decode_png(parsed[contract.CLASS_MAP_ENCODED][0])


def _instance_gt_picture(rgb, parsed: dict, names: dict[int, str], id_of: dict[int, int]):
    from components.example_codec import decode_png
    from pipelines import visualize

    factor = _scale(rgb)
    rgb = _enlarge(rgb, factor)
    height, width = rgb.shape[:2]
    labels = list(parsed.get(contract.OBJECT_LABEL, []))
    boxes = np.array([[parsed[contract.OBJECT_XMIN][i] * width, parsed[contract.OBJECT_YMIN][i] * height,
                       parsed[contract.OBJECT_XMAX][i] * width, parsed[contract.OBJECT_YMAX][i] * height]
                      for i in range(len(labels))], dtype=np.float32).reshape(-1, 4)
    masks = (_enlarge(np.stack([decode_png(m) for m in parsed[contract.OBJECT_MASK]]), factor, (1, 2))
             if labels else None)
    return visualize.instance_overlay(rgb, masks, boxes, [id_of.get(int(x), int(x)) for x in labels], None, names)


def _instance_prediction_picture(rgb, pred: dict, names: dict[int, str], min_score: float):
    from pipelines import visualize

    factor = _scale(rgb)
    rgb = _enlarge(rgb, factor)
    height, width = rgb.shape[:2]
    keep = pred["scores"] >= min_score
    boxes = pred["boxes"][keep][:, [1, 0, 3, 2]] * np.array([width, height, width, height])
    masks = _enlarge(pred["masks"][keep], factor, (1, 2)) if pred["masks"] is not None else None
    return visualize.instance_overlay(rgb, masks, boxes, pred["classes"][keep].tolist(),
                                      pred["scores"][keep].tolist(), names)


# ---------------------------------------------------------------- the page

class Sections:
    """Collects each section's content; a section whose code fails records the error instead."""

    def __init__(self):
        self.errors: dict[str, str] = {}

    @contextlib.contextmanager
    def section(self, name: str):
        try:
            yield
        except Exception as err:  # noqa: BLE001 - shown on the page, logged with its traceback
            _say(f"section {name} could not be drawn: {err}\n{traceback.format_exc()}")
            self.errors[name] = f"{type(err).__name__}: {err}"


def _fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        # COCOeval reports -1 when no ground truth qualifies (e.g. no large objects).
        return "n/a" if math.isnan(value) or value == -1.0 else f"{value:.4f}"
    return str(value)


def _label_map(examples: list[dict], options: dict) -> dict:
    for artifact in examples:
        path = paths.join(artifact["uri"], contract.LABEL_MAP_FILE)
        if paths.exists(path):
            return _read_json(path)
    if options.get("label_map"):
        return options["label_map"]
    raise FileNotFoundError("no label_map.json beside the examples and none in the options")


def build_context(inputs: dict, options: dict) -> dict:
    """Everything the page shows, as plain values and data URIs."""
    from components.example_codec import parse_example
    from pipelines import run_results, visualize

    options = {**DEFAULT_OPTIONS, **options}
    task = options.get("task")
    sections = Sections()
    ctx: dict[str, Any] = {
        "task": task, "pipeline_name": options.get("pipeline_name", ""),
        "generated": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "model": inputs.get("model"), "baseline_model": inputs.get("baseline_model"),
        "evaluation": inputs.get("evaluation"), "eval_split": options["eval_split"],
        "errors": sections.errors, "images": [], "per_class": [], "pr": [], "confusion": None,
        "training": None, "metrics_rows": [], "checks": [], "failures": [], "data": None,
        "subset_note": "", "ap_check": [], "on_device": None,
    }
    label_map = _label_map(inputs["examples"], options)
    task = task or label_map.get("task")
    ctx["task"] = task
    metrics = {"candidate": {}, "baseline": {}}
    change: dict[str, float] = {}

    with sections.section("gate"):
        ctx["state"] = blessing_state(inputs.get("blessing"))
        if inputs.get("evaluation"):
            metrics = model_metrics(inputs["evaluation"])
            _, change = run_results.read_metrics(inputs["evaluation"])
            ctx["checks"] = gate_checks(inputs["evaluation"], metrics, change)
            if ctx["state"] == "NOT_BLESSED":
                ctx["failures"] = run_results.read_gate_failures(inputs["evaluation"])
    ctx.setdefault("state", "UNKNOWN")

    with sections.section("metrics"):
        names = sorted(set(metrics["candidate"]) | set(metrics["baseline"]),
                       key=lambda n: ("/" in n, n))
        ctx["metrics_rows"] = [{"name": n, "candidate": _fmt(metrics["candidate"].get(n)),
                                "baseline": _fmt(metrics["baseline"].get(n)),
                                "change": "–" if n not in change else f"{change[n]:+.4f}",
                                "worse": n in change and change[n] < 0}
                               for n in names]

    with sections.section("on-device"):
        ctx["on_device"] = on_device_table(run_results.read_tflite_evaluation(inputs.get("tflite_evaluation")))

    with sections.section("data"):
        ctx["data"] = data_summary(inputs["examples"], inputs.get("statistics"), inputs.get("anomalies"),
                                   int(options["quarantine_rows"]))

    with sections.section("training"):
        if inputs.get("model_run"):
            scalars = training_scalars(inputs["model_run"])
            ctx["training"] = {
                "picture": data_uri(visualize.training_curves(scalars["loss"], scalars["learning_rate"])),
                "steps": scalars["loss"][0][-1] if scalars["loss"][0] else 0,
                "final_loss": _fmt(scalars["loss"][1][-1]) if scalars["loss"][1] else "–"}

    models = {"candidate": inputs.get("model")}
    if inputs.get("baseline_model"):
        models["baseline"] = inputs["baseline_model"]
    serialized, total = [], 0
    with sections.section("predictions"):
        serialized, total = eval_examples(inputs["examples"], options["eval_split"], int(options["max_examples"]))
        if total > len(serialized):
            ctx["subset_note"] = (f"computed by the report on the first {len(serialized)} of the {total} "
                                  f"'{options['eval_split']}' examples (by image id)")
        else:
            ctx["subset_note"] = f"computed by the report on all {total} '{options['eval_split']}' examples"
    parsed = [parse_example(s) for s in serialized]
    ctx["image_columns"] = ["image", "ground truth"] + [f"{m} prediction" for m in models]
    ctx["min_score"] = options["min_score"]
    shown = parsed[:int(options["num_images"])]

    if task == "semantic":
        class_names = contract.semantic_class_names(label_map)
        with sections.section("per-class"):
            series = {model: [metrics[model].get(f"iou/{n}", float("nan")) for n in class_names]
                      for model in models if metrics.get(model)}
            if series:
                ctx["per_class"].append(data_uri(visualize.per_class_bars(
                    class_names, series, "per-class IoU (Evaluator, overall slice)", "IoU")))
        predictions = {}
        with sections.section("predictions"):
            for model, uri in models.items():
                predictions[model] = semantic_predictions(uri, serialized) if serialized else []
            for i, example in enumerate(shown):
                rgb = _decode_image(example)
                factor = _scale(rgb)
                big = _enlarge(rgb, factor)
                pictures = [big, visualize.overlay(big, _enlarge(_semantic_gt(example), factor))]
                pictures += [visualize.overlay(big, _enlarge(predictions[m][i], factor)) for m in models]
                ctx["images"].append(_image_entry(example, pictures, list(models)))
        with sections.section("confusion"):
            from trainer_module.metrics.iou import confusion_matrix

            n = contract.semantic_num_classes(label_map)
            matrix = np.zeros((n, n), dtype=np.int64)
            for example, ids in zip(parsed, predictions.get("candidate", [])):
                matrix += confusion_matrix(_semantic_gt(example), ids, n)
            ctx["confusion"] = data_uri(visualize.confusion_heatmap(
                matrix, class_names, "candidate: pixel confusion matrix (rows normalised)"))
    else:
        from trainer_module.metrics.coco_eval import ground_truth_from_examples

        names = {c["id"]: c["name"] for c in label_map["classes"]}
        category_ids = contract.instance_category_ids(label_map)
        id_of = contract.id_by_label(label_map)
        predictions, evaluations = {}, {}
        with sections.section("predictions"):
            gt = ground_truth_from_examples(serialized, label_map)
            image_ids = [image["id"] for image in gt["images"]]
            for model, uri in models.items():
                predictions[model] = instance_predictions(uri, serialized) if serialized else []
            for i, example in enumerate(shown):
                rgb = _decode_image(example)
                pictures = [_enlarge(rgb, _scale(rgb)), _instance_gt_picture(rgb, example, names, id_of)]
                pictures += [_instance_prediction_picture(rgb, predictions[m][i], names, float(options["min_score"]))
                             for m in models]
                ctx["images"].append(_image_entry(example, pictures, list(models)))
            for model in models:
                evaluations[model] = coco_evaluations(gt, image_ids, predictions[model], label_map)
        with sections.section("per-class"):
            category_names = [names[c] for c in category_ids]
            for iou_type, what in (("bbox", "box"), ("segm", "mask")):
                series = {model: per_category_ap(evaluations[model][iou_type], category_ids)
                          for model in evaluations}
                ctx["per_class"].append(data_uri(visualize.per_class_bars(
                    category_names, series, f"per-category {what} AP@[.50:.95]", f"{what} AP")))
                # The report's own COCOeval against the Evaluator's: the same code, so the same AP
                # when the report saw every evaluation example.
                own = overall_ap(evaluations["candidate"][iou_type])
                evaluator = metrics["candidate"].get(f"{what}_ap")
                ctx["ap_check"].append(f"candidate {what} AP here {own:.4f}, Evaluator {what}_ap "
                                       f"{_fmt(evaluator)}")
        with sections.section("pr-curve"):
            for iou_type, what in (("bbox", "box"), ("segm", "mask")):
                curves, styles = {}, {}
                for model in evaluations:
                    coco_eval = evaluations[model][iou_type]
                    if coco_eval is None:
                        continue
                    for iou in (0.5, 0.75):
                        label = f"{model} IoU={iou:.2f}".replace("0.", ".")
                        curves[label] = pr_curve(coco_eval, iou)
                        styles[label] = {"color": visualize.SERIES_COLOURS[list(models).index(model)],
                                         "linestyle": "-" if iou == 0.5 else "--"}
                if curves:
                    recall = next(e[iou_type] for e in evaluations.values() if e[iou_type]).params.recThrs
                    ctx["pr"].append(data_uri(visualize.pr_curves(
                        recall, curves, f"{what} precision-recall (all categories, all areas)", styles=styles)))
                else:
                    ctx["pr"].append(None)
                    ctx.setdefault("pr_notes", []).append(f"{what}: no detections, no curve")
    return ctx


def _image_entry(example: dict, pictures: list, models: list[str]) -> dict:
    return {"id": example[contract.IMAGE_SOURCE_ID][0].decode(),
            "file": example.get(contract.IMAGE_FILENAME, [b""])[0].decode(),
            "pictures": [data_uri(_fit(p)) for p in pictures]}


def on_device_table(evaluation: dict | None) -> dict | None:
    """The SavedModel and each TFLite variant: size, the gated metrics with their drop, the gate's
    verdict and reason (pipelines.run_results.read_tflite_evaluation's dict); None without one."""
    if not evaluation:
        return None
    saved = evaluation["saved_model"]
    names = sorted(evaluation.get("max_quantization_drop") or saved)  # the gated metrics
    rows = [{"name": "SavedModel", "size": "–", "cells": [(_fmt(saved.get(n)), "–") for n in names],
             "verdict": "–", "reason": "the reference the drops are measured against"}]
    for variant, result in evaluation["variants"].items():
        metrics, drop = result.get("metrics") or {}, result.get("drop") or {}
        size = result.get("size_bytes")
        rows.append({
            "name": variant, "size": f"{size / 2**20:.2f} MiB" if size else "–",
            "cells": [(_fmt(metrics.get(n)), "–" if drop.get(n) is None else f"{drop[n]:+.4f}") for n in names],
            "verdict": "blessed" if result.get("blessed") else "not blessed", "reason": result.get("reason") or ""})
    return {"metrics": names, "rows": rows}


def render(ctx: dict) -> str:
    import jinja2

    environment = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined,
                                     trim_blocks=True, lstrip_blocks=True)
    return environment.from_string(TEMPLATE).render(**ctx)


def write_run_report(inputs: dict, output_dir: str, options: dict) -> str:
    """The RunReport component's report function: writes output_dir/report.html, returns its path."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    ctx = build_context(inputs, options)
    page = render(ctx)
    if not paths.is_remote(output_dir):
        os.makedirs(output_dir, exist_ok=True)
    path = paths.join(output_dir, REPORT_FILE)
    with paths.open_file(path, "w") as f:
        f.write(page)
    _say(f"wrote {path} ({len(page) // 1024} KiB, {ctx['state']}"
         f"{', sections not drawn: ' + ', '.join(ctx['errors']) if ctx['errors'] else ''})")
    return path


TEMPLATE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>segpipe run report: {{ pipeline_name }} ({{ task }}) {{ state }}</title>
<style>
 body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1200px;
        padding: 0 24px 48px; color: #222; }
 h1 { margin-bottom: 4px; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 4px; margin-top: 36px; }
 .meta { color: #666; font-size: 13px; } .meta code { font-size: 12px; }
 .verdict { font-size: 22px; font-weight: 600; padding: 12px 16px; border-radius: 6px; margin: 12px 0; }
 .BLESSED { background: #e3f4e5; color: #17672a; border: 1px solid #9bd3a6; }
 .NOT_BLESSED { background: #fbe7e7; color: #9b1c1c; border: 1px solid #e8a5a5; }
 .NOT_GATED, .UNKNOWN { background: #f1f1f1; color: #555; border: 1px solid #ccc; }
 table { border-collapse: collapse; margin: 8px 0; font-size: 14px; }
 th, td { border: 1px solid #ddd; padding: 4px 10px; text-align: left; }
 th { background: #f6f6f6; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
 .pass { color: #17672a; font-weight: 600; } .fail { color: #9b1c1c; font-weight: 600; }
 .worse { color: #9b1c1c; } .note { color: #666; font-size: 13px; }
 .section-error { background: #fff3cd; border: 1px solid #e0c36c; padding: 8px 12px; border-radius: 4px; }
 figure { margin: 12px 0; } figcaption { font-size: 13px; color: #555; }
 img { max-width: 100%; }
 table.pictures td { vertical-align: top; padding: 4px; } table.pictures img { width: 256px; image-rendering: pixelated; }
 .charts { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
 ul.reasons li { margin: 4px 0; }
</style>
</head>
<body data-images-decoded="pending">
<h1>Run report: {{ pipeline_name }} <small>({{ task }})</small></h1>
<div class="meta">generated {{ generated }} · candidate <code>{{ model }}</code>
 · baseline <code>{{ baseline_model or "none (first blessed model)" }}</code>
 · evaluation <code>{{ evaluation }}</code></div>

{% macro error(name) %}{% if name in errors %}
<p class="section-error">This section could not be drawn: {{ errors[name] }} (details in the component's log).</p>
{% endif %}{% endmacro %}

<section id="gate">
<h2>Gate decision</h2>
<div class="verdict {{ state }}">{% if state == "BLESSED" %}BLESSED: the candidate passed every check and may be pushed.
{% elif state == "NOT_BLESSED" %}NOT BLESSED: the candidate failed the gate; nothing is pushed.
{% elif state == "NOT_GATED" %}NOT GATED: the Evaluator had no thresholds, so it gave no verdict.
{% else %}UNKNOWN{% endif %}</div>
{% if failures %}
<p>Reasons:</p>
<ul class="reasons">{% for reason in failures %}<li class="fail">{{ reason }}</li>{% endfor %}</ul>
{% elif state == "NOT_BLESSED" %}<p class="fail">The Evaluator recorded no failed check (see its validation result).</p>
{% endif %}
{% if checks %}
<table>
<tr><th>metric</th><th>check</th><th>bound</th><th>value</th><th>result</th></tr>
{% for c in checks %}
<tr><td>{{ c.metric }}</td><td>{{ c.check }}</td><td>{{ c.bound }}</td>
<td class="num">{{ "–" if c.value is none else ("%+.4f"|format(c.value) if c.check != "value" else "%.4f"|format(c.value)) }}</td>
<td class="{{ 'pass' if c.passed else ('fail' if c.passed is not none else '') }}">{{ "pass" if c.passed else ("FAIL" if c.passed is not none else "not evaluated") }}</td></tr>
{% endfor %}
</table>
{% if not baseline_model %}<p class="note">No baseline model yet: only the absolute bounds apply.</p>{% endif %}
{% endif %}
{{ error("gate") }}
</section>

<section id="metrics">
<h2>Metrics: candidate vs baseline</h2>
<table>
<tr><th>metric</th><th>candidate</th><th>baseline</th><th>change</th></tr>
{% for r in metrics_rows %}
<tr><td>{{ r.name }}</td><td class="num">{{ r.candidate }}</td><td class="num">{{ r.baseline }}</td>
<td class="num {{ 'worse' if r.worse else '' }}">{{ r.change }}</td></tr>
{% endfor %}
</table>
<p class="note">The Evaluator's numbers (TFMA, overall slice of the '{{ eval_split }}' split). n/a: nothing to measure (e.g. COCO's -1 when no object of that size exists).</p>
{{ error("metrics") }}
</section>

{% if on_device %}
<section id="on-device">
<h2>On-device models (TFLite)</h2>
<table>
<tr><th>model</th><th>size</th>{% for m in on_device.metrics %}<th>{{ m }}</th><th>drop</th>{% endfor %}<th>gate</th><th>why</th></tr>
{% for r in on_device.rows %}
<tr><td>{{ r.name }}</td><td class="num">{{ r.size }}</td>{% for value, drop in r.cells %}<td class="num">{{ value }}</td><td class="num">{{ drop }}</td>{% endfor %}
<td class="{{ 'pass' if r.verdict == 'blessed' else 'fail' if r.verdict == 'not blessed' else '' }}">{{ r.verdict }}</td><td>{{ r.reason }}</td></tr>
{% endfor %}
</table>
<p class="note">Measured by the TFLiteExport component on the '{{ eval_split }}' split with the same metric code for the SavedModel and each converted model. A blessed variant is pushed beside the SavedModel (only when the Evaluator blessed the model).</p>
</section>
{% endif %}
{{ error("on-device") }}

<section id="per-class">
<h2>{{ "Per-class IoU" if task == "semantic" else "Per-category AP" }}</h2>
<div class="charts">{% for src in per_class %}<figure><img src="{{ src }}" alt="per-class chart"></figure>{% endfor %}</div>
<p class="note">{% if task == "semantic" %}From the Evaluator (candidate and baseline). n/a: the class is in neither ground truth nor prediction.
{% else %}COCO AP per category, {{ subset_note }}. n/a: no ground truth of that category.
<br><span id="ap-check">Check: {{ ap_check | join("; ") }}.</span>{% endif %}</p>
{{ error("per-class") }}
</section>

{% if task == "semantic" %}
<section id="confusion">
<h2>Confusion matrix</h2>
{% if confusion %}<figure><img src="{{ confusion }}" alt="confusion matrix"><figcaption>Candidate, {{ subset_note }}.
Rows: ground truth, columns: prediction; each row sums to 1 (the diagonal is per-class recall); pixels labelled 255 (ignore) not counted.</figcaption></figure>{% endif %}
{{ error("confusion") }}
</section>
{% else %}
<section id="pr-curve">
<h2>Precision-recall</h2>
<div class="charts">{% for src in pr %}{% if src %}<figure><img src="{{ src }}" alt="precision-recall curve"></figure>{% endif %}{% endfor %}</div>
{% for n in pr_notes | default([]) %}<p class="note">{{ n }}</p>{% endfor %}
<p class="note">COCOeval precision at 101 recall points, averaged over categories; all areas, 100 detections per image; {{ subset_note }}.</p>
{{ error("pr-curve") }}
</section>
{% endif %}

<section id="predictions">
<h2>Predictions on evaluation images</h2>
<p class="note">The first {{ images | length }} '{{ eval_split }}' images by image id (the same images every run){% if task == "instance" %}; predictions show the detections scoring at least {{ min_score }}{% endif %}.</p>
{% if images %}
<table class="pictures">
<tr><th>image id</th>{% for c in image_columns %}<th>{{ c }}</th>{% endfor %}</tr>
{% for im in images %}
<tr><td>{{ im.id }}<br><span class="note">{{ im.file }}</span></td>{% for src in im.pictures %}<td><img src="{{ src }}" alt="{{ image_columns[loop.index0] }} of image {{ im.id }}"></td>{% endfor %}</tr>
{% endfor %}
</table>
{% endif %}
{{ error("predictions") }}
</section>

<section id="data">
<h2>Data</h2>
{% if data %}
<p>Spans used: {{ data.spans | join(", ") if data.spans else "–" }}</p>
{% for a in data.artifacts %}
<h3>Examples (span {{ a.span }}{% if a.version is not none %}, version {{ a.version }}{% endif %})</h3>
<p class="meta"><code>{{ a.uri }}</code></p>
{% if a.summary %}
<table>
<tr><th>split</th><th>examples</th><th>statistics: examples</th><th>anomalies</th></tr>
{% for split, count in a.summary.examples.items() %}
<tr><td>{{ split }}</td><td class="num">{{ count }}</td>
<td class="num">{{ data.statistics[split].examples if split in data.statistics else "–" }}</td>
<td class="num">{{ data.anomalies[split] | length if split in data.anomalies else "–" }}</td></tr>
{% endfor %}
</table>
<p>{{ a.summary.images }} images read, {{ a.summary.quarantined }} quarantined{% if a.summary.instances %}, {{ a.summary.instances }} instances{% endif %}.</p>
{% if a.summary.quarantine_reasons %}<p>Quarantine reasons: {% for r, n in a.summary.quarantine_reasons.items() %}{{ r }} × {{ n }}{{ ", " if not loop.last }}{% endfor %}</p>{% endif %}
{% if a.summary.dropped_annotations %}<p>Dropped annotations: {% for r, n in a.summary.dropped_annotations.items() %}{{ r }} × {{ n }}{{ ", " if not loop.last }}{% endfor %}</p>{% endif %}
{% if a.summary.repaired_annotations %}<p>Repaired annotations: {% for r, n in a.summary.repaired_annotations.items() %}{{ r }} × {{ n }}{{ ", " if not loop.last }}{% endfor %}</p>{% endif %}
{% else %}<p class="note">No summary.json beside these examples.</p>{% endif %}
{% if a.quarantine %}
<table>
<tr><th>kind</th><th>reason</th><th>split</th><th>image</th><th>file / annotation</th><th>detail</th></tr>
{% for q in a.quarantine %}<tr><td>{{ q.kind }}</td><td>{{ q.reason }}</td><td>{{ q.split }}</td><td>{{ q.image_id }}</td>
<td>{{ q.file or q.annotation_id }}</td><td>{{ q.detail }}</td></tr>{% endfor %}
</table>
{% if a.quarantine_total > a.quarantine | length %}<p class="note">{{ a.quarantine | length }} of {{ a.quarantine_total }} records shown; all are in <code>quarantine.jsonl</code>.</p>{% endif %}
{% else %}<p>No quarantined records.</p>{% endif %}
{% endfor %}
<h3>Anomalies (ExampleValidator)</h3>
{% set any_anomaly = namespace(found=false) %}
{% for split, rows in data.anomalies.items() %}{% for row in rows %}{% set any_anomaly.found = true %}{% endfor %}{% endfor %}
{% if any_anomaly.found %}
<table>
<tr><th>split</th><th>feature</th><th>severity</th><th>anomaly</th><th>description</th></tr>
{% for split, rows in data.anomalies.items() %}{% for row in rows %}
<tr><td>{{ split }}</td><td>{{ row.feature }}</td><td>{{ row.severity }}</td><td>{{ row.what }}</td><td>{{ row.description }}</td></tr>
{% endfor %}{% endfor %}
</table>
{% else %}<p>No anomalies against the schema{% if data.anomalies %} (splits {{ data.anomalies.keys() | join(", ") }}){% endif %}.</p>{% endif %}
{% endif %}
{{ error("data") }}
</section>

<section id="training">
<h2>Training</h2>
{% if training %}<figure><img src="{{ training.picture }}" alt="training loss and learning rate">
<figcaption>{{ training.steps }} steps, final loss {{ training.final_loss }} (the Trainer's TensorBoard scalars).</figcaption></figure>
{% else %}<p class="note">No training summaries.</p>{% endif %}
{{ error("training") }}
</section>

<footer class="note"><p id="image-check">images decoded: checking…</p></footer>
<script>
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var decoded = images.filter(function (im) { return im.complete && im.naturalWidth > 0; }).length;
  document.body.setAttribute("data-images-decoded", decoded + "/" + images.length);
  document.getElementById("image-check").textContent = "images decoded: " + decoded + " of " + images.length;
});
</script>
</body>
</html>
"""  # noqa: E501 - HTML lines
