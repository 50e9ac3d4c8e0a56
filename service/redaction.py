"""The one place text is cleaned of credentials before it leaves the gateway: to a caller, a
log line or the ledger.

A configured key is removed whole, and so is any run of 8 or more of its characters that
starts where the key starts (a prefix: "sk-proj-abc1...") or ends where it ends (a tail:
"...wxyz12345678"): those are the two ways providers and proxies quote a key they mask.
Arbitrary inner fragments are not matched: a readable key ("relay-mixrouter-prod-...")
would then redact the provider names and words every message is made of, and no provider
quotes a key's middle. Anything shaped like a credential (bearer tokens, OpenAI/Anthropic,
Google and this gateway's own caller keys) goes too, configured or not.

A Redactor is built once per set of keys: one compiled alternation of each key's first and
last 8 characters finds candidates in C; only a hit costs Python work (extending the match
along the key).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from functools import lru_cache

REDACTED = "[redacted]"
# The shortest fragment of a key that is redacted; shorter runs are too common to mean a key.
MIN_FRAGMENT = 8
# Keys shorter than this are not keys worth matching (and would redact ordinary words).
MIN_KEY = 4

# Shapes of credentials that must never reach a caller or a log, whatever the provider
# echoes back: bearer tokens, OpenAI/Anthropic style keys, Google API keys, key= query
# parameters, and the caller keys `tollway keys new` mints ("tw_" + 43 url-safe characters).
CREDENTIAL_SHAPES = re.compile(
    r"(Bearer\s+[A-Za-z0-9._~+/=-]+|sk-[A-Za-z0-9_-]{8,}|AIza[0-9A-Za-z_-]{20,}|key=[A-Za-z0-9_-]{8,}"
    r"|tw_[A-Za-z0-9_-]{32,})"
)


class Redactor:
    """Removes the given keys, their 8+ character prefixes and tails, and credential shapes."""

    __slots__ = ("_keys", "_pattern", "_heads", "_tails", "_whole", "_lengths")

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        keys = sorted({s for s in secrets if s and len(s) >= MIN_KEY}, key=len, reverse=True)
        self._keys = tuple(keys)
        # literal -> the keys it begins / ends / is.
        self._heads: dict[str, list[str]] = {}
        self._tails: dict[str, list[str]] = {}
        self._whole: dict[str, list[str]] = {}
        for key in keys:
            if len(key) < MIN_FRAGMENT:
                self._whole.setdefault(key, []).append(key)
            else:
                self._heads.setdefault(key[:MIN_FRAGMENT], []).append(key)
                self._tails.setdefault(key[-MIN_FRAGMENT:], []).append(key)
        literals = {*self._heads, *self._tails, *self._whole}
        self._lengths = sorted({len(s) for s in literals})
        self._pattern = (re.compile("|".join(re.escape(s) for s in sorted(literals, key=len, reverse=True)))
                         if literals else None)

    def __call__(self, text: str) -> str:
        if self._pattern is not None and (match := self._pattern.search(text)) is not None:
            text = self._redact_keys(text, match.start())
        return CREDENTIAL_SHAPES.sub(REDACTED, text)

    def _redact_keys(self, text: str, first: int) -> str:
        assert self._pattern is not None
        spans: list[tuple[int, int]] = []
        position: int | None = first
        while position is not None:
            # Every literal that occurs here (an alternation reports only one of them).
            for length in self._lengths:
                piece = text[position:position + length]
                for key in self._heads.get(piece, ()):
                    spans.append((position, position + _common_prefix(text, position, key)))
                for key in self._tails.get(piece, ()):
                    end = position + MIN_FRAGMENT
                    spans.append((end - _common_suffix(text, end, key), end))
                for key in self._whole.get(piece, ()):
                    spans.append((position, position + len(key)))
            match = self._pattern.search(text, position + 1)
            position = match.start() if match is not None else None
        return _cut(text, spans)


def _common_prefix(text: str, start: int, key: str) -> int:
    """How many characters of key text repeats from start on."""
    n = MIN_FRAGMENT
    limit = min(len(key), len(text) - start)
    while n < limit and text[start + n] == key[n]:
        n += 1
    return n


def _common_suffix(text: str, end: int, key: str) -> int:
    """How many of key's last characters text repeats just before end."""
    n = MIN_FRAGMENT
    limit = min(len(key), end)
    while n < limit and text[end - n - 1] == key[-n - 1]:
        n += 1
    return n


def _cut(text: str, spans: list[tuple[int, int]]) -> str:
    """text with each (merged) span replaced by one marker."""
    spans.sort()
    out: list[str] = []
    at = 0
    merged_end = -1
    for start, end in spans:
        if start <= merged_end:
            merged_end = max(merged_end, end)
            continue
        if merged_end >= 0:
            out.append(REDACTED)
            at = merged_end
        out.append(text[at:start])
        merged_end = end
    if merged_end >= 0:
        out.append(REDACTED)
        at = merged_end
    out.append(text[at:])
    return "".join(out)


@lru_cache(maxsize=64)
def _redactor(secrets: tuple[str | None, ...]) -> Redactor:
    return Redactor(secrets)


def scrub(text: str, secrets: Iterable[str | None] = ()) -> str:
    """text without the given keys (whole, prefixes and tails of 8+ characters) nor anything
    shaped like a credential. The matcher for a set of keys is built once and kept."""
    return _redactor(tuple(secrets))(text)


# -- log lines ---------------------------------------------------------------------------
# Log lines are scrubbed of every key configured since the process started: a key dropped by
# a reload may still be quoted by a call that began before it.

_log_lock = threading.Lock()
_log_keys: frozenset[str] = frozenset()
_log_redactor = Redactor()


def remember_keys(secrets: Iterable[str | None]) -> None:
    """Add keys to the set every log line is scrubbed of (called whenever keys are loaded)."""
    global _log_keys, _log_redactor
    new = {s for s in secrets if s}
    if new <= _log_keys:
        return
    with _log_lock:
        _log_keys = _log_keys | new
        _log_redactor = Redactor(_log_keys)


def scrub_log(text: str) -> str:
    """A log line's final text without any key ever configured in this process."""
    return _log_redactor(text)
