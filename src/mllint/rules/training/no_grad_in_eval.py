from __future__ import annotations

from typing import Iterator, Optional

import libcst as cst

from mllint.analysis.modes import EVAL, Modes, row
from mllint.core.context import Context
from mllint.core.diagnostic import Applicability, Diagnostic, Fix, Severity
from mllint.core.rule import Invalid, Rule, Valid
from mllint.rules.training.evaluation_in_train_mode import model_call

# What shows the loop needs gradients (saliency maps, adversarial evaluation, ...).
_GRAD_WORDS = frozenset({"backward", "manual_backward", "grad", "requires_grad", "requires_grad_",
                         "retain_grad", "enable_grad", "set_grad_enabled"})


class NoGradInEval(Rule):
    """## What it does
    Checks for an evaluation loop (a loop over a validation/test loader, or a loop in a function
    named as evaluation) that calls a model after `model.eval()` without
    `torch.no_grad()`/`torch.inference_mode()` around it.

    A context counts anywhere around the loop: a `with` block, a decorator
    (`@torch.no_grad()`, `@torch.inference_mode()`), an earlier `torch.set_grad_enabled(False)`
    statement, a helper whose every call in the module is inside such a context, or a Lightning
    evaluation hook (Lightning runs them under `torch.inference_mode`/`no_grad`). Loops that use
    gradients (`.backward()`, `torch.autograd.grad`, `requires_grad`, `.grad`) and
    `model.generate()` calls (already `@torch.no_grad()`) are left alone, as are contexts decided
    at run time (`torch.set_grad_enabled(phase == "train")`) and inputs wrapped in
    `Variable(x, volatile=True)` (torch < 0.4's no-grad). `model.train(False)` counts as
    `model.eval()`.

    ## Why is this bad?
    It is not a correctness bug: `model.eval()` changes dropout and batch norm, not autograd.
    Without `no_grad`, every forward pass records the autograd graph and keeps its activations
    alive until the outputs are freed, so evaluation uses several times the memory and is slower,
    and larger evaluation batches run out of memory. `torch.no_grad` and `torch.inference_mode`
    (torch `autograd/grad_mode.py`) turn recording off. Lightning wraps its evaluation loops in
    them (`loops/utilities.py`, `_no_grad_context`, around `_EvaluationLoop.run`, lightning 2.6.6),
    a plain loop must do it itself.

    ## Example
    ```python
    def evaluate(model, loader):
        model.eval()
        for x, y in loader:
            total += loss_fn(model(x), y).item()
    ```

    ## Use instead
    ```python
    def evaluate(model, loader):
        model.eval()
        with torch.no_grad():
            for x, y in loader:
                total += loss_fn(model(x), y).item()
    ```

    ## Fix safety
    The fix wraps the loop in `with torch.no_grad():` and is safe: the loop takes no gradients
    (the rule checks for backward passes, `autograd.grad`, `requires_grad` and `.grad`), so only
    the recorded graphs go away. It is offered when `torch` is imported as `torch` and the loop
    holds no multi-line string or `yield`.

    ## References
    - torch `autograd/grad_mode.py`, `no_grad`, `inference_mode`
    - lightning `pytorch/loops/utilities.py`, `_no_grad_context`
    - https://pytorch.org/tutorials/beginner/basics/optimization_tutorial.html
    """

    code = "MLL409"
    name = "no-grad-in-eval"
    summary = "evaluation loop after `model.eval()` without `torch.no_grad()`"
    severity = Severity.INFO
    default_enabled = False
    tags = ("performance", "torch", "training")
    triggers = (("eval", "train"),)  # `model.train(False)` is `eval()`
    # Triage: checked on the stdlib `ast` tree before libcst parses (mllint.core.triage).
    requires = (("call:eval", "call:train"),)
    premise = {"torch": ">=1.0"}
    VALID = (
        Valid("""
            import torch
            model.eval()
            with torch.no_grad():
                for x, y in val_loader:
                    model(x)
            """),
        # Decorated evaluation function.
        Valid("""
            import torch
            @torch.inference_mode()
            def evaluate(model, loader):
                model.eval()
                for x, y in loader:
                    model(x)
            """),
        # `torch` bound only by a star import that re-exports it: still torch.no_grad.
        Valid("""
            from helpers import *
            def evaluate(model, loader):
                model.eval()
                with torch.no_grad():
                    for x, y in loader:
                        model(x)
            """),
        # A helper only ever called under no_grad.
        Valid("""
            import torch
            def evaluate(model, loader):
                model.eval()
                for x, y in loader:
                    model(x)
            with torch.no_grad():
                evaluate(model, val_loader)
            """),
        # Runtime-decided grad mode (the transfer-learning tutorial's loop).
        Valid("""
            import torch
            for phase in ["train", "val"]:
                model.eval()
                for x, y in dataloaders["val"]:
                    with torch.set_grad_enabled(phase == "train"):
                        model(x)
            """),
        # The loop needs gradients (saliency maps).
        Valid("""
            model.eval()
            for x, y in test_loader:
                x.requires_grad_(True)
                model(x).sum().backward()
            """),
        # generate() is already no_grad.
        Valid("""
            model.eval()
            for batch in eval_dataloader:
                model.generate(**batch)
            """),
        # Lightning wraps validation_step.
        Valid("""
            import lightning as L
            class Lit(L.LightningModule):
                def validation_step(self, batch, batch_idx):
                    self.model.eval()
                    for x in batch:
                        self.model(x)
            """),
        # No eval() evidence.
        Valid("""
            for x, y in val_loader:
                model(x)
            """),
        # Pre-0.4 torch: a volatile input records no graph.
        Valid("""
            from torch.autograd import Variable
            def test(model, loader):
                model.eval()
                for data, target in loader:
                    data, target = Variable(data, volatile=True), Variable(target)
                    output = model(data)
            """),
        Valid("""
            import torch
            model.eval()
            for x, _ in test_loader:
                model(torch.autograd.Variable(x.cuda(), volatile=True))
            """),
        # Grads turned off for the whole script.
        Valid("""
            import torch
            torch.set_grad_enabled(False)
            model.eval()
            for x, y in test_loader:
                model(x)
            """),
    )
    INVALID = (
        Invalid(
            """
            import torch

            def evaluate(model, loader):
                model.eval()
                total = 0.0
                for x, y in loader:
                    total += loss_fn(model(x), y).item()
                return total
            """,
            line=7,
            message="`model(...)` runs in an evaluation loop after `model.eval()` (line 4)",
            fix="""
            import torch

            def evaluate(model, loader):
                model.eval()
                total = 0.0
                with torch.no_grad():
                    for x, y in loader:
                        total += loss_fn(model(x), y).item()
                return total
            """,
            applicability=Applicability.SAFE,
        ),
        # Script code, nested loop: the outermost evaluation loop is wrapped.
        Invalid(
            """
            import torch
            model.eval()
            for x, y in test_loader:
                for chunk in x.split(8):
                    preds.append(model(chunk).argmax(-1))
            print("done")
            """,
            line=5,
            fix="""
            import torch
            model.eval()
            with torch.no_grad():
                for x, y in test_loader:
                    for chunk in x.split(8):
                        preds.append(model(chunk).argmax(-1))
            print("done")
            """,
            applicability=Applicability.SAFE,
        ),
        # `train(False)` is `eval()`; a non-volatile Variable records the graph.
        Invalid(
            """
            from torch.autograd import Variable
            model.train(False)
            for i, (x, y) in enumerate(validation_loader):
                out = model(Variable(x, volatile=False))
            """,
            line=4,
            message="after `model.train(False)` (line 2)",
        ),
        # Without `import torch` there is no fix.
        Invalid(
            """
            from torch import nn
            net.eval()
            for batch in valid_dl:
                out = net.forward(batch)
            """,
            line=4,
            message="`net.forward(...)`",
        ),
    )

    def check(self, ctx: Context) -> Iterator[Diagnostic]:
        modes = ctx.get(Modes)
        for loop in ctx.nodes(cst.For):
            if not self._eval_loop(modes, loop) or self._outer_eval_loop(ctx, modes, loop) \
                    or modes.framework_managed(loop) or self._uses_grad(modes, loop):
                continue
            for call in modes.calls_within(loop.body):
                found = model_call(call)
                if found is None or found[1] == "generate" \
                        or ctx.enclosing(call, cst.FunctionDef) is not ctx.enclosing(loop, cst.FunctionDef):
                    continue
                if modes.grad_disabled(call) is not False or modes.volatile_input(call):
                    continue
                mode = modes.mode_at(found[0], call)
                if mode.state != EVAL or not mode.explicit or mode.node is None:
                    continue
                yield ctx.report(
                    call,
                    f"`{ctx.code(call.func)}(...)` runs in an evaluation loop after "
                    f"`{ctx.code(mode.node)}` (line {row(ctx, mode.node)}) without `torch.no_grad()`: "
                    f"autograd records every forward pass and keeps its activations",
                    fix=self._fix(ctx, loop),
                )
                break

    @staticmethod
    def _eval_loop(modes: Modes, loop: cst.For) -> bool:
        if modes.eval_loop(loop):
            return True
        function = modes.ctx.enclosing(loop, cst.FunctionDef)
        return modes.eval_function(function)

    def _outer_eval_loop(self, ctx: Context, modes: Modes, loop: cst.For) -> bool:
        function = ctx.enclosing(loop, cst.FunctionDef)
        for ancestor in ctx.ancestors(loop):
            if ancestor is function:
                return False
            if isinstance(ancestor, cst.For) and self._eval_loop(modes, ancestor):
                return True
        return False

    @staticmethod
    def _uses_grad(modes: Modes, loop: cst.For) -> bool:
        if modes.trains(loop):
            return True
        for node in modes.ctx.nodes(cst.Attribute):
            if node.attr.value in _GRAD_WORDS and modes.ctx.order(loop) <= modes.ctx.order(node) \
                    <= modes.ctx.end_order(loop):
                return True
        return False

    @staticmethod
    def _fix(ctx: Context, loop: cst.For) -> Optional[Fix]:
        if ctx.names.bindings.get("torch") != {"torch"}:
            return None
        for kind in (cst.Yield, cst.FormattedString, cst.SimpleString):
            for node in ctx.nodes(kind):
                if ctx.order(loop) <= ctx.order(node) <= ctx.end_order(loop) and (
                        kind is cst.Yield or "\n" in ctx.code(node)):
                    return None
        start, end = ctx.span(loop)
        line = ctx.locator.line(ctx.locator.location(start).row)
        indent = line[: len(line) - len(line.lstrip())]
        unit = "\t" if indent.startswith("\t") else "    "
        newline = ctx.locator.newline()
        body = ctx.source[start:end].split(newline)
        text = newline.join([body[0]] + [unit + part if part.strip() else part for part in body[1:]])
        return ctx.fix("Wrap the loop in `with torch.no_grad():`", Applicability.SAFE,
                       ctx.edit(start, end, f"with torch.no_grad():{newline}{indent}{unit}{text}"))
