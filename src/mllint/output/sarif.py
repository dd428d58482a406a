"""``sarif``: a SARIF 2.1.0 log (GitHub code scanning, VS Code's SARIF viewer, Azure DevOps).

- ``tool.driver.rules[]`` lists every registered rule from its metadata (id = code, name,
  summary, full documentation as help, default level and enablement); results point at them by
  ``ruleId`` (the code, stable) and ``ruleIndex``.
- Paths under the current directory are relative URIs with ``uriBaseId`` ``%SRCROOT%``, which
  ``originalUriBaseIds`` maps to the current directory; others are absolute ``file:`` URIs.
- Regions are 1-based with exclusive end columns counted in Unicode code points
  (``columnKind``), as mllint's locations are.
- ``partialFingerprints["mllint/v1"]``: a SHA-256 of path, code, message and occurrence index.
- In a notebook the region covers the lines of the ``.ipynb`` file that hold the cell's rows
  (no columns: they would be columns of the JSON text); the location's ``message`` says
  ``cell N, line R, column C`` and its ``properties`` carry ``cell`` and ``cellRegion`` (the
  region inside the cell).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Sequence
from urllib.parse import quote

from mllint import __version__
from mllint.output.common import file_rows, is_outside, relative_path, with_fingerprints

SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
SRCROOT = "%SRCROOT%"
LEVELS = {"error": "error", "warning": "warning", "info": "note"}


def rule_descriptor(rule: Any) -> Dict[str, Any]:
    explanation = rule.explanation()
    descriptor: Dict[str, Any] = {
        "id": rule.code,
        "name": rule.name,
        "shortDescription": {"text": rule.summary},
        "fullDescription": {"text": rule.sections().get("What it does") or rule.summary},
        "help": {"text": explanation or rule.summary, "markdown": explanation or rule.summary},
        "defaultConfiguration": {"level": LEVELS.get(rule.severity.value, "warning"),
                                 "enabled": bool(rule.default_enabled)},
    }
    if rule.url():
        descriptor["helpUri"] = rule.url()
    tags = list(dict.fromkeys(rule.tags))
    properties: Dict[str, Any] = {"fix": rule.fix_availability()}
    if tags:
        properties["tags"] = tags
    descriptor["properties"] = properties
    return descriptor


def artifact_location(path: str) -> Dict[str, str]:
    rel = relative_path(path)
    if rel == "-" or rel.startswith("<"):
        return {"uri": quote(rel, errors="surrogateescape")}
    if is_outside(rel):
        return {"uri": Path(os.path.abspath(path)).as_uri()}
    return {"uri": quote(rel, errors="surrogateescape"), "uriBaseId": SRCROOT}


def _region(result: Any, diag: Any) -> Dict[str, int]:
    if diag.cell is not None:
        start, end = file_rows(result, diag)
        return {"startLine": start, "endLine": end}
    start, end = diag.location, diag.end_location
    if end < start:
        end = start
    return {"startLine": start.row, "startColumn": start.column, "endLine": end.row, "endColumn": end.column}


def render(results: Sequence, options: Any) -> str:
    from mllint.core.registry import default_registry

    rules = list(default_registry())
    index = {rule.code: i for i, rule in enumerate(rules)}
    items: List[Dict[str, Any]] = []
    for result, diag, fp in with_fingerprints(results):
        location: Dict[str, Any] = {"physicalLocation": {
            "artifactLocation": artifact_location(result.path),
            "region": _region(result, diag),
        }}
        if diag.cell is not None:
            location["message"] = {"text": f"cell {diag.cell}, line {diag.location.row}, "
                                           f"column {diag.location.column}"}
            location["properties"] = {"cell": diag.cell, "cellRegion": {
                "startLine": diag.location.row, "startColumn": diag.location.column,
                "endLine": max(diag.end_location.row, diag.location.row),
                "endColumn": diag.end_location.column}}
        item: Dict[str, Any] = {
            "ruleId": diag.code,
            "level": LEVELS.get(diag.severity.value, "warning"),
            "message": {"text": diag.message},
            "locations": [location],
            "partialFingerprints": {"mllint/v1": fp},
        }
        if diag.code in index:
            item["ruleIndex"] = index[diag.code]
        items.append(item)
    log = {
        "$schema": SCHEMA,
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {
                "name": "mllint",
                "version": __version__,
                "semanticVersion": __version__,
                "rules": [rule_descriptor(rule) for rule in rules],
            }},
            "originalUriBaseIds": {SRCROOT: {"uri": Path(os.getcwd()).as_uri().rstrip("/") + "/"}},
            "columnKind": "unicodeCodePoints",
            "results": items,
        }],
    }
    return json.dumps(log, indent=2, ensure_ascii=False) + "\n"
