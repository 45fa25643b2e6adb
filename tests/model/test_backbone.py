"""RegNet bodies: torchvision's trunk (keys, outputs, gradients), BatchNorm folded in eval mode,
stages frozen from the bottom, ImageNet classification files loaded into the body."""

import pytest
import torch
from torch import nn
from torchvision.models import regnet, resnet

from retinanet.errors import CheckpointError
from retinanet.model import build_model
from retinanet.model import weights as W
from retinanet.model.backbone import REGNETS


def _torchvision_regnet(name="regnet_x_400mf"):
    """torchvision's classification model with non-trivial BatchNorm statistics (folding matters)."""
    torch.manual_seed(1)
    tv = getattr(regnet, name)()
    g = torch.Generator().manual_seed(2)
    for m in tv.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5, generator=g), m.bias.data.normal_(0, 0.1, generator=g)
            m.running_mean.normal_(0, 0.1, generator=g), m.running_var.uniform_(0.5, 2.0, generator=g)
    return tv


def _stages(tv, x):
    """C3, C4, C5 of torchvision's model."""
    out, feats = tv.stem(x), []
    for stage in tv.trunk_output:
        out = stage(out)
        feats.append(out)
    return feats[1:]


def test_every_regnet_arch_builds_with_its_stage_widths():
    widths = {"regnet_x_400mf": [64, 160, 400], "regnet_x_800mf": [128, 288, 672],
              "regnet_x_1_6gf": [168, 408, 912], "regnet_x_3_2gf": [192, 432, 1008]}
    assert set(widths) == set(REGNETS)
    for name in REGNETS:
        for suffix in ("_fpn", "_fpn_v2"):
            m = build_model(name + suffix, num_classes=3, min_size=64, max_size=64, fpn_channels=32, head_convs=1)
            assert m.backbone.body.channels == widths[name]
            assert m.backbone.fpn.inner_blocks[2][0].in_channels == widths[name][2]
            # v2 computes P6 from C5, v1 from P5 (torchvision's choice for its two RetinaNets)
            assert m.backbone.fpn.extra_blocks.p6.in_channels == (widths[name][2] if suffix == "_fpn_v2" else 32)


def test_regnet_body_is_torchvisions_trunk_in_train_and_eval_mode(count_batch_norm):
    tv = _torchvision_regnet()
    state = {k: v for k, v in tv.state_dict().items() if not k.startswith("fc.")}
    model = build_model("regnet_x_400mf_fpn_v2", num_classes=3, norm="bn", trainable_backbone_layers=5,
                        min_size=64, max_size=96, fpn_channels=32, head_convs=1)
    body = model.backbone.body
    assert list(body.state_dict()) == list(state)  # torchvision's keys, in its order
    body.load_state_dict(state)
    x = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(3))
    for name, p in tv.named_parameters():
        p.requires_grad_(not name.startswith("fc."))
    ours = body(x)
    ref = _stages(tv, x)  # both BatchNorms update their statistics the same way
    assert [f.shape[-2:] for f in ours] == [(8, 12), (4, 6), (2, 3)]
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b)
    sum(f.square().mean() for f in ours).backward(), sum(f.square().mean() for f in ref).backward()
    grads = dict(body.named_parameters())
    for name, p in tv.named_parameters():
        if not name.startswith("fc."):
            assert (grads[name].grad - p.grad).norm() <= 1e-4 * p.grad.norm(), name  # float rounding only
    body.eval(), tv.eval()
    with torch.no_grad(), count_batch_norm() as counted:
        folded = body(x)
    assert counted.calls == 0  # every BatchNorm2d folded into the conv before it
    with torch.no_grad():
        for a, b in zip(folded, _stages(tv, x)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("layers,trained", [(0, set()), (2, {"block4", "block3"}),
                                            (5, {"block4", "block3", "block2", "block1", "stem"})])
def test_regnet_stages_freeze_from_the_bottom(layers, trained):
    m = build_model("regnet_x_400mf_fpn", num_classes=3, min_size=64, max_size=64, fpn_channels=32, head_convs=1,
                    norm="bn", trainable_backbone_layers=layers)
    grad = {name.split(".")[1] if name.startswith("trunk_output.") else name.split(".")[0]
            for name, p in m.backbone.body.named_parameters() if p.requires_grad}
    assert grad == trained
    assert all(p.requires_grad for p in m.backbone.fpn.parameters())


def test_imagenet_file_loads_into_a_regnet_body_and_a_resnet_file_is_refused(tmp_path):
    tv = _torchvision_regnet()
    path = tmp_path / "regnet_x_400mf.pth"
    torch.save(tv.state_dict(), path)
    model = build_model("regnet_x_400mf_fpn_v2", num_classes=3, min_size=64, max_size=64, fpn_channels=32,
                        head_convs=1, norm="frozen_bn")
    W.load_backbone_weights(model, path)
    own = model.backbone.body.state_dict()
    for k, v in tv.state_dict().items():
        if not k.startswith("fc.") and not k.endswith("num_batches_tracked"):
            assert torch.equal(own[k], v), k
    other = tmp_path / "resnet18.pth"
    torch.save(resnet.resnet18().state_dict(), other)
    with pytest.raises(CheckpointError, match=r"resnet18\.pth: not a backbone for regnet_x_400mf_fpn_v2"):
        W.load_backbone_weights(model, other)
    assert set(REGNETS) <= set(W.IMAGENET_URLS)  # --backbone-weights imagenet has a file for each


def test_regnet_detector_trains_and_detects():
    torch.manual_seed(0)
    m = build_model("regnet_x_400mf_fpn_v2", num_classes=2, min_size=256, max_size=256, fpn_channels=32, head_convs=1,
                    norm="bn", trainable_backbone_layers=5)
    img = torch.rand(3, 256, 256)
    tg = [{"boxes": torch.tensor([[10.0, 12, 40, 50]]), "labels": torch.tensor([1])}] * 2
    losses = m([img, img.flip(-1)], tg)
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values()) and losses["bbox_regression"] > 0
    assert m.backbone.body.stem[0].weight.grad.abs().sum() > 0
    m.eval()
    with torch.no_grad():
        out = m([img])[0]
    assert set(out) == {"boxes", "scores", "labels"}


def test_v2_head_with_32_channels_takes_a_1x1_level():
    """fpn_channels 32 gives GroupNorm groups of one channel; at an input of 128 px P7 is 1x1, a
    group of one value, which torch's GroupNorm refuses: ours gives the formula's result (the bias)."""
    from retinanet.model.backbone import GroupNorm

    torch.manual_seed(0)
    m = build_model("resnet18_fpn_v2", num_classes=3, min_size=128, max_size=128, fpn_channels=32, head_convs=1, norm="bn")
    m.eval()
    with torch.no_grad():
        out = m([torch.rand(3, 128, 128)])[0]  # torch's GroupNorm: ValueError here
    assert set(out) == {"boxes", "scores", "labels"}
    gn = GroupNorm(4, 4)
    torch.nn.init.normal_(gn.bias)
    x = torch.randn(2, 4, 1, 1)
    torch.testing.assert_close(gn(x), gn.bias.reshape(1, -1, 1, 1).expand(2, 4, 1, 1))
    y = torch.randn(2, 4, 3, 3)
    torch.testing.assert_close(gn(y), torch.nn.functional.group_norm(y, 4, gn.weight, gn.bias, gn.eps))
