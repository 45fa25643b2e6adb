"""EXIF orientation: one rule (``DataConfig.exif``) for dataset loading, check-data and predict."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from voc_fixtures import make_voc, obj, xml_text

from retinanet.config import DataConfig
from retinanet.data import build_datasets, check_dataset
from retinanet.data.images import choose_frame, open_image, open_rgb, oriented_size
from retinanet.errors import RetinaNetError

SIZES = {"min_size": 64, "max_size": 80}


def exif_jpeg(path, stored_hw=(10, 30), orientation=6, block=4):
    """A JPEG stored as ``stored_hw`` with a white ``block`` x ``block`` square at the stored top-left
    and EXIF orientation ``orientation`` (6 = rotate 90 CW to display)."""
    arr = np.zeros((*stored_hw, 3), np.uint8)
    arr[:block, :block] = 255
    img = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, exif=exif, quality=100)
    return path


def white_at(img: Image.Image) -> tuple[int, int]:
    """(row, col) of the centre of the white square."""
    rows, cols = np.nonzero(np.asarray(img)[..., 0] > 128)
    return int(round(rows.mean())), int(round(cols.mean()))


@pytest.mark.parametrize("orientation, stored, stated, exif, frame, noted", [
    (1, (10, 30), (10, 30), "apply", "stored", False),  # nothing to apply
    (6, (10, 30), None, "auto", "displayed", False),  # predict: no annotation
    (6, (10, 30), (30, 10), "auto", "displayed", False),  # annotation in the displayed frame
    (6, (10, 30), (10, 30), "auto", "stored", True),  # LabelImg-style <size>: per-image fallback
    (6, (10, 30), (10, 30), "apply", "displayed", False),
    (6, (10, 30), (30, 10), "ignore", "stored", False),
    (6, (20, 20), (20, 20), "auto", "displayed", False),  # square: size cannot tell, displayed
    (3, (10, 30), (10, 30), "auto", "displayed", False),  # 180 degrees: size cannot tell
    (6, (10, 30), (11, 31), "auto", "displayed", False),  # matches neither (the loader warns about the size)
])
def test_choose_frame(orientation, stored, stated, exif, frame, noted):
    got, note = choose_frame(orientation, stored, stated, exif)
    assert got == frame and (note is not None) == noted


def test_invalid_policy_is_an_error(tmp_path):
    with pytest.raises(RetinaNetError, match="exif must be one of auto, apply, ignore"):
        choose_frame(6, (1, 2), None, "rotate")
    with pytest.raises(RetinaNetError, match="exif must be one of"):
        build_datasets(DataConfig(root=str(tmp_path), exif="yes"), **SIZES)


def test_open_image_frames_and_pixels(tmp_path):
    path = exif_jpeg(tmp_path / "r.jpg")  # stored 10x30 (HxW), white at the stored top-left
    shown = open_image(path, (30, 10))
    assert (shown.orientation, shown.frame, shown.image.size) == (6, "displayed", (10, 30))  # PIL size is (W, H)
    assert white_at(shown.image) == (2, 8)  # rotated 90 CW: the stored top-left is the displayed top-right
    kept = open_image(path, (10, 30))
    assert kept.frame == "stored" and kept.image.size == (30, 10) and white_at(kept.image) == (2, 2)
    assert "stored size 30x10" in kept.note
    assert open_rgb(path).size == (10, 30)  # what predict calls: displayed
    assert open_rgb(path, exif="ignore").size == (30, 10)
    assert oriented_size(path) == (30, 10) and oriented_size(path, exif="ignore") == (10, 30)


def test_square_exif_image_boxes_in_the_displayed_frame(tmp_path):
    """A square photo rotated by EXIF: the box drawn on the displayed image covers the white square."""
    voc = make_voc(tmp_path, {"train": [("sq", [obj("cat", (25, 1, 32, 8))])], "val": [("sq", [obj("cat", (25, 1, 32, 8))])]}, hw=(32, 32))
    exif_jpeg(voc / "JPEGImages" / "sq.jpg", (32, 32), orientation=6, block=8)  # displayed: white at rows 0-7, cols 24-31
    image, target = build_datasets(DataConfig(root=str(tmp_path)), **SIZES).train.load(0)
    x1, y1, x2, y2 = (int(v) for v in target["boxes"][0].tolist())
    assert (x1, y1, x2, y2) == (24, 0, 32, 8)
    assert image[:, y1:y2, x1:x2].float().mean() > 200  # the box is on the white square
    image, _ = build_datasets(DataConfig(root=str(tmp_path), exif="ignore"), **SIZES).train.load(0)
    assert image[:, y1:y2, x1:x2].float().mean() < 50  # stored frame: the square is elsewhere


def test_auto_falls_back_per_image_with_a_warning(tmp_path):
    voc = make_voc(tmp_path, {"train": [("r", [obj("cat", (1, 1, 4, 4))])], "val": [("r", [obj()])]}, hw=(10, 30))
    exif_jpeg(voc / "JPEGImages" / "r.jpg", (10, 30))  # the XML <size> is the stored 30x10
    with pytest.warns(UserWarning, match=r"extend outside the 30x10 image; clipped: object 1 \(cat\)"):  # named: a 10x30 box
        ds = build_datasets(DataConfig(root=str(tmp_path)), **SIZES)
    with pytest.warns(UserWarning, match=r"r.xml: .*r.jpg: EXIF orientation 6 \(rotated 90 CW\).*stored frame"):
        image, target = ds.train.load(0)
    assert tuple(image.shape[1:]) == (10, 30) and image[:, :3, :3].float().mean() > 200


def test_check_data_lists_exif_images_and_their_frame(tmp_path):
    voc = make_voc(tmp_path, {"train": [("a", [obj("cat", (1, 1, 8, 8))]), ("r", [obj("cat", (1, 1, 4, 4))])], "val": [("a", [obj()])]})
    (voc / "Annotations" / "r.xml").write_text(xml_text("r.jpg", (30, 10), [obj("cat", (1, 1, 4, 4))]))
    exif_jpeg(voc / "JPEGImages" / "r.jpg", (10, 30))
    report = check_dataset(DataConfig(root=str(tmp_path)), progress=False)
    exif_lines = [w for w in report.warnings if "EXIF orientation" in w]
    assert len(exif_lines) == 1 and "r.jpg: EXIF orientation 6 (rotated 90 CW); read in the displayed frame (exif=auto)" in exif_lines[0]
    assert not any("<size> says" in w for w in report.warnings)  # the displayed frame matches the XML
    report = check_dataset(DataConfig(root=str(tmp_path), exif="ignore"), progress=False)
    assert any("r.jpg: EXIF orientation 6 (rotated 90 CW); read in the stored frame (exif=ignore)" in w for w in report.warnings)
    assert any("r.xml: <size> says 10x30 (WxH) but" in w for w in report.warnings)


@pytest.mark.parametrize("exif, stated", [("auto", None), ("auto", (10, 30)), ("apply", None), ("ignore", None)])
def test_decoding_from_bytes_already_read_follows_the_same_rules(tmp_path, exif, stated):
    """check-data hashes each file's bytes and decodes those bytes (it read every image twice)."""
    from retinanet.data.images import ImageTooLargeError, open_image

    path = exif_jpeg(tmp_path / "o6.jpg")
    data = path.read_bytes()
    from_file = open_image(path, stated, exif=exif)
    from_bytes = open_image(tmp_path / "not-opened.jpg", stated, exif=exif, data=data)  # the path only names it
    assert (from_bytes.orientation, from_bytes.frame, from_bytes.note) == (from_file.orientation, from_file.frame, from_file.note)
    assert np.array_equal(np.asarray(from_bytes.image), np.asarray(from_file.image))
    with pytest.raises(ImageTooLargeError, match="not-opened.jpg: image of 30x10"):
        open_image(tmp_path / "not-opened.jpg", exif=exif, max_pixels=299, data=data)
