"""Vocabulary facts of a module: tokens added to tokenizers, resizes of models' embedding
matrices, the models the module makes, and the checkpoints they are loaded from.

- ``additions``: every ``tok.add_tokens(...)`` / ``tok.add_special_tokens({...})`` call with what
  it adds: the literal tokens (``"<pad>"``, ``AddedToken("<sep>")``, lists of them, followed
  through local names and dictionaries), whether it adds tokens the module does not spell out
  (``tok.add_tokens(new_words)``), and whether some value may or may not be a token the
  vocabulary already has. A tokenizer's own tokens (``tok.eos_token``, ``tok.unk_token``,
  ``tok.convert_ids_to_tokens(0)``) add nothing: transformers only appends tokens that are not in
  the vocabulary yet (``tokenization_utils_base.py``, ``add_special_tokens`` -> ``add_tokens``,
  which returns the number added, 4.30 to 5.23). Assigning ``tok.pad_token = "<pad>"`` is not an
  addition: the setter only records the string (``__setattr__`` / the 4.30 property setter), so it
  is not listed.
- ``resizes``: calls that resize a model's embeddings: ``*.resize_token_embeddings(...)`` (any
  arguments, ``pad_to_multiple_of`` too), trl's ``setup_chat_format`` / ``clone_chat_template``
  (both call ``model.resize_token_embeddings(len(tokenizer), ...)``: trl 0.15-0.20
  ``models/utils.py``, 1.16 ``chat_template_utils.py``), and helpers whose name says they resize
  embeddings or the vocabulary (``smart_tokenizer_and_embedding_resize``; not ``Resize``
  transforms). ``resized_after(addition)`` tells whether one of them may run after the addition.
- ``pads_with_tokenizer()``: whether anything pads with a tokenizer's pad id (a tokenizer call
  with ``padding=``, ``tok.pad``, a transformers/trl collator, a trainer given the tokenizer), so
  that an added pad token reaches the model's input.
- ``sizes_from_tokenizer()``: a model or config made with ``vocab_size=len(tokenizer)`` (or any
  ``vocab_size`` computed from a tokenizer), which needs no resize.
- ``models()``: assignments whose value makes a Hugging Face model (``from_pretrained``,
  ``from_config``, a model class, peft wrappers; see ``mllint.analysis.instances``).
- ``checkpoints(expr, at)``: the checkpoint names a model expression may be loaded from (string
  literals, followed through local names and module constants; ``None`` in the set when some
  loader's name is not visible), through re-assignments, ``.to()``/``.half()`` and peft wrappers.
- ``t5_family(kinds, checkpoints)``: whether a model is a T5-architecture model (T5, mT5, umT5,
  LongT5, and checkpoints such as FLAN-T5, ByT5, CodeT5 that load into ``T5*`` classes).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, FrozenSet, Iterable, List, Optional, Set, Tuple

import libcst as cst

from mllint.analysis.dataflow import Assignments, strip_transparent
from mllint.analysis.hf import is_model_kind
from mllint.analysis.instances import LOADERS, UNKNOWN, WRAPPERS, Instances
from mllint.analysis.names import string_value

if TYPE_CHECKING:
    from mllint.core.context import Context

ADD_METHODS = ("add_tokens", "add_special_tokens")
RESIZE_METHOD = "resize_token_embeddings"
# trl helpers that add tokens and resize the model's embeddings themselves.
_RESIZING_HELPERS = frozenset({"trl.setup_chat_format", "trl.models.setup_chat_format",
                               "trl.models.utils.setup_chat_format", "trl.clone_chat_template",
                               "trl.models.utils.clone_chat_template",
                               "trl.chat_template_utils.clone_chat_template"})
# Methods returning the model itself, and wrappers returning (a wrapper of) their first argument.
_SAME_MODEL = frozenset({"to", "cuda", "cpu", "eval", "train", "half", "float", "bfloat16", "double",
                         "requires_grad_", "merge_and_unload"})
_T5_CLASS = re.compile(r"^(T5|MT5|UMT5|LongT5)[A-Z]")
_T5_CHECKPOINT = re.compile(r"t5", re.IGNORECASE)


@dataclass(frozen=True)
class TokenAddition:
    """One ``add_tokens`` / ``add_special_tokens`` call."""

    call: cst.Call
    receiver: cst.BaseExpression  # the tokenizer expression
    method: str
    literals: Tuple[str, ...]  # the tokens it adds that the module spells out
    hidden: bool  # it also adds tokens the module does not spell out (a list built elsewhere)
    unclear: bool  # some value may be a token the vocabulary already has (a variable)
    pad_only: bool  # ``add_special_tokens({"pad_token": ...})`` and nothing else


@dataclass(frozen=True)
class ModelBinding:
    """``model = AutoModelForCausalLM.from_pretrained(...)`` and the like."""

    node: cst.CSTNode  # the Assign / AnnAssign
    target: str  # source text of the target (``model``, ``self.model``)
    kinds: FrozenSet[str]


def _is_own_token(expr: cst.BaseExpression) -> bool:
    """``tok.eos_token``, ``tok.pad_token``, ``tok.convert_ids_to_tokens(i)``, ``tok.decode(...)``:
    a token the tokenizer already has."""
    expr = strip_transparent(expr)
    if isinstance(expr, cst.Attribute):
        return expr.attr.value.endswith("_token")
    if isinstance(expr, cst.Call) and isinstance(expr.func, cst.Attribute):
        return expr.func.attr.value in ("convert_ids_to_tokens", "decode", "_convert_id_to_token")
    return False


class Vocab:
    def __init__(self, ctx: "Context") -> None:
        self.ctx = ctx
        self.flow = ctx.get(Assignments)
        self.instances = ctx.get(Instances)
        self.additions: List[TokenAddition] = []
        self.resizes: List[cst.Call] = []
        for call in ctx.nodes(cst.Call):
            func = call.func
            if isinstance(func, cst.Attribute) and func.attr.value in ADD_METHODS and call.args:
                addition = self._addition(call, func)
                if addition is not None:
                    self.additions.append(addition)
            if self._resizes(call):
                self.resizes.append(call)

    # -- additions -----------------------------------------------------------------------------
    def _addition(self, call: cst.Call, func: cst.Attribute) -> Optional[TokenAddition]:
        first = call.args[0]
        if first.star or (first.keyword is not None
                          and first.keyword.value not in ("new_tokens", "special_tokens_dict")):
            return None
        literals: List[str] = []
        flags = {"hidden": False, "unclear": False}
        keys: Set[Optional[str]] = set()
        if func.attr.value == "add_tokens":
            self._tokens(first.value, literals, flags, opaque="hidden")
        else:
            mapping = self._resolve(first.value)
            if not isinstance(mapping, cst.Dict):
                flags["unclear"] = True
            else:
                for element in mapping.elements:
                    if not isinstance(element, cst.DictElement):
                        flags["unclear"] = True
                        continue
                    key = string_value(element.key)
                    keys.add(key)
                    listed = key in ("additional_special_tokens", "extra_special_tokens")
                    self._tokens(element.value, literals, flags, opaque="hidden" if listed else "unclear")
        return TokenAddition(call, func.value, func.attr.value, tuple(literals), flags["hidden"],
                             flags["unclear"], keys == {"pad_token"})

    def _resolve(self, expr: cst.BaseExpression) -> cst.BaseExpression:
        """A local name's reaching value (once), else the expression itself."""
        expr = strip_transparent(expr)
        if isinstance(expr, cst.Name):
            value = self.flow.reaching(expr)
            if value is None and not self.flow.is_bound_locally(expr):
                value = self._module_constant(expr)
            if value is not None:
                return strip_transparent(value)
        return expr

    def _tokens(self, expr: cst.BaseExpression, literals: List[str], flags, opaque: str, depth: int = 0) -> None:
        """Collect the literal tokens of one added value; flag what cannot be read."""
        if _is_own_token(expr):
            return
        value = self._resolve(expr) if depth < 3 else expr
        if _is_own_token(value):
            return
        text = string_value(value)
        if text is None and isinstance(value, cst.Call) and value.args:
            callee = self.ctx.names.resolve(value.func)
            if any(name.endswith("AddedToken") for name in callee):
                text = string_value(value.args[0].value)
        if text is not None:
            literals.append(text)
        elif isinstance(value, (cst.List, cst.Tuple, cst.Set)) and depth < 3:
            for element in value.elements:
                if isinstance(element, cst.StarredElement):
                    flags[opaque] = True
                else:
                    self._tokens(element.value, literals, flags, opaque, depth + 1)
        else:
            flags[opaque] = True

    # -- resizes -------------------------------------------------------------------------------
    def _resizes(self, call: cst.Call) -> bool:
        func = call.func
        if isinstance(func, cst.Attribute) and func.attr.value == RESIZE_METHOD:
            return True
        if self.ctx.names.resolve(func) & _RESIZING_HELPERS:
            return True
        name = (func.value if isinstance(func, cst.Name) else func.attr.value
                if isinstance(func, cst.Attribute) else "").lower()
        return name in ("setup_chat_format", "clone_chat_template") or (
            "resize" in name and any(word in name for word in ("embed", "token", "vocab")))

    def resized_after(self, addition: TokenAddition) -> bool:
        """A resize that may run after ``addition``: one later in the source, or one in another
        function (whose call order the module does not show)."""
        ctx = self.ctx
        scope = ctx.enclosing(addition.call, cst.FunctionDef)
        for call in self.resizes:
            if ctx.order(call) > ctx.order(addition.call) or ctx.enclosing(call, cst.FunctionDef) is not scope:
                return True
        return False

    def pads_with_tokenizer(self) -> bool:
        """Whether the module pads with a tokenizer's pad id anywhere: a tokenizer call with
        ``padding=`` on, ``tok.pad(...)``, a transformers or trl collator, or a trainer given the
        tokenizer (``Trainer`` then collates with ``DataCollatorWithPadding``)."""
        ctx = self.ctx
        from mllint.analysis.batches import Batches

        batches = ctx.get(Batches)
        for call in ctx.nodes(cst.Call):
            names = ctx.names.resolve(call.func)
            last = {n.rsplit(".", 1)[-1] for n in names if n.startswith(("transformers.", "trl."))}
            if any(n.startswith("DataCollator") for n in last):
                return True
            keywords = {a.keyword.value: a.value for a in call.args if a.keyword is not None}
            if any(n.endswith("Trainer") for n in last) and ({"tokenizer", "processing_class"} & set(keywords)
                                                               or "SFTTrainer" in last):
                return True
            found = batches.tokenizer_call(call)
            if found is None:
                continue
            if found[1] == "pad":
                return True
            padding = keywords.get("padding")
            if padding is not None and not (isinstance(padding, cst.Name) and padding.value in ("False", "None")) \
                    and string_value(padding) != "do_not_pad":
                return True
        return False

    def sizes_from_tokenizer(self) -> bool:
        """``vocab_size=len(tok)`` / ``config.vocab_size = tok.vocab_size``-style sizing."""
        ctx = self.ctx
        for arg in ctx.nodes(cst.Arg):
            if arg.keyword is not None and arg.keyword.value in ("vocab_size", "n_vocab", "num_embeddings") \
                    and self._from_tokenizer(arg.value):
                return True
        for node in ctx.nodes(cst.Assign):
            for target in node.targets:
                t = target.target
                name = t.attr.value if isinstance(t, cst.Attribute) else t.value if isinstance(t, cst.Name) else ""
                if name in ("vocab_size", "n_vocab") and self._from_tokenizer(node.value):
                    return True
        return False

    def _from_tokenizer(self, expr: cst.BaseExpression) -> bool:
        for node in self.flow.derivation(expr, limit=40):
            if isinstance(node, cst.Call) and isinstance(node.func, cst.Name) and node.func.value == "len":
                return True
            if isinstance(node, cst.Attribute) and node.attr.value in ("vocab_size", "get_vocab_size"):
                return True
        return False

    # -- models --------------------------------------------------------------------------------
    def models(self) -> List[ModelBinding]:
        out = []
        for kind in (cst.Assign, cst.AnnAssign):
            for node in self.ctx.nodes(kind):
                targets = [t.target for t in node.targets] if isinstance(node, cst.Assign) else [node.target]
                if len(targets) != 1 or not isinstance(node.value, cst.Call):
                    continue
                kinds = self.instances.constructed(node.value, node)
                if kinds and UNKNOWN not in kinds and all(is_model_kind(k) for k in kinds):
                    out.append(ModelBinding(node, self.ctx.code(targets[0]), kinds))
        return out

    def checkpoints(self, expr: cst.BaseExpression, at: Optional[cst.CSTNode] = None) -> FrozenSet[Optional[str]]:
        """Checkpoint names the model ``expr`` may be loaded from (None: not visible), through
        local and module names, ``self.`` attributes, ``.to()``-style methods and peft/compile
        wrappers. The one checkpoint lookup of the analysis layer (``Generation`` uses it too)."""
        out: Set[Optional[str]] = set()
        self._checkpoints(expr, at or expr, out, set(), 0)
        return frozenset(out) if out else frozenset({None})

    def _checkpoints(self, expr, at, out: Set[Optional[str]], seen: Set[int], depth: int) -> None:
        if id(expr) in seen or depth > 8:
            out.add(None)
            return
        seen.add(id(expr))
        if isinstance(expr, (cst.Name, cst.Attribute)) and not isinstance(expr, cst.Call):
            values: Iterable = ()
            if isinstance(expr, cst.Name):
                values = self.instances.values(expr.value, at)
            elif isinstance(expr.value, cst.Name) and expr.value.value == "self":
                cls = self.ctx.enclosing(at, cst.ClassDef)
                values = self.instances.attr_values.get(cls, {}).get(expr.attr.value, []) if cls else []
            values = [v for v in values if isinstance(v, cst.BaseExpression)]
            if not values:
                out.add(None)
            for value in values:
                self._checkpoints(value, value, out, seen, depth + 1)
            return
        if not isinstance(expr, cst.Call):
            out.add(None)
            return
        func = expr.func
        last = func.attr.value if isinstance(func, cst.Attribute) else func.value if isinstance(func, cst.Name) else ""
        if self.ctx.names.resolve(func) & WRAPPERS:  # get_peft_model(m), PeftModel.from_pretrained(m, ...)
            if expr.args and expr.args[0].keyword is None and not expr.args[0].star:
                self._checkpoints(expr.args[0].value, at, out, seen, depth + 1)
            else:
                out.add(None)
        elif last in LOADERS:
            out.add(self._name(expr))
        elif isinstance(func, cst.Attribute) and last in _SAME_MODEL:
            self._checkpoints(func.value, at, out, seen, depth + 1)
        else:
            out.add(None)

    def _name(self, loader: cst.Call) -> Optional[str]:
        for arg in loader.args:
            if arg.star:
                return None
            if arg.keyword is None or arg.keyword.value == "pretrained_model_name_or_path":
                return string_value(self._resolve(arg.value))
        return None

    def _module_constant(self, name: cst.Name) -> Optional[cst.BaseExpression]:
        """The value of a module-level name assigned exactly once."""
        values = self.instances.scope_values.get(self.ctx.module, {}).get(name.value, [])
        return values[0] if len(values) == 1 and isinstance(values[0], cst.BaseExpression) else None


def t5_family(kinds: Iterable[str], checkpoints: Iterable[Optional[str]]) -> Optional[bool]:
    """True for a T5-architecture model: a ``T5*``/``MT5*``/``UMT5*``/``LongT5*`` class, or an auto
    class loading checkpoints that all name T5 (``t5-small``, ``google/flan-t5-base``,
    ``google/byt5-small``, ``Salesforce/codet5-base``). False when the class or every checkpoint
    says otherwise; None when it cannot tell."""
    kinds = [k for k in kinds if k != UNKNOWN]
    if not kinds:
        return None
    lasts = [k.rsplit(".", 1)[-1] for k in kinds]
    if all(_T5_CLASS.match(last) for last in lasts):
        return True
    if any(_T5_CLASS.match(last) for last in lasts):
        return None
    if all(last.startswith("Auto") or last.startswith("PeftModel") or last == "PeftModel" for last in lasts):
        names = list(checkpoints)
        if not names or None in names:
            return None
        if all(_T5_CHECKPOINT.search(name) for name in names):
            return True
        if not any(_T5_CHECKPOINT.search(name) for name in names):
            return False
        return None
    return False
