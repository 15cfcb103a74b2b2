"""Instance-task hyper-parameters. The pipeline's custom_config is merged over INSTANCE_DEFAULTS
(unknown keys are rejected); keys of MODEL_DEFAULTS (trainer_module.models.mask_rcnn.model) may
be given too and reach the model."""
from __future__ import annotations

from components.errors import InputError
from trainer_module.models.mask_rcnn.model import MODEL_DEFAULTS

INSTANCE_DEFAULTS = {
    # Transform: the square training canvas (multiple of 64); images are resized keeping their
    # aspect ratio so the longer side fits, then padded bottom/right.
    "image_size": 192,
    # Ground truth padded/truncated to this many instances per image (crowd regions are dropped:
    # they are neither positives nor negatives here).
    "max_instances": 100,
    # Instance masks are stored at image_size / mask_stride (enough for 28x28 mask targets).
    "mask_stride": 2,
    # Light model for CPU runs; MODEL_DEFAULTS hold the paper's sizes (ResNet-50, 256-ch FPN, ...).
    "backbone": "mobilenetv2",
    "fpn_channels": 128,
    "box_fc_dims": 512,
    "mask_head_channels": 128,
    # Anchors 16 px at P2 .. 256 px at P6: fits the ~160 px sample images (the paper's 8 suits COCO).
    "anchor_scale": 4.0,
    # Fast-moving BatchNorm statistics for short CPU runs (0.999 left AP at 0.02 after 600 steps).
    "backbone_bn_momentum": 0.9,
    "rpn_pre_nms_top_k_train": 1000,
    "rpn_post_nms_top_k_train": 300,
    "rpn_pre_nms_top_k_test": 500,
    "rpn_post_nms_top_k_test": 200,
    "roi_samples_per_image": 128,
    # Global batch (split over replicas), drop_remainder for static shapes.
    "batch_size": 4,
    # SGD momentum; linear warm-up then x0.1 steps at the given fractions of train_steps.
    "learning_rate": 0.04,
    "momentum": 0.9,
    "warmup_steps": 100,
    "decay_at": [0.75, 0.92],
    "weight_decay": 4e-5,
    "gradient_clip_norm": 10.0,
    "flip": True,
    # "auto" or a Keras policy name; see trainer_module.distribute.strategy_and_policy.
    "mixed_precision": "auto",
    "tpu": None,
    "jit_compile": "auto",
    "steps_per_execution": 10,
    "checkpoint_dir": None,
    "checkpoint_every": 100,
    "keep_checkpoints": 2,
    "seed": 0,
}

_PASS_THROUGH = {"task", "label_map"}


def instance_hparams(custom_config: dict | None) -> dict:
    custom_config = dict(custom_config or {})
    hp = dict(MODEL_DEFAULTS)
    hp.update(INSTANCE_DEFAULTS)
    unknown = {k for k in set(custom_config) - set(hp) - _PASS_THROUGH if not k.startswith("ai_platform")}
    if unknown:
        raise InputError(f"unknown instance hyper-parameters: {sorted(unknown)}")
    hp.update(custom_config)
    if int(hp["image_size"]) % 64:
        raise InputError(f"image_size must be a multiple of 64, got {hp['image_size']}")
    if int(hp["image_size"]) % int(hp["mask_stride"]):
        raise InputError("image_size must be divisible by mask_stride")
    return hp


def model_config(hp: dict) -> dict:
    return {k: hp[k] for k in MODEL_DEFAULTS}


def label_ids(label_map: dict | None) -> list[int]:
    """Dataset category ids indexed by label - 1 (labels are 1..N, in the label map)."""
    if not label_map or not label_map.get("classes"):
        raise InputError("custom_config['label_map'] with a non-empty 'classes' list is required")
    by_label = {int(c["label"]): int(c["id"]) for c in label_map["classes"]}
    n = len(by_label)
    if sorted(by_label) != list(range(1, n + 1)):
        raise InputError(f"label map labels must be 1..{n}, got {sorted(by_label)}")
    return [by_label[i] for i in range(1, n + 1)]
