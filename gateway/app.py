"""Builds the proxy and admin servers from a config and runs them: start-up, SIGHUP reload,
SIGTERM drain, and the pre-fork supervisor behind ``--workers N``."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import hashlib
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client.multiprocess import mark_process_dead

from . import html, status
from .admin import make_admin_app
from .circuit import State
from .config import Config, ConfigError, load_config
from .delivery import EventSender
from .logs import write_event
from .metrics import Metrics, gateway_version, implementation
from .options import Events
from .proxy import ProxyHandler, make_session, make_upstreams
from .responses import ProxyServer
from .state import ProxyState
from .store import CircuitBreakerStore, open_store


@dataclass(frozen=True)
class Overrides:
    """Command-line flags, which win over the file (and keep winning across reloads)."""

    host: str | None = None
    port: int | None = None
    admin_host: str | None = None
    admin_port: int | None = None
    workers: int | None = None

    def apply(self, config: Config) -> Config:
        s, a = config.server, config.admin
        server = dataclasses.replace(
            s,
            host=s.host if self.host is None else self.host,
            port=s.port if self.port is None else self.port,
            workers=s.workers if self.workers is None else self.workers,
        )
        admin = dataclasses.replace(
            a,
            host=a.host if self.admin_host is None else self.admin_host,
            port=a.port if self.admin_port is None else self.admin_port,
        )
        return dataclasses.replace(config, server=server, admin=admin)


def html_rewriter_fields() -> dict[str, str]:
    """The "started" line's word on the HTML rewriter: ``html_rewriter`` is "compiled" or
    "python", and on the pure-Python path ``html_rewriter_note`` says why and what it costs
    (a missing extension is a build without a C compiler, and easy to miss)."""
    fields: dict[str, str] = {"html_rewriter": html.IMPLEMENTATION}
    if html.PURE_PYTHON_REASON is not None:
        fields["html_rewriter_note"] = (
            f"HTML is rewritten by the pure-Python scanner, several times slower than the "
            f"compiled one: {html.PURE_PYTHON_REASON}. To build it, install a C compiler and "
            f"the Python headers and reinstall the package (see the README)."
        )
    return fields


def log_line(event: str, **fields: Any) -> None:
    """A lifecycle event (start, reload, drain), flushed at once: operators watch for these."""
    write_event(sys.stdout, event, **fields)
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.flush()


def start_failed(error: str, **fields: Any) -> int:
    """Say in one line why the gateway does not start; the exit status to return."""
    log_line("start_failed", error=error, **fields)
    return 1


def config_failed(path: str, exc: ConfigError) -> int:
    """A config that does not load: every problem, each as check-config words it."""
    problems = [str(p) for p in exc.problems]
    count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
    return start_failed(
        f"cannot load the config {path} ({count}; `check-config {path}` lists them too)",
        config=path,
        problems=problems,
    )


class Gateway:
    """One serving process: the proxy listener, the admin listener and their shared state."""

    def __init__(
        self,
        config: Config,
        config_path: str,
        overrides: Overrides,
        *,
        reports_reloads: bool = True,
    ) -> None:
        """``reports_reloads``: this process records config reloads in the metrics (with
        ``--workers N`` only worker 0 does, so that one reload counts once)."""
        self.config_path = config_path
        self.overrides = overrides
        self.metrics = Metrics.create(reports_reloads=reports_reloads)
        self.state = ProxyState(
            config=config,
            session=make_session(config),
            upstreams=make_upstreams(config),
            metrics=self.metrics,
            store=self.make_store(config),
            events=EventSender(_events(config), self.metrics, self.log_event),
        )
        self._handler = ProxyHandler(self.state)
        # Tasks that close what a reload replaced, kept so that they are not collected.
        self._closing: set[asyncio.Future[None]] = set()
        self._runners: list[web.BaseRunner] = []
        self._proxy_sites: list[web.TCPSite] = []
        self._stop = asyncio.Event()
        self.bound_port: int | None = None
        self.bound_admin_port: int | None = None
        now = time.time()
        self.config_version = config_version(config_path, now)
        self.metrics.config_loaded(now)
        self.metrics.prepare(*_metric_labels(config))
        self.metrics.store_circuit(self.state.store.name, False)

    def make_store(self, config: Config) -> CircuitBreakerStore:
        """The configured token store behind its circuit breaker, whose changes are logged
        (one ``store_circuit`` line each) and set ``gateway_store_circuit_open``."""
        settings = config.store
        store = CircuitBreakerStore(
            open_store(
                settings.url, timeout_ms=settings.timeout_ms, key_prefix=settings.key_prefix
            ),
            failures=settings.circuit_failures,
            cooldown=settings.circuit_cooldown,
            watch=lambda state, error: self._circuit_changed(store, state, error),
        )
        return store

    def _circuit_changed(self, store: CircuitBreakerStore, state: State, error: str | None) -> None:
        # A store replaced by a reload may still finish calls: its changes are logged, but the
        # gauge speaks for the store in use.
        if self.state.store is store:
            self.metrics.store_circuit(store.name, state != "closed")
        fields: dict[str, Any] = {"state": state, "store": store.name}
        if state == "open":
            breaker = store.breaker
            fields.update(failures=breaker.threshold, cooldown=breaker.cooldown, error=error)
        log = self.state.log
        write_event(log, "store_circuit", "warning" if state == "open" else "info", **fields)
        with contextlib.suppress(OSError, ValueError):
            log.flush()

    def log_event(self, event: str, **fields: Any) -> None:
        """A log line from a part that runs beside the requests (the event sender)."""
        write_event(self.state.log, event, **fields)

    async def store_health(self) -> dict[str, Any]:
        health = await self.state.store.health()
        if health.get("state") != "up":
            self.metrics.store_errors.labels("health").inc()
        return health

    async def status_page(self) -> str:
        """The admin status page (gateway/status.py) from this gateway's metrics."""
        config = self.state.config
        snap = status.snapshot(
            self.metrics.registry.collect(),
            sites=[site.host for site in config.sites],
            modes={site.host: site.mode for site in config.sites},
            config=self.config_version,
            store=await self.store_health(),
            build={
                "version": gateway_version(),
                "python": platform.python_version(),
                "implementation": implementation(),
            },
            pid=os.getpid(),
            workers=config.server.workers,
        )
        return status.render(snap)

    async def start(self, reuse_port: bool = False) -> None:
        config = self.state.config
        server = ProxyServer(
            self._handler,
            access_log=None,
            max_field_size=config.proxy.max_header_size,
            # aiohttp closes a connection whose next request has not fully arrived by then:
            # idle keep-alive connections, and request heads dribbled in (slowloris).
            keepalive_timeout=config.proxy.client_idle_timeout,
            handler_cancellation=False,
        )
        runner = web.ServerRunner(server, shutdown_timeout=1.0, handle_signals=False)
        await runner.setup()
        self._runners.append(runner)
        self.state.events.start()
        site = web.TCPSite(
            runner, config.server.host, config.server.port, reuse_port=reuse_port, backlog=2048
        )
        await _listen(site, "proxy", config.server.host, config.server.port, "--port, server.port")
        self._proxy_sites.append(site)
        self.bound_port = _bound_port(runner)
        admin = web.AppRunner(
            make_admin_app(self.state, self.store_health, self.status_page),
            access_log=None,
            handle_signals=False,
        )
        await admin.setup()
        self._runners.append(admin)
        admin_site = web.TCPSite(admin, config.admin.host, config.admin.port, reuse_port=reuse_port)
        await _listen(
            admin_site,
            "admin port",
            config.admin.host,
            config.admin.port,
            "--admin-port, admin.port",
        )
        self.bound_admin_port = _bound_port(admin)
        log_line(
            "started",
            pid=os.getpid(),
            listen=f"{config.server.host}:{self.bound_port}",
            admin=f"{config.admin.host}:{self.bound_admin_port}",
            sites=[s.host for s in config.sites],
            **html_rewriter_fields(),
        )
        _log_warnings(config)

    def reload(self) -> bool:
        """Re-read the config file; on any problem keep the running config."""
        try:
            new = self.overrides.apply(
                load_config(self.config_path, workers=self.overrides.workers)
            )
        except ConfigError as exc:
            self.metrics.config_reloaded(False, time.time())
            log_line("reload_failed", problems=[str(p) for p in exc.problems])
            return False
        old = self.state.config
        if _listeners(new) != _listeners(old):
            log_line("reload_note", message="listener changes need a restart; kept the old ones")
            # admin.token is not a listener setting: a new one applies at once.
            admin = dataclasses.replace(old.admin, token=new.admin.token)
            new = dataclasses.replace(new, server=old.server, admin=admin)
        if new.store != old.store:
            old_store = self.state.store
            self.state.store = self.make_store(new)
            self.metrics.store_circuit(self.state.store.name, False)
            asyncio.get_running_loop().call_later(
                new.proxy.drain_timeout + 1.0, lambda: asyncio.ensure_future(old_store.close())
            )
        if new.proxy != old.proxy:
            old_session = self.state.session
            old_upstreams = self.state.upstreams
            self.state.session = make_session(new)
            self.state.upstreams = make_upstreams(new)
            # Requests in flight keep the old pool until they finish.

            async def close_old() -> None:
                await old_session.close()
                await old_upstreams.close()

            asyncio.get_running_loop().call_later(
                new.proxy.drain_timeout + 1.0, lambda: asyncio.ensure_future(close_old())
            )
        if _events(new) != _events(old):
            # Queued events go out with the settings they were queued under.
            old_events = self.state.events
            self.state.events = EventSender(_events(new), self.metrics, self.log_event)
            self.state.events.start()
            closing = asyncio.ensure_future(
                old_events.close(time.monotonic() + new.proxy.drain_timeout)
            )
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)
        self.state.reconfigure(new)
        self.metrics.prepare(*_metric_labels(new))
        now = time.time()
        self.config_version = config_version(self.config_path, now)
        self.metrics.config_reloaded(True, now)
        log_line("reloaded", summary=new.summary())
        _log_warnings(new)
        return True

    def request_stop(self) -> None:
        self._stop.set()

    async def wait_stopped(self) -> None:
        await self._stop.wait()

    async def drain_and_close(self) -> None:
        """Stop accepting, let in-flight requests finish within the grace period, then close.

        Open WebSockets are closed at once with 1001 Going Away on both sides. Unlike a
        request, a WebSocket does not finish by itself: waiting for it would only hold the
        drain to its deadline and then cut it without a close frame, while a 1001 now tells
        both peers to reconnect, to a gateway that is not stopping. Hand-off events are sent
        at once from the start of the drain, and whatever is still queued when the requests
        are done is flushed within the same deadline."""
        self.state.draining = True
        self.state.events.drain()
        for site in self._proxy_sites:
            await site.stop()
        for relay in list(self.state.relays):
            relay.going_away()
        deadline = time.monotonic() + self.state.config.proxy.drain_timeout
        while self.state.in_flight > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        log_line("drained", in_flight_left=self.state.in_flight)
        await self.state.events.close(deadline)
        if self._closing:
            # Senders a reload replaced get the same deadline.
            await asyncio.wait(self._closing, timeout=max(0.0, deadline - time.monotonic()))
        await self.close()

    async def close(self) -> None:
        """Close the listeners and every client (also after a failed start)."""
        for runner in self._runners:
            await runner.cleanup()
        self._handler.flush_log()
        # After a drain the event sender is closed already; after a failed start, nothing
        # was served, so nothing waits to be sent.
        await self.state.events.close(time.monotonic())
        await self.state.session.close()
        await self.state.upstreams.close()
        await self.state.close_relay()
        await self.state.store.close()


def _log_warnings(config: Config) -> None:
    """Settings that are valid but weaken something (``tls.verify: false``), one line each:
    check-config prints them, but a deployment may never run it."""
    for warning in config.warnings:
        log_line("config_warning", path=warning.path, message=warning.message)


class StartError(OSError):
    """A listener cannot be opened; the message says which, why and what to change. (An
    OSError, as the failure it words, for callers that catch that: the demo.)"""


async def _listen(site: web.TCPSite, role: str, host: str, port: int, setting: str) -> None:
    try:
        await site.start()
    except OSError as exc:
        # create_server's own message repeats the address in Python's tuple form: name the
        # cause alone (EADDRINUSE: "Address already in use"), or a resolver's answer.
        if exc.errno and exc.errno > 0:
            reason = f"{os.strerror(exc.errno)} ({errno.errorcode.get(exc.errno, exc.errno)})"
        else:
            reason = exc.strerror or str(exc)
        raise StartError(
            f"the {role} cannot listen on {host}:{port}: {reason}; stop what holds it or "
            f"choose another ({setting})"
        ) from exc


def config_version(path: str, loaded_at: float) -> status.ConfigVersion:
    """Which config file serves: its SHA-256 (what ``sha256sum`` prints), read just after the
    file was loaded (a write in between would show the newer file's digest until the next
    reload), or None if it cannot be read."""
    try:
        with open(path, "rb") as file:
            digest: str | None = hashlib.file_digest(file, "sha256").hexdigest()
    except OSError:
        digest = None
    return status.ConfigVersion(path=path, sha256=digest, loaded_at=loaded_at)


def _metric_labels(config: Config) -> tuple[list[str], list[str], list[str]]:
    """The site hosts, the cross-domain patterns and the observed sites, for
    Metrics.prepare."""
    return (
        [s.host for s in config.sites],
        [c.host for c in config.cross_domains],
        [s.host for s in config.sites if s.mode == "observe"],
    )


def _listeners(config: Config) -> tuple[object, ...]:
    return (config.server, config.admin.host, config.admin.port)


def _bound_port(runner: web.BaseRunner) -> int | None:
    for addr in runner.addresses:
        if isinstance(addr, tuple) and len(addr) >= 2:
            return int(addr[1])
    return None


async def serve(
    config: Config,
    config_path: str,
    overrides: Overrides,
    reuse_port: bool,
    worker_index: int | None = None,
) -> int:
    gateway = Gateway(config, config_path, overrides, reports_reloads=not worker_index)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, gateway.request_stop)
    loop.add_signal_handler(signal.SIGINT, gateway.request_stop)
    loop.add_signal_handler(signal.SIGHUP, gateway.reload)
    try:
        await gateway.start(reuse_port=reuse_port)
    except StartError as exc:
        await gateway.close()
        return start_failed(str(exc), pid=os.getpid())
    await gateway.wait_stopped()
    log_line("stopping", pid=os.getpid())
    await gateway.drain_and_close()
    log_line("stopped", pid=os.getpid())
    return 0


def run_process(
    config_path: str,
    overrides: Overrides,
    reuse_port: bool = False,
    worker_index: int | None = None,
) -> int:
    """Serve in this process (one worker) on uvloop when it is installed; ``worker_index``:
    its place among a supervisor's workers (None: there is no supervisor)."""
    try:
        config = overrides.apply(load_config(config_path, workers=overrides.workers))
    except ConfigError as exc:
        return config_failed(config_path, exc)
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(serve(config, config_path, overrides, reuse_port, worker_index))


def supervise(config_path: str, overrides: Overrides, workers: int, argv: Sequence[str]) -> int:
    """Pre-fork: N worker processes share the listening ports with SO_REUSEPORT, the kernel
    spreads connections across them; signals are passed on, dead workers are replaced."""
    try:
        config = overrides.apply(load_config(config_path, workers=workers))
    except ConfigError as exc:
        return config_failed(config_path, exc)
    # Port 0 (any free port) must be one port for every worker: it is chosen here, once, and
    # held for the supervisor's life (bound with SO_REUSEPORT, never listening, so it takes no
    # connections) so that nothing else can take it before a worker, or a replacement, binds.
    held: list[socket.socket] = []
    chosen: list[str] = []
    for flag, host, port in (
        ("--port", config.server.host, config.server.port),
        ("--admin-port", config.admin.host, config.admin.port),
    ):
        if port == 0:
            held.append(_hold_free_port(host))
            chosen += [flag, str(held[-1].getsockname()[1])]
    metrics_dir = tempfile.mkdtemp(prefix="gateway-metrics-")
    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=metrics_dir)
    # Each worker is told how many there are (--reuse-port keeps it from supervising in
    # turn), so that its reloads are checked for what is safe with N processes, and its index:
    # worker 0, and its replacements, record the config reloads that all of them perform. A
    # flag given twice takes its last value: the chosen ports win over a --port 0 in argv.
    cmd = [
        sys.executable,
        "-m",
        "gateway",
        *argv,
        *chosen,
        "--workers",
        str(workers),
        "--reuse-port",
    ]

    def spawn(index: int) -> subprocess.Popen[bytes]:
        return subprocess.Popen([*cmd, "--worker-index", str(index)], env=env)

    procs = [spawn(i) for i in range(workers)]
    started = [time.monotonic()] * workers
    # When each dead worker's replacement is due (None: alive, or not yet seen dead).
    due: list[float | None] = [None] * workers
    restarts = Restarts()
    stopping = gave_up = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        if signum in (signal.SIGTERM, signal.SIGINT):
            stopping = True
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    try:
        while True:
            alive = [p for p in procs if p.poll() is None]
            if stopping and not alive:
                break
            now = time.monotonic()
            for i, proc in enumerate(procs):
                if stopping or proc.poll() is None:
                    continue
                when = due[i]
                if when is None:
                    # Its live gauges (in-flight requests, reload success, circuit state)
                    # no longer describe anything.
                    mark_process_dead(proc.pid, metrics_dir)  # type: ignore[no-untyped-call]
                    delay = restarts.died(i, started[i], now)
                    if delay is None:
                        log_line(
                            "supervisor_gave_up",
                            error=f"worker {i} exited {restarts.give_up_after} times in a row "
                            f"within {restarts.fast:g} s of its start (last exit status "
                            f"{proc.returncode}); its own lines above say why. Stopping "
                            "the other workers and exiting 1",
                            pid=os.getpid(),
                        )
                        gave_up = True
                        forward(signal.SIGTERM, None)
                        break
                    log_line(
                        "worker_restarted",
                        pid=proc.pid,
                        exit_code=proc.returncode,
                        restart_in=delay,
                    )
                    due[i] = now + delay
                elif now >= when:
                    procs[i] = spawn(i)
                    started[i], due[i] = now, None
            time.sleep(0.2)
    finally:
        for sock in held:
            sock.close()
        for path in os.listdir(metrics_dir):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(metrics_dir, path))
        with contextlib.suppress(OSError):
            os.rmdir(metrics_dir)
    return 1 if gave_up or any(p.returncode != 0 for p in procs) else 0


@dataclass
class Restarts:
    """When the supervisor replaces a worker that died, and when it stops trying.

    A worker that dies within ``fast`` seconds of its start crashed fast: each fast crash in
    a row doubles the wait before the next start (from ``first_delay``, at most
    ``max_delay``), and ``give_up_after`` of them in a row end the supervisor. What kills a
    worker that soon (a port taken, a config that no longer loads) is not cured by trying
    again for ever, and whatever runs the gateway (systemd, Kubernetes) should see it fail. A
    worker that lived longer starts its slot's count afresh. Pure: the clock is passed in.
    """

    fast: float = 10.0
    first_delay: float = 0.5
    max_delay: float = 8.0
    give_up_after: int = 5
    _streaks: dict[int, int] = dataclasses.field(default_factory=dict)

    def died(self, slot: int, started_at: float, now: float) -> float | None:
        """The wait before slot ``slot`` gets a new worker, or None: give up."""
        if now - started_at >= self.fast:
            self._streaks[slot] = 0
            return self.first_delay
        streak = self._streaks[slot] = self._streaks.get(slot, 0) + 1
        if streak >= self.give_up_after:
            return None
        return min(self.first_delay * (1 << (streak - 1)), self.max_delay)


def _hold_free_port(host: str) -> socket.socket:
    """A socket bound to a free port on ``host`` (its first address) that workers binding
    with SO_REUSEPORT can share."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    return sock


def _events(config: Config) -> Events:
    """The event settings with their endpoint resolved: by default events go where
    analytics.js's own do (``analytics.api_url``), so one key names Segment's tracking API."""
    if config.events.endpoint is not None:
        return config.events
    return dataclasses.replace(config.events, endpoint=config.analytics.api_url)
