"""TFX glue shared by CocoExampleGen and VocExampleGen.

Each component is a `FileBasedExampleGen` whose input splits' patterns name the source files
(COCO: annotation JSON per split; VOC: ImageSets list per split, or the SegmentationClass PNGs)
and whose `custom_config` (a Struct) carries the format-specific settings. The executor runs the
graph of `ingest_beam.build` in the executor's Beam pipeline and writes the `Split-*` folders
like TFX does (GZIP TFRecords, `data_tfrecord-*.gz`); after the run, `label_map.json`,
`summary.json` and `quarantine.jsonl` sit in the Examples artifact's uri next to them.
"""
from __future__ import annotations

import os
from typing import Any

from google.protobuf import any_pb2, json_format, struct_pb2
from tfx.components.example_gen import base_example_gen_executor
from tfx.components.example_gen import utils as example_gen_utils
from tfx.components.util import examples_utils
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import proto_utils

from components import ingest_beam, paths, quarantine, spans

_OUT_DIR_KEY = "_segpipe_out_dir"  # handed from Do to GenerateExamplesByBeam


def make_custom_config(settings: dict) -> example_gen_pb2.CustomConfig:
    packed = any_pb2.Any()
    packed.Pack(json_format.ParseDict(settings, struct_pb2.Struct()))
    return example_gen_pb2.CustomConfig(custom_config=packed)


def read_custom_config(exec_properties: dict) -> dict:
    config = example_gen_pb2.CustomConfig()
    proto_utils.json_to_proto(exec_properties[standard_component_specs.CUSTOM_CONFIG_KEY], config)
    settings = struct_pb2.Struct()
    config.custom_config.Unpack(settings)
    return json_format.MessageToDict(settings)


# settings: the data root relative to input_base, with {SPAN}, and the split patterns as given
ROOT_TEMPLATE_KEY = "root_template"
SPLIT_TEMPLATES_KEY = "split_templates"


def span_settings(root_template: str | None, names: list[str], patterns: list[str]) -> dict:
    """The custom_config entries `dataset_root` needs (none for a fixed folder)."""
    if root_template is None:
        return {}
    return {ROOT_TEMPLATE_KEY: root_template, SPLIT_TEMPLATES_KEY: dict(zip(names, patterns))}


def dataset_root(input_base: str, settings: dict, input_config) -> str:
    """The dataset root this execution reads: input_base, or, when the root holds `{SPAN}` /
    `{VERSION}`, its template filled with the tokens TFX's driver put into the split patterns
    (the newest or the configured span, zero padding as found)."""
    template = settings.get(ROOT_TEMPLATE_KEY)
    if template is None:
        return input_base
    given = settings.get(SPLIT_TEMPLATES_KEY, {})
    found = {}
    for split in input_config.splits:
        if spans.has_placeholder(given.get(split.name)):
            found.update(spans.tokens(given[split.name], split.pattern))
    filled = spans.fill_tokens(template, found)
    return paths.join(input_base, filled) if filled else input_base


def _io_configs(exec_properties: dict) -> tuple[example_gen_pb2.Input, example_gen_pb2.Output]:
    """The ExampleGen's input and output configs from their JSON exec properties."""
    input_config = example_gen_pb2.Input()
    proto_utils.json_to_proto(exec_properties[standard_component_specs.INPUT_CONFIG_KEY], input_config)
    output_config = example_gen_pb2.Output()
    proto_utils.json_to_proto(exec_properties[standard_component_specs.OUTPUT_CONFIG_KEY], output_config)
    return input_config, output_config


class IngestExecutorBase(base_example_gen_executor.BaseExampleGenExecutor):
    """Subclasses implement make_source(root, input_paths, settings) -> (source, label_map), root
    being the dataset root of the span being ingested (see `dataset_root`)."""

    FORMAT = ""

    def make_source(self, input_base: str, input_paths: list[str], settings: dict):
        raise NotImplementedError

    def GetInputSourceToExamplePTransform(self):
        # Not used: all input splits go through one graph (GenerateExamplesByBeam below), because
        # duplicate image ids are detected across splits and the bookkeeping is job-wide.
        raise NotImplementedError("use GenerateExamplesByBeam")

    def GenerateExamplesByBeam(self, pipeline, exec_properties: dict[str, Any]):
        input_config, output_config = _io_configs(exec_properties)
        input_base = exec_properties[standard_component_specs.INPUT_BASE_KEY]
        settings = read_custom_config(exec_properties)
        input_splits = [(s.name, os.path.join(input_base, s.pattern)) for s in input_config.splits]
        self._source, self._label_map = self.make_source(
            dataset_root(input_base, settings, input_config), [p for _, p in input_splits],
            settings)
        self._settings = settings
        split_config_json = output_names = None
        if output_config.split_config.splits:
            split_config_json = json_format.MessageToJson(output_config.split_config)
            output_names = [s.name for s in output_config.split_config.splits]
        return ingest_beam.build(pipeline, self._source, input_splits,
                                 exec_properties[_OUT_DIR_KEY], split_config_json, output_names)

    def Do(self, input_dict, output_dict, exec_properties):
        """The base Do, but splits are written by `ingest_beam.write_splits` (no Reshuffle, so
        memory stays flat on the DirectRunner), then label map, summary and the bad-input gate."""
        self._log_startup(input_dict, output_dict, exec_properties)
        input_config, output_config = _io_configs(exec_properties)
        examples = artifact_utils.get_single_instance(
            output_dict[standard_component_specs.EXAMPLES_KEY])
        split_names = example_gen_utils.generate_output_split_names(input_config, output_config)
        examples.split_names = artifact_utils.encode_split_names(split_names)
        exec_properties = dict(exec_properties, **{_OUT_DIR_KEY: examples.uri})
        with self._make_beam_pipeline() as pipeline:
            ingest_beam.write_splits(self.GenerateExamplesByBeam(pipeline, exec_properties),
                                     examples.uri)
        examples_utils.set_payload_format(examples, example_gen_pb2.FORMAT_TF_EXAMPLE)
        examples_utils.set_file_format(examples, "tfrecords_gzip")
        quarantine.finalize(
            examples.uri, fmt=self.FORMAT, split_names=split_names, label_map=self._label_map,
            max_bad_fraction=float(self._settings.get("max_bad_fraction", 0.05)))
