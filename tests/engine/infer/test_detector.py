"""``retinanet.Detector``: every input kind, boxes in original pixels, class names, batching."""

from __future__ import annotations

import json
import threading
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import retinanet
from retinanet.errors import RetinaNetError
from retinanet.geometry import resize_image

CLASS_MAP = {"cat": 1, "dog": 2}
SIZE = (90, 130)  # H, W: not the model's input size (min_size 64 -> 64 x 92)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny untrained model saved as our checkpoint (resnet18, 64-96 px, 32 FPN channels)."""
    from retinanet.engine.runtime.checkpoint import save_checkpoint
    from retinanet.model import build_model

    torch.manual_seed(0)
    model = build_model("resnet18_fpn", num_classes=3, min_size=64, max_size=96, norm="bn", fpn_channels=32, head_convs=1)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint({"model": model.state_dict(), "config": {"model": asdict(model.config)}, "class_map": CLASS_MAP}, path)
    return path


@pytest.fixture(scope="module")
def detector(checkpoint):
    return retinanet.Detector.load(checkpoint)


@pytest.fixture(scope="module")
def arrays() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8), rng.integers(0, 256, (70, 110, 3), dtype=np.uint8)]


def manual(checkpoint, array: np.ndarray, k: int = 100):
    """Resize by hand, run the bare model, scale back: the reference for one image."""
    from retinanet.engine.runtime.checkpoint import load_model

    model, _ = load_model(checkpoint, "cpu", score_thresh=0.0)
    image = torch.from_numpy(array).permute(2, 0, 1)
    resized = resize_image(image, model.config.min_size, model.config.max_size)
    with torch.inference_mode():
        out = model([resized])[0]
    keep = (out["scores"] >= 0.0) & (out["labels"] != 0)
    order = torch.argsort(out["scores"][keep], descending=True)[:k]
    (h, w), (h0, w0) = resized.shape[-2:], array.shape[:2]
    boxes = out["boxes"][keep][order] * torch.tensor([w0 / w, h0 / h, w0 / w, h0 / h])
    return boxes, out["scores"][keep][order], out["labels"][keep][order]


def test_boxes_in_original_pixels_match_manual_pipeline(checkpoint, detector, arrays):
    assert detector.model.config.min_size == 64 and SIZE != (64, 92)
    (r,) = detector.predict(arrays[0], score_thresh=0.0, max_dets=20)
    boxes, scores, labels = manual(checkpoint, arrays[0], 20)
    assert r.size == SIZE and len(r) == 20
    torch.testing.assert_close(r.boxes, boxes, atol=1e-3, rtol=1e-5)
    torch.testing.assert_close(r.scores, scores)
    assert r.labels.tolist() == labels.tolist()
    assert r.names == [{1: "cat", 2: "dog"}[i] for i in labels.tolist()]
    assert r.boxes[:, 2].max() > 92  # beyond the model's input width: original pixels


def test_every_input_kind_gives_the_same_result(tmp_path, detector, arrays):
    a = arrays[0]
    path = tmp_path / "a.png"
    Image.fromarray(a).save(path)
    uint8 = torch.from_numpy(a).permute(2, 0, 1).contiguous()
    ref = detector.predict(a, score_thresh=0.0, max_dets=10)[0]
    kinds = {"path": str(path), "pathlib": path, "PIL": Image.fromarray(a), "uint8 tensor": uint8,
             "float tensor": uint8.float() / 255}
    for kind, x in kinds.items():
        (r,) = detector.predict(x, score_thresh=0.0, max_dets=10)
        atol = 0.5 if kind == "float tensor" else 1e-4  # float input is resized without rounding to uint8
        torch.testing.assert_close(r.boxes, ref.boxes, atol=atol, rtol=0, msg=kind)
        assert r.size == SIZE
        assert r.source == (str(x) if kind in ("path", "pathlib") else None), kind
    grey = detector.predict(Image.fromarray(a).convert("L"))[0]  # any PIL mode is taken as RGB
    assert grey.size == SIZE


def test_list_of_paths_keeps_order_and_sources(tmp_path, detector, arrays):
    paths = []
    for i, a in enumerate(arrays):
        paths.append(tmp_path / f"{i}.jpg")
        Image.fromarray(a).save(paths[-1], quality=95)
    results = detector.predict([str(p) for p in paths], score_thresh=0.0)
    assert [r.source for r in results] == [str(p) for p in paths]
    assert [r.size for r in results] == [SIZE, (70, 110)]
    d = results[1].to_dict()
    json.dumps(d)  # JSON-ready
    assert (d["height"], d["width"]) == (70, 110) and len(d["boxes"]) == len(d["names"]) == len(results[1])


def test_batching_equals_one_by_one(detector, arrays):
    images = [arrays[0], arrays[1], arrays[0][:, ::-1], torch.from_numpy(arrays[1]).permute(2, 0, 1)]
    batched = detector.predict(images, score_thresh=0.05, batch_size=3)
    single = [detector.predict(x, score_thresh=0.05)[0] for x in images]
    assert len(batched) == 4
    for b, s in zip(batched, single):
        torch.testing.assert_close(b.boxes, s.boxes, atol=1e-3, rtol=1e-4)
        torch.testing.assert_close(b.scores, s.scores, atol=1e-4, rtol=1e-4)
        assert b.names == s.names
    stacked = torch.stack([torch.from_numpy(arrays[0]).permute(2, 0, 1)] * 2)  # [B, 3, H, W]: B images
    assert len(detector.predict(stacked)) == 2


def test_threshold_classes_and_max_dets(detector, arrays):
    everything = detector.predict(arrays[0], score_thresh=0.0, max_dets=300)[0]
    assert len(everything) > 5
    cut = float(everything.scores[len(everything) // 2])
    above = detector.predict(arrays[0], score_thresh=cut, max_dets=300)[0]
    assert len(above) >= 1 and (above.scores >= cut).all()
    dogs = detector.predict(arrays[0], score_thresh=0.0, classes=["dog"])[0]
    assert set(dogs.names) <= {"dog"} and (dogs.labels == 2).all()
    assert len(detector.predict(arrays[0], score_thresh=0.0, max_dets=3)[0]) == 3
    assert detector.model.config.score_thresh == 0.05  # the per-call threshold does not stick


def test_calls_with_other_thresholds_from_several_threads_match_the_same_calls_made_alone(detector, arrays, monkeypatch):
    """One shared Detector, four threads, each call its own threshold: the threshold travels as an
    argument down to post-processing, so every result is the one the same call gives alone, and
    the model's config is never touched.

    The four calls meet at a barrier just before the model runs (in ``detect_resized``, at the
    autocast), so a per-call write to shared state before that point (the old
    ``model.config = replace(config, score_thresh=...)``) is overwritten by the others every
    time: the test fails on that code deterministically, not by chance of the scheduling."""
    from concurrent.futures import ThreadPoolExecutor

    config = detector.model.config
    thresholds = [0.0, 0.0105, 0.011, 0.05, 0.2] * 4
    alone = {t: detector.predict(arrays, score_thresh=t, max_dets=300) for t in set(thresholds)}
    assert len({sum(len(r) for r in res) for res in alone.values()}) > 2  # the thresholds change the results

    class MeetFirst:  # the detector's precision, whose autocast waits for all four calls
        def __init__(self, precision):
            self.precision, self.barrier = precision, threading.Barrier(4, timeout=60)

        def __getattr__(self, name):
            return getattr(self.precision, name)

        def autocast(self, *args, **kwargs):
            self.barrier.wait()
            return self.precision.autocast(*args, **kwargs)

    monkeypatch.setattr(detector, "precision", MeetFirst(detector.precision))
    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(lambda t: detector.predict(arrays, score_thresh=t, max_dets=300), thresholds))
    assert detector.model.config is config
    for t, results in zip(thresholds, threaded):
        for got, want in zip(results, alone[t]):
            assert len(got) == len(want), t
            torch.testing.assert_close(got.boxes, want.boxes)
            torch.testing.assert_close(got.scores, want.scores)
            assert torch.equal(got.labels, want.labels)


def test_bad_inputs_are_named(tmp_path, detector, arrays):
    with pytest.raises(RetinaNetError, match="missing.jpg"):
        detector.predict(str(tmp_path / "missing.jpg"))
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(RetinaNetError, match="bad.jpg: cannot read image"):
        detector.predict([arrays[0], tmp_path / "bad.jpg"])
    with pytest.raises(RetinaNetError, match="H x W x 3 uint8"):
        detector.predict(arrays[0].astype(np.float32))
    with pytest.raises(RetinaNetError, match="0..1"):
        detector.predict(torch.from_numpy(arrays[0]).permute(2, 0, 1).float())
    with pytest.raises(RetinaNetError, match=r"\[3, H, W\]"):
        detector.predict(torch.zeros(4, 32, 32))
    with pytest.raises(RetinaNetError, match="cannot detect in a dict"):
        detector.predict({"image": arrays[0]})
    with pytest.raises(RetinaNetError, match="zebra"):
        detector.predict(arrays[0], classes=["zebra"])


def test_call_settings_and_odd_inputs_as_the_command_line_takes_them(detector, checkpoint, arrays):
    """Refused: a negative max_dets (it sliced off the last detections), a threshold outside 0..1,
    an image without pixels, an input size that cannot be meant. Taken: float64 tensors, one class
    name as a string, read-only arrays (np.asarray of a PIL image)."""
    for kwargs, message in [({"max_dets": -1}, "max_dets must be at least 1, not -1"),
                            ({"score_thresh": 1.5}, r"score_thresh must be in \[0.0, 1.0\], not 1.5"),
                            ({"score_thresh": float("nan")}, "score_thresh must be a number, not nan"),
                            ({"batch_size": 0}, "batch_size must be at least 1, not 0")]:
        with pytest.raises(RetinaNetError, match=message):
            detector.predict(arrays[0], **kwargs)
    with pytest.raises(RetinaNetError, match="an image has at least one pixel"):
        detector.predict(np.zeros((0, 0, 3), np.uint8))
    with pytest.raises(RetinaNetError, match="an image has at least one pixel, not a PIL image of 0x0"):
        detector.predict(Image.new("RGB", (0, 0)))  # a ZeroDivisionError before
    with pytest.raises(RetinaNetError, match=r"float image tensors are 0..1, this one spans -0.5..0.5"):
        detector.predict(torch.full((3, 8, 8), 0.5).sub_(torch.eye(8)))  # accepted before, as NaN was
    with pytest.raises(RetinaNetError, match="a float image tensor holds NaN values"):
        detector.predict(torch.full((3, 8, 8), float("nan")))
    with pytest.raises(RetinaNetError, match=r"tile='abc': True, a tile side in pixels, or TileOptions"):
        detector.predict(arrays[0], tile="abc")
    with pytest.raises(RetinaNetError, match="model.min_size must be at least 1, not 0"):
        retinanet.Detector.load(checkpoint, min_size=0)
    with pytest.raises(RetinaNetError, match="min_size 320 is above max_size 96: .* give a max_size of at least 320"):
        retinanet.Detector.load(checkpoint, min_size=320)
    image = torch.from_numpy(arrays[0]).permute(2, 0, 1).float() / 255
    a, b = detector.predict(image, score_thresh=0.0)[0], detector.predict(image.double(), score_thresh=0.0)[0]
    assert torch.equal(a.boxes, b.boxes) and torch.equal(a.labels, b.labels)
    name = "cat"
    assert set(detector.predict(arrays[0], classes=name, score_thresh=0.0)[0].names) <= {name}
    frozen = arrays[0].copy()
    frozen.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns of a non-writable array
        assert len(detector.predict(frozen, score_thresh=0.0)[0]) == len(detector.predict(arrays[0], score_thresh=0.0)[0])


def test_exif_rule_for_paths(tmp_path, checkpoint):
    """A photo stored landscape with EXIF 'rotated 90 CW' is read portrait unless exif='ignore'."""
    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 256, (60, 100, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "turned.jpg"
    img.save(path, exif=exif.tobytes())
    assert retinanet.Detector.load(checkpoint).predict(path)[0].size == (100, 60)  # displayed frame
    assert retinanet.Detector.load(checkpoint, exif="ignore").predict(path)[0].size == (60, 100)  # stored
    with pytest.raises(RetinaNetError, match="exceeds the limit"):
        retinanet.Detector.load(checkpoint, max_image_pixels=1000).predict(path)
    with pytest.raises(RetinaNetError, match="exif must be one of"):
        retinanet.Detector.load(checkpoint, exif="sideways")


def test_torchvision_file_gets_coco_names(tmp_path):
    """A bare torchvision state_dict with 91 outputs: labels are COCO category ids, named."""
    from retinanet.model import build_model

    model = build_model("resnet18_fpn", num_classes=91, fpn_channels=32, head_convs=1, min_size=64, max_size=96)
    path = tmp_path / "tv.pth"
    torch.save(model.state_dict(), path)
    from retinanet.engine.infer.detector import class_names_of

    names = class_names_of(None, 91)
    assert names[1] == "person" and names[90] == "toothbrush" and 12 not in names  # COCO id 12 is a gap
    det = retinanet.Detector(model, names)
    r = det.predict(torch.zeros(3, 64, 64, dtype=torch.uint8), score_thresh=0.0, max_dets=5)[0]
    assert all(n == names[i] for n, i in zip(r.names, r.labels.tolist()))


def test_a_max_dets_above_the_model_s_own_cap_is_honoured(checkpoint, arrays):
    """--max-dets 1000 gave 300: the model's detections_per_img cut first, without a word."""
    capped = retinanet.Detector.load(checkpoint, detections_per_img=20)
    many = capped.predict(arrays[0], score_thresh=0.0, max_dets=60)[0]
    assert len(many) > 20 and len(capped.predict(arrays[0], score_thresh=0.0, max_dets=10)[0]) == 10  # was 20
    assert capped.model.config.detections_per_img == 20  # a per-call setting, not written to the shared model


def test_a_load_that_would_re_initialise_trained_layers_is_refused(checkpoint):
    """Detector.load(num_classes=9) re-initialised the trained classifier without a word (predictions
    'class 7', repr still 3 classes); settings that shape trained layers are refused, the others apply."""
    from retinanet.errors import CheckpointError
    for option, said in (({"num_classes": 9}, "num_classes 9 given, but the weights were trained with 3"),
                         ({"fpn_channels": 64}, "fpn_channels 64 given, but the weights were trained with 32"),
                         ({"arch": "resnet34_fpn"}, "arch resnet34_fpn given")):
        with pytest.raises(CheckpointError, match=f"tiny.pt: {said}"):
            retinanet.Detector.load(checkpoint, **option)
    assert retinanet.Detector.load(checkpoint, num_classes=3, score_thresh=0.2).model.config.score_thresh == 0.2


def test_predict_says_when_a_cap_cut_the_detections(checkpoint, arrays):
    """``Detector.predict`` cut to its default max_dets (100) without a word, whole or tiled, and no field of
    ``Detections`` said so. Each result now has ``at_cap`` (also in ``to_dict()``), and a call that left
    max_dets at its default (the model's detections_per_img) or whose candidates a level's top-k cut
    warns once, naming the count and the way out."""
    capped = retinanet.Detector.load(checkpoint, detections_per_img=5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        whole = capped.predict(arrays, score_thresh=0.0)
        (tiled,) = capped.predict(arrays[0], score_thresh=0.0, tile=64)
    assert [len(r) for r in whole] == [5, 5] and [r.at_cap for r in (*whole, tiled)] == ["max_dets"] * 3
    assert whole[0].to_dict()["at_cap"] == "max_dets"
    said = [str(w.message) for w in caught]
    assert len(said) == 2 and said[0].startswith("2 of 2 image(s) reached max_dets=5 (the model's detections_per_img): "
                                                 "detections beyond it were cut; pass a larger max_dets")
    assert said[1].startswith("1 of 1 image(s) reached max_dets=5") and all(w.filename == __file__ for w in caught)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a cap the caller chose is no news: the field says it, no warning
        (chosen,) = capped.predict(arrays[0], score_thresh=0.0, max_dets=5)
        (none,) = capped.predict(arrays[0], score_thresh=0.99)
    assert chosen.at_cap == "max_dets" and none.at_cap is None and none.to_dict()["at_cap"] is None
    # far below the cap, but more candidates above the threshold on a level than the 1000 it keeps for NMS
    detector = retinanet.Detector.load(checkpoint)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        (r,) = detector.predict(arrays[0], score_thresh=0.005, max_dets=300)
    assert len(r) < 300 and r.at_cap == "topk_candidates"
    assert [str(w.message) for w in caught] == [
        "1 of 1 image(s) stayed below max_dets=300 while an FPN level had more candidates above score_thresh than the "
        "1000 it keeps for NMS: those were never considered; Detector.load(..., topk_candidates=N) keeps more (each "
        "result's .at_cap says which cap it reached)"]
    assert retinanet.Detector.load(checkpoint, topk_candidates=100000).predict(arrays[0], score_thresh=0.005)[0].at_cap is None


def test_load_reads_the_checkpoint_once(checkpoint, monkeypatch):
    loads, real = [], torch.load
    monkeypatch.setattr(torch, "load", lambda f, *a, **k: loads.append(Path(f).name) or real(f, *a, **k))
    det = retinanet.Detector.load(checkpoint)
    assert loads == ["tiny.pt"] and det.class_names == {1: "cat", 2: "dog"}


def test_load_expands_a_home_folder_path(checkpoint, monkeypatch):
    """``Detector.load("~/tiny.pt")`` was refused as "no such file, nor a name of official weights":
    ``train --weights`` and config files read "~" as the home folder, the Python interface did not."""
    monkeypatch.setenv("HOME", str(Path(checkpoint).parent))
    assert retinanet.Detector.load("~/" + Path(checkpoint).name).class_names == {1: "cat", 2: "dog"}


def test_the_score_threshold_keeps_scores_above_it_as_the_model_does_and_the_help_says_so(capsys):
    """The model (as torchvision's RetinaNet) keeps ``scores > score_thresh``, while ``predict --score-thresh``
    and ``Detector.predict`` said "at least" and ``filter_detections`` kept ``>=`` (eval's help: "drop below")."""
    from retinanet.cli import main
    from retinanet.engine.infer.detector import filter_detections

    out = {"boxes": torch.tensor([[0.0, 0.0, 8.0, 8.0]] * 3), "scores": torch.tensor([0.5, 0.25, 0.75]),
           "labels": torch.tensor([1, 1, 2])}
    _, scores, labels = filter_detections(out, 0.25, None, 10)  # 0.25: exact in float32
    assert scores.tolist() == [0.75, 0.5] and labels.tolist() == [2, 1]
    for command in ("predict", "eval", "export"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "above" in text.split("--score-thresh", 2)[2].split("--", 1)[0], command
        assert "at least this" not in text and "below this score" not in text, command
    assert "at least this" not in retinanet.Detector.predict.__doc__
    assert "scoring above this" in retinanet.Detector.predict.__doc__


def test_grayscale_arrays_and_tensors_are_taken_as_a_grayscale_pil_image_is(detector, arrays):
    """A grayscale PIL image was taken (converted to RGB) while the same pixels as a numpy ``[H, W]`` /
    ``[H, W, 1]`` array or a ``[1, H, W]`` tensor were refused; each is now repeated to 3 channels, as
    PIL converts an ``L`` image, and gives the PIL image's detections. Other shapes stay refused."""
    gray = np.asarray(Image.fromarray(arrays[0]).convert("L"))  # [H, W] uint8
    ref = detector.predict(Image.fromarray(gray), score_thresh=0.0, max_dets=10)[0]
    t = torch.from_numpy(gray.copy())
    kinds = {"numpy H x W": gray, "numpy H x W x 1": gray[..., None], "tensor 1 x H x W": t[None],
             "float tensor 1 x H x W": t[None].float() / 255, "tensor B x 1 x H x W": torch.stack([t[None]] * 2)}
    for kind, x in kinds.items():
        results = detector.predict(x, score_thresh=0.0, max_dets=10)
        assert len(results) == (2 if kind.startswith("tensor B") else 1), kind
        for r in results:
            atol = 0.5 if kind.startswith("float") else 1e-4  # float input is resized without rounding to uint8
            torch.testing.assert_close(r.boxes, ref.boxes, atol=atol, rtol=0, msg=kind)
            assert r.size == SIZE and r.labels.tolist() == ref.labels.tolist(), kind
    for bad, says in ((np.zeros((8, 8, 2), np.uint8), r"H x W x 3 uint8 RGB .* or H x W \(x 1\) uint8 grayscale"),
                      (np.zeros((8, 8, 4), np.uint8), "H x W x 3 uint8"), (gray.astype(np.float32), "uint8 grayscale"),
                      (t, r"\[1, H, W\] or \[B, 1, H, W\] grayscale, not Tensor of shape \(90, 130\).*: x\[None\]"),
                      (torch.zeros(2, 8, 8, dtype=torch.uint8), r"\[3, H, W\]"),
                      (t[None, ..., None], r"\[3, H, W\]")):
        with pytest.raises(RetinaNetError, match=says):
            detector.predict(bad)
