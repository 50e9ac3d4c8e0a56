"""Retry-After as the router believes it: finite, non-negative figures only."""

from __future__ import annotations

import pytest
from tollway.service.errors import parse_retry_after
from tollway.service.routing.routes import RoutingPolicy, parse_routing


@pytest.mark.parametrize(("header", "seconds"), [("7", 7.0), (" 1.5 ", 1.5), ("0", 0.0), ("99999999999", 99999999999.0)])
def test_delta_seconds_are_read(header, seconds):
    assert parse_retry_after(header) == seconds


@pytest.mark.parametrize("header", ["1e400", "inf", "-inf", "nan", "-5", "soon", "", None,
                                    "Fri, 31 Dec 99999 23:59:59 GMT"])
def test_figures_that_are_no_advice_are_ignored(header):
    """1e400 is infinite as a float: believed, it cooled a key forever and gave UNKNOWN."""
    assert parse_retry_after(header) is None


def test_an_http_date_in_the_past_means_now():
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


def test_the_router_believes_at_most_max_retry_after_s():
    policy = parse_routing({"max_retry_after_s": 30})
    assert policy.capped_retry_after(99999999999.0) == 30
    assert policy.capped_retry_after(7.0) == 7.0
    assert policy.capped_retry_after(None) is None
    assert RoutingPolicy().max_retry_after_s == 300.0


@pytest.mark.parametrize("value", [-1, "300", True])
def test_max_retry_after_s_must_be_a_number(value):
    with pytest.raises(ValueError, match=r"^routing.max_retry_after_s must be a number >= 0$"):
        parse_routing({"max_retry_after_s": value})
