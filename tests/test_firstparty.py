"""Tests for gateway.firstparty: each guarantee of its docstring, without a socket."""

from __future__ import annotations

import base64
import gzip
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.firstparty import (
    API_ENDPOINTS,
    BLOCKED_PATTERNS,
    MAX_API_BODY,
    MAX_METRICS_BODY,
    POLICIES,
    Api,
    Asset,
    Fetched,
    Refused,
    api_headers,
    api_refusal,
    asset_headers,
    default_path,
    path_problem,
    prefix_for,
    rewrite_settings,
    route,
)
from gateway.options import Analytics, FirstParty, Site

KEY = "wk_abc123"
PREFIX = "/_/5e9f0a1b2c3d"
CDN = "https://cdn.segment.com"


def basic(user: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:".encode()).decode()


# --- 1. only these resources ----------------------------------------------------------------------

SERVED: list[tuple[str, str, Asset | Api]] = [
    ("GET", "/lib.js", Asset("library", f"/analytics.js/v1/{KEY}/analytics.min.js")),
    (
        "GET",
        "/analytics-next/bundles/ajs-destination.bundle.40628baed746e9904edc.js",
        Asset("bundle", "/analytics-next/bundles/ajs-destination.bundle.40628baed746e9904edc.js"),
    ),
    (
        "HEAD",
        "/next-integrations/integrations/vendor/commons.59560acdd69ed701c941.js.gz",
        Asset(
            "integration",
            "/next-integrations/integrations/vendor/commons.59560acdd69ed701c941.js.gz",
        ),
    ),
    (
        "GET",
        "/next-integrations/actions/amplitude-plugins/6765cb3cf8e5e6f5e0e1.js",
        Asset(
            "integration", "/next-integrations/actions/amplitude-plugins/6765cb3cf8e5e6f5e0e1.js"
        ),
    ),
    ("GET", f"/v1/projects/{KEY}/settings", Asset("settings", f"/v1/projects/{KEY}/settings")),
    *[("POST", f"/v1/{e}", Api(e, f"/v1/{e}")) for e in sorted(API_ENDPOINTS)],
]


@pytest.mark.parametrize(("method", "rest", "expected"), SERVED)
def test_each_served_path_maps_to_its_upstream(
    method: str, rest: str, expected: Asset | Api
) -> None:
    assert route(method, PREFIX + rest, PREFIX, KEY) == expected


@pytest.mark.parametrize(
    "rest",
    [
        "",
        "/",
        "/analytics.min.js",
        f"/analytics.js/v1/{KEY}/analytics.min.js",
        "/lib.js/x",
        "/analytics-next/bundles/../../lib.js",
        "/analytics-next/bundles/%2e%2e/x.js",
        "/analytics-next/bundles/a/b.js",
        "/analytics-next/bundles/x.css",
        "/next-integrations/../x.js",
        "/next-integrations/integrations/../../x.js",
        "/next-integrations/x.js",
        "/next-integrations/a/b.html",
        "/next-integrations/a/%2e%2e/b.js",
        "/v1/track",
        "/v1/t/x",
        "/v1/projects/x/settings/extra",
        "/v1/projects//settings",
        "/robots.txt",
    ],
)
def test_anything_else_under_the_prefix_is_not_ours(rest: str) -> None:
    assert route("GET", PREFIX + rest, PREFIX, KEY) is None
    assert route("POST", PREFIX + rest, PREFIX, KEY) is None


@pytest.mark.parametrize("path", ["/", "/lib.js", "/_/other/lib.js", PREFIX + "x/lib.js", PREFIX])
def test_paths_outside_the_prefix_are_not_ours(path: str) -> None:
    assert route("GET", path, PREFIX, KEY) is None


def test_methods() -> None:
    assert route("POST", PREFIX + "/lib.js", PREFIX, KEY) == Refused(
        405, "405 Method Not Allowed", "GET, HEAD"
    )
    for method in ("GET", "OPTIONS", "PUT"):
        refused = route(method, PREFIX + "/v1/t", PREFIX, KEY)
        assert isinstance(refused, Refused) and (refused.status, refused.allow) == (405, "POST")


# --- 2. only the configured write key -------------------------------------------------------------


def test_settings_of_another_key_are_refused() -> None:
    refused = route("GET", PREFIX + "/v1/projects/someone_else/settings", PREFIX, KEY)
    assert isinstance(refused, Refused) and refused.status == 403


EVENT = {"type": "track", "event": "x", "anonymousId": "a", "writeKey": KEY}


@pytest.mark.parametrize(
    ("endpoint", "body", "auth", "status"),
    [
        ("t", EVENT, basic(KEY), None),
        ("t", EVENT, None, None),
        ("t", {**EVENT, "writeKey": "other"}, None, 403),
        ("t", EVENT, basic("other"), 403),
        ("t", {k: v for k, v in EVENT.items() if k != "writeKey"}, basic(KEY), None),
        ("t", {k: v for k, v in EVENT.items() if k != "writeKey"}, None, 403),
        ("t", {k: v for k, v in EVENT.items() if k != "writeKey"}, "Bearer x", 403),
        ("t", {k: v for k, v in EVENT.items() if k != "writeKey"}, "Basic %%%", 403),
        ("t", {**EVENT, "writeKey": 7}, None, 403),
        ("batch", {"writeKey": KEY, "batch": [EVENT, EVENT]}, basic(KEY), None),
        ("b", {"writeKey": KEY, "batch": [EVENT, {**EVENT, "writeKey": "other"}]}, None, 403),
        ("batch", {"batch": [EVENT]}, None, None),
        ("batch", {"writeKey": KEY, "batch": "x"}, None, 400),
        ("batch", {"writeKey": KEY, "batch": [1]}, None, 400),
        ("t", [EVENT], None, 400),
    ],
)
def test_api_relays_only_the_configured_write_key(
    endpoint: str, body: Any, auth: str | None, status: int | None
) -> None:
    refused = api_refusal(endpoint, json.dumps(body).encode(), auth, KEY)
    assert (refused.status if refused else None) == status


def test_api_refuses_what_is_not_json() -> None:
    for body in (b"", b"{", b"\xff\xfe", b"null"):
        refused = api_refusal("t", body, basic(KEY), KEY)
        assert refused is not None and refused.status == 400


@given(st.text(max_size=40), st.one_of(st.none(), st.text(max_size=40)))
def test_no_other_key_is_ever_relayed(key: str, auth_user: str | None) -> None:
    body = json.dumps({"type": "page", "writeKey": key}).encode()
    auth = None if auth_user is None else basic(auth_user)
    refused = api_refusal("p", body, auth, KEY)
    if refused is None:
        assert key == KEY and auth_user in (None, KEY)


METRIC = {"type": "Counter", "metric": "analytics_js.invoke.error", "value": 1}


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"series": [{**METRIC, "tags": {"wk": KEY}}]}, None),
        ({"series": [{**METRIC, "tags": {"library": "analytics.js"}}]}, None),
        ({"series": [{**METRIC, "tags": {"wk": "other"}}]}, 403),
        ({"series": [{**METRIC, "metric": "something.else"}]}, 400),
        ({"series": []}, 400),
        ({"events": []}, 400),
    ],
)
def test_metrics_are_relayed_only_in_analytics_js_shape(
    body: dict[str, Any], status: int | None
) -> None:
    refused = api_refusal("m", json.dumps(body).encode(), None, KEY)
    assert (refused.status if refused else None) == status


# --- 3. bounded -----------------------------------------------------------------------------------


def test_bodies_are_bounded() -> None:
    padding = "x" * MAX_API_BODY
    refused = api_refusal("t", json.dumps({**EVENT, "p": padding}).encode(), None, KEY)
    assert refused is not None and refused.status == 413
    fits = json.dumps({**EVENT, "p": "x" * (MAX_API_BODY - 200)}).encode()
    assert len(fits) <= MAX_API_BODY and api_refusal("t", fits, None, KEY) is None
    big = json.dumps({"series": [METRIC] * (MAX_METRICS_BODY // 40)}).encode()
    refused = api_refusal("m", big, None, KEY)
    assert refused is not None and refused.status == 413


# --- 4. what goes to Segment ----------------------------------------------------------------------


def test_api_headers_are_an_allow_list_with_the_visitor_address() -> None:
    visitor = {
        "Content-Type": "text/plain",
        "Authorization": basic(KEY),
        "User-Agent": "Mozilla/5.0",
        "X-Retry-Count": "1",
        "Cookie": "ajs_anonymous_id=a; session=secret",
        "Referer": "https://www.shop.test/private?q=1",
        "Origin": "https://www.shop.test",
        "X-Forwarded-For": "6.6.6.6",
        "Accept-Language": "de",
    }
    headers = api_headers(visitor, host="api.segment.io", visitor="203.0.113.7")
    assert headers == [
        ("Host", "api.segment.io"),
        ("Content-Type", "text/plain"),
        ("Authorization", basic(KEY)),
        ("User-Agent", "Mozilla/5.0"),
        ("X-Retry-Count", "1"),
        ("X-Forwarded-For", "203.0.113.7"),
    ]
    assert ("X-Forwarded-For", "203.0.113.7") not in api_headers(visitor, host="h", visitor=None)


def test_asset_requests_carry_nothing_of_the_visitor() -> None:
    names = {name.lower() for name, _ in asset_headers("cdn.segment.com")}
    assert names == {"host", "accept-encoding", "user-agent"}


# --- the settings rewrite -------------------------------------------------------------------------

SETTINGS: dict[str, Any] = {
    "integrations": {
        "Segment.io": {
            "apiKey": KEY,
            "apiHost": "api.segment.io/v1",
            "unbundledIntegrations": [],
        },
        "Google Analytics": {"trackingId": "UA-1"},
    },
    "metrics": {"sampleRate": 0.1, "host": "api.segment.io/v1"},
    "remotePlugins": [
        {
            "name": "Amplitude (Actions)",
            "url": f"{CDN}/next-integrations/actions/amplitude-plugins/6765cb3c.js",
            "libraryName": "amplitude-pluginsDestination",
        },
        {"name": "Elsewhere", "url": "https://other.example/x.js"},
    ],
    "legacy": f"{CDN}/analytics.js/v1/{KEY}/analytics.min.js",
    "cdn": CDN,
}


def rewritten(scheme: str = "https", host: str = "www.shop.test") -> dict[str, Any]:
    body = json.dumps(SETTINGS).encode()
    out = rewrite_settings(body, scheme=scheme, host=host, prefix=PREFIX, cdn_url=CDN + "/")
    result: dict[str, Any] = json.loads(out)
    return result


def test_settings_send_events_to_this_origin() -> None:
    data = rewritten(host="www.shop.test:8443")
    segment = data["integrations"]["Segment.io"]
    assert segment["apiHost"] == f"www.shop.test:8443{PREFIX}/v1"
    assert segment["protocol"] == "https"
    assert segment["apiKey"] == KEY
    assert data["metrics"] == {"sampleRate": 0.1, "host": f"www.shop.test:8443{PREFIX}/v1"}


def test_settings_point_cdn_urls_that_are_served_here_at_this_origin() -> None:
    data = rewritten()
    base = f"https://www.shop.test{PREFIX}"
    assert data["remotePlugins"][0]["url"] == (
        f"{base}/next-integrations/actions/amplitude-plugins/6765cb3c.js"
    )
    assert data["remotePlugins"][1]["url"] == "https://other.example/x.js"
    # Not served here: left alone rather than pointed at a path that is not ours.
    assert data["legacy"] == SETTINGS["legacy"]
    assert data["cdn"] == base
    assert data["integrations"]["Google Analytics"] == {"trackingId": "UA-1"}


def test_settings_over_plain_http_switch_the_library_metrics_off() -> None:
    data = rewritten(scheme="http")
    assert data["integrations"]["Segment.io"]["protocol"] == "http"
    assert data["metrics"]["sampleRate"] == 0


def test_settings_that_are_not_an_object_are_an_error() -> None:
    for body in (b"[]", b"nope"):
        with pytest.raises(ValueError):
            rewrite_settings(body, scheme="https", host="h", prefix=PREFIX, cdn_url=CDN)


# --- the prefix -----------------------------------------------------------------------------------


def test_default_path_is_per_write_key_and_plain() -> None:
    a, b = default_path("key_one"), default_path("key_two")
    assert a != b and a == default_path("key_one")
    assert a.startswith("/_/") and len(a) == 15
    assert path_problem(a) is None


@given(st.text(min_size=1, max_size=60))
def test_no_default_path_serves_a_url_a_block_list_refuses(write_key: str) -> None:
    prefix = default_path(write_key)
    assert path_problem(prefix) is None
    for _, rest, _ in SERVED:
        path = prefix + rest.replace(KEY, "k")
        assert not [p for p in BLOCKED_PATTERNS if p in path.lower()], path


@pytest.mark.parametrize(
    ("path", "fine"),
    [
        ("/_/shop", True),
        ("/static/x-1.2", True),
        ("/api", True),
        ("/analytics.js", False),  # its settings would be /analytics.js/v1/projects/…
        ("/analytics.js/v1", False),
        ("/x/analytics", False),  # …/analytics/v1/t
        ("/segment/js", False),
        ("/", False),
        ("", False),
        ("x", False),
        ("/a/", False),
        ("/a//b", False),
        ("/a/../b", False),
        ("/a/./b", False),
        ("/a b", False),
        ("/a?b", False),
    ],
)
def test_path_problem(path: str, fine: bool) -> None:
    assert (path_problem(path) is None) is fine, path_problem(path)


def test_prefix_for_site_overrides() -> None:
    on = Analytics(write_key=KEY, first_party=FirstParty())
    custom = Analytics(write_key=KEY, first_party=FirstParty("/_/custom"))
    off = Analytics(write_key=KEY)
    site = Site("www.shop.test", "http://u")

    def with_(value: FirstParty | bool | None) -> Site:
        return Site("www.shop.test", "http://u", first_party=value)

    assert prefix_for(off, site) is None
    assert prefix_for(on, site) == default_path(KEY)
    assert prefix_for(custom, site) == "/_/custom"
    assert prefix_for(on, with_(False)) is None
    assert prefix_for(off, with_(FirstParty())) == default_path(KEY)
    assert prefix_for(custom, with_(FirstParty())) == "/_/custom"
    assert prefix_for(off, with_(FirstParty("/_/own"))) == "/_/own"
    assert prefix_for(Analytics(first_party=FirstParty()), site) is None  # no write key


# --- cache policy and stored bodies ---------------------------------------------------------------


def test_policies() -> None:
    assert set(POLICIES) == {"library", "bundle", "integration", "settings"}
    for policy in POLICIES.values():
        assert policy.cache_control.startswith("public, max-age=")
        assert int(policy.cache_control.rsplit("=", 1)[1]) == policy.ttl


def test_fetched_keeps_a_gzip_copy_of_what_compresses() -> None:
    js = b"function f(){return 1}\n" * 200
    stored = Fetched.of(js, "application/javascript; charset=utf-8", None)
    assert stored.gzipped is not None and gzip.decompress(stored.gzipped) == js
    assert stored.size == len(js) + len(stored.gzipped)
    assert Fetched.of(b"x" * 10, "application/javascript", None).gzipped is None
    assert Fetched.of(js, "image/png", None).gzipped is None
    encoded = Fetched.of(gzip.compress(js), "text/javascript", "gzip")
    assert encoded.gzipped is None and encoded.content_encoding == "gzip"
    assert Fetched.of(js, "text/javascript", "identity").content_encoding is None
