"""Hyper-parameter defaults. The pipeline's `custom_config` (the same dict reaches Transform and
Trainer) is merged over these: `semantic_hparams(custom_config)`."""
from __future__ import annotations

from components.errors import InputError

SEMANTIC_DEFAULTS = {
    # Transform: side of the square image/label the model trains on (images are resized to it;
    # predictions are resized back to each image's original size at serving).
    "image_size": 128,
    # Model: "mobilenetv2" or "resnet50"; atrous output stride 16 or 8.
    "backbone": "mobilenetv2",
    "output_stride": 16,
    # MobileNetV2 channel multiplier (1.0 = the standard network).
    "width_multiplier": 0.5,
    # ASPP / decoder widths (DeepLab v3+: 256 / 256, low-level projection 48).
    "aspp_filters": 128,
    "decoder_filters": 128,
    "low_level_filters": 48,
    # Depthwise-separable 3x3 convs in ASPP and decoder (faster variant; the paper's Xception model).
    "separable": False,
    "dropout": 0.1,
    # BatchNorm moving-average momentum: 0.9 lets the inference statistics keep up with a short run
    # (Model Garden's 0.99 suits long runs and fine-tuning).
    "bn_momentum": 0.9,
    # Optional pretrained backbone weights: an HDF5 file saved from tf_keras.applications (loaded by
    # layer name) or a TF checkpoint of this backbone. Never downloaded.
    "backbone_weights": None,
    # Global batch size (split across replicas); drop_remainder keeps shapes static.
    "batch_size": 8,
    # "sgd" (with momentum) or "adam"; poly decay (power 0.9) to 0 after a linear warm-up (the DeepLab recipe).
    "optimizer": "sgd",
    "learning_rate": 0.05,
    "warmup_steps": 50,
    "poly_power": 0.9,
    "momentum": 0.9,
    "weight_decay": 4e-5,
    # Weight the cross-entropy by inverse sqrt class pixel frequency (from the Transform analyzers).
    "class_weighting": True,
    # Augmentation in tf.data: random scale in [min_scale, max_scale], crop/pad back, h-flip.
    "augment": True,
    "min_scale": 0.75,
    "max_scale": 1.5,
    "flip": True,
    # "auto": bfloat16 on TPU, float16 on GPU, float32 on CPU; or "float32"/"mixed_bfloat16"/"mixed_float16".
    "mixed_precision": "auto",
    # TPU name/address (else env TPU_NAME); None and no TPU_NAME = no TPU.
    "tpu": None,
    # Training steps run inside one tf.function call (fewer host round trips, TPU friendly).
    "steps_per_execution": 10,
    # XLA-compile the training step ("auto": on for TPU/GPU, off on CPU where oneDNN kernels win).
    "jit_compile": "auto",
    # Where checkpoints go (None: <model_run_dir>/checkpoints, i.e. per Trainer execution). A
    # restarted trainer resumes from the latest checkpoint found there.
    "checkpoint_dir": None,
    # Checkpoint every N steps (rounded to steps_per_execution) and at the end.
    "checkpoint_every": 100,
    "keep_checkpoints": 2,
    "seed": 0,
}


def semantic_hparams(custom_config: dict | None) -> dict:
    """Defaults overlaid with custom_config. Unknown keys are rejected (typos must not pass silently),
    except the pipeline's own ("task", "label_map") and TFX's Vertex training keys ("ai_platform_*")."""
    custom_config = dict(custom_config or {})
    hp = dict(SEMANTIC_DEFAULTS)
    unknown = {k for k in set(custom_config) - set(hp) - {"task", "label_map"}
               if not k.startswith("ai_platform")}
    if unknown:
        raise InputError(f"unknown semantic hyper-parameters: {sorted(unknown)}")
    hp.update(custom_config)
    return hp


def num_classes_from_label_map(label_map: dict | None) -> int:
    """Semantic labels are pixel values 0..N-1 (0 = background, 255 = ignore)."""
    if not label_map or not label_map.get("classes"):
        raise InputError("custom_config['label_map'] with a non-empty 'classes' list is required")
    ids = [int(c["id"]) for c in label_map["classes"]]
    if min(ids) < 0 or max(ids) >= 255:
        raise InputError(f"semantic class ids must lie in 0..254, got {sorted(ids)}")
    return max(ids) + 1
