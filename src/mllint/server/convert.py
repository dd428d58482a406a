"""Pure conversions between mllint's values and the Language Server Protocol's.

Positions. mllint's rows and columns are 1-based and count characters (code points); LSP's lines
are 0-based and its ``character`` counts code units of the negotiated position encoding: UTF-16
by default, UTF-8 or UTF-32 when client and server agree on it during ``initialize`` (pygls
picks the client's first preference among the three). Lines end at ``\\n``, ``\\r\\n`` or a lone
``\\r`` in both worlds. ``TextIndex`` converts both ways for one text; a client position inside a
character (the second unit of a surrogate pair, or a UTF-8 continuation byte) falls back to the
start of that character, a position past the end of a line to the end of the line.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from lsprotocol import types as lsp

from mllint.core.diagnostic import Applicability, Diagnostic, Edit, Location, Severity
from mllint.core.locator import Locator

SOURCE = "mllint"
UTF8 = "utf-8"
UTF16 = "utf-16"
UTF32 = "utf-32"
ENCODINGS = (UTF8, UTF16, UTF32)

FIX_ALL_KIND = "source.fixAll.mllint"
FIX_ALL_TITLE = "mllint: fix all safe"
QUICKFIX_KIND = "quickfix"
# Codes whose finding is dead code (an unused suppression): shown faded.
UNNECESSARY_CODES = frozenset({"MLL901"})
_SEVERITY = {
    Severity.ERROR: lsp.DiagnosticSeverity.Error,
    Severity.WARNING: lsp.DiagnosticSeverity.Warning,
    Severity.INFO: lsp.DiagnosticSeverity.Information,
}


# -- positions -------------------------------------------------------------------------------------

def normalize_encoding(encoding: Optional[str]) -> str:
    """An encoding name of ``ENCODINGS`` (an unknown or missing one: LSP's default, UTF-16)."""
    value = str(getattr(encoding, "value", encoding) or UTF16).lower()
    return value if value in ENCODINGS else UTF16


def code_units(text: str, encoding: str = UTF16) -> int:
    """The length of ``text`` in code units of ``encoding``."""
    encoding = normalize_encoding(encoding)
    if encoding == UTF32 or text.isascii():
        return len(text)
    if encoding == UTF8:
        return len(text.encode("utf-8", "surrogatepass"))
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def units_to_index(line: str, units: int, encoding: str = UTF16) -> int:
    """The character index in ``line`` of a column counted in code units (clamped to the line;
    inside a character: that character's start)."""
    encoding = normalize_encoding(encoding)
    if units <= 0:
        return 0
    if encoding == UTF32 or line.isascii():
        return min(units, len(line))
    count = 0
    for index, char in enumerate(line):
        count += code_units(char, encoding)
        if count > units:
            return index
        if count == units:
            return index + 1
    return len(line)


class TextIndex:
    """Position conversions for one text in one position encoding."""

    def __init__(self, text: str, encoding: Optional[str] = UTF16) -> None:
        self.text = text
        self.encoding = normalize_encoding(encoding)
        self.locator = Locator(text)

    def position(self, location: Location) -> lsp.Position:
        """The LSP position of a 1-based (row, character column) location."""
        count = self.locator.line_count
        if location.row > count:
            return self.position_at(len(self.text))
        row = max(location.row, 1)
        line = self.locator.line(row)
        index = min(max(location.column - 1, 0), len(line))
        return lsp.Position(line=row - 1, character=code_units(line[:index], self.encoding))

    def position_at(self, offset: int) -> lsp.Position:
        """The LSP position of a character offset into the text."""
        return self.position(self.locator.location(min(max(offset, 0), len(self.text))))

    def range(self, start: Location, end: Location) -> lsp.Range:
        return lsp.Range(start=self.position(start), end=self.position(max(start, end)))

    def offset(self, position: lsp.Position) -> int:
        """The character offset of an LSP position (clamped to the text)."""
        if position.line < 0:
            return 0
        if position.line >= self.locator.line_count:
            return len(self.text)
        line = self.locator.line(position.line + 1)
        start = self.locator.line_starts[position.line]
        return start + units_to_index(line, position.character, self.encoding)

    def location(self, position: lsp.Position) -> Location:
        return self.locator.location(self.offset(position))


def _key(position: lsp.Position) -> Tuple[int, int]:
    return position.line, position.character


def ranges_touch(a: lsp.Range, b: lsp.Range) -> bool:
    """Whether two ranges overlap or touch (a cursor at either end of a range is in it)."""
    return _key(a.start) <= _key(b.end) and _key(b.start) <= _key(a.end)


# -- diagnostics -------------------------------------------------------------------------------------

def severity(value: Severity) -> lsp.DiagnosticSeverity:
    return _SEVERITY.get(value, lsp.DiagnosticSeverity.Warning)


def docs_url(diag: Diagnostic) -> Optional[str]:
    """The rule's documentation page: the diagnostic's own (``Rule.url()``: ``rule_url(code)``
    for built-in rules, a pack's ``docs_url``), else its rule's; None for a pack without one."""
    if diag.url:
        return diag.url
    from mllint.core.registry import default_registry

    rule = default_registry().rules.get(diag.code)
    return rule.url() if rule is not None else None


def to_lsp_diagnostic(diag: Diagnostic, index: TextIndex) -> lsp.Diagnostic:
    """An LSP diagnostic for ``diag``, whose locations refer to ``index``'s text (a notebook
    diagnostic: to its cell's text)."""
    href = docs_url(diag)
    message = diag.message if not diag.help else f"{diag.message}\nhelp: {diag.help}"
    data: Dict[str, Any] = {"name": diag.name}
    if diag.fix is not None:
        data["fix"] = diag.fix.applicability.value
    return lsp.Diagnostic(
        range=index.range(diag.location, diag.end_location),
        message=message,
        severity=severity(diag.severity),
        code=diag.code,
        code_description=lsp.CodeDescription(href=href) if href else None,
        source=SOURCE,
        tags=[lsp.DiagnosticTag.Unnecessary] if diag.code in UNNECESSARY_CODES else None,
        data=data,
    )


# -- edits --------------------------------------------------------------------------------------------

def offset_edits(edits: Iterable[Tuple[int, int, str]], index: TextIndex) -> List[lsp.TextEdit]:
    """Text edits for (start, end, content) character-offset edits of ``index``'s text."""
    return [lsp.TextEdit(range=lsp.Range(start=index.position_at(start), end=index.position_at(end)),
                         new_text=content) for start, end, content in edits]


def fix_edits(edits: Sequence[Edit], index: TextIndex, by_offset: bool = True) -> List[lsp.TextEdit]:
    """Text edits for a fix's edits: by their offsets (``by_offset``, the edits were computed on
    ``index``'s text), else by their locations (a notebook fix mapped to its cell's text)."""
    if by_offset:
        return offset_edits(((e.start, e.end, e.content) for e in edits), index)
    return [lsp.TextEdit(range=index.range(e.location, e.end_location), new_text=e.content) for e in edits]


def minimal_edit(old: str, new: str, index: TextIndex) -> Optional[lsp.TextEdit]:
    """One edit turning ``old`` (``index``'s text) into ``new``: the changed middle only, so the
    client keeps the cursor, folds and marks outside it; None when nothing changed."""
    if old == new:
        return None
    limit = min(len(old), len(new))
    prefix = 0
    while prefix < limit and old[prefix] == new[prefix]:
        prefix += 1
    suffix = 0
    while suffix < limit - prefix and old[-1 - suffix] == new[-1 - suffix]:
        suffix += 1
    # Never split a "\r\n": a position between its two characters is not a position in LSP.
    if 0 < prefix < len(old) and old[prefix - 1] == "\r" and old[prefix] == "\n":
        prefix -= 1
    if suffix and old[len(old) - suffix] == "\n" and len(old) - suffix > prefix and old[len(old) - suffix - 1] == "\r":
        suffix -= 1
    start, old_end, new_end = prefix, len(old) - suffix, len(new) - suffix
    return offset_edits([(start, old_end, new[start:new_end])], index)[0]


# -- code actions -------------------------------------------------------------------------------------

def fix_title(diag: Diagnostic) -> str:
    assert diag.fix is not None
    title = f"Fix {diag.code}: {diag.fix.message}"
    return title + " (unsafe)" if diag.fix.applicability is Applicability.UNSAFE else title


def noqa_title(code: str) -> str:
    return f"Disable {code} for this line (# noqa)"


def offers_edit(diag: Diagnostic) -> bool:
    """Whether ``diag``'s fix is offered as an edit (display-only fixes are not)."""
    return diag.fix is not None and diag.fix.edits != () and diag.fix.applicability in (
        Applicability.SAFE, Applicability.UNSAFE)


def kind_wanted(kind: str, only: Optional[Sequence[str]]) -> bool:
    """Whether a code action of ``kind`` answers a request restricted to ``only`` (LSP kinds are
    hierarchical: ``source`` asks for ``source.fixAll.mllint`` too)."""
    if not only:
        return True
    return any(kind == k or kind.startswith(k + ".") for k in map(str, (getattr(k, "value", k) for k in only)))


def workspace_edit(changes: Dict[str, List[lsp.TextEdit]]) -> lsp.WorkspaceEdit:
    return lsp.WorkspaceEdit(changes={uri: edits for uri, edits in changes.items() if edits})


def quick_fix_action(diag: Diagnostic, lsp_diag: lsp.Diagnostic,
                     changes: Dict[str, List[lsp.TextEdit]]) -> lsp.CodeAction:
    assert diag.fix is not None
    return lsp.CodeAction(
        title=fix_title(diag), kind=lsp.CodeActionKind.QuickFix, diagnostics=[lsp_diag],
        is_preferred=diag.fix.applicability is Applicability.SAFE or None,
        edit=workspace_edit(changes))


def noqa_action(code: str, lsp_diag: lsp.Diagnostic, changes: Dict[str, List[lsp.TextEdit]]) -> lsp.CodeAction:
    return lsp.CodeAction(title=noqa_title(code), kind=lsp.CodeActionKind.QuickFix,
                          diagnostics=[lsp_diag], edit=workspace_edit(changes))


def fix_all_action(changes: Dict[str, List[lsp.TextEdit]]) -> lsp.CodeAction:
    return lsp.CodeAction(title=FIX_ALL_TITLE, kind=FIX_ALL_KIND, edit=workspace_edit(changes))
