"""Loader worker processes leave Ctrl-C (SIGINT) to the process that runs the loader.

Ctrl-C reaches every process of the terminal's process group, the loader's workers included. A
forked worker inherits the training loop's handler (which ignores it there), but a worker started
with ``spawn`` (macOS, Windows) or ``forkserver`` (Linux from Python 3.14) starts a fresh
interpreter with Python's own handler: it died of ``KeyboardInterrupt``, often while still
importing torch, and the loader raised "DataLoader worker exited unexpectedly" before the loop
could save its checkpoint. ``QuietWorkersLoader`` starts its workers with SIGINT ignored (a
disposition a new process keeps across ``exec``, and that Python keeps as it starts). SIGTERM is
left to torch's own worker handler, so ``terminate()`` still ends a worker.

A fresh interpreter also has Python's own ``warnings.showwarning``: the per-image warnings of the
dataset (``DetectionDataset._warn``) printed there as ``/path/dataset.py:150: UserWarning: ...``
and the source line. The workers print them as the process that built the loader does
(``errors.PlainWarnings``: ``retinanet train: warning: ...``).
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
import signal
import threading
import warnings
from collections.abc import Callable, Iterator

from torch.utils.data import DataLoader

from retinanet.errors import PlainWarnings

MASKABLE = hasattr(signal, "pthread_sigmask")  # POSIX


@contextlib.contextmanager
def new_processes_ignore_sigint() -> Iterator[None]:
    """Processes started inside the block ignore SIGINT. In this process a SIGINT that arrives
    meanwhile is held back (blocked) and handled as usual when the block ends, not lost; the
    started processes inherit that block too, which ``start_worker`` lifts in each (a held
    SIGINT is then dropped there, as ignored). Only in the main thread (elsewhere Python allows no
    handlers: nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT}) if MASKABLE else None
    try:
        handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            yield
        finally:
            if handler is not None:  # None: installed outside Python, nothing to put back
                signal.signal(signal.SIGINT, handler)
    finally:
        if MASKABLE:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def warnings_command() -> str | None:
    """The command this process prints the package's warnings under (its ``warnings.showwarning``
    is a ``PlainWarnings``: ``retinanet COMMAND`` runs), or None (Python's way)."""
    show = warnings.showwarning
    return show.command if isinstance(show, PlainWarnings) else None


def show_warnings_as(command: str | None) -> None:
    """Print the package's warnings as ``retinanet COMMAND: warning: ...`` in this process (a
    loader worker), unless it already does (forked: inherited) or ``command`` is None."""
    if command is not None and not isinstance(warnings.showwarning, PlainWarnings):
        warnings.showwarning = PlainWarnings(command, warnings.showwarning)


def start_worker(worker_id: int, warnings_as: str | None = None, then: Callable[[int], None] | None = None) -> None:
    """A worker's first step (``worker_init_fn``): lift the SIGINT block it inherited (it stays
    ignored); print the package's warnings as the process that built the loader does
    (``warnings_as``: its ``warnings_command``); then run the loader's own ``worker_init_fn``, if any."""
    if MASKABLE:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    show_warnings_as(warnings_as)
    if then is not None:
        then(worker_id)


class QuietWorkersLoader(DataLoader):
    """A DataLoader whose worker processes ignore SIGINT (the module's docstring says why) and
    print the package's warnings as the process that built it does (``retinanet COMMAND:
    warning: ...``, not Python's ``file:line: UserWarning``: a spawned worker is a new interpreter).

    With ``persistent_workers`` its workers start at the first iteration and serve every later
    one; ``close`` ends them (else they end when the loader is garbage collected, or at exit).
    An iteration left part way (an evaluation cut short, a measured first batch) leaves nothing
    behind for the next one: PyTorch's reset of a persistent iterator waits for each worker to
    acknowledge it, dropping every batch still under way before then.
    """

    def __init__(self, *args, worker_init_fn: Callable[[int], None] | None = None, **kwargs):
        start = functools.partial(start_worker, warnings_as=warnings_command(), then=worker_init_fn)
        super().__init__(*args, worker_init_fn=start, **kwargs)

    def __iter__(self):
        if self.num_workers == 0 or self.workers_kept():  # no process starts: Ctrl-C is not held meanwhile
            return super().__iter__()
        with new_processes_ignore_sigint():  # the workers start here (persistent ones at the first iteration)
            return super().__iter__()

    def workers_kept(self) -> bool:
        """Persistent workers are running (started by an earlier iteration, not closed since)."""
        return self.persistent_workers and self._iterator is not None

    def close(self) -> None:
        """End the persistent workers now (idle, they hold their memory until the loader is
        garbage collected); a later iteration starts new ones. Nothing to do without them."""
        iterator, self._iterator = self._iterator, None
        if iterator is not None:
            iterator._shutdown_workers()


# why a call made while a worker starts is refused, and the fix
MAIN_GUARD_HINT = ("a loader worker re-runs the script that started it (the spawn start method: macOS, Windows; "
                   "forkserver: Linux from Python 3.14): put the script's calls under `if __name__ == \"__main__\":`")


def starting_worker() -> bool:
    """True while multiprocessing (spawn, forkserver) starts this process and runs the parent's main
    script in it as ``__mp_main__``: a script that calls the package at its top level, without
    ``if __name__ == "__main__":``, calls it again in every loader worker, where a second training
    run in the same folder must not start (it found the folder "in use"). Python's own test for
    the same case (``multiprocessing.spawn._check_not_importing_main``) reads this flag too."""
    return bool(getattr(multiprocessing.current_process(), "_inheriting", False))
