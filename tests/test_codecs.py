"""The streaming content codings in gateway/codecs.py, checked against the libraries' own
one-shot functions: every split of the input, errors on bad input."""

from __future__ import annotations

import gzip
import random
import zlib
from collections.abc import Callable

import brotli
import pytest

from gateway.codecs import DecodeError, decoder_for

CODINGS = ("gzip", "deflate", "br")
COMPRESS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.compress,
    "deflate": zlib.compress,
    "br": brotli.compress,
}


def page(size: int = 200_000) -> bytes:
    """HTML-ish text that compresses like a real page (not like a run of one byte)."""
    rng = random.Random(size)
    words = [b"<p>", b"</p>", b"<a href='/x'>", b"</a>", b"lorem", b"ipsum", b"\n", b"dolor"]
    words += [bytes(rng.choices(b"abcdefghijklmnopqrstuvwxyz", k=8)) for _ in range(200)]
    out = bytearray()
    while len(out) < size:
        out += rng.choice(words) + b" "
    return bytes(out[:size])


def decode(coding: str, data: bytes, chunk: int) -> bytes:
    decoder = decoder_for(coding)
    assert decoder is not None
    out = [part for i in range(0, len(data), chunk) for part in decoder.decode(data[i : i + chunk])]
    return b"".join(out) + decoder.finish()


@pytest.mark.parametrize("chunk", [1, 7, 4096, 1 << 30])
@pytest.mark.parametrize("coding", CODINGS)
def test_decodes_what_the_library_encodes_at_every_split(coding: str, chunk: int) -> None:
    """Whatever the first read holds: a deflate body whose first byte came alone was taken
    for raw deflate (the zlib header is told by two bytes) and failed to decode."""
    text = page(20_000 if chunk == 1 else 200_000)
    assert decode(coding, COMPRESS[coding](text), chunk) == text


def test_a_deflate_body_of_one_byte_is_an_error() -> None:
    with pytest.raises(DecodeError):
        decode("deflate", b"x", 1)
