# The compiled scanner (_speedups.c): the same interface as _scan.Scanner.
from typing import Final

from ._scan import Event

HREF: Final[int]
INJECT: Final[int]
FORM: Final[int]
BASE: Final[int]
QUOTE_PLAIN: Final[int]
QUOTE_DOUBLE: Final[int]
QUOTE_SINGLE: Final[int]
QUOTE_UNQUOTED: Final[int]
QUOTE_NONE: Final[int]
GAVE_UP_AMBIGUITY: Final[int]
GAVE_UP_PLAINTEXT: Final[int]

class Scanner:
    def __init__(self, encoding: str, inject: bool, links: bool) -> None: ...
    @property
    def gave_up(self) -> int: ...
    def scan(self, buf: bytes, pos: int, final: bool) -> tuple[list[Event], int]: ...
