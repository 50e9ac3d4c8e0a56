"""TLS and mutual TLS on the listener, over real channels with certificates made at test time:
what gRPC refuses at the handshake (UNAVAILABLE at the client), callers known by their client
certificate, and certificates swapped by a reload for new handshakes."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from tollway.service.admission.auth import peer_certificate
from tollway.service.config.loader import load_config
from tollway.service.gateway.server import Gateway, start_gateway
from tollway.v1 import completion_pb2 as pb
from tollway.v1 import completion_pb2_grpc as pb_grpc

from tests.support.certs import CertificateAuthority, Issued
from tests.support.gateway import MIXROUTER_TEST_KEY, fixture_json, mixrouter_config
from tests.support.seed import seed_request
from tests.support.served import to_toml
from tests.support.upstream import FakeUpstream, Reply

Code = grpc.StatusCode
OPS_KEY = "tw-test-caller-ops-9c41d2e7aa"
SPIFFE_ID = "spiffe://example.org/ns/search/sa/api"
CALL_TIMEOUT_S = 10
# Handshake refusals: gRPC's own words for a connection it could not make.
NO_CONNECTION = "failed to connect to all addresses"


@dataclass
class Pki:
    """One CA for the gateway and its callers, and one no one configured."""

    directory: Path
    ca: CertificateAuthority
    other_ca: CertificateAuthority
    ca_file: Path
    cert_file: Path
    key_file: Path

    def client(self, common_name: str, **names: Any) -> Issued:
        return self.ca.client(common_name, **names)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca, other = CertificateAuthority("Tollway Test CA"), CertificateAuthority("Somebody Else's CA")
    cert_file, key_file = ca.server().write(tmp_path, "server")
    return Pki(tmp_path, ca, other, ca.write(tmp_path), cert_file, key_file)


def tls_table(pki: Pki, *, mutual: bool) -> dict[str, Any]:
    table: dict[str, Any] = {"cert_file": str(pki.cert_file), "key_file": str(pki.key_file)}
    if mutual:
        table.update(client_ca_file=str(pki.ca_file), require_client_cert=True)
    return table


def callers() -> dict[str, Any]:
    return {
        # Known by its certificate's subject; may use one model only.
        "search": {"tls_subject": "CN=search,O=Example", "allowed_models": ["mixrouter/gemini-2.0-flash"]},
        # Known by a SPIFFE ID (a URI SAN), whatever the subject says.
        "api": {"tls_san": SPIFFE_ID},
        # A bearer key only.
        "ops": {"key_sha256": hashlib.sha256(OPS_KEY.encode()).hexdigest()},
    }


def secure_channel(port: int, trust: bytes, client: Issued | None = None) -> grpc.aio.Channel:
    credentials = grpc.ssl_channel_credentials(trust, client.key_pem if client else None,
                                               client.cert_pem if client else None)
    # A channel of its own each time: no connection (or failed one) shared with another test's channel.
    return grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials, options=[("grpc.use_local_subchannel_pool", 1)])


async def complete(channel: grpc.aio.Channel, model: str = "mixrouter/gemini-2.0-flash",
                   metadata: tuple[tuple[str, str], ...] = ()) -> pb.CompleteResponse:
    request = seed_request()
    request.model = model
    stub = pb_grpc.CompletionStub(channel)
    return await stub.Complete(request, timeout=CALL_TIMEOUT_S, metadata=metadata)


async def refusal(channel: grpc.aio.Channel, **kwargs: Any) -> grpc.aio.AioRpcError:
    async with channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await complete(channel, **kwargs)
    return caught.value


async def usage_callers(channel: grpc.aio.Channel) -> dict[str, int]:
    """Requests in the ledger by caller, as the channel's caller may read them."""
    stub = pb_grpc.CompletionStub(channel)
    summary = await stub.GetUsageSummary(pb.GetUsageSummaryRequest(group_by=[pb.USAGE_GROUPING_CALLER]),
                                         timeout=CALL_TIMEOUT_S)
    return {row.group.caller: row.requests for row in summary.rows}


@pytest.fixture
async def mutual(start_client, upstream: FakeUpstream, pki: Pki):
    config = mixrouter_config(upstream)
    config["server"] = {"tls": tls_table(pki, mutual=True)}
    config["callers"] = callers()
    upstream.responder = lambda received: Reply(body=fixture_json("mixrouter/seed_response.json"))
    return await start_client(config, {"MIXROUTER_API_KEY": MIXROUTER_TEST_KEY})


# -- what the handshake refuses ----------------------------------------------------------------


async def test_a_plaintext_client_is_refused_on_a_tls_port(mutual, upstream):
    err = await refusal(grpc.aio.insecure_channel(mutual.target, options=[("grpc.use_local_subchannel_pool", 1)]))
    assert err.code() == Code.UNAVAILABLE
    assert err.details().startswith(NO_CONNECTION)
    assert upstream.received == []


async def test_a_client_that_does_not_trust_the_gateways_ca_refuses_it(mutual, pki, upstream):
    err = await refusal(secure_channel(mutual.gateway.port, pki.other_ca.cert_pem, pki.client("search")))
    assert err.code() == Code.UNAVAILABLE
    assert err.details().startswith(NO_CONNECTION)
    assert upstream.received == []


async def test_a_client_certificate_from_another_ca_is_refused(mutual, pki, upstream):
    stranger = pki.other_ca.client("search")  # the right name, the wrong signer
    err = await refusal(secure_channel(mutual.gateway.port, pki.ca.cert_pem, stranger))
    assert err.code() == Code.UNAVAILABLE
    assert err.details().startswith(NO_CONNECTION)
    assert upstream.received == []


async def test_without_a_client_certificate_the_handshake_fails_when_one_is_required(mutual, pki, upstream):
    err = await refusal(secure_channel(mutual.gateway.port, pki.ca.cert_pem), metadata=(
        ("authorization", f"Bearer {OPS_KEY}"),))
    assert err.code() == Code.UNAVAILABLE
    assert err.details().startswith(NO_CONNECTION)
    assert upstream.received == []


def handshake(port: int, pki: Pki, version: ssl.TLSVersion) -> str:
    """A bare TLS handshake with the listener at exactly this version; the version agreed."""
    context = ssl.create_default_context(cadata=pki.ca.cert_pem.decode())
    # Lets this client offer versions its OpenSSL would no longer offer, so the server is what refuses.
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    context.minimum_version = context.maximum_version = version
    context.set_alpn_protocols(["h2"])
    context.load_cert_chain(*pki.client("search").write(pki.directory, "bare"))
    with socket.create_connection(("127.0.0.1", port), timeout=CALL_TIMEOUT_S) as sock:
        with context.wrap_socket(sock, server_hostname="localhost") as tls:
            return str(tls.version())


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
async def test_tls_1_2_and_1_3_only(mutual, pki):
    assert await asyncio.to_thread(handshake, mutual.gateway.port, pki, ssl.TLSVersion.TLSv1_3) == "TLSv1.3"
    assert await asyncio.to_thread(handshake, mutual.gateway.port, pki, ssl.TLSVersion.TLSv1_2) == "TLSv1.2"
    with pytest.raises((ssl.SSLError, ConnectionError)) as caught:
        await asyncio.to_thread(handshake, mutual.gateway.port, pki, ssl.TLSVersion.TLSv1_1)
    # The server hung up on the hello; a client that could not even offer TLS 1.1 would say so instead.
    assert "NO_PROTOCOLS_AVAILABLE" not in str(caught.value)


# -- callers known by their certificate --------------------------------------------------------


async def test_a_client_certificate_is_its_callers_identity(mutual, pki, upstream):
    async with secure_channel(mutual.gateway.port, pki.ca.cert_pem, pki.client("search")) as channel:
        response = await complete(channel)
        assert response.usage.input.total == 1986
        assert await mutual.gateway.runtime.ledger.flush(10)
        # Its record is the caller's: a user-role caller reads only its own usage.
        assert await usage_callers(channel) == {"search": 1}
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await complete(channel, model="mixrouter/claude-sonnet-4")
    assert caught.value.code() == Code.PERMISSION_DENIED
    assert caught.value.details() == 'model: caller "search" may not use "mixrouter/claude-sonnet-4"'
    assert len(upstream.received) == 1


async def test_a_spiffe_id_names_its_caller_whatever_the_subject(mutual, pki):
    workload = pki.ca.client("pod-7f9c", None, uris=(SPIFFE_ID,), dns=("api.search.svc",))
    async with secure_channel(mutual.gateway.port, pki.ca.cert_pem, workload) as channel:
        await complete(channel, model="mixrouter/claude-sonnet-4")
        assert await mutual.gateway.runtime.ledger.flush(10)
        assert await usage_callers(channel) == {"api": 1}


async def test_a_certificate_no_caller_claims_is_unauthenticated(mutual, pki, upstream):
    stranger = pki.client("stranger", uris=("spiffe://example.org/ns/other/sa/x",))
    err = await refusal(secure_channel(mutual.gateway.port, pki.ca.cert_pem, stranger))
    assert err.code() == Code.UNAUTHENTICATED
    assert err.details() == 'client certificate "CN=stranger,O=Example" is not a configured caller'
    assert upstream.received == []


async def test_a_certificate_two_callers_claim_is_refused_not_guessed(mutual, pki, upstream, caplog):
    both = pki.client("search", uris=(SPIFFE_ID,))  # search's subject, api's SPIFFE ID
    with caplog.at_level(logging.ERROR, logger="tollway.auth"):
        err = await refusal(secure_channel(mutual.gateway.port, pki.ca.cert_pem, both))
    assert err.code() == Code.UNAUTHENTICATED
    assert err.details() == 'client certificate "CN=search,O=Example" matches more than one caller'
    assert [r.getMessage() for r in caplog.records if r.name == "tollway.auth"] == [
        'client certificate "CN=search,O=Example" matches callers search, api: '
        "give them distinct tls_subject or tls_san values"]
    assert upstream.received == []


async def test_a_bearer_key_wins_over_the_certificate(mutual, pki):
    search = pki.client("search")
    async with secure_channel(mutual.gateway.port, pki.ca.cert_pem, search) as channel:
        # ops may use any model; search may not use this one.
        await complete(channel, model="mixrouter/claude-sonnet-4", metadata=(("authorization", f"Bearer {OPS_KEY}"),))
    err = await refusal(secure_channel(mutual.gateway.port, pki.ca.cert_pem, search),
                        metadata=(("authorization", "Bearer tw-test-not-a-caller"),))
    assert err.code() == Code.UNAUTHENTICATED
    assert err.details() == "invalid caller key"


async def test_list_models_knows_a_caller_by_its_certificate(mutual, pki):
    async with secure_channel(mutual.gateway.port, pki.ca.cert_pem, pki.client("search")) as channel:
        models = await pb_grpc.CompletionStub(channel).ListModels(pb.ListModelsRequest(), timeout=CALL_TIMEOUT_S)
    assert [p.name for p in models.providers] == ["mixrouter"]


async def test_the_auth_context_grpc_gives_is_what_identifies_a_caller(pki):
    """grpc 1.85 reports the verified certificate this way; the caller mapping relies on it."""
    seen: list[Any] = []

    async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        seen.append(context.auth_context())
        return request

    server = grpc.aio.server()
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("t.Echo", {
        "Call": grpc.unary_unary_rpc_method_handler(echo)})])
    creds = grpc.ssl_server_credentials([(pki.key_file.read_bytes(), pki.cert_file.read_bytes())],
                                        root_certificates=pki.ca.cert_pem, require_client_auth=True)
    port = server.add_secure_port("127.0.0.1:0", creds)
    await server.start()
    try:
        workload = pki.client("search", uris=(SPIFFE_ID,), dns=("search.example.org",))
        async with secure_channel(port, pki.ca.cert_pem, workload) as channel:
            assert await channel.unary_unary("/t.Echo/Call")(b"hi", timeout=CALL_TIMEOUT_S) == b"hi"
    finally:
        await server.stop(0)
    [context] = seen
    assert context["x509_subject"] == [b"CN=search,O=Example"] == [workload.subject.encode()]
    assert context["peer_uri"] == [SPIFFE_ID.encode()]
    assert context["peer_dns"] == [b"search.example.org"]
    certificate = peer_certificate(context)
    assert certificate is not None
    assert (certificate.subject, certificate.sans) == ("CN=search,O=Example", (SPIFFE_ID, "search.example.org"))


# -- TLS without client certificates -----------------------------------------------------------


async def test_server_only_tls_serves_bearer_keys_and_refuses_plaintext(start_client, upstream, pki):
    config = mixrouter_config(upstream)
    config["server"] = {"tls": tls_table(pki, mutual=False)}
    config["callers"] = {"ops": callers()["ops"]}
    upstream.reply(Reply(body=fixture_json("mixrouter/seed_response.json")))
    client = await start_client(config, {"MIXROUTER_API_KEY": MIXROUTER_TEST_KEY})
    async with secure_channel(client.gateway.port, pki.ca.cert_pem) as channel:
        response = await complete(channel, metadata=(("authorization", f"Bearer {OPS_KEY}"),))
    assert response.usage.input.total == 1986
    err = await refusal(secure_channel(client.gateway.port, pki.ca.cert_pem))
    assert err.code() == Code.UNAUTHENTICATED
    assert err.details() == "missing caller key: send metadata 'authorization: Bearer <key>'"
    err = await refusal(grpc.aio.insecure_channel(client.target, options=[("grpc.use_local_subchannel_pool", 1)]))
    assert err.code() == Code.UNAVAILABLE
    assert err.details().startswith(NO_CONNECTION)


# -- reload ------------------------------------------------------------------------------------


@pytest.fixture
async def reloadable(tmp_path: Path, upstream: FakeUpstream, pki: Pki):
    """A mutual-TLS gateway started from a config file, as `tollway serve --config` starts it."""
    config = mixrouter_config(upstream)
    config["server"] = {"tls": tls_table(pki, mutual=True)}
    config["callers"] = callers()
    config["ledger"] = {"path": str(tmp_path / "ledger.sqlite3")}
    path = tmp_path / "tollway.toml"
    path.write_text(to_toml(config), encoding="utf-8")
    upstream.responder = lambda received: Reply(body=fixture_json("mixrouter/seed_response.json"))
    environ = {"MIXROUTER_API_KEY": MIXROUTER_TEST_KEY}
    gateway = await start_gateway(load_config(path, environ), environ=environ, listen="127.0.0.1:0",
                                  config_path=str(path))
    yield gateway
    await gateway.stop(grace=0)


async def succeeds(gateway: Gateway, trust: bytes, client: Issued) -> bool:
    """Whether a new connection trusting `trust` with `client` gets an answer."""
    async with secure_channel(gateway.port, trust, client) as channel:
        try:
            await complete(channel)
        except grpc.aio.AioRpcError as err:
            assert err.code() == Code.UNAVAILABLE and err.details().startswith(NO_CONNECTION), err
            return False
    return True


async def test_a_reload_swaps_the_certificates_for_new_handshakes(reloadable, pki, caplog):
    new_ca = CertificateAuthority("Tollway Test CA 2")
    old_client, new_client = pki.client("search"), new_ca.client("search")
    assert await succeeds(reloadable, pki.ca.cert_pem, old_client)
    assert not await succeeds(reloadable, new_ca.cert_pem, new_client)

    # Rotated in place, as cert-manager or a mounted Secret does: the same paths, new contents.
    new_ca.server().write(pki.directory, "server")
    new_ca.write(pki.directory)
    with caplog.at_level(logging.INFO, logger="tollway.tls"):
        assert reloadable.reload()

    assert await succeeds(reloadable, new_ca.cert_pem, new_client)
    assert not await succeeds(reloadable, pki.ca.cert_pem, old_client)
    assert any(r.getMessage().startswith("TLS certificates reloaded: certificate CN=tollway, valid until ")
               and "signed by CN=Tollway Test CA 2" in r.getMessage() for r in caplog.records)


async def test_a_reload_with_the_same_files_keeps_the_certificates(reloadable, pki, caplog):
    with caplog.at_level(logging.INFO, logger="tollway.tls"):
        assert reloadable.reload()
    [line] = [r.getMessage() for r in caplog.records if r.name == "tollway.tls"]
    assert line.startswith("TLS certificates unchanged: certificate CN=tollway, valid until ")
    assert await succeeds(reloadable, pki.ca.cert_pem, pki.client("search"))


async def test_turning_tls_off_waits_for_a_restart(reloadable, pki, caplog, upstream, tmp_path):
    config = mixrouter_config(upstream)
    config["callers"] = {"ops": callers()["ops"]}
    config["ledger"] = {"path": str(tmp_path / "ledger.sqlite3")}
    (tmp_path / "tollway.toml").write_text(to_toml(config), encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="tollway.tls"):
        assert reloadable.reload()
    assert [r.getMessage() for r in caplog.records if r.name == "tollway.tls"] == [
        "[server.tls] removed: the listener keeps TLS until the next restart"]
    # Still mutual TLS; the new callers apply.
    async with secure_channel(reloadable.port, pki.ca.cert_pem, pki.client("search")) as channel:
        await complete(channel, metadata=(("authorization", f"Bearer {OPS_KEY}"),))
    err = await refusal(secure_channel(reloadable.port, pki.ca.cert_pem, pki.client("search")))
    assert err.code() == Code.UNAUTHENTICATED
    assert err.details() == 'client certificate "CN=search,O=Example" is not a configured caller'


@pytest.mark.parametrize("damage, message", [
    (lambda pki: pki.cert_file.write_text("not a certificate\n"),
     "server.tls.cert_file: {cert} holds no PEM certificate"),
    (lambda pki: pki.cert_file.write_bytes(pki.other_ca.server().cert_pem),
     "server.tls.key_file: the key in {key} does not match the certificate in server.tls.cert_file ({cert})"),
    (lambda pki: pki.key_file.unlink(),
     "server.tls.key_file: cannot read {key}: no such file or directory"),
    (lambda pki: pki.cert_file.write_bytes(pki.ca.server(expired=True).cert_pem),
     "server.tls.cert_file: the certificate in {cert} expired at "),
])
async def test_a_bad_certificate_on_reload_is_refused_and_the_old_one_kept(reloadable, pki, caplog, damage, message):
    damage(pki)
    with caplog.at_level(logging.ERROR, logger="tollway.server"):
        assert not reloadable.reload()
    expected = "config reload refused, keeping the running config: " + message.format(cert=pki.cert_file,
                                                                                    key=pki.key_file)
    [refused] = [r.getMessage() for r in caplog.records if r.name == "tollway.server"]
    # An expiry message goes on with the date; the others are whole.
    assert refused.startswith(expected) if expected.endswith(" ") else refused == expected
    assert await succeeds(reloadable, pki.ca.cert_pem, pki.client("search"))
