"""Semantic segmentation task (DeepLab v3+): hparams, preprocessing, input_pipeline, model, export,
train, bench_step."""
