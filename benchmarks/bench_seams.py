"""Tile seams: does the tile merge leave duplicates or lose objects where tiles meet? An oracle test.

    python benchmarks/bench_seams.py                          # the default sweep (a few minutes, one thread)
    python benchmarks/bench_seams.py --tiles 320 --overlaps 0.2 --margins 0 2 4 8 --contains 0.5 0.7 --cut 0 5

A scene of known objects (ground truth, GT) on a ``--size`` px image: ``--small`` objects of 12..48
px a side and ``--large`` of 100..300 px (larger than many overlaps, some larger than a tile), 3
classes, placed at random (``--seed``). For each tile of ``tile_grid(size, tile, overlap)`` a
stand-in detector sees the visible part of each object (at least 2 x 2 px of it) clipped to the
window, as a model would on that tile:

- each edge of the object's view is moved by a random 0..3 px (jitter, 1/4 px steps);
- an edge that the tile cut (the object goes on beyond the window) is placed by ``--cut``: ``0``
  the same jitter; ``C`` > 0 a random -C..+C px from the cut edge (a detector's box of a cut
  object overshoots or undershoots where the image ends);
- the box is clipped to the tile (the model's ``clip_boxes``: an overshoot lands on the edge);
- random scores (0.05..0.99), the tile's own class-wise NMS at 0.5 in tile pixels;
- then ``detect_tiled``'s path: shifted to image pixels, ``fragments`` marked with the margin
  under test, ``merge_tiles`` (NMS 0.5) with the containment share under test.

``--whole on`` adds a whole-image pass: each object of 64 px or more (what a resized image still
shows) once, its edges moved by 0..6 px, random scores, its own NMS.

Counted against the GT, per object size (small, large): ``lost``: a GT object with no kept box of
its class at IoU >= 0.5; ``dup``: a GT object with 2+ such boxes (counted once per extra box);
``frag``: a kept box at IoU < 0.5 with every GT of its class that overlaps a matched GT of its
class (a fragment left beside the object's box). ``whole`` is the same scene detected without tiles
(every object's box with the same jitter, one NMS): what NMS alone does to objects that overlap
(same-class objects at IoU > 0.5 are one box); the tiled counts above it are the seams'. In
brackets, the oracle's causes of the extra boxes (it knows each box's object): views a tile cut
(fragments the merge kept) + whole views (two of one object, their jitter under NMS's IoU).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch
from torchvision.ops import batched_nms, box_iou

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from retinanet.model.tiling import EDGE_MARGIN, FRAGMENT_IOF, fragments, inner_edges, merge_tiles, tile_grid  # noqa: E402

CLASSES = 3
NMS = 0.5
WHOLE_MIN = 64  # the whole-image pass shows objects of this side and more


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=8000, help="image side, px [8000]")
    p.add_argument("--small", type=int, default=20_000, help="objects of 12..48 px [20000]")
    p.add_argument("--large", type=int, default=300, help="objects of 100..300 px [300]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tiles", type=int, nargs="+", default=[160, 320, 800])
    p.add_argument("--overlaps", type=float, nargs="+", default=[0.1, 0.2, 0.3])
    p.add_argument("--margins", type=float, nargs="+", default=[0, 2, 3, 4, 8])
    p.add_argument("--contains", type=float, nargs="+", default=[FRAGMENT_IOF])
    p.add_argument("--cut", type=float, nargs="+", default=[0, 5],
                   help="how a cut edge is placed: 0 = jittered as the others, C = -C..+C px from the tile edge")
    p.add_argument("--whole", nargs="+", choices=["off", "on"], default=["off"])
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args(argv)


def scene(args) -> tuple[torch.Tensor, torch.Tensor]:
    """GT boxes ``[N, 4]`` (small first, then large) and labels ``[N]``."""
    g = torch.Generator().manual_seed(args.seed)
    wh = torch.cat([torch.rand(args.small, 2, generator=g) * 36 + 12, torch.rand(args.large, 2, generator=g) * 200 + 100])
    xy = torch.rand(len(wh), 2, generator=g) * (args.size - wh)
    return torch.cat([xy, xy + wh], 1), torch.randint(0, CLASSES, (len(wh),), generator=g)


def _steps(g: torch.Generator, shape, px: float) -> torch.Tensor:
    """Uniform -px..+px in 1/4 px steps."""
    q = int(round(px * 4))
    return torch.randint(-q, q + 1, shape, generator=g) / 4


def tiled_detections(g: torch.Generator, gt: torch.Tensor, labels: torch.Tensor, grid: torch.Tensor, *,
                     cut: float = 0.0, min_view: float = 2.0, strict: bool = False, false_pos: int = 0,
                     score_steps: int = 100, score_min: int = 5, iou: float = NMS, per_tile: int | None = None,
                     classes: int = CLASSES):
    """The stand-in tiled detector of the docstring (also ``bench_tiles.py merge``'s and the merge's
    tests'): ``(boxes, scores, labels, tile_index, source, cut_view)``, what ``detect_tiled`` hands
    the merge (image pixels) before ``fragments`` (``mark_fragments``), and the oracle's: the GT
    object each box shows (-1: a false positive) and whether the tile cut it.

    Each tile of ``grid`` sees each object of ``gt`` of which at least (``strict``: more than)
    ``min_view`` x ``min_view`` px show in it, plus ``false_pos`` random boxes of random class; edges jittered 0..3 px (``cut``: see
    the docstring), clipped to the tile, scores ``score_min..score_steps-1`` / ``score_steps``, the
    tile's class-wise NMS at ``iou`` in tile pixels, at most ``per_tile`` kept (the model's cap)."""
    w = grid.float()
    shows = torch.gt if strict else torch.ge
    cols, rows = torch.unique(w[:, 0::2], dim=0), torch.unique(w[:, 1::2], dim=0)
    vis_c = shows(torch.min(gt[:, None, 2], cols[None, :, 1]) - torch.max(gt[:, None, 0], cols[None, :, 0]), min_view)
    vis_r = shows(torch.min(gt[:, None, 3], rows[None, :, 1]) - torch.max(gt[:, None, 1], rows[None, :, 0]), min_view)
    o, r, c = (vis_r[:, :, None] & vis_c[:, None, :]).nonzero().unbind(1)
    t = r * len(cols) + c  # tile_grid is row-major
    win, obj, lab = w[t], gt[o], labels[o]
    view = torch.cat([obj[:, :2].maximum(win[:, :2]), obj[:, 2:].minimum(win[:, 2:])], 1)
    is_cut = torch.cat([obj[:, :2] < win[:, :2], obj[:, 2:] > win[:, 2:]], 1)
    if false_pos:
        ft = torch.arange(len(w)).repeat_interleave(false_pos)
        fw = w[ft]
        p = torch.rand(len(ft), 4, generator=g) * (fw[:, 2:] - fw[:, :2]).repeat(1, 2)
        p = torch.cat([p[:, :2].minimum(p[:, 2:]), p[:, :2].maximum(p[:, 2:])], 1) + fw[:, :2].repeat(1, 2)
        view, t, win = torch.cat([view, p]), torch.cat([t, ft]), torch.cat([win, fw])
        o = torch.cat([o, torch.full((len(ft),), -1)])
        lab = torch.cat([lab, torch.randint(0, classes, (len(ft),), generator=g)])
        is_cut = torch.cat([is_cut, torch.zeros(len(ft), 4, dtype=torch.bool)])
    move = _steps(g, view.shape, 3.0)
    if cut > 0:
        out = _steps(g, view.shape, cut)  # outward: beyond the window
        move = torch.where(is_cut, out * torch.tensor([-1.0, -1.0, 1.0, 1.0]), move)
    side = win[:, 2:] - win[:, :2]
    local = (view + move - win[:, :2].repeat(1, 2)).clamp(min=0).minimum(side.repeat(1, 2))  # the model's clip_boxes
    scores = torch.randint(score_min, score_steps, (len(o),), generator=g).float() / score_steps
    ok = (local[:, 2] > local[:, 0]) & (local[:, 3] > local[:, 1])
    local, scores, o, t, lab = local[ok], scores[ok], o[ok], t[ok], lab[ok]
    cut_view = is_cut[ok].any(1)
    k = batched_nms(local, scores, t * classes + lab, iou)  # each tile's own NMS, by score
    if per_tile is not None:  # the model's cap: each tile's first per_tile by score
        by_tile = torch.sort(t[k], stable=True)
        first = torch.searchsorted(by_tile.values, by_tile.values)
        k = k[by_tile.indices[torch.arange(len(k)) - first < per_tile]]
    k = k.sort().values
    boxes = local[k] + w[t[k], :2].repeat(1, 2)  # detect_tiled's shift
    return boxes, scores[k], lab[k], t[k], o[k], cut_view[k]


def mark_fragments(boxes: torch.Tensor, tiles: torch.Tensor, grid: torch.Tensor, hw, margin: float = EDGE_MARGIN):
    """``detect_tiled``'s ``fragments`` of tiled detections (``tiles`` -1: whole-image boxes, none)."""
    t = tiles.clamp(min=0)
    inner = inner_edges(grid, hw)
    return fragments(boxes, grid[t], inner[t], margin) & (tiles >= 0)


def random_whole(g: torch.Generator, n: int, hw, half=(10, 200), score_steps: int = 100, score_min: int = 5,
                 classes: int = CLASSES, round: bool = False):
    """``n`` boxes of a whole-image pass (tile -1) at random: centres anywhere, half sides
    ``half[0]..half[0]+half[1]`` px, clipped to the image; ``(boxes, scores, labels, tiles)``."""
    H, W = hw
    c = torch.rand(n, 2, generator=g) * torch.tensor([W, H])
    h = torch.rand(n, 2, generator=g) * half[1] + half[0]
    b = torch.cat([(c - h).clamp(min=0), (c + h).minimum(torch.tensor([W, H]))], 1)
    b = b.round() if round else b
    s = torch.randint(score_min, score_steps, (n,), generator=g).float() / score_steps
    return b, s, torch.randint(0, classes, (n,), generator=g), torch.full((n,), -1)


def seam_detections(gt: torch.Tensor, labels: torch.Tensor, size: int, tile: int, overlap: float, cut: float,
                    whole: bool, seed: int):
    """``(boxes, scores, labels, tile_index, source, cut_view, grid)``: ``tiled_detections`` of the
    scene, and with ``whole`` the whole-image pass of the docstring (tile -1)."""
    g = torch.Generator().manual_seed(seed)
    grid = tile_grid((size, size), tile, overlap)
    parts = [tiled_detections(g, gt, labels, grid, cut=cut)]
    if whole:
        big = ((gt[:, 2:] - gt[:, :2]).max(1).values >= WHOLE_MIN).nonzero().squeeze(1)
        b = (gt[big] + _steps(g, (len(big), 4), 6.0)).clamp(0, size)
        s = torch.randint(5, 100, (len(big),), generator=g).float() / 100
        ok = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
        b, s, big = b[ok], s[ok], big[ok]
        kw = batched_nms(b, s, labels[big], NMS)
        parts.append((b[kw], s[kw], labels[big[kw]], torch.full((len(kw),), -1), big[kw],
                      torch.zeros(len(kw), dtype=torch.bool)))
    return (*(torch.cat(x) for x in zip(*parts)), grid)


def untiled(gt: torch.Tensor, labels: torch.Tensor, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The scene detected whole: every object's box with the tiles' jitter, one class-wise NMS."""
    g = torch.Generator().manual_seed(seed)
    b = (gt + _steps(g, gt.shape, 3.0)).clamp(0, size)
    s = torch.randint(5, 100, (len(gt),), generator=g).float() / 100
    k = batched_nms(b, s, labels, NMS)
    return b[k], labels[k]


CELL = 256  # the count's spatial buckets (GT up to 300 px: a box meets the GT of the cells it reaches)


def _cells(boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(item, cell key)``: every cell of a ``CELL`` px grid each box reaches."""
    lo, hi = (boxes[:, :2] // CELL).long(), (boxes[:, 2:] // CELL).long()
    n = hi - lo + 1
    count = n[:, 0] * n[:, 1]
    item = torch.repeat_interleave(torch.arange(len(boxes)), count)
    pos = torch.arange(len(item)) - (torch.cumsum(count, 0) - count)[item]
    cx, cy = lo[item, 0] + pos % n[item, 0], lo[item, 1] + pos // n[item, 0]
    return item, cy * 100_000 + cx


def count(kept: torch.Tensor, kept_labels: torch.Tensor, gt: torch.Tensor, labels: torch.Tensor,
          groups: dict[str, torch.Tensor]) -> dict[str, dict[str, int]]:
    """``{group: {lost, dup, frag}}`` (see the docstring); ``groups``: GT masks (small, large)."""
    ki, kc = _cells(kept)
    gi, gc = _cells(gt)
    order = torch.argsort(gc)
    gc, gi = gc[order], gi[order]
    lo, hi = torch.searchsorted(gc, kc), torch.searchsorted(gc, kc, right=True)
    n = hi - lo
    q = torch.repeat_interleave(torch.arange(len(kc)), n)
    pos = torch.arange(len(q)) - (torch.cumsum(n, 0) - n)[q]
    pair = torch.unique(ki[q] * len(gt) + gi[lo[q] + pos])
    k, j = pair // len(gt), pair % len(gt)
    same = kept_labels[k] == labels[j]
    k, j = k[same], j[same]
    a, b = kept[k], gt[j]
    inter = (torch.min(a[:, 2:], b[:, 2:]) - torch.max(a[:, :2], b[:, :2])).clamp(min=0).prod(1)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    iou = inter / (area(a) + area(b) - inter)
    hit = iou >= 0.5
    per_gt = torch.bincount(j[hit], minlength=len(gt))
    box_hit = torch.bincount(k[hit], minlength=len(kept)) > 0
    matched = per_gt > 0
    left = (~box_hit[k]) & (inter > 0) & matched[j]  # a box matching nothing beside a matched GT
    frag_gt = torch.zeros(len(gt), dtype=torch.long)
    first = torch.full((len(kept),), -1, dtype=torch.long)  # each such box counted once, at its first matched GT
    first.scatter_reduce_(0, k[left], j[left], "amax", include_self=True)
    fk = (first >= 0).nonzero().squeeze(1)
    frag_gt.index_add_(0, first[fk], torch.ones(len(fk), dtype=torch.long))
    return {name: {"lost": int((per_gt[m] == 0).sum()), "dup": int((per_gt[m] - 1).clamp(min=0).sum()),
                   "frag": int(frag_gt[m].sum()), "n": int(m.sum())} for name, m in groups.items()}


def causes(src: torch.Tensor, cut_view: torch.Tensor, n: int, groups: dict[str, torch.Tensor]) -> dict[str, dict[str, int]]:
    """The oracle's view of the kept boxes: per GT group, the extra boxes (beyond one per object)
    that are views a tile cut (``cut``: a fragment the merge kept) and those that are whole views
    (``whole``: two whole views of one object whose jitter left them under NMS's IoU)."""
    total = torch.bincount(src, minlength=n)
    cuts = torch.bincount(src[cut_view], minlength=n)
    extra = (total - 1).clamp(min=0)
    seam = torch.minimum(cuts, extra)
    return {g: {"cut": int(seam[m].sum()), "whole": int((extra - seam)[m].sum())} for g, m in groups.items()}


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    t0 = time.perf_counter()
    gt, labels = scene(args)
    groups = {"small": torch.arange(len(gt)) < args.small, "large": torch.arange(len(gt)) >= args.small}
    print(f"{cpu}, {torch.get_num_threads()} thread(s); {args.size} px image, {args.small} objects of 12-48 px, "
          f"{args.large} of 100-300 px, {CLASSES} classes, seed {args.seed}; defaults: margin {EDGE_MARGIN:g} px, "
          f"containment {FRAGMENT_IOF:g}")
    b, lab = untiled(gt, labels, args.size, args.seed)
    c = count(b, lab, gt, labels, groups)
    print("whole (no tiles, one NMS): " + "; ".join(f"{g} lost {v['lost']} dup {v['dup']} frag {v['frag']} of {v['n']}"
                                                    for g, v in c.items()))
    print("cells: margin/containment: small dup+frag / lost [extra boxes: cut views + whole views], large the same")
    for whole in args.whole:
        for cut in args.cut:
            cut_s = "cut edge jittered 0-3 px" if cut == 0 else f"cut edge -{cut:g}..+{cut:g} px"
            for tile in args.tiles:
                for overlap in args.overlaps:
                    boxes, scores, lab, tiles, src, cut_view, grid = seam_detections(
                        gt, labels, args.size, tile, overlap, cut, whole == "on", args.seed + 1)
                    cells = []
                    for margin in args.margins:
                        frag = mark_fragments(boxes, tiles, grid, (args.size, args.size), margin)
                        for contain in args.contains:
                            keep = merge_tiles(boxes, scores, lab, tiles, frag, grid, NMS, 10 ** 8, contain=contain)
                            c = count(boxes[keep], lab[keep], gt, labels, groups)
                            why = causes(src[keep], cut_view[keep], len(gt), groups)
                            s, lg = c["small"], c["large"]
                            cells.append(f"m{margin:g}/c{contain:g}: {s['dup'] + s['frag']:4d} / {s['lost']:3d} "
                                         f"[{why['small']['cut']}+{why['small']['whole']}], "
                                         f"{lg['dup'] + lg['frag']:3d} / {lg['lost']:3d} [{why['large']['cut']}+{why['large']['whole']}]")
                    print(f"whole {whole:3s} {cut_s:26s} tile {tile:4d} overlap {overlap:.1f} ({len(grid):4d} tiles, "
                          f"{len(boxes):6d} det): " + " | ".join(cells), flush=True)
    print(f"{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
