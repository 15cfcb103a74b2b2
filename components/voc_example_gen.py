"""VocExampleGen: the TFX ExampleGen over a PASCAL VOC layout (the source: components/voc_source.py)."""
from __future__ import annotations

from components import example_gen_executor, ingest_beam, spans
from components.errors import InputError
from components.voc_source import VocSource, split_inputs


class Executor(example_gen_executor.IngestExecutorBase):
    FORMAT = "voc"

    def make_source(self, input_base, input_paths, settings):
        source = VocSource(input_base, settings.get("class_names"))
        return source, source.label_map


def VocExampleGen(input_base: str, class_names: str | None = None,
                  hash_split: dict[str, int] | None = None, max_bad_fraction: float = 0.05,
                  splits: list[str] | None = None, span: int | None = None):
    """A TFX ExampleGen for a VOC-layout dataset.

    Splits come from ImageSets/Segmentation/<split>.txt: the `splits` named (no file system
    access now, e.g. compiling for a gs:// root), else the lists present (looked up now, at
    pipeline definition); without lists, all SegmentationClass PNGs are hash-split by image id
    into `hash_split` buckets (default train=4, val=1). class_names: absolute or relative to input_base; default
    input_base/class_names.txt if present, else the 21 VOC classes.

    input_base may hold `{SPAN}` / `{VERSION}` (components/spans.py): TFX's driver ingests the
    newest span (or `span`), the split lists being looked up now in that span's folder.
    """
    from tfx.components import FileBasedExampleGen
    from tfx.dsl.components.base import executor_spec
    from tfx.proto import example_gen_pb2

    data_root = input_base
    looked_up = input_base
    if spans.has_placeholder(input_base) and not splits:
        [looked_up], _, _ = spans.resolve([input_base], span)
    splits, hashed = split_inputs(looked_up, splits)
    if hash_split and not hashed:
        raise InputError(f"{looked_up} has ImageSets/Segmentation lists; hash_split does not apply")
    input_base, patterns, root_template = spans.split_base(data_root, [p for _, p in splits])
    input_config = example_gen_pb2.Input(splits=[
        example_gen_pb2.Input.Split(name=n, pattern=p) for (n, _), p in zip(splits, patterns)])
    output_config = (ingest_beam.hash_output_config(hash_split) if hashed
                     else example_gen_pb2.Output())
    settings = {"max_bad_fraction": max_bad_fraction}
    if class_names:
        settings["class_names"] = class_names
    settings.update(example_gen_executor.span_settings(root_template, [n for n, _ in splits], patterns))
    return FileBasedExampleGen(
        input_base=input_base, input_config=input_config, output_config=output_config,
        range_config=spans.range_config(span),
        custom_config=example_gen_executor.make_custom_config(settings),
        custom_executor_spec=executor_spec.BeamExecutorSpec(Executor))
