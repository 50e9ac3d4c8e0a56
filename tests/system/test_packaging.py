"""What `pip install` puts into site-packages: one top-level package, `tollway`, and nothing of
the development tools. A second distribution that ships `service` or `providers` can no
longer overwrite (or be overwritten by) Tollway."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests import support


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(support.ROOT)],
                   check=True, capture_output=True, timeout=300)
    [built] = out.glob("tollway-*.whl")
    return zipfile.ZipFile(built)


def test_the_wheel_installs_one_top_level_package(wheel: zipfile.ZipFile):
    names = wheel.namelist()
    [top_level] = [n for n in names if n.endswith(".dist-info/top_level.txt")]
    assert wheel.read(top_level).decode().split() == ["tollway"]
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {"tollway"}


def test_the_wheel_carries_the_contract_the_seam_the_prices_and_py_typed(wheel: zipfile.ZipFile):
    names = set(wheel.namelist())
    for name in ("tollway/plugin.py", "tollway/py.typed", "tollway/v1/completion_pb2.py",
                 "tollway/service/billing/prices.toml", "tollway/service/cli/__main__.py",
                 "tollway/providers/anthropic.py"):
        assert name in names


def test_development_tools_stay_out_of_the_wheel(wheel: zipfile.ZipFile):
    assert not [n for n in wheel.namelist() if "generate" in n or "protogen" in n or n.startswith("tests/")]


def test_entry_points_name_the_namespaced_modules(wheel: zipfile.ZipFile):
    [entry_points] = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    text = wheel.read(entry_points).decode()
    assert "tollway = tollway.service.cli:main" in text
    for kind in ("mixrouter", "openai", "openai_compatible", "anthropic", "gemini"):
        assert f"{kind} = tollway.providers.{kind}" in text


def test_the_installed_package_exposes_no_service_or_providers_module(tmp_path: Path):
    """Outside the checkout (so the working directory is not on sys.path), as a user imports it."""
    script = ("import importlib.util, tollway.service, tollway.providers, tollway.plugin\n"
              "print(importlib.util.find_spec('service'), importlib.util.find_spec('providers'))\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                            timeout=60, check=True)
    assert result.stdout.split() == ["None", "None"]
