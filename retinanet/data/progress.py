"""Progress of long work: reading a dataset's annotations (one mechanism for every reader), and
``progress_bar`` for the commands' own loops (eval, predict, check-data's decoding).

Readers never print. Each pass over a split's items (VOC XML files, COCO images, YOLO images)
calls a ``Tick``, ``tick(done, total)``, after each item; ``read_records`` makes one per split
from the ``ReadProgress`` it is given (``functools.partial(progress, "train")``). The command
decides what is shown: ``no_progress`` (the default: library calls, ``--quiet``, the processes
of a torchrun other than the one that prints) or a ``ReadingReport``, which stays silent on a
short read and then shows a tqdm bar on a terminal, else a line every ``every`` seconds.

``progress_bar`` follows the same rule for a loop: a tqdm bar when the stream is a terminal, else
(``2> eval.log``, a batch job) a ``ProgressLines``: a plain line every ``every`` seconds once the
work has lasted ``delay``, and one when it ends, never tqdm's carriage returns in a log file.
"""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Callable, ContextManager, TextIO

from tqdm import tqdm

DELAY_S = 2.0  # a read shorter than this shows nothing
EVERY_S = 10.0  # not on a terminal: a line this often

Tick = Callable[[int, int], None]  # (items done, items in the pass) of one pass over a split
ReadProgress = Callable[[str, int, int], None]  # (what: the split, done, total)


def no_progress(*args) -> None:
    """A ``Tick`` or ``ReadProgress`` that shows nothing."""


def reading_progress(show: bool) -> ContextManager[ReadProgress]:
    """A context giving what a command passes to ``read_records``: a ``ReadingReport`` when
    ``show`` (not ``--quiet``, and the process that prints), else ``no_progress``."""
    return ReadingReport() if show else contextlib.nullcontext(no_progress)


class ReadingReport:
    """A ``ReadProgress`` that shows itself only once the reading has lasted ``delay`` seconds
    (default ``DELAY_S``).

    Then: on a terminal (``tty``; default: whether ``stream``, default stderr, is one) a tqdm bar
    per split; else a line ``reading annotations: train 12000/80000 images (15%), 12 s`` every
    ``every`` seconds (default ``EVERY_S``) and when a split that was shown is done. Time runs from construction (listing the files counts).
    Use it as a context manager (``close`` ends an open bar).
    """

    def __init__(self, desc: str = "reading annotations", *, stream: TextIO | None = None, delay: float | None = None,
                 every: float | None = None, tty: bool | None = None, clock: Callable[[], float] = time.monotonic):
        self.desc, self.clock = desc, clock
        self.delay = DELAY_S if delay is None else delay
        self.every = EVERY_S if every is None else every
        self.stream = stream if stream is not None else sys.stderr
        self.tty = tty if tty is not None else bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = clock()
        self.last_line: float | None = None  # when the last line was printed (not a tty)
        self.shown: str | None = None  # the split shown now (a bar, or lines)
        self.bar: tqdm | None = None

    def __call__(self, what: str, done: int, total: int) -> None:
        if self.shown != what:
            if self.shown is None and self.clock() - self.start < self.delay:
                return  # a short read says nothing
            self._end()
            self.shown = what
            if self.tty:
                self.bar = tqdm(total=total, initial=done, desc=f"{self.desc}: {what}", unit="img", file=self.stream,
                                dynamic_ncols=True, leave=False)
            else:
                self._line(what, done, total)
            return
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
        elif done >= total or self.clock() - self.last_line >= self.every:
            self._line(what, done, total)

    def _line(self, what: str, done: int, total: int) -> None:
        self.last_line = self.clock()
        share = f" ({100 * done // total}%)" if total else ""
        print(f"{self.desc}: {what} {done}/{total} images{share}, {self.last_line - self.start:.0f} s",
              file=self.stream, flush=True)

    def _end(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def close(self) -> None:
        """End the bar, if one is shown."""
        self._end()

    def __enter__(self) -> ReadingReport:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ProgressLines:
    """The part of tqdm's interface the commands use (``update``, ``total``, ``n``, ``refresh``,
    ``set_postfix``, ``close``, iteration, context manager), written as plain lines for a log:
    ``eval: 120/500 batches (24%), 31 s`` every ``every`` seconds once ``delay`` seconds have passed,
    and a last line at ``close`` when one was printed before (the log shows the work ended). A short
    run prints nothing. ``total`` may change while running (a tiled predict corrects it as images are decoded)."""

    def __init__(self, iterable=None, *, total: int | None = None, desc: str = "", unit: str = "it",
                 stream: TextIO | None = None, delay: float | None = None, every: float | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.iterable, self.desc, self.unit, self.clock = iterable, desc, unit, clock
        if total is None and iterable is not None:
            total = len(iterable) if hasattr(iterable, "__len__") else None
        self.total, self.n = total, 0
        self.stream = stream if stream is not None else sys.stderr
        self.delay = DELAY_S if delay is None else delay
        self.every = EVERY_S if every is None else every
        self.start = clock()
        self.last_line: float | None = None  # when the last line was printed
        self.closed = False

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()  # as tqdm does when its iterable ends

    def __len__(self) -> int:
        return self.total or 0

    def update(self, n: int = 1) -> None:
        """``n`` more units done; a line when one is due."""
        self.n += n
        now = self.clock()
        if not self.closed and now - self.start >= self.delay and (self.last_line is None or now - self.last_line >= self.every):
            self._line(now)

    def _line(self, now: float) -> None:
        self.last_line = now
        share = f" ({100 * self.n // self.total}%)" if self.total else ""
        of = f"/{self.total}" if self.total else ""
        units = self.unit + ("es" if self.unit.endswith(("s", "x", "ch", "sh")) else "s")
        print(f"{self.desc}: {self.n}{of} {units}{share}, {now - self.start:.0f} s", file=self.stream, flush=True)

    def refresh(self) -> None:
        """Nothing to redraw: lines are printed as they fall due."""

    def set_postfix(self, *args, **kwargs) -> None:
        """Bar decorations have no line of their own."""

    def close(self) -> None:
        """The closing line, when the work was long enough to print lines."""
        if not self.closed and self.last_line is not None:
            self._line(self.clock())
        self.closed = True

    def __enter__(self) -> ProgressLines:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress_bar(iterable=None, *, total: int | None = None, desc: str, unit: str, show: bool,
                 stream: TextIO | None = None, tty: bool | None = None, **lines_options):
    """Progress of a command's loop on ``stream`` (default stderr): a tqdm bar on a terminal
    (``tty``; default: whether the stream is one), else ``ProgressLines`` (``lines_options``:
    ``delay``, ``every``, ``clock``); nothing when not ``show`` (``--quiet``, a process of a
    torchrun other than the one that prints). Used as tqdm is: iterate it, or ``update`` it."""
    stream = stream if stream is not None else sys.stderr
    if tty is None:
        tty = bool(getattr(stream, "isatty", lambda: False)())
    if show and not tty:
        return ProgressLines(iterable, total=total, desc=desc, unit=unit, stream=stream, **lines_options)
    return tqdm(iterable, total=total, desc=desc, unit=unit, file=stream, dynamic_ncols=True, disable=not show)
