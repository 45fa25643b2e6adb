"""ONNX export: onnxruntime must give PyTorch eager's detections at other sizes and batch sizes.

One dynamic export (through the CLI, from a checkpoint file) is shared by the module: exports
are the slow part (~30-40 s on two cores).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json

import pytest
import torch
from torchvision.ops import batched_nms

from retinanet.checkpoint_io import save_checkpoint
from retinanet.cli import main
from retinanet.engine.checkpoint import load_model
from retinanet.engine.export import make_samples, padded_nms, read_metadata, verify_onnx
from retinanet.model import build_model

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

CLASS_MAP = {"cat": 1, "dog": 2, "bird": 3}
MAX_DETS = 15


def _tiny_model(seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(
        "resnet18_fpn", num_classes=4, min_size=128, max_size=192, detections_per_img=MAX_DETS,
        topk_candidates=100, score_thresh=0.05, norm="bn",
    )
    with torch.no_grad():  # a prior of 0.01 gives no detection on random weights: spread scores out
        model.head.classification_head.cls_logits.bias.normal_(-2.0, 1.0)
    return model.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(checkpoint path, onnx path, CLI stdout) of a CLI export with verification."""
    tmp = tmp_path_factory.mktemp("export")
    model = _tiny_model()
    ckpt = save_checkpoint(
        {"model": model.state_dict(), "config": {"model": dataclasses.asdict(model.config)}, "class_map": CLASS_MAP},
        tmp / "tiny.pt",
    )
    out = tmp / "tiny.onnx"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        status = main(["export", "--weights", str(ckpt), "--out", str(out), "--image-size", "128", "--batch-size", "2"])
    assert status == 0, buf.getvalue()
    return ckpt, out, buf.getvalue()


def test_cli_export_verifies_and_prints_summary(exported):
    _, out, stdout = exported
    assert out.is_file()
    assert "verification: passed" in stdout
    assert "images [batch,3,height,width] uint8" in stdout
    assert "opset 18" in stdout
    # both verification batches, with their per-image detection counts
    assert "2x3x128x128" in stdout and "1x3x128x160" in stdout


def test_metadata_holds_class_names(exported):
    _, out, _ = exported
    meta = read_metadata(out)
    assert json.loads(meta["class_map"]) == CLASS_MAP
    assert meta["detections_per_img"] == str(MAX_DETS)


def test_dynamic_axes_match_eager_at_new_sizes(exported):
    ckpt, out, _ = exported
    model, _ = load_model(ckpt)
    samples = make_samples(model, (150, 128), batch_sizes=(3, 1), seed=7)  # not the export's shapes
    shapes = [tuple(s.shape) for s in samples]
    assert shapes[0] == (3, 3, 150, 128) and shapes[1][0] == 1 and shapes[1][2:] != (128, 128)
    report = verify_onnx(model, out, samples)
    assert report.ok, report.format()
    assert sum(report.batches[0].counts_onnx) > 0  # there were detections to compare
    assert report.batches[0].counts_onnx == report.batches[0].counts_torch


def test_verify_catches_a_different_model(exported):
    ckpt, out, _ = exported
    other = _tiny_model(seed=1)
    report = verify_onnx(other, out, make_samples(other, 128, batch_sizes=(1,)))
    assert not report.ok
    assert "MISMATCH" in report.format()


def test_cli_export_fails_clearly_on_missing_checkpoint(tmp_path, capsys):
    status = main(["export", "--weights", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "m.onnx")])
    assert status == 2
    assert "nope.pt: no such file" in capsys.readouterr().err


def test_padded_nms_equals_per_image_batched_nms():
    gen = torch.Generator().manual_seed(0)
    batch, num, max_dets = 3, 200, 10
    xy = torch.rand(batch, num, 2, generator=gen) * 100
    boxes = torch.cat((xy, xy + 5 + torch.rand(batch, num, 2, generator=gen) * 40), -1)
    scores = torch.rand(batch, num, generator=gen)
    labels = torch.randint(0, 3, (batch, num), generator=gen)
    out_boxes, out_scores, out_labels, counts = padded_nms(
        boxes, scores, labels, score_thresh=0.3, iou_thresh=0.5, max_dets=max_dets
    )
    for b in range(batch):
        keep_mask = scores[b] > 0.3
        bx, sc, lb = boxes[b][keep_mask], scores[b][keep_mask], labels[b][keep_mask]
        keep = batched_nms(bx, sc, lb, 0.5)[:max_dets]
        n = int(counts[b])
        assert n == len(keep)
        torch.testing.assert_close(out_boxes[b, :n], bx[keep])
        torch.testing.assert_close(out_scores[b, :n], sc[keep])
        assert torch.equal(out_labels[b, :n], lb[keep])
        assert (out_labels[b, n:] == -1).all() and (out_scores[b, n:] == 0).all()
