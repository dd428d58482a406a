"""TrainingLoops: loops, and the gradient events that run in one iteration of each."""

from __future__ import annotations

import textwrap

import libcst as cst

from mllint import Settings
from mllint.analysis.training_loop import (BACKWARD, GRAD_RESET, OPTIMIZER_STEP, SCHEDULER_STEP, ZERO_GRAD,
                                           TrainingLoops, is_accumulation_guard)
from mllint.core.context import Context


def analyse(code: str):
    code = textwrap.dedent(code)
    ctx = Context(code, "t.py", cst.parse_module(code), Settings())
    return ctx, ctx.get(TrainingLoops)


def summary(ctx, loop):
    return [(e.kind, ctx.code(e.target) if e.target is not None else None) for e in loop.events]


def test_spellings_of_each_event():
    ctx, loops = analyse("""
        import torch
        scaler = torch.cuda.amp.GradScaler()
        for batch in loader:
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            accelerator.backward(other)
            scaler.step(optimizer)
            lr_scheduler.step()
            plateau_scheduler.step(val_loss)
            for p in model.parameters():
                p.grad = None
    """)
    outer = loops.loops[0]
    assert summary(ctx, outer) == [
        (ZERO_GRAD, "optimizer"), (BACKWARD, "loss"), (BACKWARD, "other"), (OPTIMIZER_STEP, "optimizer"),
        (SCHEDULER_STEP, "lr_scheduler"), (SCHEDULER_STEP, "plateau_scheduler"), (GRAD_RESET, "p")]
    assert [e.metric for e in outer.of(SCHEDULER_STEP)] == [False, True]
    assert not outer.direct(outer.of(GRAD_RESET)[0])  # runs in the nested loop


def test_not_events():
    ctx, loops = analyse("""
        import torch.distributed.autograd as dist_autograd
        for t in range(10):
            state, reward, done, _ = env.step(action)
            dist_autograd.backward(context_id, [loss])
            noise_scheduler.step(noise_pred, t, latents)
            opt.step(context_id)
    """)
    assert loops.loops[0].events == []
    assert loops.is_scheduler(cst.parse_expression("lr_sched"), ctx.module)
    assert not loops.is_scheduler(cst.parse_expression("noise_scheduler"), ctx.module)


def test_receivers_by_constructor_and_by_name():
    ctx, loops = analyse("""
        from torch import optim
        from transformers import get_cosine_schedule_with_warmup
        model = Net()
        runner = optim.AdamW(model.parameters(), lr=1e-4)
        warm = get_cosine_schedule_with_warmup(runner, 10, 100)
        plateau = optim.lr_scheduler.ReduceLROnPlateau(runner)
        model, runner = accelerator.prepare(model, runner)
    """)
    at = ctx.module.body[-1]
    name = cst.parse_expression
    assert loops.optimizer_kind(name("runner"), at) is True
    assert loops.optimizer_kind(name("warm"), at) is False
    assert loops.is_scheduler(name("warm"), at) and loops.is_plateau(name("plateau"), at)
    assert loops.scheduler_optimizer(name("warm"), at) == "runner"
    assert loops.parameter_owners(name("runner"), at) == frozenset({"model"})
    assert loops.optimizer_kind(name("optimizer"), at) is None
    assert loops.is_optimizer(name("optimizerD"), at) and loops.is_optimizer(name("g_opt"), at)
    assert not loops.is_optimizer(name("option"), at) and not loops.is_optimizer(name("scheduler"), at)


def test_guards_and_accumulation():
    ctx, loops = analyse("""
        for i, batch in enumerate(loader):
            model(batch).loss.backward()
            if (i + 1) % accum == 0:
                optimizer.step()
                optimizer.zero_grad()
            if verbose:
                print(i)
    """)
    loop = loops.loops[0]
    step = loop.of(OPTIMIZER_STEP)[0]
    assert step.conditional and is_accumulation_guard(step.guards[0].test)
    assert not loop.of(BACKWARD)[0].conditional
    assert not is_accumulation_guard(cst.parse_expression("verbose"))
    assert is_accumulation_guard(cst.parse_expression("accelerator.sync_gradients"))


def test_helpers_one_level_deep_map_parameters_to_arguments():
    ctx, loops = analyse("""
        def clear(opt):
            opt.zero_grad()
        def step(model, batch, opt):
            model(batch).backward()
            opt.step()
            clear(opt)
        def train(model, loader, optimizer):
            for batch in loader:
                step(model, batch, opt=optimizer)
    """)
    loop = loops.loops[0]
    # step() is followed; clear() inside it is two levels deep and is not.
    assert summary(ctx, loop) == [(BACKWARD, "model(batch)"), (OPTIMIZER_STEP, "optimizer")]
    assert all(e.helper is not None and e.helper.name.value == "step" for e in loop.events)
    assert loops.loop_of(loop.events[0].node) is None  # the helper has no loop of its own


def test_closure_and_method_helpers_and_order():
    ctx, loops = analyse("""
        class Trainer:
            def _step(self, batch):
                self.optimizer.zero_grad()
                self.loss(batch).backward()
            def fit(self):
                for batch in self.loader:
                    self.scheduler.step()
                    self._step(batch)
                    self.optimizer.step()
        for i in range(steps):
            def closure():
                optimizer.zero_grad()
                loss = f()
                loss.backward()
                return loss
            optimizer.step(closure)
    """)
    fit, lbfgs = loops.loops
    assert [e.kind for e in fit.events] == [SCHEDULER_STEP, ZERO_GRAD, BACKWARD, OPTIMIZER_STEP]
    # The closure runs inside step(): its events come first.
    assert [e.kind for e in lbfgs.events] == [ZERO_GRAD, BACKWARD, OPTIMIZER_STEP]


def test_nested_loops_and_outer_links():
    ctx, loops = analyse("""
        for epoch in range(3):
            for batch in loader:
                loss.backward()
                optimizer.step()
            scheduler.step()
    """)
    outer, inner = loops.loops
    assert inner.outer is outer and outer.outer is None
    assert [e.kind for e in outer.events] == [BACKWARD, OPTIMIZER_STEP, SCHEDULER_STEP]
    assert [outer.direct(e) for e in outer.events] == [False, False, True]
    assert loops.loop_of(outer.events[0].node) is inner


def test_lightning_training_step_is_a_loop_body():
    ctx, loops = analyse("""
        import lightning.pytorch as pl
        class M(pl.LightningModule):
            def __init__(self):
                super().__init__()
                self.automatic_optimization = False
            def training_step(self, batch, batch_idx):
                opt = self.optimizers()
                self.manual_backward(self.loss(batch))
                opt.step()
        class Plain:
            def training_step(self, batch):
                loss.backward()
    """)
    (loop,) = loops.loops
    assert loop.lightning and [e.kind for e in loop.events] == [BACKWARD, OPTIMIZER_STEP]
    cls = ctx.module.body[1]
    assert loops.lightning_class(cls) and loops.manual_optimization(cls)
    assert loops.optimizer_kind(cst.parse_expression("opt"), loop.events[1].node) is True


def test_clears_matches_models_to_their_optimizers():
    ctx, loops = analyse("""
        from torch import optim
        optD = optim.Adam(netD.parameters())
        optG = optim.Adam(netG.parameters())
        for data in loader:
            netD.zero_grad()
            netD.module.zero_grad()
            model.zero_grad()
            optG.zero_grad()
    """)
    loop = loops.loops[0]
    at = loop.node
    d, g = cst.parse_expression("optD"), cst.parse_expression("optG")
    clears = [(loops.clears(e, d, at), loops.clears(e, g, at)) for e in loop.events]
    assert clears == [(True, False), (True, False), (False, False), (False, True)]
    # Unknown parameters: any model's zero_grad counts.
    assert loops.clears(loop.events[2], cst.parse_expression("optimizer"), at)


def test_no_grad_contexts():
    ctx, loops = analyse("""
        import torch
        @torch.no_grad()
        def evaluate():
            for x in loader:
                a = x
        def train():
            with torch.inference_mode():
                b = 1
            c = 2
    """)
    assigns = list(ctx.nodes(cst.Assign))
    assert [loops.no_grad(a) for a in assigns] == [True, True, False]


def test_built_per_iteration_needs_fresh_parameters():
    ctx, loops = analyse("""
        import torch
        for cfg in configs:
            net = Net(cfg)
            a = torch.optim.SGD(net.parameters(), lr=1)
            net(x).sum().backward()
            a.step()
        for _ in range(3):
            b = torch.optim.SGD(model.parameters(), lr=1)
            model(x).sum().backward()
            b.step()
        for _ in range(3):
            c = torch.optim.SGD(trainable.values(), lr=1)
            model(x).sum().backward()
            c.step()
        for m in models:
            d = torch.optim.SGD(m.parameters(), lr=1)
            m(x).sum().backward()
            d.step()
        e = torch.optim.SGD(model.parameters(), lr=1)
        for _ in range(3):
            model(x).sum().backward()
            e.step()
    """)
    found = []
    for loop in loops.loops:
        step = loop.of(OPTIMIZER_STEP)[0]
        found.append(loops.built_per_iteration(step.target, step.node, loop))
    assert found == [True, False, True, True, False]
