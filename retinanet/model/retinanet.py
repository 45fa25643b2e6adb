"""The RetinaNet module and ``build_model``."""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torchvision.models.detection.retinanet import RetinaNetHead

from retinanet.config import ModelConfig, check_limits
from retinanet.errors import RetinaNetError
from retinanet.geometry import resize_boxes
from retinanet.model.anchors import NUM_ANCHORS, AnchorCache
from retinanet.model.backbone import REGNETS, build_backbone, group_norm_32
from retinanet.model.loss import retinanet_loss
from retinanet.model.postprocess import decode_batch, decode_batch_static, unpad_detections
from retinanet.model.transform import batch_images, normalize, pad_to_divisible, padded_size_groups

ARCHS = {
    "resnet18_fpn": ("resnet18", False), "resnet34_fpn": ("resnet34", False),
    "resnet50_fpn": ("resnet50", False), "resnet101_fpn": ("resnet101", False),
    "resnet18_fpn_v2": ("resnet18", True), "resnet34_fpn_v2": ("resnet34", True),
    "resnet50_fpn_v2": ("resnet50", True), "resnet101_fpn_v2": ("resnet101", True),
    "resnet152_fpn": ("resnet152", False), "resnet152_fpn_v2": ("resnet152", True),
    **{f"{name}_fpn{v}": (name, v == "_v2") for name in REGNETS for v in ("", "_v2")},
}
PRETRAINED_TRAINABLE_LAYERS = 3  # torchvision's default for a pretrained backbone (5 = all, from scratch)


class Detected(NamedTuple):
    """``RetinaNet.detect``'s result: per image the detections ``forward`` returns (``{"boxes",
    "scores", "labels"}``) and ``candidates_cut`` (0.0, or the score at which a level's top-k cut
    candidates above the threshold)."""

    detections: list[dict[str, Tensor]]
    candidates_cut: list[float]


class RetinaNet(nn.Module):
    """RetinaNet detector with torchvision's calling convention and state_dict keys.

    Owns ``backbone`` and ``head``; anchors/transform are non-persistent helpers.
    The network computes in the memory format of its conv weights: NCHW as built;
    ``model.to(memory_format=torch.channels_last)`` switches it to NHWC (what ``retinanet
    train/eval/predict`` use by default; which is faster depends on the machine, see
    BENCHMARKS.md). Outputs differ only by float rounding.

    Two ways to detect, with the same post-processing math (``retinanet.model.postprocess``):
    ``forward`` (eager: a list of images of any sizes, one dict per image) and ``detect_padded``
    (fixed shapes, padded outputs: the graph ``retinanet export`` writes to ONNX).
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        depth, v2 = ARCHS[config.arch]
        self.config = config
        self.v2 = v2
        self.box_loss = config.box_loss or ("giou" if v2 else "l1")
        self.backbone = build_backbone(depth, v2, config.norm, config.trainable_backbone_layers,
                                       config.fpn_channels, config.frozen_bn_eps)
        self.head = RetinaNetHead(config.fpn_channels, NUM_ANCHORS, config.num_classes,
                                  norm_layer=group_norm_32() if v2 else None)
        for subnet in (self.head.classification_head, self.head.regression_head):
            subnet.conv = subnet.conv[:config.head_convs]  # torchvision builds 4
        self.anchor_cache = AnchorCache(tuple(config.anchor_sizes))

    @property
    def memory_format(self) -> torch.memory_format:
        """``torch.channels_last`` or ``torch.contiguous_format``: the layout of the conv weights."""
        w = self.head.regression_head.bbox_reg.weight  # [36, C, 3, 3], C >= 8: the two layouts differ
        return torch.contiguous_format if w.is_contiguous() else torch.channels_last

    def forward_raw(self, batch: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """Network computation only: backbone -> FPN -> heads.

        Args:
            batch: ``[B, 3, H, W]`` normalised, padded images.
        Returns:
            per FPN level: cls logits ``[B, H_l*W_l*NUM_ANCHORS, C]`` and box deltas
            ``[B, H_l*W_l*NUM_ANCHORS, 4]``.
        """
        batch = batch.contiguous(memory_format=self.memory_format)
        return self._heads(list(self.backbone(batch).values()))

    def _raw_with_anchors(self, batch: Tensor) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """``forward_raw`` plus the anchors of each level ``[H_l*W_l*NUM_ANCHORS, 4]``."""
        feats = list(self.backbone(batch).values())
        anchors = self.anchor_cache([f.shape[-2:] for f in feats], batch.shape[-2:], batch.device)
        return *self._heads(feats), anchors

    def forward(self, images: list[Tensor], targets: list[dict] | None = None, *, score_thresh: float | None = None,
                resize: bool = True, max_dets: int | None = None):
        """Train mode: dict of losses. Eval mode: one dict per image (original pixel frame), with
        scores above ``score_thresh`` (None: ``config.score_thresh``; an argument, so calls
        with different thresholds can share one model), at most ``max_dets`` per image (None:
        ``config.detections_per_img``). ``resize=False``: the images enter the network at their own
        size, not resized to ``min_size`` (native-resolution tiles). In eval mode this is
        ``detect(...).detections``: ``detect`` also says, per image, whether candidates were cut.

        In eval mode images of different padded sizes run in one pass per size: each image's
        detections are those it gets alone. Padded together, the smaller image's padding would
        enter the statistics of the v2 heads' GroupNorm (and the features at its edges): its
        scores, and an evaluation's AP, would depend on the batch (torchvision's do)."""
        check_images(images)
        if not self.training:
            return self.detect(images, score_thresh=score_thresh, resize=resize, max_dets=max_dets).detections
        if targets is None:
            raise RetinaNetError("the model is in training mode: targets are required")
        c = self.config
        orig = [(int(i.shape[-2]), int(i.shape[-1])) for i in images]
        batch, sizes = batch_images(images, c.min_size, c.max_size, self.memory_format, resize=resize)
        targets = [dict(t, boxes=resize_boxes(t["boxes"], o, s)) if o != s else t for t, o, s in zip(targets, orig, sizes)]
        cls_out, reg_out, anchors = self._raw_with_anchors(batch)
        with torch.autocast(batch.device.type, enabled=False):
            return retinanet_loss(torch.cat(cls_out, 1), torch.cat(reg_out, 1), torch.cat(anchors, 0), targets,
                                  self.box_loss)

    def detect(self, images: list[Tensor], *, score_thresh: float | None = None, resize: bool = True,
               max_dets: int | None = None) -> Detected:
        """Eval-mode detection (the model in eval mode), arguments as ``forward``: ``Detected``, the
        detections ``forward`` returns and, per image, ``candidates_cut``: 0, or, for an image with
        fewer than ``max_dets`` detections while an FPN level had more candidates above
        ``score_thresh`` than the top-k it keeps for NMS (``ModelConfig.candidates_per_level``),
        the score of the last candidate that level kept (the ones left out scored at most this):
        a larger ``topk_candidates`` could give more detections. Never at ``score_thresh`` 0, where
        the top-k is the selection. Read in the same device-to-host transfer as the detection counts."""
        check_images(images)
        c = self.config
        groups = padded_size_groups(images, c.min_size, c.max_size, resize)
        if len(groups) > 1:  # one pass per padded size: an image's detections never depend on its batch-mates
            dets: list[dict] = [{}] * len(images)
            cuts = [0.0] * len(images)
            for idx in groups:
                part = self.detect([images[i] for i in idx], score_thresh=score_thresh, resize=resize, max_dets=max_dets)
                for i, d, cut in zip(idx, part.detections, part.candidates_cut):
                    dets[i], cuts[i] = d, cut
            return Detected(dets, cuts)
        orig = [(int(i.shape[-2]), int(i.shape[-1])) for i in images]
        batch, sizes = batch_images(images, c.min_size, c.max_size, self.memory_format, resize=resize)
        # the sizes' copy to the device (blocking on a GPU) before the network is queued, not after it
        image_hw = torch.tensor(sizes, device=batch.device)
        cls_out, reg_out, anchors = self._raw_with_anchors(batch)
        thresh = c.score_thresh if score_thresh is None else float(score_thresh)
        cap = c.detections_per_img if max_dets is None else int(max_dets)
        boxes, scores, labels, num, cut = decode_batch(cls_out, reg_out, anchors, image_hw, thresh, c.nms_thresh, cap,
                                                       c.candidates_per_level(cap))
        # one read, as num alone was; float32: counts exact below 2^24, and mps has no float64
        counts, cuts = torch.stack([num.float(), cut.float()]).tolist()
        dets = unpad_detections(boxes, scores, labels, [int(n) for n in counts])
        for d, o, s in zip(dets, orig, sizes):
            if o != s:
                d["boxes"] = resize_boxes(d["boxes"], s, o)
        return Detected(dets, cuts)

    def detect_padded(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Fixed-shape detection of a batch of equal-size images (the exported ONNX graph).

        Unlike ``forward`` it does not resize: the images must already be at the model's input
        size (``retinanet.model.transform.resized_size``); detections are in their pixel frame.
        Every shape follows from the input's, so ``torch.export`` can trace it with dynamic
        ``B``, ``H`` and ``W`` (post-processing: ``decode_batch_static``).

        Args:
            images: ``[B, 3, H, W]`` uint8 (0..255) or float (0..1) RGB.
        Returns:
            boxes ``[B, D, 4]``, scores ``[B, D]``, labels ``[B, D]``, num ``[B]``, ``D =
            detections_per_img``; rows from ``num[b]`` on are padding: label ``PAD_LABEL`` (-1),
            score 0, box 0 (``retinanet.model.postprocess``).
        """
        c = self.config
        image_hw = torch.tensor([images.shape[-2], images.shape[-1]], device=images.device)
        batch = pad_to_divisible(normalize(images)).contiguous(memory_format=self.memory_format)
        cls_out, reg_out, anchors = self._raw_with_anchors(batch)
        return decode_batch_static(cls_out, reg_out, anchors, image_hw, c.score_thresh, c.nms_thresh,
                                   c.detections_per_img, c.candidates_per_level())

    def _heads(self, feats: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        ch, rh = self.head.classification_head, self.head.regression_head
        cls_out, reg_out = [], []
        for f in feats:
            c = ch.cls_logits(ch.conv(f))  # [B, A*K, H, W], channel = anchor * K + class
            r = rh.bbox_reg(rh.conv(f))
            # [B, H, W, A*K] -> [B, H*W*A, K]: torchvision's order; a view for channels_last outputs
            cls_out.append(c.permute(0, 2, 3, 1).reshape(c.shape[0], -1, c.shape[1] // NUM_ANCHORS))
            reg_out.append(r.permute(0, 2, 3, 1).reshape(r.shape[0], -1, 4))
        return cls_out, reg_out


def check_images(images) -> None:
    """Raise ``RetinaNetError`` unless ``images`` is a list (or tuple) of ``[3, H, W]`` tensors: a
    single ``[3, H, W]`` tensor would otherwise run as three one-channel "images"."""
    if isinstance(images, (list, tuple)) and all(isinstance(i, Tensor) and i.dim() == 3 and i.shape[0] == 3 for i in images):
        return
    def what(x) -> str:
        return f"a tensor of shape {list(x.shape)}" if isinstance(x, Tensor) else f"a {type(x).__name__}"

    got, hint = what(images), ""
    if isinstance(images, (list, tuple)):
        got += " holding " + ", ".join(what(i) for i in list(images)[:3])
    elif isinstance(images, Tensor) and images.dim() in (3, 4):
        hint = "; give [image]" if images.dim() == 3 else "; give list(batch)"
    raise RetinaNetError(f"the model takes a list of [3, H, W] image tensors (RGB, uint8 0..255 or float 0..1), got {got}{hint}")


def check_anchor_sizes(sizes) -> None:
    """Raise ``RetinaNetError`` unless ``sizes`` are 5 increasing whole numbers >= 4 (one per FPN level)."""
    if (len(sizes) != 5 or not all(isinstance(s, int) and not isinstance(s, bool) for s in sizes)
            or sizes[0] < 4 or any(b <= a for a, b in zip(sizes, sizes[1:]))):
        raise RetinaNetError(f"anchor_sizes must be 5 increasing whole numbers >= 4 (pixels, one per FPN level "
                             f"P3..P7), got {list(sizes)}")


def check_arch(arch: str) -> None:
    """Raise ``RetinaNetError`` for an ``arch`` not in ``ARCHS``, naming the ones there are."""
    if arch not in ARCHS:
        raise RetinaNetError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")


def build_model(arch: str = "resnet50_fpn", num_classes: int = 91, **options) -> RetinaNet:
    """Build a RetinaNet from ``ModelConfig`` fields.

    Args:
        arch: one of ``ARCHS``. num_classes: classification outputs (id 0 never a real class).
        **options: other ``ModelConfig`` fields.
    ``norm`` and ``trainable_backbone_layers`` left None get the settings of a pretrained start
    (``frozen_bn``, 3), as for loading torchvision's files; ``retinanet.engine.train.start`` resolves
    them from a training run's start instead (from scratch: ``bn``, 5).

    Returns:
        RetinaNet with ``model.config`` set (no None left in ``norm``, ``trainable_backbone_layers``).
    Raises:
        RetinaNetError: unknown arch, option or option value.
    """
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise RetinaNetError(f"unknown model option(s): {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(fields))}")
    check_arch(arch)
    check_limits({"num_classes": num_classes, **options}, "model", "build_model")  # score_thresh=5 and the like
    config = ModelConfig(arch=arch, num_classes=num_classes, **options)
    config = dataclasses.replace(config, norm=config.norm or "frozen_bn",
                                 trainable_backbone_layers=PRETRAINED_TRAINABLE_LAYERS
                                 if config.trainable_backbone_layers is None else config.trainable_backbone_layers)
    if config.norm not in ("bn", "frozen_bn"):
        raise RetinaNetError(f"unknown norm {config.norm!r}; choose 'bn' or 'frozen_bn'")
    if config.box_loss not in (None, "l1", "giou"):
        raise RetinaNetError(f"unknown box_loss {config.box_loss!r}; choose 'l1' or 'giou'")
    if not 0 <= config.trainable_backbone_layers <= 5:
        raise RetinaNetError("trainable_backbone_layers must be in 0..5, "
                             f"got {config.trainable_backbone_layers}")
    if not 1 <= config.head_convs <= 4:
        raise RetinaNetError(f"head_convs must be in 1..4, got {config.head_convs}")
    if config.fpn_channels < 8 or (ARCHS[arch][1] and config.fpn_channels % 32):
        raise RetinaNetError(f"fpn_channels must be >= 8 (a multiple of 32 for the v2 GroupNorm heads), "
                             f"got {config.fpn_channels}")
    check_anchor_sizes(config.anchor_sizes)
    config = dataclasses.replace(config, anchor_sizes=tuple(config.anchor_sizes))
    if not config.frozen_bn_eps >= 0:
        raise RetinaNetError(f"frozen_bn_eps must be >= 0, got {config.frozen_bn_eps}")
    if config.num_classes < 1:
        raise RetinaNetError(f"num_classes must be >= 1, got {config.num_classes}")
    check_input_size(config.min_size, config.max_size)
    return RetinaNet(config)


def check_input_size(min_size: int, max_size: int) -> None:
    """Raise ``RetinaNetError`` for an input size that cannot be what was meant: a side below 1,
    or ``min_size`` above ``max_size`` (the long side's cap then decides every scale, and the short
    side never reaches ``min_size``: ``--min-size 320`` on a checkpoint of ``max_size`` 160 would
    change nothing)."""
    for name, value in (("min_size", min_size), ("max_size", max_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise RetinaNetError(f"{name} must be a whole number of pixels >= 1, got {value!r}")
    if min_size > max_size:
        raise RetinaNetError(f"min_size {min_size} is above max_size {max_size}: the long side's cap would decide "
                             f"every image's scale and the short side would never reach {min_size}; give a max_size "
                             f"of at least {min_size} (--max-size), or a smaller min_size")
