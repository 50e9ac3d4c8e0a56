"""Caller identity: `[callers.<name>]` keys, the models each may use, and its labels.

A caller sends `authorization: Bearer <key>` metadata. Only the SHA-256 of each key is in
config; presented keys are hashed and compared in constant time against every entry, and
no key is ever logged. With no callers configured, calls are anonymous.

Over mutual TLS a caller may instead be known by its client certificate (`tls_subject`,
`tls_san`), which gRPC verified against the client CA before the call began. A call that
sends a key is judged by its key; the certificate decides only when there is none.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import logging
import re
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc

from tollway.service.config.keys import reject_unknown
from tollway.service.errors import GatewayError, quoted

Code = grpc.StatusCode
log = logging.getLogger("tollway.auth")

ANONYMOUS = "anonymous"
ROLES = ("user", "admin")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class Caller:
    name: str
    key_sha256: bytes = b""
    # Route names or "provider/model" patterns (fnmatch: "openai/*"); None allows every model.
    allowed_models: tuple[str, ...] | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    role: str = "user"
    # Streams this caller may have open at once; None: routing.max_streams_per_caller.
    max_streams: int | None = None
    # Its client certificate: the subject as gRPC reports it (RFC 4514, "CN=search,O=Example")
    # and/or one URI or DNS subject alternative name. Both set: the certificate must have both.
    tls_subject: str | None = None
    tls_san: str | None = None

    @property
    def has_certificate_identity(self) -> bool:
        return self.tls_subject is not None or self.tls_san is not None

    def holds(self, certificate: PeerCertificate) -> bool:
        """True when the certificate is this caller's."""
        if not self.has_certificate_identity:
            return False
        if self.tls_subject is not None and certificate.subject != self.tls_subject:
            return False
        return self.tls_san is None or self.tls_san in certificate.sans

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def may_use(self, model: str) -> bool:
        if self.allowed_models is None:
            return True
        return any(fnmatch.fnmatchcase(model, pattern) for pattern in self.allowed_models)

    def may_use_provider(self, provider: str) -> bool:
        """True when some allowed pattern names a model of this provider."""
        if self.allowed_models is None:
            return True
        return any("/" in p and fnmatch.fnmatchcase(provider, p.split("/", 1)[0]) for p in self.allowed_models)


ANONYMOUS_CALLER = Caller(ANONYMOUS, role="admin")


@dataclass(frozen=True)
class PeerCertificate:
    """The verified client certificate of a call, as gRPC's auth context reports it."""

    subject: str
    # URI and DNS subject alternative names (what SPIFFE, Istio and cert-manager issue).
    sans: tuple[str, ...] = ()


def peer_certificate(auth_context: Mapping[str, Iterable[bytes]] | None) -> PeerCertificate | None:
    """The client certificate gRPC verified for this connection; None without one (plaintext,
    or TLS without client certificates)."""
    if not auth_context or "x509_pem_cert" not in auth_context:
        return None

    def values(key: str) -> list[str]:
        return [v.decode("utf-8", "replace") for v in auth_context.get(key, ())]

    subject = values("x509_subject")
    return PeerCertificate(subject[0] if subject else "", tuple(values("peer_uri") + values("peer_dns")))


@dataclass(frozen=True)
class Callers:
    """The configured callers; empty means anonymous access."""

    entries: tuple[Caller, ...] = ()

    @property
    def anonymous(self) -> bool:
        return not self.entries

    def authenticate(self, metadata: Iterable[tuple[str, str | bytes]] | None,
                     auth_context: Callable[[], Mapping[str, Iterable[bytes]]] | None = None) -> Caller:
        """The caller a request's metadata proves, or else its client certificate (auth_context:
        the call's `context.auth_context`, asked only when no bearer key came), or UNAUTHENTICATED."""
        if self.anonymous:
            return ANONYMOUS_CALLER
        presented = _bearer(metadata)
        if presented is None:
            certificate = peer_certificate(auth_context()) if auth_context is not None else None
            if certificate is not None:
                return self._by_certificate(certificate)
            raise GatewayError(Code.UNAUTHENTICATED, "missing caller key: send metadata 'authorization: Bearer <key>'")
        digest = hashlib.sha256(presented.encode()).digest()
        found = None
        # Compare against every entry, always, so timing says nothing about which matched.
        for caller in self.entries:
            if hmac.compare_digest(digest, caller.key_sha256):
                found = caller
        if found is None:
            raise GatewayError(Code.UNAUTHENTICATED, "invalid caller key")
        return found

    def _by_certificate(self, certificate: PeerCertificate) -> Caller:
        holders = [caller for caller in self.entries if caller.holds(certificate)]
        if len(holders) == 1:
            return holders[0]
        # The subject only: nothing more of the certificate, nor which callers exist, goes back.
        subject = quoted(certificate.subject)
        if holders:
            # One caller's subject and another's SAN on the same certificate: refuse rather than guess.
            log.error("client certificate %s matches callers %s: give them distinct tls_subject or tls_san values",
                      subject, ", ".join(c.name for c in holders))
            raise GatewayError(Code.UNAUTHENTICATED, f"client certificate {subject} matches more than one caller")
        raise GatewayError(Code.UNAUTHENTICATED, f"client certificate {subject} is not a configured caller")

    @property
    def by_certificate(self) -> tuple[Caller, ...]:
        """The callers a client certificate can identify."""
        return tuple(c for c in self.entries if c.has_certificate_identity)


def authorize_model(caller: Caller, model: str) -> None:
    if not caller.may_use(model):
        raise GatewayError(Code.PERMISSION_DENIED, f'model: caller "{caller.name}" may not use {quoted(model)}')


def _bearer(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    for key, value in metadata or ():
        if key == "authorization":
            if isinstance(value, bytes):
                value = value.decode("latin-1")
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return None
    return None


def parse_callers(table: Mapping[str, Any]) -> Callers:
    entries: list[Caller] = []
    seen_hashes = set()
    for name, raw in table.items():
        where = f"callers.{name}"
        if not _NAME.match(name):
            raise ValueError(f"{where}: a caller name takes letters, digits, '.', '_' and '-'")
        if not isinstance(raw, Mapping):
            raise ValueError(f"{where} must be a table")
        reject_unknown(raw, {"key_sha256", "allowed_models", "labels", "role", "max_streams", "tls_subject", "tls_san"},
                       f"in [{where}]")
        tls_subject, tls_san = _certificate_identity(raw, where)
        key_hash = raw.get("key_sha256")
        if key_hash is None:
            if tls_subject is None and tls_san is None:
                raise ValueError(f"{where} needs key_sha256 (tollway keys new {name}) or a client certificate "
                                 "identity (tls_subject, tls_san)")
            key_hash = ""  # known by its certificate only
        elif not isinstance(key_hash, str) or not _HEX64.match(key_hash.lower()):
            raise ValueError(f"{where}.key_sha256 must be 64 hex digits (tollway keys new {name})")
        elif key_hash.lower() in seen_hashes:
            raise ValueError(f"{where}.key_sha256 is the same as another caller's")
        else:
            seen_hashes.add(key_hash.lower())
        allowed = raw.get("allowed_models")
        if allowed is not None and (not isinstance(allowed, list) or not all(isinstance(m, str) for m in allowed)):
            raise ValueError(f"{where}.allowed_models must be a list of strings")
        labels = raw.get("labels", {})
        if not isinstance(labels, Mapping) or not all(isinstance(v, str) for v in labels.values()):
            raise ValueError(f"{where}.labels must be a table of strings")
        role = raw.get("role", "user")
        if role not in ROLES:
            raise ValueError(f"{where}.role must be one of {', '.join(ROLES)}")
        max_streams = raw.get("max_streams")
        if max_streams is not None and (not isinstance(max_streams, int) or isinstance(max_streams, bool)
                                        or max_streams < 1):
            raise ValueError(f"{where}.max_streams must be an integer >= 1")
        caller = Caller(name, bytes.fromhex(key_hash), tuple(allowed) if allowed is not None else None,
                        dict(labels), role, max_streams, tls_subject, tls_san)
        for other in entries:
            if caller.has_certificate_identity and (caller.tls_subject, caller.tls_san) == (other.tls_subject,
                                                                                            other.tls_san):
                raise ValueError(f"{where} has the same tls_subject and tls_san as callers.{other.name}")
        entries.append(caller)
    return Callers(tuple(entries))


def _certificate_identity(raw: Mapping[str, Any], where: str) -> tuple[str | None, str | None]:
    found = []
    for key in ("tls_subject", "tls_san"):
        value = raw.get(key)
        if value is not None and (not isinstance(value, str) or not value.strip() or value != value.strip()):
            raise ValueError(f"{where}.{key} must be a non-empty string without surrounding spaces")
        found.append(value)
    return found[0], found[1]


def new_key(name: str) -> tuple[str, str]:
    """A fresh random key and the config lines that admit it (only the hash is kept)."""
    if not _NAME.match(name):
        raise ValueError("a caller name takes letters, digits, '.', '_' and '-'")
    key = "tw_" + secrets.token_urlsafe(32)
    digest = hashlib.sha256(key.encode()).hexdigest()
    return key, f'[callers.{name}]\nkey_sha256 = "{digest}"\n'
