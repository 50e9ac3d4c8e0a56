"""Caller identity: `[callers.<name>]` keys, the models each may use, and its labels.

A caller sends `authorization: Bearer <key>` metadata. Only the SHA-256 of each key is in
config; presented keys are hashed and compared in constant time against every entry, and
no key is ever logged. With no callers configured, calls are anonymous.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc

from tollway.service.config.keys import reject_unknown
from tollway.service.errors import GatewayError, quoted

Code = grpc.StatusCode

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
class Callers:
    """The configured callers; empty means anonymous access."""

    entries: tuple[Caller, ...] = ()

    @property
    def anonymous(self) -> bool:
        return not self.entries

    def authenticate(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> Caller:
        """The caller a request's metadata proves, or UNAUTHENTICATED."""
        if self.anonymous:
            return ANONYMOUS_CALLER
        presented = _bearer(metadata)
        if presented is None:
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
    entries = []
    seen_hashes = set()
    for name, raw in table.items():
        where = f"callers.{name}"
        if not _NAME.match(name):
            raise ValueError(f"{where}: a caller name takes letters, digits, '.', '_' and '-'")
        if not isinstance(raw, Mapping):
            raise ValueError(f"{where} must be a table")
        reject_unknown(raw, {"key_sha256", "allowed_models", "labels", "role", "max_streams"}, f"in [{where}]")
        key_hash = raw.get("key_sha256")
        if not isinstance(key_hash, str) or not _HEX64.match(key_hash.lower()):
            raise ValueError(f"{where}.key_sha256 must be 64 hex digits (tollway keys new {name})")
        if key_hash.lower() in seen_hashes:
            raise ValueError(f"{where}.key_sha256 is the same as another caller's")
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
        entries.append(Caller(name, bytes.fromhex(key_hash), tuple(allowed) if allowed is not None else None,
                              dict(labels), role, max_streams))
    return Callers(tuple(entries))


def new_key(name: str) -> tuple[str, str]:
    """A fresh random key and the config lines that admit it (only the hash is kept)."""
    if not _NAME.match(name):
        raise ValueError("a caller name takes letters, digits, '.', '_' and '-'")
    key = "tw_" + secrets.token_urlsafe(32)
    digest = hashlib.sha256(key.encode()).hexdigest()
    return key, f'[callers.{name}]\nkey_sha256 = "{digest}"\n'
