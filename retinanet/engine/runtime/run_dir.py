"""The run folder of ``retinanet train``, its one owner: the files a run writes there
(``RUN_OUTPUTS``; ``SUMMARY_FILES``, those its summary lists), whether a folder holds a run to
protect (``holds_run``), the check before a new run starts in it (``check_run_dir``), and which
checkpoint ``--resume`` names (``resume_file``), and holding it (``hold_run_dir``: one run at a time,
stale temporaries of a killed write cleared)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

from retinanet.files import check_output_path, hold_folder, remove_stale_temporaries
from retinanet.errors import RetinaNetError


RUN_OUTPUTS = ("best.pt", "last.pt", "interrupted.pt", "results.csv", "metrics.json", "results.png", "config.yaml",
               "classes.json", "train.log", "tensorboard")
# what a run writes before its first checkpoint: a run that stopped there (a failed download, a bad
# option met in set-up, a crash in epoch 1) leaves nothing to resume, and its folder is reused
BEFORE_FIRST_CHECKPOINT = ("train.log", "config.yaml", "classes.json", "tensorboard")
SUMMARY_FILES = tuple(n for n in RUN_OUTPUTS if n not in ("interrupted.pt", "tensorboard"))  # the summary's list


def run_files_in(out: Path) -> list[str]:
    """The names of ``RUN_OUTPUTS`` that exist in ``out``."""
    return [name for name in RUN_OUTPUTS if (Path(out) / name).exists()]


def holds_run(out: Path) -> bool:
    """``out`` holds a run that got past its first checkpoint: a new run there needs ``--resume``
    or ``--exist-ok`` (``check_run_dir``)."""
    return not set(run_files_in(out)) <= set(BEFORE_FIRST_CHECKPOINT)


def check_run_dir(out: Path, resume: str | None, exist_ok: bool) -> str:
    """Refuse to start a new run in a directory that holds another run's files.

    Resuming the run of ``out`` (a checkpoint inside it) is always allowed, and so is a new run in
    the folder of a run that stopped before its first checkpoint. Returns "" or the line to log
    that says which files this run replaces.

    Raises:
        RetinaNetError: ``out`` cannot be a writable folder (``check_output_path``), or it holds a
            run and neither ``resume`` continues it nor ``exist_ok`` is given (the message names
            ``--resume`` and ``--exist-ok``).
    """
    check_output_path(out, folder=True)
    found = run_files_in(out)
    if not found or (resume and same_file(resume_file(resume).parent, out)):
        return ""
    if not holds_run(out):  # nothing to resume, nothing lost: the log is appended to
        return (f"{out} holds a run that stopped before its first checkpoint ({', '.join(found)}): this run starts "
                "in it; train.log is appended to")
    if not exist_ok:
        raise RetinaNetError(f"{out} already holds a training run ({', '.join(found)}) and a new run does not overwrite "
                             f"it: continue it with --resume {out}, choose another --out, or give --exist-ok to "
                             "replace its files")
    kept = {"train.log": "train.log is appended to", "interrupted.pt": "interrupted.pt is kept unless this run is stopped",
            "tensorboard": "tensorboard/ gets a second event file"}
    replaced = [name for name in found if name not in kept]
    return (f"--exist-ok: {out} holds an earlier run; this run replaces its {', '.join(replaced) or 'nothing yet'}"
            + "".join(f"; {kept[name]}" for name in found if name in kept))


@contextlib.contextmanager
def hold_run_dir(out: Path) -> Iterator[str]:
    """Hold run folder ``out`` for this run (``files.hold_folder``: an advisory lock on
    ``out/.lock`` with this process's pid, released by the OS when the process ends) and, under
    it, delete the temporary files a killed checkpoint or results write left there. Yields ""
    or the line to log that names what was deleted. Under torchrun only rank 0 holds it.

    Raises:
        RetinaNetError: ``out`` is not a writable folder, or another process holds it (its pid named).
    """
    with hold_folder(out, "retinanet train"):
        removed = remove_stale_temporaries(out, RUN_OUTPUTS)
        yield (f"removed {len(removed)} temporary file(s) that an interrupted write left in {out}: {', '.join(removed)}"
               if removed else "")


def same_file(a: Path, b: Path) -> bool:
    """``a`` and ``b`` name the same path (after resolving links and ``..``)."""
    return Path(a).resolve() == Path(b).resolve()


def rewind_problem(resume_path: Path, epochs_done: int, out: Path) -> str:
    """Why resuming from ``resume_path`` (after ``epochs_done`` whole epochs) into ``out`` would set
    the run back: ``out``'s results (``metrics.json``, written with each ``last.pt``) reach a later
    epoch, which this run would train again, replacing ``last.pt`` and those rows; "" otherwise."""
    try:
        rows = json.loads((out / "metrics.json").read_text(encoding="utf-8")).get("epochs", [])
        reached = max((int(r["epoch"]) for r in rows), default=0)
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return ""  # no readable record of later epochs: nothing said to be lost
    if reached <= epochs_done:
        return ""
    return (f"--resume {resume_path}: it ends after epoch {epochs_done}, and {out} holds the run up to epoch {reached} "
            f"(last.pt, results): resuming from it there would train epochs {epochs_done + 1}..{reached} again and replace "
            f"those; resume from {out} (its newest checkpoint), branch with --out NEW_DIR, or give --exist-ok to go back")


def resume_file(resume: str) -> Path:
    """The checkpoint ``--resume`` names: a file as it is; for a run directory its ``interrupted.pt``
    when that was written after its ``last.pt`` (a stop in the epoch after it: those steps are
    kept; an older one is stale), else ``last.pt``."""
    p = Path(resume)
    if not p.is_dir():
        return p
    last, stopped = p / "last.pt", p / "interrupted.pt"
    if not last.is_file() and not stopped.is_file():
        raise RetinaNetError(f"--resume {p}: the folder holds no checkpoint (last.pt, interrupted.pt) to resume"
                             + (": its run stopped before its first one; run the same command without --resume, it "
                                "starts again there" if run_files_in(p) else ""))
    if stopped.is_file() and (not last.is_file() or stopped.stat().st_mtime_ns > last.stat().st_mtime_ns):
        return stopped
    return last
