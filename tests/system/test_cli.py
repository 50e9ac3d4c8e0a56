"""The `tollway` command as a person runs it: `complete` against an in-process gateway and
a loopback MixRouter, and `serve` refusing a bad config in one clear line.

Each command runs as a real subprocess (sys.executable -m tollway.service.cli) started from the
test's event loop, so the gateway in that loop keeps serving while the command waits.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest

from tests.support.gateway import fixture_json
from tests.support.cli import ROOT, SUBPROCESS_TIMEOUT_S, tollway, without_file_permission_bypass  # noqa: F401
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
    # Plain text is a document the CLI sends (named by its extension); MixRouter takes PDFs only.
    notes = tmp_path / "notes.txt"
    notes.write_text("minutes of the meeting\n")
    code, out, err = await tollway("complete", "--target", client.target, "--model", MODEL, "--text", "hi",
                                   "--document", notes)
    assert code == 1
    assert err.startswith("tollway: INVALID_ARGUMENT: messages[0].parts[1].document.mime_type: "
                          'provider "mixrouter" does not accept text/plain (accepted: ')
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
        ("[server]\nlisten_on = '127.0.0.1:0'\n", 2, "unknown key(s) in [server]: listen_on (did you mean listen?)"),
        ("[server]\nlistne = '127.0.0.1:0'\n", 2, "unknown key(s) in [server]: listne (did you mean listen?)"),
        ("[providers.local]\nkind = 'openai_compatible'\nbase_url = 'http://127.0.0.1:9'\ntimeout = 5\n", 1,
         "providers.local: unknown option(s) for kind openai_compatible: timeout (did you mean timeout_s?) (known: "),
        ("[server]\nlog_format = 'xml'\n", 2, 'server.log_format must be "plain" or "json"'),
        ("[providers.mine]\nkind = 'nosuchkind'\n", 1, "providers.mine: unknown kind 'nosuchkind' (installed: "),
    ],
    ids=["not-toml", "unknown-key", "misspelled-key", "misspelled-provider-key", "bad-value", "unknown-kind"],
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


# -- serve: first run --------------------------------------------------------------------------


def serve_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """SERVE_ENV with the ledger's default place inside the test's directory."""
    return {**SERVE_ENV, "XDG_STATE_HOME": str(tmp_path / "state"), **extra}


def assert_one_clean_line(err: str, line: str) -> None:
    assert err == line + "\n"
    assert "Traceback" not in err and "Unclosed" not in err


async def test_serve_on_a_taken_port_says_so_in_one_line(tmp_path: Path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        code, out, err = await tollway("serve", "--listen", address, env=serve_env(tmp_path))
    assert code == 1
    assert_one_clean_line(err, f"tollway: cannot listen on {address}: address already in use")


async def test_serve_on_a_taken_ipv6_port_says_so_in_one_line(tmp_path: Path):
    import socket

    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    with socket.socket(socket.AF_INET6) as taken:
        try:
            taken.bind(("::1", 0))
        except OSError:
            pytest.skip("no IPv6 loopback on this machine")
        taken.listen()
        address = f"[::1]:{taken.getsockname()[1]}"
        code, out, err = await tollway("serve", "--listen", address, env=serve_env(tmp_path))
    assert code == 1
    assert_one_clean_line(err, f"tollway: cannot listen on {address}: address already in use")


BAD_LISTEN = [
    ("localhost", "'localhost' is not HOST:PORT (e.g. 127.0.0.1:50051 or [::1]:50051)"),
    ("127.0.0.1:", "'127.0.0.1:' is not HOST:PORT (e.g. 127.0.0.1:50051 or [::1]:50051)"),
    (":50051", "':50051' is not HOST:PORT (e.g. 127.0.0.1:50051 or [::1]:50051)"),
    ("localhost:https", "'localhost:https' is not HOST:PORT (e.g. 127.0.0.1:50051 or [::1]:50051)"),
    ("127.0.0.1:70000", "'127.0.0.1:70000': port 70000 is out of range 0-65535"),
    ("::1:50051", "'::1:50051' is not HOST:PORT: write an IPv6 host in brackets (e.g. 127.0.0.1:50051 or "
                  "[::1]:50051)"),
]


@pytest.mark.parametrize(("value", "message"), BAD_LISTEN, ids=[v for v, _ in BAD_LISTEN])
async def test_serve_refuses_a_listen_flag_that_is_not_host_port(tmp_path: Path, value: str, message: str):
    code, out, err = await tollway("serve", "--listen", value, env=serve_env(tmp_path))
    assert (code, out) == (2, "")
    assert_one_clean_line(err, f"tollway: --listen {message}")


@pytest.mark.parametrize(("value", "message"), BAD_LISTEN[:2], ids=[v for v, _ in BAD_LISTEN[:2]])
async def test_serve_refuses_a_listen_env_that_is_not_host_port(tmp_path: Path, value: str, message: str):
    code, out, err = await tollway("serve", env=serve_env(tmp_path, TOLLWAY_LISTEN=value))
    assert (code, out) == (2, "")
    assert_one_clean_line(err, f"tollway: TOLLWAY_LISTEN {message}")


@pytest.mark.parametrize(("value", "message"), BAD_LISTEN[:2], ids=[v for v, _ in BAD_LISTEN[:2]])
async def test_serve_refuses_a_listen_setting_that_is_not_host_port(tmp_path: Path, value: str, message: str):
    config = tmp_path / "tollway.toml"
    config.write_text(f"[server]\nlisten = {value!r}\n")
    env = serve_env(tmp_path)
    del env["TOLLWAY_LISTEN"]  # the setting is what decides
    code, out, err = await tollway("serve", "--config", config, env=env)
    assert (code, out) == (2, "")
    assert_one_clean_line(err, f"tollway: server.listen {message}")


async def test_serve_refuses_a_config_path_that_is_a_directory(tmp_path: Path):
    code, out, err = await tollway("serve", "--config", tmp_path, env=serve_env(tmp_path))
    assert (code, out) == (2, "")
    assert_one_clean_line(err, f"tollway: cannot read config file {tmp_path}: is a directory")


async def test_serve_refuses_a_config_file_it_may_not_read(tmp_path: Path):
    config = tmp_path / "tollway.toml"
    config.write_text("[server]\n")
    config.chmod(0)
    code, out, err = await tollway("serve", "--config", config, env=serve_env(tmp_path),
                                   wrapper=without_file_permission_bypass())
    assert (code, out) == (2, "")
    assert_one_clean_line(err, f"tollway: cannot read config file {config}: permission denied")


async def test_serve_names_a_ledger_place_it_cannot_create_and_closes_what_it_opened(tmp_path: Path):
    # A file where the ledger's directory should be: fails for root too. The engine and the
    # media fetcher are open by then; they must be closed again, silently.
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    config = tmp_path / "tollway.toml"
    config.write_text(f"[ledger]\npath = {str(blocker / 'ledger.sqlite3')!r}\n")
    code, out, err = await tollway("serve", "--config", config, env=serve_env(tmp_path))
    assert (code, out) == (1, "")
    assert_one_clean_line(err, f"tollway: cannot open the ledger journal {blocker / 'ledger.sqlite3.journal'}: "
                               "Not a directory")


# -- complete: cost and local media types ------------------------------------------------------

# The catalog's mixrouter/gemini-2.0-flash prices, nano-USD per million tokens: input text 100_000_000
# (tokens without a stated modality are billed as text), input audio 700_000_000, output text 400_000_000.
# The seed: (5 + 1806) * 100 + 175 * 700 + 83 * 400 = 336_800 nano-USD.
COST_LINE = "cost: $0.0003368 (mixrouter/gemini-2.0-flash@2025-02-05)"
# 1000 * 100 + 100 * 400 = 140_000 nano-USD.
STREAM_COST_LINE = "cost: $0.00014 (mixrouter/gemini-2.0-flash@2025-02-05)"
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4\x89"


def sent_media_url(upstream: FakeUpstream, index: int = 1) -> str:
    part = user_content(upstream)[index]
    return part[part["type"]]["url"]


async def test_complete_prints_the_cost_with_the_price_entry(client, upstream: FakeUpstream):
    upstream.reply(Reply(body=fixture_json("mixrouter/seed_response.json")))
    code, out, err = await tollway("complete", "--target", client.target, "--model", MODEL, "--text", "hi")
    assert code == 0, err
    [line] = [line for line in err.splitlines() if line.startswith("cost: ")]
    assert line == COST_LINE
    printed_usage(err)  # the usage JSON still follows whole


async def test_complete_stream_prints_the_cost(client, upstream: FakeUpstream):
    chunks = [{"id": "chatcmpl-cli", "model": "gemini-2.0-flash",
               "choices": [{"index": 0, "delta": {"content": "Hi."}, "finish_reason": "stop"}],
               "usage": {"prompt_tokens": 1000, "completion_tokens": 100, "total_tokens": 1100}}]
    upstream.reply(Reply(events=sse_events(chunks)))
    code, out, err = await tollway("complete", "--target", client.target, "--model", MODEL, "--text", "hi",
                                   "--stream")
    assert code == 0, err
    [line] = [line for line in err.splitlines() if line.startswith("cost: ")]
    assert line == STREAM_COST_LINE


async def test_complete_prints_unpriced_with_the_reason(client, upstream: FakeUpstream):
    upstream.reply(Reply(body={**fixture_json("mixrouter/seed_response.json"), "model": "no-price-model"}))
    code, out, err = await tollway("complete", "--target", client.target, "--model", "mixrouter/no-price-model",
                                   "--text", "hi")
    assert code == 0, err
    [line] = [line for line in err.splitlines() if line.startswith("cost: ")]
    # The reason names the model and the moment the catalog was asked about.
    assert re.fullmatch(r"cost: unpriced: no price for mixrouter/no-price-model at \d{4}-\d\d-\d\dT[\d:.]+Z", line), line


async def test_a_png_named_jpg_is_sent_as_png(client, upstream: FakeUpstream, tmp_path: Path):
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(PNG)
    upstream.reply(Reply(body=fixture_json("mixrouter/seed_response.json")))
    code, out, err = await tollway("complete", "--target", client.target, "--model", MODEL, "--text", "hi",
                                   "--image", photo)
    assert code == 0, err
    assert sent_media_url(upstream) == "data:image/png;base64," + base64.b64encode(PNG).decode()


async def test_a_file_without_extension_is_typed_by_its_content(client, upstream: FakeUpstream, tmp_path: Path):
    photo = tmp_path / "photo"
    photo.write_bytes(PNG)
    upstream.reply(Reply(body=fixture_json("mixrouter/seed_response.json")))
    code, out, err = await tollway("complete", "--target", client.target, "--model", MODEL, "--text", "hi",
                                   "--image", photo)
    assert code == 0, err
    assert sent_media_url(upstream) == "data:image/png;base64," + base64.b64encode(PNG).decode()


async def test_a_text_file_given_as_image_is_refused(client, upstream: FakeUpstream, tmp_path: Path):
    # The extension says PNG; the content is text. Nothing is sent.
    fake = tmp_path / "photo.png"
    fake.write_text("not a picture\n")
    code, out, err = await tollway("complete", "--target", client.target, "--model", MODEL, "--text", "hi",
                                   "--image", fake)
    assert (code, out) == (2, "")
    assert err == f"tollway: --image {fake}: the file's content is not an image of a type tollway recognizes\n"
    assert upstream.received == []


async def test_a_pdf_given_as_audio_is_refused_naming_what_it_is(client, upstream: FakeUpstream, tmp_path: Path):
    pdf = tmp_path / "clip.mp3"
    pdf.write_bytes(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    code, out, err = await tollway("complete", "--target", client.target, "--model", MODEL, "--text", "hi",
                                   "--audio", pdf)
    assert (code, out) == (2, "")
    assert err == f"tollway: --audio {pdf}: the file holds application/pdf, not audio\n"
    assert upstream.received == []


async def test_unknown_bytes_as_audio_are_refused_before_sending(client, upstream: FakeUpstream, tmp_path: Path):
    unknown = tmp_path / "notes.unknownext"
    unknown.write_bytes(b"\x00\x01")
    code, out, err = await tollway("complete", "--target", client.target, "--model", MODEL, "--text", "hi",
                                   "--audio", unknown)
    assert (code, out) == (2, "")
    assert err == f"tollway: --audio {unknown}: the file's content is not audio of a type tollway recognizes\n"
    assert upstream.received == []
