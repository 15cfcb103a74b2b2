"""Region Proposal Network head (shared over levels) and static-shape proposal generation."""
from __future__ import annotations

import tensorflow as tf
import tf_keras as keras

from trainer_module.models.mask_rcnn import box_ops, nms


class RPNHead(keras.layers.Layer):
    def __init__(self, num_anchors_per_location: int = 3, channels: int = 256, **kwargs):
        super().__init__(**kwargs)
        def init():  # a fresh initializer per layer (a shared one repeats its values)
            return keras.initializers.RandomNormal(stddev=0.01)
        self.conv = keras.layers.Conv2D(channels, 3, padding="same", activation="relu",
                                        kernel_initializer=init(), name="rpn_conv")
        self.cls = keras.layers.Conv2D(num_anchors_per_location, 1, kernel_initializer=init(), name="rpn_cls")
        self.box = keras.layers.Conv2D(4 * num_anchors_per_location, 1, kernel_initializer=init(), name="rpn_box")

    def call(self, features: list):
        """features: pyramid levels from the finest. Returns objectness logits [B, A] and deltas
        [B, A, 4], levels concatenated in order (row, column, anchor) like `anchors.multilevel_anchors`."""
        logits, deltas = [], []
        for level_features in features:
            x = self.conv(level_features)
            b = tf.shape(x)[0]
            logits.append(tf.reshape(self.cls(x), [b, -1]))
            deltas.append(tf.reshape(self.box(x), [b, -1, 4]))
        return tf.concat(logits, axis=1), tf.concat(deltas, axis=1)


def generate_proposals(logits, deltas, anchors, image_size, pre_nms_top_k: int, post_nms_top_k: int,
                       nms_iou: float = 0.7, min_size: float = 0.0, use_nms_op: bool = False):
    """Top-k anchors by objectness over all levels, decoded, clipped, NMS'ed to a fixed count.
    Returns boxes [B, post_nms_top_k, 4], valid [B, post_nms_top_k]. use_nms_op: see
    `nms.non_max_suppression_padded`."""
    logits = tf.cast(logits, tf.float32)
    deltas = tf.cast(deltas, tf.float32)
    k = min(pre_nms_top_k, anchors.shape[0])
    scores, idx = tf.math.top_k(logits, k=k, sorted=True)
    boxes = box_ops.decode_boxes(tf.gather(deltas, idx, batch_dims=1), tf.gather(anchors, idx),
                                 box_ops.RPN_BOX_WEIGHTS)
    boxes = box_ops.clip_boxes(boxes, image_size[0], image_size[1])
    h = boxes[..., 2] - boxes[..., 0]
    w = boxes[..., 3] - boxes[..., 1]
    # Boxes no larger than min_size (e.g. clipped away) are never proposals: all k boxes enter the
    # NMS (no pre_nms_top_k), so passing them as invalid equals ranking them last.
    boxes, _, _, valid = nms.non_max_suppression_padded(
        boxes, scores, post_nms_top_k, nms_iou, valid=(h > min_size) & (w > min_size),
        use_nms_op=use_nms_op)
    return tf.stop_gradient(boxes), valid
