"""mypy in strict mode over everything that installs as `tollway`, clean.

The folders (service/, providers/, protos/tollway/) install under one package by a
package-dir mapping that mypy cannot follow, so the check runs over a tree of links laid
out the way `pip install` lays the package out.
"""

from __future__ import annotations

from pathlib import Path

from mypy import api

from tests import support

# Installed name -> where it lives in the repository.
LAYOUT = {
    "tollway/__init__.py": "protos/tollway/__init__.py",
    "tollway/plugin.py": "protos/tollway/plugin.py",
    "tollway/py.typed": "protos/tollway/py.typed",
    "tollway/v1": "protos/tollway/v1",
    "tollway/service": "service",
    "tollway/providers": "providers",
}


def installed_tree(root: Path) -> Path:
    for name, source in LAYOUT.items():
        link = root / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(support.ROOT / source)
    return root


def test_mypy_strict_is_clean(tmp_path: Path, monkeypatch):
    tree = installed_tree(tmp_path / "tree")
    monkeypatch.chdir(tree)
    stdout, stderr, status = api.run([
        "--config-file", str(support.ROOT / "pyproject.toml"),
        "--cache-dir", str(tmp_path / "cache"),
        "-p", "tollway",
    ])
    assert status == 0, stdout + stderr
