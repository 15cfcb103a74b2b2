"""DataGate: the ExampleValidator's anomalies turned into a stop, between ExampleValidator and
Transform (ExampleValidator in TFX 1.16 only reports).

`strict` (default): any anomaly in any split fails this component, so Transform, Trainer,
Evaluator and Pusher never run; the error names every feature and the reason. `warn`: the same
list is logged and the run goes on. `describe(uri, split_names)` reads the anomalies of an
ExampleAnomalies artifact as `[{"split", "feature", "reason"}]`; the run summary uses it too.
"""

import os

from tfx import v1 as tfx

from components.errors import InputError

MODES = ("strict", "warn")
ANOMALIES_FILE = "SchemaDiff.pb"  # what TFX's ExampleValidator writes in each Split-<name>/


class DataGateError(InputError):
    """The examples break the schema (raised inside the DataGate component)."""


def describe(anomalies_uri: str, split_names: list[str]) -> list[dict]:
    """Every anomaly of every split: feature (or "(dataset)") and the reasons, in order."""
    from tensorflow_metadata.proto.v0 import anomalies_pb2
    from tfx.utils import io_utils

    found = []
    for split in split_names:
        path = os.path.join(anomalies_uri, f"Split-{split}", ANOMALIES_FILE)
        if not io_utils.fileio.exists(path):
            continue
        anomalies = anomalies_pb2.Anomalies.FromString(io_utils.read_bytes_file(path))
        infos = sorted(anomalies.anomaly_info.items())
        if anomalies.HasField("dataset_anomaly_info"):
            infos.append(("(dataset)", anomalies.dataset_anomaly_info))
        for feature, info in infos:
            reasons = [r.short_description or r.description for r in info.reason] or [
                info.short_description or info.description]
            found.append({"split": split, "feature": feature, "reason": "; ".join(reasons)})
    return found


def message(failures: list[dict]) -> str:
    """One line: `split/feature: reason` for each anomaly."""
    return "; ".join(f"{f['split']}/{f['feature']}: {f['reason']}" for f in failures)


def _gate(anomalies, mode: str) -> None:
    import logging

    from tfx.types import artifact_utils

    if mode not in MODES:
        raise ValueError(f"data_gate must be one of {MODES}, got {mode!r}")
    split_names = artifact_utils.decode_split_names(anomalies.split_names)
    failures = describe(anomalies.uri, split_names)
    if not failures:
        logging.info("DataGate: no anomalies in splits %s", split_names)
        return
    text = f"the examples break the schema ({len(failures)} anomalies): {message(failures)}"
    if mode == "warn":
        logging.warning("DataGate (warn): %s", text)
        return
    raise DataGateError(f"data gate: {text}")


@tfx.dsl.components.component
def DataGate(
    anomalies: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.ExampleAnomalies],
    mode: tfx.dsl.components.Parameter[str] = "strict",
):
    """Fails on any schema anomaly (mode strict) or logs them (warn)."""
    _gate(anomalies, mode)


def make(anomalies_channel, mode: str = "strict"):
    """The DataGate component on an ExampleValidator's `anomalies` output."""
    if mode not in MODES:
        raise InputError(f"data_gate must be one of {', '.join(MODES)}, got {mode!r}")
    return DataGate(anomalies=anomalies_channel, mode=mode).with_id("DataGate")
