"""Equality with torchvision's RetinaNet (losses, detections) and weight loading."""

import pytest
import torch
from torchvision.models.detection import RetinaNet, retinanet_resnet50_fpn, retinanet_resnet50_fpn_v2
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from retinanet.errors import CheckpointError
from retinanet import build_model, load_weights

SMALL = dict(min_size=128, max_size=160, score_thresh=0.01)


def _inputs():
    g = torch.Generator().manual_seed(0)
    imgs = [torch.rand(3, 100, 140, generator=g), torch.rand(3, 90, 70, generator=g)]
    targets = [{"boxes": torch.tensor([[10.0, 10, 60, 50], [30, 20, 90, 80]]), "labels": torch.tensor([1, 3])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    return imgs, targets


def _found_in(a, b, n, score_tol=1e-5, box_tol=1e-2):
    """Each of the top ``n`` detections of ``a`` is in ``b`` (same label, score and box up to the
    tolerances): float rounding may swap near-tied scores, so positions are not compared."""
    s = (a["scores"][:n, None] - b["scores"][None]).abs() <= score_tol
    lab = a["labels"][:n, None] == b["labels"][None]
    box = (a["boxes"][:n, None] - b["boxes"][None]).abs().amax(-1) <= box_tol
    return bool((s & lab & box).any(1).all())


def _key(d):
    """Detections as a list sorted by (score, label, box) so tie order does not matter."""
    rows = torch.cat([d["scores"][:, None], d["labels"][:, None].float(), d["boxes"]], 1)
    return sorted(map(tuple, rows.tolist()))


def _tv_detections(tv, imgs):
    """torchvision's detections as ours are: each image alone (ours never pads an image with a
    batch-mate of another size), without the boxes its clip leaves with no area (we drop them
    before NMS, where they suppress nothing), then its ``detections_per_img`` cut."""
    cap, tv.detections_per_img = tv.detections_per_img, 10 ** 6
    try:
        out = [tv([im])[0] for im in imgs]
    finally:
        tv.detections_per_img = cap
    keep = [(d["boxes"][:, 2] > d["boxes"][:, 0]) & (d["boxes"][:, 3] > d["boxes"][:, 1]) for d in out]
    return [{k: v[m][:cap] for k, v in d.items()} for d, m in zip(out, keep)]


def _detect_both_layouts(ours, tv, imgs):
    """The detections of ``ours`` and ``tv`` (``_tv_detections``), and of ``ours`` again in
    channels_last (left in NCHW)."""
    with torch.no_grad():
        a, b = ours(imgs), _tv_detections(tv, imgs)
        ours.to(memory_format=torch.channels_last)
        nhwc = ours(imgs)
        ours.to(memory_format=torch.contiguous_format)
    return a, b, nhwc


@pytest.mark.parametrize("arch,tv_builder", [("resnet50_fpn", retinanet_resnet50_fpn),
                                             ("resnet50_fpn_v2", retinanet_resnet50_fpn_v2)])
def test_losses_and_detections_equal_torchvision(arch, tv_builder):
    torch.manual_seed(0)
    tv = tv_builder(weights=None, weights_backbone=None, num_classes=5, **SMALL)
    ours = build_model(arch, num_classes=5, norm="bn", trainable_backbone_layers=5, **SMALL)
    assert list(ours.state_dict()) == list(tv.state_dict())
    g = torch.Generator().manual_seed(1)
    for m in tv.modules():
        if isinstance(m, torch.nn.BatchNorm2d):  # non-trivial running statistics, so that eval-mode folding matters
            m.running_mean.normal_(0, 0.1, generator=g), m.running_var.uniform_(0.5, 2.0, generator=g)
    ours.load_state_dict(tv.state_dict())
    imgs, targets = _inputs()
    ours.eval(), tv.eval()  # eval-mode BN: ours folds it into the convs (the same function up to float rounding)
    a, b, nhwc = _detect_both_layouts(ours, tv, imgs)
    for x, y, z in zip(a, b, nhwc):
        assert len(x["boxes"]) > 0
        for mine in (x, z):  # NCHW and channels_last: the same detections up to float rounding
            torch.testing.assert_close(mine["scores"], y["scores"], rtol=1e-4, atol=1e-6)
            assert _found_in(mine, y, 100)
    ours.train(), tv.train()
    la, lb = ours(imgs, targets), tv(imgs, targets)
    for k in ("classification", "bbox_regression"):
        torch.testing.assert_close(la[k], lb[k])
        assert la[k].dtype == torch.float32


def test_frozen_bn_folding_matches_torchvision():
    """Default norm: FrozenBatchNorm2d folded into the convs gives torchvision's outputs and grads."""
    torch.manual_seed(0)
    body = resnet_fpn_backbone(backbone_name="resnet50", weights=None, trainable_layers=3, returned_layers=[2, 3, 4],
                               extra_blocks=LastLevelP6P7(256, 256))
    small = dict(SMALL, min_size=96, max_size=128)
    tv = RetinaNet(body, num_classes=5, **small)
    g = torch.Generator().manual_seed(1)
    for m in tv.modules():
        if isinstance(m, FrozenBatchNorm2d):  # non-trivial statistics, so that folding matters
            c = m.weight.numel()
            m.weight.uniform_(0.5, 1.5, generator=g), m.bias.normal_(0, 0.1, generator=g)
            m.running_mean.normal_(0, 0.1, generator=g), m.running_var.uniform_(0.5, 2.0, generator=g)
            assert c > 0
    ours = build_model("resnet50_fpn", num_classes=5, **small)
    assert list(ours.state_dict()) == list(tv.state_dict())
    ours.load_state_dict(tv.state_dict())
    tv.to(memory_format=torch.channels_last)
    imgs, targets = _inputs()
    ours.eval(), tv.eval()
    with torch.no_grad():
        a, b = ours(imgs), _tv_detections(tv, imgs)
    for x, y in zip(a, b):
        assert len(x["boxes"]) > 0
        torch.testing.assert_close(x["scores"], y["scores"], rtol=1e-4, atol=1e-6)
        assert _found_in(x, y, 100)
    ours.train(), tv.train()
    la, lb = ours(imgs, targets), tv(imgs, targets)
    sum(la.values()).backward(), sum(lb.values()).backward()
    for k in la:
        torch.testing.assert_close(la[k], lb[k], rtol=1e-4, atol=1e-6)
    grads = dict(ours.named_parameters())
    for name, p in tv.named_parameters():  # frozen stages have no grad in either
        assert (p.grad is None) == (grads[name].grad is None), name
        if p.grad is not None:
            assert (grads[name].grad - p.grad).norm() <= 1e-3 * p.grad.norm(), name


def test_load_weights_torchvision_files(tmp_path):
    tv = retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91)
    path = tmp_path / "tv.pth"
    torch.save(tv.state_dict(), path)
    m91 = build_model("resnet50_fpn", num_classes=91)
    assert load_weights(m91, path) == []
    assert torch.equal(m91.head.classification_head.cls_logits.weight,
                       tv.head.classification_head.cls_logits.weight)
    m21 = build_model("resnet50_fpn", num_classes=21)
    skipped = load_weights(m21, path)
    assert skipped == ["head.classification_head.cls_logits.weight",
                       "head.classification_head.cls_logits.bias"]
    torch.testing.assert_close(m21.head.regression_head.bbox_reg.weight, tv.head.regression_head.bbox_reg.weight)
    torch.testing.assert_close(m21.head.classification_head.cls_logits.bias,
                               torch.full((21 * 9,), -4.59511985013459))

    sd = tv.state_dict()
    sd["head.extra.weight"] = torch.zeros(1)
    bad = tmp_path / "wrongkey.pth"
    torch.save(sd, bad)
    with pytest.raises(CheckpointError, match="wrongkey.pth.*head.extra.weight"):
        load_weights(build_model("resnet50_fpn", num_classes=91), bad)
    del sd["head.extra.weight"], sd["backbone.fpn.layer_blocks.0.0.weight"]
    torch.save(sd, bad)
    with pytest.raises(CheckpointError, match="missing keys: backbone.fpn.layer_blocks.0.0.weight"):
        load_weights(build_model("resnet50_fpn", num_classes=91), bad)

    trunc = tmp_path / "trunc.pth"
    trunc.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="trunc.pth"):
        load_weights(m91, trunc)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match="notes.txt"):
        load_weights(m91, text)
    other = tmp_path / "other.pth"
    torch.save({"epoch": torch.tensor(3)}, other)
    with pytest.raises(CheckpointError, match="other.pth"):
        load_weights(m91, other)


def test_load_our_checkpoint_dict():
    a = build_model("resnet18_fpn", num_classes=3)
    b = build_model("resnet18_fpn", num_classes=3)
    assert load_weights(b, {"format": "retinanet-checkpoint", "model": a.state_dict()}) == []
    assert torch.equal(a.head.regression_head.bbox_reg.weight, b.head.regression_head.bbox_reg.weight)
