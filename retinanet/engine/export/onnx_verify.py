"""Checking an exported ONNX detector against PyTorch eager with onnxruntime, and the images to
check it on (random, or image files resized to the model's input size).

Used by ``retinanet.engine.export.onnx_export`` after writing the file; ``verify_onnx`` can also be called on
its own (tests do, with new sizes and batch sizes).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from retinanet.data.images import load_image
from retinanet.errors import RetinaNetError
from retinanet.geometry import resized_size

EXPORT_HINT = "pip install 'retinanet[export]'"  # the extra with onnx, onnxruntime, onnxscript


@dataclass
class BatchComparison:
    """onnxruntime vs PyTorch eager on one batch ``[B, 3, H, W]``."""

    shape: tuple[int, ...]
    counts_onnx: list[int]
    counts_torch: list[int]
    max_box_diff: float = 0.0  # px, over matched detections
    max_score_diff: float = 0.0
    problems: list[str] = field(default_factory=list)
    k: int = 0  # the graph's K (detections per image it can give); 0: unknown

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def at_k(self) -> int:
        """Images of the batch whose ONNX detections filled the graph's K (more may have been cut)."""
        return sum(c >= self.k for c in self.counts_onnx) if self.k else 0


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
        lines = [  # the table only when something was compared (--no-verify: none)
            f"{'batch shape':<20} {'onnx dets':<16} {'torch dets':<16} {'max |d box| px':>15} {'max |d score|':>14}  result"
        ] if self.batches else []
        for b in self.batches:
            at_k = f" (K={b.k} reached)" if b.at_k else ""
            lines.append(
                f"{'x'.join(map(str, b.shape)):<20} {str(b.counts_onnx):<16} {str(b.counts_torch):<16} "
                f"{b.max_box_diff:>15.3g} {b.max_score_diff:>14.3g}  {'ok' if b.ok else 'MISMATCH'}{at_k}"
            )
            lines += [f"    - {p}" for p in b.problems]
        at_k = sum(b.at_k for b in self.batches)
        if at_k:
            k = max(b.k for b in self.batches)
            lines.append(f"note: {at_k} image(s) gave K = {k} detections, all the graph has room for (the model's "
                         "detections_per_img): both runtimes cut the rest alike, so the check compared the first K only; "
                         "`retinanet export --max-dets N` writes a graph with K = N")
        lines += [
            f"file:    {self.path} ({self.size_mb:.1f} MB, opset {self.opset})",
            f"inputs:  {', '.join(self.inputs)}",
            f"outputs: {', '.join(self.outputs)}",
        ]
        if "class_map" in self.metadata:
            lines.append(f"classes: {len(json.loads(self.metadata['class_map']))} names in metadata 'class_map'")
        compared = sum(sum(b.counts_torch) for b in self.batches)
        if self.batches:
            lines.append("verification: " + ("passed" if self.ok else "FAILED") + (
                "" if compared or not self.ok else " (but no image gave a detection above the score threshold, so "
                "no box or score was compared: give --sample images with objects)"))
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
    try:
        import onnx
        import onnxruntime as ort
    except ImportError as err:
        raise RetinaNetError(f"verifying the export needs the {err.name} package: {EXPORT_HINT}") from None

    path = Path(path)
    proto = onnx.load(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    batches = []
    for images in samples:
        got = session.run(None, {input_name: images.numpy()})
        inputs = images.to(torch.float32) / (255.0 if images.dtype == torch.uint8 else 1.0)
        with torch.no_grad():
            expected = model.eval()(list(inputs))
        batches.append(_compare(images.shape, got, expected, box_atol, box_rtol, score_atol))
        batches[-1].k = int(got[1].shape[1])  # scores [B, K]
    return VerifyReport(
        path=path,
        size_mb=path.stat().st_size / 2**20,
        opset=opset_of(proto),
        inputs=[_describe(v) for v in session.get_inputs()],
        outputs=[_describe(v) for v in session.get_outputs()],
        metadata={p.key: p.value for p in proto.metadata_props},
        batches=batches,
    )


def opset_of(proto) -> int:
    """The default-domain opset of a loaded ONNX model (0 when it has none)."""
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


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


# --- sample images ------------------------------------------------------------------------------


def size_pair(size: tuple[int, int] | Sequence[int] | int) -> tuple[int, int]:
    """``S`` or ``(S,)`` -> ``(S, S)``; ``(H, W)`` checked positive; RetinaNetError otherwise."""
    if isinstance(size, int):
        return size, size
    size = tuple(int(s) for s in size)
    if len(size) == 1:
        return size[0], size[0]
    if len(size) != 2 or min(size) < 1:
        raise RetinaNetError(f"image size must be S or H W (positive), not {size}")
    return size  # type: ignore[return-value]


def model_input_size(model: nn.Module, height: int, width: int) -> tuple[int, int]:
    """The size the model resizes an image of ``height x width`` to (a fixed point of it)."""
    return resized_size(height, width, model.config.min_size, model.config.max_size)


def random_images(batch: int, height: int, width: int, dtype: str, seed: int) -> Tensor:
    """Seeded ``[batch, 3, height, width]`` uint8 (0..255) or float32 (0..1) noise images."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch, 3, height, width), generator=gen, dtype=torch.uint8)
    return images if dtype == "uint8" else images.to(torch.float32) / 255.0


def make_samples(model: nn.Module, image_size=None, batch_sizes: Sequence[int] = (2, 1), input_dtype: str = "uint8", seed: int = 0) -> list[Tensor]:
    """Random batches at two different input sizes (fixed points of the model's resizing).

    The first batch is ``image_size`` (default the model's ``min_size`` square) resized as the
    model would; each later one is wider by a quarter more, again resized. Seeded.
    """
    height, width = size_pair(image_size if image_size is not None else model.config.min_size)
    out = []
    for i, batch in enumerate(batch_sizes):
        h, w = model_input_size(model, height, int(round(width * (1 + 0.25 * i))))
        out.append(random_images(batch, h, w, input_dtype, seed=seed + i))
    return out


def load_samples(model: nn.Module, files: Sequence[str | os.PathLike], input_dtype: str = "uint8") -> list[Tensor]:
    """Each image file resized to the model's input size as a batch of 1, plus the first one twice.

    Raises:
        RetinaNetError: naming a file that cannot be read as an image.
    """
    images = []
    for file in files:
        rgb = _read_image(file)
        images.append(_resized(rgb, *model_input_size(model, *rgb.shape[-2:])))
    if not images:
        return []
    batches = images + [images[0].expand(2, -1, -1, -1).contiguous()]
    return batches if input_dtype == "uint8" else [b.to(torch.float32) / 255.0 for b in batches]


def verification_samples(model: nn.Module, *, dynamic: bool, image_size: tuple[int, ...], batch_size: int,
                         input_dtype: str, files: Sequence[str | os.PathLike] = ()) -> list[Tensor]:
    """The batches ``retinanet export`` verifies on.

    A dynamic graph: two sizes and batch sizes (``make_samples``), or each file plus a batch of
    two (``load_samples``). A static graph: its one shape, random twice or from the files.

    Raises:
        RetinaNetError: a static size the model would resize (eager could not be compared), or
            an unreadable file.
    """
    if dynamic:
        if files:
            return load_samples(model, files, input_dtype)
        return make_samples(model, image_size or None, (2, 1), input_dtype)
    # a static graph takes one shape only, and eager must not resize it for the comparison
    height, width = size_pair(image_size or model.config.min_size)
    if model_input_size(model, height, width) != (height, width):
        h, w = model_input_size(model, height, width)
        raise RetinaNetError(
            f"image size {height}x{width}: the model resizes it to {h}x{w} (min_size/max_size), so a static "
            f"graph of that size cannot be compared with PyTorch; export at {h} {w}, or with --no-verify"
        )
    if not files:
        return [random_images(batch_size, height, width, input_dtype, seed=s) for s in (1, 2)]
    images = [_resized(_read_image(f), height, width) for f in files]
    # every file checked: batches of batch_size, the last one filled up from the first files
    batches = [torch.cat([images[(start + i) % len(images)] for i in range(batch_size)])
               for start in range(0, len(images), batch_size)]
    return [b if input_dtype == "uint8" else b.to(torch.float32) / 255.0 for b in batches]


def _read_image(file: str | os.PathLike) -> Tensor:
    """An image file as ``uint8 [3, H, W]`` RGB, read as every reader reads it
    (``retinanet.data.images.load_image``: the default EXIF rule and pixel limit); RetinaNetError
    naming the file when it cannot be read."""
    try:
        return load_image(file)
    except (OSError, ValueError, SyntaxError) as err:
        raise RetinaNetError(f"{file}: cannot read the image ({err})") from None


def _resized(rgb: Tensor, height: int, width: int) -> Tensor:
    """``uint8 [3, H, W]`` -> ``[1, 3, height, width]`` uint8 (bilinear resize)."""
    if tuple(rgb.shape[1:]) == (height, width):
        return rgb[None]
    resized = F.interpolate(rgb[None].float(), size=(height, width), mode="bilinear", align_corners=False)
    return resized.round().clamp(0, 255).to(torch.uint8)
