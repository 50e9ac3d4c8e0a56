"""Logging: one line per request, plain or JSON. No log line ever carries a key: every
record's final text is scrubbed of every key configured in this process (redaction.scrub_log)."""

from __future__ import annotations

import logging
import sys
from typing import Any

import orjson

from tollway.service.redaction import scrub_log

REQUEST_LOGGER = "tollway.request"

# Fields a request line carries, in order.
REQUEST_FIELDS = ("request_id", "rpc", "caller", "model", "provider", "upstream_model", "status", "latency_ms",
                  "attempts", "input_tokens", "output_tokens", "error")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            line.update(fields)
        if record.exc_info:
            # Exceptions are logged by type only: a traceback may quote a request body.
            line["exception"] = record.exc_info[0].__name__ if record.exc_info[0] else None
        return scrub_log(orjson.dumps(line).decode())


class PlainFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = getattr(record, "fields", None)
        if fields:
            text += " " + " ".join(f"{k}={_plain(v)}" for k, v in fields.items() if v is not None and v != "")
        return scrub_log(text)


def _plain(value: Any) -> str:
    text = str(value)
    return f'"{text}"' if (" " in text or not text) else text


def configure_logging(fmt: str = "plain", level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else PlainFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Library chatter is not request lines; httpx alone would log every upstream call.
    for noisy in ("aiohttp", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def log_request(**fields: Any) -> None:
    logger = logging.getLogger(REQUEST_LOGGER)
    if logger.isEnabledFor(logging.INFO):
        logger.info("request", extra={"fields": {k: fields.get(k) for k in REQUEST_FIELDS}})
