"""Instance `run_fn`: train Mask R-CNN on Transform's output (resumable), evaluate, export."""
from __future__ import annotations

import time

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft

from components.contract import instance_category_ids
from components.errors import InputError
from trainer_module.instance.export import export_model
from trainer_module.instance.hparams import hparams_from_config
from trainer_module.instance.input_pipeline import analyzer_values, make_dataset
from trainer_module.instance.model import build_model, make_train_step
from trainer_module.metrics.coco_eval import detections_to_coco
from trainer_module.metrics.coco_eval import evaluate as coco_evaluate
from trainer_module.models.mask_rcnn.mask_ops import paste_masks
from trainer_module.training import TaskTraining, log, save_for_warm_start, set_up_training, train, write_eval_metrics


def _coco_entries(image_id, height: int, width: int, boxes, scores, classes, masks) -> list[dict]:
    """COCO entries of one image on the canvas: boxes in canvas pixels, masks [N, height, width];
    classes are the labels (category id = label)."""
    scale = np.array([height, width, height, width], np.float64)
    return detections_to_coco(image_id, height, width, np.asarray(boxes, np.float64) / scale, scores,
                              classes, masks)


def evaluate(model, eval_files, feature_spec: dict, hp: dict, num_classes: int, steps: int) -> dict:
    """COCO box and mask AP over `steps` eval batches at the training resolution: on the canvas the
    model sees, against the transformed ground truth (masks upsampled from 1/mask_stride)."""
    size, stride = int(hp["image_size"]), int(hp["mask_stride"])
    detect = tf.function(lambda images: model(images, training=False))
    images, annotations, detections = [], [], []
    for batch in make_dataset(eval_files, feature_spec, hp, int(hp["batch_size"]), training=False).take(steps):
        out = detect(batch["image"])
        pasted = paste_masks(out["detection_mask_probs"], out["detection_boxes"], size, size).numpy()
        out = {k: v.numpy() for k, v in out.items()}
        gt = {k: v.numpy() for k, v in batch.items()}
        for i in range(len(gt["image"])):
            image_id = len(images) + 1
            height, width = (int(v) for v in gt["resized_size"][i])
            images.append({"id": image_id, "height": height, "width": width})
            real = gt["classes"][i] > 0
            gt_masks = np.repeat(np.repeat(gt["masks"][i][real], stride, axis=1), stride, axis=2)[:, :height, :width]
            entries = _coco_entries(image_id, height, width, gt["boxes"][i][real], np.ones(real.sum()),
                                    gt["classes"][i][real], gt_masks)
            for entry, mask in zip(entries, gt_masks):
                del entry["score"]
                annotations.append(dict(entry, id=len(annotations) + 1, iscrowd=0, area=float(mask.sum())))
            n = int(out["num_detections"][i])
            detections += _coco_entries(image_id, height, width, out["detection_boxes"][i][:n],
                                        out["detection_scores"][i][:n], out["detection_classes"][i][:n],
                                        pasted[i][:n, :height, :width])
    ground_truth = {"images": images, "annotations": annotations,
                    "categories": [{"id": label} for label in range(1, num_classes + 1)]}
    box, mask = (coco_evaluate(ground_truth, detections, iou_type) for iou_type in ("bbox", "segm"))
    metrics = {"box_ap": box["AP"], "box_ap50": box["AP50"], "mask_ap": mask["AP"], "mask_ap50": mask["AP50"],
               "num_images": len(images)}
    log(f"eval at {size}px on {len(images)} images: box AP {metrics['box_ap']:.4f}, "
        f"mask AP {metrics['mask_ap']:.4f}")
    return metrics


def prepare_training(fn_args) -> TaskTraining:
    """The model, optimizer, step and train dataset of `fn_args` (run_fn, `segpipe bench loop`)."""
    hp = hparams_from_config(fn_args.custom_config)
    num_classes = len(instance_category_ids(hp.get("label_map")))
    total_steps = int(fn_args.train_steps or 0)
    if total_steps <= 0:
        raise InputError("train_steps must be positive")
    log(f"instance: {num_classes} classes, {hp['backbone']} at {hp['image_size']}px")
    tft_output = tft.TFTransformOutput(fn_args.transform_output)
    feature_spec = tft_output.transformed_feature_spec()
    dataset = make_dataset(fn_args.train_files, feature_spec, hp, int(hp["batch_size"]), training=True,
                           seed=int(hp["seed"]))
    setup = set_up_training(hp, num_classes, build_model, make_train_step, total_steps)
    return TaskTraining(hp, num_classes, tft_output, feature_spec, setup, dataset)


def run_fn(fn_args) -> None:
    prepared = prepare_training(fn_args)
    hp, num_classes, feature_spec, setup = prepared.hp, prepared.num_classes, prepared.feature_spec, prepared.setup
    category_ids = instance_category_ids(hp.get("label_map"))
    pixel_mean, pixel_std = analyzer_values(fn_args.train_files, feature_spec)
    train(setup, hp, fn_args, prepared.dataset)
    model = setup.model

    eval_steps = int(fn_args.eval_steps or 0)
    if eval_steps > 0 and fn_args.eval_files:
        write_eval_metrics(fn_args, evaluate(model, fn_args.eval_files, feature_spec, hp, num_classes, eval_steps))

    t0 = time.time()
    export_model(setup.float32_model(), hp, category_ids, pixel_mean, pixel_std, hp["label_map"],
                 fn_args.serving_model_dir)
    save_for_warm_start(model, fn_args.serving_model_dir)  # what a warm-started run loads
    log(f"exported to {fn_args.serving_model_dir} ({time.time() - t0:.0f}s)")
