"""Freed memory goes back to the OS: a process-level setting of glibc's allocator.

glibc serves big allocations with mmap and returns them to the OS on free, but its mmap
threshold is dynamic: each freed mmapped block raises it (up to 32 MiB), after which blocks
of that size come from the heap and stay in it when freed. A gateway that buffered one large
media request would then keep that RSS forever. Fixing the threshold disables the dynamic
adjustment, so every block of 256 KiB or more is mmapped and unmapped when freed.

That covers big blocks. A large request also arrives as thousands of small slices that gRPC's
threads allocate in their own malloc arenas; freed, they stay resident there (a thread arena
gives memory back only from its top). HeapTrimmer returns those pages with malloc_trim, and
only when resident memory has grown: an idle or steady gateway never pays for it.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os

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


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it (and malloc_trim)
        libc.malloc_trim.argtypes = (ctypes.c_size_t,)
        libc.malloc_trim.restype = ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


def resident_bytes() -> int:
    """This process's resident set size (one read of /proc/self/statm); 0 where there is none."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class HeapTrimmer:
    """Every `interval_s`, if resident memory grew by more than `growth_bytes` since the last
    look, hands the free pages of every malloc arena back to the OS (off the event loop), and
    again at the next few looks: the burst that grew it may still be freeing what it held."""

    def __init__(self, interval_s: float = 2.0, growth_bytes: int = 32 * 1024 * 1024, after_burst: int = 3) -> None:
        self.interval_s = interval_s
        self.growth_bytes = growth_bytes
        self.after_burst = after_burst
        self._libc = _glibc()

    async def run(self) -> None:
        if self._libc is None or not resident_bytes():
            return  # off glibc or without /proc: nothing to trim, nothing to measure
        trim = self._libc.malloc_trim
        settled = resident_bytes()
        pending = 0  # trims still due after a burst
        while True:
            await asyncio.sleep(self.interval_s)
            now = resident_bytes()
            if now > settled + self.growth_bytes:
                pending = self.after_burst + 1
            if pending:
                pending -= 1
                await asyncio.to_thread(trim, 0)
                now = resident_bytes()
            # What is resident now is the new mark: only growth beyond it starts another burst.
            settled = now
