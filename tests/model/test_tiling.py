"""Tiled detection: the tile grid, shifting to image pixels, padding, and merging at tile borders
(an object cut by a tile edge gives one whole box, not a fragment)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from retinanet.model.tiling import PAD_RGB, crop_tile, detect_tiled, inner_edges, tile_grid, tile_starts


def test_tile_starts_cover_the_side_with_the_overlap():
    assert tile_starts(3000, 800, 0.2) == [0, 550, 1100, 1650, 2200]
    assert tile_starts(800, 800, 0.2) == [0] and tile_starts(500, 800, 0.2) == [0]
    for length, tile, overlap in ((3000, 800, 0.2), (2001, 512, 0.5), (801, 800, 0.0), (5000, 640, 0.25)):
        s = tile_starts(length, tile, overlap)
        assert s[0] == 0 and s[-1] + tile == length
        assert all(a + tile - b >= overlap * tile for a, b in zip(s, s[1:]))  # neighbours overlap enough
    assert tile_starts(1500, 800, 0.2) == [0, 350, 700]  # 800 + 640 < 1500: three
    grid = tile_grid((900, 1400), 800, 0.2)
    assert grid.tolist() == [[0, 0, 800, 800], [600, 0, 1400, 800], [0, 100, 800, 900], [600, 100, 1400, 900]]
    assert inner_edges(grid, (900, 1400)).tolist() == [[False, False, True, True], [True, False, False, True],
                                                        [False, True, True, False], [True, True, False, False]]


def _visible_parts(objects, windows, score=0.9):
    """A stand-in detector: in each tile, the visible part of every object, in tile pixels."""
    out = []
    for w in windows:
        x0, y0, x1, y1 = (float(v) for v in w)
        part = torch.stack([objects[:, 0].clamp(x0, x1), objects[:, 1].clamp(y0, y1),
                            objects[:, 2].clamp(x0, x1), objects[:, 3].clamp(y0, y1)], 1)
        seen = (part[:, 2] - part[:, 0] > 1) & (part[:, 3] - part[:, 1] > 1)
        b = part[seen] - torch.tensor([x0, y0, x0, y0])
        out.append((b, torch.full((len(b),), score), torch.ones(len(b), dtype=torch.int64)))
    return out


def test_objects_cut_by_tile_edges_give_one_whole_box_each():
    H, W, tile = 900, 1400, 800  # tiles at x 0..800 and 600..1400, y 0..800 and 100..900
    objects = torch.tensor([
        [780.0, 300, 820, 340],   # across the first column's right edge (inside the overlap)
        [580.0, 500, 620, 540],   # across the second column's left edge
        [300.0, 780, 340, 830],   # across the first row's bottom edge
        [760.0, 760, 820, 820],   # in all four tiles, cut by an edge in three of them
        [100.0, 30, 140, 70],     # one tile only
        [1300.0, 850, 1350, 899],  # at the image border (not an inner edge)
    ])
    windows_seen = []

    def run(tiles):
        assert all(t.shape == (3, tile, tile) and t.dtype == torch.uint8 for t in tiles)
        return _visible_parts(objects, [windows_seen.pop(0) for _ in tiles])

    windows_seen.extend(tile_grid((H, W), tile, 0.2))
    progress = []
    boxes, scores, labels = detect_tiled(run, torch.zeros(3, H, W, dtype=torch.uint8), tile, 0.2, batch_size=3,
                                         iou_thresh=0.5, max_det=100, on_tiles=lambda d, n: progress.append((d, n)))
    assert progress == [(3, 4), (4, 4)]  # counted in tiles
    order = torch.argsort(boxes[:, 0] * 10000 + boxes[:, 1])
    expected = objects[torch.argsort(objects[:, 0] * 10000 + objects[:, 1])]
    assert torch.equal(boxes[order], expected)  # every object once, whole; no fragment survives


def test_plain_nms_would_keep_fragments():
    # the same scene merged without the fragment rule (margin 0, no inner edges) keeps the cut parts
    from retinanet.model.tiling import merge_tiles

    grid = tile_grid((800, 1400), 800, 0.2)
    objects = torch.tensor([[780.0, 300, 820, 340]])
    parts = _visible_parts(objects, grid)
    boxes = torch.cat([b + w[:2].float().repeat(2) for (b, _, _), w in zip(parts, grid)])
    scores, labels = torch.full((len(boxes),), 0.9), torch.ones(len(boxes), dtype=torch.int64)
    tiles = torch.cat([torch.full((len(b),), i) for i, (b, _, _) in enumerate(parts)])
    assert len(boxes) == 2  # [780, 820] whole in the second tile, [780, 800] a fragment in the first
    no_rule = merge_tiles(boxes, scores, labels, tiles, torch.zeros(2, dtype=torch.bool), grid, 0.5, 10)
    assert len(no_rule) == 2  # IoU 0.5, not above the NMS threshold: a plain NMS keeps the fragment
    frag = torch.tensor([True, False])
    assert merge_tiles(boxes, scores, labels, tiles, frag, grid, 0.5, 10).tolist() == [1]


def test_shift_padding_and_the_whole_image_pass():
    # a 300x500 image with an 800 tile: one padded tile; a box reaching into the padding is cut
    image = torch.randint(0, 255, (3, 300, 500), dtype=torch.uint8)
    t = crop_tile(image, torch.tensor([0, 0, 500, 300]), 800)
    assert t.shape == (3, 800, 800) and torch.equal(t[:, :300, :500], image)
    assert (t[:, 300:, :] == torch.tensor(PAD_RGB, dtype=torch.uint8)[:, None, None]).all()

    def run(tiles):
        return [(torch.tensor([[450.0, 250, 600, 400], [10, 10, 30, 30]]), torch.tensor([0.8, 0.7]),
                 torch.tensor([2, 3])) for _ in tiles]

    boxes, _, labels = detect_tiled(run, image, 800, 0.2, 4, 0.5, 100)
    assert boxes.tolist() == [[450.0, 250, 500, 300], [10, 10, 30, 30]] and labels.tolist() == [2, 3]
    # two tiles (0..800, 600..1400 wide): a box returned at tile pixels x 100 lands at 100 and 700
    image = torch.zeros(3, 800, 1400, dtype=torch.uint8)

    def one_box(tiles):
        return [(torch.tensor([[100.0, 10, 130, 40]]), torch.tensor([0.9]), torch.tensor([1])) for _ in tiles]

    boxes, _, _ = detect_tiled(one_box, image, 800, 0.2, 2, 0.5, 100)
    assert sorted(boxes[:, 0].tolist()) == [100.0, 700.0]
    # a large object cut in both tiles: its fragments stay unless a whole-image pass holds it whole
    big = torch.tensor([[400.0, 200, 1100, 600]])
    windows = list(tile_grid((800, 1400), 800, 0.2))

    def run_big(tiles):
        return _visible_parts(big, [windows.pop(0) for _ in tiles])

    boxes, _, _ = detect_tiled(run_big, image, 800, 0.2, 2, 0.5, 100)
    assert len(boxes) == 2  # two fragments (no tile holds it whole)
    windows = list(tile_grid((800, 1400), 800, 0.2))
    whole = (big, torch.tensor([0.6]), torch.tensor([1]))
    boxes, scores, _ = detect_tiled(run_big, image, 800, 0.2, 2, 0.5, 100, extra=whole)
    assert boxes.tolist() == big.tolist() and scores.tolist() == pytest.approx([0.6])


def test_a_side_shorter_than_the_tile_is_not_padded_to_it():
    """--tile 4000 on a 100 x 120 image ran a 4000 px square of padding (4-6x the time, 3x the memory)."""
    shapes = []

    def run(tiles):
        shapes.extend(tuple(t.shape) for t in tiles)
        return [(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64)) for _ in tiles]

    detect_tiled(run, torch.zeros(3, 100, 120, dtype=torch.uint8), 4000, 0.2, 4, 0.5, 100)
    assert shapes == [(3, 100, 120)]
    shapes.clear()
    detect_tiled(run, torch.zeros(3, 100, 1000, dtype=torch.uint8), 400, 0.2, 4, 0.5, 100)
    assert set(shapes) == {(3, 100, 400)} and len(shapes) == 3  # one shape for every window of the image


def test_merging_many_tiles_keeps_memory_to_one_row_of_the_tile_table():
    """8,836 tiles: the [T, T] overlap table took 1.8 GiB; now one [T] row per tile with fragments."""
    from retinanet.model.tiling import fragments, merge_tiles

    grid = tile_grid((12000, 12000), 160, 0.2)
    assert len(grid) > 8000
    boxes = torch.tensor([[140.0, 10, 160, 40], [135.0, 5, 200, 45]])  # at the edge of tile 0, and whole in tile 1
    tiles = torch.tensor([0, 1])
    frag = fragments(boxes, grid[tiles], inner_edges(grid, (12000, 12000))[tiles])
    assert frag.tolist() == [True, False]
    keep = merge_tiles(boxes, torch.tensor([0.9, 0.8]), torch.tensor([1, 1]), tiles, frag, grid, 0.5, 100)
    assert keep.tolist() == [1]  # the fragment inside the larger box of the overlapping tile is dropped


def test_overlap_0_is_said_to_cut_edge_objects():
    from retinanet.model.tiling import TileOptions

    assert "overlap 0: no tile holds an object on a tile edge whole" in TileOptions(tile=64, overlap=0.0).describe()
    assert "no tile holds" not in TileOptions(tile=64).describe()


def _reference_merge(boxes, scores, labels, tile_index, fragment, grid, iou_thresh, max_det, contain=0.7):
    """``merge_tiles`` as it was before the split (bca57b9): a loop over the tiles with fragments, then
    one ``batched_nms`` over everything. The oracle of the equivalence tests."""
    from torchvision.ops import batched_nms

    keep = torch.ones(len(boxes), dtype=torch.bool)
    g = grid.to(boxes.dtype)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    for t in tile_index[fragment].unique().tolist():
        frag = (fragment & (tile_index == t)).nonzero().squeeze(1)
        touching = ((torch.min(g[:, 2:], g[t, 2:]) - torch.max(g[:, :2], g[t, :2])) > 0).all(1)
        touching[t] = False
        near = touching.nonzero().squeeze(1)
        cand = (torch.isin(tile_index, near) | (tile_index < 0)).nonzero().squeeze(1)
        if not len(cand):
            continue
        f, w = boxes[frag], boxes[cand]
        inter = (torch.min(f[:, None, 2:], w[None, :, 2:]) - torch.max(f[:, None, :2], w[None, :, :2])).clamp(min=0).prod(2)
        larger = area[None, cand] > area[frag, None]
        same = labels[frag, None] == labels[None, cand]
        covered = ((inter >= contain * area[frag, None].clamp(min=1e-6)) & larger & same).any(dim=1)
        keep[frag[covered]] = False
    idx = keep.nonzero().squeeze(1)
    kept = batched_nms(boxes[idx], scores[idx], labels[idx], iou_thresh)
    return idx[kept[:max_det]]


def _by_score(kept, scores):
    """Indices by score, equal scores by index: the order ``merge_tiles`` promises."""
    kept = kept.sort().values
    return kept[torch.sort(scores[kept], descending=True, stable=True).indices]


def random_tiled_detections(g: torch.Generator, hw, tile, overlap, objects, iou_thresh=0.5, per_tile=60,
                            classes=3, whole=0, false_pos=2):
    """Detections of a tiled image as ``detect_tiled`` hands them to ``merge_tiles``: objects of
    6..96 px through ``benchmarks/bench_seams.py``'s stand-in tiled detector (per tile, the visible
    part of each object, 0-3 px jitter, and ``false_pos`` false positives, scores in steps of 0.1
    (many equal), the tile's class-wise NMS and its cap), ``whole`` boxes of a whole-image pass
    (tile -1) on top. Returns ``(boxes, scores, labels, tile_index, fragment, grid)``."""
    bench = str(Path(__file__).resolve().parents[2] / "benchmarks")
    sys.path.insert(0, bench)
    try:
        from bench_seams import mark_fragments, random_whole, tiled_detections
    finally:
        sys.path.remove(bench)

    H, W = hw
    grid = tile_grid(hw, tile, overlap)
    size = torch.rand(objects, 2, generator=g) * 90 + 6
    x0 = torch.rand(objects, generator=g) * (W - 4)
    y0 = torch.rand(objects, generator=g) * (H - 4)
    objs = torch.stack([x0, y0, (x0 + size[:, 0]).clamp(max=W), (y0 + size[:, 1]).clamp(max=H)], 1)
    obj_label = torch.randint(0, classes, (objects,), generator=g)
    steps = dict(score_steps=10, score_min=1, classes=classes)
    out = tiled_detections(g, objs, obj_label, grid, min_view=1, strict=True, false_pos=false_pos, iou=iou_thresh,
                           per_tile=per_tile, **steps)[:4]
    if whole:
        out = [torch.cat(x) for x in zip(out, random_whole(g, whole, hw, half=(5, 150), round=True, **steps))]
    boxes, scores, labels, tiles = out
    return boxes, scores, labels, tiles, mark_fragments(boxes, tiles, grid, hw), grid


@pytest.mark.parametrize("split_above", [0, None])
def test_the_merge_keeps_what_one_nms_over_everything_kept(monkeypatch, split_above):
    """The merge decides NMS on the pairs of boxes found tile by tile; random tiled scenes (grids,
    overlaps 0-0.5, equal scores, three classes, with and without a whole-image pass) give the old
    merge's boxes (one ``batched_nms`` over all), by score, equal scores by index.
    ``split_above=0``: small scenes through the pairs; None: scenes over ``PAIRS_ABOVE``, where the
    old ``batched_nms`` ran ``nms`` class by class."""
    import retinanet.model.tiling as tiling

    if split_above is not None:
        monkeypatch.setattr(tiling, "PAIRS_ABOVE", split_above)
    g = torch.Generator().manual_seed(0 if split_above is None else 1)
    scenes = 4 if split_above is None else 40
    for n in range(scenes):
        if split_above is None:
            hw, tile, objects = (1400, 1600), int(torch.randint(128, 260, (1,), generator=g)), 1500
        else:
            hw = tuple(int(v) for v in torch.randint(100, 700, (2,), generator=g))
            tile, objects = int(torch.randint(48, 300, (1,), generator=g)), int(torch.randint(0, 120, (1,), generator=g))
        overlap = [0.0, 0.1, 0.2, 0.5][n % 4]
        iou = [0.5, 0.3, 0.6][n % 3]
        whole = [0, 0, 30][n % 3]
        boxes, scores, labels, tiles, frag, grid = random_tiled_detections(g, hw, tile, overlap, objects, iou,
                                                                           whole=whole)
        ref = _reference_merge(boxes, scores, labels, tiles, frag, grid, iou, 10 ** 6)
        if split_above is None:
            assert len(ref) > tiling.PAIRS_ABOVE
        for max_det in (10 ** 6, len(ref) // 2):
            got = tiling.merge_tiles(boxes, scores, labels, tiles, frag, grid, iou, max_det)
            assert got.tolist() == _by_score(ref, scores)[:max_det].tolist(), (n, hw, tile, overlap, iou, whole)
        if len(ref) <= 1000:  # one batched_nms over <= 1,000 boxes (class offsets, stable): the same order too
            assert got.tolist() == ref[:max_det].tolist()


def test_the_merge_compares_no_box_with_all_others(monkeypatch):
    """80k detections of a 12,000 px image took 31.8 s (a loop over the tiles, one NMS over all): the
    pairs NMS decides on are found tile by tile, and no NMS runs over all the boxes; a chain of
    overlapping boxes longer than the rounds of ``_greedy_nms`` is decided by ``nms`` over the chain."""
    import retinanet.model.tiling as tiling

    seen = []
    nms = tiling.nms
    monkeypatch.setattr(tiling, "nms", lambda b, s, t: seen.append(len(b)) or nms(b, s, t))
    monkeypatch.setattr(tiling, "batched_nms", lambda *a: pytest.fail("batched_nms over all the boxes"))
    g = torch.Generator().manual_seed(2)
    boxes, scores, labels, tiles, frag, grid = random_tiled_detections(g, (1400, 1600), 300, 0.2, 1500)
    assert len(boxes) > 2000
    keep = tiling.merge_tiles(boxes, scores, labels, tiles, frag, grid, 0.5, 10 ** 6)
    assert keep.tolist() == _by_score(_reference_merge(boxes, scores, labels, tiles, frag, grid, 0.5, 10 ** 6),
                                      scores).tolist()
    assert seen == []
    # a chain: each box overlaps the next at IoU 0.6, scores falling along it: every other one kept
    n = 1200
    x = torch.arange(n).float() * 4
    chain = torch.stack([x, torch.zeros(n), x + 16, torch.full((n,), 10.0)], 1)
    one = torch.zeros(n, dtype=torch.int64)
    score = 1 - torch.arange(n).float() / n
    keep = tiling.merge_tiles(chain, score, one, one, one.bool(), tile_grid((10, 4800), 4800, 0.2), 0.5, n)
    assert keep.tolist() == list(range(0, n, 2)) and seen and max(seen) < n  # the rounds decided the chain's start


def test_equal_scores_come_by_index_and_max_det_cuts_them_so():
    """Over 1,000 boxes ``batched_nms`` sorted its result with an unstable sort: boxes of equal
    score came in no set order, and ``max_det`` cut among them by chance."""
    from retinanet.model.tiling import merge_tiles

    grid = tile_grid((400, 400), 400, 0.2)  # one tile
    n = 1600
    xy = torch.stack([torch.arange(n) % 40, torch.arange(n) // 40], 1).float() * 10
    boxes = torch.cat([xy, xy + 5], 1)
    scores = torch.tensor([0.5, 0.7, 0.5, 0.9]).repeat(n // 4)
    zeros = torch.zeros(n, dtype=torch.int64)
    keep = merge_tiles(boxes, scores, zeros, zeros, zeros.bool(), grid, 0.5, 1000)
    expected = torch.cat([torch.arange(3, n, 4), torch.arange(1, n, 4), torch.arange(0, n, 2)])[:1000]
    assert keep.tolist() == expected.tolist()


def test_a_cut_box_that_stops_3_px_short_of_the_tile_edge_is_still_a_fragment():
    """A detector's box of a cut object stops a few px short of the tile edge (the repo's stand-in
    detectors jitter each edge by 0-3 px): at a 2 px margin the 17 px piece of a 50 px object,
    ending 3 px before the edge, was no fragment, and at IoU 0.34 with the whole box NMS kept
    both (a duplicate at every such seam; ``benchmarks/bench_seams.py``)."""
    from retinanet.model.tiling import EDGE_MARGIN, fragments

    H, W, tile = 800, 1400, 800  # tiles at x 0..800 and 600..1400
    obj = torch.tensor([[780.0, 300, 830, 340]])  # whole in the second tile, cut at x 800 in the first
    windows = list(tile_grid((H, W), tile, 0.2))

    def run(tiles):
        out = []
        for b, _, lab in _visible_parts(obj, [windows.pop(0) for _ in tiles]):
            b = torch.where(b[:, 2:3] == tile, b - torch.tensor([0.0, 0, 3, 0]), b)  # the cut edge 3 px short
            out.append((b, torch.tensor([0.9] * len(b)), lab))
        return out

    boxes, _, _ = detect_tiled(run, torch.zeros(3, H, W, dtype=torch.uint8), tile, 0.2, 2, 0.5, 100)
    assert boxes.tolist() == obj.tolist()  # one box: the whole one
    grid = tile_grid((H, W), tile, 0.2)
    piece = torch.tensor([[780.0, 300, 797, 340]])
    inner = inner_edges(grid, (H, W))
    assert EDGE_MARGIN >= 3 and fragments(piece, grid[0], inner[0]).tolist() == [True]
    assert fragments(piece, grid[0], inner[0], margin=2.0).tolist() == [False]  # the old margin missed it
