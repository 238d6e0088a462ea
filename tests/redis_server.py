"""A private, throw-away ``redis-server`` for tests, on a free loopback port (never 6379).

Tests get a :class:`RedisServer` from the ``redis_server`` fixture and may kill, stop, pause
and restart it (on the same port) to exercise the gateway's failure handling. Without
``redis-server`` on PATH the tests are skipped, or fail under ``CI=true`` so that CI cannot
silently stop testing Redis.

The port is picked before redis-server binds it, so something else may take it in between:
redis-server cannot be asked to choose one (its ``--port 0`` means "no TCP at all") nor be
handed a bound socket. So a first start that fails on a taken port is tried again on another,
and a server counts as up only once the process we started owns the listening socket (a
PING alone could be answered by whichever Redis took the port).
"""

from __future__ import annotations

import contextlib
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


def listens(pid: int, port: int) -> bool | None:
    """Whether process ``pid`` owns a socket listening on TCP ``port`` (IPv4); None where
    Linux's /proc cannot tell."""
    if not os.path.exists("/proc/net/tcp"):
        return None
    try:
        with open("/proc/net/tcp") as table:
            rows = [line.split() for line in table.readlines()[1:]]
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False  # the process has gone
    # Columns: sl, local address (hex ip:port), remote address, state (0A: LISTEN), ..., inode.
    inodes = {
        f"socket:[{row[9]}]"
        for row in rows
        if row[3] == "0A" and int(row[1].rsplit(":", 1)[1], 16) == port
    }
    for fd in fds:
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                return True
    return False


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

    @property
    def log(self) -> Path:
        """Where redis-server writes its log (every start on this port appends to it)."""
        return self.dir / f"redis-{self.port}.log"

    def start(self, timeout: float = 10.0, attempts: int = 5) -> None:
        """Start (or restart) and wait until it answers PING. A first start whose port was
        taken since it was picked moves to another (up to ``attempts`` times); a restart
        keeps its port, which clients already know."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("redis-server is already running")
        first = self.proc is None
        for attempt in range(1, attempts + 1):
            offset = self.log.stat().st_size if self.log.exists() else 0
            try:
                self._start_once(timeout)
                return
            except RuntimeError:
                with open(self.log, "rb") as log:
                    log.seek(offset)
                    taken = b"Address already in use" in log.read()
                if not (first and taken and attempt < attempts):
                    raise
                self.proc = None
                self.port = free_port()

    def _start_once(self, timeout: float) -> None:
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
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=self.dir)
        deadline = time.monotonic() + timeout
        while listens(self.proc.pid, self.port) is False or not ping(self.port):
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"redis-server exited with {self.proc.returncode} (log: {self.log}): {cmd}"
                )
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(
                    f"redis-server did not answer PING within {timeout} s (log: {self.log})"
                )
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
