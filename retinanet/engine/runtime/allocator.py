"""The C allocator's mmap threshold, fixed for tiled prediction (``predict --tile``, ``eval --tile``).

glibc's ``malloc`` serves a buffer above its mmap threshold with its own mapping, returned to the
system when freed; smaller ones come from the heap. By default the threshold moves: each time a
mapped buffer is freed, it rises to that buffer's size (up to 32 MiB). A tiled run frees the same
large buffers batch after batch, so the threshold climbs in steps, more of each batch lands on the
heap, and the peak memory creeps up with the number of tiles: measured 128 -> 154 MiB over the
324 tiles of an 8,000 px image, and peaks that scatter from run to run (BENCHMARKS.md, "Crop
training and tiled prediction"). Fixed at the top of that range from the start
(``MMAP_THRESHOLD``), the heap reaches its size in the first batch and stays there: the same peak
at 2,000 and 8,000 px, run after run.

``fix_mmap_threshold`` is for the command-line process only (``retinanet.cli``), which says so in
its output; the library (``Detector``) never changes the process's allocator. Nothing is done
where the C library is not glibc, or where the user set ``MALLOC_MMAP_THRESHOLD_`` already.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

MMAP_THRESHOLD = 32 * 2**20  # glibc's own ceiling for its moving threshold (DEFAULT_MMAP_THRESHOLD_MAX, 64-bit)
M_MMAP_THRESHOLD = -3  # mallopt parameter number, <malloc.h>
ENV = "MALLOC_MMAP_THRESHOLD_"


def fix_mmap_threshold(nbytes: int = MMAP_THRESHOLD) -> str:
    """Fix glibc's mmap threshold at ``nbytes`` for this process (``mallopt``); 0 leaves glibc's default.

    Returns:
        one line for the command's output saying what was done, or why nothing was.
    """
    if nbytes == 0:
        return "memory: C allocator left at its defaults"
    if os.environ.get(ENV):
        return f"memory: C allocator's mmap threshold left as {ENV}={os.environ[ENV]} sets it"
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return "memory: C allocator left at its defaults (not glibc)"
    if ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, int(nbytes)) != 1:
        return f"memory: C allocator left at its defaults (glibc refused an mmap threshold of {nbytes} bytes)"
    return (f"memory: glibc's mmap threshold fixed at {nbytes / 2**20:g} MiB, so the peak does not creep up with the "
            f"number of tiles ({ENV}=BYTES overrides it)")


__all__ = ["MMAP_THRESHOLD", "fix_mmap_threshold"]
