"""`tollway serve` traced by the standard OTEL_* variables alone, as a Kubernetes pod would be
configured: its spans reach the collector, the last ones when SIGTERM stops it."""

from __future__ import annotations

from tollway.v1 import completion_pb2 as pb

from tests.support.otlp import SERVER, Collector
from tests.support.served import NORMAL_MODEL, Served
from tests.support.upstream import FakeUpstream


async def test_serve_traces_by_the_otel_variables_and_flushes_on_sigterm(tmp_path):
    collector = await Collector().start()
    upstream = await FakeUpstream().start()
    served = Served(tmp_path, upstream, "tracing")
    try:
        await served.start(env={
            "OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint, "OTEL_SERVICE_NAME": "tollway-eu",
            "OTEL_RESOURCE_ATTRIBUTES": "k8s.pod.name=tollway-0,k8s.namespace.name=llm",
            "OTEL_TRACES_SAMPLER": "parentbased_always_on", "OTEL_SDK_DISABLED": "false",
        })
        trace_id, span_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
        call = served.stub().Complete(_request(), metadata=(*served.auth(), ("traceparent",
                                                                            f"00-{trace_id}-{span_id}-01")),
                                      timeout=10)
        await call
    finally:
        # SIGTERM: the gateway drains, then sends the spans its batch processor still holds.
        await served.stop()
        await upstream.stop()
    try:
        assert served.proc is not None and served.proc.returncode == 0
        # Start-up calls (3) and ours, each an RPC span and an attempt span.
        spans = await collector.wait_for(8)
    finally:
        await collector.stop()
    ours = [s for s in spans if s.trace_id == trace_id]
    rpc = next(s for s in ours if s.kind == SERVER)
    assert (rpc.name, rpc.parent_span_id) == ("tollway.v1.Completion/Complete", span_id)
    assert rpc.attributes["tollway.caller"] == "alice"
    assert [s.name for s in ours if s.parent_span_id == rpc.span_id] == ["chat normal-check"]
    assert rpc.resource["service.name"] == "tollway-eu"
    assert (rpc.resource["k8s.pod.name"], rpc.resource["k8s.namespace.name"]) == ("tollway-0", "llm")
    assert (f"tracing: OTLP/gRPC to {collector.endpoint} (from OTEL_EXPORTER_OTLP_ENDPOINT), service 'tollway-eu' "
            "(from OTEL_SERVICE_NAME), parent-based ratio 1 (from OTEL_TRACES_SAMPLER), content not captured"
            ) in served.log_text()
    served.assert_no_secrets([repr(s.attributes) + repr(s.events) + s.status_message for s in spans])


def _request() -> pb.CompleteRequest:
    return pb.CompleteRequest(model=NORMAL_MODEL, messages=[pb.Message(role=pb.ROLE_USER,
                                                                       parts=[pb.Part(text="ping")])])
