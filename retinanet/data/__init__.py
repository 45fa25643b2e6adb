"""Datasets and batches: Pascal VOC (standard and flat layouts), COCO JSON, the synthetic set.

Public API: ``build_datasets``, ``build_loader``, ``ClassMap``, ``make_synthetic``,
``ensure_synthetic``, ``default_synthetic_root``, ``check_dataset``. Item format: see
``retinanet.data.dataset.DetectionDataset`` and docs/ARCHITECTURE.md.

Where each choice is documented: dataset kinds and build-time checks in ``build``; VOC pixel
convention, layouts and the flat split files in ``voc``; how ``--data`` names COCO in ``coco``;
EXIF and colour modes in ``images``; augmentation in ``transforms``; shuffling, sharding and
worker seeds in ``sampler`` and ``build.EpochSeededLoader``; the synthetic set's location
(``$RETINANET_CACHE/synthetic``, default ``~/.cache/retinanet/synthetic``) in ``synthetic``.
"""

from retinanet.data.build import Datasets, build_datasets, build_loader
from retinanet.data.check import CheckReport, check_dataset
from retinanet.data.classes import ClassMap
from retinanet.data.collate import collate
from retinanet.data.progress import ReadingReport, no_progress, reading_progress
from retinanet.data.synthetic import default_synthetic_root, ensure_synthetic, make_synthetic

__all__ = [
    "CheckReport", "ClassMap", "Datasets", "build_datasets", "build_loader", "check_dataset", "collate",
    "default_synthetic_root", "ensure_synthetic", "make_synthetic", "no_progress", "reading_progress", "ReadingReport",
]
