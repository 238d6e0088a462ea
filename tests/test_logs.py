"""gateway/logs.py without a server: the line format, the logging bridge (one JSON line per
record, a traceback on one line, a parser error without the bytes it quotes) and the fault
throttle with a fake clock."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp.http_exceptions import (
    BadHttpMessage,
    BadHttpMethod,
    BadStatusLine,
    HttpProcessingError,
    InvalidHeader,
    InvalidURLError,
    LineTooLong,
)

from gateway.logs import (
    JsonLogHandler,
    LineBatch,
    Throttle,
    Timestamps,
    Verdict,
    describe,
    exception_fields,
    parser_error,
    rfc3339,
    write_event,
)

RFC3339_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
SECRET = "SECRET-aid-4711"


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    text = stream.getvalue()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


@pytest.mark.parametrize(
    "now", [0.0, 1.0005, 1_796_070_662.123456, 1_796_070_662.9999, 4_102_444_799.5]
)
def test_time_is_rfc3339_utc_with_milliseconds(now: float) -> None:
    expected = datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds")
    assert rfc3339(now) == expected.replace("+00:00", "Z")
    assert RFC3339_MS.fullmatch(rfc3339(now))


def test_timestamps_cache_the_second_and_agree_with_rfc3339() -> None:
    stamp = Timestamps()
    for now in (10.0, 10.5, 10.999, 11.0, 9.25, 1_796_070_662.123):
        assert stamp(now) == rfc3339(now)


def test_write_event_has_time_level_and_event_first() -> None:
    out = io.StringIO()
    write_event(out, "started", pid=1)
    write_event(out, "upstream_error", site="a", kind="connect")
    write_event(out, "custom", "error", why="x")
    first, fault, custom = lines(out)
    assert list(first)[:3] == ["time", "level", "event"]
    assert RFC3339_MS.fullmatch(first["time"])
    assert (first["level"], first["pid"]) == ("info", 1)
    assert fault["level"] == "warning"
    assert custom["level"] == "error"


class _Writes(io.StringIO):
    """A stream that records each write it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


async def test_a_line_batch_writes_at_the_end_of_the_loop_iteration() -> None:
    stream = _Writes()
    batch = LineBatch(lambda: stream)
    batch.add("one\n")
    batch.add("two\n")
    assert stream.writes == []
    await asyncio.sleep(0)
    assert stream.writes == ["one\ntwo\n"]
    batch.add("three\n")
    batch.flush()
    assert stream.writes == ["one\ntwo\n", "three\n"]
    await asyncio.sleep(0)
    assert stream.writes == ["one\ntwo\n", "three\n"]


async def test_a_line_batch_writes_whole_lines_of_at_most_pipe_buf_bytes() -> None:
    stream = _Writes()
    batch = LineBatch(lambda: stream)
    lines = [f"{i:04d}{'x' * 995}\n" for i in range(9)] + ["y" * 5000 + "\n", "z\n"]
    for line in lines:
        batch.add(line)
    await asyncio.sleep(0)
    assert "".join(stream.writes) == "".join(lines)
    assert [len(w) for w in stream.writes] == [4000, 4000, 1000, 5001, 2]


def test_a_line_batch_without_a_loop_writes_at_once() -> None:
    stream = _Writes()
    LineBatch(lambda: stream).add("one\n")
    assert stream.writes == ["one\n"]


def test_a_broken_stream_is_not_an_error() -> None:
    closed = io.StringIO()
    closed.close()
    write_event(closed, "started")


def _record(
    name: str, level: int, msg: str, args: tuple[object, ...], exc: BaseException | None
) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    return logging.LogRecord(name, level, __file__, 1, msg, args, exc_info)


def _raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:
        return caught


# Built as aiohttp's parsers build them, with the request bytes they quote.
PARSER_ERRORS: list[tuple[HttpProcessingError, str]] = [
    (
        BadHttpMethod(error=f"Invalid method encountered:\n\n  b'GE T /?ajs_aid={SECRET}'\n   ^"),
        "Invalid method encountered",
    ),
    (
        BadStatusLine(
            error=f"Bad status line:\n  Expected CRLF after version:\n\n"
            f"  b'GET /?ajs_aid={SECRET} HTTP/1.1 x'\n  ^"
        ),
        "Bad status line: Expected CRLF after version",
    ),
    (
        LineTooLong(f"Cookie: ajs_anonymous_id={SECRET}".encode(), 8190),
        "Got more than 8190 bytes when reading",
    ),
    (InvalidHeader(f"Cookie ajs_anonymous_id={SECRET}".encode()), "Invalid HTTP header"),
    (BadHttpMessage(f"Invalid header token:\n\n  b'Cookie {SECRET}'\n  ^"), "Invalid header token"),
    (InvalidURLError(f"http://?ajs_aid={SECRET}"), "invalid request-target"),
    (InvalidURLError(f"bare{SECRET}"), "invalid request-target"),
    (BadHttpMessage("Missing 'Host' header in request."), "Missing"),
]


@pytest.mark.parametrize(("exc", "said"), PARSER_ERRORS)
def test_parser_errors_never_quote_the_request(exc: HttpProcessingError, said: str) -> None:
    assert parser_error(exc) == said
    assert SECRET not in parser_error(exc)


@pytest.mark.parametrize(("exc", "said"), PARSER_ERRORS)
def test_a_bad_request_is_one_line_without_traceback(exc: HttpProcessingError, said: str) -> None:
    for level, expected in ((logging.ERROR, "warning"), (logging.DEBUG, "info")):
        record = _record(
            "aiohttp.server", level, "Error handling request from %s", ("192.0.2.7",), _raised(exc)
        )
        event, got_level, fields = describe(record)
        assert (event, got_level) == ("bad_request", expected)
        assert fields == {
            "client_ip": "192.0.2.7",
            "status": 400,
            "error_type": type(exc).__name__,
            "error": said,
        }


def test_an_exception_is_one_line_with_type_message_and_traceback() -> None:
    def inner() -> None:
        raise ValueError("first line\nsecond line")

    try:
        inner()
    except ValueError as caught:
        exc = caught
    record = _record(
        "aiohttp.server", logging.ERROR, "Error handling request from %s", ("::1",), exc
    )
    out = io.StringIO()
    JsonLogHandler(out).handle(record)
    assert out.getvalue().count("\n") == 1
    [line] = lines(out)
    assert line["level"] == "error" and line["event"] == "exception"
    assert line["logger"] == "aiohttp.server"
    assert line["message"] == "Error handling request from ::1"
    assert line["error_type"] == "ValueError"
    assert line["error"] == "first line second line"
    assert re.fullmatch(
        r"tests/test_logs\.py:\d+ \S+ > tests/test_logs\.py:\d+ inner", line["traceback"]
    )


def test_a_plain_record_and_an_unformattable_one() -> None:
    out = io.StringIO()
    handler = JsonLogHandler(out)
    handler.handle(_record("asyncio", logging.WARNING, "slow\ncallback %s", ("x",), None))
    handler.handle(_record("asyncio", logging.ERROR, "needs %d", ("not a number",), None))
    plain, broken = lines(out)
    assert (plain["event"], plain["level"], plain["message"]) == (
        "log",
        "warning",
        "slow callback x",
    )
    assert (broken["event"], broken["level"]) == ("log_failed", "error")


def test_exception_fields_name_non_builtin_types_fully() -> None:
    fields = exception_fields(_raised(LineTooLong(b"x", 10)))
    assert fields["error_type"] == "aiohttp.http_exceptions.LineTooLong"
    assert exception_fields(_raised(KeyError("k")))["error_type"] == "KeyError"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self, seconds: float = 0.0) -> float:
        self.now += seconds
        return self.now


def test_throttle_writes_one_line_a_window_and_reports_the_rest_when_it_closes() -> None:
    clock = FakeClock()
    throttle = Throttle(interval=1.0)
    key = ("upstream_error", "www.example.com", "connect")
    assert throttle.admit(key, clock()) == Verdict(True, 0, None)
    # The first line held back says when the window closes; the others do not ask again.
    assert throttle.admit(key, clock(0.1)) == Verdict(False, 0, 1001.0)
    for _ in range(98):
        assert throttle.admit(key, clock(0.001)) == Verdict(False, 0, None)
    assert throttle.due(clock(0.1)) == []  # still open
    assert throttle.due(1001.0) == [(key, 99)]
    # The report opened the next window: one line a second at most, however many faults.
    assert throttle.admit(key, 1001.5) == Verdict(False, 0, 1002.0)
    assert throttle.due(1002.0) == [(key, 1)]
    # A quiet window is forgotten and reports nothing; the next fault is written at once.
    assert throttle.due(1003.5) == []
    assert throttle.admit(key, 1003.6) == Verdict(True, 0, None)


def test_throttle_reports_on_the_next_line_when_it_comes_before_the_report() -> None:
    throttle = Throttle(interval=1.0)
    assert throttle.admit("k", 0.0).write
    assert throttle.admit("k", 0.5) == Verdict(False, 0, 1.0)
    assert throttle.admit("k", 0.9) == Verdict(False, 0, None)
    # The report's timer has not run yet (a busy loop): the next line carries the count.
    assert throttle.admit("k", 1.2) == Verdict(True, 2, None)
    assert throttle.due(1.2) == []


def test_throttle_keys_are_independent() -> None:
    throttle = Throttle(interval=1.0)
    keys = [
        ("upstream_error", site, kind) for site in ("a", "b") for kind in ("connect", "timeout")
    ]
    assert all(throttle.admit(key, 5.0).write for key in keys)
    assert not any(throttle.admit(key, 5.5).write for key in keys)
    assert sorted(throttle.due(6.0)) == sorted((key, 1) for key in keys)
