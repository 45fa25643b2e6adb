"""Batch collation: lists, since images differ in size (the model batches and pads them)."""

from __future__ import annotations


def collate(batch: list[tuple]) -> tuple[list, list]:
    """``[(image, target), ...] -> (images: list[Tensor [3, H, W]], targets: list[dict])``."""
    images, targets = zip(*batch) if batch else ((), ())
    return list(images), list(targets)
