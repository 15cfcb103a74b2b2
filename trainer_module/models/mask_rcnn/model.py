"""Mask R-CNN assembled: backbone -> FPN (P2..P6) -> RPN -> proposals -> ROIAlign -> box and mask heads.

All shapes are static given (batch, image_size, config): padded ground truth, fixed proposal and
ROI counts, fixed detection count. `train_forward` returns the losses of one batch; `call`
returns detections in input-image pixels with 28x28 mask probabilities (see
`mask_ops.paste_masks`).
"""
from __future__ import annotations

import tensorflow as tf
import tf_keras as keras

from components.errors import InputError
from trainer_module.models.mask_rcnn import anchors as anchor_lib
from trainer_module.models.mask_rcnn import backbones, box_ops, fpn, heads, losses, nms, roi_align, roi_sampler, rpn

MODEL_DEFAULTS = {
    "backbone": "resnet50",
    "backbone_weights": None,     # path to a Keras weights file of the no-top backbone
    "freeze_backbone_bn": False,  # use moving statistics in the backbone (small batches)
    "bn_momentum": 0.99,          # moving-statistics momentum of the backbone's BatchNorms (the only ones)
    "fpn_channels": 256,
    "anchor_scale": 8.0,
    "rpn_pre_nms_top_k_train": 2000,
    "rpn_post_nms_top_k_train": 1000,
    "rpn_pre_nms_top_k_test": 1000,
    "rpn_post_nms_top_k_test": 1000,
    "rpn_nms_iou": 0.7,
    "rpn_batch_size_per_image": 256,
    "roi_samples_per_image": 512,
    "roi_fg_fraction": 0.25,
    "box_fc_dims": 1024,
    "mask_head_convs": 4,
    "mask_head_channels": 256,
    "detection_pre_nms_top_k_per_class": 200,
    "detection_nms_iou": 0.5,
    "detection_score_threshold": 0.05,
    "max_detections": 100,
}

MASK_SIZE = 28
MIN_LEVEL, MAX_LEVEL = 2, 6
ROI_MAX_LEVEL = 5


def check_image_size(image_size) -> None:
    """The canvas must divide by the coarsest FPN stride (P6: 64); InputError otherwise."""
    if any(int(side) % 2 ** MAX_LEVEL for side in image_size):
        raise InputError(f"image_size {tuple(int(v) for v in image_size)} must be a multiple of "
                         f"{2 ** MAX_LEVEL} (the P{MAX_LEVEL} stride)")


class MaskRCNN(keras.Model):
    def __init__(self, num_classes: int, image_size, config: dict | None = None, **kwargs):
        super().__init__(**kwargs)
        self.cfg = dict(MODEL_DEFAULTS, **(config or {}))
        unknown = set(self.cfg) - set(MODEL_DEFAULTS)
        if unknown:
            raise InputError(f"unknown Mask R-CNN config keys: {sorted(unknown)}")
        self.num_classes = int(num_classes)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        check_image_size(self.image_size)
        cfg = self.cfg
        self.backbone = backbones.build_backbone(cfg["backbone"], self.image_size, cfg["backbone_weights"],
                                                 cfg["bn_momentum"])
        self.fpn = fpn.FPN(cfg["fpn_channels"], MIN_LEVEL, MAX_LEVEL, name="fpn")
        self.rpn_head = rpn.RPNHead(len(anchor_lib.ASPECT_RATIOS), cfg["fpn_channels"], name="rpn_head")
        self.box_head = heads.BoxHead(self.num_classes, cfg["box_fc_dims"], name="box_head")
        self.mask_head = heads.MaskHead(self.num_classes, cfg["mask_head_channels"],
                                        cfg["mask_head_convs"], name="mask_head")
        anchors, _ = anchor_lib.multilevel_anchors(self.image_size, MIN_LEVEL, MAX_LEVEL, cfg["anchor_scale"])
        self.anchors = tf.constant(anchors)
        self.num_fg_rois = int(cfg["roi_samples_per_image"] * cfg["roi_fg_fraction"])

    def features(self, images, training):
        bn_training = bool(training) and not self.cfg["freeze_backbone_bn"]
        levels = self.fpn(self.backbone(images, training=bn_training))
        return dict(zip(range(MIN_LEVEL, MAX_LEVEL + 1), levels))

    def _roi_features(self, feats, boxes, size):
        return roi_align.multilevel_roi_align(feats, boxes, size, MIN_LEVEL, ROI_MAX_LEVEL)

    def train_forward(self, images, gt_boxes, gt_classes, gt_masks, training=True):
        """Losses of one batch. images [B, H, W, 3] normalised; gt_boxes [B, M, 4] pixels (yxyx);
        gt_classes [B, M] int (labels 1..K, <= 0 padding/ignored); gt_masks [B, M, Hm, Wm] 0/1 at
        any resolution covering the whole image. Returns a dict of scalar losses incl. 'total'."""
        cfg = self.cfg
        gt_boxes = tf.cast(gt_boxes, tf.float32)
        gt_classes = tf.cast(gt_classes, tf.int32)
        feats = self.features(images, training)
        rpn_logits, rpn_deltas = self.rpn_head([feats[level] for level in sorted(feats)])
        labels, weights, rpn_box_targets = roi_sampler.rpn_targets(
            self.anchors, gt_boxes, gt_classes, cfg["rpn_batch_size_per_image"])
        rpn_cls, rpn_box = losses.rpn_losses(rpn_logits, rpn_deltas, labels, weights, rpn_box_targets)
        proposals, valid = rpn.generate_proposals(
            rpn_logits, rpn_deltas, self.anchors, self.image_size, cfg["rpn_pre_nms_top_k_train"],
            cfg["rpn_post_nms_top_k_train"], cfg["rpn_nms_iou"])
        samples = roi_sampler.sample_rois(proposals, valid, gt_boxes, gt_classes,
                                          cfg["roi_samples_per_image"], cfg["roi_fg_fraction"])
        class_logits, box_deltas = self.box_head(self._roi_features(feats, samples["rois"], 7))
        head_cls, head_box = losses.head_losses(class_logits, box_deltas, samples)
        # Foreground ROIs come first in the sample, so the mask head sees them all.
        n = self.num_fg_rois
        mask_rois = samples["rois"][:, :n]
        mask_logits = self.mask_head(self._roi_features(feats, mask_rois, MASK_SIZE // 2))
        scale = tf.constant([gt_masks.shape[2] / self.image_size[0], gt_masks.shape[3] / self.image_size[1]] * 2,
                            tf.float32)
        mask_targets = roi_align.crop_and_resize_masks(gt_masks, samples["matched"][:, :n],
                                                       mask_rois * scale, MASK_SIZE)
        mask_targets = tf.cast(mask_targets >= 0.5, tf.float32)
        mask = losses.mask_loss(mask_logits, mask_targets, samples["classes"][:, :n], samples["is_fg"][:, :n])
        out = {"rpn_cls": rpn_cls, "rpn_box": rpn_box, "head_cls": head_cls, "head_box": head_box,
               "mask": mask}
        out["total"] = tf.add_n(list(out.values()))
        return out

    def call(self, images, training=False):
        """Detections for normalised images [B, H, W, 3]: dict with detection_boxes [B, D, 4]
        (pixels of the input image, yxyx), detection_scores [B, D], detection_classes [B, D] int32
        (labels 1..K, 0 on padding), detection_mask_probs [B, D, 28, 28], num_detections [B].

        With a static batch size (TFLite export: [1, H, W, 3]) the NMS runs as one
        NonMaxSuppressionV4 op per image and class, without a while loop in the graph (TFLite
        builtins only, int8 calibration works); otherwise as the dense fixed point of training.
        Both give the exact greedy result."""
        cfg = self.cfg
        use_nms_op = images.shape[0] is not None
        feats = self.features(images, False)
        rpn_logits, rpn_deltas = self.rpn_head([feats[level] for level in sorted(feats)])
        proposals, valid = rpn.generate_proposals(
            rpn_logits, rpn_deltas, self.anchors, self.image_size, cfg["rpn_pre_nms_top_k_test"],
            cfg["rpn_post_nms_top_k_test"], cfg["rpn_nms_iou"], use_nms_op=use_nms_op)
        class_logits, box_deltas = self.box_head(self._roi_features(feats, proposals, 7))
        probs = tf.nn.softmax(tf.cast(class_logits, tf.float32))[..., 1:]
        probs = tf.where(valid[..., None], probs, 0.0)
        k = self.num_classes
        p = proposals.shape[1]
        boxes = box_ops.decode_boxes(tf.cast(box_deltas, tf.float32)[:, :, 1:],
                                     proposals[:, :, None, :], box_ops.HEAD_BOX_WEIGHTS)
        boxes = box_ops.clip_boxes(boxes, self.image_size[0], self.image_size[1])
        # Class-wise NMS: one NMS per (image, class), then the best D over all classes.
        d = cfg["max_detections"]
        b = tf.shape(images)[0]
        per_class_boxes = tf.reshape(tf.transpose(boxes, [0, 2, 1, 3]), [-1, p, 4])
        per_class_scores = tf.reshape(tf.transpose(probs, [0, 2, 1]), [-1, p])
        nms_boxes, nms_scores, _, nms_valid = nms.non_max_suppression_padded(
            per_class_boxes, per_class_scores, d, cfg["detection_nms_iou"],
            pre_nms_top_k=cfg["detection_pre_nms_top_k_per_class"],
            score_threshold=cfg["detection_score_threshold"], use_nms_op=use_nms_op)
        nms_boxes = tf.reshape(nms_boxes, [b, k * d, 4])
        nms_scores = tf.reshape(tf.where(nms_valid, nms_scores, -1.0), [b, k * d])
        top_scores, top = tf.math.top_k(nms_scores, k=min(d, k * d), sorted=True)
        det_valid = top_scores > 0.0
        det_boxes = tf.where(det_valid[..., None], tf.gather(nms_boxes, top, batch_dims=1), 0.0)
        det_scores = tf.where(det_valid, top_scores, 0.0)
        det_classes = tf.where(det_valid, top // d + 1, 0)
        if k * d < d:  # fewer slots than max_detections (tiny configs): pad to D
            pad = d - k * d
            det_boxes = tf.pad(det_boxes, [[0, 0], [0, pad], [0, 0]])
            det_scores = tf.pad(det_scores, [[0, 0], [0, pad]])
            det_classes = tf.pad(det_classes, [[0, 0], [0, pad]])
            det_valid = tf.pad(det_valid, [[0, 0], [0, pad]])
        mask_logits = self.mask_head(self._roi_features(feats, det_boxes, MASK_SIZE // 2))
        mask_logits = tf.transpose(tf.cast(mask_logits, tf.float32), [0, 1, 4, 2, 3])
        masks = tf.sigmoid(tf.gather(mask_logits, tf.maximum(det_classes - 1, 0), batch_dims=2))
        return {"detection_boxes": det_boxes, "detection_scores": det_scores,
                "detection_classes": det_classes,
                "detection_mask_probs": masks * tf.cast(det_valid, tf.float32)[..., None, None],
                "num_detections": tf.reduce_sum(tf.cast(det_valid, tf.int32), axis=-1)}
