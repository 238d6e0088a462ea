"""JSON log lines on stdout: one object a line, written whole so that lines from several
worker processes sharing the stream never interleave."""

from __future__ import annotations

import contextlib
import json
import time
from typing import TextIO


def write_event(stream: TextIO, event: str, **fields: object) -> None:
    """Write one event. A closed or broken log stream never takes a request down with it."""
    line = {"time": time.time(), "event": event, **fields}
    with contextlib.suppress(OSError, ValueError):
        stream.write(json.dumps(line, separators=(",", ":")) + "\n")
