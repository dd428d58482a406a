from __future__ import annotations

from typing import Iterator, Optional, Set

import libcst as cst

from mllint.analysis.names import dotted
from mllint.analysis.training_loop import (BACKWARD, GRAD_RESET, OPTIMIZER_STEP, ZERO_GRAD, Event, Loop,
                                           TrainingLoops, is_accumulation_guard)
from mllint.core.context import Context
from mllint.core.diagnostic import Applicability, Diagnostic, Fix, Severity
from mllint.core.rule import Invalid, Rule, Valid

# Calls that take the optimizer without clearing its gradients.
_HARMLESS_CALLS = frozenset({"step", "unscale_", "update", "optimizer_step", "clip_grad_norm_",
                             "clip_grad_value_", "print", "len", "str", "repr", "isinstance", "getattr",
                             "hasattr", "type", "id"})


class MissingZeroGrad(Rule):
    """## What it does
    Checks for a training loop that runs `backward()` and steps an optimizer in every iteration
    (or in a gradient-accumulation branch) but never clears that optimizer's gradients in the
    loop: no `optimizer.zero_grad()`, no `model.zero_grad()` of the model whose parameters it
    holds, and no `p.grad = None` anywhere in the loop body, in nested blocks, in nested loops,
    or in helper functions of the same module called from the loop (one level deep, e.g.
    `train_step(model, batch, optimizer)` or an LBFGS `closure`). Backward calls are recognised
    in every spelling: `loss.backward()`, `scaler.scale(loss).backward()`,
    `accelerator.backward(loss)`, `self.manual_backward(loss)`; optimizer steps as
    `optimizer.step()`, `scaler.step(optimizer)` and `xm.optimizer_step(optimizer)`. A
    Lightning `training_step` under manual optimization (`self.automatic_optimization = False`)
    counts as a loop body, since Lightning calls it once per batch.

    ## Why is this bad?
    `backward()` *adds* each parameter's gradient into `.grad`; nothing resets it except
    `Optimizer.zero_grad()` / `Module.zero_grad()` (torch `optim/optimizer.py`,
    `Optimizer.zero_grad`, which sets `.grad` to None by default since torch 2.0). Without it,
    step *n* uses the sum of the gradients of batches 1..n: the effective learning rate grows
    with every step, momentum-based optimizers receive a running sum instead of a fresh
    gradient, and training diverges or stalls. With gradient accumulation the clearing belongs
    in the accumulation branch, right after the step.

    The rule stays silent when it cannot tell: a `zero_grad()` anywhere in the loop (before or
    after the step, under any condition) counts; so does `zero_grad()` on a model when the
    optimizer's parameters are not known; loops that hand the optimizer to a function of
    another module are left alone, as are Lightning modules under automatic optimization and
    Hugging Face `Trainer` code (neither has a hand-written step), and an optimizer built inside
    the loop over parameters that may be new each iteration (a fresh model per configuration
    starts with no gradients).

    ## Example
    ```python
    for epoch in range(epochs):
        for inputs, labels in loader:
            loss = criterion(model(inputs), labels)
            loss.backward()
            optimizer.step()
    ```

    ## Use instead
    ```python
    for epoch in range(epochs):
        for inputs, labels in loader:
            loss = criterion(model(inputs), labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    ```

    ## Fix safety
    The fix inserts `<optimizer>.zero_grad()` right after the `step()` statement, at the same
    indentation: inside an accumulation branch it clears once per window, in a plain loop once
    per step, and the step itself still sees the gradients it saw before. It keeps the meaning
    of the program apart from the bug, so it is safe, unless some code in the loop reads
    `.grad` (gradient logging, gradient-norm statistics): after the inserted call `.grad` is
    None until the next `backward()`, so then the fix is unsafe. It is offered only when the
    step is a statement of its own on a named optimizer.

    ## References
    - torch `optim/optimizer.py`, `Optimizer.zero_grad` (torch 2.13.0)
    - https://pytorch.org/tutorials/beginner/basics/optimization_tutorial.html
    - dslinter `gradient-clear-pytorch` (W5517), which checks only a `for` body's direct statements
    """

    code = "MLL402"
    name = "missing-zero-grad"
    summary = "optimizer stepped in a loop whose gradients are never cleared"
    severity = Severity.ERROR
    tags = ("correctness", "torch", "training-loop")
    triggers = (("backward",), ("step",))
    # Triage: checked on the stdlib `ast` tree before libcst parses (mllint.core.triage).
    requires = (("call:backward", "call:manual_backward"), ("call:step", "call:optimizer_step"))
    premise = {"torch": ">=1.0"}
    VALID = (
        # zero_grad at the end of the loop body.
        Valid("""
            import torch
            optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
            for x, y in loader:
                loss = criterion(model(x), y)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad()
            """),
        # Gradient accumulation: cleared in the accumulation branch.
        Valid("""
            for step, batch in enumerate(loader):
                loss = model(**batch).loss / accum
                loss.backward()
                if (step + 1) % accum == 0:
                    optimizer.step()
                    optimizer.zero_grad()
            """),
        # model.zero_grad() on the model whose parameters the optimizer holds.
        Valid("""
            from torch import optim
            optimizerD = optim.Adam(netD.parameters())
            for data in loader:
                netD.zero_grad()
                errD = criterion(netD(data), label)
                errD.backward()
                optimizerD.step()
            """),
        # Gradients cleared by hand.
        Valid("""
            for x, y in loader:
                loss_fn(model(x), y).backward()
                optimizer.step()
                for p in model.parameters():
                    p.grad = None
            """),
        # zero_grad in a helper one level deep.
        Valid("""
            def reset(opt):
                opt.zero_grad(set_to_none=True)
            def train(model, loader, optimizer):
                for x, y in loader:
                    reset(optimizer)
                    loss = model(x, y)
                    loss.backward()
                    optimizer.step()
            """),
        # The whole step in a helper that clears.
        Valid("""
            def train_step(model, batch, opt):
                opt.zero_grad()
                loss = model(batch)
                loss.backward()
                opt.step()
            for batch in loader:
                train_step(model, batch, optimizer)
            """),
        # LBFGS closure passed to step().
        Valid("""
            optimizer = optim.LBFGS(seq.parameters(), lr=0.8)
            for i in range(steps):
                def closure():
                    optimizer.zero_grad()
                    loss = criterion(seq(inp), target)
                    loss.backward()
                    return loss
                optimizer.step(closure)
            """),
        # Micro-batches in an inner loop, one step and one clear per outer iteration.
        Valid("""
            for step in range(steps):
                optimizer.zero_grad()
                for micro in chunks(batch):
                    model(micro).loss.backward()
                optimizer.step()
            """),
        # Lightning automatic optimization: no hand-written loop.
        Valid("""
            import lightning as L
            class Model(L.LightningModule):
                def training_step(self, batch, batch_idx):
                    return self.model(**batch).loss
            """),
        # Lightning manual optimization that clears.
        Valid("""
            import lightning.pytorch as pl
            class GAN(pl.LightningModule):
                def __init__(self):
                    super().__init__()
                    self.automatic_optimization = False
                def training_step(self, batch, batch_idx):
                    opt = self.optimizers()
                    opt.zero_grad()
                    self.manual_backward(self.loss(batch))
                    opt.step()
            """),
        # An optimizer handed to a function of another module, which may clear it.
        Valid("""
            from utils import clear_gradients
            for x in loader:
                model(x).backward()
                optimizer.step()
                clear_gradients(optimizer)
            """),
        # torch.distributed.autograd: gradients live in the context, not in .grad.
        Valid("""
            import torch.distributed.autograd as dist_autograd
            for data, target in loader:
                with dist_autograd.context() as context_id:
                    loss = loss_fn(model(data), target)
                    dist_autograd.backward(context_id, [loss])
                    opt.step(context_id)
            """),
        # Every iteration builds a new network and a new optimizer over it (a parameter-update
        # smoke test per configuration): no gradient survives into the next iteration.
        Valid("""
            import torch
            for cfg in configs:
                net = Head(**cfg)
                params = [p for p in net.parameters() if p.requires_grad]
                sgd = torch.optim.SGD(params, lr=1.0)
                net(sample(cfg)).mean().backward()
                sgd.step()
            """),
        # One model per iteration of the loop itself.
        Valid("""
            import torch
            for net in ensemble:
                opt = torch.optim.Adam(net.parameters())
                loss_fn(net(x), y).backward()
                opt.step()
            """),
        # A gym environment's step is not an optimizer step.
        Valid("""
            for t in range(1000):
                state, reward, done, _ = env.step(action)
                loss.backward()
            """),
    )
    INVALID = (
        Invalid(
            """
            import torch
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
            for epoch in range(10):
                for x, y in loader:
                    loss = criterion(model(x), y)
                    loss.backward()
                    optimizer.step()
            """,
            line=7,
            message="`optimizer.step()`",
            fix="""
            import torch
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
            for epoch in range(10):
                for x, y in loader:
                    loss = criterion(model(x), y)
                    loss.backward()
                    optimizer.step()
                    optimizer.zero_grad()
            """,
            applicability=Applicability.SAFE,
        ),
        # Cleared only once per epoch, in the enclosing loop.
        Invalid(
            """
            for epoch in range(10):
                optimizer.zero_grad()
                for x, y in loader:
                    criterion(model(x), y).backward()
                    optimizer.step()
            """,
            line=5,
            message="only in the enclosing loop (line 2)",
        ),
        # Accumulation branch without clearing, AMP GradScaler.
        Invalid(
            """
            scaler = torch.cuda.amp.GradScaler()
            for i, batch in enumerate(loader):
                with torch.autocast("cuda"):
                    loss = model(**batch).loss / accum_steps
                scaler.scale(loss).backward()
                if (i + 1) % accum_steps == 0:
                    scaler.step(optimizer)
                    scaler.update()
            """,
            line=7,
            message="accumulation branch",
            fix="""
            scaler = torch.cuda.amp.GradScaler()
            for i, batch in enumerate(loader):
                with torch.autocast("cuda"):
                    loss = model(**batch).loss / accum_steps
                scaler.scale(loss).backward()
                if (i + 1) % accum_steps == 0:
                    scaler.step(optimizer)
                    optimizer.zero_grad()
                    scaler.update()
            """,
            applicability=Applicability.SAFE,
        ),
        # accelerate, optimizer through prepare().
        Invalid(
            """
            from accelerate import Accelerator
            accelerator = Accelerator()
            model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
            for batch in loader:
                outputs = model(**batch)
                accelerator.backward(outputs.loss)
                optimizer.step()
                lr_scheduler.step()
            """,
            line=7,
        ),
        # The other model's zero_grad does not clear this optimizer's parameters.
        Invalid(
            """
            from torch import optim
            optimizerD = optim.Adam(netD.parameters())
            optimizerG = optim.Adam(netG.parameters())
            for data in loader:
                netD.zero_grad()
                errD = netD(data).mean()
                errD.backward()
                optimizerD.step()
                errG = netD(netG(noise)).mean()
                errG.backward()
                optimizerG.step()
            """,
            line=11,
            message="`optimizerG.step()`",
        ),
        # The step in a helper called from the loop; .grad is read, so the fix is unsafe.
        Invalid(
            """
            def train_step(model, batch, optimizer):
                loss = model(batch)
                loss.backward()
                norm = sum(p.grad.norm() for p in model.parameters())
                optimizer.step()
                return norm
            def train(model, loader, optimizer):
                for batch in loader:
                    train_step(model, batch, optimizer)
            """,
            line=5,
            message="helper",
            fix="""
            def train_step(model, batch, optimizer):
                loss = model(batch)
                loss.backward()
                norm = sum(p.grad.norm() for p in model.parameters())
                optimizer.step()
                optimizer.zero_grad()
                return norm
            def train(model, loader, optimizer):
                for batch in loader:
                    train_step(model, batch, optimizer)
            """,
            applicability=Applicability.UNSAFE,
        ),
        # A new optimizer each iteration, but always over the same model's parameters: the
        # model's .grad keeps accumulating.
        Invalid(
            """
            import torch
            for _ in range(5):
                opt = torch.optim.SGD(model.parameters(), lr=0.01)
                model(torch.randn(4, 3)).sum().backward()
                opt.step()
            """,
            line=5,
        ),
        # Lightning manual optimization without clearing.
        Invalid(
            """
            import pytorch_lightning as pl
            class Model(pl.LightningModule):
                def __init__(self):
                    super().__init__()
                    self.automatic_optimization = False
                def training_step(self, batch, batch_idx):
                    opt = self.optimizers()
                    loss = self.compute_loss(batch)
                    self.manual_backward(loss)
                    opt.step()
            """,
            line=10,
            message="training_step",
        ),
    )

    def check(self, ctx: Context) -> Iterator[Diagnostic]:
        loops = ctx.get(TrainingLoops)
        reported: Set[cst.CSTNode] = set()
        for loop in loops.loops:
            if loop.lightning:
                cls = ctx.enclosing(loop.node, cst.ClassDef)
                if cls is None or not loops.manual_optimization(cls):
                    continue
            backwards = loop.of(BACKWARD)
            if not backwards:
                continue
            for step in loop.of(OPTIMIZER_STEP):
                if step.node in reported or not loop.direct(step) or step.target is None:
                    continue
                optimizer = step.target
                if any(loops.clears(e, optimizer, step.node) for e in loop.events
                       if e.kind in (ZERO_GRAD, GRAD_RESET)):
                    continue
                if self._handed_away(ctx, loops, loop, optimizer, step.node):
                    continue
                if not loop.lightning and loops.built_per_iteration(optimizer, step.node, loop):
                    continue
                reported.add(step.node)
                yield self._report(ctx, loops, loop, step, backwards[0])

    @staticmethod
    def _handed_away(ctx: Context, loops: TrainingLoops, loop: Loop, optimizer: cst.BaseExpression,
                     at: cst.CSTNode) -> bool:
        """The loop passes the optimizer to a function this module does not define."""
        body = loop.node if isinstance(loop.node, cst.FunctionDef) else loop.node.body
        start, end = ctx.order(body), ctx.end_order(body)
        for call in ctx.nodes(cst.Call):
            if not start <= ctx.order(call) <= end or loops.helper(call) is not None:
                continue
            name = call.func.attr.value if isinstance(call.func, cst.Attribute) else dotted(call.func)
            if name in _HARMLESS_CALLS:
                continue
            if any(isinstance(a.value, (cst.Name, cst.Attribute)) and loops.same(a.value, optimizer, at)
                   for a in call.args):
                return True
        return False

    def _report(self, ctx: Context, loops: TrainingLoops, loop: Loop, step: Event, backward: Event) -> Diagnostic:
        optimizer = ctx.code(step.target)
        call = ctx.code(step.node)
        loss = ctx.code(backward.target) if backward.target is not None else "loss"
        if loop.lightning:
            where = "`training_step` (Lightning calls it once per batch under manual optimization)"
        elif step.helper is not None:
            where = f"helper `{step.helper.name.value}()`, which runs in every iteration of the loop at line {self._row(ctx, loop.node)},"
        else:
            where = "this loop"
        branch = (" (in a gradient-accumulation branch)" if any(is_accumulation_guard(g.test) for g in step.guards)
                  else " (in a conditional branch)" if step.guards else "")
        outer = self._outer_clear(ctx, loops, loop, step.target, step.node)
        cleared = (f"its gradients are cleared only in the enclosing loop (line {outer})" if outer
                   else "nothing in the loop clears its gradients")
        return ctx.report(
            step.node,
            f"`{call}` runs in {where}{branch} after `{loss}` is backpropagated, but {cleared}: "
            f"`backward()` adds into `.grad`, so every step uses the sum of all gradients so far",
            fix=self._fix(ctx, loops, loop, step, optimizer),
            help=f"Call `{optimizer}.zero_grad()` once per step, e.g. right after `{call}`",
        )

    @staticmethod
    def _row(ctx: Context, node: cst.CSTNode) -> int:
        return ctx.locator.location(ctx.span(node)[0]).row

    def _outer_clear(self, ctx: Context, loops: TrainingLoops, loop: Loop, optimizer: cst.BaseExpression,
                     at: cst.CSTNode) -> Optional[int]:
        outer = loop.outer
        while outer is not None:
            for event in outer.events:
                if event.kind in (ZERO_GRAD, GRAD_RESET) and loops.clears(event, optimizer, at):
                    return self._row(ctx, event.node)
            outer = outer.outer
        return None

    @staticmethod
    def _fix(ctx: Context, loops: TrainingLoops, loop: Loop, step: Event, optimizer: str) -> Optional[Fix]:
        expr = ctx.parent(step.node)
        line = ctx.parent(expr) if expr is not None else None
        if not (isinstance(expr, cst.Expr) and isinstance(line, cst.SimpleStatementLine) and len(line.body) == 1
                and dotted(step.target) is not None):
            return None
        # Code that reads `.grad` would see None after the inserted call.
        scopes = [loop.node] + [e.helper for e in loop.events if e.helper is not None]
        reads_grad = any(isinstance(node, cst.Attribute) and node.attr.value == "grad"
                         and not isinstance(ctx.parent(node), cst.AssignTarget)
                         and any(ctx.order(s) <= ctx.order(node) <= ctx.end_order(s) for s in scopes)
                         for node in ctx.nodes(cst.Attribute))
        return ctx.fix(f"Insert `{optimizer}.zero_grad()` after the step",
                       Applicability.UNSAFE if reads_grad else Applicability.SAFE,
                       ctx.insert_statement_after(line, f"{optimizer}.zero_grad()"))
