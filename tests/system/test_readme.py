"""The README's commands and config example are what the project really runs and accepts."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from tollway.service.config.loader import parse_config
from tollway.service.gateway.server import build_state
from tests import support

ROOT = support.ROOT
README = (ROOT / "README.md").read_text(encoding="utf-8")


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
    # The example's caller hash is elided; any 64 hex digits stand for it.
    raw["callers"]["search-team"]["key_sha256"] = "0" * 64
    keys = {"MIXROUTER_API_KEY": "tw-test-r", "OPENAI_KEY_A": "tw-test-a", "OPENAI_KEY_B": "tw-test-b",
            "GEMINI_API_KEY": "tw-test-g", "ANTHROPIC_API_KEY": "tw-test-c"}
    state = build_state(parse_config(raw), keys)
    assert set(state.registry.providers) == {"mixrouter", "openai", "gemini", "local", "anthropic"}
    assert [t.provider for t in state.registry.routes["fast"].targets] == ["mixrouter", "gemini", "openai"]


def test_every_config_table_the_loader_knows_is_documented():
    for table in ("[server]", "[plugins]", "[providers.", "[media]", "[routing]", "[routing.breaker]",
                  "[[routes]]", "[callers.", "[ledger]", "[[prices]]"):
        assert table in README, table
    assert re.search(r"`tollway keys new", README) and re.search(r"`?tollway usage", README)
