"""CPU allocator tuning for training: keep freed memory in the process between steps."""

from __future__ import annotations

import ctypes
import os
import platform
from collections.abc import Callable

# glibc mallopt parameter numbers (malloc.h) and their documented defaults
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_DEFAULT_TRIM, _DEFAULT_MMAP_MAX = 128 * 1024, 65536


def hold_freed_memory() -> Callable[[], None]:
    """Keep memory freed by the CPU allocator inside the process until the returned `release()`.

    Why: glibc serves every allocation above 32 MiB (a batch's activations) with a fresh mmap and
    unmaps it on free, so each training step page-faults its whole working set in again and the
    kernel zeroes it. Measured on the 2-core CI machine (a CPU with hardware bf16; its kind was not
    recorded), airnet batch 2000 in bf16: 745,000 minor
    faults and 2.49 s per step by default, 0 faults and 1.83 s with mmap off and no trimming; the
    issue's plain airbench loop (batch 1024) gains ~5% the same way. No-op off glibc, or when the
    user already tunes malloc through GLIBC_TUNABLES or MALLOC_* variables."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc" or \
            "malloc" in os.environ.get("GLIBC_TUNABLES", "") or any(k.startswith("MALLOC_") for k in os.environ):
        return lambda: None
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return lambda: None
    libc.mallopt(_M_MMAP_MAX, 0)  # large blocks come from the heap and go back to it
    libc.mallopt(_M_TRIM_THRESHOLD, -1)  # and the heap is never trimmed (-1: "disables trimming completely")

    def release() -> None:
        libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
        libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM)
        libc.malloc_trim(0)  # give the held memory back, e.g. to a notebook that trains again later

    return release
