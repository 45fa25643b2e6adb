"""Per-item transforms, run in the DataLoader workers: augmentation, then resize for the model.

Training: photometric distortion (optional), random IoU crop (optional), horizontal flip, all with
``torchvision.transforms.v2`` on ``tv_tensors.BoundingBoxes``; then the resize the model would do
(``retinanet.geometry.resize_image``) with the short side drawn from ``train_sizes``
(multi-scale; empty = the model's ``min_size``), then ``SanitizeBoundingBoxes`` (drops boxes left
smaller than 1 px, with their labels and ignore flags). Evaluation: only the resize.

Crop training (``crop``): first a random ``crop x crop`` window at native resolution
(``retinanet.data.crop.random_crop``: cut objects become ignore regions), then the augmentation,
and no resize: the model's input size is the crop side.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from retinanet.data.crop import random_crop
from retinanet.geometry import resize_boxes, resize_image


def _labels_getter(inputs):
    target = inputs[1]
    return target["labels"], target["ignore"]


@dataclass
class ItemTransform:
    """``(image uint8 [3, H0, W0], target with original-frame boxes) -> (resized image, target)``.

    Args:
        min_size, max_size: the model's input size (short side, cap on the long side).
        train: augment (and pick the short side from ``train_sizes``).
        train_sizes: multi-scale short sides; empty = ``min_size``.
        hflip_prob, photometric, iou_crop: augmentation options (training only).
        crop: side of random crops at native resolution (training only; None = whole images).
        resize: False = no resize (evaluation at native resolution, for tiled prediction).
    """

    min_size: int
    max_size: int
    train: bool = False
    train_sizes: tuple[int, ...] = ()
    hflip_prob: float = 0.5
    photometric: bool = False
    iou_crop: bool = False
    crop: int | None = None
    resize: bool = True

    def __post_init__(self):
        steps: list[v2.Transform] = []
        if self.train and self.photometric:
            steps.append(v2.RandomPhotometricDistort(p=0.5))
        if self.train and self.iou_crop:
            steps.append(v2.RandomIoUCrop())
        if self.train and self.hflip_prob > 0:
            steps.append(v2.RandomHorizontalFlip(p=self.hflip_prob))
        self.augment = v2.Compose(steps) if steps else None
        self.sanitize = v2.SanitizeBoundingBoxes(min_size=1.0, labels_getter=_labels_getter)

    def __call__(self, image: torch.Tensor, target: dict) -> tuple[torch.Tensor, dict]:
        cropping = self.train and self.crop is not None
        if cropping:
            image, target = random_crop(image, target, self.crop)
        hw = tuple(image.shape[-2:])
        if not self.train:  # evaluation scores the boxes as read, not a float32 round trip through the resized frame
            target = {**target, "orig_boxes": target["boxes"].float()}
        else:  # stated areas are for evaluation; crops and flips would leave them beside boxes they no longer fit
            target = {k: v for k, v in target.items() if k != "area"}
        img = tv_tensors.Image(image)
        boxes = tv_tensors.BoundingBoxes(target["boxes"], format="XYXY", canvas_size=hw)
        target = {**target, "boxes": boxes}
        if self.augment is not None:
            img, target = self.augment(img, target)
        short = random.choice(self.train_sizes) if self.train and self.train_sizes else self.min_size
        old_hw = tuple(img.shape[-2:])
        out = img.as_subclass(torch.Tensor)
        out = out if cropping or not self.resize else resize_image(out, short, self.max_size)
        new_hw = tuple(out.shape[-2:])
        new_boxes = resize_boxes(target["boxes"].as_subclass(torch.Tensor), old_hw, new_hw)
        target["boxes"] = tv_tensors.BoundingBoxes(new_boxes, format="XYXY", canvas_size=new_hw)
        if self.train:
            _, target = self.sanitize(tv_tensors.Image(out), target)
        target["boxes"] = target["boxes"].as_subclass(torch.Tensor).float()
        target["size"] = new_hw
        return out.as_subclass(torch.Tensor).contiguous(), target
