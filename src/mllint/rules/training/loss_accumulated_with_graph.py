from __future__ import annotations

from typing import Iterator, Optional, Tuple

import libcst as cst

from mllint.analysis.dataflow import Assignments
from mllint.analysis.names import dotted
from mllint.analysis.training_loop import BACKWARD, Event, Loop, TrainingLoops
from mllint.core.context import Context
from mllint.core.diagnostic import Applicability, Diagnostic, Fix, Severity
from mllint.core.rule import Invalid, Rule, Valid

# Calls that only display or record a number.
_LOGGING_CALLS = frozenset({"print", "log", "info", "debug", "warning", "write", "add_scalar", "add_scalars",
                            "set_postfix", "set_description", "log_metrics", "log_dict", "format", "round",
                            "float"})


class LossAccumulatedWithGraph(Rule):
    """## What it does
    Checks for a running total of the training loss built from the loss *tensor*:
    `total_loss += loss` (or `total_loss = total_loss + loss`, or `+= loss * n`) in a loop where
    that same `loss` is backpropagated (`loss.backward()`, `accelerator.backward(loss)`,
    `scaler.scale(loss).backward()`), so it is known to require grad.

    ## Why is this bad?
    A tensor that requires grad carries its autograd graph. Adding it to an accumulator makes
    the accumulator a tensor whose graph references every step's loss (the PyTorch FAQ, "My
    model reports cuda runtime error(2): out of memory": "Don't accumulate history across your
    training loop"). `backward()` frees each step's saved activations, but the chain of autograd
    nodes and one loss tensor per step stay reachable until the accumulator is dropped, so
    memory grows with every step of the epoch; where the loss is summed before `backward()`
    (or with `retain_graph=True`), the activations stay too. Printing the total still works, so
    the leak goes unnoticed until memory runs out on a long run.

    The rule leaves alone: `loss.item()`, `loss.detach()`, `float(loss)` and `loss.data`; sums
    inside `torch.no_grad()`/`inference_mode()` (evaluation loops); and sums that are themselves
    backpropagated (`total = total + loss / k` then `total.backward()`: deliberate); and totals
    reset by a plain assignment earlier in the same iteration (they hold one step's history).

    ## Example
    ```python
    total_loss = 0.0
    for inputs, labels in loader:
        optimizer.zero_grad()
        loss = criterion(model(inputs), labels)
        loss.backward()
        optimizer.step()
        total_loss += loss
    print(f"epoch loss {total_loss / len(loader):.4f}")
    ```

    ## Use instead
    ```python
    total_loss = 0.0
    for inputs, labels in loader:
        optimizer.zero_grad()
        loss = criterion(model(inputs), labels)
        loss.backward()
        optimizer.step()
        total_loss += loss.item()
    print(f"epoch loss {total_loss / len(loader):.4f}")
    ```

    ## Fix safety
    The fix replaces `loss` with `loss.item()` in the sum. It is offered only when the
    accumulator starts as a Python number and is only ever logged: printed, formatted, passed
    to a logger or progress bar, or divided/multiplied into a value that is. Then the numbers
    are the same, the accumulator becomes a float instead of a tensor, and the graph is freed;
    `.item()` works because the loss is a scalar (a non-scalar loss could not be backpropagated
    without a gradient argument, and the rule requires a plain `backward()`). The fix is safe.
    When the accumulator is returned, compared, backpropagated, or converted with `.item()`
    later (which a float does not have), there is no fix: change those uses together.

    ## References
    - https://pytorch.org/docs/stable/notes/faq.html (Don't accumulate history across your training loop)
    - torch `_tensor.py`, `Tensor.item` and `Tensor.detach`
    """

    code = "MLL403"
    name = "loss-accumulated-with-graph"
    summary = "training loss tensor summed into a running total, keeping every step's graph alive"
    severity = Severity.WARNING
    tags = ("performance", "torch", "training-loop")
    triggers = (("backward",), ("+",))
    # Triage: checked on the stdlib `ast` tree before libcst parses (mllint.core.triage).
    requires = (("call:backward", "call:manual_backward"),)
    premise = {"torch": ">=0.4"}
    VALID = (
        Valid("""
            total_loss = 0.0
            for x, y in loader:
                loss = criterion(model(x), y)
                loss.backward()
                optimizer.step()
                total_loss += loss.item()
            """),
        Valid("""
            running = 0
            for x, y in loader:
                loss = criterion(model(x), y)
                loss.backward()
                running += loss.detach() * x.size(0)
            """),
        # Summed, then backpropagated: gradient accumulation on purpose.
        Valid("""
            total = 0
            for chunk in chunks:
                loss = model(chunk).loss / len(chunks)
                total = total + loss
            total.backward()
            optimizer.step()
            """),
        # The total starts again at zero in every iteration: it sums the parts of one step's
        # loss for display and is dropped before the next step, so no history piles up.
        Valid("""
            for real in loader:
                d_total = 0.0
                loss_real = bce(disc(real), ones)
                loss_real.backward()
                d_total += loss_real
                loss_fake = bce(disc(gen(noise()).detach()), zeros)
                loss_fake.backward()
                d_total += loss_fake
                opt_d.step()
                writer.add_scalar("d_loss", d_total)
            """),
        # Evaluation loop under no_grad: no graph.
        Valid("""
            import torch
            with torch.no_grad():
                for x, y in val_loader:
                    loss = criterion(model(x), y)
                    val_loss += loss
            """),
        # A loss never backpropagated in the loop (not known to require grad).
        Valid("""
            for x, y in loader:
                loss = criterion(model(x), y)
                total += loss
            """),
        # Rebound to a number before the sum.
        Valid("""
            for x, y in loader:
                loss = criterion(model(x), y)
                loss.backward()
                loss = loss.item()
                total += loss
            """),
    )
    INVALID = (
        Invalid(
            """
            total_loss = 0.0
            for x, y in loader:
                optimizer.zero_grad()
                loss = criterion(model(x), y)
                loss.backward()
                optimizer.step()
                total_loss += loss
            print(f"train loss {total_loss / len(loader):.4f}")
            """,
            line=7,
            message="`total_loss += loss`",
            fix="""
            total_loss = 0.0
            for x, y in loader:
                optimizer.zero_grad()
                loss = criterion(model(x), y)
                loss.backward()
                optimizer.step()
                total_loss += loss.item()
            print(f"train loss {total_loss / len(loader):.4f}")
            """,
            applicability=Applicability.SAFE,
        ),
        # Nested epoch/batch loops, accelerate, weighted sum, logged through a logger.
        Invalid(
            """
            for epoch in range(epochs):
                epoch_loss = 0
                for batch in loader:
                    outputs = model(**batch)
                    loss = outputs.loss
                    accelerator.backward(loss)
                    optimizer.step()
                    optimizer.zero_grad()
                    epoch_loss = epoch_loss + loss * batch["input_ids"].size(0)
                    avg = epoch_loss / len(loader)
                logger.info("epoch %d loss %.3f", epoch, avg)
            """,
            line=9,
            fix="""
            for epoch in range(epochs):
                epoch_loss = 0
                for batch in loader:
                    outputs = model(**batch)
                    loss = outputs.loss
                    accelerator.backward(loss)
                    optimizer.step()
                    optimizer.zero_grad()
                    epoch_loss = epoch_loss + loss.item() * batch["input_ids"].size(0)
                    avg = epoch_loss / len(loader)
                logger.info("epoch %d loss %.3f", epoch, avg)
            """,
            applicability=Applicability.SAFE,
        ),
        # The total is returned (a tensor the caller may .item()): reported, no fix.
        Invalid(
            """
            def train_epoch(model, loader, optimizer, scaler):
                total = 0.0
                for x, y in loader:
                    with torch.autocast("cuda"):
                        loss = loss_fn(model(x), y)
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                    optimizer.zero_grad()
                    total += loss
                return total / len(loader)
            """,
            line=10,
            message="backpropagated at line 6",
        ),
        # Later `.item()` on the total: a float has none, so no fix.
        Invalid(
            """
            running_loss = 0.0
            for i, (x, y) in enumerate(loader):
                loss = criterion(model(x), y)
                loss.backward()
                optimizer.step()
                running_loss += loss
                if i % 100 == 99:
                    print(running_loss.item() / 100)
                    running_loss = 0.0
            """,
            line=6,
        ),
    )

    def check(self, ctx: Context) -> Iterator[Diagnostic]:
        loops = ctx.get(TrainingLoops)
        flow = ctx.get(Assignments)
        for node, accumulator, added in self._sums(ctx):
            loop = loops.loop_of(node)
            if loop is None or loop.lightning or loops.no_grad(node):
                continue
            loss = _loss_operand(added)
            if loss is None:
                continue
            binding = flow.reaching(loss)
            if binding is None:
                continue
            backward = self._backward_of(ctx, flow, loop, loss, binding)
            if backward is None or self._backpropagated(ctx, loops, accumulator, node) \
                    or self._reset_each_iteration(ctx, loop, accumulator, node):
                continue
            acc = ctx.code(accumulator)
            row = ctx.locator.location(ctx.span(backward.node)[0]).row
            yield ctx.report(
                node,
                f"`{ctx.code(node)}` adds the loss tensor (backpropagated at line {row}) to `{acc}`: "
                f"`{acc}` becomes a tensor holding every step's autograd history, so memory grows "
                f"with each iteration",
                fix=self._fix(ctx, flow, node, accumulator, loss, backward),
                help=f"Add `{loss.value}.item()` (or `{loss.value}.detach()`) instead",
            )

    @staticmethod
    def _sums(ctx: Context) -> Iterator[Tuple[cst.CSTNode, cst.BaseExpression, cst.BaseExpression]]:
        """``acc += x`` and ``acc = acc + x`` as (statement, accumulator, added value)."""
        for aug in ctx.nodes(cst.AugAssign):
            if isinstance(aug.operator, cst.AddAssign) and dotted(aug.target):
                yield aug, aug.target, aug.value
        for assign in ctx.nodes(cst.Assign):
            value = assign.value
            if len(assign.targets) == 1 and isinstance(value, cst.BinaryOperation) \
                    and isinstance(value.operator, cst.Add) and dotted(assign.targets[0].target):
                target = assign.targets[0].target
                if dotted(value.left) == dotted(target):
                    yield assign, target, value.right

    @staticmethod
    def _backward_of(ctx: Context, flow: Assignments, loop: Loop, loss: cst.Name,
                     binding: cst.BaseExpression) -> Optional[Event]:
        """The plain backward of the same binding of ``loss`` in this loop's iteration."""
        for event in loop.of(BACKWARD):
            target = event.target
            if event.helper is None and isinstance(target, cst.Name) and target.value == loss.value \
                    and flow.reaching(target) is binding:
                return event
        return None

    @staticmethod
    def _reset_each_iteration(ctx: Context, loop: Loop, accumulator: cst.BaseExpression, at: cst.CSTNode) -> bool:
        """``acc = <value without acc>`` is a direct statement of the loop body before the sum:
        the total is rebuilt in every iteration, so it never holds more than one step's loss."""
        if not isinstance(accumulator, cst.Name) or not isinstance(loop.node, (cst.For, cst.While)) \
                or not isinstance(loop.node.body, cst.IndentedBlock):
            return False
        for statement in loop.node.body.body:
            if ctx.order(statement) >= ctx.order(at):
                break
            if not isinstance(statement, cst.SimpleStatementLine):
                continue
            for small in statement.body:
                if isinstance(small, cst.Assign) and any(
                        isinstance(t.target, cst.Name) and t.target.value == accumulator.value for t in small.targets) \
                        and not any(isinstance(n, cst.Name) and n.value == accumulator.value
                                    for n in _descendants(small.value)):
                    return True
        return False

    @staticmethod
    def _backpropagated(ctx: Context, loops: TrainingLoops, accumulator: cst.BaseExpression,
                        at: cst.CSTNode) -> bool:
        """The accumulator itself is backpropagated somewhere in the same function."""
        scope = ctx.enclosing(at, cst.FunctionDef)
        text = ctx.code(accumulator)
        for loop in loops.loops:
            if loop.function is not scope:
                continue
            if any(e.target is not None and ctx.code(e.target) == text for e in loop.of(BACKWARD)):
                return True
        for call in ctx.nodes(cst.Call):
            if ctx.enclosing(call, cst.FunctionDef) is scope and isinstance(call.func, cst.Attribute) \
                    and call.func.attr.value in ("backward", "manual_backward") and (
                    ctx.code(call.func.value) == text or any(ctx.code(a.value) == text for a in call.args)):
                return True
        return False

    def _fix(self, ctx: Context, flow: Assignments, node: cst.CSTNode, accumulator: cst.BaseExpression,
             loss: cst.Name, backward: Event) -> Optional[Fix]:
        call = backward.node
        plain = isinstance(call, cst.Call) and not any(a.keyword is None for a in call.args
                                                        if ctx.code(a.value) != loss.value)
        if not plain or not isinstance(accumulator, cst.Name) or not self._only_logged(ctx, accumulator, node):
            return None
        return ctx.fix(f"Add `{loss.value}.item()`", Applicability.SAFE, ctx.replace(loss, f"{loss.value}.item()"))

    def _only_logged(self, ctx: Context, accumulator: cst.Name, own: cst.CSTNode, depth: int = 0) -> bool:
        """Every other binding of ``accumulator`` in its scope is a number (and there is one),
        and every use only displays it, directly or through arithmetic into a local that is
        only displayed. ``own``: the statement that binds it here (the sum, or the derivation)."""
        scope = ctx.enclosing(own, cst.FunctionDef)
        numbers = 0
        for name in ctx.nodes(cst.Name):
            if name.value != accumulator.value or ctx.enclosing(name, cst.FunctionDef) is not scope:
                continue
            parent = ctx.parent(name)
            if isinstance(parent, cst.AssignTarget) or (isinstance(parent, cst.AugAssign) and parent.target is name):
                statement = ctx.parent(parent) if isinstance(parent, cst.AssignTarget) else parent
                if statement is own:
                    continue
                if isinstance(statement, cst.Assign) and _is_number(statement.value):
                    numbers += 1
                    continue
                return False
            if isinstance(parent, (cst.Attribute, cst.Subscript)) and parent.value is name:
                return False  # total.item(), total.backward(), total[0]
            if not self._displayed(ctx, name, own, depth):
                return False
        return numbers > 0 or depth > 0

    def _displayed(self, ctx: Context, use: cst.Name, own: cst.CSTNode, depth: int) -> bool:
        child: cst.CSTNode = use
        for ancestor in ctx.ancestors(use):
            if ancestor is own or isinstance(ancestor, cst.FormattedStringExpression):
                return True  # its own sum (``acc = acc + x``), or an f-string
            if isinstance(ancestor, cst.Call):
                func = ancestor.func
                name = func.attr.value if isinstance(func, cst.Attribute) else dotted(func)
                return name in _LOGGING_CALLS and child is not func
            if isinstance(ancestor, cst.Assign) and depth == 0 and len(ancestor.targets) == 1 \
                    and isinstance(ancestor.targets[0].target, cst.Name):
                return self._only_logged(ctx, ancestor.targets[0].target, ancestor, depth + 1)
            if not isinstance(ancestor, (cst.BinaryOperation, cst.Arg, cst.Tuple, cst.Element)):
                return False
            child = ancestor
        return False


def _is_number(expr: Optional[cst.BaseExpression]) -> bool:
    if isinstance(expr, cst.UnaryOperation):
        expr = expr.expression
    return isinstance(expr, (cst.Integer, cst.Float))


def _loss_operand(added: cst.BaseExpression) -> Optional[cst.Name]:
    """``loss`` in ``loss``, ``loss * n``, ``loss / k``, ``n * loss``."""
    if isinstance(added, cst.Name):
        return added
    if isinstance(added, cst.BinaryOperation) and isinstance(added.operator, (cst.Multiply, cst.Divide)):
        for side in (added.left, added.right):
            if isinstance(side, cst.Name):
                return side
    return None


def _descendants(node: cst.CSTNode) -> Iterator[cst.CSTNode]:
    stack = [node]
    while stack:
        current = stack.pop()
        yield current
        stack.extend(current.children)
