"""Train/eval mode of models, gradient contexts and evaluation code, per function.

``Modes`` (``ctx.get(Modes)``) answers the questions the training-hygiene rules (MLL404, MLL405,
MLL409-MLL412) share:

- **mode at a point**: ``mode_at(receiver, node)`` walks the statements of the enclosing function
  (or of the module, for script code) in order and tracks, per receiver text (``model``,
  ``self.model``), the last ``R.train()`` / ``R.eval()`` / ``R.train(False)`` /
  ``R.train(mode=...)`` on the way. Branches that disagree make the mode ``UNKNOWN``; a loop body
  is walked until its entry state is stable (so a validation loop after ``model.train()`` in the
  same epoch body sees ``TRAIN``). Helpers one level deep count: a call to a function of the
  module (or ``self.method()``) applies what that function leaves behind, with its parameters
  mapped to the call's arguments (``train(model, loader)`` that calls ``model.train()``). A
  receiver passed to a call the analysis cannot see becomes ``UNKNOWN``; re-binding it to
  anything but a module constructor or ``R.to(...)``-like call does too. Construction gives the
  module's default mode: torch modules start in training mode (torch ``nn/modules/module.py``,
  ``Module.__init__``), transformers ``from_pretrained`` returns the model in evaluation mode
  (``modeling_utils.py``, ``PreTrainedModel.from_pretrained`` calls ``model.eval()``); both are
  marked ``explicit=False``. A function's receivers start as ``INHERIT`` (whatever its caller had).
- **gradient contexts**: ``grad_disabled(node)``: inside ``with torch.no_grad()`` /
  ``torch.inference_mode()`` / ``torch.set_grad_enabled(False)``, a function decorated with them,
  after a ``torch.set_grad_enabled(False)`` statement, in a Lightning evaluation hook (Lightning
  wraps its evaluation loops in ``torch.inference_mode``/``no_grad``), or in a helper whose every
  call in the module is in such a context; None when a context depends on a runtime value
  (``torch.set_grad_enabled(phase == "train")``).
- **evaluation code**: loops over a validation/test loader (``val_loader``, ``dataloaders["val"]``,
  ``self.test_dataloader()``) without a training step inside, and functions named as evaluation
  (``evaluate``, ``validate``, ``test``, ``predict``, ``run_validation``, ...; pytest's ``test_*``
  functions and ``_test_*`` helpers excluded) without a training step.
- **framework hooks**: Lightning evaluation hooks (``validation_step``, ``test_step``,
  ``predict_step``, ``on_validation_*``, ... of a ``LightningModule`` subclass, whose modes and
  gradients the trainer sets: ``loops/evaluation_loop.py``, ``_EvaluationLoop.run`` is wrapped in
  ``_no_grad_context`` and ``on_run_start`` calls ``on_validation_model_eval``, i.e.
  ``model.eval()``, lightning 2.6.6) and the evaluation methods of Hugging Face ``Trainer``
  subclasses (``Trainer.evaluation_loop`` calls ``model.eval()``).
- **what trains, and what is a module**: ``trains(node)`` (a backward or optimizer step inside),
  ``module_trains``, ``parameter_updates()`` (optimizer steps, a DeepSpeed engine's ``step()``,
  updates by hand from ``.grad``: what makes a file train, as a backward alone may only compute
  input gradients), ``module_class(classdef)`` (an ``nn.Module`` subclass, through local
  classes), ``module_value(expr, at)`` (an expression that is a torch module made in this file).
- **mode dependence**: ``mode_dependent(model, at)``: False when the model is built in this
  module from local classes and ``torch.nn`` layers none of which behaves differently in
  training mode (no dropout, batch norm, ``RReLU``, running-stats instance norm, RNN/attention
  dropout, ``nn.Transformer*`` defaults, ``self.training``, ``F.dropout*``); True when some part
  is (or may be) mode-dependent; None when some part's type is not visible here.
- **volatile inputs**: ``volatile_input(call)``: an argument is a
  ``Variable(..., volatile=True)`` (torch < 0.4's graph-free inference).
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, FrozenSet, Iterable, List, Optional, Sequence, Set, Tuple, Union

import libcst as cst

from mllint.analysis.dataflow import Assignments
from mllint.analysis.instances import Instances
from mllint.analysis.names import dotted
from mllint.analysis.training_loop import TrainingLoops

if TYPE_CHECKING:
    from mllint.core.context import Context

TRAIN, EVAL, UNKNOWN, INHERIT = "train", "eval", "unknown", "inherit"
Scope = Union[cst.FunctionDef, cst.Module]

_EVAL_WORDS = frozenset({"val", "valid", "validation", "validate", "eval", "evaluate", "evaluation",
                         "test", "testing", "dev", "predict", "prediction", "infer", "inference"})
_TRAIN_WORDS = frozenset({"train", "training"})
_DATA_SUFFIX = r"(loader|dataloader|data|set|dataset|iter|dl|ds|batches)s?"
_EVAL_GLUED = re.compile(rf"^(val|valid|test|eval|dev){_DATA_SUFFIX}$")
_TRAIN_GLUED = re.compile(rf"^train{_DATA_SUFFIX}$")
_LIGHTNING_STEPS = frozenset({"validation_step", "test_step", "predict_step", "validation_epoch_end",
                              "test_epoch_end"})
_LIGHTNING_PREFIXES = ("on_validation_", "on_test_", "on_predict_")
_TRAINER_EVAL_METHODS = frozenset({"evaluate", "evaluation_loop", "prediction_step", "predict",
                                   "prediction_loop"})
_GRAD_OFF = frozenset({"no_grad", "inference_mode"})
# Calls that never change a module's mode, whatever they are given.
_NEUTRAL_BUILTINS = frozenset({"print", "len", "isinstance", "id", "type", "repr", "str", "hasattr",
                               "getattr", "vars", "dir", "sum", "iter", "next", "list", "tuple",
                               "sorted", "enumerate", "zip", "format", "hash", "callable"})
_NEUTRAL_LIBRARIES = ("torch.", "copy.", "numpy.", "math.", "wandb.", "logging.", "pickle.", "os.")
# Module methods returning the module itself (its mode carries over to the assigned name).
_SELF_METHODS = frozenset({"to", "cuda", "cpu", "half", "float", "bfloat16", "double",
                           "requires_grad_", "share_memory", "type"})
_MODULE_BASES = ("torch.nn.", "lightning.pytorch.LightningModule")
# Mode dependence (``Modes.mode_dependent``). torch.nn classes whose forward reads
# ``self.training`` whatever their arguments (dropout/batch norm families, ``RReLU``).
_MODE_LAYER = re.compile(r"Dropout|BatchNorm|^RReLU$")
# torch.nn classes that depend on the mode through one argument: (name, position, default zero).
_MODE_ARGUMENT = {"RNN": ("dropout", 6), "LSTM": ("dropout", 5), "GRU": ("dropout", 5),
                  "MultiheadAttention": ("dropout", 2), "Transformer": ("dropout", 5),
                  "TransformerEncoderLayer": ("dropout", 3), "TransformerDecoderLayer": ("dropout", 3)}
# ... and whose default is mode-dependent (torch ``nn/modules/transformer.py``: ``dropout=0.1``).
_MODE_BY_DEFAULT = frozenset({"Transformer", "TransformerEncoderLayer", "TransformerDecoderLayer"})
# torch.nn classes holding other modules: the positions (or all, None) that are modules.
_MODULE_CONTAINERS = {"Sequential": None, "ModuleList": None, "ModuleDict": None, "TransformerEncoder": 0,
                      "TransformerDecoder": 0, "DataParallel": 0, "DistributedDataParallel": 0}
_NOT_MODULES = frozenset({"Parameter", "ParameterList", "ParameterDict", "Buffer", "UninitializedParameter"})
_MODE_FUNCTIONS = frozenset({"dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout",
                             "feature_alpha_dropout", "batch_norm", "spectral_norm"})
_DATA_CALLS = frozenset({"int", "float", "bool", "str", "len", "range", "list", "tuple", "dict", "set",
                         "max", "min", "sum", "abs", "round", "sorted", "getattr"})
_DATA_LIBRARIES = ("torch.", "math.", "numpy.", "copy.copy")
_LIST_MUTATORS = frozenset({"append", "extend", "insert", "add_module", "register_module", "update"})


@dataclass(frozen=True)
class Mode:
    """A receiver's mode at a point and the node that set it (a ``.train()``/``.eval()`` call,
    a constructor, or the helper call that set it, in ``via``)."""

    state: str
    node: Optional[cst.CSTNode] = None
    explicit: bool = True
    via: Optional[cst.Call] = None


_INHERITED = Mode(INHERIT, None, False)
State = Dict[str, Mode]


def lookup(state: State, key: str) -> Mode:
    """The mode of ``key`` in ``state``: its own entry or its nearest prefix's (``model.eval()``
    also sets ``model.encoder``), else ``INHERIT``."""
    while True:
        if key in state:
            return state[key]
        if "." not in key:
            return _INHERITED
        key = key.rsplit(".", 1)[0]


def _set(state: State, key: str, mode: Mode) -> None:
    for other in [k for k in state if k.startswith(key + ".")]:
        del state[other]
    state[key] = mode


def _merge(a: Optional[State], b: Optional[State]) -> Optional[State]:
    if a is None:
        return None if b is None else dict(b)
    if b is None:
        return dict(a)
    out: State = {}
    for key in set(a) | set(b):
        left, right = lookup(a, key), lookup(b, key)
        out[key] = left if left.state == right.state else Mode(UNKNOWN, None, False)
    return out


def _same(a: Optional[State], b: Optional[State]) -> bool:
    if a is None or b is None:
        return a is b
    return all(lookup(a, k).state == lookup(b, k).state for k in set(a) | set(b))


def words(text: str) -> List[str]:
    """``val_loader`` -> ``["val", "loader"]``; ``dataloaders["test"]`` -> ``[..., "test"]``."""
    return [w for w in re.split(r"[^a-z0-9]+", text.lower()) if w]


def is_eval_word(word: str) -> bool:
    return word in _EVAL_WORDS or bool(_EVAL_GLUED.match(word))


def is_train_word(word: str) -> bool:
    return word in _TRAIN_WORDS or bool(_TRAIN_GLUED.match(word))


def _identifiers(expr: cst.CSTNode) -> Iterable[str]:
    """Names, attribute names and string literals inside ``expr`` (lambdas left out)."""
    stack = [expr]
    while stack:
        node = stack.pop()
        if isinstance(node, cst.Name):
            yield node.value
        elif isinstance(node, cst.SimpleString) and isinstance(node.evaluated_value, str):
            yield node.evaluated_value
        elif isinstance(node, cst.Lambda):
            continue
        stack.extend(node.children)


def _method(call: cst.Call) -> Optional[str]:
    return call.func.attr.value if isinstance(call.func, cst.Attribute) else None


def is_training_step(call: cst.Call) -> bool:
    """``loss.backward()``, ``accelerator.backward(loss)``, ``self.manual_backward(loss)``,
    ``torch.autograd.grad(...)``, ``optimizer.step()``."""
    name = _method(call)
    if name in ("backward", "manual_backward"):
        return True
    if name == "grad" and dotted(call.func) in ("torch.autograd.grad", "autograd.grad"):
        return True
    if name == "step" and isinstance(call.func, cst.Attribute):
        receiver = (dotted(call.func.value) or "").lower().rsplit(".", 1)[-1]
        return "optim" in receiver or receiver in ("opt", "optimizer")
    return False


def _bool_literal(node: Optional[cst.BaseExpression]) -> Optional[bool]:
    if isinstance(node, cst.Name) and node.value in ("True", "False"):
        return node.value == "True"
    return None


def _descendants(node: cst.CSTNode) -> Iterable[cst.CSTNode]:
    stack = [node]
    while stack:
        current = stack.pop()
        yield current
        stack.extend(current.children)


def _zero(node: cst.BaseExpression) -> bool:
    return isinstance(node, (cst.Integer, cst.Float)) and float(node.evaluated_value) == 0


def _argument(call: cst.Call, keyword: str, position: int) -> Optional[cst.BaseExpression]:
    """The value passed as ``keyword`` or at ``position`` (None when not passed)."""
    for index, arg in enumerate(call.args):
        if arg.keyword is not None and arg.keyword.value == keyword or arg.keyword is None and index == position:
            return arg.value
    return None


def _combine(results: Iterable[Optional[bool]]) -> Optional[bool]:
    """True if any part is mode-dependent, else None if any is unknown, else False."""
    out: Optional[bool] = False
    for result in results:
        if result is True:
            return True
        if result is None:
            out = None
    return out


def parameters(function: cst.FunctionDef) -> List[str]:
    params = function.params
    return [p.name.value for p in (*params.posonly_params, *params.params, *params.kwonly_params)]


class Modes:
    def __init__(self, ctx: "Context") -> None:
        self.ctx = ctx
        self._calls = list(ctx.nodes(cst.Call))
        self._call_orders = [ctx.order(c) for c in self._calls]
        self._walks: Dict[Tuple[Scope, int], "_Walk"] = {}
        self._classes: Dict[str, List[cst.ClassDef]] = {}
        for cls in ctx.nodes(cst.ClassDef):
            self._classes.setdefault(cls.name.value, []).append(cls)
        self._module_classes = self._subclasses(
            lambda name: name.startswith(_MODULE_BASES) and name.rsplit(".", 1)[-1][:1].isupper()
            and not name.startswith("torch.nn.functional")
            or name.startswith(("transformers.", "peft.")) and "Model" in name)
        self._lightning_classes = self._subclasses(lambda name: name == "lightning.pytorch.LightningModule")
        self._trainer_classes = self._subclasses(
            lambda name: name.startswith(("transformers.", "trl.")) and name.endswith("Trainer"))
        self._functions: Dict[str, List[cst.FunctionDef]] = {}
        for function in ctx.nodes(cst.FunctionDef):
            if self.ctx.parent(function) is not None and self._owner(function) is None \
                    and ctx.enclosing(function, cst.FunctionDef) is None:
                self._functions.setdefault(function.name.value, []).append(function)
        self.module_trains = any(is_training_step(c) for c in self._calls)
        self._class_modes: Dict[cst.ClassDef, Optional[bool]] = {}

    # -- classes -------------------------------------------------------------------------------
    def _subclasses(self, known) -> Set[cst.ClassDef]:
        """Local classes deriving (through local classes) from a base ``known`` accepts."""
        found: Set[cst.ClassDef] = set()
        changed = True
        while changed:
            changed = False
            for classes in self._classes.values():
                for cls in classes:
                    if cls in found:
                        continue
                    for base in cls.bases:
                        names = self.ctx.names.resolve(base.value)
                        local = [c for c in self._classes.get(dotted(base.value) or "", ()) if c in found]
                        if local or any(known(n) for n in names):
                            found.add(cls)
                            changed = True
                            break
        return found

    def module_class(self, cls: Optional[cst.ClassDef]) -> bool:
        """An ``nn.Module`` subclass (LightningModule and Hugging Face models included)."""
        return cls is not None and cls in self._module_classes

    def _owner(self, function: cst.FunctionDef) -> Optional[cst.ClassDef]:
        parent = self.ctx.parent(self.ctx.parent(function))  # IndentedBlock -> ClassDef
        return parent if isinstance(parent, cst.ClassDef) else None

    def owner(self, function: cst.FunctionDef) -> Optional[cst.ClassDef]:
        """The class ``function`` is a method of, if any."""
        return self._owner(function)

    def lightning_eval_hook(self, function: Optional[cst.FunctionDef]) -> bool:
        """A ``LightningModule`` evaluation hook: the trainer calls ``eval()`` and disables grads."""
        if function is None or self._owner(function) not in self._lightning_classes:
            return False
        name = function.name.value
        return name in _LIGHTNING_STEPS or name.startswith(_LIGHTNING_PREFIXES)

    def trainer_eval_method(self, function: Optional[cst.FunctionDef]) -> bool:
        """An evaluation method of a Hugging Face/trl ``Trainer`` subclass."""
        return function is not None and self._owner(function) in self._trainer_classes \
            and function.name.value in _TRAINER_EVAL_METHODS

    def framework_managed(self, node: cst.CSTNode) -> bool:
        """Inside a Lightning evaluation hook or a Trainer subclass's evaluation method."""
        function = self.ctx.enclosing(node, cst.FunctionDef)
        return self.lightning_eval_hook(function) or self.trainer_eval_method(function)

    # -- module values -------------------------------------------------------------------------
    def constructed_mode(self, value: cst.BaseExpression) -> Optional[Mode]:
        """The mode a freshly made module is in: torch modules train, ``from_pretrained`` evals."""
        while isinstance(value, cst.Call) and _method(value) in _SELF_METHODS:
            value = value.func.value  # type: ignore[union-attr]
        if not isinstance(value, cst.Call):
            return None
        func = value.func
        if isinstance(func, cst.Attribute) and func.attr.value == "from_pretrained":
            owners = self.ctx.names.resolve(func.value)
            if owners and all(o.startswith("transformers.") for o in owners):
                return Mode(EVAL, value, False)
            return None
        if isinstance(func, cst.Name) and any(c in self._module_classes
                                              for c in self._classes.get(func.value, ())):
            return Mode(TRAIN, value, False)
        names = self.ctx.names.resolve(func)
        if names and all(n == "torch.nn.Sequential" or n.startswith("torchvision.models.") for n in names):
            return Mode(TRAIN, value, False)
        return None

    def module_value(self, expr: cst.BaseExpression, at: cst.CSTNode, _seen: FrozenSet[str] = frozenset()) -> bool:
        """``expr`` is a torch module made in this file: every value of the local/global name is a
        constructor of a module class (local ``nn.Module`` subclass, ``torch.nn`` class,
        torchvision model, transformers ``from_pretrained``), possibly moved with ``.to()``."""
        while isinstance(expr, cst.Call) and _method(expr) in _SELF_METHODS | {"train", "eval"}:
            expr = expr.func.value  # type: ignore[union-attr]
        if isinstance(expr, cst.Call):
            if self.constructed_mode(expr) is not None:
                return True
            kinds = self.ctx.get(Instances).constructed(expr, at)
            return bool(kinds) and all(k.startswith("torch.nn.") and k[9:10].isupper() for k in kinds)
        if not isinstance(expr, cst.Name):
            return False
        if expr.value in _seen:
            return True  # `model = model.to(device)`
        function = self.ctx.enclosing(at, cst.FunctionDef)
        if function is not None and expr.value in parameters(function):
            return False
        values = self.ctx.get(Instances).values(expr.value, at)
        bound = self.ctx.get(Assignments).by_scope
        scope = function if function is not None and (function, expr.value) in bound else self.ctx.module
        if not values or len(values) != len(bound.get((scope, expr.value), ())):
            return False  # some binding is not a plain assignment (a loop, a tuple, `with ... as`)
        return all(self.module_value(v, v, _seen | {expr.value}) for v in values)

    # -- mode dependence -----------------------------------------------------------------------
    def mode_dependent(self, model: Union[str, cst.BaseExpression], at: cst.CSTNode) -> Optional[bool]:
        """Whether ``model``'s forward depends on train/eval mode at ``at``. False only when every
        value of the name is built in this module from local ``nn.Module`` classes and
        ``torch.nn`` layers (``nn.Sequential`` contents, submodule classes, recursively) none of
        which is mode-dependent, and no method of those classes reads ``.training`` or calls
        ``F.dropout*``/``F.batch_norm``/``spectral_norm``. Mode-dependent layers: ``Dropout*``,
        ``AlphaDropout``, ``BatchNorm*``, ``SyncBatchNorm``, ``RReLU``, ``InstanceNorm*`` with
        ``track_running_stats=True``, ``RNN``/``LSTM``/``GRU``/``MultiheadAttention`` with a
        dropout that is not a literal 0, ``Transformer``/``TransformerEncoderLayer``/
        ``TransformerDecoderLayer`` unless ``dropout=0``. True: some part is (or may be, by a
        non-literal argument) mode-dependent; None: some part is of a type this module does not
        show (an imported class, a torchvision or Hugging Face model, a parameter)."""
        expr = cst.parse_expression(model) if isinstance(model, str) else model
        return self._dependence(expr, at, frozenset())

    def _dependence(self, expr: cst.BaseExpression, at: cst.CSTNode, seen: FrozenSet[object]) -> Optional[bool]:
        """Mode dependence of an expression that must be a module (or a collection of modules)."""
        while isinstance(expr, cst.Call) and _method(expr) in _SELF_METHODS | {"train", "eval"}:
            expr = expr.func.value  # type: ignore[union-attr]
        if isinstance(expr, (cst.List, cst.Tuple, cst.Set)):
            return _combine(self._dependence(e.value, at, seen) for e in expr.elements)
        if isinstance(expr, cst.Dict):
            return _combine(self._dependence(e.value, at, seen) if isinstance(e, cst.DictElement) else None
                            for e in expr.elements)
        if isinstance(expr, (cst.ListComp, cst.GeneratorExp, cst.SetComp)):
            return self._dependence(expr.elt, at, seen)
        if isinstance(expr, cst.DictComp):
            return self._dependence(expr.value, at, seen)
        if isinstance(expr, cst.IfExp):
            return _combine([self._dependence(expr.body, at, seen), self._dependence(expr.orelse, at, seen)])
        if isinstance(expr, cst.Call):
            return self._constructed_dependence(expr, at, seen)
        if self._data(expr):
            return False  # `self.norm = None`
        key = dotted(expr)
        if key is None:
            return None
        holder = self.ctx.enclosing(at, cst.ClassDef) if key.startswith("self.") else self._scope(at)
        if (holder, key) in seen:
            return False  # `model = model.to(device)` adds no value of its own
        values = self._bound_values(expr, at)
        if values is None:
            return None
        return _combine(self._dependence(v, v, seen | {(holder, key)}) for v in values)

    def _bound_values(self, expr: cst.BaseExpression, at: cst.CSTNode) -> Optional[List[cst.BaseExpression]]:
        """Every value a local/global name or ``self.x`` is bound to, plus what is added to it
        (``layers.append(...)``); None when a binding is not a plain assignment, or for a parameter."""
        instances = self.ctx.get(Instances)
        key = dotted(expr)
        if isinstance(expr, cst.Attribute) and isinstance(expr.value, cst.Name) and expr.value.value == "self":
            where: Optional[cst.CSTNode] = self.ctx.enclosing(at, cst.ClassDef)
            values = list(instances.attr_values.get(where, {}).get(expr.attr.value, [])) if where is not None else []
        elif isinstance(expr, cst.Name):
            function = self.ctx.enclosing(at, cst.FunctionDef)
            if function is not None and expr.value in parameters(function):
                return None
            bound = self.ctx.get(Assignments).by_scope
            where = function if function is not None and (function, expr.value) in bound else self.ctx.module
            values = instances.values(expr.value, at)
            if len(values) != len(bound.get((where, expr.value), ())):
                return None
        else:
            return None
        for call in self.calls_within(where) if where is not None else ():
            if _method(call) in _LIST_MUTATORS and dotted(call.func.value) == key \
                    and (key.startswith("self.") or self._scope(call) is where):  # type: ignore[union-attr]
                values.extend(a.value for a in call.args if not isinstance(a.value, cst.BaseString))
        return values or None

    def _constructed_dependence(self, call: cst.Call, at: cst.CSTNode, seen: FrozenSet[object]) -> Optional[bool]:
        layer = self._torch_nn_class(call.func)
        if layer is not None:
            return self._layer_dependence(layer, call, at, seen)
        cls = self._local_module_class(call.func)
        if cls is not None:
            return self._class_dependence(cls, seen)
        names = self.ctx.names.resolve(call.func)
        if names and names <= {"copy.deepcopy", "torch.compile", "collections.OrderedDict"} and call.args:
            first = call.args[0].value
            if "collections.OrderedDict" in names and isinstance(first, (cst.List, cst.Tuple)):
                return _combine(self._dependence(e.value.elements[-1].value, at, seen)
                                if isinstance(e.value, cst.Tuple) and e.value.elements else None
                                for e in first.elements)
            return self._dependence(first, at, seen)
        return None  # a factory, a loader (`torch.load`, `torch.hub.load`), an imported class

    def _torch_nn_class(self, func: cst.BaseExpression) -> Optional[str]:
        """``Dropout`` for ``nn.Dropout`` / ``torch.nn.modules.dropout.Dropout``; None otherwise."""
        found = set()
        for name in self.ctx.names.resolve(func):
            parts = name.split(".")
            if parts[:2] != ["torch", "nn"] or not parts[-1][:1].isupper() or len(parts) > 3 and \
                    parts[2] not in ("modules", "parallel"):
                return None
            found.add(parts[-1])
        return found.pop() if len(found) == 1 else None

    def _local_module_class(self, func: cst.BaseExpression) -> Optional[cst.ClassDef]:
        if not isinstance(func, cst.Name) or func.value in self.ctx.names.bindings:
            return None
        classes = self._classes.get(func.value, [])
        return classes[0] if len(classes) == 1 and classes[0] in self._module_classes else None

    def _layer_dependence(self, layer: str, call: Optional[cst.Call], at: cst.CSTNode,
                          seen: FrozenSet[object]) -> Optional[bool]:
        if _MODE_LAYER.search(layer):
            return True
        if layer in _NOT_MODULES:
            return False
        if layer.startswith(("InstanceNorm", "LazyInstanceNorm")) or layer in _MODE_ARGUMENT:
            if call is None or any(a.star for a in call.args):
                return None if call is None else True
            name, position = _MODE_ARGUMENT.get(layer, ("track_running_stats", 4 - layer.startswith("Lazy")))
            value = _argument(call, name, position)
            if value is None:
                return layer in _MODE_BY_DEFAULT
            if name == "track_running_stats":
                return _bool_literal(value) is not False
            return not _zero(value)
        if layer in _MODULE_CONTAINERS:
            if call is None:
                return None
            position = _MODULE_CONTAINERS[layer]
            args = [a for a in call.args if a.keyword is None or a.keyword.value in ("norm", "module")]
            if position is not None:
                args = [a for i, a in enumerate(args) if i == position or a.keyword is not None]
            return _combine(self._dependence(a.value, at, seen) for a in args)
        return False

    def _class_dependence(self, cls: cst.ClassDef, seen: FrozenSet[object]) -> Optional[bool]:
        """Mode dependence of a local ``nn.Module`` subclass: its bases, every module it builds or
        is given (through ``self.x = ...``, containers and ``append``), and what its methods read."""
        if cls in seen:
            return None
        if cls not in self._class_modes:
            self._class_modes[cls] = self._class_parts(cls, seen | {cls})
        return self._class_modes[cls]

    def _class_parts(self, cls: cst.ClassDef, seen: FrozenSet[object]) -> Optional[bool]:
        results: List[Optional[bool]] = []
        for base in cls.bases:
            local = self._local_module_class(base.value)
            layer = self._torch_nn_class(base.value)
            names = self.ctx.names.resolve(base.value)
            if local is not None:
                results.append(self._class_dependence(local, seen))
            elif names & {"torch.nn.Module", "lightning.pytorch.LightningModule"}:
                continue
            elif layer is not None:
                results.append(self._layer_dependence(layer, None, cls, seen))
            else:
                return None
        start, end = self.ctx.order(cls.body), self.ctx.end_order(cls.body)
        for node in self.ctx.nodes(cst.Attribute):
            if start <= self.ctx.order(node) <= end and node.attr.value == "training":
                return True
        for call in self.calls_within(cls.body):
            names = self.ctx.names.resolve(call.func)
            if any(n.startswith("torch.") and n.rsplit(".", 1)[-1] in _MODE_FUNCTIONS for n in names):
                return True
            if self._torch_nn_class(call.func) is not None or self._local_module_class(call.func) is not None:
                results.append(self._constructed_dependence(call, call, seen))
            elif any(n.rsplit(".", 1)[-1][:1].isupper() or n.startswith(("torchvision.models", "timm."))
                     for n in names if not n.startswith(_DATA_LIBRARIES + ("collections.", "typing."))):
                results.append(None)  # an imported class: a module of unknown type, maybe
        used = self._used_as_modules(cls)
        instances = self.ctx.get(Instances)
        for attr, values in instances.attr_values.get(cls, {}).items():
            made = any(isinstance(v, cst.Call) and not self._data(v) for v in values)
            if made or attr in used:
                results.append(self._dependence(cst.parse_expression(f"self.{attr}"), values[0], seen))
        for call in self.calls_within(cls.body):  # setattr(self, name, m), self.add_module(name, m)
            args: Sequence[cst.Arg] = ()
            if dotted(call.func) == "setattr":
                args = call.args[1:]
            elif _method(call) in _LIST_MUTATORS and dotted(call.func.value) == "self":  # type: ignore[union-attr]
                args = call.args
            results.extend(self._dependence(a.value, call, seen) for a in args
                           if not isinstance(a.value, cst.BaseString))
        for assign in self.ctx.nodes(cst.Assign):
            if start <= self.ctx.order(assign) <= end:
                for target in assign.targets:
                    if isinstance(target.target, (cst.Tuple, cst.List)) and any(
                            (dotted(e.value) or "")[5:] in used for e in target.target.elements
                            if (dotted(e.value) or "").startswith("self.")):
                        results.append(None)  # `self.enc, self.dec = build()`: not followed
        return _combine(results)

    def _used_as_modules(self, cls: cst.ClassDef) -> Set[str]:
        """Attributes of ``self`` that are called (``self.f(x)``, ``self.enc.layer(x)``,
        ``self.blocks[i](x)``) or iterated over (``for block in self.blocks``) in the class."""
        used: Set[str] = set()
        for call in self.calls_within(cls.body):
            node = call.func
            while isinstance(node, (cst.Attribute, cst.Subscript)):
                if isinstance(node.value, cst.Name) and node.value.value == "self" and isinstance(node, cst.Attribute):
                    used.add(node.attr.value)
                node = node.value
        start, end = self.ctx.order(cls.body), self.ctx.end_order(cls.body)
        for loop in (*self.ctx.nodes(cst.For), *self.ctx.nodes(cst.CompFor)):
            if start <= self.ctx.order(loop) <= end:
                iters = [loop.iter]
                if isinstance(loop.iter, cst.Call) and dotted(loop.iter.func) in ("enumerate", "zip", "reversed"):
                    iters = [a.value for a in loop.iter.args]
                for item in iters:
                    text = dotted(item) or ""
                    if text.startswith("self.") and text.count(".") == 1:
                        used.add(text[5:])
        return used

    def _data(self, value: cst.BaseExpression) -> bool:
        """A value that is not a module: a literal, arithmetic, a tensor or a builtin's result."""
        if isinstance(value, (cst.BaseNumber, cst.BaseString, cst.BinaryOperation, cst.UnaryOperation,
                              cst.Comparison, cst.Lambda)):
            return True
        if isinstance(value, cst.Name):
            return value.value in ("True", "False", "None")
        if isinstance(value, (cst.List, cst.Tuple, cst.Dict, cst.Set)):
            return all(self._data(e.value) for e in value.elements if isinstance(e, (cst.Element, cst.DictElement)))
        if isinstance(value, cst.Call):
            if isinstance(value.func, cst.Name) and value.func.value in _DATA_CALLS \
                    and value.func.value not in self.ctx.names.bindings:
                return True
            if self._torch_nn_class(value.func) in _NOT_MODULES:
                return True
            names = self.ctx.names.resolve(value.func)
            return bool(names) and all(n.startswith(_DATA_LIBRARIES) and not n.startswith("torch.nn.")
                                       and not n.rsplit(".", 1)[-1][:1].isupper() for n in names)
        return False

    # -- evaluation code -----------------------------------------------------------------------
    def trains(self, node: cst.CSTNode) -> bool:
        """A backward pass or optimizer step inside ``node``."""
        return any(is_training_step(c) for c in self.calls_within(node))

    def parameter_updates(self) -> List[cst.CSTNode]:
        """Where the module updates parameters: optimizer steps (``TrainingLoops``), an engine's
        ``step()`` after its ``backward(loss)`` (DeepSpeed), and updates by hand from gradients
        (``p.data.add_(p.grad, alpha=-lr)`` for ``p`` in ``model.parameters()``, ``w -= lr * w.grad``
        under ``torch.no_grad()``). A backward pass alone (input gradients) is not one."""
        loops = self.ctx.get(TrainingLoops)
        found: List[cst.CSTNode] = list(loops.optimizer_steps())
        engines = {dotted(c.func.value) for c in self._calls  # type: ignore[union-attr]
                   if _method(c) == "backward" and len(c.args) == 1} - {None}
        found += [c for c in self._calls
                  if _method(c) == "step" and dotted(c.func.value) in engines]  # type: ignore[union-attr]
        candidates: List[Tuple[cst.CSTNode, cst.BaseExpression, List[cst.CSTNode]]] = [
            (a, a.target, [a.value]) for a in self.ctx.nodes(cst.AugAssign)
            if isinstance(a.operator, (cst.SubtractAssign, cst.AddAssign))]
        candidates += [(c, c.func.value, list(c.args)) for c in self._calls  # type: ignore[union-attr]
                       if (_method(c) or "").endswith("_") and (_method(c) or "").startswith(("add", "sub", "copy"))]
        for node, target, values in candidates:
            chain = [target]
            while isinstance(chain[-1], (cst.Attribute, cst.Subscript)):
                chain.append(chain[-1].value)
            if any(isinstance(c, cst.Attribute) and c.attr.value == "grad" for c in chain) or not any(
                    isinstance(n, cst.Attribute) and n.attr.value == "grad" for v in values for n in _descendants(v)):
                continue  # a gradient edited, or no gradient used
            root = chain[-1]
            if loops.no_grad(node) or isinstance(root, cst.Name) and self._parameter_loop(root, node):
                found.append(node)
        return sorted(found, key=self.ctx.order)

    def _parameter_loop(self, name: cst.Name, at: cst.CSTNode) -> bool:
        """``name`` is the target of a loop around ``at`` over ``m.parameters()``/``named_parameters()``."""
        for ancestor in self.ctx.ancestors(at):
            if isinstance(ancestor, cst.For) and any(isinstance(n, cst.Name) and n.value == name.value
                                                     for n in _descendants(ancestor.target)) \
                    and any(isinstance(c, cst.Call) and _method(c) in ("parameters", "named_parameters")
                            for c in _descendants(ancestor.iter)):
                return True
        return False

    def calls_within(self, node: cst.CSTNode) -> List[cst.Call]:
        """Every call inside ``node``, in source order (from the shared index)."""
        lo = bisect.bisect_left(self._call_orders, self.ctx.order(node))
        hi = bisect.bisect_right(self._call_orders, self.ctx.end_order(node))
        return self._calls[lo:hi]

    def eval_loop(self, loop: cst.CSTNode) -> bool:
        """A ``for`` over a validation/test loader (by its names), with no training step inside."""
        if not isinstance(loop, cst.For):
            return False
        found = [w for ident in _identifiers(loop.iter) for w in words(ident)]
        return any(is_eval_word(w) for w in found) and not any(is_train_word(w) for w in found) \
            and not self.trains(loop)

    def eval_function(self, function: Optional[cst.FunctionDef]) -> bool:
        """A function named as evaluation (``evaluate``, ``validate``, ``test``, ``run_inference``
        ...; not pytest's ``test_*``) that does not train."""
        if function is None:
            return False
        name = function.name.value
        if name.lstrip("_").startswith("test_") or self.lightning_eval_hook(function):
            return False
        return any(is_eval_word(w) for w in words(name)) and not any(is_train_word(w) for w in words(name)) \
            and not self.trains(function)

    def eval_context(self, node: cst.CSTNode) -> Optional[cst.CSTNode]:
        """The outermost evaluation loop around ``node`` in its function, else the evaluation
        function it is in, else None."""
        function = self.ctx.enclosing(node, cst.FunctionDef)
        found: Optional[cst.CSTNode] = None
        for ancestor in self.ctx.ancestors(node):
            if ancestor is function:
                break
            if self.eval_loop(ancestor):
                found = ancestor
        if found is None and self.eval_function(function):
            return function
        return found

    # -- gradient contexts ---------------------------------------------------------------------
    def _grad_call(self, call: cst.BaseExpression) -> Optional[bool]:
        """True: disables grads; False: enables them; None: not a grad-mode call, or runtime."""
        if not isinstance(call, cst.Call):
            return None
        last = {n.rsplit(".", 1)[-1] for n in self._torch_names(call.func)}
        if "no_grad" in last:
            return True
        if "inference_mode" in last:
            flag = _bool_literal(call.args[0].value) if call.args else True
            return flag
        if "enable_grad" in last:
            return False
        if "set_grad_enabled" in last and call.args:
            flag = _bool_literal(call.args[0].value)
            return None if flag is None else not flag
        return None

    def _torch_names(self, expr: cst.BaseExpression) -> Set[str]:
        """The ``torch.*`` names ``expr`` may denote, counting a ``torch`` that only a star import
        can bind (``from data import *`` where ``data`` does ``import torch``) as torch itself."""
        out = set()
        for name in self.ctx.names.resolve(expr):
            for module in self.ctx.names.star_modules:
                if name.startswith(module + ".torch."):
                    name = name[len(module) + 1:]
                    break
            if name.startswith("torch."):
                out.add(name)
        return out

    def _grad_decorated(self, function: cst.FunctionDef) -> bool:
        for decorator in function.decorators:
            expr = decorator.decorator
            if isinstance(expr, cst.Call):
                if self._grad_call(expr):
                    return True
            elif {n.rsplit(".", 1)[-1] for n in self._torch_names(expr)} & _GRAD_OFF:
                return True
        return False

    def grad_disabled(self, node: cst.CSTNode, _depth: int = 0) -> Optional[bool]:
        """Whether gradients are off at ``node`` (None: decided at run time)."""
        function = self.ctx.enclosing(node, cst.FunctionDef)
        for ancestor in self.ctx.ancestors(node):
            if ancestor is function:
                break
            if isinstance(ancestor, cst.With):
                for item in ancestor.items:
                    call = item.item
                    if isinstance(call, cst.Call) and self.ctx.names.resolve(call.func) & {
                            "torch.set_grad_enabled", "torch.autograd.set_grad_enabled"} \
                            and self._grad_call(call) is None:
                        return None
                    flag = self._grad_call(call)
                    if flag is not None:
                        return flag
        scope = function if function is not None else self.ctx.module
        at = self.ctx.order(node)
        for call in self.calls_within(scope):
            if self.ctx.order(call) >= at:
                break
            parent = self.ctx.parent(call)
            if isinstance(parent, cst.Expr) and self.ctx.enclosing(call, cst.FunctionDef) is function \
                    and self.ctx.names.resolve(call.func) & {"torch.set_grad_enabled",
                                                             "torch.autograd.set_grad_enabled"}:
                flag = self._grad_call(call)
                if flag is not False:
                    return flag
        if function is None:
            return False
        if self._grad_decorated(function) or self.lightning_eval_hook(function):
            return True
        if _depth == 0:
            sites = self.call_sites(function)
            if sites and all(self.grad_disabled(site, 1) for site in sites):
                return True
        return False

    def volatile_input(self, call: cst.Call) -> bool:
        """An argument of ``call`` is a ``torch.autograd.Variable(..., volatile=True)``, directly or
        through the last assignment to a local name (``x, y = Variable(x, volatile=True), ...``):
        torch < 0.4's way to record no graph for everything computed from it."""
        for arg in call.args:
            value: Optional[cst.BaseExpression] = arg.value
            if isinstance(value, cst.Name):
                value = self._assigned_before(value, call)
            while isinstance(value, cst.Call) and _method(value) in _SELF_METHODS:
                value = value.func.value  # type: ignore[union-attr]
            if isinstance(value, cst.Call) and self.ctx.names.resolve(value.func) & {
                    "torch.autograd.Variable", "torch.autograd.variable.Variable"} \
                    and any(a.keyword is not None and a.keyword.value == "volatile"
                            and _bool_literal(a.value) for a in value.args):
                return True
        return False

    def _assigned_before(self, name: cst.Name, at: cst.CSTNode) -> Optional[cst.BaseExpression]:
        """The value the last assignment before ``at`` in its scope gives ``name`` (tuples unpacked
        element by element), if that assignment is a plain one."""
        scope, found, last = self._scope(at), None, -1
        for assign in self.ctx.nodes(cst.Assign):
            if self._scope(assign) is not scope or self.ctx.end_order(assign) >= self.ctx.order(at):
                continue
            for target in assign.targets:
                pairs = [(target.target, assign.value)]
                names, values = target.target, assign.value
                if isinstance(names, (cst.Tuple, cst.List)) and isinstance(values, (cst.Tuple, cst.List)) \
                        and len(names.elements) == len(values.elements):
                    pairs = [(t.value, v.value) for t, v in zip(names.elements, values.elements)]
                for bound, value in pairs:
                    if isinstance(bound, cst.Name) and bound.value == name.value and self.ctx.order(assign) > last:
                        found, last = value, self.ctx.order(assign)
        return found

    # -- helpers -------------------------------------------------------------------------------
    def helper(self, call: cst.Call) -> Optional[cst.FunctionDef]:
        """The function of this module a call runs: ``f(...)`` of a module-level ``def f`` or
        ``self.f(...)`` of a method of the same class (None when ambiguous or unseen)."""
        func = call.func
        if isinstance(func, cst.Name):
            found = self._functions.get(func.value, [])
            if len(found) == 1 and func.value not in self.ctx.names.bindings:
                return found[0]
        elif isinstance(func, cst.Attribute) and isinstance(func.value, cst.Name) \
                and func.value.value == "self":
            cls = self.ctx.enclosing(call, cst.ClassDef)
            if cls is not None:
                found = [s for s in cls.body.body if isinstance(s, cst.FunctionDef)
                         and s.name.value == func.attr.value]
                if len(found) == 1:
                    return found[0]
        return None

    def call_sites(self, function: cst.FunctionDef) -> List[cst.Call]:
        return [c for c in self._calls if self.helper(c) is function]

    def map_key(self, call: cst.Call, function: cst.FunctionDef, key: str) -> Optional[str]:
        """The caller's name for the helper's receiver ``key`` (a parameter -> its argument, a
        global or ``self.x`` -> itself); None for the helper's locals or unmappable arguments."""
        root, dot, rest = key.partition(".")
        params = parameters(function)
        method = isinstance(call.func, cst.Attribute)
        if root == "self" and method:
            return key
        if root in params:
            index = params.index(root) - (1 if method else 0)
            value = None
            for position, arg in enumerate(call.args):
                if arg.star:
                    return None
                if arg.keyword is not None and arg.keyword.value == root or \
                        arg.keyword is None and position == index:
                    value = arg.value
            text = dotted(value) if value is not None else None
            return None if text is None else text + dot + rest
        if (function, root) in self.ctx.get(Assignments).by_scope or root == "self":
            return None
        caller = self.ctx.enclosing(call, cst.FunctionDef)
        if caller is not None and ((caller, root) in self.ctx.get(Assignments).by_scope
                                   or root in parameters(caller)):
            return None
        return key

    # -- modes ---------------------------------------------------------------------------------
    def walk(self, scope: Scope, depth: int = 0) -> "_Walk":
        key = (scope, depth)
        if key not in self._walks:
            self._walks[key] = _Walk(self, scope, depth)
        return self._walks[key]

    def statement_of(self, node: cst.CSTNode) -> Optional[cst.CSTNode]:
        walk = self.walk(self._scope(node))
        for candidate in (node, *self.ctx.ancestors(node)):
            if candidate in walk.before:
                return candidate
        return None

    def _scope(self, node: cst.CSTNode) -> Scope:
        function = self.ctx.enclosing(node, cst.FunctionDef)
        return function if function is not None else self.ctx.module

    def state_at(self, node: cst.CSTNode) -> State:
        walk = self.walk(self._scope(node))
        statement = self.statement_of(node)
        state = walk.before.get(statement) if statement is not None else None
        return state or {}

    def mode_at(self, receiver: Union[str, cst.BaseExpression], node: cst.CSTNode) -> Mode:
        """The mode of ``receiver`` (text or expression) just before the statement holding
        ``node`` runs."""
        key = receiver if isinstance(receiver, str) else dotted(receiver)
        if key is None:
            return Mode(UNKNOWN, None, False)
        return lookup(self.state_at(node), key)

    def exit_state(self, function: cst.FunctionDef) -> State:
        """What a helper leaves behind, seen by a caller (nested helpers are not followed)."""
        return self.walk(function, 1).exit or {}


class _Walk:
    """One pass over a scope's statements: the state before each statement, and at exit."""

    def __init__(self, modes: Modes, scope: Scope, depth: int) -> None:
        self.modes = modes
        self.ctx = modes.ctx
        self.scope = scope
        self.depth = depth
        self.before: Dict[cst.CSTNode, State] = {}
        self.exits: List[State] = []
        body = scope.body.body if isinstance(scope, cst.FunctionDef) \
            and isinstance(scope.body, cst.IndentedBlock) else getattr(scope, "body", ())
        if isinstance(scope, cst.FunctionDef) and not isinstance(scope.body, cst.IndentedBlock):
            body = (scope.body,)
        end = self.block(body, {})
        if end is not None:
            self.exits.append(end)
        exit_state: Optional[State] = None
        for index, state in enumerate(self.exits):
            exit_state = dict(state) if index == 0 else _merge(exit_state, state)
        self.exit = exit_state

    def block(self, statements: Iterable[cst.CSTNode], state: Optional[State]) -> Optional[State]:
        for statement in statements:
            if state is None:
                return None
            state = self.statement(statement, state)
        return state

    def _body(self, node) -> Iterable[cst.CSTNode]:
        body = node.body
        return body.body if isinstance(body, cst.IndentedBlock) else (body,)

    def statement(self, node: cst.CSTNode, state: State) -> Optional[State]:
        self.before[node] = state
        state = dict(state)
        if isinstance(node, cst.SimpleStatementLine) or isinstance(node, cst.BaseSmallStatement):
            smalls = node.body if isinstance(node, cst.SimpleStatementLine) else [node]
            for small in smalls:
                self.effects(small, state)
                if isinstance(small, cst.Return):
                    self.exits.append(state)
                    return None
                if isinstance(small, cst.Raise):
                    return None
            return state
        if isinstance(node, cst.If):
            self.effects(node.test, state)
            then = self.block(self._body(node), state)
            if isinstance(node.orelse, cst.If):
                other = self.statement(node.orelse, state)
            elif isinstance(node.orelse, cst.Else):
                other = self.block(self._body(node.orelse), state)
            else:
                other = state
            return _merge(then, other)
        if isinstance(node, (cst.For, cst.While)):
            if isinstance(node, cst.For):
                self.effects(node.iter, state)
                self.rebind(node.target, state)
            else:
                self.effects(node.test, state)
            top: Optional[State] = state
            end: Optional[State] = state
            for _ in range(4):
                end = self.block(self._body(node), top)
                new_top = _merge(state, end)
                if _same(new_top, top):
                    break
                top = new_top
            after = _merge(state, end)
            if node.orelse is not None:
                after = self.block(self._body(node.orelse), after)
            return after
        if isinstance(node, cst.With):
            for item in node.items:
                self.effects(item.item, state)
                if item.asname is not None:
                    self.rebind(item.asname.name, state)
            return self.block(self._body(node), state)
        if isinstance(node, (cst.Try, getattr(cst, "TryStar", cst.Try))):
            body_end = self.block(self._body(node), state)
            if node.orelse is not None:
                body_end = self.block(self._body(node.orelse), body_end)
            start = _merge(state, body_end)
            result = body_end
            for handler in node.handlers:
                result = _merge(result, self.block(self._body(handler), start))
            if node.finalbody is not None:
                result = self.block(self._body(node.finalbody), result if result is not None else start)
            return result
        match = getattr(cst, "Match", None)
        if match is not None and isinstance(node, match):
            result = None
            for case in node.cases:
                result = _merge(result, self.block(self._body(case), state))
            return _merge(result, state)
        return state  # def, class: nothing runs here

    # -- effects of one small statement or expression -------------------------------------------
    def effects(self, node: cst.CSTNode, state: State) -> None:
        for call in self.modes.calls_within(node):
            self.call(call, state)
        if isinstance(node, cst.Assign):
            for target in node.targets:
                self.assign(target.target, node.value, state)
        elif isinstance(node, cst.AnnAssign) and node.value is not None:
            self.assign(node.target, node.value, state)

    def call(self, call: cst.Call, state: State) -> None:
        func = call.func
        if isinstance(func, cst.Attribute) and func.attr.value in ("train", "eval"):
            key = dotted(func.value)
            if key is None:
                return
            if func.attr.value == "eval" and not call.args:
                _set(state, key, Mode(EVAL, call))
            elif func.attr.value == "train":
                flag: Optional[bool] = True
                if call.args:
                    arg = call.args[0]
                    flag = _bool_literal(arg.value) if arg.keyword is None or arg.keyword.value == "mode" else None
                    if len(call.args) > 1 or arg.star:
                        flag = None
                _set(state, key, Mode(UNKNOWN, call, False) if flag is None
                     else Mode(TRAIN if flag else EVAL, call))
            return
        helper = self.modes.helper(call)
        if helper is not None and self.depth == 0 and helper is not self.scope:
            for key, mode in self.modes.exit_state(helper).items():
                if mode.state == INHERIT:
                    continue
                mapped = self.modes.map_key(call, helper, key)
                if mapped is not None:
                    _set(state, mapped, Mode(mode.state, mode.node, mode.explicit, call))
            return
        if self._neutral(call) and helper is None:
            return
        for arg in call.args:
            key = dotted(arg.value)
            if key is not None:
                _set(state, key, Mode(UNKNOWN, call, False))

    def _neutral(self, call: cst.Call) -> bool:
        func = call.func
        if isinstance(func, cst.Name) and func.value in _NEUTRAL_BUILTINS \
                and func.value not in self.ctx.names.bindings:
            return True
        names = self.ctx.names.resolve(func)
        return bool(names) and all(n.startswith(_NEUTRAL_LIBRARIES) for n in names)

    def rebind(self, target: cst.BaseExpression, state: State) -> None:
        key = dotted(target)
        if key is not None:
            _set(state, key, Mode(UNKNOWN, None, False))
        elif isinstance(target, (cst.Tuple, cst.List)):
            for element in target.elements:
                self.rebind(element.value, state)

    def assign(self, target: cst.BaseExpression, value: cst.BaseExpression, state: State) -> None:
        key = dotted(target)
        if key is None:
            self.rebind(target, state)
            return
        made = self.modes.constructed_mode(value)
        if made is not None:
            _set(state, key, made)
            return
        source = value
        while isinstance(source, cst.Call) and _method(source) in _SELF_METHODS | {"train", "eval"}:
            source = source.func.value  # type: ignore[union-attr]
        source_key = dotted(source)
        if source_key is not None and source is not value or isinstance(value, (cst.Name, cst.Attribute)):
            _set(state, key, lookup(state, source_key) if source_key is not None else Mode(UNKNOWN, None, False))
            return
        _set(state, key, Mode(UNKNOWN, None, False))


def row(ctx: "Context", node: cst.CSTNode) -> int:
    """The 1-based line a node starts on."""
    return ctx.locator.location(ctx.span(node)[0]).row


