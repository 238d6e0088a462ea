"""The rewriter's tokenizer side, in pure Python: where the tags, text states and foreign
content of a document are, and which of them the rewriter must act on.

``Scanner.scan(buf, pos, final)`` reads ``buf`` from ``pos`` as far as it can decide, and
returns the events the rewriter acts on, in document order, with the position where it
stopped (the rest must wait for more input, unless ``final``). It keeps the WHATWG
tokenizer state between calls (the text state, the foreign-content stack, whether the
snippet is still to be injected) and never looks at a policy or makes an edit: what to do
at a link, a form or a <base> is the rewriter's business.

Events are tuples of four ints, ``(kind, a, b, c)``:

* ``(HREF, start, end, quote)``: the first href of a link (<a>/<area>, SVG <a>); its value
  is ``buf[start:end]``, and ``quote`` one of the ``QUOTE_*`` codes. ``QUOTE_PLAIN`` is a
  double-quoted value of ``_tokens.PLAIN_ASCII`` bytes (the usual link, which needs no
  decoding). ``QUOTE_NONE`` (no "=") puts ``start == end`` right after the name.
* ``(FORM, attrs, end, 0)`` and ``(BASE, attrs, end, 0)``: a <form> or <base> start tag
  whose attributes are ``buf[attrs:end]`` (the tag ends at ``end``, its ">" included).
* ``(INJECT, pos, pos, 0)``: the snippet goes in at ``pos``.

gateway/html/_speedups.c is the same state machine compiled, with the same interface and
the same events for the same input (tests/test_speedups.py holds them to it); gateway/html
picks one at import time (see ``gateway.html.IMPLEMENTATION``). A change here is a change
there.
"""

from __future__ import annotations

import re
from typing import Final

from . import _tokens

# Event kinds.
HREF: Final = 0
INJECT: Final = 1
FORM: Final = 2
BASE: Final = 3

# How an href value is quoted (the rewriter's _Attribute.quote: b'"', b"'", b"", None).
QUOTE_PLAIN: Final = 0  # double-quoted, PLAIN_ASCII bytes
QUOTE_DOUBLE: Final = 1
QUOTE_SINGLE: Final = 2
QUOTE_UNQUOTED: Final = 3  # unquoted, or empty after "=" ("=>")
QUOTE_NONE: Final = 4  # no "=" at all

# Why the scanner stopped (``gave_up``); the rest of the document is not tokenized.
GAVE_UP_AMBIGUITY: Final = 1  # "<![CDATA[" where only a DOM could tell what it is
GAVE_UP_PLAINTEXT: Final = 2  # <plaintext>: the rest is text

Event = tuple[int, int, int, int]

# Tokenizer states kept between calls.
_DATA: Final = 0
_COMMENT: Final = 1  # comment state, waiting for "-->" / "--!>"
_BOGUS: Final = 2  # bogus comment / DOCTYPE, waiting for ">"
_CDATA: Final = 3  # CDATA section state (foreign content), waiting for "]]>"
_RAW: Final = 4  # RCDATA / RAWTEXT, waiting for the appropriate end tag
_SCRIPT: Final = 5  # script data
_SCRIPT_ESCAPED: Final = 6  # script data escaped ("<!--" seen)
_SCRIPT_DOUBLE: Final = 7  # script data double escaped ("<!--" then "<script")
_PASSTHROUGH: Final = 8  # gave up: the rest is not tokenized

_FOREIGN_ROOTS: Final = (b"svg", b"math")
_TEXT_ELEMENTS: Final = _tokens.RCDATA_ELEMENTS | _tokens.RAWTEXT_ELEMENTS
_FONT_BREAKOUT_ATTRIBUTES: Final = (b"color", b"face", b"size")
_HTML_ANNOTATION_ENCODINGS: Final = ("text/html", "application/xhtml+xml")
_HOLD_CDATA: Final = 2
_HOLD_COMMENT: Final = 3
_QUOTE_OF_GROUP: Final = (
    ("href_plain", QUOTE_PLAIN),
    ("href_dq", QUOTE_DOUBLE),
    ("href_sq", QUOTE_SINGLE),
    ("href_uq", QUOTE_UNQUOTED),
)


class Scanner:
    """Tokenizer state for one document, and the scan over its buffer.

    ``encoding`` is the document's (ASCII-compatible) encoding, for the one attribute value
    the tokenizer itself must read (<annotation-xml encoding>); ``inject``: whether the
    snippet is still to go in (an ``INJECT`` event says where); ``links``: whether to report
    links, forms and <base> at all (not without a policy)."""

    def __init__(self, encoding: str, inject: bool, links: bool) -> None:
        self._encoding = encoding
        self._awaiting_injection = inject
        self._links = links
        self._mode: int = _DATA
        self._end_tag = b""  # the element whose end tag ends RCDATA / RAWTEXT
        # svg/math roots and the integration points opened inside them.
        self._foreign: list[bytes] = []
        # True while the current node is certainly the integration point on top of
        # self._foreign (no start tag seen inside it yet).
        self._integration_point_fresh = False
        self.gave_up = 0
        """0, or why the rest of the document is not tokenized (GAVE_UP_AMBIGUITY,
        GAVE_UP_PLAINTEXT): every later scan returns the end of its buffer."""

    def scan(self, buf: bytes, pos: int, final: bool) -> tuple[list[Event], int]:
        """The events in ``buf[pos:]`` and where the scan stopped: what follows must be
        scanned again with more input appended (all of ``buf`` is consumed if ``final``)."""
        events: list[Event] = []
        size = len(buf)
        links = self._links
        # The pattern depends on state only _start_tag() and _markup() change.
        pattern = self._pattern()
        while pos < size:
            mode = self._mode
            if mode == _DATA:
                skipped = pattern.match(buf, pos)
                assert skipped is not None  # the patterns also match the empty string
                pos = skipped.end()
                if skipped.lastgroup == "tag":
                    # SKIP_HTML stopped at, and matched, an interesting start tag.
                    if skipped.start("link") >= 0:
                        # The hot path: a link in HTML content, its href captured.
                        if links and skipped.start("href") >= 0:
                            events.append(_href(skipped))
                        continue
                    self._start_tag(buf, skipped, events)
                else:
                    if pos >= size:
                        break
                    step = self._markup(buf, pos, final, events)
                    if step is None:
                        break
                    pos = step
                pattern = self._pattern()
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
                self._add_injection(events, pos)
            pos = size
        return events, pos

    def _pattern(self) -> re.Pattern[bytes]:
        if self._awaiting_injection:
            return _tokens.SKIP_BEFORE_HEAD
        if not self._foreign:
            return _tokens.SKIP_HTML
        return _tokens.SKIP_FOREIGN

    def _give_up(self, reason: int) -> None:
        self._mode = _PASSTHROUGH
        self.gave_up = reason

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

    def _markup(self, buf: bytes, pos: int, final: bool, events: list[Event]) -> int | None:
        """Handle what the pattern stopped at; returns the position after it, or None
        if more data is needed."""
        size = len(buf)
        if buf[pos] != 0x3C:  # "<"
            # Non-whitespace text before <head>: it opens <head>/<body> implicitly.
            self._add_injection(events, pos)
            return pos
        if pos + 1 >= size:
            return None
        second = buf[pos + 1]
        if second == 0x21:  # "!": markup declaration open state
            return self._declaration(buf, pos, final)
        if second == 0x3F:  # "?": bogus comment
            self._mode = _BOGUS
            return pos + 2
        if second == 0x2F:  # "/": end tag open state
            if pos + 2 >= size:
                return None
            if not _is_alpha(buf[pos + 2]):
                self._mode = _BOGUS
                return pos + 2
            tag = _tokens.END_TAG.match(buf, pos)
            if tag is None:
                return None
            self._end_tag_token(tag.group("name").lower())
            return tag.end()
        if not _is_alpha(second):
            # "<" that is text (only reached before <head>, the patterns skip it after).
            self._add_injection(events, pos)
            return pos + 1
        tag = _tokens.START_TAG.match(buf, pos)
        if tag is None:
            return None
        self._start_tag(buf, tag, events)
        return tag.end()

    def _declaration(self, buf: bytes, pos: int, final: bool) -> int | None:
        """ "<!": an unfinished comment, CDATA section, DOCTYPE or bogus comment (the
        patterns already skipped complete comments and bogus comments)."""
        rest = buf[pos : pos + 9]
        if buf.startswith(b"<!--", pos):
            if len(rest) < 6 and not final:
                return None  # "<!-->" and "<!--->" are complete comments
            self._mode = _COMMENT
            return pos + 4
        # "<![CDATA[" opens a CDATA section when the current node is not an HTML
        # element. Inside an integration point that holds only right after its start
        # tag: once HTML elements may be open there, we cannot tell without a DOM,
        # so we stop rather than guess.
        foreign = bool(self._foreign)
        if foreign and rest == b"<![CDATA[":
            if self._foreign[-1] in _FOREIGN_ROOTS or self._integration_point_fresh:
                self._mode = _CDATA
            else:
                self._give_up(GAVE_UP_AMBIGUITY)
            return pos + 9
        if not final and (
            (len(rest) < 4 and b"<!--".startswith(rest))
            or (foreign and len(rest) < 9 and b"<![CDATA[".startswith(rest))
        ):
            return None
        self._mode = _BOGUS
        return pos + 2

    def _add_injection(self, events: list[Event], pos: int) -> None:
        if self._awaiting_injection:
            events.append((INJECT, pos, pos, 0))
            self._awaiting_injection = False

    # -- Tags ---------------------------------------------------------------------

    def _start_tag(self, buf: bytes, tag: re.Match[bytes], events: list[Event]) -> None:
        name = tag.group("name").lower()
        if self._awaiting_injection:
            if name == b"head":
                self._add_injection(events, tag.end())
                return
            self._add_injection(events, tag.start("tag"))
        self._integration_point_fresh = False
        if self._foreign and self._foreign[-1] in _FOREIGN_ROOTS:
            if not self._breaks_out(buf, tag, name):
                self._foreign_start_tag(buf, tag, name, events)
                return
            while self._foreign and self._foreign[-1] in _FOREIGN_ROOTS:
                self._foreign.pop()
        if name in _FOREIGN_ROOTS:
            if not _self_closing(buf, tag):
                self._foreign.append(name)
        elif name in _tokens.LINK_TAGS:
            self._first_href(buf, tag, events)
        elif name == b"form":
            if self._links:
                events.append((FORM, tag.start("attrs"), tag.end(), 0))
        elif name == b"base":
            if self._links:
                events.append((BASE, tag.start("attrs"), tag.end(), 0))
        elif name == b"script":
            self._mode = _SCRIPT
        elif name == b"plaintext":
            self._give_up(GAVE_UP_PLAINTEXT)
        elif name in _TEXT_ELEMENTS:
            self._mode = _RAW
            self._end_tag = name

    def _breaks_out(self, buf: bytes, tag: re.Match[bytes], name: bytes) -> bool:
        """ "In foreign content": these start tags pop back to HTML content."""
        if name in _tokens.BREAKOUT_TAGS:
            return True
        if name == b"font":
            attributes = attribute_parts(buf, tag.start("attrs"), tag.end())
            return any(key in attributes for key in _FONT_BREAKOUT_ATTRIBUTES)
        return False

    def _foreign_start_tag(
        self, buf: bytes, tag: re.Match[bytes], name: bytes, events: list[Event]
    ) -> None:
        """A start tag in svg/math: no text states here; track integration points,
        and report SVG <a href> (an SVG 2 hyperlink like the HTML one)."""
        root = self._foreign[-1]
        if root == b"svg" and name == b"a":
            self._first_href(buf, tag, events)
        if _self_closing(buf, tag):
            return
        if name in _FOREIGN_ROOTS:
            self._foreign.append(name)
            return
        if root == b"svg":
            integration_point = name in _tokens.SVG_INTEGRATION_POINTS
        elif name == b"annotation-xml":
            attributes = attribute_parts(buf, tag.start("attrs"), tag.end())
            encoding = self._value(buf, attributes.get(b"encoding"))
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

    def _first_href(self, buf: bytes, tag: re.Match[bytes], events: list[Event]) -> None:
        if self._links:
            found = _tokens.FIRST_HREF.match(buf, tag.start("attrs"), tag.end())
            if found is not None:
                events.append(_href(found))

    def _value(self, buf: bytes, part: re.Match[bytes] | None) -> str | None:
        """The decoded value of an attribute, or None if absent or not decodable."""
        if part is None:
            return None
        start, end, _ = attribute_value(part)
        try:
            return _tokens.decode_value(buf[start:end], self._encoding)
        except UnicodeDecodeError:
            return None


# -- Helpers ----------------------------------------------------------------------


def _is_alpha(byte: int) -> bool:
    return 0x41 <= byte <= 0x5A or 0x61 <= byte <= 0x7A


def _href(found: re.Match[bytes]) -> Event:
    """The HREF event for an href captured by FIRST_HREF (or SKIP_HTML's copy of it)."""
    for group, quote in _QUOTE_OF_GROUP:
        start = found.start(group)
        if start >= 0:
            return HREF, start, found.end(group), quote
    end = found.end("href_value")
    return HREF, end, end, QUOTE_UNQUOTED if found.start("href_eq") >= 0 else QUOTE_NONE


def _self_closing(buf: bytes, tag: re.Match[bytes]) -> bool:
    """Self-closing start tag state: "/" directly before ">", in the gap after the
    last attribute (START_TAG and SKIP_HTML capture that gap as "last_gap")."""
    return buf[tag.end() - 2] == 0x2F and tag.start("last_gap") < tag.end() - 1


def attribute_parts(buf: bytes, start: int, end: int) -> dict[bytes, re.Match[bytes]]:
    """The attributes of a complete tag whose attributes are ``buf[start:end]`` (its ">"
    included), by lower-cased name; the first of duplicates wins (WHATWG drops later
    ones, "duplicate-attribute"). Read a value's place with ``attribute_value``."""
    found: dict[bytes, re.Match[bytes]] = {}
    for part in _tokens.ATTRIBUTE_PARTS.finditer(buf, start, end):
        name = part.group("name").lower()
        if name not in found:
            found[name] = part
    return found


_QUOTE_BYTES: Final = {"dq": b'"', "sq": b"'", "uq": b""}


def attribute_value(part: re.Match[bytes]) -> tuple[int, int, bytes | None]:
    """Where one attribute's value is and how it is quoted, from the last group the
    attribute pattern matched: a value group, "eq" ("=" then ">": empty value, b""), or
    "name" (no "=" at all: None; an edit then inserts one)."""
    kind = part.lastgroup
    if kind == "eq":
        return part.end(), part.end(), b""
    if kind == "name":
        return part.end(), part.end(), None
    assert kind is not None
    return part.start(kind), part.end(kind), _QUOTE_BYTES[kind]
