"""The admin listener with and without ``admin.token``: /metrics needs the bearer token, the
probes stay open, and /readyz tells anonymous callers nothing but the status."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.app import Gateway, Overrides
from gateway.config import ConfigError, load_config, parse_config
from gateway.keys import generate_key

TOKEN = generate_key()

CONFIG = """\
sites:
  - {host: www.example.com, upstream: 'http://127.0.0.1:9'}
server: {host: 127.0.0.1, port: 0}
"""

Start = Callable[[str], Awaitable[tuple[Gateway, str]]]


@pytest.fixture
async def start(tmp_path: Path) -> AsyncIterator[Start]:
    """Start a gateway from a config file whose admin section is ``admin``; returns it and
    its admin URL."""
    gateways: list[Gateway] = []

    async def run(admin: str) -> tuple[Gateway, str]:
        path = tmp_path / "gw.yaml"
        path.write_text(CONFIG + admin)
        gateway = Gateway(load_config(path, env={"ADMIN_TOKEN": TOKEN}), str(path), Overrides())
        await gateway.start()
        gateways.append(gateway)
        return gateway, f"http://127.0.0.1:{gateway.bound_admin_port}"

    yield run
    for gateway in gateways:
        await gateway.drain_and_close()


async def get(url: str, token: str | None = None, scheme: str = "Bearer") -> tuple[int, Any]:
    headers = {"Authorization": f"{scheme} {token}"} if token is not None else {}
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as resp:
        body: Any = await resp.text()
        if resp.content_type == "application/json":
            body = await resp.json()
        return resp.status, (body, resp.headers.get("WWW-Authenticate"))


WITH_TOKEN = "admin: {host: 127.0.0.1, port: 0, token: '${ADMIN_TOKEN}'}\n"


async def test_metrics_need_the_bearer_token(start: Start) -> None:
    _, admin = await start(WITH_TOKEN)
    status, (body, challenge) = await get(admin + "/metrics")
    assert (status, body, challenge) == (
        401,
        {"error": "unauthorized"},
        'Bearer realm="gateway-admin"',
    )
    for wrong in (TOKEN[:-1], TOKEN + "x", TOKEN.swapcase(), "", "Ünïcode-token"):
        status, (_, challenge) = await get(admin + "/metrics", wrong)
        assert status == 401, wrong
        assert challenge == 'Bearer realm="gateway-admin", error="invalid_token"'
    status, _ = await get(admin + "/metrics", TOKEN, scheme="Basic")
    assert status == 401
    for scheme in ("Bearer", "bearer"):
        status, (text, _) = await get(admin + "/metrics", TOKEN, scheme=scheme)
        assert status == 200 and "gateway_in_flight_requests" in text


async def test_probes_stay_open_and_readyz_discloses_nothing_without_the_token(
    start: Start,
) -> None:
    gateway, admin = await start(WITH_TOKEN)
    assert await get(admin + "/healthz") == (200, ({"status": "alive"}, None))
    status, (body, challenge) = await get(admin + "/readyz")
    assert (status, body, challenge) == (200, {"status": "ready"}, None)
    status, (body, _) = await get(admin + "/readyz", "wrong-" + TOKEN)
    assert (status, body) == (200, {"status": "ready"})
    status, (body, _) = await get(admin + "/readyz", TOKEN)
    assert status == 200
    assert body["config"].endswith("gw.yaml") and body["dependencies"]["store"]["state"] == "up"
    gateway.state.draining = True
    assert (await get(admin + "/readyz"))[:2] == (503, ({"status": "draining"}, None))


async def test_without_a_token_everything_stays_open(start: Start) -> None:
    _, admin = await start("admin: {host: 127.0.0.1, port: 0}\n")
    status, (text, _) = await get(admin + "/metrics")
    assert status == 200 and "gateway_in_flight_requests" in text
    status, (body, _) = await get(admin + "/readyz")
    assert status == 200 and body["config"].endswith("gw.yaml")


async def test_a_reload_applies_a_new_token_at_once(start: Start, tmp_path: Path) -> None:
    gateway, admin = await start(WITH_TOKEN)
    new = generate_key()
    (tmp_path / "gw.yaml").write_text(
        CONFIG + f"admin: {{host: 127.0.0.1, port: 0, token: {new}}}\n"
    )
    assert gateway.reload() is True
    assert (await get(admin + "/metrics", TOKEN))[0] == 401
    assert (await get(admin + "/metrics", new))[0] == 200


def test_the_token_is_never_in_repr() -> None:
    config = parse_config(CONFIG + WITH_TOKEN, "f.yaml", {"ADMIN_TOKEN": TOKEN})
    assert config.admin.token == TOKEN
    assert TOKEN not in repr(config)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("short-token", "is 11 characters long (at least 32 random characters;"),
        ("''", "must be a non-empty string"),
        ("12345", "must be a non-empty string"),
        ("'" + "Zq8Wm2Xr7Tn4Vb6Pc3Ld9Hs5 Ak2Jd8Fh4" + "'", "holds characters an Authorization"),
        ("REPLACE_ME-admin-token-0123456789abcdef", "contains the placeholder text 'replace'"),
        ("Zq8Wm2Xr7Tn4-Vb6Pc3Ld9Hs5-Zq8Wm2Xr7Tn4", "repeats a stretch of 8 or more"),
    ],
)
def test_weak_or_malformed_tokens_are_refused_without_echo(value: str, message: str) -> None:
    text = CONFIG + f"admin:\n  token: {value}\n"
    with pytest.raises(ConfigError) as info:
        parse_config(text, "f.yaml", {})
    assert str(info.value).startswith(f"f.yaml:5: admin.token: {message}"), str(info.value)
    assert str(info.value).endswith("python -m gateway gen-key)")
    assert value.strip("'") not in str(info.value) or len(value.strip("'")) < 8


def test_a_missing_token_variable_is_one_problem() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(CONFIG + WITH_TOKEN, "f.yaml", {})
    assert [str(p) for p in info.value.problems] == [
        "f.yaml:4: admin.token: environment variable ADMIN_TOKEN is not set (set it, or write "
        "the value)"
    ]
