"""Helpers the tests share: loopback upstreams, payloads, gateways; no tests here."""

from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent
ROOT = TESTS.parent
FIXTURES = TESTS / "fixtures"
