"""One table from failure class to gRPC status, used by unary and streaming calls alike.

Every message names the provider and the cause; none carries a key, a stack trace or
an internal network detail.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
import orjson
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2  # type: ignore[import-untyped]  # no py.typed
from grpc_status import rpc_status

# Re-exported: adapters and the plugin seam import scrub from here.
from tollway.service.redaction import scrub as scrub

Code = grpc.StatusCode

# HTTP status of a provider's answer -> gRPC status. The README shows this table.
HTTP_STATUS_TABLE: Mapping[int, Code] = {
    400: Code.INVALID_ARGUMENT,
    401: Code.FAILED_PRECONDITION,
    403: Code.FAILED_PRECONDITION,
    404: Code.NOT_FOUND,
    408: Code.DEADLINE_EXCEEDED,
    413: Code.INVALID_ARGUMENT,
    422: Code.INVALID_ARGUMENT,
    429: Code.RESOURCE_EXHAUSTED,
    504: Code.DEADLINE_EXCEEDED,
}


def grpc_code_for_http_status(status: int) -> Code:
    """The gRPC code for an upstream HTTP error status."""
    if status in HTTP_STATUS_TABLE:
        return HTTP_STATUS_TABLE[status]
    if status >= 500:
        return Code.UNAVAILABLE
    # Any other 4xx (402 payment required, 409, ...) is the provider refusing this
    # gateway's request for a reason a retry will not fix.
    return Code.FAILED_PRECONDITION


# A caller-facing message fits the trailers with room to spare, whatever a caller sent: gRPC
# sends it twice (grpc-message, percent-encoded at up to 3 bytes per byte, and inside
# grpc-status-details-bin), and clients refuse trailers past 8 KiB by default; past that the
# caller gets RESOURCE_EXHAUSTED instead of the status, and no tollway-request-id.
MAX_MESSAGE_BYTES = 640
# A value the caller chose (a model name, a tool name), as a message quotes it.
MAX_QUOTED_CHARS = 100


def quoted(value: str, limit: int = MAX_QUOTED_CHARS) -> str:
    """A caller's value in a message: in double quotes, cut at limit characters."""
    if len(value) <= limit:
        return f'"{value}"'
    return f'"{value[:limit]}..." ({len(value) - limit} more characters)'


def bounded_message(text: str, max_bytes: int = MAX_MESSAGE_BYTES) -> str:
    """text cut to max_bytes of UTF-8 (on a character boundary), saying how much was cut."""
    data = text.encode()
    if len(data) <= max_bytes:
        return text
    kept = data[:max_bytes].decode("utf-8", "ignore")
    return f"{kept}...({len(data) - len(kept.encode())} more bytes)"


@dataclass
class FieldViolation:
    field: str
    description: str


@dataclass
class GatewayError(Exception):
    """A failure that becomes one gRPC status for the caller."""

    code: Code
    message: str
    retry_after: float | None = None
    violations: list[FieldViolation] = field(default_factory=list)
    # Set when the provider answered with an HTTP error; kept for logs and routing.
    http_status: int | None = None
    # The attempt's own time limit ran out (retryable while the caller's deadline holds).
    attempt_timeout: bool = False
    # For a stream that failed after messages reached the caller: the StreamSummary
    # with the usage seen so far, marked estimated.
    partial_summary: Any = None
    # More google.rpc details for the status (a QuotaFailure naming the limit that refused it).
    details: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def to_status(self, extra_details: Iterable[Any] = ()) -> grpc.Status:
        """The status with rich details (RetryInfo, BadRequest, ...) in its trailers."""
        details = [*self.details, *extra_details]
        if self.retry_after is not None:
            delay = duration_pb2.Duration()
            delay.FromNanoseconds(int(self.retry_after * 1e9))
            info = error_details_pb2.RetryInfo(retry_delay=delay)
            details.append(info)
        if self.violations:
            details.append(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(field=bounded_message(v.field),
                                                                    description=bounded_message(v.description))
                        for v in self.violations
                    ]
                )
            )
        status = status_pb2.Status(code=_code_number(self.code), message=bounded_message(self.message))
        for detail in details:
            status.details.add().Pack(detail)
        return rpc_status.to_status(status)


def invalid_argument(field_path: str, description: str) -> GatewayError:
    """INVALID_ARGUMENT naming the field, with a BadRequest field violation."""
    return GatewayError(
        Code.INVALID_ARGUMENT,
        f"{field_path}: {description}",
        violations=[FieldViolation(field_path, description)],
    )


def _code_number(code: Code) -> int:
    return code.value[0]


assert _code_number(Code.UNAVAILABLE) == code_pb2.UNAVAILABLE

def parse_retry_after(value: str | None) -> float | None:
    """Retry-After as seconds: delta-seconds or an HTTP-date; None when it is neither.

    Only finite, non-negative figures count: "1e400", "nan" or "-5" are no advice at all
    (an infinite wait would cool a key forever). How long a figure is believed is capped
    by the router (routing.max_retry_after_s)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    from datetime import datetime, timezone
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max((when - datetime.now(timezone.utc)).total_seconds(), 0.0)


def upstream_http_error(
    provider: str,
    status: int,
    retry_after_header: str | None,
    provider_message: str | None,
    secrets: Iterable[str | None] = (),
) -> GatewayError:
    """The GatewayError for an HTTP error answer, by the one table."""
    code = grpc_code_for_http_status(status)
    if status in (401, 403):
        # The provider's text may quote part of the key; say only what the operator must fix.
        message = f"{provider}: provider rejected the gateway's credentials (HTTP {status})"
    else:
        message = f"{provider}: upstream returned HTTP {status}"
        if provider_message:
            message += f": {scrub(provider_message, secrets)[:500]}"
    # HTTP gives Retry-After to 429 and 503 alike: an overloaded upstream's "come back in N s"
    # is honoured by the router and passed on as RetryInfo.
    retry_after = (parse_retry_after(retry_after_header)
                   if code in (Code.RESOURCE_EXHAUSTED, Code.UNAVAILABLE) else None)
    return GatewayError(code, message, retry_after=retry_after, http_status=status)


def bad_upstream_body(provider: str, what: str) -> GatewayError:
    """A 2xx whose body is not the provider's format (a proxy's HTML page, truncated JSON)."""
    return GatewayError(Code.UNAVAILABLE, f"{provider}: upstream answered with {what}")


def json_object(provider: str, text: bytes | str, what: str) -> dict[str, Any]:
    """A provider's JSON object, or UNAVAILABLE saying what came instead ("a body", "a stream event")."""
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise bad_upstream_body(provider, f"{what} that is not JSON") from None
    if not isinstance(data, dict):
        raise bad_upstream_body(provider, f"{what} that is not a JSON object")
    return data
