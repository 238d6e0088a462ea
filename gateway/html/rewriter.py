"""Sans-IO streaming HTML rewriter: decorates outbound links and injects a snippet.

``HtmlRewriter.feed(bytes) -> bytes`` and ``close() -> bytes``; no I/O, no DOM.

How it works (the lol-html idea, in Python): a cheap scanner (one compiled regex,
``_tokens.SKIP_HTML``) skips text, comments and every tag we do not care about in a
single C-level call, and stops only at ``<`` followed by a tag name we must act on:
the links we edit (a, area, form, base), <head> for the injection, and the elements
whose start tag switches the WHATWG tokenizer into another text state (script,
style, textarea, title, ...). Those tags are tokenized fully; the text states are
then simulated by searching for their end condition, so nothing inside a script or
a comment is ever mistaken for markup. A tiny stack of svg/math elements and their
integration points stands in for the tree builder's "foreign content" decisions
(CDATA sections, no text states).

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

import re
from collections.abc import Sequence
from typing import Final, Literal, Protocol, get_args

from . import _tokens, charset

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


# Tokenizer states the rewriter simulates between calls to feed().
_DATA: Final = 0
_COMMENT: Final = 1  # comment state, waiting for "-->" / "--!>"
_BOGUS: Final = 2  # bogus comment / DOCTYPE, waiting for ">"
_CDATA: Final = 3  # CDATA section state (foreign content), waiting for "]]>"
_RAW: Final = 4  # RCDATA / RAWTEXT, waiting for the appropriate end tag
_SCRIPT: Final = 5  # script data
_SCRIPT_ESCAPED: Final = 6  # script data escaped ("<!--" seen)
_SCRIPT_DOUBLE: Final = 7  # script data double escaped ("<!--" then "<script")
_PASSTHROUGH: Final = 8  # copy the rest; entered only through _give_up()

_FOREIGN_ROOTS: Final = (b"svg", b"math")
_TEXT_ELEMENTS: Final = _tokens.RCDATA_ELEMENTS | _tokens.RAWTEXT_ELEMENTS
_FONT_BREAKOUT_ATTRIBUTES: Final = (b"color", b"face", b"size")
_HTML_ANNOTATION_ENCODINGS: Final = ("text/html", "application/xhtml+xml")
_HOLD_CDATA: Final = 2
_HOLD_COMMENT: Final = 3
_APPENDED_MEMO_LIMIT: Final = 64


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
        self._header_encoding = None if charset is None else _lookup_header(charset)
        self._max_buffer = max_buffer
        self._encoding: str | None = None
        self._buf = b""
        self._out: list[bytes] = []
        self._mode: int = _DATA
        self._end_tag = b""  # the element whose end tag ends RCDATA / RAWTEXT
        # svg/math roots and the integration points opened inside them.
        self._foreign: list[bytes] = []
        # True while the current node is certainly the integration point on top of
        # self._foreign (no start tag seen inside it yet).
        self._integration_point_fresh = False
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
        self._awaiting_injection = inject is not None
        # Escaped text appended to plain links, by the text (see _decorate_href).
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
            self._give_up(GAVE_UP_CHARSET)
        return True

    def _give_up(self, reason: GaveUpReason) -> None:
        """Stop rewriting: from here on, every byte is copied through unchanged."""
        self._mode = _PASSTHROUGH
        self.gave_up = reason

    def _run(self, *, final: bool) -> None:
        """Process as much of the buffer as can be decided; keep the rest."""
        buf = self._buf
        size = len(buf)
        pos, self._start = self._start, 0
        emitted = 0
        out = self._out
        # The scanner depends on state only _start_tag() and _markup() change.
        scanner = self._scanner()
        while pos < size:
            mode = self._mode
            if mode == _DATA:
                skipped = scanner.match(buf, pos)
                assert skipped is not None  # the scanner also matches the empty string
                pos = skipped.end()
                if skipped.lastgroup == "tag":
                    # SKIP_HTML stopped at, and matched, an interesting start tag.
                    if skipped.start("link") >= 0:
                        # The hot path: a link in HTML content, its href captured.
                        if skipped.start("href") < 0 or self._policy is None:
                            continue
                        edit = self._decorate_href(buf, skipped)
                        if edit is not None:
                            out.append(buf[emitted : edit[0]])
                            out.append(edit[2])
                            emitted = edit[1]
                        continue
                    edits = self._start_tag(buf, skipped)
                else:
                    if pos >= size:
                        break
                    step = self._markup(buf, pos, final)
                    if step is None:
                        break
                    pos, edits = step
                scanner = self._scanner()
                for start, end, replacement in edits:
                    out.append(buf[emitted:start])
                    out.append(replacement)
                    emitted = end
            elif mode == _PASSTHROUGH:
                pos = size
            else:
                held = pos
                pos = self._text_state(buf, pos, final)
                if pos == held and self._mode == mode:
                    break
        if final:
            if self._awaiting_injection and self._mode == _DATA:
                # The document ended before anything opened <head>/<body>, or inside
                # an unfinished tag (which the tokenizer drops at EOF).
                self._out.append(buf[emitted:pos])
                self._out.append(self._inject)
                self.injected = True
                self._awaiting_injection = False
                emitted = pos
            pos = size
        self._out.append(buf[emitted:pos])
        self._buf = buf[pos:]
        if len(self._buf) > self._max_buffer:
            # A single construct larger than we are willing to hold: give up on
            # this document rather than buffer without bound or guess.
            self._out.append(self._buf)
            self._buf = b""
            self._give_up(GAVE_UP_TAG_TOO_LONG)

    def _scanner(self) -> re.Pattern[bytes]:
        if self._awaiting_injection:
            return _tokens.SKIP_BEFORE_HEAD
        if not self._foreign:
            return _tokens.SKIP_HTML
        return _tokens.SKIP_FOREIGN

    # -- Text states --------------------------------------------------------------

    def _text_state(self, buf: bytes, pos: int, final: bool) -> int:
        """Advance through a text state; returns the new position (unchanged, with
        the mode unchanged, when more data is needed)."""
        size = len(buf)
        mode = self._mode
        hold = _tokens.TEXT_STATE_HOLDBACK
        if mode == _COMMENT:
            found = _tokens.COMMENT_END.search(buf, pos)
            if found is not None:
                self._mode = _DATA
                return found.end()
            hold = _HOLD_COMMENT
        elif mode == _BOGUS:
            close = buf.find(b">", pos)
            if close >= 0:
                self._mode = _DATA
                return close + 1
            hold = 0
        elif mode == _CDATA:
            found = _tokens.CDATA_END.search(buf, pos)
            if found is not None:
                self._mode = _DATA
                return found.end()
            hold = _HOLD_CDATA
        elif mode == _RAW:
            found_at = _tokens.find_end_tag(buf, pos, self._end_tag)
            if found_at >= 0:
                self._mode = _DATA
                return found_at
        elif mode == _SCRIPT:
            found_at = _tokens.find_script_data_end(buf, pos)
            if found_at >= 0:
                if buf[found_at + 1] == 0x21:  # "<!--"
                    self._mode = _SCRIPT_ESCAPED
                    # The dashes of "<!--" count towards "-->": "<!-->" ends it.
                    return found_at + 2
                self._mode = _DATA
                return found_at
        elif mode == _SCRIPT_ESCAPED:
            found = _tokens.SCRIPT_ESCAPED.search(buf, pos)
            if found is not None:
                if found.group("slash") is None:
                    self._mode = _SCRIPT
                    return found.end()
                if found.group("slash"):
                    self._mode = _DATA
                    return found.start()
                self._mode = _SCRIPT_DOUBLE
                return found.end()
        else:  # _SCRIPT_DOUBLE
            found = _tokens.SCRIPT_DOUBLE_ESCAPED.search(buf, pos)
            if found is not None:
                self._mode = _SCRIPT if found.group(0) == b"-->" else _SCRIPT_ESCAPED
                return found.end()
        if final:
            return size
        return max(pos, size - hold)

    # -- Markup in the data state -------------------------------------------------

    def _markup(
        self, buf: bytes, pos: int, final: bool
    ) -> tuple[int, list[tuple[int, int, bytes]]] | None:
        """Handle what the scanner stopped at. Returns the position after it and
        the edits to make before it, or None if more data is needed."""
        size = len(buf)
        edits: list[tuple[int, int, bytes]] = []
        if buf[pos] != 0x3C:  # "<"
            # Non-whitespace text before <head>: it opens <head>/<body> implicitly.
            self._add_injection(edits, pos)
            return pos, edits
        if pos + 1 >= size:
            return None
        second = buf[pos + 1]
        if second == 0x21:  # "!": markup declaration open state
            return self._declaration(buf, pos, final)
        if second == 0x3F:  # "?": bogus comment
            self._mode = _BOGUS
            return pos + 2, edits
        if second == 0x2F:  # "/": end tag open state
            if pos + 2 >= size:
                return None
            if not _is_alpha(buf[pos + 2]):
                self._mode = _BOGUS
                return pos + 2, edits
            tag = _tokens.END_TAG.match(buf, pos)
            if tag is None:
                return None
            self._end_tag_token(tag.group("name").lower())
            return tag.end(), edits
        if not _is_alpha(second):
            # "<" that is text (only reached before <head>, the scanner skips it after).
            self._add_injection(edits, pos)
            return pos + 1, edits
        tag = _tokens.START_TAG.match(buf, pos)
        if tag is None:
            return None
        return tag.end(), self._start_tag(buf, tag)

    def _declaration(
        self, buf: bytes, pos: int, final: bool
    ) -> tuple[int, list[tuple[int, int, bytes]]] | None:
        """ "<!": an unfinished comment, CDATA section, DOCTYPE or bogus comment (the
        scanner already skipped complete comments and bogus comments)."""
        rest = buf[pos : pos + 9]
        if buf.startswith(b"<!--", pos):
            if len(rest) < 6 and not final:
                return None  # "<!-->" and "<!--->" are complete comments
            self._mode = _COMMENT
            return pos + 4, []
        # "<![CDATA[" opens a CDATA section when the current node is not an HTML
        # element. Inside an integration point that holds only right after its start
        # tag: once HTML elements may be open there, we cannot tell without a DOM,
        # so we stop rewriting this document rather than guess.
        foreign = bool(self._foreign)
        if foreign and rest == b"<![CDATA[":
            if self._foreign[-1] in _FOREIGN_ROOTS or self._integration_point_fresh:
                self._mode = _CDATA
            else:
                self._give_up(GAVE_UP_AMBIGUITY)
            return pos + 9, []
        if not final and (
            (len(rest) < 4 and b"<!--".startswith(rest))
            or (foreign and len(rest) < 9 and b"<![CDATA[".startswith(rest))
        ):
            return None
        self._mode = _BOGUS
        return pos + 2, []

    def _add_injection(self, edits: list[tuple[int, int, bytes]], pos: int) -> None:
        if self._awaiting_injection:
            edits.append((pos, pos, self._inject))
            self.injected = True
            self._awaiting_injection = False

    # -- Tags ---------------------------------------------------------------------

    def _start_tag(self, buf: bytes, tag: re.Match[bytes]) -> list[tuple[int, int, bytes]]:
        name = tag.group("name").lower()
        edits: list[tuple[int, int, bytes]] = []
        if self._awaiting_injection:
            if name == b"head":
                edits.append((tag.end(), tag.end(), self._inject))
                self.injected = True
                self._awaiting_injection = False
                return edits
            self._add_injection(edits, tag.start("tag"))
        self._integration_point_fresh = False
        if self._foreign and self._foreign[-1] in _FOREIGN_ROOTS:
            if not self._breaks_out(buf, tag, name):
                self._foreign_start_tag(buf, tag, name, edits)
                return edits
            while self._foreign and self._foreign[-1] in _FOREIGN_ROOTS:
                self._foreign.pop()
        if name in _FOREIGN_ROOTS:
            if not _self_closing(buf, tag):
                self._foreign.append(name)
        elif name in _tokens.LINK_TAGS:
            self._decorate_first_href(buf, tag, edits)
        elif name == b"form":
            self._form(buf, tag, edits)
        elif name == b"base":
            self._note_base(buf, tag)
        elif name == b"script":
            self._mode = _SCRIPT
        elif name == b"plaintext":
            self._give_up(GAVE_UP_PLAINTEXT)
        elif name in _TEXT_ELEMENTS:
            self._mode = _RAW
            self._end_tag = name
        return edits

    def _breaks_out(self, buf: bytes, tag: re.Match[bytes], name: bytes) -> bool:
        """ "In foreign content": these start tags pop back to HTML content."""
        if name in _tokens.BREAKOUT_TAGS:
            return True
        if name == b"font":
            attributes = _attributes(buf, tag)
            return any(key in attributes for key in _FONT_BREAKOUT_ATTRIBUTES)
        return False

    def _foreign_start_tag(
        self, buf: bytes, tag: re.Match[bytes], name: bytes, edits: list[tuple[int, int, bytes]]
    ) -> None:
        """A start tag in svg/math: no text states here; track integration points,
        and decorate SVG <a href> (an SVG 2 hyperlink like the HTML one)."""
        root = self._foreign[-1]
        if root == b"svg" and name == b"a":
            self._decorate_first_href(buf, tag, edits)
        if _self_closing(buf, tag):
            return
        if name in _FOREIGN_ROOTS:
            self._foreign.append(name)
            return
        if root == b"svg":
            integration_point = name in _tokens.SVG_INTEGRATION_POINTS
        elif name == b"annotation-xml":
            encoding = self._value(buf, _attributes(buf, tag).get(b"encoding"))
            integration_point = (encoding or "").lower() in _HTML_ANNOTATION_ENCODINGS
        else:
            integration_point = name in _tokens.MATHML_INTEGRATION_POINTS
        if integration_point:
            self._foreign.append(name)
            self._integration_point_fresh = True

    def _end_tag_token(self, name: bytes) -> None:
        """End tags only matter for the foreign-content stack."""
        stack = self._foreign
        if not stack:
            return
        if stack[-1] in _FOREIGN_ROOTS and name in (b"br", b"p"):
            # "In foreign content": </br> and </p> break out like start tags.
            while stack and stack[-1] in _FOREIGN_ROOTS:
                stack.pop()
        elif name in stack:
            while stack.pop() != name:
                pass

    # -- Edits --------------------------------------------------------------------

    def _decorate_first_href(
        self, buf: bytes, tag: re.Match[bytes], edits: list[tuple[int, int, bytes]]
    ) -> None:
        if self._policy is None:
            return
        found = _tokens.FIRST_HREF.match(buf, tag.start("attrs"), tag.end())
        if found is not None:
            edit = self._decorate_href(buf, found)
            if edit is not None:
                edits.append(edit)

    def _decorate_href(self, buf: bytes, found: re.Match[bytes]) -> tuple[int, int, bytes] | None:
        """The edit for the href captured in ``found`` (the href_* groups of
        FIRST_HREF), if the policy changes it."""
        assert self._policy is not None
        # The common case first: a double-quoted value that needs no decoding.
        raw = found.group("href_plain")
        if raw is None:
            attribute = _href_attribute(found)
            url = self._value(buf, attribute)
            if url is None:
                return None
            new = self._policy.decorate(url, self._base)
            return None if new is None else self._edit(buf, attribute, url, new)
        plain = raw.decode("ascii")
        new = self._policy.decorate(plain, self._base)
        if new is None or new == plain:
            return None
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
            end = found.end("href_plain")
            self.decorated += 1
            return end, end, appended
        return self._edit(buf, _href_attribute(found), plain, new)

    def _form(self, buf: bytes, tag: re.Match[bytes], edits: list[tuple[int, int, bytes]]) -> None:
        """<form method=post>: decorate the action. GET (the missing and invalid value
        default): the query of the action is replaced on submit, so the policy's
        fields go in as hidden inputs instead. method=dialog does not navigate."""
        if self._policy is None:
            return
        attributes = _attributes(buf, tag)
        method = self._value(buf, attributes.get(b"method"))
        # An enumerated attribute: ASCII case-insensitive, no whitespace trimming.
        method = "get" if method is None else method.lower()
        action_attribute = attributes.get(b"action")
        action = self._value(buf, action_attribute) if action_attribute is not None else ""
        if action is None or method == "dialog":
            return
        if method == "post":
            if action_attribute is None:
                # No attribute to edit; adding one is beyond "edit values only".
                return
            new = self._policy.decorate(action, self._base)
            if new is not None:
                edit = self._edit(buf, action_attribute, action, new)
                if edit is not None:
                    edits.append(edit)
            return
        fields = self._policy.form_fields(action, self._base)
        if not fields:
            return
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
            return
        edits.append((tag.end(), tag.end(), inputs))
        self.decorated += 1

    def _note_base(self, buf: bytes, tag: re.Match[bytes]) -> None:
        """Only the first <base> with an href sets the document base URL."""
        if self._base_seen:
            return
        attribute = _attributes(buf, tag).get(b"href")
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


def _is_alpha(byte: int) -> bool:
    return 0x41 <= byte <= 0x5A or 0x61 <= byte <= 0x7A


def _attributes(buf: bytes, tag: re.Match[bytes]) -> dict[bytes, _Attribute]:
    """Attributes by lower-cased name; the first of duplicates wins (WHATWG drops
    later ones, "duplicate-attribute")."""
    found: dict[bytes, _Attribute] = {}
    for part in _tokens.ATTRIBUTE_PARTS.finditer(buf, tag.start("attrs"), tag.end()):
        name = part.group("name").lower()
        if name not in found:
            found[name] = _attribute(part)
    return found


_QUOTE_OF_GROUP: Final = {"dq": b'"', "sq": b"'", "uq": b""}


def _attribute(part: re.Match[bytes]) -> _Attribute:
    """Where the value is, from the last group the attribute pattern matched: a value
    group, "eq" ("=" then ">": empty value), or "name" (no "=" at all)."""
    kind = part.lastgroup
    if kind == "eq":
        return _Attribute(part.end(), part.end(), b"")
    if kind == "name":
        return _Attribute(part.end(), part.end(), None)
    assert kind is not None
    return _Attribute(part.start(kind), part.end(kind), _QUOTE_OF_GROUP[kind])


def _href_attribute(found: re.Match[bytes]) -> _Attribute:
    """Where the value of an href captured by FIRST_HREF is (see _attribute)."""
    for group, quote in _HREF_VALUE_GROUPS:
        start = found.start(group)
        if start >= 0:
            return _Attribute(start, found.end(group), quote)
    end = found.end("href_value")
    return _Attribute(end, end, b"" if found.start("href_eq") >= 0 else None)


_HREF_VALUE_GROUPS: Final = (
    ("href_plain", b'"'),
    ("href_dq", b'"'),
    ("href_sq", b"'"),
    ("href_uq", b""),
)


def _self_closing(buf: bytes, tag: re.Match[bytes]) -> bool:
    """Self-closing start tag state: "/" directly before ">", in the gap after the
    last attribute (START_TAG and SKIP_HTML capture that gap as "last_gap")."""
    return buf[tag.end() - 2] == 0x2F and tag.start("last_gap") < tag.end() - 1


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
