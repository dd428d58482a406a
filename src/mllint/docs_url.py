"""Where a rule's documentation lives on the web (shared by every output that links to it)."""

from __future__ import annotations

DOCS_BASE = "https://mllint.readthedocs.io/en/latest/rules/"


def rule_url(code: str) -> str:
    """The documentation page of rule ``code`` (generated from ``docs/rules/<CODE>.md``)."""
    return f"{DOCS_BASE}{code}/"
