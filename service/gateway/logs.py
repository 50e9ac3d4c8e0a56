"""Logging: one line per request, plain or JSON, timestamps in UTC. No log line ever carries
a key, and no caller can forge or flood one.

Every record's final text is scrubbed of every key configured in this process
(redaction.scrub_log). Values a caller chose (model names, error messages quoting them)
are bounded in length, and in the plain format escaped logfmt-style, so a record is always
exactly one line.
"""

from __future__ import annotations

import functools
import logging
import re
import sys
import time
from typing import Any

import orjson

from tollway.service.redaction import scrub_log

REQUEST_LOGGER = "tollway.request"

# Fields a request line carries, in order.
REQUEST_FIELDS = ("request_id", "rpc", "caller", "model", "provider", "upstream_model", "status", "latency_ms",
                  "attempts", "input_tokens", "output_tokens", "error")
# A call refused at authentication logs only these: its request fields are a stranger's input.
UNAUTHENTICATED_FIELDS = ("request_id", "rpc", "status", "error")

# Longest value a request line carries; the rest is counted, not written.
MAX_VALUE_CHARS = 200
# Longest message of any record (our messages are far shorter; this bounds what they quote).
MAX_MESSAGE_CHARS = 2000


def bounded(text: str, limit: int = MAX_VALUE_CHARS) -> str:
    """text, cut at limit characters with a marker saying how many more there were."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}...({len(text) - limit} more)"


def _iso_utc(record: logging.LogRecord) -> str:
    """ISO-8601 in UTC with milliseconds and a Z, whatever the host's time zone."""
    return _utc_second(int(record.created)) + f".{int(record.msecs):03d}Z"


@functools.lru_cache(maxsize=4)
def _utc_second(second: int) -> str:
    # Formatted once per second rather than once per line: a busy gateway logs hundreds a second.
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": _iso_utc(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": bounded(record.getMessage(), MAX_MESSAGE_CHARS),
        }
        fields = getattr(record, "fields", None)
        if fields:
            line.update({k: bounded(v) if isinstance(v, str) else v for k, v in fields.items()})
        if record.exc_info:
            # Exceptions are logged by type only: a traceback may quote a request body.
            line["exception"] = record.exc_info[0].__name__ if record.exc_info[0] else None
        return scrub_log(orjson.dumps(line).decode())


class PlainFormatter(logging.Formatter):
    """`2026-12-01T06:25:19.123Z INFO logger message k=v k="v w" ...`, one line per record
    (a traceback follows on indented lines)."""

    def format(self, record: logging.LogRecord) -> str:
        text = f"{_iso_utc(record)} {record.levelname} {record.name} " \
               f"{_escape(bounded(record.getMessage(), MAX_MESSAGE_CHARS))}"
        fields = getattr(record, "fields", None)
        if fields:
            text += " " + " ".join([f"{k}={_plain(v)}" for k, v in fields.items() if v is not None and v != ""])
        if record.exc_info:
            if not record.exc_text:
                record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            # Indented, so that no line of a traceback can pass for a record of its own.
            text += "\n" + "\n".join("    " + line for line in record.exc_text.splitlines())
        return scrub_log(text)


# Characters no line may carry as they are: every control or line-breaking character (\n, \r,
# \x85, \u2028, ...), which would start a forged record. Values also escape quotes and backslashes.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_UNSAFE_IN_VALUE = re.compile(r'["\\\x00-\x1f\x7f-\x9f\u2028\u2029]')
_NEEDS_QUOTES = re.compile(r'[\s="\\\x00-\x1f\x7f-\x9f\u2028\u2029]')
_NAMED = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    return _NAMED.get(char) or f"\\u{ord(char):04x}"


def _escape(text: str) -> str:
    """A message on one line: control characters written as escapes."""
    return _CONTROL.sub(_escape_char, text)


def _plain(value: Any) -> str:
    """A logfmt value: bounded, escaped, and quoted when it holds a space, '=', a quote or an escape."""
    if type(value) is int or type(value) is float:
        return repr(value)  # latency and token figures: nothing to bound, escape or quote
    text = bounded(str(value))
    if not text or _NEEDS_QUOTES.search(text):
        return f'"{_UNSAFE_IN_VALUE.sub(_escape_char, text)}"'
    return text


def configure_logging(fmt: str = "plain", level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else PlainFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Library chatter is not request lines; httpx alone would log every upstream call.
    for noisy in ("aiohttp", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


_request_logger = logging.getLogger(REQUEST_LOGGER)


def log_request(**fields: Any) -> None:
    logger = _request_logger
    if logger.isEnabledFor(logging.INFO):
        # What Logger.info does, less its walk up the stack to find the caller (a third of a
        # line's cost): a request line always comes from here.
        record = logger.makeRecord(REQUEST_LOGGER, logging.INFO, __file__, _LOG_REQUEST_LINE, "request", (), None,
                                   "log_request", {"fields": {k: fields[k] for k in REQUEST_FIELDS if k in fields}})
        logger.handle(record)


_LOG_REQUEST_LINE = log_request.__code__.co_firstlineno
