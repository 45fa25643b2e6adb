"""Where a VOC dataset's files are: the VOCdevkit standard layout and the flat images+XML folder.

Standard layout: ``ROOT/VOCdevkit/VOC2007|VOC2012/{Annotations,JPEGImages,ImageSets/Main/<split>.txt}``;
ROOT may also be the VOCdevkit folder or one ``VOC20xx`` folder.

Flat layout (LabelImg, CVAT, Roboflow exports): images and XML files in one folder, or in two
folders (``images/`` + ``annotations/``, ``JPEGImages`` + ``Annotations``, ...), matched by stem,
no split files. The validation images are those named in a list file (``--val-split
path/to/val.txt``), else a seeded draw of ``val_fraction`` of the stems, written to
``ROOT/splits/{train,val}.txt`` and reused when those files exist (delete them to redraw).
A folder per split, each such a flat folder (Roboflow's Pascal VOC export: ``train/``,
``valid/``, ``test/``), gives the splits itself (``split_folders``).
"""

from __future__ import annotations

import os
import random
from pathlib import Path

from retinanet.data.images import is_image_file, not_read
from retinanet.data.progress import Tick, no_progress
from retinanet.data.voc import ImageSlot, VocAnnotation, parse_voc_xml, stem_index
from retinanet.errors import DataError

_XML_DIRS = ("Annotations", "annotations", "labels", "xml", "Labels")
_IMAGE_DIRS = ("JPEGImages", "images", "Images", "imgs", "img")


# --- standard layout -------------------------------------------------------------------------------


def find_voc_years(root: Path, years: tuple[str, ...] = ()) -> list[Path]:
    """The ``VOC20xx`` folders under ``root`` (ROOT, ROOT/VOCdevkit, or a VOC20xx folder itself).

    Args:
        years: e.g. ``("2007", "2012")`` or ``("VOC2007",)``; empty = every one found.
    """
    root = Path(root)
    if (root / "Annotations").is_dir() and (root / "ImageSets").is_dir():
        return [root]
    base = root / "VOCdevkit" if (root / "VOCdevkit").is_dir() else root
    found = sorted(p for p in base.glob("VOC*") if p.is_dir() and (p / "Annotations").is_dir())
    if years:
        wanted = {y if y.startswith("VOC") else f"VOC{y}" for y in years}
        missing = sorted(wanted - {p.name for p in found})
        if missing:
            raise DataError([f"{base}: no {m} folder with Annotations/ (found: {', '.join(p.name for p in found) or 'none'})" for m in missing])
        found = [p for p in found if p.name in wanted]
    return found


def is_voc_standard(root: Path) -> bool:
    """Whether ``root`` looks like a VOC standard layout (VOCdevkit, VOC20xx or one year folder)."""
    try:
        return bool(find_voc_years(root))
    except DataError:
        return False


def read_list_file(f: Path, warnings: list[str]) -> list[str]:
    """The first word of each non-blank line of a list file (split file, validation list), each
    once: a word listed again is read once, with a warning naming its lines (it would otherwise be
    trained or evaluated twice)."""
    lines: dict[str, list[int]] = {}
    for n, line in enumerate(f.read_text(encoding="utf-8-sig").splitlines(), 1):  # a byte-order mark is not a name
        if line.strip():
            lines.setdefault(line.split()[0], []).append(n)
    repeated = {w: ns for w, ns in lines.items() if len(ns) > 1}
    if repeated:
        shown = "; ".join(f"{w} (lines {', '.join(map(str, ns))})" for w, ns in list(repeated.items())[:5])
        warnings.append(f"{f}: {len(repeated)} name(s) listed more than once, each read once: {shown}{' ...' if len(repeated) > 5 else ''}")
    return list(lines)


def read_split_ids(year_dirs: list[Path], split: str, warnings: list[str] | None = None) -> tuple[list[tuple[Path, str]], list[str]]:
    """``(year_dir, image id)`` pairs listed in ``ImageSets/Main/<split>.txt`` of each year.

    A year without that file is skipped (VOC2012 has no test.txt, so "07+12" trainval/test works);
    no file at all, or an empty file, is a problem; an id listed twice is read once, with a warning.

    Returns:
        (pairs, problems)
    """
    pairs, problems, looked = [], [], []
    for ydir in year_dirs:
        f = ydir / "ImageSets" / "Main" / f"{split}.txt"
        looked.append(str(f))
        if not f.is_file():
            continue
        ids = read_list_file(f, warnings if warnings is not None else [])
        if not ids:
            problems.append(f"{f}: split file is empty")
        pairs += [(ydir, i) for i in ids]
    if not pairs and not problems:
        there = sorted({f.stem for y in year_dirs if (y / "ImageSets" / "Main").is_dir()
                        for f in (y / "ImageSets" / "Main").glob("*.txt") if "_" not in f.stem})  # not the per-class lists
        hint = (f"; ImageSets/Main has {', '.join(f'{t}.txt' for t in there[:8])}: name the splits with --train-split/"
                "--val-split (e.g. a CVAT export's 'default'), or --format voc-flat draws a split" if there else "")
        problems.append(f"split {split!r}: no split file found (looked for {', '.join(looked)}){hint}")
    return pairs, problems


def parse_all(pairs: list[tuple[Path, ImageSlot]], problems: list[str], progress: Tick = no_progress,
              ) -> list[tuple[VocAnnotation, Path, ImageSlot]]:
    """Parse every ``(xml, image slot)`` pair; unreadable XML goes to ``problems``.
    ``progress(done, total)`` is called after each pair."""
    out = []
    for done, (xml, image) in enumerate(pairs, 1):
        if not xml.is_file():
            problems.append(f"{xml}: annotation file missing")
        else:
            try:
                out.append((parse_voc_xml(xml), xml, image))
            except (ValueError, OSError) as err:
                problems.append(str(err))
        progress(done, len(pairs))
    return out


def voc_standard_pairs(root: Path, years: tuple[str, ...], split: str, problems: list[str],
                       warnings: list[str] | None = None) -> list[tuple[Path, ImageSlot]]:
    """``(xml, image slot)`` of each id of one split of a standard-layout dataset."""
    year_dirs = find_voc_years(root, years)
    ids, split_problems = read_split_ids(year_dirs, split, warnings)
    problems += split_problems
    index = {y: stem_index(y / "JPEGImages") for y in year_dirs}
    return [(y / "Annotations" / f"{i}.xml", ImageSlot(y / "JPEGImages", i, tuple(index[y].get(i, ())))) for y, i in ids]


# --- flat layout -----------------------------------------------------------------------------------


def flat_folders(root: Path) -> tuple[Path, Path]:
    """``(image folder, XML folder)`` of a flat export: known sub-folder names, else ROOT itself."""
    root = Path(root)
    xml_dir = next((root / d for d in _XML_DIRS if (root / d).is_dir()), root)
    img_dir = next((root / d for d in _IMAGE_DIRS if (root / d).is_dir()), root)
    return img_dir, xml_dir


_VAL_FOLDERS = ("val", "valid", "validation")  # Roboflow names its validation folder valid/


def split_folders(root: Path, names: dict[str, str]) -> dict[str, Path | None] | None:
    """A flat export with a folder per split (Roboflow's Pascal VOC: ``train/``, ``valid/``,
    ``test/``, each images + XML): split -> its folder (None: not there), when ``root`` holds no
    XML of its own and the folder of the training split name holds some; else None.

    ``names``: split -> folder name (``--train-split``, ``--val-split``); the name ``val`` is also
    found as ``valid/`` or ``validation/``.
    """
    train = root / names.get("train", "train")
    if xml_files(flat_folders(root)[1]) or not train.is_dir() or not xml_files(flat_folders(train)[1]):
        return None
    found: dict[str, Path | None] = {}
    for split, name in names.items():
        looked = _VAL_FOLDERS if name in _VAL_FOLDERS else (name,)
        found[split] = next((root / n for n in looked if (root / n).is_dir()), None)
    return found


def other_format_hint(root: Path) -> str:
    """What a folder without VOC XML seems to hold instead, said as a hint ("" when nothing known):
    a COCO JSON (Roboflow COCO: ``train/_annotations.coco.json``), YOLO labels without a data.yaml
    (Label Studio, LabelImg; CVAT's darknet "YOLO 1.1": ``obj.names``, ``obj_train_data/``)."""
    jsons = sorted(root.glob("*.json")) + sorted(root.glob("*/*.json"))
    if jsons:
        return f"; for COCO JSON annotations give the file as --data (found {jsons[0]})"
    if (root / "obj.names").is_file() or (root / "obj.data").is_file():
        folders = sorted(p.name for p in root.glob("obj_*_data") if p.is_dir()) or ["obj_train_data"]
        # by name, not by sort order (obj_test_data sorts before obj_train_data)
        train = next((f for f in folders if "train" in f.lower()), folders[0])
        others = [f for f in folders if f != train]
        val = next((f for f in others if "val" in f.lower()), others[0] if others else "a folder of validation images")
        return ("; this looks like a darknet YOLO export (CVAT's YOLO 1.1: obj.names, obj.data, labels beside the images): "
                f"write a data.yaml (train: {train}, val: {val}, names: the lines of obj.names) and give it as --data")
    if (root / "labels").is_dir() or (root / "classes.txt").is_file():
        return ("; this looks like YOLO labels without a data.yaml: write one (path, train, val, names: the lines of "
                "classes.txt) and give it as --data")
    return ""


def xml_files(xml_dir: Path) -> dict[str, Path]:
    """Stem -> XML file of a flat export's XML folder; the suffix in any case (``.xml``, ``.XML``:
    Windows tools write both), lower case first when a stem has both."""
    with os.scandir(xml_dir) as entries:  # no stat, no Path per file: a folder may hold 100k files
        named = [(os.path.splitext(e.name), e) for e in entries if e.name.lower().endswith(".xml")]
    found: dict[str, Path] = {}
    for (stem, suffix), e in sorted(named, key=lambda x: (x[0][1] != ".xml", x[1].name)):
        if suffix.lower() == ".xml" and e.is_file():
            found.setdefault(stem, Path(e.path))
    return dict(sorted(found.items()))


def _read_list(f: Path, warnings: list[str]) -> list[str]:
    """Stems named by a list file (stems or file names), each once (``read_list_file``)."""
    return list(dict.fromkeys(Path(w).stem for w in read_list_file(f, warnings)))


def flat_split(
    root: Path, val_fraction: float, seed: int, *, val_list: Path | None = None, split_dir: Path | None = None,
    xmls: dict[str, Path] | None = None,
) -> tuple[dict[str, list[str]], list[str], list[str]]:
    """Train/val split of a flat export's stems: a list file, saved split files, or a seeded draw.

    Args:
        root: the export folder.
        val_fraction: share of stems held out for validation (0..1), when drawing.
        seed: seed of the draw.
        val_list: a text file naming the validation images (stems or file names, one a line);
            every other annotated image is training.
        split_dir: where ``train.txt``/``val.txt`` are read from if both exist, else written
            (default ``root/splits``).
        xmls: ``xml_files`` of the export's XML folder, when already listed.

    Returns:
        ({"train": stems, "val": stems}, problems, warnings)
    """
    split_dir = Path(split_dir or Path(root) / "splits")
    _, xml_dir = flat_folders(root)
    stems = sorted(xmls if xmls is not None else xml_files(xml_dir))
    if not stems:
        return {"train": [], "val": []}, [f"{xml_dir}: no .xml annotation files found{other_format_hint(Path(root))}"], []
    files = {s: split_dir / f"{s}.txt" for s in ("train", "val")}
    if val_list is not None:
        if not val_list.is_file():
            return {"train": [], "val": []}, [f"{val_list}: validation list file not found"], []
        warns: list[str] = []
        val = set(_read_list(val_list, warns))
        problems = [f"{val_list}: validation list is empty"] if not val else []
        unknown = sorted(val - set(stems))
        problems += [f"{val_list}: lists {len(unknown)} image(s) with no XML in {xml_dir}: {', '.join(unknown[:5])}"] if unknown else []
        return {"train": [s for s in stems if s not in val], "val": sorted(val & set(stems))}, problems, warns
    if all(f.is_file() for f in files.values()):
        warns = []
        split = {s: _read_list(f, warns) for s, f in files.items()}
        problems = [f"{files[n]}: split file is empty" for n in split if not split[n] and not (n == "val" and val_fraction == 0)]
        both = sorted(set(split["train"]) & set(split["val"]))
        if both:
            problems.append(f"{files['train']} and {files['val']} both list {len(both)} image(s): {', '.join(both[:5])}"
                            f"{' ...' if len(both) > 5 else ''}; an image is in one split (fix the files, or delete both to redraw)")
        listed = set(split["train"]) | set(split["val"])
        new = [s for s in stems if s not in listed]
        warns += [f"{split_dir}: {len(new)} annotated image(s) in no split file are not used (delete the split files to redraw)"] if new else []
        present = set(stems)
        for n, f in files.items():  # items deleted since the split was drawn: left out, and said
            gone = [s for s in split[n] if s not in present]
            if gone:
                warns.append(f"{f}: {len(gone)} listed image(s) have no XML in {xml_dir} any more and are left out: "
                             f"{', '.join(gone[:5])}{' ...' if len(gone) > 5 else ''} (remove those lines, or delete "
                             f"{split_dir} to draw the split again)")
                split[n] = [s for s in split[n] if s in present]
        return split, problems, warns
    order = list(stems)
    random.Random(seed).shuffle(order)
    val = set(order[: int(round(val_fraction * len(order)))])
    split = {"train": [s for s in stems if s not in val], "val": sorted(val)}
    try:
        split_dir.mkdir(parents=True, exist_ok=True)
        for s, f in files.items():
            f.write_text("".join(x + "\n" for x in split[s]), encoding="utf-8")
    except OSError as err:  # read-only dataset: the split is still deterministic, just not saved
        return split, [], [f"{split_dir}: cannot write the split files ({err})"]
    return split, [], []


def voc_flat_pairs(root: Path, stems: list[str], listed: tuple[dict[str, list[Path]], dict[str, Path]] | None = None,
                   ) -> list[tuple[Path, ImageSlot]]:
    """``(xml, image slot)`` for ``stems`` of a flat export (the image is picked by ``pick_image``).
    ``listed``: ``(stem_index(image folder), xml_files(XML folder))`` when already listed (a folder
    of 100k files takes seconds to list: once for every split and check)."""
    img_dir, xml_dir = flat_folders(root)
    index, xmls = listed if listed is not None else (stem_index(img_dir), xml_files(xml_dir))
    return [(xmls.get(s, xml_dir / f"{s}.xml"), ImageSlot(img_dir, s, tuple(index.get(s, ())))) for s in stems]


def unannotated_images(root: Path, xmls: dict[str, Path] | None = None) -> list[str]:
    """Warnings naming the files of a flat export's image folder that are not read: images that
    have no XML (left out, not negatives), and files of other types (not images, not XML; one
    named like an XML without an image is a problem of ``pick_image`` instead). ``xmls``:
    ``xml_files`` of the XML folder, when already listed."""
    img_dir, xml_dir = flat_folders(root)
    stems = set(xmls if xmls is not None else xml_files(xml_dir))
    with os.scandir(img_dir) as entries:  # names, not Paths: a folder may hold 100k images
        files = sorted((e.name, *os.path.splitext(e.name)) for e in entries if e.is_file())  # (name, stem, suffix)
    lonely = [name for name, stem, _ in files if is_image_file(name) and stem not in stems]
    image_stems = {stem for name, stem, _ in files if is_image_file(name)}
    other = [img_dir / name for name, stem, suffix in files
             if not is_image_file(name) and suffix.lower() != ".xml" and (stem not in stems or stem in image_stems)]
    warns = not_read(other, img_dir)
    if lonely:
        warns.append(f"{img_dir}: {len(lonely)} image(s) without an XML file are not used: {', '.join(lonely[:5])}{' ...' if len(lonely) > 5 else ''}")
    return warns
