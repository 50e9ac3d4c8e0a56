"""What a new user meets first, against a running `tollway serve`: a port already taken, an
address without a port, a config that is a directory, a misspelled option, and the cost of
a `tollway complete`."""

from __future__ import annotations

from pathlib import Path

from tests.support.cli import tollway
from tests.support.served import Served
from tests.support.upstream import Reply

PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082")


def assert_one_clean_line(code: int, err: str, expected: str) -> None:
    assert code != 0
    assert "Traceback" not in err and "Unclosed" not in err, err
    assert err.strip() == expected, err


async def test_a_second_gateway_on_a_taken_port_says_so_in_one_line(served: Served):
    await served.start()
    code, _, err = await tollway("serve", "--listen", served.target, env={"TOLLWAY_CONFIG": ""})
    assert_one_clean_line(code, err, f"tollway: cannot listen on {served.target}: address already in use")


async def test_listen_addresses_without_a_port_are_refused_from_flag_env_and_config(served: Served, tmp_path: Path):
    await served.start()
    code, _, err = await tollway("serve", "--listen", "localhost")
    assert code == 2 and "Traceback" not in err
    assert "localhost" in err and "HOST:PORT" in err, err

    code, _, err = await tollway("serve", env={"TOLLWAY_LISTEN": "localhost"})
    assert code == 2 and "TOLLWAY_LISTEN" in err and "HOST:PORT" in err, err

    config = tmp_path / "no-port.toml"
    config.write_text('[server]\nlisten = "localhost"\n', encoding="utf-8")
    code, _, err = await tollway("serve", "--config", config)
    assert code == 2 and "server.listen" in err and "HOST:PORT" in err, err


async def test_a_config_that_is_a_directory_or_unreadable_is_one_line(served: Served, tmp_path: Path):
    await served.start()
    code, _, err = await tollway("serve", "--config", tmp_path)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "is a directory" in err.lower(), err


async def test_a_misspelled_provider_option_names_the_nearest_key(served: Served, tmp_path: Path):
    await served.start()
    config = tmp_path / "typo.toml"
    config.write_text('[providers.local]\nkind = "openai_compatible"\nbase_url = "http://127.0.0.1:1/v1"\n'
                      'timeout = 30\n', encoding="utf-8")
    code, _, err = await tollway("serve", "--config", config)
    assert code != 0 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "timeout_s" in err and "did you mean" in err, err
    for common in ("base_url", "api_key_env", "connect_timeout_s", "idle_timeout_s"):
        assert common in err, (common, err)


async def test_tollway_complete_prints_the_cost_and_sniffs_a_misnamed_image(served: Served, tmp_path: Path):
    await served.start()
    served.upstream.reply(Reply(body={
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4.1",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "A pixel."}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110}}))
    picture = tmp_path / "pixel.jpg"  # a PNG under a .jpg name
    picture.write_bytes(PNG)

    code, out, err = await tollway("complete", "--target", served.target, "--model", "openai/gpt-4.1",
                                   "--text", "What is this?", "--image", picture,
                                   env={"TOLLWAY_KEY": served.caller_keys["alice"]})

    assert code == 0, err
    assert "A pixel." in out
    # The answer on stdout; the usage and its cost beside it on stderr.
    assert "cost: $" in err, err
    sent = served.upstream.received[-1].json()
    assert "data:image/png;base64," in str(sent["messages"]), "the image went out under its extension's type"
