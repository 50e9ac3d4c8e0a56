"""Tollway: a gRPC gateway for LLM completions.

Two modules here are public, and both are contracts: `tollway.v1` (the generated stubs of the
wire contract, protos/tollway/v1/*.proto) and `tollway.plugin` (what a provider plugin may
use). Everything under `tollway.service` and `tollway.providers` is the implementation.
"""

__version__ = "0.1.0"
