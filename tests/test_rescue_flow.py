"""Rescue of undecorated arrivals over HTTP: real upstream, the real gateway, exact headers.

www.example.com (rescue on) is arrived at from checkout.example-pay.com without identity, as a
navigation made by page JavaScript would be: one round trip through the sibling's endpoint
brings the visitor's id, exactly once, never through anything but a configured rescue site.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import pytest

from gateway.crossings import MARKER_COOKIE
from gateway.keys import generate_key
from gateway.rescue import CREDENTIAL_TTL, GUARD_COOKIE, RESCUE_PATH

from .conftest import RunningGateway, StartGateway, StartUpstream
from .test_identity_flow import (
    ANALYTICS,
    PAGE,
    PAY,
    SHADOW,
    WWW,
    Origin,
    Reply,
    fetch,
    gateway_yaml,
    metrics,
    sample,
)

NAVIGATION = ("Accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8")
FROM_PAY = ("Referer", f"http://{PAY}/basket")
BACK = f"http://{WWW}/from-js?via=script"
VISITOR = "5f0c2d2e-8a1b-4c3d-9e4f-0a1b2c3d4e5f"


async def start(
    start_upstream: StartUpstream,
    start_gateway: StartGateway,
    *,
    site_opts: str = ", rescue: true",
    extra: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> tuple[RunningGateway, Origin]:
    origin = Origin()
    origin.page("/from-js", PAGE)
    upstream = await start_upstream(origin.app())
    text = gateway_yaml(upstream, site_opts=site_opts, extra=[ANALYTICS, *extra])
    return await start_gateway(text, env=env), origin


def jar(reply: Reply) -> dict[str, str]:
    return {c.name: c.value for c in reply.cookies()}


def query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query, keep_blank_values=True).items()}


async def arrive(gw: RunningGateway, *headers: tuple[str, str]) -> Reply:
    return await fetch(gw, "/from-js?via=script", headers=[NAVIGATION, FROM_PAY, *headers])


async def at_sibling(gw: RunningGateway, location: str, cookie: str | None) -> Reply:
    parts = urlsplit(location)
    assert parts.hostname == PAY and parts.path == RESCUE_PATH, location
    headers = [NAVIGATION, ("Referer", f"http://{PAY}/basket")]
    if cookie is not None:
        headers.append(("Cookie", cookie))
    return await fetch(gw, f"{parts.path}?{parts.query}", host=PAY, headers=headers)


async def back_at_www(gw: RunningGateway, location: str, *cookies: str) -> Reply:
    parts = urlsplit(location)
    assert parts.hostname == WWW, location
    headers = [NAVIGATION, FROM_PAY]
    if cookies:
        headers.append(("Cookie", "; ".join(cookies)))
    return await fetch(gw, f"{parts.path}?{parts.query}", headers=headers)


def rescues(found: dict[Any, float], site: str) -> dict[str, float]:
    outcomes = ("sent", "rescued", "empty", "answered", "unknown", "refused")
    values = {o: sample(found, "gateway_rescues_total", site=site, outcome=o) for o in outcomes}
    return {o: v for o, v in values.items() if v}


async def test_an_undecorated_arrival_from_a_sibling_gets_the_siblings_id(
    start_upstream: StartUpstream, start_gateway: StartGateway
) -> None:
    gw, origin = await start(start_upstream, start_gateway)
    # 1. The first leg: no identity, no cookie, from a sibling: off to the sibling's endpoint.
    first = await arrive(gw)
    assert first.status == 302
    assert first.headers["Location"] == (f"http://{PAY}{RESCUE_PATH}?back={quote(BACK, safe='')}")
    assert first.headers["Cache-Control"] == "no-store"
    assert jar(first) == {GUARD_COOKIE: "1"}
    assert origin.seen == []
    # 2. The sibling reads its cookie and sends a token for www back, with the marker.
    answer = await at_sibling(gw, first.headers["Location"], f"ajs_anonymous_id={VISITOR}")
    assert answer.status == 302
    back = answer.headers["Location"]
    assert back.startswith(BACK + "&ajs_token=")
    assert query(back).keys() == {"via", "ajs_token", "ajs_rescued"}
    assert VISITOR not in back
    assert answer.cookies() == []
    # 3. The way back: the token is exchanged, the usual clean-up follows.
    returned = await back_at_www(gw, back, f"{GUARD_COOKIE}=1")
    assert returned.status == 302
    assert returned.headers["Location"] == "/from-js?via=script"
    cookies = jar(returned)
    # The id, and the marker of a counted arrival (crossings.py): the clean-up's second leg is
    # not counted again.
    marker = cookies.pop(MARKER_COOKIE)
    assert cookies == {"ajs_anonymous_id": VISITOR, SHADOW: VISITOR}
    # 4. The clean-up's second leg has the id (and the guard): the page, no new round trip.
    page = await back_at_www(
        gw,
        BACK,
        f"{GUARD_COOKIE}=1",
        f"{MARKER_COOKIE}={marker}",
        f"ajs_anonymous_id={VISITOR}",
        f"{SHADOW}={VISITOR}",
    )
    assert page.status == 200
    assert f"ajs_aid={VISITOR}".encode() in page.body
    assert origin.seen == ["/from-js?via=script"]
    found = await metrics(gw)
    assert rescues(found, WWW) == {"sent": 1, "rescued": 1}
    assert rescues(found, PAY) == {"answered": 1}
    assert sample(found, "gateway_identity_source_total", site=WWW, source="rescue") == 1
    arrivals = sample(
        found, "gateway_cross_domain_arrivals_total", site=WWW, referrer=PAY, identity="carried"
    )
    missing = sample(
        found, "gateway_cross_domain_arrivals_total", site=WWW, referrer=PAY, identity="missing"
    )
    assert (arrivals, missing) == (1, 0)


async def test_a_sibling_without_an_id_sends_the_visitor_back_empty_once(
    start_upstream: StartUpstream, start_gateway: StartGateway
) -> None:
    gw, _ = await start(start_upstream, start_gateway)
    first = await arrive(gw)
    answer = await at_sibling(gw, first.headers["Location"], None)
    assert answer.headers["Location"] == BACK + "&ajs_rescued=1"
    returned = await back_at_www(gw, answer.headers["Location"], f"{GUARD_COOKIE}=1")
    assert (returned.status, returned.headers["Location"]) == (302, "/from-js?via=script")
    assert jar(returned).keys() == {MARKER_COOKIE}
    # The clean-up's second leg has the guard: the page, with an id of www's own.
    page = await back_at_www(gw, BACK, f"{GUARD_COOKIE}=1")
    assert page.status == 200
    assert jar(page).keys() == {"ajs_anonymous_id", SHADOW}
    found = await metrics(gw)
    assert rescues(found, WWW) == {"sent": 1, "empty": 1}
    assert rescues(found, PAY) == {"unknown": 1}


async def test_without_the_guard_cookie_the_way_back_is_served_in_place(
    start_upstream: StartUpstream, start_gateway: StartGateway
) -> None:
    # A browser that keeps no cookies would get the clean-up redirect's second leg, with the
    # same Referer and nothing else, rescued again and again: it gets the page at once.
    gw, origin = await start(start_upstream, start_gateway)
    returned = await back_at_www(gw, BACK + "&ajs_rescued=1")
    assert returned.status == 200
    assert origin.seen == ["/from-js?via=script"]


@pytest.mark.parametrize(
    ("method", "headers"),
    [
        ("POST", [NAVIGATION, FROM_PAY]),
        ("HEAD", [NAVIGATION, FROM_PAY]),
        ("GET", [NAVIGATION, FROM_PAY, ("Sec-Purpose", "prefetch")]),
        ("GET", [NAVIGATION, FROM_PAY, ("Sec-GPC", "1")]),
        ("GET", [NAVIGATION, FROM_PAY, ("Cookie", "ajs_anonymous_id=mine")]),
        ("GET", [NAVIGATION, FROM_PAY, ("Cookie", f"{SHADOW}=mine")]),
        ("GET", [NAVIGATION, FROM_PAY, ("Cookie", f"{GUARD_COOKIE}=1")]),
        ("GET", [NAVIGATION, ("Referer", "http://evil.test/")]),
        ("GET", [NAVIGATION, ("Referer", f"http://{WWW}/elsewhere")]),
        ("GET", [NAVIGATION]),
        ("GET", [("Accept", "image/avif,*/*"), FROM_PAY]),
        ("GET", [("Sec-Fetch-Dest", "iframe"), NAVIGATION, FROM_PAY]),
    ],
    ids=[
        "post",
        "head",
        "prefetch",
        "no-consent",
        "has-cookie",
        "has-server-copy",
        "tried-already",
        "foreign-referer",
        "own-referer",
        "no-referer",
        "not-a-navigation",
        "frame",
    ],
)
async def test_what_is_never_rescued(
    start_upstream: StartUpstream,
    start_gateway: StartGateway,
    method: str,
    headers: list[tuple[str, str]],
) -> None:
    gw, origin = await start(start_upstream, start_gateway)
    reply = await fetch(gw, "/from-js?via=script", method=method, headers=headers)
    assert reply.status == 200
    assert origin.seen == ["/from-js?via=script"]
    assert rescues(await metrics(gw), WWW) == {}


async def test_nothing_is_rescued_where_the_site_does_not_ask(
    start_upstream: StartUpstream, start_gateway: StartGateway
) -> None:
    gw, _ = await start(start_upstream, start_gateway, site_opts="")
    assert (await arrive(gw)).status == 200
    # And a site without rescue is no way back either.
    reply = await fetch(gw, f"{RESCUE_PATH}?back={quote(BACK, safe='')}", host=PAY)
    assert reply.status == 400


HOSTILE_BACKS = [
    "https://evil.test/",
    f"http://{PAY}/own-site",
    "//evil.test/",
    "/relative",
    f"http://{WWW}\\@evil.test/",
    f"http://{WWW}@evil.test/",
    f"http://evil.test#@{WWW}/",
    f"http://{WWW}\t.evil.test/",
    f"javascript:alert(1)//http://{WWW}/",
    f"http://{WWW}{RESCUE_PATH}?back=https://evil.test/",
    f"http://{WWW}/_ajs_gateway/link?to=https://evil.test/",
    "",
]


@pytest.mark.parametrize("back", HOSTILE_BACKS)
async def test_the_endpoint_is_no_open_redirect(
    start_upstream: StartUpstream, start_gateway: StartGateway, back: str
) -> None:
    gw, _ = await start(start_upstream, start_gateway)
    cookie = ("Cookie", f"ajs_anonymous_id={VISITOR}")
    reply = await fetch(
        gw, f"{RESCUE_PATH}?back={quote(back, safe='')}", host=PAY, headers=[cookie]
    )
    assert reply.status == 400
    assert "Location" not in reply.headers
    assert reply.headers["Cache-Control"] == "no-store"
    assert rescues(await metrics(gw), PAY) == {"refused": 1}


async def test_the_endpoint_answers_only_a_get_of_the_visitor(
    start_upstream: StartUpstream, start_gateway: StartGateway
) -> None:
    gw, _ = await start(start_upstream, start_gateway)
    target = f"{RESCUE_PATH}?back={quote(BACK, safe='')}"
    cookie = ("Cookie", f"ajs_anonymous_id={VISITOR}")
    for method in ("POST", "PUT"):
        assert (await fetch(gw, target, host=PAY, method=method, headers=[cookie])).status == 400
    prefetch = await fetch(gw, target, host=PAY, headers=[cookie, ("Sec-Purpose", "prefetch")])
    assert (prefetch.status, prefetch.headers["Cache-Control"]) == (503, "no-store")
    # Without consent at the sibling: back without a credential.
    gpc = await fetch(gw, target, host=PAY, headers=[cookie, ("Sec-GPC", "1")])
    assert gpc.headers["Location"] == BACK + "&ajs_rescued=1"


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        ("[signed]", {"via", "ajs_aid", "ajs_exp", "ajs_sig", "ajs_rescued"}),
        ("[query]", {"via", "ajs_aid", "ajs_rescued"}),
    ],
)
async def test_the_credential_is_the_one_the_returning_site_accepts(
    start_upstream: StartUpstream, start_gateway: StartGateway, accept: str, expected: set[str]
) -> None:
    key = generate_key()
    gw, _ = await start(
        start_upstream,
        start_gateway,
        site_opts=f", rescue: true, accept: {accept}",
        extra=('signing: {keys: "${KEYS}"}',),
        env={"KEYS": key},
    )
    first = await arrive(gw)
    answer = await at_sibling(gw, first.headers["Location"], f"ajs_anonymous_id={VISITOR}")
    back = answer.headers["Location"]
    assert query(back).keys() == expected
    returned = await back_at_www(gw, back, f"{GUARD_COOKIE}=1")
    assert jar(returned).get("ajs_anonymous_id") == VISITOR
    if accept == "[signed]":
        # Short-lived: a return replayed from history later brings nothing.
        assert int(query(back)["ajs_exp"]) - time.time() <= CREDENTIAL_TTL + 1


async def test_an_observed_site_changes_nothing(
    start_upstream: StartUpstream, start_gateway: StartGateway
) -> None:
    # Observe mode counts what identity would do and changes nothing: no round trip, no
    # refused prefetch, no endpoint (its path goes to the upstream like any other).
    gw, origin = await start(
        start_upstream, start_gateway, site_opts=", rescue: true, mode: observe"
    )
    assert (await arrive(gw)).status == 200
    prefetch = await fetch(
        gw, "/from-js?via=script&ajs_aid=x", headers=[NAVIGATION, ("Sec-Purpose", "prefetch")]
    )
    assert prefetch.status == 200
    assert origin.seen == ["/from-js?via=script", "/from-js?via=script&ajs_aid=x"]
    assert rescues(await metrics(gw), WWW) == {}
