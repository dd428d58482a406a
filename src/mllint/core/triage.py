"""Triage: which rules can possibly report on a file, decided before libcst parses it.

A rule may declare ``requires``: groups of requirements on the *code* of a file, read from the
stdlib ``ast`` tree (about a tenth of the cost of a libcst parse, and the file's syntax check at
the same time). Like ``triggers``, every group must have one requirement that holds; a rule whose
requirements do not hold is not run on the file, and a file no rule is left for is never parsed
with libcst. A rule that declares nothing is always run (when its text ``triggers`` match).

A requirement is ``KIND:PATTERN``; ``PATTERN`` is matched against whole values, with ``*`` at its
start and/or end for "ends with", "starts with" or "contains". Several requirements joined with
``&`` form one alternative that holds when all of them do (``"import:trl & name:SFTTrainer"``).

- ``name:X``: an identifier in the code: a name, an attribute (``a.X``), a keyword argument
  (``f(X=1)``), a parameter, a function or class name, an imported name or its alias, a part of
  an imported module's dotted name, and ``True``/``False``/``None``. Not comments, docstrings or
  other strings.
- ``assign:X``: ``X`` is assigned to: ``X = ...``, ``obj.X = ...``, ``X += ...``, a ``for X in``
  or ``with ... as X`` target, ``(X := ...)``, ``del obj.X`` (a name or attribute in a store or
  delete context).
- ``call:X``: a call whose callee is ``X(...)`` or ``<anything>.X(...)``.
- ``keyword:X``: a keyword argument ``X=`` of a call (or of a class statement).
- ``import:P``: an absolute import of the module ``P`` or of a module below it, at any depth
  (``import P.sub``, ``from P import x``, ``from P.sub import *``). Relative imports never match.
- ``string:S``: a string (or bytes, read as latin-1) literal whose value is ``S``; a string that is
  a statement of its own (a docstring) does not count. Implicitly concatenated literals are one
  value, and the literal parts of an f-string are values of their own.
- ``number:N``: an int or float literal whose ``str()`` is ``N`` (``-100`` is the literal ``100``).
- ``call-lacking:X/K``: a call ``X(...)`` or ``<anything>.X(...)``, not made through ``self``
  (``self.X(...)``, ``self.a.X(...)``: a method or submodule, not a library function), that
  passes no keyword ``K`` and no ``**`` splat (no ``*`` in the pattern): for rules about a
  missing argument, such as ``F.dropout(x, p)`` without ``training=``.

Declarations are data, so they are cheap to check and easy to review: the test
``tests/test_triage.py`` runs every rule case and scenario fixture with triage on and off and
requires identical results. The matching only ever errs on the side of running a rule: a value
containing a newline may match more than it says, never less.

The requirements of ``name``, ``call``, ``keyword`` and ``import`` kinds also give a text
prefilter for free: their pattern (without ``*``) must occur in the source text, as identifiers
are written literally (a string literal may be spelled with escapes, so ``string`` and
``number`` requirements give none).
"""

from __future__ import annotations

import ast
import functools
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, FrozenSet, Iterable, List, Optional, Set, Tuple, Union

KINDS = ("name", "assign", "call", "keyword", "import", "string", "number", "call-lacking")
# Kinds whose values are written literally in the source (identifiers and dotted module names).
_LITERAL_KINDS = frozenset({"name", "assign", "call", "keyword", "import"})

Groups = Tuple[Tuple[str, ...], ...]


class TriageError(ValueError):
    """A malformed requirement (the rule is then run on every file, never skipped)."""


@dataclass(frozen=True)
class Requirement:
    kind: str
    needle: str  # what to look for in the kind's blob ("\nX\n", "\nX", "X\n" or "X")
    text: Optional[str]  # what must occur in the source text, when the kind is literal


def _requirement(spec: str) -> Requirement:
    kind, sep, pattern = spec.partition(":")
    if not sep or kind not in KINDS:
        raise TriageError(f"requirement `{spec}` must be KIND:PATTERN with KIND one of {', '.join(KINDS)}")
    if kind == "call-lacking":
        callee, slash, keyword = pattern.partition("/")
        if not (callee.isidentifier() and slash and keyword.isidentifier()):
            raise TriageError(f"requirement `{spec}` must be call-lacking:CALLEE/KEYWORD")
        return Requirement(kind, pattern, callee)
    starts, ends = pattern.startswith("*"), pattern.endswith("*") and len(pattern) > 1
    core = pattern[1 if starts else 0: len(pattern) - (1 if ends else 0)]
    if not core or "*" in core or "\n" in core:
        raise TriageError(f"requirement `{spec}`: `*` only at the start or end of a non-empty pattern")
    needle = ("" if starts else "\n") + core + ("" if ends else "\n")
    return Requirement(kind, needle, core if kind in _LITERAL_KINDS else None)


# An alternative: requirements that must all hold. A group: alternatives, one of which must hold.
Alternative = Tuple[Requirement, ...]
Compiled = Tuple[Tuple[Alternative, ...], ...]


@functools.lru_cache(maxsize=512)
def compile_groups(groups: Groups) -> Compiled:
    """Parsed requirement groups; ``TriageError`` when one is malformed."""
    if isinstance(groups, str) or not all(isinstance(g, tuple) and g for g in groups):
        raise TriageError("requires must be a tuple of non-empty tuples of strings")
    out = []
    for group in groups:
        alternatives = []
        for spec in group:
            if not isinstance(spec, str):
                raise TriageError(f"requirement `{spec!r}` is not a string")
            alternatives.append(tuple(_requirement(part.strip()) for part in spec.split("&")))
        out.append(tuple(alternatives))
    return tuple(out)


def text_allows(groups: Compiled, source: Union[str, Callable[[str], bool]]) -> bool:
    """The text prefilter implied by the requirements: False only when the code cannot match.
    ``source``: the text, or a function telling whether a word occurs in it."""
    contains = source.__contains__ if isinstance(source, str) else source
    for group in groups:
        if not any(all(r.text is None or contains(r.text) for r in alternative) for alternative in group):
            return False  # (a string/number requirement may be spelled with escapes: no text test)
    return True


class CodeFacts:
    """What the requirements are matched against, from one walk over the stdlib ``ast`` tree."""

    __slots__ = ("blobs", "calls")

    def __init__(self, values: Dict[str, Iterable[str]],
                 calls: Iterable[Tuple[str, FrozenSet[str]]] = ()) -> None:
        self.blobs = {kind: "\n" + "\n".join(values.get(kind, ())) + "\n" for kind in KINDS}
        self.calls = frozenset(calls)  # (callee, keywords) of every call without a ** splat

    def holds(self, requirement: Requirement) -> bool:
        if requirement.kind == "call-lacking":
            callee, _, keyword = requirement.needle.partition("/")
            return any(name == callee and keyword not in passed for name, passed in self.calls)
        return requirement.needle in self.blobs[requirement.kind]

    def allows(self, groups: Compiled) -> bool:
        return all(any(all(self.holds(r) for r in alternative) for alternative in group)
                   for group in groups)

    @classmethod
    def from_tree(cls, tree: ast.AST) -> "CodeFacts":
        values, calls = _collect(tree)
        return cls(values, calls)


def parse_quietly(source: str) -> ast.AST:
    """CPython's parser without the ``SyntaxWarning``s it prints for the user's code (raises
    ``SyntaxError``, ``ValueError``, ``RecursionError`` or ``MemoryError`` on failure)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return compile(source, "<mllint>", "exec", flags=ast.PyCF_ONLY_AST, dont_inherit=True)


_Name, _Attribute, _Constant, _Call = ast.Name, ast.Attribute, ast.Constant, ast.Call
_Expr, _keyword, _arg, _alias = ast.Expr, ast.keyword, ast.arg, ast.alias
_Import, _ImportFrom, _AST, _Load = ast.Import, ast.ImportFrom, ast.AST, ast.Load
_DEFS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
_NAMED = tuple(t for t in (getattr(ast, "MatchAs", None), getattr(ast, "MatchStar", None),
                           ast.ExceptHandler, getattr(ast, "TypeVar", None),
                           getattr(ast, "ParamSpec", None), getattr(ast, "TypeVarTuple", None))
               if t is not None)
_LISTS_OF_NAMES = tuple(t for t in (ast.Global, ast.Nonlocal) if t is not None)
_MATCH_MAPPING = getattr(ast, "MatchMapping", None)
_MATCH_CLASS = getattr(ast, "MatchClass", None)


# Fields that never hold a node the facts need (names, numbers, contexts and operators).
_SCALAR_FIELDS = frozenset({"ctx", "op", "ops", "id", "attr", "arg", "name", "asname", "module", "level",
                            "kind", "type_comment", "conversion", "is_async", "simple", "kwd_attrs",
                            "rest", "tag"})
_CHILD_FIELDS: Dict[type, Tuple[str, ...]] = {}


def _collect(tree: ast.AST) -> Tuple[Dict[str, Set[str]], Set[Tuple[str, FrozenSet[str]]]]:
    signatures: Set[Tuple[str, FrozenSet[str]]] = set()
    names: Set[str] = set()
    stores: Set[str] = set()
    calls: Set[str] = set()
    keywords: Set[str] = set()
    imports: Set[str] = set()
    strings: Set[str] = set()
    numbers: Set[str] = set()
    stack: List[object] = [tree]
    pop, push, extend = stack.pop, stack.append, stack.extend
    while stack:
        node = pop()
        if node is None:
            continue
        kind = type(node)
        if kind is _Name:
            names.add(node.id)  # type: ignore[attr-defined]
            if type(node.ctx) is not _Load:  # type: ignore[attr-defined]
                stores.add(node.id)  # type: ignore[attr-defined]
            continue
        if kind is _Attribute:
            names.add(node.attr)  # type: ignore[attr-defined]
            if type(node.ctx) is not _Load:  # type: ignore[attr-defined]
                stores.add(node.attr)  # type: ignore[attr-defined]
            push(node.value)  # type: ignore[attr-defined]
            continue
        if kind is _Constant:
            _constant(node.value, names, strings, numbers)  # type: ignore[attr-defined]
            continue
        if kind is _Expr and type(node.value) is _Constant:  # type: ignore[attr-defined]
            continue  # a docstring or a bare string: no meaning to any rule
        if kind is _Call:
            func = node.func  # type: ignore[attr-defined]
            callee = func.id if type(func) is _Name else func.attr if type(func) is _Attribute else None
            if callee is not None:
                calls.add(callee)
                passed = [k.arg for k in node.keywords]  # type: ignore[attr-defined]
                if None not in passed and not _through_self(func):  # a ** splat may pass anything
                    signatures.add((callee, frozenset(passed)))
        elif kind is _keyword:
            if node.arg is not None:  # type: ignore[attr-defined]
                names.add(node.arg)  # type: ignore[attr-defined]
                keywords.add(node.arg)  # type: ignore[attr-defined]
        elif kind is _arg:
            names.add(node.arg)  # type: ignore[attr-defined]
        elif kind is _alias:
            names.update(node.name.split("."))  # type: ignore[attr-defined]
            if node.asname:  # type: ignore[attr-defined]
                names.add(node.asname)  # type: ignore[attr-defined]
            continue
        elif kind is _Import:
            for alias in node.names:  # type: ignore[attr-defined]
                _add_module(imports, alias.name)
        elif kind is _ImportFrom:
            module = node.module or ""  # type: ignore[attr-defined]
            names.update(module.split("."))
            if node.level == 0 and module:  # type: ignore[attr-defined]
                _add_module(imports, module)
                for alias in node.names:  # type: ignore[attr-defined]
                    if alias.name != "*":
                        imports.add(f"{module}.{alias.name}")
        elif kind in _DEFS:
            names.add(node.name)  # type: ignore[attr-defined]
        elif kind in _NAMED:
            if getattr(node, "name", None):
                names.add(node.name)  # type: ignore[attr-defined]
        elif kind in _LISTS_OF_NAMES:
            names.update(node.names)  # type: ignore[attr-defined]
            continue
        elif kind is _MATCH_MAPPING:
            if node.rest:  # type: ignore[attr-defined]
                names.add(node.rest)  # type: ignore[attr-defined]
        elif kind is _MATCH_CLASS:
            names.update(node.kwd_attrs)  # type: ignore[attr-defined]
        fields = _CHILD_FIELDS.get(kind)
        if fields is None:
            fields = _CHILD_FIELDS[kind] = tuple(
                f for f in getattr(kind, "_fields", ()) if f not in _SCALAR_FIELDS)
        for field in fields:
            value = getattr(node, field, None)
            if value.__class__ is list:
                extend(value)  # None (dict unpacking, missing defaults) is skipped when popped
            elif value is not None:
                push(value)
    return ({"name": names, "assign": stores, "call": calls, "keyword": keywords, "import": imports,
             "string": strings, "number": numbers}, signatures)


def _through_self(func: ast.AST) -> bool:
    """``self.f`` or ``self.a.f``: a call of the object's own method or submodule."""
    while type(func) is _Attribute:
        func = func.value  # type: ignore[attr-defined]
    return type(func) is _Name and func.id == "self"  # type: ignore[attr-defined]


def _constant(value: object, names: Set[str], strings: Set[str], numbers: Set[str]) -> None:
    kind = type(value)
    if kind is str:
        strings.add(value)  # type: ignore[arg-type]
    elif kind is bool or value is None:
        names.add(str(value))  # libcst spells True/False/None as names
    elif kind is int or kind is float:
        numbers.add(str(value))
    elif kind is bytes:
        strings.add(value.decode("latin-1"))  # type: ignore[union-attr]
    elif kind is complex:
        numbers.add(str(value))


def _add_module(imports: Set[str], module: str) -> None:
    parts = module.split(".")
    for i in range(1, len(parts) + 1):
        imports.add(".".join(parts[:i]))


def facts_for(source: str) -> Optional[CodeFacts]:
    """The facts of ``source``, or None when CPython cannot parse it."""
    try:
        return CodeFacts.from_tree(parse_quietly(source))
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
