"""The token store against a real redis-server (killed, paused, restarted, behind Sentinel, on a
unix socket, with a password) and in memory; store URLs offline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from gateway.store import (
    CircuitBreakerStore,
    MemoryStore,
    StoreError,
    TokenStore,
    open_store,
)
from gateway.strategies import TokenRecord, new_token
from tests.conftest import refused_port
from tests.redis_server import RedisServer, require_binary
from tests.redis_server import redis_server as redis_server

# Generous for normal operations on a loaded CI machine; the timeout tests use a tight one.
TIMEOUT_MS = 1000
TIGHT_MS = 100
# How much later than its timeout a failing operation may return (scheduling on 2 busy cores).
SLACK = 0.4

RECORD = TokenRecord(
    "5d1c8a4e-3f7b-4c2a-9e8d-1b2c3d4e5f60", "user 42", 1_700_000_000.5, "a.example"
)
OTHER = TokenRecord("another-anonymous-id", None, 1_700_000_001.0, "b.example")


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[TokenStore]:
    if request.param == "memory":
        s = open_store("memory://", timeout_ms=TIMEOUT_MS)
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        s = open_store(server.url, timeout_ms=TIMEOUT_MS)
    yield s
    await s.close()


@pytest.fixture
async def raw(redis_server: RedisServer) -> AsyncIterator[Redis]:
    """A plain client on the test server, to look behind the store's back."""
    client = Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


async def timed_store_error(coro: object) -> tuple[float, str]:
    started = time.monotonic()
    with pytest.raises(StoreError) as info:
        await coro  # type: ignore[misc]
    return time.monotonic() - started, str(info.value)


# --- Both backends -------------------------------------------------------------------------------


async def test_put_then_take(store: TokenStore) -> None:
    token = new_token()
    await store.put(token, RECORD, 300)
    assert await store.take(token, single_use=False) == RECORD
    assert await store.take(token, single_use=False) == RECORD
    assert await store.take(token, single_use=True) == RECORD
    assert await store.take(token, single_use=True) is None
    assert await store.take(token, single_use=False) is None


async def test_unknown_token(store: TokenStore) -> None:
    assert await store.take(new_token(), single_use=False) is None
    assert await store.take(new_token(), single_use=True) is None


async def test_tokens_are_independent_and_put_replaces(store: TokenStore) -> None:
    a, b = new_token(), new_token()
    await store.put(a, RECORD, 300)
    await store.put(b, OTHER, 300)
    await store.put(a, OTHER, 300)
    assert await store.take(a, single_use=True) == OTHER
    assert await store.take(b, single_use=True) == OTHER


async def test_concurrent_single_use_takes_exactly_one(store: TokenStore) -> None:
    token = new_token()
    await store.put(token, RECORD, 300)
    results = await asyncio.gather(*(store.take(token, single_use=True) for _ in range(20)))
    assert results.count(RECORD) == 1
    assert results.count(None) == 19


@pytest.mark.parametrize("ttl", [0, -1, 601, True, 1.5])
async def test_ttl_outside_bounds_is_refused(store: TokenStore, ttl: int) -> None:
    with pytest.raises(ValueError, match="1-600"):
        await store.put(new_token(), RECORD, ttl)


async def test_health_up(store: TokenStore) -> None:
    health = await store.health()
    assert health["kind"] == store.name
    assert health["state"] == "up" and health["error"] == ""


# --- Memory --------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_memory_expiry() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    token = new_token()
    await store.put(token, RECORD, 1)
    clock.now += 0.999
    assert await store.take(token, single_use=False) == RECORD
    clock.now += 0.001
    assert await store.take(token, single_use=False) is None
    assert len(store) == 0


async def test_memory_expired_entries_are_cleared_on_put() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    for _ in range(50):
        await store.put(new_token(), RECORD, 5)
    clock.now += 5
    await store.put(new_token(), RECORD, 5)
    assert len(store) == 1


async def test_memory_size_is_bounded_oldest_evicted() -> None:
    store = MemoryStore(max_entries=3)
    tokens = [new_token() for _ in range(5)]
    for token in tokens:
        await store.put(token, RECORD, 300)
    assert len(store) == 3
    assert [await store.take(t, single_use=False) for t in tokens] == [None, None] + [RECORD] * 3


async def test_memory_stores_are_separate() -> None:
    one, two = MemoryStore(), MemoryStore()
    token = new_token()
    await one.put(token, RECORD, 300)
    assert await two.take(token, single_use=False) is None


# --- Redis ---------------------------------------------------------------------------------------


async def test_redis_key_value_and_ttl(redis_server: RedisServer, raw: Redis) -> None:
    store = open_store(redis_server.url, timeout_ms=TIMEOUT_MS)
    token = new_token()
    await store.put(token, RECORD, 300)
    assert await raw.get(f"ajsgw:t:{token}") == RECORD.to_bytes()
    assert 298 <= await raw.ttl(f"ajsgw:t:{token}") <= 300
    await store.take(token, single_use=True)
    assert await raw.exists(f"ajsgw:t:{token}") == 0
    await store.close()


async def test_redis_key_prefix_is_honoured(redis_server: RedisServer, raw: Redis) -> None:
    tenant = open_store(redis_server.url, timeout_ms=TIMEOUT_MS, key_prefix="tenant1:")
    default = open_store(redis_server.url, timeout_ms=TIMEOUT_MS)
    token = new_token()
    await tenant.put(token, RECORD, 300)
    assert await raw.keys("*") == [f"tenant1:t:{token}".encode()]
    assert await default.take(token, single_use=True) is None
    assert await tenant.take(token, single_use=True) == RECORD
    await tenant.close()
    await default.close()


async def test_redis_ttl_expiry(redis_server: RedisServer) -> None:
    store = open_store(redis_server.url, timeout_ms=TIMEOUT_MS)
    token = new_token()
    put_at = time.monotonic()
    await store.put(token, RECORD, 1)
    assert await store.take(token, single_use=False) == RECORD
    # Gone once its second is up: polled (Redis's expiry and our clock need not agree to the
    # millisecond), within a generous limit, so a TTL that never applies still fails.
    while await store.take(token, single_use=False) is not None:
        assert time.monotonic() - put_at < 10, "a 1 s token still there after 10 s"
        await asyncio.sleep(0.05)
    assert time.monotonic() - put_at > 0.9  # not gone early either
    await store.close()


@pytest.mark.parametrize(
    "value", [b"", b"garbage", b"\xff\xfe\x00", b'{"a":1}', b"[" * 3000, RECORD.to_bytes()[:-1]]
)
async def test_redis_garbage_value_reads_as_unknown(
    redis_server: RedisServer, raw: Redis, value: bytes
) -> None:
    store = open_store(redis_server.url, timeout_ms=TIMEOUT_MS)
    token = new_token()
    await raw.set(f"ajsgw:t:{token}", value)
    assert await store.take(token, single_use=False) is None
    assert await store.take(token, single_use=True) is None
    assert await raw.exists(f"ajsgw:t:{token}") == 0
    await store.close()


async def test_redis_wrong_type_is_a_store_error(redis_server: RedisServer, raw: Redis) -> None:
    store = open_store(redis_server.url, timeout_ms=TIMEOUT_MS)
    token = new_token()
    await raw.rpush(f"ajsgw:t:{token}", b"x")
    _, message = await timed_store_error(store.take(token, single_use=True))
    assert "WRONGTYPE" in message and token not in message
    await store.close()


async def test_redis_paused_times_out_then_recovers_without_mixing_replies(
    redis_server: RedisServer,
) -> None:
    store = open_store(redis_server.url, timeout_ms=TIGHT_MS)
    a, b = new_token(), new_token()
    await store.put(a, RECORD, 300)
    await store.put(b, OTHER, 300)
    redis_server.pause()
    try:
        for op in (
            store.take(a, single_use=False),
            store.take(a, single_use=True),
            store.put(new_token(), RECORD, 300),
        ):
            elapsed, message = await timed_store_error(op)
            assert elapsed < TIGHT_MS / 1000 + SLACK
            assert "no answer within 100 ms" in message and a not in message
        started = time.monotonic()
        health = await store.health()
        assert time.monotonic() - started < TIGHT_MS / 1000 + SLACK
        assert health["state"] == "down" and "no answer" in str(health["error"])
    finally:
        redis_server.resume()
    # The server now answers the GET it had been sent for ``a``; that reply goes to a connection
    # the timeout dropped, never to the next request. (The GETDEL was never sent: its fresh
    # connection was still waiting for the handshake, so ``a`` is still there.)
    assert await store.take(b, single_use=False) == OTHER
    assert await store.take(a, single_use=False) == RECORD
    assert (await store.health())["state"] == "up"
    await store.close()


async def test_black_hole_server_times_out() -> None:
    """A listener that accepts and never answers (a wedged proxy or a stalled host)."""
    accepted: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        while await reader.read(4096):
            pass

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    store = open_store(f"redis://127.0.0.1:{port}/0", timeout_ms=TIGHT_MS)
    for op in (store.take(new_token(), single_use=True), store.put(new_token(), RECORD, 60)):
        elapsed, _ = await timed_store_error(op)
        assert elapsed < TIGHT_MS / 1000 + SLACK
    assert (await store.health())["state"] == "down"
    assert accepted
    await store.close()
    server.close()
    for writer in accepted:
        writer.close()
    await server.wait_closed()


async def test_nothing_listening_fails_fast() -> None:
    with refused_port() as port:
        store = open_store(f"redis://127.0.0.1:{port}/0", timeout_ms=TIMEOUT_MS)
        elapsed, message = await timed_store_error(store.take(new_token(), single_use=False))
    # Refused, not timed out: the error is the connection's, not the deadline's, so it came
    # before the 1000 ms timeout; and no later than a tight timeout would have.
    assert "connecting" in message and "no answer" not in message
    assert elapsed < TIGHT_MS / 1000 + SLACK
    await store.close()


async def test_redis_killed_then_restarted_same_store_recovers(redis_server: RedisServer) -> None:
    store = open_store(redis_server.url, timeout_ms=TIMEOUT_MS)
    tokens = [new_token() for _ in range(10)]
    # Ten concurrent calls leave ten connections in the pool, all of which the kill makes dead.
    await asyncio.gather(*(store.put(t, RECORD, 300) for t in tokens))
    redis_server.kill()
    await asyncio.sleep(0.05)
    for op in (store.take(tokens[0], single_use=False), store.put(tokens[0], RECORD, 300)):
        elapsed, message = await timed_store_error(op)
        # Fails on the dead connection, not by waiting out the 1000 ms timeout.
        assert "no answer" not in message
        assert elapsed < TIGHT_MS / 1000 + SLACK
    health = await store.health()
    assert health["state"] == "down" and health["error"]
    redis_server.start()
    # Not "eventually": every pooled connection is replaced before use, so no request fails.
    results = await asyncio.gather(*(store.put(t, OTHER, 300) for t in tokens))
    assert results == [None] * 10
    assert await asyncio.gather(*(store.take(t, single_use=True) for t in tokens)) == [OTHER] * 10
    assert (await store.health())["state"] == "up"
    await store.close()


async def test_password_never_in_errors_or_health(tmp_path: Path) -> None:
    password = "s3cret-Passw0rd-xyz"
    server = RedisServer(require_binary(), tmp_path, extra=("--requirepass", password))
    server.start()
    try:
        good = open_store(f"redis://:{password}@127.0.0.1:{server.port}/0", timeout_ms=TIMEOUT_MS)
        token = new_token()
        await good.put(token, RECORD, 60)
        assert await good.take(token, single_use=True) == RECORD
        health = await good.health()
        assert health["state"] == "up" and password not in str(health)
        await good.close()
        wrong = "wr0ng-Passw0rd-abc"
        bad = open_store(f"redis://:{wrong}@127.0.0.1:{server.port}/0", timeout_ms=TIMEOUT_MS)
        _, message = await timed_store_error(bad.take(token, single_use=False))
        health = await bad.health()
        assert health["state"] == "down"
        for text in (message, str(health)):
            assert wrong not in text and ":***@" in text
        await bad.close()
    finally:
        server.kill()


async def test_unix_socket(tmp_path: Path) -> None:
    sock = tmp_path / "redis.sock"
    server = RedisServer(
        require_binary(), tmp_path, extra=("--unixsocket", str(sock), "--unixsocketperm", "700")
    )
    server.start()
    try:
        store = open_store(f"unix://{sock}?db=2", timeout_ms=TIMEOUT_MS)
        token = new_token()
        await store.put(token, RECORD, 60)
        assert await store.take(token, single_use=True) == RECORD
        assert (await store.health())["state"] == "up"
        await store.close()
    finally:
        server.kill()


@pytest.fixture
def sentinel(redis_server: RedisServer, tmp_path: Path) -> Iterator[RedisServer]:
    """A real Sentinel (``redis-server --sentinel``) watching ``redis_server`` as ``mymaster``."""
    directory = tmp_path / "sentinel"
    directory.mkdir()
    conf = directory / "sentinel.conf"
    conf.write_text(f"sentinel monitor mymaster 127.0.0.1 {redis_server.port} 1\n")
    server = RedisServer(require_binary(), directory, extra=("--sentinel",), config_file=conf)
    server.start()
    yield server
    server.kill()


async def test_sentinel_master_discovery_and_recovery(
    sentinel: RedisServer, redis_server: RedisServer
) -> None:
    with refused_port() as dead:  # a first Sentinel that is down
        url = f"redis+sentinel://127.0.0.1:{dead},127.0.0.1:{sentinel.port}/mymaster/3"
        store = open_store(url, timeout_ms=TIMEOUT_MS)
        token = new_token()
        await store.put(token, RECORD, 60)
        assert await store.take(token, single_use=True) == RECORD
        assert (await store.health())["state"] == "up"
        redis_server.kill()
        await timed_store_error(store.take(token, single_use=False))
        assert (await store.health())["state"] == "down"
        redis_server.start()
        await store.put(token, OTHER, 60)
        assert await store.take(token, single_use=True) == OTHER
        await store.close()


async def test_cluster_store_reports_down_when_no_node_answers() -> None:
    with refused_port() as port:
        store = open_store(f"redis+cluster://127.0.0.1:{port}", timeout_ms=TIMEOUT_MS)
        assert store.name == "redis"
        await timed_store_error(store.take(new_token(), single_use=False))
        health = await store.health()
        assert health["state"] == "down" and health["error"]
        await store.close()


# --- Opening, offline -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    ["memory://", "redis://127.0.0.1:1/0", "redis+sentinel://127.0.0.1:1/m", "redis+cluster://h:1"],
)
async def test_open_store_connects_lazily(url: str) -> None:
    """Opening a store makes no connection (nothing listens on these ports, and the Cluster
    host does not even resolve): the gateway starts whatever state its store is in."""
    store = open_store(url, timeout_ms=50)
    assert store.name == ("memory" if url == "memory://" else "redis")
    if url != "memory://":
        with pytest.raises(StoreError):
            await store.take("A" * 32, single_use=False)
    await store.close()


def test_open_store_refuses_zero_timeout() -> None:
    with pytest.raises(ValueError, match="at least 1 ms"):
        open_store("memory://", timeout_ms=0)


# --- The circuit breaker around a store --------------------------------------------------------


class FlakyStore(MemoryStore):
    """A memory store that fails (StoreError) while ``down``, and counts the calls it gets; a
    bad TTL is still refused first (ValueError), as RedisStore does."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.calls = 0

    async def put(self, token: str, record: TokenRecord, ttl: int) -> None:
        self.calls += 1
        if self.down and ttl >= 1:
            raise StoreError("flaky: down")
        await super().put(token, record, ttl)

    async def take(self, token: str, *, single_use: bool) -> TokenRecord | None:
        self.calls += 1
        if self.down:
            raise StoreError("flaky: down")
        return await super().take(token, single_use=single_use)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def guarded(
    inner: TokenStore, clock: Clock, changes: list[tuple[str, str | None]]
) -> CircuitBreakerStore:
    return CircuitBreakerStore(
        inner,
        failures=3,
        cooldown=10.0,
        clock=clock,
        watch=lambda state, error: changes.append((state, error)),
    )


async def test_circuit_skips_the_store_while_open_then_probes_it() -> None:
    inner, clock, changes = FlakyStore(), Clock(), []
    store = guarded(inner, clock, changes)
    token = new_token()
    await store.put(token, RECORD, 60)
    inner.down = True
    for _ in range(3):
        with pytest.raises(StoreError, match="flaky: down"):
            await store.take(token, single_use=False)
    assert (store.state, inner.calls, changes) == ("open", 4, [("open", "flaky: down")])
    # Open: every call fails at once, without reaching the store.
    for op in (store.take(token, single_use=True), store.put(new_token(), RECORD, 60)):
        with pytest.raises(StoreError, match=r"circuit open: calls skipped for 10\.0 s more"):
            await op
    assert inner.calls == 4
    clock.now += 9.9
    with pytest.raises(StoreError, match=r"circuit open: calls skipped for 0\.1 s more"):
        await store.take(token, single_use=False)
    # After the cool-down one call probes; it fails, and the circuit opens again.
    clock.now += 0.1
    with pytest.raises(StoreError, match="flaky: down"):
        await store.take(token, single_use=False)
    assert (store.state, inner.calls) == ("open", 5)
    assert changes[1:] == [("half_open", None), ("open", "flaky: down")]
    # The next probe succeeds and closes it; the token was kept all along.
    inner.down = False
    clock.now += 10
    assert await store.take(token, single_use=False) == RECORD
    assert store.state == "closed"
    assert changes[3:] == [("half_open", None), ("closed", None)]


async def test_circuit_errors_that_are_not_the_stores_do_not_count() -> None:
    inner, clock, changes = FlakyStore(), Clock(), []
    store = guarded(inner, clock, changes)
    for _ in range(5):
        with pytest.raises(ValueError):
            await store.put(new_token(), RECORD, 0)
    assert (store.state, changes) == ("closed", [])
    inner.down = True
    for _ in range(3):
        with pytest.raises(StoreError):
            await store.put(new_token(), RECORD, 60)
    clock.now += 10
    # A probe that ends without a verdict lets the next call probe.
    with pytest.raises(ValueError):
        await store.put(new_token(), RECORD, 0)
    assert store.state == "half_open"
    inner.down = False
    await store.put(new_token(), RECORD, 60)
    assert store.state == "closed"


async def test_circuit_health_asks_the_store_and_adds_the_state() -> None:
    inner, clock, changes = FlakyStore(), Clock(), []
    store = guarded(inner, clock, changes)
    assert await store.health() == {
        "kind": "memory",
        "url": "memory://",
        "state": "up",
        "error": "",
        "circuit": "closed",
    }
    inner.down = True
    for _ in range(3):
        with pytest.raises(StoreError):
            await store.take(new_token(), single_use=False)
    # Health never moves the breaker: it reports, and the request path decides.
    assert (await store.health())["circuit"] == "open"
    assert store.state == "open"
    assert store.name == "memory"


async def test_circuit_opens_on_a_paused_redis_and_closes_after_it_resumes(
    redis_server: RedisServer,
) -> None:
    clock, changes = Clock(), []
    store = guarded(open_store(redis_server.url, timeout_ms=TIGHT_MS), clock, changes)
    token = new_token()
    await store.put(token, RECORD, 300)
    redis_server.pause()
    try:
        for _ in range(3):
            _, message = await timed_store_error(store.take(token, single_use=False))
            assert "no answer within 100 ms" in message
        assert store.state == "open"
        assert changes == [("open", message)]
        _, message = await timed_store_error(store.take(token, single_use=False))
        assert "circuit open" in message
    finally:
        redis_server.resume()
    clock.now += 10
    assert await store.take(token, single_use=False) == RECORD
    assert [state for state, _ in changes] == ["open", "half_open", "closed"]
    await store.close()
