"""mllint: a static analyzer for machine-learning training code.

The pure core, shared by the CLI and every integration::

    from mllint import lint_source, fix_source, Settings
    diagnostics = lint_source(text, "train.py", Settings())
    result = fix_source(text, "train.py", Settings(), unsafe=False)

The names below are imported on first use (PEP 562), so ``import mllint`` (and with it the
flake8 plugin, which flake8 imports on every start, even for ``flake8 --version``) stays cheap:
libcst and the rules are loaded only when something is checked.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "Applicability": "mllint.core.diagnostic", "Diagnostic": "mllint.core.diagnostic",
    "Edit": "mllint.core.diagnostic", "Fix": "mllint.core.diagnostic",
    "Location": "mllint.core.diagnostic", "Severity": "mllint.core.diagnostic",
    "FixResult": "mllint.core.engine", "fix_source": "mllint.core.engine",
    "lint_source": "mllint.core.engine", "Settings": "mllint.settings",
}

if TYPE_CHECKING:  # pragma: no cover
    from mllint.core.diagnostic import Applicability, Diagnostic, Edit, Fix, Location, Severity
    from mllint.core.engine import FixResult, fix_source, lint_source
    from mllint.settings import Settings


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mllint' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list:
    return sorted([*globals(), *_LAZY])


__all__ = [
    "Applicability", "Diagnostic", "Edit", "Fix", "FixResult", "Location", "Settings", "Severity",
    "__version__", "fix_source", "lint_source",
]
