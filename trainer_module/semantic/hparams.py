"""Semantic hyper-parameters: TRAINING_DEFAULTS (trainer_module.training) with this task's values, plus
the model (DeepLab v3+ or LR-ASPP), Transform and augmentation settings. The pipeline's `custom_config` (the same
dict reaches Transform and Trainer) is merged over them by `hparams_from_config`."""
from __future__ import annotations

from components.contract import image_hw
from components.errors import InputError
from trainer_module.training import TRAINING_DEFAULTS, merge_hparams

DEFAULTS = {
    **TRAINING_DEFAULTS,
    # Transform: side of the square image/label the model trains on (images are resized to it;
    # predictions are resized back to each image's original size at serving).
    "image_size": 128,
    # Model: "deeplabv3plus" (DeepLab v3+) or "lraspp" (MobileNetV3's Lite R-ASPP head, the fast one).
    "model": "deeplabv3plus",
    # Backbone: "mobilenetv2" or "resnet50" for deeplabv3plus, "mobilenetv3_large" or
    # "mobilenetv3_small" for lraspp; atrous output stride 16 or 8.
    "backbone": "mobilenetv2",
    "output_stride": 16,
    # MobileNet channel multiplier (1.0 = the standard network; tf_keras.applications' alpha).
    "width_multiplier": 0.5,
    # ASPP / decoder widths (DeepLab v3+: 256 / 256, low-level projection 48).
    "aspp_filters": 128,
    "decoder_filters": 128,
    "low_level_filters": 48,
    # Depthwise-separable 3x3 convs in ASPP and decoder, as the DeepLab v3+ paper builds them: at these
    # sizes (128 px, batch 8) the step takes 108 ms against 238 ms with full 3x3 convs.
    "separable": True,
    # LR-ASPP head width: the 1x1 conv on the OS-16 features and its gate (the paper: 128).
    "lraspp_filters": 128,
    # The training loss is taken on every loss_stride-th row and column: the classifier's logits are
    # upsampled to 1/loss_stride of the image (not to its full size) and the labels taken on the same
    # grid (the pixel nearest each logit). Random scaling and cropping move that grid from step to
    # step, so every pixel counts on average. 1 = every pixel. Upsampling + loss, forward and backward,
    # for 4x128x128x21 logits and 512x512 labels: 58 ms at 1, 17 at 2, 4 at 4 (2 cores). CamVid
    # (configs/camvid.yaml, one run each): 3.09 -> 3.42 steps/s and val mIoU 0.587 -> 0.597 from 1 to 2.
    "loss_stride": 2,
    # Dropout before the (high-level) classifier: DeepLab's ASPP output, LR-ASPP's gated features.
    "dropout": 0.1,
    # Momentum of every BatchNorm's moving statistics: 0.9 lets the inference statistics keep up with
    # a short run (Model Garden's 0.99 suits long runs and fine-tuning).
    "bn_momentum": 0.9,
    # Optional pretrained backbone weights: an HDF5 file saved from tf_keras.applications (loaded by
    # layer name) or a TF checkpoint of this backbone. Never downloaded.
    "backbone_weights": None,
    # Training recipe (keys explained in trainer_module.training.TRAINING_DEFAULTS): SGD, poly decay
    # (power 0.9) to 0 after a linear warm-up (the DeepLab recipe). Batch 16 at learning rate 0.1 rather
    # than 8 at 0.05: at 128 px the step of 16 images runs 1.19x the images/s of two steps of 8 on two
    # CPU cores, and on the sample data 1100 such steps scored val mIoU 0.797-0.822 over four seeds
    # where 2000 steps of 8 scored 0.754-0.837 (trainer eval, 128 px).
    "batch_size": 16,
    "optimizer": "sgd",
    "learning_rate": 0.1,
    "warmup_steps": 50,
    "lr_schedule": "poly",
    "poly_power": 0.9,
    "momentum": 0.9,
    # Covers the kernels of all regular (not depthwise) convolutions, backbone and head, as DeepLab's
    # MobileNet does; 8e-5 here equals Keras' l2(4e-5) regularizer (4e-5 * sum(kernel^2)).
    "weight_decay": 8e-5,
    "gradient_clip_norm": None,
    # Weight the cross-entropy by inverse sqrt class pixel frequency (from the Transform analyzers).
    "class_weighting": True,
    # Augmentation in tf.data: random scale in [min_scale, max_scale], crop/pad back, h-flip.
    "augment": True,
    "min_scale": 0.75,
    "max_scale": 1.5,
    "flip": True,
    # Photometric jitter (brightness, contrast, saturation) of this strength; 0 = off. Real photos
    # meet other light than the training drives had (pipelines/configs/camvid.yaml turns it on).
    "color_jitter": 0.0,
    # Test-time flip: the exported model (every signature, the on-device one too) and the trainer's
    # eval predict the mean logits of the image and its mirror image, as DeepLab's evaluation can.
    # Twice the inference time; on CamVid +0.003 to +0.009 val mIoU in three runs.
    "serving_flip": False,
}


# The backbones each model is built with.
MODEL_BACKBONES = {"deeplabv3plus": ("mobilenetv2", "resnet50"),
                   "lraspp": ("mobilenetv3_large", "mobilenetv3_small")}


def check_model(hp: dict) -> None:
    """A known model with one of its backbones, else an InputError naming what fits."""
    model, backbone = hp["model"], hp["backbone"]
    if model not in MODEL_BACKBONES:
        raise InputError(f"unknown semantic model {model!r}: use {' or '.join(map(repr, MODEL_BACKBONES))}")
    if backbone not in MODEL_BACKBONES[model]:
        raise InputError(f"semantic model {model!r} takes backbone {' or '.join(map(repr, MODEL_BACKBONES[model]))}, "
                         f"got {backbone!r}")


# Models whose training step is faster in float32 than in bfloat16 even on CPUs with native
# bfloat16: LR-ASPP's step is mostly depthwise convolutions, which oneDNN runs slower in bfloat16
# (MobileNetV3-Large, 256 px, batch 8: 18.0 img/s float32, 16.0 bfloat16; `segpipe bench train
# --mixed-precision`). mixed_precision 'auto' keeps float32 for them on CPU (distribute.py).
FLOAT32_ON_CPU = {"lraspp"}


def with_derived(hp: dict) -> dict:
    """`hp` plus the values that follow from the model: cpu_bfloat16 (see FLOAT32_ON_CPU)."""
    return {**hp, "cpu_bfloat16": hp["model"] not in FLOAT32_ON_CPU}


def check_loss_stride(hp: dict) -> None:
    """loss_stride must be a positive integer that divides the image's height and width."""
    stride = hp["loss_stride"]
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1 or any(
            side % stride for side in image_hw(hp["image_size"])):
        raise InputError(f"loss_stride must be a positive integer dividing image_size {hp['image_size']}, "
                         f"got {stride!r}")


def hparams_from_config(custom_config: dict | None) -> dict:
    hp = merge_hparams(DEFAULTS, custom_config, "semantic")
    check_model(hp)
    check_loss_stride(hp)
    return with_derived(hp)
