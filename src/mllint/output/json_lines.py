"""``json-lines``: one JSON object per line, the objects of the ``json`` format (as ruff)."""

from __future__ import annotations

import json
from typing import Any, Sequence

from mllint.output.json import diagnostic_json, json_filename


def render(results: Sequence, options: Any) -> str:
    return "".join(json.dumps(diagnostic_json(d, json_filename(r.path)), ensure_ascii=False) + "\n"
                   for r in results for d in r.diagnostics)
