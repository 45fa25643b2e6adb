"""Inference: the ``Detector`` (images in, detections in original pixels out), ``predict`` over
image files with its output files, and ``draw`` (boxes and labels on an image)."""
