"""The `tollway` command run as a real subprocess."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest
import tests.support as _root

ROOT = _root.ROOT


SUBPROCESS_TIMEOUT_S = 20


async def tollway(*args: str | Path, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tollway.service.cli", *map(str, args),
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
