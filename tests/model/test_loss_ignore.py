"""Loss with ignore regions: anchors inside them leave the classification loss and its normaliser."""

import pytest
import torch
from torchvision.models.detection._utils import Matcher
from torchvision.ops import box_iou, sigmoid_focal_loss

from retinanet.model import boxes as box_coder
from retinanet.model import build_model
from retinanet.model.anchors import AnchorCache
import retinanet.model.loss as L
from retinanet.model.loss import retinanet_loss

C = 4
HW = (96, 128)


def _anchors():
    feat_hws = [((HW[0] + 2**k - 1) // 2**k, (HW[1] + 2**k - 1) // 2**k) for k in range(3, 8)]
    return torch.cat(AnchorCache()(feat_hws, HW, "cpu"))


def _heads(g, B, N):
    cls = (torch.randn(B, N, C, generator=g) - 3).requires_grad_()
    reg = (torch.randn(B, N, 4, generator=g) * 0.1).requires_grad_()
    return cls, reg


def _target(boxes, labels, ignore=None):
    t = {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "labels": torch.tensor(labels, dtype=torch.int64)}
    if ignore is not None:
        t["ignore"] = torch.tensor(ignore, dtype=torch.bool)
    return t


def _reference_per_image(cls, reg, anchors, t, iof_thresh=0.5):
    """One image, written plainly: torchvision's Matcher on the real boxes, IoF by its definition."""
    ign = t.get("ignore", torch.zeros(len(t["labels"]), dtype=torch.bool))
    real, crowd = t["boxes"][~ign], t["boxes"][ign]
    if len(real):
        m = Matcher(0.5, 0.4, allow_low_quality_matches=True)(box_iou(real, anchors))
    else:
        m = torch.full((len(anchors),), -1, dtype=torch.int64)
    if len(crowd):
        lt = torch.max(anchors[:, None, :2], crowd[None, :, :2])
        rb = torch.min(anchors[:, None, 2:], crowd[None, :, 2:])
        inter = (rb - lt).clamp(min=0).prod(-1)
        area = (anchors[:, 2] - anchors[:, 0]) * (anchors[:, 3] - anchors[:, 1])
        iof = (inter / area[:, None]).amax(1)
        m = torch.where((iof > iof_thresh) & (m < 0), torch.full_like(m, -2), m)
    fg = m >= 0
    n = max(int(fg.sum()), 1)
    target = torch.zeros_like(cls)
    target[fg, t["labels"][~ign][m[fg]]] = 1.0
    keep = m != -2
    cls_loss = sigmoid_focal_loss(cls[keep], target[keep], reduction="sum") / n
    reg_loss = (reg[fg] - box_coder.encode(real[m[fg]], anchors[fg])).abs().sum() / n
    return cls_loss, reg_loss


def _batch():
    return [
        _target([[10, 10, 60, 50], [40, 30, 120, 90], [0, 0, 30, 90]], [1, 2, 3], [False, True, False]),
        _target([[5, 5, 90, 90]], [2], [True]),  # only an ignore region
        _target([[20, 20, 70, 70], [64, 8, 96, 40]], [1, 1]),  # no "ignore" key
        _target([], []),
    ]


def test_batched_equals_reference_one_image_at_a_time():
    g = torch.Generator().manual_seed(0)
    anchors = _anchors()
    targets = _batch()
    cls, reg = _heads(g, len(targets), len(anchors))
    ours = retinanet_loss(cls, reg, anchors, targets)
    refs = [_reference_per_image(cls[i], reg[i], anchors, t) for i, t in enumerate(targets)]
    torch.testing.assert_close(ours["classification"], torch.stack([r[0] for r in refs]).mean())
    torch.testing.assert_close(ours["bbox_regression"], torch.stack([r[1] for r in refs]).mean())
    # and our own batched call equals our own one-image calls
    for i, t in enumerate(targets):
        one = retinanet_loss(cls[i : i + 1], reg[i : i + 1], anchors, [t])
        torch.testing.assert_close(one["classification"], refs[i][0])


def test_anchor_on_ignore_region_has_zero_gradient_real_match_counts():
    g = torch.Generator().manual_seed(1)
    anchors = _anchors()
    crowd = [40.0, 30, 120, 90]
    real = [44.0, 34, 76, 66]  # a real object inside the crowd region
    cls, reg = _heads(g, 1, len(anchors))
    t = _target([real, crowd], [1, 2], [False, True])
    loss = retinanet_loss(cls, reg, anchors, [t])
    grad = torch.autograd.grad(loss["classification"], cls)[0][0]  # [N, C]
    inside = box_iou(torch.tensor([crowd]), anchors)[0]  # anchors on the crowd box
    iou_real = box_iou(torch.tensor([real]), anchors)[0]
    on_crowd = (inside >= 0.5) & (iou_real < 0.4)
    fg_real = iou_real >= 0.5
    assert on_crowd.sum() > 0 and fg_real.sum() > 0
    assert (grad[on_crowd] == 0).all()  # ignored: no classification gradient at all
    assert (grad[fg_real].abs().sum(1) > 0).all()  # matched to the real object: trained
    far = box_iou(torch.tensor([[0.0, 0, 128, 96]]), anchors)[0] == 0  # anchors off the image: background
    assert (grad[far].abs().sum(1) > 0).all()
    # the normaliser counts the foreground of the real object only
    reg_loss = retinanet_loss(cls, reg, anchors, [_target([real], [1])])["bbox_regression"]
    torch.testing.assert_close(loss["bbox_regression"], reg_loss)
    # the same box as a real object instead: its anchors are trained (as foreground)
    as_object = retinanet_loss(cls, reg, anchors, [_target([real, crowd], [1, 2], [False, False])])
    grad_obj = torch.autograd.grad(as_object["classification"], cls)[0][0]
    assert (grad_obj[inside >= 0.5].abs().sum(1) > 0).all()


def test_no_ignore_boxes_gives_identical_losses():
    g = torch.Generator().manual_seed(2)
    anchors = _anchors()
    plain = [_target([[10, 10, 60, 50], [40, 30, 120, 90]], [1, 2]), _target([[0, 0, 30, 90]], [3])]
    flagged = [dict(t, ignore=torch.zeros(len(t["labels"]), dtype=torch.bool)) for t in plain]
    cls, reg = _heads(g, 2, len(anchors))
    a = retinanet_loss(cls, reg, anchors, plain)
    b = retinanet_loss(cls, reg, anchors, flagged)
    for k in a:
        assert torch.equal(a[k], b[k])
    # and equal to the reference, which uses torchvision's own box_iou and Matcher
    refs = [_reference_per_image(cls[i], reg[i], anchors, t) for i, t in enumerate(plain)]
    torch.testing.assert_close(a["classification"], (refs[0][0] + refs[1][0]) / 2)


def test_ignore_boxes_leave_the_box_loss_unchanged():
    g = torch.Generator().manual_seed(3)
    anchors = _anchors()
    cls, reg = _heads(g, 2, len(anchors))
    real = [_target([[10, 10, 60, 50]], [1]), _target([[0, 0, 30, 90]], [3])]
    more = [_target([[10, 10, 60, 50], [8, 8, 64, 56]], [1, 2], [False, True]),  # overlaps the real box
            _target([[0, 0, 30, 90], [50, 20, 110, 80]], [3, 1], [False, True])]
    for box_loss in ("l1", "giou"):
        a = retinanet_loss(cls, reg, anchors, real, box_loss)
        b = retinanet_loss(cls, reg, anchors, more, box_loss)
        assert torch.equal(a["bbox_regression"], b["bbox_regression"])
        assert a["classification"] != b["classification"]


def test_model_trains_with_ignore_flags_from_the_targets():
    torch.manual_seed(0)
    m = build_model("resnet18_fpn", num_classes=C, min_size=96, max_size=128, fpn_channels=32, head_convs=1)
    m.train()
    imgs = [torch.rand(3, 96, 128), torch.rand(3, 80, 100)]
    targets = [_target([[10, 10, 60, 50], [40, 30, 120, 90]], [1, 2], [False, True]), _target([[5, 5, 50, 60]], [3], [True])]
    losses = m(imgs, targets)
    cleared = m(imgs, [dict(t, ignore=torch.zeros_like(t["ignore"])) for t in targets])
    assert losses["classification"] != cleared["classification"]
    assert all(torch.isfinite(v) for v in losses.values())


@pytest.mark.parametrize("box_loss", ["l1", "giou"])
def test_every_anchor_path_of_accelerators_equals_the_foreground_path(monkeypatch, box_loss):
    """GPUs compute the foreground terms for every anchor, masked (``COMPACT_DEVICES``: no
    ``nonzero``, a sync); CPUs for the foreground anchors alone. Same losses and gradients, up to
    float rounding; also for a batch with no foreground at all and with extreme logits."""
    g = torch.Generator().manual_seed(1)
    anchors = _anchors()
    for targets in (_batch(), [_target([], []), _target([[5, 5, 90, 90]], [2], [True])]):
        cls, reg = _heads(g, len(targets), len(anchors))
        with torch.no_grad():
            cls[0, :50] *= 40  # saturated sigmoids
        results = []
        for devices in (("cpu",), ()):
            monkeypatch.setattr(L, "COMPACT_DEVICES", devices)
            losses = retinanet_loss(cls, reg, anchors, targets, box_loss)
            grads = torch.autograd.grad(losses["classification"] + losses["bbox_regression"], (cls, reg))
            results.append((losses["classification"], losses["bbox_regression"], *grads))
        for a, b in zip(*results):
            assert torch.isfinite(b).all()
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
