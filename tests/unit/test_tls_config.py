"""`[server.tls]` and certificate callers at load: each bad file or combination refused with a
message naming the key, before anything listens."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from tollway.service.config.loader import ConfigError, parse_config
from tollway.service.gateway.tls import TlsConfig, read_material

from tests.support.certs import CertificateAuthority

KEY_HASH = "0" * 64


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Good files, and one bad file of each kind."""
    directory = tmp_path_factory.mktemp("tls")
    ca, other = CertificateAuthority(), CertificateAuthority("Other CA")
    cert, key = ca.server().write(directory, "server")
    other_cert, other_key = other.server().write(directory, "other")
    expired_cert, expired_key = ca.server(expired=True).write(directory, "expired")
    encrypted = directory / "encrypted.key"
    encrypted.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"a passphrase")))
    garbage = directory / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n")
    return {"ca": ca.write(directory), "cert": cert, "key": key, "other_cert": other_cert, "other_key": other_key,
            "expired_cert": expired_cert, "expired_key": expired_key, "encrypted_key": encrypted,
            "garbage": garbage, "missing": directory / "missing.pem"}


def tls(files: dict[str, Path], **overrides: Any) -> dict[str, Any]:
    table: dict[str, Any] = {"cert_file": str(files["cert"]), "key_file": str(files["key"])}
    table.update({k: str(files[v]) if isinstance(v, str) and v in files else v for k, v in overrides.items()})
    return {k: v for k, v in table.items() if v is not None}


def refused(raw: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(raw)
    return str(caught.value)


def test_tls_is_off_unless_configured():
    assert parse_config({}).server.tls is None


def test_a_client_ca_means_client_certificates_are_required(files):
    config = parse_config({"server": {"tls": tls(files, client_ca_file="ca")}})
    assert config.server.tls == TlsConfig(str(files["cert"]), str(files["key"]), str(files["ca"]), True)
    assert parse_config({"server": {"tls": tls(files)}}).server.tls == TlsConfig(str(files["cert"]),
                                                                                 str(files["key"]))


@pytest.mark.parametrize("overrides, message", [
    ({"cert_flie": "x"}, "unknown key(s) in [server.tls]: cert_flie (did you mean cert_file?)"),
    ({"key_file": None}, "server.tls.key_file is required when [server.tls] is set"),
    ({"cert_file": ""}, "server.tls.cert_file must be a file path"),
    ({"cert_file": "missing"}, "server.tls.cert_file: cannot read {missing}: no such file or directory"),
    ({"cert_file": "garbage"}, "server.tls.cert_file: {garbage} holds no PEM certificate"),
    ({"cert_file": "key"}, "server.tls.cert_file: {key} holds no PEM certificate"),
    ({"key_file": "cert"}, "server.tls.key_file: {cert} holds no PEM private key"),
    ({"key_file": "encrypted_key"},
     "server.tls.key_file: the key in {encrypted_key} is encrypted; gRPC needs it unencrypted (keep the file mode "
     "0600)"),
    ({"key_file": "other_key"},
     "server.tls.key_file: the key in {other_key} does not match the certificate in server.tls.cert_file ({cert})"),
    ({"client_ca_file": "garbage"}, "server.tls.client_ca_file: {garbage} holds no PEM certificate"),
    ({"require_client_cert": True},
     "server.tls.require_client_cert = true needs server.tls.client_ca_file (the CA that signs client certificates)"),
    ({"client_ca_file": "ca", "require_client_cert": False},
     "server.tls.require_client_cert = false with server.tls.client_ca_file: gRPC's Python server cannot ask for an "
     "optional client certificate; set require_client_cert = true (bearer keys still work) or remove client_ca_file"),
    ({"client_ca_file": "ca", "require_client_cert": "yes"}, "server.tls.require_client_cert must be true or false"),
])
def test_a_bad_tls_table_is_refused_naming_the_key(files, overrides, message):
    assert refused({"server": {"tls": tls(files, **overrides)}}) == message.format(**files)


def test_an_expired_certificate_is_refused_with_its_date(files):
    message = refused({"server": {"tls": tls(files, cert_file="expired_cert", key_file="expired_key")}})
    assert message.startswith(f"server.tls.cert_file: the certificate in {files['expired_cert']} expired at 20")
    assert message.endswith("Z")


def test_server_tls_must_be_a_table():
    assert refused({"server": {"tls": "on"}}) == "server.tls must be a table"


@pytest.mark.parametrize("callers, message", [
    ({"search": {"tls_subject": "CN=search,O=Example"}},
     "callers.search: tls_subject and tls_san identify a caller by its client certificate, which needs "
     "server.tls.client_ca_file"),
    ({"search": {"key_sha256": KEY_HASH, "tls_san": "spiffe://example.org/ns/search/sa/api"}},
     "callers.search: tls_subject and tls_san identify a caller by its client certificate, which needs "
     "server.tls.client_ca_file"),
])
def test_a_certificate_caller_needs_a_client_ca(files, callers, message):
    assert refused({"server": {"tls": tls(files)}, "callers": callers}) == message
    assert refused({"callers": callers}) == message


@pytest.mark.parametrize("callers, message", [
    ({"x": {"allowed_models": ["fast"]}},
     "callers.x needs key_sha256 (tollway keys new x) or a client certificate identity (tls_subject, tls_san)"),
    ({"x": {"tls_subject": ""}}, "callers.x.tls_subject must be a non-empty string without surrounding spaces"),
    ({"x": {"tls_san": " spiffe://a/b"}}, "callers.x.tls_san must be a non-empty string without surrounding spaces"),
    ({"x": {"tls_subject": ["CN=x"]}}, "callers.x.tls_subject must be a non-empty string without surrounding spaces"),
    ({"a": {"tls_subject": "CN=a"}, "b": {"tls_subject": "CN=a"}},
     "callers.b has the same tls_subject and tls_san as callers.a"),
    ({"x": {"tls_subjet": "CN=x"}}, "unknown key(s) in [callers.x]: tls_subjet (did you mean tls_subject?)"),
])
def test_a_bad_certificate_caller_is_refused(files, callers, message):
    assert refused({"server": {"tls": tls(files, client_ca_file="ca")}, "callers": callers}) == message


def test_callers_by_certificate_key_or_both_load_with_a_client_ca(files):
    config = parse_config({"server": {"tls": tls(files, client_ca_file="ca")}, "callers": {
        "search": {"tls_subject": "CN=search,O=Example"},
        "api": {"tls_san": "spiffe://example.org/ns/search/sa/api", "key_sha256": KEY_HASH},
        "same-subject-other-san": {"tls_subject": "CN=search,O=Example", "tls_san": "search.example.org"},
    }})
    assert [c.name for c in config.callers.by_certificate] == ["search", "api", "same-subject-other-san"]
    assert config.callers.entries[0].key_sha256 == b""


def test_the_private_key_never_shows_in_a_repr(files):
    material = read_material(TlsConfig(str(files["cert"]), str(files["key"])))
    assert b"PRIVATE KEY" in material.private_key
    assert "PRIVATE KEY" not in repr(material)
    assert material.describe().startswith("certificate CN=tollway, valid until 20")
