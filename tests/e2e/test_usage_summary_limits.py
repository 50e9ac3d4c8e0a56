"""GetUsageSummary under hostile requests: label filters and groupings are bounded, refused
with INVALID_ARGUMENT naming the limit, and a ledger that does not answer is reported without
the database's path or address (that goes to the operator's log)."""

from __future__ import annotations

import logging
import shutil

import grpc
import pytest
from tollway.v1 import completion_pb2 as pb

from tests.support.ledger_calls import ALICE_KEY, ENVIRON, auth, gateway_config, ledger_path
from tests.support.upstream import FakeUpstream

Code = grpc.StatusCode


@pytest.fixture
async def gateway(start_client, upstream: FakeUpstream):
    return await start_client(gateway_config(upstream), ENVIRON)


async def _refusal(gateway, request: pb.GetUsageSummaryRequest) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gateway.stub.GetUsageSummary(request, timeout=10, metadata=auth(ALICE_KEY))
    return caught.value


@pytest.mark.parametrize("count", [17, 2000])
async def test_too_many_label_filters_are_invalid_argument_naming_the_limit(gateway, count):
    error = await _refusal(gateway, pb.GetUsageSummaryRequest(labels={f"k{i}": "v" for i in range(count)}))

    assert error.code() == Code.INVALID_ARGUMENT
    assert error.details() == f"labels: {count} label filters, at most 16 are allowed; filter on fewer labels"


@pytest.mark.parametrize("count", [17, 2000])
async def test_too_many_label_groupings_are_invalid_argument_naming_the_limit(gateway, count):
    error = await _refusal(gateway, pb.GetUsageSummaryRequest(
        group_by=[pb.USAGE_GROUPING_LABEL], group_by_label_keys=[f"k{i}" for i in range(count)]))

    assert error.code() == Code.INVALID_ARGUMENT
    assert error.details() == (f"group_by_label_keys: {count} label keys, at most 16 are allowed; "
                               "group by fewer labels")


@pytest.mark.parametrize("request_fields, message", [
    ({"labels": {"k" * 257: "v"}}, "labels: a key of 257 characters, at most 256 are allowed"),
    ({"group_by": [pb.USAGE_GROUPING_LABEL], "group_by_label_keys": ["k" * 300]},
     "group_by_label_keys: a key of 300 characters, at most 256 are allowed"),
    ({"labels": {"team": "v" * 1025}}, "labels: a value of 1025 characters, at most 1024 are allowed"),
    ({"model": "m" * 5_000_000}, "model: a value of 5000000 characters, at most 1024 are allowed"),
])
async def test_oversized_keys_and_values_are_invalid_argument_naming_the_limit(gateway, request_fields, message):
    error = await _refusal(gateway, pb.GetUsageSummaryRequest(**request_fields))

    assert error.code() == Code.INVALID_ARGUMENT
    assert error.details() == message


async def test_sixteen_label_filters_and_groupings_are_answered(gateway):
    labels = {f"k{i}": "v" for i in range(16)}
    answer = await gateway.stub.GetUsageSummary(
        pb.GetUsageSummaryRequest(labels=labels, group_by=[pb.USAGE_GROUPING_LABEL],
                                  group_by_label_keys=list(labels)), timeout=10, metadata=auth(ALICE_KEY))

    assert list(answer.rows) == []


async def test_an_unavailable_ledger_names_no_path_to_the_caller_and_its_cause_to_the_operator(gateway, caplog):
    path = ledger_path(gateway)
    # The database file gone and a directory in its place: every read fails to open it.
    for suffix in ("", "-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)
    path.mkdir()
    try:
        with caplog.at_level(logging.WARNING, logger="tollway.ledger"):
            error = await _refusal(gateway, pb.GetUsageSummaryRequest())
    finally:
        shutil.rmtree(path)

    assert error.code() == Code.UNAVAILABLE
    assert error.details() == "usage ledger unavailable; retry later"
    assert any(str(path) in r.getMessage() and "usage ledger unavailable" in r.getMessage() for r in caplog.records)

