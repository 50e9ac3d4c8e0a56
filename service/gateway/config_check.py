"""Check a config file as a reload reads it (the TOML, then the plugins and the registry),
for the supervisor of `tollway serve --workers N`, which must not load gRPC itself.

    python -m tollway.service.gateway.config_check [--config FILE]

Exit 0 with a JSON line of the settings the supervisor reads at start-up ({"workers": ...}),
or exit 2 with the reason on stdout, as the reload of a single process would log it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from tollway.service.config.loader import ConfigError, load_config
from tollway.service.gateway.server import build_state
from tollway.service.gateway.worker import resolve_workers
from tollway.service.plugins.loader import PluginError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tollway.service.gateway.config_check")
    parser.add_argument("--config")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, os.environ)
        build_state(config, os.environ)
    except (ConfigError, PluginError, OSError) as exc:
        print(exc)
        return 2
    except Exception as exc:  # whatever else a bad file trips over, as Gateway.reload words it
        print(f"{type(exc).__name__}: {exc}")
        return 2
    print(json.dumps({"workers": resolve_workers(config.server.workers)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
