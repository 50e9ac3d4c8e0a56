"""Certificates made at test time: a CA, and server and client certificates it signs.

EC P-256 keys: as good as RSA for every TLS check here, and made in a millisecond, so a suite
can mint as many as it needs under load.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALID_FOR = datetime.timedelta(days=2)
# Issued an hour back, so a clock a little behind still finds every certificate valid.
BACKDATE = datetime.timedelta(hours=1)


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key, both PEM."""

    cert_pem: bytes
    key_pem: bytes
    subject: str  # RFC 4514, as gRPC reports it: "CN=search,O=Example"

    def write(self, directory: Path, stem: str) -> tuple[Path, Path]:
        """<stem>.pem and <stem>.key in directory; returns (cert, key)."""
        cert, key = directory / f"{stem}.pem", directory / f"{stem}.key"
        cert.write_bytes(self.cert_pem)
        key.write_bytes(self.key_pem)
        return cert, key


class CertificateAuthority:
    def __init__(self, name: str = "Tollway Test CA") -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(self._name).issuer_name(self._name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE).not_valid_after(now + VALID_FOR)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False),
                           critical=True)
            .sign(self._key, hashes.SHA256())
        )

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def write(self, directory: Path, stem: str = "ca") -> Path:
        path = directory / f"{stem}.pem"
        path.write_bytes(self.cert_pem)
        return path

    def server(self, common_name: str = "tollway", *, dns: tuple[str, ...] = ("localhost",),
               ips: tuple[str, ...] = ("127.0.0.1",), expired: bool = False) -> Issued:
        """A server certificate valid for localhost and 127.0.0.1 (what the tests dial)."""
        return self._issue(common_name, None, dns=dns, ips=ips, uris=(), usage=ExtendedKeyUsageOID.SERVER_AUTH,
                           expired=expired)

    def client(self, common_name: str, organization: str | None = "Example", *, dns: tuple[str, ...] = (),
               uris: tuple[str, ...] = ()) -> Issued:
        """A client certificate; its subject is "CN=<common_name>,O=<organization>"."""
        return self._issue(common_name, organization, dns=dns, ips=(), uris=uris,
                           usage=ExtendedKeyUsageOID.CLIENT_AUTH, expired=False)

    def _issue(self, common_name: str, organization: str | None, *, dns: tuple[str, ...], ips: tuple[str, ...],
               uris: tuple[str, ...], usage: x509.ObjectIdentifier, expired: bool) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        # The usual order (organization, then common name): RFC 4514 writes it most specific first.
        attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization)] if organization else []
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
        subject = x509.Name(attributes)
        now = datetime.datetime.now(datetime.timezone.utc)
        not_after = now - datetime.timedelta(minutes=5) if expired else now + VALID_FOR
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject).issuer_name(self._name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE).not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        names: list[x509.GeneralName] = [x509.DNSName(name) for name in dns]
        names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        names += [x509.UniformResourceIdentifier(uri) for uri in uris]
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        return Issued(cert.public_bytes(serialization.Encoding.PEM), key_pem, subject.rfc4514_string())
