"""`segpipe bench infer`: per-image latency of an exported model, a SavedModel or a `.tflite` file.

Both formats are timed on the same work: the model on one preprocessed uint8 image (the on-device
input, H x W x 3, batch 1). Decoding the JPEG, resizing it and pasting results back to the
original size are host work around the model and are not counted. A SavedModel runs its
`serving_tflite` signature (the function the TFLite files are converted from) in TensorFlow; a
`.tflite` file runs in the TFLite interpreter with its default XNNPACK delegate (float and int8
operators; an op XNNPACK lacks runs on the builtin kernel, single-threaded). Any other model input
(the instance model's valid image size) is set to the full image. Both formats have static shapes,
so `image_size` only confirms the size: another size is an error.

XNNPACK's threads meet after every operator, so while other processes keep the cores busy a run
with as many threads as cores waits for a preempted thread at each of its 100-200 operators: its
latency then swings by up to 10-40x between runs (p90 far above p50) while a one-thread run stays
steady. Compare models with runs alternated in one session on an otherwise idle machine.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np

from components.contract import image_hw, image_size_of
from components.errors import InputError

WARMUP_RUNS = 3
MIN_RUNS = 5


def _time(run, seconds: float) -> list[float]:
    for _ in range(WARMUP_RUNS):
        run()
    latencies, start = [], time.perf_counter()
    while len(latencies) < MIN_RUNS or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        run()
        latencies.append(time.perf_counter() - t0)
    return latencies


def _feed(shape, dtype, size: tuple[int, int], rng) -> np.ndarray:
    """A random image for the image input, the full (height, width) for any integer size input."""
    if len(shape) == 4:
        return rng.integers(0, 256, size=shape).astype(dtype)
    return np.broadcast_to(np.asarray(size, dtype), shape).copy()


def _tflite_runner(path: Path, image_size: int | None, threads: int | None):
    import tensorflow as tf

    interpreter = tf.lite.Interpreter(model_path=str(path), num_threads=threads)
    inputs = interpreter.get_input_details()
    image = next((d for d in inputs if len(d["shape"]) == 4), None)
    if image is None:
        raise InputError(f"{path}: no image input (inputs: {[d['name'] for d in inputs]})")
    size = (int(image["shape"][1]), int(image["shape"][2]))
    if image_size and image_hw(image_size) != size:  # converted with static shapes: one size per file
        raise InputError(f"{path} takes {size[0]}x{size[1]} images; export a model at {image_size} "
                         f"(trainer.image_size) to time that size")
    interpreter.allocate_tensors()
    rng = np.random.default_rng(0)
    for detail in interpreter.get_input_details():
        interpreter.set_tensor(detail["index"], _feed(detail["shape"], detail["dtype"], size, rng))
    from trainer_module.on_device import read_metadata

    precision = (read_metadata(str(path)) or {}).get("variant") or "unknown"  # float16 | int8
    return interpreter.invoke, size, precision


def _saved_model_runner(path: Path, image_size: int | None):
    import tensorflow as tf

    from trainer_module.on_device import TFLITE_SIGNATURE

    model = tf.saved_model.load(str(path))
    if TFLITE_SIGNATURE not in model.signatures:
        raise InputError(f"{path} has no {TFLITE_SIGNATURE} signature (exported before on-device "
                         f"export existed?); has {sorted(model.signatures)}")
    signature = model.signatures[TFLITE_SIGNATURE]
    specs = signature.structured_input_signature[1]
    image_name = next(n for n, s in specs.items() if s.shape.rank == 4)
    own = tuple(int(d) for d in specs[image_name].shape[1:3])
    if image_size and image_hw(image_size) != own:
        raise InputError(f"{path} takes {own[0]}x{own[1]} images; export a model at {image_size} "
                         f"(trainer.image_size) to time that size")
    rng = np.random.default_rng(0)
    feed = {name: tf.constant(_feed(spec.shape.as_list(), spec.dtype.as_numpy_dtype, own, rng))
            for name, spec in specs.items()}
    return (lambda: signature(**feed)), own, "float32"


def benchmark(model: str, image_size: int | None = None, threads: int | None = None,
              seconds: float = 10.0) -> dict:
    """Latency percentiles and throughput of `model` (a SavedModel directory or a .tflite file)."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    path = Path(model)
    if path.suffix == ".tflite":
        if not path.is_file():
            raise InputError(f"model {path}: no such .tflite file")
        run, size, precision = _tflite_runner(path, image_size, threads)
        fmt, size_bytes = "tflite", path.stat().st_size
    elif (path / "saved_model.pb").is_file():
        import tensorflow as tf

        if threads:
            try:
                tf.config.threading.set_intra_op_parallelism_threads(threads)
                tf.config.threading.set_inter_op_parallelism_threads(1)
            except RuntimeError:  # TensorFlow already running in this process (not from the CLI)
                print("bench infer: TensorFlow is already initialised here; --threads not applied",
                      file=sys.stderr, flush=True)
                threads = None
        run, size, precision = _saved_model_runner(path, image_size)
        fmt = "saved_model"
        size_bytes = sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and f.suffix != ".tflite")
    else:
        raise InputError(f"model {path} is neither a .tflite file nor a SavedModel directory")
    print(f"bench infer: {fmt} ({precision}) at {size[0]}x{size[1]}, {threads or 'default'} threads",
          file=sys.stderr, flush=True)
    latencies = np.array(_time(run, seconds))
    return {"model": str(path), "format": fmt, "precision": precision, "image_size": image_size_of(*size),
            "threads": threads, "runs": int(latencies.size),
            "p50_ms": round(float(np.percentile(latencies, 50)) * 1000, 2),
            "p90_ms": round(float(np.percentile(latencies, 90)) * 1000, 2),
            "img_per_s": round(float(latencies.size / latencies.sum()), 3),
            "size_bytes": int(size_bytes)}
