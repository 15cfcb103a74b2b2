"""What a training step costs: FLOPs counted from a graph, and a TensorFlow-profiler trace of a few
steps read back and summarised (for `segpipe bench train`, see trainer_module.bench).

FLOPs: `count_flops(concrete_function)` sums, over the ops of the function's graph, TensorFlow's
registered "flops" statistics (the same registry `tf.compat.v1.profiler`'s `float_operation()`
view reads): Conv2D, DepthwiseConv2dNative, MatMul, BatchMatMul, Conv2DBackpropInput (transposed
convs), pooling and element-wise arithmetic, a multiply-add counted as 2 FLOPs; plus Einsum, which
TensorFlow does not register (2 x the product of all index sizes). Not counted: ops without a
registered statistic (FusedBatchNorm, activations, resizes, gathers) and ops inside while-loop
bodies (e.g. NMS); convolutions and matmuls are nearly all of it.

Profile: `profile_steps` runs steps under `tf.profiler.experimental` (host tracer level 2: every
TF op the executors run is an event) into `<dir>/plugins/profile/<run>/<host>.xplane.pb`, the
layout TensorBoard's profile plugin reads; `summarize_trace` reads that file back (no TensorBoard
plugin needed). Its numbers, per profiled step (mean over the profiled steps):

- `step_ms`: wall time of one step (the step marker around one synchronous call: dispatch, run,
  result fetched).
- `tf_ops_ms`: wall time during which at least one TF op was executing on an executor thread
  (the compute); `host_ms` = step_ms - tf_ops_ms: nothing but the host side ran (Python,
  tf.function dispatch, executor scheduling between ops, fetching the result).
- `input_ms`: time in input-pipeline ops (IteratorGetNext...): 0 for the bench, which feeds one
  fixed in-memory batch.
- `between_steps_ms`: the gap from one step's end to the next one's start (the Python loop).
- per op (`top_ops`, by name) and per op type (`top_op_types`; oneDNN's `_MklNative`/`_Mkl`
  prefixes removed): `ms` is the op's self time (its nested ops excluded) as wall time, an
  interval in which k ops run at once on different executor threads counting 1/k for each, so
  the `ms` of all ops add up to `tf_ops_ms` and their `pct_of_step` to at most 100;
  `thread_ms` is the plain self time summed over threads (can add up to more than the step when
  ops overlap). `phases` splits the ops' `ms` into forward (incl. the loss), backward (the
  tape's gradient ops) and the optimizer's update.

On GPU/TPU the trace also holds device planes (kernels); this summary covers the host's TF-op
execution only: open the trace in TensorBoard's profile plugin for the device side.
"""
from __future__ import annotations

import bisect
import glob
import json
import os
import re
from collections import defaultdict
from typing import Callable

import tensorflow as tf

STEP_MARKER = "train_step"
PROFILE_SUMMARY = "profile_summary.json"
INPUT_OP_TYPES = {"IteratorGetNext", "IteratorGetNextSync", "IteratorGetNextAsOptional",
                  "MultiDeviceIteratorGetNextFromShard"}
_MKL_PREFIX = re.compile(r"^_Mkl(Native)?")
_CALL_PREFIX = re.compile(r"^((Stateful)?PartitionedCall(_\d+)?/)+")


# ----------------------------------------------------------------------------------------------
# FLOPs


def _einsum_flops(op) -> int:
    """2 x the product of the sizes of every index of a two-operand einsum (one multiply and one
    add per term); 0 when a shape is unknown."""
    equation = op.get_attr("equation").decode().replace(" ", "")
    inputs = equation.split("->")[0].split(",")
    if len(inputs) != 2 or "." in equation:
        return 0
    sizes = {}
    for spec, tensor in zip(inputs, op.inputs):
        shape = tensor.shape
        if not shape.is_fully_defined() or len(spec) != shape.rank:
            return 0
        sizes.update(zip(spec, shape.as_list()))
    total = 2
    for size in sizes.values():
        total *= size
    return total


def count_flops(concrete_function) -> dict:
    """FLOPs of one run of `concrete_function`'s graph: {"total", "by_op" (op name -> FLOPs),
    "by_type" (op type -> FLOPs), "uncounted" (ops with a registered statistic whose shapes were not
    static)}. See the module docstring for what is counted."""
    from tensorflow.python.framework import ops as ops_lib

    graph = concrete_function.graph
    by_op, by_type, uncounted = {}, defaultdict(int), 0
    for op in graph.get_operations():
        if op.type == "Einsum":
            flops = _einsum_flops(op)
        else:
            try:
                flops = ops_lib.get_stats_for_node_def(graph, op.node_def, "flops").value or 0
            except ValueError:  # a shape not fully defined
                flops, uncounted = 0, uncounted + 1
        if flops:
            by_op[op.name] = int(flops)
            by_type[op.type] += int(flops)
    return {"total": sum(by_op.values()), "by_op": by_op, "by_type": dict(by_type), "uncounted": uncounted}


# ----------------------------------------------------------------------------------------------
# Profiling


def profile_steps(run_step: Callable, steps: int, logdir: str) -> str:
    """Runs `run_step` `steps` times under the TF profiler, each call inside a step marker; returns
    the path of the trace it wrote (`logdir/plugins/profile/<run>/<host>.xplane.pb`)."""
    pattern = os.path.join(logdir, "plugins", "profile", "*", "*.xplane.pb")
    before = set(glob.glob(pattern))
    options = tf.profiler.experimental.ProfilerOptions(host_tracer_level=2, python_tracer_level=0,
                                                       device_tracer_level=1)
    tf.profiler.experimental.start(logdir, options=options)
    try:
        for i in range(steps):
            with tf.profiler.experimental.Trace(STEP_MARKER, step_num=i, _r=1):
                run_step()
    finally:
        tf.profiler.experimental.stop()
    written = sorted(set(glob.glob(pattern)) - before, key=os.path.getmtime)
    if not written:
        raise RuntimeError(f"the TF profiler wrote no trace under {logdir}")
    return written[-1]


def _op_of(plane, event):
    """(op name, op type) of a TF-op event ("name:type"), else None."""
    md = plane.event_metadata[event.metadata_id]
    op_type = md.display_name
    if not op_type or not md.name.endswith(":" + op_type):
        return None
    return _CALL_PREFIX.sub("", md.name[: -len(op_type) - 1]), op_type


def _self_segments(events: list) -> list:
    """Events (start, end, key) of one thread, possibly nested -> the pieces of time in which each
    is the innermost one: [(start, end, key)]."""
    events.sort(key=lambda e: (e[0], -e[1]))
    out, stack = [], []  # stack entries: [start, end, key, cursor]

    def pop():
        _, end, key, cursor = stack.pop()
        if cursor < end:
            out.append((cursor, end, key))
        if stack:
            stack[-1][3] = max(stack[-1][3], end)

    for start, end, key in events:
        while stack and stack[-1][1] <= start:
            pop()
        if stack:
            parent = stack[-1]
            if parent[3] < start:
                out.append((parent[3], start, parent[2]))
            end = min(end, parent[1])
            parent[3] = max(parent[3], end)
        stack.append([start, end, key, start])
    while stack:
        pop()
    return out


def _clip(segments: list, windows: list) -> list:
    """The parts of `segments` (start, end, key) inside the sorted, disjoint `windows` (start, end)."""
    starts = [w[0] for w in windows]
    out = []
    for start, end, key in segments:
        i = max(bisect.bisect_right(starts, start) - 1, 0)
        while i < len(windows) and windows[i][0] < end:
            s, e = max(start, windows[i][0]), min(end, windows[i][1])
            if s < e:
                out.append((s, e, key))
            i += 1
    return out


def _attribute_wall_time(segments: list) -> tuple[dict, int]:
    """Wall time per key when overlapping segments share each instant equally; and the union."""
    points = sorted([(s, 1, k) for s, _, k in segments] + [(e, -1, k) for _, e, k in segments],
                    key=lambda p: (p[0], p[1]))
    wall, active, busy, last = defaultdict(float), defaultdict(int), 0, None
    n_active = 0
    for t, delta, key in points:
        if last is not None and n_active and t > last:
            share = (t - last) / n_active
            for k, count in active.items():
                wall[k] += share * count
            busy += t - last
        last = t
        active[key] += delta
        n_active += delta
        if not active[key]:
            del active[key]
    return wall, busy


def _phase(op_name: str, optimizer_name: str | None) -> str:
    if "gradient_tape/" in op_name:
        return "backward"
    if optimizer_name and (op_name.startswith(optimizer_name + "/") or f"/{optimizer_name}/" in op_name):
        return "optimizer"
    return "forward"


def _base_type(op_type: str) -> str:
    return _MKL_PREFIX.sub("", op_type) or op_type


def summarize_trace(xplane_path: str, top: int = 15, optimizer_name: str | None = None) -> dict:
    """The summary of a `profile_steps` trace described in the module docstring."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    with open(xplane_path, "rb") as f:
        space.ParseFromString(f.read())
    host = next((p for p in space.planes if p.name == "/host:CPU"), None)
    if host is None:
        raise RuntimeError(f"no /host:CPU plane in {xplane_path}")
    windows, per_thread, starts = [], [], []
    for line in host.lines:
        base = line.timestamp_ns * 1000  # picoseconds
        ops = []
        for event in line.events:
            start, end = base + event.offset_ps, base + event.offset_ps + event.duration_ps
            if host.event_metadata[event.metadata_id].name == STEP_MARKER:
                windows.append((start, end))
                continue
            op = _op_of(host, event)
            if op is not None:
                ops.append((start, end, op))
        if ops:
            starts.extend((s, s + 1, k) for s, _, k in ops)
            per_thread.append(_self_segments(ops))
    if not windows:
        raise RuntimeError(f"no '{STEP_MARKER}' step markers in {xplane_path}")
    windows.sort()
    n = len(windows)
    segments = [seg for thread in per_thread for seg in _clip(thread, windows)]
    wall, busy = _attribute_wall_time(segments)
    thread_time, counts = defaultdict(float), defaultdict(int)
    for start, end, key in segments:
        thread_time[key] += end - start
    for _, _, key in _clip(starts, windows):
        counts[key] += 1
    step_ps = sum(e - s for s, e in windows) / n
    ms = 1e-9 / n  # picoseconds summed over n steps -> milliseconds per step

    def entry(total_wall, total_thread, count):
        return {"ms": round(total_wall * ms, 3), "pct_of_step": round(100 * total_wall / n / step_ps, 2),
                "thread_ms": round(total_thread * ms, 3), "count": round(count / n, 1)}

    by_type, phases = defaultdict(lambda: [0.0, 0.0, 0]), defaultdict(float)
    input_time = 0.0
    for key, w in wall.items():
        name, op_type = key
        agg = by_type[_base_type(op_type)]
        agg[0] += w
        agg[1] += thread_time[key]
        agg[2] += counts[key]
        phases[_phase(name, optimizer_name)] += w
        if _base_type(op_type) in INPUT_OP_TYPES:
            input_time += w
    top_ops = sorted(wall, key=wall.get, reverse=True)[:top]
    top_types = sorted(by_type, key=lambda t: by_type[t][0], reverse=True)[:top]
    gaps = [b[0] - a[1] for a, b in zip(windows, windows[1:])]
    return {
        "steps": n,
        "trace": xplane_path,
        "step_ms": round(step_ps * 1e-9, 3),
        "tf_ops_ms": round(busy * ms, 3),
        "tf_ops_pct": round(100 * busy / n / step_ps, 2),
        "host_ms": round((step_ps - busy / n) * 1e-9, 3),
        "host_pct": round(100 - 100 * busy / n / step_ps, 2),
        "input_ms": round(input_time * ms, 3),
        "between_steps_ms": round(sum(gaps) / len(gaps) * 1e-9, 3) if gaps else None,
        "op_thread_ms": round(sum(thread_time.values()) * ms, 3),
        "executor_threads": len(per_thread),
        "ops_per_step": round(sum(counts.values()) / n, 1),
        "phases": {p: {"ms": round(w * ms, 3), "pct_of_step": round(100 * w / n / step_ps, 2)}
                   for p, w in sorted(phases.items())},
        "top_op_types": [{"op_type": t, **entry(*by_type[t])} for t in top_types],
        "top_ops": [{"op": k[0], "op_type": k[1], **entry(wall[k], thread_time[k], counts[k])} for k in top_ops],
        "device_planes": [p.name for p in space.planes if p.name.startswith("/device:")],
    }


def profile_and_summarize(run_step: Callable, steps: int, logdir: str, top: int = 15,
                          optimizer_name: str | None = None) -> dict:
    """`profile_steps` then `summarize_trace`; also writes the summary as logdir/profile_summary.json."""
    trace = profile_steps(run_step, steps, logdir)
    summary = summarize_trace(trace, top, optimizer_name)
    with open(os.path.join(logdir, PROFILE_SUMMARY), "w") as f:
        json.dump(summary, f, indent=1)
    return summary
