"""Second-stage heads: box head (2 fc 1024) and mask head (4 conv 256 + deconv, 28x28 per class)."""
from __future__ import annotations

import tensorflow as tf
import tf_keras as keras


class BoxHead(keras.layers.Layer):
    def __init__(self, num_classes: int, fc_dims: int = 1024, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes  # foreground classes; outputs have num_classes + 1
        self.flatten = keras.layers.Flatten()
        self.fc1 = keras.layers.Dense(fc_dims, activation="relu", name="fc1")
        self.fc2 = keras.layers.Dense(fc_dims, activation="relu", name="fc2")
        self.cls = keras.layers.Dense(num_classes + 1, name="cls",
                                      kernel_initializer=keras.initializers.RandomNormal(stddev=0.01))
        self.box = keras.layers.Dense(4 * (num_classes + 1), name="box",
                                      kernel_initializer=keras.initializers.RandomNormal(stddev=0.001))

    def call(self, roi_features):
        """[B, N, S, S, C] -> class logits [B, N, K+1], class-specific deltas [B, N, K+1, 4]."""
        b = tf.shape(roi_features)[0]
        n = roi_features.shape[1]
        x = tf.reshape(roi_features, [-1] + roi_features.shape[2:].as_list())
        x = self.fc2(self.fc1(self.flatten(x)))
        logits = tf.reshape(self.cls(x), [b, n, self.num_classes + 1])
        deltas = tf.reshape(self.box(x), [b, n, self.num_classes + 1, 4])
        return logits, deltas


class MaskHead(keras.layers.Layer):
    def __init__(self, num_classes: int, channels: int = 256, num_convs: int = 4, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.convs = [keras.layers.Conv2D(channels, 3, padding="same", activation="relu",
                                          kernel_initializer=keras.initializers.HeNormal(), name=f"mask_conv{i}")
                      for i in range(num_convs)]
        self.deconv = keras.layers.Conv2DTranspose(channels, 2, strides=2, activation="relu",
                                                   kernel_initializer=keras.initializers.HeNormal(),
                                                   name="mask_deconv")
        self.logits = keras.layers.Conv2D(num_classes, 1, name="mask_logits",
                                          kernel_initializer=keras.initializers.RandomNormal(stddev=0.001))

    def call(self, roi_features):
        """[B, N, 14, 14, C] -> per-class mask logits [B, N, 28, 28, K] (class k at index k - 1)."""
        b = tf.shape(roi_features)[0]
        n = roi_features.shape[1]
        x = tf.reshape(roi_features, [-1] + roi_features.shape[2:].as_list())
        for conv in self.convs:
            x = conv(x)
        x = self.logits(self.deconv(x))
        return tf.reshape(x, [b, n] + x.shape[1:].as_list())
