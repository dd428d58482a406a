from __future__ import annotations

from typing import Dict, Iterator, List, Optional, Set

import libcst as cst

from mllint.analysis.dataflow import Assignments
from mllint.core.context import Context
from mllint.core.diagnostic import Applicability, Diagnostic, Severity
from mllint.core.rule import Invalid, Rule, Valid

LIGHTNING_MODULE = "lightning.pytorch.LightningModule"
AUTOMATIC, MANUAL = "automatic", "manual"  # None: cannot tell


def _first_param(function: cst.FunctionDef) -> Optional[str]:
    params = [*function.params.posonly_params, *function.params.params]
    return params[0].name.value if params else None


def _is_false(node: Optional[cst.BaseExpression]) -> bool:
    return isinstance(node, cst.Name) and node.value == "False"


def _is_true(node: Optional[cst.BaseExpression]) -> bool:
    return isinstance(node, cst.Name) and node.value == "True"


class ManualBackwardUnderAutomaticOptimization(Rule):
    """## What it does
    Checks the backward calls of a `LightningModule` (`lightning.pytorch`, `lightning` or
    `pytorch_lightning`) against its optimization mode:

    - with automatic optimization (the default), a `loss.backward()` in `training_step`;
    - with automatic optimization, a `self.manual_backward(...)` anywhere in the module;
    - with `self.automatic_optimization = False`, a `loss.backward()` in `training_step`
      instead of `self.manual_backward(loss)`.

    The mode is read from the class and its base classes in the same file:
    `self.automatic_optimization = False` in any method, a class attribute, or an
    `automatic_optimization` property returning `False`. When it is set to anything else, set
    from outside the class, or a base class is defined in another module, the rule is silent.
    `backward` in the `backward` hook, in callbacks and in plain PyTorch loops is not looked at.

    ## Why is this bad?
    With automatic optimization, Lightning runs `training_step` inside a closure
    (lightning 2.6.6 `loops/optimization/automatic.py`, `Closure.closure`): after the step it
    zeroes the gradients (on the first batch of an accumulation window) and then calls the
    strategy's backward on the *returned* loss. A `loss.backward()` of your own therefore either
    runs a second backward through a graph that was already freed ("Trying to backward through
    the graph a second time"), or, when `training_step` returns nothing, computes gradients that
    are zeroed before the optimizer step; the model does not learn. `self.manual_backward` under
    automatic optimization raises `MisconfigurationException` ("to use manual_backward, please
    disable automatic optimization", `core/module.py`, `_verify_is_manual_optimization`).

    With `automatic_optimization = False`, `LightningModule.manual_backward` calls
    `trainer.strategy.backward`, which runs the precision plugin's `pre_backward` (the AMP
    `GradScaler.scale` of `precision="16-mixed"`, `plugins/precision/amp.py`) and the strategy's
    own backward (DeepSpeed's engine, for instance) around `loss.backward()`. A bare
    `loss.backward()` skips them: with fp16 the gradients are unscaled while the optimizer step
    still unscales them, and strategies that own the backward are bypassed. The same holds in
    pytorch-lightning 1.5 (`core/lightning.py`), so the premise is lightning >= 1.5.

    ## Example
    ```python
    class LitModel(L.LightningModule):
        def training_step(self, batch, batch_idx):
            loss = self.loss_fn(self(batch["x"]), batch["y"])
            loss.backward()
            return loss
    ```

    ## Use instead
    ```python
    class LitModel(L.LightningModule):
        def training_step(self, batch, batch_idx):
            loss = self.loss_fn(self(batch["x"]), batch["y"])
            return loss  # Lightning runs backward and the optimizer step
    ```
    or, for manual optimization, `self.automatic_optimization = False` in `__init__` and
    `self.manual_backward(loss)` with `opt = self.optimizers(); opt.zero_grad(); ...; opt.step()`.

    ## Fix safety
    Under manual optimization, `x.backward(...)` is rewritten to `self.manual_backward(x, ...)`,
    which forwards its arguments to `loss.backward` (`LightningModule.backward`); the fix is
    safe when `x` is a variable or a subscript, and only displayed for other expressions (an
    expression such as `scaler.scale(loss)` may already apply scaling of its own). Under
    automatic optimization there is no fix: whether to delete the call and return the loss, or
    to switch the module to manual optimization, is a design decision.

    ## References
    - lightning `pytorch/loops/optimization/automatic.py`, `Closure.closure` and `_make_zero_grad_fn`
    - lightning `pytorch/core/module.py`, `LightningModule.manual_backward`, `backward` and
      `_verify_is_manual_optimization`
    - lightning `pytorch/strategies/strategy.py`, `Strategy.backward`
    - https://lightning.ai/docs/pytorch/stable/model/manual_optimization.html
    """

    code = "MLL501"
    name = "manual-backward-under-automatic-optimization"
    summary = "backward call that does not match the LightningModule's optimization mode"
    severity = Severity.ERROR
    tags = ("correctness", "lightning", "training")
    triggers = (("LightningModule",), ("backward",))
    # Triage: checked on the stdlib `ast` tree before libcst parses (mllint.core.triage).
    requires = (
        ("import:lightning", "import:pytorch_lightning"),
        ("name:LightningModule",),
        ("call:backward", "call:manual_backward"),
    )
    premise = {"lightning": ">=1.5"}
    VALID = (
        # Automatic optimization: return the loss.
        Valid("""
            import lightning as L
            class Lit(L.LightningModule):
                def training_step(self, batch, batch_idx):
                    loss = self.model(**batch).loss
                    return loss
            """),
        # Manual optimization done right.
        Valid("""
            import pytorch_lightning as pl
            class GAN(pl.LightningModule):
                def __init__(self):
                    super().__init__()
                    self.automatic_optimization = False
                def training_step(self, batch, batch_idx):
                    opt = self.optimizers()
                    loss = self.compute_loss(batch)
                    opt.zero_grad()
                    self.manual_backward(loss)
                    opt.step()
            """),
        # The backward hook is the place for loss.backward().
        Valid("""
            from lightning.pytorch import LightningModule
            class Lit(LightningModule):
                def backward(self, loss, *args, **kwargs):
                    loss.backward(*args, **kwargs)
            """),
        # Not a LightningModule.
        Valid("""
            import torch.nn as nn
            import lightning as L
            class Net(nn.Module):
                def training_step(self, batch):
                    loss = self(batch).sum()
                    loss.backward()
            """),
        # A callback.
        Valid("""
            from lightning.pytorch.callbacks import Callback
            class GradProbe(Callback):
                def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                    outputs["loss"].backward()
            """),
        # The mode is set from outside the class, or from a variable: cannot tell.
        Valid("""
            import lightning as L
            class Lit(L.LightningModule):
                def __init__(self, manual):
                    super().__init__()
                    self.automatic_optimization = not manual
                def training_step(self, batch, batch_idx):
                    loss = self.step(batch)
                    loss.backward()
            """),
        # Switched off only under a condition.
        Valid("""
            import pytorch_lightning as pl
            class Quantized(pl.LightningModule):
                def __init__(self, method):
                    super().__init__()
                    if method == "QAT":
                        self.automatic_optimization = False
                def training_step(self, batch, batch_idx):
                    loss = self.loss(batch)
                    self.manual_backward(loss)
                    return loss
            """),
        # A base class from another module may switch the mode.
        Valid("""
            import lightning as L
            from .base import ManualBase
            class Lit(ManualBase, L.LightningModule):
                def training_step(self, batch, batch_idx):
                    loss = self.step(batch)
                    self.manual_backward(loss)
            """),
    )
    INVALID = (
        Invalid(
            """
            import pytorch_lightning as pl
            import torch.nn.functional as F
            class Classifier(pl.LightningModule):
                def training_step(self, batch, batch_idx):
                    x, y = batch
                    loss = F.cross_entropy(self(x), y)
                    loss.backward()
                    return loss
            """,
            line=7,
            message="second backward",
        ),
        Invalid(
            """
            import lightning as L
            class GAN(L.LightningModule):
                def __init__(self):
                    super().__init__()
                    self.automatic_optimization = False
                def training_step(self, batch, batch_idx):
                    g_opt, d_opt = self.optimizers()
                    d_loss = self.discriminator_loss(batch)
                    d_opt.zero_grad()
                    d_loss.backward(retain_graph=True)
                    d_opt.step()
            """,
            line=10,
            message="self.manual_backward(d_loss",
            fix="""
            import lightning as L
            class GAN(L.LightningModule):
                def __init__(self):
                    super().__init__()
                    self.automatic_optimization = False
                def training_step(self, batch, batch_idx):
                    g_opt, d_opt = self.optimizers()
                    d_loss = self.discriminator_loss(batch)
                    d_opt.zero_grad()
                    self.manual_backward(d_loss, retain_graph=True)
                    d_opt.step()
            """,
            applicability=Applicability.SAFE,
        ),
        Invalid(
            """
            from lightning.pytorch import LightningModule
            class Base(LightningModule):
                @property
                def automatic_optimization(self):
                    return False
            class Child(Base):
                def training_step(self, batch, batch_idx):
                    losses = self.losses(batch)
                    (losses["total"] / 2).backward()
            """,
            line=9,
            applicability=Applicability.DISPLAY_ONLY,
        ),
        Invalid(
            """
            import lightning.pytorch as pl
            class Lit(pl.LightningModule):
                def training_step(self, batch, batch_idx):
                    opt = self.optimizers()
                    loss = self.step(batch)
                    self.manual_backward(loss)
                    opt.step()
            """,
            line=6,
            message="MisconfigurationException",
        ),
    )

    def check(self, ctx: Context) -> Iterator[Diagnostic]:
        classes = {cls.name.value: cls for cls in ctx.nodes(cst.ClassDef)}
        external = any(isinstance(t.target, cst.Attribute) and t.target.attr.value == "automatic_optimization"
                       and not (isinstance(t.target.value, cst.Name) and t.target.value.value == "self")
                       for a in ctx.nodes(cst.Assign) for t in a.targets)
        for cls in classes.values():
            if not self._is_lightning(ctx, cls, classes, set()):
                continue
            mode = None if external else self._mode(ctx, cls, classes, set())
            if mode is None:
                continue
            for method in cls.body.body:
                if isinstance(method, cst.FunctionDef):
                    yield from self._check_method(ctx, cls, method, mode)

    # -- class facts ---------------------------------------------------------------------------
    def _is_lightning(self, ctx: Context, cls: cst.ClassDef, classes: Dict[str, cst.ClassDef],
                      seen: Set[str]) -> bool:
        seen.add(cls.name.value)
        for base in cls.bases:
            if LIGHTNING_MODULE in ctx.names.resolve(base.value):
                return True
            local = classes.get(base.value.value) if isinstance(base.value, cst.Name) else None
            if local is not None and local.name.value not in seen \
                    and self._is_lightning(ctx, local, classes, seen):
                return True
        return False

    def _mode(self, ctx: Context, cls: cst.ClassDef, classes: Dict[str, cst.ClassDef],
              seen: Set[str]) -> Optional[str]:
        """MANUAL/AUTOMATIC as this class (or the nearest local base that says) sets it; None
        when it is set to something else or a base class is not visible."""
        seen.add(cls.name.value)
        values = self._own_settings(ctx, cls)
        if values:
            if all(_is_false(v) for v in values):
                return MANUAL
            if all(_is_true(v) for v in values):
                return AUTOMATIC
            return None
        modes: List[Optional[str]] = []
        for base in cls.bases:
            if LIGHTNING_MODULE in ctx.names.resolve(base.value):
                modes.append(AUTOMATIC)
                continue
            local = classes.get(base.value.value) if isinstance(base.value, cst.Name) else None
            if local is None or local.name.value in seen:
                return None  # a base from elsewhere may set the mode
            modes.append(self._mode(ctx, local, classes, seen))
        if MANUAL in modes and None not in modes:
            return MANUAL  # the first base in the MRO that sets it wins; all local ones are known
        return AUTOMATIC if modes and all(m == AUTOMATIC for m in modes) else None

    @staticmethod
    def _own_settings(ctx: Context, cls: cst.ClassDef) -> List[Optional[cst.BaseExpression]]:
        """Values this class gives ``automatic_optimization`` (None for a property that does not
        simply return a literal)."""
        values: List[Optional[cst.BaseExpression]] = []
        for statement in cls.body.body:
            if isinstance(statement, cst.FunctionDef) and statement.name.value == "automatic_optimization":
                body = statement.body.body
                returned = None
                if len(body) == 1 and isinstance(body[0], cst.SimpleStatementLine) \
                        and isinstance(body[0].body[0], cst.Return):
                    returned = body[0].body[0].value
                values.append(returned)
            elif isinstance(statement, cst.SimpleStatementLine):
                for small in statement.body:
                    if isinstance(small, cst.Assign) and any(
                            isinstance(t.target, cst.Name) and t.target.value == "automatic_optimization"
                            for t in small.targets):
                        values.append(small.value)
        for assign in ctx.nodes(cst.Assign):
            for t in assign.targets:
                target = t.target
                if isinstance(target, cst.Attribute) and target.attr.value == "automatic_optimization" \
                        and isinstance(target.value, cst.Name) and target.value.value == "self" \
                        and ctx.enclosing(assign, cst.ClassDef) is cls:
                    # Only a statement of the method's own body is certain to run.
                    block = ctx.parent(ctx.parent(assign))
                    certain = isinstance(ctx.parent(block), cst.FunctionDef)
                    values.append(assign.value if certain else None)
        return values

    # -- calls ---------------------------------------------------------------------------------
    def _check_method(self, ctx: Context, cls: cst.ClassDef, method: cst.FunctionDef,
                      mode: str) -> Iterator[Diagnostic]:
        me = _first_param(method)
        if me is None:
            return
        start, end = ctx.order(method), ctx.end_order(method)
        calls = [c for c in ctx.nodes(cst.Call) if start < ctx.order(c) <= end
                 and isinstance(c.func, cst.Attribute)]
        for call in calls:
            func = call.func
            receiver = func.value
            is_self = isinstance(receiver, cst.Name) and receiver.value == me
            if func.attr.value == "manual_backward" and is_self and mode == AUTOMATIC:
                yield ctx.report(
                    call,
                    f"`{me}.manual_backward(...)` in `{cls.name.value}`, which uses automatic "
                    "optimization (`automatic_optimization` is never set to False): Lightning raises "
                    "`MisconfigurationException` (\"to use manual_backward, please disable automatic "
                    "optimization\")",
                    help="Set `self.automatic_optimization = False` in `__init__` and step the "
                         "optimizers yourself, or return the loss and let Lightning run backward",
                )
            elif func.attr.value == "backward" and method.name.value == "training_step" \
                    and self._is_loss(ctx, receiver, me):
                loss = ctx.code(receiver.with_changes(lpar=(), rpar=()))
                if mode == AUTOMATIC:
                    yield ctx.report(
                        call,
                        f"`{ctx.code(func)}()` in `training_step` of `{cls.name.value}`, which uses "
                        "automatic optimization: Lightning zeroes the gradients after `training_step` "
                        "and runs backward on the returned loss itself, so this is a second backward "
                        "through the same graph (or, if nothing is returned, gradients that are "
                        "zeroed before the optimizer step)",
                        help="Return the loss and let Lightning run backward, or set "
                             "`self.automatic_optimization = False` and use `self.manual_backward(loss)`",
                    )
                else:
                    args = "".join(", " + ctx.code(a.with_changes(comma=cst.MaybeSentinel.DEFAULT))
                                   for a in call.args)
                    replacement = f"{me}.manual_backward({loss}{args})"
                    safe = isinstance(receiver, (cst.Name, cst.Subscript))
                    yield ctx.report(
                        call,
                        f"`{ctx.code(func)}()` under manual optimization bypasses the strategy and "
                        f"precision plugin (AMP loss scaling, DeepSpeed); use `{replacement}`",
                        fix=ctx.fix(f"Use `{replacement}`",
                                    Applicability.SAFE if safe else Applicability.DISPLAY_ONLY,
                                    ctx.replace(call, replacement)),
                    )

    @staticmethod
    def _is_loss(ctx: Context, receiver: cst.BaseExpression, me: str) -> bool:
        """A tensor computed in the step: not ``self``/``self.x`` (the module, the trainer's
        strategy), and for a variable, one assigned in the method to something that is not an
        instance of an imported class (``Accelerator()``)."""
        root = receiver
        while isinstance(root, (cst.Attribute, cst.Subscript)):
            root = root.value
        if isinstance(root, cst.Name) and root.value == me:
            return False
        if isinstance(receiver, cst.Name):
            assignments = ctx.get(Assignments)
            if not assignments.is_bound_locally(receiver):
                return False
            value = assignments.reaching(receiver)
            if isinstance(value, cst.Call):
                names = ctx.names.resolve(value.func)
                if any(n.rsplit(".", 1)[-1][:1].isupper() for n in names):
                    return False
        return True
