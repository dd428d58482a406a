"""The prefilter and triage never change a result, and they do skip what they can.

Every scenario fixture and every rule's own VALID/INVALID case is checked with triage on and off
(``Settings.triage``); the diagnostics must be identical.
"""

from __future__ import annotations

import ast
from pathlib import Path

import libcst as cst
import pytest

from mllint import Settings, lint_source
from mllint.core import engine
from mllint.core.context import NodeIndex, _fast_index
from mllint.core.registry import Registry, default_registry
from mllint.core.rule import Rule
from mllint.core.triage import CodeFacts, TriageError, _collect, compile_groups, facts_for, parse_quietly, text_allows
from rule_cases import case_settings

ROOT = Path(__file__).resolve().parent.parent

FIXTURES = sorted(p for p in (ROOT / "tests" / "fixtures").glob("*/*.py"))
ALL = Settings(select=("ALL",))


def _cases():
    for rule in default_registry():
        for kind in ("VALID", "INVALID"):
            for case in getattr(rule, kind):
                yield rule, case


def _compare_everything() -> int:
    """Lint every fixture and case with triage on and off; the number of comparisons made."""
    compared = 0
    for path in FIXTURES:
        source = path.read_text(encoding="utf-8")
        for settings in (Settings(), ALL):
            on = lint_source(source, str(path), settings)
            off = lint_source(source, str(path), settings.with_changes(triage=False))
            assert on == off, f"triage changed the result of {path}"
            compared += 1
    for rule, case in _cases():
        for settings in (case_settings(rule, case.settings), ALL):
            on = lint_source(case.code, "case.py", settings)
            off = lint_source(case.code, "case.py", settings.with_changes(triage=False))
            assert on == off, f"triage changed the result of a {rule.code} case:\n{case.code}"
            compared += 1
    return compared


def test_triage_never_changes_results_as_declared():
    assert _compare_everything() > 100


def test_every_source_rule_declares_a_triage():
    for rule in default_registry():
        if rule.source_cases and not rule.code.startswith("MLL9"):
            assert rule.requires, f"{rule.code} declares no `requires`: every file would be parsed for it"


def test_every_rules_own_declarations_are_well_formed():
    for rule in default_registry():
        groups = rule(None).requirement_groups()
        if groups:
            compile_groups(tuple(tuple(g) for g in groups))


# -- the facts -------------------------------------------------------------------------------

SOURCE = '''
"""Docstring naming generate and Transformer."""
import torch.nn.functional as F
from transformers import AutoModelForCausalLM as M, pipeline
from . import sibling
from .local import thing
# a comment: memory_mask backward
def train(model, *, lr=3e-4):
    """Mentions pad_token."""
    model.pad_token_id = tok.eos_token_id
    out = model.generate(x, max_new_tokens=5)
    labels[labels == tok.pad_token_id] = -100
    d = {"pad_token": 1, b"raw": 2}
    return f"{out.sequences}!", True
'''


def facts(source: str = SOURCE) -> CodeFacts:
    found = facts_for(source)
    assert found is not None
    return found


@pytest.mark.parametrize("requirement, expected", [
    ("name:pad_token_id", True), ("name:sequences", True), ("name:lr", True), ("name:M", True),
    ("name:AutoModelForCausalLM", True), ("name:functional", True), ("name:True", True),
    ("name:Transformer", False), ("name:memory_mask", False), ("name:backward", False),
    ("name:pad_token", False),  # only in a docstring and a string
    ("assign:pad_token_id", True), ("assign:out", True), ("assign:eos_token_id", False),
    ("call:generate", True), ("call:train", False), ("keyword:max_new_tokens", True),
    ("keyword:lr", False),  # a parameter, not a keyword argument of a call
    ("import:torch", True), ("import:torch.nn", True), ("import:torch.nn.functional", True),
    ("import:transformers.AutoModelForCausalLM", True), ("import:torc", False),
    ("import:local", False), ("import:sibling", False),  # relative imports never match
    ("string:pad_token", True), ("string:raw", True), ("string:!", True),
    ("string:Mentions pad_token.", False), ("number:100", True), ("number:0.0003", True),
    ("name:*ForCausalLM", True), ("name:AutoModel*", True), ("name:*ModelFor*", True),
    ("name:*ForSeq2SeqLM", False),
    ("call:generate & import:transformers", True), ("call:generate & import:peft", False),
    ("call-lacking:generate/attention_mask", True), ("call-lacking:generate/max_new_tokens", False),
    ("call-lacking:train/lr", False),  # no call of train at all
])
def test_requirements_match_the_code_only(requirement, expected):
    assert facts().allows(compile_groups(((requirement,),))) is expected


def test_groups_need_every_group_and_one_alternative():
    f = facts()
    assert f.allows(compile_groups((("name:nope", "call:generate"), ("import:torch",))))
    assert not f.allows(compile_groups((("call:generate",), ("import:peft", "name:nope"))))


@pytest.mark.parametrize("bad", [(("generate",),), (("kind:x",),), (("name:*",),), (("name:a*b",),),
                                 ("name:x",), ((),), (("name:",),), (("call-lacking:f",),),
                                 (("call-lacking:f*/k",),)])
def test_malformed_declarations_are_errors(bad):
    with pytest.raises(TriageError):
        compile_groups(bad)


def test_call_lacking_a_keyword():
    """``F.dropout(x, p)`` lacks ``training``; with ``training=`` or a ``**`` splat it does not."""
    lacking = compile_groups((("call-lacking:dropout/training",),))
    assert facts("F.dropout(x, 0.1)\n").allows(lacking)
    assert facts("F.dropout(x, 0.1, training=t)\nnn.functional.dropout(y, p=p)\n").allows(lacking)
    assert not facts("F.dropout(x, 0.1, training=self.training)\n").allows(lacking)
    assert not facts("F.dropout(x, **kw)\n").allows(lacking)
    assert not facts("h = self.dropout(h)\nh = self.block.dropout(h)\n").allows(lacking)  # modules
    assert not text_allows(lacking, "x = 1\n")


def test_text_prefilter_from_literal_kinds_only():
    groups = compile_groups((("call:generate",),))
    assert not text_allows(groups, "x = 1\n")
    assert text_allows(groups, "model.generate()\n")
    escaped = compile_groups((("string:pad_token",),))
    assert text_allows(escaped, 'd = {"pad\\x5ftoken": 1}\n')  # spelled with an escape
    assert facts('d = {"pad\\x5ftoken": 1}\n').allows(escaped)


def test_fast_walk_collects_what_a_plain_ast_walk_does():
    """The facts walker against an obviously correct ``ast.walk`` version, on real files."""
    def reference(tree):
        names, stores, calls, keywords, strings = set(), set(), set(), set(), set()
        docstrings = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr)
                      and isinstance(n.value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Name):
                names.add(node.id)
                if not isinstance(node.ctx, ast.Load):
                    stores.add(node.id)
            elif isinstance(node, ast.Attribute):
                names.add(node.attr)
                if not isinstance(node.ctx, ast.Load):
                    stores.add(node.attr)
            elif isinstance(node, ast.Call) and isinstance(node.func, (ast.Name, ast.Attribute)):
                calls.add(getattr(node.func, "id", None) or node.func.attr)
            elif isinstance(node, ast.keyword) and node.arg:
                keywords.add(node.arg)
            elif isinstance(node, ast.Constant) and isinstance(node.value, (str, bytes)) \
                    and id(node) not in docstrings:
                strings.add(node.value if isinstance(node.value, str) else node.value.decode("latin-1"))
        return names, stores, calls, keywords, strings

    files = FIXTURES + sorted((ROOT / "src" / "mllint").rglob("*.py"))
    for path in files:
        tree = parse_quietly(path.read_text(encoding="utf-8"))
        got, _ = _collect(tree)
        names, stores, calls, keywords, strings = reference(tree)
        assert names <= got["name"], path
        assert (stores, calls, keywords, strings) == (got["assign"], got["call"], got["keyword"],
                                                      got["string"]), path


def test_fast_node_index_is_libcsts_visit():
    """The node index without libcst's visitor meets the same nodes, in the same order, with the
    same parents (rules compare ``ctx.order``)."""
    for path in FIXTURES[:40] + sorted((ROOT / "src" / "mllint" / "rules").rglob("*.py"))[:10]:
        module = cst.parse_module(path.read_text(encoding="utf-8"))
        slow = NodeIndex()
        module.visit(slow)
        fast = _fast_index(module)
        assert fast is not None
        assert list(fast.order.items()) == list(slow.order.items()), path
        assert fast.parent == slow.parent and fast.end == slow.end and fast.by_type == slow.by_type, path


# -- the engine --------------------------------------------------------------------------------

class _Needy(Rule):
    """## What it does\nTest rule."""

    code = "MLL990"
    name = "needy"
    requires = (("import:torch",), ("call:generate",))

    def check(self, ctx):
        for call in ctx.nodes(cst.Call):
            yield ctx.report(call, "found a call")


class _Plain(_Needy):
    code = "MLL991"
    name = "plain"
    requires = ()


def _registry(*rules):
    base = default_registry()
    return Registry([*rules, *(r for r in base if r.code.startswith("MLL9"))])


def test_a_file_that_meets_no_requirement_is_never_parsed_by_libcst(monkeypatch):
    registry = _registry(_Needy)
    settings = Settings(select=("MLL990",))

    def boom(*args, **kwargs):
        raise AssertionError("libcst was asked")

    monkeypatch.setattr(engine.cst, "parse_module", boom)
    # "generate" and "torch" are in the text (so the text prefilter passes), not in the code.
    assert lint_source('"""torch generate"""\nx = 1  # generate(torch)\n', "a.py", settings, registry) == []
    monkeypatch.undo()
    found = lint_source("import torch\nmodel.generate()\n", "a.py", settings, registry)
    assert [d.code for d in found] == ["MLL990"]


def test_a_rule_declaring_nothing_always_runs():
    registry = _registry(_Plain)
    found = lint_source("x = f()\n", "a.py", Settings(select=("MLL991",)), registry)
    assert [d.code for d in found] == ["MLL991"]


def test_a_malformed_declaration_never_skips_the_rule():
    class Broken(_Needy):
        code = "MLL992"
        name = "broken"
        requires = (("nonsense",),)

    found = lint_source("x = f()\n", "a.py", Settings(select=("MLL992",)), _registry(Broken))
    assert [d.code for d in found] == ["MLL992"]


def test_syntax_errors_are_judged_the_same_with_and_without_triage():
    registry = _registry(_Needy)
    for source in ("import torch\nmodel.generate(\n", "x = (\n", "import torch\0\n", "def f(:\n"):
        settings = Settings(select=("MLL990",))
        on = lint_source(source, "a.py", settings, registry)
        off = lint_source(source, "a.py", settings.with_changes(triage=False), registry)
        assert on == off and [d.code for d in on] == ["MLL902"], source
