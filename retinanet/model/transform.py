"""Input transform: normalise, resize (torchvision's arithmetic), pad to a multiple of 32.

The resize geometry (``resized_size``, ``resize_image``, ``resize_boxes``) lives in
``retinanet.geometry``, shared with the data pipeline, which pre-resizes images in DataLoader
workers; the model then skips resizing.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from retinanet.geometry import SIZE_DIVISIBLE, padded_size, resized_size

IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)


_STATS: dict[tuple[torch.device, torch.dtype], tuple[Tensor, Tensor]] = {}


def _mean_std(device: torch.device, dtype: torch.dtype, cache: bool) -> tuple[Tensor, Tensor]:
    """``[3, 1, 1]`` ImageNet mean and std on ``device``: built once per (device, dtype) when
    ``cache`` (a tensor built from Python numbers on a GPU is a host-to-device copy, which waits)."""
    key = (device, dtype)
    if cache and key in _STATS:
        return _STATS[key]
    stats = (torch.tensor(IMAGE_MEAN, dtype=dtype, device=device)[:, None, None],
             torch.tensor(IMAGE_STD, dtype=dtype, device=device)[:, None, None])
    if cache:
        _STATS[key] = stats
    return stats


def normalize(image: Tensor) -> Tensor:
    """uint8 (0..255) or float (0..1) ``[3, H, W]`` (or ``[B, 3, H, W]``) -> float ImageNet-normalised."""
    if not image.is_floating_point():
        image = image.float().div_(255.0)
    # traced or exported graphs get their own constants, never a cached (fake or traced) tensor
    real = type(image) is Tensor and not torch.jit.is_tracing() and not torch.compiler.is_compiling()
    mean, std = _mean_std(image.device, image.dtype, cache=real)
    return (image - mean) / std


def batch_images(images: list[Tensor], min_size: int, max_size: int,
                 memory_format: torch.memory_format = torch.contiguous_format, resize: bool = True,
                 ) -> tuple[Tensor, list[tuple[int, int]]]:
    """Normalise, resize (unless already resized) and zero-pad images into one batch.

    Args:
        images: list of ``[3, H_i, W_i]`` uint8 or float images.
        memory_format: of the batch (``torch.channels_last``: NHWC in memory, same values).
        resize: False = keep every image at its own size (native-resolution tiles).
    Returns:
        batch ``[B, 3, H, W]`` (H, W multiples of 32) and the resized (unpadded) size per image.
    """
    prepared = []
    for img in images:
        x = normalize(img)
        h, w = x.shape[-2:]
        size = resized_size(int(h), int(w), min_size, max_size) if resize else (int(h), int(w))
        if size != (int(h), int(w)):
            x = F.interpolate(x[None], size=size, mode="bilinear", align_corners=False)[0]
        prepared.append(x)
    sizes = [(int(x.shape[-2]), int(x.shape[-1])) for x in prepared]
    if torch.jit.is_tracing() and len(prepared) == 1:
        return pad_to_divisible(prepared[0][None]).contiguous(memory_format=memory_format), sizes
    H = max(s[0] for s in sizes)
    W = max(s[1] for s in sizes)
    H = int(math.ceil(H / SIZE_DIVISIBLE) * SIZE_DIVISIBLE)
    W = int(math.ceil(W / SIZE_DIVISIBLE) * SIZE_DIVISIBLE)
    batch = torch.empty((len(prepared), 3, H, W), dtype=prepared[0].dtype, device=prepared[0].device,
                        memory_format=memory_format).zero_()
    for i, x in enumerate(prepared):
        batch[i, :, : x.shape[-2], : x.shape[-1]].copy_(x)
    return batch, sizes


def padded_size_groups(images: list[Tensor], min_size: int, max_size: int, resize: bool = True) -> list[list[int]]:
    """Indices of ``images`` grouped by the padded size ``batch_images`` gives each alone (its
    resized size rounded up to ``SIZE_DIVISIBLE``), groups in order of first appearance."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, img in enumerate(images):
        groups.setdefault(padded_size(int(img.shape[-2]), int(img.shape[-1]), min_size, max_size, resize), []).append(i)
    return list(groups.values())


def pad_to_divisible(batch: Tensor) -> Tensor:
    """Zero-pad a normalised ``[B, 3, H, W]`` batch at the bottom and right so that H and W are
    multiples of ``SIZE_DIVISIBLE`` (as ``batch_images`` pads; traceable with symbolic sizes)."""
    h, w = batch.shape[-2:]
    s = SIZE_DIVISIBLE  # sizes as s * ceil(x / s): a symbolic size stays a visible multiple of s
    return F.pad(batch, (0, (w + s - 1) // s * s - w, 0, (h + s - 1) // s * s - h))
