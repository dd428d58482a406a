"""``github``: GitHub Actions workflow commands, one annotation per finding::

    ::error file=train.py,line=3,col=1,endLine=3,endColumn=42,title=MLL101::pad token is ...

Escaping follows GitHub's runner (``%`` ``\\r`` ``\\n`` in the message; also ``:`` and ``,`` in
properties). Severities map to ``error``/``warning``/``notice``. In a notebook, ``line``/``endLine``
are lines of the ``.ipynb`` file (the JSON line holding the cell's row, which is what a pull
request's diff shows), there is no column, and the message starts with ``cell N:row:col:``.
"""

from __future__ import annotations

from typing import Any, List, Sequence

from mllint.output.common import file_rows, position, relative_path

LEVELS = {"error": "error", "warning": "warning", "info": "notice"}


def escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def render(results: Sequence, options: Any) -> str:
    lines: List[str] = []
    for result in results:
        path = escape_property(relative_path(result.path))
        for diag in result.diagnostics:
            start, end = file_rows(result, diag)
            props = [f"file={path}", f"line={start}"]
            message = diag.message
            if diag.cell is None:
                props.append(f"col={diag.location.column}")
                props.append(f"endLine={end}")
                props.append(f"endColumn={diag.end_location.column}")
            else:
                props.append(f"endLine={end}")
                message = f"{position(diag)}: {message}"
            props.append(f"title={escape_property(diag.code)}")
            lines.append(f"::{LEVELS.get(diag.severity.value, 'error')} {','.join(props)}::{escape_data(message)}")
    return "".join(line + "\n" for line in lines)
