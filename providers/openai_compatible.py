"""Any server that speaks OpenAI Chat Completions: vLLM, Ollama, llama.cpp server, LM Studio.

Each `[providers.<name>]` table with `kind = "openai_compatible"` is one instance, so a
gateway can serve a local llama.cpp and a vLLM cluster side by side. There is no default
base_url (the registry refuses an instance without one) and the key is optional: without
one no Authorization header is sent.

Servers differ in what they accept, so each instance states it in typed options:

    max_tokens_field = "max_tokens"          # or "max_completion_tokens"
    modalities = ["image"]                   # any of "image", "audio", "video", "document"
    audio_style = "input_audio"              # or "audio_url" (vLLM takes audio by URL)
    features = ["tools", "structured_output", "reasoning"]   # what the server takes (default: all)
    reasoning_echo = "reasoning_content"     # send earlier reasoning back (DeepSeek thinking mode)

`features` defaults to all three because vLLM, Ollama and llama.cpp accept the OpenAI fields
(`tools`, `response_format`, `reasoning_effort`) and refuse what they lack themselves; an
instance in front of a server without them lists fewer, and the gateway then refuses such
requests by name before any call. `reasoning_echo` is off by default: the Chat format has no
input field for reasoning, but DeepSeek's thinking mode requires the `reasoning_content` of a
turn that called tools back on the next request (https://api-docs.deepseek.com/guides/thinking_mode).

Usage quirks of such servers (reasoning outside completion_tokens, no usage at all,
zeros for unset details) are handled by the shared codec per USAGE.md.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from tollway.plugin import (
    AUDIO,
    DOCUMENT,
    IMAGE,
    VIDEO,
    Capabilities,
    ProviderKind,
    ProviderSettings,
    hookimpl,
)
from tollway.v1 import completion_pb2 as pb

from .openai_codec import ChatDialect, OpenAIChatAdapter

KIND = "openai_compatible"

MODALITIES = {"image": IMAGE, "audio": AUDIO, "video": VIDEO, "document": DOCUMENT}
MAX_TOKENS_FIELDS = ("max_tokens", "max_completion_tokens")
AUDIO_STYLES = ("input_audio", "audio_url")
FEATURES = ("tools", "structured_output", "reasoning")
# "none": reasoning parts are left out of echoed assistant turns; otherwise the field they go in.
REASONING_ECHOES = ("none", "reasoning_content")

MIME_TYPES = {
    IMAGE: frozenset({"image/png", "image/jpeg", "image/webp", "image/gif"}),
    VIDEO: frozenset({"video/mp4", "video/webm", "video/quicktime", "video/mpeg"}),
    DOCUMENT: frozenset({"application/pdf"}),
}
# input_audio.format is "wav" or "mp3" in the OpenAI format servers copy; a server that
# fetches audio_url itself decodes whatever its audio library reads.
AUDIO_MIME_TYPES = {
    "input_audio": frozenset({"audio/wav", "audio/mpeg"}),
    "audio_url": frozenset({"audio/wav", "audio/mpeg", "audio/ogg", "audio/flac", "audio/webm", "audio/aac"}),
}


@dataclass(frozen=True)
class CompatibleOptions:
    """The options of one openai_compatible instance, validated."""

    max_tokens_field: str = "max_tokens"
    modalities: tuple[str, ...] = ("image",)
    audio_style: str = "input_audio"
    features: tuple[str, ...] = FEATURES
    reasoning_echo: str = "none"

    @classmethod
    def parse(cls, options: Mapping[str, Any]) -> "CompatibleOptions":
        parsed = cls(
            max_tokens_field=_one_of(options, "max_tokens_field", MAX_TOKENS_FIELDS, cls.max_tokens_field),
            modalities=_modalities(options),
            audio_style=_one_of(options, "audio_style", AUDIO_STYLES, cls.audio_style),
            features=_features(options),
            reasoning_echo=_one_of(options, "reasoning_echo", REASONING_ECHOES, cls.reasoning_echo),
        )
        if "audio_style" in options and "audio" not in parsed.modalities:
            raise ValueError('option audio_style is set but modalities does not include "audio"')
        return parsed

    def capabilities(self) -> Capabilities:
        mime_types = {MODALITIES[m]: MIME_TYPES.get(MODALITIES[m]) for m in self.modalities}
        if AUDIO in mime_types:
            mime_types[AUDIO] = AUDIO_MIME_TYPES[self.audio_style]
        # Images and videos go as URLs (data: URLs for bytes); input_audio and documents
        # take bytes only, so the gateway fetches those URLs.
        by_url = {IMAGE, VIDEO} | ({AUDIO} if self.audio_style == "audio_url" else set())
        # Audio, the one modality MIME_TYPES lacks (None above), has its types set just above.
        return Capabilities(mime_types=cast(Mapping[pb.Modality, frozenset[str]], mime_types),
                            url_modalities=frozenset(by_url & set(mime_types)),
                            tools="tools" in self.features,
                            structured_output="structured_output" in self.features,
                            reasoning="reasoning" in self.features)

    def dialect(self) -> ChatDialect:
        return ChatDialect(audio_style=self.audio_style, max_tokens_field=self.max_tokens_field,
                           reasoning_input_field=None if self.reasoning_echo == "none" else self.reasoning_echo)


def _one_of(options: Mapping[str, Any], key: str, allowed: tuple[str, ...], default: str) -> str:
    value = options.get(key, default)
    if value not in allowed:
        choices = " or ".join(f'"{a}"' for a in allowed)
        raise ValueError(f"option {key} must be {choices}, not {value!r}")
    return cast(str, value)  # one of allowed


def _modalities(options: Mapping[str, Any]) -> tuple[str, ...]:
    value = options.get("modalities", list(CompatibleOptions.modalities))
    if not isinstance(value, list) or not all(isinstance(m, str) for m in value):
        raise ValueError("option modalities must be a list of strings")
    for m in value:
        if m not in MODALITIES:
            raise ValueError(f"option modalities: unknown modality {m!r} (known: {', '.join(MODALITIES)})")
    # Text needs no entry; order and repeats carry no meaning.
    return tuple(m for m in MODALITIES if m in value)


def _features(options: Mapping[str, Any]) -> tuple[str, ...]:
    value = options.get("features", list(FEATURES))
    if not isinstance(value, list) or not all(isinstance(f, str) for f in value):
        raise ValueError("option features must be a list of strings")
    for f in value:
        if f not in FEATURES:
            raise ValueError(f"option features: unknown feature {f!r} (known: {', '.join(FEATURES)})")
    return tuple(f for f in FEATURES if f in value)


def create(settings: ProviderSettings) -> OpenAIChatAdapter:
    options = CompatibleOptions.parse(settings.options)
    return OpenAIChatAdapter(settings, options.capabilities(), options.dialect())


@hookimpl
def tollway_register_providers(register: Callable[[ProviderKind], None]) -> None:
    register(
        ProviderKind(
            name=KIND,
            create=create,
            # Every server lives somewhere else: config must name it.
            default_base_url=None,
            default_api_key_env=None,
            requires_api_key=False,
            options=frozenset({"max_tokens_field", "modalities", "audio_style", "features", "reasoning_echo"}),
        )
    )
