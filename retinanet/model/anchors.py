"""Anchors: torchvision's AnchorGenerator values and order, with an eager-only cache.

One function, ``grid_anchors``, makes the anchors of one level from the feature-map and padded
image sizes with tensor ops only, so the eager model and the exported graph (where the sizes
are symbolic) compute them the same way; ``AnchorCache`` memoises it in eager mode.
"""

from __future__ import annotations

import torch
from torch import Tensor

from retinanet.config import ModelConfig

SIZES = ModelConfig.anchor_sizes  # default base anchor size of each FPN level, P3..P7 (torchvision's)
ASPECT_RATIOS = (0.5, 1.0, 2.0)  # height / width
SCALES_PER_OCTAVE = 3  # sizes size * 2^(i/3), i = 0, 1, 2
NUM_ANCHORS = len(ASPECT_RATIOS) * SCALES_PER_OCTAVE  # anchors per feature-map cell: 9


def level_sizes(size: int) -> tuple[int, ...]:
    """Anchor sizes of one level: size * 2^0, 2^(1/3), 2^(2/3), truncated to int as torchvision."""
    return tuple(int(size * 2 ** (i / SCALES_PER_OCTAVE)) for i in range(SCALES_PER_OCTAVE))


_BASE: dict[tuple[int, torch.dtype, str], Tensor] = {}


def base_anchors(size: int, dtype=torch.float32, device=None) -> Tensor:
    """Rounded zero-centred ``[NUM_ANCHORS, 4]`` anchors of one level (ratio-major, scale-minor).

    Made from Python numbers, so on a GPU a blocking host-to-device copy: in eager mode made once
    per (size, dtype, device) and kept (``AnchorCache`` calls it for every new padded image size);
    traced or compiled graphs make their own."""
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        return _base_anchors(size, dtype, device)
    key = (size, dtype, str(torch.device(device) if device is not None else torch.device("cpu")))
    if key in _BASE:
        return _BASE[key]
    anchors = _base_anchors(size, dtype, device)
    if type(anchors) is Tensor:  # never a fake or functional tensor of an export that went unnoticed
        _BASE[key] = anchors
    return anchors


def _base_anchors(size: int, dtype, device) -> Tensor:
    scales = torch.as_tensor(level_sizes(size), dtype=dtype, device=device)
    ratios = torch.as_tensor(ASPECT_RATIOS, dtype=dtype, device=device)
    h_ratios = torch.sqrt(ratios)
    w_ratios = 1 / h_ratios
    ws = (w_ratios[:, None] * scales[None, :]).reshape(-1)
    hs = (h_ratios[:, None] * scales[None, :]).reshape(-1)
    return (torch.stack([-ws, -hs, ws, hs], dim=1) / 2).round()


def grid_anchors(feat_hw: tuple, image_hw: tuple, size: int, device=None) -> Tensor:
    """Anchors of one level at every cell of its feature map.

    Args:
        feat_hw: ``(H_l, W_l)`` feature-map size. image_hw: ``(H, W)`` padded batch size; the
            strides are ``H // H_l`` and ``W // W_l`` (ints, as torchvision). Either may hold
            symbolic sizes (export).
        size: the level's base size (one of ``SIZES``).
    Returns:
        ``[H_l*W_l*NUM_ANCHORS, 4]`` float32 xyxy anchors, location-major (row-major cells, the
        anchors of a cell innermost).
    """
    fh, fw = feat_hw
    sh = image_hw[0] // fh
    sw = image_hw[1] // fw
    xs = torch.arange(0, fw, dtype=torch.int32, device=device) * sw
    ys = torch.arange(0, fh, dtype=torch.int32, device=device) * sh
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    xx = xx.reshape(-1)
    yy = yy.reshape(-1)
    shifts = torch.stack([xx, yy, xx, yy], dim=1).to(torch.float32)
    return (shifts[:, None, :] + base_anchors(size, device=device)[None]).reshape(-1, 4)


class AnchorCache:
    """Anchors per FPN level for given feature-map and padded image sizes, cached in eager mode.

    The eager model and the exported graph both get their anchors here. Under tracing,
    compilation or export (``torch.onnx.export``) nothing is cached: the anchors are computed
    from the (symbolic) sizes with ``grid_anchors``, so they become part of the graph.
    """

    def __init__(self, sizes: tuple[int, ...] = SIZES):
        self.sizes = sizes
        self._cache: dict = {}

    def __call__(self, feat_hws: list, image_hw: tuple, device) -> list[Tensor]:
        """Returns a list (one per level) of ``[H_l*W_l*NUM_ANCHORS, 4]`` float32 anchors."""
        if torch.jit.is_tracing() or torch.compiler.is_compiling():
            # no int() on the sizes: that would freeze symbolic sizes to the example's
            return [grid_anchors(hw, image_hw, s, device) for hw, s in zip(feat_hws, self.sizes)]
        key = (tuple(tuple(int(s) for s in hw) for hw in feat_hws),
               tuple(int(s) for s in image_hw), str(device))
        if key not in self._cache:
            if len(self._cache) > 32:
                self._cache.clear()
            self._cache[key] = [grid_anchors(hw, image_hw, s, device) for hw, s in zip(feat_hws, self.sizes)]
        return self._cache[key]
