"""``retinanet.data.progress``: reading annotations says how it goes, only when it lasts."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest

from retinanet.cli import main
from retinanet.config import DataConfig
from retinanet.data import progress as P
from retinanet.data.build import read_records
from retinanet.data.progress import ReadingReport


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_short_read_says_nothing_and_a_long_one_a_line_every_few_seconds():
    clock, out = Clock(), io.StringIO()
    report = ReadingReport(stream=out, tty=False, delay=2, every=10, clock=clock)
    for i in range(1, 101):  # 100 items in 1.9 s: silent
        clock.now = i * 0.019
        report("train", i, 100)
    assert out.getvalue() == ""
    for i in range(1, 1001):  # 1,000 items over 30 s: a first line at 2 s, then every 10 s, and the end
        clock.now = 1.9 + i * 0.03
        report("train", i, 1000)
    report("val", 1, 2)  # a later split is shown at once
    report("val", 2, 2)
    lines = out.getvalue().splitlines()
    assert lines[0] == "reading annotations: train 4/1000 images (0%), 2 s"
    assert [ln.rsplit(", ", 1)[1] for ln in lines[1:4]] == ["12 s", "22 s", "32 s"]  # every 10 s, then the end
    assert lines[3] == "reading annotations: train 1000/1000 images (100%), 32 s"
    assert lines[4:] == ["reading annotations: val 1/2 images (50%), 32 s", "reading annotations: val 2/2 images (100%), 32 s"]


def test_on_a_terminal_a_bar_per_split():
    clock, out = Clock(), io.StringIO()
    with ReadingReport(stream=out, tty=True, delay=0, clock=clock) as report:
        for i in range(1, 6):
            report("train", i, 5)
        report("val", 1, 1)
    text = out.getvalue()
    assert "reading annotations: train:" in text and "/5 [" in text and "reading annotations: val:" in text


def _flat(synthetic: Path, out: Path) -> Path:
    shutil.copytree(synthetic / "VOCdevkit" / "VOC2012" / "JPEGImages", out / "images")
    shutil.copytree(synthetic / "VOCdevkit" / "VOC2012" / "Annotations", out / "annotations")
    return out


def _coco(synthetic: Path, out: Path) -> Path:
    records, class_map, *_ = read_records(DataConfig(root=str(synthetic)))
    (out / "annotations").mkdir(parents=True)
    for split, folder in (("train", "train2017"), ("val", "val2017")):
        (out / folder).mkdir()
        images, anns = [], []
        for i, r in enumerate(records[split], 1):
            shutil.copy(r.file, out / folder / Path(r.file).name)
            images.append({"id": i, "file_name": Path(r.file).name, "height": r.size[0], "width": r.size[1]})
            for b, c in zip(r.boxes.tolist(), r.labels.tolist()):
                anns.append({"id": len(anns) + 1, "image_id": i, "category_id": c, "iscrowd": 0,
                             "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]]})
        cats = [{"id": i, "name": n} for n, i in class_map.to_dict().items()]
        (out / "annotations" / f"instances_{folder}.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return out / "annotations" / "instances_train2017.json"


@pytest.mark.parametrize("fmt", ["voc", "voc-flat", "coco", "yolo"])
def test_every_reader_reports_each_split_to_the_one_callback(synthetic, tmp_path, fmt):
    from test_yolo import voc_to_yolo

    root = {"voc": lambda: synthetic, "voc-flat": lambda: _flat(synthetic, tmp_path / "flat"),
            "coco": lambda: _coco(synthetic, tmp_path / "coco"), "yolo": lambda: voc_to_yolo(synthetic, tmp_path / "yolo")}[fmt]()
    calls = []
    cfg = DataConfig(root=str(root), val_fraction=0.34, train_split="train2017" if fmt == "coco" else "train",
                     val_split="val2017" if fmt == "coco" else "val")
    records, *_ = read_records(cfg, progress=lambda what, done, total: calls.append((what, done, total)))
    for split, recs in records.items():
        seen = [(d, t) for w, d, t in calls if w == split]
        assert seen and seen[-1] == (len(recs), len(recs)), (split, seen[-3:])
        assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_check_data_shows_reading_on_stderr_unless_quiet(synthetic, monkeypatch, capsys):
    monkeypatch.setattr(P, "DELAY_S", 0.0)  # as if reading had lasted: stderr is no terminal here, so lines
    assert main(["check-data", "--data", str(synthetic)]) == 0
    err = capsys.readouterr().err
    assert "reading annotations: train 1/8 images (12%)" in err and "reading annotations: val 4/4 images (100%)" in err
    assert main(["check-data", "--data", str(synthetic), "--quiet"]) == 0
    assert "reading annotations" not in capsys.readouterr().err


def test_a_small_dataset_read_quickly_shows_nothing(synthetic, capsys):
    assert main(["check-data", "--data", str(synthetic)]) == 0
    assert "reading annotations" not in capsys.readouterr().err


def test_a_loop_in_a_log_gets_plain_lines_never_carriage_returns():
    """``progress_bar`` off a terminal (``2> eval.log``, a batch job): silent on short work, then a
    line every ``every`` seconds and one at the end; the total may grow (tiles counted as decoded)."""
    clock, out = Clock(), io.StringIO()
    with P.progress_bar(total=0, desc="eval", unit="tile", show=True, stream=out, delay=2, every=10, clock=clock) as bar:
        assert isinstance(bar, P.ProgressLines)
        for i in range(40):
            bar.total += 10
            clock.now = i * 1.0
            bar.update(10)
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert lines == ["eval: 30/30 tiles (100%), 2 s", "eval: 130/130 tiles (100%), 12 s",
                     "eval: 230/230 tiles (100%), 22 s", "eval: 330/330 tiles (100%), 32 s",
                     "eval: 400/400 tiles (100%), 39 s"]
    short = io.StringIO()
    assert list(P.progress_bar(range(5), desc="eval", unit="batch", show=True, stream=short, clock=Clock())) == list(range(5))
    assert short.getvalue() == ""  # under DELAY_S: nothing
    iterated, clock = io.StringIO(), Clock()
    for i in P.progress_bar(range(4), desc="decoding images", unit="image", show=True, stream=iterated, delay=0, every=100,
                            clock=clock):
        clock.now = float(i)
    assert iterated.getvalue().splitlines() == ["decoding images: 1/4 images (25%), 0 s",
                                                   "decoding images: 4/4 images (100%), 3 s"]


def test_progress_bar_is_a_bar_on_a_terminal_and_nothing_when_not_shown():
    tty, quiet = io.StringIO(), io.StringIO()
    with P.progress_bar(total=3, desc="predict", unit="image", show=True, stream=tty, tty=True) as bar:
        bar.update(3)
    assert "predict: 100%" in tty.getvalue() and "3/3" in tty.getvalue()
    with P.progress_bar(total=3, desc="predict", unit="image", show=False, stream=quiet, tty=False, delay=0) as bar:
        bar.update(3)
    assert quiet.getvalue() == ""
