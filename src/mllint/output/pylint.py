"""``pylint``: ``path:row: [MLL101] message`` (``path.ipynb:cell 3:2: [MLL101] ...`` in notebooks),
the format pylint's ``parseable`` output and the editors' problem matchers read."""

from __future__ import annotations

from typing import Any, Sequence

from mllint.output.common import position


def render(results: Sequence, options: Any) -> str:
    return "".join(f"{r.path}:{position(d, column=False)}: [{d.code}] {d.message}\n"
                   for r in results for d in r.diagnostics)
