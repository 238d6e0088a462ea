"""The streaming HTML rewriter: a self-contained library.

``HtmlRewriter`` decorates links and injects a snippet into one HTML document as it
streams (sans-IO: ``feed(bytes) -> bytes``, ``close() -> bytes``); ``LinkPolicy`` is
what it asks which links to change. When it stops rewriting and passes the rest of a
document through, ``HtmlRewriter.gave_up`` holds one of ``GAVE_UP_REASONS``.

It imports only the standard library: whatever it needs from the gateway comes in as a
parameter or a ``LinkPolicy``. Modules: ``rewriter`` (the driver, text states, tags and
edits), ``_tokens`` (the WHATWG tokenizer patterns and attribute-value helpers),
``charset`` (encoding sniffing), ``_scan`` (the scanner: the tokenizer state machine
that finds what the rewriter acts on) and ``_impl`` (which scanner runs).

The scanner exists twice, with the same behaviour byte for byte: compiled
(``_speedups.c``, built at install time when a C compiler is there) and pure Python.
``IMPLEMENTATION`` says which one this process runs, "compiled" or "python";
``PURE_PYTHON_REASON`` says why it is the pure-Python one (the extension is missing, or
``GATEWAY_NO_EXTENSIONS`` is set). The choice is made at import.
"""

from ._impl import IMPLEMENTATION, PURE_PYTHON_REASON, Implementation
from .rewriter import (
    GAVE_UP_AMBIGUITY,
    GAVE_UP_CHARSET,
    GAVE_UP_PLAINTEXT,
    GAVE_UP_REASONS,
    GAVE_UP_TAG_TOO_LONG,
    GaveUpReason,
    HtmlRewriter,
    LinkPolicy,
)

__all__ = [
    "GAVE_UP_AMBIGUITY",
    "GAVE_UP_CHARSET",
    "GAVE_UP_PLAINTEXT",
    "GAVE_UP_REASONS",
    "GAVE_UP_TAG_TOO_LONG",
    "IMPLEMENTATION",
    "PURE_PYTHON_REASON",
    "GaveUpReason",
    "HtmlRewriter",
    "Implementation",
    "LinkPolicy",
]
