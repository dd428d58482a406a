"""Fix safety, generic over the rule registry (so it covers rules added later too).

Programs: every rule's own VALID and INVALID cases, every scenario fixture
(``tests/fixtures/<CODE>/*.py``) and the bundled examples. On each, every rule's fixes are applied
alone (``select=(CODE,)``, safe only and with unsafe fixes) and all rules' fixes together
(``--fix`` and ``--fix --unsafe-fixes``). Whenever a fix is applied, the result must

- parse (libcst) and compile (CPython), when the input did;
- be final: a second ``fix_source`` applies nothing and changes nothing;
- bind every name it uses: no name is loaded-but-bound-nowhere in the fixed module that was not
  already so in the input (a fix calling ``torch.triu`` must import ``torch`` if nothing did);
- keep the newline style: the same program with CRLF newlines is fixed to the same text with
  CRLF newlines.

When nothing is applied the text comes back identical, and ``mllint --fix`` leaves such a file
byte for byte (and inode) as it was, while it writes exactly ``fix_source``'s result otherwise.
"""

from __future__ import annotations

import ast
import difflib
import json
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Set, Tuple

import libcst as cst
import pytest

from clihelp import run
from mllint import Settings, fix_source, lint_source
from mllint.core.registry import default_registry
from rule_cases import case_settings

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import check_corpus  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
REGISTRY = default_registry()
CODES: Tuple[str, ...] = tuple(REGISTRY.rules)
SYSTEM_ERRORS = ("MLL902", "MLL903", "MLL904", "MLL905", "MLL999")


@dataclass(frozen=True)
class Program:
    id: str
    source: str
    path: str = "program.py"
    settings: Mapping[str, Any] = field(default_factory=dict)  # a case's own settings


def _programs() -> List[Program]:
    out: List[Program] = []
    for rule in REGISTRY:
        if rule.code == "MLL902":
            continue  # its cases are syntax errors
        for kind in ("INVALID", "VALID"):
            for i, case in enumerate(getattr(rule, kind)):
                settings = {k: v for k, v in case.settings.items() if k != "select"}
                out.append(Program(f"{rule.code}-{kind.lower()}-{i}", case.code, "case.py", settings))
    fixtures = sorted(p for p in (ROOT / "tests" / "fixtures").glob("*/*.py") if not p.name.endswith(".fixed.py"))
    for path in [*fixtures, *sorted((ROOT / "examples").glob("*.py"))]:
        rel = path.relative_to(ROOT).as_posix()
        out.append(Program(rel, path.read_text(encoding="utf-8"), rel))
    return out


PROGRAMS = _programs()


def settings_for(program: Program, select: Tuple[str, ...], unsafe: bool) -> Settings:
    class _Only:  # case_settings wants something with a code
        code = select[0]

    return case_settings(_Only, {**program.settings, "select": select, "unsafe_fixes": unsafe})


# -- names used but bound nowhere --------------------------------------------------------------

def unbound_names(source: str) -> Optional[Set[str]]:
    """Names loaded somewhere in the module and bound nowhere in it (assignment, import, def,
    class, parameter, for/with/except target, comprehension, walrus, global, match capture) and
    not builtins. None when the module has a star import (anything may be bound). The judgement
    lives in ``bench/check_corpus.py`` so the corpus check applies the same one."""
    return check_corpus.unbound_names(ast.parse(source))


def test_unbound_names_sees_every_kind_of_binding():
    source = (
        "import a.b\nfrom c import d as e\nx = y\ndef f(p, *q, r=1, **s):\n    global g\n    return p, q, r, s, g\n"
        "class C: pass\nfor i in range(3): pass\nwith open(x) as h: pass\ntry:\n    pass\nexcept E as err:\n    pass\n"
        "z = [k for k in z2]\nif (w := 1): pass\nprint(a, e, f, C, i, h, err, z, w, undefined)\n")
    assert unbound_names(source) == {"y", "E", "z2", "undefined"}
    assert unbound_names("from m import *\nprint(anything)\n") is None


# -- the checks ------------------------------------------------------------------------------------

def _compiles(source: str) -> bool:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            compile(source, "<fixed>", "exec", dont_inherit=True)
        except (SyntaxError, ValueError):
            return False
    return True


def problems_of_fix(program: Program, source: str, settings: Settings, unsafe: bool) -> List[str]:
    """What is wrong with fixing ``source`` under ``settings`` (empty when nothing is)."""
    result = fix_source(source, program.path, settings, unsafe=unsafe)
    internal = [d.message for d in result.remaining if d.code == "MLL999"]
    if internal:
        return [f"internal error: {internal}"]
    if not result.applied:
        return [] if result.source == source else ["nothing was applied but the text changed"]
    problems = []
    fixed = result.source
    try:
        cst.parse_module(fixed)
    except Exception as exc:  # noqa: BLE001 - any failure is the finding
        problems.append(f"libcst cannot parse the result: {exc}")
    if _compiles(source) and not _compiles(fixed):
        problems.append("CPython cannot compile the result")
    if problems:
        return problems
    again = fix_source(fixed, program.path, settings, unsafe=unsafe)
    if again.applied or again.source != fixed:
        problems.append("not idempotent: a second run applies " + ", ".join(d.code for d in again.applied))
    before, after = unbound_names(source), unbound_names(fixed)
    if before is not None and after is not None and after - before:
        problems.append(f"uses names it does not bind: {sorted(after - before)}")
    if problems:
        diff = "".join(difflib.unified_diff(source.splitlines(True), fixed.splitlines(True), "before", "after"))
        problems.append("the fix:\n" + diff)
    return problems


def fixable_codes(program: Program) -> List[str]:
    """The codes with a fix on this program (with every rule selected, unsafe fixes shown)."""
    diagnostics = lint_source(program.source, program.path, settings_for(program, CODES, True))
    return sorted({d.code for d in diagnostics if d.fixable(True)})


@pytest.mark.parametrize("program", PROGRAMS, ids=lambda p: p.id)
def test_every_rules_fixes_alone(program):
    failures: Dict[str, List[str]] = {}
    for code in fixable_codes(program):
        for unsafe in (False, True):
            found = problems_of_fix(program, program.source, settings_for(program, (code,), unsafe), unsafe)
            if found:
                failures[f"{code} alone{' (unsafe)' if unsafe else ''}"] = found
    assert not failures, _report(program, failures)


@pytest.mark.parametrize("program", PROGRAMS, ids=lambda p: p.id)
def test_all_fixes_together(program):
    failures: Dict[str, List[str]] = {}
    for label, settings, unsafe in (
            ("--fix (default rules)", case_settings_default(program, False), False),
            ("--fix --unsafe-fixes (every rule)", settings_for(program, CODES, True), True)):
        found = problems_of_fix(program, program.source, settings, unsafe)
        if found:
            failures[label] = found
    assert not failures, _report(program, failures)


def case_settings_default(program: Program, unsafe: bool) -> Settings:
    """The default selection plus the case's own settings."""
    base = settings_for(program, CODES, unsafe)
    return base.with_changes(select=None)


@pytest.mark.parametrize("program", [p for p in PROGRAMS if "\r" not in p.source], ids=lambda p: p.id)
def test_fixes_keep_crlf_newlines(program):
    settings = settings_for(program, CODES, True)
    lf = fix_source(program.source, program.path, settings, unsafe=True)
    if not lf.applied:
        return
    crlf = fix_source(program.source.replace("\n", "\r\n"), program.path, settings, unsafe=True)
    assert crlf.source == lf.source.replace("\n", "\r\n"), _report(program, {"CRLF": [
        "".join(difflib.unified_diff(lf.source.replace("\n", "\r\n").splitlines(True),
                                     crlf.source.splitlines(True), "expected", "got"))]})


def _report(program: Program, failures: Dict[str, List[str]]) -> str:
    lines = [f"fixing {program.id} is unsafe:"]
    for label, found in failures.items():
        lines.append(f"  {label}:")
        lines.extend("    " + line for problem in found for line in problem.splitlines())
    lines.append("reproducer:\n" + program.source)
    return "\n".join(lines)


# -- the command line writes exactly what the core computes, and nothing else ------------------------

def test_mllint_fix_writes_fix_source_results_and_leaves_the_rest_byte_identical(tmp_path):
    """Every program as a file, plus one variant of each (CRLF newlines, a BOM or no trailing
    newline, in turn), one ``mllint --fix --unsafe-fixes`` run: a file the core would not change
    keeps its bytes and its inode (it is not rewritten); any other gets exactly the core's text."""
    settings = Settings(extend_select=("MLL901",), unsafe_fixes=True)
    files: Dict[str, bytes] = {}
    variants = (("crlf", lambda t: t.replace("\n", "\r\n").encode()),
                ("bom", lambda t: b"\xef\xbb\xbf" + t.encode()),
                ("nonl", lambda t: t.rstrip("\n").encode()))
    for i, program in enumerate(p for p in PROGRAMS if not p.settings):
        stem = f"p{i:03d}_{program.id.replace('/', '_').replace('.py', '').replace('-', '_')}"
        files[f"{stem}.py"] = program.source.encode()
        suffix, make = variants[i % len(variants)]
        files[f"{stem}_{suffix}.py"] = make(program.source)
    for name, raw in files.items():
        (tmp_path / name).write_bytes(raw)
    inodes = {name: os.stat(tmp_path / name).st_ino for name in files}
    proc = run(["-q", "--fix", "--unsafe-fixes", "--extend-select", "MLL901", "--output-format", "json", "."],
               tmp_path)
    assert proc.returncode in (0, 1), proc.stderr
    assert '"MLL999"' not in proc.stdout
    changed = unchanged = 0
    for name, raw in files.items():
        text = raw.decode("utf-8-sig")
        result = fix_source(text, name, settings, unsafe=True)
        now = (tmp_path / name).read_bytes()
        if result.source == text:
            assert now == raw, f"{name} has no fixable finding but was changed"
            assert os.stat(tmp_path / name).st_ino == inodes[name], f"{name} was rewritten"
            unchanged += 1
        else:
            assert now == raw[:3] * raw.startswith(b"\xef\xbb\xbf") + result.source.encode(), name
            changed += 1
    assert changed and unchanged


# -- the checks above can fail ---------------------------------------------------------------------

BAD_RULES = '''
import libcst as cst
from mllint.core.diagnostic import Applicability
from mllint.core.rule import Rule


class UsesUnboundName(Rule):
    code = "MLL891"
    name = "uses-unbound-name"
    triggers = (("zeros_here",),)

    def check(self, ctx):
        for node in ctx.nodes(cst.Name):
            if node.value == "zeros_here":
                yield ctx.report(node, "x", fix=ctx.fix("x", Applicability.SAFE, ctx.replace(node, "torch.zeros(1)")))


class NeverDone(Rule):
    code = "MLL892"
    name = "never-done"
    triggers = (("grow",),)

    def check(self, ctx):
        for node in ctx.nodes(cst.Name):
            if node.value == "grow":
                yield ctx.report(node, "x", fix=ctx.fix("x", Applicability.SAFE, ctx.edit(ctx.span(node)[1], ctx.span(node)[1], " + 1")))
'''


def test_the_checks_catch_unsafe_fixes(monkeypatch):
    import mllint.core.engine as engine
    from mllint.core.registry import Registry

    namespace: Dict[str, Any] = {"__name__": "bad_rules"}
    exec(compile(BAD_RULES, "bad_rules.py", "exec"), namespace)
    registry = Registry([*REGISTRY.rules.values(), namespace["UsesUnboundName"], namespace["NeverDone"]])
    monkeypatch.setattr(engine, "default_registry", lambda: registry)
    program = Program("bad", "x = zeros_here\ny = grow\n")
    unbound = problems_of_fix(program, program.source, Settings(select=("MLL891",)), False)
    assert unbound[0] == "uses names it does not bind: ['torch']"
    endless = problems_of_fix(program, program.source, Settings(select=("MLL892",)), False)
    assert endless[0].startswith("not idempotent: a second run applies MLL892")


# -- the same programs as notebooks ------------------------------------------------------------------

def _as_notebook(source: str) -> str:
    """``source`` as an nbformat 4 notebook: a code cell per top-level block (split before each
    line that starts a statement at column 0 after a blank line), a markdown cell in between.
    Every cell ends with a newline, so the cells joined are exactly ``source``."""
    cells: List[List[str]] = [[]]
    lines = source.splitlines(keepends=True)
    for i, line in enumerate(lines):
        if i and not lines[i - 1].strip() and line[:1].strip() and cells[-1]:
            cells.append([])
        cells[-1].append(line)
    if cells[-1] and not cells[-1][-1].endswith("\n"):
        cells[-1][-1] += "\n"
    notebook_cells: List[dict] = []
    for i, cell in enumerate(cells):
        notebook_cells.append({"cell_type": "code", "execution_count": None, "id": f"c{i}", "metadata": {},
                               "outputs": [], "source": cell})
        notebook_cells.append({"cell_type": "markdown", "id": f"m{i}", "metadata": {}, "source": [f"Step {i}"]})
    return json.dumps({"cells": notebook_cells, "metadata": {"language_info": {"name": "python"}},
                       "nbformat": 4, "nbformat_minor": 5}, indent=1, ensure_ascii=False) + "\n"


@pytest.mark.parametrize("program", [p for p in PROGRAMS if fixable_codes(p)], ids=lambda p: p.id)
def test_fixing_notebooks(program):
    """In memory (``--diff`` computes exactly what ``--fix`` writes; writing is tested elsewhere)."""
    import nbformat

    from mllint.runner import Mode, process_notebook
    from mllint.sources.notebook import parse_notebook

    settings = settings_for(program, CODES, True)
    mode = Mode(fix=True, unsafe=True, diff=True)
    notebook = parse_notebook(_as_notebook(program.source).encode("utf-8"), "program.ipynb")
    result = process_notebook(notebook, "program.ipynb", settings, mode)
    errors = [d.message for d in result.diagnostics if d.code in SYSTEM_ERRORS]
    assert not errors, _report(program, {"notebook": errors})
    fixed_text = result.source
    nbformat.validate(nbformat.reads(fixed_text, as_version=4))
    fixed = parse_notebook(fixed_text.encode("utf-8"), "program.ipynb")
    joined = fixed.view.text
    problems = [] if _compiles(joined) else ["the fixed cells do not compile"]
    before, after = unbound_names(program.source), unbound_names(joined) if not problems else None
    if before is not None and after is not None and after - before:
        problems.append(f"uses names it does not bind: {sorted(after - before)}")
    again = process_notebook(fixed, "program.ipynb", settings, mode)
    if again.fixed or again.diff:
        problems.append("not idempotent")
    assert not problems, _report(program, {"notebook": problems + [joined]})
