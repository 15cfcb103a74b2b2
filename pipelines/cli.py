"""The `segpipe` command: the argument parser, dispatch to `pipelines/commands.py`, error reporting.

Argument parsing and `--help` import nothing heavy (TensorFlow/TFX take ~14 s to import), so
they answer at once. Each sub-command's handler returns a dict, printed as the last stdout line,
as one JSON object. Progress and logs go to stderr. A user error (bad path, bad config, bad
data) ends in one stderr line, `segpipe COMMAND: error: MESSAGE`, and exit code 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

from components.contract import image_size_of
from components.errors import InputError
from pipelines import commands
from trainer_module.bench import TASK_BY_MODEL


def _image_size(text: str):
    """--image-size: S, or HxW (e.g. 240x320) for a rectangle (semantic models)."""
    try:
        parts = [int(v) for v in text.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected S or HxW in pixels, got {text!r}") from None
    if len(parts) not in (1, 2):
        raise argparse.ArgumentTypeError(f"expected S or HxW in pixels, got {text!r}")
    return image_size_of(parts[0], parts[-1])


# (command, sub-command) -> handler
_HANDLERS = {
    ("sample-data", None): commands.sample_data,
    ("ingest", "coco"): commands.ingest,
    ("ingest", "voc"): commands.ingest,
    ("run", None): commands.run,
    ("compile", None): commands.compile_pipeline,
    ("submit", None): commands.submit,
    ("evaluate-coco", None): commands.evaluate_coco,
    ("predict", None): commands.predict,
    ("bench", "train"): commands.bench_train,
    ("bench", "ingest"): commands.bench_ingest,
    ("bench", "infer"): commands.bench_infer,
    ("bench", "loop"): commands.bench_loop,
}

# Errors that mean the input is wrong, not the code: reported in one line, without a traceback.
_USER_ERRORS = (InputError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)

TASKS = ("semantic", "instance")


def _add_data_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data options (default: generate and use the sample data)")
    g.add_argument("--data-root", help="VOC layout root (semantic) or COCO dataset root (instance)")
    g.add_argument("--annotations", action="append", metavar="[SPLIT=]JSON",
                   help="COCO annotation file, optionally per split (train=a.json --annotations val=b.json)")
    g.add_argument("--images", help="COCO image directory (default: DATA_ROOT/images)")
    g.add_argument("--class-names",
                   help="VOC class_names.txt (default: DATA_ROOT/class_names.txt or the 21 VOC classes)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segpipe",
        description="Image segmentation on TFX: ingest COCO/VOC, train DeepLab v3+ / Mask R-CNN, "
                    "gate with TFMA, push. The last stdout line of every command is a JSON summary.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("sample-data", help="write a small synthetic dataset (VOC layout or COCO layout)")
    p.add_argument("--task", choices=TASKS, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--num-images", type=int, default=None, help="total images (train + val)")
    p.add_argument("--image-size", type=int, default=None, help="side of the square images")
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("ingest", help="Beam ingestion of a dataset into tf.Example TFRecords")
    isub = p.add_subparsers(dest="format", required=True, metavar="FORMAT")
    for fmt in ("coco", "voc"):
        q = isub.add_parser(fmt, help=f"{fmt.upper()} layout")
        if fmt == "coco":
            q.add_argument("--annotations", action="append", required=True, metavar="[SPLIT=]JSON",
                           help="annotation file; one per split as SPLIT=PATH, or one file hash-split by image id")
            q.add_argument("--images", required=True, help="image root that COCO file_name is relative to")
        else:
            q.add_argument("--root", required=True,
                           help="VOC root (JPEGImages/, SegmentationClass/, ...); may hold {SPAN}")
            q.add_argument("--class-names",
                           help="class_names.txt (default: ROOT/class_names.txt, else the 21 VOC classes)")
        q.add_argument("--out", required=True)
        q.add_argument("--span", type=int, default=None,
                       help="with {SPAN} in the paths: ingest this span (default: the newest)")
        q.add_argument("--split", action="append", metavar="NAME=BUCKETS",
                       help="hash split when the source has no splits (default train=4 val=1)")
        q.add_argument("--num-shards", type=int, default=0, help="0 lets Beam choose")
        q.add_argument("--max-bad-fraction", type=float, default=0.05,
                       help="fail when more than this fraction of images is quarantined")
        q.add_argument("--runner", default="DirectRunner")
        q.add_argument("--beam-arg", action="append", default=[], help="extra Beam pipeline option")

    p = sub.add_parser("run", help="run the TFX pipeline locally (LocalDagRunner, Beam DirectRunner)")
    p.add_argument("--task", choices=TASKS, required=True)
    p.add_argument("--workdir", default=None, help="pipeline root, MLMD and serving dir (default ./runs/<task>)")
    p.add_argument("--config", help="YAML overriding the defaults of pipelines/config.py")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config value, e.g. --set trainer.train_steps=100")
    _add_data_options(p)

    p = sub.add_parser("compile", help="compile the same DAG for Kubeflow Pipelines v2 / Vertex AI")
    p.add_argument("--target", choices=("vertex",), default="vertex")
    p.add_argument("--task", choices=TASKS, default="semantic")
    p.add_argument("--out", required=True, help="FILE.json (PipelineJob) or FILE.yaml (KFP IR)")
    p.add_argument("--config", help="YAML overriding the defaults")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")

    p = sub.add_parser("submit", help="create a Vertex AI PipelineJob (or a schedule) from a compiled file")
    p.add_argument("--compiled", required=True)
    p.add_argument("--project", required=True)
    p.add_argument("--region", required=True)
    p.add_argument("--schedule", metavar="CRON", help="create a recurring schedule instead of one job")
    p.add_argument("--display-name")
    p.add_argument("--service-account")
    p.add_argument("--dry-run", action="store_true", help="print the request; needs no credentials")

    p = sub.add_parser("evaluate-coco", help="COCO metrics of a results file against our TFRecords")
    p.add_argument("--examples", required=True, help="directory or glob of TFRecord files")
    p.add_argument("--detections", required=True, help="COCO results JSON")
    p.add_argument("--iou-type", choices=("bbox", "segm"), required=True)

    p = sub.add_parser("predict", help="run an exported model over a folder of images")
    p.add_argument("--model", required=True,
                   help="SavedModel directory (a pushed model version) or one of its .tflite files")
    p.add_argument("--images", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--annotations", help="COCO JSON giving image ids (instance models)")
    p.add_argument("--overlay", action="store_true", help="also write masks blended over each image")

    p = sub.add_parser("bench", help="benchmarks that print numbers")
    bsub = p.add_subparsers(dest="bench", required=True, metavar="WHAT")
    q = bsub.add_parser("train", help="time full training steps on random data after warm-up")
    q.add_argument("--model", required=True,
                   help="deeplabv3plus_mobilenetv2 | deeplabv3plus_resnet50 | lraspp_mobilenetv3_large | "
                        "lraspp_mobilenetv3_small | maskrcnn_resnet50_fpn | maskrcnn_mobilenetv2_fpn")
    q.add_argument("--image-size", type=_image_size, default=512, help="S, or HxW (semantic models)")
    q.add_argument("--batch-size", type=int, default=4)
    q.add_argument("--seconds", type=float, default=60.0)
    q.add_argument("--warmup-steps", type=int, default=2)
    q.add_argument("--mixed-precision", default="auto",
                   help="auto (what training chooses on this machine) | float32 | mixed_bfloat16 | mixed_float16")
    q.add_argument("--profile", metavar="DIR", default=None,
                   help="also profile 3 steps with the TF profiler into DIR (TensorBoard's plugins/profile "
                        "layout) and summarise them in DIR/profile_summary.json and the JSON line")
    q = bsub.add_parser("loop", help="a finished run's training loop (real data, checkpoints) against its "
                                     "step on one fixed batch, alternately, in one process")
    q.add_argument("--workdir", required=True, help="the workdir of a finished `segpipe run`")
    q.add_argument("--steps", type=int, default=100, help="steps per round of each")
    q.add_argument("--rounds", type=int, default=3, help="the median ratio discounts one-off costs (first save)")
    q = bsub.add_parser("infer", help="per-image latency (p50/p90) and images/s of a SavedModel or .tflite")
    q.add_argument("--model", required=True, help="SavedModel directory or .tflite file")
    q.add_argument("--image-size", type=_image_size, default=None,
                   help="S or HxW: the model's own input size (the default); exported models have static shapes")
    q.add_argument("--threads", type=int, default=None, help="default: TensorFlow's / TFLite's own")
    q.add_argument("--seconds", type=float, default=10.0)
    q = bsub.add_parser("ingest", help="ingestion throughput on a COCO set replicated to N images")
    q.add_argument("--annotations", required=True)
    q.add_argument("--images", required=True)
    q.add_argument("--num-images", type=int, default=2000)
    q.add_argument("--workdir", default=None)
    return parser


def _trains_semantic(args) -> bool:
    if args.command == "run":
        return args.task == "semantic"
    return args.command == "bench" and args.bench == "train" and TASK_BY_MODEL.get(args.model) == "semantic"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # tf.keras must be Keras 2 (tf_keras) everywhere: TFX, TFT and TFMA need it. Set before TF loads.
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if _trains_semantic(args):
        # TensorFlow's BFC allocator for host memory (freed blocks kept for reuse): DeepLab v3+ at
        # 512 px trained 1-4% faster with it (7 of 7 alternated pairs), the sample and CamVid models
        # the same, Mask R-CNN 0-2% slower, so semantic runs only. Read once, when TF starts.
        os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")
    # Google client libraries warn at import about Python 3.10 and older pins that TFX 1.16 fixes.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"google\.")
    subcommand = getattr(args, "format", None) or getattr(args, "bench", None)
    try:
        result = _HANDLERS[(args.command, subcommand)](args)
    except _USER_ERRORS as err:
        if isinstance(getattr(err, "summary", None), dict):  # a run that stopped at a gate
            print(json.dumps(err.summary, sort_keys=True, default=str), flush=True)
        command = " ".join(filter(None, (args.command, subcommand)))
        message = " ".join(str(err).splitlines())  # one line, whatever the message holds
        print(f"segpipe {command}: error: {message}", file=sys.stderr)
        return 2
    sys.stdout.flush()
    print(json.dumps(result, sort_keys=True, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
