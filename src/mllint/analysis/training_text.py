"""Causal-LM training examples: which tokenizer calls make them, what their text is built from,
and whether an EOS token reaches them.

Three questions, answered from what the module shows:

- ``examples()``: tokenizer calls whose ``input_ids`` become the labels. Either the module copies
  them (``result["labels"] = result["input_ids"].copy()``, ``labels = input_ids.clone()``,
  ``{"labels": ids[:]}``, ``list(...)``, ``copy.deepcopy(...)``), followed through local names and
  the ``return`` values of local helper functions (``tokenized = tokenize(prompt)``); or the module
  builds ``DataCollatorForLanguageModeling(mlm=False)``, which copies every example's
  ``input_ids`` into ``labels`` (transformers ``data/data_collator.py``, ``torch_call``), and the
  call sits in a ``dataset.map`` preprocessing function (or a local function it calls).
- ``sources(text)``: what a text argument is built from. Local names, module constants, the
  ``return`` values of local functions, string methods (``format``, ``join``, ``strip``, ``%``)
  and a parameter's arguments at every call site of its function are followed. The pieces are
  string literals (the template), dataset values (subscripts such as ``example["output"]``, loop
  and row variables), EOS tokens (``tokenizer.eos_token``, ``"</s>"``, ...) and opaque parts that
  cannot be seen into (a call into another module, an attribute such as ``self.template``).
- ``eos_evidence()``: the first place where the module may put an EOS into its training data:
  an ``eos_token``/``eos_token_id`` reference or an EOS literal outside pad-token and generation
  settings, ``add_eos_token`` set to anything but ``False``, a chat template, or a trl
  ``SFTTrainer`` that appends EOS itself (trl >= 0.16, or an unknown trl version).

``packs()`` tells whether the module concatenates examples into blocks (the run_clm
``group_texts`` recipe), where examples do not end where texts end.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Dict, Iterable, List, Optional, Set, Tuple, Union

import libcst as cst

from mllint.analysis.batches import Batches, subscript_key
from mllint.analysis.dataflow import Assignments, strip_transparent
from mllint.analysis.hf import DCLM, SFT_TRAINER, HfFacts
from mllint.analysis.names import dotted, string_value
from mllint.analysis.signatures import CALLS, TOKENIZER_CALL, bind

if TYPE_CHECKING:
    from mllint.core.context import Context

# End-of-sequence / end-of-turn tokens of common decoder-only tokenizers (Llama 1/2 and Mistral,
# GPT-2/Qwen/Falcon, Qwen chat, Llama 3, Gemma, Phi-3). A literal holding one means the module
# writes EOS into its texts itself.
EOS_LITERALS = ("</s>", "<|endoftext|>", "<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<eos>",
                "<end_of_turn>", "<|end|>")
_EOS_ATTRS = ("eos_token", "eos_token_id")
_PAD_ATTRS = ("pad_token", "pad_token_id")
# Keywords that configure generation or the tokenizer's special tokens, not the training text.
_SETTING_CALLS = ("generate", "GenerationConfig", "from_pretrained", "pipeline")
# Tokenizer methods that encode text into ids.
_ENCODERS = ("__call__", "encode", "encode_plus", "batch_encode_plus")
# String methods whose result is built from the receiver and the arguments.
_STRING_METHODS = frozenset({"format", "join", "strip", "lstrip", "rstrip", "replace", "lower",
                             "upper", "capitalize", "title", "removeprefix", "removesuffix"})
# Calls that return their argument's text.
_TEXT_FUNCTIONS = frozenset({"str", "textwrap.dedent", "dedent", "inspect.cleandoc"})
# Calls that copy a sequence of ids.
_COPY_FUNCTIONS = frozenset({"list", "copy.copy", "copy.deepcopy", "deepcopy", "torch.clone",
                             "numpy.copy", "np.copy"})
# Calls that keep the ids of a tensor/list while reshaping or converting it.
_KEEP_IDS = frozenset({"flatten", "squeeze", "tolist", "numpy", "view", "reshape"})
# Functions that turn a list of ids into a tensor/array of the same ids.
_ID_CONTAINERS = frozenset({"torch.tensor", "torch.as_tensor", "torch.LongTensor", "numpy.array",
                            "numpy.asarray"})
_LIMIT = 24
# A template that ends with a placeholder, for ``str.format`` and ``%`` templates.
_TRAILING_FIELD = {"format": re.compile(r"\}\s*$"),
                   "percent": re.compile(r"%(\([^)]*\))?[-#0 +]*\d*(\.\d+)?[sdrif]\s*$")}

Function = Union[cst.FunctionDef, cst.Lambda]


@dataclass(frozen=True)
class TrainingExample:
    """A tokenizer call whose ``input_ids`` become the labels of a training example."""

    call: cst.Call
    tokenizer: cst.BaseExpression  # the tokenizer expression (``tokenizer``, ``self.tok``)
    text: cst.BaseExpression  # the text argument
    evidence: cst.CSTNode  # the labels copy, or the ``DataCollatorForLanguageModeling`` call
    description: str  # what the evidence is, for messages


@dataclass
class TextSources:
    """The pieces a text is built from."""

    template: List[cst.CSTNode] = field(default_factory=list)  # literals with visible characters
    data: List[cst.CSTNode] = field(default_factory=list)  # dataset values
    eos: List[cst.CSTNode] = field(default_factory=list)  # EOS tokens
    opaque: List[cst.CSTNode] = field(default_factory=list)  # parts that cannot be seen into
    endings: Set[str] = field(default_factory=set)  # what the text may end with: "data", "template", ...

    def add(self, kind: str, node: cst.CSTNode, last: Optional[str]) -> None:
        getattr(self, kind).append(node)
        if last:
            self.endings.add(kind)

    @property
    def built_without_eos(self) -> bool:
        """A template filled with dataset values, every piece seen, no EOS among them, and a
        dataset value at the end (a literal at the end is a terminator of the author's own,
        such as ``"### End"``)."""
        return bool(self.template) and bool(self.data) and not self.eos and not self.opaque \
            and self.endings == {"data"}


class TrainingText:
    def __init__(self, ctx: "Context") -> None:
        self.ctx = ctx
        self.flow = ctx.get(Assignments)
        self.batches = ctx.get(Batches)
        self.functions: Dict[str, List[cst.FunctionDef]] = {}
        for function in ctx.nodes(cst.FunctionDef):
            self.functions.setdefault(function.name.value, []).append(function)
        self._following: Set[Tuple[object, cst.FunctionDef]] = set()
        self.map_roots: Set[cst.CSTNode] = set()  # functions passed to ``.map`` themselves
        self.mapped = self._map_functions()  # and the local functions they call

    # -- tokenizer calls ---------------------------------------------------------------------
    def encoder(self, call: cst.Call) -> Optional[Tuple[cst.BaseExpression, cst.BaseExpression]]:
        """``(tokenizer, text)`` when ``call`` encodes a text (``tok(text)``, ``tok.encode(text)``,
        ...) and its text argument is visible."""
        found = self.batches.tokenizer_call(call)
        if found is None or found[1] not in _ENCODERS:
            return None
        binding = bind(call, TOKENIZER_CALL)
        if binding.opaque:
            return None
        text = binding.value("text")
        return (found[0], text) if text is not None else None

    def local_function(self, call: cst.Call) -> Optional[cst.FunctionDef]:
        """The function of this module that ``call`` calls by name (None when ambiguous)."""
        if isinstance(call.func, cst.Name):
            found = self.functions.get(call.func.value, [])
            if len(found) == 1:
                return found[0]
        return None

    def returns(self, function: cst.FunctionDef) -> List[cst.BaseExpression]:
        """The values ``function`` returns (not those of functions nested in it)."""
        return [r.value for r in self.ctx.nodes(cst.Return)
                if r.value is not None and self.ctx.enclosing(r, cst.FunctionDef) is function]

    # -- labels ------------------------------------------------------------------------------
    def _encodings(self, expr: cst.BaseExpression, depth: int = 0) -> Set[cst.Call]:
        """The tokenizer calls whose result (a ``BatchEncoding`` or ids) ``expr`` is."""
        if depth > _LIMIT:
            return set()
        expr = _strip(expr)
        if isinstance(expr, cst.Name):
            value = self.flow.reaching(expr)
            return self._encodings(value, depth + 1) if value is not None else set()
        if isinstance(expr, cst.Call):
            if self.encoder(expr) is not None:
                return {expr}
            return self._through_returns(expr, self._encodings, depth)
        return set()

    def _through_returns(self, call: cst.Call, follow, depth: int) -> Set[cst.Call]:
        """``follow`` applied to the return values of the local function ``call`` calls (each
        function followed once per question, so recursion cannot blow up)."""
        function = self.local_function(call)
        if function is None or (follow, function) in self._following:
            return set()
        self._following.add((follow, function))
        try:
            return {c for r in self.returns(function) for c in follow(r, depth + 1)}
        finally:
            self._following.discard((follow, function))

    def _ids(self, expr: cst.BaseExpression, depth: int = 0) -> Set[cst.Call]:
        """The tokenizer calls whose ``input_ids`` ``expr`` holds: ``enc["input_ids"]``,
        ``enc.input_ids[0]``, ``tok.encode(text)``, a name or local function returning them."""
        if depth > _LIMIT:
            return set()
        expr = _strip(expr)
        if isinstance(expr, cst.Subscript):
            key = subscript_key(expr)
            if key == "input_ids":
                owner = _strip(expr.value)
                if isinstance(owner, cst.Name) and isinstance(self.flow.reaching(owner), cst.Dict):
                    element = _dict_value(self.flow.reaching(owner), "input_ids")
                    return self._ids(element, depth + 1) if element is not None else set()
                return self._encodings(expr.value, depth + 1)
            return self._ids(expr.value, depth + 1) if key is None else set()
        if isinstance(expr, cst.Attribute) and expr.attr.value == "input_ids":
            return self._encodings(expr.value, depth + 1)
        if isinstance(expr, cst.Name):
            value = self.flow.reaching(expr)
            return self._ids(value, depth + 1) if value is not None else set()
        if isinstance(expr, cst.Call):
            found = self.batches.tokenizer_call(expr)
            if found is not None and found[1] == "encode" and self.encoder(expr) is not None:
                return {expr}
            if self.ctx.names.resolve(expr.func) & _ID_CONTAINERS and expr.args and not expr.args[0].star:
                return self._ids(expr.args[0].value, depth + 1)
            return self._through_returns(expr, self._ids, depth)
        return set()

    def _copied(self, value: cst.BaseExpression) -> Tuple[cst.BaseExpression, bool]:
        """``(ids, explicit)`` when ``value`` is ``ids.copy()``, ``ids.clone()``, ``ids[:]``,
        ``list(ids)``, ``copy.deepcopy(ids)``, ``[x.copy() for x in ids]`` (explicit), or ``ids``
        itself (not explicit)."""
        if isinstance(value, cst.Call):
            func = value.func
            if isinstance(func, cst.Attribute) and func.attr.value in ("copy", "clone") and not value.args:
                return func.value, True
            names = self.ctx.names.resolve(func) | {dotted(func) or ""}
            if names & _COPY_FUNCTIONS and len(value.args) == 1 and not value.args[0].star:
                return value.args[0].value, True
        if isinstance(value, cst.Subscript) and len(value.slice) == 1:
            part = value.slice[0].slice
            if isinstance(part, cst.Slice) and part.lower is None and part.upper is None and part.step is None:
                return value.value, True
        if isinstance(value, cst.ListComp) and value.for_in.inner_for_in is None \
                and isinstance(value.for_in.target, cst.Name):
            inner = self._copied(value.elt)[0]
            if isinstance(inner, cst.Name) and inner.value == value.for_in.target.value:
                return value.for_in.iter, True
        return value, False

    def _labels_copies(self) -> Iterable[Tuple[cst.CSTNode, Set[cst.Call], str]]:
        """(node, tokenizer calls, description) for every labels copy of ``input_ids``."""
        ctx = self.ctx
        for node in ctx.nodes(cst.Assign):
            if len(node.targets) != 1:
                continue
            target = node.targets[0].target
            ids, explicit = self._copied(node.value)
            if subscript_key(target) == "labels":
                calls = self._ids(ids) & self._encodings(target.value)  # type: ignore[attr-defined]
                yield node, calls, f"`{ctx.code(target)}` copies its `input_ids`"
            elif isinstance(target, cst.Name) and "label" in target.value and explicit:
                yield node, self._ids(ids), f"`{target.value}` copies its `input_ids`"
        for mapping in ctx.nodes(cst.Dict):
            labels = _dict_value(mapping, "labels")
            if labels is None:
                continue
            ids, explicit = self._copied(labels)
            calls = self._ids(ids)
            if not explicit:
                inputs = _dict_value(mapping, "input_ids")
                calls &= self._ids(inputs) if inputs is not None else set()
            yield mapping, calls, "the returned `labels` copy its `input_ids`"

    def _map_functions(self) -> Set[cst.CSTNode]:
        """Functions and lambdas passed to ``dataset.map(...)`` (the dataset preprocessing), and
        the local functions they call."""
        ctx = self.ctx
        pending: List[cst.CSTNode] = []
        for call in ctx.nodes(cst.Call):
            if not (isinstance(call.func, cst.Attribute) and call.func.attr.value == "map"):
                continue
            for arg in call.args:
                positional = arg.keyword is None and not arg.star
                if positional or (arg.keyword is not None and arg.keyword.value == "function"):
                    pending.extend(self._function_values(arg.value))
                    break
        self.map_roots.update(pending)
        found: Set[cst.CSTNode] = set()
        while pending:
            function = pending.pop()
            if function in found:
                continue
            found.add(function)
            for call in ctx.nodes(cst.Call):
                if _within(ctx, call, function):
                    local = self.local_function(call)
                    if local is not None:
                        pending.append(local)
        return found

    def _function_values(self, value: cst.BaseExpression) -> List[cst.CSTNode]:
        if isinstance(value, cst.Lambda):
            return [value]
        if isinstance(value, cst.Name) and len(self.functions.get(value.value, [])) == 1:
            return list(self.functions[value.value])
        if isinstance(value, cst.Call) and self.ctx.names.resolve(value.func) & {"functools.partial"} \
                and value.args:
            return self._function_values(value.args[0].value)
        return []

    def collator(self) -> Optional[cst.Call]:
        """The first ``DataCollatorForLanguageModeling(mlm=False)`` of the module."""
        for call in self.ctx.nodes(cst.Call):
            if DCLM in self.ctx.names.resolve(call.func):
                mlm = bind(call, CALLS[DCLM]).value("mlm")
                if isinstance(mlm, cst.Name) and mlm.value == "False":
                    return call
        return None

    def examples(self) -> List[TrainingExample]:
        """Tokenizer calls whose ``input_ids`` become labels, in source order (one entry per call,
        with the first evidence found)."""
        ctx = self.ctx
        out: Dict[cst.Call, TrainingExample] = {}
        for node, calls, description in self._labels_copies():
            for call in sorted(calls, key=ctx.order):
                found = self.encoder(call)
                if found is not None and call not in out:
                    out[call] = TrainingExample(call, found[0], found[1], node, description)
        collator = self.collator()
        if collator is not None:
            for call in ctx.nodes(cst.Call):
                found = self.encoder(call) if call not in out else None
                if found is not None and any(_within(ctx, call, f) for f in self.mapped):
                    out[call] = TrainingExample(call, found[0], found[1], collator,
                                                "`DataCollatorForLanguageModeling(mlm=False)` copies "
                                                "its `input_ids` into the labels")
        return sorted(out.values(), key=lambda e: ctx.order(e.call))

    # -- text sources ------------------------------------------------------------------------
    def sources(self, text: cst.BaseExpression) -> TextSources:
        """The pieces the text argument ``text`` is built from (each node looked at once)."""
        out = TextSources()
        self._collect(text, out, set(), 0, "text")
        return out

    def _collect(self, node: cst.BaseExpression, out: TextSources, seen: Set[int], depth: int,
                 last: Optional[str]) -> None:
        """Add the pieces of ``node`` to ``out``. ``last`` says whether ``node`` ends the text:
        None (no), ``"text"``, or ``"format"``/``"percent"`` for a template whose trailing
        placeholder (``{output}``, ``%s``) is filled with a dataset value."""
        if depth > _LIMIT:
            out.add("opaque", node, last)
            return
        if id(node) in seen:
            return
        seen.add(id(node))
        step = depth + 1
        if isinstance(node, cst.SimpleString):
            self._literal(node, node.evaluated_value, out, last)
        elif isinstance(node, cst.ConcatenatedString):
            self._collect(node.left, out, seen, step, None if not _blank(node.right) else last)
            self._collect(node.right, out, seen, step, last)
        elif isinstance(node, cst.FormattedString):
            final = max((i for i, p in enumerate(node.parts) if not _blank(p)), default=None)
            for i, part in enumerate(node.parts):
                end = last if i == final else None
                if isinstance(part, cst.FormattedStringText):
                    self._literal(part, _unescape(part.value), out, end)
                elif isinstance(part, cst.FormattedStringExpression):
                    self._collect(part.expression, out, seen, step, end and "text")
        elif isinstance(node, cst.BinaryOperation) and isinstance(node.operator, cst.Add):
            self._collect(node.left, out, seen, step, last if _blank(node.right) else None)
            self._collect(node.right, out, seen, step, last)
        elif isinstance(node, cst.BinaryOperation) and isinstance(node.operator, cst.Modulo):
            self._collect(node.left, out, seen, step, last and "percent")
            self._collect(node.right, out, seen, step, None)
        elif isinstance(node, (cst.IfExp, cst.BooleanOperation)):
            first, second = (node.body, node.orelse) if isinstance(node, cst.IfExp) else (node.left, node.right)
            self._collect(first, out, seen, step, last)
            self._collect(second, out, seen, step, last)
        elif isinstance(node, (cst.List, cst.Tuple)):  # a batch of texts: each one ends
            for element in node.elements:
                if isinstance(element, cst.StarredElement):
                    out.add("data", element, last)
                else:
                    self._collect(element.value, out, seen, step, last)
        elif isinstance(node, (cst.ListComp, cst.GeneratorExp)):
            self._collect(node.elt, out, seen, step, last)
        elif isinstance(node, cst.Attribute):
            kind = "eos" if node.attr.value in _EOS_ATTRS else (
                "template" if node.attr.value == "bos_token" else "opaque")
            out.add(kind, node, last)
        elif isinstance(node, cst.Subscript):
            self._subscript(node, out, seen, step, last)
        elif isinstance(node, cst.Name):
            self._name(node, out, seen, step, last)
        elif isinstance(node, cst.Call):
            self._call(node, out, seen, step, last)
        else:
            out.add("opaque", node, last)

    @staticmethod
    def _literal(node: cst.CSTNode, value: object, out: TextSources, last: Optional[str]) -> None:
        if not isinstance(value, str):
            out.add("opaque", node, last)
        elif any(marker in value for marker in EOS_LITERALS):
            out.add("eos", node, last)
        elif value.strip():
            out.template.append(node)
            if last:
                placeholder = _TRAILING_FIELD.get(last)
                out.endings.add("data" if placeholder and placeholder.search(value) else "template")

    def _subscript(self, node: cst.Subscript, out: TextSources, seen: Set[int], depth: int,
                   last: Optional[str]) -> None:
        owner = node.value
        value = self.value_of(owner) if isinstance(owner, cst.Name) else None
        if isinstance(value, cst.Dict):  # a template table: PROMPTS["alpaca"]
            key = subscript_key(node)
            elements = [e for e in value.elements if isinstance(e, cst.DictElement)]
            chosen = [e.value for e in elements if key is None or string_value(e.key) == key]
            if not chosen:
                out.add("opaque", node, last)
            for element in chosen:
                self._collect(element, out, seen, depth, last)
        else:  # example["output"], rows[i]: a value of the dataset
            out.add("data", node, last)

    def value_of(self, name: cst.Name) -> Optional[cst.BaseExpression]:
        """The value last assigned to ``name`` here, else its single module-level value."""
        value = self.flow.reaching(name)
        if value is not None or self.flow.is_bound_locally(name):
            return value
        return self._global(name.value)

    def _global(self, name: str) -> Optional[cst.BaseExpression]:
        values = [node.value for node in self.ctx.module.body
                  if isinstance(node, cst.SimpleStatementLine)
                  for node in node.body
                  if isinstance(node, cst.Assign) and len(node.targets) == 1
                  and isinstance(node.targets[0].target, cst.Name) and node.targets[0].target.value == name]
        return values[0] if len(values) == 1 else None

    def _name(self, node: cst.Name, out: TextSources, seen: Set[int], depth: int, last: Optional[str]) -> None:
        value = self.flow.reaching(node)
        if value is not None:
            self._collect(value, out, seen, depth, last)
            if isinstance(value, cst.List):
                for call in self._appends(node):
                    self._collect(call.args[0].value, out, seen, depth, last)
            return
        if self._loop_variable(node):
            out.add("data", node, last)
            return
        if self.flow.is_bound_locally(node):
            out.add("opaque", node, last)
            return
        function = self._parameter_of(node)
        if function is not None:
            self._parameter(node, function, out, seen, depth, last)
            return
        value = self._global(node.value)
        if value is None or self.ctx.names.resolve(node):
            out.add("opaque", node, last)
        else:
            self._collect(value, out, seen, depth, last)

    def _appends(self, name: cst.Name) -> List[cst.Call]:
        """``name.append(x)`` calls in the scope of ``name`` before it is used."""
        scope = self.ctx.enclosing(name, cst.FunctionDef)
        return [c for c in self.ctx.nodes(cst.Call)
                if isinstance(c.func, cst.Attribute) and c.func.attr.value == "append"
                and isinstance(c.func.value, cst.Name) and c.func.value.value == name.value
                and len(c.args) == 1 and self.ctx.enclosing(c, cst.FunctionDef) is scope
                and self.ctx.order(c) < self.ctx.order(name)]

    def _loop_variable(self, name: cst.Name) -> bool:
        for ancestor in self.ctx.ancestors(name):
            if isinstance(ancestor, (cst.For, cst.CompFor)) and name.value in _bound(ancestor.target):
                return True
            if isinstance(ancestor, (cst.ListComp, cst.GeneratorExp, cst.SetComp, cst.DictComp)) \
                    and _comp_binds(ancestor, name.value):
                return True
            if isinstance(ancestor, (cst.FunctionDef, cst.Lambda)):
                return False
        return False

    def _parameter_of(self, name: cst.Name) -> Optional[Function]:
        for ancestor in self.ctx.ancestors(name):
            if isinstance(ancestor, (cst.FunctionDef, cst.Lambda)):
                return ancestor if name.value in _parameter_names(ancestor.params) else None
        return None

    def _parameter(self, name: cst.Name, function: Function, out: TextSources, seen: Set[int],
                   depth: int, last: Optional[str]) -> None:
        """A parameter: the dataset row when the function is a ``map`` function, else the
        arguments at every call site of the function."""
        params = list(function.params.params)
        index = next((i for i, p in enumerate(params) if p.name.value == name.value), None)
        if function in self.map_roots and index == 0:
            out.add("data", name, last)
            return
        if isinstance(function, cst.Lambda):
            out.add("opaque", name, last)
            return
        sites = [c for c in self.ctx.nodes(cst.Call)
                 if isinstance(c.func, cst.Name) and c.func.value == function.name.value]
        if not sites or len(self.functions.get(function.name.value, [])) != 1:
            out.add("opaque", name, last)
            return
        for site in sites:
            argument = _argument(site, index, name.value)
            if argument is None:
                out.add("opaque", site, last)
            elif argument is _DEFAULT:
                default = next((p.default for p in params if p.name.value == name.value), None)
                if default is None:
                    out.add("opaque", site, last)
                else:
                    self._collect(default, out, seen, depth, last)
            else:
                self._collect(argument, out, seen, depth, last)  # type: ignore[arg-type]

    def _call(self, node: cst.Call, out: TextSources, seen: Set[int], depth: int, last: Optional[str]) -> None:
        func = node.func
        if isinstance(func, cst.Attribute) and func.attr.value in _STRING_METHODS:
            method = func.attr.value
            receiver_last = {"format": last and "format", "join": None}.get(method, last)
            self._collect(func.value, out, seen, depth, receiver_last)
            for arg in node.args:
                end = last if method == "join" else None
                if arg.star:
                    out.add("data", arg.value, end)  # ``template.format(**example)``
                elif end and isinstance(arg.value, (cst.List, cst.Tuple)) and arg.value.elements:
                    *parts, final = arg.value.elements  # "\n".join([a, b]) ends with b
                    for part in parts:
                        self._collect(part.value, out, seen, depth, None)
                    self._collect(final.value, out, seen, depth, last)
                else:
                    self._collect(arg.value, out, seen, depth, end)
            return
        names = self.ctx.names.resolve(func) | {dotted(func) or ""}
        if names & _TEXT_FUNCTIONS and node.args:
            self._collect(node.args[0].value, out, seen, depth, last)
            return
        function = self.local_function(node)
        returns = self.returns(function) if function is not None else []
        if not returns:
            out.add("opaque", node, last)
        for value in returns:
            self._collect(value, out, seen, depth, last)

    # -- EOS anywhere in the module ------------------------------------------------------------
    def eos_evidence(self) -> Optional[Tuple[cst.CSTNode, str]]:
        """The first place that may add an EOS to the training data, with a description."""
        ctx = self.ctx
        found: List[Tuple[cst.CSTNode, str]] = []
        pad_values = {id(p.value) for p in ctx.get(HfFacts).pad_assignments} | \
            {id(p.node) for p in ctx.get(HfFacts).pad_assignments}
        for node in ctx.nodes(cst.Attribute):
            if node.attr.value in _EOS_ATTRS and not self._setting(node, pad_values):
                found.append((node, f"`{ctx.code(node)}`"))
            elif node.attr.value in ("apply_chat_template", "setup_chat_format"):
                found.append((node, "a chat template"))
        for kind in (cst.SimpleString, cst.FormattedStringText):
            for node in ctx.nodes(kind):
                text = node.evaluated_value if isinstance(node, cst.SimpleString) else node.value
                if isinstance(text, str) and any(m in text for m in EOS_LITERALS) \
                        and not self._setting(node, pad_values):
                    found.append((node, f"the EOS literal {ctx.code(node)}"))
        for name in ctx.nodes(cst.Name):
            if name.value in ("add_eos_token", "setup_chat_format") and not _set_false(ctx, name):
                found.append((name, "`add_eos_token`" if name.value == "add_eos_token" else "a chat template"))
        trl = ctx.target_version("trl")
        if trl is None or trl.release >= (0, 16):
            for call in ctx.nodes(cst.Call):
                if SFT_TRAINER in ctx.names.resolve(call.func):
                    found.append((call, "trl's `SFTTrainer` (which appends EOS since trl 0.16)"))
        return min(found, key=lambda f: ctx.order(f[0])) if found else None

    def _setting(self, node: cst.CSTNode, pad_values: Set[int]) -> bool:
        """Whether an EOS reference only configures pad/EOS ids or generation: a pad-token
        assignment, ``x.pad_token_id = ...``/``x.eos_token_id = ...``, a ``pad_token_id=``
        keyword, an ``eos_token_id=`` keyword of ``generate``/``GenerationConfig``/
        ``from_pretrained``/``pipeline``, anything inside ``generate(...)``, or a comparison with
        a pad id."""
        ctx = self.ctx
        child = node
        for ancestor in (node, *ctx.ancestors(node)):
            if id(ancestor) in pad_values:
                return True
            if isinstance(ancestor, cst.Assign) and child is ancestor.value and all(
                    isinstance(t.target, cst.Attribute) and t.target.attr.value in _PAD_ATTRS + _EOS_ATTRS
                    for t in ancestor.targets):
                return True
            if isinstance(ancestor, cst.Arg) and ancestor.keyword is not None:
                keyword = ancestor.keyword.value
                call = ctx.parent(ancestor)
                if keyword in _PAD_ATTRS:
                    return True
                if keyword in _EOS_ATTRS and isinstance(call, cst.Call) and _callee_name(call) in _SETTING_CALLS:
                    return True
            if isinstance(ancestor, cst.Call) and _callee_name(ancestor) == "generate":
                return True
            if isinstance(ancestor, cst.Comparison) and any(
                    (dotted(o) or "").rsplit(".", 1)[-1] in _PAD_ATTRS
                    for o in (ancestor.left, *(c.comparator for c in ancestor.comparisons))):
                return True
            if isinstance(ancestor, cst.SimpleStatementLine):
                return False
            child = ancestor
        return False

    # -- packing -----------------------------------------------------------------------------
    def packs(self) -> bool:
        """The module concatenates tokenized examples into blocks (``sum(examples[k], [])``,
        ``chain(*examples[k])``, ``return_overflowing_tokens=True``): examples end at block
        boundaries, not where the texts end."""
        source = self.ctx.source
        return "sum(examples[" in source or "chain(*examples[" in source \
            or "return_overflowing_tokens" in source


_DEFAULT = object()


def _argument(call: cst.Call, index: Optional[int], name: str):
    """What ``call`` passes for the parameter at ``index`` named ``name``: an expression,
    ``_DEFAULT`` when nothing, None when it cannot be told (``*args``/``**kwargs``)."""
    for arg in call.args:
        if arg.keyword is not None and arg.keyword.value == name:
            return arg.value
    if any(arg.star for arg in call.args):
        return None
    positional = [a for a in call.args if a.keyword is None]
    if index is not None and index < len(positional):
        return positional[index].value
    return _DEFAULT


def _strip(expr: cst.BaseExpression) -> cst.BaseExpression:
    """Through ``.to()``/``.clone()``-like calls and ``.flatten()``/``.squeeze()``/``.tolist()``."""
    while True:
        stripped = strip_transparent(expr)
        if isinstance(stripped, cst.Call) and isinstance(stripped.func, cst.Attribute) \
                and stripped.func.attr.value in _KEEP_IDS:
            expr = stripped.func.value
        else:
            return stripped


def _unescape(raw: str) -> str:
    """The whitespace escapes of an f-string's source text as the characters they stand for."""
    return raw.replace("\\n", "\n").replace("\\t", "\t").replace("\\r", "\r")


def _blank(node: cst.CSTNode) -> bool:
    """A literal (or f-string part) of whitespace only, such as a trailing ``"\\n"``."""
    if isinstance(node, cst.SimpleString):
        return isinstance(node.evaluated_value, str) and not node.evaluated_value.strip()
    if isinstance(node, cst.FormattedStringText):
        return not _unescape(node.value).strip()
    if isinstance(node, cst.FormattedString):
        return all(_blank(p) for p in node.parts)
    if isinstance(node, cst.ConcatenatedString):
        return _blank(node.left) and _blank(node.right)
    return False


def _dict_value(mapping: cst.BaseExpression, key: str) -> Optional[cst.BaseExpression]:
    if isinstance(mapping, cst.Dict):
        for element in mapping.elements:
            if isinstance(element, cst.DictElement) and string_value(element.key) == key:
                return element.value
    return None


def _callee_name(call: cst.Call) -> str:
    func = call.func
    if isinstance(func, cst.Attribute):
        return func.attr.value
    return func.value if isinstance(func, cst.Name) else ""


def _within(ctx: "Context", node: cst.CSTNode, container: cst.CSTNode) -> bool:
    return ctx.order(container) <= ctx.order(node) <= ctx.end_order(container)


def _bound(target: cst.BaseExpression) -> Set[str]:
    if isinstance(target, cst.Name):
        return {target.value}
    if isinstance(target, (cst.Tuple, cst.List)):
        return {n for e in target.elements for n in _bound(e.value)}
    return set()


def _comp_binds(comp: cst.CSTNode, name: str) -> bool:
    for_in = getattr(comp, "for_in", None)
    while for_in is not None:
        if name in _bound(for_in.target):
            return True
        for_in = for_in.inner_for_in
    return False


def _parameter_names(params: cst.Parameters) -> Set[str]:
    every = [*params.posonly_params, *params.params, *params.kwonly_params]
    for star in (params.star_arg, params.star_kwarg):
        if isinstance(star, cst.Param):
            every.append(star)
    return {p.name.value for p in every}


def _is_false(node: cst.BaseExpression) -> bool:
    return isinstance(node, cst.Name) and node.value == "False"


def _set_false(ctx: "Context", name: cst.Name) -> bool:
    """``add_eos_token=False`` (keyword) or ``tok.add_eos_token = False``: explicitly off."""
    parent = ctx.parent(name)
    if isinstance(parent, cst.Arg) and parent.keyword is name:
        return _is_false(parent.value)
    if isinstance(parent, cst.Attribute) and parent.attr is name:
        target = ctx.parent(parent)
        assign = ctx.parent(target) if isinstance(target, cst.AssignTarget) else None
        return isinstance(assign, cst.Assign) and _is_false(assign.value)
    return False
