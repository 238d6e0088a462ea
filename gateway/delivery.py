"""Delivery of the server-side hand-off events (``events:``) to Segment's HTTP tracking API.

One :class:`EventSender` per gateway process: a bounded queue, drained by one background task
that posts batches to ``{events.endpoint}/v1/batch`` (HTTP basic auth, the write key as user
name). What an event holds and when a batch is due are decided in :mod:`gateway.events`.

Guarantees (tested in ``tests/test_events_flow.py``):

- **Never on the request path.** :meth:`EventSender.handoff` builds one event and appends it to
  a deque: no I/O, no await, the same cost whether the collector is up, slow or down. A page is
  never held up by the collector, and a dead collector costs a page nothing.
- **Bounded memory.** At most ``events.queue_size`` events wait, plus the one batch being
  sent; when the queue is full, new events are dropped and counted
  (``gateway_events_dropped_total{reason="queue_full"}``).
- **At most once.** A batch is retried (see :func:`gateway.events.outcome`) until the collector
  takes it, refuses it for good, or its attempts run out; each event carries a ``messageId``,
  by which Segment drops the copy a retry delivers when an earlier attempt had in fact
  arrived. Events still queued when the process dies are lost. On ``SIGTERM`` the queue is
  flushed within the drain deadline (``proxy.drain_timeout``); what is left at the deadline is
  dropped and counted (``reason="shutdown"``). Every event given up is counted by reason.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import random
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web

from .config import Config, Events
from .events import (
    MAX_ATTEMPTS,
    Batch,
    Handoff,
    encode_event,
    from_domain,
    handoff_source,
    outcome,
    retry_delay,
    send_due,
    track_event,
)
from .headers import client_address, visitor_scheme
from .hosts import normalize as normalize_host
from .inbound import Arrival, UrlIdentity
from .metrics import DISTRIBUTION, Metrics, gateway_version

# write_event-like: an event name and its fields (never ids: a log line is no place for them).
Log = Callable[..., None]


def _library() -> dict[str, str]:
    return {"name": DISTRIBUTION, "version": gateway_version()}


class EventSender:
    """The hand-off events of one process: queued by requests, sent by a background task.

    Disabled (``events.enabled`` false) it is inert: :meth:`handoff` returns at once and
    :meth:`start` starts nothing.
    """

    def __init__(
        self,
        settings: Events,
        metrics: Metrics,
        log: Log,
        *,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.settings = settings
        self.enabled = settings.enabled and settings.write_key is not None
        self._metrics = metrics
        self._log = log
        self._jitter = jitter
        self._url = f"{settings.endpoint}/v1/batch"
        self._library = _library()
        # HTTP basic auth: the write key is the user name, the password is empty.
        credentials = base64.b64encode(f"{settings.write_key}:".encode()).decode("ascii")
        self._headers = {
            "Authorization": f"Basic {credentials}",
            "Content-Type": "application/json",
            "User-Agent": f"{self._library['name']}/{self._library['version']}",
        }
        # (time.monotonic() when queued, event), oldest first.
        self._queue: deque[tuple[float, dict[str, Any]]] = deque()
        self._wake = asyncio.Event()
        self._draining = False
        self._closed = False
        self._deadline: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    # -- the request side: O(1), never awaits -----------------------------------------------------

    def handoff(
        self, request: web.BaseRequest, arrival: Arrival, url: UrlIdentity, config: Config
    ) -> None:
        """Queue the event for an arrival whose identity came in the URL (nothing otherwise)."""
        if not self.enabled:
            return
        source = handoff_source(request.method, arrival.source, url.form)
        if source is None or arrival.aid is None:
            return
        trusted = config.proxy.trusted_proxies
        headers = request.headers
        scheme = visitor_scheme(headers, request.remote, request.scheme, trusted)
        handoff = Handoff(
            anonymous_id=arrival.aid,
            user_id=arrival.uid,
            source=source,
            from_domain=from_domain(headers.get("Referer"), config),
            to_domain=normalize_host(request.host),
            # arrival.target is the request-target without its identity parameters.
            url=f"{scheme}://{request.host}{arrival.target}",
            ip=client_address(headers, request.remote, trusted),
            user_agent=headers.get("User-Agent"),
        )
        self.enqueue(
            track_event(
                handoff,
                message_id=str(uuid.uuid4()),
                timestamp=time.time(),
                library=self._library,
            )
        )

    def enqueue(self, event: dict[str, Any]) -> None:
        """Queue one event, or drop and count it when the queue is full or the sender closed."""
        if self._closed:
            self._drop("shutdown", 1)
            return
        queue = self._queue
        if len(queue) >= self.settings.queue_size:
            self._drop("queue_full", 1)
            return
        queue.append((time.monotonic(), event))
        # The sender sleeps until the first event (to time the interval from it) or a full batch.
        if len(queue) == 1 or len(queue) >= self.settings.batch_size:
            self._wake.set()

    # -- the sender -----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the background task (in the running loop); nothing when disabled."""
        if not self.enabled or self._task is not None or self._closed:
            return
        # A collector's cookies mean nothing to the gateway.
        self._session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
        self._task = asyncio.get_running_loop().create_task(self._run())

    def drain(self) -> None:
        """From now on send whatever is queued at once, without waiting for a batch to fill:
        the gateway is stopping (called when the drain starts)."""
        self._draining = True
        self._wake.set()

    async def close(self, deadline: float) -> None:
        """Flush the queue until ``deadline`` (``time.monotonic()``), then stop; what is left
        is dropped and counted. Later events are dropped too; closing again does nothing more."""
        self._draining = True
        self._closed = True
        self._deadline = deadline
        self._wake.set()
        task, self._task = self._task, None
        if task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(task), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._queue:
            self._drop("shutdown", len(self._queue))
            self._queue.clear()
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def _run(self) -> None:
        queue = self._queue
        settings = self.settings
        while True:
            oldest = time.monotonic() - queue[0][0] if queue else 0.0
            due = send_due(
                len(queue),
                oldest,
                batch_size=settings.batch_size,
                flush_interval=settings.flush_interval,
                draining=self._draining,
            )
            if due > 0:
                if self._closed and not queue:
                    return
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), None if due == float("inf") else due)
                continue
            batch = self._take()
            if not batch:
                continue
            try:
                await self._send(batch)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # A bug here must not end delivery for the rest of the process's life.
                self._drop("error", len(batch))
                self._log("events_error", error=type(exc).__name__)

    def _take(self) -> Batch:
        batch = Batch(self.settings.batch_size)
        queue = self._queue
        while queue and not batch.full:
            encoded = encode_event(queue[0][1])
            if encoded is None:
                queue.popleft()
                self._drop("too_large", 1)
                continue
            if not batch.add(encoded):
                break
            queue.popleft()
        return batch

    async def _send(self, batch: Batch) -> None:
        n = len(batch)
        try:
            for attempt in range(1, MAX_ATTEMPTS + 1):
                timeout = self._time_left(self.settings.timeout)
                if timeout <= 0:
                    self._drop("shutdown", n)
                    return
                status = await self._post(batch.body(time.time()), timeout)
                result = outcome(status)
                if result == "sent":
                    self._metrics.events_sent.inc(n)
                    return
                if result == "rejected":
                    self._drop("rejected", n)
                    self._log("events_rejected", status=status, events=n)
                    return
                if attempt == MAX_ATTEMPTS:
                    break
                delay = retry_delay(attempt, self._jitter())
                if not self._before_deadline(delay):
                    self._drop("shutdown", n)
                    return
                self._metrics.events_retried.inc(n)
                await asyncio.sleep(delay)
            self._drop("retries_exhausted", n)
            self._log("events_dropped", reason="retries_exhausted", status=status, events=n)
        except asyncio.CancelledError:
            # Cut off at the drain deadline, mid-attempt or mid-wait.
            self._drop("shutdown", n)
            raise

    async def _post(self, body: bytes, timeout: float) -> int | None:
        """The collector's status, or None when it timed out or could not be reached."""
        assert self._session is not None
        try:
            async with self._session.post(
                self._url,
                data=body,
                headers=self._headers,
                timeout=aiohttp.ClientTimeout(total=timeout),
                allow_redirects=False,
            ) as response:
                await response.read()
                return response.status
        except (aiohttp.ClientError, TimeoutError, OSError):
            return None

    def _time_left(self, wanted: float) -> float:
        """``wanted`` seconds, or fewer if the drain deadline comes first."""
        if self._deadline is None:
            return wanted
        return min(wanted, self._deadline - time.monotonic())

    def _before_deadline(self, delay: float) -> bool:
        """Whether an attempt ``delay`` seconds from now would start before the drain
        deadline (always, while not draining)."""
        return self._deadline is None or time.monotonic() + delay < self._deadline

    def _drop(self, reason: str, n: int) -> None:
        self._metrics.events_dropped.labels(reason).inc(n)
