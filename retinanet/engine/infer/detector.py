"""``Detector``: a trained model for Python users, from inputs of any common kind to named boxes.

    detector = retinanet.Detector.load("runs/train/best.pt")       # or a torchvision .pth
    for r in detector.predict(["a.jpg", "b.jpg"], score_thresh=0.3):
        print(r.names, r.boxes)                                      # boxes in original pixels

Inputs: a path (``str`` / ``os.PathLike``), PIL images (any mode), ``numpy`` ``uint8`` arrays
``H x W x 3`` (RGB) or ``H x W`` / ``H x W x 1`` (grayscale), tensors ``[3, H, W]`` (RGB) or
``[1, H, W]`` (grayscale), ``uint8`` 0..255 or float 0..1, or ``[B, 3, H, W]`` / ``[B, 1, H, W]``
(B images), or a list of any of them. A grayscale image is repeated to 3 channels, as PIL converts an
``L`` image to RGB; an array or tensor of any other shape is refused, naming what it is (a ``[H, W]``
tensor too: ``x[None]`` makes it ``[1, H, W]``). Paths are decoded by the data package's opener (``retinanet.data.images.open_rgb``):
the EXIF rule ``exif`` (``"auto"``/``"apply"``: the displayed frame, as viewers show the photo;
``"ignore"``: the stored pixels) and the pixel limit ``max_image_pixels`` of ``DataConfig``. Each image
is resized on the CPU (or its own device) to the model's input size, batched, run, and its boxes are
mapped back to its own pixels.

``retinanet predict`` runs on the same object: its worker processes decode and resize, then call
``Detector.detect_resized``.

Large images with small objects: ``predict(..., tile=TileOptions())`` (or ``tile=True``, or a tile
side in pixels) cuts each image into overlapping native-resolution tiles, runs them in batches and
merges the boxes in image pixels (``retinanet.model.tiling``); ``detect_tiled`` does one image.
The default, ``tile=None``, is "as trained": a checkpoint trained on crops (``train --crop PX``)
is tiled with PX at native resolution, as its evaluations during training did (resized whole, a
large image's objects fall below every anchor), unless ``load(..., min_size=...)`` set another input
size (a request to resize whole images); other models see whole images resized. ``tile=False``
resizes whole images for any model.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from retinanet.config import LIMITS
from retinanet.data.classes import default_class_names
from retinanet.data.images import DEFAULT_MAX_PIXELS, _to_rgb, check_exif_policy, open_rgb, pil_to_tensor
from retinanet.engine.runtime.checkpoint import load_model_and_config, trained_crop
from retinanet.engine.runtime.precision import resolve_precision
from retinanet.errors import RetinaNetError
from retinanet.geometry import resize_boxes, resize_image
from retinanet.model.tiling import TileOptions, count_tiles, detect_tiled_model, detect_with_cuts, trained_tiling


@dataclass
class Detections:
    """The detections of one image, best score first.

    Attributes:
        boxes: ``[K, 4]`` float32 ``xyxy`` in the image's own (original) pixels, continuous
            coordinates, on the CPU.
        scores: ``[K]`` float32 in 0..1.
        labels: ``[K]`` int64 class ids (>= 1; the model's outputs, as in the checkpoint's class map).
        names: ``K`` class names.
        size: ``(height, width)`` of the image the boxes refer to.
        source: the file it was read from, else None.
        at_cap: None when nothing was cut; ``"max_dets"`` when the image reached ``max_dets``
            (or the model's own cap before the class filter, or, tiled, a tile reached its cap):
            more detections may have been cut, a larger ``max_dets`` keeps them;
            ``"topk_candidates"`` when it stayed below that but an FPN level had more candidates
            above the threshold than it keeps for NMS (``ModelConfig.topk_candidates``; the
            ``candidates_cut`` of ``RetinaNet.detect``): ``Detector.load(..., topk_candidates=N)`` keeps more.
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    names: list[str]
    size: tuple[int, int]
    source: str | None = None
    at_cap: str | None = None

    def __len__(self) -> int:
        return len(self.names)

    def to_dict(self) -> dict[str, Any]:
        """Plain lists (JSON-ready): ``{"boxes", "scores", "labels", "names", "height", "width", "source", "at_cap"}``."""
        return {"boxes": self.boxes.tolist(), "scores": self.scores.tolist(), "labels": self.labels.tolist(),
                "names": list(self.names), "height": self.size[0], "width": self.size[1], "source": self.source,
                "at_cap": self.at_cap}


def class_names_of(class_map: dict[str, int] | None, num_classes: int) -> dict[int, str]:
    """Class id -> name: the checkpoint's class map, else COCO names for a 91-output head, else
    "class N" for every id 1..num_classes-1."""
    if class_map:
        return {int(v): str(k) for k, v in class_map.items()}
    return default_class_names(num_classes) or {i: f"class {i}" for i in range(1, num_classes)}


def filter_detections(out: dict[str, Tensor], score_thresh: float, keep_labels: Tensor | None, max_dets: int):
    """Detections of one image scoring above ``score_thresh`` (strictly, as the model's own
    threshold and torchvision's), of ``keep_labels`` if given, the ``max_dets`` best:
    ``(boxes [K, 4], scores [K], labels [K])`` CPU tensors, by score. Label 0 is never a class
    (the background output of torchvision-layout heads): dropped."""
    boxes, scores, labels = out["boxes"].float().cpu(), out["scores"].float().cpu(), out["labels"].cpu()
    keep = (scores > score_thresh) & (labels != 0)
    if keep_labels is not None:
        keep &= torch.isin(labels, keep_labels)
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    order = torch.argsort(scores, descending=True, stable=True)[:max_dets]
    return boxes[order], scores[order], labels[order]


def cap_reached(kept: int, max_dets: int, model_cap_reached: bool, candidates_cut: bool) -> str | None:
    """``Detections.at_cap`` of an image: ``kept`` detections after the filters, at most ``max_dets``;
    ``model_cap_reached``: the model's own output (or a tile's) was cut at its cap; ``candidates_cut``:
    a level's top-k left candidates out (``RetinaNet.detect``'s ``candidates_cut``)."""
    if kept >= max_dets or model_cap_reached:
        return "max_dets"
    return "topk_candidates" if candidates_cut else None


def cap_warning(results: list[Detections], max_dets: int, chosen: bool, topk: int) -> str | None:
    """The warning ``Detector.predict`` gives about ``results`` (None: none): images at the
    ``max_dets`` cap unless the caller ``chosen`` it (a cap asked for is no news), and images whose
    candidates a level's top-k cut (never asked for)."""
    at_max = sum(r.at_cap == "max_dets" for r in results)
    at_topk = sum(r.at_cap == "topk_candidates" for r in results)
    parts = []
    if at_max and not chosen:
        parts.append(f"{at_max} of {len(results)} image(s) reached max_dets={max_dets} (the model's detections_per_img): "
                     "detections beyond it were cut; pass a larger max_dets to keep them")
    if at_topk:
        parts.append(f"{at_topk} of {len(results)} image(s) stayed below max_dets={max_dets} while an FPN level had more "
                     f"candidates above score_thresh than the {topk} it keeps for NMS: those were never considered; "
                     "Detector.load(..., topk_candidates=N) keeps more")
    return "; ".join(parts) + " (each result's .at_cap says which cap it reached)" if parts else None


def check_call(score_thresh: float, max_dets: int, batch_size: int = 1) -> None:
    """Raise ``RetinaNetError`` for per-call settings outside the command line's limits
    (``config.LIMITS``): a negative ``max_dets`` would otherwise slice off the last detections."""
    checks = {"score_thresh": (score_thresh, LIMITS["score_thresh"]), "max_dets": (max_dets, LIMITS["detections_per_img"]),
              "batch_size": (batch_size, LIMITS["batch_size"])}
    for name, (value, check) in checks.items():
        try:
            check(value)
        except ValueError as err:
            raise RetinaNetError(f"{name} {err}") from None


def _describe(item: Any) -> str:
    if isinstance(item, (Tensor, np.ndarray)):
        return f"{type(item).__name__} of shape {tuple(item.shape)} and dtype {item.dtype}"
    return type(item).__name__


def _tensor_images(x: Tensor) -> list[Tensor]:
    """``[3, H, W]`` or ``[B, 3, H, W]`` uint8 / float 0..1 -> list of ``[3, H, W]``; grayscale
    ``[1, H, W]`` / ``[B, 1, H, W]`` repeated to 3 channels (``_gray_to_rgb``); else RetinaNetError."""
    if x.dim() not in (3, 4) or x.shape[-3] not in (1, 3):
        hint = ": x[None] for a grayscale [H, W] one" if x.dim() == 2 else ""
        raise RetinaNetError(f"an image tensor is [3, H, W] or [B, 3, H, W] RGB, or [1, H, W] or [B, 1, H, W] grayscale, "
                             f"not {_describe(x)}{hint}")
    if x.dtype != torch.uint8 and not x.is_floating_point():
        raise RetinaNetError(f"an image tensor is uint8 (0..255) or float (0..1), not {_describe(x)}")
    if x.shape[-1] == 0 or x.shape[-2] == 0:
        raise RetinaNetError(f"an image has at least one pixel, not {_describe(x)}")
    if x.is_floating_point() and x.numel():
        lo, hi = torch.aminmax(x)
        if torch.isnan(x).any():  # NaN gave no detection without a word
            raise RetinaNetError(f"a float image tensor holds NaN values ({_describe(x)})")
        if float(hi) > 1.0 + 1e-3 or float(lo) < -1e-3:
            raise RetinaNetError(f"float image tensors are 0..1, this one spans {float(lo):.4g}..{float(hi):.4g}: "
                                 "divide by 255 or pass a uint8 tensor (normalisation is the model's own)")
    if x.is_floating_point() and x.dtype != torch.float32:
        x = x.float()  # float64 (numpy's default) or float16: the model's input is float32 (or uint8)
    x = _gray_to_rgb(x)
    return list(x) if x.dim() == 4 else [x]


def _gray_to_rgb(x: Tensor) -> Tensor:
    """``[..., 1, H, W]`` (grayscale) -> ``[..., 3, H, W]``, the value in each channel (what PIL's
    ``convert("RGB")`` of an ``L`` image gives); ``[..., 3, H, W]`` as it is."""
    return x.expand(*x.shape[:-3], 3, *x.shape[-2:]).contiguous() if x.shape[-3] == 1 else x


def _numpy_image(a: np.ndarray) -> Tensor:
    """``uint8 [3, H, W]`` of a numpy image: ``H x W x 3`` uint8 RGB, or grayscale ``H x W`` /
    ``H x W x 1`` repeated to 3 channels (``_gray_to_rgb``); else RetinaNetError."""
    if a.dtype != np.uint8 or not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (1, 3))):
        raise RetinaNetError(f"a numpy image is H x W x 3 uint8 RGB (OpenCV's BGR: a[..., ::-1]) or H x W (x 1) uint8 "
                             f"grayscale, not {_describe(a)}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise RetinaNetError(f"an image has at least one pixel, not {_describe(a)}")
    # a copy when read-only (np.asarray of a PIL image): torch warns on those and may not write to them
    a = np.ascontiguousarray(a) if a.flags.writeable else np.array(a)
    return _gray_to_rgb(torch.from_numpy(a.reshape(*a.shape[:2], -1)).permute(2, 0, 1))


class Detector:
    """A model ready for inference with its class names and image-reading rule.

    Args:
        model: a ``RetinaNet`` (put in eval mode here); its ``config.min_size/max_size`` size inputs.
        class_names: class id -> name (``class_names_of``).
        exif: EXIF rule for images read from paths: "auto" | "apply" | "ignore".
        max_image_pixels: larger images read from paths are refused; None = no limit.
        amp: mixed precision mode (``retinanet.engine.runtime.precision``): "auto" = bf16 (fp16 on GPUs
            without bf16) where the hardware runs it fast, "on", "bf16", "fp16", "off".
        trained_crop: the crop side the model was trained on (``train --crop PX``; ``load`` reads it
            from the checkpoint): ``predict(tile=None)`` then tiles images with it, as training
            evaluated, while the input size ``min_size`` is that side (``tile_options``). None:
            trained on whole images.
    """

    def __init__(self, model: torch.nn.Module, class_names: dict[int, str], *, exif: str = "auto",
                 max_image_pixels: int | None = DEFAULT_MAX_PIXELS, amp: str | bool = "auto",
                 trained_crop: int | None = None):
        self.model = model.eval()
        self.precision = resolve_precision(amp, next(model.parameters()).device)
        self.class_names = dict(class_names)
        self.exif = check_exif_policy(exif)
        self.max_image_pixels = max_image_pixels
        self.trained_crop = trained_crop

    @classmethod
    def load(cls, weights: str | os.PathLike, device: str | torch.device = "cpu", *, channels_last: bool = False,
             exif: str = "auto", max_image_pixels: int | None = DEFAULT_MAX_PIXELS, amp: str | bool = "auto",
             **overrides: Any) -> Detector:
        """A detector from our checkpoint or an official torchvision RetinaNet file.

        Args:
            weights: the file. Classes: the checkpoint's class map; a bare torchvision file with 91
                outputs gets the COCO names (labels are COCO category ids). A checkpoint of a
                ``--crop`` run gives ``trained_crop``: ``predict`` tiles by default.
            device: "cpu", "cuda", "cuda:1", ... or a ``torch.device``.
            channels_last: run the model in NHWC memory layout (same results, usually faster on GPUs).
            exif, max_image_pixels: how paths are read; amp: mixed precision (class docstring).
            overrides: ``ModelConfig`` fields to replace (``min_size``, ``max_size``, ``nms_thresh``, ...).
        Raises:
            CheckpointError: unreadable file, or weights that do not fit the model.
        """
        model, class_map, stored = load_model_and_config(weights, device, channels_last=channels_last, **overrides)
        return cls(model, class_names_of(class_map, model.config.num_classes), exif=exif,
                   max_image_pixels=max_image_pixels, amp=amp, trained_crop=trained_crop(stored))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def read_image(self, path: str | os.PathLike) -> Tensor:
        """``uint8 [3, H, W]`` of an image file, in the frame the EXIF rule chooses.

        Raises:
            RetinaNetError: the file is missing, cannot be decoded or is over the pixel limit (named).
        """
        try:
            return pil_to_tensor(open_rgb(path, exif=self.exif, max_pixels=self.max_image_pixels))
        except (OSError, ValueError, SyntaxError) as err:
            raise RetinaNetError(f"{path}: cannot read image ({type(err).__name__}: {err})") from None

    def _as_images(self, inputs: Any) -> Iterator[tuple[Tensor, str | None]]:
        """``(image [3, H, W], source path or None)`` for each image of ``inputs`` (lazily: files
        are decoded one batch at a time)."""
        items = inputs if isinstance(inputs, (list, tuple)) else [inputs]
        for item in items:
            if isinstance(item, (str, os.PathLike)):
                yield self.read_image(item), str(item)
            elif isinstance(item, Image.Image):
                if item.width == 0 or item.height == 0:  # a ZeroDivisionError in the mode conversion before
                    raise RetinaNetError(f"an image has at least one pixel, not a PIL image of {item.width}x{item.height}")
                yield pil_to_tensor(_to_rgb(item)), None  # any PIL mode; taken as given (no EXIF turn)
            elif isinstance(item, np.ndarray):
                yield _numpy_image(item), None
            elif isinstance(item, Tensor):
                for image in _tensor_images(item):
                    yield image, None
            else:
                raise RetinaNetError(f"cannot detect in a {_describe(item)}: give a path, a PIL image, an H x W x 3 "
                                     "(or grayscale H x W) uint8 numpy array or a [3, H, W] (or [1, H, W]) tensor "
                                     "(or a list of them)")

    def label_ids(self, classes: Sequence[str] | None) -> Tensor | None:
        """``[N]`` int64 ids of the class names ``classes`` (None when empty: keep all).

        Raises:
            RetinaNetError: a name the model does not have (the message lists its classes).
        """
        if not classes:
            return None
        if isinstance(classes, str):  # one name, not its letters
            classes = [classes]
        ids = {n: i for i, n in self.class_names.items()}
        unknown = [n for n in classes if n not in ids]
        if unknown:
            raise RetinaNetError(f"unknown class name(s) {', '.join(unknown)}; "
                                 f"the model's classes are: {', '.join(self.class_names.values())}")
        return torch.tensor([ids[n] for n in classes], dtype=torch.int64)

    def max_dets_of(self, max_dets: int | None) -> int:
        """``max_dets`` of a call: as given, or the model's ``detections_per_img`` (None)."""
        return int(self.model.config.detections_per_img if max_dets is None else max_dets)

    @torch.inference_mode()
    def detect_resized(self, images: list[Tensor], orig_sizes: list[tuple[int, int]], *, score_thresh: float = 0.3,
                       classes: Sequence[str] | None = None, max_dets: int | None = None,
                       sources: Sequence[str | None] | None = None) -> list[Detections]:
        """Run one batch of images already resized to the model's input size.

        Args:
            images: ``[3, h, w]`` uint8 or float 0..1 tensors (``resize_image`` of the originals).
            orig_sizes: ``(H0, W0)`` of each original image: boxes are mapped back to it.
            score_thresh: keep detections scoring above this (also the model's own threshold
                for this call). classes: names to keep (None or empty: all). max_dets: per image
                (None: the model's ``detections_per_img``).
            sources: file of each image, recorded in the results.
        Returns:
            one ``Detections`` per image, best score first (``at_cap`` set).
        """
        max_dets = self.max_dets_of(max_dets)
        check_call(score_thresh, max_dets)
        keep_labels = self.label_ids(classes)
        if not images:
            return []
        with self.precision.autocast(self.device.type):
            # the model's own cap (detections_per_img, 300) would cut a larger max_dets without a word
            cap = max(max_dets, self.model.config.detections_per_img)
            outputs, cuts = detect_with_cuts(self.model, [im.to(self.device, non_blocking=True) for im in images],
                                             score_thresh=score_thresh, max_dets=cap)
        sources = list(sources) if sources is not None else [None] * len(images)
        results = []
        for image, orig, out, cut, source in zip(images, orig_sizes, outputs, cuts, sources):
            boxes, scores, labels = filter_detections(out, score_thresh, keep_labels, max_dets)
            resized = (int(image.shape[-2]), int(image.shape[-1]))
            orig = (int(orig[0]), int(orig[1]))
            if resized != orig:
                boxes = resize_boxes(boxes, resized, orig)  # [K, 4] original pixels
            names = [self.class_names.get(int(c), f"class {int(c)}") for c in labels.tolist()]
            at_cap = cap_reached(len(scores), max_dets, len(out["scores"]) >= cap, cut > 0)
            results.append(Detections(boxes, scores, labels, names, orig, source, at_cap))
        return results

    def tile_options(self, tile: TileOptions | int | bool | None = None, batch_size: int = 4) -> TileOptions | None:
        """``tile`` as resolved ``TileOptions``, or None for whole images resized to the input size.

        ``tile``: None: as the model was trained (``model.tiling.trained_tiling``: a model with
        ``trained_crop`` gets tiles of that side, the default overlap and ``batch_size`` tiles a pass,
        unless its ``min_size`` was set to another size; any other model none); False: no tiling;
        True: the defaults; an int: the tile side; ``TileOptions``. The default tile side is the
        model's input size ``min_size`` (a ``--crop`` model's crop side).
        """
        if tile is None:
            return trained_tiling(self.trained_crop, self.model.config.min_size, batch_size)
        if tile is False:
            return None
        if not isinstance(tile, (TileOptions, bool, int)):
            raise RetinaNetError(f"tile={tile!r}: True, a tile side in pixels, or TileOptions(...)")
        opts = tile if isinstance(tile, TileOptions) else TileOptions() if tile is True else TileOptions(tile=int(tile))
        return opts.resolved(self.model.config.min_size)

    @torch.inference_mode()
    def detect_tiled(self, image: Tensor, tile: TileOptions, *, score_thresh: float = 0.3,
                     classes: Sequence[str] | None = None, max_dets: int | None = None, source: str | None = None,
                     on_tiles=None) -> Detections:
        """Detections of one ``uint8 [3, H, W]`` image, tile by tile (``retinanet.model.tiling``).

        Args:
            tile: resolved ``TileOptions`` (``tile_options``). on_tiles: progress callback
                ``(tiles done, tiles of this image)`` after each batch of tiles.
            score_thresh, classes, max_dets, source: as ``detect_resized``.
        """
        max_dets = self.max_dets_of(max_dets)
        check_call(score_thresh, max_dets)
        keep_labels = self.label_ids(classes)
        if image.is_floating_point():
            image = image.mul(255).round_().clamp_(0, 255).to(torch.uint8)
        with self.precision.autocast(self.device.type):  # each tile keeps max_dets, as a whole image would
            found = detect_tiled_model(self.model, image, tile, score_thresh, on_tiles,
                                       max_dets=max(max_dets, self.model.config.detections_per_img))
        boxes, scores, labels = filter_detections({"boxes": found.boxes, "scores": found.scores, "labels": found.labels},
                                                  score_thresh, keep_labels, max_dets)
        names = [self.class_names.get(int(c), f"class {int(c)}") for c in labels.tolist()]
        at_cap = cap_reached(len(scores), max_dets, found.tiles_at_cap > 0, found.tiles_candidates_cut > 0)
        return Detections(boxes, scores, labels, names, (int(image.shape[-2]), int(image.shape[-1])), source, at_cap)

    def predict(self, inputs: Any, *, score_thresh: float = 0.3, classes: Sequence[str] | None = None,
                max_dets: int | None = None, batch_size: int = 4,
                tile: TileOptions | int | bool | None = None) -> list[Detections]:
        """Detect objects in ``inputs`` (module docstring: paths, PIL, numpy, tensors, lists of them).

        Args:
            score_thresh: keep detections scoring above this (as torchvision's RetinaNet: a score
                equal to it is dropped) [0.3, as ``retinanet predict``].
            classes: class names to keep (None: all). max_dets: at most this many per image
                [the model's ``detections_per_img``, 300 unless trained with ``--max-dets``].
            batch_size: images per forward pass (the results do not depend on it beyond float noise).
            tile: tiled prediction (``tile_options``: True, a tile side, or ``TileOptions``; its
                ``batch_size`` is the tiles per pass); False: whole images resized to the input size;
                None (default): as the model was trained: a ``--crop`` model (``trained_crop``) tiles
                with its crop side, ``batch_size`` tiles a pass (as training evaluated; not when
                loaded with another ``min_size``), any other model gets whole images resized.
        Returns:
            one ``Detections`` per image, in input order (a ``[B, 3, H, W]`` tensor gives B). Each
            says in ``at_cap`` whether a cap cut its detections; once per call a ``UserWarning``
            counts the images that reached the default ``max_dets`` (not one passed: a cap asked
            for is no news) or whose candidates a level's top-k cut (``Detections.at_cap``).
        Raises:
            RetinaNetError: an input of an unknown kind or shape, or a file that cannot be read (named).
        """
        chosen, max_dets = max_dets is not None, self.max_dets_of(max_dets)
        check_call(score_thresh, max_dets, batch_size)
        results = self._predict(inputs, score_thresh, classes, max_dets, batch_size, tile)
        c = self.model.config  # the model runs with the larger of max_dets and its own cap (detect_resized)
        warning = cap_warning(results, max_dets, chosen, c.candidates_per_level(max(max_dets, c.detections_per_img)))
        if warning:
            warnings.warn(warning, stacklevel=2)
        return results

    def _predict(self, inputs: Any, score_thresh: float, classes: Sequence[str] | None, max_dets: int, batch_size: int,
                 tile: TileOptions | int | bool | None) -> list[Detections]:
        """``predict`` without the checks and the warning."""
        tiling = self.tile_options(tile, batch_size)
        if tiling is not None:
            self.label_ids(classes)
            return [self.detect_tiled(image, tiling, score_thresh=score_thresh, classes=classes, max_dets=max_dets,
                                      source=source) for image, source in self._as_images(inputs)]
        c = self.model.config
        results: list[Detections] = []
        batch: list[tuple[Tensor, str | None]] = []

        def flush() -> None:
            resized = [resize_image(im, c.min_size, c.max_size) for im, _ in batch]
            sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im, _ in batch]
            results.extend(self.detect_resized(resized, sizes, score_thresh=score_thresh, classes=classes,
                                               max_dets=max_dets, sources=[s for _, s in batch]))
            batch.clear()

        self.label_ids(classes)  # an unknown class name fails before any file is read
        for image, source in self._as_images(inputs):
            batch.append((image, source))
            if len(batch) == batch_size:
                flush()
        if batch:
            flush()
        return results

    __call__ = predict

    def __repr__(self) -> str:
        c = self.model.config
        tiled = " (tiled by default)" if self.tile_options() is not None else ""
        crop = f", trained on {self.trained_crop} px crops{tiled}" if self.trained_crop else ""
        return (f"Detector({c.arch}, {len(self.class_names)} classes, input {c.min_size}..{c.max_size} px{crop}, "
                f"device {self.device}, {self.precision.name}, exif={self.exif!r})")


__all__ = ["Detections", "Detector", "TileOptions", "class_names_of", "count_tiles", "filter_detections"]
