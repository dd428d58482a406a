"""``--statistics``: how many findings of each code, as ruff prints them::

      3	MLL101	[*] pad-token-is-eos
      1	MLL302	[ ] padding-mask-as-memory-mask

(count, code, a fix mark when any code is fixable, the rule's name), or with ``--output-format
json`` a JSON array of ``{"code", "name", "count", "fixable"}``, most frequent first.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Sequence


def statistics(results: Sequence, unsafe: bool) -> List[Dict[str, Any]]:
    stats: Dict[str, Dict[str, Any]] = {}
    for result in results:
        for diag in result.diagnostics:
            entry = stats.setdefault(diag.code, {"code": diag.code, "name": diag.name, "count": 0, "fixable": False})
            entry["count"] += 1
            entry["fixable"] = entry["fixable"] or diag.fixable(unsafe)
    return sorted(stats.values(), key=lambda s: (-s["count"], s["code"]))


def render_statistics(results: Sequence, options: Any, as_json: bool = False) -> str:
    stats = statistics(results, bool(getattr(options, "unsafe_fixes", False)))
    if as_json:
        return json.dumps(stats, indent=2) + "\n"
    if not stats:
        return ""
    count_width = max(len(str(s["count"])) for s in stats)
    code_width = max(len(s["code"]) for s in stats)
    any_fixable = any(s["fixable"] for s in stats)
    lines = []
    for s in stats:
        mark = ("[*] " if s["fixable"] else "[ ] ") if any_fixable else ""
        lines.append(f"{s['count']:>{count_width}}\t{s['code']:<{code_width}}\t{mark}{s['name']}")
    return "".join(line + "\n" for line in lines)
