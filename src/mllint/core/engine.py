"""The pure core: ``lint_source`` and ``fix_source`` work on text and touch no file system."""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from typing import Collection, Dict, List, Optional, Sequence, Set, Tuple, Type

import libcst as cst

from mllint.core.context import Context
from mllint.core.diagnostic import Diagnostic, Location
from mllint.core.locator import Locator
from mllint.core.registry import Registry, default_registry
from mllint.core.rule import Rule, SystemRule
from mllint.core.suppression import commentable_rows, parse_suppressions
from mllint.core.triage import Compiled, TriageError, compile_groups, facts_for, parse_quietly, text_allows
from mllint.settings import Settings, enabled_codes, premise_holds

# Codes the engine itself emits (documented in mllint.rules.meta).
INVALID_SYNTAX = "MLL902"
INTERNAL_ERROR = "MLL999"
UNUSED_NOQA = "MLL901"

MAX_FIX_ITERATIONS = 10


def _system(code: str, registry: Registry) -> Type[Rule]:
    return registry.rules[code]


def system_diagnostic(code: str, message: str, location: Location = Location(1, 1),
                      end_location: Optional[Location] = None, registry: Optional[Registry] = None,
                      start: int = 0, end: int = 0) -> Diagnostic:
    """A diagnostic for one of mllint's own codes (syntax errors, unreadable files, bugs)."""
    rule = _system(code, registry or default_registry())
    return Diagnostic(code=rule.code, name=rule.name, message=message, severity=rule.severity,
                      location=location, end_location=end_location or location,
                      noqa_row=location.row, url=rule.url(), start=start, end=end)


def _syntax_error(source: str, locator: Locator, registry: Registry) -> Optional[Diagnostic]:
    """A diagnostic for text libcst cannot parse; None when it parses."""
    if "\x00" in source:
        offset = source.index("\x00")
        loc = locator.location(offset)
        return system_diagnostic(INVALID_SYNTAX, "SyntaxError: source contains a null byte",
                                 loc, registry=registry, start=offset, end=offset)
    return None


def _too_deep(source: str, locator: Locator, registry: Registry) -> Optional[Diagnostic]:
    """CPython's verdict on nesting, asked before libcst: libcst's parser overflows its stack
    (a crash, not an exception) on ~1,200 nested brackets and takes minutes on long operator
    chains, both of which CPython refuses quickly. Small files cannot nest that deep."""
    if len(source) < _DEEP_MIN_CHARS:
        return None
    try:
        _compile_quietly(source)
    except SyntaxError as exc:
        if "too many nested parentheses" not in (exc.msg or ""):
            return None  # libcst judges the other syntax errors
        loc = Location(min(max(exc.lineno or 1, 1), locator.line_count), max(exc.offset or 1, 1))
        offset = locator.offset(loc.row, loc.column)
        return system_diagnostic(INVALID_SYNTAX, f"SyntaxError: {exc.msg}", loc, registry=registry,
                                 start=offset, end=offset)
    except (RecursionError, MemoryError) as exc:
        kind = "too deeply nested" if isinstance(exc, RecursionError) else "too large"
        return system_diagnostic(INVALID_SYNTAX, f"the file is {kind} to parse", registry=registry)
    except ValueError:
        return None
    return None


_DEEP_MIN_CHARS = 2000


def _parse(source: str, locator: Locator, registry: Registry,
           cpython_ok: bool = False) -> Tuple[Optional[cst.Module], Optional[Diagnostic]]:
    """``cpython_ok``: CPython's parser has accepted ``source`` (so it is not too deep for it)."""
    early = _syntax_error(source, locator, registry) or (
        None if cpython_ok else _too_deep(source, locator, registry))
    if early is not None:
        return None, early
    try:
        return cst.parse_module(source), None
    except cst.ParserSyntaxError as exc:
        row, column = max(exc.editor_line, 1), max(exc.editor_column, 1)
        message = exc.message.strip().splitlines()[0] if exc.message.strip() else "invalid syntax"
        python = _python_syntax_error(source)
        if python is not None:  # CPython's messages and positions are the ones users know
            message, row, column = python
        loc = Location(min(row, locator.line_count), column)
        offset = locator.offset(loc.row, loc.column)
        return None, system_diagnostic(INVALID_SYNTAX, f"SyntaxError: {message}", loc,
                                       registry=registry, start=offset, end=offset)
    except (RecursionError, MemoryError) as exc:
        kind = "too deeply nested" if isinstance(exc, RecursionError) else "too large"
        return None, system_diagnostic(INVALID_SYNTAX, f"the file is {kind} to parse", registry=registry)


def _compile_quietly(source: str) -> None:
    """CPython's parser, without the ``SyntaxWarning``s it prints for the user's code."""
    parse_quietly(source)


def _python_syntax_error(source: str) -> Optional[Tuple[str, int, int]]:
    try:
        _compile_quietly(source)
    except SyntaxError as exc:
        return exc.msg, max(exc.lineno or 1, 1), max(exc.offset or 1, 1)
    except (ValueError, RecursionError, MemoryError):
        return None
    return None


@dataclass(frozen=True)
class _Plan:
    rules: Tuple[Rule, ...]
    unused_noqa: bool
    # Per rule (same order): its compiled triage requirements, or None when it declares none.
    requirements: Tuple[Optional[Compiled], ...] = ()

    @property
    def triaged(self) -> bool:
        return any(r is not None for r in self.requirements)


def _requirements(rule: Rule) -> Optional[Compiled]:
    try:
        groups = rule.requirement_groups()
        return compile_groups(tuple(tuple(g) for g in groups)) if groups else None
    except (TriageError, TypeError):  # a malformed declaration never skips the rule
        return None


def _crashing(rule: Rule, exc: Exception) -> Rule:
    """``rule``, whose set-up raised ``exc``: its ``check`` re-raises it, so the crash is reported
    as MLL999 naming the rule and the file (as a crash in ``check`` is) and the others still run."""
    def check(ctx: Context) -> List[Diagnostic]:
        raise exc
    rule.check = check  # type: ignore[method-assign]
    return rule


def _instantiate(rule_class: Type[Rule], options: object) -> Rule:
    try:
        return rule_class(options)  # type: ignore[arg-type]
    except Exception as exc:
        return _crashing(rule_class.__new__(rule_class), exc)


def _applies(rule: Rule, source: str) -> bool:
    try:
        return rule.applies_to(source)
    except Exception as exc:
        _crashing(rule, exc)
        return True


def _plan(source: str, path: str, settings: Settings, registry: Registry) -> _Plan:
    """The rules to run on ``source``: selected for ``path``, premise holding, and (unless
    ``settings.triage`` is off) passing the text prefilter of their triggers and requirements."""
    codes = enabled_codes(settings, registry.rules, path)
    rules = []
    requirements = []
    for code in codes:
        rule_class = registry.rules[code]
        if issubclass(rule_class, SystemRule) or not premise_holds(rule_class, settings):
            continue
        rule = _instantiate(rule_class, settings.rule_options.get(code))
        if not settings.triage:
            rules.append(rule)
            continue
        needs = _requirements(rule)
        if _applies(rule, source) and (needs is None or text_allows(needs, source)):
            rules.append(rule)
            requirements.append(needs)
    return _Plan(tuple(rules), UNUSED_NOQA in codes, tuple(requirements))


def lint_source(source: str, path: str = "<stdin>", settings: Optional[Settings] = None,
                registry: Optional[Registry] = None) -> List[Diagnostic]:
    """Every diagnostic for ``source``, sorted, suppressions applied."""
    settings = settings or Settings()
    registry = registry or default_registry()
    locator = Locator(source)
    plan = _plan(source, path, settings, registry)
    wants_noqa = plan.unused_noqa and "noqa" in source.lower()
    if not plan.rules and not wants_noqa and settings.triage:
        # Nothing can fire: only check that the file is valid Python, as cheaply as possible.
        problem = _cheap_syntax_check(source, locator, registry)
        return [problem] if problem else []
    rules = plan.rules
    if plan.triaged:
        # CPython's parser is the syntax check and the triage at once; when it objects, libcst
        # judges below and every rule runs (so triage never decides on a file CPython rejects).
        facts = facts_for(source)
        if facts is not None:
            rules = tuple(rule for rule, needs in zip(plan.rules, plan.requirements)
                          if needs is None or facts.allows(needs))
            if not rules:
                return _finish([], source, locator, settings, registry, plan) if wants_noqa else []
    module, problem = _parse(source, locator, registry, cpython_ok=plan.triaged and facts is not None)
    if module is None:
        assert problem is not None
        return [problem]
    ctx = Context(source, path, module, settings, locator)
    try:
        ctx.nodes(cst.Module)  # the shared index: its one walk is where deep nesting overflows
    except RecursionError:
        return [system_diagnostic(INVALID_SYNTAX, "the file is too deeply nested to check", registry=registry)]
    found: List[Diagnostic] = []
    for rule in rules:
        ctx.rule = rule
        try:
            found.extend(rule.check(ctx))
        except Exception as exc:  # a bug in one rule must not lose the others' results
            if isinstance(exc, RecursionError) and _too_deep_to_check(ctx):  # the input, not a bug
                return [system_diagnostic(INVALID_SYNTAX, "the file is too deeply nested to check",
                                          registry=registry)]
            found.append(_internal_error(type(rule), path, exc, registry))
        finally:
            ctx.rule = None
    return _finish(found, source, locator, settings, registry, plan)


# A tree this deep overflows Python's recursion limit in libcst's recursive walks (positions,
# code generation) and in rules that recurse over expressions; real code nests 20 to 50 deep.
MAX_CHECKED_DEPTH = 100


def _too_deep_to_check(ctx: Context) -> bool:
    """Whether the module's syntax tree nests deeper than ``MAX_CHECKED_DEPTH`` nodes."""
    index = ctx._ensure_index()
    depth: Dict[cst.CSTNode, int] = {}
    for node in index.order:  # pre-order: a parent comes before its children
        parent = index.parent.get(node)
        depth[node] = depth[parent] + 1 if parent is not None else 0
        if depth[node] > MAX_CHECKED_DEPTH:
            return True
    return False


def _cheap_syntax_check(source: str, locator: Locator, registry: Registry) -> Optional[Diagnostic]:
    """Syntax check for a file no rule needs to look into: CPython's parser is ~10x faster
    than libcst's, and only when it objects is libcst asked (libcst has the last word, so a file
    is judged the same whether or not a rule looked into it)."""
    early = _syntax_error(source, locator, registry)
    if early is not None:
        return early
    try:
        _compile_quietly(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return _parse(source, locator, registry)[1]
    return None


def _internal_error(rule: Type[Rule], path: str, exc: BaseException, registry: Registry) -> Diagnostic:
    frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    where = f" at {frame.filename.rsplit('/', 1)[-1]}:{frame.lineno}" if frame else ""
    message = (f"internal error in {rule.code} ({rule.name}) on {path}: "
               f"{type(exc).__name__}: {exc}{where}; please report this bug")
    return system_diagnostic(INTERNAL_ERROR, message, registry=registry)


def _finish(found: List[Diagnostic], source: str, locator: Locator, settings: Settings,
            registry: Registry, plan: _Plan) -> List[Diagnostic]:
    suppressions = parse_suppressions(source, locator)
    if suppressions.commentable_rows is None and found:
        suppressions.commentable_rows = commentable_rows(source)
    kept: List[Diagnostic] = []
    used: Dict[int, Set[str]] = {}
    seen = set()
    for diag in found:
        key = (diag.code, diag.location, diag.end_location, diag.message)
        if key in seen:
            continue
        seen.add(key)
        noqa_row = suppressions.noqa_row(diag.location.row, locator.line_count)
        diag = diag.with_changes(noqa_row=noqa_row)
        if diag.code in (INVALID_SYNTAX, INTERNAL_ERROR):
            kept.append(diag)
            continue
        if suppressions.file_suppresses(diag.code):
            continue
        directive = None
        for row in (diag.location.row, noqa_row):
            candidate = suppressions.lines.get(row)
            if candidate is not None and candidate.suppresses(diag.code):
                directive = candidate
                break
        if directive is not None:
            used.setdefault(directive.row, set()).add(diag.code)
            continue
        kept.append(diag)
    if plan.unused_noqa:
        from mllint.rules.meta.unused_noqa import unused_noqa_diagnostics

        enabled = set(enabled_codes(settings, registry.rules))
        for diag in unused_noqa_diagnostics(suppressions, used, enabled, registry, locator):
            if not suppressions.file_suppresses(diag.code):
                kept.append(diag)
    kept.sort(key=Diagnostic.sort_key)
    return kept


# -- fixing ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FixResult:
    source: str
    applied: Tuple[Diagnostic, ...]  # the diagnostics whose fixes were applied, in order
    remaining: Tuple[Diagnostic, ...]  # what is left to report in the fixed source

    @property
    def changed(self) -> bool:
        return bool(self.applied)


def apply_fixes(source: str, diagnostics: Sequence[Diagnostic], unsafe: bool) -> Tuple[str, List[Diagnostic]]:
    """Apply every applicable fix whose edits overlap no fix applied before it in this pass."""
    chosen: List[Diagnostic] = []
    taken: List[Tuple[int, int]] = []
    candidates = [d for d in diagnostics if d.fixable(unsafe)]
    candidates.sort(key=lambda d: (d.fix.edits[0].start if d.fix and d.fix.edits else 0, d.code))
    for diag in candidates:
        assert diag.fix is not None
        spans = [(e.start, e.end) for e in diag.fix.edits]
        if any(_overlaps(a, b) for a in spans for b in taken):
            continue  # left for the next pass, on the re-linted text
        chosen.append(diag)
        taken.extend(spans)
    edits = sorted((e for d in chosen for e in d.fix.edits), key=lambda e: (e.start, e.end), reverse=True)
    out = source
    for edit in edits:
        out = out[: edit.start] + edit.content + out[edit.end:]
    return out, chosen


def _overlaps(a: Tuple[int, int], b: Tuple[int, int]) -> bool:
    if a[0] == a[1] == b[0] == b[1]:
        return True  # two insertions at one point: their order would be arbitrary
    return a[0] < b[1] and b[0] < a[1] or (a[0] == a[1] and b[0] < a[0] < b[1]) or (
        b[0] == b[1] and a[0] < b[0] < a[1])


def fix_source(source: str, path: str = "<stdin>", settings: Optional[Settings] = None,
               unsafe: Optional[bool] = None, registry: Optional[Registry] = None,
               only: Optional[Collection[str]] = None) -> FixResult:
    """Apply fixes until none is left (at most ``MAX_FIX_ITERATIONS`` passes).

    ``only``: apply only the fixes of these codes (every selected rule still runs, so
    suppressions and MLL901 see the whole selection; used by the per-rule codemods).

    A pass whose result does not parse is thrown away and reported as an internal error of the
    rule that produced it, so the returned source always parses when the input did. That rule's
    fixes are not applied to this source again; the other rules' fixes still are.
    """
    settings = settings or Settings()
    registry = registry or default_registry()
    unsafe = settings.unsafe_fixes if unsafe is None else unsafe
    applied: List[Diagnostic] = []
    bugs: List[Diagnostic] = []
    refused: Set[str] = set()  # codes whose fix broke the code
    text = source
    diagnostics = lint_source(text, path, settings, registry)
    for _ in range(MAX_FIX_ITERATIONS):
        if any(d.code == INVALID_SYNTAX for d in diagnostics):
            break
        candidates = [d for d in diagnostics if (only is None or d.code in only) and d.code not in refused]
        new_text, used = apply_fixes(text, candidates, unsafe)
        if not used or new_text == text:
            break
        new_diagnostics = lint_source(new_text, path, settings, registry)
        broken = [d for d in new_diagnostics if d.code == INVALID_SYNTAX]
        if broken:
            culprits, problem = _culprits(text, used, unsafe, registry)
            codes = sorted({d.code for d in culprits})
            refused.update(codes)
            bugs.append(system_diagnostic(
                INTERNAL_ERROR,
                f"internal error: the fix for {', '.join(codes)} produced invalid code on {path} "
                f"({(problem or broken[0]).message}); the fix was not applied, please report this bug",
                registry=registry))
            continue
        applied.extend(used)
        text, diagnostics = new_text, new_diagnostics
    if bugs:
        return FixResult(text, tuple(applied), tuple(sorted([*diagnostics, *bugs], key=Diagnostic.sort_key)))
    return FixResult(text, tuple(applied), tuple(diagnostics))


def _culprits(text: str, used: Sequence[Diagnostic], unsafe: bool,
              registry: Registry) -> Tuple[List[Diagnostic], Optional[Diagnostic]]:
    """The fixes of a broken pass that break ``text`` when applied alone, and the first one's
    syntax error; all of them (and no error) when only their combination breaks it."""
    found: List[Diagnostic] = []
    first: Optional[Diagnostic] = None
    for diag in used:
        alone, _ = apply_fixes(text, [diag], unsafe)
        problem = _cheap_syntax_check(alone, Locator(alone), registry)
        if problem is not None:
            found.append(diag)
            first = first or problem
    return (found, first) if found else (list(used), None)
