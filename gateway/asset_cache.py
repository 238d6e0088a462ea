"""The in-memory cache behind first-party delivery: what the gateway fetched from the CDN.

Guarantees (tests/test_asset_cache.py checks each):

- Bounded: at most ``max_entries`` entries holding at most ``max_bytes`` of bodies together;
  the least recently used go first, and a value larger than ``max_bytes`` is passed on but
  never kept.
- Expiring: a value is served for the ``ttl`` it was stored with, then fetched again.
- Single-flight: concurrent misses for one key fetch once, and every caller gets that fetch's
  value (or its error). A caller that goes away does not cancel the fetch for the others.
- Errors are not content: a fetch that raises is remembered for ``failure_ttl`` seconds only
  (the callers meanwhile get the same error at once, so a CDN that is down costs each page
  one fast answer rather than a connection attempt), then tried again.

The clock is passed in, so tests expire entries without sleeping. One cache per process;
nothing in it depends on the visitor (see firstparty.py).
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["AssetCache", "CacheStats"]

T = TypeVar("T")


@dataclass(frozen=True)
class CacheStats:
    entries: int
    bytes: int
    hits: int
    misses: int
    fetches: int


@dataclass
class _Entry(Generic[T]):
    value: T
    size: int
    expires: float


class AssetCache(Generic[T]):
    """Values by key (an upstream URL), each with its own time to live."""

    def __init__(
        self,
        *,
        max_entries: int,
        max_bytes: int,
        failure_ttl: float,
        size: Callable[[T], int],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._failure_ttl = failure_ttl
        self._size = size
        self._clock = clock
        self._entries: collections.OrderedDict[str, _Entry[T]] = collections.OrderedDict()
        self._failures: dict[str, tuple[float, BaseException]] = {}
        self._inflight: dict[str, asyncio.Future[T]] = {}
        self._bytes = 0
        self._hits = self._misses = self._fetches = 0

    async def get(self, key: str, ttl: float, fetch: Callable[[], Awaitable[T]]) -> T:
        """The value for ``key``: stored and fresh, or fetched now (once, however many ask)
        and stored for ``ttl`` seconds. Raises what the fetch raised."""
        now = self._clock()
        entry = self._entries.get(key)
        if entry is not None:
            if entry.expires > now:
                self._entries.move_to_end(key)
                self._hits += 1
                return entry.value
            self._drop(key)
        failed = self._failures.get(key)
        if failed is not None:
            if failed[0] > now:
                raise failed[1]
            del self._failures[key]
        self._misses += 1
        pending = self._inflight.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._fetch(key, ttl, fetch))
            pending.add_done_callback(_retrieve)
            self._inflight[key] = pending
        # Shielded: a caller cancelled while waiting leaves the fetch running for the others.
        return await asyncio.shield(pending)

    async def _fetch(self, key: str, ttl: float, fetch: Callable[[], Awaitable[T]]) -> T:
        self._fetches += 1
        try:
            value = await fetch()
        except BaseException as exc:
            if isinstance(exc, Exception):
                self._failures[key] = (self._clock() + self._failure_ttl, exc)
            raise
        finally:
            del self._inflight[key]
        self._store(key, value, ttl)
        return value

    def _store(self, key: str, value: T, ttl: float) -> None:
        size = self._size(value)
        if size > self._max_bytes or ttl <= 0:
            return
        if key in self._entries:
            self._drop(key)
        self._entries[key] = _Entry(value, size, self._clock() + ttl)
        self._bytes += size
        while len(self._entries) > self._max_entries or self._bytes > self._max_bytes:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key)
        self._bytes -= entry.size

    def clear(self) -> None:
        self._entries.clear()
        self._failures.clear()
        self._bytes = 0

    def stats(self) -> CacheStats:
        return CacheStats(
            entries=len(self._entries),
            bytes=self._bytes,
            hits=self._hits,
            misses=self._misses,
            fetches=self._fetches,
        )


def _retrieve(task: asyncio.Future[T]) -> None:
    """Take a fetch's error even when every caller went away (asyncio would log it)."""
    if not task.cancelled():
        task.exception()
