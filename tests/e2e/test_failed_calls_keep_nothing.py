"""A refused call leaves nothing behind: its status is set and the handler returns, so grpc.aio
holds no exception whose traceback keeps the handler's frames, and the request in them, alive
(a refused 20 MB request stayed in memory until another call failed)."""

from __future__ import annotations

import gc

import grpc
import pytest
from tollway.v1 import completion_pb2 as pb

from tests.support.gateway import MIXROUTER_TEST_KEY, mixrouter_config
from tests.support.ledger_calls import request_id_of

Code = grpc.StatusCode
BIG = 2 * 1024 * 1024


def requests_alive() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects()
               if isinstance(o, (pb.CompleteRequest, pb.StreamCompleteRequest)) and len(o.labels.get("team", "")) >= BIG)


@pytest.mark.parametrize("rpc", ["Complete", "StreamComplete"])
async def test_a_refused_request_is_not_kept(start_client, upstream, rpc):
    client = await start_client(mixrouter_config(upstream), {"MIXROUTER_API_KEY": MIXROUTER_TEST_KEY})
    kind = pb.CompleteRequest if rpc == "Complete" else pb.StreamCompleteRequest
    message = kind(model="mixrouter/gpt-4o", labels={"team": "x" * BIG},
                   messages=[pb.Message(role=pb.ROLE_USER, parts=[pb.Part(text="hi")])])
    call = getattr(client.stub, rpc)(message, timeout=10)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        if rpc == "Complete":
            await call
        else:
            async for _ in call:
                pass
    assert err.value.code() == Code.INVALID_ARGUMENT
    assert err.value.details() == f"labels['team']: is {BIG} characters; the limit is 256 (limits.max_label_value_chars)"
    request_id_of(err.value.trailing_metadata())  # the request id still arrives
    del message, call, err

    assert requests_alive() == 0
