"""What a training run reports: log lines, progress, per-epoch files and the end summary.

- ``RunLog``: every line goes to ``train.log`` (main process) and, when echoing, to stdout.
- ``StepProgress``: a tqdm bar on a terminal, and a progress line every N steps in the log (the mean
  loss since the previous line: losses are read from the device only then).
- ``epoch_line(row)``: the line after an epoch; a *row* is one epoch's numbers (a ``results.csv``
  row: losses, lr, the 12 COCO metrics or None, timing, memory, skipped steps).
- ``write_epoch_files(out, history, ...)``: ``results.csv``, ``metrics.json``, ``results.png``.
- ``make_summary(...)`` -> the summary dict ``train`` returns; ``format_run_summary(summary)``
  is its one-screen text (best and last metrics, speed, files, next commands).
- TensorBoard (optional dependency): ``tensorboard_writer_class``, ``tensorboard_step``,
  ``tensorboard_epoch``.
"""

from __future__ import annotations

import csv
import ctypes
import io
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend
from tqdm import tqdm

try:  # POSIX only; on Windows the peak comes from GetProcessMemoryInfo (ctypes)
    import resource
except ImportError:
    resource = None

from retinanet.config import DataConfig
from retinanet.engine.evaluate.coco import METRIC_NAMES
from retinanet.engine.runtime import distributed as D
from retinanet.engine.runtime.run_dir import SUMMARY_FILES
from retinanet.errors import RetinaNetError
from retinanet.files import drop_output, write_atomic
from retinanet.shell import command_line

LOSSES = ("loss", "classification", "bbox_regression")
TB_HINT = "pip install 'retinanet[tensorboard]'"


def hms(seconds: float) -> str:
    """``H:MM:SS`` of a duration (negative counts as 0)."""
    s = int(round(max(0.0, seconds)))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _fmt(v: float | None, spec: str = ".4f") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def peak_memory_mb(device: torch.device) -> float | None:
    """Peak GPU memory allocated (CUDA) or peak resident memory of this process (CPU), MiB; None
    where the platform does not say (shown as "-")."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = peak_rss_bytes()
    return None if peak is None else peak / 2**20


def peak_rss_bytes() -> int | None:
    """This process's peak resident memory in bytes, or None where it cannot be read.

    ``ru_maxrss`` is in KiB on Linux and the BSDs but in bytes on macOS; Windows has no
    ``resource`` module and reports the peak working set instead.
    """
    if sys.platform == "win32":
        return _windows_peak_working_set()
    if resource is None:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


class _ProcessMemoryCounters(ctypes.Structure):
    """Windows' PROCESS_MEMORY_COUNTERS (psapi.h)."""
    _fields_ = [("cb", ctypes.c_uint32), ("PageFaultCount", ctypes.c_uint32),
                *((name, ctypes.c_size_t) for name in (
                    "PeakWorkingSetSize", "WorkingSetSize", "QuotaPeakPagedPoolUsage", "QuotaPagedPoolUsage",
                    "QuotaPeakNonPagedPoolUsage", "QuotaNonPagedPoolUsage", "PagefileUsage", "PeakPagefileUsage"))]


def _windows_peak_working_set() -> int | None:
    """``PeakWorkingSetSize`` of this process (kernel32's K32GetProcessMemoryInfo), None on failure."""
    try:
        kernel32 = ctypes.WinDLL("kernel32")
        kernel32.GetCurrentProcess.restype = ctypes.c_void_p
        counters = _ProcessMemoryCounters()
        counters.cb = ctypes.sizeof(counters)
        ok = kernel32.K32GetProcessMemoryInfo(ctypes.c_void_p(kernel32.GetCurrentProcess()), ctypes.byref(counters),
                                              counters.cb)
    except (AttributeError, OSError):  # not Windows after all, or an old kernel32
        return None
    return counters.PeakWorkingSetSize if ok else None


def ending_line(exc_type: type[BaseException], exc: BaseException | None) -> str:
    """The log's last line for a run ended by an exception."""
    if issubclass(exc_type, KeyboardInterrupt):
        return "interrupted (a second Ctrl-C, or one before training began): nothing more saved"
    if isinstance(exc, RetinaNetError):
        return f"error: {exc}"
    text = str(exc)
    if lost_peer(exc):
        return ("error: another process of the run stopped (its own error, printed by that rank under torchrun and written "
                f"to this log as 'rank N: error: ...', is the cause); this one lost the connection: "
                f"{text.strip().splitlines()[-1] if text.strip() else exc_type.__name__}")
    return f"error: {exc_type.__name__}: {exc}"


# what gloo / NCCL say when another rank of the run exited: not this rank's own failure
PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "NCCL communicator was aborted")


def lost_peer(exc: BaseException | None) -> bool:
    """True when ``exc`` is a process group's report that another rank of the run exited."""
    return D.is_dist() and not isinstance(exc, OSError) and any(s in str(exc) for s in PEER_GONE)


def own_error(exc_type: type[BaseException], exc: BaseException | None) -> bool:
    """True when ``exc`` is this rank's own failure, which the rank that writes the log cannot know of:
    not a Ctrl-C (every rank gets it), not an error every rank met alike, not a lost peer."""
    return not (issubclass(exc_type, KeyboardInterrupt) or getattr(exc, "every_rank", False) or lost_peer(exc))


def append_line(path: Path, text: str) -> bool:
    """Append one line to an existing file in one write (``O_APPEND``: lines of several processes do
    not mix); False when the file is not there (e.g. another machine's disk) or cannot be written."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    except OSError:
        return False
    try:
        os.write(fd, (text + "\n").encode("utf-8", "surrogateescape"))
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


class RunLog:
    """Lines of a run: appended to ``train.log`` (main process) and printed when ``echo``.

    ``errors_to``: the log of another process (the other ranks of a torchrun run set it to rank 0's
    ``train.log`` once training begins): an error of this process's own that ends the run
    (``own_error``) is appended to it as ``rank N: error: ...``, so the log says why the run
    stopped, not only that a peer left.
    """

    def __init__(self, path: Path | None, echo: bool, errors_to: Path | None = None):
        # UTF-8 whatever the locale; surrogateescape: a path argument that was not decodable keeps its bytes
        self.file = path.open("a", encoding="utf-8", errors="surrogateescape") if path is not None else None
        self.echo = echo
        self.errors_to = errors_to

    def line(self, msg: str, echo: bool = True, warn: bool = False) -> None:
        """Log ``msg``; print it when ``echo`` (and the log echoes). ``warn``: news even without echo
        (``--quiet``): then printed to stderr by the process that writes the log."""
        if echo and (self.echo or (warn and self.file)):
            stream = sys.stdout if self.echo else sys.stderr
            try:
                print(msg, flush=True, file=stream)
            except BrokenPipeError:  # its reader left (`| head`, a closed ssh session's `| tee`): the run goes on, logged
                drop_output(stream)
        if self.file:
            self.file.write(msg + "\n")
            self.file.flush()

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.file:
            if exc_type is not None:  # what ends the run is in its log too, not only on the terminal
                self.file.write(f"{ending_line(exc_type, exc)}\n")
            self.file.close()
            self.file = None
        elif self.errors_to is not None and exc_type is not None and own_error(exc_type, exc):
            append_line(self.errors_to, f"rank {D.get_rank()}: {ending_line(exc_type, exc)}")


class StepProgress:
    """Progress of one epoch's steps: a tqdm bar with ETA (loss, lr) when stderr is a terminal;
    every ``every`` steps (and at the last) a line with ETA in the log, printed when there is no bar.
    ``start``: the steps already done (an epoch resumed mid-way): the bar starts there and the ETA
    is timed on the steps of this run only. A context manager: the bar is closed on exit."""

    def __init__(self, log: RunLog, total: int, desc: str, every: int, show: bool, start: int = 0,
                 loss_name: str = "loss"):
        self.log, self.total, self.desc, self.every, self.start = log, total, desc, max(1, every), start
        self.loss_name = loss_name  # "rank-0 loss" under DDP: the epoch line's mean is over every rank
        self.bar = (tqdm(total=total, initial=start, desc=desc, unit="step", file=sys.stderr, dynamic_ncols=True,
                         leave=False, mininterval=0.5)
                    if show and log.echo and sys.stderr.isatty() else None)
        self.t0 = time.time()

    def due(self, i: int) -> bool:
        """True after step ``i`` (0-based) when a progress line is due: every ``every`` steps and at the last."""
        return (i + 1) % self.every == 0 or i + 1 == self.total

    def update(self, i: int, lr: float, loss: float | None = None) -> None:
        """After step ``i`` (0-based) of the epoch; ``loss``: the mean loss since the last line (None:
        not read at this step, or no finite step since), shown on the bar and in the due lines."""
        if self.bar is not None:
            if loss is not None:
                self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.3g}", refresh=False)
            self.bar.update(1)
        if self.due(i):
            eta = (time.time() - self.t0) / max(1, i + 1 - self.start) * (self.total - i - 1)
            shown = "nan" if loss is None else f"{loss:.4f}"
            self.log.line(f"{self.desc} step {i + 1}/{self.total} {self.loss_name} {shown} lr {lr:.4g} eta {hms(eta)}",
                          echo=self.bar is None)

    def __enter__(self) -> StepProgress:
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()


def epoch_line(row: dict[str, Any], epochs: int, improved: bool) -> str:
    """The one line printed (and logged) after an epoch."""
    ap = (f"AP {_fmt(row['AP'])} AP50 {_fmt(row['AP50'])} AR100 {_fmt(row['AR100'])}{' (best)' if improved else ''}"
          if row["AP"] is not None else "not evaluated")
    msg = (f"epoch {row['epoch']}/{epochs}: loss {_fmt(row.get('loss'))} lr {row['lr']:.4g} | {ap} | "
           f"train {row['time_s']:.1f} s, {row['images_per_s']:.1f} img/s")
    if row["eval_s"] is not None:
        msg += f", eval {row['eval_s']:.1f} s"
    msg += f", peak mem {_fmt(row['peak_mem_mb'], '.0f')} MiB"
    return msg + (f", {row['skipped_steps']} non-finite step(s) skipped" if row["skipped_steps"] else "")


DIVERGED_FACTOR = 2.0  # an epoch's mean loss above this times the lowest before it: said aloud


def divergence(history: list[dict[str, Any]]) -> tuple[int, float, int, float] | None:
    """``(epoch, loss, lowest epoch, lowest loss)`` when the last epoch's mean loss is over
    ``DIVERGED_FACTOR`` times the lowest of the epochs before it, else None. A finite but exploded
    loss is not a skipped step, and a run in that state rarely recovers."""
    losses = [(r["epoch"], r["loss"]) for r in history if r.get("loss") is not None]
    if len(losses) < 2 or history[-1].get("loss") is None:
        return None
    epoch, loss = losses[-1]
    low_epoch, low = min(losses[:-1], key=lambda e_l: e_l[1])
    return (epoch, loss, low_epoch, low) if loss > DIVERGED_FACTOR * low else None


def diverged_epochs(history: list[dict[str, Any]]) -> list[int]:
    """The epochs whose loss ``divergence`` flags."""
    return [row["epoch"] for i, row in enumerate(history) if divergence(history[: i + 1])]


def divergence_warning(history: list[dict[str, Any]], lr: float, clip: float | None) -> str | None:
    """The warning line for ``divergence`` of the last epoch (None when it is not flagged)."""
    flagged = divergence(history)
    if flagged is None:
        return None
    epoch, loss, low_epoch, low = flagged
    remedy = f"a lower --lr (now {lr:.4g})" + ("" if clip else " or gradient clipping (--clip-grad NORM)")
    return (f"warning: the loss rose to {loss:.4f} in epoch {epoch}, over {DIVERGED_FACTOR:g}x its lowest ({low:.4f}, "
            f"epoch {low_epoch}): training has probably diverged; best.pt keeps the best weights so far; "
            f"consider {remedy}")


# --- files of the run directory -------------------------------------------------------------------


def write_epoch_files(out: Path, history: list[dict[str, Any]], best_ap: float, best_epoch: int) -> None:
    """Rewrite ``results.csv`` (one row per epoch), ``metrics.json`` and ``results.png`` in ``out``,
    each atomically (a crash mid-write leaves the previous version)."""
    keys = list(dict.fromkeys(k for row in history for k in row))
    text = io.StringIO(newline="")
    w = csv.DictWriter(text, fieldnames=keys)
    w.writeheader()
    w.writerows(history)
    write_atomic(out / "results.csv", text.getvalue())
    best_ap50 = next((r["AP50"] for r in history if r["epoch"] == best_epoch), None)
    write_atomic(out / "metrics.json", json.dumps({"best_ap": best_ap, "best_ap50": best_ap50, "best_epoch": best_epoch,
                                                   "epochs": history}, indent=2))
    plot_history(history, out / "results.png")


def plot_history(history: list[dict[str, Any]], path: Path) -> None:
    """Losses, learning rate and COCO AP/AP50 per epoch, three panels in one PNG."""
    def series(key):
        return [float("nan") if r.get(key) is None else r[key] for r in history]

    ep = [r["epoch"] for r in history]
    fig = Figure(figsize=(12, 3.5))
    axes = fig.subplots(1, 3)
    for k in LOSSES:
        axes[0].plot(ep, series(k), marker=".", label=k)
    axes[1].plot(ep, series("lr"), marker=".", label="lr")
    evaluated = [r for r in history if r.get("AP") is not None]
    for k in ("AP", "AP50"):
        axes[2].plot([r["epoch"] for r in evaluated], [r[k] for r in evaluated], marker="o", label=k)
    for ax, t in zip(axes, ("losses", "learning rate", "COCO AP")):
        ax.set_title(t), ax.set_xlabel("epoch"), ax.legend()
    fig.tight_layout()
    write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=80))


# --- TensorBoard (optional dependency) ------------------------------------------------------------


def tensorboard_writer_class():
    """``torch.utils.tensorboard.SummaryWriter``, or a ``RetinaNetError`` saying how to install it."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise RetinaNetError(f"--tensorboard needs the tensorboard package: {TB_HINT}") from None
    return SummaryWriter


def tensorboard_step(tb, losses: dict[str, float], lr: float, it: int) -> None:
    """``train/<loss>`` (mean of the steps since the last logging point) and ``train/lr`` at global step ``it``."""
    for k, v in losses.items():
        tb.add_scalar(f"train/{k}", v, it)
    tb.add_scalar("train/lr", lr, it)


def tensorboard_epoch(tb, row: dict[str, Any]) -> None:
    """``val/<metric>`` and ``epoch/<loss, lr, speed, memory>`` of an epoch's row."""
    for k in (*METRIC_NAMES, "val_images"):
        if row.get(k) is not None:
            tb.add_scalar(f"val/{k}", row[k], row["epoch"])
    for k in (*LOSSES, "lr", "images_per_s", "peak_mem_mb", "time_s"):
        if row.get(k) is not None:
            tb.add_scalar(f"epoch/{k}", row[k], row["epoch"])
    tb.flush()


# --- the end of a run -----------------------------------------------------------------------------


def eval_command(data_cfg: DataConfig, root: Path, weights: Path) -> str:
    """``retinanet eval`` command line evaluating ``weights`` on the run's validation split."""
    parts = ["retinanet", "eval", "--weights", str(weights), "--data", str(root)]
    if data_cfg.format:
        parts += ["--format", data_cfg.format]
    for year in data_cfg.years:
        parts += ["--year", str(year)]
    default = DataConfig()
    for name in ("train_split", "val_split", "classes", "val_fraction", "split_seed"):
        if getattr(data_cfg, name) != getattr(default, name):
            parts += [f"--{name.replace('_', '-')}", str(getattr(data_cfg, name))]
    if data_cfg.skip_bad:
        parts.append("--skip-bad")
    if data_cfg.crop:  # a crop-trained model sees native-resolution tiles (as its evaluations did)
        parts.append("--tile")
    return command_line(parts)


def make_summary(out: Path, history: list[dict[str, Any]], best_ap: float, best_epoch: int, stopped: str, seconds: float,
                 world: int, data_cfg: DataConfig, root: Path, tensorboard: bool = False,
                 reinitialised: list[str] | None = None, resumed_at: str | None = None) -> dict[str, Any]:
    """The run's summary dict: best/last metrics, throughput, files and next commands. ``history``
    holds every epoch of the run; ``seconds`` is this process's time, which took the run up at
    ``resumed_at`` (``RunState.resumed_at``) when it was resumed."""
    best_row = next((r for r in history if r["epoch"] == best_epoch), None)
    train_s = sum(r["time_s"] for r in history)
    images = sum(r["images_per_s"] * r["time_s"] for r in history)
    files = {n: str(out / n) for n in SUMMARY_FILES if (out / n).exists() or n == "train.log"}
    if stopped != "finished" and (out / "interrupted.pt").is_file():  # the stop's own checkpoint
        files["interrupted.pt"] = str(out / "interrupted.pt")
    if tensorboard:
        files["tensorboard"] = str(out / "tensorboard")
    weights = out / "best.pt" if (out / "best.pt").exists() else out / "last.pt"
    summary = {
        "out": str(out), "stopped": stopped, "history": history, "best_ap": best_ap, "best_epoch": best_epoch,
        "best_ap50": best_row["AP50"] if best_row else None, "last_metrics": history[-1] if history else None,
        "time_s": seconds, "resumed_at": resumed_at,
        "train_time_s": train_s, "images_per_s": images / train_s if train_s > 0 else None,
        "peak_mem_mb": max((r["peak_mem_mb"] for r in history if r["peak_mem_mb"] is not None), default=None),
        "skipped_steps": sum(r["skipped_steps"] for r in history), "world_size": world, "rank": D.get_rank(),
        "reinitialised": list(reinitialised or []), "files": files,
        "best": str(out / "best.pt"), "last": str(out / "last.pt"),
        "commands": {} if not weights.exists() else {
            "eval": eval_command(data_cfg, root, weights),
            "predict": command_line(["retinanet", "predict", "IMAGES", "--weights", str(weights), "--out", str(out / "predict"),
                                   *(["--tile"] if data_cfg.crop else [])]),
            "export": command_line(["retinanet", "export", "--weights", str(weights), "--out", str(out / "model.onnx")])},
    }
    if stopped != "finished":  # under torchrun, resumed by the same number of processes (a resume checks it)
        launcher = ["torchrun", f"--nproc_per_node={world}", "-m", "retinanet"] if world > 1 else ["retinanet"]
        # the folder: its newest checkpoint is taken (interrupted.pt, or last.pt for a stop after an evaluation)
        summary["resume"] = command_line([*launcher, "train", "--resume", str(out)])
    return summary


def format_run_summary(summary: dict[str, Any]) -> str:
    """One screen of ``make_summary``'s dict: best and last metrics, time, throughput, memory,
    files, next commands."""
    epochs, took = len(summary["history"]), hms(summary["time_s"])
    lines = ["", f"training {'finished' if summary['stopped'] == 'finished' else 'stopped by ' + summary['stopped']}: "
                 + (f"{epochs} epoch(s) in {took} on {summary['world_size']} process(es)" if not summary.get("resumed_at")
                    else f"{epochs} epoch(s) on {summary['world_size']} process(es); resumed at {summary['resumed_at']}, "
                         f"this session took {took}")]
    if summary["best_epoch"] > 0:
        elsewhere = ("; its best.pt is in the run this one was resumed from (this folder gets one when an epoch "
                     "beats it)" if not Path(summary["best"]).exists() else "")
        lines.append(f"  best:   AP {_fmt(summary['best_ap'])}  AP50 {_fmt(summary['best_ap50'])}  (epoch {summary['best_epoch']}"
                     f"{elsewhere})")
    else:
        lines.append("  best:   no epoch evaluated yet")
    last = summary["last_metrics"]
    if last:
        lines.append(f"  last:   epoch {last['epoch']}  loss {_fmt(last.get('loss'))}  AP {_fmt(last['AP'])}  "
                     f"AP50 {_fmt(last['AP50'])}  AR100 {_fmt(last['AR100'])}")
    if summary["images_per_s"] is None and summary["peak_mem_mb"] is None:
        lines.append("  speed:  not measured (no epoch completed)")
    else:
        lines.append(f"  speed:  {_fmt(summary['images_per_s'], '.1f')} train images/s (all processes), "
                     f"peak memory {_fmt(summary['peak_mem_mb'], '.0f')} MiB (rank 0)")
    if summary["skipped_steps"]:
        lines.append(f"  skipped {summary['skipped_steps']} step(s) with a non-finite loss")
    if summary.get("decode_skipped"):
        lines.append(f"  skipped {len(summary['decode_skipped'])} image(s) that could not be decoded (--skip-bad; "
                     "train.log names them)")
    lines += [f"  warning: {cap}" for cap in summary.get("caps", ())]
    diverged = diverged_epochs(summary["history"])
    if diverged:
        epochs = ", ".join(map(str, diverged))
        last_loss = summary["history"][-1].get("loss")
        if divergence(summary["history"]) is None and last_loss is not None:  # the last epoch is back under the bar
            lines.append(f"  note: the loss rose over {DIVERGED_FACTOR:g}x its lowest in epoch(s) {epochs} and came back "
                         f"(last epoch {last_loss:.4f}); train.log says more")
        else:
            lines.append(f"  warning: the loss rose over {DIVERGED_FACTOR:g}x its lowest in epoch(s) "
                         f"{epochs}: training has probably diverged (train.log says more)")
    lines.append(f"files in {summary['out']}:")
    width = max(map(len, summary["files"]), default=0)
    lines += [f"  {name:<{width}} {path}" for name, path in summary["files"].items()]
    if "resume" in summary:
        lines += ["resume:", f"  {summary['resume']}"]
    if summary["commands"]:
        lines.append("next:")
        lines += [f"  {cmd}" for cmd in summary["commands"].values()]
    return "\n".join(lines)
