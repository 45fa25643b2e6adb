"""Tiled prediction through the engine: ``eval --tile`` gives COCO metrics on the full images,
``Detector`` and ``retinanet predict`` run native-resolution tiles and count them."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from retinanet.cli import main
from retinanet.config import DataConfig, ModelConfig
from retinanet.data import build_datasets, build_loader
from retinanet.engine.evaluate.loop import evaluate
from retinanet.engine.infer.detector import Detector, TileOptions
from retinanet.errors import RetinaNetError
from retinanet.model import tiling
from retinanet.model.tiling import count_tiles

OBJECTS = [  # (x1, y1, x2, y2) squares of grey level 40 + 10 k; most cut by an edge of the 64 px tiles
    (40, 20, 56, 36), (58, 60, 74, 76), (100, 90, 118, 108), (150, 10, 166, 26), (10, 140, 28, 158),
    (200, 150, 220, 170), (104, 40, 120, 56), (60, 100, 76, 116),
]


class BoxFinder(torch.nn.Module):
    """A stand-in detector: the bounding box of every grey level (40, 50, ...) in the image it sees,
    score 0.9, class 1: a perfect detector of visible parts, whatever is cut by a tile."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.config = ModelConfig(num_classes=2, min_size=64, max_size=64)

    def forward(self, images, targets=None, *, score_thresh=None, resize=True, max_dets=None):
        assert not resize  # tiles enter at native resolution
        out = []
        for img in images:
            g = img[0].long()
            boxes = []
            for v in g.unique().tolist():
                if v >= 40 and (v - 40) % 10 == 0 and v < 40 + 10 * len(OBJECTS):
                    ys, xs = (g == v).nonzero(as_tuple=True)
                    boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
            b = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
            out.append({"boxes": b, "scores": torch.full((len(b),), 0.9), "labels": torch.ones(len(b), dtype=torch.int64)})
        return out


def _scene(root: Path, hw=(200, 260), name: str = "obj") -> Path:
    """A flat VOC folder: one image (PNG bytes, exact grey levels) with OBJECTS, as the val split."""
    arr = np.zeros((*hw, 3), np.uint8)
    objs = []
    for k, (x1, y1, x2, y2) in enumerate(OBJECTS):
        arr[y1:y2, x1:x2] = 40 + 10 * k
        objs.append(f"<object><name>{name}</name><bndbox><xmin>{x1 + 1}</xmin><ymin>{y1 + 1}</ymin><xmax>{x2}</xmax>"
                    f"<ymax>{y2}</ymax></bndbox></object>")
    root.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(root / "a.png")
    (root / "a.xml").write_text(f"<annotation><filename>a.png</filename><size><width>{hw[1]}</width><height>{hw[0]}"
                                f"</height><depth>3</depth></size>{''.join(objs)}</annotation>")
    (root / "val.txt").write_text("a\n")
    return root


def _tiled_eval(root: Path) -> dict:
    cfg = DataConfig(root=str(root), format="voc-flat", val_split=str(root / "val.txt"), workers=0)
    ds = build_datasets(cfg, min_size=64, max_size=64, splits=("val",), resize_val=False)
    image, target = ds.val[0]
    assert image.shape == (3, 200, 260) and target["size"] == (200, 260)  # native resolution
    loader = build_loader(ds.val, batch_size=1, workers=0, train=False)
    tile = TileOptions(tile=64, overlap=0.25, batch_size=5).resolved(64)
    result = evaluate(BoxFinder(), loader, device="cpu", class_map={"obj": 1}, amp="off", progress=False, tile=tile)
    return result.metrics


def test_eval_tile_gives_coco_metrics_on_the_full_image(tmp_path):
    root = _scene(tmp_path / "scene")
    # most objects are cut by some tile edge; each comes out once and whole: a perfect score
    m = _tiled_eval(root)
    assert m["AP50"] == pytest.approx(1.0) and m["AP"] == pytest.approx(1.0) and m["AR100"] == pytest.approx(1.0)


def test_without_the_fragment_rule_fragments_cost_precision(tmp_path, monkeypatch):
    root = _scene(tmp_path / "scene")
    monkeypatch.setattr(tiling, "EDGE_MARGIN", -1e9)  # no box counts as touching an edge: plain NMS
    monkeypatch.setattr(tiling.fragments, "__defaults__", (-1e9,))
    assert _tiled_eval(root)["AP"] < 0.9


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny untrained model saved as our checkpoint (resnet18, input 64 px)."""
    from retinanet.engine.runtime.checkpoint import save_checkpoint
    from retinanet.model import build_model

    torch.manual_seed(0)
    model = build_model("resnet18_fpn", num_classes=3, min_size=64, max_size=64, norm="bn", fpn_channels=32, head_convs=1)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint({"model": model.state_dict(), "config": {"model": asdict(model.config)},
                     "class_map": {"cat": 1, "dog": 2}}, path)
    return path


def test_detector_tiles_at_native_resolution(checkpoint):
    det = Detector.load(checkpoint, amp="off")
    assert det.tile_options(True) == TileOptions(tile=64)  # the model's input size
    assert det.tile_options(None) is None and det.tile_options(96).tile == 96
    with pytest.raises(RetinaNetError, match="at least 32"):
        det.tile_options(16)
    with pytest.raises(RetinaNetError, match="0 to 0.9"):
        det.tile_options(TileOptions(overlap=0.95))
    image = torch.randint(0, 255, (3, 150, 200), dtype=torch.uint8)
    seen = []
    orig = det.model.detect  # forward's eval path, with candidates_cut

    def spy(images, *a, **k):
        seen.append((len(images), tuple(images[0].shape), k.get("resize")))
        return orig(images, *a, **k)

    det.model.detect = spy
    progress = []
    r = det.detect_tiled(image, det.tile_options(True), score_thresh=0.0, max_dets=1000,
                         on_tiles=lambda d, n: progress.append((d, n)))
    assert [s[1] for s in seen] == [(3, 64, 64)] * len(seen) and all(s[2] is False for s in seen)
    assert progress[-1] == (12, 12) and sum(s[0] for s in seen) == 12  # 3 x 4 tiles of 64 at stride 51
    assert r.size == (150, 200) and len(r) > 0
    assert (r.boxes[:, 2] <= 200 + 1e-3).all() and (r.boxes[:, 3] <= 150 + 1e-3).all() and (r.boxes >= 0).all()
    (p,) = det.predict(image, tile=True, score_thresh=0.0, max_dets=1000)
    assert torch.equal(p.boxes, r.boxes)


def test_predict_and_eval_cli_tile(tmp_path, checkpoint, capsys):
    img = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (150, 200, 3), dtype=np.uint8)).save(img)
    out = tmp_path / "out"
    assert main(["predict", str(img), "--weights", str(checkpoint), "--out", str(out), "--tile", "--score-thresh", "0.05",
                 "--no-draw", "--workers", "0", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "tiling: tiles of 64 px at native resolution, overlap 0.2, 4 per batch" in text
    assert "memory: glibc's mmap threshold fixed at 32 MiB" in text or "memory: C allocator left" in text
    rec = json.loads((out / "predictions.json").read_text())["images"][0]
    assert (rec["width"], rec["height"]) == (200, 150)
    assert main(["predict", str(img), "--weights", str(checkpoint), "--out", str(out), "--tile-overlap", "0.3"]) == 2
    assert "give --tile too" in capsys.readouterr().err
    root = _scene(tmp_path / "scene", name="cat")
    assert main(["eval", "--weights", str(checkpoint), "--data", str(root), "--val-split", str(root / "val.txt"),
                 "--tile", "96", "--tile-overlap", "0.25", "--out", str(tmp_path / "ev"), "--workers", "0", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "1 images" in text and "tiling: tiles of 96 px" in text and "\nmemory: " in text
    assert json.loads((tmp_path / "ev" / "eval.json").read_text())["num_images"] == 1


def test_tiles_keep_max_dets_and_eval_max_dets_counts_what_reached_it(tmp_path, checkpoint, capsys):
    """A tile kept at most the model's detections_per_img whatever max_dets asked (crowded tiles lost
    objects without a word); eval --max-dets sets the cap and counts the images (tiles) that reached it."""
    from retinanet.engine.runtime.checkpoint import read_checkpoint, save_checkpoint
    ck = read_checkpoint(checkpoint)
    ck["config"]["model"]["detections_per_img"] = 5
    small_cap = tmp_path / "cap5.pt"
    save_checkpoint(ck, small_cap)
    det = Detector.load(small_cap, amp="off")
    image = torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8)  # one 64 px tile
    tiled = det.detect_tiled(image, det.tile_options(True), score_thresh=0.0, max_dets=40)
    whole = det.predict(image, score_thresh=0.0, max_dets=40)[0]
    assert len(tiled) == len(whole) > 5  # was at most 5, the model's own cap, per tile (26: label 0 never a class)
    root = _scene(tmp_path / "scene", name="cat")
    args = ["eval", "--weights", str(small_cap), "--data", str(root), "--val-split", str(root / "val.txt"),
            "--workers", "0", "--quiet", "--score-thresh", "0"]
    assert main([*args, "--out", str(tmp_path / "ev")]) == 0
    assert "warning: 1 image(s) reached --max-dets 5: detections beyond it were cut" in capsys.readouterr().out
    info = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert (info["max_dets"], info["at_max_dets"], info["num_detections"]) == (5, 1, 5)
    assert main([*args, "--out", str(tmp_path / "ev2"), "--max-dets", "50", "--tile", "64", "--tile-overlap", "0.25"]) == 0
    text = capsys.readouterr().out
    info = json.loads((tmp_path / "ev2" / "eval.json").read_text())
    assert info["max_dets"] == 50 and info["at_max_dets"] > 0 and info["num_detections"] > 5 * count_tiles((200, 260), 64, 0.25)
    assert f"warning: {info['at_max_dets']} tile(s) reached --max-dets 50: detections beyond it were cut" in text


@pytest.fixture(scope="module")
def crop_checkpoint(checkpoint, tmp_path_factory) -> Path:
    """``checkpoint`` as a ``train --crop 64`` run stores it (input size 64 = the crop side)."""
    from retinanet.engine.runtime.checkpoint import read_checkpoint, save_checkpoint
    ck = read_checkpoint(checkpoint)
    ck["config"]["data"] = asdict(DataConfig(crop=64))
    return save_checkpoint(ck, tmp_path_factory.mktemp("crop") / "crop64.pt")


def _spy(det: Detector) -> list:
    """The (batch size, image shape, resize) of each forward pass of ``det``'s model."""
    seen, orig = [], det.model.detect  # forward's eval path, with candidates_cut (what Detector calls)

    def spy(images, *a, **k):
        seen.append((len(images), tuple(images[0].shape), k.get("resize", True)))
        return orig(images, *a, **k)

    det.model.detect = spy
    return seen


def test_a_crop_trained_detector_tiles_by_default_as_training_evaluated(crop_checkpoint, checkpoint):
    """A --crop model resized whole gave AP 0.0000 (640 px images shrunk to its 128 px input) with no
    word; training itself evaluated it on native-resolution tiles of the crop side. ``tile=None``
    (the default) is now "as trained": those tiles; ``tile=False`` resizes whole images."""
    from retinanet.engine.train.setup import val_tiling

    det = Detector.load(crop_checkpoint, amp="off")
    assert det.trained_crop == 64 and "trained on 64 px crops (tiled by default)" in repr(det)
    assert det.tile_options(None, batch_size=3) == TileOptions(tile=64, batch_size=3)
    assert det.tile_options() == val_tiling(DataConfig(crop=64), 4)  # as training evaluated
    assert det.tile_options(False) is None and det.tile_options(96).tile == 96
    seen = _spy(det)
    image = torch.randint(0, 255, (3, 150, 200), dtype=torch.uint8)
    (default,) = det.predict(image, score_thresh=0.0, max_dets=1000, batch_size=5)
    assert seen and all(s[1] == (3, 64, 64) and s[2] is False for s in seen)  # native-resolution 64 px tiles
    assert [s[0] for s in seen] == [5, 5, 2]  # 12 tiles, batch_size of them a pass
    (tiled,) = det.predict(image, tile=True, score_thresh=0.0, max_dets=1000)
    assert torch.equal(default.boxes, tiled.boxes) and default.size == (150, 200)
    seen.clear()
    det.predict(image, tile=False, score_thresh=0.0)
    assert seen == [(1, (3, 48, 64), True)]  # the whole image, resized to the 64 px input
    plain = Detector.load(checkpoint, amp="off")  # trained on whole images: resized whole, as before
    assert plain.trained_crop is None and plain.tile_options(None) is None
    resized = Detector.load(crop_checkpoint, amp="off", min_size=96, max_size=96)  # another input size: whole images
    assert resized.tile_options() is None and resized.tile_options(True).tile == 96


def test_predict_and_eval_cli_tile_a_crop_model_by_default_and_say_so(tmp_path, crop_checkpoint, capsys):
    img = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (150, 200, 3), dtype=np.uint8)).save(img)
    said = ("the model was trained on 64 px crops at native resolution: tiling with --tile 64 (as training evaluated); "
            "--no-tile to resize whole images")
    args = [str(img), "--weights", str(crop_checkpoint), "--score-thresh", "0.05", "--no-draw", "--workers", "0", "--quiet"]
    assert main(["predict", *args, "--out", str(tmp_path / "p1")]) == 0
    out, err = capsys.readouterr()
    assert f"retinanet predict: {said}" in err  # said even with --quiet
    assert "tiling: tiles of 64 px at native resolution, overlap 0.2, 4 per batch" in out
    assert main(["predict", *args, "--out", str(tmp_path / "p2"), "--no-tile"]) == 0
    out, err = capsys.readouterr()
    assert "tiling" not in out + err
    assert main(["predict", *args, "--out", str(tmp_path / "p3"), "--tile", "96"]) == 0  # explicit: as asked, not said
    out, err = capsys.readouterr()
    assert "tiling: tiles of 96 px" in out and "trained on 64 px crops" not in err
    assert main(["predict", *args, "--out", str(tmp_path / "p4"), "--no-tile", "--tile-whole-image"]) == 2
    assert "--tile-whole-image sets up tiled prediction: --no-tile turns it off: give one" in capsys.readouterr().err

    root = _scene(tmp_path / "scene", name="cat")
    data = ["--weights", str(crop_checkpoint), "--data", str(root), "--val-split", str(root / "val.txt"), "--workers", "0", "--quiet"]
    assert main(["eval", *data, "--out", str(tmp_path / "e1")]) == 0
    out, err = capsys.readouterr()
    assert f"retinanet eval: {said}" in err and "tiling: tiles of 64 px at native resolution, overlap 0.2, 2 per batch" in out
    assert main(["eval", *data, "--out", str(tmp_path / "e2"), "--no-tile"]) == 0
    out, err = capsys.readouterr()
    assert "tiling" not in out + err and "1 images" in out
    # another input size asks for whole images resized to it (README: a crop model "at 800 px"), said too
    assert main(["eval", *data, "--out", str(tmp_path / "e3"), "--min-size", "96", "--max-size", "96"]) == 0
    out, err = capsys.readouterr()
    assert ("trained on 64 px crops at native resolution, but --min-size 96 resizes whole images (--tile 64 tiles them "
            "as training evaluated)") in err and "tiling" not in out
