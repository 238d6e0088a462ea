"""Byte-level HTML token patterns and attribute-value helpers for the rewriter.

Each regex below stands for one or more states of the WHATWG HTML tokenizer
(https://html.spec.whatwg.org/multipage/parsing.html#tokenization) and says which.
They work on raw bytes of any ASCII-compatible encoding: every byte the tokenizer
branches on (``< > / = " ' ! ? - [ ]``, ASCII whitespace, ASCII letters) is below
0x40, or an ASCII letter, and none of the legacy multi-byte encodings we accept
(Shift_JIS, EUC-JP, GB18030, Big5, EUC-KR) uses a byte below 0x40 as a trail byte,
except GB18030's four-byte form whose 2nd and 4th bytes are ASCII digits
(0x30-0x39), which the tokenizer never branches on. Shift_JIS and Big5 trail bytes
can be ASCII letters (0x40-0x7E), but only right after a non-ASCII lead byte,
which has already ended any tag name or character-reference name we were reading.

Patterns use possessive quantifiers and atomic groups (Python 3.11+) on purpose:
the tokenizer is deterministic, so a pattern must never backtrack into a different
reading of the same bytes (e.g. re-reading ``href="x>`` as an attribute named
``"x`` when the closing quote has not arrived yet in this network chunk).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from html.entities import html5 as _NAMED_REFERENCES

# Pattern pieces are ``str`` so they can be composed with f-strings; ``_bytes_re``
# compiles the finished pattern for bytes (all pieces are ASCII).


def _bytes_re(pattern: str) -> re.Pattern[bytes]:
    return re.compile(pattern.encode("ascii"))


# -- Building blocks -----------------------------------------------------------

# "ASCII whitespace" as the tokenizer sees it. The input stream preprocessor turns
# CR and CRLF into LF before tokenizing, so CR counts as whitespace here too.
WS = r"[\t\n\f\r ]"

# What ends a tag name: the tag name state leaves on whitespace, "/" or ">".
_TAG_NAME_END = r"[\t\n\f\r />]"

# Tag open state: an ASCII alpha starts a tag name; the tag name state then takes
# everything up to whitespace, "/" or ">" (including "<", "=", quotes: parse errors
# that still belong to the name).
TAG_NAME = r"[A-Za-z][^\t\n\f\r />]*+"

# Before attribute name state: whitespace and "/" (self-closing start tag state,
# which reconsumes anything but ">" in the before attribute name state) are skipped
# between attributes. An attribute may also follow a quoted value directly
# (after attribute value (quoted) state, "missing-whitespace-between-attributes").
_ATTR_GAP = r"[\t\n\f\r /]*+"

# Attribute name state. Its first character may be "=" (before attribute name
# state, "unexpected-equals-sign-before-attribute-name"); after that "=" ends it.
ATTR_NAME = r"[^\t\n\f\r />][^\t\n\f\r />=]*+"

# Attribute value (double-quoted / single-quoted / unquoted) states. The unquoted
# value cannot start with a quote (before attribute value state switches to the
# quoted states) and ends at whitespace or ">"; quotes, "<", "=" and "`" inside it
# are parse errors but part of the value.
_DQ_VALUE = r'"(?P<dq>[^"]*+)"'
_SQ_VALUE = r"'(?P<sq>[^']*+)'"
_UNQUOTED_VALUE = r"""(?P<uq>[^\t\n\f\r >"'][^\t\n\f\r >]*+)"""

# After attribute name state -> before attribute value state. "=" followed by ">"
# is an empty value (before attribute value state, "missing-attribute-value").
# Departure from a plain reading of the states, for streaming: once "=" is seen
# the value must be complete. Without the negative lookahead, an unfinished quoted
# value (closing quote still in the next network chunk) could be re-read as more
# attribute names ('href="x>' as the name '"x') and end the tag too early.
_ATTR_VALUE_PART = (
    rf"(?:{WS}*+(?P<eq>=){WS}*+(?:{_DQ_VALUE}|{_SQ_VALUE}|{_UNQUOTED_VALUE}|(?=>))"
    rf"|(?!{WS}*+=))"
)


def _uncaptured(pattern: str) -> str:
    """The same pattern without named groups (a repeated group cannot be named)."""
    return re.sub(r"[(][?]P<[a-z]+>", "(?:", pattern)


# Run over a complete tag, its ">" included, so the "(?=>)" lookahead sees it.
ATTRIBUTE_PARTS = _bytes_re(rf"{_ATTR_GAP}(?P<name>{ATTR_NAME}){_ATTR_VALUE_PART}")
ATTRIBUTES = rf"(?:{_ATTR_GAP}{ATTR_NAME}{_uncaptured(_ATTR_VALUE_PART)})*+{_ATTR_GAP}"
# The same, its last gap captured as "last_gap": a start tag is self-closing (self-
# closing start tag state) exactly when that gap ends with the "/" before ">". A
# "/" anywhere else before ">" ends an unquoted value and is part of it.
_ATTRIBUTES_LAST_GAP = (
    rf"(?:{_ATTR_GAP}{ATTR_NAME}{_uncaptured(_ATTR_VALUE_PART)})*+(?P<last_gap>{_ATTR_GAP})"
)
# The first href attribute of a tag: skip attributes with other names, then capture
# the href like ATTRIBUTE_PARTS, its groups named "href" (the name), "href_value"
# (all after the name) and href_eq, href_dq, href_sq, href_uq, plus href_plain: a
# double-quoted value of PLAIN_ASCII bytes (the usual link, which then needs no
# decoding; testing it here costs far less than a PLAIN_ASCII call afterwards).
_HREF = r"(?i:href)(?=[\t\n\f\r />=])"
_PLAIN_DQ_VALUE = r'"(?P<plain>[^"&\r\0\x80-\xff]*+)"'
_FIRST_HREF = (
    rf"(?:{_ATTR_GAP}(?!{_HREF}){ATTR_NAME}{_uncaptured(_ATTR_VALUE_PART)})*+"
    rf"{_ATTR_GAP}(?P<href>{_HREF})(?P<href_value>"
    + re.sub(
        r"[(][?]P<",
        "(?P<href_",
        _ATTR_VALUE_PART.replace(_DQ_VALUE, f"{_PLAIN_DQ_VALUE}|{_DQ_VALUE}"),
    )
    + ")"
)
FIRST_HREF = _bytes_re(_FIRST_HREF)

# A complete start or end tag (tag open -> ... -> data state on ">"). End tags are
# tokenized exactly like start tags: their attributes are parse errors but a ">"
# inside a quoted value still does not end them.
START_TAG = _bytes_re(rf"(?P<tag><(?P<name>{TAG_NAME})(?P<attrs>{_ATTRIBUTES_LAST_GAP})>)")
END_TAG = _bytes_re(rf"</(?P<name>{TAG_NAME}){ATTRIBUTES}>")

# -- Comments and other markup declarations --------------------------------------

# These and the other tokens the scanners skip are written without their leading
# "<" (see _skip).

# Markup declaration open state, "<!--" -> comment start state. "<!-->" and
# "<!--->" end the comment at once (abrupt-closing-of-empty-comment); otherwise the
# comment ends at the first "-->" or "--!>" (comment end / comment end bang states).
# Nested "<!--" only raise parse errors, so they do not change where it ends.
_COMMENT = r"!--(?:-?>|(?:[^-]++|-(?!-!?>))*+--!?>)"
COMMENT_END = _bytes_re(r"--!?>")

# Bogus comment state, reached from: markup declaration open state when "<!" is not
# followed by "--", "DOCTYPE" or (in foreign content) "[CDATA["; the DOCTYPE states,
# which also end at the first ">" whatever the quoting (a quoted public id with ">"
# is "abrupt-doctype-public-identifier"); tag open state on "?"; end tag open state
# on anything but an ASCII alpha or ">". "</>" is dropped (missing-end-tag-name).
_BOGUS_COMMENT = r"(?:!(?!--)|\?|/[^A-Za-z>])[^>]*+>|/>"
# In foreign content "<![CDATA[" opens a CDATA section (CDATA section state), so
# the bogus-comment reading must not swallow it there.
_BOGUS_COMMENT_FOREIGN = r"(?:!(?!--|\[CDATA\[)|\?|/[^A-Za-z>])[^>]*+>|/>"
CDATA_END = _bytes_re(r"\]\]>")

# Data state: text up to the next "<". A "<" followed by anything that is not an
# ASCII alpha, "!", "/" or "?" is text too (tag open state, "invalid-first-character-
# of-tag-name"). A "<" at the very end of the buffer is not matched: we need the
# next byte to know.
_TEXT_LT = r"(?=[^A-Za-z!/?])"
# An end tag (all of them are skipped: only the foreign-content stack needs them).
_END_TAG = rf"/{TAG_NAME}{ATTRIBUTES}>"


def _skip(*after_lt: str) -> str:
    """A run of data-state text and tokens that start with "<": each token is some
    text, "<", then one of ``after_lt``; the run ends with the text up to the next
    "<" it cannot skip.

    Shaped for re's speed rather than as "(?:text|<tag|<!--...)*+": the text and
    the "<" are matched once per token, and re's branch test rejects most
    alternatives from the byte after "<" without entering them (about a quarter
    fewer instructions for SKIP_HTML over the corpus)."""
    return rf"(?:[^<]*+<(?:{'|'.join(after_lt)}))*+[^<]*+"


# -- Elements whose start tag changes the tokenizer state -------------------------

# The tree builder switches the tokenizer for these (HTML namespace only):
# RCDATA: title, textarea. RAWTEXT: style, xmp, iframe, noembed, noframes.
# Script data: script. PLAINTEXT: plaintext. <noscript> is RAWTEXT only when
# scripting is enabled; we rewrite for clients that may run without scripts, and
# its content is ordinary markup for the links we care about, so it stays "data".
RCDATA_ELEMENTS = frozenset({b"title", b"textarea"})
RAWTEXT_ELEMENTS = frozenset({b"style", b"xmp", b"iframe", b"noembed", b"noframes"})

# Tags the fast scanner must stop at in HTML content: those we edit (a, area, form,
# base), <head> for injection, the text-mode switches above, and svg/math, which
# enter foreign content (where CDATA sections exist and text modes do not).
INTERESTING_TAGS = sorted(
    {b"a", b"area", b"form", b"base", b"head", b"script", b"plaintext", b"svg", b"math"}
    | RCDATA_ELEMENTS
    | RAWTEXT_ELEMENTS
)


def _alternation(names: Iterable[bytes]) -> str:
    """A pattern for exactly one of ``names`` (lower-case ASCII), any ASCII case, with
    shared prefixes factored out ("a(?:rea)?", "s(?:cript|tyle|vg)"). It runs at every
    "<" of the document, and re tries the branches of a plain "a|area|base|..." one
    by one; the factored form rejects most tag names after one or two bytes."""

    def branches(suffixes: list[str]) -> str:
        by_first: dict[str, list[str]] = {}
        for suffix in suffixes:
            if suffix:
                by_first.setdefault(suffix[0], []).append(suffix[1:])
        if not by_first:
            return ""
        parts = [re.escape(first) + branches(rest) for first, rest in by_first.items()]
        pattern = parts[0] if len(parts) == 1 else f"(?:{'|'.join(parts)})"
        # The longer names first (greedy "?"); the caller's delimiter test backtracks.
        return f"(?:{pattern})?" if "" in suffixes else pattern

    return f"(?i:{branches(sorted(name.decode('ascii') for name in names))})"


def _other_name(names: Iterable[bytes]) -> str:
    """A pattern for a whole tag name (as TAG_NAME, any ASCII case) that is none of
    ``names`` (lower-case ASCII). It walks the same prefix tree as _alternation, but
    where a name leaves the tree it takes the rest of the tag name at once:

        <letter that starts no name> rest | a (<not r> rest | r (...) | <name ends>) | ...

    The scanner runs it at every "<"; a negative lookahead for the interesting names
    followed by TAG_NAME costs more (re enters the lookahead's branches and then
    reads the name a second time)."""
    any_case = {letter: letter.upper() + letter for letter in "abcdefghijklmnopqrstuvwxyz"}
    rest = r"[^\t\n\f\r />]*+"  # tag name state, up to _TAG_NAME_END

    def node(suffixes: list[str], first: bool) -> str:
        children: dict[str, list[str]] = {}
        for suffix in suffixes:
            if suffix:
                children.setdefault(suffix[0], []).append(suffix[1:])
        excluded = "".join(any_case[letter] for letter in sorted(children))
        if first:
            # Tag open state: the name starts with an ASCII alpha.
            leaves = f"[{''.join(v for k, v in any_case.items() if k not in children)}]"
        else:
            leaves = rf"[^{excluded}\t\n\f\r />]"
        branches = [leaves + rest]
        for letter, after in sorted(children.items()):
            branches.append(f"[{any_case[letter]}]{node(after, False)}")
        if not first and "" not in suffixes:
            # The name may end here: a proper prefix of an interesting name.
            branches.append(f"(?={_TAG_NAME_END})")
        return f"(?:{'|'.join(branches)})"

    return node(sorted(name.decode("ascii") for name in names), True)


_UNINTERESTING_NAME = _other_name(INTERESTING_TAGS)
# The links we decorate, by far the most frequent interesting tags.
LINK_TAGS = frozenset({b"a", b"area"})

# The cheap scanner: the longest run of complete tokens that need no work (text,
# uninteresting start tags, all end tags, comments, doctype and bogus comments),
# then, if it is complete, the interesting start tag it stopped at, captured like
# START_TAG. One regex call per interesting tag, the skipping all done in C. For
# a link (group "link" instead of "name") it also captures the first href like
# FIRST_HREF, if there is one, so the hot path needs no second pass over the tag
# (and "attrs" then holds only the attributes after that href).
SKIP_HTML = _bytes_re(
    _skip(
        _END_TAG,
        rf"{_UNINTERESTING_NAME}{ATTRIBUTES}>",
        _TEXT_LT,
        _COMMENT,
        _BOGUS_COMMENT,
    )
    + rf"(?P<tag><(?:(?P<link>{_alternation(LINK_TAGS)})(?={_TAG_NAME_END})(?:{_FIRST_HREF})?+"
    rf"|(?P<name>{_alternation(set(INTERESTING_TAGS) - LINK_TAGS)})(?={_TAG_NAME_END}))"
    rf"(?P<attrs>{_ATTRIBUTES_LAST_GAP})>)?"
)
# In foreign content (and inside integration points) every tag may change the
# namespace stack and "<![CDATA[" may open a CDATA section, so only text, comments
# and the other bogus comments are skipped.
SKIP_FOREIGN = _bytes_re(_skip(_TEXT_LT, _COMMENT, _BOGUS_COMMENT_FOREIGN))
# Before the snippet is injected: whitespace, comments, doctype, end tags and the
# <html> start tag do not open <head> or <body>; anything else does.
SKIP_BEFORE_HEAD = _bytes_re(
    rf"(?:{WS}++|<(?:{_END_TAG}|(?=(?i:html){_TAG_NAME_END}){TAG_NAME}{ATTRIBUTES}>"
    rf"|{_COMMENT}|{_BOGUS_COMMENT}))*+"
)

# -- Text states that end only at a matching end tag ----------------------------


# What may follow an appropriate end tag's name (as _TAG_NAME_END).
_TAG_NAME_END_BYTES = b"\t\n\f\r />"


def find_end_tag(buf: bytes, pos: int, name: bytes) -> int:
    """Where the first appropriate end tag for ``name`` (lower-case) starts at or
    after ``pos``, or -1 (also when one may start but its delimiter has not arrived).

    RCDATA/RAWTEXT/script data end tag open -> end tag name states: "</name" ends
    the text only when followed by whitespace, "/" or ">", in any ASCII case. Text
    is most of a page's bytes and rarely holds "</", so bytes.find (memchr-fast)
    for "</" and a check of the name beat re's search byte by byte."""
    end = len(buf) - len(name) - 2
    lt = buf.find(b"</", pos)
    while 0 <= lt < end:
        after = lt + 2 + len(name)
        if buf[after] in _TAG_NAME_END_BYTES and buf[lt + 2 : after].lower() == name:
            return lt
        lt = buf.find(b"</", lt + 2)
    return -1


def find_script_data_end(buf: bytes, pos: int) -> int:
    """Script data state: where the first "</script" + delimiter (the element ends)
    or "<!--" (script data escape start / escape start dash states) starts at or
    after ``pos``, or -1."""
    end_tag = find_end_tag(buf, pos, b"script")
    if end_tag < 0:
        return buf.find(b"<!--", pos)
    comment = buf.find(b"<!--", pos, end_tag)
    return end_tag if comment < 0 else comment


# Script data escaped (dash / dash dash) states: "-->" returns to script data;
# "</script"+delim ends the element; "<script"+delim enters the double escaped state
# (script data double escape start state).
SCRIPT_ESCAPED = _bytes_re(rf"-->|<(?P<slash>/?)(?i:script){_TAG_NAME_END}")
# Script data double escaped states: "-->" returns to script data, "</script"+delim
# only goes back to the escaped state (script data double escape end state).
SCRIPT_DOUBLE_ESCAPED = _bytes_re(rf"-->|</(?i:script){_TAG_NAME_END}")

# The longest pattern a text state waits for ("</noframes" + delimiter) is 11 bytes:
# holding back this many bytes at the end of a chunk is always enough.
TEXT_STATE_HOLDBACK = 16

# -- Foreign content (tree construction, "in foreign content" insertion mode) ----

# A start tag with one of these names makes the tree builder pop back to HTML
# content ("breakout"); <font> only with color, face or size (checked separately).
BREAKOUT_TAGS = frozenset(
    b"b big blockquote body br center code dd div dl dt em embed h1 h2 h3 h4 h5 h6 head "
    b"hr i img li listing menu meta nobr ol p pre ruby s small span strong strike sub sup "
    b"table tt u ul var".split()
)
# Integration points: inside these, content is parsed as HTML again. (annotation-xml
# only with encoding text/html or application/xhtml+xml, checked separately.)
SVG_INTEGRATION_POINTS = frozenset({b"foreignobject", b"desc", b"title"})
MATHML_INTEGRATION_POINTS = frozenset({b"mi", b"mo", b"mn", b"ms", b"mtext"})

# -- Character references in attribute values -----------------------------------

# Character reference state as reached from an attribute value: "&#x" hex, "&#"
# decimal, or an alphanumeric run that may contain a named reference.
_CHAR_REF = _bytes_re(
    r"&(?:#[xX](?P<hex>[0-9A-Fa-f]+);?|#(?P<dec>[0-9]+);?|(?P<named>[A-Za-z0-9]+;?))"
)
_LONGEST_NAME = max(len(name) for name in _NAMED_REFERENCES)

# Numeric character reference end state: C1 controls are read as windows-1252 (the
# five code points windows-1252 leaves undefined stay as they are).
_C1_REPLACEMENTS = {
    code: bytes([code]).decode("cp1252")
    for code in range(0x80, 0xA0)
    if code not in (0x81, 0x8D, 0x8F, 0x90, 0x9D)
}


def _numeric(code: int) -> str:
    if code == 0 or code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
        return "\ufffd"
    return _C1_REPLACEMENTS.get(code, chr(code))


def _normalize_text(text: str) -> str:
    """Input stream preprocessing: CRLF and CR become LF, and NUL in an attribute
    value becomes U+FFFD (attribute value states, "unexpected-null-character")."""
    return text.replace("\r\n", "\n").replace("\r", "\n").replace("\0", "\ufffd")


class ValuePiece:
    """A run of raw value bytes and the text it stands for; ``atomic`` pieces are
    character references, which cannot be split."""

    __slots__ = ("atomic", "raw", "text")

    def __init__(self, raw: bytes, text: str, atomic: bool) -> None:
        self.raw = raw
        self.text = text
        self.atomic = atomic


def split_value(raw: bytes, encoding: str) -> list[ValuePiece]:
    """Decode an attribute value as the tokenizer would, keeping the raw bytes of
    each piece. Raises UnicodeDecodeError if the bytes are not valid in ``encoding``.
    """
    pieces: list[ValuePiece] = []
    literal_start = 0
    for match in _CHAR_REF.finditer(raw):
        reference = _decode_reference(match, raw)
        if reference is None:
            continue
        text, end = reference
        if match.start() > literal_start:
            chunk = raw[literal_start : match.start()]
            pieces.append(ValuePiece(chunk, _normalize_text(chunk.decode(encoding)), False))
        pieces.append(ValuePiece(raw[match.start() : end], text, True))
        literal_start = end
    if literal_start < len(raw):
        chunk = raw[literal_start:]
        pieces.append(ValuePiece(chunk, _normalize_text(chunk.decode(encoding)), False))
    return pieces


def _decode_reference(match: re.Match[bytes], raw: bytes) -> tuple[str, int] | None:
    """The text of one reference and where it ends in ``raw``, or None when the
    tokenizer would leave the "&" as literal text."""
    if match.group("hex") is not None:
        return _numeric(int(match.group("hex"), 16)), match.end()
    if match.group("dec") is not None:
        return _numeric(int(match.group("dec"))), match.end()
    candidate = match.group("named").decode("ascii")
    # Named character reference state: the longest name in the table that is a
    # prefix of what follows "&".
    for length in range(min(len(candidate), _LONGEST_NAME), 0, -1):
        name = candidate[:length]
        replacement = _NAMED_REFERENCES.get(name)
        if replacement is None:
            continue
        if not name.endswith(";"):
            # Legacy rule for attribute values: a reference without ";" followed by
            # "=" or an ASCII alphanumeric is not a reference (historical reasons).
            following = raw[match.start() + 1 + length : match.start() + 2 + length]
            if following == b"=" or following.isalnum():
                return None
        return replacement, match.start() + 1 + length
    return None


# Values made only of these bytes mean the same in every encoding we accept and
# hold no character references or characters the preprocessor would change.
PLAIN_ASCII = _bytes_re(r"[^&\r\0\x80-\xff]*+")


def decode_value(raw: bytes, encoding: str) -> str:
    """The attribute value as the tree builder would store it."""
    if PLAIN_ASCII.fullmatch(raw):
        return raw.decode("ascii")  # the common case, and every encoding we accept agrees
    if PLAIN_ASCII.fullmatch(raw.replace(b"&amp;", b"")):
        # The next most common: a query string whose every "&" starts an "&amp;", which
        # always means "&" (the named reference "amp;" ends at its ";"). A twentieth of a
        # page's links, and split_value costs several times the rest of their rewriting.
        return raw.decode("ascii").replace("&amp;", "&")
    return "".join(piece.text for piece in split_value(raw, encoding))


def escape_value(text: str, quote: bytes, encoding: str) -> bytes:
    """Encode new value text for an attribute quoted with ``quote`` (b'"', b"'" or
    b"" for unquoted). "&" is always escaped so no new character reference can form.
    Raises UnicodeEncodeError if ``encoding`` cannot represent the text."""
    escaped = text.replace("&", "&amp;")
    if quote == b'"':
        escaped = escaped.replace('"', "&quot;")
    elif quote == b"'":
        escaped = escaped.replace("'", "&#39;")
    return escaped.encode(encoding)


# Characters that cannot appear in an unquoted attribute value without changing the
# tokenization (or that are parse errors there and which we would rather not add).
UNQUOTED_UNSAFE = _bytes_re(r"""[\t\n\f\r "'<=>`]""")
