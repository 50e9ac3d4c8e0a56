"""The `tollway` command run as a real subprocess."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from pathlib import Path

import pytest
import tests.support as _root

ROOT = _root.ROOT


SUBPROCESS_TIMEOUT_S = 20


async def tollway(*args: str | Path, env: dict[str, str] | None = None,
                  wrapper: tuple[str, ...] = ()) -> tuple[int, str, str]:
    """wrapper: a command the CLI runs under, e.g. without_file_permission_bypass()."""
    process = await asyncio.create_subprocess_exec(
        *wrapper, sys.executable, "-m", "tollway.service.cli", *map(str, args),
        cwd=ROOT, env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), SUBPROCESS_TIMEOUT_S)
    except TimeoutError:
        process.kill()
        await process.wait()
        pytest.fail(f"tollway {' '.join(map(str, args))} did not exit within {SUBPROCESS_TIMEOUT_S}s")
    return process.returncode, out.decode(), err.decode()


def without_file_permission_bypass() -> tuple[str, ...]:
    """A wrapper under which file modes apply even to root (tests often run as root in CI
    containers, where chmod 000 would not stop a read); empty when not root."""
    if os.geteuid() != 0:
        return ()
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: file permissions cannot be made to apply")
    return (setpriv, "--bounding-set=-dac_override,-dac_read_search")
