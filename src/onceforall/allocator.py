"""glibc malloc settings for eager PyTorch on the CPU: keep freed buffers instead of re-faulting them.

Every activation and gradient is a malloc. glibc serves large blocks with fresh `mmap`s and hands
freed memory back to the OS, under thresholds that adapt to what the process allocated before. So a
fresh training process faults in and zeroes about 120,000 pages per step of the w1.0 supernet at
64 px, batch 64 (`bench/allocator.py`: 1.86x slower steps), and the same layer can time 1.3 ms or
3.3 ms in a latency table depending on history. A fixed mmap threshold of 32 MiB (glibc's ceiling)
and a 1 GiB trim threshold keep those blocks on the heap, where the next step reuses them: the steady
state a long-running process (or a caching allocator) has.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameter numbers from glibc's malloc.h
SETTINGS = "glibc mmap_threshold=32MiB trim_threshold=1GiB"  # recorded by latency tables
USER_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")


def reuse_freed_memory(apply: bool = True) -> str | None:
    """Set the thresholds for the rest of the process; the settings, or None where they do not apply.

    They do not apply without glibc, or when the user set glibc's own `MALLOC_*` variables (those
    win). With `apply=False` only says what would be set.
    """
    if platform.libc_ver()[0] != "glibc" or any(name in os.environ for name in USER_VARIABLES):
        return None
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):
        return None
    if mallopt is None:
        return None
    if apply and (mallopt(M_MMAP_THRESHOLD, 32 << 20) != 1 or mallopt(M_TRIM_THRESHOLD, 1 << 30) != 1):
        return None
    return SETTINGS
