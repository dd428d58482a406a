"""Documentation generated from metadata stays in sync with the code."""

from __future__ import annotations

from pathlib import Path

from mllint.docs import TABLE_BEGIN, TABLE_END, rule_table

ROOT = Path(__file__).resolve().parent.parent


def test_readme_rule_table_is_current():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    begin = readme.index(TABLE_BEGIN) + len(TABLE_BEGIN)
    end = readme.index(TABLE_END)
    assert readme[begin:end].strip() == rule_table(), "regenerate with: python -c 'from mllint.docs import rule_table; print(rule_table())'"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    command = ci.strip().splitlines()[-1]
    assert command in readme
