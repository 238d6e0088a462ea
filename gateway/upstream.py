"""A lean HTTP/1.1 client for talking to upstreams: keep-alive pool, streaming both ways.

Why not aiohttp's ClientSession: in a proxy the client runs on every request, and its
generality (cookie jars, redirects, auto headers, tracing, URL objects) cost about as much CPU
per request as aiohttp's server and all of our own logic together (see bench/proxy.py). A proxy
needs far less: send a request head it built itself, stream a body, parse a response head with
httptools (the llhttp parser), and stream the body back with flow control. WebSocket upgrades
still go through aiohttp (gateway/websocket.py).

Errors are reported as :class:`UpstreamError` subclasses that say which answer the visitor
should get: a connection that cannot be made is a 502, silence past the read timeout a 504,
and a body that ends early is an :class:`UpstreamBodyError` (the proxy then aborts the client
connection rather than let a truncated body look complete). An ``https://`` upstream whose
certificate fails the site's ``tls`` checks is an :class:`UpstreamTLSError`, a 502 of its own
kind, so that the log says which of the two to look at (gateway/tls.py).
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from typing import cast

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

from .hosts import split_port
from .options import UpstreamTLS
from .tls import ClientContexts, server_hostname

_DEFAULT_TLS = UpstreamTLS()

# Flow control: stop reading from the upstream while this much body is waiting for a slow
# client, resume below the low mark.
_HIGH_WATER = 256 * 1024
_LOW_WATER = 64 * 1024
_MAX_HEAD = 64 * 1024


class UpstreamError(Exception):
    """The upstream could not give a response."""

    kind = "reset"


class UpstreamConnectError(UpstreamError):
    kind = "connect"


class UpstreamTLSError(UpstreamConnectError):
    """TLS with the upstream failed: its certificate is not trusted or not for the expected
    name, the handshake failed, or the site's CA file can no longer be loaded."""

    kind = "tls"


class UpstreamTimeout(UpstreamError):
    kind = "timeout"


class UpstreamOverloaded(UpstreamError):
    """No connection slot came free within ``pool_wait_timeout``."""

    kind = "overloaded"


class RequestBodyError(UpstreamError):
    """The visitor's body did not match its own framing (cut short, or longer than its
    Content-Length): the upstream connection is mid-request and is closed."""

    kind = "aborted_body"


class UpstreamBodyError(UpstreamError):
    """The upstream's body ended early or failed after the response started."""

    kind = "aborted_body"


@dataclass(frozen=True)
class Origin:
    scheme: str
    host: str
    port: int

    @classmethod
    def parse(cls, url: str) -> Origin:
        """The origin of a configured upstream URL (config.py has checked it): ``host`` is what
        to connect to, so an IPv6 address is given without its brackets."""
        scheme, _, rest = url.partition("://")
        host, port = split_port(rest.split("/", 1)[0])
        default = 443 if scheme == "https" else 80
        return cls(scheme, host.removeprefix("[").removesuffix("]"), int(port) if port else default)


class _Connection(asyncio.Protocol):
    """One upstream connection; carries one request at a time."""

    def __init__(self, origin: Origin, loop: asyncio.AbstractEventLoop) -> None:
        self.origin = origin
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.used = False
        self._drain: asyncio.Future[None] | None = None
        self._paused_writing = False
        self._inflight: _InFlight | None = None

    # -- transport callbacks ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        inflight = self._inflight
        if inflight is None:
            # Bytes nobody asked for (a server talking out of turn): the connection is no
            # longer in a known state.
            self.close()
            return
        inflight.feed(data)

    def eof_received(self) -> bool:
        self.closed = True
        if self._inflight is not None:
            self._inflight.connection_lost(None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._inflight is not None:
            self._inflight.connection_lost(exc)
        if self._drain is not None and not self._drain.done():
            self._drain.set_exception(ConnectionResetError("upstream connection lost"))

    def pause_writing(self) -> None:
        self._paused_writing = True

    def resume_writing(self) -> None:
        self._paused_writing = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        self._drain = None

    # -- used by the request in flight -------------------------------------------------------

    async def drain(self) -> None:
        if self.closed:
            raise ConnectionResetError("upstream connection lost")
        if self._paused_writing:
            self._drain = self.loop.create_future()
            await self._drain

    def write(self, data: bytes) -> None:
        if self.transport is None or self.closed or self.transport.is_closing():
            raise ConnectionResetError("upstream connection lost")
        self.transport.write(data)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class _InFlight:
    """The response side of one request on a connection: httptools callbacks in, a head
    future and a body queue out."""

    # One is made per request: slots make that, and every attribute access after, cheaper.
    __slots__ = (
        "buffered",
        "chunks",
        "complete",
        "conn",
        "error",
        "framing",
        "head",
        "head_bytes",
        "head_only",
        "head_size",
        "keep_alive",
        "parser",
        "paused",
        "raw_headers",
        "reason",
        "received_any",
        "sender",
        "status",
        "timer",
        "until_eof",
        "waiter",
    )

    def __init__(self, conn: _Connection, head_only: bool) -> None:
        self.conn = conn
        self.head_only = head_only
        self.parser = httptools.HttpResponseParser(self)
        self.head: asyncio.Future[None] = conn.loop.create_future()
        self.status = 0
        self.reason = ""
        self.raw_headers: list[tuple[str, str]] = []
        # The Content-Length and Transfer-Encoding values of the head, in order, noted as
        # the headers arrive (names lower-cased).
        self.framing: list[tuple[str, str]] = []
        self.head_size = 0
        self.head_bytes = 0
        self.chunks: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.complete = False
        self.error: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.received_any = False
        self.paused = False
        self.keep_alive = False
        self.timer: asyncio.TimerHandle | None = None
        self.until_eof = False
        self.sender: asyncio.Future[None] | None = None

    def arm(self, timeout: float) -> None:
        """(Re)start the wait for the response head: it fails after ``timeout`` of silence."""
        if self.head.done():
            return
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.conn.loop.call_later(
            timeout, self.fail, UpstreamTimeout("upstream did not answer in time")
        )

    def disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    # httptools callbacks. llhttp parses on past the end of a response: a second response (or
    # garbage) in the same read, and trailers, arrive through the same callbacks, and must not
    # change the response already given, whose head may not have been read yet.
    def on_status(self, status: bytes) -> None:
        if self.complete:
            self.conn.closed = True  # the server talks out of turn: never reuse
            return
        self.reason = status.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.head.done():
            return  # a trailer, or a header of an unsolicited response
        self.head_size += len(name) + len(value)
        text = name.decode("latin-1")
        header = (text, _header_text(value))
        self.raw_headers.append(header)
        # Only two names matter to framing; their lengths spare the others a lower().
        if len(text) in (14, 17) and (lower := text.lower()) in _FRAMING_HEADERS:
            self.framing.append((lower, header[1]))

    def on_headers_complete(self) -> None:
        if self.head.done():
            return
        if self.head_size > _MAX_HEAD:
            # A head that arrived whole in one read is only measured here.
            self.fail(UpstreamError("upstream response head too large"))
            return
        status = self.parser.get_status_code()
        if status == 101:
            # We never ask for an upgrade here (WebSockets go through aiohttp): a 502, not a
            # 101 whose "body" would be another protocol.
            self.fail(UpstreamError("unexpected protocol upgrade"))
            return
        if 100 <= status < 200:
            # An interim response (100 Continue, 103 Early Hints): the real one follows.
            self.raw_headers = []
            self.framing = []
            return
        self.status = status
        # Asked now: once the message is complete the parser has moved on and says no.
        self.keep_alive = self.parser.should_keep_alive()
        # A body with neither length nor chunked coding ends with the connection (RFC 9112
        # §6.3 rule 8). httptools cannot be told the connection ended (it has no
        # llhttp_finish), so we note the framing here and end the message ourselves.
        codings = [v for n, v in self.framing if n == "transfer-encoding"]
        chunked = bool(codings) and codings[-1].rsplit(",", 1)[-1].strip().lower() == "chunked"
        self.until_eof = not chunked and not any(n == "content-length" for n, _ in self.framing)
        if not self.head.done():
            self.head.set_result(None)
        if self.head_only:
            # The response to HEAD has no body whatever its headers say; httptools cannot be
            # told so, and the connection is not reused after it.
            self.complete = True
            self.conn.closed = True

    def on_body(self, body: bytes) -> None:
        if not body:
            return  # an empty chunk would read as the end of the body
        if self.complete:
            self.conn.closed = True
            return
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > _HIGH_WATER and not self.paused and self.conn.transport is not None:
            self.paused = True
            self.conn.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self.status == 0:
            return  # the end of an interim response
        if self.complete:
            self.conn.closed = True
            return
        self.complete = True
        self._wake()

    # connection events
    def feed(self, data: bytes) -> None:
        self.received_any = True
        if not self.head.done():
            self.head_bytes += len(data)
        if self.complete:
            # Data after the end of the response: don't trust this connection again.
            self.conn.closed = True
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.fail(UpstreamError("unexpected protocol upgrade"))
        except httptools.HttpParserError as exc:
            if self.complete:
                # Garbage after a whole response: the response stands, the connection goes.
                self.conn.close()
            else:
                self.fail(UpstreamError(f"invalid response from upstream: {exc}"))
        # Every byte of a read that left the head unfinished belongs to the head; counting
        # them, not parsed headers, also stops a header line that never ends (httptools
        # would buffer it without bound).
        if not self.head.done() and self.head_bytes > _MAX_HEAD:
            self.fail(UpstreamError("upstream response head too large"))

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.complete:
            return
        if self.head.done():
            if self.until_eof and self.error is None:
                self.complete = True
                self._wake()
            else:
                self.fail(UpstreamBodyError("upstream closed the connection mid-body"))
        else:
            self.fail(UpstreamError(f"upstream closed the connection: {exc or 'EOF'}"))

    def fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        self.conn.close()
        if not self.head.done():
            self.head.set_exception(exc)
            # Whoever awaits the head still gets the error; when nobody does any more (the
            # request was abandoned), asyncio must not log it as never retrieved.
            self.head.exception()
        self._wake()

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


class UpstreamResponse:
    """A response whose body is read as it arrives (``readany``) or whole (``read``)."""

    def __init__(self, pool: UpstreamPool, inflight: _InFlight, read_timeout: float) -> None:
        self._pool = pool
        self._inflight = inflight
        self._read_timeout = read_timeout
        self._released = False
        self.status = inflight.status
        self.reason = inflight.reason
        headers: CIMultiDict[str] = CIMultiDict(inflight.raw_headers)
        self.headers = CIMultiDictProxy(headers)
        length = headers.get("Content-Length")
        self.content_length = int(length) if length is not None and length.isdigit() else None

    def is_eof(self) -> bool:
        ex = self._inflight
        return ex.complete and not ex.chunks

    async def readany(self) -> bytes:
        """The next part of the body, b"" at its end; raises UpstreamBodyError or
        UpstreamTimeout if it cannot be had."""
        ex = self._inflight
        while not ex.chunks:
            if ex.error is not None:
                raise (
                    ex.error
                    if isinstance(ex.error, UpstreamError)
                    else UpstreamBodyError(str(ex.error))
                )
            if ex.complete:
                return b""
            ex.waiter = ex.conn.loop.create_future()
            try:
                async with asyncio.timeout(self._read_timeout):
                    await ex.waiter
            except TimeoutError:
                ex.fail(UpstreamTimeout("upstream went silent mid-body"))
                raise UpstreamTimeout("upstream went silent mid-body") from None
            finally:
                ex.waiter = None
        chunk = ex.chunks.popleft()
        ex.buffered -= len(chunk)
        if ex.paused and ex.buffered < _LOW_WATER and ex.conn.transport is not None:
            ex.paused = False
            ex.conn.transport.resume_reading()
        return chunk

    async def read(self) -> bytes:
        parts = []
        while chunk := await self.readany():
            parts.append(chunk)
        return b"".join(parts)

    def release(self) -> None:
        """Give the connection back if the request ended cleanly, else close it."""
        if self._released:
            return
        self._released = True
        ex = self._inflight
        ok = ex.complete and ex.error is None and not ex.chunks and ex.keep_alive
        if ex.sender is not None and not ex.sender.done():
            # The upstream answered before taking the whole body (a 413, say): the connection
            # is mid-request, so it is closed, and the rest of the body is not sent.
            ex.sender.cancel()
            ok = False
        self._pool._done(ex.conn, reuse=ok)

    def close(self) -> None:
        """Abandon the response: the connection is closed, never reused."""
        if not self._released:
            self._released = True
            if self._inflight.sender is not None:
                self._inflight.sender.cancel()
            self._pool._done(self._inflight.conn, reuse=False)


@dataclass(frozen=True)
class PoolStats:
    """What an :class:`UpstreamPool` holds at one moment.

    ``busy``: exchanges holding a slot (in total, and per origin in ``busy_by_origin``);
    ``idle``: connections kept for reuse, per origin (one the upstream closed while it sat idle
    counts until the pool next looks at it); ``waiting``: requests queued for a slot. Origins
    with nothing to count are left out.
    """

    busy: int
    busy_by_origin: Mapping[Origin, int]
    idle: Mapping[Origin, int]
    waiting: int


class UpstreamPool:
    """Keep-alive connections per upstream origin, bounded in total and, optionally, per origin
    (``per_origin``: 0 for no separate bound), so one slow legacy upstream cannot take every
    connection, nor be sent more concurrent requests than it can serve."""

    def __init__(
        self,
        *,
        connect_timeout: float,
        read_timeout: float,
        pool_size: int,
        keepalive_timeout: float,
        per_origin: int = 0,
        pool_wait_timeout: float | None = None,
    ) -> None:
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._keepalive = keepalive_timeout
        self._pool_size = pool_size
        self._per_origin = per_origin
        self._pool_wait = pool_wait_timeout
        self._busy = 0
        self._busy_by: collections.Counter[Origin] = collections.Counter()
        self._waiting: collections.deque[tuple[Origin, asyncio.Future[None]]] = collections.deque()
        self._idle: dict[Origin, list[_Connection]] = {}
        self._tls: Mapping[Origin, UpstreamTLS] = {}
        self._contexts = ClientContexts()
        self._closed = False

    def configure_tls(self, settings: Mapping[Origin, UpstreamTLS]) -> None:
        """The TLS setting of each ``https`` origin, for connections made from now on (origins
        not named get the defaults: verified against the system's CAs). Called at start and at
        each reload: the contexts are built anew, so a replaced CA file is read again, and
        idle connections to an origin whose setting changed are closed."""
        for origin, idle in self._idle.items():
            if settings.get(origin) != self._tls.get(origin):
                for conn in idle:
                    conn.close()
                idle.clear()
        self._tls = dict(settings)
        self._contexts = ClientContexts()

    def ssl_context(self, tls: UpstreamTLS) -> ssl.SSLContext:
        """The shared client context for ``tls`` (also for WebSocket upgrades, gateway/
        websocket.py). Raises OSError or ssl.SSLError if its CA file cannot be loaded."""
        return self._contexts.get(tls)

    async def request(
        self,
        origin: Origin,
        method: str,
        target: str,
        headers: Iterable[tuple[str, str]],
        body: AsyncIterator[bytes] | None,
        content_length: int | None,
    ) -> UpstreamResponse:
        """Send a request and wait for the response head. ``headers`` are sent as given (the
        caller includes Host) except framing: Content-Length and Transfer-Encoding are always
        written here from the body actually sent (``content_length`` bytes, or chunked when it
        is None), never copied, so a request can carry nothing past its own end."""
        head = _request_head(method, target, headers, _framing(method, body, content_length))
        await self._acquire_slot(origin)
        try:
            # A pooled connection may have been closed by the upstream just as we reuse it;
            # a request that sent no body can safely be tried once more on a new connection.
            for attempt in (0, 1):
                conn = await self._connection(origin, fresh=attempt > 0)
                inflight = _InFlight(conn, head_only=method == "HEAD")
                conn._inflight = inflight
                try:
                    return await self._send_request(conn, inflight, head, body, content_length)
                except UpstreamError as exc:
                    conn.close()
                    retry = (
                        attempt == 0
                        and conn.used
                        and body is None
                        and not inflight.received_any
                        and not isinstance(exc, UpstreamTimeout)
                    )
                    if not retry:
                        raise
                except BaseException:
                    # Cancelled while waiting for the head (the visitor went away, say): the
                    # connection is mid-request, so close it rather than leak it open, and
                    # stop sending the body.
                    conn.close()
                    if inflight.sender is not None:
                        inflight.sender.cancel()
                    raise
                finally:
                    conn.used = True
            raise AssertionError("unreachable")
        except BaseException:
            self._release_slot(origin)
            raise

    async def _send_request(
        self,
        conn: _Connection,
        inflight: _InFlight,
        head: bytes,
        body: AsyncIterator[bytes] | None,
        content_length: int | None,
    ) -> UpstreamResponse:
        try:
            conn.write(head)
        except ConnectionError as exc:
            raise UpstreamError(str(exc)) from exc
        sender = None
        # A timer rather than asyncio.timeout(): this is the per-request path, and a plain
        # call_later is markedly cheaper than the context manager's task bookkeeping. It
        # measures silence: every step of the upload starts it again, so a large body that
        # streams steadily is not cut off by the wait for the answer.
        inflight.arm(self._read_timeout)
        if body is not None:
            sender = asyncio.ensure_future(
                _send_body(conn, inflight, body, self._read_timeout, content_length)
            )
            inflight.sender = sender
        try:
            if sender is None:
                await inflight.head
            else:
                # The upstream may answer before it has read the whole body (a 413, say);
                # otherwise the body must be sent before the answer can come.
                await asyncio.wait({sender, inflight.head}, return_when=asyncio.FIRST_COMPLETED)
                if not inflight.head.done():
                    sender.result()  # raises if sending failed
                # The head may also have failed while the body was being sent (timed out,
                # connection lost): awaiting it raises that rather than return no response.
                await inflight.head
        except UpstreamError:
            if sender is not None:
                _stop_sender(sender)
            raise
        except (ConnectionError, OSError) as exc:
            inflight.fail(UpstreamError(str(exc)))
            raise UpstreamError(f"upstream connection failed: {exc}") from exc
        finally:
            inflight.disarm()
        if sender is not None and not sender.done():
            # Keep streaming the rest of the body while the response is read; if it fails,
            # the response fails with it.
            sender.add_done_callback(lambda t: _sender_done(t, inflight))
        elif sender is not None and sender.exception() is not None:
            inflight.conn.closed = True
        return UpstreamResponse(self, inflight, self._read_timeout)

    async def _connection(self, origin: Origin, fresh: bool) -> _Connection:
        if not fresh:
            idle = self._idle.get(origin)
            now = time.monotonic()
            while idle:
                conn = idle.pop()
                if not conn.closed and now - conn.idle_since < self._keepalive:
                    return conn
                conn.close()
        loop = asyncio.get_running_loop()
        ssl_context = None
        name = None
        if origin.scheme == "https":
            tls = self._tls.get(origin) or _DEFAULT_TLS
            name = server_hostname(tls, origin.host)
            try:
                ssl_context = self.ssl_context(tls)
            except (OSError, ssl.SSLError) as exc:
                raise UpstreamTLSError(f"cannot load the TLS setting for {name}: {exc}") from exc
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, protocol = await loop.create_connection(
                    lambda: _Connection(origin, loop),
                    origin.host,
                    origin.port,
                    ssl=ssl_context,
                    server_hostname=name,
                )
        except TimeoutError:
            raise UpstreamTimeout(f"connecting to {origin.host}:{origin.port} timed out") from None
        except ssl.SSLError as exc:
            # Before OSError, of which it is a subclass: an untrusted or misnamed certificate
            # (SSLCertVerificationError), a failed handshake, plain HTTP on a TLS port.
            raise UpstreamTLSError(
                f"TLS with {origin.host}:{origin.port} (as {name}) failed: {exc}"
            ) from exc
        except OSError as exc:
            raise UpstreamConnectError(
                f"cannot connect to {origin.host}:{origin.port}: {exc}"
            ) from exc
        return protocol

    def _fits(self, origin: Origin) -> bool:
        return self._per_origin == 0 or self._busy_by[origin] < self._per_origin

    async def _acquire_slot(self, origin: Origin) -> None:
        """At most ``pool_size`` exchanges at once (and ``per_origin`` per origin); the rest
        wait their turn in order."""
        # Free capacity goes to a newcomer unless someone for the same origin waits before it
        # (anyone else waiting waits on their own origin's bound, not on this capacity).
        if (
            self._busy < self._pool_size
            and self._fits(origin)
            and not any(o == origin for o, _ in self._waiting)
        ):
            self._busy += 1
            self._busy_by[origin] += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        entry = (origin, waiter)
        self._waiting.append(entry)
        try:
            if self._pool_wait is None:
                await waiter
            else:
                try:
                    async with asyncio.timeout(self._pool_wait):
                        await waiter
                except TimeoutError:
                    raise UpstreamOverloaded(
                        f"no connection to {origin.host}:{origin.port} came free in time"
                    ) from None
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._release_slot(origin)  # the slot was handed to us as we were cancelled
            else:
                self._waiting.remove(entry)
            raise

    def _release_slot(self, origin: Origin) -> None:
        self._busy -= 1
        self._busy_by[origin] -= 1
        if not self._busy_by[origin]:
            del self._busy_by[origin]
        # Hand the freed slot to the first waiter it fits (in order; a waiter for an origin at
        # its own bound lets the others pass).
        for entry in self._waiting:
            waiting_origin, waiter = entry
            if waiter.done():
                continue
            if self._busy < self._pool_size and self._fits(waiting_origin):
                self._waiting.remove(entry)
                self._busy += 1
                self._busy_by[waiting_origin] += 1
                waiter.set_result(None)
                return
        while self._waiting and self._waiting[0][1].done():
            self._waiting.popleft()

    def _done(self, conn: _Connection, reuse: bool) -> None:
        self._release_slot(conn.origin)
        conn._inflight = None
        if reuse and not conn.closed and not self._closed:
            conn.idle_since = time.monotonic()
            idle = self._idle.setdefault(conn.origin, [])
            if len(idle) < self._pool_size:
                idle.append(conn)
                return
        conn.close()

    async def close(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()

    def stats(self) -> PoolStats:
        """A snapshot of the pool's slots, idle connections and queue (see :class:`PoolStats`)."""
        return PoolStats(
            busy=self._busy,
            busy_by_origin={o: n for o, n in self._busy_by.items() if n},
            idle={o: len(conns) for o, conns in self._idle.items() if conns},
            waiting=len(self._waiting),
        )


def _stop_sender(sender: asyncio.Future[None]) -> None:
    """Cancel a body sender, or take its error if it has already failed (unretrieved, asyncio
    would log it as a stray exception)."""
    if not sender.cancel() and not sender.cancelled():
        sender.exception()


def _sender_done(task: asyncio.Future[None], inflight: _InFlight) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        # The upstream stopped reading the body; unless its response is already complete,
        # the response cannot be trusted to be whole.
        inflight.conn.closed = True
        if not inflight.complete:
            inflight.fail(UpstreamBodyError(f"sending the request body failed: {exc}"))


async def _send_body(
    conn: _Connection,
    inflight: _InFlight,
    body: AsyncIterator[bytes],
    timeout: float,
    length: int | None,
) -> None:
    """Send ``body``: exactly ``length`` bytes, or chunked when the length is unknown. A body
    that does not keep to its length raises RequestBodyError before a byte too many is
    written, and the connection, left mid-request, is not reused."""
    sent = 0
    async for chunk in body:
        if not chunk:
            continue
        sent += len(chunk)
        if length is not None and sent > length:
            raise RequestBodyError(f"request body longer than its Content-Length {length}")
        inflight.arm(timeout)  # the visitor is still sending
        conn.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if length is None else chunk)
        await conn.drain()
        inflight.arm(timeout)  # the upstream is still reading
    if length is None:
        conn.write(b"0\r\n\r\n")
    elif sent != length:
        raise RequestBodyError(f"request body ended after {sent} of {length} bytes")


def _header_text(value: bytes) -> str:
    """A response header value as text. UTF-8 as such; anything else is read as ISO-8859-1
    (what legacy servers mean by it, and what RFC 9110 §5.5 leaves it as). aiohttp writes
    header text back as UTF-8 and silently drops what it cannot encode, so a surrogate escape
    would lose the bytes: this way a Latin-1 "café" reaches the visitor as UTF-8 "café"."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")


# Methods whose requests carry content by definition: without a body they still say so
# (RFC 9110 §8.6: a user agent SHOULD send Content-Length for them, 0 when empty).
_CONTENT_METHODS = frozenset({"POST", "PUT", "PATCH"})
_FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding"})


def _framing(method: str, body: object | None, content_length: int | None) -> str | None:
    """The one framing header line of a request, from the body that will be sent."""
    if body is None:
        return "Content-Length: 0" if method in _CONTENT_METHODS else None
    if content_length is None:
        return "Transfer-Encoding: chunked"
    return f"Content-Length: {content_length}"


def _request_head(
    method: str, target: str, headers: Iterable[tuple[str, str]], framing: str | None
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1"]
    # Only two names are left out; their lengths spare the others a lower().
    lines += [
        f"{name}: {value}"
        for name, value in headers
        if len(name) not in (14, 17) or name.lower() not in _FRAMING_HEADERS
    ]
    if framing is not None:
        lines.append(framing)
    lines.append("\r\n")
    return "\r\n".join(lines).encode("utf-8", "surrogateescape")
