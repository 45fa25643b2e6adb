"""Memory format (channels_last / NCHW), bf16 autocast on CPU, and the FPN/head size options."""

import copy

import pytest
import torch
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops import box_iou
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from retinanet.model import build_model

CL = torch.channels_last


def _model(**kw):
    torch.manual_seed(0)
    m = build_model("resnet18_fpn", num_classes=4, min_size=96, max_size=128, score_thresh=0.01, **kw)
    torch.nn.init.normal_(m.head.classification_head.cls_logits.weight, std=0.3)  # distinct scores
    return m


def _inputs():
    g = torch.Generator().manual_seed(0)
    imgs = [torch.rand(3, 96, 128, generator=g), torch.rand(3, 80, 96, generator=g)]
    tg = [{"boxes": torch.tensor([[10.0, 10, 60, 50], [30, 20, 90, 80]]), "labels": torch.tensor([1, 3])},
          {"boxes": torch.tensor([[5.0, 5, 40, 70]]), "labels": torch.tensor([2])}]
    return imgs, tg


def _found_in(a, b, n, score_tol, box_tol):
    """Each of the top ``n`` detections of ``a`` is in ``b`` (same label, close score and box)."""
    s = (a["scores"][:n, None] - b["scores"][None]).abs() <= score_tol
    lab = a["labels"][:n, None] == b["labels"][None]
    box = (a["boxes"][:n, None] - b["boxes"][None]).abs().amax(-1) <= box_tol
    return bool((s & lab & box).any(1).all())


def test_channels_last_equals_nchw():
    nchw = _model()
    assert nchw.memory_format == torch.contiguous_format  # built NCHW
    cl = copy.deepcopy(nchw).to(memory_format=CL)
    assert cl.memory_format == CL
    assert cl.backbone.body.conv1.weight.is_contiguous(memory_format=CL)
    assert list(cl.state_dict()) == list(nchw.state_dict())
    imgs, tg = _inputs()
    cl.eval(), nchw.eval()
    with torch.no_grad():
        batch = torch.randn(2, 3, 96, 128)
        raw_a = cl.forward_raw(batch)
        raw_b = nchw.forward_raw(batch.contiguous(memory_format=CL))  # either input layout works
        for a, b in zip(raw_a[0] + raw_a[1], raw_b[0] + raw_b[1]):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
        dets_a, dets_b = cl(imgs), nchw(imgs)
    for a, b in zip(dets_a, dets_b):
        assert len(a["scores"]) == len(b["scores"]) > 50
        torch.testing.assert_close(a["scores"], b["scores"], rtol=1e-4, atol=1e-6)
        assert _found_in(a, b, 50, score_tol=1e-5, box_tol=1e-2)
    cl.train(), nchw.train()
    la, lb = cl(imgs, tg), nchw(imgs, tg)
    for k in la:
        torch.testing.assert_close(la[k], lb[k], rtol=1e-4, atol=1e-6)


def test_bf16_autocast_on_cpu():
    m = _model()
    imgs, tg = _inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = m(imgs, tg)
    assert set(losses) == {"classification", "bbox_regression"}
    for v in losses.values():
        assert v.dtype == torch.float32 and torch.isfinite(v)
    sum(losses.values()).backward()
    grad = m.head.classification_head.cls_logits.weight.grad
    assert grad.dtype == torch.float32 and torch.isfinite(grad).all() and grad.abs().sum() > 0
    m.eval()
    with torch.no_grad():
        ref = m(imgs)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = m(imgs)
            feats = m.backbone(torch.zeros(1, 3, 64, 64))
    assert next(iter(feats.values())).dtype == torch.bfloat16  # autocast really runs the convs in bf16
    for a, b in zip(ref, low):
        assert b["scores"].dtype == torch.float32 and b["boxes"].dtype == torch.float32
        assert a["labels"][0] == b["labels"][0]  # the same top detection
        assert box_iou(a["boxes"][:1], b["boxes"][:1]).item() > 0.9
        assert abs(a["scores"][0] - b["scores"][0]).item() < 0.05


def _torchvision_resnet18_keys():
    backbone = resnet_fpn_backbone(backbone_name="resnet18", weights=None, returned_layers=[2, 3, 4],
                                   extra_blocks=LastLevelP6P7(256, 256))
    return list(RetinaNet(backbone, num_classes=4).state_dict())


@pytest.mark.parametrize("fpn_channels,head_convs", [(256, 4), (32, 1), (64, 2)])
def test_fpn_and_head_options(fpn_channels, head_convs):
    default = build_model("resnet18_fpn", num_classes=4, min_size=64, max_size=64)
    m = build_model("resnet18_fpn", num_classes=4, min_size=64, max_size=64, fpn_channels=fpn_channels,
                    head_convs=head_convs)
    n_default = sum(p.numel() for p in default.parameters())
    n = sum(p.numel() for p in m.parameters())
    keys = list(m.state_dict())
    if (fpn_channels, head_convs) == (256, 4):
        assert n == n_default
        assert keys == _torchvision_resnet18_keys()
    else:
        assert n < n_default
        assert m.backbone.fpn.layer_blocks[0][0].weight.shape[0] == fpn_channels
        assert len(m.head.classification_head.conv) == len(m.head.regression_head.conv) == head_convs
        assert f"head.classification_head.conv.{head_convs}.0.weight" not in keys
    cls, reg = m.eval().forward_raw(torch.zeros(1, 3, 64, 64))
    assert cls[0].shape == (1, 8 * 8 * 9, 4) and reg[0].shape == (1, 8 * 8 * 9, 4)
    losses = m.train()([torch.rand(3, 64, 64)], [{"boxes": torch.tensor([[8.0, 8, 40, 48]]), "labels": torch.tensor([1])}])
    assert all(torch.isfinite(v) for v in losses.values())


def test_anchor_sizes_option(tmp_path):
    """--anchor-sizes: the levels' anchors scale, the weights do not change, the checkpoint keeps them."""
    from dataclasses import asdict

    from retinanet.engine.runtime.checkpoint import save_checkpoint
    from retinanet.engine.runtime.checkpoint import load_model
    from retinanet.errors import RetinaNetError

    default, small = _model(), _model(anchor_sizes=[16, 32, 64, 128, 256])  # a config file's list
    assert default.config.anchor_sizes == (32, 64, 128, 256, 512) and small.config.anchor_sizes == (16, 32, 64, 128, 256)
    assert list(small.state_dict()) == list(default.state_dict())  # torchvision's files still load
    feats = [(256 // 2 ** k, 128 // 2 ** k) for k in range(3, 8)]
    for a, b in zip(default.anchor_cache(feats, (256, 128), "cpu"), small.anchor_cache(feats, (256, 128), "cpu")):
        side_a, side_b = (a[:9, 2:] - a[:9, :2]).prod(1).sqrt(), (b[:9, 2:] - b[:9, :2]).prod(1).sqrt()
        torch.testing.assert_close(side_b / side_a, torch.full((9,), 0.5), atol=0.04, rtol=0)  # half, up to rounding
        torch.testing.assert_close(a[:, :2] + a[:, 2:], b[:, :2] + b[:, 2:])  # same centres
    # a 20 px box has no anchor of IoU >= 0.5 (the matcher's positives) at 32 px, some at 16 px
    box = torch.tensor([[40.0, 40, 60, 60]])
    ious = [box_iou(torch.cat(m.anchor_cache(feats, (256, 128), "cpu")), box).max().item() for m in (default, small)]
    assert ious[0] < 0.5 < ious[1]
    imgs, _ = _inputs()
    assert all(torch.isfinite(v) for v in small.train()(imgs, [{"boxes": box, "labels": torch.tensor([1])}] * 2).values())
    path = tmp_path / "small.pt"
    save_checkpoint({"model": small.state_dict(), "config": {"model": asdict(small.config)}, "class_map": {"a": 1}}, path)
    loaded, _ = load_model(path, "cpu")
    assert loaded.anchor_cache.sizes == (16, 32, 64, 128, 256)
    for bad in ([16, 32, 64, 128], [32, 16, 64, 128, 256], [2, 4, 8, 16, 32]):
        with pytest.raises(RetinaNetError, match="anchor_sizes must be 5 increasing"):
            _model(anchor_sizes=bad)
    with pytest.raises(RetinaNetError, match="anchor_sizes must be a whole number, not 16.5"):
        _model(anchor_sizes=[16.5, 32, 64, 128, 256])
