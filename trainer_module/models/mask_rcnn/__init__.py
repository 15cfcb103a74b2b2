"""Mask R-CNN (He et al. 2017) with an FPN backbone, written as tf_keras layers with static shapes.

Modules follow TF Model Garden's `official/vision` split: ops (anchors, box_ops, nms, roi_align,
roi_sampler, mask_ops), layers (backbones, fpn, rpn, heads), losses and the assembled model.
"""
