"""Bad-input accounting: quarantine records, counters, `summary.json`, the max_bad_fraction gate.

Every image read ends in exactly one place: an example or a quarantine record (kind "image").
Annotations that cannot be used are dropped with a record of kind "annotation" naming their id;
repairable ones (a box partly outside the image) are fixed and only counted.

Counters are flat dicts summed across the pipeline:
  images, quarantined, instances, examples/<split>, quarantined/<reason>,
  dropped/<reason>, repaired/<what>.
"""
from __future__ import annotations

import collections
import json
import os

from components import paths
from components.contract import LABEL_MAP_FILE
from components.errors import InputError

QUARANTINE_FILE = "quarantine.jsonl"
SUMMARY_FILE = "summary.json"
COUNTS_FILE = "_ingest_counts.json"  # written by the Beam job, folded into summary.json


def image_record(reason: str, *, split: str | None, image_id, file: str | None,
                 detail: str = "") -> dict:
    return {"kind": "image", "reason": reason, "split": split, "image_id": image_id,
            "file": file, "detail": detail}


def annotation_record(reason: str, *, split: str | None, image_id, annotation_id,
                      detail: str = "") -> dict:
    return {"kind": "annotation", "reason": reason, "split": split, "image_id": image_id,
            "annotation_id": annotation_id, "detail": detail}


def counts_for_record(record: dict) -> dict:
    if record["kind"] == "image":
        return {"images": 1, "quarantined": 1, f"quarantined/{record['reason']}": 1}
    return {f"dropped/{record['reason']}": 1}


def sum_counts(dicts) -> dict:
    total = collections.Counter()
    for d in dicts:
        total.update(d)
    return dict(total)


def _prefixed(counts: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in sorted(counts.items()) if k.startswith(prefix)}


def finalize(out_dir: str, *, fmt: str, split_names: list[str], label_map: dict,
             max_bad_fraction: float) -> dict:
    """Write label_map.json and summary.json into `out_dir` from the job's counters; enforce
    max_bad_fraction (InputError naming the quarantine file and the reason counts)."""
    from components import label_map as label_map_lib

    counts_path = os.path.join(out_dir, COUNTS_FILE)
    with paths.open_file(counts_path) as f:
        counts = json.loads(f.read().strip() or "{}")
    quarantine_path = os.path.join(out_dir, QUARANTINE_FILE)
    label_map_path = os.path.join(out_dir, LABEL_MAP_FILE)
    label_map_lib.write(label_map, label_map_path)

    examples = {name: counts.get(f"examples/{name}", 0) for name in split_names}
    summary = {
        "format": fmt,
        "images": counts.get("images", 0),
        "examples": examples,
        "instances": counts.get("instances", 0),
        "quarantined": counts.get("quarantined", 0),
        "quarantine_file": quarantine_path,
        "quarantine_reasons": _prefixed(counts, "quarantined/"),
        "dropped_annotations": _prefixed(counts, "dropped/"),
        "repaired_annotations": _prefixed(counts, "repaired/"),
        "label_map": label_map_path,
        "num_classes": len(label_map["classes"]),
    }
    with paths.open_file(os.path.join(out_dir, SUMMARY_FILE), "w") as f:
        f.write(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    paths.remove(counts_path)

    images, bad = summary["images"], summary["quarantined"]
    if images == 0:
        raise InputError(f"no images found to ingest (see {summary['quarantine_file']})")
    if bad / images > max_bad_fraction:
        raise InputError(
            f"{bad} of {images} images quarantined ({bad / images:.1%} > max_bad_fraction "
            f"{max_bad_fraction:g}); reasons {summary['quarantine_reasons']}; "
            f"records in {quarantine_path}")
    return summary
