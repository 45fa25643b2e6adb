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
  class-wise NMS over everything, best ``max_det`` kept (equal scores by index). Both steps find
  the boxes that can meet tile by tile (a box in its tile's window meets only boxes of its tile
  and of the tiles whose windows it reaches, the overlap strips, and the whole-image pass), so
  the merge's time grows with the detections, not their square: the same boxes as one NMS over
  all of them (79,438 detections of a 12,000 px image: 31.8 s before, 0.34 s after on a 2-core
  Intel Xeon, one thread; BENCHMARKS.md, ``bench_tiles.py merge``).

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
from torchvision.ops import batched_nms, nms

from retinanet.errors import RetinaNetError
from retinanet.geometry import resize_image

# A box within this many pixels of an inner tile edge touches it. It is the error of a detector's
# box edge where a tile cut the object that the merge tolerates: a box stopping further short of the
# edge is no fragment, and the piece stays beside the whole box when their IoU is under NMS's (a
# duplicate at the seam). The stand-in detector of the merge's tests and benchmarks moves each edge
# by up to 3 px, so 3 px; at 2 px the pieces ending 2.25-3 px short stayed (benchmarks/bench_seams.py,
# 20,000 objects of 12-48 px in 320 px tiles at overlap 0.2: 1,873 duplicates and fragments left at
# 2 px, 1,149 at 3 px; BENCHMARKS.md "Tile seams"). Not more: every pixel more also marks whole
# objects that end that near an edge, and a fragment inside a larger box of its class from a
# neighbouring tile (another object's) is dropped, so losses grow with the margin where objects
# exceed the overlap (160 px tiles at overlap 0.2: 105, 125, 141 lost at 2, 3, 4 px), with no
# fewer duplicates unless the detector errs by more.
EDGE_MARGIN = 3.0
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


# pairs tested at once by the merge's joins: a few int64/float tensors of this length. 2^22 held
# +461 MiB merging a near-untrained model's 78,400 detections (784 tiles x 100); 2^16 +30 MiB, as fast
# (benchmarks/bench_merge_memory.py, BENCHMARKS.md)
PAIR_CHUNK = 1 << 16
TABLE_CELLS = 1 << 22  # cells of a boolean table (tiles x tiles, boxes x tiles) built at once


def _spans(counts: Tensor) -> tuple[Tensor, Tensor]:
    """For groups of ``counts[i]`` items each, laid end to end: the group of each item and its
    position in the group."""
    group = torch.repeat_interleave(torch.arange(len(counts), device=counts.device), counts)
    start = torch.cumsum(counts, 0) - counts
    return group, torch.arange(len(group), device=counts.device) - start[group]


def _chunks(counts: Tensor, limit: int = PAIR_CHUNK):
    """Slices ``a:b`` of ``counts`` whose sums stay under ``limit`` (one entry at least)."""
    ends = torch.cumsum(counts, 0)
    a = 0
    while a < len(counts):
        before = int(ends[a - 1]) if a else 0
        b = max(a + 1, int(torch.searchsorted(ends, before + limit, right=True)))
        yield a, b
        a = b


def _join(query_keys: Tensor, sorted_keys: Tensor, order: Tensor, limit: int = PAIR_CHUNK):
    """Every ``(query q, item i)`` with ``query_keys[q]`` equal to item ``i``'s key, in chunks of at
    most ``limit`` pairs: yields ``(q [P], i [P])``. ``sorted_keys``: the items' keys sorted,
    ``order``: the items in that order."""
    lo = torch.searchsorted(sorted_keys, query_keys)
    counts = torch.searchsorted(sorted_keys, query_keys, right=True) - lo
    for a, b in _chunks(counts, limit):
        q, pos = _spans(counts[a:b])
        q = q + a
        yield q, order[lo[q] + pos]


def _overlap(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise (elementwise, broadcast) boxes ``[..., 4]`` sharing a positive area."""
    return ((torch.min(a[..., 2:], b[..., 2:]) - torch.max(a[..., :2], b[..., :2])) > 0).all(-1)


def touching_tiles(grid: Tensor) -> tuple[Tensor, Tensor]:
    """``(t [P], u [P])``: every pair of distinct tiles whose windows share a positive area, by ``t``.

    A grid of rows x columns (``tile_grid``'s) is read through its columns and rows (``[nx, nx]``
    and ``[ny, ny]`` tables); any other list of windows in ``[chunk, T]`` rows of the tile table.
    """
    T = len(grid)
    cols, ci = torch.unique(grid[:, 0::2], dim=0, return_inverse=True)  # [nx, 2] (x0, x1)
    rows, ri = torch.unique(grid[:, 1::2], dim=0, return_inverse=True)
    nx, ny = len(cols), len(rows)
    if nx * ny == T and len(torch.unique(ri * nx + ci)) == T and nx * nx + ny * ny <= TABLE_CELLS:
        at = torch.empty(ny, nx, dtype=torch.int64, device=grid.device)
        at[ri, ci] = torch.arange(T, device=grid.device)

        def near(iv: Tensor) -> tuple[Tensor, Tensor, Tensor]:  # per interval: its overlapping ones (itself too)
            ov = (torch.min(iv[:, None, 1], iv[None, :, 1]) - torch.max(iv[:, None, 0], iv[None, :, 0])) > 0
            n = ov.sum(1)
            return ov.nonzero()[:, 1], torch.cumsum(n, 0) - n, n

        cl, cs, cn = near(cols)
        rl, rs, rn = near(rows)
        t, p = _spans(rn[ri] * cn[ci])
        w = cn[ci[t]]
        u = at[rl[rs[ri[t]] + p // w], cl[cs[ci[t]] + p % w]]
        other = u != t
        return t[other], u[other]
    ts, us = [], []
    step = max(1, TABLE_CELLS // max(T, 1))
    for a in range(0, T, step):
        ov = _overlap(grid[a:a + step, None], grid[None])
        ov[torch.arange(len(ov)), torch.arange(a, a + len(ov))] = False
        t, u = ov.nonzero().unbind(1)
        ts.append(t + a)
        us.append(u)
    return torch.cat(ts), torch.cat(us)


def _classwise_nms(boxes: Tensor, scores: Tensor, labels: Tensor, iou_thresh: float) -> Tensor:
    """Kept indices (ascending) of ``torchvision.ops.nms`` run class by class on the boxes as they
    are: what ``batched_nms`` runs for more than 1,000 boxes on the CPU (``_batched_nms_vanilla``)."""
    keep = torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device)
    for c in torch.unique(labels):
        at = (labels == c).nonzero().squeeze(1)
        keep[at[nms(boxes[at], scores[at], iou_thresh)]] = True
    return keep.nonzero().squeeze(1)


def _in_window(boxes: Tensor, tile_index: Tensor, g: Tensor) -> Tensor:
    """``[K]`` bool: boxes of a tile lying in its window ``g[tile_index]`` (edges included)."""
    ti = tile_index.clamp(min=0)
    return (tile_index >= 0) & (boxes[:, :2] >= g[ti, :2]).all(1) & (boxes[:, 2:] <= g[ti, 2:]).all(1)


def _by_tile_and_class(keys: Tensor, items: Tensor) -> tuple[Tensor, Tensor]:
    """``items`` sorted by their ``keys`` (tile * classes + class): ``(sorted keys, items)`` for ``_join``."""
    order = torch.argsort(keys, stable=True)
    return keys[order], items[order]


def _box_tile_pairs(boxes: Tensor, box_ids: Tensor, tiles: Tensor, near: tuple[Tensor, Tensor], g: Tensor,
                    reach: Tensor):
    """Chunks ``(b [P], u [P])``: each box of ``box_ids`` with each tile ``near`` its tile ``tiles``
    (``near``: ``(t, u)`` pairs sorted by ``t``), where the box shares area with ``u``'s window or
    ``reach[u]`` (a tile with boxes out of its window)."""
    T = len(g)
    deg = torch.bincount(near[0], minlength=T)
    start = torch.cumsum(deg, 0) - deg
    counts = deg[tiles]
    for a, z in _chunks(counts):
        q, p = _spans(counts[a:z])
        b = box_ids[a:z][q]
        u = near[1][start[tiles[a:z][q]] + p]
        m = reach[u] | _overlap(boxes[b], g[u])
        yield b[m], u[m]


def _covered_fragments(boxes: Tensor, lab: Tensor, tile_index: Tensor, fragment: Tensor, grid: Tensor,
                       near: tuple[Tensor, Tensor], contain: float) -> Tensor:
    """``[K]`` bool: the fragments (of a tile, ``tile_index >= 0``) with ``contain`` of their area
    inside a larger box of their class (``lab``: classes as 0..L-1) of a tile overlapping theirs
    (``near``: ``touching_tiles``) or of the whole-image pass. All fragments at once, each against
    the boxes of its class in the tiles next to its own (found by sorting boxes by tile and class)
    and the whole-image boxes of its class; a box in its window can only hold a share of a
    fragment that reaches into that window, so only such pairs are compared."""
    covered = torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device)
    f = (fragment & (tile_index >= 0)).nonzero().squeeze(1)
    if not len(f):
        return covered
    T, g = len(grid), grid.to(boxes.dtype)
    L = int(lab.max()) + 1
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    need = contain * area.clamp(min=1e-6)

    def test(ff: Tensor, c: Tensor) -> None:
        inter = (torch.min(boxes[ff, 2:], boxes[c, 2:]) - torch.max(boxes[ff, :2], boxes[c, :2])).clamp(min=0).prod(1)
        covered[ff[(inter >= need[ff]) & (area[c] > area[ff])]] = True

    inside = _in_window(boxes, tile_index, g)
    anywhere = contain <= 0  # a share of 0: boxes sharing no area hold it
    reach = torch.bincount(tile_index[(tile_index >= 0) & ~inside], minlength=T) > 0
    tb = (tile_index >= 0).nonzero().squeeze(1)
    skey, sb = _by_tile_and_class(tile_index[tb] * L + lab[tb], tb)
    for ff, u in _box_tile_pairs(boxes, f, tile_index[f], near, g, reach | anywhere):
        for r, c in _join(u * L + lab[ff], skey, sb):
            test(ff[r], c)
    whole = (tile_index < 0).nonzero().squeeze(1)
    if not len(whole):
        return covered
    # whole-image boxes: with the fragments in the windows they share area with; out of their window, all
    wide = f if anywhere else f[~inside[f]]
    wkey, wb = _by_tile_and_class(lab[whole], whole)
    for r, c in _join(lab[wide], wkey, wb):
        test(wide[r], c)
    if not anywhere:
        fi = f[inside[f]]
        fkey, fb = _by_tile_and_class(tile_index[fi] * L + lab[fi], fi)
        step = max(1, TABLE_CELLS // max(T, 1))
        for a in range(0, len(whole), step):
            w = whole[a:a + step]
            wi, t = _overlap(boxes[w, None], g[None]).nonzero().unbind(1)
            for r, ff in _join(t * L + lab[w[wi]], fkey, fb):
                test(ff, w[wi[r]])
    return covered


def _iou_above(boxes: Tensor, i: Tensor, j: Tensor, iou_thresh: float) -> Tensor:
    """``[P]`` bool: pairs ``(i, j)`` that ``torchvision.ops.nms`` (CPU kernel) finds above
    ``iou_thresh``: its IoU, op by op in the boxes' dtype, compared in float64 as it does."""
    a, b = boxes[i], boxes[j]
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    w = (torch.min(a[:, 2:], b[:, 2:]) - torch.max(a[:, :2], b[:, :2])).clamp(min=0)
    inter = w[:, 0] * w[:, 1]
    return (inter / (area_a + area_b - inter)).double() > iou_thresh


def _overlapping_pairs(boxes: Tensor, lab: Tensor, tile_index: Tensor, grid: Tensor, near: tuple[Tensor, Tensor],
                       kept: Tensor, iou_thresh: float) -> tuple[Tensor, Tensor]:
    """``(i [E], j [E])``, ``i < j``: every pair of ``kept`` boxes of one class that NMS at
    ``iou_thresh`` (>= 0) would let suppress one another, without comparing all with all.

    A box lying in its tile's window can overlap only boxes of its own tile and of the tiles whose
    windows share area with it (``near``), and boxes of no tile's window: the whole-image pass
    and boxes out of their window ("free"), compared with the boxes of the tiles whose windows
    they share area with and with one another. Pairs of boxes sharing no area have IoU 0.
    """
    dev, T = boxes.device, len(grid)
    g = grid.to(boxes.dtype)
    inside = kept & _in_window(boxes, tile_index, g)
    free = (kept & ~inside).nonzero().squeeze(1)
    b = inside.nonzero().squeeze(1)
    L = int(lab.max()) + 1
    skey, sb = _by_tile_and_class(tile_index[b] * L + lab[b], b)
    out_i, out_j = [], []

    def test(i: Tensor, j: Tensor) -> None:
        first, second = torch.min(i, j), torch.max(i, j)
        m = i != j
        first, second = first[m], second[m]
        hit = _iou_above(boxes, first, second, iou_thresh)
        out_i.append(first[hit])
        out_j.append(second[hit])

    # boxes in windows: with those of their class in their own tile and in the tiles next to it whose windows they reach
    own = (torch.arange(T, device=dev), torch.arange(T, device=dev))
    t, u = torch.cat([near[0], own[0]]), torch.cat([near[1], own[1]])
    o = torch.argsort(t, stable=True)
    no_reach = torch.zeros(T, dtype=torch.bool, device=dev)  # boxes out of their window are free boxes here
    for bq, uq in _box_tile_pairs(boxes, b, tile_index[b], (t[o], u[o]), g, no_reach):
        for r, c in _join(uq * L + lab[bq], skey, sb):
            keep = bq[r] < c  # each pair once
            test(bq[r][keep], c[keep])
    # free boxes: with the boxes of their class in the windows they share area with, and one another
    step = max(1, TABLE_CELLS // max(T, len(free), 1))
    for a in range(0, len(free), step):
        f = free[a:a + step]
        fi, tt = _overlap(boxes[f, None], g[None]).nonzero().unbind(1)
        for r, c in _join(tt * L + lab[f[fi]], skey, sb):
            test(f[fi[r]], c)
        fi, fj = (_overlap(boxes[f, None], boxes[None, free]) & (lab[f, None] == lab[None, free])).nonzero().unbind(1)
        keep = f[fi] < free[fj]
        test(f[fi][keep], free[fj][keep])
    return torch.cat(out_i), torch.cat(out_j)


def _greedy_nms(boxes: Tensor, scores: Tensor, labels: Tensor, kept: Tensor, i: Tensor, j: Tensor,
                iou_thresh: float, rounds: int = 64) -> Tensor:
    """``[K]`` bool: what greedy NMS keeps of the ``kept`` boxes whose suppressing pairs are
    ``(i, j)``: boxes in order of score, equal scores by index (``nms``'s order), each kept unless
    a kept box before it pairs with it. Decided in rounds over the pairs (a box is kept once every
    box before it that pairs with it is suppressed, suppressed once one is kept); what ``rounds``
    leave undecided (chains of overlapping boxes) goes through ``_classwise_nms``: boxes left
    undecided have no kept box before them, so NMS over them alone decides them as over all."""
    rank = torch.empty(len(scores), dtype=torch.int64, device=scores.device)
    rank[torch.sort(scores, descending=True, stable=True).indices] = torch.arange(len(scores), device=scores.device)
    src, dst = torch.where(rank[i] < rank[j], i, j), torch.where(rank[i] < rank[j], j, i)  # src comes first
    state = torch.where(kept, 0, 2)  # 0 undecided, 1 kept, 2 suppressed (or not a candidate)

    def suppress() -> None:
        hit = torch.zeros_like(kept)
        hit[dst[state[src] == 1]] = True
        state[hit & (state == 0)] = 2

    for _ in range(rounds):
        live = (state[src] == 0) & (state[dst] == 0)  # what is left to decide
        src, dst = src[live], dst[live]
        blocked = torch.zeros_like(kept)
        blocked[dst] = True
        state[(state == 0) & ~blocked] = 1  # every box before it suppressed
        suppress()
        if not bool((state == 0).any()):
            break
    else:
        rest = (state == 0).nonzero().squeeze(1)
        state[rest] = 2
        state[rest[_classwise_nms(boxes[rest], scores[rest], labels[rest], iou_thresh)]] = 1
    return state == 1


PAIRS_ABOVE = 1000  # kept boxes above which the merge finds the pairs NMS decides on (below: one batched_nms)


def merge_tiles(boxes: Tensor, scores: Tensor, labels: Tensor, tile_index: Tensor, fragment: Tensor, grid: Tensor,
                iou_thresh: float, max_det: int, contain: float = FRAGMENT_IOF) -> Tensor:
    """Indices of the detections kept, best score first, equal scores by index (see the module docstring).

    Args:
        boxes: ``[K, 4]`` xyxy image pixels, from all tiles. scores: ``[K]``. labels: ``[K]``.
        tile_index: ``[K]`` the tile each came from (-1: a whole-image pass, never a fragment).
        fragment: ``[K]`` bool (``fragments``; ignored for the whole-image pass). grid: ``[T, 4]``
            the tile windows (``tile_grid``).
        iou_thresh: class-wise NMS threshold. max_det: detections kept at most.
        contain: a fragment with this share of its area inside a larger same-class box of an
            overlapping tile (or of the whole-image pass) is dropped.

    The result is class-wise NMS (``batched_nms``) over the boxes left by the fragment rule, in
    time near linear in the boxes (no comparison of all with all, no loop over tiles):

    - the containment test pairs each fragment with the boxes of its class in the tiles next to
      its own (``touching_tiles``) and the whole-image pass, all fragments at once;
    - above ``PAIRS_ABOVE`` boxes, the pairs that NMS would let suppress one another are found the
      same way (``_overlapping_pairs``: a box in its tile's window can only overlap boxes of its
      tile and of the tiles next to it) and greedy NMS runs over those pairs (``_greedy_nms``).
      A box of one tile's window alone, which the model's NMS already cleared, pairs with
      nothing and is kept. The IoU is ``nms``'s CPU kernel's, op by op, and ties go by index as
      in its stable sort, so the boxes kept are those ``batched_nms`` keeps (over 1,000 boxes on
      the CPU it runs ``nms`` class by class on the boxes as they are; ``detect_tiled`` merges on
      the CPU. On CUDA, up to 25,000 boxes, ``batched_nms`` shifts each class's boxes apart
      first, which can round an IoU at the threshold the other way).

    Boxes of equal score come by index (``batched_nms`` over 1,000 boxes sorted its result with
    an unstable sort, so ``max_det`` cut among equal scores by chance).
    """
    T = len(grid)
    lab = torch.unique(labels, return_inverse=True)[1]  # classes as 0..L-1: keys of (tile, class)
    empty = torch.zeros(0, dtype=torch.int64, device=boxes.device)
    near = touching_tiles(grid.to(boxes.device)) if T else (empty, empty)
    keep = ~_covered_fragments(boxes, lab, tile_index, fragment, grid.to(boxes.device), near, contain)
    if int(keep.sum()) <= PAIRS_ABOVE or not iou_thresh >= 0:
        idx = keep.nonzero().squeeze(1)
        kept = idx[batched_nms(boxes[idx], scores[idx], labels[idx], iou_thresh)].sort().values
    else:
        i, j = _overlapping_pairs(boxes, lab, tile_index, grid.to(boxes.device), near, keep, iou_thresh)
        kept = _greedy_nms(boxes, scores, labels, keep, i, j, iou_thresh).nonzero().squeeze(1)
    order = torch.sort(scores[kept], descending=True, stable=True).indices  # equal scores: by index
    return kept[order[:max_det]]


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
