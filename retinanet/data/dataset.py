"""``DetectionDataset``: records -> ``(image, target)`` items as the model and evaluator expect."""

from __future__ import annotations

import contextlib
import random
import warnings
from collections.abc import Callable, Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from retinanet.data.images import DEFAULT_MAX_PIXELS, open_image, oriented_size, pil_to_tensor
from retinanet.data.records import Record, RecordList, clip_said
from retinanet.errors import DataError


class BadImageError(DataError):
    """An image that cannot be decoded, met while loading (``DataError`` with one problem).

    Accepts a plain message too, because the DataLoader re-raises a worker's exception in the
    main process as ``type(err)(text)``, the text holding the worker's traceback: the problems are
    taken back out of it (the user gets the message, not PyTorch's worker traceback).
    """

    def __init__(self, problems: list[str] | str, summary: str | None = None):
        if isinstance(problems, str):
            problems = _problems_in_worker_text(problems) or [problems]
        super().__init__(problems, summary or "a bad image was met while loading data (use --skip-bad to skip such images)")


def _problems_in_worker_text(text: str) -> list[str] | None:
    """The ``  - problem`` lines of the ``BadImageError`` message at the end of a DataLoader
    worker's "Caught ... Original Traceback ..." text; None when ``text`` is not one."""
    marker = f"{BadImageError.__name__}: "
    if "Original Traceback" not in text or marker not in text:
        return None
    return [line[4:] for line in text.rsplit(marker, 1)[1].splitlines() if line.startswith("  - ")] or None


def item_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 63-bit seed for one item's augmentation in one epoch."""
    words = [v & 0xFFFF_FFFF_FFFF_FFFF for v in (int(seed), int(epoch), int(index))]
    return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0] >> np.uint64(1))


@contextlib.contextmanager
def seeded_rng(seed: int) -> Iterator[None]:
    """torch's CPU generator and Python's ``random`` seeded with ``seed`` inside, both restored after."""
    py_state = random.getstate()
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)  # the CPU one only (torch.manual_seed also seeds CUDA: 90x slower)
        random.seed(seed)
        try:
            yield
        finally:
            random.setstate(py_state)


ITEM_WARNINGS_SHOWN = 5  # per kind of item warning and process; the rest in one line (check-data lists them all)


class DetectionDataset(Dataset):
    """Items ``(image uint8 [3, H, W] resized for the model, target dict)``.

    target: ``boxes`` [N, 4] float32 xyxy in the resized frame, ``labels`` [N] int64 (>= 1),
    ``ignore`` [N] bool, ``image_id`` int, ``orig_size`` (H0, W0), ``size`` (H, W), ``file`` str.

    Args:
        records: the split's annotated images.
        transform: ``ItemTransform`` (augmentation + resize).
        ignore_as_objects: clear the ``ignore`` flags, so that VOC difficult / COCO crowd objects
            are trained as ordinary objects (``train_difficult``). Otherwise they stay in the
            target flagged, as ignore regions for the loss and the evaluation.
        skip_bad: an image that cannot be decoded is replaced by the next good one, with a warning
            naming the file (counted in ``self.bad``, per worker process, and listed in the
            replacement's ``target["skipped"]``, which reaches the process that runs the loader);
            otherwise ``DataError``.
        exif, max_pixels: the EXIF orientation rule and pixel limit (``retinanet.data.images.open_image``).

    Augmentation draws come from the global RNGs (torch, ``random``) unless ``set_epoch(seed,
    epoch)`` was called: then item ``i`` draws from generators seeded with ``item_seed(seed, epoch,
    i)``, so an epoch's images are the same whichever loader process reads them, with any number
    of workers, and after a resume (the training loader calls it each epoch).
    """

    def __init__(self, records: list[Record], transform: Callable, *, ignore_as_objects: bool = False, skip_bad: bool = False,
                 exif: str = "auto", max_pixels: int | None = DEFAULT_MAX_PIXELS):
        self.records = records if isinstance(records, RecordList) else RecordList(records)  # one buffer: see RecordList
        self.transform = transform
        self.ignore_as_objects = ignore_as_objects
        self.skip_bad = skip_bad
        self.exif, self.max_pixels = exif, max_pixels
        self.bad: list[str] = []
        self.draws: tuple[int, int] | None = None  # (seed, epoch) of set_epoch
        self._sizes: list[tuple[int, int] | None] | None = None  # image_sizes, once read
        self._warned: dict[str, int] = {}  # items warned about, by kind (in this process: see _warn)

    def _warn(self, kind: str, message: str) -> None:
        """A warning about one item, shown for the first ``ITEM_WARNINGS_SHOWN`` items of its
        ``kind`` in this process; then one line that more are not shown (a dataset of phone photos
        would otherwise print one per image, in every loader process)."""
        n = self._warned[kind] = self._warned.get(kind, 0) + 1
        if n <= ITEM_WARNINGS_SHOWN:
            warnings.warn(message, stacklevel=2)
        elif n == ITEM_WARNINGS_SHOWN + 1:
            warnings.warn(f"more items with {kind} warnings like the above: not shown from this loader process "
                          "(`retinanet check-data` lists every one)", stacklevel=2)

    def set_epoch(self, seed: int, epoch: int) -> None:
        """Make item ``i``'s augmentation a function of ``(seed, epoch, i)`` alone (None: global RNGs)."""
        self.draws = (int(seed), int(epoch))

    def __len__(self) -> int:
        return len(self.records)

    def image_sizes(self) -> list[tuple[int, int] | None]:
        """``(height, width)`` of each image, from the annotation (or the file header when absent;
        None when that cannot be read either: the item's loading will say why). Read once (headers
        of a large YOLO set take a while): the records do not change."""
        if self._sizes is not None and len(self._sizes) == len(self.records):
            return list(self._sizes)
        out: list[tuple[int, int] | None] = []
        for r in self.records:
            if r.size is not None:
                out.append((int(r.size[0]), int(r.size[1])))
            else:
                try:
                    out.append(tuple(oriented_size(r.file, exif=self.exif, max_pixels=None)))
                except (OSError, ValueError):
                    out.append(None)
        self._sizes = out
        return list(out)

    def aspect_ratios(self) -> list[float]:
        """Width / height of each image (``image_sizes``; 1.0 where unknown)."""
        return [w / h if h > 0 else 1.0 for h, w in (hw or (1, 1) for hw in self.image_sizes())]

    def load(self, index: int) -> tuple[torch.Tensor, dict]:
        """The item before augmentation and resize: original image and target."""
        r = self.records[index]
        opened = open_image(r.file, r.size, exif=self.exif, max_pixels=self.max_pixels)
        if opened.note:
            self._warn("EXIF", f"{r.source}: {r.file}: {opened.note}")
        image = pil_to_tensor(opened.image)
        hw = (int(image.shape[1]), int(image.shape[2]))
        if r.size is not None and hw != tuple(r.size):
            self._warn("size", f"{r.source}: annotation says {r.size[1]}x{r.size[0]} (WxH) but {r.file} is {hw[1]}x{hw[0]}; "
                       "boxes clipped to the image")
        # a no-op unless the annotation gave no size (VOC without <size>) or another one: then said aloud
        boxes, keep, said = clip_said(r.boxes, hw, f"{r.source} ({r.file})")
        for msg in said:
            self._warn("clip", msg)
        target = {
            "boxes": torch.from_numpy(np.ascontiguousarray(boxes[keep], np.float32)).reshape(-1, 4),
            "labels": torch.from_numpy(r.labels[keep].astype(np.int64)),
            "ignore": torch.from_numpy(r.ignore[keep].astype(bool) & (not self.ignore_as_objects)),
            "image_id": int(r.image_id),
            "orig_size": hw,
            "file": r.file,
        }
        if r.areas is not None:  # the annotation's own areas, for evaluation (COCO's size ranges)
            target["area"] = torch.from_numpy(r.areas[keep].astype(np.float64))
        return image, target

    def __getitem__(self, key: int | tuple[int, int, int]) -> tuple[torch.Tensor, dict]:
        """Item ``key``: an index, or ``(index, seed, epoch)``: then its augmentation is drawn from
        (seed, epoch, index) alone, as after ``set_epoch(seed, epoch)`` (the training loader's
        batch sampler gives such keys: the epoch reaches workers that live across epochs)."""
        index, draws = (int(key[0]), (int(key[1]), int(key[2]))) if isinstance(key, tuple) else (key, self.draws)
        skipped: list[str] = []  # travels with the item (target["skipped"]): a worker's list is never seen by the run
        for attempt in range(len(self.records)):
            i = (index + attempt) % len(self.records)
            try:
                image, target = self.load(i)
            except (OSError, ValueError, SyntaxError) as err:  # what PIL raises on corrupt files
                msg = f"{self.records[i].file}: cannot decode image ({type(err).__name__}: {err})"
                if not self.skip_bad:
                    raise BadImageError([msg]) from None
                self.bad.append(msg)
                skipped.append(msg)
                warnings.warn(f"skipped: {msg}")
                continue
            if draws is None:
                image, target = self.transform(image, target)
            else:
                with seeded_rng(item_seed(*draws, index)):
                    image, target = self.transform(image, target)
            return image, ({**target, "skipped": skipped} if skipped else target)
        raise DataError(self.bad, summary="no image of the dataset could be decoded")
