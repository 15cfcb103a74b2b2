"""Distribution strategy and mixed-precision policy from the config (shared by both tasks)."""
from __future__ import annotations

import os

import tensorflow as tf

from components.errors import InputError

_POLICIES = ("float32", "mixed_bfloat16", "mixed_float16")


def cpu_has_native_bfloat16() -> bool:
    """True on x86 CPUs with bfloat16 instructions (AVX512-BF16 or AMX-BF16), where oneDNN runs
    bfloat16 convolutions and matmuls natively. Elsewhere bfloat16 is emulated and slower."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def strategy_and_policy(custom_config: dict | None) -> tuple[tf.distribute.Strategy, str]:
    """TPUStrategy when a TPU is configured (custom_config['tpu'] or env TPU_NAME), MirroredStrategy
    with more than one GPU, the default strategy otherwise; the mixed-precision policy follows the
    device ('auto': mixed_bfloat16 on TPU and on CPUs with native bfloat16, mixed_float16 on GPU,
    float32 elsewhere) unless custom_config['mixed_precision'] names one. A task sets
    custom_config['cpu_bfloat16'] False for a model that trains faster in float32 on such CPUs."""
    custom_config = custom_config or {}
    tpu = custom_config.get("tpu") or os.environ.get("TPU_NAME")
    if tpu:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu="" if tpu == "local" else tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        strategy, device_policy = tf.distribute.TPUStrategy(resolver), "mixed_bfloat16"
    else:
        gpus = tf.config.list_logical_devices("GPU")
        if len(gpus) > 1:
            strategy = tf.distribute.MirroredStrategy()
        else:
            strategy = tf.distribute.get_strategy()
        if gpus:
            device_policy = "mixed_float16"
        else:
            bfloat16 = cpu_has_native_bfloat16() and custom_config.get("cpu_bfloat16", True)
            device_policy = "mixed_bfloat16" if bfloat16 else "float32"
    policy = custom_config.get("mixed_precision", "auto") or "auto"
    if policy == "auto":
        policy = device_policy
    if policy not in _POLICIES:
        raise InputError(f"mixed_precision must be 'auto' or one of {_POLICIES}, got {policy!r}")
    return strategy, policy


def use_jit(custom_config: dict | None, strategy: tf.distribute.Strategy) -> bool:
    """jit_compile: explicit bool, or 'auto' = XLA on TPU/GPU, off on CPU."""
    value = (custom_config or {}).get("jit_compile", "auto")
    if value == "auto":
        return isinstance(strategy, tf.distribute.TPUStrategy) or bool(tf.config.list_logical_devices("GPU"))
    return bool(value)
