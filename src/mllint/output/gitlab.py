"""``gitlab``: a GitLab Code Quality report (a JSON array in the Code Climate subset GitLab reads).

``fingerprint`` is a SHA-256 of path, code, message and the finding's occurrence index among
identical findings of the file, so it does not change when lines move. Paths are relative to
``$CI_PROJECT_DIR`` when set, else to the current directory. Severities: error -> ``major``,
warning -> ``minor``, info -> ``info``. In a notebook, ``lines`` are lines of the ``.ipynb`` file
(the JSON line holding the cell's row) and the description ends with the cell position.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Sequence

from mllint.output.common import file_rows, relative_path, with_fingerprints

SEVERITIES = {"error": "major", "warning": "minor", "info": "info"}


def render(results: Sequence, options: Any) -> str:
    root = os.environ.get("CI_PROJECT_DIR") or None

    def path_of(path: str) -> str:
        return relative_path(path, root)

    items: List[Dict[str, Any]] = []
    for result, diag, fp in with_fingerprints(results, path_of):
        start, end = file_rows(result, diag)
        description = f"{diag.code}: {diag.message}"
        if diag.cell is not None:
            description += f" (cell {diag.cell}, line {diag.location.row}, column {diag.location.column})"
        items.append({
            "type": "issue",
            "check_name": diag.code,
            "description": description,
            "categories": ["Bug Risk"],
            "fingerprint": fp,
            "severity": SEVERITIES.get(diag.severity.value, "major"),
            "location": {"path": path_of(result.path), "lines": {"begin": start, "end": end}},
        })
    return json.dumps(items, indent=2, ensure_ascii=False) + "\n"
