"""Instance segmentation task: Mask R-CNN preprocessing, input pipeline, training, export."""
