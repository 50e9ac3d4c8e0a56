"""The `tollway` command: serve, complete, usage, keys."""

from .main import main

__all__ = ["main"]
