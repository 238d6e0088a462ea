"""JSON log lines on stdout: one object a line, each written whole (the stream is
line-buffered) so that lines from several worker processes sharing it never interleave.

Guarantees:

* Every line is one JSON object with ``time`` (RFC 3339, UTC, milliseconds:
  ``2026-11-29T20:31:02.123Z``), ``level`` (``info``, ``warning`` or ``error``) and ``event``.
* Nothing else reaches stdout or stderr once :func:`install` has run: Python's own logging
  (aiohttp, asyncio, warnings), uncaught exceptions and exceptions Python can only report
  ("Exception ignored in ...") become one line each, a traceback folded into one field.
* A malformed request is one ``bad_request`` line, never a traceback, and never the bytes the
  client sent: aiohttp's parser errors quote the raw request line or header, which can carry
  identity parameters and cookies.
* A closed or broken log stream never takes a request down with it.

:class:`Throttle` is the pure rate limit for repeated faults (the clock is passed in); the
glue that writes its lines is in responses.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import re
import sys
import time
import traceback
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, Literal, NamedTuple, TextIO, TypeVar

from aiohttp.http_exceptions import HttpProcessingError, InvalidURLError

Level = Literal["info", "warning", "error"]
K = TypeVar("K", bound=Hashable)

# The level of each event that is not "info", in one place: the callers name the event only.
EVENT_LEVELS: dict[str, Level] = {
    "upstream_error": "warning",
    "upstream_body_aborted": "warning",
    "html_skipped": "warning",
    "rewrite_failed": "error",
    "reload_failed": "error",
    "config_warning": "warning",
    "worker_restarted": "warning",
    "start_failed": "error",
    "supervisor_gave_up": "error",
    "crashed": "error",
    "events_rejected": "warning",
    "events_dropped": "warning",
    "events_error": "error",
}

# Long enough for any message meant for a person; bounded so that no line grows without end.
_MESSAGE_MAX = 500
_SPACE = re.compile(r"\s+")
# Where a parser error starts quoting what the client sent: b'...', '...' or "...".
_QUOTED = re.compile(r"""\s*b?['"]""")


def rfc3339(now: float) -> str:
    """``now`` (seconds since the epoch) as RFC 3339 UTC with milliseconds."""
    second = int(now)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    return f"{stamp}.{int((now - second) * 1000):03d}Z"


class Timestamps:
    """:func:`rfc3339` for a caller that asks many times a second (the access log): the part
    up to the second is formatted once per second, which halves the cost."""

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, now: float) -> str:
        second = int(now)
        if second != self._second:
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        return f"{self._prefix}.{int((now - second) * 1000):03d}Z"


# What a pipe takes in one write without splitting it or splicing it with another process's
# (POSIX PIPE_BUF; 4096 on Linux).
_ATOMIC_WRITE = 4096


class LineBatch:
    """Log lines written together once the event loop's current iteration has run: under load
    one system call carries the lines of many requests (the access log), not one each.

    Each write holds whole lines and at most PIPE_BUF bytes (a longer line goes alone, as it
    did before), so that on a pipe shared by several workers no write is split or spliced with
    another's. The lines are ASCII (the access log escapes everything else), so characters
    are bytes. ``stream`` is asked for the stream at each flush: a reload or a test may swap
    it. Lines added after the loop stopped are written by :meth:`flush`, which the owner calls
    when it closes.
    """

    __slots__ = ("_lines", "_stream")

    def __init__(self, stream: Callable[[], TextIO]) -> None:
        self._stream = stream
        self._lines: list[str] = []

    def add(self, line: str) -> None:
        """Queue ``line`` (ending in a newline) for the end of this loop iteration."""
        self._lines.append(line)
        if len(self._lines) == 1:
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:  # no loop running: write it now
                self.flush()

    def flush(self) -> None:
        """Write the queued lines now."""
        lines, self._lines = self._lines, []
        if not lines:
            return
        stream = self._stream()
        batch: list[str] = []
        size = 0
        for line in lines:
            if batch and size + len(line) > _ATOMIC_WRITE:
                _write(stream, "".join(batch))
                batch, size = [], 0
            batch.append(line)
            size += len(line)
        _write(stream, "".join(batch))


def _write(stream: TextIO, text: str) -> None:
    with contextlib.suppress(OSError, ValueError):
        stream.write(text)


def write_event(
    stream: TextIO, event: str, level: Level | None = None, /, **fields: object
) -> None:
    """Write one event (``level``: by default the event's in EVENT_LEVELS, else info)."""
    line = {
        "time": rfc3339(time.time()),
        "level": level or EVENT_LEVELS.get(event, "info"),
        "event": event,
        **fields,
    }
    with contextlib.suppress(OSError, ValueError):
        stream.write(json.dumps(line, separators=(",", ":"), default=str) + "\n")


def one_line(text: str, limit: int = _MESSAGE_MAX) -> str:
    """``text`` with every run of whitespace (newlines too) as one space, at most ``limit``
    characters."""
    text = _SPACE.sub(" ", text).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def traceback_line(tb: TracebackType | None) -> str:
    """A traceback as one line, outermost call first: ``gateway/app.py:212 serve > ...``.
    File names keep their last two parts; no source lines, and never a local variable."""
    frames = []
    for frame in traceback.extract_tb(tb):
        path = "/".join(frame.filename.replace("\\", "/").rsplit("/", 2)[-2:])
        frames.append(f"{path}:{frame.lineno} {frame.name}")
    return " > ".join(frames)


def exception_fields(exc: BaseException) -> dict[str, str]:
    """The exception type, its message and its traceback, each on one line."""
    kind = type(exc)
    name = (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )
    return {
        "error_type": name,
        "error": one_line(str(exc)),
        "traceback": traceback_line(exc.__traceback__),
    }


def parser_error(exc: HttpProcessingError) -> str:
    """What an aiohttp parser error says about a request, without what it quotes of it.

    The parser's messages end by quoting the offending bytes (``Invalid method encountered:
    b'GE T /?ajs_aid=...'``), and an invalid URL's message is the URL itself: everything
    from the first quote on is dropped, and a URL error is only named.
    """
    if isinstance(exc, InvalidURLError):
        return "invalid request-target"
    said = _QUOTED.split(exc.message, maxsplit=1)[0]
    return one_line(said, 200).rstrip(" :") or "bad request"


def describe(record: logging.LogRecord) -> tuple[str, Level, dict[str, object]]:
    """The event, level and fields of one JSON line for a ``logging`` record."""
    exc = record.exc_info[1] if record.exc_info else None
    if isinstance(exc, HttpProcessingError) and record.name == "aiohttp.server":
        # aiohttp's own answer to a request it could not parse (it sends the 400 itself). It
        # logs a client's first request with a bad method (a TLS handshake or a scanner on
        # the HTTP port) at debug: that stays below warning.
        peer = record.args[0] if isinstance(record.args, tuple) and record.args else None
        level: Level = "warning" if record.levelno >= logging.WARNING else "info"
        return (
            "bad_request",
            level,
            {
                "client_ip": peer if isinstance(peer, str) else None,
                "status": exc.code,
                "error_type": type(exc).__name__,
                "error": parser_error(exc),
            },
        )
    if record.levelno >= logging.ERROR:
        level = "error"
    elif record.levelno >= logging.WARNING:
        level = "warning"
    else:
        level = "info"
    fields: dict[str, object] = {"logger": record.name, "message": one_line(record.getMessage())}
    if exc is not None:
        fields.update(exception_fields(exc))
        return "exception", level, fields
    return "log", level, fields


class JsonLogHandler(logging.Handler):
    """A ``logging`` handler that writes each record as one JSON line (see :func:`describe`)."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self.stream = stream

    def emit(self, record: logging.LogRecord) -> None:
        try:
            event, level, fields = describe(record)
        except Exception as exc:  # a record whose message does not format
            event, level, fields = "log_failed", "error", dict(exception_fields(exc))
        write_event(self.stream, event, level, **fields)
        with contextlib.suppress(OSError, ValueError):
            self.stream.flush()


def _bad_requests_too(record: logging.LogRecord) -> bool:
    """Filter for aiohttp's server logger: everything from warning up, and the bad requests
    it logs at debug."""
    if record.levelno >= logging.WARNING:
        return True
    return record.exc_info is not None and isinstance(record.exc_info[1], HttpProcessingError)


def install(stream: TextIO) -> None:
    """Make every line the process writes one JSON line on ``stream``: the root logger (which
    aiohttp's and asyncio's loggers propagate to), warnings, uncaught exceptions and
    unraisable ones. Called once, at the start of a serving process."""
    if isinstance(stream, io.TextIOWrapper):
        # A pipe (a container runtime, a supervisor's workers sharing one) would otherwise get
        # 8 KiB blocks that end mid-line, and the lines of two processes could splice.
        stream.reconfigure(line_buffering=True)
    handler = JsonLogHandler(stream)
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    server = logging.getLogger("aiohttp.server")
    server.setLevel(logging.DEBUG)
    server.addFilter(_bad_requests_too)
    logging.captureWarnings(True)
    # A handler that fails must not print its own traceback to stderr.
    logging.raiseExceptions = False

    def excepthook(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        write_event(stream, "crashed", **exception_fields(exc.with_traceback(tb)))
        with contextlib.suppress(OSError, ValueError):
            stream.flush()

    def unraisablehook(unraisable: Any) -> None:
        exc = unraisable.exc_value
        fields: dict[str, object] = {"message": one_line(unraisable.err_msg or "")}
        if exc is not None:
            fields.update(exception_fields(exc))
        write_event(stream, "exception", "error", **fields)

    sys.excepthook = excepthook
    sys.unraisablehook = unraisablehook


class Verdict(NamedTuple):
    """What :meth:`Throttle.admit` decided about one line."""

    # Write the line now.
    write: bool
    # Lines held back before this one and not yet reported: say so on this one (write only).
    suppressed: int
    # The line is held back and is the first of its window: call Throttle.due at this time
    # to report the window (None: a report is already due).
    flush_at: float | None


@dataclass
class _Window:
    until: float
    held: int = 0


class Throttle(Generic[K]):
    """At most one line per key (say, site and kind of fault) per ``interval`` seconds.

    A line written opens a window of ``interval``; lines of the same key within it are held
    back and counted. When the window closes, :meth:`due` reports the count (one line, which
    opens the next window); should another line of the key come first, it carries the count
    itself. A dead upstream hit 100 times a second thus writes one full line, then one
    ``suppressed: N`` line a second, never more. Pure: the caller passes the clock in and
    writes the lines.
    """

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self._windows: dict[K, _Window] = {}

    def admit(self, key: K, now: float) -> Verdict:
        window = self._windows.get(key)
        if window is None or now >= window.until:
            held = window.held if window is not None else 0
            self._windows[key] = _Window(now + self.interval)
            return Verdict(True, held, None)
        window.held += 1
        return Verdict(False, 0, window.until if window.held == 1 else None)

    def due(self, now: float) -> list[tuple[K, int]]:
        """The keys whose window has closed with lines held back, and how many; each report
        opens a new window. Closed windows with nothing held are forgotten."""
        reports = []
        for key, window in list(self._windows.items()):
            if now < window.until:
                continue
            if window.held:
                reports.append((key, window.held))
                self._windows[key] = _Window(now + self.interval)
            else:
                del self._windows[key]
        return reports
