"""Instance hyper-parameters: TRAINING_DEFAULTS (trainer_module.training) with this task's values, the
Mask R-CNN model keys (MODEL_DEFAULTS of trainer_module.models.mask_rcnn.model, here with lighter
values for CPU runs) and the Transform settings. The pipeline's custom_config is merged over them by
`hparams_from_config`."""
from __future__ import annotations

from components.errors import InputError
from trainer_module.models.mask_rcnn.model import MODEL_DEFAULTS, check_image_size
from trainer_module.training import TRAINING_DEFAULTS, merge_hparams

DEFAULTS = {
    **TRAINING_DEFAULTS,
    **MODEL_DEFAULTS,
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
    # The mask head's four 3x3 convs run on every foreground RoI: at 128 channels they took ~45% of the
    # training step (bench profile, 192 px, batch 4); at 64 the step is 380 ms instead of 600.
    "mask_head_channels": 64,
    # Anchors 16 px at P2 .. 256 px at P6: fits the ~160 px sample images (the paper's 8 suits COCO).
    "anchor_scale": 4.0,
    # Momentum of the backbone's BatchNorm statistics (FPN and heads have none): fast-moving for short
    # CPU runs (0.999 left AP at 0.02 after 600 steps).
    "bn_momentum": 0.9,
    "rpn_pre_nms_top_k_train": 1000,
    "rpn_post_nms_top_k_train": 300,
    "rpn_pre_nms_top_k_test": 500,
    "rpn_post_nms_top_k_test": 200,
    "roi_samples_per_image": 128,
    "flip": True,
    # Training recipe (keys explained in trainer_module.training.TRAINING_DEFAULTS): SGD with momentum,
    # linear warm-up then x0.1 steps at the given fractions of train_steps (the Mask R-CNN recipe).
    "batch_size": 4,
    "optimizer": "sgd",
    "learning_rate": 0.04,
    "momentum": 0.9,
    "warmup_steps": 100,
    "lr_schedule": "step",
    "decay_at": [0.75, 0.92],
    # Covers every conv and dense kernel (depthwise included) of backbone, FPN, RPN and heads, as
    # Model Garden's Mask R-CNN does; not biases or BatchNorm.
    "weight_decay": 4e-5,
    "gradient_clip_norm": 10.0,
}


def hparams_from_config(custom_config: dict | None) -> dict:
    hp = merge_hparams(DEFAULTS, custom_config, "instance")
    if isinstance(hp["image_size"], (list, tuple)):
        # Images keep their aspect ratio on a square canvas (resize_and_pad), as Model Garden's do.
        raise InputError(f"instance models take one image_size, the side of their square canvas; "
                         f"got {list(hp['image_size'])}")
    check_image_size((hp["image_size"], hp["image_size"]))
    if int(hp["image_size"]) % int(hp["mask_stride"]):
        raise InputError("image_size must be divisible by mask_stride")
    return hp


def model_config(hp: dict) -> dict:
    return {k: hp[k] for k in MODEL_DEFAULTS}
