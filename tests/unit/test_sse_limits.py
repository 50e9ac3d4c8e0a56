"""The SSE decoder's bound: an unfinished line or an event's data past max_event_bytes is
refused as it arrives, whatever the reads look like."""

from __future__ import annotations

import pytest
from tollway.service.upstream.sse import SSEDecoder, SSETooLarge


def test_a_line_that_never_ends_is_refused_once_past_the_limit():
    decoder = SSEDecoder(max_event_bytes=100)
    decoder.feed(b"data: " + b"x" * 90)
    with pytest.raises(SSETooLarge, match=r"^a line of more than 100 bytes$"):
        decoder.feed(b"x" * 10)


def test_an_event_of_many_lines_is_refused_once_its_data_passes_the_limit():
    decoder = SSEDecoder(max_event_bytes=100)
    with pytest.raises(SSETooLarge, match=r"^an event of more than 100 bytes$"):
        decoder.feed(b"data: 0123456789\n" * 10)


def test_events_within_the_limit_pass_and_the_count_starts_again_for_each():
    decoder = SSEDecoder(max_event_bytes=100)
    for _ in range(50):
        [event] = decoder.feed(b"data: " + b"y" * 60 + b"\n\n")
        assert event.data == "y" * 60


def test_no_limit_by_default():
    decoder = SSEDecoder()
    assert decoder.feed(b"data: " + b"z" * 1_000_000 + b"\n\n")[0].data == "z" * 1_000_000


@pytest.mark.parametrize("oversized", [b"data: " + b"x" * 200, b"data: 0123456789\n" * 10],
                         ids=["a line that never ends", "an event of many lines"])
def test_the_events_a_read_completed_before_the_limit_passed_come_with_the_refusal(oversized):
    # One read may carry whole events and then the start of something too large: the whole ones
    # arrived and still go to the caller, before the error.
    decoder = SSEDecoder(max_event_bytes=100)
    with pytest.raises(SSETooLarge) as refused:
        decoder.feed(b"data: one\n\ndata: two\n\n" + oversized)
    assert [event.data for event in refused.value.events] == ["one", "two"]
