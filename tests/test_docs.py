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


def test_generated_docs_are_current():
    from mllint.docs import stale

    assert stale(ROOT) == [], "regenerate with: python -m mllint.docs"


def test_every_rule_links_to_its_page():
    from mllint.core.registry import default_registry
    from mllint.docs_url import DOCS_BASE

    for rule in default_registry():
        assert rule.url() == f"{DOCS_BASE}{rule.code}/"
        assert (ROOT / "docs" / "rules" / f"{rule.code}.md").is_file()


def test_site_builds_without_warnings(tmp_path):
    """``mkdocs build --strict``: a broken link, a page missing from the navigation or a
    Markdown problem fails the build."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    page = (tmp_path / "site" / "rules" / "MLL101" / "index.html").read_text(encoding="utf-8")
    assert "Why is this bad?" in page
