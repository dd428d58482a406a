"""Human-readable formats: ``full`` (code frame and help) and ``concise`` (one line each).

In a notebook the position reads ``path.ipynb:cell 3:2:5:`` (cell 3, row 2 of the cell, column 5)
and the code frame shows the cell's own lines.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import click

from mllint.core.diagnostic import Applicability, Diagnostic
from mllint.core.locator import Locator
from mllint.output.common import position


@dataclass(frozen=True)
class RenderOptions:
    unsafe_fixes: bool = False
    color: bool = False


def _style(text: str, options: RenderOptions, **kwargs) -> str:
    return click.style(text, **kwargs) if options.color else text


def _fix_mark(diag: Diagnostic, options: RenderOptions) -> str:
    return "[*] " if diag.fixable(options.unsafe_fixes) else ""


def headline(path: str, diag: Diagnostic, options: RenderOptions) -> str:
    location = f"{position(diag)}:"
    code = _style(diag.code, options, fg="red", bold=True)
    return (f"{_style(path, options, bold=True)}:{location} {code} "
            f"{_fix_mark(diag, options)}{diag.message}")


def _frame(diag: Diagnostic, locator: Locator, options: RenderOptions) -> List[str]:
    row = diag.location.row
    if row > locator.line_count:
        return []
    line = locator.line(row)
    gutter = len(str(row + 1))
    bar = " " * gutter + " |"
    start = diag.location.column - 1
    if diag.end_location.row == row:
        end = max(diag.end_location.column - 1, start + 1)
        tail = ""
    else:
        end, tail = max(len(line), start + 1), " ..."
    prefix = "".join("\t" if ch == "\t" else " " for ch in line[:start])
    carets = _style("^" * (end - start) + tail, options, fg="red", bold=True)
    lines = [bar]
    if row > 1 and locator.line(row - 1).strip():
        lines.append(f"{row - 1:>{gutter}} | {locator.line(row - 1)}")
    lines.append(f"{row:>{gutter}} | {line}")
    lines.append(f"{bar} {prefix}{carets}")
    return lines


def _notes(diag: Diagnostic, options: RenderOptions) -> List[str]:
    notes = []
    if diag.help:
        notes.append(f"{_style('help', options, fg='cyan', bold=True)}: {diag.help}")
    fix = diag.fix
    if fix is not None:
        if fix.applicability is Applicability.UNSAFE and not options.unsafe_fixes:
            notes.append(f"note: an unsafe fix is available with `--unsafe-fixes`: {fix.message}")
        elif fix.applicability is Applicability.UNSAFE:
            notes.append(f"note: this is an unsafe fix and may change runtime behavior: {fix.message}")
        elif fix.applicability is Applicability.DISPLAY_ONLY:
            notes.append(f"suggestion: {fix.message}")
    return notes


def render_full(results: Sequence, options: RenderOptions) -> str:
    out: List[str] = []
    for result in results:
        locators: Dict[Optional[int], Optional[Locator]] = {}
        for diag in result.diagnostics:
            out.append(headline(result.path, diag, options))
            if diag.cell not in locators:
                text = result.source_of(diag) if hasattr(result, "source_of") else result.source
                locators[diag.cell] = Locator(text) if text is not None else None
            locator = locators[diag.cell]
            if locator is not None:
                out.extend(_frame(diag, locator, options))
            out.extend(_notes(diag, options))
            out.append("")
    return "\n".join(out) + ("\n" if out and out[-1] != "" else "")


def render_concise(results: Sequence, options: RenderOptions) -> str:
    lines = [headline(r.path, d, options) for r in results for d in r.diagnostics]
    return "".join(line + "\n" for line in lines)
