"""The values the core hands to every front end: diagnostics, fixes and text edits.

Rows and columns are 1-based and count characters (not bytes), as in ruff. Edits also carry
the character offsets into the source they were computed on, which is what the fixer uses.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from typing import Optional, Tuple


class Severity(str, enum.Enum):
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


class Applicability(str, enum.Enum):
    """How freely a fix may be applied (ruff's classes)."""

    SAFE = "safe"  # keeps the program's meaning apart from the bug it removes
    UNSAFE = "unsafe"  # changes behaviour on purpose: only with --unsafe-fixes
    DISPLAY_ONLY = "display-only"  # shown as a suggestion, never applied


@dataclass(frozen=True, order=True)
class Location:
    row: int
    column: int


@dataclass(frozen=True)
class Edit:
    """Replace ``source[start:end]`` by ``content``."""

    start: int
    end: int
    content: str
    location: Location
    end_location: Location


@dataclass(frozen=True)
class Fix:
    message: str
    applicability: Applicability
    edits: Tuple[Edit, ...]

    def applies(self, unsafe: bool) -> bool:
        if self.applicability is Applicability.SAFE:
            return True
        return unsafe and self.applicability is Applicability.UNSAFE


@dataclass(frozen=True)
class Diagnostic:
    code: str
    name: str
    message: str
    severity: Severity
    location: Location
    end_location: Location
    fix: Optional[Fix] = None
    help: Optional[str] = None
    # Where a ``# noqa`` comment for this diagnostic goes (the first line on which a comment can
    # legally be written at or after ``location.row``); filled in by the engine.
    noqa_row: Optional[int] = None
    url: Optional[str] = None
    # Character offsets of the reported range, for front ends that work on offsets.
    start: int = field(default=0, compare=False)
    end: int = field(default=0, compare=False)
    # Notebooks: the 1-based number of the cell the diagnostic is in (counting every cell); its
    # rows are then relative to that cell. Set by the notebook adapter, never by the core.
    cell: Optional[int] = None

    def sort_key(self) -> tuple:
        return (self.location, self.end_location, self.code, self.message)

    def with_changes(self, **changes) -> "Diagnostic":
        return replace(self, **changes)

    def fixable(self, unsafe: bool) -> bool:
        return self.fix is not None and self.fix.applies(unsafe)
