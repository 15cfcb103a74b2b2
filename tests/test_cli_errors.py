"""Every `segpipe` command given a bad path, a missing label map or a malformed config exits
non-zero with one line on stderr, `segpipe COMMAND: error: ...`, naming what to fix, and no
traceback. All but the last two cases fail before TensorFlow is imported, in well under a second."""
from __future__ import annotations

import pytest
from conftest import run_segpipe

MISSING = "/nonexistent/segpipe-test"


def _malformed_yaml(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("trainer:\n  train_steps: [1, 2\nevaluator: {\n")
    return path


CASES = {
    "run: malformed YAML config": (
        lambda tmp: ["run", "--task", "semantic", "--config", _malformed_yaml(tmp)],
        "run", "broken.yaml"),
    "run: config file missing": (
        lambda tmp: ["run", "--task", "semantic", "--config", f"{MISSING}/config.yaml"],
        "run", f"{MISSING}/config.yaml"),
    "run: --set without =": (
        lambda tmp: ["run", "--task", "semantic", "--set", "trainer.train_steps"],
        "run", "trainer.train_steps"),
    "run: --set unknown section": (
        lambda tmp: ["run", "--task", "semantic", "--set", "trainr.train_steps=5"],
        "run", "'trainr'"),
    "run: --set unknown key": (
        lambda tmp: ["run", "--task", "semantic", "--set", "evaluator.mean_iou_floor=0.5"],
        "run", "evaluator.mean_iou_floor"),
    "run: --set a value on a section": (
        lambda tmp: ["run", "--task", "instance", "--set", "evaluator=0.5"],
        "run", "'evaluator'"),
    "run: data root missing": (
        lambda tmp: ["run", "--task", "semantic", "--workdir", tmp / "run", "--data-root", MISSING],
        "run", MISSING),
    "ingest coco: annotations missing": (
        lambda tmp: ["ingest", "coco", "--annotations", f"{MISSING}/instances.json", "--images", tmp,
                     "--out", tmp / "out"],
        "ingest coco", f"{MISSING}/instances.json"),
    "ingest voc: root missing": (
        lambda tmp: ["ingest", "voc", "--root", MISSING, "--out", tmp / "out"],
        "ingest voc", MISSING),
    "predict: model missing": (
        lambda tmp: ["predict", "--model", MISSING, "--images", tmp, "--out", tmp / "out"],
        "predict", MISSING),
    "evaluate-coco: no examples": (
        lambda tmp: ["evaluate-coco", "--examples", f"{tmp}/*.tfrecord.gz", "--detections", tmp / "d.json",
                     "--iou-type", "bbox"],
        "evaluate-coco", "*.tfrecord.gz"),
    "compile: remote data without label map": (
        lambda tmp: ["compile", "--target", "vertex", "--task", "semantic", "--out", tmp / "p.json"],
        "compile", "data.label_map: the label_map.json that segpipe ingest writes"),
    "submit: compiled file missing": (
        lambda tmp: ["submit", "--compiled", f"{MISSING}/p.json", "--project", "p", "--region", "r",
                     "--dry-run"],
        "submit", f"{MISSING}/p.json"),
    "bench train: image size neither S nor HxW": (
        lambda tmp: ["bench", "train", "--model", "lraspp_mobilenetv3_large", "--image-size", "240by320"],
        "bench train", "240by320"),
    "compile: label map file missing": (
        lambda tmp: ["compile", "--task", "instance", "--set", f"data.label_map={MISSING}/label_map.json",
                     "--out", tmp / "p.json"],
        "compile", f"data.label_map {MISSING}/label_map.json"),
    # This one fails only after TensorFlow is imported: model names live with the models.
    "bench train: unknown model": (
        lambda tmp: ["bench", "train", "--model", "unet_tiny", "--seconds", "1"],
        "bench train", "unet_tiny"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_user_error_is_one_line_without_traceback(case, tmp_path):
    make_args, command, named = CASES[case]
    proc = run_segpipe(*make_args(tmp_path), timeout=300)
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"segpipe {command}: error: "), proc.stderr[-3000:]
    assert named in last, last
    assert proc.stdout == ""
