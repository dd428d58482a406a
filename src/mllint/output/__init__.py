"""Output formats: one module per format, each a function of the results."""

from __future__ import annotations

from typing import Callable, Dict

FORMATS = ("full", "concise", "json")


def renderer(name: str) -> Callable:
    if name == "json":
        from mllint.output.json import render
    elif name == "concise":
        from mllint.output.text import render_concise as render
    else:
        from mllint.output.text import render_full as render
    return render
