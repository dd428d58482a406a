"""What an open document lints to, and the code actions for it: pure functions of the text(s),
the path and the settings (the server supplies them and does the I/O).

A ``.py`` document is linted as it is. A notebook's code cells (LSP notebook documents: each cell
is a text document of its own, ``vscode-notebook-cell:`` URIs in VS Code) are joined and masked
exactly as ``mllint.sources.notebook`` does for ``.ipynb`` files, linted as one module, and each
diagnostic is mapped back to its cell; fixes and ``# noqa`` directives are applied to the raw
cell source and sent as an edit of that cell's document.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from lsprotocol import types as lsp

from mllint.core.diagnostic import Applicability, Diagnostic
from mllint.core.engine import fix_source, lint_source
from mllint.runner import ALWAYS_ENGINE_CODES, noqa_edits
from mllint.server import convert
from mllint.server.convert import TextIndex
from mllint.settings import Settings
from mllint.sources.notebook import EditOutsideCell, NotebookText, fix_cells, with_notebook_pins


@dataclass(frozen=True)
class Cell:
    """One code cell of a notebook document: its 1-based number among *all* the notebook's cells
    (markdown too, as mllint numbers them), its document URI and text."""

    number: int
    uri: str
    text: str


@dataclass
class Finding:
    uri: str  # the document it is shown in: the .py document, or the notebook cell
    diagnostic: Diagnostic  # located in that document's text
    raw: Diagnostic  # located in the text that was linted (the joined cells of a notebook)
    lsp_diagnostic: lsp.Diagnostic  # as published


@dataclass
class Linted:
    """The findings of one lint of one document (a ``.py`` file or a whole notebook)."""

    path: str
    encoding: str
    uris: Tuple[str, ...]  # every document diagnostics are published for (also when empty)
    texts: Dict[str, str]  # uri -> the text the findings refer to
    findings: List[Finding] = field(default_factory=list)
    view: Optional[NotebookText] = None  # notebooks: the joined cells
    cells: Dict[int, str] = field(default_factory=dict)  # notebooks: cell number -> uri
    # "fix all" edits, computed on the first request (editors ask for code actions whenever the
    # cursor moves; ``fix_source`` lints the text again, at least once)
    fix_all: Optional[Dict[str, List[lsp.TextEdit]]] = field(default=None, repr=False)

    def diagnostics(self) -> Dict[str, List[lsp.Diagnostic]]:
        """The LSP diagnostics to publish, for every document of this lint."""
        out: Dict[str, List[lsp.Diagnostic]] = {uri: [] for uri in self.uris}
        for finding in self.findings:
            out.setdefault(finding.uri, []).append(finding.lsp_diagnostic)
        return out

    def index(self, uri: str) -> TextIndex:
        return TextIndex(self.texts[uri], self.encoding)


def lint_text(uri: str, text: str, path: str, settings: Settings, encoding: str) -> Linted:
    """Lint a Python document."""
    index = TextIndex(text, encoding)
    findings = [Finding(uri, d, d, convert.to_lsp_diagnostic(d, index))
                for d in lint_source(text, path, settings)]
    return Linted(path, index.encoding, (uri,), {uri: text}, findings)


def lint_cells(cells: Sequence[Cell], path: str, settings: Settings, encoding: str) -> Linted:
    """Lint a notebook's code cells as one module; each finding is shown in its cell (a finding
    about the whole file, such as an internal error, in the first cell)."""
    view = NotebookText([(c.number, c.text) for c in cells])
    by_number = {c.number: c for c in cells}
    linted = Linted(path, convert.normalize_encoding(encoding), tuple(c.uri for c in cells),
                    {c.uri: c.text for c in cells}, view=view,
                    cells={c.number: c.uri for c in cells})
    if not cells:
        return linted
    indexes = {c.uri: TextIndex(c.text, encoding) for c in cells}
    for raw in lint_source(view.text, path, with_notebook_pins(settings, view)):
        raw = view.restrict(raw)
        mapped = view.map_diagnostic(raw)
        cell = by_number.get(mapped.cell) if mapped.cell is not None else None
        uri = cell.uri if cell is not None else cells[0].uri
        linted.findings.append(Finding(uri, mapped, raw, convert.to_lsp_diagnostic(mapped, indexes[uri])))
    return linted


# -- code actions -------------------------------------------------------------------------------------

def _cell_edits(linted: Linted, sources: Dict[int, str]) -> Dict[str, List[lsp.TextEdit]]:
    """A minimal edit per changed cell, from the cells' new sources."""
    out: Dict[str, List[lsp.TextEdit]] = {}
    for number, new in sources.items():
        uri = linted.cells.get(number)
        if uri is None:
            continue
        edit = convert.minimal_edit(linted.texts[uri], new, linted.index(uri))
        if edit is not None:
            out[uri] = [edit]
    return out


def fix_changes(linted: Linted, finding: Finding) -> Dict[str, List[lsp.TextEdit]]:
    """The edits of ``finding``'s fix, per document (empty when it cannot be applied)."""
    fix = finding.raw.fix
    if fix is None or not fix.edits:
        return {}
    if linted.view is None:
        return {finding.uri: convert.fix_edits(fix.edits, linted.index(finding.uri))}
    try:
        sources, _ = linted.view.apply([(e.start, e.end, e.content) for e in fix.edits])
    except EditOutsideCell:
        return {}
    return _cell_edits(linted, sources)


def noqa_changes(linted: Linted, finding: Finding) -> Dict[str, List[lsp.TextEdit]]:
    """The edits adding ``# noqa: CODE`` for ``finding`` (the same edits as ``mllint
    --add-noqa``, merged into an existing directive); empty when there is nothing to add."""
    if finding.raw.code in ALWAYS_ENGINE_CODES:
        return {}
    if linted.view is None:
        text = linted.texts[finding.uri]
        edits = noqa_edits(text, [finding.raw])
        return {finding.uri: convert.offset_edits(edits, linted.index(finding.uri))} if edits else {}
    sources, _ = linted.view.apply(noqa_edits(linted.view.text, [finding.raw]), skip_outside=True)
    return _cell_edits(linted, sources)


def fix_all_changes(linted: Linted, settings: Settings) -> Dict[str, List[lsp.TextEdit]]:
    """The edits that apply every safe fix (``mllint --fix`` without ``--unsafe-fixes``: the
    same passes, until nothing is left to fix)."""
    if linted.fix_all is None:
        linted.fix_all = _fix_all_changes(linted, settings)
    return linted.fix_all


def _fix_all_changes(linted: Linted, settings: Settings) -> Dict[str, List[lsp.TextEdit]]:
    if linted.view is None:
        (uri,) = linted.uris
        old = linted.texts[uri]
        new = fix_source(old, linted.path, settings, unsafe=False).source
        edit = convert.minimal_edit(old, new, linted.index(uri))
        return {uri: [edit]} if edit is not None else {}
    fixed = fix_cells(linted.view, linted.path, settings, unsafe=False)
    return _cell_edits(linted, fixed.sources)


def _range_key(value: lsp.Range) -> Tuple[int, int, int, int]:
    return value.start.line, value.start.character, value.end.line, value.end.character


def has_safe_fix(linted: Linted) -> bool:
    return any(f.raw.fix is not None and f.raw.fix.applicability is Applicability.SAFE and f.raw.fix.edits
               for f in linted.findings)


def code_actions(linted: Linted, uri: str, requested: lsp.Range, only: Optional[Sequence[str]],
                 settings: Optional[Settings],
                 context: Sequence[lsp.Diagnostic] = ()) -> List[lsp.CodeAction]:
    """The code actions for ``requested`` (a range of document ``uri``): a quick fix per
    fixable finding there (unsafe ones labelled; display-only fixes are not offered), a
    ``# noqa`` action per code there, and "fix all safe" for the whole document when something
    in it is safely fixable (``settings`` None: not offered). A finding is "there" when its range
    touches ``requested`` or the client names it in ``context`` (Neovim sends the cursor's
    position and the diagnostics of its line)."""
    actions: List[lsp.CodeAction] = []
    quickfix = convert.kind_wanted(convert.QUICKFIX_KIND, only)
    named = {(d.code, _range_key(d.range)) for d in context if d.source in (None, convert.SOURCE)}
    here = [f for f in linted.findings if f.uri == uri and (
        convert.ranges_touch(f.lsp_diagnostic.range, requested)
        or (f.lsp_diagnostic.code, _range_key(f.lsp_diagnostic.range)) in named)]
    if quickfix:
        for finding in here:
            if not convert.offers_edit(finding.raw):
                continue
            changes = fix_changes(linted, finding)
            if changes:
                actions.append(convert.quick_fix_action(finding.diagnostic, finding.lsp_diagnostic, changes))
        seen = set()
        for finding in here:
            key = (finding.raw.code, finding.raw.noqa_row or finding.raw.location.row)
            if key in seen:
                continue
            seen.add(key)
            changes = noqa_changes(linted, finding)
            if changes:
                actions.append(convert.noqa_action(finding.raw.code, finding.lsp_diagnostic, changes))
    if settings is not None and convert.kind_wanted(convert.FIX_ALL_KIND, only) and has_safe_fix(linted):
        changes = fix_all_changes(linted, settings)
        if changes:
            actions.append(convert.fix_all_action(changes))
    return actions
