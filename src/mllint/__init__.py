"""mllint: a static analyzer for machine-learning training code.

The pure core, shared by the CLI and every integration::

    from mllint import lint_source, fix_source, Settings
    diagnostics = lint_source(text, "train.py", Settings())
    result = fix_source(text, "train.py", Settings(), unsafe=False)
"""

__version__ = "0.1.0"

from mllint.core.diagnostic import Applicability, Diagnostic, Edit, Fix, Location, Severity  # noqa: E402
from mllint.core.engine import FixResult, fix_source, lint_source  # noqa: E402
from mllint.settings import Settings  # noqa: E402

__all__ = [
    "Applicability", "Diagnostic", "Edit", "Fix", "FixResult", "Location", "Settings", "Severity",
    "__version__", "fix_source", "lint_source",
]
