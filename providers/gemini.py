"""Google Gemini API (v1beta): generateContent and streamGenerateContent over SSE.

The key goes in the `x-goog-api-key` header, never in the URL, so it cannot reach an
access log. Media goes as `inline_data` (bytes) or `file_data` (a URI Gemini resolves
itself: its own Files API and YouTube); every other web URL is fetched and inlined by
the engine before the request reaches this module. Pure: no IO.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import quote

import httpx
import orjson
from google.protobuf import timestamp_pb2
from tollway.plugin import (
    AUDIO,
    DOCUMENT,
    IMAGE,
    VIDEO,
    AnyRequest,
    Capabilities,
    GatewayError,
    ProviderKind,
    ProviderSettings,
    ReportedUsage,
    ServerSentEvent,
    bad_upstream_body,
    choice_finishes,
    hookimpl,
    invalid_argument,
    json_object,
    normalize,
    stream_usage,
    upstream_http_error,
)
from tollway.v1 import completion_pb2 as pb

W = pb.UsageWarning

DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com/v1beta"
USER_AGENT = "tollway/0.1"

# URIs Gemini fetches itself. Files API URIs are always on Google's host, whatever
# base_url points at (a proxy still forwards them to the same Files API).
FILES_API_PREFIX = "https://generativelanguage.googleapis.com/v1beta/files/"
YOUTUBE_PREFIXES = (
    "https://www.youtube.com/watch?v=",
    "https://youtube.com/watch?v=",
    "https://m.youtube.com/watch?v=",
    "https://youtu.be/",
)

# Gemini documents its own spelling for some types; sniffers and servers use the IANA
# names on the left. Both are accepted and the documented spelling is sent.
GEMINI_SPELLING = {
    "audio/mpeg": "audio/mp3",
    "audio/x-aiff": "audio/aiff",
    "video/quicktime": "video/mov",
    "video/x-msvideo": "video/avi",
    "video/x-ms-wmv": "video/wmv",
}

CAPABILITIES = Capabilities(
    # The types listed in Gemini's image, audio, video and document understanding guides.
    mime_types={
        IMAGE: frozenset({"image/png", "image/jpeg", "image/webp", "image/heic", "image/heif"}),
        AUDIO: frozenset({"audio/wav", "audio/mp3", "audio/aiff", "audio/aac", "audio/ogg", "audio/flac",
                          "audio/mpeg", "audio/x-aiff"}),
        VIDEO: frozenset({"video/mp4", "video/mpeg", "video/mov", "video/avi", "video/x-flv", "video/mpg",
                          "video/webm", "video/wmv", "video/3gpp", "video/quicktime", "video/x-msvideo",
                          "video/x-ms-wmv"}),
        DOCUMENT: frozenset({"application/pdf", "text/plain"}),
    },
    url_modalities=frozenset(),
    url_prefixes={
        IMAGE: (FILES_API_PREFIX,),
        AUDIO: (FILES_API_PREFIX,),
        VIDEO: (FILES_API_PREFIX, *YOUTUBE_PREFIXES),
        DOCUMENT: (FILES_API_PREFIX,),
    },
)

# Candidate.FinishReason, every value of the v1beta enum, each mapped on purpose.
FINISH_REASONS = {
    "STOP": pb.FINISH_REASON_STOP,  # natural stop or a stop sequence
    "MAX_TOKENS": pb.FINISH_REASON_LENGTH,
    # The provider withheld or cut the content for what it says: a content filter.
    "SAFETY": pb.FINISH_REASON_CONTENT_FILTER,
    "RECITATION": pb.FINISH_REASON_CONTENT_FILTER,
    "BLOCKLIST": pb.FINISH_REASON_CONTENT_FILTER,
    "PROHIBITED_CONTENT": pb.FINISH_REASON_CONTENT_FILTER,
    "SPII": pb.FINISH_REASON_CONTENT_FILTER,
    "IMAGE_SAFETY": pb.FINISH_REASON_CONTENT_FILTER,
    "IMAGE_PROHIBITED_CONTENT": pb.FINISH_REASON_CONTENT_FILTER,
    "IMAGE_RECITATION": pb.FINISH_REASON_CONTENT_FILTER,
    # "flagged for using an unsupported language": the candidate was flagged and cut
    # like the filters above, so a caller handles it the same way.
    "LANGUAGE": pb.FINISH_REASON_CONTENT_FILTER,
    # Failures and tool-loop stops: the gateway sends no tools, so none of these is a
    # tool call the caller could act on.
    "MALFORMED_FUNCTION_CALL": pb.FINISH_REASON_OTHER,
    "UNEXPECTED_TOOL_CALL": pb.FINISH_REASON_OTHER,
    "TOO_MANY_TOOL_CALLS": pb.FINISH_REASON_OTHER,
    "IMAGE_OTHER": pb.FINISH_REASON_OTHER,
    "NO_IMAGE": pb.FINISH_REASON_OTHER,
    "OTHER": pb.FINISH_REASON_OTHER,
    "FINISH_REASON_UNSPECIFIED": pb.FINISH_REASON_OTHER,
}

# ModalityTokenCount.modality -> usage bucket names.
MODALITIES = {"TEXT": "text", "IMAGE": "image", "AUDIO": "audio", "VIDEO": "video", "DOCUMENT": "document"}

MAX_STOP_SEQUENCES = 5
INT32_MAX = 2**31 - 1


# -- request -----------------------------------------------------------------------------


def build_body(request: AnyRequest, provider: str) -> dict[str, Any]:
    system_parts: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    for i, message in enumerate(request.messages):
        if message.role == pb.ROLE_SYSTEM:
            # Gemini has one system instruction; system turns are joined into it in order.
            for j, part in enumerate(message.parts):
                if part.WhichOneof("content") != "text":
                    raise invalid_argument(f"messages[{i}].parts[{j}]", "system messages take text parts only")
                system_parts.append({"text": part.text})
            continue
        role = "model" if message.role == pb.ROLE_ASSISTANT else "user"
        contents.append({"role": role, "parts": [_part(i, j, p) for j, p in enumerate(message.parts)]})
    if not contents:
        raise invalid_argument("messages", f'provider "{provider}" needs at least one user or assistant message')
    body: dict[str, Any] = {"contents": contents}
    if system_parts:
        body["system_instruction"] = {"parts": system_parts}
    config = _generation_config(request, provider)
    if config:
        body["generationConfig"] = config
    return body


def _generation_config(request: AnyRequest, provider: str) -> dict[str, Any]:
    config: dict[str, Any] = {}
    if request.HasField("max_tokens"):
        config["maxOutputTokens"] = request.max_tokens
    if request.HasField("temperature"):
        config["temperature"] = request.temperature
    if request.HasField("top_p"):
        config["topP"] = request.top_p
    if request.stop:
        if len(request.stop) > MAX_STOP_SEQUENCES:
            raise invalid_argument("stop", f'provider "{provider}" accepts at most {MAX_STOP_SEQUENCES} stop sequences')
        config["stopSequences"] = list(request.stop)
    if request.HasField("seed"):
        if not -INT32_MAX - 1 <= request.seed <= INT32_MAX:
            raise invalid_argument("seed", f'provider "{provider}" takes a 32-bit seed')
        config["seed"] = request.seed
    return config


def _part(i: int, j: int, part: pb.Part) -> dict[str, Any]:
    kind = part.WhichOneof("content")
    if kind == "text":
        return {"text": part.text}
    media: pb.Media = getattr(part, kind)
    mime = gemini_mime_type(media.mime_type)
    if media.WhichOneof("source") == "data":
        return {"inline_data": {"mime_type": mime, "data": base64.b64encode(media.data).decode("ascii")}}
    file_data = {"file_uri": media.url}
    if mime:
        file_data = {"mime_type": mime, **file_data}
    elif not media.url.startswith((FILES_API_PREFIX, *YOUTUBE_PREFIXES)):
        # FileData.mime_type is optional only because Gemini knows the type of its own
        # files (recorded at upload) and of YouTube videos; for any other URI it must be said.
        raise invalid_argument(f"messages[{i}].parts[{j}].{kind}.mime_type", "is required for this URL")
    return {"file_data": file_data}


def gemini_mime_type(mime: str) -> str:
    mime = mime.lower()
    return GEMINI_SPELLING.get(mime, mime)


@functools.lru_cache(maxsize=256)
def model_url(base_url: str, model: str, stream: bool) -> httpx.URL:
    """The URL of one model's generate call, parsed once per model rather than per request
    (parsing took about half of building each request); the bound keeps callers' model
    names from growing it."""
    # "gemini/models/gemini-2.5-flash" and "gemini/gemini-2.5-flash" name the same model;
    # quoting keeps a model name from adding path segments or a query.
    name = quote(model.removeprefix("models/"), safe="-._~")
    method = "streamGenerateContent" if stream else "generateContent"
    url = f"{base_url}/models/{name}:{method}"
    # As httpx.Request builds it: `params` replaces any query, so it is passed only for streams.
    return httpx.URL(url, params={"alt": "sse"}) if stream else httpx.URL(url)


def build_http_request(settings: ProviderSettings, model: str, body: Mapping[str, Any], *,
                       stream: bool) -> httpx.Request:
    headers = {
        "content-type": "application/json",
        "accept": "text/event-stream" if stream else "application/json",
        "user-agent": USER_AGENT,
    }
    if settings.api_key:
        headers["x-goog-api-key"] = settings.api_key
    return httpx.Request("POST", model_url(settings.base_url, model, stream), headers=headers,
                         content=orjson.dumps(body))


# -- response ----------------------------------------------------------------------------


def finish_reason(raw: str | None) -> pb.FinishReason:
    if not raw:
        return pb.FINISH_REASON_UNSPECIFIED
    # A value added to the enum after this table was written is still a stop.
    return FINISH_REASONS.get(raw, pb.FINISH_REASON_OTHER)


def candidate_text(candidate: Mapping[str, Any]) -> str:
    """The visible text of a candidate. Thought summaries (`thought: true`) are reasoning,
    not answer text: their tokens are billed as reasoning and the text is not returned."""
    parts = (candidate.get("content") or {}).get("parts") or ()
    return "".join(
        p["text"] for p in parts if isinstance(p, dict) and isinstance(p.get("text"), str) and not p.get("thought")
    )


def refuse_blocked_prompt(provider: str, data: Mapping[str, Any]) -> None:
    """A prompt Gemini blocked comes back as HTTP 200 with promptFeedback and no candidates.

    It becomes INVALID_ARGUMENT, not an empty OK nor a CONTENT_FILTER finish: there is no
    candidate to finish (one would have to be invented), the caller must change the
    request before a retry can succeed, and OpenAI-format providers refuse a flagged
    prompt with HTTP 400, which the error table also maps to INVALID_ARGUMENT, so
    swapping providers keeps the status.
    """
    feedback = data.get("promptFeedback")
    if data.get("candidates") or not isinstance(feedback, dict):
        return
    reason = feedback.get("blockReason")
    detail = feedback.get("blockReasonMessage")
    if not reason and not detail:
        return
    why = f"blockReason {reason}" if reason else "no blockReason"
    if detail:
        why += f": {detail}"
    raise invalid_argument("messages", f'provider "{provider}" blocked the prompt ({why})')


def in_body_error(provider: str, error: Any, secrets: Iterable[str | None]) -> GatewayError:
    """An error object inside a 2xx body (a stream can end with one)."""
    status = error.get("code") if isinstance(error, dict) else None
    http_status = status if isinstance(status, int) and 400 <= status <= 599 else 502
    return upstream_http_error(provider, http_status, None, _error_message(error), secrets=secrets)


def parse_generate_content(provider: str, body: bytes, requested_model: str,
                           secrets: Iterable[str | None] = ()) -> pb.CompleteResponse:
    data = json_object(provider, body, "a body")
    if "error" in data:
        raise in_body_error(provider, data["error"], secrets)
    refuse_blocked_prompt(provider, data)
    candidates = data.get("candidates")
    if not isinstance(candidates, list) or not candidates:
        raise bad_upstream_body(provider, "a response without candidates")
    out = pb.CompleteResponse(id=str(data.get("responseId") or ""),
                              model=str(data.get("modelVersion") or requested_model), provider=provider)
    _set_created(out.created, data.get("createTime"))
    for position, candidate in enumerate(candidates):
        text = candidate_text(candidate)
        raw = candidate.get("finishReason") or ""
        out.choices.append(
            pb.Choice(
                index=int(candidate.get("index", position)),
                message=pb.Message(role=pb.ROLE_ASSISTANT, parts=[pb.Part(text=text)] if text else []),
                finish_reason=finish_reason(raw),
                raw_finish_reason=raw,
            )
        )
    usage = data.get("usageMetadata")
    if isinstance(usage, dict):
        out.usage.CopyFrom(normalize(reported_usage(usage)))
    return out


def _set_created(timestamp: timestamp_pb2.Timestamp, value: Any) -> None:
    # Vertex-style createTime (RFC 3339); the Gemini API itself does not send one.
    if isinstance(value, str) and value:
        try:
            timestamp.FromJsonString(value)
        except ValueError:
            timestamp.Clear()


# -- errors ------------------------------------------------------------------------------


def _error_message(error: Any) -> str | None:
    if not isinstance(error, dict):
        return str(error) if error else None
    message = error.get("message")
    status = error.get("status")
    if message and status:
        return f"{status}: {message}"
    return message or status or None


def _error_details(error: Any) -> list[dict[str, Any]]:
    details = error.get("details") if isinstance(error, dict) else None
    return [d for d in details if isinstance(d, dict)] if isinstance(details, list) else []


def _retry_delay(details: list[dict[str, Any]]) -> str | None:
    """google.rpc.RetryInfo.retryDelay ("26s", "1.2036s") as Retry-After seconds."""
    for detail in details:
        if str(detail.get("@type", "")).endswith("google.rpc.RetryInfo"):
            delay = detail.get("retryDelay")
            if isinstance(delay, str) and delay.endswith("s"):
                return delay[:-1]
    return None


def _error_reason(details: list[dict[str, Any]]) -> str:
    for detail in details:
        if str(detail.get("@type", "")).endswith("google.rpc.ErrorInfo"):
            return str(detail.get("reason") or "")
    return ""


def parse_error(settings: ProviderSettings, response: httpx.Response) -> GatewayError:
    """{"error": {"code", "message", "status", "details"}} -> the status table, message kept."""
    try:
        data = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return upstream_http_error(settings.name, response.status_code, response.headers.get("retry-after"),
                                   "the body is not JSON (an HTML error page or a proxy's answer)",
                                   secrets=(settings.api_key,))
    if isinstance(data, list) and data:  # some Google front ends wrap the error in a list
        data = data[0]
    error = data.get("error") if isinstance(data, dict) else None
    details = _error_details(error)
    reason = _error_reason(details)
    if response.status_code == 400 and reason.startswith("API_KEY_"):
        # Gemini answers a bad key with 400 INVALID_ARGUMENT; the caller's request is
        # fine, the gateway's credentials are not, so it is treated as the 401 it means.
        denied = upstream_http_error(settings.name, 401, None, None)
        return dataclasses.replace(
            denied, message=f"{settings.name}: provider rejected the gateway's credentials (HTTP 400 {reason})",
            http_status=400,
        )
    retry_after = response.headers.get("retry-after") or _retry_delay(details)
    return upstream_http_error(settings.name, response.status_code, retry_after, _error_message(error),
                               secrets=(settings.api_key,))


# -- usage -------------------------------------------------------------------------------


def _count(mapping: Mapping[str, Any], key: str) -> int:
    value = mapping.get(key)
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else 0


def _by_modality(*lists: Any) -> dict[str, int]:
    """ModalityTokenCount lists summed per bucket; unknown modalities are left out (they
    end up unattributed, never guessed)."""
    out: dict[str, int] = {}
    for entries in lists:
        for entry in entries if isinstance(entries, list) else ():
            if not isinstance(entry, dict):
                continue
            name = MODALITIES.get(str(entry.get("modality", "")))
            if name:
                out[name] = out.get(name, 0) + _count(entry, "tokenCount")
    return out


def reported_usage(u: Mapping[str, Any]) -> ReportedUsage:
    """usageMetadata in the provider-neutral sense (USAGE.md, Gemini rules)."""
    prompt = _count(u, "promptTokenCount")  # includes cachedContentTokenCount
    tool_use = _count(u, "toolUsePromptTokenCount")  # outside promptTokenCount
    candidates = _count(u, "candidatesTokenCount")  # excludes thoughtsTokenCount
    thoughts = _count(u, "thoughtsTokenCount")
    total = u.get("totalTokenCount")
    total = int(total) if isinstance(total, int) and not isinstance(total, bool) else None

    r = ReportedUsage(
        input_total=prompt + tool_use,
        input_by_modality=_by_modality(u.get("promptTokensDetails"), u.get("toolUsePromptTokensDetails")),
        cache_read=_count(u, "cachedContentTokenCount"),
        # An empty or absent list is no breakdown: cache reads then come out in rule-4 order.
        cache_read_by_modality=_by_modality(u.get("cacheTokensDetails")) if u.get("cacheTokensDetails") else None,
        reasoning=thoughts,
        provider_total=total,
        tool_use_prompt_tokens=tool_use if "toolUsePromptTokenCount" in u else None,
    )
    output_by_modality = _by_modality(u.get("candidatesTokensDetails"))
    if thoughts and total is not None and total == prompt + tool_use + candidates:
        # The provider's own total proves the thoughts are already inside the candidates.
        r.output_total = candidates
        r.warnings.add(W.USAGE_WARNING_THOUGHTS_INCLUDED_IN_CANDIDATES)
        if sum(output_by_modality.values()) == candidates and output_by_modality.get("text", 0) >= thoughts:
            # Then a breakdown that covers all candidates counts the thoughts as text.
            output_by_modality["text"] -= thoughts
    else:
        r.output_total = candidates + thoughts
    r.output_by_modality = output_by_modality
    return r


# -- stream ------------------------------------------------------------------------------


class GeminiStreamDecoder:
    """streamGenerateContent?alt=sse events -> text deltas and a final summary.

    Every event is a whole GenerateContentResponse; usageMetadata is cumulative, so the
    last one wins. There is no terminal event: the stream is finished once every
    candidate seen has a finishReason, and one that ends before that was cut off.
    """

    def __init__(self, provider: str, requested_model: str, secrets: Iterable[str | None]) -> None:
        self._provider = provider
        self._secrets = tuple(secrets)
        self._output_bytes = 0
        self._id = ""
        self._model = requested_model
        self._created = timestamp_pb2.Timestamp()
        self._seen: set[int] = set()
        self._finishes: dict[int, str] = {}
        self._usage: Mapping[str, Any] | None = None

    @property
    def finished(self) -> bool:
        return bool(self._finishes) and self._seen <= set(self._finishes)

    def feed(self, event: ServerSentEvent) -> Iterable[pb.StreamCompleteResponse]:
        if not event.data:
            return ()
        chunk = json_object(self._provider, event.data, "a stream event")
        if "error" in chunk:
            raise in_body_error(self._provider, chunk["error"], self._secrets)
        refuse_blocked_prompt(self._provider, chunk)
        if not self._id and chunk.get("responseId"):
            self._id = str(chunk["responseId"])
        if chunk.get("modelVersion"):
            self._model = str(chunk["modelVersion"])
        if not self._created.seconds:
            _set_created(self._created, chunk.get("createTime"))
        usage = chunk.get("usageMetadata")
        if isinstance(usage, dict):
            self._usage = usage
        out = []
        for position, candidate in enumerate(chunk.get("candidates") or ()):
            if not isinstance(candidate, dict):
                continue
            index = int(candidate.get("index", position))
            self._seen.add(index)
            text = candidate_text(candidate)
            if text:
                self._output_bytes += len(text.encode())
                out.append(pb.StreamCompleteResponse(delta=pb.TextDelta(choice_index=index, text=text)))
            if candidate.get("finishReason"):
                self._finishes[index] = str(candidate["finishReason"])
        return out

    def summary(self) -> pb.StreamSummary:
        summary = pb.StreamSummary(id=self._id, model=self._model, provider=self._provider)
        summary.created.CopyFrom(self._created)
        summary.finishes.extend(choice_finishes(self._finishes, finish_reason))
        reported = reported_usage(self._usage) if self._usage is not None else None
        usage = stream_usage(reported, finished=self.finished)
        if usage is not None:
            summary.usage.CopyFrom(usage)
        return summary

    @property
    def output_bytes(self) -> int:
        """Billed output seen so far (thinking included), for an estimate when usage never comes."""
        return self._output_bytes


# -- the adapter -------------------------------------------------------------------------


class GeminiAdapter:
    def __init__(self, settings: ProviderSettings) -> None:
        self.settings = settings
        self.capabilities = CAPABILITIES

    def build_request(self, request: AnyRequest, model: str, *, stream: bool) -> httpx.Request:
        body = build_body(request, self.settings.name)
        return build_http_request(self.settings, model, body, stream=stream)

    def parse_response(self, response: httpx.Response, request: AnyRequest, model: str) -> pb.CompleteResponse:
        return parse_generate_content(self.settings.name, response.content, model.removeprefix("models/"),
                                      secrets=(self.settings.api_key,))

    def stream_decoder(self, request: AnyRequest, model: str) -> GeminiStreamDecoder:
        return GeminiStreamDecoder(self.settings.name, model.removeprefix("models/"),
                                   secrets=(self.settings.api_key,))

    def parse_error(self, response: httpx.Response) -> GatewayError:
        return parse_error(self.settings, response)


def create(settings: ProviderSettings) -> GeminiAdapter:
    return GeminiAdapter(settings)


@hookimpl
def tollway_register_providers(register: Callable[[ProviderKind], None]) -> None:
    register(
        ProviderKind(
            name="gemini",
            create=create,
            default_base_url=DEFAULT_BASE_URL,
            default_api_key_env="GEMINI_API_KEY",
        )
    )
