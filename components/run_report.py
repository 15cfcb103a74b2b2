"""RunReport: the TFX component after the Evaluator that writes the run's report, one
self-contained HTML page (`report.html`, pictures embedded as data URIs) in its `report` artifact.

Inputs are the run's own artifacts: the examples (and their `summary.json` / `quarantine.jsonl`),
statistics, anomalies, the candidate model and its `model_run` (TensorBoard scalars), the
Evaluator's evaluation and blessing, and the baseline model when the resolver found one. What the
page says is decided by a report function named by dotted path (`report_fn=`, like the Trainer's
`run_fn=`): this module only turns artifacts into plain values (URIs, spans, split names) and calls
it, so `components/` keeps importing only `components` and the code that runs is the one installed
in the image, locally and on Vertex AI alike.

The report function is called as `report_fn(inputs, output_dir, options)`:
- inputs: {"examples": [{"uri", "span", "version", "split_names"}, ...], "statistics": uri,
  "anomalies": uri, "model": uri, "model_run": uri, "evaluation": uri, "blessing": uri,
  "baseline_model": uri or None, "tflite_evaluation": uri or None} (any of them None when its
  channel is empty),
- output_dir: the `report` artifact's directory,
- options: the component's `options` parameter (a dict; e.g. task, label map, evaluation split),
and returns the path of the page it wrote (recorded as the artifact's `report_file` property;
the artifact's type is `segpipe.RunReport` in ML Metadata and in the compiled Vertex pipeline).
"""
from __future__ import annotations

import importlib
import json
from typing import Any

from tfx import types
from tfx.dsl.components.base import base_component, base_executor, executor_spec
from tfx.types import artifact_utils, component_spec, standard_artifacts

from components.tflite_export import TFLiteEvaluation


class RunReport(types.Artifact):
    """A directory holding `report.html`, the run report."""

    TYPE_NAME = "segpipe.RunReport"  # KFP v2 wants "<namespace>.<Name>" for a custom type


class RunReportSpec(types.ComponentSpec):
    PARAMETERS = {
        "report_fn": component_spec.ExecutionParameter(type=str),
        "options": component_spec.ExecutionParameter(type=str),  # JSON object
    }
    INPUTS = {
        "examples": component_spec.ChannelParameter(type=standard_artifacts.Examples),
        "statistics": component_spec.ChannelParameter(type=standard_artifacts.ExampleStatistics,
                                                      optional=True),
        "anomalies": component_spec.ChannelParameter(type=standard_artifacts.ExampleAnomalies,
                                                     optional=True),
        "model": component_spec.ChannelParameter(type=standard_artifacts.Model),
        "model_run": component_spec.ChannelParameter(type=standard_artifacts.ModelRun, optional=True),
        "evaluation": component_spec.ChannelParameter(type=standard_artifacts.ModelEvaluation),
        "blessing": component_spec.ChannelParameter(type=standard_artifacts.ModelBlessing, optional=True),
        "baseline_model": component_spec.ChannelParameter(type=standard_artifacts.Model, optional=True),
        "tflite_evaluation": component_spec.ChannelParameter(type=TFLiteEvaluation, optional=True),
    }
    OUTPUTS = {
        "report": component_spec.ChannelParameter(type=RunReport),
    }


def load_function(dotted: str):
    module, _, name = dotted.rpartition(".")
    if not module:
        raise ValueError(f"report_fn {dotted!r} is not a dotted path module.function")
    return getattr(importlib.import_module(module), name)


def _uri(input_dict: dict, key: str) -> str | None:
    artifacts = input_dict.get(key) or []
    return artifacts[0].uri if artifacts else None


def _examples(artifacts) -> list[dict]:
    out = []
    for artifact in artifacts or []:
        out.append({
            "uri": artifact.uri,
            "span": artifact.span,
            "version": artifact.version,
            "split_names": artifact_utils.decode_split_names(artifact.split_names or "[]"),
        })
    return out


def plain_inputs(input_dict: dict) -> dict[str, Any]:
    """The component's input artifacts as the plain values the report function receives."""
    inputs: dict[str, Any] = {"examples": _examples(input_dict.get("examples"))}
    for key in ("statistics", "anomalies", "model", "model_run", "evaluation", "blessing", "baseline_model",
                "tflite_evaluation"):
        inputs[key] = _uri(input_dict, key)
    return inputs


class Executor(base_executor.BaseExecutor):
    def Do(self, input_dict, output_dict, exec_properties) -> None:
        report = artifact_utils.get_single_instance(output_dict["report"])
        report_fn = load_function(exec_properties["report_fn"])
        options = json.loads(exec_properties.get("options") or "{}")
        path = report_fn(plain_inputs(input_dict), report.uri, options)
        report.set_string_custom_property("report_file", str(path))


class RunReportComponent(base_component.BaseComponent):
    """`RunReportComponent(report_fn="pkg.module.fn", options={...}, examples=..., model=..., ...)`."""

    SPEC_CLASS = RunReportSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

    def __init__(self, *, report_fn: str, options: dict | None = None, examples, model, evaluation,
                 statistics=None, anomalies=None, model_run=None, blessing=None, baseline_model=None,
                 tflite_evaluation=None):
        spec = RunReportSpec(
            report_fn=report_fn,
            options=json.dumps(options or {}, sort_keys=True),
            examples=examples, statistics=statistics, anomalies=anomalies, model=model,
            model_run=model_run, evaluation=evaluation, blessing=blessing,
            baseline_model=baseline_model, tflite_evaluation=tflite_evaluation,
            report=types.Channel(type=RunReport),
        )
        super().__init__(spec=spec)
