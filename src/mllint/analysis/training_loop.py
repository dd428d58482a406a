"""Training-step structure: loops, and the gradient calls that run in one iteration of each.

A *training loop* is a ``for``/``while`` loop (at any depth, in a function or at module level),
or a Lightning ``training_step`` under manual optimization (Lightning calls it once per batch,
so its body is one iteration). For every loop, ``TrainingLoops`` lists the *events* that run in
one iteration, in execution order:

- ``ZERO_GRAD``: ``<opt>.zero_grad()``, ``model.zero_grad()``, ``opt.zero_grad(set_to_none=...)``
  (``target``: the receiver);
- ``GRAD_RESET``: gradients cleared by hand: ``p.grad = None``, ``p.grad.zero_()``,
  ``p.grad.data.zero_()``, ``p.grad.detach_()`` (``target``: ``p``);
- ``BACKWARD``: ``loss.backward()``, ``accelerator.backward(loss)``,
  ``scaler.scale(loss).backward()``, ``self.manual_backward(loss)``, ``torch.autograd.backward``
  (``target``: the loss; torch.distributed.autograd's context-bound backward is not one);
- ``OPTIMIZER_STEP``: ``<opt>.step()`` / ``opt.step(closure)``, ``scaler.step(opt)``,
  ``xm.optimizer_step(opt)`` (``target``: the optimizer);
- ``SCHEDULER_STEP``: ``<sched>.step()`` (``target``: the scheduler; ``Event.metric`` when a
  value is passed, as ``ReduceLROnPlateau.step(val_loss)`` takes).

Events in nested loops and in helpers *one level deep* count too: a function of the same module
called by name (``train_step(model, batch, opt)``), a method of the same class
(``self.train_step(batch)``), or a closure passed to ``opt.step(closure)``. Each event records
the ``if`` statements it depends on (``guards``; ``is_accumulation_guard(test)`` tells when
one tests ``% k``, ``sync_gradients`` or an ``accum*`` name), the innermost loop it runs in (``loop``: the loop
itself or a nested one, possibly inside the helper) and its position in the iteration
(``position``: comparable tuples, a helper's events at the helper call).

Receivers: ``optimizer_kind`` / ``is_optimizer`` and ``is_scheduler`` tell what a receiver is:
a constructor of ``torch.optim`` (any spelling), ``transformers.AdamW``/``Adafactor``,
bitsandbytes optimizers, Lightning's ``self.optimizers()``/``self.lr_schedulers()``, the
results of ``accelerator.prepare(...)`` in the optimizer's position, schedulers of
``torch.optim.lr_scheduler`` and ``transformers``/``diffusers`` ``get_*schedule*``. Without a
constructor in view (a function parameter), the name decides: ``optimizer``, ``optim``,
``opt``, ``optimizerD``, ``g_opt`` are optimizers, ``scheduler``/``lr_sched`` schedulers
(``noise_scheduler`` is not). ``parameter_owners`` gives the modules whose ``.parameters()``
an optimizer was built from, so ``netD.zero_grad()`` clears ``optimizerD`` but not
``optimizerG``.

Stable API (other rules read it): ``TrainingLoops(ctx)`` via ``ctx.get(TrainingLoops)``;
``.loops`` (``Loop``: ``node``, ``function``, ``events``, ``of(kind)``, ``outer``,
``lightning``), ``.loop_of(node)``, ``.is_optimizer``, ``.optimizer_kind``, ``.is_scheduler``,
``.scheduler_optimizer``, ``.parameter_owners``, ``.built_per_iteration``, ``.same(a, b, at)``, ``.clears(event,
optimizer)``, ``.helper(call)``, ``.lightning_class(cls)``, ``.manual_optimization(cls)``,
``.no_grad(node)``, ``.is_plateau``; ``is_accumulation_guard``; event kinds are the module
constants.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Dict, FrozenSet, Iterator, List, Optional, Set, Tuple, Union

import libcst as cst

from mllint.analysis.instances import Instances
from mllint.analysis.names import dotted

if TYPE_CHECKING:
    from mllint.core.context import Context

ZERO_GRAD = "zero_grad"
GRAD_RESET = "grad_reset"
BACKWARD = "backward"
OPTIMIZER_STEP = "optimizer_step"
SCHEDULER_STEP = "scheduler_step"

LoopNode = Union[cst.For, cst.While, cst.FunctionDef]

_OPTIMIZER_NAME = re.compile(r"optim|^opt($|_|\d|[dg]$)|_opt($|_|\d)", re.IGNORECASE)
_SCHEDULER_NAME = re.compile(r"sched", re.IGNORECASE)
_NOT_LR_SCHEDULER = re.compile(r"noise|diffusion|sampler", re.IGNORECASE)
# Optimizer classes outside torch.optim, by canonical name (prefixes end with ".").
_OPTIMIZER_CLASSES = ("torch.optim.", "transformers.AdamW", "transformers.Adafactor",
                      "bitsandbytes.optim.", "apex.optimizers.", "timm.optim.",
                      "torch.distributed.optim.ZeroRedundancyOptimizer")
_OPTIMIZER_FACTORIES = ("timm.optim.create_optimizer", "timm.optim.create_optimizer_v2",
                        "transformers.optimization.create_optimizer")
# Objects whose ``.backward(loss)`` runs the loss's backward (accelerate, Fabric, DeepSpeed).
_BACKWARD_WRAPPER = re.compile(r"accelerat|fabric|engine|deepspeed|^self$", re.IGNORECASE)
_PLATEAU = "torch.optim.lr_scheduler.ReduceLROnPlateau"
_GRAD_CLEARING_METHODS = frozenset({"zero_", "detach_", "requires_grad_"})
_NO_GRAD = frozenset({"torch.no_grad", "torch.inference_mode", "torch.autograd.no_grad",
                      "torch.autograd.grad_mode.no_grad"})
_LIGHTNING = ("lightning.pytorch.LightningModule", "lightning.LightningModule")


@dataclass(frozen=True)
class Event:
    kind: str
    node: cst.CSTNode  # the call, or the ``p.grad = None`` assignment
    target: Optional[cst.BaseExpression]  # optimizer, model, loss or scheduler
    statement: cst.CSTNode  # the statement of the loop's own function holding it (or the helper call)
    guards: Tuple[cst.If, ...]  # ``if`` statements between the loop and the event (helper's too)
    loop: cst.CSTNode  # innermost loop the event runs in (this loop or a nested one)
    # Order in the iteration: (statement, 0 for a helper's events (they run before the call
    # returns, e.g. a closure inside ``opt.step(closure)``) else 1, the node itself).
    position: Tuple[int, int, int]
    helper: Optional[cst.FunctionDef] = None  # the helper it happens in, one level deep
    metric: bool = False  # SCHEDULER_STEP with an argument (``ReduceLROnPlateau.step(val_loss)``)

    @property
    def conditional(self) -> bool:
        return bool(self.guards)


@dataclass
class Loop:
    node: LoopNode
    function: Optional[cst.FunctionDef]
    outer: Optional["Loop"]
    lightning: bool = False  # a Lightning ``training_step`` (manual optimization)
    events: List[Event] = field(default_factory=list)

    def of(self, kind: str) -> List[Event]:
        return [e for e in self.events if e.kind == kind]

    def direct(self, event: Event) -> bool:
        """The event runs once per iteration of this loop (not in a nested loop)."""
        return event.loop is self.node


def is_accumulation_guard(test: cst.BaseExpression) -> bool:
    """``(i + 1) % accum == 0``, ``step % k == 0``, ``accelerator.sync_gradients``, ``accum*``."""
    for node in _walk(test):
        if isinstance(node, cst.BinaryOperation) and isinstance(node.operator, cst.Modulo):
            return True
        if isinstance(node, (cst.Name, cst.Attribute)):
            name = node.value if isinstance(node, cst.Name) else node.attr.value
            if "accum" in name.lower() or name == "sync_gradients":
                return True
    return False


def _walk(node: cst.CSTNode) -> Iterator[cst.CSTNode]:
    stack = [node]
    while stack:
        current = stack.pop()
        yield current
        stack.extend(current.children)


def _last_name(expr: cst.BaseExpression) -> Optional[str]:
    path = dotted(expr)
    return path.rsplit(".", 1)[-1] if path else None


class TrainingLoops:
    def __init__(self, ctx: "Context") -> None:
        self.ctx = ctx
        self.instances = ctx.get(Instances)
        self._functions: Dict[str, List[cst.FunctionDef]] = {}
        for function in ctx.nodes(cst.FunctionDef):
            self._functions.setdefault(function.name.value, []).append(function)
        # Every event where it happens (before helpers are followed).
        self._events: List[Tuple[str, cst.CSTNode, Optional[cst.BaseExpression], bool]] = []
        for call in ctx.nodes(cst.Call):
            found = self._classify(call)
            if found is not None:
                self._events.append((found[0], call, found[1], found[2]))
        for assign in ctx.nodes(cst.Assign):
            for target in assign.targets:
                owner = _grad_owner(target.target)
                if owner is not None:
                    self._events.append((GRAD_RESET, assign, owner, False))
        self._helper_calls: List[Tuple[cst.Call, cst.FunctionDef]] = []
        for call in ctx.nodes(cst.Call):
            helper = self.helper(call)
            if helper is not None:
                self._helper_calls.append((call, helper))
        self.loops: List[Loop] = []
        self._by_node: Dict[cst.CSTNode, Loop] = {}
        loop_nodes: List[LoopNode] = sorted([*ctx.nodes(cst.For), *ctx.nodes(cst.While)], key=ctx.order)
        for function in ctx.nodes(cst.FunctionDef):
            if function.name.value == "training_step":
                cls = ctx.enclosing(function, cst.ClassDef)
                if cls is not None and self.lightning_class(cls):
                    loop_nodes.append(function)
        for node in sorted(loop_nodes, key=ctx.order):
            function = node if isinstance(node, cst.FunctionDef) else ctx.enclosing(node, cst.FunctionDef)
            outer = next((self._by_node[a] for a in ctx.ancestors(node) if a in self._by_node), None)
            loop = Loop(node, function, outer, lightning=isinstance(node, cst.FunctionDef))
            loop.events = self._iteration(loop)
            self.loops.append(loop)
            self._by_node[node] = loop

    # -- events ------------------------------------------------------------------------------
    def optimizer_steps(self) -> List[cst.CSTNode]:
        """Every optimizer step of the module, in a loop or not (``opt.step()``,
        ``scaler.step(opt)``, ``xm.optimizer_step(opt)``), in source order."""
        return [node for kind, node, _, _ in self._events if kind == OPTIMIZER_STEP]

    def _classify(self, call: cst.Call) -> Optional[Tuple[str, Optional[cst.BaseExpression], bool]]:
        func = call.func
        names = self.ctx.names
        if not isinstance(func, cst.Attribute):
            if names.matches(func, "torch.autograd.backward") and call.args:
                return BACKWARD, call.args[0].value, False
            return None
        method, receiver = func.attr.value, func.value
        positional = [a for a in call.args if a.keyword is None and not a.star]
        if method == "zero_grad":
            return ZERO_GRAD, receiver, False
        if method in _GRAD_CLEARING_METHODS and not call.args:
            owner = _grad_owner(receiver)
            return (GRAD_RESET, owner, False) if owner is not None else None
        if method == "backward":
            if len(positional) > 1:
                return None  # torch.distributed.autograd.backward(context_id, [loss]) and the like
            if names.resolve(receiver):
                # ``torch.autograd.backward(t)`` counts; torch.distributed.autograd's does not.
                return (BACKWARD, call.args[0].value, False) if names.matches(
                    func, "torch.autograd.backward") and call.args else None
            if isinstance(receiver, cst.Call) and isinstance(receiver.func, cst.Attribute) \
                    and receiver.func.attr.value == "scale" and receiver.args:
                return BACKWARD, receiver.args[0].value, False  # scaler.scale(loss).backward()
            if len(positional) == 1 and len(call.args) == 1 and _BACKWARD_WRAPPER.search(_last_name(receiver) or ""):
                return BACKWARD, positional[0].value, False  # accelerator/fabric/engine.backward(loss)
            return BACKWARD, receiver, False
        if method == "manual_backward" and call.args:
            return BACKWARD, call.args[0].value, False
        if method == "optimizer_step" and positional:  # torch_xla ``xm.optimizer_step(opt)``
            return OPTIMIZER_STEP, positional[0].value, False
        if method != "step" or names.resolve(receiver):
            return None
        if self.is_scheduler(receiver, call):
            return SCHEDULER_STEP, receiver, bool(call.args)
        if _last_name(receiver) and "scaler" in _last_name(receiver).lower() and len(positional) == 1:
            return OPTIMIZER_STEP, positional[0].value, False  # GradScaler.step(opt)
        if self.is_optimizer(receiver, call) and self._closure_only(call):
            return OPTIMIZER_STEP, receiver, False
        return None

    def _closure_only(self, call: cst.Call) -> bool:
        """No argument, or only a closure (``opt.step(closure)``, ``opt.step(lambda: ...)``)."""
        if not call.args:
            return True
        if len(call.args) != 1:
            return False
        arg = call.args[0]
        if arg.keyword is not None:
            return arg.keyword.value == "closure"
        return isinstance(arg.value, cst.Lambda) or (
            isinstance(arg.value, cst.Name) and arg.value.value in self._functions)

    def _iteration(self, loop: Loop) -> List[Event]:
        """Events that run in one iteration of ``loop``, in execution order."""
        ctx = self.ctx
        body = loop.node if isinstance(loop.node, cst.FunctionDef) else loop.node.body
        start, end = ctx.order(body), ctx.end_order(body)
        out: List[Event] = []
        for kind, node, target, metric in self._events:
            if start <= ctx.order(node) <= end and self._runs_here(node, loop.node):
                statement = self._statement(node)
                out.append(Event(kind, node, target, statement, self._guards(node, loop.node),
                                 self._innermost_loop(node, loop.node), (ctx.order(statement), 1, ctx.order(node)),
                                 None, metric))
        for call, helper in self._helper_calls:
            if not (start <= ctx.order(call) <= end and self._runs_here(call, loop.node)) \
                    or self._inside(loop.node, helper):
                continue  # not in this iteration, or a recursive call of the loop's own function
            statement = self._statement(call)
            outer_guards = self._guards(call, loop.node)
            inner_loop = self._innermost_loop(call, loop.node)
            for kind, node, target, metric in self._events:
                if ctx.enclosing(node, cst.FunctionDef) is not helper:
                    continue
                own_loop = self._innermost_loop(node, helper)
                target = _argument_for(helper, call, target)
                out.append(Event(kind, node, target, statement, outer_guards + self._guards(node, helper),
                                 own_loop if own_loop is not helper else inner_loop,
                                 (ctx.order(statement), 0, ctx.order(node)), helper, metric))
        out.sort(key=lambda e: e.position)
        return out

    def _runs_here(self, node: cst.CSTNode, loop_node: LoopNode) -> bool:
        """``node`` belongs to ``loop_node``'s function (not a nested def or class)."""
        for ancestor in self.ctx.ancestors(node):
            if ancestor is loop_node:
                return True
            if isinstance(ancestor, (cst.FunctionDef, cst.ClassDef, cst.Lambda)):
                return False
        return False

    def _inside(self, node: cst.CSTNode, container: cst.CSTNode) -> bool:
        return any(a is container for a in self.ctx.ancestors(node))

    def _statement(self, node: cst.CSTNode) -> cst.CSTNode:
        """The statement holding ``node`` (a ``SimpleStatementLine`` or compound statement)."""
        current = node
        for ancestor in self.ctx.ancestors(node):
            if isinstance(current, (cst.SimpleStatementLine, cst.BaseCompoundStatement)):
                return current
            current = ancestor
        return current

    def _guards(self, node: cst.CSTNode, stop: cst.CSTNode) -> Tuple[cst.If, ...]:
        guards: List[cst.If] = []
        for ancestor in self.ctx.ancestors(node):
            if ancestor is stop:
                break
            if isinstance(ancestor, cst.If):
                guards.append(ancestor)
        return tuple(reversed(guards))

    def _innermost_loop(self, node: cst.CSTNode, stop: cst.CSTNode) -> cst.CSTNode:
        for ancestor in self.ctx.ancestors(node):
            if ancestor is stop or isinstance(ancestor, (cst.For, cst.While)):
                return ancestor
        return stop

    # -- helpers one level deep --------------------------------------------------------------
    def helper(self, call: cst.Call) -> Optional[cst.FunctionDef]:
        """The function of this module ``call`` runs: ``f(...)`` of a single module-level or
        enclosing-function ``def f``, ``self.m(...)`` of a method of the same class, or the
        closure passed to ``opt.step(closure)``."""
        func = call.func
        if isinstance(func, cst.Name):
            return self._single_function(func.value, call)
        if isinstance(func, cst.Attribute) and isinstance(func.value, cst.Name) and func.value.value == "self":
            cls = self.ctx.enclosing(call, cst.ClassDef)
            if cls is None:
                return None
            methods = [s for s in cls.body.body if isinstance(s, cst.FunctionDef) and s.name.value == func.attr.value]
            return methods[0] if len(methods) == 1 else None
        if isinstance(func, cst.Attribute) and func.attr.value == "step" and len(call.args) == 1 \
                and isinstance(call.args[0].value, cst.Name):
            return self._single_function(call.args[0].value.value, call)
        return None

    def _single_function(self, name: str, at: cst.CSTNode) -> Optional[cst.FunctionDef]:
        """The one ``def name`` visible from ``at``: a closure of an enclosing function first,
        else a module-level function."""
        candidates = [f for f in self._functions.get(name, ()) if self.ctx.enclosing(f, cst.ClassDef) is None]
        closures = [f for f in candidates if self.ctx.enclosing(f, cst.FunctionDef) is not None
                    and self._inside(at, self.ctx.enclosing(f, cst.FunctionDef))]
        chosen = closures or [f for f in candidates if self.ctx.enclosing(f, cst.FunctionDef) is None]
        return chosen[0] if len(chosen) == 1 else None

    # -- loops -------------------------------------------------------------------------------
    def loop_of(self, node: cst.CSTNode) -> Optional[Loop]:
        """The innermost loop (or Lightning ``training_step``) of ``node``'s own function."""
        for ancestor in self.ctx.ancestors(node):
            if ancestor in self._by_node:
                return self._by_node[ancestor]
            if isinstance(ancestor, (cst.FunctionDef, cst.ClassDef, cst.Lambda)):
                return None
        return None

    def no_grad(self, node: cst.CSTNode) -> bool:
        """``node`` runs under ``torch.no_grad()``/``inference_mode()`` (a ``with`` or a
        decorator of its function)."""
        names = self.ctx.names
        for ancestor in self.ctx.ancestors(node):
            if isinstance(ancestor, cst.With):
                for item in ancestor.items:
                    expr = item.item.func if isinstance(item.item, cst.Call) else item.item
                    if names.resolve(expr) & _NO_GRAD:
                        return True
            if isinstance(ancestor, cst.FunctionDef):
                for decorator in ancestor.decorators:
                    expr = decorator.decorator
                    expr = expr.func if isinstance(expr, cst.Call) else expr
                    if names.resolve(expr) & _NO_GRAD:
                        return True
        return False

    # -- Lightning ---------------------------------------------------------------------------
    def lightning_class(self, cls: cst.ClassDef) -> bool:
        return any(self.ctx.names.resolve(base.value) & set(_LIGHTNING) for base in cls.bases)

    def manual_optimization(self, cls: cst.ClassDef) -> bool:
        """``self.automatic_optimization = False`` somewhere in the class (or a property
        ``automatic_optimization`` returning False)."""
        for node in _walk(cls):
            if isinstance(node, cst.Assign) and isinstance(node.value, cst.Name) and node.value.value == "False":
                for target in node.targets:
                    if isinstance(target.target, cst.Attribute) and target.target.attr.value == "automatic_optimization":
                        return True
            if isinstance(node, cst.FunctionDef) and node.name.value == "automatic_optimization":
                return any(isinstance(r, cst.Return) and isinstance(r.value, cst.Name) and r.value.value == "False"
                           for r in _walk(node))
        return False

    # -- receivers ---------------------------------------------------------------------------
    def _values(self, expr: cst.BaseExpression, at: cst.CSTNode) -> List[cst.BaseExpression]:
        """Values assigned to a local name or a ``self.`` attribute, plus the optimizer-position
        results of ``a, opt = accelerator.prepare(m, opt)`` unpackings."""
        if isinstance(expr, cst.Name):
            values = list(self.instances.values(expr.value, at))
        elif isinstance(expr, cst.Attribute) and isinstance(expr.value, cst.Name) and expr.value.value == "self":
            cls = self.ctx.enclosing(at, cst.ClassDef)
            values = [v for v in self.instances.attr_values.get(cls, {}).get(expr.attr.value, [])
                      if isinstance(v, cst.BaseExpression)] if cls is not None else []
        else:
            return []
        values.extend(self._unpacked(expr, at))
        return values

    def _unpacked(self, expr: cst.BaseExpression, at: cst.CSTNode) -> Iterator[cst.BaseExpression]:
        """``x`` bound by ``..., x, ... = f(a, b, ...)``: the argument in the same position
        (``accelerator.prepare`` returns its arguments, prepared, in order)."""
        text = self.ctx.code(expr)
        function = self.ctx.enclosing(at, cst.FunctionDef)
        for assign in self.ctx.nodes(cst.Assign):
            if function is not None and self.ctx.enclosing(assign, cst.FunctionDef) is not function \
                    and not isinstance(expr, cst.Attribute):
                continue
            value = assign.value
            if not (isinstance(value, cst.Call) and isinstance(value.func, cst.Attribute)
                    and value.func.attr.value == "prepare"):
                continue
            for target in assign.targets:
                if not isinstance(target.target, (cst.Tuple, cst.List)):
                    continue
                for index, element in enumerate(target.target.elements):
                    if self.ctx.code(element.value) == text and index < len(value.args) \
                            and value.args[index].keyword is None and not value.args[index].star:
                        yield value.args[index].value

    def _constructors(self, expr: cst.BaseExpression, at: cst.CSTNode, depth: int = 0) -> Set[str]:
        """Canonical names of the calls that made ``expr`` (through plain aliases)."""
        if depth > 4:
            return set()
        out: Set[str] = set()
        if isinstance(expr, cst.Call):
            func = expr.func
            if isinstance(func, cst.Attribute) and isinstance(func.value, cst.Name) and func.value.value == "self" \
                    and func.attr.value in ("optimizers", "lr_schedulers"):
                return {"lightning." + func.attr.value}
            out |= set(self.ctx.names.resolve(func))
            return out
        if isinstance(expr, cst.Subscript):
            return self._constructors(expr.value, at, depth + 1)
        for value in self._values(expr, at):
            if value is expr:
                continue
            out |= self._constructors(value, at, depth + 1)
        return out

    def optimizer_kind(self, expr: cst.BaseExpression, at: cst.CSTNode) -> Optional[bool]:
        """True: made by a known optimizer constructor; False: by a known scheduler (or other
        known non-optimizer); None: no constructor in view."""
        made = self._constructors(expr, at)
        if any(_is_optimizer_class(n) for n in made) or "lightning.optimizers" in made:
            return True
        if any(_is_scheduler_class(n) for n in made) or "lightning.lr_schedulers" in made:
            return False
        return None

    def is_optimizer(self, expr: cst.BaseExpression, at: cst.CSTNode) -> bool:
        kind = self.optimizer_kind(expr, at)
        if kind is not None:
            return kind
        if isinstance(expr, cst.Call):
            return False
        name = _last_name(expr)
        return bool(name and _OPTIMIZER_NAME.search(name) and not _SCHEDULER_NAME.search(name))

    def is_scheduler(self, expr: cst.BaseExpression, at: cst.CSTNode) -> bool:
        made = self._constructors(expr, at)
        if any(_is_scheduler_class(n) for n in made) or "lightning.lr_schedulers" in made:
            return True
        if any(_is_optimizer_class(n) for n in made) or "lightning.optimizers" in made:
            return False
        name = _last_name(expr)
        return bool(name and _SCHEDULER_NAME.search(name) and not _NOT_LR_SCHEDULER.search(name))

    def is_plateau(self, expr: cst.BaseExpression, at: cst.CSTNode) -> bool:
        return _PLATEAU in self._constructors(expr, at)

    def _constructor_calls(self, expr: cst.BaseExpression, at: cst.CSTNode) -> List[cst.Call]:
        return [v for v in self._values(expr, at) if isinstance(v, cst.Call)]

    def scheduler_optimizer(self, scheduler: cst.BaseExpression, at: cst.CSTNode) -> Optional[str]:
        """Source text of the optimizer a scheduler was built with (its first argument or
        ``optimizer=``), when there is exactly one constructor in view."""
        calls = [c for c in self._constructor_calls(scheduler, at)
                 if any(_is_scheduler_class(n) for n in self.ctx.names.resolve(c.func))]
        if len(calls) != 1:
            return None
        call = calls[0]
        for arg in call.args:
            if arg.keyword is not None and arg.keyword.value == "optimizer":
                return self.ctx.code(arg.value)
        if call.args and call.args[0].keyword is None and not call.args[0].star:
            return self.ctx.code(call.args[0].value)
        return None

    def parameter_owners(self, optimizer: cst.BaseExpression, at: cst.CSTNode) -> Optional[FrozenSet[str]]:
        """Source text of the modules whose ``.parameters()``/``.named_parameters()`` an
        optimizer was built from (``netD`` for ``Adam(netD.parameters())``); None when unknown."""
        calls = [c for c in self._constructor_calls(optimizer, at)
                 if any(_is_optimizer_class(n) for n in self.ctx.names.resolve(c.func))]
        if len(calls) != 1 or not calls[0].args:
            return None
        first = calls[0].args[0]
        if first.star:
            return None
        owners = set()
        for node in _walk(first.value):
            if isinstance(node, cst.Call) and isinstance(node.func, cst.Attribute) \
                    and node.func.attr.value in ("parameters", "named_parameters"):
                owners.add(self.ctx.code(node.func.value))
        return frozenset(owners) or None

    def built_per_iteration(self, optimizer: cst.BaseExpression, at: cst.CSTNode, loop: Loop) -> bool:
        """``optimizer`` is constructed inside ``loop``'s body and the parameters it holds are
        not proven to be the same tensors in every iteration: their owners are unknown
        (``SGD(params.values())``) or an owner is (re)bound by the loop or inside its body
        (``net = Net()`` before ``SGD(net.parameters())``). A fresh model's gradients start empty."""
        ctx = self.ctx
        body = loop.node.body
        start, end = ctx.order(body), ctx.end_order(body)
        if not any(start <= ctx.order(c) <= end for c in self._constructor_calls(optimizer, at)
                   if any(_is_optimizer_class(n) for n in ctx.names.resolve(c.func))):
            return False
        owners = self.parameter_owners(optimizer, at)
        if owners is None:
            return True
        roots = {o.split(".")[0] if not o.startswith("self.") else ".".join(o.split(".")[:2]) for o in owners}
        for node in (*ctx.nodes(cst.Assign), *ctx.nodes(cst.AnnAssign), *ctx.nodes(cst.For)):
            if not (start <= ctx.order(node) <= end or node is loop.node):  # ``for net in nets:``
                continue
            targets = ([t.target for t in node.targets] if isinstance(node, cst.Assign)
                       else [node.target])
            for target in targets:
                for part in _walk(target):
                    if isinstance(part, (cst.Name, cst.Attribute)) and ctx.code(part) in roots:
                        return True
        return False

    def same(self, a: cst.BaseExpression, b: cst.BaseExpression, at: cst.CSTNode) -> bool:
        """The same object, by source text through single plain aliases (``opt = self.opt``)."""
        return self._alias_text(a, at) == self._alias_text(b, at)

    def _alias_text(self, expr: cst.BaseExpression, at: cst.CSTNode) -> str:
        for _ in range(3):
            values = self._values(expr, at) if isinstance(expr, (cst.Name, cst.Attribute)) else []
            if len(values) == 1 and isinstance(values[0], (cst.Name, cst.Attribute)) \
                    and self.ctx.code(values[0]) != self.ctx.code(expr):
                expr = values[0]
            else:
                break
        return self.ctx.code(expr)

    def clears(self, event: Event, optimizer: cst.BaseExpression, at: cst.CSTNode) -> bool:
        """Whether a ``ZERO_GRAD``/``GRAD_RESET`` event clears the gradients ``optimizer``
        steps with. Precision first: unknown owners count as cleared."""
        if event.kind == GRAD_RESET:
            return True
        if event.kind != ZERO_GRAD or event.target is None:
            return False
        target = event.target
        if self.same(target, optimizer, at):
            return True
        if self.is_optimizer(target, event.node):
            # Another optimizer; the same only when nothing tells them apart.
            return self.optimizer_kind(target, event.node) is None and self.optimizer_kind(optimizer, at) is None \
                and isinstance(target, cst.Call)
        owners = self.parameter_owners(optimizer, at)
        if owners is None:
            return True
        text = self._alias_text(target, event.node)
        return any(text == o or text.startswith(o + ".") or o.startswith(text + ".") for o in owners)


def _argument_for(helper: cst.FunctionDef, call: cst.Call,
                  target: Optional[cst.BaseExpression]) -> Optional[cst.BaseExpression]:
    """A helper's parameter seen from the call site: the argument bound to it (so the helper
    ``reset(opt)`` called as ``reset(optimizer)`` clears ``optimizer``)."""
    if not isinstance(target, cst.Name):
        return target
    params = [p.name.value for p in (*helper.params.posonly_params, *helper.params.params)]
    if isinstance(call.func, cst.Attribute) and params[:1] == ["self"]:
        params = params[1:]
    if target.value not in params and target.value not in [p.name.value for p in helper.params.kwonly_params]:
        return target
    for index, arg in enumerate(call.args):
        if arg.star:
            return target
        if arg.keyword is not None and arg.keyword.value == target.value:
            return arg.value
        if arg.keyword is None and index < len(params) and params[index] == target.value:
            return arg.value
    return target


def _grad_owner(expr: cst.BaseExpression) -> Optional[cst.BaseExpression]:
    """``p`` for ``p.grad`` / ``p.grad.data``."""
    if isinstance(expr, cst.Attribute) and expr.attr.value == "data":
        expr = expr.value
    if isinstance(expr, cst.Attribute) and expr.attr.value == "grad":
        return expr.value
    return None


def _is_optimizer_class(name: str) -> bool:
    if name in _OPTIMIZER_FACTORIES:
        return True
    if name.startswith("torch.optim.lr_scheduler.") or name.startswith("torch.optim.swa_utils"):
        return False
    last = name.rsplit(".", 1)[-1]
    return any(name.startswith(p) if p.endswith(".") else name == p for p in _OPTIMIZER_CLASSES) \
        and last[:1].isupper() and last not in ("Optimizer",)


def _is_scheduler_class(name: str) -> bool:
    last = name.rsplit(".", 1)[-1]
    if name.startswith(("transformers.", "diffusers.")):
        return last.startswith("get_") and "schedul" in last
    return (name.startswith(("torch.optim.lr_scheduler.", "timm.scheduler.")) and last[:1].isupper()) \
        or name == "torch.optim.swa_utils.SWALR"
