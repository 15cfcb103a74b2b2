"""What both tasks' SavedModels share: the two serving signatures over encoded images and the label
map inside the SavedModel (assets/label_map.json)."""
from __future__ import annotations

import json
import os
import shutil
import tempfile

import tensorflow as tf

from components.contract import IMAGE_ENCODED, LABEL_MAP_FILE


class ImageServingModule(tf.Module):
    """Serving signatures of a model that predicts from encoded images (`predict`, per task):
      serving_default(examples: tf.string [None])  serialized raw tf.Examples (only IMAGE_ENCODED is read)
      serving_images(images: tf.string [None])     encoded JPEG/PNG bytes
    Both return `predict(encoded images)`.

    The model's variables are tracked, not the Keras model: saving a Keras model traces every
    layer's call (minutes for a backbone); the signatures capture the variables they use."""

    def __init__(self, model):
        super().__init__()
        self.model_variables = list(model.variables)

    def predict(self, encoded_images) -> dict:
        raise NotImplementedError

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve_examples(self, examples):
        parsed = tf.io.parse_example(examples, {IMAGE_ENCODED: tf.io.FixedLenFeature([], tf.string)})
        return self.predict(parsed[IMAGE_ENCODED])

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
    def serve_images(self, images):
        return self.predict(images)


def save_serving_module(module: ImageServingModule, label_map: dict, export_dir: str,
                        extra_signatures: dict | None = None) -> None:
    """SavedModel with serving_default and serving_images (plus `extra_signatures`, name -> tf.function
    with an input signature, e.g. the task's `serving_tflite`), and the label map as
    assets/label_map.json (a tracked Asset, so it travels with the SavedModel; an Asset keeps its
    file's base name).

    The signatures go to `save` as tf.functions, not concrete functions: save traces them again in
    its own context whatever was traced before, so tracing them first doubled the export's time."""
    asset_dir = tempfile.mkdtemp(prefix="segpipe_label_map_")
    try:
        path = os.path.join(asset_dir, LABEL_MAP_FILE)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(label_map, f, indent=1)
        module.label_map_file = tf.saved_model.Asset(path)
        signatures = {"serving_default": module.serve_examples, "serving_images": module.serve_images,
                      **(extra_signatures or {})}
        tf.saved_model.save(module, export_dir, signatures=signatures)
    finally:
        shutil.rmtree(asset_dir, ignore_errors=True)
