"""The streaming content codings in gateway/codings.py, checked against the libraries' own
one-shot functions: every split of the input, bounded steps on a bomb, errors on bad input."""

from __future__ import annotations

import random
import tracemalloc
from collections.abc import Callable

import pytest

from gateway.codings import STEP, DecodeError, decoder_for, encoder_for

from .conftest import COMPRESS, DECOMPRESS, bomb, zstd

CODINGS = ("gzip", "deflate", "br", "zstd")


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
    text = page(20_000 if chunk == 1 else 200_000)
    assert decode(coding, COMPRESS[coding](text), chunk) == text


@pytest.mark.parametrize("coding", CODINGS)
def test_each_encoded_piece_is_flushed_and_the_whole_decodes(coding: str) -> None:
    """The client can decode everything sent so far: each encode() ends on a flush."""
    encoder = encoder_for(coding)
    assert encoder is not None
    text = page()
    parts = [text[i : i + 30_000] for i in range(0, len(text), 30_000)]
    stream = decoder_for(coding)
    assert stream is not None
    sent = b""
    for n, part in enumerate(parts, 1):
        piece = encoder.encode(part)
        sent += piece
        assert b"".join(stream.decode(piece)) == part, n
    sent += encoder.finish()
    assert DECOMPRESS[coding](sent) == text


@pytest.mark.parametrize("coding", CODINGS)
def test_a_bomb_is_decoded_one_bounded_step_at_a_time(coding: str) -> None:
    size = 64 << 20
    data = bomb(coding, size)
    assert len(data) < size // 1000
    decoder = decoder_for(coding)
    assert decoder is not None
    total = steps = 0
    tracemalloc.start()
    try:
        for part in decoder.decode(data):
            assert len(part) <= 2 * STEP
            total += len(part)
            steps += 1
        decoder.finish()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert total == size
    assert steps >= size // (2 * STEP)
    # Only a step or two is ever held, never the 64 MiB.
    assert peak < 4 * STEP + (1 << 20), peak


def corrupt(data: bytes) -> bytes:
    damaged = bytearray(data)
    middle = len(damaged) // 2
    damaged[middle : middle + 16] = bytes(b ^ 0x5A for b in damaged[middle : middle + 16])
    return bytes(damaged)


DAMAGE: dict[str, Callable[[bytes], bytes]] = {
    "truncated": lambda data: data[:-9],
    "corrupt": corrupt,
    "trailing": lambda data: data + b"trailing garbage",
}


@pytest.mark.parametrize(
    ("coding", "damage"),
    # What follows a deflate stream is ignored (there is no framing to tell it from content).
    [(c, d) for c in CODINGS for d in DAMAGE if (c, d) != ("deflate", "trailing")],
)
def test_a_damaged_body_raises_decode_error(coding: str, damage: str) -> None:
    data = DAMAGE[damage](COMPRESS[coding](page()))
    with pytest.raises(DecodeError):
        decode(coding, data, 4096)


def test_zstd_decodes_every_frame_and_skips_skippable_ones() -> None:
    """RFC 8878 §3: zstd data is a series of frames, each of them content."""
    text = page()
    skippable = (0x184D2A50).to_bytes(4, "little") + (5).to_bytes(4, "little") + b"hello"
    data = zstd.compress(text[:70_000]) + skippable + zstd.compress(text[70_000:])
    for chunk in (1, 5, 4096, len(data)):
        assert decode("zstd", data, chunk) == text
    assert decode("zstd", b"", 1) == b""


def test_zstd_frames_needing_a_window_beyond_8_mib_are_refused() -> None:
    """RFC 9659 §3: zstd content coding windows stay within 8 MB; a larger one would let a
    response make the decoder allocate up to 128 MiB."""
    text = page()
    for window_log, ok in ((23, True), (24, False)):
        compressor = zstd.ZstdCompressor(options={zstd.CompressionParameter.window_log: window_log})
        # Streamed, so the frame header declares the window rather than the content size.
        data = compressor.compress(text) + compressor.flush()
        if ok:
            assert decode("zstd", data, 4096) == text
        else:
            with pytest.raises(DecodeError):
                decode("zstd", data, 4096)


def test_unknown_codings_have_no_codec() -> None:
    for coding in ("compress", "gzip,br", "dcz"):
        with pytest.raises(KeyError):
            decoder_for(coding)
        with pytest.raises(KeyError):
            encoder_for(coding)
    assert decoder_for("") is None and encoder_for("identity") is None
