"""Batched post-processing equals torchvision's per-image loop, on both candidate paths."""

from types import SimpleNamespace

import pytest
import torch
from torchvision.models.detection import RetinaNet
from torchvision.models.detection._utils import BoxCoder

from retinanet.model.anchors import AnchorCache
from retinanet.model.postprocess import decode_batch, unpad_detections


@pytest.mark.parametrize("logit_mean, topk, score_thresh, full_topk", [
    (-7.0, 1000, 0.05, False), (-4.0, 50, 0.05, True), (-7.0, 5, 0.05, True), (-7.0, 20, 0.0, True)],
    ids=["few-above-threshold", "many-above-threshold", "more-than-topk-in-one-image", "threshold-zero"])
def test_decode_batch_equals_torchvision(logit_mean, topk, score_thresh, full_topk):
    g = torch.Generator().manual_seed(0)
    B, C, s = 3, 6, 128
    anchors = AnchorCache()([(s // 2 ** k, s // 2 ** k) for k in range(3, 8)], (s, s), "cpu")
    cls = [torch.randn(B, a.shape[0], C, generator=g) * 1.5 + logit_mean for a in anchors]
    reg = [torch.randn(B, a.shape[0], 4, generator=g) * 0.2 for a in anchors]
    sizes = [(s, s), (100, s), (s, 90)]
    # the case takes the path its name says: some image has more than topk candidates on a level
    above = [(c.sigmoid() > score_thresh).flatten(1).sum(1).max().item() for c in cls]
    assert any(a > topk for a in above) == full_topk
    ours = unpad_detections(*decode_batch(cls, reg, anchors, torch.tensor(sizes), score_thresh, 0.5, 100, topk))
    tv = SimpleNamespace(box_coder=BoxCoder((1.0, 1.0, 1.0, 1.0)), score_thresh=score_thresh, nms_thresh=0.5,
                         detections_per_img=100, topk_candidates=topk)
    ref = RetinaNet.postprocess_detections(tv, {"cls_logits": cls, "bbox_regression": reg}, [anchors] * B, sizes)
    assert sum(len(r["scores"]) for r in ref) > 0
    for o, r in zip(ours, ref):
        torch.testing.assert_close(o["scores"], r["scores"])
        torch.testing.assert_close(o["labels"], r["labels"])
        torch.testing.assert_close(o["boxes"], r["boxes"], atol=1e-4, rtol=0)
