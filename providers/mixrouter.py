"""MixRouter: an OpenAI-compatible aggregator (new-api family) in front of many vendors' models.

It takes media by URL in every modality (`image_url`, `audio_url`, `video_url`), inline
bytes as data: URLs, and reports usage with the relay quirks of USAGE.md. Tools,
`response_format` and `reasoning_effort` pass through in OpenAI's shape (openai_codec).
"""

from __future__ import annotations

from collections.abc import Callable

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

from .openai_codec import ChatDialect, OpenAIChatAdapter

CAPABILITIES = Capabilities(
    mime_types={
        IMAGE: frozenset({"image/png", "image/jpeg", "image/webp", "image/gif"}),
        AUDIO: frozenset({"audio/wav", "audio/x-wav", "audio/mpeg", "audio/mp3", "audio/ogg", "audio/flac",
                          "audio/aac", "audio/webm"}),
        VIDEO: frozenset({"video/mp4", "video/mpeg", "video/webm", "video/quicktime"}),
        DOCUMENT: frozenset({"application/pdf"}),
    },
    url_modalities=frozenset({IMAGE, AUDIO, VIDEO}),
    # tools, response_format and reasoning_effort: see openai_codec.build_body.
    tools=True,
    structured_output=True,
    reasoning=True,
)

DIALECT = ChatDialect(audio_style="audio_url", max_tokens_field="max_tokens", relay_usage=True)


def create(settings: ProviderSettings) -> OpenAIChatAdapter:
    return OpenAIChatAdapter(settings, CAPABILITIES, DIALECT)


@hookimpl
def tollway_register_providers(register: Callable[[ProviderKind], None]) -> None:
    register(
        ProviderKind(
            name="mixrouter",
            create=create,
            default_base_url="https://api.mixrouter.com/v1",
            default_api_key_env="MIXROUTER_API_KEY",
        )
    )
