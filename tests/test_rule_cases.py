"""Every rule's own VALID and INVALID cases, run through the public core."""

from __future__ import annotations

import libcst as cst
import pytest

from mllint import Applicability, fix_source, lint_source
from mllint.core.registry import default_registry
from rule_cases import case_settings

RULES = list(default_registry())


def _cases(kind):
    for rule in RULES:
        for i, case in enumerate(getattr(rule, kind)):
            yield pytest.param(rule, case, id=f"{rule.code}-{kind.lower()}-{i}")


@pytest.mark.parametrize("rule, case", list(_cases("VALID")))
def test_valid(rule, case):
    compile(case.code, "case.py", "exec")  # a case that does not parse would test nothing
    settings = case_settings(rule, case.settings)
    found = [d for d in lint_source(case.code, "case.py", settings) if d.code == rule.code]
    assert found == [], f"{rule.code} fired on valid code:\n{case.code}\n{found}"


@pytest.mark.parametrize("rule, case", list(_cases("INVALID")))
def test_invalid(rule, case):
    if rule.source_cases and rule.code != "MLL902":  # MLL902's cases are syntax errors
        compile(case.code, "case.py", "exec")
    settings = case_settings(rule, case.settings)
    found = [d for d in lint_source(case.code, "case.py", settings) if d.code == rule.code]
    assert len(found) == case.count, f"expected {case.count} x {rule.code}, got {found}\n{case.code}"
    first = found[0]
    assert first.name == rule.name and first.severity == (case.severity or rule.severity)
    if case.line is not None:
        assert first.location.row == case.line
    if case.message is not None:
        assert case.message in first.message
    assert first.location <= first.end_location
    if case.applicability is not None:
        assert first.fix is not None and first.fix.applicability is case.applicability
    if case.fix is not None:
        unsafe = case.applicability is Applicability.UNSAFE
        result = fix_source(case.code, "case.py", settings, unsafe=unsafe)
        assert result.source == case.fix
        cst.parse_module(result.source)
        again = fix_source(result.source, "case.py", settings, unsafe=unsafe)
        assert again.source == result.source and not again.applied
