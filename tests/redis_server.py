"""A private, throw-away ``redis-server`` for tests, on a free loopback port (never 6379).

Tests get a :class:`RedisServer` from the ``redis_server`` fixture and may kill, stop, pause
and restart it (on the same port) to exercise the gateway's failure handling. Without
``redis-server`` on PATH the tests are skipped, or fail under ``CI=true`` so that CI cannot
silently stop testing Redis.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

MISSING = "redis-server not found: apt-get install redis-server"


def free_port() -> int:
    """A loopback port nothing listens on right now, picked by the kernel; 6379 is refused so
    that no test can ever reach a shared Redis."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port != 6379:
            return port


def require_binary(name: str = "redis-server") -> str:
    """The path of ``name``, or skip (fail under ``CI=true``) with an actionable message."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(MISSING)
        pytest.skip(MISSING)
    return path


def ping(port: int, timeout: float = 0.2) -> bool:
    """Whether a Redis answers PING on ``port`` (plain socket: no client library involved);
    ``-NOAUTH`` counts, as it comes from a server that is up but wants a password."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


class RedisServer:
    """One ``redis-server`` process without persistence, restartable on its port.

    ``config_file`` goes first on the command line (``redis-server --sentinel`` needs a config
    file it can rewrite); ``extra`` arguments go last.
    """

    def __init__(
        self,
        binary: str,
        directory: Path,
        extra: tuple[str, ...] = (),
        config_file: Path | None = None,
    ) -> None:
        self.binary = binary
        self.dir = directory
        self.port = free_port()
        self.extra = extra
        self.config_file = config_file
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        """Start (or restart) on the same port and wait until it answers PING."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("redis-server is already running")
        cmd = [
            self.binary,
            *([str(self.config_file)] if self.config_file else []),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.dir),
            *self.extra,
        ]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.dir
        )
        deadline = time.monotonic() + timeout
        while not ping(self.port):
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}: {cmd}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"redis-server did not answer PING within {timeout} s")
            time.sleep(0.01)

    def kill(self) -> None:
        """SIGKILL: the crash case; clients see their sockets reset."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        """SIGTERM and wait: an orderly shutdown (falls back to SIGKILL)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()

    def pause(self) -> None:
        """SIGSTOP: the server keeps its sockets but answers nothing (a stalled Redis)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh redis-server for one test, killed afterwards (even if left paused)."""
    server = RedisServer(require_binary(), tmp_path)
    server.start()
    try:
        yield server
    finally:
        if server.proc is not None and server.proc.poll() is None:
            server.resume()
        server.kill()
