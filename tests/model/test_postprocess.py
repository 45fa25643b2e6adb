"""Batched post-processing equals torchvision's per-image loop, on both candidate paths, and the
fixed-shape (export) path gives the eager path's detections in the same padded layout."""

from types import SimpleNamespace

import pytest
import torch
from torchvision.models.detection import RetinaNet
from torchvision.models.detection._utils import BoxCoder

from retinanet.model.anchors import AnchorCache
from retinanet.model.postprocess import PAD_LABEL, decode_batch, decode_batch_static, has_area, unpad_detections


def _raw_outputs(B, C, s, logit_mean, seed=0):
    """Random head outputs of a batch of ``s x s`` padded images, with their anchors."""
    g = torch.Generator().manual_seed(seed)
    anchors = AnchorCache()([(s // 2 ** k, s // 2 ** k) for k in range(3, 8)], (s, s), "cpu")
    cls = [torch.randn(B, a.shape[0], C, generator=g) * 1.5 + logit_mean for a in anchors]
    reg = [torch.randn(B, a.shape[0], 4, generator=g) * 0.2 for a in anchors]
    return cls, reg, anchors


@pytest.mark.parametrize("logit_mean, topk, score_thresh, full_topk", [
    (-7.0, 1000, 0.05, False), (-4.0, 50, 0.05, True), (-7.0, 5, 0.05, True), (-7.0, 20, 0.0, True)],
    ids=["few-above-threshold", "many-above-threshold", "more-than-topk-in-one-image", "threshold-zero"])
def test_decode_batch_equals_torchvision(logit_mean, topk, score_thresh, full_topk):
    B, C, s = 3, 6, 128
    cls, reg, anchors = _raw_outputs(B, C, s, logit_mean)
    sizes = [(s, s), (100, s), (s, 90)]
    # the case takes the path its name says: some image has more than topk candidates on a level
    above = [(c.sigmoid() > score_thresh).flatten(1).sum(1).max().item() for c in cls]
    assert any(a > topk for a in above) == full_topk
    ours = unpad_detections(*decode_batch(cls, reg, anchors, torch.tensor(sizes), score_thresh, 0.5, 100, topk)[:4])
    tv = SimpleNamespace(box_coder=BoxCoder((1.0, 1.0, 1.0, 1.0)), score_thresh=score_thresh, nms_thresh=0.5,
                         detections_per_img=100, topk_candidates=topk)
    ref = RetinaNet.postprocess_detections(tv, {"cls_logits": cls, "bbox_regression": reg}, [anchors] * B, sizes)
    assert sum(len(r["scores"]) for r in ref) > 0
    # torchvision keeps boxes the clip leaves with no area (they lay in the padding beside the
    # 100 px and 90 px images); we do not: the rest is the same, in the same order
    flat = [(r["boxes"][:, 2] > r["boxes"][:, 0]) & (r["boxes"][:, 3] > r["boxes"][:, 1]) for r in ref]
    assert not any(has_area(o["boxes"]).logical_not().any() for o in ours)
    for o, r, keep in zip(ours, ref, flat):
        n = int(keep.sum())
        assert len(o["scores"]) == n or (len(r["scores"]) == 100 and len(o["scores"]) > n)  # the cut bound: ours go on
        torch.testing.assert_close(o["scores"][:n], r["scores"][keep])
        torch.testing.assert_close(o["labels"][:n], r["labels"][keep])
        torch.testing.assert_close(o["boxes"][:n], r["boxes"][keep], atol=1e-4, rtol=0)


@pytest.mark.parametrize("logit_mean, topk, max_dets, thresh", [
    (-7.0, 1000, 300, 0.05), (-4.0, 50, 300, 0.05), (-4.0, 200, 20, 0.05), (-7.0, 1000, 5000, 0.0)],
    ids=["few-above-threshold", "many-above-threshold", "detections-per-img-cut", "threshold-zero-no-cut"])
def test_static_path_gives_the_eager_detections(logit_mean, topk, max_dets, thresh):
    """At 128 px the levels P5-P7 hold fewer than 1000 logits: the static path pads them (score
    0), and not one of those picks may come out, even at threshold 0 with no cut."""
    B, C, s = 3, 6, 128
    cls, reg, anchors = _raw_outputs(B, C, s, logit_mean, seed=1)
    assert [c.shape[1] * C for c in cls][2:] == [864, 216, 54]
    image_hw = torch.tensor([[s, 100]] * B)  # the static path takes one size for the whole batch
    eager = decode_batch(cls, reg, anchors, image_hw, thresh, 0.5, max_dets, topk)
    static = decode_batch_static(cls, reg, anchors, image_hw[0], thresh, 0.5, max_dets, topk)
    num = eager[3]
    assert num.sum() > 0 and torch.equal(num, static[3])
    for e, st in zip(eager[:3], static[:3]):
        assert e.shape == st.shape
        torch.testing.assert_close(st, e, atol=1e-4, rtol=0)  # padding rows too
    if max_dets == 20:
        assert (num == max_dets).all()  # the cut applied
    else:  # one padding convention, the export contract: label -1, score 0, zero box
        assert (num < max_dets).all() and PAD_LABEL == -1
        for b, n in enumerate(num.tolist()):
            assert (eager[2][b, n:] == -1).all() and (eager[1][b, n:] == 0).all()
            assert (eager[0][b, n:] == 0).all()


def test_static_nms_keeps_images_apart():
    """Two identical images: every box of one overlaps its twin in the other, and must not
    suppress it (each (image, class) group is NMS-ed on its own)."""
    B, C, s = 2, 3, 128
    cls, reg, anchors = _raw_outputs(1, C, s, -6.0, seed=2)
    single = decode_batch(cls, reg, anchors, torch.tensor([[s, s]]), 0.05, 0.5, 50, 100)
    cls = [c.expand(B, -1, -1) for c in cls]
    reg = [r.expand(B, -1, -1) for r in reg]
    boxes, scores, labels, num = decode_batch_static(cls, reg, anchors, torch.tensor([s, s]), 0.05, 0.5, 50, 100)
    assert num.tolist() == [int(single[3][0])] * B and num[0] > 0
    for b in range(B):
        torch.testing.assert_close(boxes[b], single[0][0], atol=1e-4, rtol=0)
        torch.testing.assert_close(scores[b], single[1][0])
        assert torch.equal(labels[b], single[2][0])


def test_a_box_the_clip_leaves_without_area_is_not_a_detection_on_either_path():
    """A narrow image beside wide ones: boxes predicted in the padding became 0-wide detections
    (and 0-wide VOC XML and YOLO labels that the readers then drop)."""
    B, C, s = 2, 3, 128
    cls, reg, anchors = _raw_outputs(B, C, s, -2.0, seed=3)  # many candidates, some far right
    narrow = torch.tensor([[s, 8]] * B)  # 8 px wide: most anchors' boxes lie beyond it
    for out in (decode_batch(cls, reg, anchors, narrow, 0.05, 0.5, 300, 1000),
                decode_batch_static(cls, reg, anchors, narrow[0], 0.05, 0.5, 300, 1000)):
        boxes, num = out[0], out[3]
        assert num.min() > 0
        for b, n in enumerate(num.tolist()):
            assert has_area(boxes[b, :n]).all() and (boxes[b, :n, 2] <= 8).all()
    eager, static = (decode_batch(cls, reg, anchors, narrow, 0.05, 0.5, 300, 1000),
                     decode_batch_static(cls, reg, anchors, narrow[0], 0.05, 0.5, 300, 1000))
    assert torch.equal(eager[3], static[3])


def test_a_level_top_k_that_left_candidates_out_is_reported_with_the_score_it_cut_at():
    """A whole-image pass over 4096 small objects gave 786 detections of --max-dets 5000 without a word:
    each FPN level's top-k left candidates above the threshold out before NMS. ``decode_batch`` now
    says so per image below the cap, with the score of the last candidate a cutting level kept."""
    B, C, s, thresh, topk = 3, 6, 128, 0.05, 50
    cls, reg, anchors = _raw_outputs(B, C, s, -4.0)
    image_hw = torch.tensor([[s, s]] * B)
    *_, num, cut = decode_batch(cls, reg, anchors, image_hw, thresh, 0.5, 300, topk)
    assert (num < 300).all()
    for b in range(B):  # by hand: the topk-th best logit of each level with more than topk above the threshold
        kth = [c[b].flatten().sort(descending=True).values[topk - 1] for c in cls if (c[b].sigmoid() > thresh).sum() > topk]
        assert kth and float(cut[b]) == pytest.approx(float(torch.stack(kth).max().sigmoid()))
    assert (cut > thresh).all()
    # nothing left out: 0; an image at the cap: 0 (the cap cut it, not the top-k); threshold 0: the top-k is the selection
    assert not decode_batch(cls, reg, anchors, image_hw, thresh, 0.5, 300, 100000)[4].any()
    capped = decode_batch(cls, reg, anchors, image_hw, thresh, 0.5, 5, topk)
    assert (capped[3] == 5).all() and not capped[4].any()
    assert not decode_batch(cls, reg, anchors, image_hw, 0.0, 0.5, 300, topk)[4].any()
    few = _raw_outputs(B, C, s, -7.0)
    assert not decode_batch(*few, image_hw, thresh, 0.5, 300, 1000)[4].any()


def test_a_cap_above_topk_candidates_raises_each_level_s_top_k_and_the_defaults_stay_torchvision_s():
    """``max_dets`` 5000 with ``topk_candidates`` 1000: one level could give at most 1000 candidates,
    so a crowded image stopped far below the cap. The top-k now follows a larger cap; at the
    defaults (1000 per level, 300 per image) it is torchvision's 1000 (tests/model/test_compat.py)."""
    from retinanet.config import ModelConfig
    from retinanet.model import build_model

    torch.manual_seed(0)
    tight = build_model("resnet18_fpn", num_classes=3, min_size=64, max_size=96, norm="bn", fpn_channels=32, head_convs=1,
                        topk_candidates=10).eval()
    wide = build_model("resnet18_fpn", num_classes=3, min_size=64, max_size=96, norm="bn", fpn_channels=32, head_convs=1,
                       topk_candidates=300).eval()
    wide.load_state_dict(tight.state_dict())
    image = torch.randint(0, 256, (3, 90, 130), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        plain = tight([image], score_thresh=0.005, max_dets=300)[0]
        assert len(plain["scores"]) > 5 * 10  # five levels of 10 candidates could give no more (8 before)
        a, b = tight.detect([image], score_thresh=0.005, max_dets=300), wide.detect([image], score_thresh=0.005, max_dets=300)
        few = tight.detect([image], score_thresh=0.005, max_dets=5)
    for k in ("boxes", "scores", "labels"):
        assert torch.equal(a.detections[0][k], b.detections[0][k]) and torch.equal(plain[k], a.detections[0][k])
    assert a.candidates_cut == b.candidates_cut and a.candidates_cut[0] > 0.005  # more above the threshold than 300
    assert len(few.detections[0]["scores"]) == 5 and few.candidates_cut == [0.0]
    assert set(a.detections[0]) == {"boxes", "scores", "labels"}  # forward's (torchvision's) dicts, unchanged
    assert ModelConfig().candidates_per_level() == 1000 and ModelConfig().candidates_per_level(5000) == 5000
    assert ModelConfig(detections_per_img=2000).candidates_per_level() == 2000


def test_a_score_equal_to_the_threshold_is_dropped_on_both_paths_as_torchvision_does():
    """``score_thresh`` keeps scores strictly above it (torchvision's ``scores > score_thresh``): the
    help and docstrings said "at least"; a score exactly at it (sigmoid(0) = 0.5) is no detection."""
    B, C, s = 1, 3, 128
    cls, reg, anchors = _raw_outputs(B, C, s, -30.0, seed=4)  # nothing near the threshold...
    cls[0][0, 10, 1], cls[0][0, 500, 2] = 0.0, 0.1  # ...but a score of exactly 0.5 and one just above it
    size = torch.tensor([[s, s]])
    for out in (decode_batch(cls, reg, anchors, size, 0.5, 0.5, 300, 1000),
                decode_batch_static(cls, reg, anchors, size[0], 0.5, 0.5, 300, 1000)):
        scores, labels, num = out[1], out[2], out[3]
        assert num.tolist() == [1] and labels[0, :1].tolist() == [2] and scores[0, 0] > 0.5
    assert torch.sigmoid(torch.tensor(0.0)).item() == 0.5
