"""Store URLs: every form taken apart, every refusal explained, no password ever shown, and
the checks made without redis (the ones redis-py makes kept in step with it)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from gateway.store_url import _NUMERIC_OPTIONS, parse_store_url, redact_url


@pytest.mark.parametrize(
    ("url", "kind", "hosts", "service", "db", "username", "password"),
    [
        ("memory://", "memory", (), None, 0, None, None),
        ("redis://redis:6379/0", "redis", (), None, 0, None, None),
        ("redis://:pw@redis/1", "redis", (), None, 0, None, "pw"),
        ("rediss://u:p%40ss@redis.example:6380", "redis", (), None, 0, None, "p@ss"),
        ("unix:///run/redis.sock?db=1", "redis", (), None, 0, None, None),
        (
            "redis+sentinel://s1:26379,s2:26380,[::1]/mymaster/2",
            "sentinel",
            (("s1", 26379), ("s2", 26380), ("::1", 26379)),
            "mymaster",
            2,
            None,
            None,
        ),
        (
            "redis+sentinel://app:p%2Fw@s1/mymaster",
            "sentinel",
            (("s1", 26379),),
            "mymaster",
            0,
            "app",
            "p/w",
        ),
        (
            "redis+cluster://n1:7000,n2,10.0.0.3:7002",
            "cluster",
            (("n1", 7000), ("n2", 6379), ("10.0.0.3", 7002)),
            None,
            0,
            None,
            None,
        ),
        ("redis+cluster://:pw@n1:7000/0", "cluster", (("n1", 7000),), None, 0, None, "pw"),
    ],
)
def test_parse_store_url(
    url: str,
    kind: str,
    hosts: tuple[tuple[str, int], ...],
    service: str | None,
    db: int,
    username: str | None,
    password: str | None,
) -> None:
    parsed = parse_store_url(url)
    assert (parsed.kind, parsed.hosts, parsed.service, parsed.db) == (kind, hosts, service, db)
    assert (parsed.username, parsed.password) == (username, password)
    if password:
        assert password not in repr(parsed)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis-host:6379", "no scheme"),
        ("memcached://m:11211", "unknown scheme"),
        ("memory://x", "takes no host"),
        ("redis://:pw@/0", "names no host"),
        ("redis://redis:6379/x", "database number"),
        ("redis://redis:notaport/0", "store URL"),
        ("redis+sentinel://s1:26379", "no Sentinel service"),
        ("redis+sentinel://s1:26379/", "no Sentinel service"),
        ("redis+sentinel://s1:26379/m/x", "only a database number"),
        ("redis+sentinel://s1:26379/m/1/2", "only a database number"),
        ("redis+sentinel://s1:99999/m", r"not host\[:port\]"),
        ("redis+sentinel://s1,,s2/m", r"not host\[:port\]"),
        ("redis+sentinel://s1:26379/m?password=x", "takes no options"),
        ("redis+cluster://n1:7000/1", "only database 0"),
        ("redis+cluster://n1:port", r"not host\[:port\]"),
        ("redis+cluster://", r"not host\[:port\]"),
    ],
)
def test_parse_store_url_refusals(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_store_url(url)


def test_bad_url_message_masks_password() -> None:
    with pytest.raises(ValueError) as info:
        parse_store_url("redis+cluster://:hunter2-secret@n1:7000/5")
    assert "hunter2-secret" not in str(info.value) and ":***@" in str(info.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:pw@h:6379/0", "redis://:***@h:6379/0"),
        ("redis://user:pw@h/0", "redis://user:***@h/0"),
        ("redis://user@h/0", "redis://user@h/0"),
        ("redis+sentinel://u:p@a@s1,s2/m", "redis+sentinel://u:***@s1,s2/m"),
        ("unix:///s.sock?db=0&password=pw", "unix:///s.sock?db=0&password=***"),
        ("memory://", "memory://"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://h:6379/0?socket_timeout=soon", "option socket_timeout must be a number"),
        ("redis://h:6379/0?max_connections=1.5", "option max_connections must be a whole number"),
        ("redis://h:70000/0", "store URL 'redis://h:70000/0': Port out of range"),
        ("redis://[::1/0", "store URL"),
    ],
)
def test_redis_py_checks_are_made_without_it(url: str, message: str) -> None:
    """What redis-py's own ``parse_url`` would refuse when the store is opened is refused
    here already, when the config is read."""
    from redis.asyncio.connection import parse_url

    with pytest.raises(ValueError):
        parse_url(url)
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_store_url(url)


def test_numeric_options_match_redis_py() -> None:
    from redis.asyncio.connection import URL_QUERY_ARGUMENT_PARSERS

    numeric = {n: p for n, p in URL_QUERY_ARGUMENT_PARSERS.items() if p in (int, float)}
    assert numeric == _NUMERIC_OPTIONS


def test_query_password_is_read_and_the_authority_wins() -> None:
    assert parse_store_url("unix:///s.sock?db=1&password=pw").password == "pw"
    assert parse_store_url("redis://:a%2Fb@h/0?password=q").password == "a/b"


def test_no_redis_import() -> None:
    code = (
        "import sys; from gateway.store_url import parse_store_url; "
        "parse_store_url('redis://h:6379/0'); print('redis' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
