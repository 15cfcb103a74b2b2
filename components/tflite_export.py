"""TFLiteExport: the TFX component after the Evaluator that turns the trained model into on-device
models, measures them and gates them.

It converts the Trainer's SavedModel (its `serving_tflite` signature: one uint8 image in, the task's
outputs out) to each TFLite variant (float16, full-integer int8 calibrated on Transform's train
examples), evaluates every variant and the SavedModel itself on the eval split with the same metric
code, and blesses a variant only when its drop against the SavedModel is within
`max_quantization_drop`. What converts, evaluates and judges is a function named by dotted path
(`export_fn=`, like the Trainer's `run_fn=`, so `components/` imports only `components`), called as

    export_fn(saved_model_dir, train_files, eval_files, out_dir, options) -> result (JSON-able dict)

with out_dir a local directory for the converted files (copied into the artifact afterwards) and
a result {"saved_model": metrics, "variants": {name: {"file", "blessed", "reason", ...}}, ...}.

Outputs:
- `serving_model`: the SavedModel plus the blessed `.tflite` files, under their fixed names, in one serving
  directory. The Pusher pushes this artifact, so a version directory holds exactly what was blessed;
  an unblessed variant is never pushed.
- `evaluation` (`segpipe.TFLiteEvaluation`): `tflite_evaluation.json` (the export_fn's result: per
  variant its metrics, drop, size, blessed and why) and every converted file, blessed or not.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile

from tfx import types
from tfx.dsl.components.base import base_component, base_executor, executor_spec
from tfx.types import artifact_utils, component_spec, standard_artifacts
from tfx.utils import io_utils, path_utils

from components import paths

EVALUATION_FILE = "tflite_evaluation.json"


class TFLiteEvaluation(types.Artifact):
    """A directory holding `tflite_evaluation.json` and every converted `.tflite` file."""

    TYPE_NAME = "segpipe.TFLiteEvaluation"  # KFP v2 wants "<namespace>.<Name>" for a custom type


class TFLiteExportSpec(types.ComponentSpec):
    PARAMETERS = {
        "export_fn": component_spec.ExecutionParameter(type=str),
        "eval_split": component_spec.ExecutionParameter(type=str),
        "options": component_spec.ExecutionParameter(type=str),  # JSON object
    }
    INPUTS = {
        "model": component_spec.ChannelParameter(type=standard_artifacts.Model),
        "transformed_examples": component_spec.ChannelParameter(type=standard_artifacts.Examples),
        "examples": component_spec.ChannelParameter(type=standard_artifacts.Examples),
    }
    OUTPUTS = {
        "serving_model": component_spec.ChannelParameter(type=standard_artifacts.Model),
        "evaluation": component_spec.ChannelParameter(type=TFLiteEvaluation),
    }


def _split_files(artifacts, split: str) -> list[str]:
    """TFRecord files of one split over the given Examples artifacts (several spans possible)."""
    files = []
    for artifact in artifacts:
        if split not in artifact_utils.decode_split_names(artifact.split_names):
            raise ValueError(f"examples {artifact.uri} have no split {split!r}")
        files += paths.tfrecord_files(artifact_utils.get_split_uri([artifact], split), f"{split} examples")
    return files


def blessed_files(result: dict) -> dict[str, str]:
    """{file name in the serving directory: path of the converted file} of the blessed variants."""
    return {v["file"].rsplit("/", 1)[-1]: v["file"] for v in result["variants"].values()
            if v.get("blessed") and v.get("file")}


class Executor(base_executor.BaseExecutor):
    def Do(self, input_dict, output_dict, exec_properties) -> None:
        trained = artifact_utils.get_single_instance(input_dict["model"])
        evaluation = artifact_utils.get_single_instance(output_dict["evaluation"])
        pushable = artifact_utils.get_single_instance(output_dict["serving_model"])
        from components.run_report import load_function  # run_report imports this module's artifact type

        export_fn = load_function(exec_properties["export_fn"])
        options = json.loads(exec_properties.get("options") or "{}")
        saved_model_dir = path_utils.serving_model_path(trained.uri)
        # The converted files are written locally, then copied into the artifact (which may be in GCS).
        with tempfile.TemporaryDirectory(prefix="segpipe_tflite_") as local_dir:
            result = export_fn(saved_model_dir,
                               _split_files(input_dict["transformed_examples"], "train"),
                               _split_files(input_dict["examples"], exec_properties["eval_split"]),
                               local_dir, options)
            for variant in result["variants"].values():
                if variant.get("file"):
                    stored = paths.join(evaluation.uri, os.path.basename(variant["file"]))
                    io_utils.copy_file(variant["file"], stored, overwrite=True)
                    variant["file"] = stored
        io_utils.write_string_file(paths.join(evaluation.uri, EVALUATION_FILE),
                                   json.dumps(result, indent=1, sort_keys=True))
        # The pushable model: the SavedModel as trained, plus the blessed variants beside it.
        serving_dir = path_utils.serving_model_path(pushable.uri)
        io_utils.copy_dir(saved_model_dir, serving_dir)
        blessed = blessed_files(result)
        for name, source in blessed.items():
            io_utils.copy_file(source, paths.join(serving_dir, name), overwrite=True)
        evaluation.set_string_custom_property("blessed_variants", ",".join(sorted(blessed)))
        pushable.set_string_custom_property("trained_model", trained.uri)
        for name, variant in sorted(result["variants"].items()):
            logging.info("TFLiteExport %s: %s", name, variant.get("reason"))


class TFLiteExportComponent(base_component.BaseComponent):
    """`TFLiteExportComponent(export_fn="pkg.module.fn", eval_split="val", options={...}, model=...,
    transformed_examples=..., examples=...)`."""

    SPEC_CLASS = TFLiteExportSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

    def __init__(self, *, export_fn: str, eval_split: str, options: dict | None = None, model,
                 transformed_examples, examples):
        spec = TFLiteExportSpec(
            export_fn=export_fn,
            eval_split=eval_split,
            options=json.dumps(options or {}, sort_keys=True),
            model=model, transformed_examples=transformed_examples, examples=examples,
            serving_model=types.Channel(type=standard_artifacts.Model),
            evaluation=types.Channel(type=TFLiteEvaluation),
        )
        super().__init__(spec=spec)
