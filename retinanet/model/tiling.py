"""Tiled detection: large images cut into overlapping native-resolution tiles, detections merged.

For images much larger than the network input with small objects in them: each ``tile x tile``
window of original pixels goes through the network unresized (the model's input size is the tile
side), so a 16 px object stays 16 px. Pieces, in the order ``detect_tiled`` uses them:

- ``tile_grid``: tile windows covering the image, overlapping by at least ``overlap`` of a tile
  (evenly spread, all of full size unless the image is smaller than a tile on that side).
- ``crop_tile``: one window of a ``uint8`` image, never resized; all windows of an image have one
  shape (a side shorter than the tile is the image's: a 100 x 120 image under ``--tile 4000`` is
  one 100 x 120 tile, not a 4000 px square of padding).
- ``merge_tiles``: detections shifted to image pixels are merged. A box touching an inner tile
  edge (within ``EDGE_MARGIN`` px of an edge inside the image: the object may go on beyond it)
  is a *fragment*; it is dropped when a larger box of the same class from an overlapping tile
  contains it (``FRAGMENT_IOF`` of its area inside): that tile, whose overlap holds more of the
  object, saw it (more) whole. The larger box may touch an edge itself (a whole object that ends
  within the margin of one), so of the views of one object the largest survives. A fragment
  nothing contains (an object larger than the overlap, or missed by the neighbour) stays. Then
  class-wise NMS over everything, best ``max_det`` kept.

Memory is bounded by the batch of tiles: tiles are cut from the ``uint8`` image one batch at a
time, only the kept detections of each tile are held (at most ``max_dets`` each: the model's
``detections_per_img`` unless a caller asks for more).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor
from torchvision.ops import batched_nms

from retinanet.errors import RetinaNetError
from retinanet.geometry import resize_image

EDGE_MARGIN = 2.0  # a box within this many pixels of an inner tile edge touches it
FRAGMENT_IOF = 0.7  # a fragment this much inside a whole box of its class (intersection / its area) is dropped
PAD_RGB = (124, 116, 104)  # ImageNet mean, uint8: what the model's zero padding of a normalised batch looks like


def tile_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Start offsets of the tiles along one side: first at 0, last ending at ``length``, evenly
    spread with neighbours overlapping by at least ``overlap * tile`` pixels (one tile at 0 when
    ``length <= tile``)."""
    if length <= tile:
        return [0]
    stride = max(1, int(tile * (1 - overlap)))
    n = math.ceil((length - tile) / stride) + 1
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def tile_grid(hw: tuple[int, int], tile: int, overlap: float) -> Tensor:
    """``[T, 4]`` int64 tile windows ``(x0, y0, x1, y1)`` in image pixels, row-major.

    Args:
        hw: image (H, W). tile: tile side, pixels. overlap: 0 <= overlap < 1, share of a tile.
    """
    H, W = hw
    ys, xs = tile_starts(H, tile, overlap), tile_starts(W, tile, overlap)
    return torch.tensor([(x, y, min(x + tile, W), min(y + tile, H)) for y in ys for x in xs], dtype=torch.int64)


def inner_edges(grid: Tensor, hw: tuple[int, int]) -> Tensor:
    """``[T, 4]`` bool: which of each tile's edges (left, top, right, bottom) lie inside the image."""
    H, W = hw
    return torch.stack([grid[:, 0] > 0, grid[:, 1] > 0, grid[:, 2] < W, grid[:, 3] < H], 1)


def crop_tile(image: Tensor, window: Tensor, tile: int | tuple[int, int]) -> Tensor:
    """``[3, th, tw]`` uint8 (``tile``: a side, or ``(th, tw)``): ``image[:, y0:y1, x0:x1]``, padded
    with ``PAD_RGB`` at the bottom/right when the window is smaller."""
    th, tw = (tile, tile) if isinstance(tile, int) else tile
    x0, y0, x1, y1 = (int(v) for v in window)
    part = image[:, y0:y1, x0:x1]
    if part.shape[-2:] == (th, tw):
        return part
    out = torch.tensor(PAD_RGB, dtype=image.dtype, device=image.device)[:, None, None].repeat(1, th, tw)
    out[:, : y1 - y0, : x1 - x0] = part
    return out


def fragments(boxes: Tensor, window: Tensor, inner: Tensor, margin: float = EDGE_MARGIN) -> Tensor:
    """``[K]`` bool: boxes (image pixels) within ``margin`` of an inner edge of their tile.

    Args:
        boxes: ``[K, 4]`` xyxy image pixels. window: ``[K, 4]`` (or ``[4]``) their tile's window.
        inner: ``[K, 4]`` (or ``[4]``) bool, ``inner_edges`` of their tile.
    """
    w = window.to(boxes.dtype)
    near = torch.stack([boxes[:, 0] <= w[..., 0] + margin, boxes[:, 1] <= w[..., 1] + margin,
                        boxes[:, 2] >= w[..., 2] - margin, boxes[:, 3] >= w[..., 3] - margin], 1)
    return (near & inner).any(dim=1)


def merge_tiles(boxes: Tensor, scores: Tensor, labels: Tensor, tile_index: Tensor, fragment: Tensor, grid: Tensor,
                iou_thresh: float, max_det: int, contain: float = FRAGMENT_IOF) -> Tensor:
    """Indices of the detections kept, best score first (see the module docstring).

    Args:
        boxes: ``[K, 4]`` xyxy image pixels, from all tiles. scores: ``[K]``. labels: ``[K]``.
        tile_index: ``[K]`` the tile each came from (-1: a whole-image pass, never a fragment).
        fragment: ``[K]`` bool (``fragments``). grid: ``[T, 4]`` the tile windows (``tile_grid``).
        iou_thresh: class-wise NMS threshold. max_det: detections kept at most.
        contain: a fragment with this share of its area inside a larger same-class box of an
            overlapping tile (or of the whole-image pass) is dropped.
    The containment test runs tile by tile against the boxes of the tiles overlapping it (and the
    whole-image pass), so its memory is bounded by the detections of a few tiles.
    """
    keep = torch.ones(len(boxes), dtype=torch.bool, device=boxes.device)
    g = grid.to(boxes.dtype)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])  # [K]
    for t in tile_index[fragment].unique().tolist():
        frag = (fragment & (tile_index == t)).nonzero().squeeze(1)
        # the tiles overlapping tile t: [T], not a [T, T] table (8,836 tiles of a 12,000 px image: +1.8 GiB)
        touching = ((torch.min(g[:, 2:], g[t, 2:]) - torch.max(g[:, :2], g[t, :2])) > 0).all(1)
        touching[t] = False
        near = touching.nonzero().squeeze(1)
        cand = (torch.isin(tile_index, near) | (tile_index < 0)).nonzero().squeeze(1)
        if not len(cand):
            continue
        f, w = boxes[frag], boxes[cand]  # [F, 4], [C, 4]
        inter = (torch.min(f[:, None, 2:], w[None, :, 2:]) - torch.max(f[:, None, :2], w[None, :, :2])).clamp(min=0).prod(2)
        larger = area[None, cand] > area[frag, None]
        same = labels[frag, None] == labels[None, cand]
        covered = ((inter >= contain * area[frag, None].clamp(min=1e-6)) & larger & same).any(dim=1)
        keep[frag[covered]] = False
    idx = keep.nonzero().squeeze(1)
    kept = batched_nms(boxes[idx], scores[idx], labels[idx], iou_thresh)  # sorted by score
    return idx[kept[:max_det]]


def detect_tiled(run: Callable[[list[Tensor]], list[tuple[Tensor, Tensor, Tensor]]], image: Tensor, tile: int,
                 overlap: float, batch_size: int, iou_thresh: float, max_det: int,
                 on_tiles: Callable[[int, int], None] | None = None,
                 extra: tuple[Tensor, Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Detections of one large image, tile by tile.

    Args:
        run: detects on a list of ``[3, tile, tile]`` uint8 tiles; returns per tile ``(boxes [k, 4]
            in tile pixels, scores [k], labels [k])``.
        image: ``[3, H, W]`` uint8 (stays uint8: only one batch of tiles is converted at a time).
        tile, overlap: ``tile_grid``. batch_size: tiles per ``run`` call.
        iou_thresh, max_det: of ``merge_tiles``.
        on_tiles: called after each batch with (tiles done, tiles in all) for progress.
        extra: more detections in image pixels (a whole-image pass for large objects), merged as
            whole (never fragments).
    Returns:
        ``(boxes [D, 4] image pixels, scores [D], labels [D])``, best first, ``D <= max_det``.
    """
    H, W = int(image.shape[-2]), int(image.shape[-1])
    grid = tile_grid((H, W), tile, overlap)
    inner = inner_edges(grid, (H, W))
    shape = (min(tile, H), min(tile, W))  # every window's: a side shorter than the tile is not padded to it
    parts: list[tuple[Tensor, ...]] = []
    for start in range(0, len(grid), batch_size):
        windows = grid[start:start + batch_size]
        results = run([crop_tile(image, w, shape) for w in windows])
        # the batch's detections at once: tile index of each, boxes cut to the tile (padding off), shifted to image pixels
        index = torch.arange(start, start + len(windows)).repeat_interleave(torch.tensor([len(r[0]) for r in results]))
        b, s, lab = (torch.cat([r[i] for r in results]).cpu() for i in range(3))
        w = grid[index].to(torch.float32)
        b = torch.minimum(b.float(), (w[:, 2:] - w[:, :2]).repeat(1, 2)) + w[:, :2].repeat(1, 2)
        ok = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
        b, s, lab, index = b[ok], s.float()[ok], lab[ok], index[ok]
        parts.append((b, s, lab, index, fragments(b, grid[index], inner[index])))
        if on_tiles is not None:
            on_tiles(min(start + batch_size, len(grid)), len(grid))
    if extra is not None:
        b, s, lab = (x.cpu() for x in extra)
        parts.append((b.float(), s.float(), lab, torch.full_like(lab, -1), torch.zeros(len(lab), dtype=torch.bool)))
    boxes, scores, labels, tiles, frag = (torch.cat(x) for x in zip(*parts))
    keep = merge_tiles(boxes, scores, labels, tiles, frag, grid, iou_thresh, max_det)
    return boxes[keep], scores[keep], labels[keep]


@dataclass(frozen=True)
class TileOptions:
    """Tiled prediction (``predict``/``eval`` ``--tile``, ``Detector.predict(tile=...)``).

    Attributes:
        tile: tile side in original pixels; None = the model's input size (``min_size``, for a
            crop-trained model its crop side).
        overlap: share of a tile that neighbours overlap at least (0 <= overlap < 1).
        batch_size: tiles per forward pass (memory is bounded by this batch, whatever the image).
        whole_image: also run the whole image resized to the model's input size and merge its
            detections (large objects that no tile holds whole); this pass holds a float copy of
            the image, so its memory grows with the image.
    """

    tile: int | None = None
    overlap: float = 0.2
    batch_size: int = 4
    whole_image: bool = False

    def resolved(self, model_input: int) -> TileOptions:
        """These options with ``tile`` set (``model_input`` when None), checked.

        Raises:
            RetinaNetError: a tile under 32 px, an overlap outside 0..0.9, a batch under 1.
        """
        tile = model_input if self.tile is None else int(self.tile)
        if tile < 32:
            raise RetinaNetError(f"tile {tile}: a tile side is at least 32 px")
        if not 0 <= self.overlap <= 0.9:
            raise RetinaNetError(f"--tile-overlap {self.overlap}: an overlap is a share of the tile, 0 to 0.9")
        if self.batch_size < 1:
            raise RetinaNetError(f"tile batch size must be at least 1, not {self.batch_size}")
        return TileOptions(tile, float(self.overlap), int(self.batch_size), bool(self.whole_image))

    def describe(self) -> str:
        whole = ", plus one whole-image pass" if self.whole_image else ""
        cut = (" (overlap 0: no tile holds an object on a tile edge whole, so it comes out as its pieces)"
               if self.overlap == 0 else "")
        return (f"tiles of {self.tile} px at native resolution, overlap {self.overlap:g}{cut}, {self.batch_size} per "
                f"batch, fragments at inner tile edges merged into whole boxes, class-wise NMS{whole}")


def trained_tiling(crop: int | None, model_input: int, batch_size: int = 4) -> TileOptions | None:
    """How a model trained on ``crop`` px crops (``train --crop``; None: not crop-trained) sees an
    image, as each evaluation during its training did (``engine.train.setup.val_tiling``): resolved
    ``TileOptions`` of the crop side at native resolution, the default overlap, ``batch_size`` tiles
    a pass. None (whole images resized to the input size) for a model trained on whole images, and
    for one whose input size ``model_input`` was set to another than its crop side (``--min-size``:
    a request to resize whole images). What ``predict``/``eval`` without ``--tile``/``--no-tile`` and
    ``Detector.predict(tile=None)`` do."""
    return TileOptions(batch_size=batch_size).resolved(crop) if crop and model_input == crop else None


def count_tiles(hw: tuple[int, int], tile: int, overlap: float) -> int:
    """Number of tiles ``tile_grid`` makes for an image of ``hw``."""
    return len(tile_starts(hw[0], tile, overlap)) * len(tile_starts(hw[1], tile, overlap))


class TiledDetections(NamedTuple):
    """``detect_tiled_model``'s result: detections in image pixels (CPU, best first); how many
    tiles (and whole-image passes) reached the per-tile cap (detections beyond it were cut) and
    the highest score of the last detection such a tile kept (those cut scored at most this; 0
    when none); how many had candidates left out by a level's top-k while below the cap, and the
    highest score those stayed at or below (``RetinaNet.detect``'s ``candidates_cut``; 0 when none)."""

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    tiles_at_cap: int
    at_cap_score: float = 0.0
    tiles_candidates_cut: int = 0
    candidates_cut_score: float = 0.0


def detect_with_cuts(model: torch.nn.Module, images: list[Tensor], **kwargs) -> tuple[list[dict[str, Tensor]], list[float]]:
    """``model.detect(images, **kwargs)`` of a ``RetinaNet`` as ``(detections, candidates_cut)``; a
    stand-in model without ``detect``: ``model(images, **kwargs)`` and no cut."""
    detect = getattr(model, "detect", None)
    if detect is None:
        outs = model(images, **kwargs)
        return outs, [0.0] * len(outs)
    return tuple(detect(images, **kwargs))  # type: ignore[return-value]


def cut_counts(outs: list[dict[str, Tensor]], cuts: list[float], cap: int) -> tuple[int, list[Tensor], int, float]:
    """Of a batch of the model's outputs and ``candidates_cut``: the images at ``cap`` detections,
    the last score each kept (``[1]`` tensors on the model's device: read later, with the rest),
    and the images whose candidates were cut, with the highest score at which they were."""
    full = [o["scores"][-1:] for o in outs if len(o["scores"]) >= cap]
    return len(full), full, sum(c > 0 for c in cuts), max(cuts, default=0.0)


def detect_tiled_model(model: torch.nn.Module, image: Tensor, opts: TileOptions, score_thresh: float,
                       on_tiles: Callable[[int, int], None] | None = None, max_dets: int | None = None) -> TiledDetections:
    """``detect_tiled`` with a ``RetinaNet`` (in eval mode; the caller sets autocast / inference mode).

    Args:
        image: ``[3, H, W]`` uint8, original pixels. opts: resolved ``TileOptions``.
        score_thresh: the model's threshold for these calls.
        max_dets: detections kept per tile, best first (None: the model's ``detections_per_img``).
    Returns:
        ``TiledDetections``: ``boxes [D, 4]`` image pixels, ``scores [D]``, ``labels [D]``, best
        first, NMS with the model's ``nms_thresh``, at most ``max_dets`` from each tile; the
        tiles that reached ``max_dets`` and those whose candidates a level's top-k cut.
    """
    device = next(model.parameters()).device
    c = model.config
    cap = c.detections_per_img if max_dets is None else int(max_dets)
    tiles = {"at_cap": 0, "cut": 0, "cut_score": 0.0}  # tiles at the cap, tiles a level's top-k cut, its highest score
    last_kept: list[Tensor] = []  # the last score each tile at the cap kept, read once at the end

    def count(outs: list[dict[str, Tensor]], cuts: list[float]) -> None:
        n_full, full, n_cut, cut_score = cut_counts(outs, cuts, cap)
        tiles["at_cap"] += n_full
        tiles["cut"] += n_cut
        tiles["cut_score"] = max(tiles["cut_score"], cut_score)
        last_kept.extend(full)

    def run(batch: list[Tensor]) -> list[tuple[Tensor, Tensor, Tensor]]:
        outs, cuts = detect_with_cuts(model, [t.to(device, non_blocking=True) for t in batch], score_thresh=score_thresh,
                                      resize=False, max_dets=cap)
        count(outs, cuts)
        return [(o["boxes"], o["scores"], o["labels"]) for o in outs]

    extra = None
    if opts.whole_image:
        small = resize_image(image, c.min_size, c.max_size)
        outs, cuts = detect_with_cuts(model, [small.to(device)], score_thresh=score_thresh, max_dets=cap)
        count(outs, cuts)
        out = outs[0]
        scale = torch.tensor([image.shape[-1] / small.shape[-1], image.shape[-2] / small.shape[-2]] * 2)
        extra = (out["boxes"].float().cpu() * scale, out["scores"].float().cpu(), out["labels"].cpu())
    n = count_tiles((int(image.shape[-2]), int(image.shape[-1])), opts.tile, opts.overlap) + opts.whole_image
    boxes, scores, labels = detect_tiled(run, image, opts.tile, opts.overlap, opts.batch_size, c.nms_thresh,
                                         max_det=n * cap, on_tiles=on_tiles, extra=extra)
    cap_score = float(torch.cat(last_kept).float().max()) if last_kept else 0.0  # one read for the whole image
    return TiledDetections(boxes, scores, labels, tiles["at_cap"], cap_score, tiles["cut"], tiles["cut_score"])
