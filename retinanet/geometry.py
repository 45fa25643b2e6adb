"""Resize geometry shared by the model and the data pipeline (torchvision's arithmetic).

The data pipeline resizes images in DataLoader workers with ``resize_image``; the model's
``batch_images`` uses the same ``resized_size`` and, because it is idempotent, does not resize them
again. ``resize_boxes`` maps boxes between the two frames.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

SIZE_DIVISIBLE = 32  # the model pads a batch's height and width to multiples of this (the FPN's P5 stride)


def _torchvision_size(h: int, w: int, min_size: int, max_size: int) -> tuple[int, int]:
    scale = min(min_size / min(h, w), max_size / max(h, w))
    # at least 1 pixel a side: a 30 x 5000 strip capped at 160 px would floor to 0 rows (torchvision fails there)
    return max(1, int(math.floor(h * scale))), max(1, int(math.floor(w * scale)))


def resized_size(h: int, w: int, min_size: int, max_size: int) -> tuple[int, int]:
    """Size the model resizes an ``h x w`` image to (torchvision's GeneralizedRCNNTransform rule).

    Idempotent: a size that is already the result of resizing (within the 1-pixel floor rounding
    of torchvision's arithmetic) is returned unchanged.

    Args:
        h, w: image height and width in pixels.
        min_size: target short side. max_size: cap on the long side.
    Returns:
        (new_h, new_w).
    """
    nh, nw = _torchvision_size(h, w, min_size, max_size)
    if abs(nh - h) <= 1 and abs(nw - w) <= 1:
        return h, w
    return nh, nw


def padded_size(h: int, w: int, min_size: int, max_size: int, resize: bool = True) -> tuple[int, int]:
    """Size of the zero-padded input an ``h x w`` image gets alone: its ``resized_size`` (its own
    size when not ``resize``) rounded up to multiples of ``SIZE_DIVISIBLE``."""
    h, w = resized_size(h, w, min_size, max_size) if resize else (h, w)
    return math.ceil(h / SIZE_DIVISIBLE) * SIZE_DIVISIBLE, math.ceil(w / SIZE_DIVISIBLE) * SIZE_DIVISIBLE


def resize_image(image: Tensor, min_size: int, max_size: int) -> Tensor:
    """Bilinearly resize a ``[3, H, W]`` (or ``[B, 3, H, W]``) image to ``resized_size``.

    uint8 input is resized in float and rounded back to uint8. Returns the image unchanged when
    it already has the target size.
    """
    h, w = image.shape[-2:]
    size = resized_size(int(h), int(w), min_size, max_size)
    if size == (int(h), int(w)):
        return image
    batched = image.dim() == 4
    x = image if batched else image[None]
    out = F.interpolate(x.float() if not x.is_floating_point() else x, size=size, mode="bilinear",
                        align_corners=False)
    if not image.is_floating_point():
        out = out.round_().clamp_(0, 255).to(image.dtype)
    return out if batched else out[0]


def resize_boxes(boxes: Tensor, old_hw: tuple[int, int], new_hw: tuple[int, int]) -> Tensor:
    """Scale ``[N, 4]`` xyxy boxes from an ``old_hw`` image frame to ``new_hw`` (fp32 ratios).

    The ratios are Python numbers (fp32 values), not a tensor copied to the boxes' device (on a
    GPU a blocking copy per call); the result is the same, of dtype ``promote(boxes, float32)``."""
    rh = (torch.tensor(new_hw[0], dtype=torch.float32) / torch.tensor(old_hw[0], dtype=torch.float32)).item()
    rw = (torch.tensor(new_hw[1], dtype=torch.float32) / torch.tensor(old_hw[1], dtype=torch.float32)).item()
    out = boxes.to(torch.promote_types(boxes.dtype, torch.float32), copy=True)
    out[..., 0::2] *= rw
    out[..., 1::2] *= rh
    return out
