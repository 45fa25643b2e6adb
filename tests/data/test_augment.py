"""Augmentation and resize keep boxes on their pixels; evaluation items are not augmented."""

from __future__ import annotations

import random

import pytest
import torch

from retinanet.data.transforms import ItemTransform


def _scene(hw=(64, 96), box=(10, 20, 40, 50)):
    """Black image with a white rectangle exactly covering ``box`` (x1, y1, x2, y2)."""
    image = torch.zeros(3, *hw, dtype=torch.uint8)
    x1, y1, x2, y2 = box
    image[:, y1:y2, x1:x2] = 255
    target = {"boxes": torch.tensor([box], dtype=torch.float32), "labels": torch.tensor([3]), "ignore": torch.tensor([False]),
              "image_id": 0, "orig_size": hw, "file": "x"}
    return image, target


def _inside_outside(image, box):
    x1, y1, x2, y2 = [int(round(v)) for v in box.tolist()]
    mask = torch.zeros(image.shape[-2:], dtype=torch.bool)
    mask[y1 + 1 : y2 - 1, x1 + 1 : x2 - 1] = True  # one pixel margin for interpolation
    ring = torch.zeros_like(mask)
    ring[max(0, y1 - 3) : y2 + 3, max(0, x1 - 3) : x2 + 3] = True
    gray = image.float().mean(0)
    return gray[mask].mean().item(), gray[~ring].mean().item()


def test_flip_and_resize_move_boxes_with_pixels():
    tf = ItemTransform(32, 100, train=True, hflip_prob=1.0)
    image, target = _scene()
    out, t = tf(image, target)
    assert out.shape == (3, 32, 48) and out.dtype == torch.uint8 and t["size"] == (32, 48)
    torch.testing.assert_close(t["boxes"], torch.tensor([[(96 - 40) / 2, 10.0, (96 - 10) / 2, 25.0]]))
    inside, outside = _inside_outside(out, t["boxes"][0])
    assert inside > 250 and outside < 5
    assert t["labels"].tolist() == [3] and t["ignore"].tolist() == [False] and t["orig_size"] == (64, 96)


@pytest.mark.parametrize("seed", range(4))
def test_multiscale_photometric_iou_crop_keep_boxes_consistent(seed):
    torch.manual_seed(seed)
    random.seed(seed)
    tf = ItemTransform(48, 200, train=True, train_sizes=(40, 56), photometric=True, iou_crop=True)
    image, target = _scene()
    out, t = tf(image, target)
    assert min(abs(min(out.shape[-2:]) - s) for s in (40, 56)) <= 1  # the model's floor rounding
    assert t["size"] == tuple(out.shape[-2:])
    for box in t["boxes"]:  # iou crop may cut the box; what is left still covers the white pixels
        inside, outside = _inside_outside(out, box)
        assert inside > outside + 100


def test_sanitize_drops_boxes_with_their_labels_and_flags():
    image, target = _scene()
    target["boxes"] = torch.tensor([[10.0, 20, 40, 50], [5, 5, 5.5, 30]])
    target["labels"], target["ignore"] = torch.tensor([1, 2]), torch.tensor([False, True])
    _, t = ItemTransform(64, 96, train=True, hflip_prob=0)(image, target)
    assert t["boxes"].shape == (1, 4) and t["labels"].tolist() == [1] and t["ignore"].tolist() == [False]


def test_eval_is_resize_only():
    image, target = _scene()
    target["boxes"] = torch.tensor([[10.0, 20, 40, 50], [5, 5, 5.5, 30]])  # tiny boxes kept for evaluation
    target["labels"], target["ignore"] = torch.tensor([1, 2]), torch.tensor([False, True])
    a, ta = ItemTransform(32, 100, train=False)(image.clone(), dict(target))
    b, tb = ItemTransform(32, 100, train=False)(image.clone(), dict(target))
    assert torch.equal(a, b) and torch.equal(ta["boxes"], tb["boxes"]) and len(ta["boxes"]) == 2
    torch.testing.assert_close(ta["boxes"][0], torch.tensor([5.0, 10.0, 20.0, 25.0]))


def test_images_without_objects_pass_every_augmentation():
    torch.manual_seed(0)
    tf = ItemTransform(40, 200, train=True, photometric=True, iou_crop=True)
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "ignore": torch.zeros(0, dtype=torch.bool),
             "image_id": 1, "orig_size": (64, 80), "file": "e"}
    out, t = tf(torch.zeros(3, 64, 80, dtype=torch.uint8), empty)
    assert out.shape == (3, 40, 50) and t["boxes"].shape == (0, 4) and t["labels"].dtype == torch.int64
