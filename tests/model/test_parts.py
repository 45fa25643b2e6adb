"""Anchors, box coder, matcher, transform geometry and API errors."""

import math

import pytest
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import sigmoid_focal_loss

from retinanet.errors import RetinaNetError
from retinanet.geometry import resize_image, resized_size
from retinanet.model import boxes, build_model
from retinanet.model.anchors import NUM_ANCHORS, AnchorCache
from retinanet.model.loss import focal_loss, giou_loss
from retinanet.model.matcher import match


def test_anchors_equal_torchvision():
    sizes = tuple((x, int(x * 2 ** (1.0 / 3)), int(x * 2 ** (2.0 / 3))) for x in [32, 64, 128, 256, 512])
    gen = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * 5)
    hws = [(20, 24), (10, 12), (5, 6), (3, 3), (2, 2)]
    feats = [torch.zeros(1, 1, *hw) for hw in hws]
    ref = gen(ImageList(torch.zeros(1, 3, 160, 192), [(160, 192)]), feats)[0]
    cache = AnchorCache()
    ours = cache(hws, (160, 192), "cpu")
    assert [len(a) for a in ours] == [h * w * NUM_ANCHORS for h, w in hws]
    assert torch.equal(torch.cat(ours), ref)
    assert cache(hws, (160, 192), "cpu") is ours  # cached


def test_box_coder_round_trip():
    anchors = torch.tensor([[0.0, 0, 32, 32], [10, 20, 90, 60]])
    gt = torch.tensor([[4.0, 2, 30, 40], [0, 0, 100, 100]])
    torch.testing.assert_close(boxes.decode(boxes.encode(gt, anchors), anchors), gt)
    big = boxes.decode(torch.tensor([[0.0, 0, 50, 50]]), anchors[:1])
    assert (big[0, 2] - big[0, 0]).item() == pytest.approx(32 * 1000 / 16, rel=1e-4)


def test_matcher_hand_cases():
    # 1 image, 2 gts, 5 anchors
    iou = torch.tensor([[[0.7, 0.45, 0.1, 0.3, 0.0],
                         [0.2, 0.30, 0.35, 0.3, 0.0]]])
    valid = torch.tensor([[True, True]])
    m = match(iou, valid)
    # anchor0 fg gt0; anchor1 ignored; anchor2 is gt1's best (low quality) -> gt1;
    # anchor3 below 0.4 -> background; anchor4 background
    assert m.tolist() == [[0, -2, 1, -1, -1]]
    ties = torch.tensor([[[0.3, 0.3, 0.1]]])
    assert match(ties, torch.tensor([[True]])).tolist() == [[0, 0, -1]]
    padded = torch.full((1, 1, 3), -1.0)
    assert match(padded, torch.tensor([[False]])).tolist() == [[-1, -1, -1]]


def test_resized_size_idempotent_and_torchvision_like():
    for h in range(50, 700, 37):
        for w in range(40, 900, 53):
            s = resized_size(h, w, 800, 1333)
            assert resized_size(*s, 800, 1333) == s
            assert min(s) <= 800 and max(s) <= 1333
            scale = min(800 / min(h, w), 1333 / max(h, w))
            assert s == (math.floor(h * scale), math.floor(w * scale))


def test_a_thin_strip_keeps_at_least_one_pixel_a_side_and_runs():
    """30 x 5000 capped at 160 px: 0 rows by the floor, a traceback in predict, eval and training's eval."""
    assert resized_size(30, 5000, 160, 160) == (1, 160) and resized_size(5000, 30, 160, 160) == (160, 1)
    assert resized_size(1, 160, 160, 160) == (1, 160)  # idempotent
    m = build_model("resnet18_fpn", num_classes=3, min_size=160, max_size=160, norm="bn", fpn_channels=32, head_convs=1).eval()
    with torch.no_grad():
        out = m([torch.rand(3, 30, 5000), torch.rand(3, 5000, 30)])
    assert len(out) == 2 and all(o["boxes"].shape[-1] == 4 for o in out)


def test_pre_resized_input_gives_same_detections():
    torch.manual_seed(0)
    m = build_model("resnet18_fpn", num_classes=4, min_size=96, max_size=128, score_thresh=0.01).eval()
    torch.nn.init.normal_(m.head.classification_head.cls_logits.weight, std=0.3)  # distinct scores
    img = torch.rand(3, 60, 70)
    pre = resize_image(img, 96, 128)
    assert tuple(pre.shape[-2:]) == resized_size(60, 70, 96, 128) != (60, 70)
    with torch.no_grad():
        a = m([img])[0]
        b = m([pre])[0]
    scale = torch.tensor([70 / pre.shape[-1], 60 / pre.shape[-2]] * 2)
    torch.testing.assert_close(a["scores"], b["scores"])
    b = dict(b, boxes=b["boxes"] * scale)
    # random-init heads give bit-identical scores in flat regions, where NMS order is arbitrary:
    # compare the top detections, whose scores are distinct
    torch.testing.assert_close(a["boxes"][:50], b["boxes"][:50], atol=1e-3, rtol=1e-5)


def test_unknown_arch_and_option():
    with pytest.raises(RetinaNetError, match="unknown arch"):
        build_model("vgg16")
    with pytest.raises(RetinaNetError, match="unknown model option.*bogus"):
        build_model("resnet18_fpn", bogus=1)
    for option, said in (({"score_thresh": 5}, "score_thresh must be in"), ({"detections_per_img": 0}, "at least 1"),
                         ({"num_classes": 1}, "num_classes")):  # refused as the command line and Detector.load refuse them
        with pytest.raises(RetinaNetError, match=f"build_model: model.*{said}"):
            build_model("resnet18_fpn", **option)


def test_the_model_refuses_what_is_not_a_list_of_images():
    """A single [3, H, W] tensor ran as three one-channel images (3 results); an HWC one failed deep in torch."""
    model = build_model("resnet18_fpn", num_classes=3, fpn_channels=16, head_convs=1).eval()
    for images, said in ((torch.rand(3, 64, 64), r"got a tensor of shape \[3, 64, 64\]; give \[image\]"),
                         (torch.rand(2, 3, 64, 64), r"got a tensor of shape \[2, 3, 64, 64\]; give list\(batch\)"),
                         ([torch.rand(64, 64, 3)], r"got a list holding a tensor of shape \[64, 64, 3\]")):
        with pytest.raises(RetinaNetError, match=f"the model takes a list of \\[3, H, W\\] image tensors.*{said}"):
            model(images)
    assert len(model([torch.rand(3, 64, 64)])) == 1


def test_focal_loss_equals_torchvision_formula():
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(2, 50, 6, generator=g) * 8).requires_grad_()  # |x| up to ~30
    labels = torch.randint(-1, 6, (2, 50), generator=g)  # -1: background
    weight = torch.rand(2, 50, generator=g) * (torch.rand(2, 50, generator=g) > 0.2)  # some ignored
    ours = focal_loss(logits, labels, weight)
    (g_ours,) = torch.autograd.grad(ours, logits)
    target = torch.nn.functional.one_hot(labels.clamp(min=0), 6).float() * (labels >= 0)[:, :, None]
    ref = (sigmoid_focal_loss(logits, target, reduction="none").sum(2) * weight).sum()
    (g_ref,) = torch.autograd.grad(ref, logits)
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(g_ours, g_ref)


def test_giou_loss_equals_torchvision_bit_for_bit():
    """``giou_loss`` (no boolean-mask indexing: no GPU sync) gives torchvision's values and gradients."""
    from torchvision.ops import generalized_box_iou_loss

    g = torch.Generator().manual_seed(0)
    xy = torch.rand(2, 500, 2, generator=g) * 100
    a = torch.cat([xy, xy + 1 + torch.rand(2, 500, 2, generator=g) * 40], -1).requires_grad_()
    xy = torch.rand(2, 500, 2, generator=g) * 100  # about half of the pairs do not overlap
    b = torch.cat([xy, xy + 1 + torch.rand(2, 500, 2, generator=g) * 40], -1)
    b[0, :5] = a[0, :5].detach()  # identical boxes
    weights = torch.rand(2, 500, generator=g)
    ours, ref = giou_loss(a, b), generalized_box_iou_loss(a, b, reduction="none")
    assert torch.equal(ours, ref)
    (g_ours,) = torch.autograd.grad((ours * weights).sum(), a)
    (g_ref,) = torch.autograd.grad((ref * weights).sum(), a)
    assert torch.equal(g_ours, g_ref)


def test_eval_mode_batchnorm_is_folded_into_the_convs(count_batch_norm):
    """In eval mode the body's trainable BatchNorm2d runs no batch-norm op (folded into the conv
    before it, as FrozenBatchNorm2d is), with the same outputs up to float rounding; training mode
    still normalises with the batch statistics."""
    torch.manual_seed(0)
    model = build_model("resnet18_fpn", num_classes=3, norm="bn", trainable_backbone_layers=5, min_size=64, max_size=64)
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1, generator=g), m.running_var.uniform_(0.5, 2.0, generator=g)
    x = torch.rand(2, 3, 64, 64, generator=g)
    model.eval()
    with torch.no_grad(), count_batch_norm() as counted:
        folded = model.backbone(x)
    assert counted.calls == 0
    reference = {}
    with torch.no_grad():  # the unfolded function: each BatchNorm2d applied after its conv
        body, feats = model.backbone.body, []
        h = body.maxpool(body.relu(body.bn1(body.conv1(x))))
        for layer in (body.layer1, body.layer2, body.layer3, body.layer4):
            for block in layer:
                out = block.relu(block.bn1(block.conv1(h)))
                out = block.bn2(block.conv2(out))
                h = (out + (h if block.downsample is None else block.downsample(h))).relu()
            feats.append(h)
        reference = model.backbone.fpn(dict(zip("012", feats[1:])))
    for k in folded:
        torch.testing.assert_close(folded[k], reference[k], rtol=1e-4, atol=1e-5)
    model.train()
    with torch.no_grad(), count_batch_norm() as counted:
        model.backbone(x)
    assert counted.calls > 0
