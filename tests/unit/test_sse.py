"""The SSE decoder against httpx-sse, the library it replaces on the stream path.

Every stream is fed split at every position (and at every pair of positions), and byte by
byte: the events must be exactly the ones httpx-sse reads from the whole body, and after
each piece the decoder must have given out every event that piece completed (nothing held
back for a later read) and nothing more.
"""

from __future__ import annotations

import httpx
import pytest
from httpx_sse import EventSource
from hypothesis import given, settings
from hypothesis import strategies as st
from tollway.service.upstream.sse import SSEDecoder

Event = tuple[str, str, str, int | None]


def reference(body: bytes) -> list[Event]:
    """What httpx-sse reads from a whole body."""
    response = httpx.Response(200, headers={"content-type": "text/event-stream"}, content=iter([body]))
    return [(e.event, e.data, e.id, e.retry) for e in EventSource(response).iter_sse()]


def decode(pieces: list[bytes]) -> list[Event]:
    decoder = SSEDecoder()
    return [(e.event, e.data, e.id, e.retry) for piece in pieces for e in decoder.feed(piece)]


CASES = {
    "lf": b"data: one\n\ndata: two\n\n",
    "crlf": b"data: a\r\n\r\nevent: x\r\ndata: b\r\n\r\n",
    "cr": b"data: a\r\rdata: b\r\r",
    "mixed endings": b"data: a\r\n\rdata: b\n\r\ndata: c\r\n\n",
    "multi-line data": b"data: line1\ndata: line2\ndata:\ndata\n\n",
    "comments": b": ping\n\n:another\ndata: x\n: mid-event\n\n",
    "fields": b'event: content_block_delta\nid: 7\nretry: 3000\ndata: {"a": 1}\n\n',
    # The id persists, so an extra blank line gives an empty event, as httpx-sse does.
    "id persists": b"id: 5\ndata: a\n\n\n\ndata: b\n\n",
    "id with NUL ignored": b"id: a\x00b\ndata: x\n\n",
    "id reset": b"id: 5\ndata: a\n\nid:\ndata: b\n\n",
    "retry not a number": b"retry: soon\ndata: x\n\nretry: 10\n\n",
    "colon spacing": b"data:x\n\ndata:  y\n\ndata : z\n\n",
    "unknown field": b"foo: bar\ndata: z\n\nfoo\n\n",
    "event only": b"event: ping\n\n",
    "event set then cleared": b"event: x\nevent:\n\ndata: y\n\n",
    "colons in data": b'data: {"a": "b:c"}\n\n',
    "unicode": "data: héllo 🌍\n\nevent: ünï\ndata: ✓\n\n".encode(),
    "invalid utf-8": b"data: \xff\xfe ok\n\ndata: \xe2\x82\n\n",
    "last event without its blank line": b"data: done\n\ndata: lost",
    "last event ends in one newline": b"data: done\n\ndata: lost\n",
    "last event ends in one CR": b"data: done\r\rdata: lost\r",
    "blank lines only": b"\n\n\r\n\r",
    "empty": b"",
    "openai": (b'data: {"choices":[{"index":0,"delta":{"content":"Hel"}}]}\n\n'
               b'data: {"choices":[{"index":0,"delta":{"content":"lo"}}]}\n\ndata: [DONE]\n\n'),
}


@pytest.mark.parametrize("body", CASES.values(), ids=CASES.keys())
def test_every_split_gives_httpx_sse_events(body):
    expected = reference(body)
    assert decode([body]) == expected
    for i in range(len(body) + 1):
        assert decode([body[:i], body[i:]]) == expected, i
    assert decode([body[i:i + 1] for i in range(len(body))]) == expected


@pytest.mark.parametrize("name", ["crlf", "cr", "mixed endings", "unicode", "id persists"])
def test_every_split_in_three_gives_httpx_sse_events(name):
    body = CASES[name]
    expected = reference(body)
    for i in range(len(body) + 1):
        for j in range(i, len(body) + 1):
            assert decode([body[:i], body[i:j], body[j:]]) == expected, (i, j)


@pytest.mark.parametrize("body", CASES.values(), ids=CASES.keys())
def test_an_event_comes_out_with_the_read_that_completes_it(body):
    """After each byte, exactly the events of the body so far: none waits for more data."""
    decoder = SSEDecoder()
    seen: list[Event] = []
    for i in range(len(body)):
        seen += [(e.event, e.data, e.id, e.retry) for e in decoder.feed(body[i:i + 1])]
        assert seen == reference(body[:i + 1]), body[:i + 1]


def test_events_expose_what_adapters_read():
    [event] = SSEDecoder().feed(b"event: message_start\nid: 1\ndata: {}\n\n")
    assert (event.event, event.data, event.id, event.retry) == ("message_start", "{}", "1", None)
    [event] = SSEDecoder().feed(b"data: x\n\n")
    assert event.event == "message"  # the format's default type, as httpx-sse gives it


def test_a_leading_byte_order_mark_is_dropped_even_split():
    body = b"\xef\xbb\xbfdata: x\n\n"
    for i in range(len(body) + 1):
        for j in range(i, len(body) + 1):
            assert decode([body[:i], body[i:j], body[j:]]) == [("message", "x", "", None)], (i, j)
    # Only at the very start: later, the same bytes are text.
    assert decode([b"data: a\n\n", b"data: \xef\xbb\xbfb\n\n"]) == [("message", "a", "", None),
                                                                    ("message", "\ufeffb", "", None)]


_TOKENS = st.sampled_from([b"data", b"event", b"id", b"retry", b":", b" ", b"\n", b"\r", b"\r\n", b"x", b"5",
                           b"\x00", "é".encode(), "🌍".encode()[:2], "🌍".encode()[2:], b"[DONE]", b"{}"])


@settings(max_examples=300, deadline=None)
@given(tokens=st.lists(_TOKENS, max_size=40), cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=6))
def test_any_stream_cut_anywhere_gives_httpx_sse_events(tokens, cuts):
    body = b"".join(tokens)
    points = sorted({min(c, len(body)) for c in cuts})
    pieces = [body[a:b] for a, b in zip([0, *points], [*points, len(body)])]
    assert decode(pieces) == reference(body)
