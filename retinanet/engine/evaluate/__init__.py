"""Evaluation: predictions over a loader and their metrics (``loop``), the COCO metrics through
pycocotools (``coco``), VOC07/VOC12 AP (``voc``) and the precision-recall plots (``plots``)."""
