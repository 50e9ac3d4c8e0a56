"""Request validation: every refusal is INVALID_ARGUMENT naming the field, before any network call."""

from __future__ import annotations

from urllib.parse import urlsplit

from tollway.service.errors import invalid_argument
from tollway.service.media.policy import normalize_mime
from tollway.service.plugins.adapter import (
    PART_MODALITY,
    AnyRequest,
    Capabilities,
    modality_name,
)
from tollway.v1 import completion_pb2 as pb


def validate_request(request: AnyRequest) -> None:
    """Checks that need no provider: shape, ranges, URLs."""
    if not request.model:
        raise invalid_argument("model", 'is required ("provider/model" or a route name)')
    if not request.messages:
        raise invalid_argument("messages", "at least one message is required")
    for i, message in enumerate(request.messages):
        if message.role == pb.ROLE_UNSPECIFIED:
            raise invalid_argument(f"messages[{i}].role", "is required (ROLE_SYSTEM, ROLE_USER or ROLE_ASSISTANT)")
        if message.role not in (pb.ROLE_SYSTEM, pb.ROLE_USER, pb.ROLE_ASSISTANT):
            raise invalid_argument(f"messages[{i}].role", f"unknown role {message.role}")
        if not message.parts:
            raise invalid_argument(f"messages[{i}].parts", "at least one part is required")
        for j, part in enumerate(message.parts):
            _validate_part(f"messages[{i}].parts[{j}]", part)
    if request.HasField("max_tokens") and request.max_tokens <= 0:
        raise invalid_argument("max_tokens", "must be > 0")
    if request.HasField("temperature") and not (0.0 <= request.temperature <= 2.0):
        raise invalid_argument("temperature", "must be between 0 and 2")
    if request.HasField("top_p") and not (0.0 < request.top_p <= 1.0):
        raise invalid_argument("top_p", "must be > 0 and <= 1")
    for k, stop in enumerate(request.stop):
        if not stop:
            raise invalid_argument(f"stop[{k}]", "must not be empty")


def _validate_part(path: str, part: pb.Part) -> None:
    kind = part.WhichOneof("content")
    if kind is None:
        raise invalid_argument(path, "part is empty (set text, image, audio, video or document)")
    if kind == "text":
        return
    media = getattr(part, kind)
    source = media.WhichOneof("source")
    if source is None:
        raise invalid_argument(f"{path}.{kind}", "set url or data")
    if source == "data":
        if not media.data:
            raise invalid_argument(f"{path}.{kind}.data", "is empty")
        if not media.mime_type:
            raise invalid_argument(f"{path}.{kind}.mime_type", "is required with inline data")
        return
    if not _is_valid_media_url(media.url):
        raise invalid_argument(f"{path}.{kind}.url", "is not a valid http(s) or data: URL")


def _is_valid_media_url(url: str) -> bool:
    if url.startswith("data:"):
        header, sep, _ = url.partition(",")
        return bool(sep) and "/" in header
    try:
        parts = urlsplit(url)
        parts.port  # raises ValueError on a malformed port
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and not any(c.isspace() for c in url)


def media_mime_type(media: pb.Media) -> str:
    """The declared media type, or the one a data: URL names."""
    if media.mime_type:
        return normalize_mime(media.mime_type)
    if media.WhichOneof("source") == "url" and media.url.startswith("data:"):
        return normalize_mime(media.url[5:].partition(",")[0])
    return ""


def check_capabilities(subject: str, capabilities: Capabilities, request: AnyRequest) -> None:
    """Refuse what the provider (or every target of a route) cannot take; nothing is ever
    silently dropped. subject names it for the message: 'provider "openai"', 'route "fast"'."""
    for i, message in enumerate(request.messages):
        for j, part in enumerate(message.parts):
            kind = part.WhichOneof("content")
            if kind == "text":
                continue
            modality = PART_MODALITY[kind]
            path = f"messages[{i}].parts[{j}].{kind}"
            accepted = capabilities.mime_types.get(modality)
            if accepted is None:
                raise invalid_argument(path, f"{subject} does not accept {modality_name(modality)} input")
            media = getattr(part, kind)
            mime = media_mime_type(media)
            if mime and mime not in accepted:
                raise invalid_argument(
                    f"{path}.mime_type",
                    f'{subject} does not accept {mime} (accepted: {", ".join(sorted(accepted))})',
                )
