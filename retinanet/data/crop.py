"""Crop training: random ``PX x PX`` crops at native resolution (``DataConfig.crop``, ``train --crop PX``).

For images much larger than the network input with small objects in them (aerial photos,
microscopy slides, crowded shelves): resizing a 4000 px photo to 800 px would shrink a 16 px object
below every anchor, so the model trains on crops of the original pixels and predicts tile by tile.

The rule (``crop_rule`` says it in one line for the training log):

- the window: with probability ``CROP_ON_OBJECT`` it contains the centre of one object drawn at
  random (ignore regions excluded), at a uniformly drawn place in the window; otherwise it is
  uniform over the image. So crops of a sparse image are not mostly empty background.
- an object cut by the window keeps its box (clipped to the window) when at least ``CROP_KEEP``
  of its area is inside; a smaller visible part becomes an ignore region (clipped), never
  background: the loss neither learns it as an object nor as background. Objects wholly outside
  are dropped; ignore regions stay ignore regions, clipped.
- a side of the image shorter than ``PX`` is padded to ``PX`` with the ImageNet mean colour (what
  the model's zero padding of a normalised batch looks like), so every crop is ``PX x PX`` and the
  model, whose input size is ``PX`` (``crop_model_config``), never resizes it.
"""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import torch
from torch import Tensor

from retinanet.config import DataConfig, ModelConfig
from retinanet.errors import RetinaNetError

CROP_KEEP = 0.5  # an object cut by the crop keeps its box if at least this share of its area is inside
CROP_ON_OBJECT = 0.5  # probability that the crop window is placed around a random object
PAD_RGB = (124, 116, 104)  # ImageNet mean, uint8: padding of images smaller than the crop


def crop_rule(size: int) -> str:
    """The crop rule in one line, for the training log."""
    return (f"crop training: random {size}x{size} crops at native resolution; with probability {CROP_ON_OBJECT} the "
            f"crop holds the centre of a random object, else uniform; a cut object keeps its box if >= "
            f"{CROP_KEEP:.0%} of its area is inside, else becomes an ignore region; images smaller than the crop are "
            "padded")


def too_large_for_crop(records, size: int, ignore_as_objects: bool = False) -> str:
    """A warning when objects of ``records`` (the training split) can never have ``CROP_KEEP`` of
    their area inside a ``size`` crop: they are always ignore regions, never learnt; "" when none.
    Ignore regions are not objects, unless the run trains them as such (``ignore_as_objects``:
    ``train_difficult``)."""
    boxes = [r.boxes if ignore_as_objects else r.boxes[~r.ignore.astype(bool)] for r in records]
    wh = np.concatenate([b[:, 2:] - b[:, :2] for b in boxes]) if boxes else np.zeros((0, 2), np.float32)
    if not len(wh):
        return ""
    inside = np.minimum(wh, size).prod(1) / np.maximum(wh.prod(1), 1e-6)  # the most of each a crop can hold
    never = int((inside < CROP_KEEP).sum())
    if not never:
        return ""
    return (f"{never} of the {len(wh)} training objects are too large for a {size} px crop to hold {CROP_KEEP:.0%} of "
            f"them (up to {int(wh[:, 0].max())} px wide, {int(wh[:, 1].max())} px high): they are always ignore regions and never "
            "learnt; give a larger --crop, or train without --crop for them")


def crop_window(hw: tuple[int, int], boxes: Tensor, size: int, on_object: float = CROP_ON_OBJECT) -> tuple[int, int]:
    """Top-left corner ``(y0, x0)`` of a random window of side ``min(size, H)`` x ``min(size, W)``.

    Args:
        hw: image (H, W). boxes: ``[N, 4]`` xyxy objects the window may be placed around (ignore
            regions left out by the caller). size: window side, pixels.
        on_object: probability of a window holding the centre of a random box (none: uniform).
    Draws from Python's ``random`` (the dataset seeds it per item).
    """
    H, W = hw
    ch, cw = min(size, H), min(size, W)
    if len(boxes) and random.random() < on_object:
        b = boxes[random.randrange(len(boxes))]
        cx, cy = float(b[0] + b[2]) / 2, float(b[1] + b[3]) / 2
        # windows holding (cx, cy): x0 in (cx - cw, cx], inside the image
        x_lo, x_hi = max(0, int(cx) - cw + 1), min(W - cw, int(cx))
        y_lo, y_hi = max(0, int(cy) - ch + 1), min(H - ch, int(cy))
        return random.randint(y_lo, max(y_lo, y_hi)), random.randint(x_lo, max(x_lo, x_hi))
    return random.randint(0, H - ch), random.randint(0, W - cw)


def crop_target(boxes: Tensor, ignore: Tensor, window: tuple[int, int, int, int],
                keep: float = CROP_KEEP) -> tuple[Tensor, Tensor, Tensor]:
    """Boxes of the window's frame.

    Args:
        boxes: ``[N, 4]`` xyxy image frame. ignore: ``[N]`` bool. window: ``(y0, x0, h, w)``.
        keep: the share of an object's area that must be inside to keep it as an object.
    Returns:
        ``(boxes [K, 4] clipped, in the window's frame; ignore [K] bool; index [K] into the input)``:
        every box that overlaps the window; an object with less than ``keep`` of its area inside
        turns into an ignore region.
    """
    y0, x0, h, w = window
    shifted = boxes - torch.tensor([x0, y0, x0, y0], dtype=boxes.dtype)
    clipped = torch.stack([shifted[:, 0].clamp(0, w), shifted[:, 1].clamp(0, h),
                           shifted[:, 2].clamp(0, w), shifted[:, 3].clamp(0, h)], 1)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    inside = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
    index = (inside > 0).nonzero().squeeze(1)
    cut = inside < keep * area
    return clipped[index], (ignore | cut)[index], index


def random_crop(image: Tensor, target: dict, size: int, on_object: float = CROP_ON_OBJECT,
                keep: float = CROP_KEEP) -> tuple[Tensor, dict]:
    """``(uint8 [3, H, W], target)`` -> ``(uint8 [3, size, size], target in the crop's frame)``.

    ``target`` holds ``boxes`` [N, 4], ``labels`` [N], ``ignore`` [N]; the rest passes through.
    """
    H, W = int(image.shape[-2]), int(image.shape[-1])
    boxes, ignore = target["boxes"].float(), target["ignore"].bool()
    y0, x0 = crop_window((H, W), boxes[~ignore], size, on_object)
    h, w = min(size, H), min(size, W)
    out = image[:, y0:y0 + h, x0:x0 + w]
    if (h, w) != (size, size):
        pad = torch.tensor(PAD_RGB, dtype=image.dtype)[:, None, None].expand(3, size, size).clone()
        pad[:, :h, :w] = out
        out = pad
    new_boxes, new_ignore, index = crop_target(boxes, ignore, (y0, x0, h, w), keep)
    return out.contiguous(), {**target, "boxes": new_boxes, "labels": target["labels"][index], "ignore": new_ignore}


def crop_model_config(model: ModelConfig, data: DataConfig, min_size_given: bool = False) -> tuple[ModelConfig, str | None]:
    """The model config a crop-trained run needs: input size = the crop side, so crops are not resized.

    Args:
        min_size_given: the user set ``min_size`` explicitly (command line); a different size is refused.
    Returns:
        (model config, a note for the log when the input size was changed; None otherwise).
    Raises:
        RetinaNetError: a crop side below 32 px, a conflicting explicit ``min_size``, or a crop
            combined with ``iou_crop`` or ``train_sizes`` (both rescale the crop).
    """
    if data.crop is None:
        return model, None
    if data.crop < 32:
        raise RetinaNetError(f"--crop {data.crop}: a crop side is at least 32 px")
    if data.iou_crop or data.train_sizes:
        other = "--iou-crop" if data.iou_crop else "--train-sizes"
        raise RetinaNetError(f"--crop {data.crop} and {other}: both change the scale or the window; choose one")
    if model.min_size == data.crop and model.max_size >= data.crop:
        return model, None
    if min_size_given and model.min_size != data.crop:
        raise RetinaNetError(f"--crop {data.crop} trains at native resolution on {data.crop} px crops, so the model's input "
                             f"size is {data.crop}; --min-size {model.min_size} contradicts it (leave it out)")
    new = dataclasses.replace(model, min_size=data.crop, max_size=max(model.max_size, data.crop))
    return new, (f"--crop {data.crop}: model input size set to {new.min_size}-{new.max_size} px (was "
                 f"{model.min_size}-{model.max_size}), so crops enter the network unresized; each evaluation "
                 f"tiles the native-resolution val images with {data.crop} px tiles, as eval/predict --tile do")
