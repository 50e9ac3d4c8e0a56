"""Request ids are UUIDv7s as 32 hex digits: unique, and ordered by the millisecond they were made in."""

from __future__ import annotations

import re
import time
import uuid

from tollway.service.gateway.request_ids import new_request_id


def test_a_request_id_is_a_uuid7_written_as_32_hex_digits_with_the_current_millisecond():
    before = time.time_ns() // 1_000_000
    request_id = new_request_id()
    after = time.time_ns() // 1_000_000
    assert re.fullmatch(r"[0-9a-f]{32}", request_id)
    parsed = uuid.UUID(hex=request_id)
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122
    assert before <= int(request_id[:12], 16) <= after


def test_ids_of_later_milliseconds_sort_after_earlier_ones_so_the_ledger_key_grows_at_its_end():
    ids = []
    for _ in range(5):
        ids.append(new_request_id())
        start = time.monotonic()
        while time.monotonic() - start < 0.002:
            pass
    assert ids == sorted(ids)


def test_ids_made_in_one_millisecond_are_still_distinct_and_random():
    ids = [new_request_id() for _ in range(20000)]
    assert len(set(ids)) == len(ids)
    # The random bits (rand_a and rand_b, 74 of them) differ even where the time is the same.
    tails = {i[13:16] + i[17:] for i in ids}
    assert len(tails) == len(ids)
