"""Freed memory goes back to the OS: a process-level setting of glibc's allocator.

glibc serves big allocations with mmap and returns them to the OS on free, but its mmap
threshold is dynamic: each freed mmapped block raises it (up to 32 MiB), after which blocks
of that size come from the heap and stay in it when freed. A gateway that buffered one large
media request would then keep that RSS forever. Fixing the threshold disables the dynamic
adjustment, so every block of 256 KiB or more is mmapped and unmapped when freed.
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger("tollway.server")

M_MMAP_THRESHOLD = -3  # from glibc's malloc.h
MMAP_THRESHOLD_BYTES = 256 * 1024


def return_big_blocks_to_the_os() -> bool:
    """Set glibc's mmap threshold once at start-up; a no-op (False) off glibc."""
    try:
        libc = ctypes.CDLL(None)  # the C library the interpreter already uses
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it (and this mallopt option)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl, macOS, Windows: nothing to set
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    if mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) != 1:
        log.warning("could not set the allocator's mmap threshold: freed memory may stay in the process")
        return False
    return True
