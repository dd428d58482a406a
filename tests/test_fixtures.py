"""Scenario fixtures: realistic files per rule, with the findings (and fixes) they must give.

``tests/fixtures/<CODE>/<case>.py`` is checked with the default rules plus ``<CODE>`` itself (so
rules that are off by default have scenarios too); ``<case>.expected``
lists ``row:col CODE`` per finding (empty for near-miss negatives); ``<case>.fixed.py``, when
present, is the result of ``fix_source(..., unsafe=True)``. Regenerate with
``pytest tests/test_fixtures.py --update-fixtures`` and review the diff.
"""

from __future__ import annotations

from pathlib import Path

import libcst as cst
import pytest

from mllint import Settings, fix_source, lint_source

FIXTURES = Path(__file__).parent / "fixtures"
CASES = sorted(p for p in FIXTURES.glob("*/*.py") if not p.name.endswith(".fixed.py"))


def _expected_text(diagnostics) -> str:
    return "".join(f"{d.location.row}:{d.location.column} {d.code}\n" for d in diagnostics)


@pytest.mark.parametrize("path", CASES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_fixture(path: Path, request) -> None:
    source = path.read_text(encoding="utf-8")
    settings = Settings(extend_select=(path.parent.name,))
    diagnostics = lint_source(source, str(path), settings)
    expected_path = path.with_suffix(".expected")
    fixed_path = path.with_name(path.stem + ".fixed.py")
    if request.config.getoption("--update-fixtures"):
        expected_path.write_text(_expected_text(diagnostics), encoding="utf-8")
    assert _expected_text(diagnostics) == expected_path.read_text(encoding="utf-8")
    if path.stem.startswith("near_miss"):
        assert not diagnostics, "near-miss fixtures must stay silent"
    if fixed_path.exists():
        result = fix_source(source, str(path), settings, unsafe=True)
        cst.parse_module(result.source)
        assert result.source == fixed_path.read_text(encoding="utf-8")
        assert fix_source(result.source, str(path), settings, unsafe=True).source == result.source


def test_every_rule_with_cases_has_scenarios() -> None:
    from mllint.core.registry import default_registry

    covered = {p.parent.name for p in CASES}
    for rule in default_registry():
        if rule.code[3] != "9":
            assert rule.code in covered, f"{rule.code} has no scenario fixtures"
            names = {p.stem for p in CASES if p.parent.name == rule.code}
            assert any(n.startswith("near_miss") for n in names), f"{rule.code} has no near-miss fixture"
