"""Tiled detection: the tile grid, shifting to image pixels, padding, and merging at tile borders
(an object cut by a tile edge gives one whole box, not a fragment)."""

from __future__ import annotations

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
