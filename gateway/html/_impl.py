"""Which scanner the rewriter runs: the compiled one or the pure-Python one.

Like aiohttp (AIOHTTP_NO_EXTENSIONS), PyYAML and msgpack (MSGPACK_PUREPYTHON), the package
ships an optional C extension, ``gateway/html/_speedups.c``, built at install time when a
compiler is there, and keeps the pure-Python implementation (``_scan.py``) as the fallback.
The two produce the same events for the same input, so the rewriter's output bytes do not
depend on which one runs; the compiled one is several times faster.

The choice is made once, at import: the extension unless ``GATEWAY_NO_EXTENSIONS`` is set
(to any non-empty value) or it cannot be imported.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Final, Literal, Protocol

from . import _scan
from ._scan import Event

Implementation = Literal["compiled", "python"]

# The environment variable that selects the pure-Python scanner.
NO_EXTENSIONS_ENV: Final = "GATEWAY_NO_EXTENSIONS"


class ScannerAPI(Protocol):
    """What the rewriter needs from a scanner (see _scan.Scanner)."""

    @property
    def gave_up(self) -> int: ...

    def scan(self, buf: bytes, pos: int, final: bool) -> tuple[list[Event], int]: ...


ScannerFactory = Callable[[str, bool, bool], ScannerAPI]


def _choose() -> tuple[Implementation, ScannerFactory, str | None]:
    if os.environ.get(NO_EXTENSIONS_ENV):
        return "python", _scan.Scanner, f"{NO_EXTENSIONS_ENV} is set"
    try:
        from ._speedups import Scanner
    except ImportError as error:
        # Not built (no compiler at install time), or built for another Python.
        return "python", _scan.Scanner, f"the compiled scanner cannot be imported: {error}"
    return "compiled", Scanner, None


_CHOICE = _choose()
IMPLEMENTATION: Final[Implementation] = _CHOICE[0]
Scanner: Final[ScannerFactory] = _CHOICE[1]
PURE_PYTHON_REASON: Final[str | None] = _CHOICE[2]
"""Why the pure-Python scanner runs (None when the compiled one does)."""
