"""Pipeline configuration: documented defaults, overridden by a YAML file and then by `--set`.

The config is a nested dict. `load_config(task, yaml_path, overrides)` returns the merged result;
`pipelines/pipeline.py` reads it to build the one DAG that both runners use. Keys:

    pipeline_name        TFX pipeline name (MLMD context), default "segpipe-<task>"
    enable_cache         reuse unchanged component outputs between runs (off: every run retrains)
    data:                where the dataset is (all None = generate the sample data and use it)
      data_root          VOC root (semantic) | COCO dataset root (instance); may hold TFX's `{SPAN}`
                         (and `{VERSION}`), e.g. gs://bucket/coco/span-{SPAN}: a run ingests the
                         newest span (components/spans.py); so may COCO annotation paths
      span               ingest this span instead of the newest (TFX range_config static range)
      train_spans        Transform and Trainer read the newest N ingested spans (default 1: the
                         span of this run; more through a SpanRangeStrategy resolver, local only)
      annotations        COCO: {split: json path relative to data_root} or one path (hash split)
      images             COCO image dir, relative to data_root or absolute (default "images")
      class_names        VOC class_names.txt (default DATA_ROOT/class_names.txt, else the VOC 21)
      splits             VOC: the ImageSets/Segmentation/<split>.txt lists to use (None: those present;
                         `segpipe compile` defaults to [train, val] so it needn't list GCS)
      label_map          label_map.json (or inline dict) to use instead of reading the dataset's
                         categories at build time (lets `segpipe compile` run offline)
      sample             {num_images, image_size, seed} for the generated sample data
    ingest:              {max_bad_fraction, hash_split: {split: buckets}} for the ExampleGen
    schema_dir           directory with <task>.pbtxt schemas (in the container: /segpipe/schemas)
    trainer:             hyper-parameters handed to Transform and Trainer as custom_config (their
                         defaults and meaning: trainer_module/{semantic,instance}/hparams.py and
                         the shared trainer_module/training.py, which reject unknown ones), plus
                         train_steps/eval_steps and warm_start (start from the latest blessed
                         model's weights, fresh optimizer; from scratch when none is blessed)
    evaluator:           gate: absolute lower bounds and the allowed change against the baseline,
                         for the mean metrics and (per_class_lower_bound, per_class_max_drop; None =
                         off) for every class's IoU / per-category box and mask AP
    data_gate            strict (default): schema anomalies found by ExampleValidator stop the run
                         before Transform; warn: they are logged and the run goes on
    tflite:              on-device export after the Evaluator: {variants, max_quantization_drop,
                         representative_examples}; blessed .tflite files are pushed with the model
    pusher:              serving_dir (default <workdir>/serving) for the local filesystem Pusher
    beam_args            Beam pipeline args for ExampleGen, StatisticsGen, Transform, Evaluator
    vertex:              cloud settings used by `segpipe compile` (see pipelines/kubeflow_runner.py)

Every other key of the YAML file and of `--set` must be one of these (a typo must not pass
silently); under a key whose default is None (e.g. data.annotations, ingest.hash_split) any
value goes.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from components.beam_options import DIRECT_RUNNER_ARGS
from components.errors import InputError

REPO_ROOT = Path(__file__).resolve().parents[1]

_COMMON: dict[str, Any] = {
    "enable_cache": False,
    "data": {
        "data_root": None,
        "annotations": None,
        "images": None,
        "class_names": None,
        "label_map": None,
        "splits": None,
        "span": None,
        "train_spans": 1,
        "sample": {"num_images": None, "image_size": None, "seed": 0},
    },
    "data_gate": "strict",
    # hash_split {split: buckets} applies only to sources without their own splits (one COCO file,
    # VOC without ImageSets lists); None = the ExampleGens' default, train=4 val=1.
    "ingest": {"max_bad_fraction": 0.05, "hash_split": None},
    "schema_dir": str(REPO_ROOT / "schemas"),
    "pusher": {"serving_dir": None},
    # On-device models (components/tflite_export.py, after the Evaluator): the TFLite variants to
    # convert and gate ([] = none); the largest metric drop against the SavedModel that still blesses
    # a variant (None = the task's default, 0.015 mIoU or 0.02 box and mask AP; a number applies to
    # every gated metric, a dict {metric: bound} to each); how many train examples calibrate int8.
    "tflite": {"variants": ["float16", "int8"], "max_quantization_drop": None,
               "representative_examples": 100},
    # DirectRunner on all cores; on Vertex these become DataflowRunner args (kubeflow_runner.py).
    "beam_args": list(DIRECT_RUNNER_ARGS),
    "vertex": {
        "project": "my-gcp-project",
        "region": "us-central1",
        "pipeline_root": "gs://my-bucket/segpipe/pipeline_root",
        "data_root": "gs://my-bucket/segpipe/data",
        "image": "us-docker.pkg.dev/my-gcp-project/segpipe/segpipe:latest",
        "schema_dir": "/segpipe/schemas",
        # Beam components on Dataflow.
        "dataflow": {
            "enabled": True,
            "temp_location": "gs://my-bucket/segpipe/beam_tmp",
            "machine_type": "n1-standard-8",
            "max_num_workers": 10,
            "disk_size_gb": 100,
        },
        # Trainer as a Vertex AI custom job; TPU by default.
        "trainer": {
            "accelerator": "tpu_v3_8",  # tpu_v3_8 | tpu_v5e_8 | gpu_t4 | gpu_a100 | cpu
            "tpu": "local",  # TPUClusterResolver target inside the Vertex TPU VM
        },
        # Pusher: a GCS serving directory, or a Vertex AI endpoint when `endpoint_name` is set.
        "serving_dir": "gs://my-bucket/segpipe/serving",
        "endpoint_name": None,
        "serving_image": "us-docker.pkg.dev/vertex-ai/prediction/tf2-cpu.2-15:latest",
        "serving_machine_type": "n1-standard-4",
    },
}

_TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "semantic": {
        # DeepLab v3+ with separable ASPP/decoder convs at 128 px, batch 16: ~0.18 s/step on 2 CPU cores
        # (bfloat16), the whole run about 5 min.
        "trainer": {"train_steps": 1100, "eval_steps": 20, "warm_start": False},
        "evaluator": {
            "mean_iou_lower_bound": 0.70,
            # A new model may be at most this much worse than the last blessed one.
            "mean_iou_max_drop": 0.01,
            # The same for each class's IoU (None: no per-class gate).
            "per_class_lower_bound": None,
            "per_class_max_drop": None,
        },
    },
    "instance": {
        "data": {"annotations": None, "images": "images"},
        # ~0.37-0.39 s/step on 2 CPU cores (bfloat16) at the defaults: the whole run takes about 15 min.
        "trainer": {"train_steps": 1800, "eval_steps": 10, "warm_start": False},
        "evaluator": {
            "box_ap_lower_bound": 0.50,
            "mask_ap_lower_bound": 0.40,
            "box_ap_max_drop": 0.01,
            "mask_ap_max_drop": 0.01,
            # Each category's box AP and mask AP (None: no per-class gate).
            "per_class_lower_bound": None,
            "per_class_max_drop": None,
        },
        # float16 only by default: the int8 Mask R-CNN of the sample run lost 0.42 box AP and 0.30 mask
        # AP (never blessed) and its calibration took 59 of TFLiteExport's 98 s. Opt in with
        # tflite.variants=[float16,int8].
        "tflite": {"variants": ["float16"]},
    },
}


def deep_merge(base: dict, override: dict) -> dict:
    """Returns base updated recursively with override (dicts merge, everything else replaces)."""
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_set(items: list[str]) -> dict:
    """`["trainer.train_steps=100", ...]` -> nested dict; values parsed as YAML scalars."""
    result: dict = {}
    for item in items or []:
        if "=" not in item:
            raise InputError(f"--set expects KEY=VALUE, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            problem = getattr(err, "problem", None) or type(err).__name__
            raise InputError(f"--set {item!r}: the value is not valid YAML ({problem})") from None
        node = result
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return result


# Sections whose keys are not listed here: the trainer checks its own hyper-parameters.
_OPEN_SECTIONS = ("trainer",)


def check_keys(defaults: dict, override: dict, source: str | None = None, prefix: str = "") -> None:
    """InputError naming the first key of `override` that `defaults` do not have, or a section
    given a plain value (or the reverse). `source` (e.g. the YAML file) prefixes the message."""
    where = f"{source}: " if source else ""
    for key, value in override.items():
        dotted = f"{prefix}{key}"
        if key not in defaults:
            known = ", ".join(sorted(map(str, defaults)))
            raise InputError(f"{where}unknown config key {dotted!r} (known here: {known})")
        default = defaults[key]
        if isinstance(default, dict):
            if not isinstance(value, dict):
                raise InputError(f"{where}config key {dotted!r} is a section, not a value: set its keys "
                                 f"({', '.join(sorted(default))})")
            if dotted not in _OPEN_SECTIONS:
                check_keys(default, value, source, f"{dotted}.")
        elif isinstance(value, dict) and default is not None and not isinstance(default, dict):
            raise InputError(f"{where}config key {dotted!r} holds a value, not a section")


def _read_yaml(yaml_path: str) -> dict:
    path = Path(yaml_path)
    if not path.is_file():
        raise InputError(f"config file not found: {yaml_path}")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or type(err).__name__
        raise InputError(f"{yaml_path}: not valid YAML: {problem}{where}") from None
    if not isinstance(loaded, dict):
        raise InputError(f"{yaml_path}: expected a mapping at the top level")
    return loaded


def load_config(task: str, yaml_path: str | None = None, overrides: dict | None = None) -> dict:
    """The defaults of `task`, updated by the YAML file, then by `overrides` (e.g. from `--set`)."""
    if task not in _TASK_DEFAULTS:
        raise InputError(f"unknown task {task!r}; expected one of {sorted(_TASK_DEFAULTS)}")
    defaults = deep_merge(_COMMON, _TASK_DEFAULTS[task])
    defaults["task"] = task
    defaults["pipeline_name"] = f"segpipe-{task}"
    config = defaults
    if yaml_path:
        loaded = _read_yaml(yaml_path)
        check_keys(defaults, loaded, yaml_path)
        config = deep_merge(config, loaded)
    check_keys(defaults, overrides or {})
    config = deep_merge(config, overrides or {})
    if config["task"] != task:
        raise InputError(f"config says task={config['task']!r} but the command asked for {task!r}")
    return config
