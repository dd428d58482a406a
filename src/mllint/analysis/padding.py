"""Padding side: which side a tokenizer pads on at one encoding call.

transformers decides it when the call runs (transformers `tokenization_utils_base.py`):

- a per-call ``padding_side=`` argument of ``__call__``, ``encode_plus``, ``batch_encode_plus`` and
  ``pad`` (``PreTrainedTokenizerBase``, added in transformers 4.45; 4.44 fast tokenizers reject
  it, slow ones ignore it). ``apply_chat_template`` does not: a ``padding_side=`` given to it
  goes to the chat template (``template_kwargs``, 4.57.6 and 5.23.0), the tokenizer's options
  go through ``tokenizer_kwargs={"padding_side": ...}``;
- else the tokenizer's ``padding_side`` attribute, set by ``tok.padding_side = ...`` or at load
  time (``from_pretrained(..., padding_side=...)``, read by ``PreTrainedTokenizerBase.__init__``
  with ``kwargs.pop("padding_side", self.padding_side)``);
- else the checkpoint's ``tokenizer_config.json`` (the same init keyword), else the class
  attribute: ``"right"`` on ``PreTrainedTokenizerBase``, ``"left"`` on the Llama, CodeLlama, Gemma,
  Cohere and XLNet tokenizers (4.57.6 and 5.23.0).

So the module can prove a side only through the first two. ``PaddingSides.at(call, tokenizer)``
answers with a ``Side``:

- ``CALL``: the call's own ``padding_side=`` argument (or ``tokenizer_kwargs`` entry) decides;
  ``node`` is the ``Arg`` (or ``DictElement``);
- ``SETTING``: the last setting of this tokenizer before the call, in the same function and in
  a block that contains the call (so it runs first), decides; or every setting in the module
  is ``"right"`` and one of them is this tokenizer's;
- ``DEFAULT``: nothing in the module sets a side and the tokenizer is loaded in view with
  ``from_pretrained`` and no ``**`` splat: the checkpoint or class decides. ``node`` is the load;
- ``UNCLEAR``: anything else, e.g. a ``"left"`` setting of some receiver elsewhere (an alias, a
  helper's ``padding_side="left"`` argument, ``processor.tokenizer.padding_side = "left"``) that
  may run first, a non-literal side, or a tokenizer whose making is out of view.

``value`` is ``"left"``/``"right"`` for ``CALL`` and ``SETTING`` (None for a non-literal), else None.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, List, Optional, Tuple

import libcst as cst

from mllint.analysis.batches import Batches
from mllint.analysis.instances import Instances

if TYPE_CHECKING:
    from mllint.core.context import Context

# Encoding methods that take ``padding_side=`` per call (transformers >= 4.45).
PER_CALL_METHODS = frozenset({"__call__", "encode_plus", "batch_encode_plus", "pad"})
PER_CALL_SINCE = (4, 45)


class SideSource(enum.Enum):
    CALL = "the call's `padding_side` argument"
    SETTING = "a `padding_side` setting"
    DEFAULT = "the checkpoint's or tokenizer class's default"
    UNCLEAR = "settings the analysis cannot order"


@dataclass(frozen=True)
class Side:
    value: Optional[str]
    source: SideSource
    node: Optional[cst.CSTNode] = None


def _literal(node: cst.BaseExpression) -> Optional[str]:
    if isinstance(node, cst.SimpleString) and node.evaluated_value in ("left", "right"):
        return node.evaluated_value  # type: ignore[return-value]
    return None


class PaddingSides:
    def __init__(self, ctx: "Context") -> None:
        self.ctx = ctx
        self.batches = ctx.get(Batches)
        self.instances = ctx.get(Instances)
        # Every setting that changes a tokenizer's side beyond one call: attribute assignments
        # and ``padding_side=`` arguments of anything but an encoding call.
        self.settings: List[Tuple[Optional[str], cst.CSTNode]] = []
        for node in ctx.nodes(cst.Assign):
            for target in node.targets:
                if isinstance(target.target, cst.Attribute) and target.target.attr.value == "padding_side":
                    self.settings.append((_literal(node.value), node))
        for call in ctx.nodes(cst.Call):
            arg = _keyword(call, "padding_side")
            if arg is not None and self.batches.tokenizer_call(call) is None:
                self.settings.append((_literal(arg.value), arg))

    def at(self, call: cst.Call, tokenizer: cst.BaseExpression) -> Side:
        found = self.batches.tokenizer_call(call)
        method = found[1] if found else "__call__"
        if method == "apply_chat_template":
            # Its own ``padding_side=`` goes to the chat template; only ``tokenizer_kwargs`` counts.
            options = _keyword(call, "tokenizer_kwargs")
            if options is not None:
                if not isinstance(options.value, cst.Dict):
                    return Side(None, SideSource.UNCLEAR)
                for element in options.value.elements:
                    if not isinstance(element, cst.DictElement):
                        return Side(None, SideSource.UNCLEAR)
                    if isinstance(element.key, cst.SimpleString) and element.key.evaluated_value == "padding_side":
                        return Side(_literal(element.value), SideSource.CALL, element)
            if any(a.star == "**" for a in call.args):
                return Side(None, SideSource.UNCLEAR)
        else:
            arg = _keyword(call, "padding_side")
            if arg is not None:
                return Side(_literal(arg.value), SideSource.CALL, arg)
            if any(a.star == "**" for a in call.args):
                return Side(None, SideSource.UNCLEAR)
        before = self._settings_of(tokenizer, call)
        if before:
            side, node = before[-1]
            if self._runs_before(node, call):
                return Side(side, SideSource.SETTING, node)
        if any(value != "right" for value, _ in self.settings):
            return Side(None, SideSource.UNCLEAR)
        if before:
            return Side("right", SideSource.SETTING, before[-1][1])
        text = self.ctx.code(tokenizer)
        mine = [node for _, node in self.settings if self._receiver(node) == text]
        if mine:
            return Side("right", SideSource.SETTING, mine[0])
        loader = self._plain_loader(tokenizer, call)
        if loader is not None:
            return Side(None, SideSource.DEFAULT, loader)
        return Side(None, SideSource.UNCLEAR)

    # -- helpers -------------------------------------------------------------------------------
    def _runs_before(self, setting: cst.CSTNode, call: cst.CSTNode) -> bool:
        """The setting's statement comes earlier in a block that also holds ``call``, in the same
        function (a setting in another function may run between the two)."""
        statement = self.ctx.enclosing(setting, cst.SimpleStatementLine) or setting
        block = self.ctx.parent(statement)
        same_scope = self.ctx.enclosing(statement, cst.FunctionDef) is self.ctx.enclosing(call, cst.FunctionDef)
        return (block is not None and same_scope and self.ctx.order(statement) < self.ctx.order(call)
                and any(a is block for a in self.ctx.ancestors(call)))

    def _receiver(self, setting: cst.CSTNode) -> Optional[str]:
        """Source text of the tokenizer a setting applies to (the assigned name for a loader)."""
        if isinstance(setting, cst.Assign):
            target = setting.targets[0].target
            return self.ctx.code(target.value) if isinstance(target, cst.Attribute) else None
        call = self.ctx.parent(setting)
        assign = self.ctx.parent(call) if call is not None else None
        if isinstance(assign, cst.Assign) and len(assign.targets) == 1:
            return self.ctx.code(assign.targets[0].target)
        return None

    def _settings_of(self, tokenizer: cst.BaseExpression, at: cst.CSTNode) -> List[Tuple[Optional[str], cst.CSTNode]]:
        """This tokenizer's side settings before ``at``, in source order: ``tok.padding_side = ...``
        on the same receiver text, and ``padding_side=`` of the ``from_pretrained`` that made it."""
        text = self.ctx.code(tokenizer)
        out = [(value, node) for value, node in self.settings
               if isinstance(node, cst.Assign) and self.ctx.order(node) < self.ctx.order(at)
               and self._receiver(node) == text]
        for loader in self._loaders(tokenizer, at):
            arg = _keyword(loader, "padding_side")
            if arg is not None:
                out.append((_literal(arg.value), arg))
        return sorted(out, key=lambda item: self.ctx.order(item[1]))

    def _values(self, tokenizer: cst.BaseExpression, at: cst.CSTNode) -> List[cst.BaseExpression]:
        """Every value assigned to a local or ``self.`` tokenizer."""
        if isinstance(tokenizer, cst.Name):
            return self.instances.values(tokenizer.value, at)
        if isinstance(tokenizer, cst.Attribute) and isinstance(tokenizer.value, cst.Name) \
                and tokenizer.value.value == "self":
            cls = self.ctx.enclosing(at, cst.ClassDef)
            return list(self.instances.attr_values.get(cls, {}).get(tokenizer.attr.value, [])) if cls else []
        return []

    def _loaders(self, tokenizer: cst.BaseExpression, at: cst.CSTNode) -> List[cst.Call]:
        return [v for v in self._values(tokenizer, at) if isinstance(v, cst.Call)
                and isinstance(v.func, cst.Attribute) and v.func.attr.value == "from_pretrained"]

    def _plain_loader(self, tokenizer: cst.BaseExpression, at: cst.CSTNode) -> Optional[cst.Call]:
        """The tokenizer's one visible ``from_pretrained(...)``, with no ``**`` splat."""
        values = self._values(tokenizer, at)
        if len(values) != 1 or self._loaders(tokenizer, at) != values:
            return None
        loader = values[0]
        if not any(a.star for a in loader.args) and self.batches.is_tokenizer(tokenizer, at):  # type: ignore[union-attr]
            return loader  # type: ignore[return-value]
        return None

def _keyword(call: cst.Call, name: str) -> Optional[cst.Arg]:
    for arg in call.args:
        if arg.keyword is not None and arg.keyword.value == name:
            return arg
    return None
