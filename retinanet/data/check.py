"""``check_dataset``: read a dataset as training would, decode every image, report what is wrong.

Errors (``ok`` is False; ``retinanet check-data`` exits 1): anything that stops
``build_datasets`` (missing or malformed files, unknown classes, empty split files) and images that
cannot be decoded. Warnings: boxes clipped to the image or dropped for having no area (also
against the decoded size, for an annotation that states none), an XML
``<size>`` that differs from the decoded image (after the EXIF rule of ``retinanet.data.images``),
duplicate images (same bytes), the same image in both splits, images with no objects.

``write_check_outputs`` saves the report text and what one looks at before training, as PNGs:
instances per class, box sizes as the model sees them (scaled by its resize at ``min_size`` /
``max_size``) against the anchor sizes, and image sizes.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

from retinanet.files import write_atomic
from retinanet.config import DataConfig
from retinanet.data.build import detect_format, read_records
from retinanet.data.classes import ClassMap
from retinanet.data.images import DEFAULT_MAX_PIXELS, describe_orientation, open_image
from retinanet.data.progress import progress_bar, reading_progress
from retinanet.data.records import Record, clip_said
from retinanet.errors import DataError
from retinanet.geometry import resized_size

SMALL, MEDIUM = 32**2, 96**2  # COCO's area thresholds, pixels of the original image
SHOWN = 5  # printed lists cut to this many names (per group, groups, classes at each end of a table)
ALL_CLASSES = 20  # per-class tables and the class line printed whole up to this many classes
PLOTTED_CLASSES = 40  # instances_per_class.png: the most frequent classes, so its size is bounded
DUPLICATES_FILE = "duplicates.txt"  # every group of same-content images, written with --out
ANCHOR_FACTORS = (3 / 4, 1 / 2, 3 / 8, 1 / 4)  # the scalings of the anchor sizes suggested, largest first
SMALLEST_ANCHOR = 8  # px: no smaller anchor side is suggested
WHOLE_TABLES = "all of them in report.txt with --out"


@dataclass
class SplitStats:
    """Counts for one split (original image frame)."""

    images: int = 0
    objects: int = 0  # the boxes trained (and scored) as objects: ignore regions left out (``object_sizes``)
    ignored: int = 0  # difficult / crowd objects: ignore regions, in none of the other counts
    empty_images: int = 0  # images without an object (some may hold ignore regions: ``ignored_only``)
    ignored_only: int = 0  # of ``empty_images``, those holding ignore regions
    per_class: Counter = field(default_factory=Counter)  # class name -> objects
    ignored_per_class: Counter = field(default_factory=Counter)  # class name -> ignore regions
    sizes: Counter = field(default_factory=Counter)  # "small" | "medium" | "large" -> objects (``object_areas``)
    stated_areas: int = 0  # of ``objects``, those sized by the annotation's own area (COCO's ``area``), not the box's


@dataclass
class CheckReport:
    """What ``check_dataset`` found; ``summary()`` is the printable text."""

    root: str
    format: str
    class_map: ClassMap | None
    splits: dict[str, SplitStats] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    records: dict[str, list[Record]] = field(default_factory=dict, repr=False)  # split -> its records
    image_hw: dict[str, tuple[int, int]] = field(default_factory=dict, repr=False)  # file -> decoded (H, W)
    same_content: list[tuple[list[str], list[str]]] = field(default_factory=list, repr=False)  # (splits, files) per group

    @property
    def ok(self) -> bool:
        """True when nothing found would break training."""
        return not self.errors and bool(self.splits.get("train") and self.splits["train"].images)

    def summary(self, full: bool = False) -> str:
        """The report as text. Printed (``full`` False), the class line and per-class tables of more
        than ``ALL_CLASSES`` classes are cut to their ends; ``report.txt`` has them whole (``full``)."""
        lines = [f"dataset {self.root} ({self.format})"]
        if self.class_map is not None:
            pairs = [f"{n}={i}" for n, i in self.class_map.to_dict().items()]
            cut = not full and len(pairs) > ALL_CLASSES
            lines.append(f"classes ({len(self.class_map)}, num_classes={self.class_map.num_classes}, {self.class_map.source}): "
                         + ", ".join(pairs[:2 * SHOWN] if cut else pairs)
                         + (f" ... {', '.join(pairs[-2:])} ({len(pairs)} in all; {WHOLE_TABLES})" if cut else ""))
        ids = self.class_map.to_dict() if self.class_map is not None else {}
        for name, s in self.splits.items():
            lines.append(f"{name}: {s.images} images, {s.objects} objects{ignored_note(s)}, {s.empty_images} images with no objects"
                         + (f" ({s.ignored_only} with ignore regions only)" if s.ignored_only else ""))
            lines.append("  objects: " + ", ".join(f"{k} {s.sizes[k]}" for k in ("small", "medium", "large"))
                         + f"  ({size_basis(s)}: small < 32^2, medium < 96^2, large >= 96^2, COCO's ranges)")
            lines += class_table(s.per_class, ids, full, s.ignored_per_class)
        for title, items in (("errors", self.errors), ("warnings", self.warnings)):
            lines.append(f"{len(items)} {title}" + (":" if items else ""))
            lines += [f"  - {m}" for m in items]
        lines.append("OK: the dataset can be trained on" if self.ok else "NOT OK: fix the errors above before training")
        return "\n".join(lines)

    __str__ = summary


def ignored_note(s: SplitStats) -> str:
    """``" (and 3 difficult/crowd ignore region(s), left out of every count here)"``, or "" when the
    split has none: they are neither trained nor scored as objects."""
    return f" (and {s.ignored} difficult/crowd ignore region(s), left out of every count here)" if s.ignored else ""


def class_table(per_class: Counter, ids: dict[str, int], full: bool = False, ignored: Counter | None = None) -> list[str]:
    """Per-class object counts, a line ``  name  count`` each: most objects first, ties in class id
    order (``ids``: name -> id; names it lacks last). ``ignored``: ignore regions per class, said
    after the count (``+2 ignored``); a class with ignore regions alone is listed with 0 objects.
    More than ``ALL_CLASSES`` classes and not ``full``: the ``SHOWN`` most and least frequent, and
    a line for those left out between."""
    ignored = ignored or Counter()
    counts = {n: per_class.get(n, 0) for n in (*per_class, *ignored)}
    order = sorted(counts.items(), key=lambda kv: (-kv[1], ids.get(kv[0], len(ids) + 1), kv[0]))
    if not full and len(order) > ALL_CLASSES:
        order = order[:SHOWN] + [(f"... {len(order) - 2 * SHOWN} classes", None)] + order[-SHOWN:]
    width = max((len(n) for n, c in order if c is not None), default=0)
    return [(f"  {n:<{width}} {c}" + (f" (+{ignored[n]} ignored)" if ignored.get(n) else "")) if c is not None
            else f"  {n} ({WHOLE_TABLES})" for n, c in order]


def split_stats(records: list[Record], class_map: ClassMap) -> SplitStats:
    """Counts of one split's records: objects, their classes and sizes are the boxes trained (and
    scored) as objects (``object_sizes``), as the anchor counts; ignore regions (difficult /
    crowd) are counted apart."""
    s = SplitStats(images=len(records))
    for r in records:
        ignore = np.asarray(r.ignore, dtype=bool)
        objects, ignored = int((~ignore).sum()), int(ignore.sum())
        s.objects += objects
        s.ignored += ignored
        s.empty_images += int(objects == 0)
        s.ignored_only += int(objects == 0 and ignored > 0)
        s.per_class.update(class_map.name_of(int(c)) for c in r.labels[~ignore])
        s.ignored_per_class.update(class_map.name_of(int(c)) for c in r.labels[ignore])
        area = object_areas(r)
        s.stated_areas += len(area) if r.areas is not None else 0
        s.sizes.update("small" if a < SMALL else "medium" if a < MEDIUM else "large" for a in area.tolist())
    return s


def object_areas(r: Record) -> np.ndarray:
    """``[N]`` areas of the objects of ``r`` (``object_sizes``' boxes) by which their size class is
    judged, as the evaluation judges APs/APm/APl: the annotation's own (COCO's ``area``, the mask's
    on COCO; ``Record.areas``, which eval hands pycocotools) where the record carries them, else the
    box's width x height (VOC, YOLO)."""
    if r.areas is None:
        return object_sizes(r).prod(axis=1)
    return np.asarray(r.areas, np.float64)[~np.asarray(r.ignore, dtype=bool)]


def size_basis(s: SplitStats) -> str:
    """Which area the size classes of ``s`` counted (``object_areas``)."""
    if s.stated_areas and s.stated_areas == s.objects:
        return "by each annotation's area field, as COCO eval's APs/APm/APl (the bbox's w x h where it has none)"
    if s.stated_areas:
        return f"by the annotation's area field for {s.stated_areas} objects, the box's w x h for the rest"
    return "by box area w x h"


def decode_check(records: dict[str, list[Record]], progress: bool = True, *, exif: str = "auto",
                 max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 ) -> tuple[list[str], list[str], dict[str, tuple[int, int]], list[tuple[list[str], list[str]]]]:
    """Decode every image once (each file read once: hashed and decoded from the same bytes).

    Returns:
        (errors: corrupt or too large files; warnings: size mismatches, EXIF-oriented images and the
        frame used for each; the decoded ``(H, W)`` of each file; groups of same-content files,
        ``(splits, files)`` each, sorted: duplicates and images in several splits, for
        ``same_content_warnings``).
    """
    errors, warns = [], []
    image_hw: dict[str, tuple[int, int]] = {}
    by_hash: dict[str, list[tuple[str, str]]] = {}
    todo = [(split, r) for split, recs in records.items() for r in recs]
    seen: set[str] = set()
    for split, r in progress_bar(todo, desc="decoding images", unit="image", show=progress):
        try:
            data = Path(r.file).read_bytes()
            if r.file not in seen:
                opened = open_image(r.file, r.size, exif=exif, max_pixels=max_pixels, data=data)  # read once
                img = opened.image
                image_hw[r.file] = (img.height, img.width)
                if opened.orientation != 1:
                    warns.append(f"{r.file}: EXIF orientation {describe_orientation(opened.orientation)}; read in the "
                                 f"{opened.frame} frame (exif={exif})" + (f": {opened.note}" if opened.note else ""))
                if r.size is not None and (img.height, img.width) != tuple(r.size):
                    warns.append(f"{r.source}: <size> says {r.size[1]}x{r.size[0]} (WxH) but {r.file} is {img.width}x{img.height}; boxes are clipped to the image")
                warns += clip_said(r.boxes, (img.height, img.width), f"{r.source} ({r.file})")[2]  # as training will
        except (OSError, ValueError, SyntaxError) as err:
            errors.append(f"{r.file}: cannot decode image ({type(err).__name__}: {err})")
            continue
        seen.add(r.file)
        by_hash.setdefault(hashlib.sha1(data).hexdigest(), []).append((split, r.file))
    groups = [(sorted({s for s, _ in entries}), sorted({f for _, f in entries})) for entries in by_hash.values()]
    return errors, warns, image_hw, sorted(g for g in groups if len(g[0]) > 1 or len(g[1]) > 1)


def _some(names: list[str], shown: int = SHOWN) -> str:
    """``a, b, c and 97 more (100 files)``: the first ``shown`` names and the count."""
    if len(names) <= shown:
        return ", ".join(names)
    return f"{', '.join(names[:shown])} and {len(names) - shown} more ({len(names)} files)"


def same_content_warnings(groups: list[tuple[list[str], list[str]]], listed_in: Path | None = None) -> list[str]:
    """Warnings for groups of same-content files (``decode_check``): duplicates within the data and
    images in more than one split, at most ``SHOWN`` groups of each kind and ``SHOWN`` names per
    group (100k copies of one image must not print a 5 MB line). When something is left out the
    last line says where the whole list is: ``listed_in`` (``DUPLICATES_FILE`` in ``--out``)."""
    out = []
    kinds = (("duplicate images (same content)", [g for g in groups if len(g[1]) > 1]),
             ("images in more than one split", [g for g in groups if len(g[0]) > 1]))
    for kind, picked in kinds:
        for splits, files in picked[:SHOWN]:
            head = kind if kind.startswith("duplicate") else f"the same image is in splits {' and '.join(splits)}"
            out.append(f"{head}: {_some(files)}")
        if len(picked) > SHOWN or any(len(files) > SHOWN for _, files in picked):
            more = f"{len(picked) - SHOWN} more group(s) not shown; " if len(picked) > SHOWN else ""
            where = f"the whole list: {listed_in}" if listed_in else "check-data --out DIR writes the whole list"
            out.append(f"{kind}: {len(picked)} group(s), {sum(len(f) for _, f in picked)} files in all; {more}{where}")
    return out


def same_content_text(groups: list[tuple[list[str], list[str]]]) -> str:
    """``DUPLICATES_FILE``: every group of same-content files, a blank line between groups."""
    return "".join(f"same content, {len(files)} file(s), split(s) {', '.join(splits)}:\n" + "".join(f"{f}\n" for f in files) + "\n"
                   for splits, files in groups)


def stopped_format(cfg: DataConfig) -> str:
    """The report's format where reading stopped at a problem: the kind detected (a YOLO data.yaml or
    COCO categories it could not use: still that kind), else "format not known"."""
    try:
        fmt = cfg.format or ("voc" if cfg.root is None else detect_format(Path(cfg.root).expanduser()))
    except (DataError, OSError):
        fmt = "format not known"
    return f"{fmt}: reading stopped"


def check_dataset(cfg: DataConfig, *, progress: bool = True, out: str | Path | None = None) -> CheckReport:
    """Read ``cfg``'s dataset as ``build_datasets`` does, decode every image, and report.
    ``progress``: show how reading the annotations (once it lasts) and decoding go, on stderr.
    ``out``: the folder ``write_check_outputs`` will write (``--out``): warnings cut short name
    the file there that lists everything.

    Returns:
        ``CheckReport`` (``ok``, ``summary()``). Problems never raise, except a dataset
        that cannot be located or a broken class map file (``RetinaNetError``).
    """
    try:
        with reading_progress(progress) as tell:
            records, class_map, root, fmt, problems, warns = read_records(cfg, progress=tell)
    except DataError as err:
        return CheckReport(str(cfg.root), stopped_format(cfg), None, errors=list(err.problems))
    report = CheckReport(str(root), fmt, class_map, errors=list(problems), warnings=list(warns), records=records)
    if not records.get("train"):  # what `train` refuses, said here too (the reasons, if any, are above)
        report.errors.append(f"{root}: the training split {cfg.train_split!r} has no usable images")
    for split, recs in records.items():
        report.splits[split] = split_stats(recs, class_map)
        empty = [Path(r.file).name for r in recs if not len(object_sizes(r))]
        if empty:
            only = report.splits[split].ignored_only
            report.warnings.append(f"{split}: {len(empty)} image(s) with no objects: {', '.join(empty[:10])}{' ...' if len(empty) > 10 else ''}"
                                   + (f" ({only} of them with difficult/crowd ignore regions only)" if only else ""))
    errors, more, report.image_hw, report.same_content = decode_check(records, progress, exif=cfg.exif,
                                                                      max_pixels=cfg.max_image_pixels)
    report.errors += errors
    report.warnings += more + same_content_warnings(report.same_content, Path(out) / DUPLICATES_FILE if out else None)
    return report


# --- plots (matplotlib Agg, no pyplot) ------------------------------------------------------------

_SPLIT_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:purple")


def object_sizes(r: Record, ignore_as_objects: bool = False) -> np.ndarray:
    """``[N, 2]`` width, height, in original pixels, of the boxes of ``r`` trained as objects:
    ignore regions (crowd, difficult) left out, as the matcher never assigns them to anchors;
    kept with ``ignore_as_objects`` (``train --train-difficult``: trained as objects)."""
    wh = r.boxes[:, 2:] - r.boxes[:, :2]
    return wh if ignore_as_objects else wh[~np.asarray(r.ignore, dtype=bool)]


def model_box_sizes(records: list[Record], image_hw: dict[str, tuple[int, int]], min_size: int, max_size: int,
                    ignore_as_objects: bool = False) -> np.ndarray:
    """``[N, 2]`` width, height of every box trained as an object (``object_sizes``) as the model sees it, scaled like its image by the
    model's resize to ``min_size`` / ``max_size`` (``retinanet.geometry.resized_size``).

    An image's size is its decoded size, else the annotation's; images with neither are left out.
    """
    out = [np.zeros((0, 2))]
    for r in records:
        hw = image_hw.get(r.file) or r.size
        if hw is None or len(r.boxes) == 0:
            continue
        nh, nw = resized_size(int(hw[0]), int(hw[1]), min_size, max_size)
        wh = object_sizes(r, ignore_as_objects)  # [N, 2] original pixels
        out.append(wh * np.array([nw / hw[1], nh / hw[0]]))
    return np.concatenate(out).astype(np.float64)


def anchor_shapes(anchor_sizes: tuple[int, ...], ratios: tuple[float, ...] = (0.5, 1.0, 2.0)) -> np.ndarray:
    """``[L * 3 * len(ratios), 2]`` width, height of the anchors: per size three scales
    (x 2^0, 2^(1/3), 2^(2/3)) and the aspect ratios (h / w), as the model's anchor generator."""
    scales = np.array([int(s * 2 ** (k / 3)) for s in anchor_sizes for k in range(3)], dtype=np.float64)
    h = np.sqrt(np.array(ratios))
    return np.stack([np.outer(scales, 1 / h).ravel(), np.outer(scales, h).ravel()], axis=1)


def class_counts_figure(report: CheckReport) -> Figure:
    """Horizontal bars: objects per class and split (classes of the class map, most frequent first;
    the ``PLOTTED_CLASSES`` most frequent when there are more, said in the title)."""
    names = list(report.class_map.names) if report.class_map is not None else []
    splits = list(report.splits)
    total = Counter()
    for s in report.splits.values():
        total.update(s.per_class)
    ids = {n: i for i, n in enumerate(names)}
    names = sorted(set(names) | set(total), key=lambda n: (-total[n], ids.get(n, len(ids)), n))  # ties: class id order
    classes, names = len(names), names[:PLOTTED_CLASSES]  # bounded height: 1,000 classes drew a 700x31,252 px image
    fig = Figure(figsize=(7.0, 1.4 + 0.22 * max(len(names), 1) * max(1, len(splits)) ** 0.5), layout="constrained")
    ax = fig.subplots()
    y = np.arange(len(names))
    height = 0.8 / max(1, len(splits))
    for k, split in enumerate(splits):
        counts = [report.splits[split].per_class.get(n, 0) for n in names]
        ax.barh(y + k * height, counts, height, label=f"{split} ({sum(report.splits[split].per_class.values())})", color=_SPLIT_COLORS[k % 4])
    ax.set_yticks(y + height * (len(splits) - 1) / 2, names, fontsize=8 if len(names) > 30 else 9)
    ax.invert_yaxis()
    ignored = sum(sum(s.ignored_per_class.values()) for s in report.splits.values())
    ax.set_xlabel("objects" + (f" ({ignored} difficult/crowd ignore region(s) left out)" if ignored else ""))
    ax.grid(axis="x", alpha=0.3)
    if splits:
        fig.legend(loc="outside lower center", ncols=len(splits), fontsize=8)
    if not names:
        ax.text(0.5, 0.5, "no objects", ha="center", va="center", transform=ax.transAxes)
    cut = f": the {len(names)} most frequent (all in report.txt)" if classes > len(names) else ""
    fig.suptitle(f"Instances per class ({classes} classes{cut})", fontsize=10)
    return fig


def split_box_sizes(report: CheckReport, min_size: int, max_size: int) -> dict[str, np.ndarray]:
    """Split -> ``[N, 2]`` box width, height at the model's input scale (``model_box_sizes``),
    boxes of zero width or height left out."""
    out = {}
    for split, recs in report.records.items():
        wh = model_box_sizes(recs, report.image_hw, min_size, max_size)
        out[split] = wh[(wh > 0).all(axis=1)]
    return out


def count_too_small(wh: np.ndarray, anchor_sizes: tuple[int, ...]) -> int:
    """Boxes ``[N, 2]`` (w, h) too small for the anchors: ``sqrt(w*h)`` below the smallest anchor
    side / sqrt(2), so even centred on the smallest anchor of its shape its IoU is under 0.5 (the
    matcher's positive threshold; such a box gets only its best anchor, if any)."""
    return int((np.sqrt(wh.prod(axis=1)) < min(anchor_sizes) / math.sqrt(2)).sum())


def anchor_hint(report: CheckReport, min_size: int, max_size: int, anchor_sizes: tuple[int, ...],
                too_many: float = 0.15) -> str:
    """One line for the user: the share of boxes too small for the smallest anchor
    (``count_too_small``) and, when it is over ``too_many``, what to train with (``anchor_advice``:
    the largest smaller anchor sizes that bring it under, else a concrete larger input size). A
    hint: smaller anchors also hand mid-sized objects to coarser levels, so the largest sizes that
    fit are suggested, not the smallest."""
    wh = np.concatenate([np.zeros((0, 2)), *split_box_sizes(report, min_size, max_size).values()])
    small, total = count_too_small(wh, anchor_sizes), len(wh)
    if not total:
        return "anchors: no boxes to compare with the anchor sizes"
    line = (f"anchors: {small} of {total} boxes ({100 * small / total:.1f}%) are too small for the smallest anchor "
            f"({min(anchor_sizes)} px at min_size {min_size}: IoU < 0.5)")
    if small <= too_many * total:
        return line
    return line + ": " + anchor_advice(wh, anchor_sizes, too_many, min_size=min_size, max_size=max_size)


def anchor_advice(wh: np.ndarray, anchor_sizes: tuple[int, ...], too_many: float = 0.15, *, min_size: int,
                  max_size: int, native: bool = False) -> str:
    """What to train with when too many boxes ``wh`` are too small, in concrete sizes.

    Whole images resized to ``min_size``/``max_size``: ``smaller_anchors`` (or the input size at
    which the anchors given fit), else the input size at which the smallest suggested anchors
    (``lowest_anchors``) fit. ``native`` (``--crop``: crops keep the native resolution, their size
    is the input size, so no input size changes a box): smaller anchors are the only remedy.
    """
    anchor_sizes = tuple(anchor_sizes)
    sizes = smaller_anchors(wh, anchor_sizes, too_many)
    if native:
        if sizes:
            return f"train with --anchor-sizes {_sizes(sizes)}"
        low = lowest_anchors(anchor_sizes)
        left = count_too_small(wh, low)
        stay = (f"{left} of the {len(wh)} boxes ({100 * left / len(wh):.1f}%) are under {min(low) / math.sqrt(2):.1f} px "
                "at native resolution, too small even for them, and hard to learn")
        if low == anchor_sizes:
            return f"no smaller anchors are suggested (8 px at least): {stay}"
        return f"train with --anchor-sizes {_sizes(low)}, the smallest suggested ({stay})"
    if sizes:
        return f"train with --anchor-sizes {_sizes(sizes)} (or {larger_input(wh, anchor_sizes, too_many, min_size, max_size)})"
    low = lowest_anchors(anchor_sizes)
    return (f"train with {larger_input(wh, low, too_many, min_size, max_size)}"
            + (f" --anchor-sizes {_sizes(low)}" if low != anchor_sizes else ""))


def _sizes(sizes: tuple[int, ...]) -> str:
    return " ".join(map(str, sizes))


def larger_input(wh: np.ndarray, anchor_sizes: tuple[int, ...], too_many: float, min_size: int, max_size: int) -> str:
    """``--min-size M --max-size X``: the input size (``min_size``/``max_size`` scaled alike, rounded up
    to 32 px) at which at most ``too_many`` of the boxes ``wh`` (sizes at ``min_size``/``max_size``)
    are too small for ``anchor_sizes`` (``count_too_small``)."""
    side = np.sort(np.sqrt(wh.prod(axis=1)))
    k = int(too_many * len(side))  # this many may stay too small: the k-th smallest box must fit
    scale = max(1.0, min(anchor_sizes) / math.sqrt(2) / side[k] * 1.001) if k < len(side) else 1.0
    new_min = 32 * math.ceil(min_size * scale / 32)
    return f"--min-size {new_min} --max-size {max(new_min, 32 * math.ceil(max_size * scale / 32))}"


def too_small_for_anchors(records: list[Record], image_hw: list[tuple[int, int] | None], min_size: int, max_size: int,
                          anchor_sizes: tuple[int, ...], native: bool = False, too_many: float = 0.15,
                          ignore_as_objects: bool = False) -> str:
    """A training run's warning when more than ``too_many`` of the boxes of ``records`` are too
    small for the smallest anchor (``count_too_small``) at the scale the model sees them (resized
    to ``min_size``/``max_size``; ``native``: unresized, as crops, whose advice is anchors alone:
    ``anchor_advice``); "" otherwise.

    Args:
        image_hw: each record's image size (``DetectionDataset.image_sizes``; None: left out).
        ignore_as_objects: the run trains ignore regions as objects (``train_difficult``): counted.
    """
    if native:
        wh = np.concatenate([np.zeros((0, 2)), *(object_sizes(r, ignore_as_objects) for r in records)]).astype(np.float64)
    else:
        wh = model_box_sizes(records, {r.file: hw for r, hw in zip(records, image_hw) if hw}, min_size, max_size,
                             ignore_as_objects)
    wh = wh[(wh > 0).all(axis=1)]
    small = count_too_small(wh, anchor_sizes)
    if not len(wh) or small <= too_many * len(wh):
        return ""
    scale = "at native resolution (crops)" if native else f"at min_size {min_size}"
    advice = anchor_advice(wh, anchor_sizes, too_many, min_size=min_size, max_size=max_size, native=native)
    return (f"{small} of the {len(wh)} training boxes ({100 * small / len(wh):.1f}%) are too small for the smallest "
            f"anchor ({min(anchor_sizes)} px {scale}: IoU < 0.5, each gets at most its best anchor and is hard to "
            f"learn): {advice}; `retinanet check-data --out DIR` plots the sizes")


def anchor_candidates(anchor_sizes: tuple[int, ...]) -> list[tuple[int, ...]]:
    """``anchor_sizes`` scaled by each of ``ANCHOR_FACTORS`` while the smallest side stays >= ``SMALLEST_ANCHOR``."""
    out = []
    for factor in ANCHOR_FACTORS:
        sizes = tuple(round(s * factor) for s in anchor_sizes)
        if sizes[0] < SMALLEST_ANCHOR:
            break
        out.append(sizes)
    return out


def lowest_anchors(anchor_sizes: tuple[int, ...]) -> tuple[int, ...]:
    """The smallest anchor sizes suggested (``anchor_candidates``' last; ``anchor_sizes`` when none is smaller)."""
    return ([tuple(anchor_sizes)] + anchor_candidates(anchor_sizes))[-1]


def smaller_anchors(wh: np.ndarray, anchor_sizes: tuple[int, ...], too_many: float) -> tuple[int, ...] | None:
    """The largest of ``anchor_sizes`` scaled by 3/4, 1/2, 3/8 or 1/4 (smallest >= 8 px) that
    leaves at most ``too_many`` of the boxes ``wh`` too small; None when none does."""
    return next((sizes for sizes in anchor_candidates(anchor_sizes) if count_too_small(wh, sizes) <= too_many * len(wh)),
                None)


def crowd_hint(report: CheckReport, max_dets: int) -> str | None:
    """A ``crowded:`` line when images hold more objects (ignore regions left out) than ``max_dets``
    detections are kept per image (``train/eval/predict --max-dets``; the model's
    ``detections_per_img``, 300 by default): those images lose objects at the cap whatever the model
    finds. None when no image does. The suggested cap is twice the most objects of an image, in
    hundreds (room for the detections that are not objects)."""
    over, most, where = {}, 0, ""
    for split, records in report.records.items():
        counts = [(int((~np.asarray(r.ignore, dtype=bool)).sum()), r.file) for r in records]
        over[split] = sum(n > max_dets for n, _ in counts)
        for n, file in counts:
            if n > most:
                most, where = n, str(file)
    if most <= max_dets:
        return None
    splits = ", ".join(f"{n} {split}" for split, n in over.items() if n)
    cap = -(-2 * most // 100) * 100
    return (f"crowded: {splits} image(s) hold more objects than the {max_dets} detections kept per image (--max-dets), "
            f"up to {most} in {where}: train/eval/predict --max-dets {cap} (with --tile the cap is per tile in eval, "
            f"per tile and per image in predict)")


def tile_hint(report: CheckReport, min_size: int, max_size: int, anchor_sizes: tuple[int, ...],
              too_many: float = 0.15) -> str | None:
    """A line suggesting native-resolution crops and tiles (``train --crop``, ``predict/eval --tile``)
    when more than ``too_many`` of the boxes are too small for the smallest anchor at the model's
    input size (``count_too_small``) and the images' downscaling is to blame: for the anchor sizes
    given or smaller ones (``anchor_candidates``: objects too small for 32 px anchors even natively
    may fit 8 px ones there), the resize leaves more than ``too_many`` too small and native
    resolution (scale 1, what a crop or a tile of side ``min_size`` gives) at most half as many.
    The train command carries the anchor sizes judged at native resolution (``smaller_anchors``,
    else the smallest suggested, with the share they still leave). None when there is nothing to
    suggest (few small boxes, or boxes as small in the original pixels: then ``anchor_hint``'s
    advice is the remedy).
    """
    resized = np.concatenate([np.zeros((0, 2)), *split_box_sizes(report, min_size, max_size).values()])
    native = [object_sizes(r) for recs in report.records.values() for r in recs]
    native = np.concatenate([np.zeros((0, 2)), *native]).astype(np.float64)
    native = native[(native > 0).all(axis=1)]
    total = len(resized)
    small_resized, small_native = count_too_small(resized, anchor_sizes), count_too_small(native, anchor_sizes)
    if not total or small_resized <= too_many * total:
        return None
    helps = [(count_too_small(resized, a), count_too_small(native, a))
             for a in (tuple(anchor_sizes), *anchor_candidates(anchor_sizes))]
    if not any(r > too_many * total and n <= r / 2 for r, n in helps):
        return None
    px = max(32, 32 * (min_size // 32))
    # the anchors for the boxes still too small are judged at native resolution, the scale crops and tiles have
    sizes, there = None, ""
    if small_native > too_many * total:
        sizes = smaller_anchors(native, anchor_sizes, too_many)
        even = "" if sizes else " even"
        sizes = sizes or lowest_anchors(anchor_sizes)
        left = count_too_small(native, sizes)
        there = f", {left} ({100 * left / total:.1f}%) there{even} with --anchor-sizes {_sizes(sizes)}"
        if even:
            there += f" (the smallest suggested: objects under {min(sizes) / math.sqrt(2):.1f} px stay hard to learn)"
        if sizes == tuple(anchor_sizes):
            sizes = None
    anchors = f" --anchor-sizes {_sizes(sizes)}" if sizes else ""
    return (f"tiling: {small_resized} of {total} boxes ({100 * small_resized / total:.1f}%) are too small for the smallest "
            f"anchor once the images are resized to min_size {min_size}, {small_native} ({100 * small_native / total:.1f}%) "
            f"at native resolution{there}: train on native-resolution crops and predict on tiles: train --crop {px}{anchors}, "
            f"predict/eval --tile {px}")


def box_sizes_figure(report: CheckReport, min_size: int, max_size: int, anchor_sizes: tuple[int, ...]) -> Figure:
    """Box width x height at the model's input scale (log-log), per split, with the anchor shapes;
    the title says how many boxes are too small for the smallest anchor (``count_too_small``)."""
    fig = Figure(figsize=(7.0, 6.0), layout="constrained")
    ax = fig.subplots()
    smallest = float(min(anchor_sizes))
    per_split = split_box_sizes(report, min_size, max_size)
    small = sum(count_too_small(wh, anchor_sizes) for wh in per_split.values())
    total = sum(len(wh) for wh in per_split.values())
    for k, (split, wh) in enumerate(per_split.items()):
        ax.scatter(wh[:, 0], wh[:, 1], s=6, alpha=0.4, color=_SPLIT_COLORS[k % 4], label=f"{split} boxes ({len(wh)})", linewidths=0)
    anchors = anchor_shapes(anchor_sizes)
    ax.scatter(anchors[:, 0], anchors[:, 1], marker="x", s=40, color="black", label="anchors (3 scales x 3 ratios per size)")
    edge = smallest / math.sqrt(2)
    ax.plot([1, edge, edge], [edge, edge, 1], ls="--", lw=1, color="tab:red",
            label=f"smallest anchor side / sqrt(2) ({edge:.1f} px): IoU < 0.5 inside")
    ax.set_xscale("log")
    ax.set_yscale("log")
    hi = max([2.0 * max(anchor_sizes)] + ([float(ax.dataLim.x1), float(ax.dataLim.y1)] if total else []))
    ax.set_xlim(1, hi)
    ax.set_ylim(1, hi)
    ax.set_xlabel(f"box width, pixels of the model input (min_size {min_size}, max_size {max_size})")
    ax.set_ylabel("box height, model input pixels")
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="upper left", fontsize=8)
    share = f"{small} of {total} boxes ({100 * small / total:.1f}%)" if total else "no boxes"
    fig.suptitle(f"Box sizes against the anchors: {share} too small for the smallest anchor\n"
                 f"(sqrt(w*h) < {smallest:g} / sqrt(2) px at min_size {min_size}: IoU < 0.5)", fontsize=10)
    return fig


def image_sizes_figure(report: CheckReport) -> Figure:
    """Image width x height (decoded, EXIF rule applied), a point per distinct size, area by count."""
    per_size: Counter = Counter()
    for recs in report.records.values():
        for r in recs:
            hw = report.image_hw.get(r.file) or r.size
            if hw is not None:
                per_size[(int(hw[1]), int(hw[0]))] += 1
    fig = Figure(figsize=(6.5, 5.0), layout="constrained")
    ax = fig.subplots()
    if per_size:
        wh = np.array(list(per_size), dtype=np.float64)
        counts = np.array(list(per_size.values()), dtype=np.float64)
        ax.scatter(wh[:, 0], wh[:, 1], s=20 + 400 * counts / counts.max(), alpha=0.5, color="tab:blue", linewidths=0)
        for (w, h), n in per_size.most_common(3):
            ax.annotate(f"{w}x{h}: {n}", (w, h), textcoords="offset points", xytext=(6, 6), fontsize=8)
        top = max(float(wh.max()) * 1.3, 1.0)  # room for the labels
        ax.set_xlim(0, top)
        ax.set_ylim(0, top)
    else:
        ax.text(0.5, 0.5, "no decoded image", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("image width, pixels")
    ax.set_ylabel("image height, pixels")
    ax.grid(alpha=0.3)
    n = sum(per_size.values())
    fig.suptitle(f"Image sizes: {n} images, {len(per_size)} distinct size(s) (marker area ~ count)", fontsize=10)
    return fig


def write_check_outputs(report: CheckReport, out: str | Path, *, min_size: int, max_size: int,
                        anchor_sizes: tuple[int, ...]) -> list[Path]:
    """``report.txt`` (``report.summary(full=True)``: the per-class tables whole), ``DUPLICATES_FILE``
    when images share their content, and the PNGs ``instances_per_class.png``, ``box_sizes.png``,
    ``image_sizes.png`` in ``out``; returns their paths.

    Args:
        min_size, max_size: the model's resize (box sizes are shown as the model sees them).
        anchor_sizes: the model's base anchor size per FPN level (``ModelConfig.anchor_sizes``).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "report.txt"]
    write_atomic(paths[0], report.summary(full=True) + "\n")
    if report.same_content:
        paths.append(out / DUPLICATES_FILE)
        write_atomic(paths[-1], same_content_text(report.same_content))
    else:  # a list from an earlier check of this folder would be taken for this one's
        (out / DUPLICATES_FILE).unlink(missing_ok=True)
    if report.class_map is None:  # the dataset could not be read: nothing to draw
        return paths
    figures = {"instances_per_class.png": class_counts_figure(report),
               "box_sizes.png": box_sizes_figure(report, min_size, max_size, anchor_sizes),
               "image_sizes.png": image_sizes_figure(report)}
    for name, fig in figures.items():
        write_atomic(out / name, lambda f, fig=fig: fig.savefig(f, format="png", dpi=100))
        paths.append(out / name)
    return paths
