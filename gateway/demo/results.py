"""What the demo's Segment stand-in received, summed up the way Segment counts people (pure).

Segment counts one visitor per ``anonymousId``. The demo walks one person from the shop to the
checkout, once through the gateway and once without it, and this module turns the events the
tracking API received into one verdict per walk: "1 visitor across 2 domains" when the id
followed the person, "2 visitors across 2 domains" when each domain minted its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Event:
    """One event as the tracking API received it."""

    type: str  # "page", "track", "identify", ...
    anonymous_id: str | None
    url: str  # the page it was sent from, as analytics.js reports it
    host: str  # that page's host name
    received: float  # seconds since the epoch, when the stand-in got it
    name: str = ""  # the event name of a track call, the page name of a page call

    @classmethod
    def from_payload(cls, body: Mapping[str, Any], origin: str | None, received: float) -> Event:
        """Read an event as analytics.js sends it (``context.page.url``); a payload without a
        page URL is attributed to the ``Origin`` the browser sent it from."""
        context = body.get("context")
        page = context.get("page") if isinstance(context, Mapping) else None
        url = page.get("url") if isinstance(page, Mapping) else None
        if not isinstance(url, str) or not url:
            url = origin or ""
        anonymous_id = body.get("anonymousId")
        name = body.get("event") or body.get("name") or ""
        return cls(
            type=str(body.get("type", "")),
            anonymous_id=anonymous_id if isinstance(anonymous_id, str) else None,
            url=url,
            host=(urlsplit(url).hostname or "") if url else "",
            received=received,
            name=name if isinstance(name, str) else "",
        )

    @property
    def path(self) -> str:
        parts = urlsplit(self.url)
        return parts.path + (f"?{parts.query}" if parts.query else "")


@dataclass(frozen=True)
class Walk:
    """One way of walking the journey, and the domains it covers."""

    key: str  # an HTML id: "with-gateway", "without-gateway"
    title: str
    hosts: tuple[str, ...]  # every host of the walk, first visited first


@dataclass(frozen=True)
class Visitor:
    """One anonymousId and the events that carried it, oldest first."""

    anonymous_id: str
    events: tuple[Event, ...]

    @property
    def hosts(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(event.host for event in self.events))


@dataclass(frozen=True)
class Summary:
    """What one walk's events amount to in Segment."""

    walk: Walk
    visitors: tuple[Visitor, ...]

    @property
    def hosts(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(h for v in self.visitors for h in v.hosts))

    @property
    def verdict(self) -> str:
        """The headline: how many people Segment sees, on how many domains."""
        people, domains = len(self.visitors), len(self.hosts)
        if not people:
            return "No visitors yet"
        word = "visitor" if people == 1 else "visitors"
        if domains == 1:
            return f"{people} {word} on 1 domain so far"
        return f"{people} {word} across {domains} domains"

    @property
    def tone(self) -> str:
        """``ok`` when one id followed the person everywhere, ``split`` when Segment sees more
        people than walked, ``waiting`` before the walk reached a second domain."""
        if len(self.visitors) > 1:
            return "split"
        if len(self.visitors) == 1 and len(self.hosts) > 1:
            return "ok"
        return "waiting"

    @property
    def explanation(self) -> str:
        if not self.visitors:
            return "Open the shop and click through to the checkout; the events appear here."
        if self.tone == "ok":
            return "One person, one anonymousId on every domain: Segment sees one visitor."
        if self.tone == "split":
            return (
                "Segment counts one person as several visitors: each domain's analytics.js "
                "could not read the other's cookie and minted its own anonymousId."
            )
        return "Now click through to the checkout on the other domain."


def summarise(events: Iterable[Event], walks: Sequence[Walk]) -> list[Summary]:
    """Group ``events`` by walk (the host they were sent from) and then by anonymousId, in the
    order each id was first seen. Events from other hosts, or without an id, are left out."""
    by_walk: dict[str, dict[str, list[Event]]] = {walk.key: {} for walk in walks}
    for event in events:
        walk = next((w for w in walks if event.host in w.hosts), None)
        if walk is None or not event.anonymous_id:
            continue
        by_walk[walk.key].setdefault(event.anonymous_id, []).append(event)
    return [
        Summary(walk, tuple(Visitor(aid, tuple(evs)) for aid, evs in by_walk[walk.key].items()))
        for walk in walks
    ]


def hue(anonymous_id: str) -> int:
    """The badge colour of an id (a hue in degrees), as the demo strip on the sites computes
    it in JavaScript: the same id is the same colour everywhere."""
    h = 0
    for char in anonymous_id:
        h = (h * 31 + ord(char)) & 0xFFFFFFFF
    return h % 360
