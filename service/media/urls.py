"""Parsing a caller's media URL, totally: any string gives a parsed URL or a reason to refuse it.

Request validation and the fetcher (every redirect hop too) parse through here, so what one
accepts the other can fetch, and a hostile URL is an INVALID_ARGUMENT, never an exception
from deep inside a URL or IDNA library.
"""

from __future__ import annotations

import ipaddress
import re

import httpx

# A DNS label as resolvers take it (underscores appear in real host names, so they pass).
_LABEL = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")
_MAX_HOST_LENGTH = 253
_NUMERIC_LABEL = re.compile(r"^(?:[0-9]+|0[xX][0-9A-Fa-f]*)$")


class BadMediaURL(ValueError):
    """A URL the gateway will not fetch; the message is the reason, a phrase for the caller."""


def parse_http_url(url: str) -> httpx.URL:
    """The URL, parsed, if it is an http(s) URL with a well-formed host; BadMediaURL otherwise."""
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise BadMediaURL("whitespace or control characters")
    try:
        parsed = httpx.URL(url)
        host = parsed.raw_host.decode("ascii")
        parsed.host  # noqa: B018 - decoding IDNA (xn--) labels is what can fail
        port = parsed.port
    except (httpx.InvalidURL, ValueError):  # ValueError covers IDNA and Unicode errors
        raise BadMediaURL("malformed URL syntax or host encoding") from None
    if port is not None and not 0 < port < 65536:
        raise BadMediaURL("port outside 1-65535")
    if parsed.scheme not in ("http", "https"):
        raise BadMediaURL("the scheme is not http or https")
    if parsed.userinfo:
        # user:password@ has no use for media and hides the real host from a reader.
        raise BadMediaURL("user information (user@) is not allowed")
    if not host:
        raise BadMediaURL("no host")
    if not is_ip_literal(host):
        problem = _host_name_problem(host)
        if problem:
            raise BadMediaURL(problem)
    return parsed


def _host_name_problem(host: str) -> str | None:
    name = host[:-1] if host.endswith(".") else host
    if len(name) > _MAX_HOST_LENGTH:
        return f"host name longer than {_MAX_HOST_LENGTH} characters"
    labels = name.split(".")
    for label in labels:
        if not _LABEL.match(label):
            return "host name with an empty, malformed or over-long (over 63 characters) label"
    # A numeric last label is no DNS name but an IPv4 address in a form resolvers read in
    # surprising ways (127.1, 0x7f.1, 127.000.000.001): only the dotted-quad form is taken.
    if _NUMERIC_LABEL.match(labels[-1]):
        return "numeric host that is not a dotted-quad IP address"
    return None


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True
