"""``grouped`` (as ruff's): each file's path on a line of its own, then one indented line per
finding, ``row:col code message`` (``cell N:row:col`` in notebooks), and a blank line."""

from __future__ import annotations

from typing import Any, List, Sequence

from mllint.output.common import position


def render(results: Sequence, options: Any) -> str:
    out: List[str] = []
    unsafe = bool(getattr(options, "unsafe_fixes", False))
    for result in results:
        if not result.diagnostics:
            continue
        positions = [position(d) for d in result.diagnostics]
        width = max(len(p) for p in positions)
        out.append(f"{result.path}:")
        for pos, diag in zip(positions, result.diagnostics):
            mark = "[*] " if diag.fixable(unsafe) else ""
            out.append(f"  {pos:<{width}} {diag.code} {mark}{diag.message}")
        out.append("")
    return "".join(line + "\n" for line in out)
