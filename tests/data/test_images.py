"""Image loading: colour modes to RGB, and the EXIF orientation rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from retinanet.data.images import load_image


@pytest.mark.parametrize("mode", ["L", "CMYK", "P", "RGBA", "LA", "I;16", "1"])
def test_modes_become_rgb(tmp_path, mode):
    img = Image.new("RGB", (20, 10), (200, 30, 40)).convert(mode)
    path = tmp_path / ("x.jpg" if mode in ("L", "CMYK") else "x.png")
    img.save(path)
    t = load_image(path)
    assert t.shape == (3, 10, 20) and t.dtype == torch.uint8


def _exif_rotated(path, stored_hw=(10, 30)):
    arr = np.zeros((*stored_hw, 3), np.uint8)
    arr[0, 0] = (255, 0, 0)  # marker at the stored top-left
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    img.save(path, exif=exif, quality=100)


def test_exif_applied_only_when_it_matches_the_annotation(tmp_path):
    path = tmp_path / "r.jpg"
    _exif_rotated(path)
    assert load_image(path, (30, 10)).shape == (3, 30, 10)  # annotation in the displayed frame
    assert load_image(path, (10, 30)).shape == (3, 10, 30)  # annotation in the stored frame
    assert load_image(path).shape == (3, 10, 30)  # no stated size: as stored


def test_corrupt_file_raises(tmp_path):
    (tmp_path / "c.jpg").write_bytes(b"\xff\xd8\xff nonsense")
    with pytest.raises(OSError):
        load_image(tmp_path / "c.jpg")
