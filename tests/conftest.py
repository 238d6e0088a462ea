"""Shared fixtures: real aiohttp upstreams on loopback, the gateway in-process or as a real
subprocess, and a private redis-server."""

from __future__ import annotations

import contextlib
import gzip
import importlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp
import brotli
import pytest
from aiohttp import web

from gateway.app import Gateway, Overrides
from gateway.config import parse_config
from gateway.html import _scan as html_scan
from gateway.html import rewriter as html_rewriter
from gateway.html._impl import NO_EXTENSIONS_ENV

if sys.version_info >= (3, 14):
    from compression import zstd
else:
    from backports import zstd

REPO = Path(__file__).resolve().parent.parent
# The vendored corpus (tests/corpus/README.md); GATEWAY_CORPUS points at a larger one.
CORPUS = Path(os.environ.get("GATEWAY_CORPUS") or REPO / "tests" / "corpus" / "pages")

StartUpstream = Callable[[web.Application], Awaitable[str]]


# -- The rewriter's two scanners ---------------------------------------------------------


def compiled_scanner() -> ModuleType:
    """gateway.html._speedups, or skip the test (module) that needs it, saying why: it was not
    built (no compiler at install time; under CI=true that fails instead, so that CI cannot
    pass without testing it), or GATEWAY_NO_EXTENSIONS asks for the pure path."""
    if os.environ.get(NO_EXTENSIONS_ENV):
        pytest.skip(f"{NO_EXTENSIONS_ENV} is set", allow_module_level=True)
    try:
        return importlib.import_module("gateway.html._speedups")
    except ImportError as error:
        message = (
            f"the compiled scanner is not built ({error}): install gcc and the Python headers "
            "(Debian: gcc python3-dev) and reinstall (pip install -e .)"
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message, allow_module_level=True)


# With GATEWAY_NO_EXTENSIONS set (`make test`'s second pass) only the pure-Python scanner.
@pytest.fixture(
    scope="module",
    params=["python"] if os.environ.get(NO_EXTENSIONS_ENV) else ["compiled", "python"],
)
def scanner_implementation(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run a test module's tests once with each scanner (the compiled one is skipped, saying
    why, when it is not built). Module-scoped, so hypothesis tests may use it."""
    if request.param == "compiled":
        factory = compiled_scanner().Scanner
    else:
        factory = html_scan.Scanner
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(html_rewriter, "Scanner", factory)
        yield request.param


# Each content coding's one-shot functions, from the libraries themselves.
COMPRESS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.compress,
    "deflate": zlib.compress,
    "br": brotli.compress,
    "zstd": zstd.compress,
}
DECOMPRESS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.decompress,
    "deflate": zlib.decompress,
    "br": brotli.decompress,
    "zstd": zstd.decompress,
}


def bomb(coding: str, size: int) -> bytes:
    """``size`` bytes of spaces compressed in ``coding``: a decompression bomb, built 1 MiB at
    a time with a streaming compressor so that the decompressed text never exists here."""
    block = b" " * (1 << 20)
    if coding == "br":
        br = brotli.Compressor(quality=5)
        out = [br.process(block) for _ in range(size >> 20)]
        return b"".join(out) + br.finish()
    if coding == "zstd":
        zs = zstd.ZstdCompressor()
        out = [zs.compress(block) for _ in range(size >> 20)]
        return b"".join(out) + zs.flush()
    wbits = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}[coding]
    zl = zlib.compressobj(9, zlib.DEFLATED, wbits)
    out = [zl.compress(block) for _ in range(size >> 20)]
    return b"".join(out) + zl.flush()


@contextlib.contextmanager
def refused_port() -> Iterator[int]:
    """A loopback port that refuses connections for as long as the block runs: bound, never
    listening, so nothing else can take it meanwhile (as it could a port picked and closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield int(s.getsockname()[1])


@pytest.fixture
async def start_upstream() -> AsyncIterator[StartUpstream]:
    """Start an aiohttp application on a free loopback port; returns its origin URL."""
    runners: list[web.AppRunner] = []

    async def start(app: web.Application) -> str:
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        return f"http://127.0.0.1:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


@dataclass
class RunningGateway:
    gateway: Gateway
    session: aiohttp.ClientSession
    log: list[dict[str, Any]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.gateway.bound_port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway.bound_admin_port}"

    def request(self, method: str, path: str, host: str = "www.example.com", **kwargs: Any) -> Any:
        headers = {"Host": host, **kwargs.pop("headers", {})}
        return self.session.request(
            method, self.url + path, headers=headers, allow_redirects=False, **kwargs
        )


class _LogSink:
    """Collects the gateway's JSON log lines (what it would print on stdout)."""

    def __init__(self, lines: list[dict[str, Any]]) -> None:
        self.lines = lines

    def write(self, text: str) -> int:
        for line in text.splitlines():
            if line.strip():
                self.lines.append(json.loads(line))
        return len(text)

    def flush(self) -> None:
        pass


StartGateway = Callable[..., Awaitable[RunningGateway]]


@pytest.fixture
async def start_gateway() -> AsyncIterator[StartGateway]:
    """Start the gateway in-process from YAML text on free ports."""
    started: list[RunningGateway] = []

    async def start(
        yaml_text: str, env: dict[str, str] | None = None, admin: str = ""
    ) -> RunningGateway:
        """``admin``: more keys of the admin section (``token: ...``)."""
        text = textwrap.dedent(yaml_text)
        more = f", {admin}" if admin else ""
        text += (
            f"\nserver: {{host: 127.0.0.1, port: 0}}\nadmin: {{host: 127.0.0.1, port: 0{more}}}\n"
        )
        config = parse_config(text, "test.yaml", env or {})
        gateway = Gateway(config, "test.yaml", Overrides())
        running = RunningGateway(
            gateway,
            aiohttp.ClientSession(auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar()),
        )
        gateway.state.log = _LogSink(running.log)  # type: ignore[assignment]
        await gateway.start()
        started.append(running)
        return running

    yield start
    for running in started:
        await running.session.close()
        await running.gateway.drain_and_close()


@dataclass
class GatewayProcess:
    """The gateway as a real process, started with the command line users run."""

    proc: subprocess.Popen[str]
    port: int
    admin_port: int
    lines: list[dict[str, Any]]

    def events(self, name: str) -> list[dict[str, Any]]:
        self.read_available()
        return [line for line in self.lines if line.get("event") == name]

    def read_available(self, timeout: float = 0.0) -> None:
        assert self.proc.stdout is not None
        os.set_blocking(self.proc.stdout.fileno(), False)
        deadline = time.monotonic() + timeout
        while True:
            line = self.proc.stdout.readline()
            if line:
                try:
                    self.lines.append(json.loads(line))
                except json.JSONDecodeError:
                    self.lines.append({"event": "text", "text": line})
                continue
            if time.monotonic() >= deadline:
                return
            time.sleep(0.02)

    def wait_for(self, event: str, timeout: float = 10.0, count: int = 1) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.events(event)
            if len(found) >= count:
                return found
            if self.proc.poll() is not None:
                self.read_available()
                break
            time.sleep(0.05)
        raise AssertionError(f"no {event!r} log line; got {self.lines[-5:]}")

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def spawn_gateway(
    config_path: Path, *extra: str, env: dict[str, str] | None = None
) -> GatewayProcess:
    cmd = [
        sys.executable,
        "-m",
        "gateway",
        "serve",
        "--config",
        str(config_path),
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--admin-host",
        "127.0.0.1",
        "--admin-port",
        "0",
        *extra,
    ]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )
    gp = GatewayProcess(proc, 0, 0, [])
    started = gp.wait_for("started", timeout=20)[0]
    gp.port = int(started["listen"].rsplit(":", 1)[1])
    gp.admin_port = int(started["admin"].rsplit(":", 1)[1])
    return gp


@pytest.fixture
def gateway_process() -> Iterator[Callable[..., GatewayProcess]]:
    procs: list[GatewayProcess] = []

    def start(config_path: Path, *extra: str, env: dict[str, str] | None = None) -> GatewayProcess:
        gp = spawn_gateway(config_path, *extra, env=env)
        procs.append(gp)
        return gp

    yield start
    for gp in procs:
        gp.stop()
