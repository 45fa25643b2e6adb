"""Command lines the package prints for the user to run (``next:``, ``resume:``, the demo's steps),
quoted for the shell they will be pasted into.

POSIX shells take ``shlex`` quoting (``'run 1'``); cmd.exe and PowerShell do not understand single
quotes, so on Windows the line is quoted as the C runtime parses it (``"run 1"``,
``subprocess.list2cmdline``).
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from collections.abc import Iterable


def command_line(parts: Iterable[str]) -> str:
    """``parts`` as one command line for this platform's shell: ``subprocess.list2cmdline`` on
    Windows (``sys.platform == "win32"``), ``shlex.join`` elsewhere."""
    parts = [str(p) for p in parts]
    return subprocess.list2cmdline(parts) if sys.platform == "win32" else shlex.join(parts)
