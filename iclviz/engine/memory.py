"""Keep a long-running server's resident memory flat (glibc only; a no-op elsewhere).

A forward pass allocates and frees tensors of a few megabytes. glibc raises its mmap threshold
after such frees, so later tensors come from the heap arenas (one per thread: Streamlit runs each
session in its own thread) and freed memory stays resident. Fixing the threshold keeps large
tensors in their own mappings, returned to the system when freed; ``release_memory`` hands back
free heap pages after each app run.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 1 << 20


@functools.lru_cache(maxsize=1)
def _libc():
    try:
        name = ctypes.util.find_library("c")
        libc = ctypes.CDLL(name) if name else None
        return libc if libc is not None and hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None
    except OSError:
        return None


@functools.lru_cache(maxsize=1)
def limit_heap_growth() -> bool:
    """Allocations over 1 MB get their own mappings (once per process). True when applied."""
    libc = _libc()
    return bool(libc and libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))


def release_memory() -> bool:
    """Return free heap memory to the system (cheap; call after a run). True when something was released."""
    libc = _libc()
    return bool(libc and libc.malloc_trim(0))
