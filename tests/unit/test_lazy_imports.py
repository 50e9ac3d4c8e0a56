"""Heavy libraries a gateway may not need stay unloaded until it does."""

from __future__ import annotations

import subprocess
import sys

from tests import support


def test_a_gateway_without_a_redis_never_loads_redis_py():
    # redis-py and hiredis cost a process about 12 MiB of RSS.
    code = ("import sys, tollway.service.gateway.server, tollway.service.quota, tollway.service.cli.main; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('redis', 'hiredis')))")
    found = subprocess.run([sys.executable, "-c", code], cwd=support.ROOT, capture_output=True, text=True, check=True)
    assert found.stdout.strip() == "[]"
