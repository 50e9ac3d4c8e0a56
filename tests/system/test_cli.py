"""The `tollway` command as a person runs it: `complete` against an in-process gateway and
a loopback MixRouter, and `serve` refusing a bad config in one clear line.

Each command runs as a real subprocess (sys.executable -m tollway.service.cli) started from the
test's event loop, so the gateway in that loop keeps serving while the command waits.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from tests.support.gateway import fixture_json
from tests.support.cli import ROOT, SUBPROCESS_TIMEOUT_S, tollway  # noqa: F401
from tests.support.upstream import FakeUpstream, Reply, sse_events

MODEL = "mixrouter/gemini-2.0-flash"
SEED_ANSWER = fixture_json("mixrouter/seed_response.json")["choices"][0]["message"]["content"]
IMAGE_URL = "https://s2.loli.net/2024/02/01/QSWVdw9bX56gj7O.jpg"




def printed_usage(stderr: str) -> dict:
    """The usage JSON the command prints after the answer (on stderr, so stdout is the answer)."""
    return json.loads(stderr[stderr.index("{"):])


def user_content(upstream: FakeUpstream) -> list[dict]:
    [received] = upstream.received
    [message] = received.json()["messages"]
    assert message["role"] == "user"
    return message["content"]


# -- complete --------------------------------------------------------------------------------


async def test_complete_prints_the_answer_and_the_usage(client, upstream: FakeUpstream):
    upstream.reply(Reply(body=fixture_json("mixrouter/seed_response.json")))
    code, out, err = await tollway("complete", "--target", client.target, "--model", MODEL, "--text", "hi",
                                   "--image", IMAGE_URL, "--max-tokens", "2000", "--temperature", "0.8")
    assert code == 0, err
    assert out == SEED_ANSWER + "\n"
    assert "[mixrouter gemini-2.0-flash]" in err
    usage = printed_usage(err)
    assert usage["input"] == {"total": "1986", "text": "5", "audio": "175", "unattributed": "1806"}
    assert (usage["output"]["total"], usage["totalTokens"]) == ("83", "2069")
    assert usage["warnings"] == ["USAGE_WARNING_INPUT_MODALITY_DETAILS_INCOMPLETE"]

    assert user_content(upstream) == [
        {"type": "text", "text": "hi"},
        {"type": "image_url", "image_url": {"url": IMAGE_URL}},
    ]
    body = upstream.received[0].json()
    assert (body["model"], body["max_tokens"], body["temperature"]) == ("gemini-2.0-flash", 2000, 0.8)


async def test_local_files_are_sent_inline_with_their_media_type(client, upstream: FakeUpstream, tmp_path: Path):
    png = tmp_path / "photo.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n-image-bytes")
    wav = tmp_path / "clip.wav"
    wav.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt -audio-bytes")
    upstream.reply(Reply(body=fixture_json("mixrouter/seed_response.json")))

    code, out, err = await tollway("complete", "--target", client.target, "--model", MODEL, "--text", "hi",
                                   "--image", png, "--audio", wav)

    assert code == 0, err
    assert out == SEED_ANSWER + "\n"
    text, image, audio = user_content(upstream)
    assert text == {"type": "text", "text": "hi"}
    assert image == {"type": "image_url",
                     "image_url": {"url": "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode()}}
    assert audio["type"] == "audio_url"
    mime, _, encoded = audio["audio_url"]["url"].removeprefix("data:").partition(";base64,")
    # The system's media-type table names WAV either way; MixRouter takes both.
    assert mime in ("audio/wav", "audio/x-wav")
    assert base64.b64decode(encoded) == wav.read_bytes()


async def test_complete_stream_prints_the_deltas(client, upstream: FakeUpstream):
    chunks = [{"id": "chatcmpl-cli", "model": "gemini-2.0-flash",
               "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}
              for text in ("Two ", "people ", "at work.")]
    chunks.append({"id": "chatcmpl-cli", "model": "gemini-2.0-flash",
                   "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                   "usage": {"prompt_tokens": 12, "completion_tokens": 4, "total_tokens": 16,
                             "prompt_tokens_details": {"text_tokens": 12}}})
    upstream.reply(Reply(events=sse_events(chunks)))

    code, out, err = await tollway("complete", "--target", client.target, "--model", MODEL, "--text", "hi",
                                   "--stream")

    assert code == 0, err
    assert out == "Two people at work.\n"
    usage = printed_usage(err)
    assert (usage["input"]["total"], usage["input"]["text"], usage["output"]["total"]) == ("12", "12", "4")
    assert upstream.received[0].json()["stream"] is True


async def test_upstream_error_prints_code_and_message(client, upstream: FakeUpstream):
    # A status no retry can fix, so exactly one upstream answer decides the outcome.
    upstream.reply(Reply(status=404, body={"error": {"message": "model gemini-9 does not exist"}}))
    code, out, err = await tollway("complete", "--target", client.target, "--model", "mixrouter/gemini-9",
                                   "--text", "hi")
    assert code == 1
    assert out == ""
    assert err == "tollway: NOT_FOUND: mixrouter: upstream returned HTTP 404: model gemini-9 does not exist\n"


async def test_stream_error_prints_code_and_message(client, upstream: FakeUpstream):
    code, out, err = await tollway("complete", "--target", client.target, "--model", "nosuch/model", "--text", "hi",
                                   "--stream")
    assert code == 1
    assert out == ""
    assert err == 'tollway: NOT_FOUND: model: unknown provider "nosuch" (configured: mixrouter)\n'
    assert upstream.received == []


async def test_media_the_provider_refuses_prints_the_field(client, upstream: FakeUpstream, tmp_path: Path):
    unknown = tmp_path / "notes.unknownext"
    unknown.write_bytes(b"\x00\x01")
    code, out, err = await tollway("complete", "--target", client.target, "--model", MODEL, "--text", "hi",
                                   "--audio", unknown)
    assert code == 1
    assert err.startswith("tollway: INVALID_ARGUMENT: messages[0].parts[1].audio.mime_type: "
                          'provider "mixrouter" does not accept application/octet-stream (accepted: ')
    assert upstream.received == []


async def test_a_missing_local_file_is_named(client, tmp_path: Path):
    missing = tmp_path / "missing.png"
    code, out, err = await tollway("complete", "--target", client.target, "--model", MODEL, "--text", "hi",
                                   "--image", missing)
    assert (code, out) == (2, "")
    assert err == f"tollway: --image {missing}: No such file or directory\n"


async def test_an_unreachable_gateway_is_unavailable(tmp_path: Path):
    # A port nothing listens on: bind one, note it, close it.
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code, out, err = await tollway("complete", "--target", f"127.0.0.1:{port}", "--model", MODEL, "--text", "hi",
                                   "--timeout", "5")
    assert code == 1
    assert err.startswith("tollway: UNAVAILABLE: ")


# -- serve -------------------------------------------------------------------------------------

# Should a bad case start after all, it binds a free port and the timeout fails the test.
SERVE_ENV = {"TOLLWAY_LISTEN": "127.0.0.1:0", "TOLLWAY_CONFIG": ""}


@pytest.mark.parametrize(
    ("config_text", "code", "message"),
    [
        ("[server\nlisten = 1", 2, "is not valid TOML: "),
        ("[server]\nlisten_on = '127.0.0.1:0'\n", 2, "unknown key(s) in [server]: listen_on"),
        ("[server]\nlog_format = 'xml'\n", 2, 'server.log_format must be "plain" or "json"'),
        ("[providers.mine]\nkind = 'nosuchkind'\n", 1, "providers.mine: unknown kind 'nosuchkind' (installed: "),
    ],
    ids=["not-toml", "unknown-key", "bad-value", "unknown-kind"],
)
async def test_serve_refuses_a_bad_config(tmp_path: Path, config_text: str, code: int, message: str):
    config = tmp_path / "tollway.toml"
    config.write_text(config_text)
    exit_code, out, err = await tollway("serve", "--config", config, env=SERVE_ENV)
    assert exit_code == code
    assert err.startswith("tollway: ")
    assert message in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err


async def test_serve_names_a_config_file_that_does_not_exist(tmp_path: Path):
    missing = tmp_path / "nope.toml"
    code, out, err = await tollway("serve", "--config", missing, env=SERVE_ENV)
    assert code == 2
    assert err == f"tollway: config file {missing} does not exist\n"


async def test_serve_reads_the_config_file_from_the_environment(tmp_path: Path):
    config = tmp_path / "tollway.toml"
    config.write_text("[nonsense]\n")
    code, out, err = await tollway("serve", env={**SERVE_ENV, "TOLLWAY_CONFIG": str(config)})
    assert code == 2
    assert err == "tollway: unknown top-level config table(s): nonsense\n"
