"""The generation settings of Hugging Face ``generate()`` calls, as far as the module shows them.

transformers resolves the settings of a ``generate()`` call in layers
(``generation/utils.py``, ``GenerationMixin._prepare_generation_config``, 4.30 to 5.23): the
model's own ``generation_config`` (the checkpoint's ``generation_config.json``, or one derived from
its ``config.json`` by ``GenerationConfig.from_model_config``), replaced by or merged with a
``generation_config=`` argument, and then the call's keyword arguments, which always win
(``generation_config.update(**kwargs)``). ``Generation`` (``ctx.get(Generation)``) reads each layer
from the code:

- ``calls``: every ``X.generate(...)`` whose receiver is a Hugging Face model, with the settings
  of its keyword arguments (``**d`` of a local dict literal or ``dict(...)`` included; a
  tokenizer's encoding or a data-loader batch as ``**inputs`` adds none) and of a
  new ``GenerationConfig(...)`` passed as ``generation_config=``;
- ``model_layer(receiver)``: what the module writes to ``<receiver>.generation_config``
  (attribute assignments, ``.update(...)``, a new ``GenerationConfig(...)`` assigned to it);
- ``config_layer(expr)``: the settings of a ``GenerationConfig(...)`` constructor (through a
  local name, with later ``cfg.x = ...`` assignments);
- ``checkpoint(receiver, at)``: the literal checkpoint name the model was loaded from, and
  ``samples_by_default(name)``: whether that checkpoint is known to leave ``do_sample`` unset.

A layer is ``complete`` when nothing the module does may add settings to it unseen (a ``**x``
splat of unknown content, a config loaded with ``from_pretrained``, ``update(**x)`` make it
incomplete); rules stay silent on incomplete layers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

import libcst as cst

from mllint.analysis.batches import Batches, Provenance
from mllint.analysis.dataflow import Assignments
from mllint.analysis.hf import is_hf_model
from mllint.analysis.instances import Instances
from mllint.analysis.names import string_value
from mllint.analysis.signatures import GENERATE, bind
from mllint.analysis.vocab import Vocab

if TYPE_CHECKING:
    from mllint.core.context import Context

GENERATION_CONFIG = "transformers.GenerationConfig"
# Parameters of ``GenerationMixin.generate`` itself, not generation settings.
_NOT_SETTINGS = frozenset(GENERATE.params)

# Checkpoints whose Hub generation config sets no ``do_sample`` (so it is False): the classic
# open checkpoints published before ``generation_config.json`` existed, whose generation config
# transformers derives from ``config.json`` (``GenerationConfig.from_model_config``; their
# ``task_specific_params`` are read only by pipelines). Anything else may sample by default
# (Llama 2/3, Qwen2 instruct and many chat checkpoints ship ``"do_sample": true``).
_GREEDY_CHECKPOINTS = re.compile(
    r"^(?:(?:openai-community/)?(?:distil)?gpt2(?:-medium|-large|-xl)?"
    r"|(?:google-t5/)?t5-(?:small|base|large|3b|11b)"
    r"|google/(?:flan-t5|mt5|t5-v1_1|byt5)-[a-z0-9-]+"
    r"|facebook/(?:opt-[0-9.]+[mb]|bart-[a-z-]+|mbart-large-[a-z0-9-]+)"
    r"|EleutherAI/(?:gpt-neo-[0-9.]+[MB]|pythia-[0-9.]+[mb](?:-deduped)?)"
    r"|bigscience/bloomz?-[0-9.]+[mb]"
    r"|Helsinki-NLP/opus-mt-[a-zA-Z_-]+"
    r"|microsoft/DialoGPT-(?:small|medium|large))$")


@dataclass(frozen=True)
class Setting:
    """One generation setting the code writes."""

    name: str
    value: cst.BaseExpression
    node: cst.CSTNode  # what to report: the keyword Arg, the DictElement, the Assign
    keyword: Optional[cst.Name] = None  # the keyword to rename, for an ``Arg``


@dataclass
class Layer:
    settings: Dict[str, Setting] = field(default_factory=dict)
    complete: bool = True
    # The ``GenerationConfig(...)`` constructor the layer comes from, if any.
    constructor: Optional[cst.Call] = None

    def get(self, name: str) -> Optional[Setting]:
        return self.settings.get(name)

    def may_set(self, name: str) -> bool:
        return name in self.settings or not self.complete


@dataclass
class ModelLayer(Layer):
    # The ``X.generation_config = GenerationConfig(...)`` assignment that replaces the checkpoint's.
    replaced_by: Optional[cst.Assign] = None


@dataclass
class GenerateCall:
    call: cst.Call
    receiver: cst.BaseExpression
    kinds: frozenset
    kwargs: Layer
    config: Optional[Layer]  # None when no ``generation_config=`` is passed

    def may_set(self, name: str) -> bool:
        return self.kwargs.may_set(name) or (self.config is not None and self.config.may_set(name))

    def setting(self, name: str) -> Optional[Setting]:
        """The call's own value for ``name``: its keyword, else the passed config's."""
        found = self.kwargs.get(name)
        if found is None and self.config is not None:
            found = self.config.get(name)
        return found


def number(ctx: "Context", expr: Optional[cst.BaseExpression]) -> Optional[float]:
    """The value of an int/float literal (``-x`` too), through one local name; else None."""
    for _ in range(3):
        if isinstance(expr, cst.Name):
            expr = ctx.get(Assignments).reaching(expr)
            continue
        break
    sign = 1.0
    if isinstance(expr, cst.UnaryOperation) and isinstance(expr.operator, cst.Minus):
        sign, expr = -1.0, expr.expression
    if isinstance(expr, (cst.Integer, cst.Float)):
        return sign * float(expr.evaluated_value)
    return None


def is_literal(expr: Optional[cst.BaseExpression], name: str) -> bool:
    """``expr`` is the name ``True``/``False``/``None``."""
    return isinstance(expr, cst.Name) and expr.value == name


class Generation:
    def __init__(self, ctx: "Context") -> None:
        self.ctx = ctx
        instances = ctx.get(Instances)
        self.calls: List[GenerateCall] = []
        for call in ctx.nodes(cst.Call):
            func = call.func
            if not (isinstance(func, cst.Attribute) and func.attr.value == "generate"):
                continue
            kinds = instances.kinds(func.value, call)
            if not is_hf_model(kinds):
                continue
            binding = bind(call, GENERATE)
            config_expr = binding.value("generation_config")
            config = None if config_expr is None else self.config_layer(config_expr)
            self.calls.append(GenerateCall(call, func.value, kinds, self._call_layer(call), config))

    # -- layers ------------------------------------------------------------------------------
    def _call_layer(self, call: cst.Call) -> Layer:
        layer = Layer()
        for arg in call.args:
            if arg.star == "**":
                self._add_dict(layer, arg.value)
            elif arg.star == "*":
                layer.complete = False
            elif arg.keyword is not None and arg.keyword.value not in _NOT_SETTINGS:
                layer.settings[arg.keyword.value] = Setting(arg.keyword.value, arg.value, arg, arg.keyword)
        return layer

    def _add_dict(self, layer: Layer, expr: cst.BaseExpression) -> None:
        """Settings of ``**d``: a local dict literal or ``dict(k=v)`` never changed after; nothing
        for a tokenizer's encoding or a data-loader batch (model inputs only); else the layer
        becomes incomplete."""
        origin = self.ctx.get(Batches).origin(expr)
        if origin.tokenizer is not None or origin.provenance is Provenance.LOADER:
            return
        value = expr
        if isinstance(expr, cst.Name):
            if self._mutated(self.ctx.code(expr)):
                layer.complete = False
                return
            value = self._value_of(expr)
        if isinstance(value, cst.Dict):
            for element in value.elements:
                key = string_value(element.key) if isinstance(element, cst.DictElement) else None
                if key is None:
                    layer.complete = False
                    continue
                layer.settings[key] = Setting(key, element.value, element)
        elif isinstance(value, cst.Call) and isinstance(value.func, cst.Name) and value.func.value == "dict" \
                and self.ctx.names.resolve(value.func) <= {"dict", "builtins.dict"}:
            for arg in value.args:
                if arg.keyword is None:
                    layer.complete = False
                else:
                    layer.settings[arg.keyword.value] = Setting(arg.keyword.value, arg.value, arg, arg.keyword)
        else:
            layer.complete = False

    def _value_of(self, name: cst.Name) -> Optional[cst.BaseExpression]:
        """The value reaching ``name``; for a module-level name read in a function, its only
        module-level value."""
        flow = self.ctx.get(Assignments)
        value = flow.reaching(name)
        if value is None and not flow.is_bound_locally(name):
            values = self.ctx.get(Instances).values(name.value, name)
            value = values[0] if len(values) == 1 else None
        return value

    def _mutated(self, text: str) -> bool:
        """``text[...] = ...``, ``text.x = ...`` or ``text.update(...)``/``text.setdefault(...)``
        anywhere in the module."""
        ctx = self.ctx
        for node in ctx.nodes(cst.Assign):
            for target in node.targets:
                t = target.target
                if isinstance(t, (cst.Subscript, cst.Attribute)) and ctx.code(t.value) == text:
                    return True
        for call in ctx.nodes(cst.Call):
            func = call.func
            if isinstance(func, cst.Attribute) and func.attr.value in ("update", "setdefault") \
                    and ctx.code(func.value) == text:
                return True
        return False

    def config_layer(self, expr: cst.BaseExpression) -> Layer:
        """Settings of a new ``GenerationConfig(...)`` (``expr`` or the value of the local name
        ``expr``), with the module's later ``cfg.x = ...`` writes; incomplete for anything else."""
        value = expr
        variable = None
        if isinstance(expr, cst.Name):
            variable, value = expr, self._value_of(expr)
        if not isinstance(value, cst.Call) or GENERATION_CONFIG not in self.ctx.names.resolve(value.func):
            return Layer(complete=False)
        layer = self._call_layer(value)
        layer.constructor = value
        if variable is not None:
            self._add_writes(layer, variable.value)
        return layer

    def _add_writes(self, layer: Layer, owner: str) -> None:
        """``owner.x = v`` assignments and ``owner.update(...)`` calls anywhere in the module."""
        ctx = self.ctx
        for node in ctx.nodes(cst.Assign):
            for target in node.targets:
                t = target.target
                if isinstance(t, cst.Attribute) and ctx.code(t.value) == owner:
                    layer.settings[t.attr.value] = Setting(t.attr.value, node.value, node)
        for call in ctx.nodes(cst.Call):
            func = call.func
            if isinstance(func, cst.Attribute) and func.attr.value == "update" and ctx.code(func.value) == owner:
                update = self._call_layer(call)
                layer.settings.update(update.settings)
                layer.complete = layer.complete and update.complete
        for node in ctx.nodes(cst.Call):  # setattr(owner, "x", v)
            if isinstance(node.func, cst.Name) and node.func.value == "setattr" and node.args \
                    and ctx.code(node.args[0].value) == owner:
                layer.complete = False

    def model_layer(self, receiver: cst.BaseExpression) -> ModelLayer:
        """What the module writes to ``<receiver>.generation_config`` (matched by source text)."""
        ctx = self.ctx
        owner = f"{ctx.code(receiver)}.generation_config"
        layer = ModelLayer()
        for node in ctx.nodes(cst.Assign):
            for target in node.targets:
                if ctx.code(target.target) != owner:
                    continue
                fresh = self.config_layer(node.value)
                if fresh.constructor is None:
                    layer.complete = False
                    continue
                layer.replaced_by = node
                layer.constructor = fresh.constructor
                layer.settings.update(fresh.settings)
                layer.complete = layer.complete and fresh.complete
        self._add_writes(layer, owner)
        return layer

    def calls_on(self, receiver: cst.BaseExpression) -> List[GenerateCall]:
        text = self.ctx.code(receiver)
        return [c for c in self.calls if self.ctx.code(c.receiver) == text]

    def opaque_calls_on(self, receiver: cst.BaseExpression) -> bool:
        """Some ``generate()`` on the same receiver text is not understood (a HF model or not)."""
        text = self.ctx.code(receiver)
        seen = {id(c.call) for c in self.calls}
        for call in self.ctx.nodes(cst.Call):
            func = call.func
            if isinstance(func, cst.Attribute) and func.attr.value == "generate" \
                    and self.ctx.code(func.value) == text and id(call) not in seen:
                return True
        return False

    # -- checkpoints -------------------------------------------------------------------------
    def checkpoint(self, receiver: cst.BaseExpression, at: cst.CSTNode) -> Optional[str]:
        """The literal checkpoint name the model was loaded from, when there is exactly one
        (``Vocab.checkpoints``); None when not literal or not unique."""
        names = self.ctx.get(Vocab).checkpoints(receiver, at)
        return next(iter(names)) if len(names) == 1 else None

    @staticmethod
    def samples_by_default(name: str) -> Optional[bool]:
        """False for checkpoints known to leave ``do_sample`` unset; None when unknown."""
        return False if _GREEDY_CHECKPOINTS.match(name) else None


def greedy_model(generation: Generation, receiver: cst.BaseExpression, at: cst.CSTNode
                 ) -> Optional[Tuple[str, Optional[cst.CSTNode]]]:
    """Why the model's own generation config decodes greedily (text, evidence node), or None
    when the module does not show it: a ``do_sample=False`` written to it, a new
    ``GenerationConfig`` without ``do_sample`` assigned to it, or a known greedy checkpoint."""
    ctx = generation.ctx
    layer = generation.model_layer(receiver)
    own = layer.get("do_sample")
    if own is not None:
        if is_literal(own.value, "False"):
            return f"`{ctx.code(receiver)}.generation_config` sets `do_sample=False`", own.node
        return None
    if not layer.complete:
        return None
    if layer.replaced_by is not None:
        return (f"`{ctx.code(receiver)}.generation_config` is replaced by a new `GenerationConfig` "
                "without `do_sample`, which defaults to False", layer.replaced_by)
    name = generation.checkpoint(receiver, at)
    if name is not None and generation.samples_by_default(name) is False:
        return f"checkpoint `{name}` sets no `do_sample`, so it defaults to False", None
    return None
