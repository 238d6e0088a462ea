"""Streaming content codings for rewritten HTML: decode what the upstream sent, re-encode the
same way (the upstream chose a coding from the visitor's own Accept-Encoding, so the visitor
accepts it). Each chunk is flushed so the client gets bytes as soon as we have them.

Guarantees: a decoder never returns more than about ``STEP`` bytes at once, however small the
input that produced them (brotli reaches ratios of about 1:650,000, zstd 1:32,000 per block),
so a decompression bomb is only ever held one step at a time; and a body that is not valid in
its coding raises DecodeError, never passes as complete.
"""

from __future__ import annotations

import sys
import zlib
from collections.abc import Iterator
from typing import Protocol

import brotli

if sys.version_info >= (3, 14):
    from compression import zstd
else:
    # The standard library's module (PEP 784), backported: unlike the `zstandard` package's
    # decompressobj, whose decompress() returns all the output of its input at once, it
    # bounds each call's output (max_length), which is what keeps a bomb in steps.
    from backports import zstd

# Output produced per step of decompression: keeps a small compressed chunk that expands
# enormously (a decompression bomb) from materialising in memory at once. Brotli's output
# buffer grows in blocks, so one of its steps can reach about twice this.
STEP = 256 * 1024
# RFC 9659 §3: zstd content coding uses windows of at most 8 MB, and browsers refuse larger
# ones; a larger window would also let one response make the decoder allocate up to 128 MiB
# (libzstd's own limit).
_ZSTD_WINDOW_LOG_MAX = 23


class DecodeError(Exception):
    """The upstream body is not valid in its declared coding."""


class Decoder(Protocol):
    def decode(self, data: bytes) -> Iterator[bytes]:
        """The decoded content of ``data``, in pieces of at most about STEP bytes; the next
        piece is decoded only when it is asked for."""
        ...

    def finish(self) -> bytes:
        """Check that the body ended where its coding ends (else DecodeError)."""
        ...


class Encoder(Protocol):
    def encode(self, data: bytes) -> bytes: ...
    def finish(self) -> bytes: ...


class _ZlibDecoder:
    def __init__(self, gzip: bool) -> None:
        self._gzip = gzip
        self._obj: zlib._Decompress | None = (
            zlib.decompressobj(16 + zlib.MAX_WBITS) if gzip else None
        )
        # The first byte of a deflate body, when it came alone: the format is told by two.
        self._head = b""

    def decode(self, data: bytes) -> Iterator[bytes]:
        try:
            while data:
                obj = self._obj
                if obj is None or obj.eof:
                    data = self._start(data)
                    continue
                out = obj.decompress(data, STEP)
                # Input left over: beyond the output limit, or after the end of the stream.
                data = obj.unused_data if obj.eof else obj.unconsumed_tail
                if out:
                    yield out
                elif not obj.eof:
                    break
        except zlib.error as exc:
            raise DecodeError(str(exc)) from exc

    def _start(self, data: bytes) -> bytes:
        """Begin the stream that ``data`` starts; returns the input left for it."""
        if self._obj is None:
            data = self._head + data
            if len(data) < 2:
                self._head = data
                return b""
            # HTTP "deflate" is the zlib format (RFC 9110 §8.4.1.2), but some servers send raw
            # deflate; the zlib header's checksum tells them apart.
            raw = data[0] & 0x0F != 8 or (data[0] << 8 | data[1]) % 31 != 0
            self._obj = zlib.decompressobj(-zlib.MAX_WBITS if raw else zlib.MAX_WBITS)
            return data
        if not self._gzip:
            # Nothing follows a deflate stream; what does is not content (kept as before).
            return b""
        # RFC 1952 §2.2: a gzip body is a series of members, each of them content (dropping
        # the later ones would send a short page that looks complete). Zero padding between
        # members is skipped, as gzip(1) and Python's gzip module do; anything else must be a
        # member header, or decoding fails.
        data = data.lstrip(b"\0")
        if data:
            self._obj = zlib.decompressobj(16 + zlib.MAX_WBITS)
        return data

    def finish(self) -> bytes:
        if self._obj is None:
            if self._head:
                raise DecodeError("compressed body ended early")
            return b""
        try:
            out = self._obj.flush()
        except zlib.error as exc:
            raise DecodeError(str(exc)) from exc
        if not self._obj.eof:
            raise DecodeError("compressed body ended early")
        return out


class _BrotliDecoder:
    def __init__(self) -> None:
        self._obj = brotli.Decompressor()

    def decode(self, data: bytes) -> Iterator[bytes]:
        try:
            out = self._obj.process(data, output_buffer_limit=STEP)
            # At the output limit the decoder keeps the rest of its input; empty output means
            # it has produced everything it can from what it was given.
            while out:
                yield out
                out = self._obj.process(b"", output_buffer_limit=STEP)
        except brotli.error as exc:
            raise DecodeError(str(exc)) from exc

    def finish(self) -> bytes:
        if not self._obj.is_finished():
            raise DecodeError("compressed body ended early")
        return b""


class _ZstdDecoder:
    def __init__(self) -> None:
        self._obj: zstd.ZstdDecompressor | None = None

    def decode(self, data: bytes) -> Iterator[bytes]:
        try:
            while True:
                obj = self._obj
                if obj is None or obj.eof:
                    # RFC 8878 §3: zstd data is a series of frames (skippable ones included),
                    # every one of them content, like gzip members; anything else after a
                    # frame fails to decode.
                    if obj is not None:
                        data = obj.unused_data + data
                    if not data:
                        return
                    obj = self._obj = zstd.ZstdDecompressor(
                        options={zstd.DecompressionParameter.window_log_max: _ZSTD_WINDOW_LOG_MAX}
                    )
                elif not data and obj.needs_input:
                    return
                fed = bool(data)
                out = obj.decompress(data, STEP)
                data = b""
                if out:
                    yield out
                elif not fed and not obj.eof:
                    return
        except zstd.ZstdError as exc:
            raise DecodeError(str(exc)) from exc

    def finish(self) -> bytes:
        if self._obj is not None and not self._obj.eof:
            raise DecodeError("compressed body ended early")
        return b""


class _ZlibEncoder:
    def __init__(self, wbits: int) -> None:
        # Level 4: most of the ratio of the default level at well under half the CPU time.
        self._obj = zlib.compressobj(4, zlib.DEFLATED, wbits)

    def encode(self, data: bytes) -> bytes:
        return self._obj.compress(data) + self._obj.flush(zlib.Z_SYNC_FLUSH)

    def finish(self) -> bytes:
        return self._obj.flush(zlib.Z_FINISH)


class _BrotliEncoder:
    def __init__(self) -> None:
        # A 1 MiB window (lgwin 20) rather than the default 4 MiB: at quality 4 the encoder
        # then holds about 3 MiB instead of 9 on a page that large, for 2.5 % more bytes on a
        # 1.6 MB page of the corpus (yahoo-2.html) and none on pages under 1 MiB.
        self._obj = brotli.Compressor(quality=4, lgwin=20)

    def encode(self, data: bytes) -> bytes:
        out: bytes = self._obj.process(data) + self._obj.flush()
        return out

    def finish(self) -> bytes:
        out: bytes = self._obj.finish()
        return out


class _ZstdEncoder:
    def __init__(self) -> None:
        # Level 3 (zstd's default): a 2 MiB window, well inside RFC 9659's 8 MB.
        self._obj = zstd.ZstdCompressor(level=3)

    def encode(self, data: bytes) -> bytes:
        return self._obj.compress(data, zstd.ZstdCompressor.FLUSH_BLOCK)

    def finish(self) -> bytes:
        return self._obj.flush(zstd.ZstdCompressor.FLUSH_FRAME)


def decoder_for(coding: str) -> Decoder | None:
    """A decoder for a content coding, None for identity; raises KeyError for unknown ones."""
    if coding in ("", "identity"):
        return None
    if coding in ("gzip", "x-gzip"):
        return _ZlibDecoder(gzip=True)
    if coding == "deflate":
        return _ZlibDecoder(gzip=False)
    if coding == "br":
        return _BrotliDecoder()
    if coding == "zstd":
        return _ZstdDecoder()
    raise KeyError(coding)


def encoder_for(coding: str) -> Encoder | None:
    if coding in ("", "identity"):
        return None
    if coding in ("gzip", "x-gzip"):
        return _ZlibEncoder(16 + zlib.MAX_WBITS)
    if coding == "deflate":
        return _ZlibEncoder(zlib.MAX_WBITS)
    if coding == "br":
        return _BrotliEncoder()
    if coding == "zstd":
        return _ZstdEncoder()
    raise KeyError(coding)
