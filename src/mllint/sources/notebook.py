"""Jupyter notebooks (nbformat 4) as Python text, and fixes written back into their cells.

A notebook becomes a ``NotebookText``: the code cells, in order, joined into one Python text (so a
name bound in one cell is known in the later ones), plus the map back from every row of that text
to (cell number, row in cell). Cell numbers are 1-based and count every cell, markdown too (as ruff
and the editors number them). Each cell contributes its own lines and, when it does not end with a
newline, one separating newline that belongs to no cell.

IPython syntax is masked line for line (the row count never changes) so the text parses:

- a line magic, shell or help line (``%matplotlib inline``, ``!pip install x``, ``x = !ls``,
  ``obj?``, ``??obj``) that starts a logical line becomes ``pass  # mllint: masked`` at the same
  indentation (``x = None  # ...`` for the assignment forms), and its backslash continuation lines
  become comments;
- a cell magic cell (``%%bash``) becomes comment lines, except the magics whose body is Python run
  in the kernel (``%%time``, ``%%timeit``, ``%%capture``, ``%%debug``, ``%%prun``): only their first
  line is masked.

Masked lines are never edited: a fix with an edit that touches one is dropped, and so is a fix
whose edits do not all lie inside one cell (as ruff does). The raw text of every masked line is
kept in ``NotebookText.magics`` (``!pip install trl==0.4.7`` pins are read from there).

Writing back never re-serialises the notebook: the ``"source"`` value of each changed cell is
located in the raw JSON text and replaced, so indentation, key order, escaping, the trailing
newline, outputs and metadata stay byte for byte what they were. A list source keeps one element
per line; elements whose text did not change keep their raw JSON spelling, new ones are written in
the notebook's own style (separators and indentation copied from the list, ``ensure_ascii`` as the
file does). The result is parsed again and must equal the original apart from those sources.
"""

from __future__ import annotations

import bisect
import codecs
import io
import json
import re
import tokenize
from dataclasses import dataclass, field
from typing import Any, Dict, FrozenSet, List, Mapping, Optional, Sequence, Tuple

from mllint.core.diagnostic import Diagnostic, Edit, Fix, Location
from mllint.core.locator import Locator
from mllint.sources.python import SourceError, SourceFile, read_bytes, write_source

NOTEBOOK_SUFFIX = ".ipynb"
INVALID_NOTEBOOK = "MLL905"
LINE_MASK = "pass  # mllint: masked"
COMMENT_MASK = "# mllint: masked"
# Codes about the whole file: they keep row 1, column 1 and get no cell.
FILE_LEVEL_CODES = frozenset({"MLL903", "MLL904", "MLL905", "MLL999"})
# Cell magics whose body is Python code run in the kernel: the body is checked.
PYTHON_CELL_MAGICS = frozenset({"time", "timeit", "capture", "debug", "prun"})

_NEWLINE = re.compile(r"\r\n|\r|\n")
_ASSIGN_MAGIC = re.compile(r"^(\s*[A-Za-z_][\w.]*(?:\s*,\s*[A-Za-z_][\w.]*)*\s*=\s*)[!%]")
_HELP = re.compile(r"^(?:\?.*|[\w.*\[\]()%]+\?\??)\s*$")
# Line magics IPython runs without the `%` (automagic, on by default), e.g. `pip install trl`.
AUTOMAGICS = ("pip", "conda", "mamba", "cd", "ls", "pwd", "env", "set_env", "matplotlib", "load_ext",
              "reload_ext", "autoreload", "time", "timeit", "run", "mkdir", "rm", "cp", "mv", "cat",
              "who", "whos", "reset", "history", "pdb", "config", "store", "alias")
_AUTOMAGIC = re.compile(r"^\s*(?:" + "|".join(AUTOMAGICS) + r")\s+[^\s=(\[.,:;+\-*/%<>&|^~!]")
_CANDIDATE = re.compile(r"^\s*[%!?]|\?\s*$|=\s*[!%]|" + _AUTOMAGIC.pattern[1:], re.MULTILINE)
_LINE_REFERENCE = re.compile(r"\bline (\d+)\b")


def is_notebook(path: str) -> bool:
    return path.endswith(NOTEBOOK_SUFFIX)


# -- masking -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Magic:
    """IPython syntax masked in a cell: ``text`` is the raw line (with continuation lines)."""

    cell: int  # 1-based cell number
    row: int  # 1-based row in the cell
    text: str
    kind: str  # "line-magic", "cell-magic", "shell" or "help"


def _split_lines(text: str) -> List[str]:
    """Lines with their line endings, split as the ``Locator`` splits them."""
    lines, start = [], 0
    for match in _NEWLINE.finditer(text):
        lines.append(text[start:match.end()])
        start = match.end()
    if start < len(text):
        lines.append(text[start:])
    return lines


def _ending(line: str) -> str:
    return line[len(line.rstrip("\r\n")):]


def _incomplete(text: str) -> bool:
    """Whether ``text`` stops inside a bracket, a triple-quoted string or after a backslash."""
    try:
        for _ in tokenize.generate_tokens(io.StringIO(text).readline):
            pass
    except tokenize.TokenError as exc:
        return "multi-line" in str(exc)
    except (SyntaxError, ValueError):
        return False
    return False


def _magic_kind(line: str) -> Optional[str]:
    stripped = line.strip()
    if not stripped:
        return None
    if stripped[0] == "!":
        return "shell"
    if stripped[0] == "%":
        return "line-magic"
    if _HELP.match(stripped):
        return "help"
    match = _ASSIGN_MAGIC.match(line)
    if match:
        return "shell" if line[match.end() - 1] == "!" else "line-magic"
    if _AUTOMAGIC.match(line) and not _python_line(stripped):
        return "line-magic"
    return None


def _python_line(line: str) -> bool:
    """Whether one stripped line compiles as Python on its own (or starts a block that may):
    `time import x` is not Python, so IPython runs it as `%time`."""
    try:
        compile(line, "<line>", "exec")
    except SyntaxError as error:
        return any(m in str(error) for m in ("unexpected EOF", "was never closed", "expected an indented block"))
    except ValueError:
        return False
    return True


def mask_cell(source: str, number: int) -> Tuple[str, FrozenSet[int], Tuple[Magic, ...]]:
    """(masked text, masked rows, magics) of one code cell; the masked text has the same lines."""
    if not _CANDIDATE.search(source):
        return source, frozenset(), ()
    lines = _split_lines(source)
    out = list(lines)
    masked: set = set()
    magics: List[Magic] = []
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    start = 0
    if first is not None and lines[first].lstrip().startswith("%%"):
        name = lines[first].lstrip()[2:].split(None, 1)[0] if lines[first].strip() != "%%" else ""
        body_is_python = name in PYTHON_CELL_MAGICS
        end = first + 1 if body_is_python else len(lines)
        for i in range(first, end):
            out[i] = COMMENT_MASK + _ending(lines[i])
            masked.add(i + 1)
        magics.append(Magic(number, first + 1, "".join(lines[first:end]).rstrip("\r\n"), "cell-magic"))
        if not body_is_python:
            return "".join(out), frozenset(masked), tuple(magics)
        start = end
    pending = ""
    i = start
    while i < len(lines):
        line = lines[i]
        kind = _magic_kind(line) if not pending else None
        if kind is None:
            pending += line
            if not _incomplete(pending):
                pending = ""
            i += 1
            continue
        body = line.rstrip("\r\n")
        indent = body[: len(body) - len(body.lstrip())]
        assign = _ASSIGN_MAGIC.match(body)
        if assign and kind != "help" and not body.lstrip().startswith(("!", "%")):
            out[i] = assign.group(1) + "None  # mllint: masked" + _ending(line)
        else:
            out[i] = indent + LINE_MASK + _ending(line)
        masked.add(i + 1)
        row, raw = i + 1, [body]
        while raw[-1].endswith("\\") and i + 1 < len(lines):  # IPython joins continuation lines
            i += 1
            out[i] = COMMENT_MASK + _ending(lines[i])
            masked.add(i + 1)
            raw.append(lines[i].rstrip("\r\n"))
        magics.append(Magic(number, row, "\n".join(raw), kind))
        i += 1
    return "".join(out), frozenset(masked), tuple(magics)


# -- the Python text and its map back to cells ----------------------------------------------------

@dataclass
class CellSpan:
    number: int  # 1-based, counting every cell of the notebook
    source: str  # the cell's raw source
    masked: str  # the source with IPython syntax masked (same lines)
    first_row: int  # the cell's first row in the joined text
    rows: int
    start: int  # offsets of the cell's own text in the joined text
    end: int
    _locator: Optional[Locator] = field(default=None, repr=False)

    @property
    def locator(self) -> Locator:
        if self._locator is None:
            self._locator = Locator(self.source)
        return self._locator

    def last_position(self) -> Location:
        """Just after the last character of the cell's last line."""
        row = max(1, min(self.rows, self.locator.line_count))
        return Location(row, len(self.locator.line(row)) + 1)


class EditOutsideCell(Exception):
    """An edit spans two cells, touches the separator between them, or touches masked syntax."""


class NotebookText:
    """The Python text of a notebook's code cells and the map back to (cell, row in cell)."""

    def __init__(self, cells: Sequence[Tuple[int, str]]) -> None:
        pieces: List[str] = []
        self.cells: List[CellSpan] = []
        masked_rows: set = set()
        magics: List[Magic] = []
        offset, row = 0, 1
        for number, source in cells:
            masked, rows_masked, cell_magics = mask_cell(source, number)
            piece = masked if masked.endswith(("\n", "\r")) else masked + "\n"
            rows = len(_NEWLINE.findall(piece))
            self.cells.append(CellSpan(number, source, masked, row, rows, offset, offset + len(masked)))
            masked_rows.update(row + r - 1 for r in rows_masked)
            magics.extend(cell_magics)
            pieces.append(piece)
            offset += len(piece)
            row += rows
        self.text = "".join(pieces)
        self.masked_rows: FrozenSet[int] = frozenset(masked_rows)
        self.magics: Tuple[Magic, ...] = tuple(magics)
        self.locator = Locator(self.text)
        self._first_rows = [c.first_row for c in self.cells]
        self._starts = [c.start for c in self.cells]

    @property
    def sources(self) -> Dict[int, str]:
        return {c.number: c.source for c in self.cells}

    # -- positions ---------------------------------------------------------------------------
    def _cell_at_row(self, row: int) -> Optional[CellSpan]:
        if not self.cells:
            return None
        return self.cells[max(bisect.bisect_right(self._first_rows, row) - 1, 0)]

    def to_cell(self, location: Location) -> Tuple[Optional[int], Location]:
        """(cell number, location in the cell) of a location in the joined text."""
        cell = self._cell_at_row(location.row)
        if cell is None:
            return None, location
        row = location.row - cell.first_row + 1
        if row < 1:
            return cell.number, Location(1, 1)
        if row > cell.rows or row > cell.locator.line_count:  # the empty line at the very end
            return cell.number, cell.last_position()
        return cell.number, Location(row, location.column)

    def cell_of_edit(self, start: int, end: int) -> CellSpan:
        """The one cell an edit of ``text[start:end]`` lies in; ``EditOutsideCell`` if none."""
        if not self.cells:
            raise EditOutsideCell("the notebook has no code cell")
        cell = self.cells[max(bisect.bisect_right(self._starts, start) - 1, 0)]
        if not (cell.start <= start <= end <= cell.end):
            raise EditOutsideCell("the edit spans two cells")
        first, last = self.locator.location(start).row, self.locator.location(end).row
        for row in range(first, last + 1):
            if row not in self.masked_rows:
                continue
            line_start = self.locator.line_starts[row - 1]
            next_start = (self.locator.line_starts[row] if row < self.locator.line_count
                          else len(self.text))
            if (start < end and start < next_start and end > line_start) or (
                    start == end and line_start < start < next_start):
                raise EditOutsideCell("the edit touches IPython syntax")
        return cell

    def fix_applies(self, fix: Fix) -> bool:
        """Whether every edit of ``fix`` lies in one and the same cell, away from masked lines."""
        try:
            cells = {self.cell_of_edit(e.start, e.end).number for e in fix.edits}
        except EditOutsideCell:
            return False
        return len(cells) <= 1

    def restrict(self, diag: Diagnostic) -> Diagnostic:
        """``diag`` without its fix when the fix cannot be applied to the notebook."""
        if diag.fix is not None and not self.fix_applies(diag.fix):
            return diag.with_changes(fix=None)
        return diag

    def map_diagnostic(self, diag: Diagnostic) -> Diagnostic:
        """``diag`` with its locations (and its fix's) relative to its cell, and ``cell`` set."""
        if diag.code in FILE_LEVEL_CODES or not self.cells:
            return diag
        cell, location = self.to_cell(diag.location)
        end_cell, end = self.to_cell(diag.end_location)
        if end_cell != cell or end < location:
            span = next(c for c in self.cells if c.number == cell)
            end = span.last_position() if end_cell != cell else location
        noqa_row = diag.noqa_row
        if noqa_row is not None:
            noqa_cell, noqa = self.to_cell(Location(noqa_row, 1))
            noqa_row = noqa.row if noqa_cell == cell else location.row
        fix = diag.fix
        if fix is not None:
            fix = Fix(fix.message, fix.applicability, tuple(
                Edit(e.start, e.end, e.content, self.to_cell(e.location)[1], self.to_cell(e.end_location)[1])
                for e in fix.edits))
        return diag.with_changes(location=location, end_location=end, noqa_row=noqa_row, fix=fix, cell=cell,
                                 message=self.map_text(diag.message),
                                 help=self.map_text(diag.help) if diag.help else diag.help)

    def map_text(self, text: str) -> str:
        """``line N`` (a row of the joined text, as rule messages cite other lines) as
        ``cell C, line R``."""
        def cell_line(match: "re.Match[str]") -> str:
            row = int(match.group(1))
            if not 1 <= row < self.locator.line_count:
                return match.group(0)
            cell, location = self.to_cell(Location(row, 1))
            return f"cell {cell}, line {location.row}"

        return _LINE_REFERENCE.sub(cell_line, text)

    # -- edits -------------------------------------------------------------------------------
    def apply(self, edits: Sequence[Tuple[int, int, str]], skip_outside: bool = False) -> Tuple[Dict[int, str], int]:
        """Apply non-overlapping edits of the joined text to the raw cell sources.

        Returns (new source of every changed cell, number of edits applied). An edit outside a
        single cell or touching masked syntax raises ``EditOutsideCell``, or is skipped when
        ``skip_outside``."""
        by_cell: Dict[int, List[Tuple[int, int, str]]] = {}
        spans: Dict[int, CellSpan] = {}
        applied = 0
        for start, end, content in edits:
            try:
                cell = self.cell_of_edit(start, end)
            except EditOutsideCell:
                if skip_outside:
                    continue
                raise
            spans[cell.number] = cell
            raw_start = self._raw_offset(cell, start)
            raw_end = self._raw_offset(cell, end)
            by_cell.setdefault(cell.number, []).append((raw_start, raw_end, content))
            applied += 1
        out: Dict[int, str] = {}
        for number, cell_edits in by_cell.items():
            text = spans[number].source
            for start, end, content in sorted(cell_edits, reverse=True):
                text = text[:start] + content + text[end:]
            if text != spans[number].source:
                out[number] = text
        return out, applied

    def _raw_offset(self, cell: CellSpan, offset: int) -> int:
        """The offset in the cell's raw source of an offset of the joined text (outside masked
        lines, raw and masked lines are identical, so row and column carry over)."""
        location = self.locator.location(offset)
        row = location.row - cell.first_row + 1
        if row > cell.locator.line_count:  # after the cell's final newline
            return len(cell.source)
        return cell.locator.offset(row, location.column)

    def with_sources(self, sources: Mapping[int, str]) -> "NotebookText":
        return NotebookText([(c.number, sources.get(c.number, c.source)) for c in self.cells])


# -- the notebook file ---------------------------------------------------------------------------

@dataclass(frozen=True)
class _SourceValue:
    """Where a cell's ``"source"`` value is in the raw JSON text."""

    start: int
    end: int
    elements: Optional[Tuple[Tuple[int, int], ...]]  # spans of list elements; None for a string


@dataclass(frozen=True)
class CellInfo:
    """What output formats need of a notebook cell: its source and, for each of its rows, the
    line of the notebook file that holds it (``file_rows[row - 1]``)."""

    source: str
    file_rows: Tuple[int, ...]

    def file_row(self, row: int) -> int:
        if not self.file_rows:
            return 1
        return self.file_rows[max(0, min(row, len(self.file_rows)) - 1)]


@dataclass(frozen=True)
class CodeCell:
    number: int  # 1-based among all cells
    index: int  # 0-based index in the notebook's "cells" list
    source: str
    value: Optional[_SourceValue]


class Notebook:
    """A parsed notebook file: its JSON text (as a ``SourceFile``, for atomic writing), its data,
    its code cells, and where their sources are in the text."""

    def __init__(self, source: SourceFile, data: Dict[str, Any], cells: Tuple[CodeCell, ...],
                 python: bool) -> None:
        self.source = source
        self.data = data
        self.cells = cells
        self.python = python
        self._view: Optional[NotebookText] = None
        self._json_locator: Optional[Locator] = None

    @property
    def path(self) -> str:
        return self.source.path

    @property
    def text(self) -> str:
        return self.source.text

    @property
    def view(self) -> NotebookText:
        if self._view is None:
            self._view = NotebookText([(c.number, c.source) for c in self.cells])
        return self._view

    @property
    def magics(self) -> Tuple[Magic, ...]:
        return self.view.magics

    @property
    def sources(self) -> Dict[int, str]:
        return {c.number: c.source for c in self.cells}

    def cell_info(self) -> Dict[int, CellInfo]:
        if self._json_locator is None:
            self._json_locator = Locator(self.text)
        jl = self._json_locator
        out = {}
        for cell in self.cells:
            rows: List[int] = []
            if cell.value is not None:
                if cell.value.elements:
                    starts, offset = [], 0
                    for start, end in cell.value.elements:
                        starts.append(offset)
                        offset += len(json.loads(self.text[start:end]))
                    for row_start in Locator(cell.source).line_starts:
                        k = max(bisect.bisect_right(starts, row_start) - 1, 0)
                        rows.append(jl.location(cell.value.elements[k][0]).row)
                else:
                    rows = [jl.location(cell.value.start).row] * Locator(cell.source).line_count
            out[cell.number] = CellInfo(cell.source, tuple(rows))
        return out

    def render(self, sources: Mapping[int, str]) -> str:
        """The notebook's JSON text with the sources of the given cells replaced (a cell whose
        source is unchanged is not touched at all)."""
        current = self.sources
        sources = {n: s for n, s in sources.items() if s != current.get(n)}
        if not sources:
            return self.text
        ensure_ascii = _ensure_ascii(self.text)
        text = self.text
        by_number = {c.number: c for c in self.cells}
        replacements = []
        for number, new in sources.items():
            cell = by_number[number]
            if cell.value is None:  # pragma: no cover - code cells always have a located source
                raise SourceError("MLL999", "internal error: a cell source could not be located "
                                            "in the notebook; please report this bug")
            replacements.append((cell.value.start, cell.value.end,
                                 _dump_source(self.text, cell.value, new, ensure_ascii)))
        for start, end, content in sorted(replacements, reverse=True):
            text = text[:start] + content + text[end:]
        self._check_render(text, sources)
        return text

    def _check_render(self, text: str, sources: Mapping[int, str]) -> None:
        expected = json.loads(self.text, parse_constant=str)  # NaN != NaN would fail the check
        cells = expected["cells"]
        by_number = {c.number: c for c in self.cells}
        for number, new in sources.items():
            cell = cells[by_number[number].index]
            cell["source"] = _split_source(new) if isinstance(cell["source"], list) else new
        try:
            ok = json.loads(text, parse_constant=str) == expected
        except ValueError:
            ok = False
        if not ok:
            raise SourceError("MLL999", "internal error: writing the fixed cells would change more "
                                        "than their sources; nothing was written, please report this bug")


def _split_source(text: str) -> List[str]:
    """A cell source as nbformat stores it: one string per line, each with its ``\\n``."""
    return [m.group(0) for m in re.finditer(r"[^\n]*\n|[^\n]+", text)]


_NON_ASCII_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u(?!00[0-7])[0-9a-fA-F]{4}")


def _ensure_ascii(text: str) -> bool:
    """Whether the file writes non-ASCII characters as ``\\uXXXX`` escapes (nbformat does not)."""
    if any(ord(ch) > 127 for ch in text):
        return False
    return bool(_NON_ASCII_ESCAPE.search(text))


def _line_indent(text: str, offset: int) -> str:
    line_start = text.rfind("\n", 0, offset) + 1
    line = text[line_start:offset]
    return line[: len(line) - len(line.lstrip(" \t"))]


def _indent_unit(text: str) -> Optional[str]:
    """The indentation one nesting level adds (None: the file is written on one line)."""
    match = re.match(r"\s*\{(\s*)\"", text)
    if not match or "\n" not in match.group(1):
        return None
    return match.group(1).rsplit("\n", 1)[1]


def _dump_source(text: str, value: _SourceValue, new: str, ensure_ascii: bool) -> str:
    """The JSON for ``new`` in the style of the value it replaces."""
    if value.elements is None:
        return json.dumps(new, ensure_ascii=ensure_ascii)
    lines = _split_source(new)
    if not lines:
        return "[]"
    raw_of: Dict[str, str] = {}
    for start, end in value.elements:
        raw_of.setdefault(json.loads(text[start:end]), text[start:end])
    elements = value.elements
    if elements:
        open_ws = text[value.start + 1:elements[0][0]]
        close_ws = text[elements[-1][1]:value.end - 1]
        if len(elements) > 1:
            sep = text[elements[0][1]:elements[1][0]]
        else:  # one element: a newline layout repeats its indentation; a one-line one, json's ", "
            sep = "," + open_ws if open_ws else (", " if ", " in text else ",")
    else:  # an empty list: indent one level below the "source" key, in the file's style
        unit = _indent_unit(text)
        if unit is None:
            open_ws, sep, close_ws = "", ", ", ""
        else:
            indent = _line_indent(text, value.start)
            open_ws, close_ws = "\n" + indent + unit, "\n" + indent
            sep = "," + open_ws
    items = [raw_of.get(line) or json.dumps(line, ensure_ascii=ensure_ascii) for line in lines]
    return "[" + open_ws + sep.join(items) + close_ws + "]"


# -- parsing ---------------------------------------------------------------------------------------

_WS = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


def _skip(text: str, i: int) -> int:
    return _WS.match(text, i).end()  # type: ignore[union-attr]


def _source_values(text: str) -> List[Optional[_SourceValue]]:
    """For each element of the top-level ``"cells"`` list: where its ``"source"`` value is."""
    i = _skip(text, 0)
    if text[i:i + 1] != "{":
        return []
    i += 1
    found: List[Optional[_SourceValue]] = []
    while True:
        i = _skip(text, i)
        if text[i] == "}":
            return found
        key, i = _DECODER.raw_decode(text, i)
        i = _skip(text, _skip(text, i) + 1)  # past ":"
        if key == "cells" and text[i] == "[":
            found, i = _scan_cells(text, i)
        else:
            _, i = _DECODER.raw_decode(text, i)
        i = _skip(text, i)
        if text[i] == ",":
            i += 1


def _scan_cells(text: str, i: int) -> Tuple[List[Optional[_SourceValue]], int]:
    out: List[Optional[_SourceValue]] = []
    i += 1
    while True:
        i = _skip(text, i)
        if text[i] == "]":
            return out, i + 1
        if text[i] != "{":
            _, i = _DECODER.raw_decode(text, i)
            out.append(None)
        else:
            value: Optional[_SourceValue] = None
            i += 1
            while True:
                i = _skip(text, i)
                if text[i] == "}":
                    i += 1
                    break
                key, i = _DECODER.raw_decode(text, i)
                i = _skip(text, _skip(text, i) + 1)
                start = i
                _, i = _DECODER.raw_decode(text, i)
                if key == "source":
                    value = _SourceValue(start, i, _elements(text, start) if text[start] == "[" else None)
                i = _skip(text, i)
                if text[i] == ",":
                    i += 1
            out.append(value)
        i = _skip(text, i)
        if text[i] == ",":
            i += 1


def _elements(text: str, i: int) -> Tuple[Tuple[int, int], ...]:
    spans = []
    i += 1
    while True:
        i = _skip(text, i)
        if text[i] == "]":
            return tuple(spans)
        start = i
        _, i = _DECODER.raw_decode(text, i)
        spans.append((start, i))
        i = _skip(text, i)
        if text[i] == ",":
            i += 1


def _invalid(message: str) -> SourceError:
    return SourceError(INVALID_NOTEBOOK, message)


def _is_python(metadata: Any) -> bool:
    if not isinstance(metadata, dict):
        return True
    for holder, key in (("kernelspec", "language"), ("language_info", "name")):
        value = metadata.get(holder)
        if isinstance(value, dict) and isinstance(value.get(key), str):
            if value[key].strip().lower() not in ("python", "python3", "ipython", "ipython3", ""):
                return False
    return True


def parse_notebook(raw: bytes, path: str) -> Notebook:
    """A ``Notebook`` from the file's bytes; ``SourceError`` (MLL903 undecodable, MLL905 not a
    valid nbformat 4 notebook) otherwise."""
    bom = raw.startswith(codecs.BOM_UTF8)
    try:
        text = raw[len(codecs.BOM_UTF8):].decode("utf-8") if bom else raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise SourceError("MLL903", f"cannot decode the notebook as utf-8 at line {line}, byte {exc.start}: "
                                    f"{exc.reason}") from None
    try:
        data = json.loads(text)
    except RecursionError:
        raise _invalid("not a valid Jupyter notebook: the JSON is nested too deeply") from None
    except ValueError as exc:
        detail = f"line {exc.lineno}, column {exc.colno}: {exc.msg}" if isinstance(exc, json.JSONDecodeError) else str(exc)
        raise _invalid(f"not a valid Jupyter notebook: invalid JSON at {detail}") from None
    if not isinstance(data, dict):
        raise _invalid("not a valid Jupyter notebook: the JSON is not an object")
    version = data.get("nbformat")
    if version != 4:
        found = "no `nbformat` key" if version is None else f"nbformat {json.dumps(version)}"
        raise _invalid(f"not a Jupyter notebook in nbformat 4 ({found}); only nbformat 4 is supported")
    cells = data.get("cells")
    if not isinstance(cells, list):
        raise _invalid("not a valid Jupyter notebook: `cells` is missing or not a list")
    try:
        values = _source_values(text)
    except (IndexError, ValueError):  # pragma: no cover - the text parsed as JSON just above
        values = []
    code: List[CodeCell] = []
    for index, cell in enumerate(cells):
        number = index + 1
        if not isinstance(cell, dict):
            raise _invalid(f"not a valid Jupyter notebook: cell {number} is not an object")
        if cell.get("cell_type") != "code":
            continue
        source = cell.get("source", "")
        if isinstance(source, list) and all(isinstance(s, str) for s in source):
            source = "".join(source)
        elif not isinstance(source, str):
            raise _invalid(f"not a valid Jupyter notebook: the source of cell {number} is neither "
                           "a string nor a list of strings")
        value = values[index] if index < len(values) else None
        code.append(CodeCell(number, index, source, value))
    return Notebook(SourceFile(path, text, "utf-8", bom, raw), data, tuple(code), _is_python(data.get("metadata")))


def read_notebook(path: str) -> Notebook:
    try:
        raw = read_bytes(path)  # never blocks on a named pipe
    except OSError as exc:
        raise SourceError("MLL904", f"cannot read the file: {exc.strerror or exc}") from None
    return parse_notebook(raw, path)


def write_notebook(notebook: Notebook, text: str) -> None:
    """Atomically replace the notebook file with ``text`` (refused if it changed since read)."""
    write_source(notebook.source, text)


# -- checking and fixing (a layer over the pure core) ------------------------------------------------

@dataclass(frozen=True)
class NotebookFixResult:
    sources: Dict[int, str]  # the new source of every changed cell, by cell number
    applied: Tuple[Diagnostic, ...]  # mapped to cells
    remaining: Tuple[Diagnostic, ...]  # mapped to cells, in the fixed notebook


def _sorted(diagnostics: Sequence[Diagnostic]) -> List[Diagnostic]:
    return sorted(diagnostics, key=lambda d: (d.cell or 0, d.sort_key()))


def with_notebook_pins(settings: Any, view: NotebookText) -> Any:
    """``settings`` with the versions the notebook's own ``%pip install`` lines pin (nearer than
    any requirements file; explicit target versions still win)."""
    from mllint.settings import Settings
    from mllint.versions.pins import magic_pins, strongest, with_pins

    return with_pins(settings or Settings(), strongest(magic_pins(view.magics)))


def lint_notebook(notebook: Notebook, path: str, settings: Any = None, registry: Any = None) -> List[Diagnostic]:
    """Every diagnostic of the notebook, located in its cells; fixes that cannot be applied to the
    notebook (across cells, or touching IPython syntax) are removed."""
    from mllint.core.engine import lint_source

    view = notebook.view
    found = lint_source(view.text, path, with_notebook_pins(settings, view), registry)
    return _sorted([view.map_diagnostic(view.restrict(d)) for d in found])


def fix_notebook(notebook: Notebook, path: str, settings: Any = None, unsafe: Optional[bool] = None,
                 registry: Any = None) -> NotebookFixResult:
    """``fix_source`` for a notebook: the same passes, with only the fixes that stay inside one cell,
    applied to the raw cell sources (so masked IPython syntax comes back unchanged)."""
    return fix_cells(notebook.view, path, settings, unsafe, registry)


def fix_cells(view: NotebookText, path: str, settings: Any = None, unsafe: Optional[bool] = None,
              registry: Any = None) -> NotebookFixResult:
    """``fix_notebook`` for code cells that do not come from an ``.ipynb`` file (an editor's
    notebook document)."""
    from mllint.core.engine import (
        INTERNAL_ERROR, INVALID_SYNTAX, MAX_FIX_ITERATIONS, apply_fixes, lint_source, system_diagnostic)
    from mllint.settings import Settings

    settings = with_notebook_pins(settings or Settings(), view)
    unsafe = settings.unsafe_fixes if unsafe is None else unsafe
    original = view.sources
    diagnostics = [view.restrict(d) for d in lint_source(view.text, path, settings, registry)]
    applied: List[Diagnostic] = []
    for _ in range(MAX_FIX_ITERATIONS):
        if any(d.code == INVALID_SYNTAX for d in diagnostics):
            break
        new_text, used = apply_fixes(view.text, diagnostics, unsafe)
        if not used or new_text == view.text:
            break
        changed, _ = view.apply([(e.start, e.end, e.content) for d in used for e in d.fix.edits])  # type: ignore[union-attr]
        new_view = view.with_sources(changed)
        new_diagnostics = [new_view.restrict(d) for d in lint_source(new_view.text, path, settings, registry)]
        broken = [d for d in new_diagnostics if d.code == INVALID_SYNTAX]
        if broken:
            codes = ", ".join(sorted({d.code for d in used}))
            bug = system_diagnostic(
                INTERNAL_ERROR,
                f"internal error: the fix for {codes} produced invalid code on {path} ({broken[0].message}); "
                "the fix was not applied, please report this bug", registry=registry)
            diagnostics = [*diagnostics, bug]
            break
        applied.extend(view.map_diagnostic(d) for d in used)
        view, diagnostics = new_view, new_diagnostics
    sources = {n: s for n, s in view.sources.items() if s != original.get(n)}
    return NotebookFixResult(sources, tuple(applied), tuple(_sorted([view.map_diagnostic(d) for d in diagnostics])))
