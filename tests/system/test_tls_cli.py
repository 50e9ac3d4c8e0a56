"""`tollway serve` with mutual TLS, driven by the `tollway` command's --tls-* flags (and their
environment variables), and its certificates rotated by SIGHUP. Every command is a real process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tollway.v1 import completion_pb2 as pb
from tollway.v1 import completion_pb2_grpc as pb_grpc

from tests.support.certs import CertificateAuthority, Issued
from tests.support.cli import ROOT, tollway
from tests.support.gateway import MIXROUTER_TEST_KEY, fixture_json
from tests.support.served import free_port, to_toml
from tests.support.upstream import FakeUpstream, Reply

MODEL = "mixrouter/gemini-2.0-flash"
SEED_ANSWER = fixture_json("mixrouter/seed_response.json")["choices"][0]["message"]["content"]
START_WAIT_S = 30.0
RELOAD_WAIT_S = 20.0


@dataclass
class TlsServe:
    """A `tollway serve` process with mutual TLS, and the files a client needs."""

    port: int
    directory: Path
    ca: CertificateAuthority
    client: Issued
    process: asyncio.subprocess.Process
    log_path: Path

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client_files(self, issued: Issued | None = None, stem: str = "search") -> list[str]:
        cert, key = (issued or self.client).write(self.directory, stem)
        return ["--tls-ca", str(self.directory / "ca.pem"), "--tls-cert", str(cert), "--tls-key", str(key)]

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")


def tls_channel(target: str, trust: bytes, client: Issued) -> grpc.aio.Channel:
    credentials = grpc.ssl_channel_credentials(trust, client.key_pem, client.cert_pem)
    return grpc.aio.secure_channel(target, credentials, options=[("grpc.use_local_subchannel_pool", 1)])


async def healthy(target: str, trust: bytes, client: Issued) -> bool:
    async with tls_channel(target, trust, client) as channel:
        try:
            response = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
        except grpc.aio.AioRpcError:
            return False
    return response.status == health_pb2.HealthCheckResponse.SERVING


@pytest.fixture
async def served(tmp_path: Path, upstream: FakeUpstream):
    ca = CertificateAuthority()
    ca.write(tmp_path)
    cert, key = ca.server().write(tmp_path, "server")
    config = {
        # Port 0, read back from the start-up log: no other process can take the port between
        # choosing it and binding it.
        "server": {"listen": "127.0.0.1:0", "grace_period_s": 1,
                   "tls": {"cert_file": str(cert), "key_file": str(key), "client_ca_file": str(tmp_path / "ca.pem"),
                           "require_client_cert": True}},
        "providers": {"mixrouter": {"base_url": f"{upstream.base_url}/v1"}},
        "routing": {"max_retries": 0},
        "callers": {"search": {"tls_subject": "CN=search,O=Example"}},
        "ledger": {"path": str(tmp_path / "ledger.sqlite3")},
    }
    config_path = tmp_path / "tollway.toml"
    config_path.write_text(to_toml(config), encoding="utf-8")
    upstream.responder = lambda received: Reply(body=fixture_json("mixrouter/seed_response.json"))
    environ = {k: v for k, v in os.environ.items() if not k.startswith("TOLLWAY_") and not k.endswith("_API_KEY")}
    environ["MIXROUTER_API_KEY"] = MIXROUTER_TEST_KEY
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tollway.service.cli", "serve", "--config", str(config_path), cwd=ROOT,
            env=environ, stdin=asyncio.subprocess.DEVNULL, stdout=log_file, stderr=log_file)
    serve = TlsServe(0, tmp_path, ca, ca.client("search"), process, log_path)
    deadline = time.monotonic() + START_WAIT_S
    while not (serve.port and await healthy(serve.target, ca.cert_pem, serve.client)):
        if process.returncode is not None or time.monotonic() > deadline:
            await _end(process)
            pytest.fail(f"tollway serve with TLS did not come up:\n{serve.log_text()}")
        if not serve.port and (bound := re.search(r"serving on 127\.0\.0\.1:(\d+) ", serve.log_text())):
            serve.port = int(bound.group(1))
        await asyncio.sleep(0.1)
    yield serve
    await _end(process)


async def _end(process: asyncio.subprocess.Process) -> None:
    """SIGTERM, then SIGKILL if it lingers; a process that already exited is only reaped."""
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), START_WAIT_S)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()


def error_line(stderr: str) -> str:
    """The command's own line (gRPC's library may log its handshake failure beside it)."""
    [line] = [line for line in stderr.splitlines() if line.startswith("tollway: ")]
    return line


async def test_complete_and_usage_over_mutual_tls(served: TlsServe):
    flags = served.client_files()
    code, out, err = await tollway("complete", "--target", served.target, *flags, "--model", MODEL, "--text", "hi")
    assert code == 0, err
    assert out == SEED_ANSWER + "\n"

    # The record is the certificate's caller's; wait (bounded) until the ledger has it.
    async with tls_channel(served.target, served.ca.cert_pem, served.client) as channel:
        stub = pb_grpc.CompletionStub(channel)
        deadline = time.monotonic() + RELOAD_WAIT_S
        while not (await stub.GetUsageSummary(pb.GetUsageSummaryRequest(), timeout=5)).rows:
            assert time.monotonic() < deadline, "the call's ledger record never showed in the summary"
            await asyncio.sleep(0.1)
    code, out, err = await tollway("usage", "--target", served.target, *flags, "--group-by", "caller",
                                   "--format", "jsonl")
    assert code == 0, err
    [row] = [json.loads(line) for line in out.splitlines()]
    assert (row["caller"], row["requests"]) == ("search", 1)


async def test_the_tls_flags_come_from_the_environment_too(served: TlsServe):
    ca, cert, key = served.client_files()[1::2]
    code, out, err = await tollway("complete", "--target", served.target, "--model", MODEL, "--text", "hi",
                                   env={"TOLLWAY_TLS_CA": ca, "TOLLWAY_TLS_CERT": cert, "TOLLWAY_TLS_KEY": key})
    assert code == 0, err
    assert out == SEED_ANSWER + "\n"


async def test_the_gateways_name_is_checked_against_its_certificate(served: TlsServe):
    flags = served.client_files()
    code, out, err = await tollway("complete", "--target", served.target, *flags, "--tls-server-name", "localhost",
                                   "--model", MODEL, "--text", "hi")
    assert code == 0, err
    code, out, err = await tollway("complete", "--target", served.target, *flags, "--tls-server-name",
                                   "gateway.example.org", "--model", MODEL, "--text", "hi")
    assert code == 1
    assert error_line(err).startswith("tollway: UNAVAILABLE: failed to connect to all addresses")


@pytest.mark.parametrize("flags, message", [
    ((), "tollway: UNAVAILABLE: failed to connect to all addresses"),  # plaintext against TLS
    (("--tls-ca", "{dir}/ca.pem"), "tollway: UNAVAILABLE: failed to connect to all addresses"),  # no client cert
])
async def test_without_the_right_flags_the_gateway_refuses_the_connection(served: TlsServe, flags, message):
    args = [flag.format(dir=served.directory) for flag in flags]
    code, out, err = await tollway("complete", "--target", served.target, *args, "--model", MODEL, "--text", "hi")
    assert (code, out) == (1, "")
    assert error_line(err).startswith(message)


@pytest.mark.parametrize("flags, message", [
    (("--tls-cert", "{dir}/server.pem"), "tollway: --tls-cert and --tls-key go together (a client certificate and "
                                         "its key)"),
    (("--tls-ca", "{dir}/nowhere.pem"), "tollway: --tls-ca {dir}/nowhere.pem: no such file or directory"),
])
async def test_bad_tls_flags_stop_the_command_before_any_call(tmp_path: Path, flags, message):
    (tmp_path / "server.pem").write_text("unused")
    args = [flag.format(dir=tmp_path) for flag in flags]
    for command in (["complete", "--model", MODEL, "--text", "hi"], ["usage"]):
        code, out, err = await tollway(*command, "--target", "127.0.0.1:9", *args)
        assert (code, out, err) == (2, "", message.format(dir=tmp_path) + "\n")


async def test_sighup_rotates_the_certificates(served: TlsServe):
    new_ca = CertificateAuthority("Tollway Test CA 2")
    new_client = new_ca.client("search")
    assert not await healthy(served.target, new_ca.cert_pem, new_client)
    new_ca.server().write(served.directory, "server")
    new_ca.write(served.directory)
    served.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + RELOAD_WAIT_S
    while not await healthy(served.target, new_ca.cert_pem, new_client):
        assert time.monotonic() < deadline, f"SIGHUP did not rotate the certificates:\n{served.log_text()}"
        await asyncio.sleep(0.1)
    assert not await healthy(served.target, served.ca.cert_pem, served.client)
    code, out, err = await tollway("complete", "--target", served.target, *served.client_files(new_client),
                                   "--model", MODEL, "--text", "hi")
    assert code == 0, err
    assert "TLS certificates reloaded: certificate CN=tollway" in served.log_text()


async def test_serve_refuses_a_key_that_does_not_match_its_certificate(tmp_path: Path):
    ca = CertificateAuthority()
    cert, _ = ca.server().write(tmp_path, "server")
    _, other_key = ca.server().write(tmp_path, "other")
    config = tmp_path / "tollway.toml"
    config.write_text(to_toml({"server": {"tls": {"cert_file": str(cert), "key_file": str(other_key)}}}))
    code, out, err = await tollway("serve", "--config", config, "--listen", f"127.0.0.1:{free_port()}")
    assert (code, out) == (2, "")
    assert err == (f"tollway: server.tls.key_file: the key in {other_key} does not match the certificate in "
                   f"server.tls.cert_file ({cert})\n")
