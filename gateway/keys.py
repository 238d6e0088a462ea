"""Secrets an operator supplies (``signing.keys``, ``admin.token``, the password in
``store.url``): how to make a good one, and how to tell a placeholder or a guessable value from
a secret before the gateway runs with it.

Pure: strings in, strings out; randomness only in :func:`generate_key`.

Guarantees:

* :func:`generate_key` returns 43 URL-safe base64 characters (256 random bits), which
  :func:`parse_signing_keys` accepts as one key, an ``Authorization: Bearer``
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

__all__ = [
    "GEN_KEY_ADVICE",
    "MIN_LENGTH",
    "check_signing_key",
    "generate_key",
    "parse_signing_keys",
    "placeholder",
    "weakness",
]

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


# A key with fewer distinct characters than this is a placeholder ("changeme" repeated), not a
# secret; random keys of 32+ characters in any encoding (hex included) have far more.
_KEY_MIN_DISTINCT = 10
_KEY_CHARS = re.compile(r"[\x21-\x7e]+")


def parse_signing_keys(value: str) -> tuple[bytes, ...]:
    """The keys of a ``signing.keys`` value (an environment variable's, usually):
    comma-separated, whitespace around each ignored. Each key is used as the literal bytes of
    its text (printable ASCII, no commas), so base64, hex and pass-phrases all work unchanged on
    every member of the fleet; each must pass :func:`check_signing_key`. ValueError says which
    key is wrong, never what it is. :func:`weakness` is a separate, stricter check."""
    parts = [p.strip() for p in value.split(",")]
    if parts == [""]:
        raise ValueError(f"no signing keys given; {GEN_KEY_ADVICE}")
    for i, part in enumerate(parts, 1):
        if not part:
            raise ValueError(
                f"signing key {i} of {len(parts)} is empty; separate keys with single commas"
            )
        if not _KEY_CHARS.fullmatch(part):
            raise ValueError(
                f"signing key {i} of {len(parts)} contains a space or a character outside "
                f"printable ASCII; {GEN_KEY_ADVICE}"
            )
    keys = tuple(p.encode("ascii") for p in parts)
    for i, key in enumerate(keys, 1):
        check_signing_key(key, i, len(keys))
    return keys


def check_signing_key(key: bytes, i: int, n: int) -> None:
    """Refuse (ValueError) signing key ``i`` of ``n`` if it is too short or uses too few
    distinct characters to be a secret."""
    if len(key) < MIN_LENGTH:
        raise ValueError(
            f"signing key {i} of {n} is {len(key)} characters long; each key needs at least "
            f"{MIN_LENGTH}; {GEN_KEY_ADVICE}"
        )
    if len(set(key)) < _KEY_MIN_DISTINCT:
        raise ValueError(
            f"signing key {i} of {n} has fewer than {_KEY_MIN_DISTINCT} distinct characters, "
            f"so it is a placeholder rather than a secret; {GEN_KEY_ADVICE}"
        )


def generate_key() -> str:
    """A fresh random key: 32 bytes from :mod:`secrets` as URL-safe base64 (43 characters),
    drawn again in the (below one in a million) case that :func:`weakness` would refuse it."""
    while True:
        key = secrets.token_urlsafe(32)
        if weakness(key) is None:
            return key


def placeholder(value: str) -> str | None:
    """Why ``value`` is a stand-in meant to be replaced ("contains the placeholder text
    'replace'"), or None. The one check of :func:`weakness` that also applies to secrets the
    gateway does not choose the form of, such as a managed Redis's password."""
    folded = re.sub(r"[^a-z0-9]", "", value.lower())
    for word in _PLACEHOLDER_WORDS:
        if word in folded:
            return f"contains the placeholder text {word!r}"
    return None


def weakness(value: str) -> str | None:
    """Why ``value`` looks like a placeholder or a guessable secret (a phrase that completes
    "signing key 1 of 2 …"), or None. Length and character set are the caller's checks."""
    found = placeholder(value)
    if found is not None:
        return found
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
