"""No host-device sync in the steady-state training step, found on the CPU.

``benchmarks/sync_audit.py`` runs ``train_one_epoch``'s body (lr, ``train_step``, ``StepMeter.add``,
EMA) on a tiny model under a ``TorchDispatchMode`` that records every op that would make a GPU wait
for the host (``.item()``, ``nonzero``, boolean-mask indexing, copies to the host, blocking copies
to the device, ...), each named ``op @ retinanet/FILE:FUNCTION``. These tests assert the exact set
of such sites: a new sync fails them, with the audit's table (op, site, line, cause).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))
try:
    import sync_audit
finally:
    sys.path.pop(0)

# Every sync allowed in a steady-state step, with its reason. None on the paths `retinanet train`
# takes on CPU and CUDA devices (fused optimizer): losses, counts and the non-finite flag stay on the device.
ALLOWED: dict[str, str] = {}
# The optimizer of other devices (MPS: no fused SGD/AdamW, so no found_inf to skip a step on the device)
NOT_FUSED = {
    # optimizer_step: `elif bool(finite)`, the non-finite step decided on the host; never on CPU or CUDA
    "aten._local_scalar_dense @ retinanet/engine/train/optim.py:optimizer_step",
}
# StepMeter.read: once per logging point (every print_every steps and at the epoch's end), not per step
LOGGING_POINT = {"Tensor.tolist @ retinanet/engine/train/meter.py:read"}


def _found(audit) -> set[str]:
    return {key for counts in audit.by_step().values() for key in counts}


def test_steady_state_train_step_syncs_only_where_named():
    """The CPU default (fp32, fused SGD): warm-up and first step at 64x64, the second at 64x96 (the
    model's input size is 64 to 128 px: not resized), a new padded size, which the anchor cache
    misses, as it does for every new size of a run with mixed aspect ratios."""
    square = sync_audit.tiny_batch()
    audit = sync_audit.audit_train_step(steps=2, warmup=1, batches=[square, square, sync_audit.tiny_batch(width=96, seed=1)])
    assert audit.steps == 2
    assert _found(audit) == set(ALLOWED), sync_audit.table(audit, audit.steps)


V2 = dict(sync_audit.TINY, arch="resnet18_fpn_v2")  # the recipes' arch: GroupNorm heads, GIoU box loss


@pytest.mark.parametrize("options", [
    # --amp auto on GPUs with bf16, the v2 arch (GIoU), AdamW, clip, EMA (its update)
    dict(amp="bf16", optimizer="adamw", clip=5.0, ema=True, model_options=V2),
    dict(amp="off", grad_scaling=True, clip=5.0),  # fp16's GradScaler (unscale_, found_inf, update); fp32 compute
], ids=["v2-bf16-adamw-clip-ema", "gradscaler-clip"])
def test_other_train_step_paths_sync_only_where_named(options):
    audit = sync_audit.audit_train_step(steps=1, warmup=1, **options)
    assert audit.steps == 1
    assert _found(audit) == set(ALLOWED), sync_audit.table(audit, audit.steps)


def test_a_sync_is_found_and_named_and_the_optimizer_of_other_devices_syncs_where_said(monkeypatch):
    """The audit sees a sync added to the step (here the non-fused optimizer's host decision)."""
    audit = sync_audit.audit_train_step(steps=1, warmup=1, fused=False)
    assert _found(audit) == NOT_FUSED, sync_audit.table(audit, audit.steps)
    import retinanet.model.loss as L

    real = L.retinanet_loss

    def with_a_mask(cls_logits, bbox_reg, anchors, targets, box_loss="l1"):
        losses = real(cls_logits, bbox_reg, anchors, targets, box_loss)
        losses["bbox_regression"] = losses["bbox_regression"] + bbox_reg[bbox_reg > 1e9].sum()  # x[mask]: a nonzero
        return losses

    monkeypatch.setattr("retinanet.model.retinanet.retinanet_loss", with_a_mask)
    audit = sync_audit.audit_train_step(steps=1, warmup=1)
    # named by the innermost frame in the package: the forward that called the loss; its backward too
    assert _found(audit) == {"aten.index @ retinanet/model/retinanet.py:forward",
                             "aten.index_put @ retinanet/engine/train/loop.py:train_step via "
                             "torch/autograd/graph.py:_engine_run_backward"}, sync_audit.table(audit, 1)
    assert all("boolean-mask" in e.cause for e in audit.events)


def test_the_logging_point_reads_the_meter_in_one_copy():
    from retinanet.engine.train.loop import LOSSES, StepMeter

    meter = StepMeter(torch.device("cpu"), LOSSES, streak=0, limit=5)
    step = {k: torch.tensor(1.0) for k in LOSSES} | {"finite": torch.tensor(True)}
    meter.add(step, 2, 0)
    audit = sync_audit.SyncAudit()
    with sync_audit.recording(audit):
        audit.begin(0)
        reading = meter.read()
    assert {e.key for e in audit.events} == LOGGING_POINT and len(audit.events) == 1
    assert reading.steps == 1 and reading.images == 2


# Inference (model.eval() forward, decode_batch, the evaluation's copy to the host): the syncs it
# keeps, each inherent in returning detections of data-dependent number
INFERENCE = {
    # the images' unpadded sizes, Python ints, copied to the device for the clip (before the network is queued)
    "torch.tensor @ retinanet/model/retinanet.py:detect",
    # per level: the candidates above the score threshold (eager decode: NMS sees only those)
    "aten.nonzero_numpy @ retinanet/model/postprocess.py:_level_candidates",
    # the candidates left with an area after the clip (one nonzero for the four tensors)
    "aten.nonzero @ retinanet/model/postprocess.py:decode_batch",
    # the detections' count per image (to cut the padded layout into one dict per image) and whether
    # a level's top-k cut candidates: one read
    "Tensor.tolist @ retinanet/model/retinanet.py:detect",
    # the evaluation's one copy of a batch's detections to the host
    "Tensor.cpu @ retinanet/engine/evaluate/loop.py:detections_to_host",
}


def test_inference_syncs_only_where_named():
    """At the model's threshold (0.05; an untrained model's candidates fall below it: NMS, itself a
    sync, does not run, and a trained model's per-level top-k check reads a count too). The second
    image is larger than the model's input: its boxes are scaled back without a copy to the device."""
    audit = sync_audit.audit_inference(passes=1, warmup=1, sizes=((64, 64), (64, 200)))
    assert {e.key for e in audit.events} == INFERENCE, sync_audit.table(audit, 1)
