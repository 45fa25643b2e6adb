"""Equality with torchvision's RetinaNet (losses, detections) and weight loading."""

import pytest
import torch
from torchvision.models.detection import retinanet_resnet50_fpn, retinanet_resnet50_fpn_v2

from retinanet.errors import CheckpointError
from retinanet.model import build_model, load_weights

SMALL = dict(min_size=128, max_size=160, score_thresh=0.01)


def _inputs():
    g = torch.Generator().manual_seed(0)
    imgs = [torch.rand(3, 100, 140, generator=g), torch.rand(3, 90, 70, generator=g)]
    targets = [{"boxes": torch.tensor([[10.0, 10, 60, 50], [30, 20, 90, 80]]), "labels": torch.tensor([1, 3])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    return imgs, targets


def _key(d):
    """Detections as a list sorted by (score, label, box) so tie order does not matter."""
    rows = torch.cat([d["scores"][:, None], d["labels"][:, None].float(), d["boxes"]], 1)
    return sorted(map(tuple, rows.tolist()))


@pytest.mark.parametrize("arch,tv_builder", [("resnet50_fpn", retinanet_resnet50_fpn),
                                             ("resnet50_fpn_v2", retinanet_resnet50_fpn_v2)])
def test_losses_and_detections_equal_torchvision(arch, tv_builder):
    torch.manual_seed(0)
    tv = tv_builder(weights=None, weights_backbone=None, num_classes=5, **SMALL)
    ours = build_model(arch, num_classes=5, norm="bn", trainable_backbone_layers=5, **SMALL)
    assert list(ours.state_dict()) == list(tv.state_dict())
    ours.load_state_dict(tv.state_dict())
    imgs, targets = _inputs()
    ours.eval(), tv.eval()  # eval-mode BN so that both see identical statistics
    with torch.no_grad():
        a, b = ours(imgs), tv(imgs)
    for x, y in zip(a, b):
        assert torch.equal(x["scores"], y["scores"])
        assert len(x["boxes"]) > 0
        torch.testing.assert_close(torch.tensor(_key(x)), torch.tensor(_key(y)))
        n = 100  # scores are far from tied at the top: order must match exactly there
        assert torch.equal(x["labels"][:n], y["labels"][:n])
        torch.testing.assert_close(x["boxes"][:n], y["boxes"][:n])
    ours.train(), tv.train()
    la, lb = ours(imgs, targets), tv(imgs, targets)
    for k in ("classification", "bbox_regression"):
        torch.testing.assert_close(la[k], lb[k])
        assert la[k].dtype == torch.float32


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
