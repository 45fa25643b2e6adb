"""Image loading: JPEG/PNG (anything PIL reads) to an RGB ``uint8 [3, H, W]`` tensor.

EXIF orientation rule: a photo whose EXIF tag says "rotate" is stored sideways. Annotation tools
disagree about whether the boxes are in the stored or in the displayed frame, so we trust the
annotation's stated size: the EXIF rotation is applied only when it makes the image size match
the annotation's ``(height, width)`` (and the stored size does not). Without a stated size the
image is used as stored. Grayscale, CMYK, palette, 16-bit and RGBA images become RGB (alpha dropped,
the colour channels are kept as stored).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def open_rgb(path: str | Path, expected_hw: tuple[int, int] | None = None) -> Image.Image:
    """Decode ``path`` fully and return an RGB PIL image, oriented by the EXIF rule above.

    Args:
        path: image file.
        expected_hw: ``(height, width)`` the annotation states, or None.

    Raises:
        OSError / PIL.UnidentifiedImageError / ValueError: the file is missing or cannot be decoded.
    """
    with Image.open(path) as img:
        img.load()
        if expected_hw is not None and (img.height, img.width) != tuple(expected_hw):
            turned = ImageOps.exif_transpose(img)
            if (turned.height, turned.width) == tuple(expected_hw):
                img = turned
        if img.mode == "RGB":
            return img.copy()
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(img, dtype=np.float64)
            arr = (255 * arr / max(1.0, float(arr.max()))).astype(np.uint8)
            return Image.fromarray(arr).convert("RGB")
        if img.mode == "P" and "transparency" in img.info:
            img = img.convert("RGBA")
        return img.convert("RGB")


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> ``uint8 [3, H, W]`` tensor."""
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


def load_image(path: str | Path, expected_hw: tuple[int, int] | None = None) -> torch.Tensor:
    """``open_rgb`` as a ``uint8 [3, H, W]`` tensor."""
    return pil_to_tensor(open_rgb(path, expected_hw))
