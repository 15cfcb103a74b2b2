"""Transform's `preprocessing_fn` (referenced by dotted path from the pipeline): dispatches on
custom_config["task"] to the task's own preprocessing module, imported only when used."""
from __future__ import annotations

from components.errors import InputError


def preprocessing_fn(inputs, custom_config):
    task = (custom_config or {}).get("task")
    if task == "semantic":
        from trainer_module.semantic.preprocessing import preprocessing_fn as semantic_preprocessing_fn
        return semantic_preprocessing_fn(inputs, custom_config)
    if task == "instance":
        from trainer_module.instance.preprocessing import preprocessing_fn as instance_preprocessing_fn
        return instance_preprocessing_fn(inputs, custom_config)
    raise InputError(f"custom_config['task'] must be 'semantic' or 'instance', got {task!r}")
