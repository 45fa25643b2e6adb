"""The DDP training step waits for the other ranks only in DDP's own gradient all-reduce.

``benchmarks/sync_audit.py``'s audit (``test_syncs.py``: the host-device syncs of a step) run in
2 processes of a gloo group on the CPU (``ddp_audit``), the model wrapped as ``setup`` wraps it
(``distributed.wrap_ddp``), recording the collectives too: the step and the real ``train()`` loop
may add none per step, each named ``op @ retinanet/FILE:FUNCTION`` (a new one fails with the
audit's table). One spawn of 2 processes for every test here (30-50 s on 2 busy cores, most of it
the processes' start: marked slow, run by the whole suite).
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

pytestmark = pytest.mark.slow

# DDP's gradient all-reduce, one per gradient bucket, run by its hooks in the backward: the one
# collective a step needs (its bucket count depends on the model's size, not asserted)
GRADIENTS = "c10d.allreduce_ @ retinanet/engine/train/loop.py:train_step via torch/autograd/graph.py:_engine_run_backward"
# fp16's GradScaler (GPUs without bf16) skips a step whose gradients overflowed without counting it as
# non-finite, so a non-finite loss cannot ride on the gradients there: the ranks all-reduce the loss
SCALER = {GRADIENTS, "c10d.allreduce_ @ retinanet/engine/runtime/distributed.py:all_reduce_mean via "
          "torch/distributed/distributed_c10d.py:all_reduce"}
# the loop's logging points (every print_every steps and the epoch's last): the meter's one copy to the
# host (as in a single process, test_syncs.py) and the stop check agreed by every rank (any_rank: its flag
# copied to the device, all-reduced, read back); with --time the deadline's check too (the same sites)
LOGGING_POINT = {"Tensor.tolist @ retinanet/engine/train/meter.py:read",
                 "torch.tensor @ retinanet/engine/runtime/distributed.py:any_rank",
                 "c10d.allreduce_ @ retinanet/engine/runtime/distributed.py:any_rank via "
                 "torch/distributed/distributed_c10d.py:all_reduce",
                 "aten._local_scalar_dense @ retinanet/engine/runtime/distributed.py:any_rank"}


class InfOnRank1(torch.nn.Module):
    """The model, with an infinite constant added to rank 1's loss when ``poison`` is set: its loss
    is not finite and its gradients are (the case the gradients alone would not tell)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.poison = model, False

    def forward(self, images, targets):
        losses = self.model(images, targets)
        if self.poison and torch.distributed.get_rank() == 1:
            losses["classification"] = losses["classification"] + torch.tensor(float("inf"))
        return losses


def _inf_on_one_rank() -> dict:
    """3 DDP steps, rank 1's loss infinite at the second: what each rank's step says and did."""
    from retinanet.engine.runtime import distributed as D
    from retinanet.engine.train.loop import train_step

    model, opt, scaler, precision, _, cfg = sync_audit.build_step()
    wrapped = InfOnRank1(model)
    net = D.wrap_ddp(wrapped, torch.device("cpu"))
    images, targets = sync_audit.tiny_batch(seed=D.get_rank())
    finite, unchanged = [], []
    for i in range(3):
        wrapped.poison = i == 1
        before = [p.detach().clone() for p in model.parameters()]
        out = train_step(net, opt, images, targets, cfg, torch.device("cpu"), scaler, precision)
        finite.append(bool(out["finite"]))
        unchanged.append(all(torch.equal(a, p) for a, p in zip(before, model.parameters())))
    weights = torch.cat([p.detach().flatten() for p in model.parameters()])
    return {"finite": finite, "unchanged": unchanged, "weights": D.all_gather_object(weights.tolist()) == [weights.tolist()] * 2}


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    jobs = [("fp32", "step", dict(steps=2, warmup=2)),  # CPU and CUDA's default path (fused SGD); warm-up:
            # DDP's second iteration rebuilds its buckets (a broadcast, once)
            ("gradscaler", "step", dict(steps=1, warmup=2, amp="off", grad_scaling=True, clip=5.0)),
            ("run", "run", dict(steps=4))]  # train(): 4 steps per rank, the first a warm-up, the last a logging point
    return sync_audit.ddp_audit(jobs, world=2, root=tmp_path_factory.mktemp("ddp-audit"), then=_inf_on_one_rank)


def test_the_ddp_step_waits_only_in_ddps_gradient_all_reduce(ranks):
    for rank in ranks:
        audit = rank["fp32"]
        assert audit.steps == 2
        assert audit.syncs() == set(), sync_audit.table(audit, audit.steps)
        assert set(audit.collectives()) == {GRADIENTS}, sync_audit.table(audit, audit.steps)
        assert all(GRADIENTS in counts for counts in audit.by_step().values())  # every audited step


def test_the_gradscaler_step_names_its_loss_all_reduce(ranks):
    for rank in ranks:
        audit = rank["gradscaler"]
        assert audit.syncs() == set() and set(audit.collectives()) == SCALER, sync_audit.table(audit, audit.steps)


def test_the_ddp_train_loop_adds_collectives_only_at_its_logging_points(ranks):
    """The real train() under DDP (loader, lr, step, meter, EMA off, the loop's checks): a steady
    step has DDP's all-reduce alone; the logging point adds the agreed stop check."""
    for rank in ranks:
        audit = rank["run"]
        assert audit.steps == 3 and audit.logging_points == {2}
        by_step = audit.by_step()
        # audited step 0 is DDP's second iteration: it rebuilds its gradient buckets (a broadcast, once)
        assert set(by_step[0]) - {GRADIENTS} <= {"c10d.broadcast_ @ retinanet/engine/train/loop.py:train_step via "
                                                 "torch/nn/parallel/distributed.py:_pre_forward"}
        assert set(by_step[1]) == {GRADIENTS}, sync_audit.table(audit, audit.steps)
        assert set(by_step[2]) == {GRADIENTS} | LOGGING_POINT, sync_audit.table(audit, audit.steps)


def test_a_non_finite_loss_on_one_rank_skips_the_step_on_every_rank(ranks):
    """The loss's finiteness rides on the gradient all-reduce (train_step): rank 1's infinite loss
    with finite gradients still stops every rank's step, and the weights stay equal across ranks."""
    assert [r["then"]["finite"] for r in ranks] == [[True, False, True]] * 2
    assert [r["then"]["unchanged"] for r in ranks] == [[False, True, False]] * 2
    assert all(r["then"]["weights"] for r in ranks)
