"""Pure: store URLs taken apart and checked, and shown with their passwords masked.

Config validation reads ``store.url`` with this module, so ``check-config`` reports a bad URL
without importing redis; :mod:`gateway.store` opens the store it names. The forms:

- ``memory://``: one process only (tests, demos, a single-worker gateway).
- ``redis://[[user]:password@]host[:port][/db][?option=value…]``, ``rediss://…`` (TLS) and
  ``unix://[[user]:password@]/path/to/redis.sock[?db=N]``: one Redis, through
  ``redis.asyncio.Redis.from_url`` (its query options apply).
- ``redis+sentinel://[[user]:password@]host[:port][,host[:port]…]/service_name[/db]``: the
  master of ``service_name`` as reported by the listed Sentinels (port 26379 by default). The
  credentials are for the Redis servers; the Sentinels are reached without any.
- ``redis+cluster://[[user]:password@]host[:port][,host[:port]…]``: a Redis Cluster, the hosts
  being startup nodes (port 6379 by default); database 0 only, as Cluster has no others.

No message carries a password.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["StoreKind", "StoreURL", "parse_store_url", "redact_url"]

StoreKind = Literal["memory", "redis", "sentinel", "cluster"]


@dataclass(frozen=True)
class StoreURL:
    """A store URL taken apart, so that config validation can report a bad one at load time."""

    kind: StoreKind
    url: str = field(repr=False)
    hosts: tuple[tuple[str, int], ...] = ()
    service: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)


_PORT = re.compile(r"[0-9]{1,5}")
# The query options redis-py reads as numbers from a redis://, rediss:// or unix:// URL (its
# ``URL_QUERY_ARGUMENT_PARSERS``); a value that is not one would only fail when the store is
# opened. tests/test_store_url.py keeps these in step with the installed redis-py.
_NUMERIC_OPTIONS: dict[str, type[int] | type[float]] = {
    **dict.fromkeys(("db", "socket_read_size", "max_connections", "health_check_interval"), int),
    **dict.fromkeys(("ssl_min_version", "protocol"), int),
    **dict.fromkeys(("socket_timeout", "socket_connect_timeout", "timeout"), float),
}


def parse_store_url(url: str) -> StoreURL:
    """Check and split a store URL (forms in the module docstring); ValueError says what is
    wrong, with any password masked."""
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    shown = redact_url(url)
    if not sep:
        raise ValueError(f"store URL {shown!r} has no scheme; use memory:// or redis://host:6379/0")
    if scheme == "memory":
        if rest:
            raise ValueError(f"store URL {shown!r}: memory:// takes no host, path or options")
        return StoreURL("memory", url)
    if scheme in ("redis", "rediss", "unix"):
        return _parse_single(scheme, rest, url, shown)
    if scheme in ("redis+sentinel", "redis+cluster"):
        return _parse_multi_host(scheme, rest, url, shown)
    raise ValueError(
        f"store URL {shown!r}: unknown scheme {scheme!r}; use memory://, redis://, rediss://, "
        "unix://, redis+sentinel:// or redis+cluster://"
    )


def _parse_single(scheme: str, rest: str, url: str, shown: str) -> StoreURL:
    """The checks redis-py's ``parse_url`` makes (port, numeric options), and ours on top."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (read for the ValueError a bad port raises)
    except ValueError as exc:
        raise ValueError(f"store URL {shown!r}: {exc}") from None
    options = {name: values[0] for name, values in parse_qs(parts.query).items()}
    for name, value in options.items():
        cast = _NUMERIC_OPTIONS.get(name)
        if cast is None:
            continue
        try:
            cast(value)
        except ValueError:
            kind = "a whole number" if cast is int else "a number"
            raise ValueError(f"store URL {shown!r}: option {name} must be {kind}") from None
    path = rest.partition("?")[0].partition("/")[2]
    if scheme != "unix" and path and not path.isdigit():
        raise ValueError(f"store URL {shown!r}: the path must be a database number, like /0")
    if scheme != "unix" and not parts.hostname:
        raise ValueError(f"store URL {shown!r} names no host; like redis://redis:6379/0")
    # As redis-py: the password in the authority wins over a ``password=`` option.
    password = unquote(parts.password) if parts.password else options.get("password")
    return StoreURL("redis", url, password=password)


def _parse_multi_host(scheme: str, rest: str, url: str, shown: str) -> StoreURL:
    sentinel = scheme == "redis+sentinel"
    form = (
        "redis+sentinel://host:26379,host2:26379/service_name/0"
        if sentinel
        else "redis+cluster://host:6379,host2:6379"
    )
    if "?" in rest or "#" in rest:
        raise ValueError(f"store URL {shown!r}: {scheme}:// takes no options; like {form}")
    authority, _, path = rest.partition("/")
    userinfo, at, hostlist = authority.rpartition("@")
    username = password = None
    if at:
        user, colon, pw = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(pw) if colon else None
    hosts = tuple(
        _host_port(item, 26379 if sentinel else 6379, shown, form) for item in hostlist.split(",")
    )
    segments = path.split("/") if path else []
    if sentinel:
        if not segments or not segments[0]:
            raise ValueError(f"store URL {shown!r} names no Sentinel service; like {form}")
        if len(segments) > 2 or (len(segments) == 2 and not segments[1].isdigit()):
            raise ValueError(f"store URL {shown!r}: after the service only a database number")
        db = int(segments[1]) if len(segments) == 2 else 0
        return StoreURL("sentinel", url, hosts, unquote(segments[0]), db, username, password)
    if segments not in ([], [""], ["0"]):
        raise ValueError(f"store URL {shown!r}: Redis Cluster has only database 0; like {form}")
    return StoreURL("cluster", url, hosts, None, 0, username, password)


def _host_port(item: str, default_port: int, shown: str, form: str) -> tuple[str, int]:
    if item.startswith("["):
        host, _, port = item[1:].partition("]")
        port = port.removeprefix(":")
    else:
        host, _, port = item.rpartition(":") if ":" in item else (item, "", "")
    if not host or (port and not (_PORT.fullmatch(port) and 0 < int(port) < 65536)):
        raise ValueError(f"store URL {shown!r}: {item!r} is not host[:port]; like {form}")
    return host, int(port) if port else default_port


_QUERY_PASSWORD = re.compile(r"(?i)([?&]password=)[^&#]*")


def redact_url(url: str) -> str:
    """``url`` with its password (in the authority or a ``password=`` option) masked."""
    scheme, sep, rest = url.partition("://")
    authority, slash, tail = rest.partition("/")
    userinfo, at, hosts = authority.rpartition("@")
    if at and ":" in userinfo:
        rest = f"{userinfo.partition(':')[0]}:***@{hosts}{slash}{tail}"
    return _QUERY_PASSWORD.sub(r"\1***", f"{scheme}{sep}{rest}")
