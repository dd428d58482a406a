"""Batched provenance: where the input of a ``generate()`` (or any model call) comes from.

Batch-size-1 code is the main false-positive source of the generation rules: padding side,
attention masks and pad ids only matter when several sequences of different lengths were padded
into one tensor. So the question "is this a padded batch?" is answered once, here, from what the
module shows:

- ``PADDED``: a tokenizer called on several texts with ``padding=`` on (``True``, ``"longest"``,
  ``"max_length"``), or ``tokenizer.pad(...)``;
- ``LOADER``: a batch produced by a data loader or a collator: the loop variable of
  ``for batch in loader`` (also through ``enumerate``/``tqdm``), the ``batch`` parameter of a
  Lightning ``*_step`` hook, the ``inputs`` of a ``Trainer.compute_loss``/``prediction_step``
  override, the result of calling a collator. Collated batches are padded;
- ``SINGLE``: a tokenizer called on one text (a string, an f-string, a one-element list, the loop
  variable over a list of prompts) or without padding;
- ``UNKNOWN``: anything else. Rules stay silent on it.

``Origin.encoding`` is the expression that holds the whole encoding (``inputs`` for
``inputs["input_ids"]``), so a rule can say "pass ``**inputs``" or read its other keys, and
``Origin.tokenizer`` the tokenizer that made it, so a rule can look up its padding side
(``mllint.analysis.padding``).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, List, Optional, Tuple

import libcst as cst

from mllint.analysis.dataflow import Assignments
from mllint.analysis.hf import is_tokenizer_kind
from mllint.analysis.instances import UNKNOWN, Instances
from mllint.analysis.names import dotted, string_value
from mllint.analysis.signatures import TOKENIZER_CALL, Binding, bind

if TYPE_CHECKING:
    from mllint.core.context import Context


class Provenance(enum.Enum):
    PADDED = "a padded batch"
    LOADER = "a collated data-loader batch"
    SINGLE = "a single sequence"
    UNKNOWN = "an input of unknown shape"


@dataclass(frozen=True)
class Origin:
    provenance: Provenance
    node: Optional[cst.CSTNode] = None  # the evidence: tokenizer call, loop, or step parameter
    encoding: Optional[cst.BaseExpression] = None  # the BatchEncoding / batch dict the ids come from
    tokenizer: Optional[cst.BaseExpression] = None  # receiver of the tokenizer call

    @property
    def batched(self) -> bool:
        return self.provenance in (Provenance.PADDED, Provenance.LOADER)


_UNKNOWN_ORIGIN = Origin(Provenance.UNKNOWN)
# Lightning hooks (lightning/pytorch/core/module.py) and Trainer overrides whose parameter is a batch.
STEP_HOOKS = frozenset({"training_step", "validation_step", "test_step", "predict_step"})
_TRAINER_HOOKS = {"compute_loss": "inputs", "prediction_step": "inputs", "training_step": "inputs"}
_TOKENIZER_NAME = re.compile(r"(^|_)(tokenizer|tok|processor)$", re.IGNORECASE)
_LOADER_NAME = re.compile(r"loader|dataloader", re.IGNORECASE)
_ITER_WRAPPERS = frozenset({"enumerate", "tqdm", "tqdm.tqdm", "tqdm.auto.tqdm", "tqdm.notebook.tqdm",
                            "iter", "zip"})
_PADDING_ON = frozenset({"True", "longest", "max_length", "LONGEST", "MAX_LENGTH"})
_PADDING_OFF = frozenset({"False", "do_not_pad", "DO_NOT_PAD", "None"})
# Keys of a BatchEncoding / batch dict that hold the token ids.
ID_KEYS = ("input_ids", "inputs")


def subscript_key(node: cst.BaseExpression) -> Optional[str]:
    """``"input_ids"`` for ``x["input_ids"]`` and ``x.input_ids``-style dict access."""
    if isinstance(node, cst.Subscript) and len(node.slice) == 1 \
            and isinstance(node.slice[0].slice, cst.Index):
        key = node.slice[0].slice.value
        if isinstance(key, cst.SimpleString) and isinstance(key.evaluated_value, str):
            return key.evaluated_value
    return None


def encoding_key(expr: cst.BaseExpression) -> Optional[str]:
    """``"input_ids"`` for ``x["input_ids"]`` and ``x.input_ids`` (device moves looked through)."""
    expr = strip_moves(expr)
    if isinstance(expr, cst.Attribute):
        return expr.attr.value
    return subscript_key(expr)


class Batches:
    def __init__(self, ctx: "Context") -> None:
        self.ctx = ctx
        self.flow = ctx.get(Assignments)
        self.instances = ctx.get(Instances)

    # -- tokenizers ----------------------------------------------------------------------------
    def is_tokenizer(self, expr: cst.BaseExpression, at: cst.CSTNode) -> bool:
        """Known to be a tokenizer/processor, or (kind unknown) named like one."""
        kinds = self.instances.kinds(expr, at)
        if kinds and UNKNOWN not in kinds:
            return all(is_tokenizer_kind(k) for k in kinds)
        path = dotted(expr)
        return path is not None and bool(_TOKENIZER_NAME.search(path.rsplit(".", 1)[-1]))

    def tokenizer_call(self, call: cst.Call) -> Optional[Tuple[cst.BaseExpression, str]]:
        """``(tokenizer, method)`` when ``call`` encodes text: ``tok(...)``, ``tok.__call__``,
        ``tok.batch_encode_plus``, ``tok.encode_plus``, ``tok.encode``, ``tok.pad``,
        ``tok.apply_chat_template``."""
        func = call.func
        if isinstance(func, cst.Attribute) and func.attr.value in (
                "__call__", "batch_encode_plus", "encode_plus", "encode", "pad", "apply_chat_template"):
            if self.is_tokenizer(func.value, call):
                return func.value, func.attr.value
            return None
        if isinstance(func, (cst.Name, cst.Attribute)) and self.is_tokenizer(func, call):
            return func, "__call__"
        return None

    # -- provenance ----------------------------------------------------------------------------
    def origin(self, expr: cst.BaseExpression, depth: int = 0) -> Origin:
        """Where the token ids (or encoding) ``expr`` come from."""
        if depth > 8:
            return _UNKNOWN_ORIGIN
        expr = strip_moves(expr)
        key = subscript_key(expr)
        if key is not None:
            inner = self.origin(expr.value, depth + 1)  # type: ignore[attr-defined]
            return _with_encoding(inner, expr.value)  # type: ignore[attr-defined]
        if isinstance(expr, cst.Attribute) and expr.attr.value in ID_KEYS + ("attention_mask",):
            inner = self.origin(expr.value, depth + 1)
            if inner.provenance is not Provenance.UNKNOWN:
                return _with_encoding(inner, expr.value)
        if isinstance(expr, cst.Name):
            value = self.flow.reaching(expr)
            if value is not None:
                found = self.origin(value, depth + 1)
                return _with_encoding(found, expr) if found.encoding is None else found
            return self._unassigned(expr)
        if isinstance(expr, cst.Call):
            return self._call_origin(expr)
        moved = _moved_dict(expr)
        if moved is not None:  # {k: v.to(device) for k, v in batch.items()}: the same batch
            return self.origin(moved, depth + 1)
        return _UNKNOWN_ORIGIN

    def generate_ids(self, binding: Binding) -> Optional[Tuple[cst.Arg, Origin]]:
        """The argument holding the token ids of a ``generate()`` call (bound to ``GENERATE``) and
        where they come from, when they are token ids (``input_ids``, or a chat template's ids)
        of a padded or collated batch. Image or audio inputs (``pixel_values``) give None."""
        arg = binding.args.get("inputs") or binding.kwargs.get("input_ids")
        if arg is None:
            return None
        origin = self.origin(arg.value)
        if not origin.batched:
            return None
        key = self._ids_key(arg.value)
        if key in ID_KEYS:
            return arg, origin
        node = origin.node
        chat_ids = (key is None and isinstance(node, cst.Call) and isinstance(node.func, cst.Attribute)
                    and node.func.attr.value == "apply_chat_template")
        return (arg, origin) if chat_ids else None

    def _ids_key(self, expr: cst.BaseExpression) -> Optional[str]:
        """The key the ids were read from, following local assignments (``ids = enc.input_ids``)."""
        for _ in range(8):
            key = encoding_key(expr)
            if key is not None:
                return key
            expr = strip_moves(expr)
            if not isinstance(expr, cst.Name):
                return None
            value = self.flow.reaching(expr)
            if value is None:
                return None
            expr = value
        return None

    def _call_origin(self, call: cst.Call) -> Origin:
        found = self.tokenizer_call(call)
        if found is None:
            kinds = self.instances.constructed(call)
            if any(k.rsplit(".", 1)[-1].startswith("DataCollator") for k in kinds):
                return Origin(Provenance.LOADER, call)
            if isinstance(call.func, cst.Name) and self._is_collator_name(call.func):
                return Origin(Provenance.LOADER, call)
            return _UNKNOWN_ORIGIN
        tokenizer, method = found
        if method == "pad":
            return Origin(Provenance.PADDED, call, tokenizer=tokenizer)
        if method == "encode":
            return Origin(Provenance.SINGLE, call, tokenizer=tokenizer)
        binding = bind(call, TOKENIZER_CALL)
        text = binding.value("text") if method != "apply_chat_template" else (
            call.args[0].value if call.args and call.args[0].keyword is None else None)
        padding = binding.value("padding")
        padding_text = None if padding is None else string_value(padding) or _last_name(padding)
        if padding is None or padding_text in _PADDING_OFF:
            return Origin(Provenance.SINGLE, call, tokenizer=tokenizer)
        if padding_text not in _PADDING_ON:
            return _UNKNOWN_ORIGIN
        several = self.several_texts(text) if text is not None else None
        if several is None:
            return Origin(Provenance.UNKNOWN, call, tokenizer=tokenizer)
        return Origin(Provenance.PADDED if several else Provenance.SINGLE, call, tokenizer=tokenizer)

    def _is_collator_name(self, func: cst.Name) -> bool:
        value = self.flow.reaching(func)
        if isinstance(value, cst.Call):
            return any(k.rsplit(".", 1)[-1].startswith("DataCollator")
                       for k in self.instances.constructed(value))
        return False

    def _unassigned(self, name: cst.Name) -> Origin:
        """A name with no reaching plain assignment: a loop variable or a parameter."""
        loop = self._binding_loop(name)
        if loop is not None:
            iterable = _unwrap_iter(loop.iter, self.ctx)
            path = dotted(iterable) or (dotted(iterable.func) if isinstance(iterable, cst.Call) else None)
            kinds = self.instances.kinds(iterable, loop) if isinstance(iterable, (cst.Name, cst.Attribute)) else set()
            if (path and _LOADER_NAME.search(path)) or "torch.utils.data.DataLoader" in kinds:
                return Origin(Provenance.LOADER, loop)
            return _UNKNOWN_ORIGIN
        function = self.ctx.enclosing(name, cst.FunctionDef)
        if function is None or self.flow.is_bound_locally(name):
            return _UNKNOWN_ORIGIN
        params = [p.name.value for p in function.params.params]
        hook = function.name.value
        if hook in STEP_HOOKS and params[:1] == ["self"] and params[1:2] == [name.value]:
            return Origin(Provenance.LOADER, function)
        if _TRAINER_HOOKS.get(hook) == name.value and name.value in params:
            return Origin(Provenance.LOADER, function)
        return _UNKNOWN_ORIGIN

    def _binding_loop(self, name: cst.Name) -> Optional[cst.For]:
        """The ``for`` loop whose target binds ``name`` at this use (the innermost enclosing one)."""
        for ancestor in self.ctx.ancestors(name):
            if isinstance(ancestor, cst.For) and name.value in _target_names(ancestor.target):
                return ancestor
            if isinstance(ancestor, cst.FunctionDef):
                return None
        return None

    def several_texts(self, text: cst.BaseExpression, depth: int = 0) -> Optional[bool]:
        """Whether a tokenizer's text argument holds several texts (True), one (False), or
        cannot be told (None)."""
        if depth > 6:
            return None
        if isinstance(text, (cst.SimpleString, cst.FormattedString, cst.ConcatenatedString)):
            return False
        if isinstance(text, (cst.List, cst.Tuple)):
            return len(text.elements) != 1 or isinstance(text.elements[0], cst.StarredElement)
        if isinstance(text, (cst.ListComp, cst.GeneratorExp)):
            return True
        if isinstance(text, cst.Subscript):
            if subscript_key(text) is not None:
                return True  # batch["text"], examples["prompt"]: a column of a batch
            return True if any(isinstance(e.slice, cst.Slice) for e in text.slice) else None
        if isinstance(text, cst.Name):
            value = self.flow.reaching(text)
            if value is not None:
                return self.several_texts(value, depth + 1)
            if self._binding_loop(text) is not None:
                return False  # for prompt in prompts: one at a time
            return _plural(text.value)
        if isinstance(text, cst.Attribute):
            return _plural(text.attr.value)
        return None


def _target_names(target: cst.BaseExpression) -> List[str]:
    if isinstance(target, cst.Name):
        return [target.value]
    if isinstance(target, (cst.Tuple, cst.List)):
        return [n for e in target.elements for n in _target_names(e.value)]
    return []


def _plural(name: str) -> Optional[bool]:
    lowered = name.lower()
    if "batch" in lowered or (lowered.endswith("s") and not lowered.endswith("ss")):
        return True
    return None


def _unwrap_iter(iterable: cst.BaseExpression, ctx: "Context") -> cst.BaseExpression:
    """``enumerate(tqdm(loader))`` -> ``loader``."""
    for _ in range(4):
        if isinstance(iterable, cst.Call) and iterable.args and (
                ctx.names.resolve(iterable.func) & _ITER_WRAPPERS
                or (isinstance(iterable.func, cst.Name) and iterable.func.value in _ITER_WRAPPERS)):
            iterable = iterable.args[0].value
        else:
            break
    return iterable


def strip_moves(expr: cst.BaseExpression) -> cst.BaseExpression:
    """``x.to(device)``, ``x.cuda()``, ``x.input_ids.to(model.device)`` -> the moved value."""
    while isinstance(expr, cst.Call) and isinstance(expr.func, cst.Attribute) \
            and expr.func.attr.value in ("to", "cuda", "cpu"):
        expr = expr.func.value
    return expr


def _moved_dict(expr: cst.BaseExpression) -> Optional[cst.BaseExpression]:
    """``batch`` for ``{k: v.to(device) for k, v in batch.items()}`` (every value moved, no key
    dropped or renamed), else None."""
    if not isinstance(expr, cst.DictComp) or expr.for_in.inner_for_in is not None or expr.for_in.ifs:
        return None
    target, source = expr.for_in.target, expr.for_in.iter
    if not (isinstance(target, cst.Tuple) and len(target.elements) == 2
            and all(isinstance(e.value, cst.Name) for e in target.elements)):
        return None
    key, value = (e.value.value for e in target.elements)  # type: ignore[union-attr]
    if not (isinstance(source, cst.Call) and isinstance(source.func, cst.Attribute)
            and source.func.attr.value == "items" and not source.args):
        return None
    moved = strip_moves(expr.value)
    if not (isinstance(expr.key, cst.Name) and expr.key.value == key
            and isinstance(moved, cst.Name) and moved.value == value):
        return None
    return source.func.value


def _with_encoding(origin: Origin, encoding: cst.BaseExpression) -> Origin:
    if origin.provenance is Provenance.UNKNOWN:
        return origin
    return Origin(origin.provenance, origin.node, origin.encoding or encoding, origin.tokenizer)


def _last_name(node: cst.BaseExpression) -> Optional[str]:
    path = dotted(node)
    return path.rsplit(".", 1)[-1] if path else None
