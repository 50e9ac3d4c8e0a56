"""OpenAI Chat Completions (`POST {base_url}/chat/completions`), key OPENAI_API_KEY.

Images go as `image_url` (the URL itself, or a data: URL for bytes). Audio goes as
`input_audio` {base64 data, format wav|mp3}: OpenAI takes no audio URL, so audio is
declared outside url_modalities and the gateway fetches URL audio and hands this adapter
the bytes. PDFs go as `file` parts with a data: URL. No video input.
`max_completion_tokens` replaces the deprecated `max_tokens`; streams ask for usage with
`stream_options.include_usage`. Tools, `response_format` and `reasoning_effort` go as OpenAI
defines them (openai_codec); a reasoning budget or include_thoughts has no field and is refused.
"""

from __future__ import annotations

from collections.abc import Callable

from tollway.plugin import (
    AUDIO,
    DOCUMENT,
    IMAGE,
    Capabilities,
    ProviderKind,
    ProviderSettings,
    hookimpl,
)

from .openai_codec import ChatDialect, OpenAIChatAdapter

CAPABILITIES = Capabilities(
    mime_types={
        IMAGE: frozenset({"image/png", "image/jpeg", "image/webp", "image/gif"}),
        # input_audio.format takes exactly "wav" or "mp3".
        AUDIO: frozenset({"audio/wav", "audio/mpeg"}),
        DOCUMENT: frozenset({"application/pdf"}),
    },
    url_modalities=frozenset({IMAGE}),
    # tools, response_format and reasoning_effort: see openai_codec.build_body.
    tools=True,
    structured_output=True,
    reasoning=True,
)

DIALECT = ChatDialect(audio_style="input_audio", max_tokens_field="max_completion_tokens")


def create(settings: ProviderSettings) -> OpenAIChatAdapter:
    return OpenAIChatAdapter(settings, CAPABILITIES, DIALECT)


@hookimpl
def tollway_register_providers(register: Callable[[ProviderKind], None]) -> None:
    register(
        ProviderKind(
            name="openai",
            create=create,
            default_base_url="https://api.openai.com/v1",
            default_api_key_env="OPENAI_API_KEY",
        )
    )
