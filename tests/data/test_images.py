"""Image loading: colour modes to RGB (with their pixel values), 16-bit scaling, the pixel limit."""

from __future__ import annotations

import struct
import warnings
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from retinanet.data.images import ImageTooLargeError, load_image


# (mode, file, RGB of a (200, 30, 40) pixel after the round trip: L = ITU-R 601 luma, P = the web palette, 1 = dithered black)
MODES = [("L", "x.png", (82, 82, 82)), ("CMYK", "x.tif", (200, 30, 40)), ("P", "x.png", (204, 51, 51)),
         ("RGBA", "x.png", (200, 30, 40)), ("LA", "x.png", (82, 82, 82)), ("1", "x.png", (0, 0, 0))]


@pytest.mark.parametrize("mode, name, rgb", MODES)
def test_modes_become_rgb_with_their_values(tmp_path, mode, name, rgb):
    img = Image.new("RGB", (20, 10), (200, 30, 40)).convert(mode)
    img.save(tmp_path / name)
    t = load_image(tmp_path / name)
    assert t.shape == (3, 10, 20) and t.dtype == torch.uint8
    assert t[:, 4, 7].tolist() == list(rgb)


def test_16_bit_scaled_by_the_type_range_not_the_image_max(tmp_path):
    arr = np.full((10, 20), 1000, np.uint16)
    arr[0, :4] = (0, 257, 25700, 2000)  # the brightest pixel (2000) must not stretch the others
    Image.fromarray(arr).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I;16")
    t = load_image(tmp_path / "g16.png")
    assert t[:, 0, :5].T.tolist() == [[0] * 3, [1] * 3, [100] * 3, [8] * 3, [4] * 3]  # round(v * 255 / 65535)
    arr[:] = 65535
    Image.fromarray(arr).save(tmp_path / "white.png")
    assert load_image(tmp_path / "white.png").unique().tolist() == [255]


def bomb_png(path, width, height):
    """A PNG whose header declares ``width x height`` pixels (no image data: a decompression bomb's header)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)) + chunk(b"IEND", b""))
    return path


def test_huge_declared_size_is_a_named_value_error(tmp_path):
    bomb = bomb_png(tmp_path / "bomb.png", 20000, 20000)  # 4e8 pixels > PIL's and our default limit
    with pytest.raises(ImageTooLargeError, match=r"bomb.png: .*--max-image-pixels N; .*max_image_pixels"):
        load_image(bomb)  # the option every command that reads images has, not only the config field
    Image.new("RGB", (40, 30)).save(tmp_path / "small.png")
    with pytest.raises(ImageTooLargeError, match=r"small.png: image of 40x30 = 1200 pixels exceeds the limit of 1000"):
        load_image(tmp_path / "small.png", max_pixels=1000)
    assert isinstance(ImageTooLargeError("x"), ValueError)  # what the dataset and check-data treat as a bad image


def test_limit_can_be_raised_past_pils_and_pil_warning_is_silenced(tmp_path, monkeypatch):
    Image.new("RGB", (40, 30), (9, 9, 9)).save(tmp_path / "img.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # PIL: warning over 500 pixels, refusal over 1000
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no anonymous DecompressionBombWarning
        assert load_image(tmp_path / "img.png", max_pixels=5000)[:, 0, 0].tolist() == [9, 9, 9]
        assert load_image(tmp_path / "img.png", max_pixels=None).shape == (3, 30, 40)
    assert Image.MAX_IMAGE_PIXELS == 500  # PIL's global is restored
    with pytest.raises(ImageTooLargeError, match="img.png"):
        load_image(tmp_path / "img.png", max_pixels=1100)


def test_corrupt_file_raises(tmp_path):
    (tmp_path / "c.jpg").write_bytes(b"\xff\xd8\xff nonsense")
    with pytest.raises(OSError):
        load_image(tmp_path / "c.jpg")


@pytest.mark.parametrize("name", ["z.jpg", "z.bmp", "z.png", "z"])
@pytest.mark.parametrize("data", [b"", b"B", b"BM", b"\xff\xd8\xff"])
def test_a_file_of_0_to_3_bytes_is_an_unreadable_image_not_a_struct_error(tmp_path, name, data):
    """A plugin's format test read past a 0-3 byte header (struct.error: a bare traceback in train and
    check-data, even with --skip-bad); such a file is an image that cannot be read, as any corrupt one."""
    (tmp_path / name).write_bytes(data)
    with pytest.raises(OSError, match="cannot identify image file"):
        load_image(tmp_path / name)


def test_pils_global_limit_is_never_written_and_limits_are_per_call_in_threads(tmp_path, monkeypatch):
    """Today ``_open_limited`` sets ``Image.MAX_IMAGE_PIXELS = None`` (under a lock) to open an image
    over PIL's limit: any other thread's ``Image.open`` meanwhile has no limit at all."""
    import sys
    import types
    from concurrent.futures import ThreadPoolExecutor

    from retinanet.data.images import _open_limited, oriented_size

    writes = []

    class Watched(types.ModuleType):
        def __setattr__(self, name, value):
            if name == "MAX_IMAGE_PIXELS":
                writes.append(value)
            super().__setattr__(name, value)

    module = sys.modules[Image.__name__]
    monkeypatch.setattr(module, "MAX_IMAGE_PIXELS", 500)  # before the watch: PIL refuses over 1000 pixels
    monkeypatch.setattr(module, "__class__", Watched)
    Image.new("RGB", (40, 30), (9, 9, 9)).save(tmp_path / "img.png")  # 1200 pixels
    bomb = bomb_png(tmp_path / "bomb.png", 20000, 20000)

    def call(limit):
        try:
            return load_image(tmp_path / "img.png", max_pixels=limit).shape[1:], oriented_size(tmp_path / "img.png", max_pixels=limit)
        except ImageTooLargeError:
            return "refused"

    limits = [None, 5000, 1100, 2_000_000_000] * 8
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(call, limits))
    assert got == [("refused" if lim == 1100 else (torch.Size([30, 40]), (30, 40))) for lim in limits]
    with _open_limited(bomb, None) as header:  # a header over PIL's limit, ours lifted: read, not refused
        assert header.size == (20000, 20000)
    with pytest.raises(ImageTooLargeError, match="bomb.png"):
        oriented_size(bomb)
    assert writes == [] and module.MAX_IMAGE_PIXELS == 500
