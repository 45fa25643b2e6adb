"""Matcher: batched IoU/IoF, ignore regions (never matched; anchors inside them ignored)."""

import pytest
import torch
from torchvision.ops import box_iou

from retinanet.errors import RetinaNetError
from retinanet.model.matcher import BACKGROUND, IGNORE, batched_overlaps, match, pad_targets


def _random_boxes(g, n, size=200.0):
    xy = torch.rand(n, 2, generator=g) * size
    wh = 1 + torch.rand(n, 2, generator=g) * size / 2
    return torch.cat([xy, xy + wh], 1)


def test_iou_is_torchvision_box_iou_bit_for_bit_and_iof_by_hand():
    g = torch.Generator().manual_seed(0)
    anchors = _random_boxes(g, 300)
    gts = [_random_boxes(g, 5), _random_boxes(g, 2)]
    targets = [{"boxes": gts[0], "labels": torch.tensor([1, 2, 3, 4, 5]),
                "ignore": torch.tensor([False, True, False, False, True])},
               {"boxes": gts[1], "labels": torch.tensor([1, 1])}]  # no "ignore" key: all False
    boxes, labels, ignore = pad_targets(targets, "cpu")
    assert boxes.shape == (2, 5, 4) and labels[1].tolist() == [1, 1, -1, -1, -1]
    assert ignore.tolist() == [[False, True, False, False, True], [False] * 5]
    valid = (labels >= 0) & ~ignore
    iou, iof = batched_overlaps(boxes, anchors, valid, ignore)
    assert iou.shape == (2, 5, 300) and iof.shape == (2, 300)
    assert torch.equal(iou[0, [0, 2, 3]], box_iou(gts[0][[0, 2, 3]], anchors))
    assert torch.equal(iou[1, :2], box_iou(gts[1], anchors))
    assert (iou[0, [1, 4]] == -1).all() and (iou[1, 2:] == -1).all()
    assert (iof[1] == 0).all()  # no ignore boxes in image 1
    # IoF by hand: intersection over the anchor's area, max over the two ignore boxes
    a = anchors[:, None]
    ig = gts[0][[1, 4]][None]
    wh = (torch.min(a[..., 2:], ig[..., 2:]) - torch.max(a[..., :2], ig[..., :2])).clamp(min=0)
    area = (anchors[:, 2] - anchors[:, 0]) * (anchors[:, 3] - anchors[:, 1])
    torch.testing.assert_close(iof[0], (wh.prod(-1) / area[:, None]).amax(1))
    assert iof.min() >= 0 and iof.max() <= 1 + 1e-6


def test_ignore_regions_hand_cases():
    anchors = torch.tensor([
        [0.0, 0, 10, 10],     # 0: on the real box (and inside the second ignore box) -> foreground
        [100, 100, 110, 110],  # 1: inside the ignore box, nothing real near -> ignored
        [95, 95, 105, 105],    # 2: IoF 0.25 with the ignore box -> background
        [95, 100, 105, 110],   # 3: IoF exactly 0.5: not > 0.5 -> background
        [0, 0, 9, 10],         # 4: IoU 0.9 with the real box, inside a second ignore box -> stays foreground
        [300, 300, 310, 310],  # 5: far from everything -> background
    ])
    gt = torch.tensor([[[0.0, 0, 10, 10], [100, 100, 200, 200], [-5, -5, 20, 20]]])
    ignore = torch.tensor([[False, True, True]])
    valid = ~ignore
    iou, iof = batched_overlaps(gt, anchors, valid, ignore)
    torch.testing.assert_close(iof[0, :4], torch.tensor([1.0, 1.0, 0.25, 0.5]))
    m = match(iou, valid, ignore_iof=iof)
    assert m.tolist() == [[0, IGNORE, BACKGROUND, BACKGROUND, 0, BACKGROUND]]
    # without the ignore information the same anchors are background
    assert match(iou, valid).tolist() == [[0, BACKGROUND, BACKGROUND, BACKGROUND, 0, BACKGROUND]]


def test_ignore_box_is_never_matched_not_even_as_a_best_anchor():
    # the ignore box's best anchor (IoU 1) and an anchor with IoU >= 0.5 with it: neither is
    # foreground; the real box (tiny, its best IoU 0.01) still gets its low-quality match
    anchors = torch.tensor([[0.0, 0, 50, 50], [0, 0, 50, 40], [200, 200, 250, 250]])
    gt = torch.tensor([[[0.0, 0, 50, 50], [200, 200, 205, 205]]])
    ignore = torch.tensor([[True, False]])
    valid = ~ignore
    iou, iof = batched_overlaps(gt, anchors, valid, ignore)
    assert match(iou, valid, ignore_iof=iof).tolist() == [[IGNORE, IGNORE, 1]]
    # an image with only ignore boxes: nothing is foreground
    only = torch.tensor([[True, True]])
    iou, iof = batched_overlaps(gt, anchors, torch.zeros_like(only), only)
    assert match(iou, torch.zeros_like(only), ignore_iof=iof).tolist() == [[IGNORE, IGNORE, BACKGROUND]]


def test_mismatched_ignore_flags_are_named():
    t = {"boxes": torch.zeros(2, 4), "labels": torch.tensor([1, 2]), "ignore": torch.tensor([True]), "file": "a.jpg"}
    with pytest.raises(RetinaNetError, match="a.jpg: 1 ignore flags for 2 labels"):
        pad_targets([t], "cpu")


def _crowded_batch(g):
    """Anchors on a grid and a batch with ties (duplicate boxes, duplicate anchors), ignore
    regions, an image without boxes (all rows padding) and padded -1 labels."""
    ys, xs = torch.meshgrid(torch.arange(0, 160, 8.0), torch.arange(0, 160, 8.0), indexing="ij")
    centres = torch.stack([xs.reshape(-1), ys.reshape(-1)], 1)
    anchors = torch.cat([torch.cat([centres - s / 2, centres + s / 2], 1) for s in (8.0, 16.0, 32.0)])
    anchors = torch.cat([anchors, anchors[:50]])  # duplicate anchors: ties for a box's best anchor
    crowd = _random_boxes(g, 40, size=150.0)
    crowd = torch.cat([crowd, crowd[:6], anchors[[3, 400, 900]]])  # duplicate boxes: argmax ties; boxes = anchors
    n = crowd.shape[0]
    flags = torch.zeros(n, dtype=torch.bool)
    flags[[1, 5, 17, 30]] = True
    targets = [
        {"boxes": crowd, "labels": torch.randint(1, 5, (n,), generator=g), "ignore": flags},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},  # empty target
        {"boxes": crowd[:7], "labels": torch.ones(7, dtype=torch.int64)},  # padded rows (-1 labels)
        {"boxes": crowd[1:2], "labels": torch.ones(1, dtype=torch.int64), "ignore": torch.tensor([True])},  # only ignore
    ]
    return anchors, targets


@pytest.mark.parametrize("low_quality", [True, False])
def test_chunked_matching_equals_unchunked(low_quality):
    from retinanet.model.matcher import _lean_overlaps, match_anchors

    g = torch.Generator().manual_seed(3)
    anchors, targets = _crowded_batch(g)
    boxes, labels, ignore = pad_targets(targets, "cpu")
    valid = (labels >= 0) & ~ignore
    B, M = labels.shape
    N = anchors.shape[0]
    iou, iof = batched_overlaps(boxes, anchors, valid, ignore)
    ref = match(iou, valid, allow_low_quality=low_quality, ignore_iof=iof)
    lean_iou, lean_iof = _lean_overlaps(boxes, anchors, valid, ignore)
    assert torch.equal(lean_iou, iou) and torch.equal(lean_iof, iof)  # bit for bit
    assert (iou == iou.max(dim=1, keepdim=True).values).sum(1).gt(1).any()  # the batch has argmax ties
    assert ref.eq(IGNORE).any() and ref.ge(0).any() and ref.eq(BACKGROUND).any()
    assert (ref[1] == BACKGROUND).all()  # the empty image
    whole = match_anchors(boxes, anchors, valid, ignore, allow_low_quality=low_quality, chunk_elements=None)
    assert torch.equal(whole, ref)
    for rows in (1, 2, 7, M - 1):  # rows per chunk; M - 1: a short last chunk
        chunked = match_anchors(boxes, anchors, valid, ignore, allow_low_quality=low_quality,
                                chunk_elements=rows * B * N)
        assert torch.equal(chunked, ref), rows
    assert torch.equal(match_anchors(boxes, anchors, valid, ignore, allow_low_quality=low_quality,
                                     chunk_elements=1), ref)  # below one row: still one row at a time


def test_chunked_matching_in_the_loss_is_the_same_loss(monkeypatch):
    from retinanet.model import matcher
    from retinanet.model.loss import retinanet_loss

    g = torch.Generator().manual_seed(4)
    anchors, targets = _crowded_batch(g)
    cls = torch.randn(len(targets), anchors.shape[0], 5, generator=g)
    reg = torch.randn(len(targets), anchors.shape[0], 4, generator=g) * 0.1
    ref = retinanet_loss(cls, reg, anchors, targets)
    monkeypatch.setitem(matcher.match_anchors.__kwdefaults__, "chunk_elements", 1)  # one box row at a time
    chunked = retinanet_loss(cls, reg, anchors, targets)
    assert all(torch.equal(ref[k], chunked[k]) for k in ref)
