"""Operator secrets: generated keys always pass, placeholders and typed keys never do, and no
message repeats the value."""

from __future__ import annotations

import base64
import random

import pytest

from gateway.keys import GEN_KEY_ADVICE, generate_key, weakness
from gateway.strategies import SigningKeys

# The values shipped in deploy/ before the gateway refused them, and the usual suspects.
WEAK = [
    ("REPLACE_ME-new-signing-key-0123456789abcdef", "placeholder text 'replace'"),
    ("local-dev-only-signing-key-CHANGE-ME-0123456789", "placeholder text 'change'"),
    ("change-me-change-me-change-me-change-me", "placeholder text 'change'"),
    ("my-Secret-signing-key-for-the-gateway", "placeholder text 'secret'"),
    ("https://example.com/not-a-real-key/xyz", "placeholder text 'example'"),
    ("insecure-default-key-do-not-use-ok", "placeholder text 'default'"),
    ("Pa55-QWERTY-uiop-zxcv-7h3k-m2n9-w8", "placeholder text 'qwerty'"),
    ("0123456789abcdef0123456789abcdef", "run of 8"),
    ("k3Y-a_0123456789abcdefghijklmnopqrstuvwxyzAB", "run of 8"),
    ("zyxwvutsR9-Kp2-Lm4-Nq7-Tw3-Hd8-Jf6", "run of 8"),
    ("Xk9#aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa7Qp", "run of 8"),
    ("aB3$dE6&gH9*aB3$dE6&gH9*aB3$dE6&gH9*", "repeats a stretch"),
    ("0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a6978", "repeats a stretch"),
    ("kqyxyxyzxxyxywyxyyyxmzqwxyqxzyxy", "too predictable"),
]


@pytest.mark.parametrize(("value", "reason"), WEAK)
def test_weak_values_are_named_without_being_repeated(value: str, reason: str) -> None:
    message = weakness(value)
    assert message is not None and reason in message, message
    assert value not in message


@pytest.mark.parametrize(
    "value",
    [
        "kN7qW2xZ9pL4vR8tY6uB3mC5dF1gH0jS",
        "fleetKey-1-Zq8Wm2Xr7Tn4Vb6Pc3Ld9Hs5",
        "correct-horse-battery-staple-XYZ",
        "dGhpcyBpcyBhIGJhc2U2NCBrZXkgb2YgbW9yZSB0aGFuIDMyIGJ5dGVz",
    ],
)
def test_reasonable_keys_pass(value: str) -> None:
    assert weakness(value) is None


# Seeded, so the test cannot flake on the rare random key that does look guessable.
_RNG = random.Random(20261129)


@pytest.mark.parametrize(
    "draw",
    [
        lambda: _RNG.randbytes(16).hex(),  # openssl rand -hex 16
        lambda: _RNG.randbytes(32).hex(),  # openssl rand -hex 32
        lambda: base64.urlsafe_b64encode(_RNG.randbytes(24)).decode().rstrip("="),
    ],
    ids=["hex-128", "hex-256", "base64-192"],
)
def test_random_keys_in_common_encodings_pass(draw: object) -> None:
    assert callable(draw)
    refused = [key for key in (draw() for _ in range(2000)) if weakness(key) is not None]
    assert not refused


def test_generated_keys_are_what_signing_keys_expect() -> None:
    keys = {generate_key() for _ in range(500)}
    assert len(keys) == 500
    for key in keys:
        assert len(key) == 43 and weakness(key) is None
        assert SigningKeys.parse(key).signing_key == key.encode("ascii")
    assert SigningKeys.parse(",".join(sorted(keys)[:3])).all[0] == sorted(keys)[0].encode()


def test_advice_names_the_command() -> None:
    assert GEN_KEY_ADVICE.endswith("python -m gateway gen-key")
