"""Labels: where a module builds its training labels, what they hold, and how they are masked.

The label rules ask the same few questions, answered here from what one module shows:

- ``writes()``: every place that stores a ``"labels"`` entry: ``enc["labels"] = ...``,
  ``{"labels": ...}``, ``dict(labels=...)``, with the function it is in and the ``input_ids`` stored
  next to it (``inputs_of``). ``preprocessing(node)`` tells whether a node runs before collation:
  inside a ``dataset.map`` function (or a local function it calls, as
  ``mllint.analysis.training_text`` finds them) or a ``Dataset.__getitem__``.
- ``copies_input_ids(write)``: the labels are an unchanged copy of the same example's
  ``input_ids`` (``enc["input_ids"].copy()``, ``list(ids)``, ``ids[:]``, a name holding one and
  never modified in place) rather than masked or built from another text.
- ``shifted_pair(inputs, labels)``: ``labels`` are ``inputs`` shifted left by one token
  (``x[:, :-1]`` / ``x[:, 1:]``, ``data[i:i+n]`` / ``data[i+1:i+1+n]``, ``torch.roll(x, -1)``).
- ``padded_call(expr)``: the tokenizer call whose ids ``expr`` holds, when that call pads them
  (``padding="max_length"``, or ``padding=True``/``"longest"`` over several texts).
- ``value_kind(expr)``: what a label value or an ``ignore_index`` is: ``"-100"``, another
  integer literal, ``PAD`` (a pad id: ``tokenizer.pad_token_id``, ``PAD_IDX``, ``vocab["<pad>"]``),
  or None when unknown. Local names and module constants are followed.
- ``mask_writes()``: the values labels are masked or padded with (``labels[m] = -100``,
  ``masked_fill``, ``torch.where``, ``[-100] * n + ...``, ``-100 if ... else t`` comprehensions,
  ``pad_sequence(padding_value=...)``, the label padding of ``DataCollatorForSeq2Seq`` and
  ``DataCollatorForLanguageModeling(mlm=False)``), each with the labels it writes.
- ``pad_replacement()``: evidence that pad ids in labels are replaced (a statement comparing with a
  pad id or an attention mask that also holds -100), or that the loss ignores something other
  than -100.
- ``lm_collators()``: the ``DataCollatorForLanguageModeling(mlm=False)`` calls, and
  ``collator_datasets(collator)``: the ``dataset.map`` functions of every dataset it is used
  with, when that can be proven.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, List, Optional, Set, Union

import libcst as cst

from mllint.analysis.batches import Batches, subscript_key
from mllint.analysis.dataflow import Assignments, strip_transparent
from mllint.analysis.hf import DCLM
from mllint.analysis.instances import Instances
from mllint.analysis.names import dotted, string_value
from mllint.analysis.signatures import CALLS, TOKENIZER_CALL, Signature, bind
from mllint.analysis.training_text import TrainingText

if TYPE_CHECKING:
    from mllint.core.context import Context

IGNORE = "-100"  # transformers' and torch's ignore index
PAD = "pad"  # a pad token id
SEQ2SEQ_COLLATOR = "transformers.DataCollatorForSeq2Seq"
_PAD_NAME = re.compile(r"(^|_)pad(ding)?(_token)?(_id|_idx|_index)?$", re.IGNORECASE)
_LABEL_NAME = re.compile(r"label", re.IGNORECASE)
# Calls that keep the ids of their receiver or first argument.
_KEEP = frozenset({"copy", "clone", "tolist", "squeeze", "flatten", "numpy", "to", "cuda", "cpu",
                   "long", "int", "contiguous", "detach"})
_KEEP_FUNCTIONS = frozenset({"list", "copy.copy", "copy.deepcopy", "deepcopy", "torch.tensor",
                             "torch.as_tensor", "torch.LongTensor", "numpy.array", "numpy.asarray",
                             "torch.clone"})
_IN_PLACE = frozenset({"masked_fill_", "fill_", "index_fill_", "scatter_", "append", "extend",
                       "insert", "copy_", "zero_"})
# Dataset methods that keep the examples a ``map`` made (datasets.Dataset / DatasetDict).
_DATASET_KEEPS = frozenset({"shuffle", "select", "filter", "remove_columns", "rename_column",
                            "rename_columns", "train_test_split", "with_format", "set_format", "shard",
                            "sort", "flatten", "select_columns", "cast", "with_transform"})
_DATASET_ROOTS = frozenset({"datasets.load_dataset", "datasets.Dataset.from_dict",
                            "datasets.Dataset.from_list", "datasets.Dataset.from_pandas",
                            "datasets.load_from_disk"})
_PADDING_ALWAYS = frozenset({"max_length", "MAX_LENGTH"})
_PADDING_LONGEST = frozenset({"True", "longest", "LONGEST"})
_LIMIT = 16

Function = Union[cst.FunctionDef, cst.Lambda]


@dataclass(frozen=True)
class LabelWrite:
    """One place that stores a ``"labels"`` entry."""

    node: cst.CSTNode  # the Assign, DictElement or Arg
    value: cst.BaseExpression  # what is stored
    container: cst.CSTNode  # ``enc`` of ``enc["labels"] = ...``, or the Dict / ``dict(...)`` call


@dataclass(frozen=True)
class MaskWrite:
    """Labels masked or padded with a value."""

    node: cst.CSTNode  # the statement or call that writes the value
    kind: str  # ``value_kind`` of the value
    value: cst.BaseExpression  # the value as written (the collator call for collators' defaults)
    target: str  # the labels written: ``"labels"`` for the key, else the name (``lm_labels``)


def _minus(node: cst.BaseExpression) -> Optional[str]:
    if isinstance(node, cst.Integer):
        return str(node.evaluated_value)
    if isinstance(node, cst.UnaryOperation) and isinstance(node.operator, cst.Minus) \
            and isinstance(node.expression, cst.Integer):
        return str(-node.expression.evaluated_value)
    return None


def _full_slice(element: cst.SubscriptElement) -> bool:
    part = element.slice
    if isinstance(part, cst.Index):
        return isinstance(part.value, cst.Ellipsis)
    return isinstance(part, cst.Slice) and part.lower is None and part.upper is None and part.step is None


def _last_slice(node: cst.BaseExpression) -> Optional[cst.Slice]:
    """The slice on the last axis of ``x[..., a:b]`` / ``x[:, a:b]`` / ``x[a:b]`` (all earlier axes
    taken whole), else None."""
    if not isinstance(node, cst.Subscript) or not node.slice:
        return None
    *before, last = node.slice
    if not all(_full_slice(e) for e in before) or not isinstance(last.slice, cst.Slice) \
            or last.slice.step is not None:
        return None
    return last.slice


def labels_key(node: cst.BaseExpression) -> Optional[str]:
    """``"labels"`` for ``x["labels"]``, the name for a label-named variable (``lm_labels``,
    ``self.labels``), else None."""
    node = strip_transparent(node)
    if subscript_key(node) == "labels":
        return "labels"
    if isinstance(node, cst.Name) and _LABEL_NAME.search(node.value):
        return "labels" if node.value == "labels" else node.value
    if isinstance(node, cst.Attribute) and _LABEL_NAME.search(node.attr.value):
        return "labels" if node.attr.value == "labels" else node.attr.value
    return None


class Labels:
    def __init__(self, ctx: "Context") -> None:
        self.ctx = ctx
        self.flow = ctx.get(Assignments)
        self.text = ctx.get(TrainingText)
        self.batches = ctx.get(Batches)
        self._preprocessing: Set[cst.CSTNode] = set(self.text.mapped) | {
            f for f in ctx.nodes(cst.FunctionDef) if f.name.value == "__getitem__"}
        self._visiting: Set[object] = set()
        # map functions and whether some ``map`` call runs them on batches (``batched=True``)
        self._batched: Dict[cst.CSTNode, bool] = {}
        for call in ctx.nodes(cst.Call):
            if isinstance(call.func, cst.Attribute) and call.func.attr.value == "map" and call.args \
                    and call.args[0].keyword is None and not call.args[0].star:
                function = self._function(call.args[0].value)
                if function is not None:
                    batched = any(a.keyword is not None and a.keyword.value == "batched"
                                  and not _is_false(a.value) for a in call.args) or any(a.star for a in call.args)
                    self._batched[function] = self._batched.get(function, False) or batched
        self._lm_collators = [call for call in ctx.nodes(cst.Call) if DCLM in ctx.names.resolve(call.func)
                              and _is_false(bind(call, CALLS[DCLM]).value("mlm"))]

    # -- where labels are stored ---------------------------------------------------------------
    def writes(self) -> List[LabelWrite]:
        ctx = self.ctx
        out: List[LabelWrite] = []
        for node in ctx.nodes(cst.Assign):
            if len(node.targets) == 1 and subscript_key(node.targets[0].target) == "labels":
                out.append(LabelWrite(node, node.value, node.targets[0].target.value))  # type: ignore[attr-defined]
        for mapping in ctx.nodes(cst.Dict):
            for element in mapping.elements:
                if isinstance(element, cst.DictElement) and string_value(element.key) == "labels":
                    out.append(LabelWrite(element, element.value, mapping))
        for call in ctx.nodes(cst.Call):
            if isinstance(call.func, cst.Name) and call.func.value == "dict":
                for arg in call.args:
                    if arg.keyword is not None and arg.keyword.value == "labels":
                        out.append(LabelWrite(arg, arg.value, call))
        return sorted(out, key=lambda w: ctx.order(w.node))

    def preprocessing(self, node: cst.CSTNode) -> Optional[cst.CSTNode]:
        """The ``map`` function or ``__getitem__`` ``node`` runs in, else None."""
        for ancestor in self.ctx.ancestors(node):
            if ancestor in self._preprocessing:
                return ancestor
        return None

    def is_map_root(self, function: Optional[cst.CSTNode]) -> bool:
        """A function passed to ``map`` itself (not a helper it calls, not ``__getitem__``)."""
        return function in self.text.map_roots

    def inputs_of(self, write: LabelWrite) -> Optional[cst.BaseExpression]:
        """The ``input_ids`` stored next to the labels of ``write``."""
        container = write.container
        if isinstance(container, cst.Dict):
            for element in container.elements:
                if isinstance(element, cst.DictElement) and string_value(element.key) == "input_ids":
                    return element.value
            return None
        if isinstance(container, cst.Call):
            return next((a.value for a in container.args
                         if a.keyword is not None and a.keyword.value == "input_ids"), None)
        ctx = self.ctx
        scope = ctx.enclosing(write.node, cst.FunctionDef)
        owner = ctx.code(container)
        for node in ctx.nodes(cst.Assign):
            if len(node.targets) == 1 and subscript_key(node.targets[0].target) == "input_ids" \
                    and ctx.code(node.targets[0].target.value) == owner \
                    and ctx.enclosing(node, cst.FunctionDef) is scope:  # type: ignore[attr-defined]
                return node.value
        return None

    # -- what labels hold ----------------------------------------------------------------------
    def _follow(self, expr: cst.BaseExpression) -> cst.BaseExpression:
        """Through local names (a name modified in place stops the walk) and id-keeping calls."""
        for _ in range(_LIMIT):
            expr = strip_transparent(expr)
            if isinstance(expr, cst.Name):
                value = self.flow.reaching(expr)
                if value is None or self._modified(expr):
                    return expr
                expr = value
                continue
            if isinstance(expr, cst.Call):
                func = expr.func
                if isinstance(func, cst.Attribute) and func.attr.value in _KEEP and not expr.args:
                    expr = func.value
                    continue
                names = self.ctx.names.resolve(func) | {dotted(func) or ""}
                if names & _KEEP_FUNCTIONS and len(expr.args) == 1 and not expr.args[0].star:
                    expr = expr.args[0].value
                    continue
            if isinstance(expr, cst.Subscript) and _last_slice(expr) is not None:
                part = _last_slice(expr)
                if part is not None and len(expr.slice) == 1 and part.lower is None and part.upper is None:
                    expr = expr.value  # ids[:]
                    continue
            return expr
        return expr

    def _modified(self, name: cst.Name) -> bool:
        """``name[...] = ...``, ``name += ...`` or an in-place method of ``name`` in its scope,
        before this use; also a row of ``name`` modified so through the target of a loop over it
        (``for row in name``, ``for i, row in enumerate(name)``, ``for a, row in zip(a, name)``):
        rows of a tensor are views and rows of a list are the same objects."""
        ctx = self.ctx
        scope = ctx.enclosing(name, cst.FunctionDef)
        at = ctx.order(name)
        return self._mutated(name.value, scope, at) or self._rows_modified(name)

    def _rows_modified(self, expr: cst.BaseExpression) -> bool:
        """A row of ``expr`` (a name, or ``enc["input_ids"]`` written the same way) modified in
        place through the target of a loop over it, in its scope, before this use."""
        ctx = self.ctx
        scope = ctx.enclosing(expr, cst.FunctionDef)
        at = ctx.order(expr)
        text = ctx.code(expr)
        for loop in ctx.nodes(cst.For):
            if ctx.end_order(loop) >= at or ctx.enclosing(loop, cst.FunctionDef) is not scope:
                continue
            row = _row_target(ctx, loop, text)
            if row is not None and self._mutated(row, scope, at, within=loop.body):
                return True
        return False

    def _mutated(self, name: str, scope: Optional[cst.CSTNode], at: int,
                 within: Optional[cst.CSTNode] = None) -> bool:
        """Whether ``name`` is modified in place (item assignment, augmented assignment, an
        in-place method) in ``scope`` before position ``at`` (and inside ``within`` if given)."""
        ctx = self.ctx

        def counts(node: cst.CSTNode) -> bool:
            if ctx.end_order(node) >= at or ctx.enclosing(node, cst.FunctionDef) is not scope:
                return False
            return within is None or ctx.order(within) <= ctx.order(node) <= ctx.end_order(within)

        for node in (*ctx.nodes(cst.Assign), *ctx.nodes(cst.AugAssign)):
            if not counts(node):
                continue
            targets = [t.target for t in node.targets] if isinstance(node, cst.Assign) else [node.target]
            for target in targets:
                keyed = isinstance(target, cst.Subscript) and subscript_key(target) is not None
                base = target.value if isinstance(target, cst.Subscript) and not keyed else (
                    target if isinstance(node, cst.AugAssign) else None)
                if isinstance(base, cst.Name) and base.value == name:
                    return True
        for call in ctx.nodes(cst.Call):
            func = call.func
            if isinstance(func, cst.Attribute) and func.attr.value in _IN_PLACE \
                    and isinstance(func.value, cst.Name) and func.value.value == name and counts(call):
                return True
        return False

    def copies_input_ids(self, write: LabelWrite) -> bool:
        """The labels of ``write`` are the same example's ``input_ids``, unchanged."""
        ctx = self.ctx
        value = self._follow(write.value)
        if subscript_key(value) == "input_ids" or (isinstance(value, cst.Attribute)
                                                   and value.attr.value == "input_ids"):
            owner = ctx.code(value.value)  # type: ignore[attr-defined]
            if not isinstance(write.container, (cst.Dict, cst.Call)) and owner == ctx.code(write.container):
                return True
        inputs = self.inputs_of(write)
        if inputs is None:
            return False
        return ctx.code(self._follow(inputs)) == ctx.code(value) and not isinstance(value, cst.Call)

    def pad_masked_copy(self, write: LabelWrite) -> bool:
        """The labels of ``write`` are the same example's ``input_ids`` with every pad id set to
        -100 by value (``[-100 if t == pad_id else t for t in ids]``, per row of a batch, also
        built with ``labels.append(...)`` in a loop): what ``DataCollatorForLanguageModeling(
        mlm=False)`` builds itself."""
        source = self._masked_source(write.value, 0)
        return source is not None and self.copies_input_ids(LabelWrite(write.node, source, write.container))

    def _masked_source(self, expr: cst.BaseExpression, depth: int) -> Optional[cst.BaseExpression]:
        """``ids`` for a pad -> -100 comprehension over ``ids`` (nested per row, or appended row by
        row in a ``for row in ids`` loop), else None."""
        if depth > 4:
            return None
        if isinstance(expr, cst.Name):
            value = self.flow.reaching(expr)
            if isinstance(value, cst.List) and not value.elements:
                return self._appended_source(expr, depth)
        expr = self._follow(expr)
        if not (isinstance(expr, cst.ListComp) and expr.for_in.inner_for_in is None
                and isinstance(expr.for_in.target, cst.Name) and not expr.for_in.ifs):
            return None
        var = expr.for_in.target.value
        elt = expr.elt
        if isinstance(elt, cst.IfExp) and self._pad_test(elt.test):
            kinds = {self.value_kind(elt.body), self.value_kind(elt.orelse)}
            names = {b.value for b in (elt.body, elt.orelse) if isinstance(b, cst.Name)}
            if IGNORE in kinds and var in names:
                return expr.for_in.iter
        inner = self._masked_source(elt, depth + 1)
        if isinstance(inner, cst.Name) and inner.value == var:
            return expr.for_in.iter
        return None

    def _appended_source(self, name: cst.Name, depth: int) -> Optional[cst.BaseExpression]:
        """``rows`` when every ``name.append(x)`` before ``name`` sits in ``for row in rows`` and
        ``x`` is a pad -> -100 comprehension over ``row``."""
        ctx = self.ctx
        scope = ctx.enclosing(name, cst.FunctionDef)
        source = None
        for call in ctx.nodes(cst.Call):
            func = call.func
            if not (isinstance(func, cst.Attribute) and isinstance(func.value, cst.Name)
                    and func.value.value == name.value and ctx.end_order(call) < ctx.order(name)
                    and ctx.enclosing(call, cst.FunctionDef) is scope):
                continue
            loop = ctx.enclosing(call, cst.For)
            if func.attr.value != "append" or len(call.args) != 1 or loop is None \
                    or not isinstance(loop.target, cst.Name):
                return None
            inner = self._masked_source(call.args[0].value, depth + 1)
            if not (isinstance(inner, cst.Name) and inner.value == loop.target.value):
                return None
            source = loop.iter
        return source

    def _pad_test(self, test: cst.BaseExpression) -> bool:
        return isinstance(test, cst.Comparison) and any(
            isinstance(t.operator, (cst.Equal, cst.NotEqual)) for t in test.comparisons) and any(
            self.value_kind(o) == PAD for o in (test.left, *(t.comparator for t in test.comparisons)))

    def shifted_pair(self, inputs: cst.BaseExpression, labels: cst.BaseExpression) -> Optional[str]:
        """The source of the tensor both come from when ``labels`` is ``inputs`` shifted left by
        one token, else None."""
        ctx = self.ctx
        x, y = self._follow(inputs), self._follow(labels)
        if isinstance(y, cst.Call) and ctx.names.matches(y.func, "torch.roll") and y.args:
            shifts = next((a.value for a in y.args[1:] if a.keyword is None or a.keyword.value == "shifts"), None)
            if shifts is not None and _minus(shifts) == "-1":
                root = ctx.code(self._follow(y.args[0].value))
                return root if root == ctx.code(x) else None
            return None
        xs, ys = _last_slice(x), _last_slice(y)
        if xs is None or ys is None or ctx.code(x.value) != ctx.code(y.value):  # type: ignore[attr-defined]
            return None
        if len(x.slice) != len(y.slice):  # type: ignore[attr-defined]
            return None
        root = ctx.code(x.value)  # type: ignore[attr-defined]
        # x[:, :-1] and x[:, 1:]
        if xs.lower is None and xs.upper is not None and _minus(xs.upper) == "-1" \
                and ys.upper is None and ys.lower is not None and _minus(ys.lower) == "1":
            return root
        # data[i:i+n] and data[i+1:i+1+n]
        if xs.lower is not None and ys.lower is not None and _one_more(ctx, ys.lower, xs.lower):
            if xs.upper is None and ys.upper is None:
                return root
            if xs.upper is not None and ys.upper is not None and _one_more(ctx, ys.upper, xs.upper):
                return root
        return None

    # -- padded tokenizations ------------------------------------------------------------------
    def padded_call(self, expr: cst.BaseExpression, depth: int = 0) -> Optional[cst.Call]:
        """The tokenizer call whose ids ``expr`` holds (``enc["input_ids"]``, ``enc.input_ids``,
        ``enc["labels"]`` of a ``text_target`` call, a name or local function returning them),
        when that call pads them."""
        if depth > _LIMIT:
            return None
        expr = self._follow(expr)
        key = subscript_key(expr)
        if isinstance(expr, cst.Subscript) and key is None and len(expr.slice) == 1 \
                and isinstance(expr.slice[0].slice, cst.Index):
            return self.padded_call(expr.value, depth + 1)  # enc["input_ids"][0]
        if key in ("input_ids", "labels") or (isinstance(expr, cst.Attribute)
                                             and expr.attr.value in ("input_ids", "labels")):
            if self._rows_modified(expr):  # ``for x, y in zip(a, enc["input_ids"]): y[n:] = ...``
                return None
            key = key or expr.attr.value  # type: ignore[attr-defined]
            call = self._encoding(expr.value, depth + 1)  # type: ignore[attr-defined]
            if call is None:
                return None
            has_target = bind(call, TOKENIZER_CALL).passed("text_target")
            if key == "labels" and not has_target:
                return None
            return call if self.pads(call, "labels" if key == "labels" else "input_ids") else None
        if isinstance(expr, cst.Call):
            found = self.batches.tokenizer_call(expr)
            if found is not None and found[1] == "encode":
                return expr if self.pads(expr, "input_ids") else None
            function = self.text.local_function(expr)
            for value in self.text.returns(function) if function is not None else ():
                call = self.padded_call(value, depth + 1)
                if call is not None:
                    return call
        return None

    def _encoding(self, expr: cst.BaseExpression, depth: int) -> Optional[cst.Call]:
        """The tokenizer call whose ``BatchEncoding`` ``expr`` is."""
        if depth > _LIMIT:
            return None
        expr = self._follow(expr)
        if isinstance(expr, cst.Call):
            found = self.batches.tokenizer_call(expr)
            if found is not None and found[1] in ("__call__", "encode_plus", "batch_encode_plus"):
                return expr
            function = self.text.local_function(expr)
            for value in self.text.returns(function) if function is not None else ():
                call = self._encoding(value, depth + 1)
                if call is not None:
                    return call
        return None

    def pads(self, call: cst.Call, key: str = "input_ids") -> bool:
        """Whether tokenizer ``call`` pads the ids under ``key`` (``"labels"``: its
        ``text_target``)."""
        binding = bind(call, TOKENIZER_CALL)
        if binding.opaque:
            return False
        padding = binding.value("padding")
        if padding is None:
            return False
        text = string_value(padding) or (dotted(padding) or "").rsplit(".", 1)[-1]
        if text in _PADDING_ALWAYS:
            return True
        if text not in _PADDING_LONGEST:
            return False
        texts = binding.value("text_target" if key == "labels" else "text") or binding.value("text_target") \
            or binding.value("text")
        return texts is not None and self.several_texts(call, texts) is True

    def several_texts(self, at: cst.CSTNode, texts: cst.BaseExpression) -> Optional[bool]:
        """``Batches.several_texts``, except that a column of an example is one text inside a
        ``map`` function that no ``map`` call runs with ``batched=True``."""
        for ancestor in self.ctx.ancestors(at):
            if ancestor in self._batched and not self._batched[ancestor]:
                return False
        return self.batches.several_texts(texts)

    # -- values --------------------------------------------------------------------------------
    def value_kind(self, expr: cst.BaseExpression, depth: int = 0) -> Optional[str]:
        if depth > 6:
            return None
        literal = _minus(expr)
        if literal is not None:
            return literal
        if isinstance(expr, cst.Name):
            if _PAD_NAME.search(expr.value):
                return PAD
            value = self.flow.reaching(expr)
            if value is None and not self.flow.is_bound_locally(expr):
                value = self._constant(expr.value)
            return self.value_kind(value, depth + 1) if value is not None else None
        if isinstance(expr, cst.Attribute):
            return PAD if _PAD_NAME.search(expr.attr.value) else None
        if isinstance(expr, cst.Subscript):
            key = subscript_key(expr)
            return PAD if key is not None and "pad" in key.lower() else None
        if isinstance(expr, cst.Call) and isinstance(expr.func, cst.Attribute) \
                and expr.func.attr.value in ("token_to_id", "convert_tokens_to_ids") and expr.args:
            arg = expr.args[0].value
            text = string_value(arg) or (dotted(arg) or "")
            return PAD if "pad" in text.lower() else None
        return None

    def _constant(self, name: str) -> Optional[cst.BaseExpression]:
        values = [s.value for line in self.ctx.module.body if isinstance(line, cst.SimpleStatementLine)
                  for s in line.body if isinstance(s, cst.Assign) and len(s.targets) == 1
                  and isinstance(s.targets[0].target, cst.Name) and s.targets[0].target.value == name]
        return values[0] if len(values) == 1 else None

    def mask_writes(self) -> List[MaskWrite]:
        ctx = self.ctx
        out: List[MaskWrite] = []

        def add(node: cst.CSTNode, value: cst.BaseExpression, target: Optional[str]) -> None:
            kind = self.value_kind(value)
            if kind is not None and target is not None:
                out.append(MaskWrite(node, kind, value, target))

        for node in ctx.nodes(cst.Assign):
            if len(node.targets) != 1:
                continue
            target = node.targets[0].target
            if isinstance(target, cst.Subscript) and subscript_key(target) is None:
                for value in list(_filled_values(node.value)) or [node.value]:  # labels[mask] = -100
                    add(node, value, labels_key(target.value))
            elif labels_key(target) is not None:
                for value in _filled_values(node.value):
                    add(node, value, labels_key(target))
        for write in self.writes():
            if isinstance(write.node, (cst.DictElement, cst.Arg)):  # {"labels": [-100] * n + ids}
                for value in _filled_values(write.value):
                    add(write.node, value, "labels")
        for call in ctx.nodes(cst.Call):
            func = call.func
            names = ctx.names.resolve(func)
            assigned = self._assigned_key(call)
            if isinstance(func, cst.Attribute) and func.attr.value in ("masked_fill", "masked_fill_") \
                    and len(call.args) == 2:
                add(call, call.args[1].value, labels_key(func.value) or assigned)
            elif "torch.where" in names and len(call.args) == 3:
                cond, a, b = (arg.value for arg in call.args)
                add(call, a, labels_key(b) or assigned)
                add(call, b, labels_key(a) or assigned)
            elif "torch.nn.utils.rnn.pad_sequence" in names:
                padding = bind(call, _PAD_SEQUENCE).value("padding_value")
                if padding is not None:
                    add(call, padding, assigned)
            elif SEQ2SEQ_COLLATOR in names:
                value = bind(call, CALLS[SEQ2SEQ_COLLATOR]).value("label_pad_token_id")
                out.append(MaskWrite(call, self.value_kind(value) if value is not None else IGNORE,
                                     value if value is not None else call, "labels"))
            elif call in self.lm_collators():
                out.append(MaskWrite(call, IGNORE, call, "labels"))
        return [w for w in out if w.kind is not None]

    def _assigned_key(self, call: cst.Call) -> Optional[str]:
        """``labels_key`` of the single target ``call`` is assigned to."""
        parent = self.ctx.parent(call)
        if isinstance(parent, cst.Assign) and len(parent.targets) == 1:
            return labels_key(parent.targets[0].target)
        return None

    # -- replacement of pad ids ----------------------------------------------------------------
    def pad_replacement(self) -> Optional[cst.CSTNode]:
        """A statement that replaces pad ids (or padded positions) in labels with -100, or a
        loss that ignores something other than -100; None when the module shows neither."""
        ctx = self.ctx
        for comparison in ctx.nodes(cst.Comparison):
            if not any(isinstance(t.operator, (cst.Equal, cst.NotEqual)) for t in comparison.comparisons):
                continue
            operands = (comparison.left, *(t.comparator for t in comparison.comparisons))
            if not any(self.value_kind(o) == PAD or "attention_mask" in ctx.code(o) for o in operands):
                continue
            statement = ctx.enclosing(comparison, cst.SimpleStatementLine) or \
                ctx.enclosing(comparison, cst.BaseCompoundStatement)
            if statement is not None and any(self.value_kind(n) == IGNORE for n in _expressions(statement)):
                return statement
        for arg in ctx.nodes(cst.Arg):
            if arg.keyword is not None and arg.keyword.value == "ignore_index" \
                    and self.value_kind(arg.value) != IGNORE:
                return arg
        return None

    # -- collators -----------------------------------------------------------------------------
    def lm_collators(self) -> List[cst.Call]:
        """``DataCollatorForLanguageModeling(mlm=False)`` calls, which rebuild ``labels``."""
        return list(self._lm_collators)

    def collator_datasets(self, collator: cst.Call) -> Optional[Set[cst.CSTNode]]:
        """The ``map`` functions of every dataset ``collator`` is used with (``Trainer(
        data_collator=..., train_dataset=...)``, ``DataLoader(ds, collate_fn=...)``); None when
        the collator's use or a dataset's making cannot be followed."""
        ctx = self.ctx
        parent = ctx.parent(ctx.parent(collator) or collator)
        names = set()
        if isinstance(ctx.parent(collator), cst.Assign):
            assign = ctx.parent(collator)
            names = {ctx.code(t.target) for t in assign.targets}  # type: ignore[union-attr]
        uses = []
        for arg in ctx.nodes(cst.Arg):
            if arg.keyword is None or arg.keyword.value not in ("data_collator", "collate_fn"):
                continue
            if arg.value is collator or ctx.code(arg.value) in names:
                uses.append(ctx.parent(arg))
        if not uses or isinstance(parent, cst.Arg) and parent.keyword is None:
            return None
        functions: Set[cst.CSTNode] = set()
        for use in uses:
            if not isinstance(use, cst.Call) or any(a.star for a in use.args):
                return None
            datasets = [a.value for a in use.args
                        if (a.keyword is None and "DataLoader" in ctx.code(use.func))
                        or (a.keyword is not None and a.keyword.value in ("train_dataset", "eval_dataset",
                                                                          "dataset"))]
            if not datasets:
                return None
            for dataset in datasets[:1] if "DataLoader" in ctx.code(use.func) else datasets:
                found = self._dataset_maps(dataset, 0)
                if found is None:
                    return None
                functions |= found
        return functions

    def _dataset_maps(self, expr: cst.BaseExpression, depth: int) -> Optional[Set[cst.CSTNode]]:
        if depth > _LIMIT:
            return None
        if isinstance(expr, cst.Name):
            value = self.flow.reaching(expr)
            return self._dataset_maps(value, depth + 1) if value is not None else None
        if isinstance(expr, cst.Subscript):
            return self._dataset_maps(expr.value, depth + 1)
        if isinstance(expr, cst.Attribute) and isinstance(expr.value, cst.Name) and expr.value.value == "self":
            return self._attribute_maps(expr, depth)
        if not isinstance(expr, cst.Call):
            return None
        if self.ctx.names.resolve(expr.func) & _DATASET_ROOTS:
            return set()
        func = expr.func
        function = self.text.local_function(expr)
        if function is not None:  # a local loader: what it returns
            found: Set[cst.CSTNode] = set()
            for value in self.text.returns(function):
                inner = self._dataset_maps(value, depth + 1)
                if inner is None:
                    return None
                found |= inner
            return found
        if self.ctx.names.resolve(func) and not (isinstance(func, cst.Attribute) and func.attr.value == "map"):
            return set()  # a loader imported from another module runs none of this module's functions
        if not isinstance(func, cst.Attribute):
            return None
        inner = self._dataset_maps(func.value, depth + 1)
        if inner is None:
            return None
        if func.attr.value in _DATASET_KEEPS:
            return inner
        if func.attr.value == "map" and expr.args:
            first = expr.args[0]
            if first.keyword is None and not first.star:
                function = self._function(first.value)
                return inner | {function} if function is not None else None
        return None

    def _attribute_maps(self, expr: cst.Attribute, depth: int) -> Optional[Set[cst.CSTNode]]:
        """``self.data``: the maps of every value assigned to it in the class (a value built from
        ``self.data`` itself adds only its own ``map`` functions)."""
        cls = self.ctx.enclosing(expr, cst.ClassDef)
        key = (cls, expr.attr.value)
        if key in self._visiting:
            return set()
        values = self.ctx.get(Instances).attr_values.get(cls, {}).get(expr.attr.value) if cls else None
        if not values:
            return None
        self._visiting.add(key)
        try:
            found: Set[cst.CSTNode] = set()
            for value in values:
                inner = self._dataset_maps(value, depth + 1) if isinstance(value, cst.BaseExpression) else None
                if inner is None:
                    return None
                found |= inner
            return found
        finally:
            self._visiting.discard(key)

    def _function(self, value: cst.BaseExpression) -> Optional[cst.CSTNode]:
        """The function a ``map`` call is given: a lambda, a local function, a ``partial`` of one."""
        if isinstance(value, cst.Lambda):
            return value
        if isinstance(value, cst.Name) and len(self.text.functions.get(value.value, [])) == 1:
            return self.text.functions[value.value][0]
        if isinstance(value, cst.Call) and "functools.partial" in self.ctx.names.resolve(value.func) \
                and value.args:
            return self._function(value.args[0].value)
        return None


def _row_target(ctx: "Context", loop: cst.For, text: str) -> Optional[str]:
    """The loop variable bound to the rows of the expression written ``text`` in
    ``for row in text``, ``for i, row in enumerate(text)`` or ``for a, row in zip(..., text, ...)``,
    else None."""
    iterable, target = loop.iter, loop.target
    if not (isinstance(iterable, cst.Call) and isinstance(iterable.func, cst.Name)
            and iterable.func.value in ("enumerate", "zip")):
        return target.value if ctx.code(iterable) == text and isinstance(target, cst.Name) else None
    if not isinstance(target, (cst.Tuple, cst.List)):
        return None
    args = iterable.args
    if any(a.star or a.keyword is not None for a in args) or len(target.elements) < 2:
        return None
    if iterable.func.value == "enumerate" and len(args) == 1:
        index = 1 if ctx.code(args[0].value) == text else None
    elif iterable.func.value == "zip" and len(args) == len(target.elements):
        index = next((i for i, a in enumerate(args) if ctx.code(a.value) == text), None)
    else:
        return None
    if index is None or index >= len(target.elements):
        return None
    element = target.elements[index].value
    return element.value if isinstance(element, cst.Name) else None


# torch 2.13.0 nn/utils/rnn.py, ``pad_sequence`` (L405-410).
_PAD_SEQUENCE = Signature(("sequences", "batch_first", "padding_value", "padding_side"))


def _is_false(node: Optional[cst.BaseExpression]) -> bool:
    return isinstance(node, cst.Name) and node.value == "False"


def _one_more(ctx: "Context", more: cst.BaseExpression, base: cst.BaseExpression) -> bool:
    """``more`` is ``base + 1`` (as sums of terms: ``i + 1 + n`` is ``i + n`` plus one)."""
    return sorted(_terms(ctx, more)) == sorted(_terms(ctx, base) + ["1"])


def _terms(ctx: "Context", node: cst.BaseExpression) -> List[str]:
    if isinstance(node, cst.BinaryOperation) and isinstance(node.operator, cst.Add):
        return _terms(ctx, node.left) + _terms(ctx, node.right)
    return [ctx.code(node)]


def _filled_values(value: cst.BaseExpression):
    """Values a labels expression fills positions with: ``[-100] * n + ids``,
    ``[pad_id] * k``, ``-100 if c else t`` (also inside comprehensions)."""
    pending = [value]
    while pending:
        node = pending.pop()
        if isinstance(node, cst.BinaryOperation) and isinstance(node.operator, (cst.Add, cst.Multiply)):
            pending.extend((node.left, node.right))
        elif isinstance(node, cst.List) and len(node.elements) == 1:
            yield node.elements[0].value
        elif isinstance(node, (cst.ListComp, cst.GeneratorExp)):
            pending.append(node.elt)
        elif isinstance(node, cst.IfExp):
            for branch in (node.body, node.orelse):
                if _minus(branch) is not None or isinstance(branch, (cst.Name, cst.Attribute)):
                    yield branch
                else:
                    pending.append(branch)


def _expressions(node: cst.CSTNode):
    pending: List[cst.CSTNode] = [node]
    while pending:
        current = pending.pop()
        if isinstance(current, cst.BaseExpression):
            yield current
        pending.extend(current.children)
