"""tollway-echo: a provider plugin written against Tollway's public plugin seam only.

It imports `tollway.plugin` and the wire contract `tollway.v1`, nothing else of Tollway, and
registers its kind through the `tollway_register_providers` hook.
Like every adapter it only translates: no sockets, no environment, no sleeping.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import httpx

from tollway.plugin import (
    AnyRequest,
    Capabilities,
    GatewayError,
    ProviderKind,
    ProviderSettings,
    ReportedUsage,
    ServerSentEvent,
    bad_upstream_body,
    hookimpl,
    normalize,
    upstream_http_error,
)
from tollway.v1 import completion_pb2 as pb

KIND = "echo"
ROLES = {pb.ROLE_SYSTEM: "system", pb.ROLE_USER: "user", pb.ROLE_ASSISTANT: "assistant"}

# Text only: the host refuses media parts before any network call.
CAPABILITIES = Capabilities(mime_types={})


def _body(provider: str, content: bytes) -> dict:
    try:
        data = json.loads(content)
    except ValueError:
        raise bad_upstream_body(provider, "a body that is not JSON") from None
    if not isinstance(data, dict):
        raise bad_upstream_body(provider, "JSON that is not an object")
    return data


def _usage(tokens: object, *, estimated: bool = False) -> pb.Usage:
    tokens = tokens if isinstance(tokens, dict) else {}
    return normalize(
        ReportedUsage(
            input_total=int(tokens.get("in", 0)),
            input_by_modality={"text": int(tokens.get("in", 0))},
            output_total=int(tokens.get("out", 0)),
            output_by_modality={"text": int(tokens.get("out", 0))},
            estimated=estimated,
        )
    )


class EchoStreamDecoder:
    def __init__(self, provider: str, model: str) -> None:
        self._provider = provider
        self._model = model
        self._output_bytes = 0
        self._tokens: dict | None = None
        self.finished = False

    def feed(self, event: ServerSentEvent) -> Iterable[pb.StreamCompleteResponse]:
        data = _body(self._provider, event.data.encode())
        if data.get("done"):
            self.finished = True
            self._tokens = data.get("tokens")
            return ()
        text = str(data.get("delta", ""))
        self._output_bytes += len(text.encode())
        return [pb.StreamCompleteResponse(delta=pb.TextDelta(choice_index=0, text=text))] if text else []

    def summary(self) -> pb.StreamSummary:
        summary = pb.StreamSummary(model=self._model, provider=self._provider)
        summary.finishes.append(pb.ChoiceFinish(index=0, finish_reason=pb.FINISH_REASON_STOP, raw_finish_reason="done"))
        if self._tokens is not None:  # none sent: the host estimates from output_bytes
            summary.usage.CopyFrom(_usage(self._tokens))
        return summary

    @property
    def output_bytes(self) -> int:
        return self._output_bytes


class EchoAdapter:
    def __init__(self, settings: ProviderSettings) -> None:
        self.settings = settings
        self.capabilities = CAPABILITIES

    def build_request(self, request: AnyRequest, model: str, *, stream: bool) -> httpx.Request:
        body: dict = {
            "model": model,
            "prompt": [
                {"role": ROLES[m.role], "text": "".join(p.text for p in m.parts)} for m in request.messages
            ],
            "stream": stream,
        }
        if request.HasField("max_tokens"):
            body["max_tokens"] = request.max_tokens
        headers = {"content-type": "application/json"}
        if self.settings.api_key:
            headers["x-echo-key"] = self.settings.api_key
        return httpx.Request("POST", f"{self.settings.base_url}/echo", headers=headers, content=json.dumps(body))

    def parse_response(self, response: httpx.Response, request: AnyRequest, model: str) -> pb.CompleteResponse:
        data = _body(self.settings.name, response.content)
        if not isinstance(data.get("reply"), str):
            raise bad_upstream_body(self.settings.name, "JSON without a reply")
        return pb.CompleteResponse(
            model=str(data.get("model") or model),
            provider=self.settings.name,
            choices=[
                pb.Choice(
                    index=0,
                    message=pb.Message(role=pb.ROLE_ASSISTANT, parts=[pb.Part(text=data["reply"])]),
                    finish_reason=pb.FINISH_REASON_STOP,
                    raw_finish_reason="done",
                )
            ],
            usage=_usage(data.get("tokens")),
        )

    def stream_decoder(self, request: AnyRequest, model: str) -> EchoStreamDecoder:
        return EchoStreamDecoder(self.settings.name, model)

    def parse_error(self, response: httpx.Response) -> GatewayError:
        try:
            problem = json.loads(response.content).get("problem")
        except (ValueError, AttributeError):
            problem = None
        return upstream_http_error(
            self.settings.name, response.status_code, response.headers.get("retry-after"), problem,
            secrets=(self.settings.api_key,),
        )


@hookimpl
def tollway_register_providers(register):
    register(
        ProviderKind(
            name=KIND,
            create=EchoAdapter,
            # No public echo service exists: the operator always names the base URL.
            default_base_url=None,
            default_api_key_env="ECHO_API_KEY",
            requires_api_key=False,
        )
    )
