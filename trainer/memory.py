"""Keep freed memory in the process: a training step allocates and frees the same large tensors every step.

glibc serves blocks above its mmap threshold (at most 32 MiB) with fresh mmap pages and gives them back on free, and
trims the heap top above its trim threshold, so each step page-faults all of its activations in again: on the
2-core machine here that was half the time of a blocks3 step (benchmarks/results/train_speed.md). Raising both
thresholds keeps the memory mapped for the next step. The process keeps its peak heap, which each step reaches
anyway.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers (malloc.h)
KEEP_BYTES = 1 << 30  # blocks up to 1 GiB from the heap; up to 1 GiB of free heap top kept
OLD_GLIBC_MMAP_MAX = 32 << 20  # the highest mmap threshold glibc before 2.35 or so accepts on 64-bit


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process. False where that did not happen (another libc)."""
    if platform.libc_ver()[0] != "glibc":  # musl, macOS …; a preloaded jemalloc/tcmalloc has its own caching
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    mmap_set = bool(mallopt(M_MMAP_THRESHOLD, KEEP_BYTES)) or bool(mallopt(M_MMAP_THRESHOLD, OLD_GLIBC_MMAP_MAX))
    trim_set = bool(mallopt(M_TRIM_THRESHOLD, KEEP_BYTES))
    return mmap_set and trim_set
