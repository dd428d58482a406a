from __future__ import annotations

from typing import Iterator

import libcst as cst

from mllint.analysis.modes import Modes
from mllint.core.context import Context
from mllint.core.diagnostic import Diagnostic, Severity
from mllint.core.rule import Invalid, Rule, Valid


class ModuleForwardCalledDirectly(Rule):
    """## What it does
    Checks for `model.forward(x)` on a torch module made in the same file (an instance of an
    `nn.Module` subclass defined there, a `torch.nn` class, a torchvision model, or a transformers
    `from_pretrained` model), in a module that trains (a backward pass or optimizer step).

    Receivers rooted at `self` (`self.forward(...)`, `self.encoder.forward(...)`) and
    `super().forward(...)` are left alone: inside a class, calling a part's `forward` is an
    implementation choice (wrappers such as peft's do it on purpose), and library code is not a
    training script. Unknown receivers (parameters, objects from other modules) keep the rule
    silent. This is dslinter's `forward-pytorch` (W5516), restricted to training scripts.

    ## Why is this bad?
    `model(x)` goes through `nn.Module.__call__` (torch `nn/modules/module.py`,
    `Module._wrapped_call_impl` -> `Module._call_impl`), which runs the forward pre-hooks and
    hooks registered on the module and globally before and after `forward`. `model.forward(x)`
    skips them: hooks added by profilers, pruning (`torch.nn.utils.prune`), spectral/weight
    norm, quantization observers, activation-checkpointing and FSDP/DeepSpeed parameter
    gathering do not run, so the call computes something else or fails only in those setups.

    ## Example
    ```python
    for x, y in train_loader:
        loss = loss_fn(model.forward(x), y)
    ```

    ## Use instead
    ```python
    for x, y in train_loader:
        loss = loss_fn(model(x), y)
    ```

    ## Fix safety
    There is no fix: running the hooks changes what the call does when hooks are registered.

    ## References
    - torch `nn/modules/module.py`, `Module._call_impl`, `register_forward_pre_hook`, `register_forward_hook`
    - dslinter W5516 `forward-pytorch`
    """

    code = "MLL412"
    name = "module-forward-called-directly"
    summary = "`model.forward(x)` instead of `model(x)` skips the module's hooks"
    severity = Severity.INFO
    default_enabled = False
    tags = ("correctness", "torch")
    triggers = (("forward",), ("backward", "step"))
    # Triage: checked on the stdlib `ast` tree before libcst parses (mllint.core.triage).
    requires = (("call:forward",), ("call:backward", "call:manual_backward", "call:step"))
    premise = {"torch": ">=1.0"}
    VALID = (
        Valid("""
            from torch import nn
            class Net(nn.Module):
                def forward(self, x):
                    return x
            model = Net()
            loss_fn(model(x), y).backward()
            """),
        # Inside the class: the module's own forward.
        Valid("""
            from torch import nn
            class Net(nn.Module):
                def forward(self, x):
                    return self.body.forward(x)
                def predict(self, x):
                    return self.forward(x).argmax(-1)
            loss.backward()
            """),
        Valid("""
            from torch import nn
            class Child(nn.Linear):
                def forward(self, x):
                    return super().forward(x) * 2
            loss.backward()
            """),
        # Unknown receiver (a parameter).
        Valid("""
            def step(model, x, y, opt):
                loss_fn(model.forward(x), y).backward()
                opt.step()
            """),
        # No training in this module.
        Valid("""
            from torch import nn
            class Net(nn.Module):
                def forward(self, x):
                    return x
            model = Net()
            print(model.forward(x))
            """),
        # Not a module: a local class with its own forward method.
        Valid("""
            class Pipeline:
                def forward(self, x):
                    return x
            pipe = Pipeline()
            pipe.forward(x).backward()
            """),
    )
    INVALID = (
        Invalid(
            """
            import torch
            from torch import nn
            class Net(nn.Module):
                def forward(self, x):
                    return x
            model = Net().to("cuda")
            for x, y in train_loader:
                loss = loss_fn(model.forward(x), y)
                loss.backward()
                optimizer.step()
            """,
            line=8,
            message="`model.forward(...)` skips the forward hooks",
        ),
        Invalid(
            """
            import torch
            encoder = torch.nn.TransformerEncoder(layer, 2)
            def train(batch):
                out = encoder.forward(batch)
                out.sum().backward()
            """,
            line=4,
        ),
    )

    def check(self, ctx: Context) -> Iterator[Diagnostic]:
        modes = ctx.get(Modes)
        if not modes.module_trains:
            return
        for call in ctx.nodes(cst.Call):
            func = call.func
            if not (isinstance(func, cst.Attribute) and func.attr.value == "forward"):
                continue
            receiver = func.value
            if not isinstance(receiver, cst.Name) or receiver.value == "self":
                continue
            if not modes.module_value(receiver, call):
                continue
            yield ctx.report(
                call,
                f"`{receiver.value}.forward(...)` skips the forward hooks that `{receiver.value}(...)` "
                f"runs (`nn.Module.__call__`): hooks from pruning, weight norm, quantization or "
                f"FSDP do not apply; call `{receiver.value}(...)`",
            )
