"""The HTML body pipeline for one response: decode the content coding, rewrite, re-encode.

Guarantees:

* Bounded steps. ``feed`` is an iterator: it decodes, rewrites and re-encodes one step (at
  most about ``codings.STEP`` decoded bytes) each time it is advanced, so however far a small
  compressed chunk expands, only one step of it is ever in memory, and the caller can yield to
  the event loop between steps (``decoded`` says how much work has been done).
* A ceiling. Decoding stops with DecodedTooLarge (a DecodeError) as soon as a compressed body
  decodes to more than ``max_decoded`` bytes: a decompression bomb is never inflated whole,
  and the work one response can cost is bounded. Bodies with no content coding have no
  ceiling: they cost no more than the bytes the upstream sends.
* It never breaks a page: if the rewriter raises, the bytes it had not yet emitted and
  everything after them go out unchanged (the failure is reported through ``on_failure``). A
  body that is corrupt in its own coding cannot be passed on as valid, so that is raised as
  DecodeError and the proxy aborts the response, as for any upstream body that ends badly.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator

from .codings import DecodeError, Decoder, Encoder, decoder_for, encoder_for
from .html import GaveUpReason, HtmlRewriter
from .links import LinkDecorator


class DecodedTooLarge(DecodeError):
    """The body decodes to more than the configured ceiling (``proxy.max_decoded_html``)."""


class HtmlBody:
    """Feed upstream body chunks in, get client body bytes out."""

    def __init__(
        self,
        rewriter: HtmlRewriter,
        coding: str,
        on_failure: Callable[[BaseException], None],
        policy: LinkDecorator | None = None,
        *,
        output_coding: str | None = None,
        max_decoded: int | None = None,
    ) -> None:
        """``coding``: the upstream's content coding; ``output_coding``: the one to send
        (default the same; "" sends the rewritten body uncompressed); ``max_decoded``: the
        most a compressed body may decode to (None: no limit)."""
        self._rewriter: HtmlRewriter | None = rewriter
        self.coding = coding
        self.output_coding = coding if output_coding is None else output_coding
        self._decoder: Decoder | None = decoder_for(coding)
        self._encoder: Encoder | None = encoder_for(self.output_coding)
        self._on_failure = on_failure
        self._policy = policy
        self._max_decoded = max_decoded
        self.decoded = 0
        """HTML bytes decoded and handed to the rewriter so far."""
        self.rewrite_seconds = 0.0
        self.failed = False

    @property
    def targets_hit(self) -> Counter[str]:
        """Links decorated per target pattern (nothing counts once the rewrite failed)."""
        if self._policy is None or self.failed:
            return Counter()
        return self._policy.targets_hit

    @property
    def injected(self) -> bool:
        """Whether the snippet went into the page (False once the rewrite failed: the rest of
        the page, the snippet's place perhaps among it, went out unchanged)."""
        return self._rewriter is not None and self._rewriter.injected

    @property
    def gave_up(self) -> GaveUpReason | None:
        """Why the rewriter passed the rest of the page through unexamined (None: it did not,
        or it failed, which ``failed`` says)."""
        return None if self._rewriter is None else self._rewriter.gave_up

    def feed(self, chunk: bytes) -> Iterator[bytes]:
        """The client bytes for one upstream chunk: one item per decoded step (possibly
        empty), each step done only when the next item is asked for."""
        decoder = self._decoder
        if decoder is None:
            self.decoded += len(chunk)
            yield self._encode(self._rewrite(chunk))
            return
        for part in decoder.decode(chunk):
            yield self._encode(self._rewrite(self._count(part)))

    def close(self) -> bytes:
        tail = b""
        if self._decoder is not None:
            tail = self._rewrite(self._count(self._decoder.finish()))
        rewriter = self._rewriter
        if rewriter is not None:
            start = time.perf_counter()
            held = rewriter.pending_input
            try:
                tail += rewriter.close()
            except Exception as exc:
                tail += self._fail(exc, held)
            self.rewrite_seconds += time.perf_counter() - start
        out = self._encode(tail)
        if self._encoder is not None:
            out += self._encoder.finish()
        return out

    def _count(self, part: bytes) -> bytes:
        self.decoded += len(part)
        if self._max_decoded is not None and self.decoded > self._max_decoded:
            raise DecodedTooLarge(f"decodes to more than {self._max_decoded} bytes")
        return part

    def _rewrite(self, data: bytes) -> bytes:
        rewriter = self._rewriter
        if rewriter is None or not data:
            return data
        start = time.perf_counter()
        held = rewriter.pending_input
        try:
            return rewriter.feed(data)
        except Exception as exc:
            return self._fail(exc, held + data)
        finally:
            self.rewrite_seconds += time.perf_counter() - start

    def _fail(self, exc: BaseException, unsent: bytes) -> bytes:
        # What the rewriter held back before the failing call was never emitted: it goes out
        # now, unchanged, and so does everything after it.
        self._rewriter = None
        self.failed = True
        self._on_failure(exc)
        return unsent

    def _encode(self, data: bytes) -> bytes:
        if self._encoder is None or not data:
            return data
        return self._encoder.encode(data)
