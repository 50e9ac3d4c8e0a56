"""System tools some suites drive (Prometheus, Go): found on PATH, or the test is skipped
with the package that provides them. Under CI (CI set) a missing tool fails instead, so a
green CI run never hides a suite that did not run."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import NoReturn

import pytest


def require_tool(name: str, debian_package: str) -> str:
    """The tool's path; skip (fail under CI) when it is not installed."""
    path = shutil.which(name)
    if path:
        return path
    _missing(f"{name} is not installed (Debian package {debian_package})")


def require_path(path: Path, debian_package: str) -> Path:
    """A file a Debian package installs (Go sources, say); skip (fail under CI) without it."""
    if path.exists():
        return path
    _missing(f"{path} is missing (Debian package {debian_package})")


def _missing(reason: str) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(reason + "; CI must install it (.ci/run does)", pytrace=False)
    pytest.skip(reason)
