"""Output formats: one module per format, each a function ``render(results, options) -> str``.

``results`` are ``runner.FileResult``s; ``options`` a ``text.RenderOptions``.
"""

from __future__ import annotations

import importlib
from typing import Callable, Dict, Tuple

# name -> (module, function); modules are imported only when their format is used.
RENDERERS: Dict[str, Tuple[str, str]] = {
    "full": ("mllint.output.text", "render_full"),
    "concise": ("mllint.output.text", "render_concise"),
    "json": ("mllint.output.json", "render"),
    "json-lines": ("mllint.output.json_lines", "render"),
    "sarif": ("mllint.output.sarif", "render"),
    "github": ("mllint.output.github", "render"),
    "gitlab": ("mllint.output.gitlab", "render"),
    "junit": ("mllint.output.junit", "render"),
    "grouped": ("mllint.output.grouped", "render"),
    "pylint": ("mllint.output.pylint", "render"),
}
FORMATS = tuple(RENDERERS)


def renderer(name: str) -> Callable:
    module, function = RENDERERS[name]
    return getattr(importlib.import_module(module), function)
