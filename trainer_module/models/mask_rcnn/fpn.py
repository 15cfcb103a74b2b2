"""Feature Pyramid Network (Lin et al. 2017): P2..P5 by top-down pathway + laterals, P6 by
subsampling P5 (as Detectron does for the RPN's largest anchors)."""
from __future__ import annotations

import tensorflow as tf
import tf_keras as keras


def upsample2x(x):
    """Nearest-neighbour 2x upsampling by broadcast + reshape (its gradient compiles under XLA,
    unlike ResizeNearestNeighborGrad). Rank 5 at most, with the batch folded into the rows: TFLite
    has no builtin 6-D StridedSlice (what `x[:, :, None, :, None, :]` becomes)."""
    b = tf.shape(x)[0]
    h, w, c = x.shape[1], x.shape[2], x.shape[3]
    x = tf.broadcast_to(tf.reshape(x, [b * h, 1, w, 1, c]), [b * h, 2, w, 2, c])
    return tf.reshape(x, [b, 2 * h, 2 * w, c])


class FPN(keras.layers.Layer):
    def __init__(self, channels: int = 256, min_level: int = 2, max_level: int = 6, **kwargs):
        super().__init__(**kwargs)
        self.min_level = min_level
        self.max_level = max_level
        # Lists (P2..P5), not int-keyed dicts: checkpoints need string keys.
        self.lateral = [keras.layers.Conv2D(channels, 1, name=f"lateral_p{level}") for level in range(2, 6)]
        self.output_convs = [keras.layers.Conv2D(channels, 3, padding="same", name=f"output_p{level}")
                             for level in range(2, 6)]
        self.p6 = keras.layers.MaxPooling2D(pool_size=1, strides=2, name="p6")

    def call(self, c_features):
        """c_features: [C2, C3, C4, C5]. Returns [P_min_level, ..., P_max_level] (a list: layer
        outputs with int-keyed dicts cannot be saved in a SavedModel)."""
        laterals = {level: self.lateral[level - 2](c) for level, c in zip(range(2, 6), c_features)}
        top_down = {5: laterals[5]}
        for level in (4, 3, 2):
            top_down[level] = laterals[level] + upsample2x(top_down[level + 1])
        outputs = {level: self.output_convs[level - 2](top_down[level]) for level in range(2, 6)}
        outputs[6] = self.p6(outputs[5])
        return [outputs[level] for level in range(self.min_level, self.max_level + 1)]
