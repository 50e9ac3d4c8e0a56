"""Server-sent events from raw response bytes: one decoder, fed whatever each read returned.

httpx-sse decodes the body to text and splits lines in Python generators, about 10
microseconds per event (bench/RESULTS.md). This decoder splits the bytes of a whole read
at once, and gives out every event that read completed, so no event waits for a later read.

The semantics are httpx-sse's, which tests/test_sse.py checks byte for byte: LF, CRLF and CR
end lines, also when a CRLF is split between two reads; a blank line dispatches an event
when the type, the data, the retry or the id holds something (the id persists from event
to event, so after one is set every blank line dispatches); lines starting with ":" are
comments; `data` lines join with "\n"; an `id` holding NUL is ignored; `retry` is kept when
it is an integer; a last event without its blank line is not dispatched. Two differences,
both the event-stream format's own rules: the body is always UTF-8 (httpx-sse would honour
a charset parameter), and a leading byte-order mark is dropped.
Events are httpx_sse.ServerSentEvent objects, so adapters see what they saw before.

A hostile or broken upstream could send one endless line or event: with max_event_bytes the
decoder refuses (SSETooLarge) as soon as the unfinished line, or the data of the event being
built, passes it, so memory stays bounded whatever arrives.
"""

from __future__ import annotations

from httpx_sse import ServerSentEvent

_BOM = b"\xef\xbb\xbf"


class SSETooLarge(ValueError):
    """A line or an event passed the decoder's max_event_bytes. events: those the same chunk
    completed before it did, which the caller still passes on (they arrived whole)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.events: list[ServerSentEvent] = []


class SSEDecoder:
    """Bytes in, complete events out; holds only the unfinished line and the fields so far."""

    __slots__ = ("_pending", "_pending_bytes", "_max", "_after_cr", "_started", "_event", "_data", "_data_bytes",
                 "_id", "_retry")

    def __init__(self, max_event_bytes: int | None = None) -> None:
        self._max = max_event_bytes
        # Pieces of a line whose end has not arrived yet.
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        # The last read ended in CR: a LF at the start of the next one is the same line end.
        self._after_cr = False
        self._started = False
        self._event = ""
        self._data: list[bytes] = []
        self._data_bytes = 0
        self._id = ""
        self._retry: int | None = None

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """The events that chunk completes, in order."""
        if not chunk:
            return []
        if not self._started:
            if self._pending:
                chunk = b"".join(self._pending) + chunk
                self._pending.clear()
                self._pending_bytes = 0
            if len(chunk) < len(_BOM) and _BOM.startswith(chunk):
                self._hold(chunk)  # maybe the start of a byte-order mark: wait for more
                return []
            self._started = True
            if chunk.startswith(_BOM):
                chunk = chunk[len(_BOM):]
        if self._after_cr:
            self._after_cr = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        if b"\r" in chunk:
            self._after_cr = chunk.endswith(b"\r")
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        elif b"\n" not in chunk:
            if chunk:
                self._hold(chunk)
            return []
        lines = chunk.split(b"\n")
        if self._pending:
            self._hold(lines[0])
            lines[0] = b"".join(self._pending)
            self._pending.clear()
            self._pending_bytes = 0
        tail = lines.pop()  # after the last line end: the start of a line, or b""
        events: list[ServerSentEvent] = []
        try:
            for line in lines:
                if not line:
                    # httpx-sse's rule: dispatch when any field holds something (the id persists).
                    if self._data or self._event or self._id or self._retry is not None:
                        events.append(self._dispatch())
                elif line[0] != 0x3A:  # ":" starts a comment
                    self._field(line)
            if tail:
                self._hold(tail)
        except SSETooLarge as too_large:
            too_large.events = events
            raise
        return events

    def _field(self, line: bytes) -> None:
        name, _, value = line.partition(b":")
        if value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self._data_bytes += len(value) + 1
            if self._max is not None and self._data_bytes > self._max:
                raise SSETooLarge(f"an event of more than {self._max} bytes")
            self._data.append(value)
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")
        elif name == b"id":
            if b"\0" not in value:
                self._id = value.decode("utf-8", "replace")
        elif name == b"retry":
            try:
                self._retry = int(value.decode("utf-8", "replace"))
            except ValueError:
                pass

    def _dispatch(self) -> ServerSentEvent:
        data = self._data
        text = data[0] if len(data) == 1 else b"\n".join(data)
        event = ServerSentEvent(event=self._event, data=text.decode("utf-8", "replace"), id=self._id,
                                retry=self._retry)
        # The id persists across events, as the format says.
        self._event = ""
        self._data = []
        self._data_bytes = 0
        self._retry = None
        return event

    def _hold(self, piece: bytes) -> None:
        """Keep the start of a line until its end arrives, within the limit."""
        self._pending_bytes += len(piece)
        if self._max is not None and self._pending_bytes > self._max:
            raise SSETooLarge(f"a line of more than {self._max} bytes")
        self._pending.append(piece)
