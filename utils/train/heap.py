"""Freed memory kept for the next training step: glibc's malloc thresholds set as its own rule would (Linux, Colab).

Every training step allocates the same large tensors again (one [n, d_mlp] hidden layer is megabytes). glibc's
malloc hands a freed block back to the operating system when the free memory at the top of its heap exceeds its trim
threshold, and serves blocks above its mmap threshold with fresh pages; either way the next step touches new pages,
which the kernel must zero one 4 KiB page at a time: thousands of page faults per workshop step, about a tenth of
its time on the course's 2-core machine (tests/test_heap.py counts the faults). glibc raises both thresholds by
itself once it sees large blocks freed, up to 32 MiB and 64 MiB, but a training step's blocks do not always take it
there. `keep_freed_memory` sets those limits at once. It is process-wide and stays set: the process keeps at most
64 MiB of freed memory for reuse. Elsewhere (macOS, Windows, musl) it does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["keep_freed_memory"]

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)
MMAP_THRESHOLD = 32 * 1024 * 1024  # the largest that glibc's own rule sets on 64-bit systems …
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD  # … and the trim threshold it sets with it


def _glibc() -> ctypes.CDLL | None:
    """The C library if it is glibc (it has mallopt), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "gnu_get_libc_version") else None


def keep_freed_memory() -> bool:
    """Let malloc keep freed blocks up to 32 MiB (and 64 MiB at the top of its heap) for reuse; True if it could."""
    libc = _glibc()
    if libc is None:
        return False
    mmap_set = bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    return mmap_set and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
