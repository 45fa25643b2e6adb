"""Anchors: torchvision's AnchorGenerator values and order, with an eager-only cache."""

from __future__ import annotations

import torch
from torch import Tensor

SIZES = (32, 64, 128, 256, 512)
ASPECT_RATIOS = (0.5, 1.0, 2.0)


def level_sizes(size: int) -> tuple[int, int, int]:
    """Anchor sizes of one level: size * 2^0, 2^(1/3), 2^(2/3), truncated to int as torchvision."""
    return tuple(int(size * 2 ** (i / 3.0)) for i in range(3))


def base_anchors(size: int, dtype=torch.float32, device=None) -> Tensor:
    """Rounded zero-centred ``[9, 4]`` anchors of one level (ratio-major, scale-minor)."""
    scales = torch.as_tensor(level_sizes(size), dtype=dtype, device=device)
    ratios = torch.as_tensor(ASPECT_RATIOS, dtype=dtype, device=device)
    h_ratios = torch.sqrt(ratios)
    w_ratios = 1 / h_ratios
    ws = (w_ratios[:, None] * scales[None, :]).reshape(-1)
    hs = (h_ratios[:, None] * scales[None, :]).reshape(-1)
    return (torch.stack([-ws, -hs, ws, hs], dim=1) / 2).round()


def grid_anchors(feat_hw: tuple, image_hw: tuple, size: int, device=None) -> Tensor:
    """``[H*W*9, 4]`` anchors of one level (location-major), strides = image // feature (int)."""
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

    Under tracing/compilation/export the anchors are recomputed from shapes with tensor ops.
    """

    def __init__(self, sizes: tuple[int, ...] = SIZES):
        self.sizes = sizes
        self._cache: dict = {}

    def __call__(self, feat_hws: list, image_hw: tuple, device) -> list[Tensor]:
        """Returns a list (one per level) of ``[H_l*W_l*9, 4]`` float32 anchors."""
        eager = not (torch.jit.is_tracing() or torch.compiler.is_compiling())
        key = (tuple(tuple(int(s) for s in hw) for hw in feat_hws),
               tuple(int(s) for s in image_hw), str(device))
        if eager and key in self._cache:
            return self._cache[key]
        out = [grid_anchors(hw, image_hw, s, device) for hw, s in zip(feat_hws, self.sizes)]
        if eager:
            if len(self._cache) > 32:
                self._cache.clear()
            self._cache[key] = out
        return out
