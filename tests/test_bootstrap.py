"""Tests for gateway.bootstrap: escaping in Python, behaviour under node with a DOM shim."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.bootstrap import render_bootstrap
from gateway.hosts import hostname, matches

from .js_harness import needs_node, run_harness

AID = "0b6e6f5a-1c2d-4e3f-8a9b-0c1d2e3f4a5b"
PAGE = "https://www.shop.test/dir/page"


def render(**overrides: Any) -> bytes:
    args: dict[str, Any] = {
        "write_key": "WK",
        "cdn_url": "https://cdn.test/",
        "anonymous_id": AID,
        "user_id": None,
        "targets": ["Checkout.test", "*.pay.test."],
        "own_host": "www.shop.test:8443",
        "nonce": None,
    }
    args.update(overrides)
    return render_bootstrap(**args)


def body(script: bytes) -> str:
    match = re.fullmatch(rb"<script(?: nonce=\"[^\"]*\")?>(.*)</script>", script, re.DOTALL)
    assert match, script[:80]
    return match.group(1).decode("ascii")


# --- Python-side: the element and escaping ------------------------------------------------------

EVIL = "</script><script>alert(1)</script>\u2028\u2029\"'<!--&>\\"


def test_one_script_element() -> None:
    out = render()
    assert out.startswith(b"<script>") and out.endswith(b"</script>")
    assert out.count(b"<script") == 1
    assert out.isascii()


def test_nonce_attribute_is_escaped() -> None:
    out = render(nonce='a"b<c>&')
    assert out.startswith(b'<script nonce="a&quot;b&lt;c&gt;&amp;">')
    assert render(nonce="é").startswith(b'<script nonce="&#233;">')


@pytest.mark.parametrize(
    "field", ["write_key", "cdn_url", "anonymous_id", "user_id", "own_host", "nonce"]
)
def test_no_value_can_break_out(field: str) -> None:
    out = render(**{field: EVIL})
    _assert_contained(out)


def test_no_target_can_break_out() -> None:
    _assert_contained(render(targets=[EVIL, "a.test"]))


def _assert_contained(out: bytes) -> None:
    lowered = out.lower()
    assert lowered.count(b"</script") == 1 and lowered.endswith(b"</script>")
    assert lowered.count(b"<script") == 1
    assert b"<!--" not in out and b"-->" not in out
    assert "\u2028".encode() not in out and "\u2029".encode() not in out
    assert out.isascii()


@given(st.text(), st.text(), st.one_of(st.none(), st.text()))
def test_escaping_property(write_key: str, aid: str, nonce: str | None) -> None:
    out = render(write_key=write_key, anonymous_id=aid, nonce=nonce)
    lowered = out.lower()
    assert lowered.count(b"</script") == 1 and lowered.endswith(b"</script>")
    assert b"<!--" not in out
    assert out.isascii()


def test_embedded_values_round_trip_as_json() -> None:
    # The config is the last argument of the IIFE; it must parse back to the inputs.
    text = body(render(write_key=EVIL, user_id="Jörg", nonce="n"))
    config = json.loads(text[text.index("})(window,document,") + 19 : -1])
    assert config["k"] == EVIL
    assert config["u"] == "Jörg"
    assert config["t"] == ["checkout.test", "*.pay.test"]
    assert config["o"] == "www.shop.test"
    assert config["c"] == "https://cdn.test"


# --- node: behaviour ------------------------------------------------------------------------------


def run_js(steps: list[dict[str, Any]], script: bytes | None = None) -> dict[str, Any]:
    return run_harness(body(script or render()), PAGE, steps)


SET_AID = ["setAnonymousId", AID]
OWN_SCRIPT = "https://cdn.test/analytics.js/v1/WK/analytics.min.js"
PAGE_SCRIPT = "https://cdn.segment.com/analytics.js/v1/PAGEKEY/analytics.min.js"


@needs_node
def test_alone_creates_queue_and_loads_once_at_domcontentloaded() -> None:
    out = run_js([{"do": "bootstrap"}, {"do": "state"}, {"do": "dcl"}, {"do": "state"}])
    before, after = out["results"]
    assert before["queue"] == [SET_AID]
    assert before["hasMethods"] and before["stubPage"]
    assert not before["invoked"]
    assert before["writeKey"] == "WK" and before["cdn"] == "https://cdn.test"
    assert after["queue"] == [SET_AID, ["page"]]
    assert after["invoked"]
    assert out["scripts"] == [{"src": OWN_SCRIPT, "async": True, "nonce": None}]
    assert out["errors"] == []


@needs_node
def test_page_snippet_after_bootstrap_takes_over() -> None:
    out = run_js(
        [{"do": "bootstrap"}, {"do": "snippet", "key": "PAGEKEY"}, {"do": "dcl"}, {"do": "state"}]
    )
    assert out["scripts"] == [{"src": PAGE_SCRIPT, "async": True, "nonce": None}]
    assert out["errors"] == []
    (state,) = out["results"]
    assert state["queue"] == [SET_AID, ["page"]]
    assert state["writeKey"] == "PAGEKEY"


@needs_node
def test_page_snippet_before_bootstrap_gets_the_id_first() -> None:
    out = run_js(
        [
            {"do": "snippet", "key": "PAGEKEY"},
            {"do": "bootstrap"},
            {"do": "dcl"},
            {"do": "state"},
            {"do": "library", "aid": "stale-local-storage-id"},
        ]
    )
    state, library = out["results"]
    assert state["queue"] == [SET_AID, ["page"]]
    assert state["writeKey"] == "PAGEKEY"
    assert out["scripts"] == [{"src": PAGE_SCRIPT, "async": True, "nonce": None}]
    assert library["calls"] == [SET_AID, ["page"]]
    assert out["errors"] == []


@needs_node
def test_queue_replaced_by_page_code_is_seeded_again() -> None:
    out = run_js(
        [
            {"do": "bootstrap"},
            {"do": "exec", "code": "window.analytics=[['track','x']]"},
            {"do": "dcl"},
            {"do": "state"},
        ]
    )
    (state,) = out["results"]
    assert state["queue"] == [SET_AID, ["track", "x"], ["page"]]
    assert state["writeKey"] == "WK"
    assert [s["src"] for s in out["scripts"]] == [OWN_SCRIPT]


@needs_node
def test_hostile_values_arrive_intact_in_javascript() -> None:
    out = run_js(
        [{"do": "bootstrap"}, {"do": "dcl"}, {"do": "state"}],
        render(anonymous_id=EVIL, write_key=EVIL),
    )
    (state,) = out["results"]
    assert state["queue"] == [["setAnonymousId", EVIL], ["page"]]
    assert state["writeKey"] == EVIL


@needs_node
def test_late_snippet_after_our_load_does_not_load_again() -> None:
    out = run_js([{"do": "bootstrap"}, {"do": "dcl"}, {"do": "snippet", "key": "PAGEKEY"}])
    assert [s["src"] for s in out["scripts"]] == [OWN_SCRIPT]
    assert out["errors"] == ["snippet included twice"]


@needs_node
def test_library_already_running_gets_the_id_directly() -> None:
    out = run_js(
        [
            {"do": "snippet", "key": "PAGEKEY"},
            {"do": "library", "aid": "old"},
            {"do": "bootstrap"},
            {"do": "dcl"},
            {"do": "click", "href": "https://checkout.test/"},
        ]
    )
    library, click = out["results"]
    assert library["calls"] == [["page"]]
    assert [s["src"] for s in out["scripts"]] == [PAGE_SCRIPT]
    # The library's id is now the restored one, and links carry it.
    assert click["href"] == f"https://checkout.test/?ajs_aid={AID}"


@needs_node
def test_without_anonymous_id_nothing_is_seeded() -> None:
    out = run_js([{"do": "bootstrap"}, {"do": "dcl"}, {"do": "state"}], render(anonymous_id=None))
    (state,) = out["results"]
    assert state["queue"] == [["page"]]


@needs_node
def test_nonce_is_passed_to_the_loaded_script() -> None:
    out = run_js([{"do": "bootstrap"}, {"do": "dcl"}], render(nonce="r4nd"))
    assert out["scripts"] == [{"src": OWN_SCRIPT, "async": True, "nonce": "r4nd"}]


@needs_node
def test_loaded_url_escapes_the_write_key() -> None:
    out = run_js(
        [{"do": "bootstrap"}, {"do": "dcl"}], render(write_key="a/b?c", cdn_url="http://c")
    )
    assert out["scripts"][0]["src"] == "http://c/analytics.js/v1/a%2Fb%3Fc/analytics.min.js"


CLICKS: list[tuple[dict[str, Any], str | None]] = [
    ({"href": "https://checkout.test/cart"}, f"https://checkout.test/cart?ajs_aid={AID}"),
    ({"href": "https://CHECKOUT.test./x"}, f"https://CHECKOUT.test./x?ajs_aid={AID}"),
    ({"href": "https://a.b.pay.test/x#f"}, f"https://a.b.pay.test/x?ajs_aid={AID}#f"),
    (
        {"href": "https://checkout.test/?a=%7e+b&ajs_aid=old&ajs%5Faid=old2&c"},
        f"https://checkout.test/?a=%7e+b&c&ajs_aid={AID}",
    ),
    ({"href": "  //checkout.test/x \n"}, f"//checkout.test/x?ajs_aid={AID}"),
    # Identity the page wrote into the link goes: this visitor has no user id.
    (
        {"href": "https://checkout.test/?ajs_uid=stale&x=1&ajs_token=t"},
        f"https://checkout.test/?x=1&ajs_aid={AID}",
    ),
    ({"href": "https://checkout.test/", "nested": True}, f"https://checkout.test/?ajs_aid={AID}"),
    ({"href": "https://checkout.test/", "tag": "area"}, f"https://checkout.test/?ajs_aid={AID}"),
    (
        {"href": "https://checkout.test/", "type": "auxclick"},
        f"https://checkout.test/?ajs_aid={AID}",
    ),
    ({"href": "https://www.shop.test/x"}, "https://www.shop.test/x"),
    ({"href": "/local"}, "/local"),
    ({"href": "https://pay.test/"}, "https://pay.test/"),
    ({"href": "https://evilcheckout.test/"}, "https://evilcheckout.test/"),
    ({"href": "https://checkout.test.evil.net/"}, "https://checkout.test.evil.net/"),
    ({"href": "https://evil.net/?checkout.test"}, "https://evil.net/?checkout.test"),
    ({"href": "javascript:'https://checkout.test/'"}, "javascript:'https://checkout.test/'"),
    ({"href": "mailto:x@checkout.test"}, "mailto:x@checkout.test"),
    ({"href": "http://["}, "http://["),
    ({"href": None}, None),
    ({"href": "https://checkout.test/", "tag": "div"}, "https://checkout.test/"),
]


@needs_node
def test_click_time_decoration() -> None:
    steps = [{"do": "bootstrap"}] + [{"do": "click", **spec} for spec, _ in CLICKS]
    out = run_js(steps)
    assert [r["href"] for r in out["results"]] == [expected for _, expected in CLICKS]


# The JavaScript copy of the wildcard rule (the script's "hit") against hosts.matches: every
# pattern with every host, the own host never a target.
HIT_PATTERNS = [
    "example.com",
    "*.example.com",
    "*.b.example.com",
    "Shop.Test.",
    "*.shop.test",
    "*.x-y.test",
    "*.xn--grobank-2va.test",
    "127.0.0.1",
    "[::1]",
]
HIT_HOSTS = [
    "example.com",
    "EXAMPLE.com.",
    "a.example.com",
    "A.B.Example.Com",
    "b.example.com",
    "a.b.example.com",
    "evilexample.com",
    "example.com.evil.net",
    "example.co",
    "a..example.com",
    "shop.test",
    "www.shop.test",
    "a.www.shop.test",
    "x-y.test",
    "a.x-y.test",
    "ax-y.test",
    "pay.xn--grobank-2va.test",
    "xn--grobank-2va.test",
    "127.0.0.1",
    "a.127.0.0.1",
    "[::1]",
    "_s.shop.test",
]


@needs_node
@pytest.mark.parametrize("pattern", HIT_PATTERNS)
def test_click_time_matching_is_hosts_matches(pattern: str) -> None:
    own = "www.shop.test"
    steps = [{"do": "bootstrap"}] + [
        {"do": "click", "href": f"https://{host}/x"} for host in HIT_HOSTS
    ]
    out = run_harness(body(render(targets=[pattern], own_host=own)), PAGE, steps)
    hrefs = [r["href"] for r in out["results"]]
    decorated = {h: href != f"https://{h}/x" for h, href in zip(HIT_HOSTS, hrefs, strict=True)}
    expected = {h: hostname(h) != own and matches(h, pattern) for h in HIT_HOSTS}
    assert decorated == expected
    assert any(expected.values()), "every pattern has a host of the table under it"


@needs_node
def test_click_uses_the_running_library_ids_and_user_id() -> None:
    out = run_js(
        [
            {"do": "bootstrap"},
            {"do": "click", "href": "https://checkout.test/"},
            {"do": "dcl"},
            {"do": "library", "aid": "ignored", "uid": "Jörg M"},
            {"do": "click", "href": "https://checkout.test/?ajs_uid=x"},
        ],
        render(user_id="embedded-user"),
    )
    first, _library, second = out["results"]
    assert first["href"] == f"https://checkout.test/?ajs_aid={AID}&ajs_uid=embedded-user"
    assert second["href"] == f"https://checkout.test/?ajs_aid={AID}&ajs_uid=J%C3%B6rg%20M"


@needs_node
def test_click_decoration_is_idempotent() -> None:
    href = f"https://checkout.test/p?x=1&ajs_aid={AID}"
    out = run_js([{"do": "bootstrap"}, {"do": "click", "href": href}])
    assert out["results"][0]["href"] == href


@needs_node
def test_form_submissions() -> None:
    out = run_js(
        [
            {"do": "bootstrap"},
            {"do": "submit", "action": "https://checkout.test/search", "inputs": [["q", "x"]]},
            {
                "do": "submit",
                "action": "https://checkout.test/search",
                "method": "GET",
                "inputs": [["ajs_aid", "old"]],
            },
            {"do": "submit", "action": "https://checkout.test/pay?x=1", "method": "post"},
            {"do": "submit", "action": "/local", "method": "get"},
            {"do": "submit", "action": "", "method": "get"},
            {"do": "submit", "action": None, "method": "post"},
            {"do": "submit", "action": "https://evil.net/", "method": "post"},
        ]
    )
    get_new, get_existing, post, local, empty, missing, evil = out["results"]
    assert get_new["inputs"] == [["q", "x", ""], ["ajs_aid", AID, "hidden"]]
    assert get_existing["inputs"] == [["ajs_aid", AID, ""]]
    assert post["action"] == f"https://checkout.test/pay?x=1&ajs_aid={AID}"
    assert local == {"action": "/local", "inputs": []}
    assert empty == {"action": "", "inputs": []}
    assert missing == {"action": None, "inputs": []}
    assert evil["action"] == "https://evil.net/"


# --- node: the address bar ------------------------------------------------------------------------

SITE = "https://www.shop.test"
# (the page's URL, the URL the bootstrap leaves in the address bar, or None: left alone)
ADDRESS_BAR: list[tuple[str, str | None]] = [
    # Everything analytics.js' query-string feature acts on goes; the rest keeps its text,
    # order and encoding, and the fragment stays.
    (
        "/p?q=x&ajs_aid=F&ajs_uid=u%40x&ajs_event=Order%20Completed&ajs_prop_revenue=9"
        "&ajs_trait_email=e&z=%7E+1#frag",
        "/p?q=x&z=%7E+1#frag",
    ),
    ("/p?ajs_aid=F", "/p"),
    ("/p?ajs_aid=F#top", "/p#top"),
    # The gateway's own identity parameters, and any future ajs_ name.
    ("/p?ajs_token=t&ajs_sig=s&ajs_exp=1&a=1", "/p?a=1"),
    ("/p?ajs_whatever=1&x", "/p?x"),
    # Names compare decoded, as the gateway and URLSearchParams read them.
    ("/p?ajs%5Faid=F&a+b=c%20d", "/p?a+b=c%20d"),
    ("/p?ajs_prop_a+b=1&k", "/p?k"),
    ("/p?ajs_aid%=1&x", "/p?x"),
    ("/p?a=1&&ajs_aid=F&b=&c", "/p?a=1&&b=&c"),
    # A fragment's query-like tail (after its last "?") is what analytics.js reads when the
    # URL has no query; the fragment's route stays.
    ("/p#/deals?ajs_aid=F&ajs_event=E", "/p#/deals"),
    ("/p?x=1#/r?a=1&ajs_uid=u", "/p?x=1#/r?a=1"),
    ("/p#/r?a=1?ajs_aid=F&b=2", "/p#/r?a=1?b=2"),
    # Nothing analytics.js would read: left alone (no replaceState at all).
    ("/p?majs_aid=1&ajs=2&AJS_AID=3&x_ajs_aid=4", None),
    ("/p#ajs_aid=F", None),
    ("/ajs_aid=F/p?", None),
    ("/p", None),
]


@needs_node
@pytest.mark.parametrize(("path", "cleaned"), ADDRESS_BAR)
def test_address_bar_loses_every_ajs_parameter(path: str, cleaned: str | None) -> None:
    out = run_harness(
        body(render()),
        SITE + path,
        [{"do": "location"}, {"do": "bootstrap"}, {"do": "location"}],
    )
    before, after = out["results"]
    assert before["href"] == SITE + path
    if cleaned is None:
        assert out["replaced"] == []
        assert after["href"] == SITE + path
    else:
        assert out["replaced"] == [SITE + cleaned]
        assert after["href"] == SITE + cleaned
    assert out["errors"] == []


@needs_node
def test_address_bar_is_cleaned_before_the_page_and_keeps_history_state() -> None:
    # The page's own snippet and library run after the bootstrap: they only ever see the
    # clean URL. history.state (a router's) survives.
    out = run_harness(
        body(render()),
        SITE + "/p?ajs_aid=F&x=1",
        [
            {"do": "bootstrap"},
            {"do": "exec", "code": "window.seen = location.href"},
            {"do": "snippet", "key": "PAGEKEY"},
            {"do": "location"},
            {"do": "exec", "code": "window.analytics.push(['track', window.seen])"},
            {"do": "state"},
        ],
        history_state={"route": 3},
    )
    location, state = out["results"]
    assert location == {"href": SITE + "/p?x=1", "state": {"route": 3}}
    assert state["queue"][-1] == ["track", SITE + "/p?x=1"]


@needs_node
def test_refused_replace_state_does_not_stop_the_bootstrap() -> None:
    out = run_harness(
        body(render()),
        SITE + "/p?ajs_aid=F",
        [{"do": "bootstrap"}, {"do": "dcl"}, {"do": "state"}],
        history_throws=True,
    )
    assert out["replaced"] == [SITE + "/p"]
    assert out["results"][0]["queue"] == [SET_AID, ["page"]]
    assert out["scripts"] == [{"src": OWN_SCRIPT, "async": True, "nonce": None}]


@needs_node
def test_library_we_load_does_not_read_the_query_string() -> None:
    out = run_js([{"do": "bootstrap"}, {"do": "dcl"}, {"do": "state"}])
    assert out["results"][0]["loadOptions"] == {"useQueryString": False}
    # Options already on the queue are kept; only the query string is turned off.
    out = run_js(
        [
            {"do": "bootstrap"},
            {"do": "exec", "code": "analytics._loadOptions = {useQueryString: true, x: 1}"},
            {"do": "dcl"},
            {"do": "state"},
        ]
    )
    assert out["results"][0]["loadOptions"] == {"useQueryString": False, "x": 1}


@needs_node
def test_page_snippet_keeps_its_own_load_options() -> None:
    # The page is in charge of its own library; for it, the clean address bar is what counts.
    out = run_js(
        [
            {"do": "bootstrap"},
            {"do": "snippet", "key": "PAGEKEY"},
            {"do": "exec", "code": "analytics._loadOptions = {integrations: {}}"},
            {"do": "dcl"},
            {"do": "state"},
        ]
    )
    assert out["results"][0]["loadOptions"] == {"integrations": {}}


# --- first-party delivery -----------------------------------------------------------------------

FIRST_PARTY = "/_/0123abcd4567"
OWN_ORIGIN = "https://www.shop.test"


@needs_node
def test_first_party_loads_the_library_from_the_page_origin() -> None:
    """The library, and through ``_cdn`` its settings and chunks, come from the page's own
    origin under the prefix; ``_cdn`` is set only when the bootstrap loads the library."""
    script = render(first_party=FIRST_PARTY, anonymous_id=AID)
    out = run_js([{"do": "bootstrap"}, {"do": "state"}, {"do": "dcl"}, {"do": "state"}], script)
    before, after = out["results"]
    assert before["cdn"] is None, "no _cdn before the page's own snippet has had its turn"
    assert after["cdn"] == OWN_ORIGIN + FIRST_PARTY
    assert out["scripts"] == [
        {"src": f"{OWN_ORIGIN}{FIRST_PARTY}/lib.js", "async": True, "nonce": None}
    ]
    assert after["queue"] == [SET_AID, ["page"]]
    assert out["errors"] == []


@needs_node
def test_first_party_urls_carry_no_id_and_match_no_block_rule() -> None:
    from gateway.firstparty import BLOCKED_PATTERNS

    script = render(first_party=FIRST_PARTY, anonymous_id=AID, write_key="WK")
    out = run_js([{"do": "bootstrap"}, {"do": "dcl"}, {"do": "state"}], script)
    urls = [s["src"] for s in out["scripts"]] + [out["results"][0]["cdn"]]
    for url in urls:
        assert AID not in url and "WK" not in url, url
        assert not [p for p in BLOCKED_PATTERNS if p in url.lower()], url


@needs_node
def test_first_party_port_is_kept_in_the_origin() -> None:
    out = run_harness(
        body(render(first_party=FIRST_PARTY)),
        "http://www.shop.test:8080/page?x=1",
        [{"do": "bootstrap"}, {"do": "dcl"}],
    )
    assert out["scripts"][0]["src"] == f"http://www.shop.test:8080{FIRST_PARTY}/lib.js"


@needs_node
def test_first_party_stands_down_for_a_page_snippet() -> None:
    """A page whose own snippet loads Segment's library keeps its own CDN for settings."""
    script = render(first_party=FIRST_PARTY)
    out = run_js(
        [{"do": "bootstrap"}, {"do": "snippet", "key": "PAGEKEY"}, {"do": "dcl"}, {"do": "state"}],
        script,
    )
    assert [s["src"] for s in out["scripts"]] == [PAGE_SCRIPT]
    (state,) = out["results"]
    assert state["cdn"] is None
