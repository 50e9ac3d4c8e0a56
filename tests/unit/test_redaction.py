"""The one scrub: keys whole, their 8+ character prefixes and tails, credential shapes; and a
plain log record is one line whatever its message says."""

from __future__ import annotations

import logging
import string

from hypothesis import given, settings
from hypothesis import strategies as st
from tollway.service.gateway.logs import PlainFormatter
from tollway.service.redaction import REDACTED, Redactor, scrub

KEY_CHARS = string.ascii_letters + string.digits + "-_"
keys = st.text(KEY_CHARS, min_size=16, max_size=64)
# Surrounding text that cannot itself continue a key: a key fragment is redacted as far as it goes.
around = st.text(" .,:;!?()[]<>'\"\n", max_size=40)


@settings(max_examples=300, deadline=None)
@given(st.lists(keys, min_size=1, max_size=5), st.data())
def test_no_fragment_of_8_or_more_at_either_end_survives(key_list, data):
    key = data.draw(st.sampled_from(key_list))
    n = data.draw(st.integers(8, len(key)))
    fragment = data.draw(st.sampled_from([key[:n], key[-n:], key]))
    text = data.draw(around) + fragment + data.draw(around) + fragment + data.draw(around)

    cleaned = Redactor(key_list)(text)

    assert fragment not in cleaned
    assert key[:8] not in cleaned and key[-8:] not in cleaned
    assert REDACTED in cleaned


def test_the_text_around_a_fragment_is_kept():
    key = "relay-mixrouter-prod-0a1b2c3d4e5f"
    redact = Redactor([key, "short7x", "sk-proj-first-key-000111", "sk-proj-second-key-222333"])

    assert redact(f"key {key} rejected") == "key [redacted] rejected"
    assert redact(f"tried {key[:20]}... then ...{key[-10:]}.") == "tried [redacted]... then ...[redacted]."
    # Inner fragments are words: not a key's quoting.
    assert redact("mixrouter: upstream returned HTTP 503") == "mixrouter: upstream returned HTTP 503"
    assert redact("a short7x b short7 c") == "a [redacted] b short7 c"
    # Keys sharing a head: the longest run wins, whichever key it is.
    assert redact("sk-proj-second-key-22 and sk-proj-first") == "[redacted] and [redacted]"
    assert redact(f"{key}{key}") == REDACTED


def test_credential_shapes_without_configured_keys():
    assert scrub("Authorization: Bearer abc.def-123 x") == "Authorization: [redacted] x"
    assert scrub("caller tw_" + "A" * 43 + " denied") == "caller [redacted] denied"
    assert scrub("?key=AAAAAAAAAAAA&x=1") == "?[redacted]&x=1"


def test_a_plain_record_is_one_line_and_its_traceback_is_indented():
    formatter = PlainFormatter()
    try:
        raise ValueError("bad\n2026-01-01T00:00:00.000Z INFO forged")
    except ValueError:
        import sys

        record = logging.LogRecord("tollway.test", logging.ERROR, __file__, 1, "msg %s", ("a\nb\u2028c",),
                                   sys.exc_info())
    first, *rest = formatter.format(record).split("\n")

    assert first.endswith(" ERROR tollway.test msg a\\nb\\u2028c")
    assert rest and all(line.startswith("    ") for line in rest)
