"""Mixed precision: which autocast dtype a run uses, and why.

``resolve_precision(mode, device)`` turns the ``--amp`` setting into a ``Precision``:

- ``"auto"``: bf16 on CUDA GPUs that support it, fp16 (with gradient scaling) on older GPUs;
  fp32 on CPUs and elsewhere (``CPU_NOTE``);
- ``"on"``: mixed precision wherever it runs: as ``auto`` on CUDA, bf16 on any CPU (fast where
  it has native bf16: ``cpu_has_native_bf16``);
- ``"bf16"`` / ``"fp16"``: that dtype (fp16 is refused on CPUs, bf16 on GPUs without it);
- ``"off"``: fp32. ``True``/``False`` (configs written before the modes existed) mean on/off.

The losses are always computed in fp32 (``RetinaNet.forward`` leaves autocast for the loss).
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from pathlib import Path

import torch

from retinanet.errors import RetinaNetError

AMP_MODES = ("auto", "on", "bf16", "fp16", "off")
# why "auto" is fp32 on CPUs, even with native bf16 (BENCHMARKS.md "Mixed precision"): torch 2.14's oneDNN
# bf16 weight gradient of a stride-2 conv on a 1x1 channels_last input is garbage (NaN or ~1e28, not
# reproducible), which the P7 conv meets at inputs <= 64 px; and bf16 detections differ from fp32 ones
CPU_NOTE = "fp32 on CPU; --amp bf16 is about 1.6x faster on CPUs with native bf16 (BENCHMARKS.md)"
_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", None: "fp32"}


@dataclass(frozen=True)
class Precision:
    """The autocast dtype of a run (None: fp32, no autocast) and the reason it was chosen."""

    dtype: torch.dtype | None
    reason: str

    @property
    def name(self) -> str:
        """"fp32", "bf16" or "fp16"; also a valid ``--amp`` mode ("off" for fp32)."""
        return _NAMES[self.dtype]

    @property
    def mode(self) -> str:
        """The ``--amp`` mode that reproduces this precision on any machine that has it."""
        return "off" if self.dtype is None else self.name

    @property
    def grad_scaling(self) -> bool:
        """fp16 needs a ``GradScaler`` (its range under-flows small gradients); bf16 does not."""
        return self.dtype == torch.float16

    def autocast(self, device_type: str):
        """``torch.autocast`` at this dtype (a null context for fp32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type, dtype=self.dtype)

    def describe(self) -> str:
        return f"{self.name} ({self.reason})" if self.dtype is None else f"{self.name} autocast ({self.reason})"


@functools.lru_cache(maxsize=1)
def cpu_bf16_flags() -> tuple[str, ...]:
    """The native-bf16 flags of this CPU found in ``/proc/cpuinfo`` (``avx512_bf16``, ``amx_bf16``);
    empty where there is no such file (not Linux) or no such flag."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ()
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[-1].split())
    return tuple(f for f in ("amx_bf16", "avx512_bf16") if f in flags)


def cpu_has_native_bf16() -> bool:
    """True when PyTorch runs AVX512 kernels here and the CPU has AVX512-BF16 or AMX: there bf16
    autocast trains and infers faster than fp32. Elsewhere bf16 is emulated and slower."""
    return torch.backends.cpu.get_cpu_capability() == "AVX512" and bool(cpu_bf16_flags())


def normalize_mode(mode: str | bool | None) -> str:
    """A valid ``--amp`` mode from a mode, a legacy bool, or None (= "auto").

    Raises:
        RetinaNetError: an unknown mode.
    """
    if mode is None:
        return "auto"
    if isinstance(mode, bool):
        return "on" if mode else "off"
    if mode not in AMP_MODES:
        raise RetinaNetError(f"unknown amp mode {mode!r} (one of: {', '.join(AMP_MODES)})")
    return mode


def resolve_precision(mode: str | bool | None, device: torch.device | str) -> Precision:
    """The precision ``mode`` (``AMP_MODES``) means on ``device``.

    Raises:
        RetinaNetError: fp16 on a CPU, bf16 on a GPU without bf16, an unknown mode.
    """
    mode, device = normalize_mode(mode), torch.device(device)
    if mode == "off":
        return Precision(None, "amp off")
    if device.type == "cuda":
        bf16 = torch.cuda.is_bf16_supported()
        if mode == "fp16" or (mode in ("auto", "on") and not bf16):
            return Precision(torch.float16, f"amp {mode}: CUDA" + ("" if bf16 else " GPU without bf16")
                             + ", with gradient scaling")
        if not bf16:
            raise RetinaNetError(f"--amp bf16: {torch.cuda.get_device_name(device)} has no bf16; use --amp fp16 or auto")
        return Precision(torch.bfloat16, f"amp {mode}: CUDA GPU with bf16")
    if device.type == "cpu":
        if mode == "fp16":
            raise RetinaNetError("--amp fp16 is for CUDA GPUs: CPUs have no fast fp16 kernels (and no gradient "
                                 "scaling here); use --amp bf16, auto or off")
        native = cpu_has_native_bf16()
        if mode == "auto":
            return Precision(None, f"amp auto: {CPU_NOTE}" if native else
                             "amp auto: fp32 on CPU; this one has no native bf16 (AVX512-BF16/AMX), where bf16 is slower")
        flags = "/".join(cpu_bf16_flags())
        return Precision(torch.bfloat16, f"amp {mode}: CPU " + (f"with native bf16 ({flags})" if native
                                                                else "without native bf16: slower than fp32"))
    if mode == "auto":
        return Precision(None, f"amp auto: no mixed precision on {device.type}")
    return Precision(torch.float16 if mode == "fp16" else torch.bfloat16, f"amp {mode}: {device.type}")
