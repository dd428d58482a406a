"""Every rule carries complete metadata: code, name, docs sections, cases, fix safety."""

from __future__ import annotations

import pytest
from packaging.specifiers import SpecifierSet

from mllint.core.registry import default_registry
from mllint.core.rule import CODE_PATTERN, NAME_PATTERN, REQUIRED_SECTIONS

RULES = list(default_registry())


def test_codes_and_names_are_unique():
    codes = [r.code for r in RULES]
    names = [r.name for r in RULES]
    assert len(set(codes)) == len(codes)
    assert len(set(names)) == len(names)


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.code)
def test_metadata(rule):
    assert CODE_PATTERN.match(rule.code)
    assert NAME_PATTERN.match(rule.name), rule.name
    assert rule.summary and not rule.summary.endswith(".")
    sections = rule.sections()
    for section in REQUIRED_SECTIONS:
        assert sections.get(section), f"{rule.code} docs lack '## {section}'"
    if rule.fix_availability() != "none":
        assert sections.get("Fix safety"), f"{rule.code} can fix but documents no fix safety"
    for package, spec in rule.premise.items():
        SpecifierSet(spec)  # raises when malformed
        assert package == package.lower()


@pytest.mark.parametrize("rule", [r for r in RULES if r.source_cases], ids=lambda r: r.code)
def test_has_cases(rule):
    assert rule.VALID, f"{rule.code} has no VALID case"
    assert rule.INVALID, f"{rule.code} has no INVALID case"


@pytest.mark.parametrize("rule", [r for r in RULES if r.code[3] != "9"], ids=lambda r: r.code)
def test_domain_rules_have_triggers_and_references(rule):
    assert rule.triggers, f"{rule.code} declares no prefilter triggers"
    assert "http" in rule.sections()["References"] or ".py" in rule.sections()["References"]
