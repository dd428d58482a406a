"""Conversions between character offsets and 1-based (row, column) locations."""

from __future__ import annotations

import bisect
import re
from typing import List, Optional

from mllint.core.diagnostic import Location

_NEWLINE = re.compile(r"\r\n|\r|\n")


class Locator:
    def __init__(self, source: str) -> None:
        self.source = source
        self._line_starts: Optional[List[int]] = None

    @property
    def line_starts(self) -> List[int]:
        """Offset of the start of every line (computed on first use: most files never need it)."""
        if self._line_starts is None:
            starts: List[int] = [0]
            starts.extend(m.end() for m in _NEWLINE.finditer(self.source))
            self._line_starts = starts
        return self._line_starts

    @property
    def line_count(self) -> int:
        return len(self.line_starts)

    def offset(self, row: int, column: int) -> int:
        """Offset of a 1-based row and 1-based column (clamped to the text)."""
        row = min(max(row, 1), len(self.line_starts))
        return min(self.line_starts[row - 1] + column - 1, len(self.source))

    def location(self, offset: int) -> Location:
        index = bisect.bisect_right(self.line_starts, offset) - 1
        return Location(index + 1, offset - self.line_starts[index] + 1)

    def line(self, row: int) -> str:
        """The text of a 1-based row, without its line ending."""
        start = self.line_starts[row - 1]
        end = self.line_starts[row] if row < len(self.line_starts) else len(self.source)
        return self.source[start:end].rstrip("\r\n")

    def line_end(self, row: int) -> int:
        """Offset just after the last character of ``row`` (before its line ending)."""
        return self.line_starts[row - 1] + len(self.line(row))

    def newline(self) -> str:
        """The newline the text uses first (``\\n`` when it has none)."""
        match = _NEWLINE.search(self.source)
        return match.group(0) if match else "\n"
