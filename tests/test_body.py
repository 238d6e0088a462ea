"""The HTML body pipeline in gateway/body.py: its guarantees (bounded steps, the decoded-size
ceiling, output independent of chunking) for every content coding."""

from __future__ import annotations

import tracemalloc
from collections.abc import Sequence

import pytest

from gateway.body import DecodedTooLarge, HtmlBody
from gateway.codings import STEP, DecodeError
from gateway.html import HtmlRewriter

from .conftest import COMPRESS, DECOMPRESS, bomb

CODINGS = ("", "gzip", "deflate", "br", "zstd")
INJECT = b"<script>/*BOOT*/</script>"


class AppendPolicy:
    def decorate(self, url: str, base: str | None) -> str | None:
        return url + "?ajs_aid=X" if url.startswith("https://") else None

    def form_fields(self, action: str, base: str | None) -> Sequence[tuple[str, str]] | None:
        return None


def html(size: int) -> bytes:
    filler = b"<p>Lorem ipsum dolor sit amet, consectetur adipiscing elit.</p>\n"
    start = b"<!DOCTYPE html><html><head></head><body><a href='https://pay.test/first'>1</a>\n"
    end = b"<a href='https://pay.test/last'>2</a></body></html>\n"
    return start + filler * (max(0, size - len(start) - len(end)) // len(filler)) + end


def rewritten(page: bytes) -> bytes:
    return (
        page.replace(b"<head>", b"<head>" + INJECT, 1)
        .replace(b"/first'", b"/first?ajs_aid=X'")
        .replace(b"/last'", b"/last?ajs_aid=X'")
    )


def new_body(coding: str, max_decoded: int | None = None, output: str | None = None) -> HtmlBody:
    failures: list[BaseException] = []
    rewriter = HtmlRewriter(AppendPolicy(), inject=INJECT)
    return HtmlBody(
        rewriter, coding, failures.append, output_coding=output, max_decoded=max_decoded
    )


def encode(coding: str, data: bytes) -> bytes:
    return COMPRESS[coding](data) if coding else data


def decode(coding: str, data: bytes) -> bytes:
    return DECOMPRESS[coding](data) if coding else data


@pytest.mark.parametrize("chunk", [1, 1000, 65536, 1 << 30])
@pytest.mark.parametrize("coding", CODINGS)
def test_output_is_the_rewritten_page_whatever_the_chunks(coding: str, chunk: int) -> None:
    page = html(30_000 if chunk == 1 else 1_500_000)
    data = encode(coding, page)
    body = new_body(coding)
    out = [p for i in range(0, len(data), chunk) for p in body.feed(data[i : i + chunk])]
    out.append(body.close())
    assert decode(coding, b"".join(out)) == rewritten(page)
    assert body.decoded == len(page)


@pytest.mark.parametrize("coding", CODINGS[1:])
def test_rewritten_output_can_go_out_uncompressed(coding: str) -> None:
    page = html(100_000)
    body = new_body(coding, output="")
    assert b"".join(body.feed(encode(coding, page))) + body.close() == rewritten(page)


@pytest.mark.parametrize("coding", CODINGS[1:])
def test_feed_works_one_step_per_item(coding: str) -> None:
    """A large body in one chunk is decoded only as far as its items are taken: the caller
    can stop, or yield to the event loop, between any two steps."""
    page = html(4 << 20)
    body = new_body(coding)
    items = body.feed(encode(coding, page))
    taken = 0
    for _ in items:
        taken += 1
        assert body.decoded <= taken * 2 * STEP
    assert taken >= len(page) // (2 * STEP)


@pytest.mark.parametrize("coding", CODINGS[1:])
def test_a_bomb_never_inflates_whole(coding: str) -> None:
    """F3: a few hundred bytes that decode to 64 MiB, fed at once, rewritten and re-encoded;
    what the pipeline holds at any time stays within a few steps."""
    size = 64 << 20
    data = bomb(coding, size)
    body = new_body(coding)
    sent = 0
    tracemalloc.start()
    try:
        for piece in body.feed(data):
            sent += len(piece)
        sent += len(body.close())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert body.decoded == size
    assert 0 < sent < size // 100
    assert peak < 8 * STEP + (2 << 20), peak


@pytest.mark.parametrize("coding", CODINGS[1:])
def test_decoding_stops_at_the_ceiling(coding: str) -> None:
    ceiling = 1 << 20
    body = new_body(coding, max_decoded=ceiling)
    with pytest.raises(DecodedTooLarge) as raised:
        for _ in body.feed(bomb(coding, 64 << 20)):
            pass
    assert isinstance(raised.value, DecodeError)
    # No more than one step beyond it was ever decoded.
    assert ceiling < body.decoded <= ceiling + 2 * STEP


@pytest.mark.parametrize("coding", CODINGS[1:])
def test_a_page_exactly_at_the_ceiling_is_rewritten(coding: str) -> None:
    page = html(300_000)
    body = new_body(coding, max_decoded=len(page))
    out = b"".join(body.feed(encode(coding, page))) + body.close()
    assert decode(coding, out) == rewritten(page)


def test_no_ceiling_without_a_content_coding() -> None:
    """Uncompressed HTML costs no more than the bytes the upstream sends."""
    page = html(1 << 20)
    body = new_body("", max_decoded=65536)
    assert b"".join(body.feed(page)) + body.close() == rewritten(page)
