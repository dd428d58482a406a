"""Qualified names, with every candidate.

``ImportMap`` reads every import of the module (at any depth: imports inside ``try``, ``if`` and
functions count, since ML scripts import lazily) and answers "what can this expression name?" with
a *set* of canonical qualified names. Conditional imports give several candidates; a rule matches
when any candidate matches (TorchFix picks one arbitrarily).

Canonical names: the public spelling of a class or function wherever it is imported from, e.g.
``torch.nn.modules.transformer.Transformer`` -> ``torch.nn.Transformer`` and
``transformers.data.data_collator.DataCollatorForLanguageModeling`` ->
``transformers.DataCollatorForLanguageModeling``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict, FrozenSet, Iterable, List, Optional, Set

import libcst as cst

if TYPE_CHECKING:
    from mllint.core.context import Context

# Packages that re-export every public class at the top level, so any ``pkg.<...>.CamelCase``
# is the same object as ``pkg.CamelCase``.
_FLAT_PACKAGES = ("transformers", "peft")
# Explicit module re-exports: a prefix and the public prefix it is exported under.
_PREFIX_ALIASES = (
    ("torch.nn.modules.transformer.", "torch.nn."),
    ("torch.nn.modules.activation.", "torch.nn."),
    ("torch.nn.modules.sparse.", "torch.nn."),
    ("torch.nn.modules.loss.", "torch.nn."),
    ("torch.nn.modules.module.", "torch.nn."),
    ("torch.nn.modules.container.", "torch.nn."),
    ("pytorch_lightning.", "lightning.pytorch."),
    ("lightning.pytorch.core.module.", "lightning.pytorch."),
    ("lightning.pytorch.core.", "lightning.pytorch."),
    ("lightning.LightningModule", "lightning.pytorch.LightningModule"),
    ("trl.trainer.sft_trainer.SFTTrainer", "trl.SFTTrainer"),
    ("trl.trainer.sft_config.SFTConfig", "trl.SFTConfig"),
    ("trl.trainer.utils.DataCollatorForCompletionOnlyLM", "trl.DataCollatorForCompletionOnlyLM"),
    ("trl.trainer.DataCollatorForCompletionOnlyLM", "trl.DataCollatorForCompletionOnlyLM"),
)


def canonical(name: str) -> str:
    for prefix, public in _PREFIX_ALIASES:
        if name.startswith(prefix):
            name = public + name[len(prefix):]
    parts = name.split(".")
    if parts[0] in _FLAT_PACKAGES:
        for i, part in enumerate(parts[1:], start=1):
            if part[:1].isupper():
                return ".".join([parts[0], *parts[i:]])
    return name


def string_value(node: Optional[cst.BaseExpression]) -> Optional[str]:
    """The text of a plain string literal (``"left"``), else None (f-strings, bytes, names)."""
    if isinstance(node, cst.SimpleString) and isinstance(node.evaluated_value, str):
        return node.evaluated_value
    return None


def dotted(node: cst.BaseExpression) -> Optional[str]:
    """``a.b.c`` for a chain of names and attributes, else None."""
    if isinstance(node, cst.Name):
        return node.value
    if isinstance(node, cst.Attribute):
        base = dotted(node.value)
        return None if base is None else f"{base}.{node.attr.value}"
    return None


def _module_name(node: cst.BaseExpression) -> str:
    return dotted(node) or ""


class ImportMap:
    """Local names bound by imports, mapped to every module path they may stand for."""

    def __init__(self, ctx: "Context") -> None:
        self.bindings: Dict[str, Set[str]] = {}
        self.star_modules: List[str] = []
        for node in ctx.nodes(cst.Import):
            self._add_import(node)
        for node in ctx.nodes(cst.ImportFrom):
            self._add_import_from(node)

    def _bind(self, local: str, target: str) -> None:
        self.bindings.setdefault(local, set()).add(target)

    def _add_import(self, node: cst.Import) -> None:
        for alias in node.names:
            full = _module_name(alias.name)
            if alias.asname is not None and isinstance(alias.asname.name, cst.Name):
                self._bind(alias.asname.name.value, full)
            else:
                head = full.split(".", 1)[0]
                self._bind(head, head)

    def _add_import_from(self, node: cst.ImportFrom) -> None:
        module = "." * len(node.relative) + (_module_name(node.module) if node.module else "")
        if isinstance(node.names, cst.ImportStar):
            self.star_modules.append(module)
            return
        for alias in node.names:
            imported = _module_name(alias.name)
            local = imported
            if alias.asname is not None and isinstance(alias.asname.name, cst.Name):
                local = alias.asname.name.value
            self._bind(local, f"{module}.{imported}" if module else imported)

    def imports(self, package: str) -> bool:
        """Whether the module imports ``package`` (or anything under it) at all."""
        prefix = package + "."
        return any(t == package or t.startswith(prefix)
                   for targets in self.bindings.values() for t in targets) or any(
            m == package or m.startswith(prefix) for m in self.star_modules)

    def resolve(self, node: cst.BaseExpression) -> FrozenSet[str]:
        """Every canonical qualified name ``node`` may denote (empty when unknown)."""
        path = dotted(node)
        if path is None:
            return frozenset()
        head, _, rest = path.partition(".")
        targets: Iterable[str] = self.bindings.get(head, ())
        if not targets and self.star_modules:
            targets = [f"{m}.{head}" for m in self.star_modules]
        out = set()
        for target in targets:
            full = f"{target}.{rest}" if rest else target
            out.add(canonical(full))
        return frozenset(out)

    def matches(self, node: cst.BaseExpression, *names: str) -> bool:
        candidates = self.resolve(node)
        return any(name in candidates for name in names)

    def callee(self, call: cst.Call) -> FrozenSet[str]:
        return self.resolve(call.func)
