"""``# noqa`` directives: per line (shared with flake8 and ruff) and file-level ``# mllint: noqa``.

Only comment tokens are considered, so a ``"# noqa"`` inside a string suppresses nothing. When the
file cannot be tokenized (it has a syntax error) nothing is suppressed: the syntax error itself is
the only diagnostic such a file gets.
"""

from __future__ import annotations

import io
import re
import tokenize
from dataclasses import dataclass
from typing import Dict, FrozenSet, List, Optional, Set, Tuple

from mllint.core.locator import Locator

_CODE = r"[A-Za-z]+[0-9]+"
# flake8's grammar: ``# noqa`` optionally followed by ``:`` and codes separated by commas/space.
_NOQA = re.compile(
    rf"#\s*noqa(?::[\s]?(?P<codes>{_CODE}(?:[\s,]+{_CODE})*))?", re.IGNORECASE
)
_FILE_NOQA = re.compile(
    rf"#\s*mllint\s*:\s*noqa(?::\s*(?P<codes>{_CODE}(?:[\s,]+{_CODE})*))?", re.IGNORECASE
)
_SPLIT = re.compile(r"[\s,]+")


@dataclass(frozen=True)
class NoqaDirective:
    row: int
    codes: Optional[Tuple[str, ...]]  # None: a blanket ``# noqa``
    start: int  # offsets of the ``# noqa...`` text
    end: int
    comment_start: int  # offsets of the whole comment token
    comment_end: int

    def suppresses(self, code: str) -> bool:
        if self.codes is None:
            return True
        # flake8 matches by prefix (``# noqa: MLL1`` silences MLL101); so do we.
        return any(code.startswith(c) for c in self.codes)


@dataclass(frozen=True)
class FileSuppression:
    codes: Optional[FrozenSet[str]]  # None: every code

    def suppresses(self, code: str) -> bool:
        return self.codes is None or any(code.startswith(c) for c in self.codes)


@dataclass
class Suppressions:
    lines: Dict[int, NoqaDirective]
    files: List[FileSuppression]
    commentable_rows: Optional[Set[int]]  # None when the file could not be tokenized

    def file_suppresses(self, code: str) -> bool:
        return any(f.suppresses(code) for f in self.files)

    def noqa_row(self, row: int, last_row: int) -> int:
        """The first row at or after ``row`` where a trailing comment is legal."""
        if self.commentable_rows is None:
            return row
        for candidate in range(row, last_row + 1):
            if candidate in self.commentable_rows:
                return candidate
        return row


def _codes(text: Optional[str]) -> Optional[Tuple[str, ...]]:
    if text is None:
        return None
    return tuple(c.upper() for c in _SPLIT.split(text.strip()) if c)


def _comments(source: str) -> Tuple[List[Tuple[int, int, str]], Optional[Set[int]]]:
    """(row, column, text) of every comment, and the rows a comment may be appended to."""
    comments: List[Tuple[int, int, str]] = []
    commentable: Set[int] = set()
    if "\r" in source:  # rows as the Locator and CPython count them (a lone CR ends a line too)
        source = source.replace("\r\n", "\n").replace("\r", "\n")
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT:
                comments.append((tok.start[0], tok.start[1], tok.string))
                commentable.add(tok.start[0])
            elif tok.type in (tokenize.NEWLINE, tokenize.NL):
                commentable.add(tok.start[0])
    except (tokenize.TokenError, SyntaxError, ValueError):
        return [], None
    return comments, commentable


def parse_suppressions(source: str, locator: Locator) -> Suppressions:
    lower = source.lower()
    if "noqa" not in lower:
        # Still need commentable rows for noqa_row; computed lazily by the engine when needed.
        return Suppressions({}, [], None)
    comments, commentable = _comments(source)
    lines: Dict[int, NoqaDirective] = {}
    files: List[FileSuppression] = []
    for row, column, text in comments:
        comment_start = locator.offset(row, column + 1)
        file_match = _FILE_NOQA.search(text)
        if file_match:
            codes = _codes(file_match.group("codes"))
            files.append(FileSuppression(None if codes is None else frozenset(codes)))
            continue
        match = _NOQA.search(text)
        if match:
            lines[row] = NoqaDirective(
                row=row,
                codes=_codes(match.group("codes")),
                start=comment_start + match.start(),
                end=comment_start + match.end(),
                comment_start=comment_start,
                comment_end=comment_start + len(text),
            )
    return Suppressions(lines, files, commentable)


def commentable_rows(source: str) -> Optional[Set[int]]:
    return _comments(source)[1]
