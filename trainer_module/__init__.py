"""TFX Trainer/Transform module of segpipe: the semantic (DeepLab v3+) and instance (Mask R-CNN)
tasks, each in its own package with the same module names; see docs/ARCHITECTURE.md."""
import os

# The code is written against Keras 2 (tf_keras); TensorFlow reads this variable when first
# imported, so it is set here, before any module of the package imports TensorFlow.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
