"""The one definition of the DAG, used unchanged by the local and the Kubeflow v2 / Vertex runners.

    ExampleGen (COCO | VOC, Beam; the newest span) -> StatisticsGen -> ImportSchemaGen
      -> ExampleValidator -> DataGate (stops the run on schema anomalies)
      -> [Resolver(newest data.train_spans spans)] -> Transform
      -> Trainer (warm start: from the latest blessed model) -> Resolver(latest blessed model)
      -> Evaluator (TFMA gate: mean and per-class)
      -> TFLiteExport (float16 / int8, each gated on its drop vs the SavedModel) -> Pusher
      -> RunReport (report.html, blessed or not)

Code is referenced by dotted path (`run_fn=`, `preprocessing_fn=`) to the installed package rather
than by `module_file=`, so compiling never has to package a wheel into the pipeline root and the
container image alone decides which code runs.
"""
from __future__ import annotations

import os
from typing import Any

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow_model_analysis as tfma  # noqa: E402
from tfx import v1 as tfx  # noqa: E402

from components import contract, data_gate, paths, spans  # noqa: E402
from components import label_map as label_maps  # noqa: E402
from components.coco_example_gen import CocoExampleGen  # noqa: E402
from components.errors import InputError  # noqa: E402
from components.run_report import RunReportComponent  # noqa: E402
from components.tflite_export import TFLiteExportComponent  # noqa: E402
from components.voc_example_gen import VocExampleGen  # noqa: E402
from components.voc_source import resolve_class_names  # noqa: E402

PREPROCESSING_FN = "trainer_module.preprocessing.preprocessing_fn"
RUN_FN = "trainer_module.run.run_fn"
REPORT_FN = "pipelines.report.write_run_report"
EXPORT_FN = "trainer_module.on_device.export_and_evaluate"
EVAL_SPLIT = "val"
# trainer: keys the pipeline consumes itself (not hyper-parameters for custom_config).
PIPELINE_TRAINER_KEYS = ("train_steps", "eval_steps", "warm_start")
SPAN_RESOLVER_ID = "span_range_resolver"
MODEL_RESOLVER_ID = "latest_blessed_model_resolver"


def dataset_label_map(config: dict) -> dict:
    """The label map, read from the dataset at build time so Trainer and Evaluator know the classes.

    ExampleGen writes the same map beside the examples; both come from `components.label_map`.
    """
    data = config["data"]
    if data.get("label_map"):  # e.g. compiling offline for a dataset in GCS
        return label_maps.load_given(data["label_map"])
    root = data["data_root"]
    if config["task"] == "semantic":
        [root], _, _ = spans.resolve([root], data.get("span"))  # the span being ingested
        return label_maps.from_class_names(resolve_class_names(root, data.get("class_names")))
    annotations = coco_annotations(config)
    first = annotations if isinstance(annotations, str) else next(iter(annotations.values()))
    [first], _, _ = spans.resolve([paths.join(root, first)], data.get("span"))
    return label_maps.from_coco_categories(label_maps.read_coco_categories(first))


def coco_annotations(config: dict) -> Any:
    annotations = config["data"].get("annotations")
    if annotations:
        return annotations
    # COCO layout of the sample data and of the usual `annotations/instances_<split>.json`.
    return {"train": "annotations/instances_train.json", "val": "annotations/instances_val.json"}


def _example_gen(config: dict):
    data, ingest = config["data"], config["ingest"]
    if config["task"] == "semantic":
        return VocExampleGen(
            input_base=data["data_root"],
            class_names=data.get("class_names"),
            hash_split=ingest["hash_split"],
            max_bad_fraction=ingest["max_bad_fraction"],
            splits=data.get("splits"),
            span=data.get("span"),
        ).with_id("VocExampleGen")
    return CocoExampleGen(
        input_base=data["data_root"],
        annotations=coco_annotations(config),
        image_dir=data.get("images") or "images",
        hash_split=ingest["hash_split"],
        max_bad_fraction=ingest["max_bad_fraction"],
        span=data.get("span"),
    ).with_id("CocoExampleGen")


def gate_threshold(lower_bound: float | None, max_drop: float | None) -> tfma.MetricThreshold | None:
    """A higher-is-better gate: an absolute floor and/or the largest drop allowed against the
    baseline model (a run without a baseline is judged on the floor alone); None without either."""
    if lower_bound is None and max_drop is None:
        return None
    threshold = tfma.MetricThreshold()
    if lower_bound is not None:
        threshold.value_threshold.lower_bound.value = float(lower_bound)
    if max_drop is not None:
        threshold.change_threshold.direction = tfma.MetricDirection.HIGHER_IS_BETTER
        threshold.change_threshold.absolute.value = -float(max_drop)
    return threshold


def per_class_keys(config: dict, label_map: dict) -> list[str]:
    """The metric keys the per-class gate applies to: `iou/<class>` (semantic, background
    included), `box_ap/<category>` and `mask_ap/<category>` (instance)."""
    from trainer_module.metrics import coco_tfma, segmentation

    if config["task"] == "semantic":
        return [segmentation.PER_CLASS_PREFIX + n for n in contract.semantic_class_names(label_map)]
    names = [c["name"] for c in label_map["classes"]]
    return [coco_tfma.category_key_name(t, n) for t in ("bbox", "segm") for n in names]


def eval_config(config: dict, label_map: dict) -> tfma.EvalConfig:
    """TFMA config: the task's metrics, gated by the `evaluator:` config (an absolute floor and the
    change allowed against the baseline), for the mean metrics and, when `per_class_lower_bound` /
    `per_class_max_drop` are set, for every class (thresholds.KeyGate binds them to the keys)."""
    from trainer_module.metrics import coco_tfma, segmentation, thresholds

    gate = config["evaluator"]
    per_class = gate_threshold(gate.get("per_class_lower_bound"), gate.get("per_class_max_drop"))
    every_class = per_class is not None
    if config["task"] == "semantic":
        metrics = [segmentation.metric_config(
            num_classes=contract.semantic_num_classes(label_map),
            class_names=contract.semantic_class_names(label_map),
            threshold=gate_threshold(gate["mean_iou_lower_bound"], gate["mean_iou_max_drop"]),
            **({"every_class": True} if every_class else {}))]
        prediction_key = segmentation.DEFAULT_PREDICTION_KEY
    else:
        metrics = [
            coco_tfma.metric_config(label_map, "bbox",
                                    gate_threshold(gate["box_ap_lower_bound"], gate["box_ap_max_drop"]),
                                    every_class=every_class),
            coco_tfma.metric_config(label_map, "segm",
                                    gate_threshold(gate["mask_ap_lower_bound"], gate["mask_ap_max_drop"]),
                                    every_class=every_class),
        ]
        prediction_key = ""  # all detection outputs, as a dict
    metrics += thresholds.metric_configs(per_class_keys(config, label_map), per_class)
    return tfma.EvalConfig(
        model_specs=[tfma.ModelSpec(signature_name="serving_default", prediction_key=prediction_key)],
        slicing_specs=[tfma.SlicingSpec()],
        metrics_specs=[tfma.MetricsSpec(metrics=metrics)],
    )


def tflite_options(config: dict, label_map: dict) -> dict | None:
    """The TFLiteExport component's options, None when `tflite.variants` is empty (no component)."""
    from trainer_module import on_device

    settings = config["tflite"]
    variants = list(settings.get("variants") or [])
    unknown = sorted(set(variants) - set(on_device.VARIANTS))
    if unknown:
        raise InputError(f"tflite.variants: unknown {unknown}; choose from {list(on_device.VARIANTS)}")
    if not variants:
        return None
    bounds = dict(on_device.DEFAULT_MAX_DROP[config["task"]])
    given = settings.get("max_quantization_drop")
    if isinstance(given, dict):
        extra = sorted(set(given) - set(bounds))
        if extra:
            raise InputError(f"tflite.max_quantization_drop: unknown metrics {extra}; gated: {sorted(bounds)}")
        bounds.update({k: float(v) for k, v in given.items()})
    elif given is not None:
        bounds = {k: float(given) for k in bounds}
    return {"task": config["task"], "label_map": label_map, "variants": variants,
            "max_quantization_drop": bounds,
            "representative_examples": int(settings.get("representative_examples") or 100)}


def custom_config(config: dict, label_map: dict) -> dict:
    """What Transform's preprocessing_fn and Trainer's run_fn receive."""
    hparams = {k: v for k, v in config["trainer"].items() if k not in PIPELINE_TRAINER_KEYS}
    return {"task": config["task"], "label_map": label_map, **hparams}


def create_pipeline(
    config: dict,
    pipeline_root: str,
    *,
    metadata_connection_config=None,
    beam_pipeline_args: list[str] | None = None,
    trainer_component=None,
    trainer_extra_config: dict | None = None,
    pusher_component=None,
    pusher_kwargs: dict | None = None,
) -> tfx.dsl.Pipeline:
    """Builds the DAG. Runners choose where the Trainer and Pusher execute (local or Vertex)."""
    if not config["data"].get("data_root"):
        raise InputError("config data.data_root is not set")
    task = config["task"]
    label_map = dataset_label_map(config)
    shared_config = custom_config(config, label_map)

    example_gen = _example_gen(config)
    statistics_gen = tfx.components.StatisticsGen(examples=example_gen.outputs["examples"])
    schema_gen = tfx.components.ImportSchemaGen(
        schema_file=paths.join(config["schema_dir"], f"{task}.pbtxt"))
    example_validator = tfx.components.ExampleValidator(
        statistics=statistics_gen.outputs["statistics"], schema=schema_gen.outputs["schema"])
    gate = data_gate.make(example_validator.outputs["anomalies"], config.get("data_gate") or "strict")
    train_spans = int(config["data"].get("train_spans") or 1)
    if train_spans < 1:
        raise InputError(f"data.train_spans must be >= 1, got {train_spans}")
    span_resolver = None
    train_examples = example_gen.outputs["examples"]  # one span: the one just ingested
    if train_spans > 1:
        # The newest `train_spans` spans this pipeline has ingested, this run's included.
        from tfx.proto import range_config_pb2

        span_resolver = tfx.dsl.Resolver(
            strategy_class=tfx.dsl.experimental.SpanRangeStrategy,
            config={"range_config": range_config_pb2.RangeConfig(
                rolling_range=range_config_pb2.RollingRange(num_spans=train_spans))},
            examples=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Examples,
                                     producer_component_id=example_gen.id, output_key="examples"),
        ).with_id(SPAN_RESOLVER_ID)
        span_resolver.add_upstream_node(example_gen)
        train_examples = span_resolver.outputs["examples"]
    transform = tfx.components.Transform(
        examples=train_examples,
        schema=schema_gen.outputs["schema"],
        preprocessing_fn=PREPROCESSING_FN,
        custom_config=shared_config,
        # Image features make TFDV statistics of transformed data slow and useless.
        disable_statistics=True,
    )
    transform.add_upstream_node(gate)  # nothing trains on examples that break the schema
    model_resolver = tfx.dsl.Resolver(
        strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
        model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
        model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
    ).with_id(MODEL_RESOLVER_ID)
    # Warm start: the Trainer starts from the model the Evaluator will compare against.
    warm_start = bool(config["trainer"].get("warm_start"))
    trainer_cls = trainer_component or tfx.components.Trainer
    trainer = trainer_cls(
        run_fn=RUN_FN,
        examples=transform.outputs["transformed_examples"],
        transform_graph=transform.outputs["transform_graph"],
        schema=schema_gen.outputs["schema"],
        train_args=tfx.proto.TrainArgs(num_steps=int(config["trainer"]["train_steps"])),
        eval_args=tfx.proto.EvalArgs(splits=[EVAL_SPLIT], num_steps=int(config["trainer"]["eval_steps"])),
        custom_config={**shared_config, **(trainer_extra_config or {})},
        **({"base_model": model_resolver.outputs["model"]} if warm_start else {}),
    )
    evaluator = tfx.components.Evaluator(
        examples=example_gen.outputs["examples"],
        model=trainer.outputs["model"],
        baseline_model=model_resolver.outputs["model"],
        example_splits=[EVAL_SPLIT],
        eval_config=eval_config(config, label_map),
    )
    # On-device variants: the Pusher then pushes the SavedModel with the blessed .tflite files.
    tflite = None
    export_options = tflite_options(config, label_map)
    served_model = trainer.outputs["model"]
    if export_options:
        tflite = TFLiteExportComponent(
            export_fn=EXPORT_FN, eval_split=EVAL_SPLIT, options=export_options,
            model=trainer.outputs["model"], transformed_examples=transform.outputs["transformed_examples"],
            examples=example_gen.outputs["examples"],
        ).with_id("TFLiteExport")
        tflite.add_upstream_node(evaluator)  # converts what was just evaluated, then the Pusher
        served_model = tflite.outputs["serving_model"]
    # The run report (components/run_report.py): one HTML page in the RunReport artifact.
    run_report = RunReportComponent(
        report_fn=REPORT_FN,
        options={"task": task, "pipeline_name": config["pipeline_name"], "eval_split": EVAL_SPLIT,
                 "label_map": label_map},
        examples=example_gen.outputs["examples"],
        statistics=statistics_gen.outputs["statistics"],
        anomalies=example_validator.outputs["anomalies"],
        model=trainer.outputs["model"],
        model_run=trainer.outputs["model_run"],
        evaluation=evaluator.outputs["evaluation"],
        blessing=evaluator.outputs["blessing"],
        baseline_model=model_resolver.outputs["model"],
        tflite_evaluation=tflite.outputs["evaluation"] if tflite else None,
    ).with_id("RunReport")
    pusher_cls = pusher_component or tfx.components.Pusher
    pusher = pusher_cls(
        model=served_model,
        model_blessing=evaluator.outputs["blessing"],
        **(pusher_kwargs or {}),
    )
    return tfx.dsl.Pipeline(
        pipeline_name=config["pipeline_name"],
        pipeline_root=pipeline_root,
        components=[example_gen, statistics_gen, schema_gen, example_validator, gate,
                    *([span_resolver] if span_resolver else []), transform,
                    model_resolver, trainer, evaluator, *([tflite] if tflite else []), pusher, run_report],
        enable_cache=bool(config.get("enable_cache")),
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=beam_pipeline_args or [],
    )
