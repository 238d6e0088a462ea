"""Fixtures for the browser journeys: the real analytics.js from npm, the Segment stand-in, the
legacy sites, the gateway as a real process, and headless Chromium driven by Playwright.

Servers and the browser are started once per session (they run on pytest-asyncio's session
event loop, so the journeys do too); every journey gets a fresh browser context, that is an
empty profile: no cookies, no localStorage.

Needs Debian's ``chromium`` (``/usr/bin/chromium``), the ``playwright`` Python package (its
bundled driver only: never ``playwright install``) and ``npm``. Without them the journeys are
skipped, except under ``CI=true``, where that is a failure.

``E2E_HEADED=1`` shows the browser (needs a display, or ``xvfb-run -a``), ``E2E_SLOWMO=<ms>``
slows every browser action down so a person can follow it.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import shutil
import subprocess
import textwrap
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import parse_qsl, unquote, urlsplit

import pytest
import pytest_asyncio
from aiohttp import web

from tests.conftest import GatewayProcess, spawn_gateway

from .segment_stand_in import StandIn, stand_in_app
from .sites import (
    HOST_A,
    HOST_B,
    HOST_C,
    HOST_PSP,
    Origins,
    Recorder,
    auth_c,
    pay_b,
    psp_d,
    shop_a,
)

if TYPE_CHECKING:
    from playwright.async_api import (
        Browser,
        BrowserContext,
        ConsoleMessage,
        Dialog,
        Page,
        Response,
    )

E2E = Path(__file__).resolve().parent
NODE_MODULES = E2E / "node_modules"
DIST = NODE_MODULES / "@segment" / "analytics-next" / "dist" / "umd"
CHROMIUM = Path(os.environ.get("E2E_CHROMIUM", "/usr/bin/chromium"))
WRITE_KEY = "e2e_key"
HOST_CDN = "cdn.segment-stand-in.test"
# The gateway's admin port (the status page), by name: the browser resolves nothing else.
HOST_ADMIN = "admin.gateway.test"
INSTALL_HINT = (
    "needs Debian chromium (apt-get install chromium), npm (apt-get install npm) and "
    "playwright (pip install -e '.[test]'; never `playwright install`)"
)
IDENTITY_PARAMS = frozenset({"ajs_aid", "ajs_uid"})
TIMEOUT_MS = 10_000

# Every test host resolves to loopback, anything else to nothing: the suite never leaves the
# machine, and an accidental request to a real host fails loudly instead of hanging.
_RESOLVER_RULES = ", ".join(
    [f"MAP {h} 127.0.0.1" for h in (HOST_A, HOST_B, HOST_C, HOST_PSP, HOST_CDN, HOST_ADMIN)]
    + ["MAP * ~NOTFOUND"]
)
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    f"--host-resolver-rules={_RESOLVER_RULES}",
]


def unavailable(reason: str) -> NoReturn:
    """Skip the journeys with one line saying what is missing; under CI that is a failure."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"e2e: {reason} ({INSTALL_HINT})", pytrace=False)
    pytest.skip(f"e2e: {reason}; {INSTALL_HINT}; skipped")


def _pinned_version() -> str:
    manifest = json.loads((E2E / "package.json").read_text())
    return str(manifest["dependencies"]["@segment/analytics-next"])


def _installed_version() -> str | None:
    try:
        manifest = json.loads((DIST.parent.parent / "package.json").read_text())
    except (OSError, ValueError):
        return None
    return str(manifest.get("version"))


def _npm_ci() -> str | None:
    """``npm ci`` unless node_modules already holds exactly what package-lock.json pins;
    returns what went wrong, if anything."""
    hidden_lock = NODE_MODULES / ".package-lock.json"
    if (
        _installed_version() == _pinned_version()
        and hidden_lock.is_file()
        and hidden_lock.stat().st_mtime >= (E2E / "package-lock.json").stat().st_mtime
        and (DIST / "standalone.js").is_file()
    ):
        return None
    try:
        done = subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"],
            cwd=E2E,
            capture_output=True,
            text=True,
            timeout=300,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`npm ci` in tests/e2e failed: {exc}"
    if done.returncode != 0 or not (DIST / "standalone.js").is_file():
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return f"`npm ci` in tests/e2e failed (exit {done.returncode}): {' | '.join(tail)}"
    return None


@functools.cache
def prerequisites() -> str | None:
    """What the journeys lack, or None once everything is there (analytics.js installed)."""
    missing = []
    if not os.access(CHROMIUM, os.X_OK):
        missing.append(f"no browser at {CHROMIUM}")
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        missing.append("no playwright Python package")
    if shutil.which("npm") is None:
        missing.append("no npm")
    if missing:
        return ", ".join(missing)
    return _npm_ci()


def skip_unless_ready() -> None:
    """Called when a journey module is imported: without the prerequisites, skip the module
    with one summary line. Under ``CI=true`` the journeys run and fail (``analytics_dist``)."""
    problem = prerequisites()
    if problem is not None and os.environ.get("CI") != "true":
        pytest.skip(f"e2e: {problem}; {INSTALL_HINT}; skipped", allow_module_level=True)


@pytest.fixture(scope="session")
def analytics_dist() -> Path:
    """The analytics-next UMD build directory, once every prerequisite is there."""
    problem = prerequisites()
    if problem is not None:
        unavailable(problem)
    return DIST


async def _serve(app: web.Application, runners: list[web.AppRunner]) -> int:
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    runners.append(runner)
    return int(runner.addresses[0][1])


@dataclass
class Sites:
    """The upstreams and the third party, with what each of them received."""

    origins: Origins
    upstreams: dict[str, str]  # host -> http://127.0.0.1:port
    seen: dict[str, Recorder] = field(default_factory=dict)

    def reset(self) -> None:
        for recorder in self.seen.values():
            recorder.requests.clear()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def stand_in(analytics_dist: Path) -> AsyncIterator[StandIn]:
    runners: list[web.AppRunner] = []
    stand_in = StandIn(dist=analytics_dist, write_key=WRITE_KEY)
    port = await _serve(stand_in_app(stand_in), runners)
    stand_in.origin = f"http://{HOST_CDN}:{port}"
    yield stand_in
    for runner in runners:
        await runner.cleanup()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def sites(analytics_dist: Path) -> AsyncIterator[Sites]:
    runners: list[web.AppRunner] = []
    origins = Origins()
    seen = {host: Recorder() for host in (HOST_A, HOST_B, HOST_C, HOST_PSP)}
    upstreams = {}
    for host, factory in ((HOST_A, shop_a), (HOST_B, pay_b), (HOST_C, auth_c)):
        port = await _serve(factory(origins, seen[host]), runners)
        upstreams[host] = f"http://127.0.0.1:{port}"
    origins.psp_port = await _serve(psp_d(origins, seen[HOST_PSP]), runners)
    yield Sites(origins, upstreams, seen)
    for runner in runners:
        await runner.cleanup()


def gateway_config(sites: Sites, stand_in: StandIn) -> str:
    site_list = "\n".join(
        f"  - host: {host}\n    upstream: {upstream}" for host, upstream in sites.upstreams.items()
    )
    return textwrap.dedent(
        """\
            # Written by tests/e2e/conftest.py for the browser journeys.
            sites:
            {sites}
            cross_domains:
              - {a}
              - {b}
              - {c}
              - {psp}
            analytics:
              write_key: {key}
              cdn_url: {cdn}
            store:
              url: memory://
            """
    ).format(
        sites=site_list,
        a=HOST_A,
        b=HOST_B,
        c=HOST_C,
        psp=HOST_PSP,
        key=WRITE_KEY,
        cdn=stand_in.origin,
    )


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def gateway(
    sites: Sites, stand_in: StandIn, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[GatewayProcess]:
    path = tmp_path_factory.mktemp("e2e") / "domains.yaml"
    path.write_text(gateway_config(sites, stand_in))
    process = await asyncio.to_thread(spawn_gateway, path)
    sites.origins.gateway_port = process.port
    yield process
    await asyncio.to_thread(process.stop)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def browser(analytics_dist: Path) -> AsyncIterator[Browser]:
    from playwright.async_api import async_playwright

    headed = os.environ.get("E2E_HEADED", "") not in ("", "0")
    slow_mo = float(os.environ.get("E2E_SLOWMO", "0") or 0)
    async with async_playwright() as pw:
        try:
            browser = await pw.chromium.launch(
                executable_path=str(CHROMIUM),
                args=CHROMIUM_ARGS,
                headless=not headed,
                slow_mo=slow_mo,
                timeout=30_000,
            )
        except Exception as exc:
            reason = f"could not start {CHROMIUM}: {str(exc).splitlines()[0]}"
            if headed:
                pytest.fail(
                    f"e2e: {reason}; E2E_HEADED=1 needs a display (DISPLAY) or xvfb-run -a",
                    pytrace=False,
                )
            unavailable(reason)
        yield browser
        await browser.close()


@dataclass
class Journey:
    """One visitor's browser session (a fresh profile) and everything the checks need."""

    context: BrowserContext
    page: Page
    origins: Origins
    stand_in: StandIn
    sites: Sites
    gateway: GatewayProcess
    console_errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)

    async def goto(self, url: str) -> None:
        await self.page.goto(url, wait_until="load")

    async def follow(self, selector: str) -> list[Hop]:
        """Click a link or button, wait for the page it leads to, and return the requests
        that got there (redirects first, the final page last)."""
        async with self.page.expect_navigation(wait_until="load") as navigation:
            await self.page.click(selector)
        return await hops(await navigation.value)

    async def cookie_check(self, origin: str, aid: str) -> None:
        """Exactly one ``ajs_anonymous_id`` reaches ``origin``, on its registrable domain,
        holding ``aid``."""
        host = urlsplit(origin).hostname or ""
        found = [c for c in await self.context.cookies(origin) if c["name"] == "ajs_anonymous_id"]
        assert len(found) == 1, f"expected one ajs_anonymous_id cookie for {origin}: {found}"
        domain = "." + host.split(".", 1)[1]
        assert found[0]["domain"] == domain, f"cookie scoped to {found[0]['domain']}, not {domain}"
        assert await self.cookie_id(origin) == aid, f"cookie for {origin}: {found[0]}"

    async def analytics_id(self) -> str:
        """The anonymousId analytics.js reports on this page, once it is ready."""
        await self.page.evaluate(
            "() => new Promise(resolve => window.analytics.ready(() => resolve(true)))"
        )
        # ready() may fire just before the standalone build swaps window.analytics from the
        # queue to the library instance.
        await self.page.wait_for_function(
            "() => window.analytics && window.analytics.initialized"
            " && typeof window.analytics.user === 'function'"
        )
        value = await self.page.evaluate("analytics.user().anonymousId()")
        assert isinstance(value, str), f"analytics.js reports no anonymousId on {self.page.url}"
        return value

    async def arrived(self, host: str) -> str:
        """Checks on arrival at a page on ``host``: the address bar is clean, analytics.js is
        ready, and its page() call reached the stand-in (so leaving cannot cancel it).
        Returns the id analytics.js reports."""
        url = urlsplit(self.page.url)
        assert url.hostname == host, f"expected to be on {host}, the browser is at {url}"
        assert_clean(self.page.url)
        aid = await self.analytics_id()
        await self.stand_in.wait_for(host, "page")
        return aid

    async def cookie_id(self, origin: str) -> str | None:
        """The ``ajs_anonymous_id`` cookie the browser would send to ``origin``, decoded as
        analytics.js and the gateway read it (plain, or JSON-quoted and URL-encoded)."""
        for cookie in await self.context.cookies(origin):
            if cookie["name"] == "ajs_anonymous_id":
                value = unquote(cookie["value"])
                if len(value) >= 2 and value[0] == value[-1] == '"':
                    value = json.loads(value)
                return value
        return None

    async def local_storage_id(self) -> Any:
        raw = await self.page.evaluate("localStorage.getItem('ajs_anonymous_id')")
        return None if raw is None else json.loads(raw)

    def assert_one_id(self, aid: str, hosts: set[str]) -> None:
        """The stand-in got events from every host in ``hosts``, and all events carry ``aid``."""
        events = self.stand_in.events
        by_host: dict[str, set[str | None]] = {}
        for event in events:
            by_host.setdefault(event.host, set()).add(event.anonymous_id)
        assert hosts <= by_host.keys(), f"no events from {hosts - by_host.keys()}: {by_host}"
        others = {host: ids for host, ids in by_host.items() if ids != {aid}}
        assert not others, f"events with ids other than {aid!r}: {others}"

    def assert_healthy(self) -> None:
        """No dialogs, no console errors or uncaught exceptions, nothing the stand-in could
        not serve, no rewrite failures in the gateway's log."""
        assert not self.dialogs, f"dialogs opened: {self.dialogs}"
        assert not self.console_errors, f"console errors: {self.console_errors}"
        assert not self.stand_in.misses, f"stand-in could not answer: {self.stand_in.misses}"
        failures = self.gateway.events("rewrite_failed") + self.gateway.events("upstream_error")
        assert not failures, f"gateway log: {failures}"


@dataclass(frozen=True)
class Hop:
    """One request of a navigation, as the browser made it."""

    method: str
    url: str
    status: int | None
    location: str | None


async def hops(response: Response | None) -> list[Hop]:
    """The redirect chain that ended in ``response``, first request first."""
    chain: list[Hop] = []
    request = response.request if response is not None else None
    while request is not None:
        answer = await request.response()
        status = answer.status if answer is not None else None
        location = await answer.header_value("location") if answer is not None else None
        chain.append(Hop(request.method, request.url, status, location))
        request = request.redirected_from
    return chain[::-1]


def query_of(url: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))


def assert_clean(url: str) -> None:
    """No identity parameter is left in the address bar."""
    names = {name for name, _ in parse_qsl(urlsplit(url).query, keep_blank_values=True)}
    assert not names & IDENTITY_PARAMS, f"identity parameters left in the address bar: {url}"


@pytest_asyncio.fixture(loop_scope="session")
async def journey(
    browser: Browser, gateway: GatewayProcess, sites: Sites, stand_in: StandIn
) -> AsyncIterator[Journey]:
    stand_in.reset()
    sites.reset()
    gateway.read_available()
    gateway.lines.clear()
    context = await browser.new_context()
    context.set_default_timeout(TIMEOUT_MS)
    context.set_default_navigation_timeout(TIMEOUT_MS)
    page = await context.new_page()
    journey = Journey(context, page, sites.origins, stand_in, sites, gateway)

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            journey.console_errors.append(f"{message.text} at {message.location.get('url')}")

    def on_page_error(error: Exception) -> None:
        journey.console_errors.append(f"uncaught: {error}")

    async def on_dialog(dialog: Dialog) -> None:
        journey.dialogs.append(f"{dialog.type}: {dialog.message}")
        await dialog.dismiss()

    page.on("console", on_console)
    page.on("pageerror", on_page_error)
    page.on("dialog", on_dialog)
    yield journey
    await context.close()
    # The gateway logs one line per request to a pipe: read it so the pipe never fills.
    gateway.read_available()
