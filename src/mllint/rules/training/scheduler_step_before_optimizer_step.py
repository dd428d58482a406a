from __future__ import annotations

from typing import Iterator, List, Set

import libcst as cst

from mllint.analysis.training_loop import OPTIMIZER_STEP, SCHEDULER_STEP, Event, TrainingLoops
from mllint.core.context import Context
from mllint.core.diagnostic import Diagnostic, Severity
from mllint.core.rule import Invalid, Rule, Valid


class SchedulerStepBeforeOptimizerStep(Rule):
    """## What it does
    Checks for a learning-rate scheduler stepped before the optimizer it drives in the same
    iteration of a training loop: `scheduler.step()` at the top of a batch loop, or at the top
    of an epoch loop whose batch loop (directly, or in a helper of the same module called from
    it) steps the optimizer later. Optimizer steps are recognised as `optimizer.step()`,
    `scaler.step(optimizer)` and accelerate-prepared optimizers; schedulers by their constructor
    (`torch.optim.lr_scheduler.*`, transformers' `get_*_schedule*`/`get_scheduler`, Lightning's
    `self.lr_schedulers()`) or, for a parameter, by their name.

    ## Why is this bad?
    Since torch 1.1 the scheduler must be stepped *after* the optimizer. A scheduler's
    constructor already applies the first value of the schedule; each `scheduler.step()` moves
    to the next one (torch `optim/lr_scheduler.py`, `LRScheduler.step`). Stepping it before the
    first `optimizer.step()` skips the first learning rate of the schedule, and torch warns
    "Detected call of `lr_scheduler.step()` before `optimizer.step()`. In PyTorch 1.1.0 and
    later, you should call them in the opposite order" (the same `LRScheduler.step` check in
    torch 1.1 to 2.13). Stepped at the top of every batch, every update runs with the
    learning rate meant for the *next* step: a warm-up never uses its first value and a
    one-cycle schedule is shifted by one.

    The rule leaves alone schedulers stepped after the optimizer (per batch or per epoch),
    schedulers stepped with a value (`ReduceLROnPlateau.step(val_loss)` after validation),
    steps guarded by a condition (`if epoch > warmup: scheduler.step()`, which first runs after
    some optimizer steps), and loops whose optimizer step is not in view.

    ## Example
    ```python
    for epoch in range(epochs):
        scheduler.step()
        for inputs, labels in loader:
            optimizer.zero_grad()
            criterion(model(inputs), labels).backward()
            optimizer.step()
    ```

    ## Use instead
    ```python
    for epoch in range(epochs):
        for inputs, labels in loader:
            optimizer.zero_grad()
            criterion(model(inputs), labels).backward()
            optimizer.step()
        scheduler.step()
    ```

    ## Fix safety
    There is no fix: moving the call changes the learning rate of every step, and where it
    belongs (after the batch loop, after validation, after the step) depends on the schedule.

    ## References
    - torch `optim/lr_scheduler.py`, `LRScheduler.step` (the "Detected call of
      `lr_scheduler.step()` before `optimizer.step()`" warning)
    - https://pytorch.org/docs/stable/optim.html#how-to-adjust-learning-rate
    """

    code = "MLL406"
    name = "scheduler-step-before-optimizer-step"
    summary = "learning-rate scheduler stepped before the optimizer in the same iteration"
    severity = Severity.WARNING
    tags = ("correctness", "torch", "training-loop")
    triggers = (("step",), ("sched",))
    # Triage: checked on the stdlib `ast` tree before libcst parses (mllint.core.triage).
    requires = (("call:step",), ("name:*sched*",))
    premise = {"torch": ">=1.1"}
    VALID = (
        # Per batch, after the optimizer.
        Valid("""
            from transformers import get_linear_schedule_with_warmup
            scheduler = get_linear_schedule_with_warmup(optimizer, 100, 1000)
            for batch in loader:
                model(**batch).loss.backward()
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            """),
        # Per epoch, after the batch loop.
        Valid("""
            from torch.optim.lr_scheduler import StepLR
            scheduler = StepLR(optimizer, step_size=1)
            for epoch in range(10):
                for x, y in loader:
                    optimizer.zero_grad()
                    criterion(model(x), y).backward()
                    optimizer.step()
                scheduler.step()
            """),
        # ReduceLROnPlateau with the validation metric.
        Valid("""
            from torch.optim import lr_scheduler
            scheduler = lr_scheduler.ReduceLROnPlateau(optimizer)
            for epoch in range(10):
                val_loss = validate(model)
                scheduler.step(val_loss)
                train(model, optimizer)
            def train(model, optimizer):
                for x in loader:
                    model(x).backward()
                    optimizer.step()
            """),
        # Warm-up scheduler stepped at the end.
        Valid("""
            for step, batch in enumerate(loader):
                loss = model(batch)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad()
                warmup_scheduler.step()
            """),
        # Accumulation branch in the right order.
        Valid("""
            for i, batch in enumerate(loader):
                scaler.scale(model(batch)).backward()
                if (i + 1) % accum == 0:
                    scaler.step(optimizer)
                    scaler.update()
                    lr_scheduler.step()
                    optimizer.zero_grad()
            """),
        # A guarded step that first runs after some optimizer steps.
        Valid("""
            for epoch in range(epochs):
                if epoch >= warmup_epochs:
                    scheduler.step()
                for x in loader:
                    model(x).backward()
                    optimizer.step()
                    optimizer.zero_grad()
            """),
        # The scheduler of another optimizer, which already stepped.
        Valid("""
            from torch import optim
            schedD = optim.lr_scheduler.StepLR(optD, 1)
            for data in loader:
                lossD(data).backward()
                optD.step()
                schedD.step()
                lossG(data).backward()
                optG.step()
            """),
        # A diffusion noise scheduler's step is a sampling step.
        Valid("""
            for t in noise_scheduler.timesteps:
                noise_scheduler.step()
                loss.backward()
                optimizer.step()
            """),
    )
    INVALID = (
        Invalid(
            """
            import torch
            optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
            scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=30)
            for epoch in range(90):
                scheduler.step()
                for images, target in train_loader:
                    loss = criterion(model(images), target)
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
            """,
            line=5,
            message="`optimizer.step()` (line 10)",
        ),
        # Per batch, scheduler first.
        Invalid(
            """
            for batch in loader:
                lr_scheduler.step()
                outputs = model(**batch)
                accelerator.backward(outputs.loss)
                optimizer.step()
                optimizer.zero_grad()
            """,
            line=2,
        ),
        # The optimizer steps in a helper called after the scheduler.
        Invalid(
            """
            def train_epoch(model, loader, optimizer):
                for x, y in loader:
                    optimizer.zero_grad()
                    loss_fn(model(x), y).backward()
                    optimizer.step()
            def main():
                for epoch in range(args.epochs):
                    scheduler.step()
                    train_epoch(model, loader, optimizer)
            """,
            line=8,
            message="train_epoch",
        ),
        # Lightning manual optimization.
        Invalid(
            """
            import lightning as L
            class Model(L.LightningModule):
                def training_step(self, batch, batch_idx):
                    opt = self.optimizers()
                    sch = self.lr_schedulers()
                    sch.step()
                    opt.zero_grad()
                    self.manual_backward(self.loss(batch))
                    opt.step()
            """,
            line=6,
        ),
    )

    def check(self, ctx: Context) -> Iterator[Diagnostic]:
        loops = ctx.get(TrainingLoops)
        reported: Set[cst.CSTNode] = set()
        for loop in loops.loops:
            for sched in loop.of(SCHEDULER_STEP):
                if sched.node in reported or not loop.direct(sched) or sched.helper is not None \
                        or sched.metric or sched.target is None:
                    continue
                if loops.is_plateau(sched.target, sched.node):
                    continue
                scheduler_text = ctx.code(sched.target)
                if any(scheduler_text not in ctx.code(guard.test) for guard in sched.guards):
                    continue  # runs only under a condition: maybe first after optimizer steps
                steps = self._matching_steps(ctx, loops, loop.of(OPTIMIZER_STEP), sched)
                if not steps or steps[0].position < sched.position:
                    continue
                reported.add(sched.node)
                yield self._report(ctx, sched, steps[0])

    @staticmethod
    def _matching_steps(ctx: Context, loops: TrainingLoops, steps: List[Event], sched: Event) -> List[Event]:
        """Steps of the scheduler's optimizer (any optimizer when its constructor is not in view)."""
        optimizer = loops.scheduler_optimizer(sched.target, sched.node)
        if optimizer is None:
            return [s for s in steps if s.target is not None]
        return [s for s in steps if s.target is not None and (
            ctx.code(s.target) == optimizer or loops.same(s.target, cst.parse_expression(optimizer), sched.node))]

    def _report(self, ctx: Context, sched: Event, step: Event) -> Diagnostic:
        row = ctx.locator.location(ctx.span(step.node)[0]).row
        where = f" in `{step.helper.name.value}()`" if step.helper is not None else ""
        scheduler = ctx.code(sched.node)
        return ctx.report(
            sched.node,
            f"`{scheduler}` runs before `{ctx.code(step.node)}` (line {row}){where} in the same iteration: "
            f"the first value of the learning-rate schedule is skipped and every update uses the rate "
            f"meant for the next one (torch warns \"Detected call of `lr_scheduler.step()` before "
            f"`optimizer.step()`\")",
            help=f"Call `{scheduler}` after the optimizer step (after the batch loop for a per-epoch schedule)",
        )
