"""ONNX export of the whole detector, verified against PyTorch eager with onnxruntime.

The exported graph takes one batch of images that the caller has already resized to the model's
input size (``retinanet.model.transform.resized_size``) and does everything else: scaling to
0..1 (uint8 input), mean/std normalisation, padding to a multiple of 32, backbone + FPN + heads,
anchors for the given image size, per-level top-k, box decoding, clipping, NMS per image and
class, and the ``detections_per_img`` cut. Its contract::

    input   images          [B, 3, H, W] uint8 RGB 0..255 (or float32 0..1, ``input_dtype``)
    outputs boxes           [B, K, 4] float32 xyxy pixels of the input image
            scores          [B, K] float32, highest first
            labels          [B, K] int64 class ids (as in the class map), -1 in padding slots
            num_detections  [B] int64: rows ``[:num_detections[b]]`` of image b are real

``K`` is the model's ``detections_per_img``; padding rows hold zeros. B, H and W are dynamic
unless exported with ``dynamic=False``. The exporter is ``torch.onnx.export(dynamo=True)``
(torch.export based, opset 18 by default); torchvision's ``nms`` becomes ONNX
``NonMaxSuppression``.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import nms

from retinanet.errors import RetinaNetError

DEFAULT_OPSET = 18
INPUT_NAME = "images"
OUTPUT_NAMES = ("boxes", "scores", "labels", "num_detections")
SIZE_DIVISIBLE = 32  # the batch is padded so that H and W are multiples of this (as in eager)
# A dynamic export traces with every FPN level at least 2 cells tall and wide (P7 has stride
# 128), so that torch.export does not specialise a level's size to 1 and freeze H or W.
_MIN_TRACE_SIZE = 160
_BOX_DELTA_CLIP = math.log(1000.0 / 16)  # torchvision's cap on dw, dh before exp()


# --- the graph ------------------------------------------------------------------------------------


def topk_per_level(logits_per_level: Sequence[Tensor], k: int) -> tuple[Tensor, Tensor, Tensor]:
    """The ``k`` best (anchor, class) pairs of each FPN level, for the whole batch.

    Args:
        logits_per_level: per level ``[B, A_l, C]`` classification logits.
        k: candidates kept per level and image (fewer where a level has fewer pairs).

    Returns:
        scores ``[B, N]`` sigmoid probabilities, anchor indices ``[B, N]`` into the concatenation
        of all levels' anchors, labels ``[B, N]`` int64; ``N = sum_l min(k, A_l * C)``.
    """
    scores, anchor_idx, labels = [], [], []
    offset = 0
    for logits in logits_per_level:
        num_classes = logits.shape[-1]
        probs = torch.sigmoid(logits).flatten(1)  # [B, A_l * C]
        s, idx = probs.topk(torch.sym_min(k, probs.shape[1]), dim=1)
        scores.append(s)
        anchor_idx.append(torch.div(idx, num_classes, rounding_mode="floor") + offset)
        labels.append(idx % num_classes)
        offset = offset + logits.shape[1]
    return torch.cat(scores, 1), torch.cat(anchor_idx, 1), torch.cat(labels, 1)


def decode_boxes(deltas: Tensor, anchors: Tensor) -> Tensor:
    """Apply ``(dx, dy, dw, dh)`` regressions (weights 1, torchvision's coder) to xyxy anchors.

    Args:
        deltas: ``[..., 4]``; anchors: ``[..., 4]`` xyxy pixels, same shape.

    Returns:
        ``[..., 4]`` xyxy pixel boxes.
    """
    widths = anchors[..., 2] - anchors[..., 0]
    heights = anchors[..., 3] - anchors[..., 1]
    ctr_x = anchors[..., 0] + 0.5 * widths
    ctr_y = anchors[..., 1] + 0.5 * heights
    dw = deltas[..., 2].clamp(max=_BOX_DELTA_CLIP)
    dh = deltas[..., 3].clamp(max=_BOX_DELTA_CLIP)
    cx = deltas[..., 0] * widths + ctr_x
    cy = deltas[..., 1] * heights + ctr_y
    half_w = 0.5 * torch.exp(dw) * widths
    half_h = 0.5 * torch.exp(dh) * heights
    return torch.stack((cx - half_w, cy - half_h, cx + half_w, cy + half_h), dim=-1)


def clip_boxes(boxes: Tensor, height: int | torch.SymInt, width: int | torch.SymInt) -> Tensor:
    """Clamp ``[..., 4]`` xyxy boxes to the image ``[0, width] x [0, height]``."""
    x = boxes[..., 0::2].clamp(min=0, max=width)
    y = boxes[..., 1::2].clamp(min=0, max=height)
    return torch.stack((x[..., 0], y[..., 0], x[..., 1], y[..., 1]), dim=-1)


def padded_nms(
    boxes: Tensor, scores: Tensor, labels: Tensor, *, score_thresh: float, iou_thresh: float, max_dets: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """NMS per image and class over a batch of candidates, into fixed-size padded outputs.

    One ``torchvision.ops.nms`` call for the whole batch: each (image, class) group is shifted to
    its own coordinate range so groups never suppress each other. A candidate at or below
    ``score_thresh`` never suppresses a better one, so thresholding after NMS keeps the same set
    as thresholding before it (the eager order), while all shapes up to NMS stay static.

    Args:
        boxes: ``[B, N, 4]`` xyxy; scores: ``[B, N]``; labels: ``[B, N]`` int64.
        score_thresh: keep scores strictly above this; iou_thresh: NMS IoU threshold.
        max_dets: K, detections kept per image (highest scores first).

    Returns:
        boxes ``[B, K, 4]``, scores ``[B, K]``, labels ``[B, K]`` (-1 where padded),
        num_detections ``[B]`` int64.
    """
    batch, num = scores.shape
    image_idx = torch.arange(batch, device=scores.device).view(batch, 1).expand(batch, num).reshape(-1)
    flat_boxes, flat_scores, flat_labels = boxes.reshape(-1, 4), scores.reshape(-1), labels.reshape(-1)
    group = image_idx * (flat_labels.max() + 1) + flat_labels
    shift = group.to(flat_boxes.dtype) * (flat_boxes.max() + 1)
    keep = nms(flat_boxes + shift[:, None], flat_scores, iou_thresh)  # [M], best first

    kept_image = image_idx[keep]
    kept_scores = flat_scores[keep]
    member = (kept_image[:, None] == torch.arange(batch, device=scores.device)[None]).to(torch.int64)  # [M, B]
    rank = (member.cumsum(0) * member).sum(1) - 1  # position of each kept box within its image
    valid = (kept_scores > score_thresh) & (rank < max_dets)
    trash = batch * max_dets  # invalid ones are written to one extra slot, then dropped
    slot = torch.where(valid, kept_image * max_dets + rank, torch.full_like(rank, trash))

    out_boxes = flat_boxes.new_zeros(trash + 1, 4).index_put((slot,), flat_boxes[keep])
    out_scores = flat_scores.new_zeros(trash + 1).index_put((slot,), kept_scores)
    out_labels = flat_labels.new_full((trash + 1,), -1).index_put((slot,), flat_labels[keep])
    num_dets = (member * valid[:, None].to(torch.int64)).sum(0)
    return (
        out_boxes[:trash].view(batch, max_dets, 4),
        out_scores[:trash].view(batch, max_dets),
        out_labels[:trash].view(batch, max_dets),
        num_dets,
    )


def grid_anchors(cell_anchors: Tensor, grid_h, grid_w, stride_h, stride_w) -> Tensor:
    """Anchors of one level: ``cell_anchors [a, 4]`` at every cell, row-major -> ``[gh*gw*a, 4]``."""
    device = cell_anchors.device
    shift_x = torch.arange(grid_w, device=device, dtype=torch.int64) * stride_w
    shift_y = torch.arange(grid_h, device=device, dtype=torch.int64) * stride_h
    yy, xx = torch.meshgrid(shift_y, shift_x, indexing="ij")
    xx, yy = xx.reshape(-1), yy.reshape(-1)
    shifts = torch.stack((xx, yy, xx, yy), dim=1).to(cell_anchors.dtype)
    return (shifts.view(-1, 1, 4) + cell_anchors.view(1, -1, 4)).reshape(-1, 4)


class ExportableDetector(nn.Module):
    """The whole detector as one tensor-in, tensors-out module that ``torch.export`` can trace.

    Args:
        model: a RetinaNet in eval mode (ours or torchvision's: the same attribute names).
        input_dtype: ``"uint8"`` (0..255) or ``"float32"`` (0..1) images.
    """

    def __init__(self, model: nn.Module, input_dtype: str = "uint8"):
        super().__init__()
        if input_dtype not in ("uint8", "float32"):
            raise RetinaNetError(f"input dtype must be 'uint8' or 'float32', not {input_dtype!r}")
        self.model = model
        self.input_dtype = input_dtype
        mean, std = _normalisation_of(model)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        settings = getattr(model, "config", model)  # ours keeps them in config, torchvision on itself
        self.score_thresh = float(settings.score_thresh)
        self.nms_thresh = float(settings.nms_thresh)
        self.max_dets = int(settings.detections_per_img)
        self.topk = int(settings.topk_candidates)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``images [B, 3, H, W]`` -> ``boxes [B, K, 4], scores [B, K], labels [B, K], num [B]``."""
        x = images.to(torch.float32)
        if self.input_dtype == "uint8":
            x = x / 255.0
        height, width = x.shape[-2], x.shape[-1]
        x = (x - self.mean) / self.std
        pad_h = (height + SIZE_DIVISIBLE - 1) // SIZE_DIVISIBLE * SIZE_DIVISIBLE - height
        pad_w = (width + SIZE_DIVISIBLE - 1) // SIZE_DIVISIBLE * SIZE_DIVISIBLE - width
        x = F.pad(x, (0, pad_w, 0, pad_h))  # zeros after normalisation, as eager batching pads

        logits_per_level, deltas, anchors = _raw_outputs(self.model, x)
        scores, anchor_idx, labels = topk_per_level(logits_per_level, self.topk)  # [B, N]
        picked = torch.gather(deltas, 1, anchor_idx.unsqueeze(-1).expand(-1, -1, 4))  # [B, N, 4]
        boxes = clip_boxes(decode_boxes(picked, anchors[anchor_idx]), height, width)
        return padded_nms(
            boxes, scores, labels, score_thresh=self.score_thresh, iou_thresh=self.nms_thresh, max_dets=self.max_dets
        )


def _normalisation_of(model: nn.Module) -> tuple[list[float], list[float]]:
    if hasattr(model, "forward_raw"):  # ours
        from retinanet.model.transform import IMAGE_MEAN, IMAGE_STD

        return list(IMAGE_MEAN), list(IMAGE_STD)
    transform = getattr(model, "transform", None)
    mean = getattr(model, "image_mean", None) or getattr(transform, "image_mean", None)
    std = getattr(model, "image_std", None) or getattr(transform, "image_std", None)
    if mean is None or std is None:
        raise RetinaNetError(f"{type(model).__name__}: cannot find the model's image mean/std to export")
    return [float(v) for v in mean], [float(v) for v in std]


def _raw_outputs(model: nn.Module, batch: Tensor) -> tuple[list[Tensor], Tensor, Tensor]:
    """Network outputs of a normalised, padded ``batch [B, 3, Hp, Wp]``.

    Returns:
        per-level logits ``[B, A_l, C]``, box regressions ``[B, A, 4]`` and anchors ``[A, 4]``
        (levels concatenated, row-major cells, anchors of a cell innermost).
    """
    features = model.backbone(batch)  # OrderedDict (torchvision) or a list, P3..P7
    features = list(features.values()) if isinstance(features, dict) else list(features)
    if hasattr(model, "forward_raw"):  # ours: per-level heads; anchors from shapes (no cache)
        from retinanet.model.anchors import grid_anchors as level_anchors

        cls_levels, reg_levels = model._heads(features)
        image_hw = (batch.shape[-2], batch.shape[-1])
        anchors = [
            level_anchors((f.shape[-2], f.shape[-1]), image_hw, size, batch.device)
            for f, size in zip(features, model.anchor_cache.sizes)
        ]
        return cls_levels, torch.cat(reg_levels, 1), torch.cat(anchors)
    logits = model.head.classification_head(features)  # [B, A, C]
    deltas = model.head.regression_head(features)  # [B, A, 4]
    generator = model.anchor_generator
    cells = [
        generator.generate_anchors(s, a, batch.dtype, batch.device)
        for s, a in zip(generator.sizes, generator.aspect_ratios)
    ]
    anchors, sizes = [], []
    for feature, cell in zip(features, cells):
        gh, gw = feature.shape[-2], feature.shape[-1]
        anchors.append(grid_anchors(cell, gh, gw, batch.shape[-2] // gh, batch.shape[-1] // gw))
        sizes.append(gh * gw * cell.shape[0])
    return list(logits.split(sizes, dim=1)), deltas, torch.cat(anchors)


# --- export -------------------------------------------------------------------------------------


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    opset: int = DEFAULT_OPSET,
    image_size: tuple[int, int] | int | None = None,
    batch_size: int = 1,
    dynamic: bool = True,
    input_dtype: str = "uint8",
    class_map: dict[str, int] | None = None,
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

    Returns:
        ``path``.

    Raises:
        RetinaNetError: when the exporter fails or the file cannot be written.
    """
    import onnx

    path = Path(path)
    if opset < DEFAULT_OPSET:
        raise RetinaNetError(f"{path}: opset {opset} is not supported; the exporter writes opset {DEFAULT_OPSET} or newer")
    height, width = _size_pair(image_size if image_size is not None else _model_min_size(model))
    wrapper = ExportableDetector(model.eval(), input_dtype=input_dtype).eval()
    if dynamic:  # see _MIN_TRACE_SIZE; batch 1 would likewise be specialised
        height, width, batch_size = max(height, _MIN_TRACE_SIZE), max(width, _MIN_TRACE_SIZE), max(batch_size, 2)
    example = _random_images(batch_size, height, width, input_dtype, seed=0)
    dims = {0: torch.export.Dim.DYNAMIC, 2: torch.export.Dim.DYNAMIC, 3: torch.export.Dim.DYNAMIC}
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's deprecation chatter, not ours
            torch.onnx.export(
                wrapper,
                (example,),
                str(path),
                dynamo=True,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=list(OUTPUT_NAMES),
                dynamic_shapes=(dims,) if dynamic else None,
                external_data=False,
                verbose=False,
            )
    except Exception as err:  # the exporter raises many kinds; keep its first line
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise RetinaNetError(f"{path}: ONNX export failed: {first}") from err
    proto = onnx.load(str(path))
    written = _opset_of(proto)
    if written != opset:
        raise RetinaNetError(f"{path}: asked for opset {opset}, but the exporter wrote opset {written}")
    if dynamic:
        _name_dynamic_dims(proto, ("batch", None, "height", "width"))
    _set_metadata(proto, _metadata(model, wrapper, class_map, dynamic))
    onnx.save(proto, str(path))
    return path


def _metadata(model: nn.Module, wrapper: ExportableDetector, class_map, dynamic: bool) -> dict[str, str]:
    config = getattr(model, "config", None)
    meta = {
        "format": "retinanet-onnx",
        "input": f"{INPUT_NAME} [B,3,H,W] {wrapper.input_dtype} RGB "
        + ("0..255" if wrapper.input_dtype == "uint8" else "0..1")
        + ", resized by the caller to the model's input size",
        "outputs": "boxes [B,K,4] xyxy pixels, scores [B,K], labels [B,K] (-1 = padding), num_detections [B]",
        "dynamic_axes": "batch, height, width" if dynamic else "none",
        "score_thresh": repr(wrapper.score_thresh),
        "nms_thresh": repr(wrapper.nms_thresh),
        "detections_per_img": str(wrapper.max_dets),
        "topk_candidates": str(wrapper.topk),
    }
    if config is not None:
        meta.update(arch=str(config.arch), num_classes=str(config.num_classes))
        meta.update(min_size=str(config.min_size), max_size=str(config.max_size))
    if class_map:
        meta["class_map"] = json.dumps({str(k): int(v) for k, v in class_map.items()}, sort_keys=True)
    return meta


def _opset_of(proto) -> int:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


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


def _model_min_size(model: nn.Module) -> int:
    config = getattr(model, "config", None)
    if config is not None:
        return int(config.min_size)
    return int(model.transform.min_size[-1])


def _size_pair(size: tuple[int, int] | Sequence[int] | int) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    size = tuple(int(s) for s in size)
    if len(size) == 1:
        return size[0], size[0]
    if len(size) != 2 or min(size) < 1:
        raise RetinaNetError(f"image size must be S or H W (positive), not {size}")
    return size  # type: ignore[return-value]


def _random_images(batch: int, height: int, width: int, dtype: str, seed: int) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch, 3, height, width), generator=gen, dtype=torch.uint8)
    return images if dtype == "uint8" else images.to(torch.float32) / 255.0


# --- verification -------------------------------------------------------------------------------


@dataclass
class BatchComparison:
    """onnxruntime vs PyTorch eager on one batch ``[B, 3, H, W]``."""

    shape: tuple[int, ...]
    counts_onnx: list[int]
    counts_torch: list[int]
    max_box_diff: float = 0.0  # px, over matched detections
    max_score_diff: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class VerifyReport:
    """What ``verify_onnx`` compared and found; ``format()`` is the text the CLI prints."""

    path: Path
    size_mb: float
    opset: int
    inputs: list[str]
    outputs: list[str]
    metadata: dict[str, str]
    batches: list[BatchComparison]

    @property
    def ok(self) -> bool:
        return all(b.ok for b in self.batches)

    def format(self) -> str:
        lines = [
            f"{'batch shape':<20} {'onnx dets':<16} {'torch dets':<16} {'max |d box| px':>15} {'max |d score|':>14}  result"
        ]
        for b in self.batches:
            lines.append(
                f"{'x'.join(map(str, b.shape)):<20} {str(b.counts_onnx):<16} {str(b.counts_torch):<16} "
                f"{b.max_box_diff:>15.3g} {b.max_score_diff:>14.3g}  {'ok' if b.ok else 'MISMATCH'}"
            )
            lines += [f"    - {p}" for p in b.problems]
        lines += [
            f"file:    {self.path} ({self.size_mb:.1f} MB, opset {self.opset})",
            f"inputs:  {', '.join(self.inputs)}",
            f"outputs: {', '.join(self.outputs)}",
        ]
        if "class_map" in self.metadata:
            lines.append(f"classes: {len(json.loads(self.metadata['class_map']))} names in metadata 'class_map'")
        if self.batches:
            lines.append("verification: " + ("passed" if self.ok else "FAILED"))
        else:
            lines.append("verification: skipped")
        return "\n".join(lines)


def verify_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    samples: Sequence[Tensor],
    *,
    box_atol: float = 1e-2,
    box_rtol: float = 1e-3,
    score_atol: float = 1e-4,
) -> VerifyReport:
    """Run the ONNX file with onnxruntime (CPU) and the model eagerly on ``samples``; compare.

    Per image the detection counts must be equal, and every eager detection must pair with an
    ONNX one of the same label whose box is within ``box_atol + box_rtol * |box|`` and whose
    score is within ``score_atol``.

    Args:
        model: the exported model, eval mode.
        path: the ``.onnx`` file.
        samples: batches ``[B, 3, H, W]`` in the graph's input dtype, each image already at the
            model's input size (``make_samples``/``load_samples``), so eager does not resize.

    Returns:
        ``VerifyReport`` (``report.ok``); does not raise on a mismatch.
    """
    import onnx
    import onnxruntime as ort

    path = Path(path)
    proto = onnx.load(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    batches = []
    for images in samples:
        got = session.run(None, {INPUT_NAME: images.numpy()})
        inputs = images.to(torch.float32) / (255.0 if images.dtype == torch.uint8 else 1.0)
        with torch.no_grad():
            expected = model.eval()(list(inputs))
        batches.append(_compare(images.shape, got, expected, box_atol, box_rtol, score_atol))
    return VerifyReport(
        path=path,
        size_mb=path.stat().st_size / 2**20,
        opset=_opset_of(proto),
        inputs=[_describe(v) for v in session.get_inputs()],
        outputs=[_describe(v) for v in session.get_outputs()],
        metadata={p.key: p.value for p in proto.metadata_props},
        batches=batches,
    )


def _describe(value) -> str:
    dims = ",".join(str(d) for d in value.shape)
    return f"{value.name} [{dims}] {value.type.replace('tensor(', '').rstrip(')')}"


def _compare(shape, got, expected, box_atol, box_rtol, score_atol) -> BatchComparison:
    boxes, scores, labels, counts = (torch.from_numpy(a) for a in got)
    result = BatchComparison(tuple(shape), [int(c) for c in counts], [len(e["scores"]) for e in expected])
    for b, ref in enumerate(expected):
        n = int(counts[b])
        if n != len(ref["scores"]):
            result.problems.append(f"image {b}: {n} detections from onnxruntime, {len(ref['scores'])} from PyTorch")
            continue
        box_diff, score_diff, unmatched = _match(
            boxes[b, :n], scores[b, :n], labels[b, :n], ref["boxes"].float(), ref["scores"].float(), ref["labels"]
        )
        result.max_box_diff = max(result.max_box_diff, box_diff)
        result.max_score_diff = max(result.max_score_diff, score_diff)
        if unmatched:
            result.problems.append(f"image {b}: {unmatched} PyTorch detection(s) have no ONNX twin with the same label")
        ref_scale = ref["boxes"].abs().max().item() if n else 0.0
        if box_diff > box_atol + box_rtol * ref_scale:
            result.problems.append(f"image {b}: boxes differ by up to {box_diff:.3g} px")
        if score_diff > score_atol:
            result.problems.append(f"image {b}: scores differ by up to {score_diff:.3g}")
    return result


def _match(boxes, scores, labels, ref_boxes, ref_scores, ref_labels) -> tuple[float, float, int]:
    """Pair each reference detection with the closest unpaired same-label one (greedy, best first).

    Returns:
        (max box abs diff, max score abs diff, number of reference detections left unpaired).
    """
    if len(ref_scores) == 0:
        return 0.0, 0.0, 0
    cost = (boxes[None, :, :] - ref_boxes[:, None, :]).abs().amax(-1)  # [n_ref, n]
    cost = cost.masked_fill(ref_labels[:, None] != labels[None, :], float("inf"))
    box_diff = score_diff = 0.0
    unmatched = 0
    for i in range(len(ref_scores)):  # n <= detections_per_img: verification, not a hot path
        j = int(cost[i].argmin())
        if not math.isfinite(float(cost[i, j])):
            unmatched += 1
            continue
        box_diff = max(box_diff, float(cost[i, j]))
        score_diff = max(score_diff, abs(float(scores[j] - ref_scores[i])))
        cost[:, j] = float("inf")
    return box_diff, score_diff, unmatched


def make_samples(model: nn.Module, image_size=None, batch_sizes: Sequence[int] = (2, 1), input_dtype: str = "uint8", seed: int = 0) -> list[Tensor]:
    """Random batches at two different input sizes (fixed points of the model's resizing).

    The first batch is ``image_size`` (default the model's ``min_size`` square) resized as the
    model would; each later one is wider by a quarter more, again resized. Seeded.
    """
    height, width = _size_pair(image_size if image_size is not None else _model_min_size(model))
    out = []
    for i, batch in enumerate(batch_sizes):
        h, w = _model_input_size(model, height, int(round(width * (1 + 0.25 * i))))
        out.append(_random_images(batch, h, w, input_dtype, seed=seed + i))
    return out


def load_samples(model: nn.Module, files: Sequence[str | os.PathLike], input_dtype: str = "uint8") -> list[Tensor]:
    """Each image file resized to the model's input size as a batch of 1, plus the first one twice.

    Raises:
        RetinaNetError: naming a file that cannot be read as an image.
    """
    images = []
    for file in files:
        size = _image_size_of(file)
        images.append(_read_rgb(file, *_model_input_size(model, *size)))
    if not images:
        return []
    batches = images + [images[0].expand(2, -1, -1, -1).contiguous()]
    return batches if input_dtype == "uint8" else [b.to(torch.float32) / 255.0 for b in batches]


def _model_input_size(model: nn.Module, height: int, width: int) -> tuple[int, int]:
    """The size the model resizes an image of ``height x width`` to (a fixed point of it)."""
    config = getattr(model, "config", None)
    if config is not None:
        from retinanet.geometry import resized_size

        return tuple(resized_size(height, width, config.min_size, config.max_size))  # type: ignore[return-value]
    transform = model.transform  # torchvision's GeneralizedRCNNTransform
    scale = min(transform.min_size[-1] / min(height, width), transform.max_size / max(height, width))
    return int(math.floor(height * scale)), int(math.floor(width * scale))


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
    verify: bool = True
    samples: tuple[str, ...] = ()  # image files to verify on; empty = random images


def export_checkpoint(weights: str | os.PathLike, out: str | os.PathLike, options: ExportOptions) -> tuple[Path, VerifyReport, float]:
    """Load a checkpoint, export it to ONNX and (unless ``options.verify`` is off) verify it.

    A static export is verified at its one input shape (twice with ``--sample`` files: each is
    resized to that shape); a dynamic one at two sizes and batch sizes.

    Returns:
        (onnx path, report (no batches when not verified), export seconds).

    Raises:
        RetinaNetError: unreadable checkpoint, failed export, or a verification mismatch (the
            message holds the comparison).
    """
    from retinanet.engine.checkpoint import load_model

    overrides = {} if options.score_thresh is None else {"score_thresh": options.score_thresh}
    model, class_map = load_model(weights, device="cpu", **overrides)
    size = options.image_size or None
    start = time.perf_counter()
    path = export_onnx(
        model, out, opset=options.opset, image_size=size, batch_size=options.batch_size,
        dynamic=options.dynamic, input_dtype=options.input_dtype, class_map=class_map,
    )
    seconds = time.perf_counter() - start
    samples = _verification_samples(model, options) if options.verify else []
    report = verify_onnx(model, path, samples)
    if not report.ok:
        raise RetinaNetError(f"{path}: ONNX output differs from PyTorch\n{report.format()}")
    return path, report, seconds


def _verification_samples(model: nn.Module, options: ExportOptions) -> list[Tensor]:
    if options.dynamic:
        if options.samples:
            return load_samples(model, options.samples, options.input_dtype)
        return make_samples(model, options.image_size or None, (2, 1), options.input_dtype)
    # a static graph takes one shape only, and eager must not resize it for the comparison
    height, width = _size_pair(options.image_size or _model_min_size(model))
    if _model_input_size(model, height, width) != (height, width):
        h, w = _model_input_size(model, height, width)
        raise RetinaNetError(
            f"image size {height}x{width}: the model resizes it to {h}x{w} (min_size/max_size), so a static "
            f"graph of that size cannot be compared with PyTorch; export at {h} {w}, or with --no-verify"
        )
    if not options.samples:
        return [_random_images(options.batch_size, height, width, options.input_dtype, seed=s) for s in (1, 2)]
    images = [_read_rgb(f, height, width) for f in options.samples]
    batch = torch.cat([images[i % len(images)] for i in range(options.batch_size)])
    return [batch if options.input_dtype == "uint8" else batch.to(torch.float32) / 255.0]


def _image_size_of(file: str | os.PathLike) -> tuple[int, int]:
    """``(height, width)`` of an image file; RetinaNetError naming it when it is not one."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(file) as im:
            return im.height, im.width
    except (OSError, UnidentifiedImageError) as err:
        raise RetinaNetError(f"{file}: cannot read the image ({err})") from None


def _read_rgb(file: str | os.PathLike, height: int, width: int) -> Tensor:
    """An image file as a ``[1, 3, height, width]`` uint8 RGB tensor (bilinear resize)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(file) as im:
            rgb = torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1)
    except (OSError, UnidentifiedImageError) as err:
        raise RetinaNetError(f"{file}: cannot read the image ({err})") from None
    if tuple(rgb.shape[1:]) == (height, width):
        return rgb[None]
    resized = F.interpolate(rgb[None].float(), size=(height, width), mode="bilinear", align_corners=False)
    return resized.round().clamp(0, 255).to(torch.uint8)
