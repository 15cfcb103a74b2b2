"""Semantic segmentation (DeepLab v3+): input pipeline, training, export."""
