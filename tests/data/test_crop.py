"""Crop training: window placement and its bias, box clipping, cut objects as ignore regions, the
crop through the dataset, and the model input size a crop implies."""

from __future__ import annotations

import random

import pytest
import torch

from retinanet.config import DataConfig, ModelConfig
from retinanet.data import build_datasets, make_synthetic
from retinanet.data.crop import (CROP_KEEP, PAD_RGB, crop_model_config, crop_rule, crop_target, crop_window,
                                 random_crop)
from retinanet.errors import RetinaNetError


def test_crop_target_clips_keeps_and_turns_cut_objects_into_ignore_regions():
    boxes = torch.tensor([
        [110.0, 110, 130, 130],  # 0: wholly inside -> kept as is (shifted)
        [90.0, 120, 110, 140],   # 1: half inside (x 100..110 of 90..110) -> kept, clipped
        [80.0, 150, 110, 160],   # 2: a third inside -> ignore region, clipped
        [300.0, 300, 320, 320],  # 3: outside -> dropped
        [95.0, 195, 105, 205],   # 4: a quarter inside (corner) -> ignore region
        [150.0, 150, 400, 400],  # 5: an ignore region, cut: stays one, clipped
    ])
    ignore = torch.tensor([False, False, False, False, False, True])
    out, flags, index = crop_target(boxes, ignore, (100, 100, 100, 100))  # y0, x0, h, w
    assert index.tolist() == [0, 1, 2, 4, 5]
    assert out.tolist() == [[10.0, 10, 30, 30], [0, 20, 10, 40], [0, 50, 10, 60], [0, 95, 5, 100], [50, 50, 100, 100]]
    assert flags.tolist() == [False, False, True, True, True]
    assert CROP_KEEP == 0.5
    _, strict, _ = crop_target(boxes, ignore, (100, 100, 100, 100), keep=0.6)
    assert strict.tolist() == [False, True, True, True, True]  # the half-inside object is now cut


def test_random_crop_shapes_frames_and_padding():
    image = torch.arange(3 * 40 * 300, dtype=torch.int64).remainder(251).to(torch.uint8).reshape(3, 40, 300)
    target = {"boxes": torch.tensor([[100.0, 10, 120, 30]]), "labels": torch.tensor([3]), "ignore": torch.tensor([False]),
              "file": "x.jpg"}
    random.seed(1)
    for _ in range(20):
        out, t = random_crop(image, target, 64, on_object=1.0)
        assert out.shape == (3, 64, 64) and out.dtype == torch.uint8 and t["file"] == "x.jpg"
        assert (out[:, 40:, :] == torch.tensor(PAD_RGB, dtype=torch.uint8)[:, None, None]).all()  # padded rows
        # the crop holds the object's centre, so at least half of it is inside: kept, shifted by x0
        assert t["labels"].tolist() == [3] and t["ignore"].tolist() == [False]
        x0 = next(x for x in range(0, 300 - 63) if torch.equal(out[:, :40], image[:, :, x:x + 64]))
        assert t["boxes"][0].tolist() == [max(0, 100 - x0), 10, min(64, 120 - x0), 30]


def test_crops_are_biased_toward_objects():
    hw, boxes = (2000, 2000), torch.tensor([[1500.0, 300, 1512, 312]])  # one 12 px object in a big image
    random.seed(0)

    def share_holding_object(p):
        hits = 0
        for _ in range(400):
            y0, x0 = crop_window(hw, boxes, 256, on_object=p)
            hits += x0 <= 1506 < x0 + 256 and y0 <= 306 < y0 + 256
        return hits / 400

    assert share_holding_object(1.0) == 1.0
    assert share_holding_object(0.0) < 0.05  # uniform: about (256/2000)^2 = 1.6%
    assert 0.4 < share_holding_object(0.5) < 0.6
    assert crop_window(hw, boxes[:0], 256, on_object=1.0) is not None  # no objects: uniform


def test_crop_through_the_dataset(tmp_path):
    make_synthetic(tmp_path, num_train=2, num_val=1, image_size=300, object_size=(12, 40), objects=40, seed=2)
    ds = build_datasets(DataConfig(root=str(tmp_path), crop=96, hflip_prob=0.5), min_size=96, max_size=96)
    cut = kept = 0
    for seed in range(6):
        ds.train.set_epoch(seed, 0)
        for i in range(len(ds.train)):
            image, t = ds.train[i]
            assert image.shape == (3, 96, 96) and t["size"] == (96, 96)
            assert ((t["boxes"] >= 0) & (t["boxes"] <= 96)).all()
            assert len(t["boxes"]) == len(t["labels"]) == len(t["ignore"])
            cut += int(t["ignore"].sum())
            kept += int((~t["ignore"]).sum())
    assert kept > 0 and cut > 0  # objects, and objects cut by the window as ignore regions
    image, t = ds.val[0]
    assert image.shape == (3, 96, 96)  # evaluation: the whole image, resized to the input size


def test_crop_sets_the_model_input_size_and_refuses_contradictions():
    model, note = crop_model_config(ModelConfig(), DataConfig(crop=512))
    assert (model.min_size, model.max_size) == (512, 1333) and "input size set to 512-1333" in note
    assert crop_model_config(ModelConfig(min_size=512), DataConfig(crop=512)) == (ModelConfig(min_size=512), None)
    assert crop_model_config(ModelConfig(), DataConfig()) == (ModelConfig(), None)
    with pytest.raises(RetinaNetError, match="--min-size 800 contradicts"):
        crop_model_config(ModelConfig(), DataConfig(crop=512), min_size_given=True)
    with pytest.raises(RetinaNetError, match="--iou-crop"):
        crop_model_config(ModelConfig(), DataConfig(crop=512, iou_crop=True))
    with pytest.raises(RetinaNetError, match="--train-sizes"):
        crop_model_config(ModelConfig(), DataConfig(crop=512, train_sizes=(480, 512)))
    with pytest.raises(RetinaNetError, match="at least 32"):
        crop_model_config(ModelConfig(), DataConfig(crop=16))
    assert "50%" in crop_rule(512) and "ignore region" in crop_rule(512) and "0.5" in crop_rule(512)


def test_train_cli_refuses_a_crop_with_another_input_size(tmp_path, capsys):
    from retinanet.cli import main

    code = main(["train", "--crop", "64", "--min-size", "128", "--out", str(tmp_path / "run"), "--epochs", "1"])
    assert code == 2 and "--crop 64 trains at native resolution" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_crop_run_evaluates_native_resolution_tiles_and_suggests_tiled_commands(tmp_path, monkeypatch):
    """Resized whole, the val images of a crop run scored AP ~0 and best.pt was chosen by noise."""
    import retinanet.engine.train.loop as L
    from retinanet.config import TrainConfig
    from retinanet.engine.train.budget import val_tiles

    make_synthetic(tmp_path / "syn", num_train=4, num_val=2, image_size=160, seed=0)
    seen = []
    real = L.evaluate
    monkeypatch.setattr(L, "evaluate", lambda model, loader, **kw: seen.append((kw["tile"], loader)) or real(model, loader, **kw))
    model = ModelConfig(arch="resnet18_fpn", norm="bn", fpn_channels=32, head_convs=1)
    data = DataConfig(root=str(tmp_path / "syn"), workers=0, crop=64)
    summary = L.train(model, data, TrainConfig(out=str(tmp_path / "run"), epochs=1, batch_size=2, device="cpu",
                                               weights="none", warmup_iters=1), progress=False)
    (tile, loader), = seen
    assert tile is not None and tile.tile == 64 and tile.batch_size == 2
    images, _ = next(iter(loader))
    assert tuple(images[0].shape[-2:]) == (160, 160)  # native resolution, not resized to the crop's 64
    assert summary["commands"]["eval"].endswith("--tile") and summary["commands"]["predict"].endswith("--tile")
    assert val_tiles(loader.dataset, 64) == 2 * 9  # 160 px in tiles of 64, overlap 0.2: 3 x 3 each


def test_objects_no_crop_can_hold_half_of_are_named():
    """They are always ignore regions: 15 of 24 objects of a test set were never learnt, without a word."""
    import numpy as np

    from retinanet.data.crop import too_large_for_crop
    from retinanet.data.records import Record

    def record(boxes, ignore=None):
        b = np.asarray(boxes, np.float32)
        return Record("a.jpg", b, np.ones(len(b), np.int64), np.asarray(ignore or [False] * len(b)), 0, None, "a.xml")

    records = [record([[0, 0, 300, 300], [0, 0, 200, 100]]), record([[0, 0, 400, 50]], [True]), record(np.zeros((0, 4)))]
    said = too_large_for_crop(records, 160)
    assert said.startswith("1 of the 2 training objects are too large for a 160 px crop to hold 50% of them") and \
        "give a larger --crop" in said  # 200 x 100: a crop holds 80% of it; the ignored 400 x 50 is not counted
    assert too_large_for_crop(records, 256) == "" and too_large_for_crop([], 160) == ""
    # --train-difficult trains it as an object: then it is one of them
    assert too_large_for_crop(records, 160, ignore_as_objects=True).startswith("2 of the 3 training objects")
