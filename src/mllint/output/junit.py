"""``junit``: JUnit XML (GitLab/Jenkins/Azure test reports), built with ``xml.etree``.

One ``testsuite`` per file with findings (``name`` = the path), one ``testcase`` with a
``failure`` per finding; a run without findings gives one passing ``testcase`` ("No errors
found"). ``testcase`` carries ``file``, ``line`` and ``column``; in a notebook ``line`` is the line
of the ``.ipynb`` file holding the cell's row, ``cell`` is the cell number, and the failure text
starts with ``cell N, line R, col C``.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import Any, Sequence

from mllint.output.common import file_rows, relative_path

_INVALID_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _clean(text: str) -> str:
    return _INVALID_XML.sub("\ufffd", text)


def _classname(path: str) -> str:
    stem = re.sub(r"\.(py|ipynb)$", "", relative_path(path))
    return stem.strip("./").replace("/", ".") or stem


def render(results: Sequence, options: Any) -> str:
    root = ET.Element("testsuites", name="mllint")
    total = failures = 0
    for result in results:
        if not result.diagnostics:
            continue
        path = _clean(relative_path(result.path))
        suite = ET.SubElement(root, "testsuite", name=path, tests=str(len(result.diagnostics)),
                              failures=str(len(result.diagnostics)), errors="0", skipped="0")
        for diag in result.diagnostics:
            start, _ = file_rows(result, diag)
            attrs = {"name": f"{diag.code} ({diag.name})", "classname": _clean(_classname(result.path)),
                     "file": path, "line": str(start)}
            where = f"line {diag.location.row}, col {diag.location.column}"
            if diag.cell is not None:
                attrs["cell"] = str(diag.cell)
                where = f"cell {diag.cell}, {where}"
            else:
                attrs["column"] = str(diag.location.column)
            case = ET.SubElement(suite, "testcase", attrs)
            failure = ET.SubElement(case, "failure", type=diag.code, message=_clean(diag.message))
            failure.text = _clean(f"{where}, {diag.message}")
        total += len(result.diagnostics)
        failures += len(result.diagnostics)
    if total == 0:
        suite = ET.SubElement(root, "testsuite", name="mllint", tests="1", failures="0", errors="0", skipped="0")
        ET.SubElement(suite, "testcase", name="No errors found", classname="mllint")
        total = 1
    root.set("tests", str(total))
    root.set("failures", str(failures))
    root.set("errors", "0")
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
