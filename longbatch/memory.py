"""Give freed document-sized memory back to the system.

glibc serves allocations above a threshold (128 KiB at start) with their own mmap, returned to
the system when freed; but each such free raises the threshold to the freed size (up to 32 MiB),
so after the first document every later one (a few MB of text, its request, its JSON) is carved
from the heap, where freed blocks fragment and stay resident. Fixing the threshold keeps every
document-sized block on its own mapping. Measured with bench/peak_memory.py (460 documents of
1.4 M characters): peak RSS of `longbatch run --no-wait` 465-539 MiB -> 314 MiB (the bare
imports are ~300 MiB), of the two ingest workers 335 -> 150 MiB.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter (malloc.h)
MMAP_THRESHOLD_BYTES = 128 * 1024


@functools.cache
def fix_mmap_threshold() -> bool:
    """True when set (glibc); elsewhere nothing happens and False is returned."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    except (OSError, AttributeError):
        return False
