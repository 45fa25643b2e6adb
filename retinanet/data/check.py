"""``check_dataset``: read a dataset as training would, decode every image, report what is wrong.

Errors (``ok`` is False; ``retinanet check-data`` exits 1): anything that stops
``build_datasets`` (missing or malformed files, unknown classes, empty split files) and images that
cannot be decoded. Warnings: boxes clipped to the image or dropped for having no area, an XML
``<size>`` that differs from the decoded image (after the EXIF rule of ``retinanet.data.images``),
duplicate images (same bytes), the same image in both splits, images with no objects.
"""

from __future__ import annotations

import hashlib
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from retinanet.config import DataConfig
from retinanet.data.build import read_records
from retinanet.data.classes import ClassMap
from retinanet.data.images import DEFAULT_MAX_PIXELS, describe_orientation, open_image
from retinanet.data.records import Record
from retinanet.errors import DataError

SMALL, MEDIUM = 32**2, 96**2  # COCO's area thresholds, pixels of the original image


@dataclass
class SplitStats:
    """Counts for one split (original image frame)."""

    images: int = 0
    objects: int = 0
    ignored: int = 0  # difficult / crowd objects, included in ``objects``
    empty_images: int = 0
    per_class: Counter = field(default_factory=Counter)  # class name -> objects
    sizes: Counter = field(default_factory=Counter)  # "small" | "medium" | "large" -> objects


@dataclass
class CheckReport:
    """What ``check_dataset`` found; ``summary()`` is the printable text."""

    root: str
    format: str
    class_map: ClassMap | None
    splits: dict[str, SplitStats] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing found would break training."""
        return not self.errors and bool(self.splits.get("train") and self.splits["train"].images)

    def summary(self) -> str:
        lines = [f"dataset {self.root} ({self.format})"]
        if self.class_map is not None:
            lines.append(f"classes ({len(self.class_map)}, num_classes={self.class_map.num_classes}, {self.class_map.source}): "
                         + ", ".join(f"{n}={i}" for n, i in self.class_map.to_dict().items()))
        for name, s in self.splits.items():
            lines.append(f"{name}: {s.images} images, {s.objects} objects ({s.ignored} difficult/crowd), {s.empty_images} images with no objects")
            lines.append("  boxes: " + ", ".join(f"{k} {s.sizes[k]}" for k in ("small", "medium", "large"))
                         + "  (COCO areas: small < 32^2, medium < 96^2, large >= 96^2)")
            width = max((len(n) for n in s.per_class), default=0)
            for cname, count in sorted(s.per_class.items(), key=lambda kv: (-kv[1], kv[0])):
                lines.append(f"  {cname:<{width}} {count}")
        for title, items in (("errors", self.errors), ("warnings", self.warnings)):
            lines.append(f"{len(items)} {title}" + (":" if items else ""))
            lines += [f"  - {m}" for m in items]
        lines.append("OK: the dataset can be trained on" if self.ok else "NOT OK: fix the errors above before training")
        return "\n".join(lines)

    __str__ = summary


def split_stats(records: list[Record], class_map: ClassMap) -> SplitStats:
    """Counts of one split's records."""
    s = SplitStats(images=len(records))
    for r in records:
        s.objects += len(r.labels)
        s.ignored += int(r.ignore.sum())
        s.empty_images += int(len(r.labels) == 0)
        s.per_class.update(class_map.name_of(int(c)) for c in r.labels)
        area = (r.boxes[:, 2] - r.boxes[:, 0]) * (r.boxes[:, 3] - r.boxes[:, 1])
        s.sizes.update("small" if a < SMALL else "medium" if a < MEDIUM else "large" for a in area.tolist())
    return s


def decode_check(records: dict[str, list[Record]], progress: bool = True, *, exif: str = "auto",
                 max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tuple[list[str], list[str]]:
    """Decode every image once: corrupt or too large files (errors), size mismatches, duplicates,
    split overlap, EXIF-oriented images and the frame used for each (warnings)."""
    errors, warns = [], []
    by_hash: dict[str, list[tuple[str, str]]] = {}
    todo = [(split, r) for split, recs in records.items() for r in recs]
    seen: set[str] = set()
    for split, r in tqdm(todo, desc="decoding images", unit="img", file=sys.stderr, disable=not progress):
        try:
            data = Path(r.file).read_bytes()
            if r.file not in seen:
                opened = open_image(r.file, r.size, exif=exif, max_pixels=max_pixels)
                img = opened.image
                if opened.orientation != 1:
                    warns.append(f"{r.file}: EXIF orientation {describe_orientation(opened.orientation)}; read in the "
                                 f"{opened.frame} frame (exif={exif})" + (f": {opened.note}" if opened.note else ""))
                if r.size is not None and (img.height, img.width) != tuple(r.size):
                    warns.append(f"{r.source}: <size> says {r.size[1]}x{r.size[0]} (WxH) but {r.file} is {img.width}x{img.height}; boxes are clipped to the image")
        except (OSError, ValueError, SyntaxError) as err:
            errors.append(f"{r.file}: cannot decode image ({type(err).__name__}: {err})")
            continue
        seen.add(r.file)
        by_hash.setdefault(hashlib.sha1(data).hexdigest(), []).append((split, r.file))
    for entries in by_hash.values():
        files = sorted({f for _, f in entries})
        splits = sorted({s for s, _ in entries})
        if len(files) > 1:
            warns.append(f"duplicate images (same content): {', '.join(files)}")
        if len(splits) > 1:
            warns.append(f"the same image is in splits {' and '.join(splits)}: {', '.join(files)}")
    return errors, warns


def check_dataset(cfg: DataConfig, *, progress: bool = True) -> CheckReport:
    """Read ``cfg``'s dataset as ``build_datasets`` does, decode every image, and report.

    Returns:
        ``CheckReport`` (``ok``, ``summary()``). Problems never raise, except a dataset
        that cannot be located or a broken class map file (``RetinaNetError``).
    """
    try:
        records, class_map, root, fmt, problems, warns = read_records(cfg)
    except DataError as err:
        return CheckReport(str(cfg.root), cfg.format or "?", None, errors=list(err.problems))
    report = CheckReport(str(root), fmt, class_map, errors=list(problems), warnings=list(warns))
    for split, recs in records.items():
        report.splits[split] = split_stats(recs, class_map)
        empty = [Path(r.file).name for r in recs if len(r.labels) == 0]
        if empty:
            report.warnings.append(f"{split}: {len(empty)} image(s) with no objects: {', '.join(empty[:10])}{' ...' if len(empty) > 10 else ''}")
    errors, more = decode_check(records, progress, exif=cfg.exif, max_pixels=cfg.max_image_pixels)
    report.errors += errors
    report.warnings += more
    return report
