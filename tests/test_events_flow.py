"""Server-side hand-off events on the wire: the real gateway in-process (and once as a real
process), a real redis-server for tokens, and a local collector: an aiohttp server on loopback
that speaks Segment's batch API and records every request it gets.

Covered: one "Cross Domain Navigation" event per query, token and signed hand-off with its
fields, nothing for other visits, batching by size and by interval, a collector that is down,
slow, failing with 500 then recovering, or refusing with 400, a full queue, and the flush on
SIGTERM. Timing is asserted by the order of events, not by the wall clock.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import signal
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from gateway.app import Gateway, Overrides
from gateway.config import load_config
from tests.redis_server import RedisServer
from tests.redis_server import redis_server as redis_server

from .conftest import GatewayProcess, RunningGateway, StartGateway, StartUpstream
from .test_tokens_flow import (
    AID,
    KEYS_ENV,
    PAY,
    SHOP,
    SSO,
    UID,
    VISITOR,
    WWW,
    Reply,
    gateway_yaml,
    metrics,
    page_a,
    sample,
    upstream_app,
)

WRITE_KEY = "wk_events_test"
UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
BROWSER = "TestBrowser/1.0"
VISITOR_IP = "198.51.100.9"


# --- The collector -------------------------------------------------------------------------------


@dataclass
class Received:
    """One request the collector got, and what it answered."""

    body: dict[str, Any]
    authorization: str | None
    content_type: str | None
    status: int = 0
    # Set by the test that needs to know whether the gateway process was alive at the time.
    note: Any = None

    @property
    def events(self) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = self.body["batch"]
        return events


@dataclass
class Collector:
    """A stand-in for Segment's HTTP tracking API: ``POST /v1/batch``.

    ``answers`` are the statuses of the next requests (200 once they run out); while ``hold``
    is set, requests wait for it to clear before being answered; ``on_request`` is called as
    each request arrives."""

    url: str = ""
    received: list[Received] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)
    hold: asyncio.Event | None = None
    on_request: Callable[[Received], None] | None = None

    def app(self) -> web.Application:
        async def batch(request: web.Request) -> web.Response:
            got = Received(
                json.loads(await request.read()),
                request.headers.get("Authorization"),
                request.headers.get("Content-Type"),
            )
            self.received.append(got)
            if self.on_request is not None:
                self.on_request(got)
            if self.hold is not None:
                await self.hold.wait()
            got.status = self.answers.pop(0) if self.answers else 200
            return web.json_response({"success": got.status == 200}, status=got.status)

        app = web.Application()
        app.router.add_post("/v1/batch", batch)
        return app

    def accepted(self) -> list[dict[str, Any]]:
        """Every event of every batch answered 200, in the order received."""
        return [e for r in self.received if r.status == 200 for e in r.events]

    async def wait(self, predicate: Callable[[], bool], timeout: float = 20.0) -> None:
        """Until ``predicate()`` holds (a generous bound: only a failure waits it out)."""
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.01)

    async def wait_accepted(self, n: int) -> list[dict[str, Any]]:
        await self.wait(lambda: len(self.accepted()) >= n)
        return self.accepted()


@pytest.fixture
async def collector(start_upstream: StartUpstream) -> Collector:
    c = Collector()
    c.url = await start_upstream(c.app())
    return c


# --- The gateway ---------------------------------------------------------------------------------


def events_yaml(endpoint: str, **settings: Any) -> str:
    values = {
        "enabled": "true",
        "write_key": "'${EVENTS_WRITE_KEY}'",
        "endpoint": f"'{endpoint}'",
        "flush_interval": 0.05,
        "timeout": 5,
        **settings,
    }
    body = ", ".join(f"{k}: {v}" for k, v in values.items())
    # The loopback peer is the "front proxy" here, so X-Forwarded-For names the visitor.
    return f"events: {{{body}}}\nproxy: {{drain_timeout: 3, trusted_proxies: [127.0.0.1]}}\n"


Launch = Callable[..., Awaitable[RunningGateway]]


@pytest.fixture
def launch(
    start_upstream: StartUpstream, start_gateway: StartGateway, redis_server: RedisServer
) -> Launch:
    """The gateway of test_tokens_flow (www links to a token, a signed and a query target),
    with events sent to ``endpoint``."""
    upstream: list[str] = []

    async def launch(endpoint: str, **settings: Any) -> RunningGateway:
        if not upstream:
            upstream.append(await start_upstream(upstream_app()))
        text = gateway_yaml(upstream[0], redis_server.url) + events_yaml(endpoint, **settings)
        return await start_gateway(text, env={**KEYS_ENV, "EVENTS_WRITE_KEY": WRITE_KEY})

    return launch


async def visit(
    gw: RunningGateway,
    url: str,
    *,
    method: str = "GET",
    cookie: str | None = None,
    referer: str | None = f"https://{WWW}/",
) -> Reply:
    """Request an absolute URL through the gateway as a browser behind a front proxy would."""
    parts = URL(url, encoded=True)
    headers: CIMultiDict[str] = CIMultiDict(
        [
            ("Host", parts.host or ""),
            ("User-Agent", BROWSER),
            ("X-Forwarded-For", VISITOR_IP),
            ("X-Forwarded-Proto", parts.scheme),
        ]
    )
    if cookie is not None:
        headers["Cookie"] = cookie
    if referer is not None:
        headers["Referer"] = referer
    target = URL(gw.url + parts.raw_path_qs, encoded=True)
    async with gw.session.request(method, target, headers=headers, allow_redirects=False) as resp:
        return Reply(resp.status, resp.headers, await resp.read())


async def handoff(gw: RunningGateway, n: int = 0) -> Reply:
    """One query hand-off to the shop (``n`` tells the events apart by their page)."""
    reply = await visit(gw, f"https://{SHOP}/p{n}?ajs_aid={AID}")
    assert reply.status == 302 and reply.location == f"/p{n}"
    return reply


async def counters(gw: RunningGateway) -> dict[str, float]:
    found = await metrics(gw)
    out = {
        "sent": sample(found, "gateway_events_sent_total"),
        "retried": sample(found, "gateway_events_retried_total"),
    }
    for reason in ("queue_full", "rejected", "retries_exhausted", "too_large", "shutdown"):
        out[reason] = sample(found, "gateway_events_dropped_total", reason=reason)
    return out


# --- What is sent --------------------------------------------------------------------------------


async def test_each_hand_off_sends_one_event_with_its_fields(
    launch: Launch, collector: Collector
) -> None:
    gw = await launch(collector.url)
    page = await page_a(gw, cookie=VISITOR)
    # From the page on www: the token, signed and query links, and where each leads.
    journeys = [
        (page.links["pay1"], "token", f"https://{PAY}/checkout?cart=1"),
        (page.links["sso"], "signed", f"https://{SSO}/login?next=%2Fhome"),
        (page.links["shop"], "query", f"https://{SHOP}/"),
    ]
    for link, _, clean in journeys:
        reply = await visit(gw, link)
        assert reply.status == 302
        assert f"https://{URL(link).host}{reply.location}" == clean
        # The browser follows the clean-up redirect with the cookie: no second event.
        followed = await visit(gw, clean, cookie=f"ajs_anonymous_id={AID}")
        assert followed.status == 200

    events = await collector.wait_accepted(3)
    assert len(events) == 3
    for event, (_, source, clean) in zip(events, journeys, strict=True):
        page_url = URL(clean)
        assert event == {
            "type": "track",
            "event": "Cross Domain Navigation",
            "anonymousId": AID,
            "userId": UID,
            "messageId": event["messageId"],
            "timestamp": event["timestamp"],
            "properties": {
                "from_domain": WWW,
                "to_domain": page_url.host,
                "anonymousId_source": source,
            },
            "context": {
                "ip": VISITOR_IP,
                "userAgent": BROWSER,
                "page": {
                    "url": clean,
                    "path": page_url.raw_path,
                    "search": f"?{urlsplit(clean).query}" if "?" in clean else "",
                },
                "library": event["context"]["library"],
            },
        }
        assert UUID4.fullmatch(event["messageId"])
        assert TIMESTAMP.fullmatch(event["timestamp"])
        assert event["context"]["library"]["name"] == "ajs-identity-gateway"
        # No credential and no identity parameter anywhere in the event.
        assert "ajs_" not in json.dumps(event)
    assert len({e["messageId"] for e in events}) == 3
    request = collector.received[0]
    assert request.authorization == "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
    assert request.content_type == "application/json"
    assert TIMESTAMP.fullmatch(request.body["sentAt"])
    assert (await counters(gw))["sent"] == 3


async def test_other_visits_send_nothing(launch: Launch, collector: Collector) -> None:
    gw = await launch(collector.url)
    await page_a(gw, cookie=VISITOR)  # the id from the cookie
    await page_a(gw, cookie=None)  # a new visitor: an id is minted
    # A HEAD with an id (a link checker), an id refused by its site, and a Referer from
    # outside: none is a hand-off, or one the gateway should report as such.
    assert (await visit(gw, f"https://{SHOP}/?ajs_aid={AID}", method="HEAD")).status == 302
    assert (await visit(gw, f"https://{PAY}/?ajs_token={'x' * 32}")).status == 302
    assert (await visit(gw, f"https://{SHOP}/?ajs_aid=bad%20id")).status == 302
    # The one hand-off, from a site the configuration does not know.
    await visit(gw, f"https://{SHOP}/last?ajs_aid={AID}", referer="https://www.google.com/")
    # Events leave in the order they were queued: once this one is in, any other would be.
    (event,) = await collector.wait_accepted(1)
    assert event["context"]["page"]["url"] == f"https://{SHOP}/last"
    assert event["properties"]["from_domain"] is None
    assert "userId" not in event


async def test_a_post_hand_off_is_reported_with_the_forwarded_target(
    launch: Launch, collector: Collector
) -> None:
    gw = await launch(collector.url)
    reply = await visit(gw, f"https://{SHOP}/form?x=1&ajs_aid={AID}", method="POST")
    assert reply.status == 200  # forwarded, not redirected
    (event,) = await collector.wait_accepted(1)
    assert event["context"]["page"]["url"] == f"https://{SHOP}/form?x=1"
    assert event["properties"]["anonymousId_source"] == "query"


# --- Batching ------------------------------------------------------------------------------------


async def test_a_batch_goes_when_it_is_full(launch: Launch, collector: Collector) -> None:
    # An interval no test waits out: only a full batch is sent.
    gw = await launch(collector.url, batch_size=3, flush_interval=60)
    for n in range(4):
        await handoff(gw, n)
    await collector.wait(lambda: len(collector.received) >= 1)
    assert [len(r.events) for r in collector.received] == [3]
    for n in range(4, 6):
        await handoff(gw, n)
    await collector.wait(lambda: len(collector.received) >= 2)
    assert [len(r.events) for r in collector.received] == [3, 3]
    pages = [e["context"]["page"]["url"] for e in collector.accepted()]
    assert pages == [f"https://{SHOP}/p{n}" for n in range(6)]


async def test_a_batch_goes_when_its_oldest_event_has_waited_the_interval(
    launch: Launch, collector: Collector
) -> None:
    gw = await launch(collector.url, batch_size=100, flush_interval=0.2)
    await handoff(gw)
    # Far from full, and the gateway is not stopping: only the interval sends it.
    await collector.wait_accepted(1)
    assert [len(r.events) for r in collector.received] == [1]


# --- A collector that is down, slow or failing ---------------------------------------------------


async def test_a_dead_collector_costs_a_page_nothing(launch: Launch) -> None:
    """The page responses all arrive while nothing listens at the endpoint; the events arrive
    once the collector comes up, by retrying."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
    port = sock.getsockname()[1]
    gw = await launch(f"http://127.0.0.1:{port}")
    for n in range(3):
        await handoff(gw, n)
    page = await page_a(gw, cookie=VISITOR)
    assert page.reply.status == 200
    # The gateway tries, is refused and waits to retry...
    async with asyncio.timeout(20):
        while (await counters(gw))["retried"] < 3:
            await asyncio.sleep(0.02)
    # ...and only now does the collector start listening.
    collector = Collector()
    runner = web.AppRunner(collector.app(), access_log=None)
    await runner.setup()
    sock.listen()
    site = web.SockSite(runner, sock)
    await site.start()
    try:
        events = await collector.wait_accepted(3)
        assert [e["context"]["page"]["url"] for e in events] == [
            f"https://{SHOP}/p{n}" for n in range(3)
        ]
        found = await counters(gw)
        assert found["sent"] == 3 and found["retries_exhausted"] == 0
    finally:
        await runner.cleanup()


async def test_a_slow_collector_holds_up_no_page_and_a_timed_out_batch_is_sent_again(
    launch: Launch, collector: Collector
) -> None:
    gw = await launch(collector.url, timeout=0.5)
    collector.hold = asyncio.Event()
    await handoff(gw, 0)
    await collector.wait(lambda: len(collector.received) >= 1)
    # The collector sits on the batch; pages and further hand-offs are answered meanwhile.
    for n in range(1, 4):
        await handoff(gw, n)
    assert (await page_a(gw, cookie=VISITOR)).reply.status == 200
    assert collector.received[0].status == 0  # still unanswered
    # The gateway gave up on it after its timeout and sent it again (same messageId).
    await collector.wait(lambda: len(collector.received) >= 2)
    collector.hold.set()
    await collector.wait(lambda: len({e["messageId"] for e in collector.accepted()}) >= 4)
    events = collector.accepted()
    first = collector.received[0].events[0]["messageId"]
    assert collector.received[1].events[0]["messageId"] == first
    # Segment keeps one event per messageId: every hand-off is there exactly once.
    unique = {e["messageId"]: e["context"]["page"]["url"] for e in events}
    assert sorted(unique.values()) == sorted(f"https://{SHOP}/p{n}" for n in range(4))
    assert (await counters(gw))["retried"] >= 1


async def test_a_failing_collector_gets_the_batch_again_when_it_recovers(
    launch: Launch, collector: Collector
) -> None:
    gw = await launch(collector.url)
    collector.answers = [500, 503]
    await handoff(gw)
    (event,) = await collector.wait_accepted(1)
    assert [r.status for r in collector.received] == [500, 503, 200]
    assert {r.events[0]["messageId"] for r in collector.received} == {event["messageId"]}
    found = await counters(gw)
    assert (found["sent"], found["retried"]) == (1, 2)


async def test_a_refused_batch_is_dropped_and_counted_not_retried(
    launch: Launch, collector: Collector
) -> None:
    gw = await launch(collector.url)
    collector.answers = [400]
    await handoff(gw, 0)
    await collector.wait(lambda: bool(collector.received) and collector.received[0].status != 0)
    await handoff(gw, 1)
    (event,) = await collector.wait_accepted(1)
    assert event["context"]["page"]["url"] == f"https://{SHOP}/p1"
    # The refused batch was not sent again before the next one, nor counted as retried.
    assert [r.status for r in collector.received] == [400, 200]
    found = await counters(gw)
    assert (found["rejected"], found["retried"], found["sent"]) == (1, 0, 1)
    rejected = [line for line in gw.log if line.get("event") == "events_rejected"]
    assert rejected == [{**rejected[0], "status": 400, "events": 1}]
    assert AID not in json.dumps(gw.log)


async def test_a_full_queue_drops_new_events_and_counts_them(
    launch: Launch, collector: Collector
) -> None:
    gw = await launch(collector.url, queue_size=2, flush_interval=60)
    for n in range(5):
        await handoff(gw, n)
    found = await counters(gw)
    assert (found["queue_full"], found["sent"]) == (3, 0)
    assert collector.received == []


# --- SIGTERM -------------------------------------------------------------------------------------


async def test_sigterm_flushes_the_queue_before_the_process_exits(
    tmp_path: Path,
    start_upstream: StartUpstream,
    gateway_process: Callable[..., GatewayProcess],
    collector: Collector,
) -> None:
    upstream = await start_upstream(upstream_app())
    config = tmp_path / "gw.yaml"
    config.write_text(
        f"sites:\n  - {{host: {SHOP}, upstream: '{upstream}'}}\n"
        # Nothing is due before the drain: no batch is full and the interval is a minute.
        + events_yaml(collector.url, flush_interval=60).replace(
            "drain_timeout: 3", "drain_timeout: 10"
        )
    )
    gp = await asyncio.to_thread(gateway_process, config, env={"EVENTS_WRITE_KEY": WRITE_KEY})
    collector.on_request = lambda got: setattr(got, "note", gp.proc.poll())
    async with aiohttp.ClientSession() as session:
        headers = {"Host": SHOP, "User-Agent": BROWSER}
        url = f"http://127.0.0.1:{gp.port}/landing?ajs_aid={AID}"
        async with session.get(url, headers=headers, allow_redirects=False) as resp:
            assert resp.status == 302
    assert collector.received == []
    gp.signal(signal.SIGTERM)
    assert await asyncio.to_thread(gp.proc.wait, 20) == 0
    (got,) = collector.received
    assert got.note is None, "the batch arrived after the process had exited"
    assert [e["anonymousId"] for e in got.events] == [AID]
    assert got.events[0]["context"]["page"]["url"] == f"http://{SHOP}/landing"


# --- Disabled ------------------------------------------------------------------------------------


async def test_disabled_events_send_nothing_and_start_nothing(
    start_gateway: StartGateway, start_upstream: StartUpstream, collector: Collector
) -> None:
    upstream = await start_upstream(upstream_app())
    gw = await start_gateway(
        f"sites:\n  - {{host: {SHOP}, upstream: '{upstream}'}}\n"
        f"events: {{enabled: false, write_key: wk, endpoint: '{collector.url}'}}\n"
    )
    assert not gw.gateway.state.events.enabled
    await handoff(gw)
    assert gw.gateway.state.events._task is None
    assert collector.received == []


async def test_a_reload_sends_what_was_queued_with_the_old_settings(
    tmp_path: Path, start_upstream: StartUpstream, collector: Collector
) -> None:
    """SIGHUP with new event settings: events queued before go out at once to the old
    endpoint, later ones to the new endpoint."""
    upstream = await start_upstream(upstream_app())
    other = Collector()
    other.url = await start_upstream(other.app())
    path = tmp_path / "gw.yaml"

    def write(endpoint: str, interval: float) -> None:
        path.write_text(
            f"sites:\n  - {{host: {SHOP}, upstream: '{upstream}'}}\n"
            "server: {host: 127.0.0.1, port: 0}\nadmin: {host: 127.0.0.1, port: 0}\n"
            + events_yaml(endpoint, flush_interval=interval).replace(
                "'${EVENTS_WRITE_KEY}'", WRITE_KEY
            )
        )

    write(collector.url, 60)
    gateway = Gateway(load_config(path), str(path), Overrides())
    await gateway.start()
    session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
    gw = RunningGateway(gateway, session)
    try:
        await handoff(gw, 0)
        write(other.url, 0.05)
        assert gateway.reload()
        await handoff(gw, 1)
        (old,) = await collector.wait_accepted(1)
        (new,) = await other.wait_accepted(1)
        assert old["context"]["page"]["url"] == f"https://{SHOP}/p0"
        assert new["context"]["page"]["url"] == f"https://{SHOP}/p1"
    finally:
        await session.close()
        await gateway.drain_and_close()
