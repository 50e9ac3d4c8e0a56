"""Caller identity: keys in metadata, allowed models, labels, and `tollway keys new`."""

from __future__ import annotations

import asyncio
import hashlib
import sys

import grpc
import pytest
from tollway.service.admission.auth import new_key
from tollway.v1 import completion_pb2 as pb

from tests.support.gateway import MIXROUTER_TEST_KEY, fixture_json, mixrouter_config
from tests.support.seed import seed_request, seed_stream_request
from tests.support.upstream import Reply

Code = grpc.StatusCode
ALICE_KEY = "tw-test-caller-alice-5f1d0c9e2b"
BOB_KEY = "tw-test-caller-bob-77a3e1f04c"


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def auth(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


@pytest.fixture
async def guarded(start_client, upstream):
    config = mixrouter_config(upstream)
    config["callers"] = {
        "alice": {"key_sha256": sha(ALICE_KEY), "labels": {"team": "search", "cost_center": "cc-7"}},
        "bob": {"key_sha256": sha(BOB_KEY), "allowed_models": ["fast", "mixrouter/gpt-4o*"]},
    }
    config["routes"] = [{"name": "fast", "targets": [{"provider": "mixrouter", "model": "gemini-2.0-flash"}]}]
    return await start_client(config, {"MIXROUTER_API_KEY": MIXROUTER_TEST_KEY})


async def _stream(client, request, metadata):
    return [m async for m in client.stub.StreamComplete(request, timeout=5, metadata=metadata)]


@pytest.mark.parametrize("metadata, message", [
    ((), "missing caller key: send metadata 'authorization: Bearer <key>'"),
    (auth("tw-test-not-a-caller"), "invalid caller key"),
    ((("authorization", f"Basic {ALICE_KEY}"),), "missing caller key: send metadata 'authorization: Bearer <key>'"),
])
async def test_a_call_without_a_valid_key_is_unauthenticated(guarded, upstream, metadata, message):
    for call in (guarded.stub.Complete(seed_request(), timeout=5, metadata=metadata),
                 _stream(guarded, seed_stream_request(), metadata),
                 guarded.stub.ListModels(pb.ListModelsRequest(), timeout=5, metadata=metadata)):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == Code.UNAUTHENTICATED
        assert err.value.details() == message
    assert upstream.received == []


async def test_a_valid_key_is_served(guarded, upstream):
    upstream.reply(Reply(body=fixture_json("mixrouter/seed_response.json")))
    response = await guarded.stub.Complete(seed_request(), timeout=5, metadata=auth(ALICE_KEY))
    assert response.usage.input.total == 1986
    # The caller's key is the caller's business: never forwarded upstream.
    assert upstream.received[0].headers["Authorization"] == f"Bearer {MIXROUTER_TEST_KEY}"


@pytest.mark.parametrize("model", ["mixrouter/gemini-2.0-flash", "mixrouter/claude-sonnet-4"])
async def test_a_model_outside_allowed_models_is_permission_denied(guarded, upstream, model):
    request = seed_request()
    request.model = model
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await guarded.stub.Complete(request, timeout=5, metadata=auth(BOB_KEY))
    assert err.value.code() == Code.PERMISSION_DENIED
    assert err.value.details() == f'model: caller "bob" may not use "{model}"'
    assert upstream.received == []


async def test_allowed_models_take_routes_and_patterns(guarded, upstream):
    for model in ("fast", "mixrouter/gpt-4o-mini"):
        upstream.reply(Reply(body=fixture_json("mixrouter/seed_response.json")))
        request = seed_request()
        request.model = model
        await guarded.stub.Complete(request, timeout=5, metadata=auth(BOB_KEY))
    assert [r.json()["model"] for r in upstream.received] == ["gemini-2.0-flash", "gpt-4o-mini"]


async def test_list_models_shows_a_caller_only_what_it_may_use(guarded):
    bob = await guarded.stub.ListModels(pb.ListModelsRequest(), timeout=5, metadata=auth(BOB_KEY))
    alice = await guarded.stub.ListModels(pb.ListModelsRequest(), timeout=5, metadata=auth(ALICE_KEY))
    assert [r.name for r in bob.routes] == ["fast"] and [p.name for p in bob.providers] == ["mixrouter"]
    assert [r.name for r in alice.routes] == ["fast"] and [p.name for p in alice.providers] == ["mixrouter"]


async def test_anonymous_when_no_callers_are_configured(client, upstream):
    upstream.reply(Reply(body=fixture_json("mixrouter/seed_response.json")))
    response = await client.stub.Complete(seed_request(), timeout=5)
    assert response.provider == "mixrouter"


def test_new_key_gives_a_random_key_and_the_hash_to_configure():
    key, config = new_key("search-team")
    other, _ = new_key("search-team")
    assert key != other and len(key) > 40
    assert config == f'[callers.search-team]\nkey_sha256 = "{sha(key)}"\n'


async def test_keys_new_command_prints_the_key_once_and_the_config_line():
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "tollway.service.cli", "keys", "new", "ops",
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    text = out.decode()
    assert proc.returncode == 0, err.decode()
    key = text.split("\n")[1].strip()
    assert text.count(key) == 1
    assert f'key_sha256 = "{sha(key)}"' in text


@pytest.mark.parametrize("table, message", [
    ({"x": {"key_sha256": "abc"}}, "callers.x.key_sha256 must be 64 hex digits (tollway keys new x)"),
    ({"x": {"key_sha256": "0" * 64, "role": "root"}}, "callers.x.role must be one of user, admin"),
    ({"x": {"key_sha256": "0" * 64}, "y": {"key_sha256": "0" * 64}}, "callers.y.key_sha256 is the same as another caller's"),
    ({"x": {"key_sha256": "0" * 64, "label": {}}}, "unknown key(s) in [callers.x]: label (did you mean labels?)"),
])
def test_bad_caller_config_is_refused(table, message):
    from tollway.service.config.loader import ConfigError, parse_config

    with pytest.raises(ConfigError) as err:
        parse_config({"callers": table})
    assert str(err.value) == message
