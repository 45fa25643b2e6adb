"""Ignore regions (VOC difficult) travel with their boxes through augmentation, resize and collate."""

from __future__ import annotations

import random

import torch

from retinanet.config import DataConfig
from retinanet.data import build_datasets, build_loader
from voc_fixtures import make_voc


def _obj(name, box, difficult=0):
    return {"name": name, "box": box, "difficult": difficult}


def test_ignore_flags_follow_their_boxes_to_the_batch(tmp_path):
    # "dog" objects are difficult, "cat" ones not: after flip / IoU crop / resize / sanitize the
    # flags must still say ignore exactly where the label is dog
    items = [(f"i{k}", [_obj("cat", (3 + k, 4, 30, 40)), _obj("dog", (35, 10, 75 - k, 60), 1),
                        _obj("cat", (50, 30, 79, 63)), _obj("dog", (2, 45, 20, 62), 1)]) for k in range(4)]
    make_voc(tmp_path, {"train": items, "val": items[:1]})
    cfg = DataConfig(root=str(tmp_path), hflip_prob=1.0, iou_crop=True, train_sizes=(48, 72))
    ds = build_datasets(cfg, min_size=64, max_size=96)
    dog = ds.class_map.to_dict()["dog"]
    torch.manual_seed(0)
    random.seed(0)
    seen_ignore = 0
    for epoch in range(3):
        loader = build_loader(ds.train, batch_size=2, workers=0, train=True, seed=epoch)
        for images, targets in loader:
            for img, t in zip(images, targets):
                n = len(t["labels"])
                assert t["boxes"].shape == (n, 4) and t["ignore"].shape == (n,) and t["ignore"].dtype == torch.bool
                assert torch.equal(t["ignore"], t["labels"] == dog)
                h, w = img.shape[-2:]
                assert (t["boxes"][:, 2:] <= torch.tensor([w, h]) + 1e-3).all()
                seen_ignore += int(t["ignore"].sum())
    assert seen_ignore > 0
    # flip only, no resize (64x80 images): the boxes and flags of item 0, exactly
    flip = build_datasets(DataConfig(root=str(tmp_path), hflip_prob=1.0), min_size=64, max_size=96)
    _, t = flip.train[0]
    assert t["size"] == (64, 80) and t["ignore"].tolist() == [False, True, False, True]
    # VOC dog (35, 10, 75, 60) is x1 34, x2 75; mirrored in a width of 80: 5..46
    assert t["boxes"][1].tolist() == [5.0, 9.0, 46.0, 60.0]
    ds_all = build_datasets(DataConfig(root=str(tmp_path), train_difficult=True, hflip_prob=0.0), min_size=64, max_size=96)
    _, t = ds_all.train[0]
    assert (t["labels"] == dog).sum() == 2 and not t["ignore"].any()  # trained as objects
