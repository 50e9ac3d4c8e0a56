"""The README's commands and config examples are what the project really runs and accepts."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import grpc
import pytest

from tollway.service.config.loader import load_config, parse_config
from tollway.service.gateway.server import build_state, start_gateway
from tollway.v1 import completion_pb2 as pb
from tollway.v1 import completion_pb2_grpc as pb_grpc
from tests import support

ROOT = support.ROOT
README = (ROOT / "README.md").read_text(encoding="utf-8")
# Stand-ins for every key variable the examples name.
EXAMPLE_KEYS = {"MIXROUTER_API_KEY": "tw-test-r", "OPENAI_KEY_A": "tw-test-a", "OPENAI_KEY_B": "tw-test-b",
                "GEMINI_API_KEY": "tw-test-g", "ANTHROPIC_API_KEY": "tw-test-c", "OPENAI_API_KEY": "tw-test-o"}


def toml_blocks() -> list[tuple[int, str]]:
    """Every ```toml block of the README with the line it starts on."""
    return [(README[:m.start()].count("\n") + 1, m.group(1))
            for m in re.finditer(r"^```toml\n(.*?)^```", README, re.S | re.M)]


def config_blocks() -> list[tuple[int, str]]:
    """The blocks that are gateway config: all but a plugin's pyproject.toml (a [project] table)."""
    return [(line, text) for line, text in toml_blocks() if "project" not in tomllib.loads(text)]


def by_line(blocks: list[tuple[int, str]]) -> dict[str, str]:
    return {f"README.md line {line}": text for line, text in blocks}


CONFIGS = by_line(config_blocks())
BIGGEST = max(CONFIGS.values(), key=len)


def _fenced_after(heading: str, lang: str) -> str:
    section = README[README.index(heading):]
    return section.split(f"```{lang}\n", 1)[1].split("```", 1)[0]


def test_ci_runs_exactly_the_readme_test_command():
    command = _fenced_after("## Run it", "sh").strip()  # the first block: install and start
    test_command = README[README.index("Install and run the tests"):].split("```sh\n", 1)[1].split("```")[0].strip()
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert command.endswith("tollway serve")
    assert test_command in ci.splitlines()


def test_the_configuration_example_builds_as_written():
    raw = tomllib.loads(_fenced_after("## Configuration", "toml"))
    state = build_state(parse_config(raw), EXAMPLE_KEYS)
    assert set(state.registry.providers) == {"mixrouter", "openai", "gemini", "local", "anthropic"}
    assert [t.provider for t in state.registry.routes["fast"].targets] == ["mixrouter", "gemini", "openai"]


def test_the_readme_has_config_examples_to_check():
    assert len(CONFIGS) >= 4
    assert BIGGEST == _fenced_after("## Configuration", "toml")


@pytest.mark.parametrize("text", list(CONFIGS.values()), ids=list(CONFIGS))
def test_every_config_example_loads_verbatim(text: str, tmp_path: Path):
    """Each block, copied into a file as it stands (fragments too), loads and builds a registry:
    no placeholder to fill in, no option a provider kind refuses."""
    path = tmp_path / "tollway.toml"
    path.write_text(text, encoding="utf-8")
    config = load_config(path, environ={})
    build_state(config, EXAMPLE_KEYS)
    # Copied by a user without root, an absolute path such as /var/lib/... cannot be created.
    for place in (config.ledger.path, config.ledger.journal_dir):
        assert place is None or not Path(place).is_absolute(), f"an example ledger path needs root: {place}"


@pytest.mark.parametrize("text", list(by_line(toml_blocks()).values()), ids=list(by_line(toml_blocks())))
def test_every_toml_block_is_toml(text: str):
    tomllib.loads(text)


def test_the_plugin_pyproject_example_names_the_entry_point_group_tollway_loads():
    [example] = [tomllib.loads(text) for _, text in toml_blocks() if "project" in tomllib.loads(text)]
    ours = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert set(example["project"]["entry-points"]) == {"tollway.providers"}
    assert "tollway.providers" in ours["project"]["entry-points"]


async def test_a_gateway_serves_on_the_biggest_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Started as a new user would: the example as written, its ledger in the user's state
    directory (no root needed), only the port left to the system."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    path = tmp_path / "tollway.toml"
    path.write_text(BIGGEST, encoding="utf-8")
    gateway = await start_gateway(load_config(path, environ={}), environ=EXAMPLE_KEYS, listen="127.0.0.1:0")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
            stub = pb_grpc.CompletionStub(channel)  # type: ignore[no-untyped-call]
            # The example configures a caller: a call without its key is refused, by name.
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.ListModels(pb.ListModelsRequest(), timeout=10)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert caught.value.details() == "missing caller key: send metadata 'authorization: Bearer <key>'"
    finally:
        await gateway.stop(grace=0)
    assert (tmp_path / "state" / "tollway" / "ledger.sqlite3").exists()


def test_every_config_table_the_loader_knows_is_documented():
    from tollway.service.config.loader import TOP_LEVEL_TABLES

    # Tables of tables are documented by an entry ([providers.x]); arrays of tables as [[x]].
    spelled = {"providers": "[providers.", "callers": "[callers.", "routes": "[[routes]]", "prices": "[[prices]]"}
    for table in sorted(TOP_LEVEL_TABLES):
        heading = spelled.get(table, f"[{table}]")
        assert heading in README, heading
    for table in ("[routing.breaker]", "[server.tls]"):
        assert table in README, table
    assert re.search(r"`tollway keys new", README) and re.search(r"`?tollway usage", README)
