"""VOC XML parsing (real-world shapes) and the standard and flat layouts."""

from __future__ import annotations

import numpy as np
import pytest
from voc_fixtures import make_voc, obj, write_image, xml_text

from retinanet.config import DataConfig
from retinanet.data import build_datasets
from retinanet.data.voc import parse_voc_xml
from retinanet.errors import DataError

SIZES = {"min_size": 64, "max_size": 80}  # the test images are 64x80: no resize


def test_parts_floats_missing_difficult_truncated(tmp_path):
    person = obj("person", (10.5, 20, 50.25, 60), truncated=1, parts=[("head", (12, 22, 20, 30)), ("hand", (40, 40, 45, 45))])
    dog = obj("dog", (1, 1, 10, 10), difficult=1)
    path = tmp_path / "a.xml"
    path.write_text(xml_text("a.jpg", (64, 80), [person, dog]))
    ann = parse_voc_xml(path)
    assert ann.names == ["person", "dog"]  # <part> boxes are not objects
    np.testing.assert_allclose(ann.boxes, [[9.5, 19, 50.25, 60], [0, 0, 10, 10]])  # x1 = xmin - 1, x2 = xmax
    assert ann.difficult.tolist() == [False, True] and ann.truncated.tolist() == [True, False]
    assert ann.size == (64, 80) and ann.filename == "a.jpg"


def test_no_objects_and_no_size(tmp_path):
    path = tmp_path / "e.xml"
    path.write_text(xml_text("e.jpg", None, []))
    ann = parse_voc_xml(path)
    assert ann.boxes.shape == (0, 4) and ann.size is None and ann["boxes"].dtype == np.float32


@pytest.mark.parametrize(
    "text, needle",
    [
        ("<annotation><object>", "malformed XML"),
        ("<annotation><object><name>a</name></object></annotation>", "has no <bndbox>"),
        ("<annotation><object><name>a</name><bndbox><xmin>x</xmin></bndbox></object></annotation>", "not a number"),
        ('<?xml version="1.0"?><!DOCTYPE a [<!ENTITY e "boom">]><annotation>&e;</annotation>', "unreadable XML"),
        ("<foo/>", "expected <annotation>"),
    ],
)
def test_malformed_xml_names_the_file(tmp_path, text, needle):
    path = tmp_path / "bad.xml"
    path.write_text(text)
    with pytest.raises(ValueError) as err:
        parse_voc_xml(path)
    assert needle in str(err.value) and str(path) in str(err.value)


def test_standard_layout_roots_and_difficult(tmp_path):
    make_voc(tmp_path, {"train": [("a", [obj("cat"), obj("dog", difficult=1)]), ("b", [obj("dog")])], "val": [("c", [obj("dog", difficult=1), obj("cat")])]})
    for root in (tmp_path, tmp_path / "VOCdevkit", tmp_path / "VOCdevkit" / "VOC2012"):
        ds = build_datasets(DataConfig(root=str(root)), **SIZES)
        assert ds.format == "voc" and ds.class_map.to_dict() == {"cat": 1, "dog": 2}
        assert (len(ds.train), len(ds.val)) == (2, 1)
    _, t = ds.train[0]
    assert t["labels"].tolist() == [1, 2] and t["ignore"].tolist() == [False, True]  # ignore region for the loss
    _, t = ds.val[0]
    assert t["labels"].tolist() == [2, 1] and t["ignore"].tolist() == [True, False]  # kept as ignore for eval
    assert t["boxes"].tolist()[1] == [4.0, 5.0, 30.0, 40.0] and t["orig_size"] == (64, 80) and t["size"] == (64, 80)
    ds = build_datasets(DataConfig(root=str(tmp_path), train_difficult=True), **SIZES)
    assert ds.train[0][1]["labels"].tolist() == [1, 2] and not ds.train[0][1]["ignore"].any()  # trained as objects
    assert ds.val[0][1]["ignore"].tolist() == [True, False]  # evaluation still ignores them


def test_07_plus_12(tmp_path):
    make_voc(tmp_path, {"trainval": [("a", [obj("cat")])], "test": [("t", [obj("cat")])]}, year="VOC2007")
    make_voc(tmp_path, {"trainval": [("b", [obj("dog")]), ("c", [obj("dog")])]}, year="VOC2012")  # no test.txt
    cfg = DataConfig(root=str(tmp_path), years=("2007", "2012"), train_split="trainval", val_split="test")
    ds = build_datasets(cfg, **SIZES)
    assert (len(ds.train), len(ds.val)) == (3, 1)
    assert len(build_datasets(DataConfig(root=str(tmp_path), years=("2012",), train_split="trainval", val_split="trainval"), **SIZES).train) == 2


def test_missing_year_is_reported(tmp_path):
    make_voc(tmp_path, {"train": [("a", [obj()])]})
    from retinanet.errors import DataError

    with pytest.raises(DataError, match="no VOC2007 folder"):
        build_datasets(DataConfig(root=str(tmp_path), years=("2007",)), **SIZES)


def _flat(root, n=10, separate=False):
    img_dir, xml_dir = (root / "images", root / "annotations") if separate else (root, root)
    xml_dir.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        write_image(img_dir / f"im{i}.{'png' if i % 2 else 'jpg'}", seed=i)
        (xml_dir / f"im{i}.xml").write_text(xml_text(f"im{i}.jpg", (64, 80), [obj("cat" if i % 3 else "dog")]))
    return root


@pytest.mark.parametrize("separate", [False, True])
def test_flat_layout_split_is_seeded_written_and_reused(tmp_path, separate):
    root = _flat(tmp_path / "flat", separate=separate)
    cfg = DataConfig(root=str(root), val_fraction=0.3, split_seed=1)
    ds = build_datasets(cfg, **SIZES)
    assert ds.format == "voc-flat" and (len(ds.train), len(ds.val)) == (7, 3)
    val = (root / "splits" / "val.txt").read_text().split()
    assert sorted(val) == sorted(r.file.rsplit("/", 1)[1].split(".")[0] for r in ds.val.records)
    other = _flat(tmp_path / "flat2", separate=separate)
    build_datasets(DataConfig(root=str(other), val_fraction=0.3, split_seed=1), **SIZES)
    assert (other / "splits" / "val.txt").read_text().split() == val  # same seed, same split
    (root / "splits" / "val.txt").write_text("im0\n")
    (root / "splits" / "train.txt").write_text("im1\nim2\n")
    with pytest.warns(UserWarning, match="7 annotated image.s. in no split file are not used"):
        ds = build_datasets(cfg, **SIZES)  # existing split files win
    assert (len(ds.train), len(ds.val)) == (2, 1)
    assert any("in no split file" in w for w in ds.warnings)


def test_flat_layout_val_list_file(tmp_path):
    root = _flat(tmp_path / "flat")
    (tmp_path / "v.txt").write_text("im1.png\nim4\n")
    write_image(root / "lonely.jpg")
    with pytest.warns(UserWarning, match="without an XML file are not used: lonely.jpg"):
        ds = build_datasets(DataConfig(root=str(root), val_split=str(tmp_path / "v.txt")), **SIZES)
    assert (len(ds.train), len(ds.val)) == (8, 2)
    assert any("1 image(s) without an XML file are not used: lonely.jpg" in w for w in ds.warnings)
    assert not (root / "splits").exists()


def test_reversed_or_empty_box_says_what_is_wrong(tmp_path):
    objects = [obj("cat", (50, 6, 20, 40)), obj("cat", (5, 30, 40, 29)), obj("cat", (90, 10, 120, 20)), obj("dog")]
    make_voc(tmp_path, {"train": [("a", objects)], "val": [("b", [obj()])]})
    with pytest.warns(UserWarning) as record:
        ds = build_datasets(DataConfig(root=str(tmp_path)), **SIZES)
    text = "\n".join(str(w.message) for w in record)
    assert "a.xml: dropped 3 box(es) with no area: object 1 (cat): xmin 50 > xmax 20; object 2 (cat): ymin 30 > ymax 29; " \
           "object 3 (cat): no area inside the 80x64 (WxH) image" in text, text
    assert ds.train.records[0].labels.tolist() == [2]


@pytest.mark.parametrize("value", ["inf", "-Infinity", "nan"])
def test_non_finite_coordinate_is_a_problem_naming_the_file_and_object(tmp_path, value):
    voc = make_voc(tmp_path, {"train": [("a", [obj("dog"), obj("cat", (5, 6, value, 40))])], "val": [("b", [obj()])]})
    with pytest.raises(DataError) as err:  # today: clipped to the image edge, an image-wide box
        build_datasets(DataConfig(root=str(tmp_path)), **SIZES)
    (problem,) = err.value.problems
    assert str(voc / "Annotations" / "a.xml") in problem and "object 2 (cat): <xmax>" in problem
    assert "is not a finite number" in problem


def test_unusable_size_is_said_and_the_decoded_size_used(tmp_path):
    voc = make_voc(tmp_path, {"train": [("a", [obj()])], "val": [("b", [obj()])]})
    xml = voc / "Annotations" / "a.xml"
    xml.write_text(xml.read_text().replace("<height>64</height>", "<height>inf</height>"))  # today: OverflowError
    with pytest.warns(UserWarning, match=r"a.xml: <height> is 'inf': inf is not a finite number; the decoded image's size is used"):
        ds = build_datasets(DataConfig(root=str(tmp_path)), **SIZES)
    assert ds.train.records[0].size is None and ds.train[0][1]["orig_size"] == (64, 80)


def test_boxes_outside_an_image_of_unstated_size_are_clipped_and_dropped_aloud(tmp_path, capsys):
    from retinanet.data import check_dataset

    voc = make_voc(tmp_path, {"train": [("a", [obj()])], "val": [("b", [obj()])]})
    xml = voc / "Annotations" / "a.xml"  # no <size>: the 80x64 decoded image is the only size
    xml.write_text(xml_text("a.jpg", None, [obj("cat", (5, 6, 30, 40)), obj("cat", (60, 10, 120, 40)), obj("cat", (90, 10, 120, 20))]))
    ds = build_datasets(DataConfig(root=str(tmp_path), hflip_prob=0.0), **SIZES)
    with pytest.warns(UserWarning) as record:  # today: clipped and dropped without a word
        _, target = ds.train[0]
    said = "\n".join(str(w.message) for w in record)
    assert (f"{xml} ({voc / 'JPEGImages' / 'a.jpg'}): 1 box(es) extend outside the 80x64 (WxH) image; clipped: "
            "[59,9,120,40] (x1,y1,x2,y2)") in said  # the box named, so it can be found among many in its file
    assert (f"{xml} ({voc / 'JPEGImages' / 'a.jpg'}): dropped 1 box(es) with no area inside the 80x64 (WxH) image: "
            "[89,9,120,20] (x1,y1,x2,y2)") in said
    assert target["boxes"].tolist() == [[4, 5, 30, 40], [59, 9, 80, 40]]
    report = check_dataset(DataConfig(root=str(tmp_path)), progress=False)  # check-data says the same
    assert any("1 box(es) extend outside the 80x64 (WxH) image; clipped" in w and str(xml) in w for w in report.warnings)
    assert any("dropped 1 box(es) with no area" in w and str(xml) in w for w in report.warnings)


def test_id_listed_twice_in_a_split_file_is_read_once_with_a_warning(tmp_path):
    voc = make_voc(tmp_path, {"train": [("a", [obj()])], "val": [("b", [obj()]), ("c", [obj()])]})
    split = voc / "ImageSets" / "Main" / "val.txt"
    split.write_text("b\nc\nb\n")  # today: b is evaluated twice
    with pytest.warns(UserWarning, match=r"val.txt: 1 name\(s\) listed more than once, each read once: b \(lines 1, 3\)"):
        ds = build_datasets(DataConfig(root=str(tmp_path)), **SIZES)
    assert [r.file.rsplit("/", 1)[1] for r in ds.val.records] == ["b.jpg", "c.jpg"]
    assert [r.image_id for r in ds.val.records] == [0, 1]


def test_flat_split_files_listing_a_stem_twice_or_in_both_splits(tmp_path):
    root = _flat(tmp_path / "flat", n=4)
    (root / "splits").mkdir()
    (root / "splits" / "train.txt").write_text("im0\nim1\nim0\n")
    (root / "splits" / "val.txt").write_text("im2\nim3\n")
    with pytest.warns(UserWarning, match=r"train.txt: 1 name\(s\) listed more than once, each read once: im0 \(lines 1, 3\)"):
        ds = build_datasets(DataConfig(root=str(root)), **SIZES)
    assert len(ds.train) == 2
    (root / "splits" / "val.txt").write_text("im2\nim1\n")  # im1 in both: training on a validation image
    with pytest.raises(DataError, match=r"train.txt and .*val.txt both list 1 image\(s\): im1"):
        build_datasets(DataConfig(root=str(root)), **SIZES)


def test_two_images_of_one_stem_the_xml_filename_decides(tmp_path):
    root = tmp_path / "flat"
    write_image(root / "a.jpg", seed=1)
    write_image(root / "a.png", seed=2)  # sorted first is a.jpg: today it is taken, whatever the XML names
    (root / "a.xml").write_text(xml_text("a.png", (64, 80), [obj()]))
    write_image(root / "b.jpg", seed=3)
    (root / "b.xml").write_text(xml_text("b.jpg", (64, 80), [obj()]))
    cfg = DataConfig(root=str(root), val_fraction=0.0)
    with pytest.warns(UserWarning, match=r"a.xml: 2 images in .* are named a.\* \(a.jpg, a.png\): a.png used, the one its <filename> names"):
        ds = build_datasets(cfg, **SIZES)
    assert sorted(r.file.rsplit("/", 1)[1] for r in ds.train.records) == ["a.png", "b.jpg"]
    (root / "a.xml").write_text(xml_text("photo.jpg", (64, 80), [obj()]))  # names neither
    with pytest.raises(DataError) as err:
        build_datasets(cfg, **SIZES)
    (problem,) = err.value.problems
    assert f"{root / 'a.xml'}: 2 images in {root} are named a.* (a.jpg, a.png) and its <filename> 'photo.jpg' names none" in problem



def test_a_windows_filename_and_path_name_the_image_by_its_base_name(tmp_path):
    """LabelImg on Windows: <filename>images\\a.png</filename> chose neither a.jpg nor a.png; <path> is never read."""
    root = tmp_path / "flat"
    write_image(root / "a.jpg", seed=1)
    write_image(root / "a.png", seed=2)
    (root / "a.xml").write_text(xml_text("images\\a.png", (64, 80), [obj()], extra="<path>C:\\Users\\me\\a.jpg</path>"))
    with pytest.warns(UserWarning, match=r"a.xml: 2 images in .* are named a.\* \(a.jpg, a.png\): a.png used"):
        ds = build_datasets(DataConfig(root=str(root), val_fraction=0.0), **SIZES)
    assert [r.file.rsplit("/", 1)[1] for r in ds.train.records] == ["a.png"]

def test_two_images_of_one_id_in_the_standard_layout(tmp_path):
    voc = make_voc(tmp_path, {"train": [("a", [obj()])], "val": [("b", [obj()])]})
    write_image(voc / "JPEGImages" / "a.png", seed=5)  # today: a.jpg taken without a word
    with pytest.warns(UserWarning, match=r"a.xml: 2 images in .*JPEGImages are named a.\* \(a.jpg, a.png\): a.jpg used"):
        ds = build_datasets(DataConfig(root=str(tmp_path)), **SIZES)
    assert ds.train.records[0].file == str(voc / "JPEGImages" / "a.jpg")


def test_every_image_type_is_read_in_both_layouts_and_other_types_are_named(tmp_path):
    voc = make_voc(tmp_path / "std", {"train": [("a", [obj()]), ("g", [obj()])], "val": [("b", [obj()])]})
    (voc / "JPEGImages" / "a.jpg").rename(voc / "JPEGImages" / "a.bmp")  # today: "a.jpg: image file missing"
    (voc / "JPEGImages" / "g.jpg").rename(voc / "JPEGImages" / "g.gif")
    with pytest.raises(DataError) as err:
        build_datasets(DataConfig(root=str(tmp_path / "std")), **SIZES)
    (problem,) = err.value.problems  # a.bmp is read; g.gif is named as a type not read, not as a missing g.jpg
    assert problem.startswith(f"{voc / 'JPEGImages' / 'g.gif'}: not one of the image types read (.jpg ")
    assert f"annotation {voc / 'Annotations' / 'g.xml'} has no image" in problem and "missing" not in problem
    (voc / "JPEGImages" / "g.gif").unlink()
    with pytest.raises(DataError, match=r"JPEGImages/g.jpg: image file missing \(annotation .*g.xml; no file named g.\* in"):
        build_datasets(DataConfig(root=str(tmp_path / "std")), **SIZES)
    flat = _flat(tmp_path / "flat", n=3)
    (flat / "im0.jpg").rename(flat / "im0.heic")
    (flat / "notes.md").write_text("not an image")
    with pytest.raises(DataError, match=r"im0.heic: not one of the image types read"):
        build_datasets(DataConfig(root=str(flat), val_fraction=0.0), **SIZES)
    (flat / "im0.heic").rename(flat / "im0.webp")
    with pytest.warns(UserWarning, match=r"1 file\(s\) not read, not one of the image types .*: .*notes.md"):
        ds = build_datasets(DataConfig(root=str(flat), val_fraction=0.0), **SIZES)
    assert sorted(r.file.rsplit("/", 1)[1] for r in ds.train.records) == ["im0.webp", "im1.png", "im2.jpg"]


def test_when_every_annotation_is_bad_the_problems_are_reported(tmp_path):
    voc = make_voc(tmp_path, {"train": [("a", [obj()])], "val": [("b", [obj()])]})
    (voc / "Annotations" / "a.xml").write_text("<annotation><object>")
    (voc / "Annotations" / "b.xml").write_text("<annotation><object><name>cat</name></object></annotation>")
    with pytest.raises(DataError) as err:  # today: only "no objects found in the annotations"
        build_datasets(DataConfig(root=str(tmp_path)), **SIZES)
    problems = err.value.problems
    assert any("a.xml: malformed XML" in p for p in problems) and any("b.xml: object 'cat' has no <bndbox>" in p for p in problems)
    assert len(problems) == 2 and "no class to train" in str(err.value)  # not "give --classes": the annotations are the fault


def test_an_object_listed_twice_is_dropped_with_a_warning(tmp_path):
    objects = [obj("cat"), obj("dog"), obj("cat"), obj("cat", difficult=1)]  # 3 = 1 again; 4 differs by its flag
    make_voc(tmp_path, {"train": [("a", objects)], "val": [("b", [obj()])]})
    with pytest.warns(UserWarning, match=r"a.xml: dropped 1 repeated object\(s\): object 3 \(cat\) \(same class, box"):
        ds = build_datasets(DataConfig(root=str(tmp_path)), **SIZES)  # today: two cat objects, one unmatchable
    assert ds.train.records[0].labels.tolist() == [1, 2, 1] and ds.train.records[0].ignore.tolist() == [False, False, True]


def test_flat_layout_reads_upper_case_xml_and_says_which_split_items_are_gone(tmp_path):
    root = _flat(tmp_path / "flat", n=6)
    (root / "im0.xml").rename(root / "im0.XML")  # Windows tools write both
    ds = build_datasets(DataConfig(root=str(root), val_fraction=0.5, split_seed=0), **SIZES)
    assert len(ds.train) + len(ds.val) == 6 and not any("without an XML" in w for w in ds.warnings)
    listed = (root / "splits" / "val.txt").read_text().split()
    (root / f"{listed[0]}.xml").unlink(missing_ok=True), (root / f"{listed[0]}.XML").unlink(missing_ok=True)
    with pytest.warns(UserWarning, match="1 listed image.s. have no XML in .* any more and are left out: " + listed[0]):
        ds = build_datasets(DataConfig(root=str(root), val_fraction=0.5, split_seed=0), **SIZES)
    assert len(ds.val) == len(listed) - 1 and not ds.skipped  # not "annotation file missing"


def test_a_byte_order_mark_in_a_split_file_is_not_part_of_the_first_id(tmp_path):
    voc = make_voc(tmp_path, {"train": [("a", [obj()]), ("b", [obj()])], "val": [("c", [obj()])]})
    split = voc / "ImageSets" / "Main" / "train.txt"
    split.write_text("\ufeffa\r\nb\r\n", encoding="utf-8")  # Notepad's UTF-8
    ds = build_datasets(DataConfig(root=str(tmp_path)), **SIZES)
    assert [r.file.rsplit("/", 1)[1] for r in ds.train.records] == ["a.jpg", "b.jpg"]


def test_missing_split_files_name_the_ones_there_and_other_formats_are_recognised(tmp_path):
    voc = make_voc(tmp_path / "cvat", {"default": [("a", [obj()])]})  # CVAT's "Pascal VOC 1.1" export
    with pytest.raises(DataError) as err:
        build_datasets(DataConfig(root=str(tmp_path / "cvat")), **SIZES)
    assert "ImageSets/Main has default.txt: name the splits with --train-split/--val-split" in str(err.value)
    assert "give --classes" not in str(err.value)  # the problems say why, not a missing class map
    assert len(build_datasets(DataConfig(root=str(voc), format="voc-flat", val_fraction=0), **SIZES).train) == 1
    ls = tmp_path / "ls"  # Label Studio YOLO: images/, labels/, classes.txt, no data.yaml
    write_image(ls / "images" / "a.jpg")
    (ls / "labels").mkdir()
    (ls / "labels" / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (ls / "classes.txt").write_text("cat\n")
    with pytest.raises(DataError, match="looks like YOLO labels without a data.yaml: write one"):
        build_datasets(DataConfig(root=str(ls)), **SIZES)
    (ls / "train").mkdir()
    (ls / "train" / "_annotations.coco.json").write_text("{}")  # Roboflow COCO: a folder per split
    with pytest.raises(DataError, match=r"give the file as --data \(found .*train/_annotations.coco.json\)"):
        build_datasets(DataConfig(root=str(ls)), **SIZES)


def test_an_xml_in_latin_1_without_a_declaration_says_so(tmp_path):
    path = tmp_path / "a.xml"
    path.write_bytes(xml_text("a.jpg", (64, 80), [obj("café")]).encode("latin-1"))
    with pytest.raises(ValueError, match="a.xml: malformed XML .*the file is not UTF-8 and declares no encoding"):
        parse_voc_xml(path)
    path.write_bytes(b'<?xml version="1.0" encoding="latin-1"?>' + xml_text("a.jpg", (64, 80), [obj("café")]).encode("latin-1"))
    assert parse_voc_xml(path).names == ["café"]


def test_an_xml_with_a_default_namespace_is_read(tmp_path):
    path = tmp_path / "a.xml"
    path.write_text(xml_text("a.jpg", (64, 80), [obj("cat")]).replace("<annotation>", '<annotation xmlns="http://example.org/voc">', 1))
    ann = parse_voc_xml(path)
    assert ann.names == ["cat"] and ann.boxes.tolist() == [[4.0, 5.0, 30.0, 40.0]]


def test_a_predict_output_folder_read_as_a_dataset_is_named(tmp_path):
    root = _flat(tmp_path / "out", n=4, separate=True)
    (root / "predictions.json").write_text('{"images": [], "failures": []}')
    ds = build_datasets(DataConfig(root=str(root), val_fraction=0.5), **SIZES)
    assert any("looks like the output of retinanet predict: its images have the detections drawn in" in w for w in ds.warnings)


def test_reading_saved_flat_splits_of_many_images_takes_about_as_long_as_drawing_them(tmp_path):
    import time

    from retinanet.data.voc_layout import flat_split
    (tmp_path / "annotations").mkdir()
    (tmp_path / "images").mkdir()
    for i in range(20_000):  # a set of stems was built per listed item: 28 s here, the draw 0.3 s
        (tmp_path / "annotations" / f"im{i:06d}.xml").write_text("<annotation/>")
    t = time.perf_counter()
    drawn, _, _ = flat_split(tmp_path, 0.2, 0)
    t_draw = time.perf_counter() - t
    t = time.perf_counter()
    read, problems, warnings = flat_split(tmp_path, 0.2, 0)
    t_read = time.perf_counter() - t
    assert read == drawn and not problems and not warnings
    assert t_read < max(2.0, 5 * t_draw), (t_read, t_draw)


def test_a_folder_per_split_roboflow_s_voc_export_gives_the_splits(tmp_path):
    """Roboflow's Pascal VOC export (train/, valid/, test/, each images + XML) was refused: "no
    .xml annotation files found". Each folder is now its split (valid/ for val, --split test)."""
    root = tmp_path / "export"
    for split, n in (("train", 3), ("valid", 2), ("test", 1)):
        for i in range(n):
            write_image(root / split / f"{split}{i}.jpg", seed=i)
            (root / split / f"{split}{i}.xml").write_text(xml_text(f"{split}{i}.jpg", (64, 80), [obj("cat" if i else "dog")]))
    (root / "README.roboflow.txt").write_text("exported\n")
    ds = build_datasets(DataConfig(root=str(root)), **SIZES)
    assert ds.format == "voc-flat" and (len(ds.train), len(ds.val)) == (3, 2) and ds.class_map.to_dict() == {"cat": 1, "dog": 2}
    assert all("/valid/valid" in r.file for r in ds.val.records) and not (root / "splits").exists()
    ds = build_datasets(DataConfig(root=str(root), val_split="test"), splits=("val",), **SIZES)
    assert [r.file.rsplit("/", 2)[1:] for r in ds.val.records] == [["test", "test0.jpg"]]
    with pytest.raises(DataError, match=r"no folder for the split 'holdout'; its folders: test, train, valid.*--data .*/export/train to draw"):
        build_datasets(DataConfig(root=str(root), val_split="holdout"), **SIZES)


def test_a_darknet_yolo_export_is_named_with_the_data_yaml_to_write(tmp_path):
    """CVAT's "YOLO 1.1" export (obj.names, obj.data, obj_train_data/ with labels beside the
    images) read as a flat VOC folder: "no .xml annotation files found", and nothing more."""
    root = tmp_path / "cvat"
    write_image(root / "obj_train_data" / "a.jpg")
    (root / "obj_train_data" / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (root / "obj.names").write_text("cat\n")
    (root / "obj.data").write_text("classes = 1\ntrain = data/train.txt\nnames = data/obj.names\n")
    with pytest.raises(DataError, match=r"looks like a darknet YOLO export .*write a data.yaml \(train: obj_train_data, "):
        build_datasets(DataConfig(root=str(root)), **SIZES)
    write_image(root / "obj_test_data" / "b.jpg")  # a second subset, sorted before obj_train_data: still the val
    with pytest.raises(DataError, match=r"write a data.yaml \(train: obj_train_data, val: obj_test_data, "):
        build_datasets(DataConfig(root=str(root)), **SIZES)
    (root / "data.yaml").write_text("train: obj_train_data\nval: obj_train_data\nnames: [cat]\n")  # what it says to write
    assert len(build_datasets(DataConfig(root=str(root)), **SIZES).train) == 1
