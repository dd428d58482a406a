"""Finding rules: every ``Rule`` subclass under ``mllint.rules`` plus third-party packs.

A third-party pack registers an entry point in the group ``mllint.rules`` that names either a
``Rule`` subclass or a module; every concrete ``Rule`` subclass with a code in that module is
loaded. A pack that fails to import is skipped with a warning instead of stopping the run.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import sys
from types import ModuleType
from typing import Dict, Iterable, List, Optional, Type

from mllint.core.rule import Rule

ENTRY_POINT_GROUP = "mllint.rules"


class RegistryError(Exception):
    pass


def _rules_in(module: ModuleType) -> Iterable[Type[Rule]]:
    for _, obj in inspect.getmembers(module, inspect.isclass):
        if issubclass(obj, Rule) and obj.code and obj.__module__ == module.__name__:
            yield obj


def _builtin_modules() -> Iterable[ModuleType]:
    import mllint.rules as package

    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        yield importlib.import_module(info.name)


def _entry_points():
    from importlib import metadata

    eps = metadata.entry_points()
    if hasattr(eps, "select"):
        return list(eps.select(group=ENTRY_POINT_GROUP))
    return list(eps.get(ENTRY_POINT_GROUP, []))  # Python 3.9


class Registry:
    def __init__(self, rules: Iterable[Type[Rule]], warnings: Optional[List[str]] = None) -> None:
        self.rules: Dict[str, Type[Rule]] = {}
        self.warnings = list(warnings or [])
        for rule in rules:
            other = self.rules.get(rule.code)
            if other is not None and other is not rule:
                raise RegistryError(
                    f"rule code {rule.code} is defined twice: {other.__module__}.{other.__name__} "
                    f"and {rule.__module__}.{rule.__name__}"
                )
            self.rules[rule.code] = rule
        self.rules = dict(sorted(self.rules.items()))
        self.by_name = {rule.name: rule for rule in self.rules.values()}

    def __iter__(self):
        return iter(self.rules.values())

    def get(self, code_or_name: str) -> Optional[Type[Rule]]:
        return self.rules.get(code_or_name.upper()) or self.by_name.get(code_or_name)


def load_registry(plugins: bool = True) -> Registry:
    rules: List[Type[Rule]] = []
    for module in _builtin_modules():
        rules.extend(_rules_in(module))
    warnings: List[str] = []
    if plugins:
        for ep in _entry_points():
            try:
                obj = ep.load()
            except Exception as exc:  # a broken pack must not stop the run
                warnings.append(f"could not load rule pack `{ep.name}` ({ep.value}): {exc}")
                continue
            if inspect.isclass(obj) and issubclass(obj, Rule):
                rules.append(obj)
            elif inspect.ismodule(obj):
                rules.extend(_rules_in(obj))
            else:
                warnings.append(f"rule pack `{ep.name}` ({ep.value}) is neither a Rule nor a module")
    return Registry(rules, warnings)


_DEFAULT: Optional[Registry] = None


def default_registry() -> Registry:
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = load_registry()
        for warning in _DEFAULT.warnings:
            print(f"mllint: warning: {warning}", file=sys.stderr)
    return _DEFAULT
