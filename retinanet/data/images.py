"""Image loading: JPEG/PNG (anything PIL reads) to an RGB ``uint8 [3, H, W]`` tensor.

EXIF orientation (``DataConfig.exif``, one rule for training, evaluation, check-data and predict):
a photo whose EXIF Orientation tag (0x0112) is 2..8 is stored flipped or sideways and shown turned.
Boxes are taken in the *displayed* frame (EXIF applied): that is what CVAT (since 2.1), ultralytics
(``exif_transpose``/``exif_size``) and phone/browser viewers show, and what Roboflow bakes into its
exports. LabelImg shows the stored frame (its XML ``<size>`` is then the stored size).

- ``"apply"``: always the displayed frame.
- ``"ignore"``: always the stored frame (a dataset annotated in LabelImg, or any tool that ignores EXIF).
- ``"auto"`` (default): the displayed frame, except when the annotation states a size (VOC
  ``<size>``, COCO ``height``/``width``) that matches only the stored frame (a 90-degree
  orientation, 5..8, of a non-square image): then that image is read in the stored frame and a
  warning names it. Square images and 180-degree/flip orientations cannot be told apart by size:
  they get the displayed frame (use ``"ignore"`` for a dataset annotated in the stored frame).

Pixel limit (``DataConfig.max_image_pixels``, default 178,956,970 = PIL's own refusal threshold):
an image whose header declares more pixels is a bad image (``ImageTooLargeError``, a ``ValueError``
naming the file, its size and the limit), skipped like any corrupt file with ``skip_bad``; ``None``
means no limit. The limit is checked per call on the header: PIL's own check (its module-global
``Image.MAX_IMAGE_PIXELS``, and its anonymous ``DecompressionBombWarning``) is not used at open,
and that global is never written, so calls with other limits may run in parallel threads.

Modes: grayscale, CMYK, palette, 16-bit and RGBA images become RGB (alpha dropped). 16-bit
images (``I;16*``, and ``I``, which PIL uses for some 16-bit files) are scaled by the type's range,
65535 -> 255, never by the image's own maximum (one bright pixel must not darken the rest).
"""

from __future__ import annotations

import io
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from retinanet.errors import RetinaNetError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
EXIF_POLICIES = ("auto", "apply", "ignore")
EXIF_ORIENTATION_TAG = 0x0112
DEFAULT_MAX_PIXELS = 178_956_970  # PIL's refusal threshold (2 * Image.MAX_IMAGE_PIXELS), ~13377 x 13377
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_ORIENTATION_NAMES = {2: "mirrored", 3: "rotated 180", 4: "flipped vertically", 5: "transposed",
                      6: "rotated 90 CW", 7: "transversed", 8: "rotated 90 CCW"}


@dataclass(frozen=True)
class ImageReading:
    """The rules an image file is read under (``DataConfig.exif``, ``DataConfig.max_image_pixels``):
    every reader (datasets, YOLO sizes, predict, the Detector, export samples) passes them on."""

    exif: str = "auto"
    max_pixels: int | None = DEFAULT_MAX_PIXELS


class ImageTooLargeError(ValueError):
    """An image whose header declares more pixels than the configured limit."""


@dataclass
class OpenedImage:
    """An image decoded in the frame the EXIF rule chose.

    Attributes:
        image: RGB PIL image in that frame.
        orientation: the EXIF Orientation tag, 1..8 (1 = none, absent or invalid).
        frame: "displayed" (EXIF applied) or "stored"; the same pixels when orientation is 1.
        note: why the ``"auto"`` rule kept the stored frame for this image, else None.
    """

    image: Image.Image
    orientation: int
    frame: str
    note: str | None = None


def is_image_file(path: str | Path) -> bool:
    """Whether ``path`` has one of the image types every reader reads (``IMAGE_SUFFIXES``, any
    case): the one list for VOC (both layouts), COCO, YOLO and predict on a folder."""
    return os.path.splitext(os.fspath(path))[1].lower() in IMAGE_SUFFIXES  # no Path made: called per file


def not_read(files: list[Path], where: str | Path, what: str = "") -> list[str]:
    """A warning naming the ``files`` a reader leaves out because they are not an image type
    (hidden files, ``.name``, left out of it), or none: a skipped file is always said."""
    shown = sorted(str(f) for f in files if not Path(f).name.startswith("."))
    if not shown:
        return []
    return [f"{where}: {len(shown)} file(s) not read{what}, not one of the image types ({' '.join(IMAGE_SUFFIXES)}): "
            f"{', '.join(shown[:5])}{' ...' if len(shown) > 5 else ''}"]


def check_exif_policy(exif: str) -> str:
    """``exif`` itself when it is one of ``EXIF_POLICIES``; else ``RetinaNetError``."""
    if exif not in EXIF_POLICIES:
        raise RetinaNetError(f"exif must be one of {', '.join(EXIF_POLICIES)}, not {exif!r}")
    return exif


def describe_orientation(orientation: int) -> str:
    """``"6 (rotated 90 CW)"``: the tag value and what it does to the stored image."""
    return f"{orientation} ({_ORIENTATION_NAMES.get(orientation, 'none')})"


def choose_frame(orientation: int, stored_hw: tuple[int, int], stated_hw: tuple[int, int] | None,
                 exif: str = "auto") -> tuple[str, str | None]:
    """The frame an image is read in, by the rule of the module docstring.

    Args:
        orientation: EXIF Orientation tag (1..8; anything else counts as 1).
        stored_hw: ``(height, width)`` of the stored pixels.
        stated_hw: ``(height, width)`` the annotation states, or None.
        exif: "auto" | "apply" | "ignore".

    Returns:
        ("displayed" | "stored", note): the note explains an ``"auto"`` fallback to the stored frame.
    """
    check_exif_policy(exif)
    if orientation not in _ORIENTATION_NAMES or exif == "ignore":
        return "stored", None
    if exif == "apply" or stated_hw is None:
        return "displayed", None
    stored = tuple(stored_hw)
    displayed = stored[::-1] if orientation >= 5 else stored
    if tuple(stated_hw) == stored and stored != displayed:
        h, w = stored
        return "stored", (f"EXIF orientation {describe_orientation(orientation)} would show the image as {h}x{w} (WxH) "
                          f"but the annotation states the stored size {w}x{h}: boxes taken in the stored frame "
                          "(set exif to 'apply' or 'ignore' to decide for every image)")
    return "displayed", None


def _open_header(path: str | Path, data: bytes | None = None) -> Image.Image:
    """``Image.open`` without PIL's size check: the registered format plugins (``Image.ID`` /
    ``Image.OPEN``, read, never written) tried on the file's first 16 bytes as ``Image.open``
    does (the suffix's format first), reading only the header. PIL's check reads its
    module-global ``MAX_IMAGE_PIXELS``, so a per-call limit can only be had by not calling it;
    nothing shared is written (thread-safe). ``data``: the file's bytes, already read (then
    ``path`` only names it)."""
    Image.init()  # every plugin registered (once per process; what Image.open falls back to)
    fp = open(path, "rb") if data is None else io.BytesIO(data)
    prefix = fp.read(16)
    by_suffix = Image.EXTENSION.get(Path(path).suffix.lower())  # the likely format first, then PIL's order
    for fmt in ([by_suffix] if by_suffix in Image.OPEN else []) + [f for f in Image.ID if f != by_suffix]:
        factory, accept = Image.OPEN[fmt]
        try:  # a plugin's test can fail on a header shorter than it reads (a 0-3 byte file): not this format
            result = accept(prefix) if accept else True
        except (SyntaxError, IndexError, TypeError, struct.error):
            continue
        if isinstance(result, str) or not result:  # as Image.open: a string is a "maybe" message, not a match
            continue
        fp.seek(0)
        try:
            img = factory(fp, str(path))
        except (SyntaxError, IndexError, TypeError, struct.error):  # what Image.open treats as "not this format"
            continue
        except BaseException:
            fp.close()
            raise
        img._exclusive_fp = True  # as Image.open: the image owns the file and closes it with itself
        return img
    fp.close()
    raise UnidentifiedImageError(f"cannot identify image file {str(path)!r}")


def _open_limited(path: str | Path, max_pixels: int | None, data: bytes | None = None) -> Image.Image:
    """The image's header (not decoded) when its declared size is within ``max_pixels`` (None: no
    limit); ``ImageTooLargeError`` naming the file otherwise. Our limit is the one rule: PIL's
    global ``MAX_IMAGE_PIXELS`` is neither consulted nor written (``_open_header``, which ``data``
    is passed to)."""
    img = _open_header(path, data)
    if max_pixels is not None and img.width * img.height > max_pixels:
        img.close()
        raise ImageTooLargeError(f"{path}: image of {img.width}x{img.height} = {img.width * img.height} pixels exceeds the "
                                 f"limit of {max_pixels} (raise it with --max-image-pixels N; a config file's or "
                                 f"Detector.load's max_image_pixels)")
    return img


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB (16-bit scaled by the type's range, alpha dropped)."""
    if img.mode == "RGB":
        return img.copy()
    if img.mode in SIXTEEN_BIT_MODES:
        arr = np.asarray(img).astype(np.int64).clip(0, 65535)
        return Image.fromarray(((arr * 255 + 32767) // 65535).astype(np.uint8)).convert("RGB")  # rounded 65535 -> 255
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert("RGB")


def open_image(path: str | Path, stated_hw: tuple[int, int] | None = None, *, exif: str = "auto",
               max_pixels: int | None = DEFAULT_MAX_PIXELS, data: bytes | None = None) -> OpenedImage:
    """Decode ``path`` fully into RGB, in the frame the EXIF rule chooses.

    Args:
        path: image file (named in messages; not opened when ``data`` is given).
        stated_hw: ``(height, width)`` the annotation states, or None (predict: no annotation).
        exif: "auto" | "apply" | "ignore" (see the module docstring).
        max_pixels: largest ``width * height`` accepted; None = no limit.
        data: the file's bytes when the caller has read them already (check-data hashes them):
            decoded from memory, under the same EXIF rule and pixel limit.

    Raises:
        OSError / PIL.UnidentifiedImageError / SyntaxError / ValueError: missing or undecodable
        file; ``ImageTooLargeError`` (a ValueError) over the pixel limit. Messages name ``path``
        where PIL's do not (the callers add it).
    """
    with _open_limited(path, max_pixels, data) as img:
        orientation = img.getexif().get(EXIF_ORIENTATION_TAG, 1)
        orientation = orientation if orientation in _ORIENTATION_NAMES else 1
        try:
            img.load()
        except Image.DecompressionBombError as err:  # a frame (GIF, TIFF tile) larger than the header said
            raise ImageTooLargeError(f"{path}: image too large ({err})") from None
        frame, note = choose_frame(orientation, (img.height, img.width), stated_hw, exif)
        turned = ImageOps.exif_transpose(img) if frame == "displayed" and orientation != 1 else img
        return OpenedImage(_to_rgb(turned), orientation, frame, note)


def open_rgb(path: str | Path, expected_hw: tuple[int, int] | None = None, *, exif: str = "auto",
             max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """``open_image(...).image``: the RGB PIL image in the chosen frame (what predict calls)."""
    return open_image(path, expected_hw, exif=exif, max_pixels=max_pixels).image


def oriented_size(path: str | Path, *, exif: str = "auto", max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """``(height, width)`` of an image without annotation in the chosen frame, from its header only."""
    with _open_limited(path, max_pixels) as img:
        orientation = img.getexif().get(EXIF_ORIENTATION_TAG, 1)
        frame, _ = choose_frame(orientation, (img.height, img.width), None, exif)
        swap = frame == "displayed" and orientation in (5, 6, 7, 8)
        return (img.width, img.height) if swap else (img.height, img.width)


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> ``uint8 [3, H, W]`` tensor."""
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


def load_image(path: str | Path, expected_hw: tuple[int, int] | None = None, *, exif: str = "auto",
               max_pixels: int | None = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """``open_rgb`` as a ``uint8 [3, H, W]`` tensor."""
    return pil_to_tensor(open_rgb(path, expected_hw, exif=exif, max_pixels=max_pixels))
