"""User-facing errors.

Library code raises these instead of calling ``sys.exit``; ``retinanet.cli`` turns them into one
clear message on stderr and a non-zero exit status. A message names the file and the problem.
"""

from __future__ import annotations


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
