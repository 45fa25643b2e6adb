"""ONNX export of the whole detector: wrap the model, write the graph with metadata, verify it.

The exported graph is ``RetinaNet.detect_padded``. It takes one batch of images that the caller
has already resized to the model's input size (``retinanet.model.transform.resized_size``) and
does everything else: scaling to 0..1 (uint8 input), mean/std normalisation, padding to a
multiple of 32, backbone + FPN + heads, anchors for the given image size, per-level top-k, box
decoding, clipping, NMS per image and class, and the ``detections_per_img`` cut, with the eager
model's functions (``retinanet.model.postprocess.decode_batch_static``). Its contract::

    input   images          [B, 3, H, W] uint8 RGB 0..255 (or float32 0..1, ``input_dtype``)
    outputs boxes           [B, K, 4] float32 xyxy pixels of the input image
            scores          [B, K] float32, highest first
            labels          [B, K] int64 class ids (as in the class map), -1 in padding slots
            num_detections  [B] int64: rows ``[:num_detections[b]]`` of image b are real

A model trained on crops (``train --crop PX``) takes native-resolution tiles of PX px, not whole
images resized (``crop_note``; the metadata's ``trained_crop``).

``K`` is the model's ``detections_per_img``; padding rows hold label -1, score 0 and a zero box
(the padded layout of ``retinanet.model.postprocess``). B, H and W are dynamic unless exported
with ``dynamic=False``. The exporter is ``torch.onnx.export(dynamo=True)`` (torch.export based,
opset 18 by default); torchvision's ``nms`` becomes ONNX ``NonMaxSuppression``. The written file
is compared with PyTorch eager through onnxruntime by ``retinanet.engine.export.onnx_verify``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor, nn

from retinanet.files import ReadOnce, write_atomic
from retinanet.engine.runtime.checkpoint import load_model_and_config, trained_crop
from retinanet.engine.export.onnx_verify import (EXPORT_HINT, VerifyReport, opset_of, random_images, size_pair,
                                          verification_samples, verify_onnx)
from retinanet.errors import RetinaNetError
from retinanet.model.retinanet import RetinaNet

DEFAULT_OPSET = 18
INPUT_NAME = "images"
OUTPUT_NAMES = ("boxes", "scores", "labels", "num_detections")
# A dynamic export traces with every FPN level at least 2 cells tall and wide (P7 has stride
# 128), so that torch.export does not specialise a level's size to 1 and freeze H or W.
_MIN_TRACE_SIZE = 160


class ExportableDetector(nn.Module):
    """The detector as one tensor-in, tensors-out module for ``torch.export``: ``forward`` is
    ``model.detect_padded`` (the contract in the module docstring).

    Args:
        model: our ``RetinaNet`` (``retinanet.model.build_model``), eval mode; its
            ``score_thresh``, ``nms_thresh``, ``detections_per_img`` and ``topk_candidates`` are
            baked into the graph.
        input_dtype: ``"uint8"`` (0..255) or ``"float32"`` (0..1) images.
    """

    def __init__(self, model: RetinaNet, input_dtype: str = "uint8"):
        super().__init__()
        if input_dtype not in ("uint8", "float32"):
            raise RetinaNetError(f"input dtype must be 'uint8' or 'float32', not {input_dtype!r}")
        if not isinstance(model, RetinaNet):
            raise RetinaNetError(f"only retinanet's own RetinaNet can be exported, not {type(model).__name__}")
        self.model = model
        self.input_dtype = input_dtype

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``images [B, 3, H, W]`` -> ``boxes [B, K, 4], scores [B, K], labels [B, K], num [B]``."""
        return self.model.detect_padded(images)


# loggers whose warnings during export are the exporter's own business, not the user's:
# onnx_ir's "Attribute type is ambiguous because it is an empty sequence ... Defaulted to INTS"
# (an empty list attribute, for which INTS is right; the onnxruntime check verifies the graph)
_NOISY_LOGGERS = ("onnx_ir._convenience",)


@contextlib.contextmanager
def _quiet_loggers(names: Sequence[str], level: int = logging.ERROR):
    """Raise the level of the loggers ``names`` to ``level`` inside the block, then restore it."""
    loggers = [logging.getLogger(n) for n in names]
    before = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(level)
    try:
        yield
    finally:
        for lg, lvl in zip(loggers, before):
            lg.setLevel(lvl)


def export_onnx(
    model: RetinaNet,
    path: str | os.PathLike,
    *,
    opset: int = DEFAULT_OPSET,
    image_size: tuple[int, int] | int | None = None,
    batch_size: int = 1,
    dynamic: bool = True,
    input_dtype: str = "uint8",
    class_map: dict[str, int] | None = None,
    trained_crop: int | None = None,
) -> Path:
    """Export ``model`` (eval mode) with pre-processing, anchors, decoding and NMS to ONNX.

    Args:
        model: RetinaNet whose ``score_thresh``, ``nms_thresh``, ``detections_per_img`` and
            ``topk_candidates`` are baked into the graph.
        path: the ``.onnx`` file to write (one file, weights inside).
        opset: ONNX opset (18 or newer is what the exporter emits natively).
        image_size: ``(H, W)`` or ``S`` (square) of the example input; with ``dynamic=False`` the
            only size the graph accepts. Default: the model's ``min_size`` square.
        batch_size: example batch size; with ``dynamic=False`` the only one accepted.
        dynamic: batch, height and width dynamic (``True``) or fixed to the example's.
        input_dtype: ``"uint8"`` (0..255) or ``"float32"`` (0..1).
        class_map: ``{"name": id}`` stored as JSON in the model's ``metadata_props``.
        trained_crop: the crop side the model was trained on (``train --crop PX``; None: whole
            images): the metadata says that the input is native-resolution tiles of that side.

    Returns:
        ``path``.

    Raises:
        RetinaNetError: when the exporter fails or the file cannot be written, or the ``onnx``
            package is missing (naming the extra that installs it).
    """
    try:
        import onnx
    except ImportError:
        raise RetinaNetError(f"export needs the onnx package: {EXPORT_HINT}") from None

    path = Path(path)
    newest = onnx.defs.onnx_opset_version()  # what this onnx package knows: asked for more, the converter fails late
    if not DEFAULT_OPSET <= opset <= newest:
        raise RetinaNetError(f"{path}: opset {opset} is not supported; the exporter writes opset {DEFAULT_OPSET} to "
                             f"{newest} (the newest this onnx {onnx.__version__} knows)")
    wrapper = ExportableDetector(model.eval(), input_dtype=input_dtype).eval()
    height, width = size_pair(image_size if image_size is not None else model.config.min_size)
    if dynamic:  # see _MIN_TRACE_SIZE; batch 1 would likewise be specialised
        height, width, batch_size = max(height, _MIN_TRACE_SIZE), max(width, _MIN_TRACE_SIZE), max(batch_size, 2)
    example = random_images(batch_size, height, width, input_dtype, seed=0)
    dims = {0: torch.export.Dim.DYNAMIC, 2: torch.export.Dim.DYNAMIC, 3: torch.export.Dim.DYNAMIC}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.export.tmp")  # the exporter writes in place; the final file is written atomically
    try:
        with torch.no_grad(), warnings.catch_warnings(), _quiet_loggers(_NOISY_LOGGERS):
            warnings.simplefilter("ignore")  # the exporter's deprecation chatter, not ours
            torch.onnx.export(
                wrapper,
                (example,),
                str(tmp),
                dynamo=True,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=list(OUTPUT_NAMES),
                dynamic_shapes=(dims,) if dynamic else None,
                external_data=False,
                verbose=False,
            )
        proto = onnx.load(str(tmp))
    except Exception as err:  # the exporter raises many kinds; keep its first line
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise RetinaNetError(f"{path}: ONNX export failed: {first}") from err
    finally:
        tmp.unlink(missing_ok=True)
    written = opset_of(proto)
    if written != opset:
        raise RetinaNetError(f"{path}: asked for opset {opset}, but the exporter wrote opset {written}")
    if dynamic:
        _name_dynamic_dims(proto, ("batch", None, "height", "width"))
    _set_metadata(proto, _metadata(model, input_dtype, class_map, dynamic, trained_crop))
    write_atomic(path, proto.SerializeToString())
    return path


def crop_note(crop: int) -> str:
    """What the graph of a model trained on ``crop`` px crops (``train --crop``) takes: tiles at
    native resolution, as its training evaluated and ``predict``/``Detector`` run it, not whole
    images resized to its input size (``min_size`` is the crop side: a large image would shrink)."""
    return (f"the model was trained on {crop} px crops at native resolution: give the graph tiles of {crop} px cut "
            "from the original pixels (boxes: tile pixels, add each tile's offset, then merge the tiles' boxes), not "
            f"whole images resized to {crop} px (a large image's objects would shrink below every anchor); "
            "retinanet predict and Detector.predict tile so")


def _metadata(model: RetinaNet, input_dtype: str, class_map, dynamic: bool,
              trained_crop: int | None = None) -> dict[str, str]:
    config = model.config
    given = (f", native-resolution tiles of {trained_crop} px cut by the caller (trained on {trained_crop} px crops: "
             "not whole images resized)" if trained_crop else ", resized by the caller to the model's input size")
    meta = {
        "format": "retinanet-onnx",
        "input": f"{INPUT_NAME} [B,3,H,W] {input_dtype} RGB " + ("0..255" if input_dtype == "uint8" else "0..1") + given,
        "outputs": "boxes [B,K,4] xyxy pixels, scores [B,K], labels [B,K] (-1 = padding), num_detections [B]",
        "dynamic_axes": "batch, height, width" if dynamic else "none",
        "score_thresh": repr(float(config.score_thresh)),
        "nms_thresh": repr(float(config.nms_thresh)),
        "detections_per_img": str(config.detections_per_img),
        "topk_candidates": str(config.candidates_per_level()),  # as the graph runs it: at least detections_per_img
        "arch": str(config.arch),
        "num_classes": str(config.num_classes),
        "min_size": str(config.min_size),
        "max_size": str(config.max_size),
    }
    if trained_crop:
        meta["trained_crop"] = str(trained_crop)
    if class_map:
        meta["class_map"] = json.dumps({str(k): int(v) for k, v in class_map.items()}, sort_keys=True)
    return meta


def _name_dynamic_dims(proto, names: Sequence[str | None]) -> None:
    """Rename the exporter's symbols (``s34``...) of the input's axes to ``names`` everywhere."""
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    renames = {d.dim_param: n for d, n in zip(dims, names) if n and d.dim_param}
    for value in [*proto.graph.input, *proto.graph.output, *proto.graph.value_info]:
        for d in value.type.tensor_type.shape.dim:
            if d.dim_param in renames:
                d.dim_param = renames[d.dim_param]


def _set_metadata(proto, values: dict[str, str]) -> None:
    existing = {p.key: p for p in proto.metadata_props}
    for key, value in values.items():
        entry = existing.get(key) or proto.metadata_props.add()
        entry.key, entry.value = key, value


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """``metadata_props`` of an ONNX file as a dict (``class_map`` is a JSON string)."""
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


# --- from a checkpoint (the CLI's entry point) ---------------------------------------------------


@dataclass(frozen=True)
class ExportOptions:
    """What ``export_checkpoint`` does; see ``export_onnx`` for the meaning of each field."""

    opset: int = DEFAULT_OPSET
    image_size: tuple[int, ...] = ()  # (S,) or (H, W); empty = the model's min_size square
    batch_size: int = 1
    dynamic: bool = True
    input_dtype: str = "uint8"
    score_thresh: float | None = None  # None = the checkpoint's
    max_dets: int | None = None  # the graph's K; None = the checkpoint's detections_per_img
    verify: bool = True
    samples: tuple[str, ...] = ()  # image files to verify on; empty = random images


def export_checkpoint(weights: str | os.PathLike, out: str | os.PathLike, options: ExportOptions,
                      once: ReadOnce | None = None) -> tuple[Path, VerifyReport, float]:
    """Load a checkpoint, export it to ONNX and (unless ``options.verify`` is off) verify it.
    ``once``: the checkpoint's content an earlier step read (the CLI, for its crop), not read again.
    A checkpoint of a ``--crop`` run records its crop side in the metadata (``export_onnx``).

    A static export is verified at its one input shape (twice with ``--sample`` files: each is
    resized to that shape); a dynamic one at two sizes and batch sizes.

    Returns:
        (onnx path, report (no batches when not verified), export seconds).

    Raises:
        RetinaNetError: unreadable checkpoint, failed export, or a verification mismatch (the
            message holds the comparison).
    """
    overrides = {k: v for k, v in (("score_thresh", options.score_thresh), ("detections_per_img", options.max_dets))
                 if v is not None}
    model, class_map, stored = load_model_and_config(weights, device="cpu", once=once, **overrides)
    size = options.image_size or None
    samples = []
    if options.verify:  # before the export: a static size eager would resize, an unreadable --sample, fail first
        samples = verification_samples(model, dynamic=options.dynamic, image_size=options.image_size,
                                       batch_size=options.batch_size, input_dtype=options.input_dtype,
                                       files=options.samples)
    start = time.perf_counter()
    path = export_onnx(
        model, out, opset=options.opset, image_size=size, batch_size=options.batch_size,
        dynamic=options.dynamic, input_dtype=options.input_dtype, class_map=class_map, trained_crop=trained_crop(stored),
    )
    seconds = time.perf_counter() - start
    report = verify_onnx(model, path, samples)
    if not report.ok:
        raise RetinaNetError(f"{path}: ONNX output differs from PyTorch\n{report.format()}\nthe file is left on disk for "
                             "inspection, not fit for use as it is; an untrained model at a low --score-thresh can give "
                             "near-equal scores that the two runtimes order differently")
    return path, report, seconds
