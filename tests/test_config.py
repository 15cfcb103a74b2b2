"""Config layers: defaults, then a YAML file, then `--set`; keys the defaults do not have are refused."""
from __future__ import annotations

import pytest
from conftest import REPO

from components.beam_options import DIRECT_RUNNER_ARGS
from components.errors import InputError
from pipelines.config import load_config, parse_set


def test_shipped_config_loads_over_the_defaults():
    config = load_config("semantic", str(REPO / "pipelines" / "configs" / "camvid.yaml"),
                         parse_set(["trainer.train_steps=10", "evaluator.mean_iou_max_drop=0.5"]))
    assert config["trainer"]["image_size"] == [240, 320] and config["trainer"]["train_steps"] == 10
    assert config["evaluator"] == {"mean_iou_lower_bound": 0.30, "mean_iou_max_drop": 0.5,
                                   "per_class_lower_bound": None, "per_class_max_drop": None}
    assert config["beam_args"] == list(DIRECT_RUNNER_ARGS)
    assert config["pipeline_name"] == "segpipe-semantic"


def test_open_values_take_mappings_and_trainer_takes_any_key():
    config = load_config("instance", None, parse_set([
        "data.annotations.train=a.json", "ingest.hash_split.train=3", "trainer.anchor_scale=8",
        "beam_args=[--direct_running_mode=in_memory]"]))
    assert config["data"]["annotations"] == {"train": "a.json"}
    assert config["ingest"]["hash_split"] == {"train": 3}
    assert config["trainer"]["anchor_scale"] == 8
    assert config["beam_args"] == ["--direct_running_mode=in_memory"]


def test_schedule_keys_default_to_todays_behaviour():
    config = load_config("semantic", None, parse_set(["data.train_spans=2", "trainer.warm_start=true",
                                                      "evaluator.per_class_max_drop=0.05"]))
    assert config["data"]["span"] is None and config["data"]["train_spans"] == 2
    assert config["trainer"]["warm_start"] is True and config["data_gate"] == "strict"
    assert config["evaluator"]["per_class_max_drop"] == 0.05
    assert config["evaluator"]["per_class_lower_bound"] is None
    defaults = load_config("instance")
    assert defaults["data"]["train_spans"] == 1 and defaults["trainer"]["warm_start"] is False
    assert defaults["evaluator"]["per_class_lower_bound"] is None


@pytest.mark.parametrize("override,named", [
    (["evaluator.mean_iou_lower_bound=0.5"], "evaluator.mean_iou_lower_bound"),  # a semantic key
    (["vertex.dataflow.workers=3"], "vertex.dataflow.workers"),
    (["pusher=gs://bucket"], "'pusher'"),
    (["enable_cache.always=true"], "enable_cache"),
])
def test_unknown_or_misplaced_keys_are_refused(override, named):
    with pytest.raises(InputError, match="config key") as raised:
        load_config("instance", None, parse_set(override))
    assert named in str(raised.value)


def test_yaml_file_keys_are_checked_and_named(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("trainer:\n  train_steps: 5\nevaluater:\n  box_ap_lower_bound: 0.1\n")
    with pytest.raises(InputError, match="unknown config key 'evaluater'") as raised:
        load_config("instance", str(path))
    assert str(path) in str(raised.value)
