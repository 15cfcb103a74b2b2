"""`segpipe ingest coco|voc`: the ExampleGens' Beam graph (components/ingest_beam.py) as a
standalone Beam job: `ingest_coco(...)`, `ingest_voc(...)`, or `run(source, ...)` for any source.

Writes, like the TFX component: <out>/Split-<name>/data_tfrecord-*.gz (GZIP TFRecords of
tf.Examples), label_map.json, summary.json and quarantine.jsonl; returns the summary.
"""
from __future__ import annotations

import os
import sys

from components.beam_options import DIRECT_RUNNER_ARGS
from components.errors import InputError


def run(source, input_splits, out_dir, *, hash_split=None, num_shards=0, beam_args=(),
        max_bad_fraction=0.05, runner="DirectRunner") -> dict:
    """Runs the ingestion graph standalone; returns the summary (raises InputError on too many bad).

    input_splits: [(split name, source file)]; hash_split: None keeps the input splits, a dict
    {split: buckets} pools them and hash-splits by image id ({} = the ExampleGens' default).
    """
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from components import ingest_beam, quarantine

    split_config_json = output_names = None
    if hash_split is not None:
        from google.protobuf import json_format

        config = ingest_beam.hash_output_config(hash_split).split_config
        split_config_json = json_format.MessageToJson(config)
        output_names = [s.name for s in config.splits]
    options = ["--runner", runner]
    if runner == "DirectRunner" and not any(a.startswith("--direct_") for a in beam_args):
        options += DIRECT_RUNNER_ARGS
    with beam.Pipeline(options=PipelineOptions(options + list(beam_args))) as pipeline:
        splits = ingest_beam.build(pipeline, source, input_splits, out_dir, split_config_json,
                                   output_names)
        ingest_beam.write_splits(splits, out_dir, num_shards)
    return quarantine.finalize(out_dir, fmt=source.format, split_names=list(splits),
                               label_map=source.label_map, max_bad_fraction=max_bad_fraction)


def _with_span(result: dict, span: int, version: int | None, templated: bool) -> dict:
    if templated:
        result["span"] = span
        if version is not None:
            result["version"] = version
    return result


def ingest_coco(annotations: str | dict[str, str], images: str, out: str, *,
                hash_split: dict[str, int] | None = None, num_shards: int = 0, beam_args=(),
                max_bad_fraction: float = 0.05, runner: str = "DirectRunner",
                span: int | None = None) -> dict:
    """A COCO dataset -> TFRecords in `out`.

    annotations: {split: JSON file}, or one file hash-split by image id into `hash_split` buckets
    (default train=4 val=1); images: the root that `file_name`s are relative to; the rest: see `run`.
    Paths may hold `{SPAN}` / `{VERSION}` as in the pipeline: the newest span (or `span`) is
    ingested and named in the summary.
    """
    from components import spans

    input_splits = [("all", annotations)] if isinstance(annotations, str) else list(annotations.items())
    templated = any(spans.has_placeholder(p) for _, p in input_splits) or spans.has_placeholder(images)
    resolved, found_span, found_version = spans.resolve([p for _, p in input_splits], span,
                                                        also=[images])
    input_splits = [(name, path) for (name, _), path in zip(input_splits, resolved)]
    images = resolved[-1]
    for _, path in input_splits:
        if not os.path.isfile(path):
            raise InputError(f"annotation file not found: {path}")
    if not os.path.isdir(images):
        raise InputError(f"images {images} is not a directory")
    from components.coco_source import CocoSource, label_map_for

    source = CocoSource(os.path.abspath(images), label_map_for([p for _, p in input_splits]))
    job = dict(num_shards=num_shards, beam_args=beam_args, max_bad_fraction=max_bad_fraction, runner=runner)
    return _with_span(_ingest(source, input_splits, out, isinstance(annotations, str), hash_split, job),
                      found_span, found_version, templated)


def ingest_voc(root: str, out: str, *, class_names: str | None = None,
               hash_split: dict[str, int] | None = None, num_shards: int = 0, beam_args=(),
               max_bad_fraction: float = 0.05, runner: str = "DirectRunner",
               span: int | None = None) -> dict:
    """A VOC-layout dataset -> TFRecords in `out`. Splits: ImageSets/Segmentation/<split>.txt, else
    every SegmentationClass PNG hash-split by image id into `hash_split` buckets (default train=4
    val=1); class_names: default ROOT/class_names.txt, else the 21 VOC classes; the rest: see `run`.
    root may hold `{SPAN}` / `{VERSION}`: the newest span (or `span`) is ingested."""
    from components import spans

    templated = spans.has_placeholder(root)
    [root], found_span, found_version = spans.resolve([root], span)
    if not os.path.isdir(root):
        raise InputError(f"VOC root {root} is not a directory")
    from components.voc_source import VocSource, split_inputs

    root = os.path.abspath(root)
    relative_splits, hashed = split_inputs(root)
    input_splits = [(name, os.path.join(root, p)) for name, p in relative_splits]
    job = dict(num_shards=num_shards, beam_args=beam_args, max_bad_fraction=max_bad_fraction, runner=runner)
    return _with_span(_ingest(VocSource(root, class_names), input_splits, out, hashed, hash_split, job),
                      found_span, found_version, templated)


def _ingest(source, input_splits, out, hashed: bool, hash_split, job: dict) -> dict:
    if hash_split and not hashed:
        raise InputError("a hash split applies only when the source has no splits of its own")
    if os.path.isdir(out) and os.listdir(out):
        raise InputError(f"output directory {out} is not empty (old shards would mix with new ones)")
    os.makedirs(out, exist_ok=True)
    print(f"segpipe ingest {source.format}: {len(input_splits)} input split(s) -> {out}", file=sys.stderr)
    return run(source, input_splits, out, hash_split=(hash_split or {}) if hashed else None, **job)
