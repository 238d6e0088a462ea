"""Sans-IO streaming HTML rewriter: decorates outbound links and injects a snippet.

``HtmlRewriter.feed(bytes) -> bytes`` and ``close() -> bytes``; no I/O, no DOM.

How it works (the lol-html idea): a cheap scanner skips text, comments and every tag
we do not care about, and stops only at ``<`` followed by a tag name we must act on:
the links we edit (a, area, form, base), <head> for the injection, and the elements
whose start tag switches the WHATWG tokenizer into another text state (script,
style, textarea, title, ...). Those tags are tokenized fully; the text states are
then simulated by searching for their end condition, so nothing inside a script or
a comment is ever mistaken for markup. A tiny stack of svg/math elements and their
integration points stands in for the tree builder's "foreign content" decisions
(CDATA sections, no text states). The scanner (``_scan.Scanner``) reports what the
rewriter must act on as events (a link's href, a form, a <base>, where the snippet
goes); this module asks the policy and makes the edits. The scanner comes in two
implementations that give the same events: pure Python over the regexes of
``_tokens`` (one regex call skips the uninteresting tags in C), and a C extension
(``_speedups.c``) used when it is built (see ``gateway.html.IMPLEMENTATION``).

Guarantees:

* Every byte outside an edited attribute value (and the inserted snippet / hidden
  inputs) is passed through unchanged.
* Output is independent of how the input is split into chunks, unless an
  incomplete tag held between chunks outgrows ``max_buffer`` (below).
* Only an incomplete tag is held back between chunks (text states hold back at most
  a few bytes, the encoding sniffer at most 1024 at the start). A tag still
  incomplete after more than ``max_buffer`` bytes is flushed unchanged and the rest
  of the document is passed through: we have lost track of where the tag ends, and
  guessing could corrupt it.
* Ambiguous input is passed through, never guessed at: a tag still open at the end
  of the document, an unquoted value containing quotes, "<", "=" or "`", a value
  that does not decode in the page's encoding, an edit that would not decode back
  to exactly what the policy asked for; "<![CDATA[" inside an integration point
  once HTML elements may be open there (the rest of the document passes through).
* Giving up is never silent: whenever the rest of the document is passed through
  unexamined, ``gave_up`` says why, as one of ``GAVE_UP_REASONS`` (lol-html raises
  MemoryLimitExceededError or ParsingAmbiguityError in the same places; we still
  serve the page, so the reason is recorded, not raised).

Edits keep the raw bytes of the unchanged prefix and suffix of a value: the decoded
old and new values are compared, the common prefix/suffix mapped back to raw
bytes at character-reference boundaries (or inside literal runs when re-encoding
reproduces the raw bytes), and only the middle is encoded ("&" -> "&amp;", and the
value's own quote). The result is decoded again and must equal the policy's URL;
otherwise the whole value is re-encoded, and if even that fails it is left alone.
An unquoted value stays unquoted unless the new text needs quoting (whitespace,
quotes, "=", "<", ">", "`"), in which case the whole value gets double quotes.

Deliberate approximations (no DOM): the foreign-content stack only tracks svg/math
roots, breakout tags and integration points, so an <svg> left open and closed by
an HTML ancestor's end tag keeps us in foreign content; "in select" ignoring
<style>/<iframe> start tags is not modelled; <noscript> is markup (scripting
disabled), as is <template> content. SVG <a href> is decorated (an SVG 2 link);
MathML has no links. A POST form without an action attribute is not touched (we
edit values, we do not add attributes). ``decorated`` counts edited attributes
plus GET forms given hidden inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, Literal, Protocol, get_args

from . import _scan, _tokens, charset
from ._impl import Scanner, ScannerAPI
from ._scan import FORM, HREF, INJECT, QUOTE_PLAIN, Event

__all__ = [
    "GAVE_UP_AMBIGUITY",
    "GAVE_UP_CHARSET",
    "GAVE_UP_PLAINTEXT",
    "GAVE_UP_REASONS",
    "GAVE_UP_TAG_TOO_LONG",
    "GaveUpReason",
    "HtmlRewriter",
    "LinkPolicy",
]

# Why the rewriter stopped and passed the rest of a document through (``gave_up``).
# They end up as metric labels and log fields: short, stable and few.
GaveUpReason = Literal["unsupported_charset", "tag_too_long", "parsing_ambiguity", "plaintext"]
GAVE_UP_REASONS: Final[tuple[GaveUpReason, ...]] = get_args(GaveUpReason)

# The page's character encoding is not ASCII-compatible (a UTF-16 BOM; UTF-16,
# ISO-2022-* or "replacement" from the Content-Type or a <meta>): byte patterns like
# "<a" may be parts of other characters, so nothing is touched, nothing injected.
GAVE_UP_CHARSET: Final[GaveUpReason] = "unsupported_charset"
# One incomplete tag held between chunks grew past ``max_buffer`` (lol-html's
# MemoryLimitExceededError).
GAVE_UP_TAG_TOO_LONG: Final[GaveUpReason] = "tag_too_long"
# "<![CDATA[" inside a MathML/SVG integration point after other start tags: whether
# it opens a CDATA section depends on the DOM (lol-html's ParsingAmbiguityError).
GAVE_UP_AMBIGUITY: Final[GaveUpReason] = "parsing_ambiguity"
# A <plaintext> start tag in HTML content: the tokenizer never leaves the PLAINTEXT
# state, so the rest is text and has no links. Spec-exact rather than a failure, but
# the rest of the page is not examined, so it is reported like the others.
GAVE_UP_PLAINTEXT: Final[GaveUpReason] = "plaintext"


class LinkPolicy(Protocol):
    """Decides how links are decorated; the rewriter only finds and edits them."""

    def decorate(self, url: str, base: str | None) -> str | None:
        """url: the attribute value with character references decoded. base: the
        first <base href> value seen before this tag (decoded), or None. Return the
        new URL (decoded form), or None to leave the attribute untouched."""
        ...

    def form_fields(self, action: str, base: str | None) -> Sequence[tuple[str, str]] | None:
        """For GET forms: name/value pairs to add as hidden inputs, or None."""
        ...


_APPENDED_MEMO_LIMIT: Final = 64
# The rewriter's reason for each of the scanner's.
_SCANNER_GAVE_UP: Final[dict[int, GaveUpReason]] = {
    _scan.GAVE_UP_AMBIGUITY: GAVE_UP_AMBIGUITY,
    _scan.GAVE_UP_PLAINTEXT: GAVE_UP_PLAINTEXT,
}
_QUOTES: Final[tuple[bytes | None, ...]] = (b'"', b'"', b"'", b"", None)  # by _scan.QUOTE_*


class _Attribute:
    """Where one attribute's value sits in the buffer, and how it is quoted.

    ``quote`` is b'"', b"'", b"" (unquoted, possibly empty after "=") or None (no
    "=" at all; an edit then inserts one)."""

    __slots__ = ("end", "quote", "start")

    def __init__(self, start: int, end: int, quote: bytes | None) -> None:
        self.start = start
        self.end = end
        self.quote = quote


class HtmlRewriter:
    """Streaming rewriter for one HTML document (create one per response body)."""

    def __init__(
        self,
        policy: LinkPolicy | None,
        *,
        inject: bytes | None = None,
        charset: str | None = None,
        max_buffer: int = 64 * 1024,
    ) -> None:
        self._policy = policy
        self._inject = inject or b""
        self._injecting = inject is not None
        self._header_encoding = None if charset is None else _lookup_header(charset)
        self._max_buffer = max_buffer
        self._encoding: str | None = None
        self._scanner: ScannerAPI | None = None  # once the encoding is known
        self._buf = b""
        self._out: list[bytes] = []
        self._base: str | None = None
        self._base_seen = False
        self._closed = False
        self._start = 0  # where the first _run() starts scanning (after a BOM)
        self.decorated = 0
        """Attributes edited plus GET forms given hidden inputs (for metrics)."""
        self.injected = False
        self.gave_up: GaveUpReason | None = None
        """None while the whole document is being rewritten; otherwise why the rest of it
        was passed through unexamined (one of GAVE_UP_REASONS). Set at most once."""
        # Escaped text appended to plain links, by the text (see _decorate_plain).
        self._appended: dict[str, bytes] = {}

    # -- Public interface ---------------------------------------------------------

    def feed(self, data: bytes) -> bytes:
        """Rewrite the next chunk; returns what can be sent now."""
        if self._closed:
            raise RuntimeError("HtmlRewriter.feed() called after close()")
        self._buf += data
        if self._encoding is None and not self._sniff(final=False):
            return b""
        self._run(final=False)
        return self._take_output()

    def close(self) -> bytes:
        """Signal the end of the document; returns the rest of the output."""
        if self._closed:
            return b""
        self._closed = True
        if self._encoding is None:
            self._sniff(final=True)
        self._run(final=True)
        return self._take_output()

    @property
    def pending_input(self) -> bytes:
        """Input received but not yet returned: what a caller must send unchanged if
        it abandons the rewriter after a failure (e.g. the policy raised in feed()).
        The buffer is only consumed once a whole _run() has succeeded, so after an
        exception this is exactly the input whose output was never handed out."""
        return self._buf

    # -- Driver -------------------------------------------------------------------

    def _take_output(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out

    def _sniff(self, *, final: bool) -> bool:
        """Decide the encoding once enough of the document is buffered."""
        head = self._buf
        bom = charset.sniff_bom(head)
        if bom is None and not final and len(head) < 3:
            return False
        if bom is not None:
            self._encoding = bom[0]
            # The BOM is not content: start scanning after it, so injection cannot
            # precede it (it is still copied out with the rest).
            self._start = bom[1]
        elif self._header_encoding is not None:
            self._encoding = self._header_encoding
        elif not final and len(head) < charset.PRESCAN_LIMIT:
            return False
        else:
            self._encoding = charset.prescan(head) or charset.DEFAULT_ENCODING
        if self._encoding == charset.PASSTHROUGH:
            self.gave_up = GAVE_UP_CHARSET
        else:
            self._scanner = Scanner(self._encoding, self._injecting, self._policy is not None)
        return True

    def _run(self, *, final: bool) -> None:
        """Process as much of the buffer as can be decided; keep the rest."""
        buf = self._buf
        size = len(buf)
        scanner = self._scanner
        if self.gave_up is not None or scanner is None:
            pos = size  # everything passes through
            events: list[Event] = []
        else:
            events, pos = scanner.scan(buf, self._start, final)
            if scanner.gave_up:
                self.gave_up = _SCANNER_GAVE_UP[scanner.gave_up]
        self._start = 0
        out = self._out
        emitted = 0
        decorate = None if self._policy is None else self._policy.decorate
        for kind, start, end, quote in events:
            if kind == HREF:
                assert decorate is not None
                if quote == QUOTE_PLAIN:
                    # The hot path, inline: most links need no decoding and no edit.
                    plain = buf[start:end].decode("ascii")
                    new = decorate(plain, self._base)
                    if new is None or new == plain:
                        continue
                    edit = self._decorate_plain(buf, start, end, plain, new)
                else:
                    edit = self._decorate_href(buf, start, end, quote)
                if edit is None:
                    continue
            elif kind == INJECT:
                edit = start, start, self._inject
                self.injected = True
            elif kind == FORM:
                edit = self._form(buf, start, end)
                if edit is None:
                    continue
            else:
                self._note_base(buf, start, end)
                continue
            out.append(buf[emitted : edit[0]])
            out.append(edit[2])
            emitted = edit[1]
        out.append(buf[emitted:pos])
        self._buf = buf[pos:]
        if len(self._buf) > self._max_buffer:
            # A single construct larger than we are willing to hold: give up on
            # this document rather than buffer without bound or guess.
            out.append(self._buf)
            self._buf = b""
            self.gave_up = GAVE_UP_TAG_TOO_LONG

    # -- Edits --------------------------------------------------------------------

    def _decorate_href(
        self, buf: bytes, start: int, end: int, quote: int
    ) -> tuple[int, int, bytes] | None:
        """The edit for an href whose value is ``buf[start:end]`` (an HREF event, not
        QUOTE_PLAIN: see _run), if the policy changes it."""
        assert self._policy is not None
        attribute = _Attribute(start, end, _QUOTES[quote])
        url = self._value(buf, attribute)
        if url is None:
            return None
        new = self._policy.decorate(url, self._base)
        return None if new is None else self._edit(buf, attribute, url, new)

    def _decorate_plain(
        self, buf: bytes, start: int, end: int, plain: str, new: str
    ) -> tuple[int, int, bytes] | None:
        """The edit that makes ``new`` of a double-quoted href of PLAIN_ASCII bytes
        ``buf[start:end]``, which is ``plain``."""
        if new.startswith(plain):
            # Appending to a plain value (no "&", so no character reference to extend):
            # insert the escaped addition before the closing quote, as _rewrite_value
            # would, without copying the value. Pages append the same text to many
            # links, so its encoding is remembered.
            addition = new[len(plain) :]
            appended = self._appended.get(addition)
            if appended is None:
                assert self._encoding is not None
                try:
                    appended = _tokens.escape_value(addition, b'"', self._encoding)
                except UnicodeEncodeError:
                    return None
                if len(self._appended) < _APPENDED_MEMO_LIMIT:
                    self._appended[addition] = appended
            self.decorated += 1
            return end, end, appended
        return self._edit(buf, _Attribute(start, end, b'"'), plain, new)

    def _form(self, buf: bytes, start: int, end: int) -> tuple[int, int, bytes] | None:
        """<form method=post>: decorate the action. GET (the missing and invalid value
        default): the query of the action is replaced on submit, so the policy's
        fields go in as hidden inputs instead (after the tag, which ends at ``end``;
        its attributes start at ``start``). method=dialog does not navigate."""
        assert self._policy is not None
        attributes = _attributes(buf, start, end)
        method = self._value(buf, attributes.get(b"method"))
        # An enumerated attribute: ASCII case-insensitive, no whitespace trimming.
        method = "get" if method is None else method.lower()
        action_attribute = attributes.get(b"action")
        action = self._value(buf, action_attribute) if action_attribute is not None else ""
        if action is None or method == "dialog":
            return None
        if method == "post":
            if action_attribute is None:
                # No attribute to edit; adding one is beyond "edit values only".
                return None
            new = self._policy.decorate(action, self._base)
            return None if new is None else self._edit(buf, action_attribute, action, new)
        fields = self._policy.form_fields(action, self._base)
        if not fields:
            return None
        assert self._encoding is not None
        try:
            inputs = b"".join(
                b'<input type="hidden" name="'
                + _tokens.escape_value(name, b'"', self._encoding)
                + b'" value="'
                + _tokens.escape_value(value, b'"', self._encoding)
                + b'">'
                for name, value in fields
            )
        except UnicodeEncodeError:
            return None
        self.decorated += 1
        return end, end, inputs

    def _note_base(self, buf: bytes, start: int, end: int) -> None:
        """Only the first <base> with an href sets the document base URL."""
        if self._base_seen:
            return
        attribute = _attributes(buf, start, end).get(b"href")
        if attribute is not None:
            self._base_seen = True
            self._base = self._value(buf, attribute)

    def _value(self, buf: bytes, attribute: _Attribute | None) -> str | None:
        """The decoded value, or None if absent or not decodable."""
        if attribute is None:
            return None
        assert self._encoding is not None
        try:
            return _tokens.decode_value(buf[attribute.start : attribute.end], self._encoding)
        except UnicodeDecodeError:
            return None

    def _edit(
        self,
        buf: bytes,
        attribute: _Attribute,
        old: str,
        new: str,
    ) -> tuple[int, int, bytes] | None:
        """The edit that replaces a value (None to leave it alone), keeping the raw
        bytes of its unchanged prefix and suffix.

        The decoded old and new values are compared; the longest common prefix and
        suffix are mapped back to raw bytes (at character-reference boundaries, or
        inside a literal run when re-encoding it reproduces the raw bytes exactly),
        and only the middle is encoded. The result is decoded again: if it does not
        give exactly ``new`` (e.g. a kept "&amp" now followed by ";"), the whole
        value is re-encoded instead; if that fails too, the value is left alone.
        """
        if new == old:
            return None
        assert self._encoding is not None
        raw = buf[attribute.start : attribute.end]
        quote = attribute.quote
        if quote == b"" and _tokens.UNQUOTED_UNSAFE.search(raw):
            return None  # ambiguous markup: refuse to guess
        try:
            replacement = _rewrite_value(raw, old, new, quote, self._encoding)
        except (UnicodeDecodeError, UnicodeEncodeError):
            return None
        if replacement is None:
            return None
        self.decorated += 1
        return attribute.start, attribute.end, replacement


# -- Helpers ----------------------------------------------------------------------


def _lookup_header(label: str) -> str | None:
    return charset.lookup_label(label)


def _attributes(buf: bytes, start: int, end: int) -> dict[bytes, _Attribute]:
    """The attributes of a complete tag (see _scan.attribute_parts) by lower-cased name."""
    return {
        name: _Attribute(*_scan.attribute_value(part))
        for name, part in _scan.attribute_parts(buf, start, end).items()
    }


def _rewrite_value(
    raw: bytes, old: str, new: str, quote: bytes | None, encoding: str
) -> bytes | None:
    """The bytes that replace ``raw`` (adding "=" and quotes where the old value had
    none), or None if no encoding of ``new`` decodes back to exactly ``new``."""
    if raw and quote is not None and new.startswith(old):
        # The usual edit appends a parameter. Keeping all of ``raw`` is safe unless
        # its last character reference is still open (no ";" after the last "&"):
        # appended text could extend or terminate it.
        last_ampersand = raw.rfind(b"&")
        if last_ampersand < 0 or b";" in raw[last_ampersand:]:
            appended = raw + _tokens.escape_value(new[len(old) :], quote, encoding)
            if quote or not _tokens.UNQUOTED_UNSAFE.search(appended):
                return appended
    if raw and quote is not None:
        spliced = _splice(raw, old, new, quote, encoding)
        if spliced is not None and (quote or not _tokens.UNQUOTED_UNSAFE.search(spliced)):
            return spliced
    if quote:
        whole = _tokens.escape_value(new, quote, encoding)
        wrapped = whole
    else:
        # Unquoted or missing: stay unquoted if we can, else use double quotes.
        whole = _tokens.escape_value(new, b"", encoding)
        wrapped = whole
        if not whole or _tokens.UNQUOTED_UNSAFE.search(whole):
            whole = _tokens.escape_value(new, b'"', encoding)
            wrapped = b'"' + whole + b'"'
    if _tokens.decode_value(whole, encoding) != new:
        return None
    return wrapped if quote is not None else b"=" + wrapped


def _splice(raw: bytes, old: str, new: str, quote: bytes, encoding: str) -> bytes | None:
    """``raw`` with only the changed middle re-encoded, or None if that does not
    decode back to ``new``."""
    pieces = _tokens.split_value(raw, encoding)
    prefix = 0
    limit = min(len(old), len(new))
    while prefix < limit and old[prefix] == new[prefix]:
        prefix += 1
    suffix = 0
    while suffix < limit - prefix and old[-1 - suffix] == new[-1 - suffix]:
        suffix += 1
    # Walk forward to the last raw boundary at or before ``prefix`` characters.
    text_pos = raw_pos = 0
    for piece in pieces:
        if text_pos + len(piece.text) > prefix:
            if not piece.atomic:
                encoded = piece.text[: prefix - text_pos].encode(encoding)
                if piece.raw.startswith(encoded):
                    text_pos, raw_pos = prefix, raw_pos + len(encoded)
            break
        text_pos += len(piece.text)
        raw_pos += len(piece.raw)
    keep_text, keep_raw = text_pos, raw_pos
    # Walk backward to the first raw boundary at or after ``len(old) - suffix``.
    text_pos, raw_pos = len(old), len(raw)
    for piece in reversed(pieces):
        if text_pos - len(piece.text) < len(old) - suffix:
            if not piece.atomic:
                encoded = piece.text[len(piece.text) - (text_pos - (len(old) - suffix)) :].encode(
                    encoding
                )
                if piece.raw.endswith(encoded):
                    text_pos, raw_pos = len(old) - suffix, raw_pos - len(encoded)
            break
        text_pos -= len(piece.text)
        raw_pos -= len(piece.raw)
    if raw_pos < keep_raw:
        return None
    tail_text = len(old) - text_pos
    middle = new[keep_text : len(new) - tail_text]
    spliced = raw[:keep_raw] + _tokens.escape_value(middle, quote, encoding) + raw[raw_pos:]
    if _tokens.decode_value(spliced, encoding) != new:
        return None
    return spliced
