"""Instance segmentation task (Mask R-CNN): hparams, preprocessing, input_pipeline, model, export,
train, bench_step."""
