"""``build_datasets`` and ``build_loader``: from a ``DataConfig`` to batches.

Dataset kinds (``cfg.format``, detected from ``cfg.root`` when None):

- ``None`` root: the embedded synthetic dataset (``cfg.synthetic_*`` sizes) in
  ``default_synthetic_root(...)``, written on first use by ``ensure_synthetic``.
- ``coco``: ``root`` is an ``instances_*.json`` file (see ``retinanet.data.coco``).
- ``voc``: ``root`` is a VOCdevkit parent, a VOCdevkit folder, or a VOC20xx folder.
- ``voc-flat``: any other folder: images + XML matched by stem (see ``retinanet.data.voc_layout``).
- ``yolo``: ``root`` is an ultralytics ``data.yaml`` (or a folder holding ``data.yaml``; see
  ``retinanet.data.yolo``); ``train_split`` / ``val_split`` name its keys.

Checks at build time: every XML / JSON is parsed and validated (classes, boxes, split files) and
every image file must exist; decoding is left to the workers (and ``retinanet check-data``, which
decodes everything). All problems are reported together in one ``DataError``; with ``skip_bad``
the bad items are left out instead, each reported as a warning.

``splits`` (default both) limits what is read: evaluation reads only ``("val",)``, so a dataset
without a training split (or a COCO val JSON alone) can be evaluated.
"""

from __future__ import annotations

import functools
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from retinanet.config import DataConfig
from retinanet.data.classes import ClassMap
from retinanet.data.coco import coco_class_map, coco_records, read_coco_json, val_json_path
from retinanet.data.collate import collate
from retinanet.data.dataset import DetectionDataset
from retinanet.data.images import ImageReading, check_exif_policy
from retinanet.data.progress import ReadProgress, no_progress
from retinanet.data.records import Record
from retinanet.data.sampler import GroupedBatchSampler, aspect_groups, dist_info
from retinanet.data.synthetic import ensure_synthetic
from retinanet.data.transforms import ItemTransform
from retinanet.data.voc import ImageSlot, stem_index, to_record
from retinanet.data.workers import QuietWorkersLoader
from retinanet.data.voc_layout import (
    flat_folders, flat_split, is_voc_standard, parse_all, split_folders, unannotated_images, voc_flat_pairs,
    voc_standard_pairs, xml_files,
)
from retinanet.data.yolo import yolo_records
from retinanet.errors import DataError, RetinaNetError
from retinanet.geometry import padded_size


@dataclass
class Datasets:
    """``build_datasets``'s result.

    Attributes:
        train, val: ``DetectionDataset`` (val may be empty for a flat export with val_fraction 0).
        class_map: the ``ClassMap`` used (the trainer saves it next to the run's outputs).
        root: the dataset root actually read; format: "voc" | "voc-flat" | "coco" | "yolo".
        skipped: problems of the items left out (``skip_bad``); warnings: dropped boxes etc.
    """

    train: DetectionDataset
    val: DetectionDataset
    class_map: ClassMap
    root: Path
    format: str
    skipped: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def notes(self) -> list[str]:
        """What reading left out or changed, a line each: ``skipped: ...`` then ``warning: ...``."""
        return [f"skipped: {m}" for m in self.skipped] + [f"warning: {m}" for m in self.warnings]


def detect_format(root: Path) -> str:
    """"coco" for a .json file, "yolo" for a .yaml/.yml file, "voc" for a standard layout, "yolo" for
    another folder with a data.yaml, "voc-flat" for any other folder."""
    if root.suffix.lower() == ".json":
        return "coco"
    if root.suffix.lower() in (".yaml", ".yml"):
        return "yolo"
    if not root.exists():
        raise DataError([f"{root}: dataset not found"])
    if not root.is_dir():
        raise DataError([f"{root}: not a dataset: a file that is neither a COCO annotation .json nor a YOLO data.yaml "
                         "(a VOC dataset is a folder: a VOCdevkit root, or images with their XML files)"])
    if is_voc_standard(root):
        return "voc"
    return "yolo" if (root / "data.yaml").is_file() else "voc-flat"


def resolve_root(cfg: DataConfig) -> tuple[Path, str]:
    """(dataset root, format); ``root=None`` writes/uses the synthetic dataset."""
    if cfg.root is None:
        return ensure_synthetic(num_train=cfg.synthetic_train, num_val=cfg.synthetic_val, image_size=cfg.synthetic_size), "voc"
    root = Path(cfg.root).expanduser()
    fmt = cfg.format or detect_format(root)
    if fmt not in ("voc", "voc-flat", "coco", "yolo"):
        raise RetinaNetError(f"unknown dataset format {fmt!r} (voc, voc-flat, coco or yolo)")
    if not root.exists():
        raise DataError([f"{root}: dataset not found"])
    if fmt in ("voc", "voc-flat") and not root.is_dir():
        raise DataError([f"{root}: --format {fmt} reads a folder (a VOCdevkit root, or images with their XML files), "
                         "and this is a file"])
    return root, fmt


def _class_map(cfg: DataConfig, names: list[str], given: ClassMap | None = None, problems: list[str] = (),
               warnings: list[str] | None = None) -> ClassMap:
    if given is not None:
        return given
    if cfg.classes:
        return ClassMap.load(cfg.classes)
    if not names:  # when every annotation was bad, those problems are the news (not a class map to give)
        if problems:
            raise DataError(problems, summary=f"{len(problems)} problem(s) in the dataset, and no class to train")
        raise DataError(["no objects found in the annotations: cannot discover the classes (give --classes)"])
    return ClassMap.discover(names, warnings)


SPLITS = ("train", "val")


def _split_folder_pairs(root: Path, folder: Path | None, name: str, train: Path, problems: list[str], warns: list[str],
                       ) -> list[tuple[Path, ImageSlot]]:
    """Every annotated image of one split folder of a flat export (``split_folders``); ``train``:
    the training split's folder (named in the problem of a split without a folder)."""
    if folder is None:
        there = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name != "splits")
        problems.append(f"{root}: no folder for the split {name!r}{' (valid/ or validation/ also looked for)' if name == 'val' else ''}; "
                        f"its folders: {', '.join(there)}. Name it with --train-split/--val-split, or give --data {train} "
                        "to draw a validation split from that folder")
        return []
    img_dir, xml_dir = flat_folders(folder)
    listed = stem_index(img_dir), xml_files(xml_dir)
    warns += unannotated_images(folder, listed[1])
    return voc_flat_pairs(folder, sorted(listed[1]), listed)


def _voc_records(cfg: DataConfig, root: Path, fmt: str, problems: list[str], warns: list[str],
                 splits: tuple[str, ...] = SPLITS, class_map: ClassMap | None = None, progress: ReadProgress = no_progress,
                 ) -> tuple[dict[str, list[Record]], ClassMap]:
    if fmt == "voc":
        names = {"train": cfg.train_split, "val": cfg.val_split}
        pairs = {s: voc_standard_pairs(root, cfg.years, names[s], problems, warns) for s in splits}
    elif (folders := None if cfg.val_split.endswith(".txt") else
          split_folders(root, {"train": cfg.train_split, "val": cfg.val_split})) is not None:
        names = {"train": cfg.train_split, "val": cfg.val_split}
        pairs = {s: _split_folder_pairs(root, folders[s], names[s], folders["train"], problems, warns) for s in splits}
    else:
        val_list = Path(cfg.val_split) if cfg.val_split.endswith(".txt") else None
        img_dir, xml_dir = flat_folders(root)
        listed = stem_index(img_dir), xml_files(xml_dir)  # each folder listed once
        split, split_problems, split_warnings = flat_split(root, cfg.val_fraction, cfg.split_seed, val_list=val_list,
                                                           xmls=listed[1])
        problems += split_problems
        warns += split_warnings
        pairs = {s: voc_flat_pairs(root, split[s], listed) for s in splits}
        warns += unannotated_images(root, listed[1])
        if (root / "predictions.json").is_file():  # `predict --voc-xml` output: its images/ have the boxes drawn in
            warns.append(f"{root} looks like the output of retinanet predict: its images have the detections drawn "
                         "in; train on the original images with the corrected XML")
    parsed = {s: parse_all(p, problems, functools.partial(progress, s)) for s, p in pairs.items()}  # the slow part
    class_map = _class_map(cfg, [n for anns in parsed.values() for a, _, _ in anns for n in a.names], class_map, problems, warns)
    records = {}
    for s, anns in parsed.items():
        out = [to_record(a, img, xml, i, class_map, problems, warns) for i, (a, xml, img) in enumerate(anns)]
        records[s] = [r for r in out if r is not None]
    return records, class_map


def coco_files(cfg: DataConfig, root: Path, splits: tuple[str, ...] = SPLITS) -> dict[str, Path]:
    """The annotation file of each split. Reading val alone, a ``root`` whose name does not
    contain the training split word (``instances_val2017.json``) is itself the val file."""
    val = val_json_path(root, cfg.train_split, cfg.val_split)
    train_word = re.sub(r"\d+$", "", cfg.train_split) or cfg.train_split
    if "train" not in splits and not cfg.val_split.endswith(".json") and train_word not in root.name:
        val = root
    return {s: p for s, p in (("train", root), ("val", val)) if s in splits}


def _coco_records(cfg: DataConfig, root: Path, problems: list[str], warns: list[str],
                  splits: tuple[str, ...] = SPLITS, class_map: ClassMap | None = None, progress: ReadProgress = no_progress,
                  ) -> tuple[dict[str, list[Record]], ClassMap]:
    files = coco_files(cfg, root, splits)
    data = {}
    for s, p in files.items():  # train first: its problems come before the val file's name
        if s == "val" and p != root and not cfg.val_split.endswith(".json") and not p.exists():
            raise DataError([f"{p}: COCO annotation file not found (the validation file is looked for by this name "
                             "beside the training file; give it with --val-split PATH.json)"])
        data[s] = read_coco_json(p)
    first = splits[0]
    if class_map is None:
        class_map = ClassMap.load(cfg.classes) if cfg.classes else coco_class_map(data[first], files[first])
    return {s: coco_records(files[s], data[s], class_map, problems, warns, functools.partial(progress, s))
            for s in files}, class_map


def read_records(cfg: DataConfig, splits: tuple[str, ...] = SPLITS, class_map: ClassMap | None = None,
                 progress: ReadProgress = no_progress,
                 ) -> tuple[dict[str, list[Record]], ClassMap, Path, str, list[str], list[str]]:
    """Parse and validate the annotations of ``splits`` (both by default; ``("val",)`` to evaluate).

    ``class_map`` (when given) is used instead of ``cfg.classes`` or the discovered classes.
    ``progress`` is called as ``progress(split, done, total)`` as each format's readers go through
    a split's items (``retinanet.data.progress``: the one place every reader reports to; readers
    never print).

    Returns:
        (records {split: [Record]} for each of ``splits``, class map, root, format, problems, warnings).
    """
    if not splits or set(splits) - set(SPLITS):
        raise ValueError(f"splits must name 'train' and/or 'val', not {splits!r}")
    splits = tuple(s for s in SPLITS if s in splits)  # canonical order: the class map comes from the first
    check_exif_policy(cfg.exif)
    root, fmt = resolve_root(cfg)
    problems: list[str] = []
    warns: list[str] = []
    if fmt == "coco":
        records, class_map = _coco_records(cfg, root, problems, warns, splits, class_map, progress)
    elif fmt == "yolo":
        keys = {"train": cfg.train_split, "val": cfg.val_split}
        if class_map is None and cfg.classes:
            class_map = ClassMap.load(cfg.classes)
        reading = ImageReading(cfg.exif, cfg.max_image_pixels)
        records, class_map = yolo_records(root, {s: keys[s] for s in splits}, class_map, problems, warns, reading, progress)
    else:
        records, class_map = _voc_records(cfg, root, fmt, problems, warns, splits, class_map, progress)
    return records, class_map, root, fmt, problems, warns


def build_datasets(cfg: DataConfig, *, min_size: int, max_size: int, splits: tuple[str, ...] = SPLITS,
                   class_map: ClassMap | None = None, resize_val: bool = True, warn: bool = True,
                   progress: ReadProgress = no_progress) -> Datasets:
    """Read, validate and wrap the training and validation splits of ``cfg``.

    Args:
        cfg: the data options.
        min_size, max_size: the model's input size; items come resized to it.
        splits: the splits to read (``("val",)`` for evaluation); a split not read is an empty dataset.
        class_map: the class ids to read the annotations with (a checkpoint's, for evaluation);
            None = ``cfg.classes`` when given, else discovered from the annotations.
        resize_val: False = validation items at native resolution (no resize; for tiled evaluation).
        warn: issue each item left out (``skip_bad``) and each warning as a ``UserWarning``; False:
            the caller reports ``Datasets.notes()`` itself (the trainer writes them to train.log).
        progress: told how reading the annotations goes (``read_records``); a ``ReadingReport`` shows it.

    Returns:
        ``Datasets(train, val, class_map, ...)``.

    Raises:
        DataError: every problem found (unless ``cfg.skip_bad``), or an empty training split (when read).
    """
    records, class_map, root, fmt, problems, warns = read_records(cfg, splits, class_map, progress)
    if problems and not cfg.skip_bad:
        raise DataError(problems, summary=f"{len(problems)} problem(s) in the dataset {root} (fix them, or --skip-bad to leave those items out)")
    for msg in [f"skipped: {m}" for m in problems] + warns if warn else ():
        warnings.warn(msg, stacklevel=2)
    if "train" in records and not records["train"]:
        raise DataError([f"{root}: the training split {cfg.train_split!r} has no usable images"])
    aug = {"train_sizes": cfg.train_sizes, "hflip_prob": cfg.hflip_prob, "photometric": cfg.photometric, "iou_crop": cfg.iou_crop,
           "crop": cfg.crop}
    train_tf = ItemTransform(min_size, max_size, train=True, **aug)
    val_tf = ItemTransform(min_size, max_size, train=False, resize=resize_val)
    images = {"skip_bad": cfg.skip_bad, "exif": cfg.exif, "max_pixels": cfg.max_image_pixels}
    return Datasets(
        train=DetectionDataset(records.get("train", []), train_tf, ignore_as_objects=cfg.train_difficult, **images),
        val=DetectionDataset(records.get("val", []), val_tf, **images),
        class_map=class_map, root=root, format=fmt, skipped=problems, warnings=warns,
    )


class EpochSeededLoader(QuietWorkersLoader):
    """A DataLoader whose randomness is a function of (seed, epoch of its batch sampler).

    A training loader's batch sampler gives ``(index, seed, epoch)`` keys (``keys=True``), so each
    item's augmentation depends on (seed, epoch, index) alone: the same batches with any number
    of workers, workers that live across epochs (``persistent_workers``: started once, not each
    epoch), and after a resume (the batch sampler skips the batches done). The loader's
    generator, which seeds the worker processes, is re-seeded from (seed, epoch) when they start.
    """

    def __init__(self, *args, seed: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.seed = seed

    def __iter__(self):
        self.generator.manual_seed(self.seed * 1_000_003 + getattr(self.batch_sampler, "epoch", 0))
        return super().__iter__()


def eval_groups(dataset: DetectionDataset) -> list[int]:
    """Group id per item for evaluation: one per padded input size the model gives the image
    (``geometry.padded_size`` at the dataset's resize; images of unknown size form one group), in
    order of first appearance. The model runs a batch as one pass per padded size, so batches of
    one group run in one pass."""
    t = dataset.transform
    if not hasattr(t, "min_size"):  # a custom transform: sizes unknown, no grouping
        return [0] * len(dataset)
    keys: dict[tuple[int, int] | None, int] = {}
    return [keys.setdefault(padded_size(*hw, t.min_size, t.max_size, t.resize) if hw else None, len(keys))
            for hw in dataset.image_sizes()]


def build_loader(dataset: DetectionDataset, *, batch_size: int, workers: int, train: bool, distributed: bool = False,
                 seed: int = 0, aspect_grouping: bool = True, pin_memory: bool = False,
                 keep_workers: bool | None = None) -> DataLoader:
    """DataLoader yielding ``(images: list[Tensor [3, H, W] uint8], targets: list[dict])``.

    Args:
        dataset: from ``build_datasets``.
        batch_size: images per batch and process.
        workers: loader processes (0 = load in the main process).
        train: shuffle ((seed, epoch)-deterministic; call ``loader.batch_sampler.set_epoch(e)``);
            False = evaluation order (every item once, grouped by padded size).
        distributed: shard across the ranks of the initialised process group (training: padded
            to equal shards; evaluation: disjoint shards, no duplicates).
        seed: shuffling and augmentation seed (training: item i of epoch e is augmented with
            draws seeded by (seed, e, i), whatever ``workers`` is).
        aspect_grouping: training: batch images of one aspect group (w/h < 1 vs >= 1) together.
            Evaluation always batches images of one padded input size together (``eval_groups``):
            the order of evaluation changes, never its results.
        pin_memory: batches in page-locked memory (for a CUDA device: ``non_blocking`` copies are
            then asynchronous).
        keep_workers: the worker processes live across iterations (``persistent_workers``: started
            at the first, reused by every later one, ended by ``loader.close()``): with ``spawn``,
            as on macOS and Windows, a start costs seconds; idle, they keep their memory. None: a
            training loader keeps them, an evaluation loader (one pass: ``retinanet eval``) does
            not; a training run's per-epoch evaluation gives True. No effect with ``workers`` 0.
    """
    rank, world = 0, 1
    if distributed:
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            raise RetinaNetError("build_loader(distributed=True) needs an initialised torch.distributed process group")
        rank, world = dist_info()
    if not train:
        groups = eval_groups(dataset)
    else:
        groups = aspect_groups(dataset.aspect_ratios()) if aspect_grouping else [0] * len(dataset)
    sampler = GroupedBatchSampler(groups, batch_size, shuffle=train, seed=seed, rank=rank, world_size=world, keys=train)
    keep = train if keep_workers is None else keep_workers
    return EpochSeededLoader(
        dataset, batch_sampler=sampler, num_workers=workers, collate_fn=collate, seed=seed,
        generator=torch.Generator(), persistent_workers=keep and workers > 0, pin_memory=pin_memory,
    )
