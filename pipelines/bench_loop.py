"""`segpipe bench loop`: is a real run's training loop as fast as its bare step? The inputs of the
newest Trainer execution in a workdir's MLMD (its custom_config, Transform's graph and transformed
train examples) go to `trainer_module.bench.loop_vs_step`."""
from __future__ import annotations

import json
import os

from components import paths
from components.errors import InputError


def trainer_fn_args(workdir: str):
    """FnArgs like those the newest Trainer execution in `workdir` (a `segpipe run` workdir) got."""
    from tfx.components.trainer.fn_args_utils import FnArgs

    from pipelines.run_results import _artifacts, _store, _trainer_execution

    metadata = os.path.join(workdir, "metadata.sqlite")
    if not os.path.isfile(metadata):
        raise InputError(f"{metadata}: not found; give the --workdir of a finished `segpipe run`")
    store = _store(metadata)
    execution = _trainer_execution(store, since=0)
    examples = _artifacts(store, execution, "examples")
    graph = _artifacts(store, execution, "transform_graph")
    if execution is None or not examples or not graph:
        raise InputError(f"{workdir}: no Trainer execution on transformed examples in its metadata")
    train_args = json.loads(execution.custom_properties["train_args"].string_value)
    return FnArgs(custom_config=json.loads(execution.custom_properties["custom_config"].string_value),
                  train_files=[paths.join(paths.join(examples[0].uri, "Split-train"), "*")],
                  transform_output=graph[0].uri, train_steps=int(train_args.get("num_steps") or 0))


def benchmark(workdir: str, steps: int, rounds: int) -> dict:
    from trainer_module.bench import loop_vs_step

    fn_args = trainer_fn_args(workdir)
    return {"workdir": os.path.abspath(workdir), **loop_vs_step(fn_args, steps, rounds)}
