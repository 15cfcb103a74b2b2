"""`compile_pipeline(config, out_file)` (`segpipe compile`): the same DAG (pipelines/pipeline.py)
compiled by KubeflowV2DagRunner for Kubeflow Pipelines v2 / Vertex AI Pipelines.

Compiling reads nothing from the cloud: the label map comes from `data.label_map` when the data
is remote, and the VOC splits are named rather than listed.

Cloud placement (all from the `vertex:` config section, see pipelines/config.py):
- Beam components (ExampleGen, StatisticsGen, Transform, Evaluator) on Dataflow,
- Trainer as a Vertex AI custom job on a Cloud TPU by default (or a GPU/CPU machine),
- Pusher to a GCS serving directory, or to a Vertex AI endpoint when `endpoint_name` is set.
"""
from __future__ import annotations

import json
import os

from components import label_map as label_maps
from components import paths
from components.beam_options import DIRECT_RUNNER_ARGS
from components.errors import InputError
from pipelines.config import deep_merge

# Vertex AI machine specs per accelerator choice. The Trainer's run_fn picks the distribution
# strategy from what it finds (TPUStrategy on a TPU VM, Mirrored on several GPUs).
MACHINE_SPECS = {
    "tpu_v3_8": {"machine_type": "cloud-tpu", "accelerator_type": "TPU_V3", "accelerator_count": 8},
    "tpu_v5e_4": {"machine_type": "ct5lp-hightpu-4t", "tpu_topology": "2x2"},
    "tpu_v5e_8": {"machine_type": "ct5lp-hightpu-8t", "tpu_topology": "2x4"},
    "gpu_t4": {"machine_type": "n1-standard-8", "accelerator_type": "NVIDIA_TESLA_T4",
               "accelerator_count": 1},
    "gpu_a100": {"machine_type": "a2-highgpu-1g", "accelerator_type": "NVIDIA_TESLA_A100",
                 "accelerator_count": 1},
    "cpu": {"machine_type": "n1-standard-16"},
}


def dataflow_beam_args(vertex: dict) -> list[str]:
    flow = vertex["dataflow"]
    if not flow.get("enabled", True):
        return list(DIRECT_RUNNER_ARGS)
    return [
        "--runner=DataflowRunner",
        f"--project={vertex['project']}",
        f"--region={vertex['region']}",
        f"--temp_location={flow['temp_location']}",
        f"--machine_type={flow['machine_type']}",
        f"--max_num_workers={flow['max_num_workers']}",
        f"--disk_size_gb={flow['disk_size_gb']}",
        # Workers run the pipeline image, so components' code and pins match exactly.
        f"--sdk_container_image={vertex['image']}",
        "--experiments=use_runner_v2",
    ]


def trainer_settings(vertex: dict) -> tuple[dict, dict]:
    """(Vertex training custom_config entries, run_fn custom_config entries)."""
    from tfx.v1.extensions import google_cloud_ai_platform as gcai

    accelerator = vertex["trainer"]["accelerator"]
    if accelerator not in MACHINE_SPECS:
        raise InputError(f"vertex.trainer.accelerator={accelerator!r}; choose from {sorted(MACHINE_SPECS)}")
    worker_pool = {
        "machine_spec": dict(MACHINE_SPECS[accelerator]),
        "replica_count": 1,
        "container_spec": {"image_uri": vertex["image"]},
    }
    cloud = {
        gcai.ENABLE_VERTEX_KEY: True,
        gcai.VERTEX_REGION_KEY: vertex["region"],
        gcai.TRAINING_ARGS_KEY: {"project": vertex["project"], "worker_pool_specs": [worker_pool]},
    }
    run_fn_config = {"tpu": vertex["trainer"]["tpu"]} if accelerator.startswith("tpu") else {}
    return cloud, run_fn_config


def pusher_settings(vertex: dict):
    """(Pusher component class, its kwargs)."""
    from tfx import v1 as tfx
    from tfx.v1.extensions import google_cloud_ai_platform as gcai

    if vertex.get("endpoint_name"):
        return gcai.Pusher, {"custom_config": {
            gcai.ENABLE_VERTEX_KEY: True,
            gcai.VERTEX_REGION_KEY: vertex["region"],
            gcai.VERTEX_CONTAINER_IMAGE_URI_KEY: vertex["serving_image"],
            gcai.SERVING_ARGS_KEY: {
                "project_id": vertex["project"],
                "endpoint_name": vertex["endpoint_name"],
                "machine_type": vertex["serving_machine_type"],
            },
        }}
    return tfx.components.Pusher, {"push_destination": tfx.proto.PushDestination(
        filesystem=tfx.proto.PushDestination.Filesystem(base_directory=vertex["serving_dir"]))}


def cloud_config(config: dict) -> dict:
    """The local config with data and schema paths moved to where the cloud run finds them."""
    vertex = config["vertex"]
    data = {"data_root": config["data"].get("data_root") or vertex["data_root"],
            "splits": config["data"].get("splits") or ["train", "val"]}
    return deep_merge(config, {"data": data, "schema_dir": vertex["schema_dir"]})


def compile_pipeline(config: dict, out_file: str) -> dict:
    """Writes the pipeline for Vertex AI to out_file (.json: PipelineJob, .yaml: KFP IR); returns a summary."""
    config = cloud_config(config)
    if int(config["data"].get("train_spans") or 1) > 1:
        # KFP v2 compiles only LatestArtifact / LatestBlessedModel resolvers, not SpanRangeStrategy.
        raise InputError("data.train_spans > 1 needs a span-range resolver, which the Kubeflow v2 / "
                         "Vertex compiler does not support; compile with data.train_spans=1 (the "
                         "newest span) or run it locally")
    data_root = config["data"]["data_root"]
    if paths.is_remote(data_root) and not config["data"].get("label_map"):
        raise InputError(f"set data.label_map: the label_map.json that segpipe ingest writes "
                         f"(the classes of {data_root} are not read at compile time)")
    if config["data"].get("label_map"):
        # Read now, so a missing file is said before TFX's import; the DAG then takes the map as read.
        config = deep_merge(config, {"data": {"label_map": label_maps.load_given(config["data"]["label_map"])}})
    from tfx import v1 as tfx
    from tfx.v1.extensions import google_cloud_ai_platform as gcai

    from pipelines import pipeline as dag

    vertex = config["vertex"]
    trainer_cloud, trainer_run_fn = trainer_settings(vertex)
    pusher_cls, pusher_kwargs = pusher_settings(vertex)
    pipe = dag.create_pipeline(
        config,
        vertex["pipeline_root"],
        beam_pipeline_args=dataflow_beam_args(vertex),
        trainer_component=gcai.Trainer,
        trainer_extra_config={**trainer_cloud, **trainer_run_fn},
        pusher_component=pusher_cls,
        pusher_kwargs=pusher_kwargs,
    )
    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(default_image=vertex["image"]),
        output_dir=os.path.dirname(os.path.abspath(out_file)),
        output_filename=os.path.basename(out_file),
    )
    runner.run(pipe)
    with open(out_file) as f:
        compiled = json.load(f)
    spec = compiled.get("pipelineSpec", compiled)
    return {
        "compiled": os.path.abspath(out_file),
        "pipeline_name": config["pipeline_name"],
        "task": config["task"],
        "components": sorted(spec["root"]["dag"]["tasks"]),
        "image": vertex["image"],
        "trainer_machine": trainer_cloud[gcai.TRAINING_ARGS_KEY]["worker_pool_specs"][0]["machine_spec"],
        "pipeline_root": vertex["pipeline_root"],
    }

