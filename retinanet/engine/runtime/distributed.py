"""DDP plumbing over ``torch.distributed``: set-up from torchrun's environment and small helpers.

Every helper works unchanged in a single process (world size 1), so the engine has one code path.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from retinanet.data.sampler import dist_info
from retinanet.engine.runtime.device import usable_device
from retinanet.errors import RetinaNetError

T = TypeVar("T")


def is_dist() -> bool:
    """True when a process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist_info()[0]


def get_world_size() -> int:
    return dist_info()[1]


def is_main_process() -> bool:
    return get_rank() == 0


def launch_rank() -> int:
    """This process's rank as the launcher (torchrun's ``RANK``) gave it, before or after joining
    the process group: 0 for a single process."""
    return int(os.environ.get("RANK", "0")) if launched_by_torchrun() else 0


def launch_local_rank() -> int:
    """This process's rank on its machine as torchrun gave it (``LOCAL_RANK``): 0 for a single process.
    Each machine's local rank 0 speaks for what every process there meets alike (same files)."""
    return int(os.environ.get("LOCAL_RANK", "0")) if launched_by_torchrun() else 0


def launched_by_torchrun() -> bool:
    """True when torchrun (or another launcher) set WORLD_SIZE > 1 in the environment."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device: torch.device, timeout_min: float = 30.0) -> bool:
    """Join the process group described by torchrun's variables, if any.

    NCCL on CUDA devices, gloo otherwise. Returns True when running distributed.
    """
    if not launched_by_torchrun() or is_dist():
        return is_dist()
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device if device.index is not None else int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend, timeout=timedelta(minutes=timeout_min))
    return True


def local_device(requested: str = "auto") -> torch.device:
    """The device this process should use: ``cuda:LOCAL_RANK`` under torchrun with GPUs (checked:
    ``device.usable_device``)."""
    device = usable_device(requested)
    if device.type == "cuda" and device.index is None:
        device = usable_device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")
    return device


def barrier() -> None:
    if is_dist():
        dist.barrier()


def main_first(fn: Callable[[], T], what: str) -> T:
    """``fn()`` on the main process, then on the others (a download the others then find in the cache).

    A ``RetinaNetError`` of the main process is raised there as it is, and on every other rank as
    a one-line ``RetinaNetError`` that points to it, instead of each failing in its next collective
    with a transport error. ``what`` says what the main process was doing ("fetching the weights").
    """
    if not is_dist():
        return fn()
    main = is_main_process()
    result: T | None = None
    error: RetinaNetError | None = None
    if main:
        try:
            result = fn()
        except RetinaNetError as err:
            error = err
    outcome = [None if error is None else type(error).__name__]
    dist.broadcast_object_list(outcome, src=0)
    if error is not None:
        raise error
    if outcome[0] is not None:
        raise RetinaNetError(f"rank {get_rank()}: stopped, because the main process (rank 0) failed {what} "
                             f"({outcome[0]}, reported by rank 0)")
    return result if main else fn()  # type: ignore[return-value]


def all_gather_object(obj: Any) -> list[Any]:
    """Gather a picklable object from every rank (a one-element list in a single process)."""
    if not is_dist():
        return [obj]
    out: list[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean of ``value`` over ranks (the value itself in a single process)."""
    if not is_dist():
        return value
    value = value.detach().clone()
    dist.all_reduce(value)
    return value / get_world_size()


def _comm_device() -> torch.device:
    """Where collective tensors must live: the current GPU for NCCL, the CPU otherwise."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on at least one (``flag`` itself in a single process)."""
    if not is_dist():
        return bool(flag)
    value = torch.tensor([int(bool(flag))], device=_comm_device())
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def broadcast_module(module: torch.nn.Module, src: int = 0, buffers_only: bool = False) -> None:
    """Copy rank ``src``'s parameters and buffers (``buffers_only``: its buffers) into ``module`` on
    every rank (no-op in a single process). Before evaluating, and at each epoch's end: BatchNorm
    running statistics differ across DDP ranks (``wrap_ddp``: each rank updates its own, from its
    own batches), and every rank must check and evaluate the weights rank 0 saves."""
    if not is_dist():
        return
    with torch.no_grad():
        for tensor in [*([] if buffers_only else module.parameters()), *module.buffers()]:
            dist.broadcast(tensor.data, src)


def wrap_ddp(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``DistributedDataParallel(model)`` for the training steps: gradients all-reduced in the
    backward (its only per-step collective), buffers not broadcast at every forward.

    DDP's default broadcasts every buffer (BatchNorm's running statistics; FrozenBatchNorm's constant
    ones) from rank 0 at the start of each forward: a collective per step, which only overwrote the
    other ranks' statistics with rank 0's. A training step in ``train()`` mode normalises with the
    batch's own statistics, never the running ones, and rank 0's buffers, the ones it saves, are
    never changed by that broadcast (it is their source): the losses, the weights and every
    checkpoint are the same without it. The other ranks' statistics are set to rank 0's where they
    are read (``broadcast_module``: at each epoch's end and before an evaluation) and once here.
    """
    ids = [device.index] if device.type == "cuda" else None
    params = inspect.signature(torch.nn.parallel.DistributedDataParallel).parameters
    # torch 2.13 renamed the option (broadcast_buffers deprecated); 2.6-2.12 know only broadcast_buffers
    no_sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}
    net = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids, **no_sync)
    broadcast_module(model, buffers_only=True)  # older torch's broadcast_buffers=False left them out of DDP's first sync
    return net


def cleanup() -> None:
    """Leave the process group (a no-op when none is initialised)."""
    if is_dist():
        dist.destroy_process_group()
