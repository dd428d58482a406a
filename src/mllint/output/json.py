"""``json``: an array of diagnostics with ruff's field names, so tools that read ruff read it.

In a notebook, ``cell`` is the 1-based cell number and every row (also in ``fix.edits`` and
``noqa_row``) is relative to the cell; elsewhere ``cell`` is null.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional, Sequence

from mllint.core.diagnostic import Diagnostic, Location


def _location(loc: Location) -> Dict[str, int]:
    return {"row": loc.row, "column": loc.column}


def diagnostic_json(diag: Diagnostic, filename: str, cell: Optional[int] = None) -> Dict[str, Any]:
    fix = None
    if diag.fix is not None:
        fix = {
            "applicability": diag.fix.applicability.value,
            "message": diag.fix.message,
            "edits": [
                {"content": e.content, "location": _location(e.location), "end_location": _location(e.end_location)}
                for e in diag.fix.edits
            ],
        }
    return {
        "cell": cell if cell is not None else diag.cell,
        "code": diag.code,
        "name": diag.name,
        "message": diag.message,
        "severity": diag.severity.value,
        "filename": filename,
        "location": _location(diag.location),
        "end_location": _location(diag.end_location),
        "fix": fix,
        "help": diag.help,
        "noqa_row": diag.noqa_row,
        "url": diag.url,
    }


def json_filename(path: str) -> str:
    """The ``filename`` field: absolute, except standard input (``-``)."""
    return path if path == "-" or path.startswith("<") else os.path.abspath(path)


def render(results: Sequence, options: Any) -> str:
    items: List[Dict[str, Any]] = []
    for result in results:
        filename = json_filename(result.path)
        items.extend(diagnostic_json(d, filename) for d in result.diagnostics)
    return json.dumps(items, indent=2, ensure_ascii=False) + "\n"
