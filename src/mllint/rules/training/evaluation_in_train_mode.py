from __future__ import annotations

from typing import Iterator, Optional, Set, Tuple

import libcst as cst

from mllint.analysis.modes import INHERIT, TRAIN, Mode, Modes, lookup, row
from mllint.core.context import Context
from mllint.core.diagnostic import Diagnostic, Severity
from mllint.core.rule import Invalid, Rule, Valid

# Words on the `.train()` line that say train mode is wanted at evaluation (MC dropout).
_INTENTIONAL = ("dropout", "monte", "mc ", "mc-", "mcd", "uncertainty")
def _receiver(expr: cst.BaseExpression) -> Optional[str]:
    """A model receiver: a name or an attribute of `self` (not a method of something)."""
    if isinstance(expr, cst.Name):
        return expr.value
    if isinstance(expr, cst.Attribute) and isinstance(expr.value, cst.Name) and expr.value.value == "self":
        return f"self.{expr.attr.value}"
    return None


def model_call(call: cst.Call) -> Optional[Tuple[str, str]]:
    """``model(x)`` -> ("model", "call"); ``model.forward(x)`` / ``self.model.generate(...)``."""
    func = call.func
    if isinstance(func, cst.Attribute) and func.attr.value in ("forward", "generate"):
        key = _receiver(func.value)
        return None if key is None else (key, func.attr.value)
    key = _receiver(func)
    return None if key is None else (key, "call")


class EvaluationInTrainMode(Rule):
    """## What it does
    Checks for evaluation code that runs a model while it is still in training mode: a
    validation/test loop (a loop over `val_loader`, `test_loader`, `dataloaders["val"]`, ... with
    no backward pass), a function named as evaluation (`evaluate`, `validate`, `test`, ...), a
    call of such a function of the same module that does not call `.eval()` itself, or
    `model.generate()`, reached on a path where the last mode change of that model was
    `model.train()` (directly, or in a helper one level deep such as `train(model, loader)`) or
    where the model was built in the same module, trained there and never switched to `eval()`.

    The mode is followed per function through nested blocks: branches that disagree, a model
    passed to a function mllint cannot see, or a model re-bound to something unknown make it
    unknown, and the rule stays silent. It is silent inside Lightning evaluation hooks
    (`validation_step`, `test_step`, `predict_step`, `on_validation_*`, ...) and the evaluation
    methods of Hugging Face `Trainer` subclasses, whose frameworks switch modes themselves, and
    when the `.train()` line's comment says train mode is intended (MC dropout).

    It is also silent when the mode provably makes no difference: the model is an instance of a
    class defined in the module (or an `nn.Sequential` built there) whose layers, submodule
    classes included, are all mode-independent (`Conv2d`, `Linear`, `MaxPool2d`, `ReLU`, ...),
    and whose methods never read `self.training` nor call `F.dropout*`/`F.batch_norm`. Dropout
    and batch norm layers, `RReLU`, `InstanceNorm*` with `track_running_stats=True`, RNNs and
    `MultiheadAttention` with a non-zero `dropout`, and `nn.Transformer*` layers (dropout 0.1 by
    default) are mode-dependent; a submodule of a type the module does not show (an imported
    class, a torchvision or Hugging Face model, a module passed in) keeps the finding.

    ## Why is this bad?
    `nn.Module.train()` sets `self.training = True` on the module and every child (torch
    `nn/modules/module.py`, `Module.train`; `Module.eval` is `train(False)`), and a new module
    starts in that mode (`Module.__init__`). `nn.Dropout` then zeroes activations at random and
    `nn.BatchNorm*` normalises with the current batch's statistics and updates its running
    statistics with the evaluation data. Validation metrics are noisy and pessimistic, and batch
    norm's running statistics drift towards the validation set. Nothing switches modes for you
    in a plain loop: transformers' `GenerationMixin.generate` is only decorated with
    `@torch.no_grad()` (`generation/utils.py`, 4.30 to 5.23), so generating after
    `model.train()` samples with dropout active. Lightning (`loops/evaluation_loop.py`,
    `_EvaluationLoop.on_run_start` calls the `on_validation_model_eval` hook, i.e.
    `model.eval()`, lightning 2.6.6) and the Hugging Face `Trainer`
    (`Trainer.evaluation_loop` calls `model.eval()`, transformers 5.23) do it for their hooks.

    ## Example
    ```python
    for epoch in range(epochs):
        model.train()
        for x, y in train_loader:
            ...
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            for x, y in val_loader:
                correct += (model(x).argmax(1) == y).sum().item()
    ```

    ## Use instead
    ```python
        model.eval()
        with torch.no_grad():
            for x, y in val_loader:
                correct += (model(x).argmax(1) == y).sum().item()
    ```
    and call `model.train()` again at the start of each training epoch.

    ## Fix safety
    There is no fix: where `model.eval()` goes, and where `model.train()` must come back, depends
    on the structure of the loop.

    ## References
    - torch `nn/modules/module.py`, `Module.train` / `Module.eval`
    - torch `nn/modules/dropout.py`, `Dropout.forward` (`F.dropout(input, self.p, self.training)`)
    - lightning `pytorch/loops/evaluation_loop.py`, `_EvaluationLoop.on_run_start`; `pytorch/core/hooks.py`, `on_validation_model_eval`
    - transformers `trainer.py`, `Trainer.evaluation_loop`; `generation/utils.py`, `GenerationMixin.generate`
    """

    code = "MLL404"
    name = "evaluation-in-train-mode"
    summary = "validation, test or `generate()` code runs while the model is in training mode"
    severity = Severity.WARNING
    tags = ("correctness", "torch", "training")
    triggers = (("train", "backward", "step"),)
    # Triage: checked on the stdlib `ast` tree before libcst parses (mllint.core.triage).
    requires = (("call:train", "call:backward", "call:manual_backward", "call:step"),)
    premise = {"torch": ">=1.0"}
    VALID = (
        # eval() before the validation loop, train() back at the top of the epoch.
        Valid("""
            for epoch in range(3):
                model.train()
                for x, y in train_loader:
                    loss_fn(model(x), y).backward()
                    optimizer.step()
                model.eval()
                with torch.no_grad():
                    for x, y in val_loader:
                        model(x)
            """),
        # eval() called in a helper one level deep.
        Valid("""
            def set_eval(net):
                net.eval()

            model.train()
            for x, y in train_loader:
                loss_fn(model(x), y).backward()
            set_eval(model)
            for x, y in test_loader:
                model(x)
            """),
        # The evaluation helper calls eval() itself.
        Valid("""
            def evaluate(model, loader):
                model.eval()
                return [model(x) for x, _ in loader]

            def train(model, loader):
                model.train()
                for x, y in loader:
                    loss_fn(model(x), y).backward()

            for epoch in range(3):
                train(model, train_loader)
                evaluate(model, val_loader)
            """),
        # eval() at the top of the evaluation function.
        Valid("""
            def validate(model, loader):
                model.train()
                model.eval()
                for x, y in loader:
                    model(x)
            """),
        # The mode depends on a branch.
        Valid("""
            model.train()
            for x, y in train_loader:
                loss_fn(model(x), y).backward()
            if args.freeze_bn:
                model.eval()
            for x, y in val_loader:
                model(x)
            """),
        # A model passed to a function of another module: its mode is unknown afterwards.
        Valid("""
            from utils import run_epoch
            model.train()
            run_epoch(model, train_loader)
            for x, y in val_loader:
                model(x)
            """),
        # Lightning switches modes around its evaluation hooks.
        Valid("""
            import lightning as L
            class Lit(L.LightningModule):
                def validation_step(self, batch, batch_idx):
                    self.model.train()
                    return self.model.generate(batch["input_ids"])
            """),
        # Unknown receiver: no mode evidence.
        Valid("""
            for x, y in val_loader:
                loss_fn(model(x), y)
            optimizer.step()
            """),
        # MC dropout on purpose.
        Valid("""
            model.train()  # keep dropout on for MC-dropout uncertainty
            for x, y in train_loader:
                loss_fn(model(x), y).backward()
            samples = [model(x) for _ in range(20) for x, _ in test_loader]
            for x, _ in test_loader:
                model(x)
            """),
        # A model built here but never trained in this module.
        Valid("""
            from torch import nn
            class Net(nn.Module):
                def forward(self, x):
                    return x
            model = Net()
            for x, y in test_loader:
                model(x)
            """),
        # Only mode-independent layers (the CIFAR-10 tutorial's net): eval() changes nothing.
        Valid("""
            import torch
            import torch.nn as nn
            import torch.nn.functional as F
            class Net(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.conv1 = nn.Conv2d(3, 6, 5)
                    self.pool = nn.MaxPool2d(2, 2)
                    self.fc = nn.Linear(6 * 14 * 14, 10)
                def forward(self, x):
                    x = self.pool(F.relu(self.conv1(x)))
                    return self.fc(torch.flatten(x, 1))
            net = Net()
            optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
            for x, y in trainloader:
                optimizer.zero_grad()
                F.cross_entropy(net(x), y).backward()
                optimizer.step()
            with torch.no_grad():
                for x, y in testloader:
                    print(net(x).argmax(1))
            """),
        # Mode-independent submodule classes and containers, an LSTM without dropout.
        Valid("""
            from torch import nn
            class Block(nn.Module):
                def __init__(self, width):
                    super().__init__()
                    self.width = width
                    self.layers = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.LayerNorm(width))
                def forward(self, x):
                    return x + self.layers(x)
            class Tagger(nn.Module):
                def __init__(self, width, depth):
                    super().__init__()
                    self.rnn = nn.LSTM(width, width, batch_first=True, dropout=0.0)
                    self.blocks = nn.ModuleList([Block(width) for _ in range(depth)])
                    self.norm = nn.InstanceNorm1d(width)
                def forward(self, x):
                    x, _ = self.rnn(x)
                    for block in self.blocks:
                        x = block(x)
                    return x
            model = Tagger(64, 2).to("cuda")
            model.train()
            for x, y in train_loader:
                loss_fn(model(x), y).backward()
                optimizer.step()
            for x, y in val_loader:
                model(x)
            """),
        # Loading with from_pretrained gives an eval-mode model; no train() on the way.
        Valid("""
            from transformers import AutoModelForCausalLM
            model = AutoModelForCausalLM.from_pretrained("gpt2")
            out = model.generate(**inputs)
            optimizer.step()
            """),
    )
    INVALID = (
        Invalid(
            """
            import torch
            for epoch in range(3):
                model.train()
                for x, y in train_loader:
                    loss_fn(model(x), y).backward()
                    optimizer.step()
                with torch.no_grad():
                    for x, y in val_loader:
                        correct = (model(x).argmax(1) == y).sum()
            """,
            line=9,
            message="`model.train()` at line 3",
        ),
        # Training mode set by a helper, evaluation helper without eval().
        Invalid(
            """
            def train_epoch(net, loader, opt):
                net.train()
                for x, y in loader:
                    loss_fn(net(x), y).backward()
                    opt.step()

            def evaluate(net, loader):
                return sum(loss_fn(net(x), y).item() for x, y in loader)

            for epoch in range(10):
                train_epoch(model, train_loader, optimizer)
                val_loss = evaluate(model, val_loader)
            """,
            line=12,
            message="`evaluate()` (line 7) runs `net` without calling `.eval()`",
        ),
        # generate() during training.
        Invalid(
            """
            from transformers import AutoModelForSeq2SeqLM
            model = AutoModelForSeq2SeqLM.from_pretrained("t5-small")
            model.train()
            for step, batch in enumerate(train_dataloader):
                loss = model(**batch).loss
                loss.backward()
                optimizer.step()
                if step % 100 == 0:
                    preds = model.generate(input_ids=batch["input_ids"], max_new_tokens=20)
            """,
            line=9,
            message="`model.generate()` runs while `model` is in training mode",
        ),
        # A model built in this script starts in training mode.
        Invalid(
            """
            from torch import nn
            class Net(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.drop = nn.Dropout(0.5)
                def forward(self, x):
                    return self.drop(x)
            model = Net()
            for x, y in train_loader:
                loss_fn(model(x), y).backward()
                optimizer.step()
            for x, y in test_loader:
                print(model(x))
            """,
            line=13,
            message="made at line 8",
        ),
        # Batch norm: its running statistics are updated with test batches.
        Invalid(
            """
            import torch.nn as nn
            class Net(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.features = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
                    self.head = nn.Linear(8, 10)
                def forward(self, x):
                    return self.head(self.features(x).mean((2, 3)))
            net = Net()
            for x, y in trainloader:
                loss_fn(net(x), y).backward()
                optimizer.step()
            for x, y in testloader:
                net(x)
            """,
            line=14,
            message="`net(...)` runs in the evaluation loop over `testloader`",
        ),
        # A mode-dependent layer in a submodule class; a dropout passed by name.
        Invalid(
            """
            from torch import nn
            class Head(nn.Module):
                def __init__(self, p):
                    super().__init__()
                    self.rnn = nn.GRU(32, 32, num_layers=2, dropout=p)
                def forward(self, x):
                    return self.rnn(x)[0]
            class Net(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.head = Head(0.2)
                def forward(self, x):
                    return self.head(x)
            net = Net()
            net.train()
            for x, y in train_loader:
                loss_fn(net(x), y).backward()
            for x, y in val_loader:
                net(x)
            """,
            line=19,
            message="`net.train()` at line 15",
        ),
        # A torchvision model (its layers are not visible here) keeps the finding.
        Invalid(
            """
            import torchvision
            model = torchvision.models.resnet18(num_classes=10)
            model.train()
            for x, y in train_loader:
                loss_fn(model(x), y).backward()
                optimizer.step()
            for x, y in test_loader:
                model(x)
            """,
            line=8,
            message="`model.train()` at line 3",
        ),
        # A local class around an imported backbone: unknown, reported.
        Invalid(
            """
            from torch import nn
            from mylib import Backbone
            class Net(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.backbone = Backbone()
                    self.fc = nn.Linear(512, 10)
                def forward(self, x):
                    return self.fc(self.backbone(x))
            model = Net()
            for x, y in train_loader:
                loss_fn(model(x), y).backward()
                optimizer.step()
            for x, y in test_loader:
                model(x)
            """,
            line=15,
            message="made at line 10",
        ),
        # train(False) / train(mode=True) are understood.
        Invalid(
            """
            model.train(False)
            model.train(mode=True)
            for x, y in dataloaders["val"]:
                model(x)
            """,
            line=4,
            message="`model.train(mode=True)` at line 2",
        ),
        # An evaluation function that sets train mode itself (a copy-paste slip).
        Invalid(
            """
            def validate(model, loader):
                model.train()
                for x, y in loader:
                    model(x)
            """,
            line=4,
            message="evaluation function `validate()`",
        ),
    )

    def check(self, ctx: Context) -> Iterator[Diagnostic]:
        modes = ctx.get(Modes)
        reported: Set[cst.CSTNode] = set()
        for call in ctx.nodes(cst.Call):
            if modes.framework_managed(call):
                continue
            found = model_call(call)
            if found is not None:
                key, kind = found
                context = call if kind == "generate" else modes.eval_context(call)
                if context is not None and context not in reported:
                    mode = modes.mode_at(key, call)
                    if self._trained(ctx, modes, mode) and modes.mode_dependent(key, call) is not False:
                        reported.add(context)
                        yield ctx.report(call, self._direct_message(ctx, call, key, kind, context, mode))
                        continue
            helper = modes.helper(call)
            if helper is not None and not modes.framework_managed(helper.body):
                diagnostic = self._helper_use(ctx, modes, call, helper)
                if diagnostic is not None:
                    yield diagnostic

    def _trained(self, ctx: Context, modes: Modes, mode: Mode) -> bool:
        if mode.state != TRAIN:
            return False
        if not mode.explicit:
            return modes.module_trains
        line = ctx.locator.line(row(ctx, mode.node)) if mode.node is not None else ""
        comment = line.partition("#")[2].lower()
        return not any(word in comment for word in _INTENTIONAL)

    @staticmethod
    def _evidence(ctx: Context, mode: Mode) -> str:
        if not mode.explicit:
            return (f"made at line {row(ctx, mode.node)} and trained in this module; torch modules start "
                    f"in training mode")
        text = f"`{ctx.code(mode.node)}` at line {row(ctx, mode.node)}"
        if mode.via is not None:
            text += f", in `{ctx.code(mode.via.func)}()` called at line {row(ctx, mode.via)}"
        return text

    def _direct_message(self, ctx: Context, call: cst.Call, key: str, kind: str, context: cst.CSTNode,
                        mode: Mode) -> str:
        evidence = self._evidence(ctx, mode)
        if kind == "generate":
            return (f"`{key}.generate()` runs while `{key}` is in training mode ({evidence}): dropout stays "
                    f"active while sampling, as `generate()` does not switch modes; call `{key}.eval()` first")
        where = (f"the evaluation loop over `{ctx.code(context.iter)}`" if isinstance(context, cst.For)
                 else f"evaluation function `{context.name.value}()`")  # type: ignore[attr-defined]
        return (f"`{ctx.code(call.func)}(...)` runs in {where} while `{key}` is in training mode ({evidence}) "
                f"and no `{key}.eval()` precedes it: dropout and batch norm behave as in training")

    def _helper_use(self, ctx: Context, modes: Modes, call: cst.Call,
                    helper: cst.FunctionDef) -> Optional[Diagnostic]:
        """A call of an evaluation helper that uses a model in the mode its caller left it in."""
        for inner in modes.calls_within(helper.body):
            found = model_call(inner)
            if found is None or ctx.enclosing(inner, cst.FunctionDef) is not helper:
                continue
            key, kind = found
            if kind != "generate" and modes.eval_context(inner) is None:
                continue
            if modes.mode_at(key, inner).state != INHERIT:
                continue
            mapped = modes.map_key(call, helper, key)
            if mapped is None:
                continue
            mode = lookup(modes.state_at(call), mapped)
            if not self._trained(ctx, modes, mode) or modes.mode_dependent(mapped, call) is False:
                continue
            return ctx.report(
                call,
                f"`{ctx.code(call.func)}()` (line {row(ctx, helper)}) runs `{key}` without calling "
                f"`.eval()`, and `{mapped}` is in training mode here ({self._evidence(ctx, mode)}): "
                f"dropout and batch norm behave as in training; call `{mapped}.eval()` before it",
            )
        return None
