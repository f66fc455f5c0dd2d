"""A worker's heap: large buffers go straight back to the system when freed.

glibc serves an allocation from its heap, unless it is at least M_MMAP_THRESHOLD bytes, which
get their own mmap and are unmapped on free. The threshold is dynamic by default: each time a
mapped chunk is freed, it rises to that chunk's size (up to 32 MB on 64-bit). A worker decodes
batches of ever different shapes (inputs x tokens x rows, adapters of new instructions), so after
the first few batches nearly every tensor buffer lands in the heap, where freed chunks stay
resident for reuse and, of mismatched sizes, fragment it: RSS grows long after live memory (the
model, the workspace, the byte-bounded adapter cache) stopped growing. Measured on the tiny
checkpoint over 800 new instructions (1-16 inputs, up to 64 tokens, one torch thread): 35-48 MB
of free heap kept, RSS 601-607 MB; with a fixed threshold 12 MB and 577 MB, at the same speed
(`tagi bench serve --parts memory` measures a real server). MALLOC_ARENA_MAX=2 did not help
(fewer arenas, same retention) and malloc_trim after evictions only lowered RSS between
batches, the next batch faulting the pages back in.
"""

from __future__ import annotations

import ctypes
import logging

M_MMAP_THRESHOLD = -3
"""mallopt's parameter number (malloc.h)."""
MMAP_THRESHOLD_BYTES = 256 * 1024
"""Allocations from here up are mapped and unmapped on their own: every tensor of a batch but the
smallest. Setting it also turns glibc's dynamic threshold off."""
log = logging.getLogger("tagi.serving")


def map_large_allocations(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Fix glibc's mmap threshold for this process (call it before the model loads); False under a
    C library without mallopt (musl, macOS), where nothing changes."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    if mallopt(M_MMAP_THRESHOLD, threshold) != 1:
        log.warning("mallopt(M_MMAP_THRESHOLD, %d) failed: freed tensor buffers may stay resident", threshold)
        return False
    return True
