"""glibc malloc settings for CPU training: keep freed activation buffers instead of re-faulting them.

By default glibc serves large blocks with fresh `mmap`s and hands freed memory back to the OS, so a
training step touches every activation and gradient page anew: the kernel faults in and zeroes
about 120,000 pages per step of the w1.0 supernet at 64 px, batch 64 (`bench/allocator.py`).
A fixed mmap threshold of 32 MiB (glibc's ceiling) and a high trim threshold keep those blocks on the
heap, where the next step reuses them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD = -1  # mallopt parameter numbers from glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # the largest value glibc accepts (HEAP_MAX_SIZE / 2 on 64-bit)
TRIM_THRESHOLD = 1 << 30
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")


def reuse_freed_memory() -> bool:
    """Apply the settings; False where they do not apply (not glibc, or the user set MALLOC_* vars)."""
    if any(name in os.environ for name in USER_SETTINGS):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    mallopt = getattr(ctypes.CDLL(name), "mallopt", None)
    if mallopt is None:
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
