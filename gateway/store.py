"""The token store of the ``token`` strategy: in-memory or Redis behind one small interface.

A token is written once when a page is served (``put``) and read once when the visitor arrives
on another site (``take``), possibly at another gateway of the fleet, so the fleet shares a
Redis. The store sits on the request path, which must never wait on it for long: every
operation is bounded by a tight timeout (tens of milliseconds) and every failure becomes a
:class:`StoreError`, which the proxy turns into "no identity" rather than an error page.

Store URLs (``open_store``) are described and checked in :mod:`gateway.store_url`.

Keys are ``{prefix}t:{token}``; values are :meth:`TokenRecord.to_bytes`. Nothing here logs,
and no error message carries a token or a password.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException, RedisError
from redis.maint_notifications import MaintNotificationsConfig

from gateway.circuit import CircuitBreaker, State
from gateway.options import MAX_TOKEN_TTL, Store
from gateway.store_url import StoreURL, parse_store_url, redact_url
from gateway.strategies import TokenRecord

# Bounds the sockets one gateway process opens to Redis. When Redis stalls, requests queue up
# behind the timeout; beyond this many in flight they fail at once instead of opening more.
_MAX_CONNECTIONS = 128
_MEMORY_MAX_ENTRIES = 100_000

_T = TypeVar("_T")


class StoreError(Exception):
    """The store did not answer in time or failed; the message is safe to log."""


class TokenStore(Protocol):
    """Where tokens live between the page that links and the site that is linked to."""

    name: str

    async def put(self, token: str, record: TokenRecord, ttl: int) -> None:
        """Keep ``record`` under ``token`` for ``ttl`` seconds. Raises StoreError."""

    async def take(self, token: str, *, single_use: bool) -> TokenRecord | None:
        """The record, or None if unknown, expired or unreadable; with ``single_use`` it is
        deleted in the same atomic step, so of concurrent takes exactly one gets it. Raises
        StoreError."""

    async def health(self) -> dict[str, object]:
        """``{"kind", "url", "state": "up"|"down", "error"}`` within the timeout; never
        raises."""

    async def close(self) -> None:
        """Release connections."""


def open_store(url: str, *, timeout_ms: int, key_prefix: str = Store.key_prefix) -> TokenStore:
    """The store for ``url``, bounded by ``timeout_ms`` per operation. Connects lazily, so this
    never blocks and a Redis that is down at start-up is only a failed ``health()``. Raises
    ValueError for a bad URL or timeout."""
    if timeout_ms < 1:
        raise ValueError(f"store timeout must be at least 1 ms, not {timeout_ms}")
    parsed = parse_store_url(url)
    if parsed.kind == "memory":
        return MemoryStore()
    timeout = timeout_ms / 1000
    common: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        # No retries: the budget is one timeout, and a retried GETDEL whose first answer was
        # lost would report a consumed token as unknown. Dead pooled connections need none:
        # the pool checks each one before use and reconnects it.
        "retry": Retry(NoBackoff(), 0),
        # redis-py 8.1 skips its check of a pooled connection before reuse when maintenance
        # notifications are on (its default under RESP3), so after a Redis restart every pooled
        # connection fails one request (redis/redis-py#4252, fixed by #4260). We use no
        # managed-service maintenance events, so turning them off costs nothing.
        "maint_notifications_config": MaintNotificationsConfig(enabled=False),
    }
    closers: list[Callable[[], Awaitable[None]]] = []
    client: Redis | RedisCluster
    if parsed.kind == "redis":
        client = Redis.from_url(url, max_connections=_MAX_CONNECTIONS, **common)
    elif parsed.kind == "sentinel":
        assert parsed.service is not None
        # Sentinel clients would otherwise get redis-py's default retries with back-off, so
        # one dead Sentinel in the list would use up the whole budget.
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            list(parsed.hosts), sentinel_kwargs=common, **common
        )
        client = sentinel.master_for(
            parsed.service,
            db=parsed.db,
            username=parsed.username,
            password=parsed.password,
            max_connections=_MAX_CONNECTIONS,
        )
        closers.append(sentinel.aclose)
    else:
        client = RedisCluster(
            startup_nodes=[ClusterNode(h, p) for h, p in parsed.hosts],
            username=parsed.username,
            password=parsed.password,
            max_connections=_MAX_CONNECTIONS,
            **common,
        )
    return RedisStore(client, timeout, key_prefix, parsed, closers)


# --- In memory -----------------------------------------------------------------------------------


class MemoryStore:
    """Tokens in a dict, for a single process. Expiry uses the monotonic clock (immune to
    wall-clock jumps); beyond ``max_entries`` the oldest tokens are dropped, so a flood of page
    views costs bounded memory."""

    name: str = "memory"

    def __init__(
        self,
        *,
        max_entries: int = _MEMORY_MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max = max_entries
        self._clock = clock
        # Insertion order is expiry order while the TTL is fixed, so expired entries gather at
        # the front, where each put clears them.
        self._data: collections.OrderedDict[str, tuple[float, TokenRecord]] = (
            collections.OrderedDict()
        )

    def __len__(self) -> int:
        return len(self._data)

    async def put(self, token: str, record: TokenRecord, ttl: int) -> None:
        """Keep ``record`` for ``ttl`` seconds; ValueError unless 1 <= ttl <= MAX_TOKEN_TTL."""
        _check_ttl(ttl)
        now = self._clock()
        self._data.pop(token, None)
        self._data[token] = (now + ttl, record)
        while self._data and next(iter(self._data.values()))[0] <= now:
            self._data.popitem(last=False)
        while len(self._data) > self._max:
            self._data.popitem(last=False)

    async def take(self, token: str, *, single_use: bool) -> TokenRecord | None:
        """The record if present and unexpired (removed with ``single_use``). Without an await
        between lookup and removal this is atomic on the event loop."""
        entry = self._data.pop(token, None) if single_use else self._data.get(token)
        if entry is None:
            return None
        deadline, record = entry
        if deadline <= self._clock():
            self._data.pop(token, None)
            return None
        return record

    async def health(self) -> dict[str, object]:
        """Always up."""
        return {"kind": self.name, "url": "memory://", "state": "up", "error": ""}

    async def close(self) -> None:
        """Forget every token."""
        self._data.clear()


def _check_ttl(ttl: int) -> None:
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 1 <= ttl <= MAX_TOKEN_TTL:
        raise ValueError(f"token TTL must be 1-{MAX_TOKEN_TTL} seconds, not {ttl!r}")


# --- Redis ---------------------------------------------------------------------------------------


class RedisStore:
    """Tokens in Redis (single server, Sentinel-managed or Cluster), one round trip per call.

    redis-py reconnects by itself: the pool checks a pooled connection before reuse, and a
    command cut short by the timeout disconnects its connection, so a stalled or restarted
    Redis never leaves a half-read reply behind for the next request.
    """

    name: str = "redis"

    def __init__(
        self,
        client: Redis | RedisCluster,
        timeout: float,
        key_prefix: str,
        url: StoreURL,
        closers: list[Callable[[], Awaitable[None]]],
    ) -> None:
        self._client = client
        self._timeout = timeout
        self._prefix = key_prefix
        self._shown = redact_url(url.url)
        self._password = url.password
        self._closers = closers

    def _key(self, token: str) -> str:
        return f"{self._prefix}t:{token}"

    async def _call(self, what: str, op: Callable[[], Awaitable[_T]]) -> _T:
        """Run one Redis operation within the timeout, turning every failure into StoreError.

        The socket timeouts alone do not bound an operation (connect, then send, then read each
        get the full timeout, and Sentinel adds a discovery), hence the outer deadline.
        """
        try:
            async with asyncio.timeout(self._timeout):
                return await op()
        except TimeoutError as exc:  # before OSError, of which it is a subclass
            raise StoreError(
                f"redis {what}: no answer within {self._timeout * 1000:.0f} ms ({self._shown})"
            ) from exc
        # RedisClusterException (no usable node, slot not covered) is not a RedisError.
        except (RedisError, RedisClusterException, OSError) as exc:
            raise StoreError(f"redis {what}: {self._scrub(str(exc))} ({self._shown})") from exc

    def _scrub(self, text: str) -> str:
        return text.replace(self._password, "***") if self._password else text

    async def put(self, token: str, record: TokenRecord, ttl: int) -> None:
        """``SET key value EX ttl``; ValueError unless 1 <= ttl <= MAX_TOKEN_TTL."""
        _check_ttl(ttl)
        value = record.to_bytes()
        await self._call("put", lambda: self._client.set(self._key(token), value, ex=ttl))

    async def take(self, token: str, *, single_use: bool) -> TokenRecord | None:
        """``GETDEL`` (Redis 6.2+) when single-use, else ``GET``. A value that is not a record
        (written by something else, or corrupted) reads as an unknown token."""
        key = self._key(token)
        if single_use:
            raw: object = await self._call("take", lambda: self._client.getdel(key))
        else:
            raw = await self._call("take", lambda: self._client.get(key))
        return TokenRecord.from_bytes(raw) if isinstance(raw, bytes) else None

    async def health(self) -> dict[str, object]:
        """PING within the timeout."""
        report: dict[str, object] = {"kind": self.name, "url": self._shown}
        try:
            await self._call("ping", lambda: self._client.ping())
        except StoreError as exc:
            return {**report, "state": "down", "error": str(exc)}
        except Exception as exc:  # a health probe reports; it must not fail the admin endpoint
            return {**report, "state": "down", "error": type(exc).__name__}
        return {**report, "state": "up", "error": ""}

    async def close(self) -> None:
        """Close the client and, for Sentinel, the Sentinel connections."""
        await self._client.aclose()
        for closer in self._closers:
            await closer()


# --- Circuit breaker -----------------------------------------------------------------------------

# Told of each change of a breaker's state: the new state, and the error that opened it (None
# for the other changes).
CircuitWatcher = Callable[[State, str | None], None]


class CircuitBreakerStore:
    """A TokenStore that stops calling a failing store for a while (gateway/circuit.py).

    After ``failures`` consecutive StoreErrors (failures and timeouts) of ``put`` and ``take``,
    calls raise StoreError at once, without touching the store, for ``cooldown`` seconds; then
    one call probes it, and its verdict closes the circuit or opens it again. So a hung Redis
    costs each page its timeout only until the circuit opens, then nothing, and the probe finds
    out when it is back. ``health`` always asks the store itself (probes and the status page
    must see the truth) and adds the breaker's state; its answer never moves the breaker,
    which follows the request path only. ``watch`` is told of each change of state.
    """

    def __init__(
        self,
        store: TokenStore,
        *,
        failures: int,
        cooldown: float,
        watch: CircuitWatcher | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.inner = store
        self.name = store.name
        self.breaker = CircuitBreaker(failures=failures, cooldown=cooldown)
        self._watch = watch
        self.clock = clock

    @property
    def state(self) -> State:
        return self.breaker.state

    async def _call(self, op: Callable[[], Awaitable[_T]]) -> _T:
        breaker = self.breaker
        before = breaker.state
        now = self.clock()
        ticket = breaker.allow(now)
        self._changed(before, None)
        if ticket is None:
            raise StoreError(
                f"{self.name} store circuit open: calls skipped for "
                f"{breaker.retry_in(now):.1f} s more after {breaker.threshold} failures in a row"
            )
        try:
            result = await op()
        except StoreError as exc:
            before = breaker.state
            breaker.failed(ticket, self.clock())
            self._changed(before, str(exc))
            raise
        except BaseException:
            # Cancelled, or refused before it reached the store (a bad TTL): no verdict.
            breaker.released(ticket)
            raise
        before = breaker.state
        breaker.succeeded(ticket)
        self._changed(before, None)
        return result

    def _changed(self, before: State, error: str | None) -> None:
        after = self.breaker.state
        if after != before and self._watch is not None:
            self._watch(after, error if after == "open" else None)

    async def put(self, token: str, record: TokenRecord, ttl: int) -> None:
        await self._call(lambda: self.inner.put(token, record, ttl))

    async def take(self, token: str, *, single_use: bool) -> TokenRecord | None:
        return await self._call(lambda: self.inner.take(token, single_use=single_use))

    async def health(self) -> dict[str, object]:
        """The store's own health report, with ``circuit``: the breaker's state."""
        return {**await self.inner.health(), "circuit": self.breaker.state}

    async def close(self) -> None:
        await self.inner.close()
