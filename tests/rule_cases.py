"""Helpers that turn a rule's own VALID/INVALID cases into settings and checks."""

from __future__ import annotations

from typing import Any, Mapping

from mllint.settings import Settings, parse_version


def case_settings(rule, overrides: Mapping[str, Any]) -> Settings:
    """Only ``rule`` enabled, plus the case's own settings."""
    changes = dict(overrides)
    if "target_versions" in changes:
        changes["target_versions"] = {k: parse_version(v, "case") for k, v in changes["target_versions"].items()}
    for key in ("extend_select", "ignore"):
        if key in changes:
            changes[key] = tuple(changes[key])
    select = changes.pop("select", (rule.code,))
    return Settings(select=tuple(select), **changes)
