"""TLS on the listener: the `[server.tls]` table, its files checked before anything uses them,
and server credentials whose certificates a reload swaps without restarting the server.

gRPC asks the fetcher below for a certificate configuration at every new handshake, so a
reload (SIGHUP) reaches new connections at once; connections already open keep the
certificate they were made with, as with any TLS server.
"""

from __future__ import annotations

import datetime
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import grpc
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes

from tollway.service.config.keys import reject_unknown

log = logging.getLogger("tollway.tls")

TLS_KEYS = ("cert_file", "key_file", "client_ca_file", "require_client_cert")


@dataclass(frozen=True)
class TlsConfig:
    """`[server.tls]`: file paths as written (relative ones from the working directory)."""

    cert_file: str
    key_file: str
    client_ca_file: str | None = None
    # Every connection must present a certificate the client CA signed (mutual TLS).
    require_client_cert: bool = False


@dataclass(frozen=True)
class TlsMaterial:
    """What the files held when they were read, checked: the PEM bytes gRPC is given."""

    cert_chain: bytes
    private_key: bytes = field(repr=False)
    client_ca: bytes | None
    subject: str
    not_after: datetime.datetime
    client_ca_subjects: tuple[str, ...] = ()

    def describe(self) -> str:
        text = f"certificate {self.subject or '(empty subject)'}, valid until {_utc(self.not_after)}"
        if self.client_ca is not None:
            text += f"; client certificates required, signed by {'; '.join(self.client_ca_subjects)}"
        return text


def parse_tls(table: Mapping[str, Any]) -> TlsConfig:
    """The `[server.tls]` table, its files read and checked; ValueError naming the key."""
    reject_unknown(table, TLS_KEYS, "in [server.tls]")
    for key in ("cert_file", "key_file"):
        if key not in table:
            raise ValueError(f"server.tls.{key} is required when [server.tls] is set")
    for key in ("cert_file", "key_file", "client_ca_file"):
        if key in table and (not isinstance(table[key], str) or not table[key]):
            raise ValueError(f"server.tls.{key} must be a file path")
    client_ca = table.get("client_ca_file")
    # A client CA means mutual TLS: gRPC's Python server either requires and verifies a client
    # certificate or asks for none, so there is no "optional" mode to default to.
    require = table.get("require_client_cert", client_ca is not None)
    if not isinstance(require, bool):
        raise ValueError("server.tls.require_client_cert must be true or false")
    if require and client_ca is None:
        raise ValueError("server.tls.require_client_cert = true needs server.tls.client_ca_file "
                         "(the CA that signs client certificates)")
    if client_ca is not None and not require:
        raise ValueError("server.tls.require_client_cert = false with server.tls.client_ca_file: gRPC's Python "
                         "server cannot ask for an optional client certificate; set require_client_cert = true "
                         "(bearer keys still work) or remove client_ca_file")
    config = TlsConfig(table["cert_file"], table["key_file"], client_ca, require)
    read_material(config)
    return config


def read_material(config: TlsConfig, now: datetime.datetime | None = None) -> TlsMaterial:
    """Read and check the files: a PEM certificate chain, not expired; an unencrypted PEM key
    that matches its first certificate; a PEM client CA. ValueError naming the key and file."""
    chain_pem = _read(config.cert_file, "cert_file")
    certs = _certificates(chain_pem, config.cert_file, "cert_file")
    leaf = certs[0]
    now = now or datetime.datetime.now(datetime.timezone.utc)
    if leaf.not_valid_after_utc <= now:
        raise ValueError(f"server.tls.cert_file: the certificate in {config.cert_file} expired at "
                         f"{_utc(leaf.not_valid_after_utc)}")
    key_pem = _read(config.key_file, "key_file")
    key = _private_key(key_pem, config.key_file)
    if _public_der(key.public_key()) != _public_der(leaf.public_key()):
        raise ValueError(f"server.tls.key_file: the key in {config.key_file} does not match the certificate "
                         f"in server.tls.cert_file ({config.cert_file})")
    ca_pem = ca_subjects = None
    if config.client_ca_file is not None:
        ca_pem = _read(config.client_ca_file, "client_ca_file")
        ca_subjects = tuple(c.subject.rfc4514_string() for c in
                            _certificates(ca_pem, config.client_ca_file, "client_ca_file"))
    return TlsMaterial(chain_pem, key_pem, ca_pem, leaf.subject.rfc4514_string(), leaf.not_valid_after_utc,
                       ca_subjects or ())


class ListenerTls:
    """The listener's server credentials, and the certificates a reload puts in them."""

    def __init__(self, config: TlsConfig, material: TlsMaterial) -> None:
        self.config = config
        self.material = material
        self._lock = threading.Lock()
        # A configuration gRPC has not fetched yet; None: keep the one it has.
        self._pending: grpc.ServerCertificateConfiguration | None = None

    def server_credentials(self) -> grpc.ServerCredentials:
        # The stubs type the fetcher as never returning None; gRPC reads None as "unchanged".
        fetcher = cast(Callable[[], grpc.ServerCertificateConfiguration], self._fetch)
        return grpc.dynamic_ssl_server_credentials(_configuration(self.material), fetcher,
                                                   require_client_authentication=self.config.require_client_cert)

    def reload(self, config: TlsConfig | None, material: TlsMaterial | None) -> None:
        """New certificates for new handshakes. Turning TLS on or off, or changing whether a client
        certificate is required, needs a restart: the listener was bound with its mode."""
        if config is None or material is None:
            log.warning("[server.tls] removed: the listener keeps TLS until the next restart")
            return
        if config.require_client_cert != self.config.require_client_cert:
            log.warning("server.tls.require_client_cert changed: takes effect at the next restart")
        if material == self.material:
            log.info("TLS certificates unchanged: %s", material.describe())
            return
        with self._lock:
            self.material = material
            self._pending = _configuration(material)
        log.info("TLS certificates reloaded: %s", material.describe())

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        # Called by gRPC's own threads at each new handshake.
        with self._lock:
            pending, self._pending = self._pending, None
        return pending


def _configuration(material: TlsMaterial) -> grpc.ServerCertificateConfiguration:
    return grpc.ssl_server_certificate_configuration([(material.private_key, material.cert_chain)],
                                                     root_certificates=material.client_ca)


def _read(path: str, key: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
        raise ValueError(f"server.tls.{key}: cannot read {path}: {reason}") from None


def _certificates(data: bytes, path: str, key: str) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ValueError(f"server.tls.{key}: {path} holds no PEM certificate") from None


def _private_key(data: bytes, path: str) -> PrivateKeyTypes:
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        # cryptography's word for a key that needs a password.
        raise ValueError(f"server.tls.key_file: the key in {path} is encrypted; gRPC needs it unencrypted "
                         "(keep the file mode 0600)") from None
    except (ValueError, UnsupportedAlgorithm):
        raise ValueError(f"server.tls.key_file: {path} holds no PEM private key") from None


def _public_der(public_key: PublicKeyTypes) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _utc(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
