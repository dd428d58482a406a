"""mllint's fixes as libcst codemod commands (published as ``mllint.codemods``).

One command per fixable rule (a rule whose cases show a fix, ``Rule.fix_availability()``), named
after the rule class (``PadTokenIsEos``) and also reachable by code (``MLL101``), plus ``FixAll``.
They are generated from the registry, so new rules and third-party rule packs get one too::

    python -m libcst.tool codemod -x mllint.codemods.PadTokenIsEos --no-format --unsafe-fixes src/
    python -m libcst.tool codemod -x mllint.codemods.FixAll --no-format src/

``-x`` makes libcst import ``mllint.codemods`` and take the attribute; without it libcst looks
the command up below the ``modules`` of ``.libcst.codemod.yaml`` (default:
``libcst.codemod.commands``), so with ``modules: [mllint]`` there the command is
``codemods.PadTokenIsEos``. ``--no-format`` keeps libcst from piping the result through its
configured formatter (black by default; ``formatter: []`` makes the run fail, it does not turn
formatting off), so the file is changed exactly as ``mllint --fix`` changes it.

Each command is the fix code of the CLI: ``fix_source`` on the module's text with the settings
``mllint`` would use for the file (the nearest ``[tool.mllint]``; ``--isolated`` ignores it).
``FixAll`` is ``mllint --fix``. A rule's command is ``mllint --fix --extend-select CODE`` applying
only that rule's fixes (``fix_source(only=...)``): the other selected rules still run, because
whether a ``# noqa`` is used (MLL901) depends on them; ``ignore``, ``per-file-ignores`` and
``# noqa`` directives are honoured. Unsafe fixes need ``--unsafe-fixes`` (or ``unsafe-fixes =
true`` in the config), as with ``mllint``. A file that no fix changes is skipped (``SkipFile``),
with the reason.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, ClassVar, Dict, Optional, Tuple, Type

import libcst as cst
from libcst.codemod import CodemodCommand, CodemodContext, SkipFile

from mllint.core.diagnostic import Applicability
from mllint.core.engine import fix_source
from mllint.core.registry import Registry, default_registry
from mllint.core.rule import Rule
from mllint.settings import ConfigResolver, Settings

INTERNAL_ERROR = "MLL999"
_RESOLVERS: Dict[bool, ConfigResolver] = {}


class MllintCodemod(CodemodCommand):
    """Apply mllint's fixes for ``codes`` (None: every rule the configuration selects)."""

    DESCRIPTION: str = "Apply mllint's safe fixes (with --unsafe-fixes, unsafe ones too)."
    codes: ClassVar[Optional[Tuple[str, ...]]] = None

    def __init__(self, context: CodemodContext, unsafe_fixes: bool = False,
                 isolated: bool = False) -> None:
        super().__init__(context)
        self.unsafe_fixes = unsafe_fixes
        self.isolated = isolated

    @staticmethod
    def add_args(arg_parser: argparse.ArgumentParser) -> None:
        arg_parser.add_argument(
            "--unsafe-fixes", action="store_true", default=False,
            help="Also apply unsafe fixes (they change behaviour on purpose; see `mllint rule CODE`).")
        arg_parser.add_argument(
            "--isolated", action="store_true", default=False,
            help="Ignore mllint's configuration files ([tool.mllint] in pyproject.toml, mllint.toml).")

    def settings(self, path: Optional[str]) -> Settings:
        """What ``mllint --fix`` would use for ``path``, with this command's rules selected."""
        anchor = Path(path).absolute() if path else Path.cwd() / "stdin"
        resolver = _RESOLVERS.get(self.isolated)
        if resolver is None:  # one per process: libcst makes a command per file
            resolver = _RESOLVERS[self.isolated] = ConfigResolver({}, isolated=self.isolated)
        # A ConfigError (naming the file and key) makes libcst report this file as failed.
        settings = resolver.for_path(anchor)
        if self.codes is not None:
            settings = settings.with_changes(extend_select=settings.extend_select + self.codes)
        return settings

    def transform_module_impl(self, tree: cst.Module) -> cst.Module:
        path = self.context.filename
        settings = self.settings(path)
        source = tree.code
        unsafe = self.unsafe_fixes or settings.unsafe_fixes
        result = fix_source(source, path or "<stdin>", settings, unsafe=unsafe, only=self.codes)
        for diag in result.remaining:
            if diag.code == INTERNAL_ERROR:
                self.warn(f"{diag.code} {diag.message}")
        if not result.applied or result.source == source:
            hidden = sum(1 for d in result.remaining
                         if d.fix is not None and d.fix.applicability is Applicability.UNSAFE
                         and (self.codes is None or d.code in self.codes))
            if hidden and not unsafe:
                raise SkipFile(f"no safe mllint fix applies ({hidden} unsafe fix"
                               f"{'es' if hidden != 1 else ''} available with --unsafe-fixes)")
            raise SkipFile("no mllint fix applies")
        return cst.parse_module(result.source, config=tree.config_for_parsing)


class FixAll(MllintCodemod):
    DESCRIPTION = ("Apply every mllint fix the configuration selects, as `mllint --fix` does "
                   "(with --unsafe-fixes, unsafe ones too).")
    codes = None


def fixable(rule: Type[Rule]) -> bool:
    """Whether a rule can fix (its cases show a fix); system rules such as MLL901 included."""
    return rule.fix_availability() != "none"


def make_codemod(rule: Type[Rule], module: str) -> Type[MllintCodemod]:
    """The codemod command for ``rule``, named after its class, living in ``module``."""
    namespace: Dict[str, Any] = {
        "__module__": module,
        "__qualname__": rule.__name__,
        "__doc__": f"{rule.code} ({rule.name}): {rule.summary}. Applies mllint's fix for it.",
        "DESCRIPTION": (f"Fix {rule.code} ({rule.name}): {rule.summary}. As `mllint --fix "
                        f"--extend-select {rule.code}`, applying only {rule.code}'s fixes (unsafe "
                        "ones need --unsafe-fixes)."),
        "codes": (rule.code,),
        "rule": rule,
    }
    return type(rule.__name__, (MllintCodemod,), namespace)


def generate(module: str, registry: Optional[Registry] = None) -> Dict[str, Type[MllintCodemod]]:
    """Every codemod command for ``module``'s namespace: by rule class name and by code.

    A class name already taken (by ``FixAll``, or by an earlier rule with the same class name in
    another pack) is skipped; the command is still reachable by its code.
    """
    registry = registry or default_registry()
    out: Dict[str, Type[MllintCodemod]] = {}
    taken = {"FixAll", "MllintCodemod"}
    for rule in registry:
        if not fixable(rule):
            continue
        name = rule.__name__ if rule.__name__ not in taken else rule.code
        command = make_codemod(rule, module)
        if name != rule.__name__:  # reachable (and picklable) under its code only
            command.__name__ = command.__qualname__ = name
        taken.add(name)
        out[name] = command
        out[rule.code] = command
    return out
