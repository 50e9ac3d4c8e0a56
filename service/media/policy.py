"""Media policy: which addresses the gateway may fetch from, size limits, and type sniffing.

The gateway fetches user-supplied URLs for providers that need bytes, which makes it an
SSRF surface. This module holds the decisions (pure); engine.MediaFetcher does the IO.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_to_bytes

import filetype
import grpc

from tollway.service.config.keys import reject_unknown
from tollway.service.errors import GatewayError, invalid_argument
from tollway.service.plugins.adapter import (
    AUDIO,
    DOCUMENT,
    IMAGE,
    MEDIA_PARTS,
    PART_MODALITY,
    VIDEO,
    AnyRequest,
    modality_name,
)
from tollway.v1 import completion_pb2 as pb

Code = grpc.StatusCode
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MIB = 1024 * 1024

# Sniffers and servers name some types differently from what providers document.
MIME_ALIASES = {
    "audio/x-wav": "audio/wav",
    "audio/wave": "audio/wav",
    "audio/vnd.wave": "audio/wav",
    "audio/x-flac": "audio/flac",
    "audio/mp3": "audio/mpeg",
    "image/jpg": "image/jpeg",
}

# What a part of each kind may contain, by top-level type (documents are listed).
_KIND_PREFIX = {IMAGE: "image/", AUDIO: "audio/", VIDEO: "video/"}
_DOCUMENT_TYPES = ("application/pdf", "text/")


@dataclass(frozen=True)
class MediaPolicy:
    """The `[media]` config table."""

    # Host names the operator trusts even when they resolve to non-public addresses.
    allow_hosts: frozenset[str] = frozenset()
    # Networks (CIDR) the operator trusts, e.g. an internal object store.
    allow_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    max_redirects: int = 3
    max_fetch_bytes: int = 20 * MIB
    fetch_timeout_s: float = 20.0
    # Media per part, and per request (its whole size counted, fetched bytes included).
    max_part_bytes: int = 20 * MIB
    max_request_bytes: int = 48 * MIB
    # Media URLs (http/https) one request may carry, refused before any fetch.
    max_url_parts: int = 16
    # Fetches of one request in flight at once: kept well under the shared pool's size, so
    # one request with many slow parts cannot make other callers' fetches wait for a connection.
    max_parallel_fetches_per_request: int = 4

    @classmethod
    def from_table(cls, table: Mapping[str, Any]) -> "MediaPolicy":
        allowed = {"allow_hosts", "allow_networks", "max_redirects", "max_fetch_bytes", "fetch_timeout_s",
                   "max_part_bytes", "max_request_bytes", "max_url_parts", "max_parallel_fetches_per_request"}
        reject_unknown(table, allowed, "in [media]")
        try:
            networks = tuple(ipaddress.ip_network(n, strict=False) for n in table.get("allow_networks", ()))
        except ValueError as exc:
            raise ValueError(f"media.allow_networks: {exc}") from None
        policy = cls(
            allow_hosts=frozenset(h.lower() for h in table.get("allow_hosts", ())),
            allow_networks=networks,
            max_redirects=int(table.get("max_redirects", cls.max_redirects)),
            max_fetch_bytes=int(table.get("max_fetch_bytes", cls.max_fetch_bytes)),
            fetch_timeout_s=float(table.get("fetch_timeout_s", cls.fetch_timeout_s)),
            max_part_bytes=int(table.get("max_part_bytes", cls.max_part_bytes)),
            max_request_bytes=int(table.get("max_request_bytes", cls.max_request_bytes)),
            max_url_parts=int(table.get("max_url_parts", cls.max_url_parts)),
            max_parallel_fetches_per_request=int(table.get("max_parallel_fetches_per_request",
                                                           cls.max_parallel_fetches_per_request)),
        )
        for name in ("max_redirects", "max_fetch_bytes", "fetch_timeout_s", "max_part_bytes", "max_request_bytes",
                     "max_url_parts"):
            if getattr(policy, name) < 0:
                raise ValueError(f"media.{name} must be >= 0")
        if policy.max_parallel_fetches_per_request < 1:
            raise ValueError("media.max_parallel_fetches_per_request must be >= 1")
        return policy

    def host_is_trusted(self, host: str) -> bool:
        return host.lower().rstrip(".") in self.allow_hosts

    def address_allowed(self, address: str) -> bool:
        """A public unicast address, or one inside a network the operator allowed."""
        try:
            ip: IPAddress = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if any(ip in net for net in self.allow_networks):
            return True
        return is_public_unicast(ip)


def is_public_unicast(ip: IPAddress) -> bool:
    # is_global alone lets multicast through; name every class that must never be fetched.
    return ip.is_global and not (
        ip.is_multicast or ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_reserved
        or ip.is_unspecified
    )


def blocked_address(part_path: str) -> GatewayError:
    # Never say which address: the caller must not learn the gateway's network.
    return GatewayError(Code.PERMISSION_DENIED, f"{part_path}: the URL's host is not allowed for media fetching")


def normalize_mime(mime: str) -> str:
    mime = mime.split(";", 1)[0].strip().lower()
    return MIME_ALIASES.get(mime, mime)


def fits_kind(modality: pb.Modality, mime: str) -> bool:
    if modality == DOCUMENT:
        return mime.startswith(_DOCUMENT_TYPES)
    return mime.startswith(_KIND_PREFIX[modality])


def settle_mime_type(part_path: str, modality: pb.Modality, data: bytes, declared: str, served: str) -> str:
    """The media type of fetched bytes: sniffed from the content, checked against the part's kind.

    A declared or served type is used only where the bytes cannot be sniffed (plain text).
    """
    sniffed = filetype.guess_mime(data[:8192])
    kind = modality_name(modality)
    if sniffed:
        sniffed = normalize_mime(sniffed)
        if not fits_kind(modality, sniffed):
            raise invalid_argument(part_path, f"fetched content is {sniffed}, not {kind}")
        return sniffed
    for candidate in (normalize_mime(declared), normalize_mime(served)):
        if candidate.startswith("text/") and modality == DOCUMENT:
            try:
                data.decode("utf-8")
            except UnicodeDecodeError:
                raise invalid_argument(part_path, "fetched content is not UTF-8 text") from None
            return candidate
    raise invalid_argument(part_path, f"fetched content is not a recognizable {kind}")


def decode_data_url(part_path: str, modality: pb.Modality, url: str) -> tuple[bytes, str]:
    """The bytes and media type of a data: URL (RFC 2397), checked against the part's kind."""
    header, _, payload = url[5:].partition(",")
    mime, *params = header.split(";")
    try:
        data = base64.b64decode(payload, validate=True) if "base64" in params else unquote_to_bytes(payload)
    except (binascii.Error, ValueError):
        raise invalid_argument(part_path, "the data: URL is not valid base64") from None
    mime = normalize_mime(mime or "text/plain")
    if not fits_kind(modality, mime):
        raise invalid_argument(part_path, f"the data: URL holds {mime}, not {modality_name(modality)}")
    return data, mime


def check_inline_sizes(request: AnyRequest, policy: MediaPolicy) -> None:
    """Per-part and per-request limits on inline bytes, with the field named."""
    total = 0
    for i, message in enumerate(request.messages):
        for j, part in enumerate(message.parts):
            kind = part.WhichOneof("content")
            if kind not in MEDIA_PARTS:
                continue
            media: pb.Media = getattr(part, kind)
            size = len(media.data) if media.WhichOneof("source") == "data" else len(media.url) * 3 // 4
            if size > policy.max_part_bytes:
                raise invalid_argument(f"messages[{i}].parts[{j}].{kind}",
                                       f"inline media is {size} bytes; the limit per part is {policy.max_part_bytes}")
            total += size
    if total > policy.max_request_bytes:
        raise invalid_argument("messages",
                               f"inline media totals {total} bytes; the limit per request is {policy.max_request_bytes}")


def check_request_media(request: AnyRequest, policy: MediaPolicy) -> None:
    """The per-request media limits that need no fetch: URL parts, then inline bytes."""
    urls = sum(1 for message in request.messages for part in message.parts
               if part.WhichOneof("content") in MEDIA_PARTS and _is_fetchable_url(getattr(part, part.WhichOneof("content"))))
    if urls > policy.max_url_parts:
        raise invalid_argument("messages", f"the request has {urls} media URLs; the limit per request is "
                                           f"{policy.max_url_parts} (media.max_url_parts)")
    check_inline_sizes(request, policy)


def _is_fetchable_url(media: pb.Media) -> bool:
    return media.WhichOneof("source") == "url" and not media.url.startswith("data:")


class RequestBytes:
    """One request's byte count against media.max_request_bytes, shared by all its fetches.

    It starts at the serialized request (text and inline media included) and grows with every
    chunk any fetch reads, so the request is refused as soon as the whole passes the limit,
    however many parts it is spread over."""

    __slots__ = ("limit", "used")

    def __init__(self, limit: int, used: int = 0) -> None:
        self.limit = limit
        self.used = used

    def fits(self, size: int) -> bool:
        return self.used + size <= self.limit

    def take(self, part_path: str, size: int) -> None:
        self.used += size
        if self.used > self.limit:
            raise self.exceeded(part_path)

    def exceeded(self, part_path: str) -> GatewayError:
        return invalid_argument(part_path, f"fetching it takes the request over {self.limit} bytes "
                                           f"(media.max_request_bytes)")


def parts_to_fetch(request: AnyRequest,
                   takes_url: Callable[[pb.Modality, str], bool]) -> Iterable[tuple[int, int, str, pb.Modality]]:
    """(message index, part index, oneof name, modality) of URL parts the provider cannot take."""
    for i, message in enumerate(request.messages):
        for j, part in enumerate(message.parts):
            kind = part.WhichOneof("content")
            if kind not in MEDIA_PARTS:
                continue
            media = getattr(part, kind)
            if media.WhichOneof("source") == "url" and not takes_url(PART_MODALITY[kind], media.url):
                yield i, j, kind, PART_MODALITY[kind]
