"""The response classes every answer on the proxy port is made of.

aiohttp fills in two headers on its own when a response is prepared: ``Server`` (naming Python
and aiohttp with their versions) and, on a body without one, ``Content-Type:
application/octet-stream``. A proxy must add neither: the first tells an attacker what to aim
at, and the second changes how browsers treat a body the upstream deliberately left untyped
(content sniffing, downloads). These classes take back what aiohttp added; a value that was
there before (the upstream's, or one the gateway set on purpose) is kept.
"""

from __future__ import annotations

import asyncio
import time
from http import HTTPStatus

from aiohttp import web, web_protocol
from multidict import CIMultiDict

from .config import Site
from .logs import write_event
from .state import Outcome, ProxyState

_DEFAULTED = ("Server", "Content-Type")


def _present(headers: CIMultiDict[str]) -> tuple[bool, ...]:
    return tuple(name in headers for name in _DEFAULTED)


def _take_back(headers: CIMultiDict[str], present: tuple[bool, ...]) -> None:
    for name, was_there in zip(_DEFAULTED, present, strict=True):
        if not was_there:
            headers.popall(name, None)


class StreamResponse(web.StreamResponse):
    """A streamed response that keeps only the ``Server`` and ``Content-Type`` it was given;
    the base of the two below, so each takes the same step back."""

    async def _prepare_headers(self) -> None:
        present = _present(self.headers)
        await super()._prepare_headers()
        _take_back(self.headers, present)


class Response(StreamResponse, web.Response):
    pass


class WebSocketResponse(StreamResponse, web.WebSocketResponse):
    pass


def plain_response(status: int, text: str) -> web.Response:
    """A short plain-text answer from the gateway itself (never cached when it is an error)."""
    return Response(
        status=status,
        text=text + "\n",
        headers={"Cache-Control": "no-store", "Connection": "close"} if status >= 500 else None,
    )


def redirect(location: str) -> Response:
    """A 302 of the gateway's own (the clean-up redirect, the freshness endpoint): never
    cached, since it may set identity cookies or carry a credential, and it tells the next
    site no more than the origin of the page it came from."""
    response = Response(status=302)
    response.headers["Location"] = location
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "strict-origin-when-cross-origin"
    return response


async def drop_server_header(request: web.Request, response: web.StreamResponse) -> None:
    """An ``on_response_prepare`` signal handler for aiohttp applications (the admin port)."""
    response.headers.popall("Server", None)


# What the visitor is told for each kind of upstream fault (UpstreamError.kind).
FAULTS: dict[str, tuple[int, str]] = {
    "connect": (502, "502 Bad Gateway: the upstream could not be reached"),
    "tls": (502, "502 Bad Gateway: the upstream could not be reached securely"),
    "reset": (502, "502 Bad Gateway: the upstream did not give a valid response"),
    "aborted_body": (502, "502 Bad Gateway: the upstream's response ended early"),
    "ws_handshake": (502, "502 Bad Gateway: the upstream refused the WebSocket upgrade"),
    "timeout": (504, "504 Gateway Timeout: the upstream did not answer in time"),
    "overloaded": (503, "503 Service Unavailable: too many requests wait for this upstream"),
}


def fault(
    state: ProxyState, site: Site, outcome: Outcome, exc: BaseException, kind: str | None = None
) -> web.Response:
    """The gateway's answer for an upstream fault. One taxonomy: the fault's ``kind``
    (UpstreamError.kind unless given) is the metric label, the log field and, through FAULTS,
    the visitor's status and text."""
    kind = kind or str(getattr(exc, "kind", "reset"))
    state.metrics.upstream_errors.labels(site.host, kind).inc()
    log_fault(state, "upstream_error", site, kind, error=repr(exc)[:200])
    status, text = FAULTS.get(kind, FAULTS["reset"])
    outcome.status = status
    return plain_response(status, text)


def log_fault(state: ProxyState, event: str, site: Site, kind: str, **fields: object) -> None:
    """Log a fault, at most one line a second per event, site and kind (logs.Throttle): a
    dead upstream behind a busy site is one line, then one ``suppressed: N`` line a second,
    not a line per request. Every fault is still counted in the metrics."""
    now = time.monotonic()
    verdict = state.faults.admit((event, site.host, kind), now)
    if verdict.write:
        if verdict.suppressed:
            fields["suppressed"] = verdict.suppressed
        write_event(state.log, event, site=site.host, kind=kind, **fields)
    elif verdict.flush_at is not None:
        asyncio.get_running_loop().call_later(
            verdict.flush_at - now, _report_suppressed, state, verdict.flush_at
        )


def _report_suppressed(state: ProxyState, due_at: float) -> None:
    # A timer may fire a hair before its time by the loop's clock resolution: the window it
    # was set for counts as closed.
    for (event, site, kind), held in state.faults.due(max(time.monotonic(), due_at)):
        write_event(state.log, event, site=site, kind=kind, suppressed=held)


class _RequestHandler(web_protocol.RequestHandler):
    """aiohttp's connection handler, answering what it cannot parse in the gateway's own words:
    its default error page names the software in ``Server`` and quotes the visitor's bytes
    back. The logging of the error (logs.py turns it into one JSON line) is aiohttp's own."""

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        super().handle_error(request, status, exc, message)
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Error"
        response = plain_response(status, f"{status} {phrase}")
        response.force_close()
        return response


class ProxyServer(web.Server):
    """The low-level server of the proxy port, with the handler above for each connection."""

    def __call__(self) -> web_protocol.RequestHandler:
        return _RequestHandler(self, loop=self._loop, **self._kwargs)
