"""The rule API: a rule is a class with its metadata, its documentation and its own test cases.

A rule never walks the tree on its own account more than it must: it asks the shared analysis
(``ctx.index``, ``ctx.names``, ``ctx.get(SomeAnalysis)``) and reports through ``ctx.report``.
One instance is made per file, so a rule may keep per-file state on ``self``.
"""

from __future__ import annotations

import inspect
import re
import textwrap
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Dict, Iterable, Mapping, Optional, Tuple

from mllint.core.diagnostic import Applicability, Diagnostic, Severity

if TYPE_CHECKING:
    from mllint.core.context import Context

CODE_PATTERN = re.compile(r"^MLL[0-9]{3}$")
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9]*(?:-[a-z0-9]+)*$")
REQUIRED_SECTIONS = ("What it does", "Why is this bad?", "Example", "Use instead", "References")


@dataclass(frozen=True)
class Option:
    """A per-rule option, set in ``[tool.mllint.rules.MLLxxx]``."""

    name: str
    default: Any
    help: str

    def validate(self, value: Any) -> Optional[str]:
        """An error message, or None when ``value`` has the option's type."""
        expected = type(self.default)
        if expected is list:
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                return None
            return "a list of strings"
        if expected is bool:
            return None if isinstance(value, bool) else "true or false"
        if expected is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
            return None if ok else "an integer"
        return None if isinstance(value, expected) else f"a {expected.__name__}"


def _dedent(code: str) -> str:
    return textwrap.dedent(code).lstrip("\n")


@dataclass(frozen=True)
class Valid:
    """Code the rule must leave alone. ``settings`` overrides settings fields for this case."""

    code: str
    settings: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "code", _dedent(self.code))


@dataclass(frozen=True)
class Invalid:
    """Code the rule must report.

    ``line``: the row of the first diagnostic; ``count``: how many diagnostics; ``message``: a
    substring of the first message; ``fix``: the source after applying the rule's fixes (unsafe
    ones too when ``applicability`` is unsafe); ``applicability``: what the first fix must be;
    ``severity``: the first diagnostic's, when it is not the rule's own.
    """

    code: str
    line: Optional[int] = None
    count: int = 1
    message: Optional[str] = None
    fix: Optional[str] = None
    applicability: Optional[Applicability] = None
    settings: Mapping[str, Any] = field(default_factory=dict)
    severity: Optional[Severity] = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "code", _dedent(self.code))
        if self.fix is not None:
            object.__setattr__(self, "fix", _dedent(self.fix))


class Rule:
    """Base class of every rule. Subclasses set the class attributes and implement ``check``."""

    code: ClassVar[str] = ""
    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""  # one line, for tables and ``mllint rule``
    severity: ClassVar[Severity] = Severity.WARNING
    default_enabled: ClassVar[bool] = True
    preview: ClassVar[bool] = False
    tags: ClassVar[Tuple[str, ...]] = ()
    # Prefilter: the file must contain at least one string of every group, or the rule is not
    # run on it at all (and the file may not even be parsed).
    triggers: ClassVar[Tuple[Tuple[str, ...], ...]] = ()
    # Triage (``mllint.core.triage``): requirements on the *code* of the file, checked on the
    # stdlib ``ast`` tree before libcst parses it, e.g. ``(("import:torch",), ("call:generate",
    # "name:generation_config"))``; every group must have one that holds, or the rule is not run.
    # Empty: the rule runs on every file its ``triggers`` let through (never loses a result).
    requires: ClassVar[Tuple[Tuple[str, ...], ...]] = ()
    # Library versions for which the rule's premise holds: package -> PEP 440 specifier. When a
    # target version is known for the package and lies outside, the rule is not run.
    premise: ClassVar[Mapping[str, str]] = {}
    options: ClassVar[Tuple[Option, ...]] = ()
    # The rule's documentation page; None: mllint's own site for built-in rules, none for packs.
    docs_url: ClassVar[Optional[str]] = None
    # False for codes that no source text can produce (file-reading problems, internal errors):
    # they are exempt from the VALID/INVALID requirement.
    source_cases: ClassVar[bool] = True
    VALID: ClassVar[Tuple[Valid, ...]] = ()
    INVALID: ClassVar[Tuple[Invalid, ...]] = ()

    def __init__(self, options: Optional[Mapping[str, Any]] = None) -> None:
        values = {opt.name: opt.default for opt in self.options}
        values.update(options or {})
        self.config: Dict[str, Any] = values

    # -- metadata derived from the class -------------------------------------------------------
    @classmethod
    def explanation(cls) -> str:
        return inspect.cleandoc(cls.__doc__ or "")

    @classmethod
    def url(cls) -> Optional[str]:
        if cls.docs_url is not None:
            return cls.docs_url
        if cls.__module__.startswith("mllint.rules."):
            from mllint.docs_url import rule_url

            return rule_url(cls.code)
        return None

    @classmethod
    def fix_availability(cls) -> str:
        """``sometimes`` when a test case shows a fix, else ``none`` (as Fixit derives AUTOFIX)."""
        return "sometimes" if any(case.fix is not None for case in cls.INVALID) else "none"

    @classmethod
    def sections(cls) -> Dict[str, str]:
        out: Dict[str, str] = {}
        current = None
        for line in cls.explanation().splitlines():
            if line.startswith("## "):
                current = line[3:].strip()
                out[current] = ""
            elif current is not None:
                out[current] += line + "\n"
        return {k: v.strip() for k, v in out.items()}

    def trigger_groups(self) -> Tuple[Tuple[str, ...], ...]:
        """The prefilter groups; a rule whose options add names extends them here."""
        return self.triggers

    def applies_to(self, source: str) -> bool:
        return all(any(t in source for t in group) for group in self.trigger_groups())

    def requirement_groups(self) -> Tuple[Tuple[str, ...], ...]:
        """The triage groups (``requires``); a rule whose options add names extends them here."""
        return self.requires

    # -- the work ----------------------------------------------------------------------------
    def check(self, ctx: "Context") -> Iterable[Diagnostic]:
        raise NotImplementedError


class SystemRule(Rule):
    """A code mllint reports itself (syntax errors, undecodable files, internal errors).

    It has documentation and a code like any rule, but no ``check``: the engine emits it.
    """

    def check(self, ctx: "Context") -> Iterable[Diagnostic]:
        return ()
