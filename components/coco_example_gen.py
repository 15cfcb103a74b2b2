"""CocoExampleGen: the TFX ExampleGen over a COCO dataset (the source: components/coco_source.py)."""
from __future__ import annotations

from components import example_gen_executor, ingest_beam, paths, spans
from components.coco_source import CocoSource, label_map_for
from components.errors import InputError


class Executor(example_gen_executor.IngestExecutorBase):
    FORMAT = "coco"

    def make_source(self, input_base, input_paths, settings):
        image_root = paths.join(input_base, settings["image_dir"])
        label_map = label_map_for(input_paths)
        return CocoSource(image_root, label_map), label_map


def CocoExampleGen(input_base: str, annotations: dict[str, str] | str, image_dir: str,
                   hash_split: dict[str, int] | None = None, max_bad_fraction: float = 0.05,
                   span: int | None = None):
    """A TFX ExampleGen for a COCO dataset.

    annotations: {split: JSON path relative to input_base} (one file per split), or one path that
    is hash-split by image id into `hash_split` buckets (default train=4, val=1).
    image_dir: where `file_name`s are relative to; absolute, or relative to input_base.
    input_base and the annotation paths may hold `{SPAN}` / `{VERSION}` (components/spans.py):
    TFX's driver ingests the newest span (or `span`); image_dir is read in that span's root.
    """
    from tfx.components import FileBasedExampleGen
    from tfx.dsl.components.base import executor_spec
    from tfx.proto import example_gen_pb2

    if isinstance(annotations, str):
        named = [("all", annotations)]
        output_config = ingest_beam.hash_output_config(hash_split)
    else:
        if hash_split:
            raise InputError("hash_split applies to a single annotation file, not per-split files")
        named = list(annotations.items())
        output_config = example_gen_pb2.Output()
    data_root = input_base
    input_base, patterns, root_template = spans.split_base(data_root, [p for _, p in named])
    input_config = example_gen_pb2.Input(splits=[
        example_gen_pb2.Input.Split(name=name, pattern=pattern)
        for (name, _), pattern in zip(named, patterns)])
    settings = {"image_dir": image_dir, "max_bad_fraction": max_bad_fraction}
    settings.update(example_gen_executor.span_settings(root_template, [n for n, _ in named], patterns))
    return FileBasedExampleGen(
        input_base=input_base, input_config=input_config, output_config=output_config,
        range_config=spans.range_config(span),
        custom_config=example_gen_executor.make_custom_config(settings),
        custom_executor_spec=executor_spec.BeamExecutorSpec(Executor))
