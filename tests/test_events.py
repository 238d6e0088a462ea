"""gateway/events.py: the hand-off event and the sender's decisions, each guarantee of the
module's docstring checked on its own (the sender itself is tested in test_events_flow.py)."""

from __future__ import annotations

import json
import math
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.config import parse_config
from gateway.events import (
    EVENT_NAME,
    MAX_ATTEMPTS,
    MAX_BATCH_BYTES,
    MAX_EVENT_BYTES,
    RETRY_CAP,
    Batch,
    Handoff,
    encode_event,
    from_domain,
    handoff_source,
    iso_timestamp,
    outcome,
    retry_delay,
    send_due,
    track_event,
)

CONFIG = parse_config(
    """\
sites:
  - {host: www.example.com, upstream: 'http://127.0.0.1:1'}
  - {host: '*.shop.test', upstream: 'http://127.0.0.1:1'}
cross_domains:
  - www.example.com
  - {host: pay.example-pay.com, strategy: token}
  - '*.partner.test'
""",
    "t.yaml",
    {},
)
LIBRARY = {"name": "ajs-identity-gateway", "version": "0.1.0"}
HANDOFF = Handoff(
    anonymous_id="5f0c2d2e-8a1b-4c3d-9e4f-0a1b2c3d4e5f",
    user_id="user-42",
    source="token",
    from_domain="www.example.com",
    to_domain="pay.example-pay.com",
    url="https://pay.example-pay.com/checkout?cart=1",
    ip="198.51.100.9",
    user_agent="TestBrowser/1.0",
)


# --- Which arrivals are hand-offs --------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "source", "form", "expected"),
    [
        ("GET", "url", "query", "query"),
        ("GET", "url", "token", "token"),
        ("POST", "url", "signed", "signed"),
        ("GET", "app", "token", "app"),
        ("GET", "app", "signed", "app"),
        # Brought back from a sibling for an undecorated arrival (gateway/rescue.py).
        ("GET", "rescue", "token", "rescue"),
        ("GET", "rescue", "signed", "rescue"),
        # Not from the URL: nothing to report.
        ("GET", "cookie", None, None),
        ("GET", "minted", None, None),
        ("GET", "rejected", "token", None),
        ("GET", "none", None, None),
        # Link checkers and mail scanners, not navigations.
        ("HEAD", "url", "query", None),
        ("HEAD", "app", "signed", None),
    ],
)
def test_handoff_source(method: str, source: str, form: str | None, expected: str | None) -> None:
    assert handoff_source(method, source, form) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("referer", "expected"),
    [
        ("https://www.example.com/cart?x=1", "www.example.com"),
        ("https://WWW.Example.COM./", "www.example.com"),
        ("http://a.b.shop.test/", "a.b.shop.test"),
        ("https://pay.example-pay.com", "pay.example-pay.com"),
        ("https://eu.partner.test/x", "eu.partner.test"),
        # Hosts the configuration does not know are not reported, look-alikes included.
        ("https://www.google.com/", None),
        ("https://shop.test/", None),
        ("https://evilexample.com/", None),
        ("https://www.example.com.evil.net/", None),
        ("https://partner.test/", None),
        (None, None),
        ("", None),
        ("not a url", None),
        ("https://[::1/", None),
        ("android-app://com.example/", None),
    ],
)
def test_from_domain_names_only_configured_hosts(referer: str | None, expected: str | None) -> None:
    assert from_domain(referer, CONFIG) == expected


# --- The event -----------------------------------------------------------------------------------


def test_track_event_fields() -> None:
    event = track_event(HANDOFF, message_id="m-1", timestamp=1700000000.25, library=LIBRARY)
    assert event == {
        "type": "track",
        "event": EVENT_NAME,
        "anonymousId": HANDOFF.anonymous_id,
        "userId": "user-42",
        "messageId": "m-1",
        "timestamp": "2023-11-14T22:13:20.250Z",
        "properties": {
            "from_domain": "www.example.com",
            "to_domain": "pay.example-pay.com",
            "anonymousId_source": "token",
        },
        "context": {
            "ip": "198.51.100.9",
            "userAgent": "TestBrowser/1.0",
            "page": {
                "url": "https://pay.example-pay.com/checkout?cart=1",
                "path": "/checkout",
                "search": "?cart=1",
            },
            "library": LIBRARY,
        },
    }
    assert EVENT_NAME == "Cross Domain Navigation"


def test_track_event_leaves_out_what_is_unknown() -> None:
    handoff = Handoff(
        anonymous_id="a-1",
        user_id=None,
        source="query",
        from_domain=None,
        to_domain="www.example.com",
        url="http://www.example.com",
        ip=None,
        user_agent=None,
    )
    event = track_event(handoff, message_id="m", timestamp=0, library=LIBRARY)
    assert "userId" not in event
    assert event["properties"]["from_domain"] is None
    assert event["context"] == {
        "page": {"url": "http://www.example.com", "path": "/", "search": ""},
        "library": LIBRARY,
    }


@given(st.floats(min_value=0, max_value=4102444800, allow_nan=False))
def test_timestamps_are_utc_with_milliseconds(seconds: float) -> None:
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", iso_timestamp(seconds))


def test_an_event_over_segments_limit_is_never_encoded() -> None:
    small = encode_event(track_event(HANDOFF, message_id="m", timestamp=0, library=LIBRARY))
    assert small is not None and small.isascii()
    assert json.loads(small)["anonymousId"] == HANDOFF.anonymous_id
    huge = Handoff(**{**HANDOFF.__dict__, "user_agent": "x" * MAX_EVENT_BYTES})
    assert encode_event(track_event(huge, message_id="m", timestamp=0, library=LIBRARY)) is None
    # Anything a header may carry comes out as ASCII JSON.
    odd = Handoff(**{**HANDOFF.__dict__, "user_agent": "Brow\u00dfer/\udcff \u2028"})
    data = encode_event(track_event(odd, message_id="m", timestamp=0, library=LIBRARY))
    assert data is not None and data.isascii()


# --- When a batch is due, and what goes in it ----------------------------------------------------


def test_send_due() -> None:
    due = {"batch_size": 10, "flush_interval": 1.0, "draining": False}
    assert send_due(0, 0.0, **due) == math.inf  # type: ignore[arg-type]
    assert send_due(0, 5.0, **{**due, "draining": True}) == math.inf  # type: ignore[arg-type]
    assert send_due(1, 0.25, **due) == 0.75  # type: ignore[arg-type]
    assert send_due(9, 0.999, **due) == pytest.approx(0.001)  # type: ignore[arg-type]
    assert send_due(1, 1.0, **due) == 0.0  # type: ignore[arg-type]
    assert send_due(1, 7.0, **due) == 0.0  # type: ignore[arg-type]
    assert send_due(10, 0.0, **due) == 0.0  # type: ignore[arg-type]
    assert send_due(1, 0.0, **{**due, "draining": True}) == 0.0  # type: ignore[arg-type]


@given(
    sizes=st.lists(st.integers(min_value=1, max_value=MAX_EVENT_BYTES), min_size=1, max_size=60),
    limit=st.integers(min_value=1, max_value=500),
)
def test_batches_stay_within_count_and_bytes(sizes: list[int], limit: int) -> None:
    """Every event ends up in exactly one batch, in order; no batch is over its count or
    Segment's 500 KB, and its body is the JSON Segment expects."""
    events = [
        json.dumps({"i": i, "pad": "x" * max(0, n - 20)}).encode() for i, n in enumerate(sizes)
    ]
    batches: list[Batch] = []
    pending = list(events)
    while pending:
        batch = Batch(limit)
        while pending and batch.add(pending[0]):
            pending.pop(0)
        assert len(batch) >= 1
        batches.append(batch)
    assert [e for b in batches for e in b.events] == events
    for batch in batches:
        body = batch.body(1700000000.0)
        assert len(batch) <= limit
        assert len(body) <= MAX_BATCH_BYTES
        assert len(body) == batch.size
        parsed = json.loads(body)
        assert parsed["sentAt"] == "2023-11-14T22:13:20.000Z"
        assert [json.dumps(e).encode() for e in parsed["batch"]] == batch.events


def test_a_full_batch_takes_nothing_more() -> None:
    batch = Batch(2)
    assert batch.add(b"{}") and batch.add(b"{}")
    assert batch.full and not batch.add(b"{}")
    assert json.loads(batch.body(0)) == {"batch": [{}, {}], "sentAt": "1970-01-01T00:00:00.000Z"}


# --- What an answer means, and how long to wait --------------------------------------------------


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (200, "sent"),
        (204, "sent"),
        (None, "retry"),
        (500, "retry"),
        (502, "retry"),
        (503, "retry"),
        (408, "retry"),
        (429, "retry"),
        (400, "rejected"),
        (401, "rejected"),
        (403, "rejected"),
        (404, "rejected"),
        (413, "rejected"),
        (301, "rejected"),
        (100, "rejected"),
    ],
)
def test_outcome(status: int | None, expected: str) -> None:
    assert outcome(status) == expected


def test_retry_delays_grow_to_a_cap_and_stay_jittered_within_it() -> None:
    ceilings = [retry_delay(n, 1.0) for n in range(1, 40)]
    assert ceilings[:4] == [0.25, 0.5, 1.0, 2.0]
    assert ceilings == sorted(ceilings) and max(ceilings) == RETRY_CAP
    for n in range(1, 40):
        low, high = retry_delay(n, 0.0), retry_delay(n, 0.999)
        assert low == ceilings[n - 1] / 2 and low <= high < ceilings[n - 1]
    # Out-of-range input cannot produce a negative, infinite or NaN delay.
    for attempt, jitter in ((0, 0.5), (-3, 0.5), (10**9, 0.5), (3, -1.0), (3, 7.0)):
        assert 0 < retry_delay(attempt, jitter) <= RETRY_CAP
    # A batch's attempts span about half a minute at most: a short outage costs nothing.
    assert sum(retry_delay(n, 1.0) for n in range(1, MAX_ATTEMPTS)) <= 35
