"""Which encoding a page is in, decided the way a browser decides it.

The rewriter edits bytes and only decodes the few attribute values it changes, so
it needs the page's encoding, and needs to know when the page is not
ASCII-compatible at all (then it must not touch it). The order follows WHATWG
"encoding sniffing": BOM, then the transport layer (Content-Type), then the
"prescan a byte stream to determine its encoding" algorithm over the first 1024
bytes, then a default (windows-1252, the usual fallback for legacy pages).
"""

from __future__ import annotations

import codecs
import re

# How many bytes the prescan looks at (WHATWG: "the first 1024 bytes").
PRESCAN_LIMIT = 1024

# Sentinel codec name: the page must be passed through untouched (UTF-16, UTF-32,
# ISO-2022-JP and the "replacement" encodings are not ASCII-compatible, or are
# stateful, so byte patterns like "<a" can be part of other characters).
PASSTHROUGH = "passthrough"

DEFAULT_ENCODING = "cp1252"

# WHATWG encoding labels -> Python codecs. Only labels of encodings whose bytes
# below 0x80 always mean ASCII are mapped to codecs; a label not listed here is
# "failure" (the spec then ignores it and moves on). Python's codecs differ from
# WHATWG's in a few code points (e.g. WHATWG "Big5" is closest to big5hkscs,
# "Shift_JIS" to cp932); that can only make us refuse an edit, never corrupt one,
# because each edit is decoded back and checked.
_LABELS: dict[str, str] = {}


def _add(codec: str, labels: str) -> None:
    for label in labels.split():
        _LABELS[label] = codec


_add("utf-8", "unicode-1-1-utf-8 unicode11utf8 unicode20utf8 utf-8 utf8 x-unicode20utf8")
_add(
    "cp1252",
    "ansi_x3.4-1968 ascii cp1252 cp819 csisolatin1 ibm819 iso-8859-1 iso-ir-100 iso8859-1 "
    "iso88591 iso_8859-1 iso_8859-1:1987 l1 latin1 us-ascii windows-1252 x-cp1252 "
    "x-user-defined",
)
for _n in (2, 3, 4, 5, 6, 7, 8, 10, 13, 14, 15, 16):
    _add(f"iso8859_{_n}", f"iso-8859-{_n} iso8859-{_n} iso8859{_n} iso_8859-{_n} latin{_n}")
_add("iso8859_8", "iso-8859-8-i csiso88598i logical visual")
_add("iso8859_15", "l9 csisolatin9")
_add("iso8859_9", "iso-8859-9 iso8859-9 iso88599 iso_8859-9 latin5 l5 windows-1254 cp1254")
_add("iso8859_11", "iso-8859-11 iso8859-11 iso885911 tis-620 dos-874 windows-874")
for _n in (1250, 1251, 1253, 1255, 1256, 1257, 1258):
    _add(f"cp{_n}", f"windows-{_n} cp{_n} x-cp{_n}")
_add("cp866", "866 cp866 csibm866 ibm866")
_add("koi8_r", "cskoi8r koi koi8 koi8-r koi8_r")
_add("koi8_u", "koi8-ru koi8-u")
_add("mac_roman", "csmacintosh mac macintosh x-mac-roman")
_add("mac_cyrillic", "x-mac-cyrillic x-mac-ukrainian")
_add("gb18030", "gb18030 chinese csgb2312 csiso58gb231280 gb2312 gb_2312 gb_2312-80 gbk")
_add("gb18030", "iso-ir-58 x-gbk")
_add("big5hkscs", "big5 big5-hkscs cn-big5 csbig5 x-x-big5")
_add("euc_jp", "cseucpkdfmtjapanese euc-jp x-euc-jp")
_add("cp932", "csshiftjis ms932 ms_kanji shift-jis shift_jis sjis windows-31j x-sjis")
_add("cp949", "cseuckr csksc56011987 euc-kr iso-ir-149 korean ks_c_5601-1987 ks_c_5601-1989")
_add("cp949", "ksc5601 ksc_5601 windows-949")
_add(PASSTHROUGH, "csiso2022jp iso-2022-jp")
_add(PASSTHROUGH, "csiso2022kr hz-gb-2312 iso-2022-cn iso-2022-cn-ext iso-2022-kr replacement")
_UTF16_LABELS = frozenset(
    (
        "unicodefffe utf-16be csunicode iso-10646-ucs-2 ucs-2 unicode unicodefeff utf-16 utf-16le"
    ).split()
)
_add(PASSTHROUGH, " ".join(_UTF16_LABELS))


def lookup_label(label: str) -> str | None:
    """WHATWG "get an encoding": trim ASCII whitespace, compare ASCII
    case-insensitively. Returns a Python codec name, PASSTHROUGH, or None."""
    return _LABELS.get(label.strip("\t\n\f\r ").lower())


_BOMS = (
    # UTF-32 is not a web encoding, but a UTF-32LE BOM starts with the UTF-16LE one:
    # either way the page is not ASCII-compatible.
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_BE, PASSTHROUGH),
    (codecs.BOM_UTF16_LE, PASSTHROUGH),
)


def sniff_bom(head: bytes) -> tuple[str, int] | None:
    """(codec, BOM length) if ``head`` starts with a byte order mark."""
    for bom, codec in _BOMS:
        if head.startswith(bom):
            return codec, len(bom)
    return None


# -- Prescan (WHATWG "prescan a byte stream to determine its encoding") ----------

_SPACE_OR_SLASH = b"\t\n\f\r /"
_SPACE = b"\t\n\f\r "
_META_OPEN = re.compile(rb"<meta[\t\n\f\r /]", re.IGNORECASE)
_TAG_OPEN = re.compile(rb"</?[A-Za-z]")
_CHARSET_IN_CONTENT = re.compile(rb"charset", re.IGNORECASE)


def _get_attribute(data: bytes, pos: int) -> tuple[bytes, bytes, int] | None:
    """The prescan's "get an attribute" algorithm: (name, value, new position) with
    name and value ASCII-lowercased, or None at ">" or the end of the data."""
    end = len(data)
    while pos < end and data[pos] in _SPACE_OR_SLASH:
        pos += 1
    if pos >= end or data[pos] == 0x3E:
        return None
    start = pos
    # The name runs to "=" (not as its first byte), whitespace, "/" or ">".
    pos += 1
    while pos < end and data[pos] not in b"=\t\n\f\r />":
        pos += 1
    name = data[start:pos].lower()
    while pos < end and data[pos] in _SPACE:
        pos += 1
    if pos >= end or data[pos] != 0x3D:
        return name, b"", pos
    pos += 1
    while pos < end and data[pos] in _SPACE:
        pos += 1
    if pos >= end:
        return name, b"", pos
    if data[pos] in b"\"'":
        close = data.find(data[pos : pos + 1], pos + 1)
        if close < 0:
            return None
        return name, data[pos + 1 : close].lower(), close + 1
    if data[pos] == 0x3E:
        return name, b"", pos
    start = pos
    while pos < end and data[pos] not in b"\t\n\f\r >":
        pos += 1
    return name, data[start:pos].lower(), pos


def charset_from_content(content: bytes) -> str | None:
    """WHATWG "extract a character encoding from a meta element" (the label)."""
    pos = 0
    while True:
        found = _CHARSET_IN_CONTENT.search(content, pos)
        if found is None:
            return None
        pos = found.end()
        while pos < len(content) and content[pos] in _SPACE:
            pos += 1
        if pos >= len(content) or content[pos] != 0x3D:
            continue
        pos += 1
        while pos < len(content) and content[pos] in _SPACE:
            pos += 1
        if pos >= len(content):
            return None
        quote = content[pos : pos + 1]
        if quote in (b'"', b"'"):
            close = content.find(quote, pos + 1)
            return None if close < 0 else content[pos + 1 : close].decode("latin-1")
        stop = pos
        while stop < len(content) and content[stop] not in b"\t\n\f\r ;":
            stop += 1
        return content[pos:stop].decode("latin-1")


def _meta_encoding(data: bytes, pos: int) -> tuple[str | None, int]:
    """Read one <meta>'s attributes; return its encoding (if it declares one) and
    the position after it."""
    seen: set[bytes] = set()
    got_pragma = False
    need_pragma: bool | None = None
    label: str | None = None
    while (attribute := _get_attribute(data, pos)) is not None:
        name, value, pos = attribute
        if name in seen:
            continue
        seen.add(name)
        if name == b"http-equiv" and value == b"content-type":
            got_pragma = True
        elif name == b"content" and label is None:
            extracted = charset_from_content(value)
            if extracted is not None:
                label, need_pragma = extracted, True
        elif name == b"charset":
            label, need_pragma = value.decode("latin-1"), False
    if need_pragma is None or (need_pragma and not got_pragma) or label is None:
        return None, pos
    if label.strip("\t\n\f\r ").lower() in _UTF16_LABELS:
        # A document that could be read far enough to find this <meta> is not
        # UTF-16: the spec reads such declarations as UTF-8.
        return "utf-8", pos
    return lookup_label(label), pos


def prescan(data: bytes) -> str | None:
    """The encoding declared by a <meta> in the first 1024 bytes, or None."""
    data = data[:PRESCAN_LIMIT]
    # Only a <meta> tag can declare an encoding: without one (most pages declare theirs in the
    # Content-Type instead) the walk over every tag's attributes below is skipped.
    if b"<meta" not in data.lower():
        return None
    pos = 0
    while (pos := data.find(b"<", pos)) >= 0:
        if data.startswith(b"<!--", pos):
            close = data.find(b"-->", pos + 2)
            if close < 0:
                return None
            pos = close + 3
        elif (meta := _META_OPEN.match(data, pos)) is not None:
            codec, pos = _meta_encoding(data, meta.end())
            if codec is not None:
                return codec
        elif (tag := _TAG_OPEN.match(data, pos)) is not None:
            pos = tag.end()
            while pos < len(data) and data[pos] not in b"\t\n\f\r >":
                pos += 1
            while (attribute := _get_attribute(data, pos)) is not None:
                pos = attribute[2]
        elif data.startswith((b"<!", b"</", b"<?"), pos):
            close = data.find(b">", pos)
            if close < 0:
                return None
            pos = close + 1
        else:
            pos += 1
    return None
