"""``retinanet predict``: inputs, a corrupt file in a folder, outputs, VOC XML round trip."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from retinanet.cli import main
from retinanet.engine.infer.predict import filter_detections, find_images, voc_xml
from retinanet.errors import RetinaNetError

CLASS_MAP = {"cat": 1, "dog": 2}


def write_image(path: Path, size=(90, 120), seed=0) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny untrained model saved as our checkpoint (resnet18, 64-96 px)."""
    from retinanet.engine.runtime.checkpoint import save_checkpoint
    from retinanet.model import build_model

    torch.manual_seed(0)
    model = build_model("resnet18_fpn", num_classes=3, min_size=64, max_size=96, norm="bn")
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint({"model": model.state_dict(), "config": {"model": asdict(model.config)}, "class_map": CLASS_MAP}, path)
    return path


def test_find_images(tmp_path):
    a = write_image(tmp_path / "in" / "a.jpg")
    write_image(tmp_path / "in" / "a.png")
    write_image(tmp_path / "in" / "sub" / "b.png")
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    with pytest.warns(UserWarning, match="not read .skipped.*notes.txt"):
        with pytest.warns(UserWarning, match=r"in: 1 sub-folder\(s\) not searched \(sub\): --recursive descends into them"):
            names = [n for _, n in find_images([str(tmp_path / "in")])]
    assert names == ["a.jpg", "a_1.png"]  # same stem: made unique (also for xml/<stem>.xml)
    with pytest.warns(UserWarning, match="not read .skipped.*notes.txt"):
        assert [n for _, n in find_images([str(tmp_path / "in")], recursive=True)] == ["a.jpg", "a_1.png", "sub/b.png"]
    with pytest.warns(UserWarning, match="name a file already named"):
        assert [n for _, n in find_images([str(tmp_path / "in" / "*.png"), str(a), str(a)])] == ["a.png", "a_1.jpg"]
    with pytest.raises(RetinaNetError, match="no such file or folder"):
        find_images([str(tmp_path / "missing.jpg")])
    with pytest.raises(RetinaNetError, match="URLs are not read; download the file and give its path"):
        find_images(["https://example.org/a.jpg"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(RetinaNetError, match="no images found"):
        find_images([str(tmp_path / "empty")])


def test_filter_detections_drops_label_0_then_filters_and_ranks():
    out = {"boxes": torch.arange(16, dtype=torch.float32).reshape(4, 4),
           "scores": torch.tensor([0.95, 0.6, 0.2, 0.8]), "labels": torch.tensor([0, 2, 1, 1])}
    boxes, scores, labels = filter_detections(out, 0.1, None, 10)
    assert labels.tolist() == [1, 2, 1] and scores.tolist() == pytest.approx([0.8, 0.6, 0.2])  # label 0 gone
    assert boxes[0].tolist() == [12, 13, 14, 15]
    assert filter_detections(out, 0.5, None, 10)[2].tolist() == [1, 2]
    assert filter_detections(out, 0.0, torch.tensor([1]), 10)[2].tolist() == [1, 1]
    assert filter_detections(out, 0.0, None, 1)[1].tolist() == pytest.approx([0.8])


def test_voc_xml_coordinates(tmp_path):
    import defusedxml.ElementTree as DET

    img = write_image(tmp_path / "x.jpg", size=(50, 80))
    boxes = np.array([[0.2, 3.6, 10.4, 20.5], [70.0, 40.0, 80.0, 50.0], [-3.0, -2.0, 0.3, 0.2]])
    root = DET.fromstring(voc_xml(img, (50, 80), boxes, ["cat", "dog", "cat"]))
    assert root.findtext("filename") == "x.jpg" and root.findtext("size/width") == "80"
    got = [[int(o.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")] for o in root.iter("object")]
    # xmin = round(x1) + 1, xmax = round(x2), clamped to the image and xmax >= xmin
    assert got == [[1, 5, 10, 20], [71, 41, 80, 50], [1, 1, 1, 1]]
    assert [o.findtext("name") for o in root.iter("object")] == ["cat", "dog", "cat"]


def test_predict_folder_with_corrupt_files(tmp_path, checkpoint, capsys):
    folder = tmp_path / "images"
    for i in range(3):
        write_image(folder / f"img{i}.jpg", size=(90 + 10 * i, 120), seed=i)
    (folder / "broken.jpg").write_bytes(b"this is not a JPEG")
    good = (folder / "img0.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(good[: len(good) // 3])
    out = tmp_path / "out"
    code = main(["predict", str(folder), "--weights", str(checkpoint), "--out", str(out), "--score-thresh", "0",
                 "--max-dets", "5", "--voc-xml", "--workers", "0", "--batch-size", "2", "--quiet"])
    assert code == 0
    captured = capsys.readouterr()
    assert "3 image(s) processed" in captured.out and "2 failure(s)" in captured.out
    assert "broken.jpg" in captured.err and "truncated.jpg" in captured.err

    pred = json.loads((out / "predictions.json").read_text())
    assert sorted(Path(r["file"]).name for r in pred["images"]) == ["img0.jpg", "img1.jpg", "img2.jpg"]
    assert sorted(Path(f["file"]).name for f in pred["failures"]) == ["broken.jpg", "truncated.jpg"]
    for record in pred["images"]:
        h0 = Image.open(record["file"]).height
        assert (record["height"], record["width"]) == (h0, 120)
        assert 0 < len(record["detections"]) <= 5
        for det in record["detections"]:
            x1, y1, x2, y2 = det["box"]
            assert 0 <= x1 <= x2 <= 120 and 0 <= y1 <= y2 <= h0  # original pixels
            assert det["class"] == {1: "cat", 2: "dog"}[det["label"]]  # output 0 is dropped, never a class
        drawn = Image.open(out / "images" / Path(record["file"]).name)
        assert drawn.size == (120, h0)

    from retinanet.data.voc import parse_voc_xml  # our reader reads the XML back

    for record in pred["images"]:
        xml = out / "xml" / (Path(record["file"]).stem + ".xml")
        ann = parse_voc_xml(xml)
        assert len(ann["boxes"]) == len(record["detections"])


def test_predict_progress_in_a_log_file_is_plain_lines(tmp_path, checkpoint, capsys, monkeypatch):
    """``retinanet predict ... 2> log``: progress lines, never tqdm's carriage returns."""
    from retinanet.data import progress as P

    monkeypatch.setattr(P, "DELAY_S", 0.0)
    folder = tmp_path / "images"
    for i in range(3):
        write_image(folder / f"img{i}.jpg", seed=i)
    assert main(["predict", str(folder), "--weights", str(checkpoint), "--out", str(tmp_path / "out"),
                 "--workers", "0", "--batch-size", "1"]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err
    assert [ln for ln in err.splitlines() if ln.startswith("predict: ")][-1].startswith("predict: 3/3 images (100%), "), err


def test_tiled_predict_progress_counts_against_every_image_from_the_start(tmp_path, checkpoint, capsys, monkeypatch):
    """The total came from the images decoded so far: 12 tiles of 36 read ``12/12 tiles (100%)``."""
    from retinanet.data import progress as P

    monkeypatch.setattr(P, "DELAY_S", 0.0)
    monkeypatch.setattr(P, "EVERY_S", 0.0)
    folder = tmp_path / "images"
    for i in range(3):
        write_image(folder / f"img{i}.png", size=(150, 200), seed=i)  # 3 x 4 tiles of 64 px each
    (folder / "bad.png").write_bytes(b"not an image")  # no tiles, named as a failure
    assert main(["predict", str(folder), "--weights", str(checkpoint), "--out", str(tmp_path / "out"), "--tile",
                 "--workers", "0", "--no-draw"]) == 0
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("predict: ")]
    assert lines[0].startswith("predict: 4/36 tiles (11%)"), lines
    assert lines[-1].startswith("predict: 36/36 tiles (100%)"), lines


def test_predict_boxes_match_model_on_original_image(tmp_path, checkpoint):
    """Resizing in the workers and mapping back gives what the model gives on the original."""
    from retinanet.engine.runtime.checkpoint import load_model

    img_path = write_image(tmp_path / "one.png", size=(150, 110), seed=5)
    out = tmp_path / "out"
    assert main(["predict", str(img_path), "--weights", str(checkpoint), "--out", str(out), "--score-thresh", "0",
                 "--max-dets", "10", "--no-draw", "--workers", "1", "--quiet"]) == 0
    dets = json.loads((out / "predictions.json").read_text())["images"][0]["detections"]
    assert not (out / "images").exists()
    model, _ = load_model(checkpoint, "cpu", score_thresh=0.0)
    image = torch.from_numpy(np.asarray(Image.open(img_path).convert("RGB")).copy()).permute(2, 0, 1)
    with torch.inference_mode():
        ref = model([image])[0]
    real = ref["labels"] != 0  # output 0 is never a class: predict drops it
    assert all(d["label"] != 0 for d in dets)
    ref = {k: v[real] for k, v in ref.items()}
    order = torch.argsort(ref["scores"], descending=True)[:10]
    np.testing.assert_allclose([d["box"] for d in dets], ref["boxes"][order].numpy(), atol=0.05)
    np.testing.assert_allclose([d["score"] for d in dets], ref["scores"][order].numpy(), atol=1e-4)


def test_load_model_memory_layout(checkpoint):
    """eval and predict run the model in channels_last by default; export and the API in NCHW."""
    from retinanet.engine.runtime.checkpoint import load_model

    nchw, _ = load_model(checkpoint, "cpu")
    nhwc, _ = load_model(checkpoint, "cpu", channels_last=True)
    assert nchw.memory_format == torch.contiguous_format
    assert nhwc.memory_format == torch.channels_last
    images = [torch.randint(0, 256, (3, 70, 90), dtype=torch.uint8)]
    with torch.inference_mode():
        a, b = nchw(images)[0], nhwc(images)[0]
    torch.testing.assert_close(a["scores"], b["scores"], atol=1e-4, rtol=1e-4)


def test_predict_user_errors(tmp_path, checkpoint, capsys):
    img = write_image(tmp_path / "a.jpg")
    assert main(["predict", str(img), "--weights", str(checkpoint), "--out", str(tmp_path / "o"),
                 "--classes-filter", "cat,zebra", "--quiet", "--workers", "0"]) == 2
    assert "zebra" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "nothing"), "--weights", str(checkpoint)]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert main(["predict", str(img), "--weights", str(tmp_path / "missing.pt")]) == 2
    assert "missing.pt" in capsys.readouterr().err


def test_predict_save_txt_yolo_labels_round_trip(tmp_path, checkpoint):
    """--save-txt: one YOLO label file per image (class = our id - 1, normalised cx cy w h), the
    score with --save-conf, and a data.yaml our YOLO reader takes the names from."""
    from retinanet.data.yolo_yaml import read_data_yaml

    img = write_image(tmp_path / "in" / "a.jpg", size=(90, 120))
    out = tmp_path / "out"
    assert main(["predict", str(img), "--weights", str(checkpoint), "--out", str(out), "--score-thresh", "0",
                 "--max-dets", "6", "--save-txt", "--save-conf", "--no-draw", "--workers", "0", "--quiet"]) == 0
    dets = json.loads((out / "predictions.json").read_text())["images"][0]["detections"]
    rows = [line.split() for line in (out / "labels" / "a.txt").read_text().splitlines()]
    assert len(rows) == len(dets) == 6 and all(len(r) == 6 for r in rows)
    for row, det in zip(rows, dets):
        cls, cx, cy, w, h, score = int(row[0]), *map(float, row[1:])
        assert cls == det["label"] - 1
        x1, y1, x2, y2 = (min(max(v, 0), lim) for v, lim in zip(det["box"], (120, 90, 120, 90)))
        np.testing.assert_allclose([cx * 120, cy * 90, w * 120, h * 90], [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], atol=0.02)
        assert score == pytest.approx(det["score"], abs=1e-5)
    assert read_data_yaml(out / "data.yaml").names == ["cat", "dog"]  # YOLO id i -> our id i + 1


def test_yolo_lines_format():
    from retinanet.engine.infer.predict import yolo_lines

    boxes = np.array([[10.0, 20.0, 30.0, 60.0], [-5.0, 0.0, 50.0, 120.0]])
    text = yolo_lines(boxes, [1, 3], [0.9, 0.25], (100, 50))
    assert text == "0 0.4 0.4 0.4 0.4\n2 0.5 0.5 1 1\n"  # the second box clipped to the 50 x 100 image first
    assert yolo_lines(boxes[:1], [2], [0.875], (100, 50), save_conf=True) == "1 0.4 0.4 0.4 0.4 0.875\n"
    assert yolo_lines(np.zeros((0, 4)), [], [], (100, 50)) == ""


def test_predict_exif_option(tmp_path, checkpoint):
    """predict reads a photo in the displayed frame (EXIF applied); --exif ignore: the stored frame."""
    rng = np.random.default_rng(2)
    path = tmp_path / "turned.jpg"
    exif = Image.Exif()
    exif[0x0112] = 8
    Image.fromarray(rng.integers(0, 256, (60, 100, 3), dtype=np.uint8)).save(path, exif=exif.tobytes())
    sizes = {}
    for policy in ("auto", "ignore"):
        out = tmp_path / policy
        assert main(["predict", str(path), "--weights", str(checkpoint), "--out", str(out), "--exif", policy,
                     "--workers", "0", "--quiet"]) == 0
        record = json.loads((out / "predictions.json").read_text())["images"][0]
        sizes[policy] = (record["height"], record["width"])
        assert Image.open(out / "images" / "turned.jpg").size == sizes[policy][::-1]
    assert sizes == {"auto": (100, 60), "ignore": (60, 100)}
    code = main(["predict", str(path), "--weights", str(checkpoint), "--out", str(tmp_path / "o"),
                 "--max-image-pixels", "100", "--workers", "0", "--quiet"])
    assert code == 1  # no image processed: the one file is over the limit (reported, skipped)


def test_every_predict_output_is_written_atomically(tmp_path, checkpoint, monkeypatch):
    """Drawn images, XML, YOLO labels, data.yaml and predictions.json all go through write_atomic
    (a crash or full disk never leaves a half-written file)."""
    import retinanet.engine.infer.predict as predict_module

    written = []
    real = predict_module.write_atomic
    monkeypatch.setattr(predict_module, "write_atomic", lambda path, content: written.append(Path(path)) or real(path, content))
    for name in ("a.jpg", "b.png"):
        write_image(tmp_path / "in" / name, size=(60, 80))
    out = tmp_path / "out"
    assert main(["predict", str(tmp_path / "in"), "--weights", str(checkpoint), "--out", str(out), "--score-thresh", "0",
                 "--max-dets", "3", "--voc-xml", "--save-txt", "--workers", "0", "--quiet"]) == 0
    on_disk = sorted(p for p in out.rglob("*") if p.is_file() and p.name != ".lock")  # .lock: the folder's lock, not an output
    assert len(on_disk) == 8 and sorted(written) == on_disk  # 2 drawn, 2 XML, 2 TXT, data.yaml, predictions.json
    assert Image.open(out / "images" / "a.jpg").format == "JPEG" and Image.open(out / "images" / "b.png").format == "PNG"


def test_a_file_named_twice_is_read_once_with_a_warning(tmp_path):
    a = write_image(tmp_path / "a.jpg")
    with pytest.warns(UserWarning, match=r"1 input\(s\) name a file already named, each read once: .*a.jpg"):
        assert [n for _, n in find_images([str(a), str(tmp_path / "*.jpg")])] == ["a.jpg"]


def test_files_of_a_folder_that_are_not_images_are_named(tmp_path):
    write_image(tmp_path / "in" / "a.jpg")
    (tmp_path / "in" / "b.gif").write_bytes(b"GIF89a")  # today: skipped without a word
    (tmp_path / "in" / ".DS_Store").write_bytes(b"")
    with pytest.warns(UserWarning, match=r"in: 1 file\(s\) not read \(skipped\), not one of the image types .*b.gif$"):
        assert [n for _, n in find_images([str(tmp_path / "in")])] == ["a.jpg"]


def test_ctrl_c_keeps_the_detections_done_and_lists_the_inputs_not_reached(tmp_path, checkpoint, monkeypatch, capsys):
    import json

    import retinanet.engine.infer.predict as predict_module

    for name in ("a.jpg", "b.jpg", "c.jpg"):
        write_image(tmp_path / "in" / name, size=(60, 80))
    real, calls = predict_module._process_batch, [0]

    def second_batch_interrupted(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(predict_module, "_process_batch", second_batch_interrupted)
    out = tmp_path / "out"
    status = main(["predict", str(tmp_path / "in"), "--weights", str(checkpoint), "--out", str(out), "--score-thresh", "0",
                   "--max-dets", "2", "--batch-size", "1", "--workers", "0", "--quiet"])
    assert status == 130
    saved = json.loads((out / "predictions.json").read_text())
    assert [Path(r["file"]).name for r in saved["images"]] == ["a.jpg"] and len(saved["images"][0]["detections"]) == 2
    assert [Path(f).name for f in saved["not_processed"]] == ["b.jpg", "c.jpg"]
    err = capsys.readouterr().err
    assert "predict: interrupted after 1 of 3 image(s): their detections are in" in err and "lists the 2 not reached" in err


def test_images_that_reach_max_dets_are_counted_in_the_summary(tmp_path, checkpoint, capsys):
    for name in ("a.jpg", "b.jpg"):
        write_image(tmp_path / "in" / name, size=(60, 80))
    assert main(["predict", str(tmp_path / "in"), "--weights", str(checkpoint), "--out", str(tmp_path / "out"),
                 "--score-thresh", "0", "--max-dets", "3", "--workers", "0", "--quiet", "--no-draw"]) == 0
    assert ("warning: 2 image(s) reached --max-dets 3: detections above --score-thresh beyond it were cut; "
            "give a larger --max-dets to keep them") in capsys.readouterr().out


def test_a_used_out_folder_says_which_files_are_from_an_earlier_run(tmp_path, checkpoint, capsys):
    """Predicting into a used --out overwrites the outputs of the same inputs and names the earlier
    files it leaves beside them (predictions.json lists only this run's images)."""
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        write_image(tmp_path / "in" / name, size=(60, 80))
    out = tmp_path / "out"
    args = ["--weights", str(checkpoint), "--out", str(out), "--workers", "0", "--quiet", "--save-txt"]
    assert main(["predict", str(tmp_path / "in"), *args]) == 0
    assert "earlier run" not in capsys.readouterr().out
    assert main(["predict", str(tmp_path / "in" / "a.jpg"), *args]) == 0  # same input again: overwritten, b and c left
    said = capsys.readouterr().out
    assert (f"warning: 4 file(s) are from an earlier run into {out} (2 in {out / 'images'}, 2 in {out / 'labels'}), "
            "kept beside this run's: predictions.json lists only this run's images; give a new --out to keep runs apart") in said
    assert [r["file"] for r in json.loads((out / "predictions.json").read_text())["images"]] == [str(tmp_path / "in" / "a.jpg")]
    assert sorted(p.name for p in (out / "images").iterdir()) == ["a.jpg", "b.jpg", "c.jpg"]  # kept, and said


def test_drawing_options_and_labels_left_out_are_said_once(tmp_path, checkpoint, capsys, monkeypatch):
    """Crowded detections (30 on a 60x80 image): the summary says once how many boxes have no label;
    --hide-labels, --hide-conf, --line-width reach the drawing (boxes only, 3 px lines, nothing said);
    --no-draw with a drawing option is refused."""
    import retinanet.engine.infer.predict as predict_module
    from retinanet.engine.infer.draw import class_color

    write_image(tmp_path / "in" / "a.png", size=(60, 80))
    args = ["--weights", str(checkpoint), "--score-thresh", "0", "--max-dets", "30", "--workers", "0", "--quiet"]
    assert main(["predict", str(tmp_path / "in"), "--out", str(tmp_path / "auto"), *args]) == 0
    said = capsys.readouterr().out
    left_out = int(said.split("note: ")[1].split(" ")[0])
    assert 0 < left_out <= 30 and said.count("note: ") == 1
    assert "drawn box(es) in 1 image(s) have no label: it did not fit beside the other boxes and labels" in said
    assert Image.open(tmp_path / "auto" / "images" / "a.png").format == "PNG"  # the source's format

    calls = []
    real = predict_module.draw_detections
    monkeypatch.setattr(predict_module, "draw_detections", lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    assert main(["predict", str(tmp_path / "in"), "--out", str(tmp_path / "plain"), *args,
                 "--hide-labels", "--hide-conf", "--line-width", "3"]) == 0
    assert "no label" not in capsys.readouterr().out
    assert [{k: kw[k] for k in ("line_width", "show_labels", "show_conf")} for kw in calls] == [
        {"line_width": 3, "show_labels": False, "show_conf": False}]
    det = json.loads((tmp_path / "plain" / "predictions.json").read_text())["images"][0]["detections"][0]  # the best: on top
    x1, y1, x2, y2 = det["box"]
    plain = np.asarray(Image.open(tmp_path / "plain" / "images" / "a.png"))
    row = plain[int((y1 + y2) / 2), int(x1):int(x1) + 6]
    assert (row == class_color(det["label"])).all(axis=1).sum() == 3  # its left line, 3 px wide
    assert main(["predict", str(tmp_path / "in"), "--out", str(tmp_path / "x"), *args, "--no-draw", "--hide-labels"]) == 2
    assert "--hide-labels: style(s) the drawn images, which --no-draw turns off; give one or the other" in capsys.readouterr().err


def test_max_dets_defaults_to_the_checkpoint_s_cap_and_a_level_s_top_k_cut_is_counted(tmp_path, checkpoint, capsys):
    """predict kept 100 per image by default where eval kept the checkpoint's 300 (and export's K was
    300): one cap per model now, the checkpoint's detections_per_img. A whole-image pass below
    --max-dets whose candidates an FPN level's top-k cut said nothing (786 of 5000 asked for):
    the summary counts those images and names --topk-candidates; predictions.json says which cap."""
    from retinanet.engine.runtime.checkpoint import read_checkpoint, save_checkpoint
    ck = read_checkpoint(checkpoint)
    ck["config"]["model"]["detections_per_img"] = 7
    seven = save_checkpoint(ck, tmp_path / "cap7.pt")
    write_image(tmp_path / "in" / "a.jpg", size=(60, 80))
    args = ["predict", str(tmp_path / "in"), "--workers", "0", "--quiet", "--no-draw"]
    assert main([*args, "--weights", str(seven), "--out", str(tmp_path / "o1"), "--score-thresh", "0"]) == 0
    assert "warning: 1 image(s) reached --max-dets 7: detections above --score-thresh" in capsys.readouterr().out
    (record,) = json.loads((tmp_path / "o1" / "predictions.json").read_text())["images"]
    assert len(record["detections"]) <= 7 and record["at_cap"] == "max_dets"  # the model's 7, less its label-0 rows
    assert main([*args, "--weights", str(checkpoint), "--out", str(tmp_path / "o2"), "--score-thresh", "0.005"]) == 0
    out = capsys.readouterr().out
    assert ("warning: 1 image(s) stayed below --max-dets 300 while an FPN level had more candidates above --score-thresh "
            "than the 1000 it keeps for NMS: those were never considered; give a larger --topk-candidates") in out
    (record,) = json.loads((tmp_path / "o2" / "predictions.json").read_text())["images"]
    assert len(record["detections"]) < 300 and record["at_cap"] == "topk_candidates"
    assert main([*args, "--weights", str(checkpoint), "--out", str(tmp_path / "o3"), "--score-thresh", "0.005",
                 "--topk-candidates", "100000"]) == 0
    assert "warning" not in capsys.readouterr().out
    (more,) = json.loads((tmp_path / "o3" / "predictions.json").read_text())["images"]
    assert more["at_cap"] is None and len(more["detections"]) > len(record["detections"])


def test_drawn_jpeg_box_lines_keep_their_colour_and_png_is_lossless(tmp_path, checkpoint, monkeypatch):
    """A drawn JPEG was saved with PIL's defaults (quality 75, 4:2:0 chroma subsampling): a 1 px red
    line on grey came back as (141, 46, 46) on average, its colour spread into the grey around it.
    Now quality 95 at 4:4:4: within 24 of (255, 0, 0) on every pixel of the line. A PNG is exact."""
    from PIL import ImageDraw

    import retinanet.engine.infer.predict as predict_module

    def draw(image, *args, **kwargs):  # the model's boxes aside: one 1 px red box where the test knows it
        image = image.copy()
        ImageDraw.Draw(image).rectangle([101, 101, 301, 251], outline=(255, 0, 0), width=1)
        return image

    monkeypatch.setattr(predict_module, "draw_detections", draw)
    grey = Image.new("RGB", (640, 480), (128, 128, 128))
    (tmp_path / "in").mkdir()
    grey.save(tmp_path / "in" / "j.jpg", quality=100)
    grey.save(tmp_path / "in" / "p.png")
    assert main(["predict", str(tmp_path / "in"), "--weights", str(checkpoint), "--out", str(tmp_path / "out"),
                 "--workers", "0", "--device", "cpu", "--quiet"]) == 0
    expected = np.asarray(draw(grey)).astype(int)
    line = (expected == [255, 0, 0]).all(axis=-1)
    jpeg = Image.open(tmp_path / "out" / "images" / "j.jpg")
    assert jpeg.format == "JPEG" and np.abs(np.asarray(jpeg).astype(int)[line] - [255, 0, 0]).max() <= 24
    assert jpeg.layer == [(1, 1, 1, 0), (2, 1, 1, 1), (3, 1, 1, 1)]  # 4:4:4: every component at full resolution
    png = Image.open(tmp_path / "out" / "images" / "p.png")
    assert png.format == "PNG" and (np.asarray(png).astype(int) == expected).all()


def test_predictions_json_records_each_image_s_output_name_and_files(tmp_path, checkpoint):
    """Two inputs named ``x.png`` are written as ``x.png`` and ``x_1.png`` (``find_images``), but
    predictions.json recorded only each input's path: which drawn image, XML and label file belonged
    to which input could not be told. Each record names its output name and files (relative to --out)."""
    first, second = write_image(tmp_path / "a" / "x.png", seed=1), write_image(tmp_path / "b" / "x.png", seed=2)
    out = tmp_path / "out"
    assert main(["predict", str(first), str(second), "--weights", str(checkpoint), "--out", str(out), "--voc-xml",
                 "--save-txt", "--workers", "0", "--quiet"]) == 0
    records = json.loads((out / "predictions.json").read_text())["images"]
    assert [(r["file"], r["name"]) for r in records] == [(str(first), "x.png"), (str(second), "x_1.png")]
    assert records[1]["outputs"] == {"images": "images/x_1.png", "xml": "xml/x_1.xml", "labels": "labels/x_1.txt"}
    for record in records:
        assert all((out / p).is_file() for p in record["outputs"].values())
        assert f"<path>{Path(record['file']).resolve()}</path>" in (out / record["outputs"]["xml"]).read_text()
    assert main(["predict", str(first), "--weights", str(checkpoint), "--out", str(tmp_path / "o2"), "--no-draw",
                 "--workers", "0", "--quiet"]) == 0
    (record,) = json.loads((tmp_path / "o2" / "predictions.json").read_text())["images"]
    assert record["name"] == "x.png" and record["outputs"] == {}  # nothing written per image but the JSON
