"""Helpers shared by the output formats: positions, paths, severities and fingerprints.

Notebook diagnostics carry ``cell`` and rows relative to that cell. Formats for people print
``cell N:ROW:COL``; formats read by code-review tools (github, gitlab, sarif, junit) point at the
line of the ``.ipynb`` file that holds the cell's row (``FileResult.file_row``), with the cell
position in the message or a property, since those tools know nothing of cells.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple

from mllint.core.diagnostic import Diagnostic


def position(diag: Diagnostic, column: bool = True) -> str:
    """``ROW:COL`` (``cell N:ROW:COL`` in a notebook); without the column when ``column`` is false."""
    text = f"{diag.location.row}:{diag.location.column}" if column else f"{diag.location.row}"
    return f"cell {diag.cell}:{text}" if diag.cell is not None else text


def relative_path(path: str, root: Optional[str] = None) -> str:
    """``path`` relative to ``root`` (default: the current directory), with forward slashes;
    standard input (``-``) stays as it is."""
    if path == "-" or path.startswith("<"):
        return path
    try:
        rel = os.path.relpath(os.path.abspath(path), root or os.getcwd())
    except ValueError:  # another drive on Windows
        rel = os.path.abspath(path)
    return rel.replace(os.sep, "/")


def is_outside(rel: str) -> bool:
    return rel == ".." or rel.startswith("../") or os.path.isabs(rel)


def rule_of(code: str) -> Any:
    from mllint.core.registry import default_registry

    return default_registry().rules.get(code)


def fingerprint(path: str, diag: Diagnostic, occurrence: int) -> str:
    """A stable identity for a finding: its path, code, message and how many identical findings
    come before it in the file. Not its line, so it survives edits above it."""
    key = "\0".join((path, diag.code, diag.message, str(occurrence)))
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()  # non-UTF-8 file names


def with_fingerprints(results: Sequence[Any], path_of=relative_path) -> Iterator[Tuple[Any, Diagnostic, str]]:
    """(result, diagnostic, fingerprint) of every diagnostic, in order."""
    for result in results:
        path = path_of(result.path)
        seen: Dict[Tuple[str, str], int] = {}
        for diag in result.diagnostics:
            key = (diag.code, diag.message)
            occurrence = seen.get(key, 0)
            seen[key] = occurrence + 1
            yield result, diag, fingerprint(path, diag, occurrence)


def file_rows(result: Any, diag: Diagnostic) -> Tuple[int, int]:
    """(start, end) line of the file itself (see ``FileResult.file_row``)."""
    if hasattr(result, "file_row"):
        start, end = result.file_row(diag), result.file_row(diag, end=True)
    else:
        start, end = diag.location.row, diag.end_location.row
    return start, max(start, end)
