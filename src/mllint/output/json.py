"""``json``: an array of diagnostics with ruff's field names, so tools that read ruff read it."""

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
        "cell": cell,
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


def render(results: Sequence, options: Any) -> str:
    items: List[Dict[str, Any]] = []
    for result in results:
        filename = result.path if result.path == "-" or result.path.startswith("<") else os.path.abspath(result.path)
        items.extend(diagnostic_json(d, filename) for d in result.diagnostics)
    return json.dumps(items, indent=2, ensure_ascii=False) + "\n"
