"""Benchmark: Tollway against a direct HTTP call to the same loopback upstream, in one run.

`python -m bench.run` starts an upstream stand-in and the gateway as subprocesses and
drives both from one load generator; see bench/RESULTS.md for the figures.
"""
