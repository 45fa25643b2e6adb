"""Model behaviour: batched equals single-image, uint8 input, training finds an object."""

import torch
from torchvision.ops import box_iou

from retinanet.model import build_model


def _model(**kw):
    torch.manual_seed(0)
    return build_model("resnet18_fpn", num_classes=3, min_size=96, max_size=128, norm="frozen_bn", **kw)


def test_forward_raw_shapes():
    m = _model().eval()
    cls, reg = m.forward_raw(torch.zeros(2, 3, 128, 96))
    hw = [(16, 12), (8, 6), (4, 3), (2, 2), (1, 1)]
    assert [c.shape for c in cls] == [torch.Size([2, h * w * 9, 3]) for h, w in hw]
    assert [r.shape for r in reg] == [torch.Size([2, h * w * 9, 4]) for h, w in hw]


def test_batched_equals_single():
    m = _model(score_thresh=0.01)
    g = torch.Generator().manual_seed(1)
    imgs = [torch.rand(3, 96, 128, generator=g), torch.rand(3, 96, 128, generator=g)]
    tg = [{"boxes": torch.tensor([[10.0, 10, 50, 60]]), "labels": torch.tensor([1])},
          {"boxes": torch.tensor([[0.0, 5, 90, 80], [60, 40, 120, 90]]), "labels": torch.tensor([2, 1])}]
    both = m(imgs, tg)
    singles = [m([i], [t]) for i, t in zip(imgs, tg)]
    for k in both:
        torch.testing.assert_close(both[k], (singles[0][k] + singles[1][k]) / 2)
    torch.nn.init.normal_(m.head.classification_head.cls_logits.weight, std=0.3)  # distinct scores
    m.eval()
    with torch.no_grad():
        dets = m(imgs)
        for i, img in enumerate(imgs):
            one = m([img])[0]
            torch.testing.assert_close(dets[i]["scores"], one["scores"])
            # bit-identical scores deep in the list make NMS order arbitrary there: compare the top
            torch.testing.assert_close(dets[i]["boxes"][:50], one["boxes"][:50], atol=1e-3, rtol=1e-5)
            assert torch.equal(dets[i]["labels"][:50], one["labels"][:50])


def test_an_image_s_detections_do_not_depend_on_batch_mates_of_another_size(monkeypatch):
    """v2 heads (GroupNorm over the whole padded map): padded with a larger image, an image's
    scores changed (and with them an evaluation's AP at another --batch-size)."""
    import retinanet.model.retinanet as R

    torch.manual_seed(0)
    m = build_model("resnet18_fpn_v2", num_classes=3, min_size=96, max_size=256, norm="bn", fpn_channels=32, score_thresh=0.0).eval()
    g = torch.Generator().manual_seed(2)
    imgs = [torch.rand(3, 96, 96, generator=g), torch.rand(3, 57, 203, generator=g), torch.rand(3, 96, 96, generator=g)]
    with torch.no_grad():
        together = m(imgs)
        alone = [m([im])[0] for im in imgs]
        with monkeypatch.context() as mp:  # one padded batch, as before (and as torchvision does): scores move
            mp.setattr(R, "padded_size_groups", lambda images, *a: [list(range(len(images)))])
            mixed = m(imgs)
    assert not torch.allclose(mixed[0]["scores"][:10], alone[0]["scores"][:10])
    for a, b in zip(together, alone):
        assert len(a["scores"]) == len(b["scores"]) > 0
        torch.testing.assert_close(a["scores"], b["scores"])
        torch.testing.assert_close(a["boxes"][:50], b["boxes"][:50], atol=1e-3, rtol=1e-5)


def test_empty_targets_and_uint8():
    m = _model()
    img = (torch.rand(3, 64, 80) * 255).to(torch.uint8)
    out = m([img], [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}])
    assert out["bbox_regression"].item() == 0.0 and out["classification"].item() > 0


def test_training_finds_rectangle():
    torch.manual_seed(0)
    m = build_model("resnet18_fpn", num_classes=2, min_size=96, max_size=96, norm="bn",
                    trainable_backbone_layers=5)
    g = torch.Generator().manual_seed(0)
    img = torch.rand(3, 96, 96, generator=g) * 0.3
    img[:, 30:70, 20:60] = torch.tensor([0.9, 0.2, 0.1])[:, None, None]
    box = torch.tensor([[20.0, 30, 60, 70]])
    tg = [{"boxes": box, "labels": torch.tensor([1])}]
    opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
    losses = []
    for _ in range(40):
        loss = sum(m([img], tg).values())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)  # random init, batch of 1
        opt.step()
        losses.append(loss.item())
    assert min(losses[-5:]) < 0.6 * losses[0]
    m.eval()
    with torch.no_grad():
        det = m([img])[0]
    assert det["labels"][0].item() == 1
    assert box_iou(det["boxes"][:1], box).item() > 0.5
