"""`segpipe ingest coco|voc`: the ExampleGens' Beam graph as a standalone pipeline.

Writes, like the TFX component: <out>/Split-<name>/data_tfrecord-*.gz (GZIP TFRecords of
tf.Examples), label_map.json, summary.json and quarantine.jsonl; returns the summary.
"""
from __future__ import annotations

import os
import sys

from components.errors import InputError

DIRECT_DEFAULTS = ["--direct_running_mode=multi_processing", "--direct_num_workers=0"]


def parse_splits(specs: list[str] | None) -> dict[str, int] | None:
    """["train=4", "val=1"] -> {"train": 4, "val": 1}."""
    if not specs:
        return None
    out = {}
    for spec in specs:
        name, sep, buckets = spec.partition("=")
        if not sep or not name or not buckets.isdigit() or int(buckets) < 1:
            raise InputError(f"--split {spec!r}: expected NAME=BUCKETS with BUCKETS >= 1")
        out[name] = int(buckets)
    return out


def coco_inputs(annotations: list[str]) -> tuple[list[tuple[str, str]], bool]:
    """--annotations values -> ([(split, path)], needs_hash_split)."""
    if len(annotations) == 1 and "=" not in annotations[0]:
        return [("all", annotations[0])], True
    pairs = []
    for spec in annotations:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise InputError(f"--annotations {spec!r}: with several files, give SPLIT=PATH each")
        pairs.append((name, path))
    if len({n for n, _ in pairs}) != len(pairs):
        raise InputError("--annotations: a split name is given twice")
    return pairs, False


def run(source, input_splits, out_dir, *, hash_split=None, num_shards=0, beam_args=(),
        max_bad_fraction=0.05, runner="DirectRunner") -> dict:
    """Run the ingestion graph standalone; returns the summary (raises InputError on too many bad)."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from components import example_gen_executor, ingest_beam, quarantine

    split_config_json = output_names = None
    if hash_split is not None:
        from google.protobuf import json_format

        config = example_gen_executor.hash_output_config(hash_split).split_config
        split_config_json = json_format.MessageToJson(config)
        output_names = [s.name for s in config.splits]
    options = ["--runner", runner]
    if runner == "DirectRunner" and not any(a.startswith("--direct_") for a in beam_args):
        options += DIRECT_DEFAULTS
    with beam.Pipeline(options=PipelineOptions(options + list(beam_args))) as pipeline:
        splits = ingest_beam.build(pipeline, source, input_splits, out_dir, split_config_json,
                                   output_names)
        ingest_beam.write_splits(splits, out_dir, num_shards)
    return quarantine.finalize(out_dir, fmt=source.format, split_names=list(splits),
                               label_map=source.label_map, max_bad_fraction=max_bad_fraction)


def _check_out(out_dir: str) -> None:
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        raise InputError(f"--out {out_dir} is not empty (old shards would mix with new ones)")
    os.makedirs(out_dir, exist_ok=True)


def cli_main(args) -> dict:
    if args.format == "coco":
        from components.coco_example_gen import CocoSource, label_map_for

        input_splits, hashed = coco_inputs(args.annotations)
        for _, path in input_splits:
            if not os.path.isfile(path):
                raise InputError(f"annotation file not found: {path}")
        if not os.path.isdir(args.images):
            raise InputError(f"--images {args.images} is not a directory")
        source = CocoSource(os.path.abspath(args.images), label_map_for([p for _, p in input_splits]))
    else:
        from components.voc_example_gen import VocSource, split_inputs

        if not os.path.isdir(args.root):
            raise InputError(f"--root {args.root} is not a directory")
        root = os.path.abspath(args.root)
        relative_splits, hashed = split_inputs(root)
        input_splits = [(name, os.path.join(root, p)) for name, p in relative_splits]
        source = VocSource(root, args.class_names)
    hash_split = parse_splits(args.split)
    if hash_split and not hashed:
        raise InputError("--split applies only when the source has no splits of its own")
    _check_out(args.out)
    print(f"segpipe ingest {args.format}: {len(input_splits)} input split(s) -> {args.out}",
          file=sys.stderr)
    return run(source, input_splits, args.out, hash_split=(hash_split or {}) if hashed else None,
               num_shards=args.num_shards, beam_args=args.beam_arg,
               max_bad_fraction=args.max_bad_fraction, runner=args.runner)
