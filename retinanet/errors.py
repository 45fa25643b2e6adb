"""User-facing errors, and how the package's warnings print.

Library code raises these instead of calling ``sys.exit``; ``retinanet.cli`` turns them into one
clear message on stderr and a non-zero exit status. A message names the file and the problem.
Warnings the package issues print as one plain line too (``PlainWarnings``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

PACKAGE_DIR = str(Path(__file__).resolve().parent)


class RetinaNetError(Exception):
    """An error caused by the user's input (files, options), reported without a traceback."""


class DataError(RetinaNetError):
    """One or more problems found in a dataset.

    Args:
        problems: one line per problem, each naming the file and what is wrong.
        summary: first line of the message (defaults to a count of the problems).
    """

    def __init__(self, problems: list[str], summary: str | None = None):
        self.problems = list(problems)
        head = summary or f"{len(self.problems)} problem(s) found in the dataset"
        lines = [head] + [f"  - {p}" for p in self.problems[:50]]
        if len(self.problems) > 50:
            lines.append(f"  ... and {len(self.problems) - 50} more")
        super().__init__("\n".join(lines))


class CheckpointError(RetinaNetError):
    """A weights or checkpoint file that cannot be read or does not fit the model."""


@dataclass(frozen=True)
class PlainWarnings:
    """A ``warnings.showwarning``: the package's own warnings print as one line, ``retinanet
    COMMAND: warning: MESSAGE`` (not Python's ``file:line: UserWarning`` and the source line);
    others go to ``fallback`` (Python's way). The command line installs one (``cli.plain_warnings``),
    and each loader worker the same again (``data.workers``: a worker started by ``spawn`` or
    ``forkserver`` is a new interpreter, with Python's own)."""

    command: str
    fallback: Callable[..., None]

    def __call__(self, message, category, filename, lineno, file=None, line=None) -> None:
        if not str(filename).startswith(PACKAGE_DIR):
            return self.fallback(message, category, filename, lineno, file, line)
        print(f"retinanet {self.command}: warning: {message}", file=file or sys.stderr, flush=True)
