"""Request ids: 32 lowercase hex digits, a UUIDv7 (RFC 9562) without its dashes.

Time-ordered (the first 48 bits are the Unix time in milliseconds) so that the ledger's primary
key grows at its end: random ids (UUIDv4) put every insert on a random page of that index,
and each batch then wrote a page per record to SQLite's WAL (5.6 page writes per call at
c=50, bench/RESULTS.md). 74 random bits keep ids unguessable and unique.
"""

from __future__ import annotations

import os
import time

_RAND_A_SHIFT = 68  # of the 80 random bits drawn, the top 12 are rand_a
_RAND_B_MASK = (1 << 62) - 1


def new_request_id() -> str:
    """A fresh UUIDv7 as 32 hex digits: unix_ts_ms(48) | 7(4) | rand_a(12) | 0b10(2) | rand_b(62)."""
    millis = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = ((millis & 0xFFFF_FFFF_FFFF) << 80 | 0x7 << 76 | (rand >> _RAND_A_SHIFT) << 64
             | 0b10 << 62 | rand & _RAND_B_MASK)
    return f"{value:032x}"
