"""Tests for gateway.asset_cache: each guarantee of its docstring, with a clock the test moves."""

from __future__ import annotations

import asyncio

import pytest

from gateway.asset_cache import AssetCache


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(clock: Clock, *, entries: int = 10, size: int = 1000) -> AssetCache[bytes]:
    return AssetCache(max_entries=entries, max_bytes=size, failure_ttl=5.0, size=len, clock=clock)


async def settle() -> None:
    """Let every ready task run (a waiter, then the fetch it starts)."""
    for _ in range(5):
        await asyncio.sleep(0)


class Source:
    """A fetch function that counts its calls and can be held open."""

    def __init__(self, value: bytes = b"v") -> None:
        self.value = value
        self.calls = 0
        self.gate: asyncio.Event | None = None
        self.error: Exception | None = None

    async def __call__(self) -> bytes:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            raise self.error
        return self.value


async def test_a_second_get_is_served_from_the_cache() -> None:
    clock, source = Clock(), Source(b"body")
    cache = make(clock)
    assert await cache.get("k", 60, source) == b"body"
    assert await cache.get("k", 60, source) == b"body"
    assert source.calls == 1
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.fetches, stats.entries, stats.bytes) == (1, 1, 1, 1, 4)


async def test_entries_expire_after_their_ttl() -> None:
    clock, source = Clock(), Source()
    cache = make(clock)
    await cache.get("k", 60, source)
    clock.now += 59.9
    await cache.get("k", 60, source)
    assert source.calls == 1
    clock.now += 0.2
    await cache.get("k", 60, source)
    assert source.calls == 2


async def test_entries_are_bounded_least_recently_used_first() -> None:
    clock = Clock()
    cache = make(clock, entries=2, size=1000)
    sources = {k: Source(k.encode()) for k in "abc"}
    await cache.get("a", 60, sources["a"])
    await cache.get("b", 60, sources["b"])
    await cache.get("a", 60, sources["a"])  # a is now the most recently used
    await cache.get("c", 60, sources["c"])  # so b goes
    assert cache.stats().entries == 2
    await cache.get("a", 60, sources["a"])
    await cache.get("b", 60, sources["b"])
    assert (sources["a"].calls, sources["b"].calls, sources["c"].calls) == (1, 2, 1)


async def test_bytes_are_bounded() -> None:
    clock = Clock()
    cache = make(clock, entries=100, size=10)
    await cache.get("a", 60, Source(b"123456"))
    await cache.get("b", 60, Source(b"1234"))
    assert cache.stats().bytes == 10
    await cache.get("c", 60, Source(b"12"))
    assert cache.stats().bytes == 6 and cache.stats().entries == 2
    huge = Source(b"x" * 11)
    assert await cache.get("huge", 60, huge) == b"x" * 11  # passed on
    assert cache.stats().bytes == 6  # never kept
    await cache.get("huge", 60, huge)
    assert huge.calls == 2


async def test_concurrent_misses_fetch_once() -> None:
    clock, source = Clock(), Source(b"one")
    source.gate = asyncio.Event()
    cache = make(clock)
    waiters = [asyncio.ensure_future(cache.get("k", 60, source)) for _ in range(20)]
    await settle()
    assert source.calls == 1
    source.gate.set()
    assert await asyncio.gather(*waiters) == [b"one"] * 20
    assert source.calls == 1


async def test_a_caller_going_away_does_not_cancel_the_fetch_for_the_others() -> None:
    clock, source = Clock(), Source(b"one")
    source.gate = asyncio.Event()
    cache = make(clock)
    first = asyncio.ensure_future(cache.get("k", 60, source))
    second = asyncio.ensure_future(cache.get("k", 60, source))
    await settle()
    first.cancel()
    source.gate.set()
    assert await second == b"one"
    assert source.calls == 1
    assert await cache.get("k", 60, source) == b"one" and source.calls == 1


async def test_errors_are_shared_and_kept_seconds_only() -> None:
    clock, source = Clock(), Source()
    source.error = ConnectionError("cdn down")
    source.gate = asyncio.Event()
    cache = make(clock)
    waiters = [asyncio.ensure_future(cache.get("k", 60, source)) for _ in range(3)]
    await settle()
    source.gate.set()
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results) and source.calls == 1
    # Within failure_ttl the error is answered at once, without a fetch.
    clock.now += 4.9
    with pytest.raises(ConnectionError):
        await cache.get("k", 60, source)
    assert source.calls == 1
    # After it, the next request tries again, and a success is stored as usual.
    clock.now += 0.2
    source.error = None
    assert await cache.get("k", 60, source) == b"v"
    assert source.calls == 2 and cache.stats().entries == 1


async def test_keys_are_independent() -> None:
    clock = Clock()
    cache = make(clock)
    failing = Source()
    failing.error = OSError("nope")
    with pytest.raises(OSError):
        await cache.get("bad", 60, failing)
    assert await cache.get("good", 60, Source(b"ok")) == b"ok"
