"""Trainer's `run_fn` (referenced by dotted path from the pipeline): dispatches on
custom_config["task"] to the task's own train module, imported only when used."""
from __future__ import annotations

from components.errors import InputError


def run_fn(fn_args) -> None:
    task = (fn_args.custom_config or {}).get("task")
    if task == "semantic":
        from trainer_module.semantic.train import run_fn as semantic_run_fn
        return semantic_run_fn(fn_args)
    if task == "instance":
        from trainer_module.instance.train import run_fn as instance_run_fn
        return instance_run_fn(fn_args)
    raise InputError(f"custom_config['task'] must be 'semantic' or 'instance', got {task!r}")
