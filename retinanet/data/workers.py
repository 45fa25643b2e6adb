"""Loader worker processes leave SIGINT and SIGTERM to the process that runs the loader.

Ctrl-C reaches every process of the terminal's process group, the loader's workers included, and
torchrun passes SIGTERM on. A forked worker inherits the training loop's handler (which ignores it
there), but a worker started with ``spawn`` (macOS, Windows) or ``forkserver`` (Linux from Python
3.14) starts a fresh interpreter with Python's own handler: it died of ``KeyboardInterrupt``, often
while still importing torch, and the loader raised "DataLoader worker exited unexpectedly" before the
loop could save its checkpoint. ``QuietWorkersLoader`` starts its workers with both signals ignored
(a disposition a new process keeps across ``exec``, and that Python keeps as it starts); they end
when the loader ends them, or by torch's watchdog when the process that ran them is gone.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

from torch.utils.data import DataLoader

SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM") if hasattr(signal, name))


@contextlib.contextmanager
def new_processes_ignore_signals() -> Iterator[None]:
    """Processes started inside the block ignore SIGINT and SIGTERM. In this process a signal that
    arrives meanwhile is held back (blocked) and handled as usual when the block ends, not lost.
    Only in the main thread (elsewhere Python allows no handlers: nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    blocked = hasattr(signal, "pthread_sigmask")
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS) if blocked else None
    handlers = {s: signal.signal(s, signal.SIG_IGN) for s in SIGNALS}
    try:
        yield
    finally:
        for s, handler in handlers.items():
            signal.signal(s, handler)
        if blocked:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)


class QuietWorkersLoader(DataLoader):
    """A DataLoader whose worker processes ignore SIGINT and SIGTERM (the module's docstring says why)."""

    def __iter__(self):
        if self.num_workers == 0:
            return super().__iter__()
        with new_processes_ignore_signals():  # the workers start here (persistent ones at the first iteration)
            return super().__iter__()
