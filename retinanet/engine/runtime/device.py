"""The device a command runs on: a name checked against this machine before any work.

``usable_device("cuda")`` on a machine without a usable GPU, ``"cuda:3"`` on one with two, a
misspelt name: each a ``RetinaNetError`` that says what is there, instead of PyTorch's error
from deep inside the first ``model.to(device)`` (after the data was read).
"""

from __future__ import annotations

import torch

from retinanet.errors import RetinaNetError


def usable_device(requested: str | torch.device) -> torch.device:
    """``requested`` as a ``torch.device`` that works here; ``"auto"``: CUDA when usable, else CPU.

    Raises:
        RetinaNetError: not a device name, or one this machine cannot run (naming what it has).
    """
    if str(requested) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except (RuntimeError, TypeError):
        raise RetinaNetError(f"device {requested!r}: not a device name (auto, cpu, cuda, cuda:1, mps, ...)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RetinaNetError(f"device {device}: no CUDA GPU is usable here (no GPU, no driver, or a PyTorch built "
                             "without CUDA); use --device cpu, or auto to take a GPU when there is one")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise RetinaNetError(f"device {device}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                             f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    try:
        torch.empty(1, device=device)  # any other kind (mps, xpu, ...): does this build and machine run it?
    except (RuntimeError, AssertionError) as err:
        said = str(err).strip() or type(err).__name__
        first = said.splitlines()[0].split(". ")[0][:160]  # PyTorch's dispatch errors run to a page
        raise RetinaNetError(f"device {device}: not usable here ({first}); use --device cpu or auto") from None
    return device
