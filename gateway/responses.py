"""The response classes every answer on the proxy port is made of.

aiohttp fills in two headers on its own when a response is prepared: ``Server`` (naming Python
and aiohttp with their versions) and, on a body without one, ``Content-Type:
application/octet-stream``. A proxy must add neither: the first tells an attacker what to aim
at, and the second changes how browsers treat a body the upstream deliberately left untyped
(content sniffing, downloads). These classes take back what aiohttp added; a value that was
there before (the upstream's, or one the gateway set on purpose) is kept.
"""

from __future__ import annotations

from aiohttp import web
from multidict import CIMultiDict

_DEFAULTED = ("Server", "Content-Type")


def _present(headers: CIMultiDict[str]) -> tuple[bool, ...]:
    return tuple(name in headers for name in _DEFAULTED)


def _take_back(headers: CIMultiDict[str], present: tuple[bool, ...]) -> None:
    for name, was_there in zip(_DEFAULTED, present, strict=True):
        if not was_there:
            headers.popall(name, None)


class StreamResponse(web.StreamResponse):
    async def _prepare_headers(self) -> None:
        present = _present(self.headers)
        await super()._prepare_headers()
        _take_back(self.headers, present)


class Response(web.Response):
    async def _prepare_headers(self) -> None:
        present = _present(self.headers)
        await super()._prepare_headers()
        _take_back(self.headers, present)


class WebSocketResponse(web.WebSocketResponse):
    async def _prepare_headers(self) -> None:
        present = _present(self.headers)
        await super()._prepare_headers()
        _take_back(self.headers, present)


async def drop_server_header(request: web.Request, response: web.StreamResponse) -> None:
    """An ``on_response_prepare`` signal handler for aiohttp applications (the admin port)."""
    response.headers.popall("Server", None)
