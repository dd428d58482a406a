"""Property tests (hypothesis) over generated and mutated programs.

Programs are built from the rules' own VALID/INVALID cases, the scenario fixtures and the bundled
examples, spliced together and mutated: identifiers renamed (to non-ASCII names too), lines
dropped or duplicated, comments, blank lines and ``# noqa`` directives inserted, CRLF/CR/mixed
newlines, indentation changed consistently (tabs, two spaces), unicode inserted, the whole program
wrapped in a function, a class or an ``if`` block, characters deleted. On every one:

- ``lint_source`` and ``fix_source`` never raise and report no internal error (MLL999);
- when the input parses, the fixed text parses; when it does not, it comes back unchanged;
- fixing is idempotent: a second ``fix_source`` applies nothing.

Arbitrary bytes through the stdin path (decode + lint) never raise either. The runs are
deterministic (``derandomize``, no example database, no bias from other modules' constants) and
bounded (a few seconds each).
"""

from __future__ import annotations

import ast
import keyword
import re
import warnings
from pathlib import Path
from typing import Callable, List

import libcst as cst
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mllint import Settings, fix_source, lint_source
from mllint.core.registry import default_registry
from mllint.runner import Mode, process_stdin

ROOT = Path(__file__).resolve().parent.parent


def _no_local_constants() -> None:
    """Recent hypothesis versions bias draws towards constants found in the project's loaded
    modules, so the examples would depend on what other tests happened to import; switch that
    off so every run (alone or in the whole suite) tries the same programs."""
    try:
        from hypothesis.internal.conjecture import providers
        from hypothesis.internal.constants_ast import Constants
    except ImportError:  # older hypothesis: no local constants
        return
    if hasattr(providers, "_get_local_constants"):
        empty = Constants()
        providers._get_local_constants = lambda: empty  # type: ignore[attr-defined]
        cache = getattr(providers, "CONSTANTS_CACHE", None)
        if cache is not None and hasattr(cache, "cache"):
            cache.cache.clear()


_no_local_constants()
REGISTRY = default_registry()
EVERY_RULE = Settings(select=tuple(REGISTRY.rules))


def _templates() -> List[str]:
    out = []
    for rule in REGISTRY:
        if rule.code != "MLL902":
            out += [case.code for case in (*rule.INVALID, *rule.VALID)]
    for path in sorted((ROOT / "tests" / "fixtures").glob("*/*.py")) + sorted((ROOT / "examples").glob("*.py")):
        if not path.name.endswith(".fixed.py"):
            out.append(path.read_text(encoding="utf-8"))
    return out


TEMPLATES = _templates()
NEW_NAMES = ["x", "données", "模型", "tokenizer", "model", "src_padding_mask", "memory_mask", "batch",
             "ΔW", "_", "pad_token", "eos_token", "generate", "nn", "torch", "labels", "input_ids"]
UNICODE = ["é", "模型", "🤗", "\u200b", "\u202e", "e\u0301", "𝔘𝔫𝔦", "\U0001f600", "ß", "ﬁ"]
IDENTIFIER = re.compile(r"(?<![\w.])[^\W\d]\w*")

Mutation = Callable[[Callable, str], str]


def _lines(text: str) -> List[str]:
    return text.splitlines(keepends=True) or [""]


def rename(draw, text: str) -> str:
    names = sorted({n for n in IDENTIFIER.findall(text) if not keyword.iskeyword(n)})
    if not names:
        return text
    old = draw(st.sampled_from(names))
    new = draw(st.sampled_from(NEW_NAMES))
    return re.sub(rf"(?<!\w){re.escape(old)}(?!\w)", new, text)


def drop_line(draw, text: str) -> str:
    lines = _lines(text)
    del lines[draw(st.integers(0, len(lines) - 1))]
    return "".join(lines)


def duplicate_line(draw, text: str) -> str:
    lines = _lines(text)
    i = draw(st.integers(0, len(lines) - 1))
    line = lines[i] if lines[i].endswith("\n") else lines[i] + "\n"
    return "".join(lines[:i] + [line] + lines[i:])


def insert_comment(draw, text: str) -> str:
    lines = _lines(text)
    i = draw(st.integers(0, len(lines)))
    comment = draw(st.sampled_from(["# a comment", "# noqa", "# noqa: MLL101", "# noqa: MLL302, E501",
                                    "# mllint: noqa", "# type: ignore", "# -*- coding: utf-8 -*-", "#"]))
    if i < len(lines) and draw(st.booleans()):  # at the end of a line
        body = lines[i].rstrip("\r\n")
        return "".join(lines[:i] + [body + "  " + comment + lines[i][len(body):]] + lines[i + 1:])
    following = lines[i] if i < len(lines) else ""
    indent = following[: len(following) - len(following.lstrip(" \t"))]
    return "".join(lines[:i] + [indent + comment + "\n"] + lines[i:])


def insert_blank_lines(draw, text: str) -> str:
    lines = _lines(text)
    i = draw(st.integers(0, len(lines)))
    return "".join(lines[:i] + ["\n" * draw(st.integers(1, 3))] + lines[i:])


def newlines(draw, text: str) -> str:
    style = draw(st.sampled_from(["\r\n", "\r", "mixed", "no-final"]))
    if style == "no-final":
        return text.rstrip("\n")
    if style == "mixed":
        return "".join(line.replace("\n", "\r\n") if j % 2 else line for j, line in enumerate(_lines(text)))
    return text.replace("\n", style)


def reindent(draw, text: str) -> str:
    unit = draw(st.sampled_from(["\t", "  ", "        "]))

    def fix(match: re.Match) -> str:
        spaces = match.group(0)
        return unit * (len(spaces) // 4) + " " * (len(spaces) % 4)

    return re.sub(r"(?m)^ +", fix, text)


def insert_unicode(draw, text: str) -> str:
    piece = draw(st.sampled_from(UNICODE))
    where = draw(st.sampled_from(["comment", "string", "docstring"]))
    line = {"comment": f"# {piece}\n", "string": f"text_{len(text) % 7} = {piece!r}\n",
            "docstring": f'"""{piece} docs"""\n'}[where]
    lines = _lines(text)
    i = draw(st.integers(0, len(lines)))
    return "".join(lines[:i] + [line] + lines[i:])


def wrap(draw, text: str) -> str:
    header = draw(st.sampled_from(["def wrapper():\n", "class Wrapper:\n", "if __name__ == '__main__':\n",
                                   "async def main():\n", "with ctx:\n", "try:\n"]))
    body = "".join("    " + line if line.strip() else line for line in _lines(text)) or "    pass\n"
    if not body.endswith("\n"):
        body += "\n"
    tail = "except Exception:\n    pass\n" if header == "try:\n" else ""
    return header + body + "    pass\n" + tail


def delete_characters(draw, text: str) -> str:
    if not text:
        return text
    start = draw(st.integers(0, len(text) - 1))
    return text[:start] + text[start + draw(st.integers(1, 3)):]


def splice(draw, text: str) -> str:
    other = draw(st.sampled_from(TEMPLATES))
    lines = _lines(text)
    i = draw(st.integers(0, len(lines)))
    return "".join(lines[:i]) + ("" if i == 0 or lines[i - 1].endswith("\n") else "\n") + other + "".join(lines[i:])


MUTATIONS: List[Mutation] = [rename, rename, drop_line, duplicate_line, insert_comment, insert_blank_lines,
                             newlines, reindent, insert_unicode, wrap, delete_characters, splice]


@st.composite
def programs(draw) -> str:
    text = draw(st.sampled_from(TEMPLATES))
    for mutation in draw(st.lists(st.sampled_from(MUTATIONS), max_size=4)):
        text = mutation(draw, text)
    return text


def parses(text: str) -> bool:
    try:
        cst.parse_module(text)
    except Exception:  # noqa: BLE001 - libcst raises several kinds
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            compile(text, "<p>", "exec", flags=ast.PyCF_ONLY_AST, dont_inherit=True)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            return False
    return True


PROPERTY = settings(max_examples=250, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


def check_fix_properties(text: str, rules: Settings, unsafe: bool) -> None:
    diagnostics = lint_source(text, "p.py", rules)
    assert not [d for d in diagnostics if d.code == "MLL999"], [d.message for d in diagnostics]
    result = fix_source(text, "p.py", rules, unsafe=unsafe)
    assert not [d for d in result.remaining if d.code == "MLL999"], (
        [d.message for d in result.remaining if d.code == "MLL999"], text)
    if parses(text):
        assert parses(result.source), (text, result.source)
    else:
        assert result.source == text and not result.applied
    again = fix_source(result.source, "p.py", rules, unsafe=unsafe)
    assert not again.applied and again.source == result.source, (
        [d.code for d in again.applied], text, result.source)


@PROPERTY
@given(programs())
def test_fixing_every_rule_with_unsafe_fixes(text):
    check_fix_properties(text, EVERY_RULE, unsafe=True)


@settings(PROPERTY, max_examples=100)
@given(programs())
def test_fixing_the_default_rules_safely(text):
    check_fix_properties(text, Settings(), unsafe=False)


@settings(PROPERTY, max_examples=200)
@given(st.one_of(st.binary(max_size=300),
                 st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
                 programs().map(lambda t: t.encode("utf-8")).flatmap(
                     lambda raw: st.integers(0, max(len(raw) - 1, 0)).map(
                         lambda i: raw[:i] + b"\xff\x00\xc3"[i % 3: i % 3 + 1] + raw[i + 1:]))))
def test_arbitrary_bytes_never_crash_the_stdin_path(raw):
    for mode in (Mode(), Mode(fix=True, unsafe=True)):
        result = process_stdin(raw, "stdin.py", EVERY_RULE, mode)
        assert not [d for d in result.diagnostics if d.code == "MLL999"], [d.message for d in result.diagnostics]
        if result.diagnostics and result.diagnostics[0].code in ("MLL902", "MLL903"):
            assert result.fixed == 0
