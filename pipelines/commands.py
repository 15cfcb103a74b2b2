"""One handler per `segpipe` command: argparse values -> plain arguments -> the library call.

Each handler returns the dict that `pipelines/cli.py` prints as the JSON line. Libraries are
imported inside the handlers, so that parsing and `--help` never pay for TensorFlow.
"""
from __future__ import annotations

import os
from pathlib import Path

from components import paths
from components.errors import InputError
from pipelines.config import deep_merge, load_config, parse_set


def _absolute(path: str) -> str:
    return path if paths.is_remote(path) else os.path.abspath(path)


def _annotation_files(items: list[str]) -> str | dict[str, str]:
    """`--annotations` values: `[path]` -> path (one file, hash split); `["train=a.json",
    "val=b.json"]` -> {split: path}."""
    if len(items) == 1 and "=" not in items[0]:
        return items[0]
    splits: dict[str, str] = {}
    for item in items:
        split, sep, path = item.partition("=")
        if not sep or not split or not path:
            raise InputError(f"--annotations {item!r}: with several files, give SPLIT=PATH each")
        if split in splits:
            raise InputError(f"--annotations: split {split!r} is given twice")
        splits[split] = path
    return splits


def _hash_split(specs: list[str] | None) -> dict[str, int] | None:
    """`--split` values: ["train=4", "val=1"] -> {"train": 4, "val": 1}."""
    if not specs:
        return None
    buckets = {}
    for spec in specs:
        name, sep, count = spec.partition("=")
        if not sep or not name or not count.isdigit() or int(count) < 1:
            raise InputError(f"--split {spec!r}: expected NAME=BUCKETS with BUCKETS >= 1")
        buckets[name] = int(count)
    return buckets


def _data_overrides(args) -> dict:
    """The data options of `segpipe run` as config overrides."""
    data = {}
    if args.data_root:
        data["data_root"] = _absolute(args.data_root)
    if args.annotations:
        files = _annotation_files(args.annotations)
        data["annotations"] = (_absolute(files) if isinstance(files, str)
                               else {split: _absolute(path) for split, path in files.items()})
    if args.images:
        data["images"] = _absolute(args.images)
    if args.class_names:
        data["class_names"] = _absolute(args.class_names)
    return {"data": data} if data else {}


def sample_data(args) -> dict:
    import pipelines.sample_data

    return pipelines.sample_data.write(args.task, args.out, args.num_images, args.image_size, args.seed)


def ingest(args) -> dict:
    import pipelines.ingest

    job = dict(hash_split=_hash_split(args.split), num_shards=args.num_shards, beam_args=args.beam_arg,
               max_bad_fraction=args.max_bad_fraction, runner=args.runner, span=args.span)
    if args.format == "coco":
        return pipelines.ingest.ingest_coco(_annotation_files(args.annotations), args.images, args.out, **job)
    return pipelines.ingest.ingest_voc(args.root, args.out, class_names=args.class_names, **job)


def run(args) -> dict:
    import pipelines.local_runner

    overrides = deep_merge(parse_set(args.set), _data_overrides(args))
    config = load_config(args.task, args.config, overrides)
    return pipelines.local_runner.run(config, args.workdir or Path("runs") / args.task)


def compile_pipeline(args) -> dict:
    import pipelines.kubeflow_runner

    config = load_config(args.task, args.config, parse_set(args.set))
    return pipelines.kubeflow_runner.compile_pipeline(config, args.out)


def submit(args) -> dict:
    import pipelines.vertex_submit

    return pipelines.vertex_submit.submit(
        args.compiled, args.project, args.region, schedule=args.schedule, display_name=args.display_name,
        service_account=args.service_account, dry_run=args.dry_run)


def evaluate_coco(args) -> dict:
    import trainer_module.metrics.coco_eval

    return trainer_module.metrics.coco_eval.evaluate_examples(args.examples, args.detections, args.iou_type)


def predict(args) -> dict:
    import pipelines.predict

    return pipelines.predict.predict(args.model, args.images, args.out, annotations=args.annotations,
                                     overlay=args.overlay)


def bench_train(args) -> dict:
    import trainer_module.bench

    return trainer_module.bench.benchmark(args.model, args.image_size, args.batch_size, args.seconds,
                                          args.warmup_steps, profile_dir=args.profile,
                                          mixed_precision=args.mixed_precision)


def bench_loop(args) -> dict:
    import pipelines.bench_loop

    return pipelines.bench_loop.benchmark(args.workdir, args.steps, args.rounds)


def bench_infer(args) -> dict:
    import pipelines.bench_infer

    return pipelines.bench_infer.benchmark(args.model, args.image_size, args.threads, args.seconds)


def bench_ingest(args) -> dict:
    import pipelines.bench_ingest

    return pipelines.bench_ingest.benchmark(args.annotations, args.images, args.num_images, args.workdir)
