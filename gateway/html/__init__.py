"""The streaming HTML rewriter: a self-contained library.

``HtmlRewriter`` decorates links and injects a snippet into one HTML document as it
streams (sans-IO: ``feed(bytes) -> bytes``, ``close() -> bytes``); ``LinkPolicy`` is
what it asks which links to change. It imports only the standard library: whatever it
needs from the gateway comes in as a parameter or a ``LinkPolicy``.

Modules: ``rewriter`` (the driver, text states, tags and edits), ``_tokens`` (the WHATWG
tokenizer patterns and attribute-value helpers), ``charset`` (encoding sniffing).
"""

from .rewriter import HtmlRewriter, LinkPolicy

__all__ = ["HtmlRewriter", "LinkPolicy"]
