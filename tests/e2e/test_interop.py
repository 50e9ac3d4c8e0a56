"""The contract used from outside Python: buf (lint, breaking, curl over server reflection)
and a Node @grpc/grpc-js client that loads the .proto with @grpc/proto-loader.

The tools come from tests/interop/node_modules, installed by the README's test command
(`npm ci --prefix tests/interop`). Missing tools fail these tests, they never skip them:
a contract proof that silently does not run proves nothing.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.support.gateway import MIXROUTER_TEST_KEY, fixture_json, mixrouter_config
from tests.support.upstream import FakeUpstream, Received, Reply, sse_events
from tests import support

ROOT = support.ROOT
PROTOS = ROOT / "protos"
INTEROP = support.TESTS / "interop"
BUF = INTEROP / "node_modules" / ".bin" / "buf"
NODE_CLIENT = INTEROP / "client.mjs"
INSTALL_HINT = "install the interop clients with `npm ci --prefix tests/interop` (part of the README's test command)"
SUBPROCESS_TIMEOUT_S = 30

# A tiny PNG header is enough: the gateway forwards bytes, it does not decode images.
PNG_BYTES = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"
PNG_BASE64 = base64.b64encode(PNG_BYTES).decode("ascii")


def buf_path() -> Path:
    if not BUF.exists():
        pytest.fail(f"buf is not installed at {BUF.relative_to(ROOT)}: {INSTALL_HINT}")
    return BUF


def node_path() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail(f"node is not on PATH; install Node.js 18 or later, then {INSTALL_HINT}")
    for package in ("@grpc/grpc-js", "@grpc/proto-loader"):
        if not (INTEROP / "node_modules" / package / "package.json").exists():
            pytest.fail(f"{package} is not installed in tests/interop/node_modules: {INSTALL_HINT}")
    return node


async def run(*argv: str | Path, cwd: Path = ROOT) -> tuple[int, str, str]:
    """Run a tool without blocking the event loop that serves the in-process gateway."""
    process = await asyncio.create_subprocess_exec(
        *map(str, argv), cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), SUBPROCESS_TIMEOUT_S)
    except TimeoutError:
        process.kill()
        await process.wait()
        pytest.fail(f"{Path(str(argv[0])).name} did not finish within {SUBPROCESS_TIMEOUT_S}s: {argv[1:]}")
    return process.returncode, out.decode(), err.decode()


def seed_request() -> dict[str, Any]:
    """The seed's request (tests/fixtures/mixrouter/seed_request.json) in proto3 JSON.

    Field names are the .proto's own, which both buf curl (protojson) and
    proto-loader (keepCase) accept.
    """
    seed = fixture_json("mixrouter/seed_request.json")
    parts = []
    for item in seed["messages"][0]["content"]:
        if item["type"] == "text":
            parts.append({"text": item["text"]})
        elif item["type"] == "image_url":
            parts.append({"image": {"url": item["image_url"]["url"]}})
        elif item["type"] == "audio_url":
            parts.append({"audio": {"url": item["audio_url"]["url"]}})
    return {
        "model": f"mixrouter/{seed['model']}",
        "messages": [{"role": "ROLE_USER", "parts": parts}],
        "max_tokens": seed["max_tokens"],
        "temperature": seed["temperature"],
        "top_p": seed["top_p"],
    }


def assert_seed_reached_upstream(received: Received, *, stream: bool, extra_parts: list[Any] = ()) -> None:
    """Every part, every parameter and the bearer key of the seed arrived as MixRouter expects."""
    seed = fixture_json("mixrouter/seed_request.json")
    assert received.path == "/v1/chat/completions"
    assert received.headers["Authorization"] == f"Bearer {MIXROUTER_TEST_KEY}"
    body = received.json()
    assert body["model"] == seed["model"]
    [message] = body["messages"]
    [seed_message] = seed["messages"]
    assert message == {"role": "user", "content": seed_message["content"] + list(extra_parts)}
    assert (body["max_tokens"], body["temperature"], body["top_p"]) == (2000, 0.8, 0.1)
    assert body["stream"] is stream


SEED_USAGE_JSON = {
    # proto3 JSON: int64 as strings, zero buckets omitted.
    "input": {"total": "1986", "text": "5", "audio": "175", "unattributed": "1806"},
    "output": {"total": "83", "unattributed": "83"},
    "totalTokens": "2069",
    "warnings": ["USAGE_WARNING_INPUT_MODALITY_DETAILS_INCOMPLETE"],
    "providerReported": {"totalTokens": "2069"},
}

STREAM_TEXT = ["The image ", "shows two ", "people."]


def stream_reply(*, cut: bool = False) -> Reply:
    chunks = [
        {"id": "chatcmpl-interop", "model": "gemini-2.0-flash", "created": 1766735188,
         "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}
        for text in STREAM_TEXT
    ]
    if cut:
        return Reply(events=sse_events(chunks, done=False), fault="cut")
    chunks.append({"id": "chatcmpl-interop", "model": "gemini-2.0-flash",
                   "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    chunks.append({"id": "chatcmpl-interop", "model": "gemini-2.0-flash", "choices": [],
                   "usage": {"prompt_tokens": 1986, "completion_tokens": 83, "total_tokens": 2069,
                             "prompt_tokens_details": {"text_tokens": 5, "audio_tokens": 175}}})
    return Reply(events=sse_events(chunks))


# -- buf lint / breaking -------------------------------------------------------------------


async def test_buf_lint_passes():
    code, out, err = await run(buf_path(), "lint", cwd=PROTOS)
    assert (code, out, err) == (0, "", "")


def copy_protos(destination: Path) -> Path:
    shutil.copytree(PROTOS, destination, ignore=shutil.ignore_patterns("*.py", "*.pyi", "__pycache__"))
    return destination


async def test_buf_breaking_runs_offline_and_finds_a_removed_field(tmp_path: Path):
    baseline = copy_protos(tmp_path / "baseline")
    code, out, err = await run(buf_path(), "breaking", PROTOS, "--against", baseline)
    assert (code, out, err) == (0, "", "")

    changed = copy_protos(tmp_path / "changed")
    proto = changed / "tollway" / "v1" / "completion.proto"
    text = proto.read_text(encoding="utf-8")
    removed = "  optional int64 seed = 6;\n"
    assert text.count(removed) == 2
    proto.write_text(text.replace(removed, "", 1), encoding="utf-8")
    code, out, err = await run(buf_path(), "breaking", changed, "--against", baseline)
    assert code != 0
    assert 'Previously present field "6" with name "seed" on message "CompleteRequest" was deleted.' in out + err


# File options 0.1 shipped without, set once on purpose so that every language's generator
# has a home for the code: no wire or JSON change, but buf's FILE rules name each of them.
LANGUAGE_OPTIONS_SET_AFTER_0_1 = [
    'File option "csharp_namespace" changed from "" to "Tollway.V1".',
    'File option "go_package" changed from "" to "tollway.dev/gen/go/tollway/v1;tollwayv1".',
    'File option "java_multiple_files" changed from "false" to "true".',
    'File option "java_package" changed from "" to "dev.tollway.v1".',
    'File option "php_namespace" changed from "" to "Tollway\\\\V1".',
    'File option "ruby_package" changed from "" to "Tollway::V1".',
]


async def test_the_contract_only_adds_to_the_last_release():
    released = support.FIXTURES / "contract" / "v0.1"
    code, out, err = await run(buf_path(), "breaking", PROTOS, "--against", released)
    # Each finding is "path:line:column:message"; anything beyond the language options fails.
    findings = [line.split(":", 3)[3] for line in out.splitlines()]
    assert (findings, err) == (LANGUAGE_OPTIONS_SET_AFTER_0_1, "")
    assert code != 0


# -- buf curl over server reflection ---------------------------------------------------------


async def buf_curl(target: str, method: str, data: dict[str, Any]) -> tuple[int, str, str]:
    return await run(
        buf_path(), "curl", "--protocol", "grpc", "--http2-prior-knowledge",
        "--data", json.dumps(data, ensure_ascii=False), f"http://{target}/tollway.v1.Completion/{method}",
    )


async def test_buf_curl_complete_with_the_seed_request(client, upstream: FakeUpstream):
    upstream.reply(Reply(body=fixture_json("mixrouter/seed_response.json")))
    code, out, err = await buf_curl(client.target, "Complete", seed_request())
    assert code == 0, err
    response = json.loads(out)
    assert response["provider"] == "mixrouter"
    assert response["model"] == "gemini-2.0-flash"
    assert response["id"] == "chatcmpl-toio20251226074613833316175pDor54M8"
    assert response["created"] == "2025-12-26T07:46:28Z"
    [choice] = response["choices"]
    assert choice["finishReason"] == "FINISH_REASON_STOP"
    assert choice["message"]["parts"][0]["text"].startswith("The image depicts two people in an office setting.")
    assert response["usage"] == SEED_USAGE_JSON
    [received] = upstream.received
    assert_seed_reached_upstream(received, stream=False)


async def test_buf_curl_list_models(client):
    code, out, err = await buf_curl(client.target, "ListModels", {})
    assert code == 0, err
    [provider] = json.loads(out)["providers"]
    assert provider["name"] == "mixrouter"
    assert provider["kind"] == "mixrouter"
    assert provider["inputModalities"] == [
        "MODALITY_TEXT", "MODALITY_IMAGE", "MODALITY_AUDIO", "MODALITY_VIDEO", "MODALITY_DOCUMENT",
    ]
    assert {"image/png", "audio/wav", "video/mp4", "application/pdf"} <= set(provider["mimeTypes"])


async def test_buf_curl_lists_the_services_by_reflection(client):
    code, out, err = await run(
        buf_path(), "curl", "--protocol", "grpc", "--http2-prior-knowledge", "--list-methods",
        f"http://{client.target}",
    )
    assert code == 0, err
    methods = out.split()
    assert {
        "tollway.v1.Completion/Complete",
        "tollway.v1.Completion/StreamComplete",
        "tollway.v1.Completion/ListModels",
        "grpc.health.v1.Health/Check",
    } <= set(methods)


async def test_buf_curl_validation_error(client, upstream: FakeUpstream):
    code, out, err = await buf_curl(client.target, "Complete", {"model": "mixrouter/gemini-2.0-flash"})
    # buf curl exits with the gRPC code shifted three bits left: INVALID_ARGUMENT (3) -> 24.
    assert code == 3 << 3
    assert out == ""
    error = json.loads(err)
    assert error["code"] == "invalid_argument"
    assert error["message"] == "messages: at least one message is required"
    assert [d["type"] for d in error["details"]] == ["google.rpc.BadRequest"]
    assert upstream.received == []


# -- Node @grpc/grpc-js ----------------------------------------------------------------------


async def test_node_grpc_js_client(client, upstream: FakeUpstream):
    node = node_path()
    request = seed_request()
    # Inline bytes from Node (base64 in JSON, bytes on the wire) become a data: URL upstream.
    request["messages"][0]["parts"].append({"image": {"data": PNG_BASE64, "mime_type": "image/png"}})
    upstream.reply(
        Reply(body=fixture_json("mixrouter/seed_response.json")),
        stream_reply(),
        stream_reply(cut=True),
    )
    code, out, err = await run(node, NODE_CLIENT, client.target, PROTOS, json.dumps(request, ensure_ascii=False))
    assert code == 0, err
    result = json.loads(out)

    complete = result["complete"]["response"]
    assert complete["provider"] == "mixrouter"
    assert complete["model"] == "gemini-2.0-flash"
    assert complete["created"] == {"seconds": "1766735188", "nanos": 0}
    assert complete["choices"][0]["finish_reason"] == "FINISH_REASON_STOP"
    usage = complete["usage"]
    assert usage["input"] == {"total": "1986", "text": "5", "image": "0", "audio": "175", "video": "0",
                              "document": "0", "cache_read": "0", "cache_write_5m": "0", "cache_write_1h": "0",
                              "cache_write_unknown_ttl": "0", "unattributed": "1806"}
    assert usage["output"] == {"total": "83", "text": "0", "audio": "0", "image": "0", "reasoning": "0",
                               "unattributed": "83"}
    assert (usage["total_tokens"], usage["estimated"]) == ("2069", False)
    assert usage["warnings"] == ["USAGE_WARNING_INPUT_MODALITY_DETAILS_INCOMPLETE"]

    stream = result["stream"]
    assert stream["status"] == "OK"
    # Deltas one read brought may arrive as one (server.merge_stream_deltas); never the first.
    texts = [d["text"] for d in stream["deltas"]]
    assert "".join(texts) == "".join(STREAM_TEXT) and texts[0] == STREAM_TEXT[0], texts
    assert {d["choice_index"] for d in stream["deltas"]} == {0}
    summary = stream["summary"]
    assert (summary["id"], summary["provider"]) == ("chatcmpl-interop", "mixrouter")
    assert summary["finishes"] == [{"index": 0, "finish_reason": "FINISH_REASON_STOP", "raw_finish_reason": "stop",
                                    "tool_calls": [], "reasoning": []}]
    assert (summary["usage"]["input"]["total"], summary["usage"]["output"]["total"]) == ("1986", "83")
    assert summary["usage"]["total_tokens"] == "2069"
    assert summary["usage"]["estimated"] is False

    unknown = result["unknown_provider"]["error"]
    assert (unknown["code"], unknown["code_name"]) == (5, "NOT_FOUND")
    assert unknown["details"] == 'model: unknown provider "nosuch" (configured: mixrouter)'
    assert len(unknown["request_id"]) == 32

    cut = result["cut_stream"]
    cut_texts = [d["text"] for d in cut["deltas"]]
    assert "".join(cut_texts) == "".join(STREAM_TEXT) and cut_texts[0] == STREAM_TEXT[0], cut_texts
    assert cut["summary"] is None
    assert (cut["error"]["code"], cut["error"]["code_name"]) == (14, "UNAVAILABLE")
    assert cut["error"]["details"] == "mixrouter: upstream closed the connection"

    # Three calls reached the upstream (the unknown provider did not); every one carried the
    # seed's parts plus the inline PNG as a data: URL.
    inline_png = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_BASE64}"}}
    assert len(upstream.received) == 3
    for received, stream in zip(upstream.received, (False, True, True)):
        assert_seed_reached_upstream(received, stream=stream, extra_parts=[inline_png])


async def test_node_grpc_js_client_runs_a_tool_calling_round_trip(client, upstream: FakeUpstream):
    node = node_path()
    upstream.reply(Reply(body=fixture_json("openai/chat_completion_tool_calls.json")),
                   Reply(body=fixture_json("mixrouter/seed_response.json")))

    code, out, err = await run(node, INTEROP / "tools_client.mjs", client.target, PROTOS,
                               "mixrouter/gemini-2.0-flash")

    assert code == 0, err
    result = json.loads(out)
    first = result["first"]["response"]["choices"][0]
    assert first["finish_reason"] == "FINISH_REASON_TOOL_CALLS"
    [call] = [p["tool_call"] for p in first["message"]["parts"] if p["content"] == "tool_call"]
    assert (call["id"], call["name"], call["arguments_json"]) == (
        "call_KjzAbhiZC6nk81tQzL7pwlpc", "read_file", '{"path":"README.md"}')
    assert result["second"]["response"]["choices"][0]["finish_reason"] == "FINISH_REASON_STOP"
    offered, answered = (r.json() for r in upstream.received)
    assert offered["tools"][0]["function"]["name"] == "get_weather"
    assert offered["tools"][0]["function"]["parameters"] == {
        "type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}
    assert answered["messages"][1:] == [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_KjzAbhiZC6nk81tQzL7pwlpc", "type": "function",
             "function": {"name": "read_file", "arguments": '{"path":"README.md"}'}}]},
        {"role": "tool", "tool_call_id": "call_KjzAbhiZC6nk81tQzL7pwlpc", "content": '{"celsius": 21}'},
    ]


async def test_buf_curl_get_limits_reads_a_rule_and_a_budget(start_client, upstream: FakeUpstream):
    config = mixrouter_config(upstream)
    config["limits"] = {"rules": [{"name": "rpm", "requests_per_minute": 60}],
                        "budgets": [{"name": "daily", "period": "day", "max_usd": "1.50"}]}
    limited = await start_client(config, {"MIXROUTER_API_KEY": MIXROUTER_TEST_KEY})
    upstream.reply(Reply(body=fixture_json("mixrouter/seed_response.json")))
    code, _, err = await buf_curl(limited.target, "Complete", seed_request())
    assert code == 0, err
    code, out, err = await buf_curl(limited.target, "GetLimits", {})
    assert code == 0, err
    answer = json.loads(out)
    assert answer["storeReachable"] is True
    [rule] = answer["rateLimits"]
    assert (rule["rule"], rule["requestsPerMinute"], rule["requestsUsed"]) == ("rpm", "60", "1")
    [budget] = answer["budgets"]
    assert (budget["budget"], budget["period"], budget["maxNanoUsd"]) == ("daily", "BUDGET_PERIOD_DAY", "1500000000")
