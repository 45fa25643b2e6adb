"""ONNX export: onnxruntime must give PyTorch eager's detections at other sizes and batch sizes.

One dynamic export (through the CLI, from a checkpoint file) is shared by the tests that need
onnx/onnxruntime (they are skipped without them; the others are pure torch): exports are the
slow part (~30-40 s on two cores).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging

import pytest
import torch

from retinanet.engine.runtime.checkpoint import save_checkpoint
from retinanet.cli import main
from retinanet.engine.runtime.checkpoint import load_model
from retinanet.engine.export.onnx_export import ExportableDetector, read_metadata
from retinanet.engine.export.onnx_verify import make_samples, verify_onnx
from retinanet.errors import RetinaNetError
from retinanet.model import build_model

CLASS_MAP = {"cat": 1, "dog": 2, "bird": 3}
MAX_DETS = 15


def _tiny_model(seed: int = 0, **options):
    torch.manual_seed(seed)
    model = build_model(
        "resnet18_fpn", num_classes=4, min_size=128, max_size=192, detections_per_img=MAX_DETS,
        topk_candidates=100, score_thresh=0.05, norm="bn", **options,
    )
    with torch.no_grad():  # a prior of 0.01 gives no detection on random weights: spread scores out
        model.head.classification_head.cls_logits.bias.normal_(-2.0, 1.0)
    return model.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(checkpoint path, onnx path, CLI stdout) of a CLI export with verification."""
    for module in ("onnx", "onnxruntime", "onnxscript"):  # skips only the tests that use this
        pytest.importorskip(module)
    tmp = tmp_path_factory.mktemp("export")
    model = _tiny_model(anchor_sizes=(16, 32, 64, 128, 256))  # not the default: the graph must use the model's
    ckpt = save_checkpoint(
        {"model": model.state_dict(), "config": {"model": dataclasses.asdict(model.config)}, "class_map": CLASS_MAP},
        tmp / "tiny.pt",
    )
    out = tmp / "tiny.onnx"
    buf, records = io.StringIO(), _Records()
    logging.getLogger().addHandler(records)
    try:
        with contextlib.redirect_stdout(buf):
            status = main(["export", "--weights", str(ckpt), "--out", str(out), "--image-size", "128", "--batch-size", "2"])
    finally:
        logging.getLogger().removeHandler(records)
    assert status == 0, buf.getvalue()
    # the exporter's "Attribute type is ambiguous ..." warnings are not shown to the user
    assert not [r for r in records.records if r.levelno >= logging.WARNING and r.name.startswith("onnx")], records.records
    return ckpt, out, buf.getvalue()


class _Records(logging.Handler):
    """Keeps every log record it gets."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)


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
    default_anchors = _tiny_model()  # the exported weights with torchvision's anchors: the graph has its own
    assert not verify_onnx(default_anchors, out, make_samples(default_anchors, 128, batch_sizes=(1,))).ok


def test_a_failed_check_says_the_file_is_left_and_not_fit_for_use(exported, tmp_path, monkeypatch, capsys):
    import retinanet.engine.export.onnx_export as E
    ckpt, out, _ = exported
    other = _tiny_model(seed=1)
    failing = verify_onnx(other, out, make_samples(other, 128, batch_sizes=(1,)))  # a real failed report
    monkeypatch.setattr(E, "verify_onnx", lambda *a, **k: failing)
    target = tmp_path / "bad.onnx"
    assert main(["export", "--weights", str(ckpt), "--out", str(target), "--image-size", "128"]) == 2
    err = capsys.readouterr().err
    assert "ONNX output differs from PyTorch" in err and "the file is left on disk for inspection, not fit for use" in err
    assert target.is_file()


def test_a_crop_trained_model_s_export_says_its_input_is_native_tiles(tmp_path, capsys):
    """A ``--crop 64`` checkpoint's graph was documented, in its metadata and README, as taking whole
    images "resized by the caller to the model's input size": 64 px, where a large image's objects
    vanish (predict and Detector tile such a model). The export says so and records the crop."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    model = _tiny_model()
    config = {"model": {**dataclasses.asdict(model.config), "min_size": 64, "max_size": 64}, "data": {"crop": 64}}
    ckpt = save_checkpoint({"model": model.state_dict(), "config": config, "class_map": CLASS_MAP}, tmp_path / "crop.pt")
    out = tmp_path / "crop.onnx"
    assert main(["export", "--weights", str(ckpt), "--out", str(out), "--static", "--no-verify"]) == 0
    err = capsys.readouterr().err
    assert "the model was trained on 64 px crops at native resolution: give the graph tiles of 64 px" in err
    assert "not whole images resized to 64 px" in err
    meta = read_metadata(out)
    assert meta["trained_crop"] == "64" and "native-resolution tiles of 64 px" in meta["input"]
    assert "resized by the caller" not in meta["input"]


def test_cli_export_fails_clearly_on_missing_checkpoint(tmp_path, capsys):
    status = main(["export", "--weights", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "m.onnx")])
    assert status == 2
    assert "nope.pt: no such file" in capsys.readouterr().err


def test_exported_module_gives_eager_detections_in_torch():
    """The module that is exported, run eagerly: the model's detections, padded (no onnx needed)."""
    model = _tiny_model()
    model.config = dataclasses.replace(model.config, detections_per_img=500)  # room for padding rows
    images = make_samples(model, 128, batch_sizes=(2,), seed=3)[0]  # uint8, at the input size
    with torch.no_grad():
        boxes, scores, labels, num = ExportableDetector(model)(images)
        expected = model(list(images.float() / 255))
    assert num.tolist() == [len(e["scores"]) for e in expected] and 0 < num.max() < 500
    for b, ref in enumerate(expected):
        n = int(num[b])
        torch.testing.assert_close(scores[b, :n], ref["scores"])
        assert torch.equal(labels[b, :n], ref["labels"])
        torch.testing.assert_close(boxes[b, :n], ref["boxes"], atol=1e-3, rtol=0)
        assert (labels[b, n:] == -1).all() and (scores[b, n:] == 0).all()


def test_exportable_detector_rejects_bad_arguments():
    with pytest.raises(RetinaNetError, match="input dtype"):
        ExportableDetector(_tiny_model(), input_dtype="float16")
    with pytest.raises(RetinaNetError, match="only retinanet's own RetinaNet"):
        ExportableDetector(torch.nn.Linear(2, 2))


def test_refusals_come_before_the_export_and_leave_no_file(exported, tmp_path, capsys):
    """A static size eager would resize, an unreadable --sample, an opset onnx does not know: each
    refused in a second, not after the ~25 s export and with the unverified file left at --out."""
    ckpt = str(exported[0])
    for extra, said in ((["--static", "--image-size", "117", "150"], "the model resizes it to"),
                        (["--static", "--sample", str(tmp_path / "nope.jpg")], "nope.jpg: cannot read the image"),
                        (["--opset", "99"], "opset 99 is not supported; the exporter writes opset 18 to")):
        out = tmp_path / "x.onnx"
        assert main(["export", "--weights", ckpt, "--out", str(out), *extra]) == 2
        assert said in capsys.readouterr().err and not out.exists()


def test_every_static_sample_is_checked_and_a_check_without_detections_says_so(tmp_path):
    from PIL import Image

    from retinanet.engine.export.onnx_verify import BatchComparison, VerifyReport, verification_samples

    files = []
    for i in range(3):
        files.append(tmp_path / f"{i}.png")
        Image.new("RGB", (40, 30), (i * 60, 10, 10)).save(files[-1])
    batches = verification_samples(_tiny_model(), dynamic=False, image_size=(), batch_size=2, input_dtype="uint8",
                                   files=files)
    assert [tuple(b.shape) for b in batches] == [(2, 3, 128, 128)] * 2  # 3 files in batches of 2: all of them
    report = VerifyReport(tmp_path / "m.onnx", 1.0, 18, [], [], {}, [BatchComparison((1, 3, 8, 8), [0], [0])])
    assert "passed (but no image gave a detection above the score threshold, so no box or score was compared" in report.format()
    report.batches[0].counts_torch = report.batches[0].counts_onnx = [2]
    assert report.format().endswith("verification: passed")


def test_the_check_says_when_an_image_fills_the_graph_s_k(exported, tmp_path):
    """The check on a 256-object image printed ``onnx dets [300] torch dets [300] ... ok`` without a word
    that 300 is all the graph has room for (the model's detections_per_img): more were cut in both."""
    from retinanet.engine.export.onnx_verify import BatchComparison, VerifyReport

    _, out, stdout = exported
    assert f"(K={MAX_DETS} reached)" in stdout  # the fixture's random images fill K = 15
    assert f"gave K = {MAX_DETS} detections, all the graph has room for" in stdout and "export --max-dets N" in stdout
    assert read_metadata(out)["topk_candidates"] == "100"  # the graph's per-level top-k, as eager runs it
    below = VerifyReport(tmp_path / "m.onnx", 1.0, 18, [], [], {}, [BatchComparison((2, 3, 8, 8), [3, 4], [3, 4], k=300)])
    assert "reached" not in below.format() and "note:" not in below.format()
    full = VerifyReport(tmp_path / "m.onnx", 1.0, 18, [], [], {}, [BatchComparison((2, 3, 8, 8), [300, 4], [300, 4], k=300)])
    assert "ok (K=300 reached)" in full.format() and "note: 1 image(s) gave K = 300 detections" in full.format()
