"""Links for apps, email and partners, end to end: ``python -m gateway link`` as a real process
and ``POST /links`` on the admin port mint a link; opened through the real gateway (a real
redis-server behind token targets), it restores the visitor's id, and the arrival counts as
``app``."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from gateway.keys import generate_key
from gateway.strategies import TokenRecord
from tests.redis_server import RedisServer
from tests.redis_server import redis_server as redis_server

from .conftest import REPO, RunningGateway, StartGateway, StartUpstream
from .test_events_flow import Collector, events_yaml
from .test_events_flow import collector as collector
from .test_tokens_flow import (
    AID,
    KEYS_ENV,
    PAY,
    PREFIX,
    SHOP,
    SSO,
    TTL,
    UID,
    WWW,
    assert_handed_over,
    assert_refused,
    follow,
    gateway_yaml,
    metrics,
    query,
    sample,
    token_of,
    upstream_app,
)

ADMIN_TOKEN = generate_key()
TARGETS = {
    "token": f"https://{PAY}/checkout?cart=1",
    "signed": f"https://{SSO}/login?next=%2Fhome",
    "query": f"https://{SHOP}/welcome",
}
LOCATIONS = {"token": "/checkout?cart=1", "signed": "/login?next=%2Fhome", "query": "/welcome"}


def run_link(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "link", "--config", str(config), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, **KEYS_ENV},
        timeout=60,
    )


async def cli_link(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(run_link, config, *args)


async def admin_metrics(gw: RunningGateway) -> Any:
    """The metrics of a gateway whose admin port wants the bearer token."""
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with gw.session.get(gw.admin_url + "/metrics", headers=headers) as resp:
        text = await resp.text()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def id_sources(found: Any) -> dict[str, float]:
    """Ids restored from a page's hand-off (url) and from an app's link (app), all sites."""
    return {
        source: sum(
            value
            for (name, labels), value in found.items()
            if name == "gateway_identity_source_total" and ("source", source) in labels
        )
        for source in ("url", "app")
    }


@pytest.fixture
async def served(
    tmp_path: Path,
    start_upstream: StartUpstream,
    start_gateway: StartGateway,
    redis_server: RedisServer,
) -> tuple[Path, RunningGateway]:
    """The config file the command reads, and a gateway serving the same config."""
    upstream = await start_upstream(upstream_app())
    text = gateway_yaml(upstream, redis_server.url)
    path = tmp_path / "gw.yaml"
    path.write_text(text)
    return path, await start_gateway(text, env=KEYS_ENV)


# --- The command ---------------------------------------------------------------------------------


async def test_the_command_prints_links_that_restore_the_id(
    served: tuple[Path, RunningGateway], redis_server: RedisServer
) -> None:
    config, gw = served
    links = {}
    for strategy, to in TARGETS.items():
        done = await cli_link(config, "--to", to, "--anonymous-id", AID, "--user-id", UID)
        assert done.returncode == 0, done.stderr
        assert done.stderr == ""
        (links[strategy],) = done.stdout.splitlines()
    assert links["query"] == f"{TARGETS['query']}?ajs_aid={AID}&ajs_uid={UID}"
    assert query(links["signed"])["ajs_sig"][0].startswith("v1app.")
    assert AID not in links["token"] and UID not in links["token"]

    # The token is in the store the gateways share, bound to its target, for the TTL.
    raw = Redis.from_url(redis_server.url)
    try:
        key = f"{PREFIX}t:{token_of(links['token'])}"
        record = TokenRecord.from_bytes(await raw.get(key) or b"")
        assert record is not None
        assert (record.anonymous_id, record.user_id, record.targets) == (AID, UID, (PAY,))
        assert (record.origin, record.source_host, record.user_agent_hash) == ("app", "", None)
        assert TTL - 5 <= await raw.ttl(key) <= TTL
    finally:
        await raw.aclose()

    # Opened in a browser that has never been anywhere: the id is restored.
    for strategy, link in links.items():
        assert_handed_over(await follow(gw, link, user_agent="Phone/1"), LOCATIONS[strategy])
    # Multi-use within its TTL (a mail scanner's fetch leaves it working for the person).
    assert_handed_over(await follow(gw, links["token"]), LOCATIONS["token"])
    # The token and signed links say they were an app's; a query link cannot say it.
    assert id_sources(await metrics(gw)) == {"url": 1, "app": 3}


async def test_the_command_refuses_what_it_cannot_serve(
    served: tuple[Path, RunningGateway], tmp_path: Path
) -> None:
    config, _ = served
    refused = {
        "https://evil.example/": "is not an http(s) link to a configured cross-domain",
        f"https://{PAY}.evil.example/": "is not an http(s) link to a configured cross-domain",
    }
    for to, message in refused.items():
        done = await cli_link(config, "--to", to, "--anonymous-id", AID)
        assert (done.returncode, done.stdout) == (2, "")
        assert message in done.stderr and f"cross_domains are: {PAY}, {SSO}, {SHOP}" in done.stderr
    for flags, message in (
        (("--anonymous-id", "not an id"), "the anonymous id is not valid"),
        (("--anonymous-id", AID, "--user-id", "a<b"), "the user id is not valid"),
        (("--anonymous-id", AID, "--ttl", "601"), "ttl must be a whole number of seconds"),
    ):
        done = await cli_link(config, "--to", TARGETS["token"], *flags)
        assert (done.returncode, done.stdout) == (2, ""), done.stderr
        assert message in done.stderr
    # A token kept in the command's own memory would be gone when it exits.
    memory = tmp_path / "memory.yaml"
    memory.write_text(config.read_text().replace(_store_url(config), "memory://"))
    done = await cli_link(memory, "--to", TARGETS["token"], "--anonymous-id", AID)
    assert done.returncode == 2 and "store.url is memory://" in done.stderr
    # ...but a query link needs no store.
    done = await cli_link(memory, "--to", TARGETS["query"], "--anonymous-id", AID)
    assert done.returncode == 0 and done.stdout.strip().endswith(f"ajs_aid={AID}")


def _store_url(config: Path) -> str:
    text = config.read_text()
    start = text.index("url: '") + len("url: '")
    return text[start : text.index("'", start)]


async def test_the_command_reports_a_store_that_is_down(
    served: tuple[Path, RunningGateway], redis_server: RedisServer
) -> None:
    config, _ = served
    redis_server.kill()
    done = await cli_link(config, "--to", TARGETS["token"], "--anonymous-id", AID)
    assert (done.returncode, done.stdout) == (1, "")
    assert "did not take the token" in done.stderr and "redis://127.0.0.1" in done.stderr


# --- The admin endpoint --------------------------------------------------------------------------


async def post_links(
    gw: RunningGateway, body: Any, token: str | None = ADMIN_TOKEN, raw: bytes | None = None
) -> tuple[int, Any]:
    """POST /links with ``body`` as JSON (or the ``raw`` bytes); the status and the JSON."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    sent: dict[str, Any] = {"data": raw} if raw is not None else {"json": body}
    async with gw.session.post(gw.admin_url + "/links", headers=headers, **sent) as resp:
        if resp.status != 401:
            assert resp.headers.get("Cache-Control") == "no-store"
        return resp.status, await resp.json()


@pytest.fixture
async def guarded(
    start_upstream: StartUpstream, start_gateway: StartGateway, redis_server: RedisServer
) -> RunningGateway:
    """A gateway whose admin port wants a bearer token, UA binding on (app links ignore it)."""
    upstream = await start_upstream(upstream_app())
    text = gateway_yaml(
        upstream,
        redis_server.url,
        signing="{keys: '${GATEWAY_SIGNING_KEYS}', bind_user_agent: true}",
    )
    env = {**KEYS_ENV, "ADMIN_TOKEN": ADMIN_TOKEN}
    return await start_gateway(text, env=env, admin="token: '${ADMIN_TOKEN}'")


async def test_post_links_mints_links_that_restore_the_id(guarded: RunningGateway) -> None:
    gw = guarded
    before = int(time.time())
    out = {}
    for strategy, to in TARGETS.items():
        status, body = await post_links(
            gw, {"to": to, "anonymous_id": AID, "user_id": UID, "ttl": 120}
        )
        assert status == 200, body
        assert body.keys() == {"url", "expires_at", "strategy"}
        assert body["strategy"] == strategy
        out[strategy] = body
    assert out["query"]["expires_at"] is None
    for strategy in ("token", "signed"):
        assert before + 120 <= out[strategy]["expires_at"] <= int(time.time()) + 120
    # With bind_user_agent on, a page's token works only in its browser; an app's in any.
    for strategy, body in out.items():
        reply = await follow(gw, body["url"], user_agent=f"Browser-{strategy}/1")
        assert_handed_over(reply, LOCATIONS[strategy])
    found = await admin_metrics(gw)
    assert id_sources(found) == {"url": 1, "app": 2}
    for strategy in TARGETS:
        assert sample(found, "gateway_links_minted_total", strategy=strategy) == 1
    # A token link stays bound to its target.
    token = token_of(out["token"]["url"])
    assert_refused(await follow(gw, f"https://{WWW}/x?ajs_token={token}"), "/x")


async def test_post_links_refuses_bad_requests_with_a_reason(guarded: RunningGateway) -> None:
    gw = guarded
    good = {"to": TARGETS["token"], "anonymous_id": AID}
    cases: list[tuple[Any, str]] = [
        ({**good, "to": "https://evil.example/"}, "not an http(s) link to a configured"),
        ({**good, "to": f"https://{WWW}/"}, "not an http(s) link to a configured"),
        ({**good, "anonymous_id": "bad id"}, "the anonymous id is not valid"),
        ({**good, "anonymous_id": 42}, "anonymous_id must be a string"),
        ({"to": TARGETS["token"]}, "anonymous_id must be a string"),
        ({"anonymous_id": AID}, "to must be the link's URL"),
        ({**good, "user_id": 7}, "user_id must be a string"),
        ({**good, "ttl": "60"}, "ttl must be a whole number of seconds"),
        ({**good, "ttl": 6000}, "ttl must be a whole number of seconds from 10 to 600"),
        ({**good, "anonymousId": AID}, "unknown field 'anonymousId'"),
        ([good], "the body must be a JSON object"),
    ]
    for body, message in cases:
        status, answer = await post_links(gw, body)
        assert status == 400, body
        assert message in answer["error"], (body, answer)
        assert "bad id" not in answer["error"]
    status, answer = await post_links(gw, None, raw=b"{not json")
    assert status == 400 and "the body is not JSON" in answer["error"]
    found = await admin_metrics(gw)
    assert sum(sample(found, "gateway_links_minted_total", strategy=s) for s in TARGETS) == 0


async def test_post_links_needs_the_admin_token(guarded: RunningGateway) -> None:
    gw = guarded
    good = {"to": TARGETS["query"], "anonymous_id": AID}
    for token in (None, ADMIN_TOKEN[:-1] + "x"):
        status, answer = await post_links(gw, good, token=token)
        assert (status, answer) == (401, {"error": "unauthorized"})
    assert (await post_links(gw, good))[0] == 200


async def test_an_app_hand_off_is_reported_as_such(
    start_upstream: StartUpstream,
    start_gateway: StartGateway,
    redis_server: RedisServer,
    collector: Collector,
) -> None:
    upstream = await start_upstream(upstream_app())
    text = gateway_yaml(upstream, redis_server.url) + events_yaml(collector.url)
    gw = await start_gateway(text, env={**KEYS_ENV, "EVENTS_WRITE_KEY": "wk_test"})
    for strategy in ("token", "signed"):
        status, body = await post_links(gw, {"to": TARGETS[strategy], "anonymous_id": AID})
        assert status == 200
        assert_handed_over(await follow(gw, body["url"]), LOCATIONS[strategy], uid=None)
    events = await collector.wait_accepted(2)
    assert [e["properties"]["anonymousId_source"] for e in events] == ["app", "app"]
    assert [e["anonymousId"] for e in events] == [AID, AID]
    # The access lines say so too.
    arrivals = [
        line["identity"]
        for line in gw.log
        if line.get("event") == "request" and line.get("status") == 302
    ]
    assert arrivals == ["restored_app", "restored_app"]
