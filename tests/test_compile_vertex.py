"""`segpipe compile` / `segpipe submit --dry-run`: the local DAG compiled for KFP v2 / Vertex AI.

Checked offline: the JSON loads into `aiplatform.PipelineJob` with anonymous credentials, holds
every component of the local DAG, carries the Evaluator gate, and the Trainer asks for a TPU.
"""
from __future__ import annotations

import functools
import json

import pytest

from components import label_map as label_maps

LOCAL_DAG = {"CocoExampleGen", "VocExampleGen", "StatisticsGen", "ImportSchemaGen", "ExampleValidator",
             "DataGate", "Transform", "Trainer", "latest_blessed_model_resolver", "Evaluator", "TFLiteExport",
             "RunReport", "Pusher"}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory, segpipe) -> dict:
    """Both tasks compiled once, from label maps given in the config (no GCS access needed)."""
    tmp = tmp_path_factory.mktemp("compile")
    out = {}
    for task, lm in (
        ("semantic", label_maps.from_class_names(["background", "circle", "square"])),
        ("instance", label_maps.from_coco_categories(
            [{"id": 3, "name": "circle"}, {"id": 7, "name": "square"}])),
    ):
        lm_path = tmp / f"{task}_label_map.json"
        label_maps.write(lm, str(lm_path))
        cfg = tmp / f"{task}.yaml"
        cfg.write_text(
            "data:\n"
            f"  label_map: {lm_path}\n"
            # Scheduled runs: the newest span of the bucket, warm start, per-class gate.
            f"  data_root: gs://test-bucket/{task}/span-{{SPAN}}\n"
            "trainer:\n"
            "  warm_start: true\n"
            "evaluator:\n"
            "  per_class_max_drop: 0.05\n"
            "vertex:\n"
            "  project: test-project\n"
            "  region: europe-west4\n"
            "  pipeline_root: gs://test-bucket/root\n"
            "  image: europe-west4-docker.pkg.dev/test-project/segpipe/segpipe:1\n")
        path = tmp / f"{task}.json"
        summary, _ = segpipe("compile", "--target", "vertex", "--task", task, "--config", str(cfg),
                           "--out", str(path))
        out[task] = (path, summary, json.loads(path.read_text()))
    return out


@pytest.mark.parametrize("task", ["semantic", "instance"])
def test_compiled_json_holds_the_local_dag(compiled, task):
    _, summary, spec = compiled[task]
    tasks = spec["pipelineSpec"]["root"]["dag"]["tasks"]
    example_gen = "VocExampleGen" if task == "semantic" else "CocoExampleGen"
    expected = (LOCAL_DAG - {"CocoExampleGen", "VocExampleGen", "latest_blessed_model_resolver"}) | {example_gen}
    assert expected <= set(tasks), sorted(tasks)
    # KFP v2 splits the Resolver into its model and blessing resolution steps.
    assert any(t.startswith("latest_blessed_model_resolver") for t in tasks)
    assert tasks["Evaluator"]["inputs"]["artifacts"]["baseline_model"]["taskOutputArtifact"][
        "producerTask"].startswith("latest_blessed_model_resolver")
    assert tasks["Pusher"]["inputs"]["artifacts"]["model_blessing"]["taskOutputArtifact"][
        "producerTask"] == "Evaluator"
    assert set(summary["components"]) == set(tasks)
    executors = spec["pipelineSpec"]["deploymentSpec"]["executors"]
    assert f"components.{'voc' if task == 'semantic' else 'coco'}_example_gen.Executor" in json.dumps(
        executors[f"{example_gen}_executor"])


@pytest.mark.parametrize("task", ["semantic", "instance"])
def test_compiled_json_loads_into_vertex_pipeline_job_offline(compiled, task):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import aiplatform

    path, _, _ = compiled[task]
    job = aiplatform.PipelineJob(
        display_name=f"segpipe-{task}", template_path=str(path), project="test-project",
        location="europe-west4", credentials=AnonymousCredentials())
    resource = job.to_dict()  # the request body `submit()` would send
    assert resource["runtimeConfig"]["gcsOutputDirectory"] == "gs://test-bucket/root"
    assert "Trainer" in resource["pipelineSpec"]["root"]["dag"]["tasks"]


@pytest.mark.parametrize("task,metrics", [("semantic", ["mean_iou"]), ("instance", ["box_ap", "mask_ap"])])
def test_evaluator_gate_and_tpu_trainer_are_compiled_in(compiled, task, metrics):
    _, _, spec = compiled[task]
    tasks = spec["pipelineSpec"]["root"]["dag"]["tasks"]
    parameter = functools.partial(_parameter, tasks)

    eval_config = json.loads(parameter("Evaluator", "eval_config"))
    gated = {}
    for metrics_spec in eval_config["metrics_specs"]:
        gated.update(metrics_spec.get("thresholds", {}))
        for metric in metrics_spec["metrics"]:
            if "threshold" in metric:
                name = json.loads(metric.get("config", "{}")).get("name") or "mean_iou"  # its default
                gated[name] = metric["threshold"]
    for metric in metrics:
        assert gated[metric]["value_threshold"]["lower_bound"] > 0
        assert gated[metric]["change_threshold"]["direction"] == "HIGHER_IS_BETTER"
    assert json.loads(parameter("Evaluator", "example_splits")) == ["val"]

    trainer_config = json.loads(parameter("Trainer", "custom_config"))
    pool = trainer_config["ai_platform_training_args"]["worker_pool_specs"][0]
    assert pool["machine_spec"]["accelerator_type"].startswith("TPU"), pool
    assert pool["container_spec"]["image_uri"].endswith("segpipe:1")
    assert trainer_config["ai_platform_enable_vertex"] is True
    assert trainer_config["tpu"] == "local" and trainer_config["task"] == task
    executors = spec["pipelineSpec"]["deploymentSpec"]["executors"]
    assert "google_cloud_ai_platform.trainer" in json.dumps(executors["Trainer_executor"])
    # Beam components go to Dataflow with the same image.
    assert "--runner=DataflowRunner" in executors["Transform_executor"]["container"]["args"]


def test_submit_dry_run_prints_a_schedule_request(compiled, segpipe):
    path, _, _ = compiled["semantic"]
    summary, _ = segpipe("submit", "--compiled", str(path), "--project", "test-project",
                       "--region", "europe-west4", "--schedule", "0 3 * * 1", "--dry-run")
    assert summary["dry_run"] is True and summary["kind"] == "schedule"
    schedule = summary["request"]["schedule"]
    assert schedule["cron"] == "0 3 * * 1"
    assert summary["request"]["parent"] == "projects/test-project/locations/europe-west4"
    job = schedule["create_pipeline_job_request"]["pipeline_job"]
    assert job["runtimeConfig"]["gcsOutputDirectory"] == "gs://test-bucket/root"
    assert "Trainer" in json.dumps(job["pipelineSpec"])


def _producers(tasks: dict, task_name: str) -> dict:
    """input artifact -> the task producing it."""
    return {name: value["taskOutputArtifact"]["producerTask"]
            for name, value in tasks[task_name]["inputs"]["artifacts"].items()}


def _parameter(tasks: dict, task_name: str, name: str) -> str:
    return tasks[task_name]["inputs"]["parameters"][name]["runtimeValue"]["constantValue"]["stringValue"]


@pytest.mark.parametrize("task", ["semantic", "instance"])
def test_run_report_is_compiled_in_after_the_evaluator(compiled, task):
    _, _, spec = compiled[task]
    tasks = spec["pipelineSpec"]["root"]["dag"]["tasks"]
    producers = _producers(tasks, "RunReport")
    assert producers["evaluation"] == producers["blessing"] == "Evaluator"
    assert producers["model"] == producers["model_run"] == "Trainer"
    assert producers["baseline_model"].startswith("latest_blessed_model_resolver")
    assert producers["anomalies"] == "ExampleValidator" and producers["statistics"] == "StatisticsGen"
    assert producers["tflite_evaluation"] == "TFLiteExport"
    assert _parameter(tasks, "RunReport", "report_fn") == "pipelines.report.write_run_report"
    options = json.loads(_parameter(tasks, "RunReport", "options"))
    assert options["task"] == task and options["eval_split"] == "val" and options["label_map"]["classes"]
    executors = spec["pipelineSpec"]["deploymentSpec"]["executors"]
    assert "components.run_report.Executor" in json.dumps(executors["RunReport_executor"])
    outputs = spec["pipelineSpec"]["components"]["RunReport"]["outputDefinitions"]["artifacts"]
    assert "segpipe.RunReport" in json.dumps(outputs["report"])


@pytest.mark.parametrize("task", ["semantic", "instance"])
def test_tflite_export_is_compiled_in_between_evaluator_and_pusher(compiled, task):
    _, _, spec = compiled[task]
    tasks = spec["pipelineSpec"]["root"]["dag"]["tasks"]
    assert _producers(tasks, "TFLiteExport") == {"model": "Trainer", "transformed_examples": "Transform",
                         "examples": "VocExampleGen" if task == "semantic" else "CocoExampleGen"}
    assert "Evaluator" in tasks["TFLiteExport"]["dependentTasks"]
    # The Pusher pushes the SavedModel with the blessed .tflite files, if the Evaluator blessed it.
    pusher = tasks["Pusher"]["inputs"]["artifacts"]
    assert pusher["model"]["taskOutputArtifact"] == {"producerTask": "TFLiteExport",
                                                     "outputArtifactKey": "serving_model"}
    assert pusher["model_blessing"]["taskOutputArtifact"]["producerTask"] == "Evaluator"
    assert _parameter(tasks, "TFLiteExport", "export_fn") == "trainer_module.on_device.export_and_evaluate"
    options = json.loads(_parameter(tasks, "TFLiteExport", "options"))
    assert options["variants"] == (["float16", "int8"] if task == "semantic" else ["float16"])
    assert options["max_quantization_drop"] == (
        {"mean_iou": 0.015} if task == "semantic" else {"box_ap": 0.02, "mask_ap": 0.02})
    executors = spec["pipelineSpec"]["deploymentSpec"]["executors"]
    assert "components.tflite_export.Executor" in json.dumps(executors["TFLiteExport_executor"])
    outputs = spec["pipelineSpec"]["components"]["TFLiteExport"]["outputDefinitions"]["artifacts"]
    assert "segpipe.TFLiteEvaluation" in json.dumps(outputs["evaluation"])


@pytest.mark.parametrize("task", ["semantic", "instance"])
def test_spans_data_gate_and_warm_start_are_compiled_in(compiled, task):
    _, _, spec = compiled[task]
    tasks = spec["pipelineSpec"]["root"]["dag"]["tasks"]
    example_gen = "VocExampleGen" if task == "semantic" else "CocoExampleGen"
    parameter = functools.partial(_parameter, tasks)

    # {SPAN} left for the ExampleGen driver, relative to the fixed part of the root.
    assert parameter(example_gen, "input_base") == f"gs://test-bucket/{task}"
    patterns = [s["pattern"] for s in json.loads(parameter(example_gen, "input_config"))["splits"]]
    assert patterns and all(p.startswith("span-{SPAN}/") for p in patterns), patterns
    # The DataGate reads the anomalies and Transform waits for it.
    assert tasks["DataGate"]["inputs"]["artifacts"]["anomalies"]["taskOutputArtifact"][
        "producerTask"] == "ExampleValidator"
    assert "DataGate" in tasks["Transform"]["dependentTasks"]
    # Warm start: the Trainer's base model is the latest blessed model.
    assert tasks["Trainer"]["inputs"]["artifacts"]["base_model"]["taskOutputArtifact"][
        "producerTask"].startswith("latest_blessed_model_resolver")
    # Per-class gate: one KeyGate per class key, with the allowed drop.
    eval_config = json.loads(parameter("Evaluator", "eval_config"))
    gates = [m for spec_ in eval_config["metrics_specs"] for m in spec_["metrics"]
             if m["class_name"] == "KeyGate"]
    names = {json.loads(m["config"])["name"] for m in gates}
    assert names == ({"iou/background", "iou/circle", "iou/square"} if task == "semantic" else
                     {f"{k}_ap/{c}" for k in ("box", "mask") for c in ("circle", "square")})
    assert all(m["threshold"]["change_threshold"]["absolute"] == -0.05 for m in gates)


def test_compile_refuses_a_span_range_resolver():
    from conftest import run_segpipe

    proc = run_segpipe("compile", "--task", "semantic", "--out", "/tmp/never.json",
                       "--set", "data.train_spans=2")
    assert proc.returncode == 2
    assert "data.train_spans > 1" in proc.stderr.strip().splitlines()[-1]
