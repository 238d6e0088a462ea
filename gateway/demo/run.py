"""``python -m gateway demo``: the demo sites (behind the gateway, and again without it), the
gateway, and a stand-in for Segment with the demo's start and results pages, all on loopback,
until Ctrl-C."""

from __future__ import annotations

import asyncio
import errno
import signal
import socket
import sys
from dataclasses import dataclass
from urllib.parse import urlsplit

from aiohttp import web

from ..app import Gateway, Overrides
from ..config import Config, ConfigError, load_config
from .pages import Guide
from .results import Walk
from .segment import LibraryMissing, StandIn, find_library, stand_in_app
from .sites import (
    BEHIND_GATEWAY,
    CHECKOUT_DIRECT_HOST,
    CHECKOUT_HOST,
    SHOP_DIRECT_HOST,
    SHOP_HOST,
    Variant,
    checkout_app,
    direct_variant,
    shop_app,
)

WALKS = (
    Walk("without-gateway", "Without the gateway", (SHOP_DIRECT_HOST, CHECKOUT_DIRECT_HOST)),
    Walk("with-gateway", "Through the gateway", (SHOP_HOST, CHECKOUT_HOST)),
)


class DemoError(Exception):
    """Something a person can fix, said in one line."""


@dataclass(frozen=True)
class Listener:
    """One address the demo listens on, and what for."""

    role: str  # "the gateway", "the shop without the gateway", ...
    host: str
    port: int
    hint: str  # where to choose another port


def _loopback(host: str) -> str:
    """Bind ``localhost`` names to the IPv4 loopback address, the one the gateway forwards to."""
    return "127.0.0.1" if host == "localhost" or host.endswith(".localhost") else host


def _bind(listener: Listener) -> socket.socket:
    family = socket.AF_INET6 if ":" in listener.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((listener.host, listener.port))
    except OSError:
        sock.close()
        raise
    return sock


def _clash(listener: Listener, exc: OSError) -> str:
    in_use = exc.errno == errno.EADDRINUSE
    reason = "is already in use" if in_use else f"cannot be used ({exc.strerror})"
    return (
        f"port {listener.port} ({listener.role}) on {listener.host} {reason}; stop what uses it "
        f"or choose another {listener.hint}"
    )


def _bind_all(probes: list[Listener], listeners: list[Listener]) -> list[socket.socket]:
    """Bind every listener up front, so that a port clash is one line naming every busy port,
    before anything started. ``probes`` are bound and released at once (the gateway binds its
    own); the sockets of ``listeners`` are returned, in order, to serve on."""
    sockets: list[socket.socket] = []
    problems = []
    for listener, keep in [(p, False) for p in probes] + [(x, True) for x in listeners]:
        try:
            sock = _bind(listener)
        except OSError as exc:
            problems.append(_clash(listener, exc))
            continue
        if keep:
            sockets.append(sock)
        else:
            sock.close()
    if problems:
        for sock in sockets:
            sock.close()
        raise DemoError("; ".join(problems))
    return sockets


def _upstream(config: Config, host: str, config_path: str) -> tuple[str, int]:
    for site in config.sites:
        if site.host == host:
            parts = urlsplit(site.upstream)
            return parts.hostname or "127.0.0.1", parts.port or 80
    raise DemoError(f"{config_path}: the demo needs a site with host {host}")


async def _serve(app: web.Application, sock: socket.socket) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    return runner


def _port(sock: socket.socket) -> int:
    return int(sock.getsockname()[1])


async def _main(config_path: str, library_choice: str, direct_ports: tuple[int, int]) -> int:
    config = load_config(config_path)
    if not config.analytics.write_key:
        raise DemoError(f"{config_path}: analytics.write_key is needed: the demo shows analytics")
    library = find_library(library_choice)
    shop_up = _upstream(config, SHOP_HOST, config_path)
    checkout_up = _upstream(config, CHECKOUT_HOST, config_path)
    cdn = urlsplit(config.analytics.cdn_url)
    in_config = f"in {config_path}"
    listeners = [
        Listener("the shop behind the gateway", *shop_up, in_config),
        Listener("the checkout behind the gateway", *checkout_up, in_config),
        Listener("the Segment stand-in", _loopback(cdn.hostname or ""), cdn.port or 80, in_config),
        Listener(
            "the shop without the gateway", "127.0.0.1", direct_ports[0], "with --direct-shop-port"
        ),
        Listener(
            "the checkout without the gateway",
            "127.0.0.1",
            direct_ports[1],
            "with --direct-checkout-port",
        ),
    ]
    gateway_listeners = [
        Listener("the gateway", config.server.host, config.server.port, in_config),
        Listener("the gateway's admin port", config.admin.host, config.admin.port, in_config),
    ]
    probes = [listener for listener in gateway_listeners if listener.port]
    shop_sock, checkout_sock, hub_sock, direct_shop_sock, direct_checkout_sock = _bind_all(
        probes, listeners
    )
    runners: list[web.AppRunner] = []
    gateway = Gateway(config, config_path, Overrides())
    try:
        try:
            await gateway.start()
        except OSError as exc:
            raise DemoError(f"the gateway cannot listen: {exc}") from None

        hub = config.analytics.cdn_url
        home, results = f"{hub}/", f"{hub}/results"
        behind = Variant(BEHIND_GATEWAY.label, home=home, results=results)
        direct_shop = f"http://{SHOP_DIRECT_HOST}:{_port(direct_shop_sock)}"
        direct_checkout = f"http://{CHECKOUT_DIRECT_HOST}:{_port(direct_checkout_sock)}"
        direct = direct_variant(
            direct_shop, direct_checkout, config.analytics.write_key, hub, home, results
        )
        with_gateway = f"http://{SHOP_HOST}:{gateway.bound_port}/"
        guide = Guide(
            with_gateway=with_gateway,
            without_gateway=f"{direct_shop}/",
            results=results,
            shop_host=SHOP_HOST,
            checkout_host=CHECKOUT_HOST,
            library=library.description,
        )
        for app, sock in (
            (shop_app(behind), shop_sock),
            (checkout_app(behind), checkout_sock),
            (stand_in_app(StandIn(library, guide, WALKS)), hub_sock),
            (shop_app(direct), direct_shop_sock),
            (checkout_app(direct), direct_checkout_sock),
        ):
            runners.append(await _serve(app, sock))

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, gateway.request_stop)
        loop.add_signal_handler(signal.SIGHUP, gateway.reload)
        print(
            f"""
Demo running on this machine only (loopback); nothing is sent to Segment.

    Start here:  {home}

Or go straight to:
    the shop through the gateway:   {with_gateway}
    the shop without the gateway:   {direct_shop}/
    what Segment received:          {results}

{library.description}
Gateway metrics: http://{config.admin.host}:{gateway.bound_admin_port}/metrics
Ctrl-C stops the demo.
""",
            flush=True,
        )
        await gateway.wait_stopped()
    finally:
        await gateway.drain_and_close()
        for runner in runners:
            await runner.cleanup()
        for sock in (shop_sock, checkout_sock, hub_sock, direct_shop_sock, direct_checkout_sock):
            sock.close()
    return 0


def run_demo(
    config_path: str, library: str = "auto", direct_ports: tuple[int, int] = (8011, 8012)
) -> int:
    """Run the demo until SIGINT or SIGTERM; a problem a person can fix is one line on stderr."""
    try:
        return asyncio.run(_main(config_path, library, direct_ports))
    except ConfigError as exc:
        print(exc, file=sys.stderr)
    except (DemoError, LibraryMissing) as exc:
        print(f"demo: {exc}", file=sys.stderr)
    except FileNotFoundError as exc:
        print(f"demo: {exc} (run the demo from the repository root)", file=sys.stderr)
    except KeyboardInterrupt:  # Ctrl-C before the demo was up
        return 130
    return 1
