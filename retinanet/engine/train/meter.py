"""One epoch's step statistics, kept on the device so that a training step never waits for it.

``train_step`` returns device tensors; ``StepMeter.add`` sums them on the device after every step
and ``StepMeter.read`` copies the sums to the host (a sync) only at the logging points and at the
end of the epoch, as an ``MeterReading``; ``EpochStats`` is what the epoch reports.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class EpochStats:
    """Sums over one epoch's steps on this rank."""

    sums: dict[str, float] = field(default_factory=dict)  # loss name -> sum over finite steps
    steps: int = 0  # finite steps
    images: int = 0  # images of the finite steps
    skipped: int = 0  # non-finite steps
    seconds: float = 0.0


@dataclass
class MeterReading:
    """What ``StepMeter.read`` copies to the host: the epoch's sums so far."""

    sums: dict[str, float]  # loss name -> sum over the finite steps
    steps: int  # finite steps
    images: int  # their images
    skipped: int  # non-finite steps
    streak: int  # consecutive non-finite steps up to the last one (across epochs)
    limit_step: int  # 0-based step of the epoch at which the streak reached the limit; -1: it did not
    last: dict[str, float]  # the losses of the last step (nan if it was not finite)


class StepMeter:
    """One epoch's step statistics kept on the device, so that a step never waits for it.

    ``add`` after every step (device ops only); ``read`` (one copy to the host: a sync) at the
    logging points. Args: ``keys``: the loss names of ``train_step``'s result; ``streak``: the
    consecutive non-finite steps before; ``limit``: the streak that ``read`` reports; ``start``:
    the sums of the epoch's steps done before (a run resumed mid-epoch).
    """

    def __init__(self, device: torch.device, keys: tuple[str, ...], streak: int, limit: int,
                 start: EpochStats | None = None):
        start = start or EpochStats()
        self.keys, self.limit = keys, limit
        self.dtype = torch.float32 if device.type == "mps" else torch.float64  # mps has no float64
        self.sums = torch.tensor([start.sums.get(k, 0.0) for k in keys], dtype=self.dtype, device=device)
        self.last = torch.zeros(len(keys), dtype=self.dtype, device=device)
        # finite steps, their images, skipped steps, current streak of non-finite ones
        self.counts = torch.tensor([start.steps, start.images, start.skipped, streak], dtype=torch.int64, device=device)
        self.limit_step = torch.full((), -1, dtype=torch.int64, device=device)

    def add(self, step: dict[str, torch.Tensor], num_images: int, i: int) -> None:
        """Count step ``i`` (0-based in the epoch): ``step`` is ``train_step``'s result."""
        finite = step["finite"]
        values = torch.stack([step[k] for k in self.keys]).to(self.dtype)
        self.sums += torch.where(finite, values, 0.0)  # where, not a product: nan * 0 is nan
        self.last = torch.where(finite, values, float("nan"))
        f = finite.to(torch.int64)
        streak = (self.counts[3] + 1) * (1 - f)
        self.counts += torch.stack((f, f * num_images, 1 - f, streak - self.counts[3]))
        self.limit_step = torch.where((streak >= self.limit) & (self.limit_step < 0), i, self.limit_step)

    def read(self) -> MeterReading:
        """The sums so far, in one device-to-host copy."""
        v = torch.cat([self.sums, self.last, self.counts.to(self.dtype), self.limit_step.to(self.dtype)[None]]).tolist()
        n = len(self.keys)
        steps, images, skipped, streak, limit_step = (int(x) for x in v[2 * n:])
        return MeterReading(dict(zip(self.keys, v[:n])), steps, images, skipped, streak, limit_step,
                            dict(zip(self.keys, v[n:2 * n])))
