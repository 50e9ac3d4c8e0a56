"""Built-in provider adapters, each a pluggy plugin loaded through the `tollway.providers` entry points."""
