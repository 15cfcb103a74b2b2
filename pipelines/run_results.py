"""Reads what a pipeline run produced (blessing, metrics, pushed model) back out of MLMD."""
from __future__ import annotations

import json
import sys


def _store(metadata_path: str, writable: bool = False):
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    cfg = metadata_store_pb2.ConnectionConfig()
    cfg.sqlite.filename_uri = metadata_path
    cfg.sqlite.connection_mode = (metadata_store_pb2.SqliteMetadataSourceConfig.READWRITE if writable
                                  else metadata_store_pb2.SqliteMetadataSourceConfig.READONLY)
    return metadata_store.MetadataStore(cfg)


def reject_ingested_span(metadata_path: str, since: float) -> int | None:
    """Marks the Examples this run ingested ABANDONED (with custom property data_gate=rejected):
    TFX resolves only LIVE artifacts, so a span the DataGate refused never enters a later run's
    span range (data.train_spans > 1). Returns the artifact id, None when nothing was ingested."""
    from ml_metadata.proto import metadata_store_pb2

    store = _store(metadata_path, writable=True)
    ingested = _artifacts(store, _this_run_execution(store, _EXAMPLE_GEN, since), "examples",
                          output=True)
    if not ingested:
        return None
    artifact = ingested[0]
    artifact.state = metadata_store_pb2.Artifact.ABANDONED
    artifact.custom_properties["data_gate"].string_value = "rejected"
    store.put_artifacts([artifact])
    return artifact.id


def _latest(store, type_name: str, since: float):
    """The newest artifact of a type created by this run (None when the component never ran)."""
    artifacts = [a for a in store.get_artifacts_by_type(type_name)
                 if a.create_time_since_epoch >= int(since * 1000) - 1000]
    return max(artifacts, key=lambda a: a.id) if artifacts else None


def _custom(artifact, key: str):
    if artifact is None or key not in artifact.custom_properties:
        return None
    value = artifact.custom_properties[key]
    return value.int_value if value.HasField("int_value") else value.string_value


def _this_run_execution(store, type_name: str, since: float):
    """The newest execution of a component type in this run (None when it never ran)."""
    executions = [e for e in store.get_executions_by_type(type_name)
                  if e.create_time_since_epoch >= int(since * 1000) - 1000]
    return max(executions, key=lambda e: e.id) if executions else None


def _artifacts(store, execution, key: str, output: bool = False) -> list:
    """The artifacts an execution read (or wrote) under `key`."""
    from ml_metadata.proto import metadata_store_pb2

    if execution is None:
        return []
    kind = metadata_store_pb2.Event.OUTPUT if output else metadata_store_pb2.Event.INPUT
    ids = [event.artifact_id for event in store.get_events_by_execution_ids([execution.id])
           if event.type == kind and any(step.key == key for step in event.path.steps)]
    return store.get_artifacts_by_id(ids) if ids else []


_EXAMPLE_GEN = "tfx.components.example_gen.component.FileBasedExampleGen"
_TRANSFORM = "tfx.components.transform.component.Transform"
_TRAINERS = ("tfx.components.trainer.component.Trainer",
             "tfx.extensions.google_cloud_ai_platform.trainer.component.Trainer")


def _trainer_execution(store, since: float):
    """This run's Trainer execution (local or Vertex Trainer), None when it never ran."""
    return next(filter(None, (_this_run_execution(store, t, since) for t in _TRAINERS)), None)


def lineage(store, since: float) -> dict:
    """What this run read: `span` (ingested by the ExampleGen), `train_spans` (the spans of
    Transform's input examples, which the Trainer reads transformed), `warm_start_from` (the
    Trainer's base model, or None)."""
    ingested = _artifacts(store, _this_run_execution(store, _EXAMPLE_GEN, since), "examples",
                          output=True)
    transform = _this_run_execution(store, _TRANSFORM, since)
    trained = sorted({_custom(a, "span") for a in _artifacts(store, transform, "examples")
                      if _custom(a, "span") is not None})
    trainer = _trainer_execution(store, since)
    base = _artifacts(store, trainer, "base_model")
    return {"span": _custom(ingested[0], "span") if ingested else None,
            "train_spans": trained if transform else None,
            "warm_start_from": base[0].uri if base else None}


def read_data_gate_failures(store, since: float) -> list[dict]:
    """The anomalies ExampleValidator found in this run (feature, reason), [] when none."""
    from components import data_gate

    anomalies = _latest(store, "ExampleAnomalies", since)
    if anomalies is None:
        return []
    names = anomalies.properties["split_names"].string_value if "split_names" in anomalies.properties else ""
    return data_gate.describe(anomalies.uri, json.loads(names or "[]"))


def read_metrics(evaluation_uri: str) -> tuple[dict, dict]:
    """(candidate metrics, change vs baseline) of the overall slice, as plain floats."""
    import tensorflow_model_analysis as tfma

    current, change = {}, {}
    for metrics_for_slice in tfma.load_metrics(evaluation_uri):
        if metrics_for_slice.slice_key.single_slice_keys:
            continue  # only the overall slice
        for kv in metrics_for_slice.metric_keys_and_values:
            if kv.key.model_name == "baseline":
                continue
            value = kv.value
            if value.HasField("double_value"):
                number = value.double_value.value
            else:
                continue
            (change if kv.key.is_diff else current)[kv.key.name] = number
    return current, change


def read_gate_failures(evaluation_uri: str) -> list[str]:
    import tensorflow_model_analysis as tfma

    try:
        result = tfma.load_validation_result(evaluation_uri)
    except Exception as err:  # no validations file: nothing was gated
        print(f"[segpipe] no validation result in {evaluation_uri}: {err}", file=sys.stderr)
        return []
    failures = []
    for slice_failure in result.metric_validations_per_slice:
        for failure in slice_failure.failures:
            key, threshold = failure.metric_key, failure.metric_threshold
            value = failure.metric_value.double_value.value
            if not failure.HasField("metric_value"):
                failures.append(f"{key.name}: {failure.message or 'no value'}")
            elif key.is_diff:
                allowed = threshold.change_threshold.absolute.value
                failures.append(f"{key.name} changed by {value:+.4f} vs the baseline "
                                f"(allowed down to {allowed:+.4f})")
            else:
                bound = threshold.value_threshold.lower_bound.value
                failures.append(f"{key.name} = {value:.4f} is below the lower bound {bound:.4f}")
    return failures


def read_tflite_evaluation(uri: str | None) -> dict | None:
    """{"saved_model": metrics, "max_quantization_drop": bounds, "variants": {name: {metrics, drop
    vs the SavedModel, size_bytes, blessed, reason}}} from the TFLiteExport component's evaluation
    at `uri` (components/tflite_export.py); None when it did not run."""
    from components import paths
    from components.tflite_export import EVALUATION_FILE

    if uri is None or not paths.exists(paths.join(uri, EVALUATION_FILE)):
        return None
    with paths.open_file(paths.join(uri, EVALUATION_FILE)) as f:
        result = json.load(f)
    def scalars(metrics):  # per-class values stay in the evaluation file
        return {k: v for k, v in (metrics or {}).items() if isinstance(v, (int, float))}

    return {"saved_model": scalars(result.get("saved_model")),
            "max_quantization_drop": result.get("max_quantization_drop"),
            "variants": {name: {"metrics": scalars(v.get("metrics")),
                                **{k: v.get(k) for k in ("drop", "size_bytes", "blessed", "reason")}}
                         for name, v in sorted(result.get("variants", {}).items())}}


def summarize(metadata_path: str, since: float, task: str) -> dict:
    store = _store(metadata_path)
    blessing = _latest(store, "ModelBlessing", since)
    evaluation = _latest(store, "ModelEvaluation", since)
    pushed = _latest(store, "PushedModel", since)
    trainer = _trainer_execution(store, since)
    trained = _artifacts(store, trainer, "model", output=True)
    model = trained[0] if trained else None
    report = _latest(store, "segpipe.RunReport", since)  # components.run_report.RunReport.TYPE_NAME
    metrics, change = read_metrics(evaluation.uri) if evaluation else ({}, {})
    blessed = bool(_custom(blessing, "blessed"))
    baseline_uri = _custom(blessing, "baseline_model")  # set by the Evaluator when it had one
    summary = {
        "blessed": blessed,
        "pushed_model": _custom(pushed, "pushed_destination") if _custom(pushed, "pushed") else None,
        "model": model.uri if model else None,
        "baseline_model": baseline_uri or None,
        "metrics": {k: round(v, 6) for k, v in sorted(metrics.items())},
        "change_vs_baseline": {k: round(v, 6) for k, v in sorted(change.items())},
        "evaluation": evaluation.uri if evaluation else None,
        # The RunReport component's page (components/run_report.py, pipelines/report.py).
        "report_html": _custom(report, "report_file") or None,
    }
    tflite_evaluation = _latest(store, "segpipe.TFLiteEvaluation", since)
    tflite = read_tflite_evaluation(tflite_evaluation.uri if tflite_evaluation else None)
    if tflite is not None:
        summary["tflite"] = tflite
    summary.update(lineage(store, since))
    data_gate_failures = read_data_gate_failures(store, since)
    if data_gate_failures:
        summary["data_gate_failures"] = data_gate_failures
    if not blessed and evaluation:
        summary["gate_failures"] = read_gate_failures(evaluation.uri)
    return summary
