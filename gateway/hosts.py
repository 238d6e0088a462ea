"""Pure: the authority a visitor's request names (its ``Host`` header or an absolute-form
request-target), checked before anything is routed on it.

RFC 9110 §7.2 and RFC 3986 §3.2: ``Host = uri-host [ ":" port ]``, where ``uri-host`` is an
IP-literal (``[v6]``), an IPv4 address or a reg-name. Browsers only ever send a host as the
WHATWG URL parser left it: ASCII, lower- or upper-case LDH labels (IDN already in punycode), or
an IP literal. Everything else a hostname cannot hold (userinfo ``@``, spaces, quotes, ``<>``,
percent signs, empty labels, non-digit or out-of-range ports) is refused here, so it can reach
neither the routing table, nor an upstream's ``Host`` (where apps build absolute URLs from it:
``Host: shop:80@evil.com`` poisons password-reset links), nor an injected script.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass

# reg-name restricted to what a DNS host name can be (RFC 1123 §2.1 LDH labels, up to 63
# characters), plus "_", which real intranet names carry and config.py also admits.
# Departure from RFC 3986's reg-name, on purpose: sub-delims and pct-encoded are valid URI
# syntax but never a host a browser sends, and every one of them has been used to confuse a
# proxy and the application behind it about which host was meant.
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_REG_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")
# RFC 3986 port = *DIGIT; an empty port ("host:") is refused, and so is anything over 65535.
_PORT = re.compile(r"[0-9]{1,5}")
_MAX_NAME = 253


@dataclass(frozen=True)
class Authority:
    """A checked authority: ``host`` lower-case without a trailing dot (an IPv6 literal keeps
    its brackets), ``port`` when one was given."""

    host: str
    port: int | None = None

    def __str__(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"

    def effective_port(self, scheme: str) -> int:
        if self.port is not None:
            return self.port
        return 443 if scheme == "https" else 80


@functools.lru_cache(maxsize=4096)
def parse_authority(value: str) -> Authority | None:
    """``host[:port]`` as a visitor sent it, checked and normalised; None if it is not one.

    Memoised: a site's visitors send the same few values, and this runs on every request.
    """
    text = value.lower()
    if text.startswith("["):
        end = text.find("]")
        if end == -1:
            return None
        literal, rest = text[1:end], text[end + 1 :]
        try:
            ipaddress.IPv6Address(literal)
        except ValueError:
            return None
        host = f"[{literal}]"
    else:
        host, colon, port_text = text.partition(":")
        rest = colon + port_text
        if not host or len(host) > _MAX_NAME + 1 or _REG_NAME.fullmatch(host) is None:
            return None
        host = host.removesuffix(".")
    if not rest:
        return Authority(host)
    if rest[0] != ":" or _PORT.fullmatch(rest[1:]) is None:
        return None
    port = int(rest[1:])
    if not 0 < port <= 65535:
        return None
    return Authority(host, port)
