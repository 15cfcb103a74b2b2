"""On-device export: the trained SavedModel's `serving_tflite` signature converted to TFLite (float16
and full-integer int8 post-training quantization), each converted model evaluated on the eval split
with the metric code the Evaluator uses, and gated on its drop against the SavedModel.

Shared here: conversion (`convert`), the self-describing metadata embedded in every .tflite, the
runtime (`TFLiteModel`, and `load_predictor` for a .tflite or a SavedModel directory), evaluation
(`evaluate_predictor`) and the gate (`gate`). Each task's host-side pieces live in
`trainer_module/<task>/tflite.py` (same function names in both):
  prepare(encoded, image_size)            -> (signature inputs, per-image context)
  finish(outputs, contexts)               -> the `serving_images` outputs of the batch
  representative_inputs(files, image_size, count) -> signature inputs from transformed examples
  evaluate(predictor, eval_files, label_map, max_examples, batch_size) -> metrics
  BATCH_SIZE                              images per predict_images call when evaluating
The SavedModel and each .tflite are evaluated by the same task function on the same examples, so a
drop compares like with like.
"""
from __future__ import annotations

import json
import math
import os
import time

import numpy as np

from components.contract import image_size_of

VARIANTS = ("float16", "int8")
TFLITE_SIGNATURE = "serving_tflite"
TFLITE_FILE = {"float16": "model_float16.tflite", "int8": "model_int8.tflite"}
DEFAULT_MAX_DROP = {"semantic": {"mean_iou": 0.015}, "instance": {"box_ap": 0.02, "mask_ap": 0.02}}
METADATA_NAME = "segpipe"  # the flatbuffer metadata entry holding our JSON record
DEFAULT_REPRESENTATIVE_EXAMPLES = 100


def _tf():
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    import tensorflow as tf

    return tf


def task_module(task: str):
    """trainer_module.<task>.tflite (imported when used)."""
    if task == "semantic":
        from trainer_module.semantic import tflite
        return tflite
    if task == "instance":
        from trainer_module.instance import tflite
        return tflite
    from components.errors import InputError
    raise InputError(f"task must be 'semantic' or 'instance', got {task!r}")


def to_uint8(pixels) -> np.ndarray:
    """float pixels in 0..255 -> uint8, rounded to nearest (the one quantisation of the input the
    on-device model adds over the SavedModel, at most half a grey level)."""
    return np.clip(np.rint(np.asarray(pixels, np.float32)), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Conversion


def signature_inputs(saved_model_dir: str, loaded=None) -> dict:
    """{input name: (shape, dtype name)} of the SavedModel's serving_tflite signature (`loaded`: the
    SavedModel already loaded)."""
    loaded = loaded if loaded is not None else _tf().saved_model.load(saved_model_dir)
    if TFLITE_SIGNATURE not in loaded.signatures:
        from components.errors import InputError
        raise InputError(f"{saved_model_dir} has no {TFLITE_SIGNATURE} signature (has: "
                         f"{sorted(loaded.signatures)}); re-export it with this trainer")
    _, kwargs = loaded.signatures[TFLITE_SIGNATURE].structured_input_signature
    return {name: (list(spec.shape), spec.dtype.name) for name, spec in kwargs.items()}


def _converter(saved_model_dir: str):
    return _tf().lite.TFLiteConverter.from_saved_model(saved_model_dir, signature_keys=[TFLITE_SIGNATURE])


def convert(saved_model_dir: str, variant: str, representative=None) -> tuple[bytes, dict]:
    """The serving_tflite signature as a TFLite flatbuffer, and how it was converted:
    {"supported_ops": [...], "attempts": [errors of the attempts before], ...op_report}.

    float16: Optimize.DEFAULT with float16 weights. int8: full-integer post-training quantization
    from `representative` (a callable returning an iterable of signature-input dicts), uint8 image
    in, outputs left float; when not every op has an int8 kernel, retried with float builtins
    allowed (those ops are listed in `float_ops_in_int8`), then, last, with SELECT_TF_OPS (listed
    in `select_tf_ops`). float16 falls back to SELECT_TF_OPS only. int8 HARD_SWISH ops are then
    rewritten as int8 MUL/ADD (`int8_hard_swish_as_mul_add`; counted in "rewritten_ops"). Raises
    the last error."""
    tf = _tf()
    ops = tf.lite.OpsSet
    if variant == "float16":
        plans = [[ops.TFLITE_BUILTINS], [ops.TFLITE_BUILTINS, ops.SELECT_TF_OPS]]
    elif variant == "int8":
        if representative is None:
            raise ValueError("int8 conversion needs a representative dataset")
        plans = [[ops.TFLITE_BUILTINS_INT8], [ops.TFLITE_BUILTINS_INT8, ops.TFLITE_BUILTINS],
                 [ops.TFLITE_BUILTINS_INT8, ops.TFLITE_BUILTINS, ops.SELECT_TF_OPS]]
    else:
        raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")
    errors = []
    for supported in plans:
        converter = _converter(saved_model_dir)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_ops = supported
        if variant == "float16":
            converter.target_spec.supported_types = [tf.float16]
        else:
            converter.representative_dataset = representative
            converter.inference_input_type = tf.uint8
        try:
            flatbuffer = converter.convert()
        except Exception as err:  # noqa: BLE001 - the converter raises many types; try the next plan
            errors.append(f"{'+'.join(o.name for o in supported)}: {_first_line(err)}")
            continue
        rewritten = {}
        if variant == "int8":
            flatbuffer, count = int8_hard_swish_as_mul_add(flatbuffer)
            if count:
                rewritten["HARD_SWISH"] = count
        return flatbuffer, {"supported_ops": [o.name for o in supported], "attempts": errors,
                            "rewritten_ops": rewritten, **op_report(flatbuffer, variant)}
    raise RuntimeError("; ".join(errors))


def int8_hard_swish_as_mul_add(flatbuffer: bytes) -> tuple[bytes, int]:
    """(the model with every int8 HARD_SWISH op replaced by int8 builtins computing the same
    function, how many were replaced).

    y = hard_swish(x) = x * relu6(x + 3) / 6 becomes
      a = MUL(x, 1/6)          a's scale is x's / 6, same zero point: the same integers, no rounding
      r = ADD(x, 3), RELU6     r in [0, 6] at scale 6/255, zero point -128 (0 and 6 exact)
      y = MUL(a, r)            y's tensor unchanged (its quantisation and every consumer)
    Why: XNNPACK, the CPU delegate TFLite applies by default, takes HARD_SWISH in float only (TF
    2.16's delegate checks for a float type), so each int8 HARD_SWISH ran on the
    single-threaded builtin kernel and cut the delegated graph: LR-ASPP MobileNetV3-Large had 20
    HARD_SWISH between 21 XNNPACK partitions, and at 512x512 took 61 ms per image on one thread
    against 35 ms rewritten (about 12M hard-swish elements at ~2.8 ns each on the builtin kernel).
    XNNPACK has int8 ADD and MUL, so the rewritten graph is delegated whole (an ADD whose input
    range is degenerate, under ~0.006, is outside XNNPACK's scale-ratio limits and stays on the
    builtin kernel: the same result). Float models keep HARD_SWISH: XNNPACK runs it as one op."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))

    def builtin(code):
        return max(code.builtinCode, code.deprecatedBuiltinCode)

    ops = schema.BuiltinOperator
    hard_swish = {i for i, c in enumerate(model.operatorCodes) if builtin(c) == ops.HARD_SWISH}
    if not hard_swish:
        return flatbuffer, 0

    def opcode(op_type: int) -> int:
        for i, c in enumerate(model.operatorCodes):
            if builtin(c) == op_type and not c.customCode:
                return i
        code = schema.OperatorCodeT()
        code.builtinCode = op_type
        code.deprecatedBuiltinCode = min(op_type, 127)  # the int8 field, as the converter fills it
        code.version = 2  # ADD and MUL: version 2 is their int8 kernel
        model.operatorCodes.append(code)
        return len(model.operatorCodes) - 1

    def buffer(data: np.ndarray | None = None) -> int:
        entry = schema.BufferT()
        if data is not None:
            entry.data = np.frombuffer(data.tobytes(), np.uint8)
        model.buffers.append(entry)
        return len(model.buffers) - 1

    def tensor(subgraph, name: bytes, shape, scale: float, zero_point: int, data=None) -> int:
        t = schema.TensorT()
        t.name, t.type, t.hasRank = name, schema.TensorType.INT8, True
        t.shape = np.array(shape, np.int32)
        t.buffer = buffer(None if data is None else np.array(data, np.int8))
        q = schema.QuantizationParametersT()
        q.scale, q.zeroPoint, q.quantizedDimension = [float(scale)], [int(zero_point)], 0
        t.quantization = q
        subgraph.tensors.append(t)
        return len(subgraph.tensors) - 1

    def operator(op_type: int, inputs, output: int, activation: int):
        op = schema.OperatorT()
        op.opcodeIndex, op.inputs, op.outputs = opcode(op_type), list(inputs), [output]
        if op_type == ops.ADD:
            op.builtinOptionsType, op.builtinOptions = schema.BuiltinOptions.AddOptions, schema.AddOptionsT()
        else:
            op.builtinOptionsType, op.builtinOptions = schema.BuiltinOptions.MulOptions, schema.MulOptionsT()
        op.builtinOptions.fusedActivationFunction = activation
        return op

    none, relu6 = schema.ActivationFunctionType.NONE, schema.ActivationFunctionType.RELU6
    count = 0
    for subgraph in model.subgraphs:
        constants = {}  # the scalars 3 and 1/6, one tensor each per subgraph (as 127 at zero point -128)
        rewritten = []
        for op in subgraph.operators:
            if op.opcodeIndex not in hard_swish:
                rewritten.append(op)
                continue
            (x,), (y,) = op.inputs, op.outputs
            tx = subgraph.tensors[x]
            qx, qy = tx.quantization, subgraph.tensors[y].quantization
            int8 = tx.type == schema.TensorType.INT8 == subgraph.tensors[y].type
            if not (int8 and qx is not None and qy is not None and len(qx.scale) == 1 and len(qy.scale) == 1):
                rewritten.append(op)  # float (XNNPACK has it) or not per-tensor int8: left as it is
                continue
            if not constants:
                constants["three"] = tensor(subgraph, b"hard_swish/three", [], 3.0 / 255, -128, [127])
                constants["sixth"] = tensor(subgraph, b"hard_swish/one_sixth", [], (1.0 / 6) / 255, -128, [127])
            name = tx.name or b"hard_swish"
            a = tensor(subgraph, name + b"/hard_swish/x_over_6", tx.shape, float(qx.scale[0]) / 6, int(qx.zeroPoint[0]))
            r = tensor(subgraph, name + b"/hard_swish/relu6_x_plus_3", tx.shape, 6.0 / 255, -128)
            rewritten += [operator(ops.MUL, [x, constants["sixth"]], a, none),
                          operator(ops.ADD, [x, constants["three"]], r, relu6),
                          operator(ops.MUL, [a, r], y, none)]
            count += 1
        subgraph.operators = rewritten
    if not count:
        return flatbuffer, 0
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model)), count


def _first_line(err: Exception, limit: int = 600) -> str:
    text = f"{type(err).__name__}: {err}"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    # The converter's message ends with the useful part ("... ops are not supported: ..."), keep both ends.
    summary = " ".join(lines)
    return summary if len(summary) <= limit else summary[: limit // 2] + " ... " + summary[-limit // 2:]


def op_report(flatbuffer: bytes, variant: str) -> dict:
    """{"float_ops_in_int8": sorted op names computing in float in an int8 model (Quantize and
    Dequantize at the edges excluded), "select_tf_ops": sorted TF (Flex) ops, "op_counts": {name: n}}."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
    float_ops, flex, counts = set(), set(), {}
    float_types = {schema.TensorType.FLOAT32, schema.TensorType.FLOAT16}
    for subgraph in model.subgraphs:
        for op in subgraph.operators:
            code = model.operatorCodes[op.opcodeIndex]
            custom = code.customCode.decode() if isinstance(code.customCode, bytes) else code.customCode
            name = custom or flatbuffer_utils.opcode_to_name(model, op.opcodeIndex) or "?"
            counts[name] = counts.get(name, 0) + 1
            if custom and custom.startswith("Flex"):
                flex.add(custom[len("Flex"):])
            if variant == "int8" and name not in ("QUANTIZE", "DEQUANTIZE"):
                tensors = [subgraph.tensors[i] for i in list(op.inputs) + list(op.outputs) if i >= 0]
                if any(t.type in float_types for t in tensors):
                    float_ops.add(name)
    return {"float_ops_in_int8": sorted(float_ops), "select_tf_ops": sorted(flex), "op_counts": counts}


# ---------------------------------------------------------------------------------------------
# Metadata: a JSON record inside the flatbuffer, so a lone .tflite says what it is.


def write_tflite(flatbuffer: bytes, path: str, metadata: dict) -> None:
    """Writes the model with `metadata` (JSON) as the flatbuffer metadata entry METADATA_NAME."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(metadata, sort_keys=True).encode("utf-8"), np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = METADATA_NAME
    entry.buffer = len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if _name(m.name) != METADATA_NAME] + [entry]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(flatbuffer_utils.convert_object_to_bytearray(model))


def _name(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read_metadata(path: str) -> dict | None:
    """The METADATA_NAME JSON record of a .tflite (None when absent); reads lazily, no full parse."""
    from tensorflow.lite.python import schema_py_generated as schema

    with open(path, "rb") as f:
        data = f.read()
    model = schema.Model.GetRootAsModel(data, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if _name(entry.Name()) == METADATA_NAME:
            buffer = model.Buffers(entry.Buffer())
            return json.loads(buffer.DataAsNumpy().tobytes().decode("utf-8"))
    return None


# ---------------------------------------------------------------------------------------------
# Runtime


class TFLiteModel:
    """A converted .tflite with the `serving_images` interface: predict_images(encoded images) ->
    the same keys, dtypes, shapes and meaning as the SavedModel's serving_images outputs."""

    def __init__(self, path: str, num_threads: int | None = None):
        from components.errors import InputError

        metadata = read_metadata(path)
        if not metadata:
            raise InputError(f"{path} has no {METADATA_NAME} metadata: not a model exported by segpipe")
        self.path = path
        self.metadata = metadata
        self.task: str = metadata["task"]
        self.image_size = metadata["image_size"]  # trainer.image_size: S, or [H, W] for a rectangle
        self.label_map: dict | None = metadata.get("label_map")
        self.variant: str | None = metadata.get("variant")
        self._task = task_module(self.task)
        self._interpreter = _tf().lite.Interpreter(model_path=path, num_threads=num_threads)
        self._runner = self._interpreter.get_signature_runner(metadata.get("signature", TFLITE_SIGNATURE))

    def run(self, inputs: dict) -> dict:
        """One call of the signature (batch of one): {input name: array} -> {output name: array}."""
        return self._runner(**inputs)

    def predict_images(self, encoded: list[bytes]) -> dict[str, np.ndarray]:
        outputs, contexts = [], []
        for data in encoded:
            inputs, context = self._task.prepare(data, self.image_size)
            outputs.append(self.run(inputs))
            contexts.append(context)
        return self._task.finish(outputs, contexts)


class SavedModelPredictor:
    """A SavedModel directory behind the same interface (its serving_images signature)."""

    def __init__(self, path: str):
        from components import contract
        from components.errors import InputError

        tf = _tf()
        self.path = path
        self.loaded = tf.saved_model.load(path)
        if "serving_images" not in self.loaded.signatures:
            raise InputError(f"{path} has no serving_images signature (has: {sorted(self.loaded.signatures)})")
        self._signature = self.loaded.signatures["serving_images"]
        asset = os.path.join(path, "assets", contract.LABEL_MAP_FILE)
        self.label_map = None
        if os.path.isfile(asset):
            with open(asset, encoding="utf-8") as f:
                self.label_map = json.load(f)
        outputs = set(self._signature.structured_outputs)
        self.task = (self.label_map or {}).get("task") or ("semantic" if "class_ids" in outputs else "instance")
        self.image_size = None
        if TFLITE_SIGNATURE in self.loaded.signatures:
            _, kwargs = self.loaded.signatures[TFLITE_SIGNATURE].structured_input_signature
            self.image_size = image_size_of(*kwargs["image"].shape[1:3])

    @property
    def output_names(self) -> set:
        return set(self._signature.structured_outputs)

    def predict_images(self, encoded: list[bytes]) -> dict[str, np.ndarray]:
        tf = _tf()
        return {k: v.numpy() for k, v in self._signature(images=tf.constant(list(encoded))).items()}


def load_predictor(path: str, num_threads: int | None = None):
    """A .tflite file (TFLiteModel) or a SavedModel directory (SavedModelPredictor): both have
    predict_images(list[bytes]) -> dict of numpy arrays, .task and .label_map."""
    from components.errors import InputError

    path = str(path)
    if os.path.isfile(path) and path.endswith(".tflite"):
        return TFLiteModel(path, num_threads=num_threads)
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return SavedModelPredictor(path)
    raise InputError(f"model {path} is neither a .tflite file nor a SavedModel directory (no saved_model.pb)")


# ---------------------------------------------------------------------------------------------
# Evaluation and gate


def evaluate_predictor(predictor, eval_files: list[str], task: str, label_map: dict,
                       max_examples: int | None = None) -> dict:
    """The task's metrics of `predictor` over the raw eval examples (see the task's `evaluate`)."""
    module = task_module(task)
    return module.evaluate(predictor, eval_files, label_map, max_examples, module.BATCH_SIZE)


def gate(reference: dict, metrics: dict, bounds: dict) -> tuple[bool, dict, str]:
    """(blessed, drop per gated metric, reason): blessed iff every gated metric's drop (reference
    minus converted) is at most its bound."""
    drops, failures = {}, []
    for name, bound in sorted(bounds.items()):
        ref, value = reference.get(name), metrics.get(name)
        if ref is None or value is None or not math.isfinite(ref) or not math.isfinite(value):
            drops[name] = None
            failures.append(f"{name} is not available (SavedModel {ref}, TFLite {value})")
            continue
        drops[name] = float(ref - value)
        if drops[name] > float(bound):
            failures.append(f"{name} dropped {drops[name]:.4f} ({ref:.4f} -> {value:.4f}), more than the "
                            f"allowed {float(bound):.4f}")
    if failures:
        return False, drops, "not blessed: " + "; ".join(failures)
    shown = ", ".join(f"{k} drop {v:.4f} <= {float(bounds[k]):.4f}" for k, v in drops.items())
    return True, drops, f"blessed: {shown}" if shown else "blessed: no metric gated"


def _json_safe(value):
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def _empty_entry() -> dict:
    return {"file": None, "size_bytes": None, "metrics": {}, "drop": {}, "blessed": False, "reason": "",
            "ops": {"float_ops_in_int8": [], "select_tf_ops": []}, "convert_seconds": None, "eval_seconds": None}


def convert_and_evaluate(job: dict, stage_file: str | None = None) -> dict:
    """One variant: converted, written with its metadata to job["path"], evaluated. Returns its
    entry of export_and_evaluate's "variants" (not yet gated: blessed False, reason set on failure).
    `stage_file` records the stage reached (so a crash of an isolated child can be named)."""
    task, variant = job["task"], job["variant"]
    module = task_module(task)
    entry = _empty_entry()

    def stage(name):
        if stage_file:
            with open(stage_file, "w", encoding="utf-8") as f:
                f.write(name)

    def representative():
        return module.representative_inputs(job["train_files"], job["image_size"], job["representative_examples"])

    t0 = time.time()
    stage("conversion")
    try:
        flatbuffer, how = convert(job["saved_model_dir"], variant, representative if variant == "int8" else None)
    except Exception as err:  # noqa: BLE001 - a failed conversion is a result, not a crash
        entry["convert_seconds"] = round(time.time() - t0, 2)
        entry["reason"] = f"not blessed: conversion failed: {_first_line(err, 2000)}"
        return entry
    entry["convert_seconds"] = round(time.time() - t0, 2)
    entry["ops"] = {"float_ops_in_int8": how["float_ops_in_int8"], "select_tf_ops": how["select_tf_ops"]}
    entry["supported_ops"] = how["supported_ops"]
    if how["rewritten_ops"]:
        entry["rewritten_ops"] = how["rewritten_ops"]
    if how["attempts"]:
        entry["conversion_fallbacks"] = how["attempts"]
    metadata = {"task": task, "image_size": job["image_size"], "label_map": job["label_map"], "variant": variant,
                "signature": TFLITE_SIGNATURE,
                "inputs": {name: {"shape": shape, "dtype": dtype} for name, (shape, dtype) in job["inputs"].items()},
                "outputs": module.TFLITE_OUTPUTS}
    stage("evaluation")
    try:
        write_tflite(flatbuffer, job["path"], metadata)
        entry["file"] = job["path"]
        entry["size_bytes"] = os.path.getsize(job["path"])
        t0 = time.time()
        entry["metrics"] = _json_safe(evaluate_predictor(TFLiteModel(job["path"]), job["eval_files"], task,
                                                         job["label_map"], job["max_eval_examples"]))
        entry["eval_seconds"] = round(time.time() - t0, 2)
    except Exception as err:  # noqa: BLE001
        entry["metrics"] = {}
        entry["reason"] = f"not blessed: evaluation failed: {_first_line(err, 2000)}"
    return entry


def _run_isolated(job: dict) -> dict:
    """convert_and_evaluate in a child process: the converter and the TFLite runtime can abort the
    process (a segmentation fault, e.g. int8 calibration through TF Select ops), which must end as an
    unblessed variant, not as the pipeline's crash."""
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory(prefix="segpipe_tflite_") as tmp:
        job_file, entry_file, stage_file = (os.path.join(tmp, n) for n in ("job.json", "entry.json", "stage"))
        with open(job_file, "w", encoding="utf-8") as f:
            json.dump(job, f)
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([root] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
        t0 = time.time()
        proc = subprocess.run([sys.executable, "-m", "trainer_module.on_device", job_file, entry_file, stage_file],
                              env=env, capture_output=True, text=True)
        if proc.returncode == 0 and os.path.isfile(entry_file):
            with open(entry_file, encoding="utf-8") as f:
                return json.load(f)
        stage = open(stage_file, encoding="utf-8").read() if os.path.isfile(stage_file) else "start-up"
        entry = _empty_entry()
        how = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit status {proc.returncode}"
        tail = " | ".join(line for line in proc.stderr.strip().splitlines()[-3:])
        entry["reason"] = f"not blessed: the {stage} process died ({how}) after {time.time() - t0:.0f}s: {tail[-800:]}"
        if stage == "evaluation" and os.path.isfile(job["path"]):
            entry["file"] = job["path"]
            entry["size_bytes"] = os.path.getsize(job["path"])
        return entry


def export_and_evaluate(saved_model_dir: str, train_files: list[str], eval_files: list[str],
                        out_dir: str, options: dict) -> dict:
    """Converts the SavedModel's serving_tflite signature to every variant, evaluates the SavedModel
    and each .tflite on the eval split and gates each on its drop.

    train_files: Transform's transformed train examples (GZIP) for the representative dataset;
    eval_files: the raw eval examples (GZIP); out_dir: where the .tflite files go (TFLITE_FILE);
    options: {"task", "label_map", "variants" (default VARIANTS), "max_quantization_drop" (metric ->
    bound, default DEFAULT_MAX_DROP[task]), "representative_examples" (default 100),
    "max_eval_examples" (None = all), "isolate" (default True: each variant converted and evaluated
    in a child process, so that a converter or runtime crash only fails that variant)}.
    Returns {"task", "saved_model": metrics, "variants": {name: {"file", "size_bytes", "metrics",
    "drop", "blessed", "reason", "ops": {"float_ops_in_int8", "select_tf_ops"}, "convert_seconds",
    "eval_seconds"}}}; a variant that fails to convert or evaluate is not blessed, with the error as
    its reason."""
    task = options["task"]
    task_module(task)
    label_map = options.get("label_map")
    variants = tuple(options.get("variants") or VARIANTS)
    bounds = dict(options.get("max_quantization_drop") or DEFAULT_MAX_DROP[task])
    count = int(options.get("representative_examples") or DEFAULT_REPRESENTATIVE_EXAMPLES)
    max_eval = options.get("max_eval_examples")

    reference = SavedModelPredictor(saved_model_dir)
    label_map = label_map or reference.label_map
    t0 = time.time()
    saved_metrics = evaluate_predictor(reference, eval_files, task, label_map, max_eval)
    result = {"task": task, "saved_model": saved_metrics, "saved_model_eval_seconds": round(time.time() - t0, 2),
              "max_quantization_drop": bounds, "variants": {}}
    os.makedirs(out_dir, exist_ok=True)
    try:
        inputs = signature_inputs(saved_model_dir, reference.loaded)
        image_size = image_size_of(*inputs["image"][0][1:3])
    except Exception as err:  # noqa: BLE001 - e.g. a SavedModel exported before serving_tflite existed
        for variant in variants:
            result["variants"][variant] = dict(_empty_entry(),
                                               reason=f"not blessed: nothing to convert: {_first_line(err)}")
        return _json_safe(result)

    for variant in variants:
        job = {"saved_model_dir": saved_model_dir, "variant": variant, "task": task,
               "train_files": list(train_files), "eval_files": list(eval_files),
               "path": os.path.join(out_dir, TFLITE_FILE[variant]), "image_size": image_size,
               "representative_examples": count, "label_map": label_map, "max_eval_examples": max_eval,
               "inputs": inputs}
        entry = _run_isolated(job) if options.get("isolate", True) else convert_and_evaluate(job)
        result["variants"][variant] = entry
        if entry["file"] and entry["metrics"]:
            entry["blessed"], entry["drop"], entry["reason"] = gate(saved_metrics, entry["metrics"], bounds)
    return _json_safe(result)


if __name__ == "__main__":  # the isolated child of _run_isolated: job.json entry.json stage
    import sys

    with open(sys.argv[1], encoding="utf-8") as job_f:
        child_job = json.load(job_f)
    child_job["inputs"] = {k: tuple(v) for k, v in child_job["inputs"].items()}
    child_entry = convert_and_evaluate(child_job, sys.argv[3])
    with open(sys.argv[2], "w", encoding="utf-8") as entry_f:
        json.dump(_json_safe(child_entry), entry_f)
