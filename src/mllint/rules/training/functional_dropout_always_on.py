from __future__ import annotations

from typing import Iterator

import libcst as cst

from mllint.analysis.modes import Modes, parameters
from mllint.analysis.signatures import Signature, bind
from mllint.core.context import Context
from mllint.core.diagnostic import Applicability, Diagnostic, Fix, Severity
from mllint.core.rule import Invalid, Rule, Valid

# torch `nn/functional.py` (2.13): these default to `training=True`. `alpha_dropout` and
# `feature_alpha_dropout` default to `training=False` (never on, a different problem).
_DROPOUTS = frozenset({"torch.nn.functional.dropout", "torch.nn.functional.dropout1d",
                       "torch.nn.functional.dropout2d", "torch.nn.functional.dropout3d"})
_SIGNATURE = Signature(("input", "p", "training", "inplace"))
# Methods that only ever run while training (Lightning's training hook).
_TRAINING_ONLY = frozenset({"training_step"})


class FunctionalDropoutAlwaysOn(Rule):
    """## What it does
    Checks for `F.dropout(x, p)` (also `dropout1d/2d/3d`, spelled `torch.nn.functional.dropout`,
    `nn.functional.dropout` or imported by name) in a method of an `nn.Module` subclass without
    a `training=` argument.

    It stays silent for any `training=` argument (`self.training`, `False`, and a literal `True`,
    which states the intent, as in Monte Carlo dropout),
    `nn.Dropout` modules (they follow the module's mode), calls with `*args`/`**kwargs`, functions
    that are not methods of a module class defined in the file (their caller may pass the flag),
    and Lightning's `training_step`, which only runs in training.

    ## Why is this bad?
    The functional form does not know the module's mode: its `training` parameter defaults to
    `True` (torch `nn/functional.py`, `dropout(input, p=0.5, training=True, inplace=False)`; the same
    for `dropout1d`, `dropout2d` and `dropout3d`, torch 1.x to 2.13). After `model.eval()`, the
    activations are still zeroed at random and scaled by `1/(1-p)`, so validation metrics are
    noisy and predictions differ between two runs on the same input. `nn.Dropout.forward` passes
    `self.training` (`nn/modules/dropout.py`), which is what the functional call must do by hand.

    ## Example
    ```python
    class Classifier(nn.Module):
        def forward(self, x):
            x = F.relu(self.fc1(x))
            x = F.dropout(x, 0.5)
            return self.fc2(x)
    ```

    ## Use instead
    ```python
            x = F.dropout(x, 0.5, training=self.training)
    ```

    ## Fix safety
    The fix adds `training=self.training` and is safe: it keeps dropout on whenever the module trains and turns it off only in `eval()`
    mode, which is what the module's mode means. It is offered only in methods whose first
    parameter is `self` of a class that derives from `nn.Module`.

    ## References
    - torch `nn/functional.py`, `dropout`, `dropout1d`, `dropout2d`, `dropout3d`
    - torch `nn/modules/dropout.py`, `Dropout.forward`
    - https://discuss.pytorch.org/t/model-eval-doesnt-disable-dropout-in-functional-dropout/
    """

    code = "MLL405"
    name = "functional-dropout-always-on"
    summary = "`F.dropout()` in a module without `training=self.training` stays on in `eval()`"
    severity = Severity.ERROR
    tags = ("correctness", "torch")
    triggers = (("dropout",),)
    # Triage: checked on the stdlib `ast` tree before libcst parses (mllint.core.triage).
    requires = (("import:torch",), (
        "call-lacking:dropout/training", "call-lacking:dropout1d/training",
        "call-lacking:dropout2d/training", "call-lacking:dropout3d/training"))
    premise = {"torch": ">=1.0"}
    VALID = (
        # A literal `training=True` (keyword or positional) states the intent: always-on dropout.
        Valid("""
            import torch
            from torch.nn.functional import dropout
            class Head(torch.nn.Module):
                def forward(self, h):
                    h = torch.nn.functional.dropout2d(h, p=0.2, training=True)
                    return dropout(h, 0.3, True)
            """),
        Valid("""
            import torch.nn.functional as F
            from torch import nn
            class Net(nn.Module):
                def forward(self, x):
                    return F.dropout(x, 0.5, training=self.training)
            """),
        # Positional training flag.
        Valid("""
            import torch.nn.functional as F
            from torch import nn
            class Net(nn.Module):
                def forward(self, x):
                    return F.dropout(x, 0.5, self.training)
            """),
        Valid("""
            import torch.nn.functional as F
            from torch import nn
            class Net(nn.Module):
                def forward(self, x):
                    return F.dropout(x, p=0.1, training=False)
            """),
        # A module, not the functional form.
        Valid("""
            from torch import nn
            class Net(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.dropout = nn.Dropout(0.1)
                def forward(self, x):
                    return self.dropout(x)
            """),
        # A free function: its caller may know the mode (cannot tell).
        Valid("""
            import torch.nn.functional as F
            def block(x, p):
                return F.dropout(x, p)
            """),
        # alpha_dropout defaults to training=False.
        Valid("""
            import torch.nn.functional as F
            from torch import nn
            class Net(nn.Module):
                def forward(self, x):
                    return F.alpha_dropout(x, 0.1)
            """),
        # A class that is not a module (no `self.training`).
        Valid("""
            import torch.nn.functional as F
            class Augment:
                def __call__(self, x):
                    return F.dropout(x, 0.2)
            """),
        # Splatted arguments may carry `training`.
        Valid("""
            import torch.nn.functional as F
            from torch import nn
            class Net(nn.Module):
                def forward(self, x, **kw):
                    return F.dropout(x, **kw)
            """),
        # Lightning's training_step only runs in training.
        Valid("""
            import torch.nn.functional as F
            import lightning as L
            class Lit(L.LightningModule):
                def training_step(self, batch, batch_idx):
                    return F.dropout(self.net(batch), 0.1).sum()
            """),
    )
    INVALID = (
        Invalid(
            """
            import torch.nn.functional as F
            from torch import nn
            class Net(nn.Module):
                def forward(self, x):
                    x = F.relu(self.fc1(x))
                    x = F.dropout(x, 0.5)
                    return self.fc2(x)
            """,
            line=6,
            message="`F.dropout(...)` in `Net.forward` has no `training=`",
            fix="""
            import torch.nn.functional as F
            from torch import nn
            class Net(nn.Module):
                def forward(self, x):
                    x = F.relu(self.fc1(x))
                    x = F.dropout(x, 0.5, training=self.training)
                    return self.fc2(x)
            """,
            applicability=Applicability.SAFE,
        ),
        # Keyword p only, trailing comma kept readable.
        Invalid(
            """
            from torch import nn
            class Attn(nn.Module):
                def forward(self, w):
                    return nn.functional.dropout(
                        w,
                        p=self.p,
                    )
            """,
            line=4,
            fix="""
            from torch import nn
            class Attn(nn.Module):
                def forward(self, w):
                    return nn.functional.dropout(
                        w,
                        p=self.p, training=self.training,
                    )
            """,
            applicability=Applicability.SAFE,
        ),
    )

    def check(self, ctx: Context) -> Iterator[Diagnostic]:
        modes = ctx.get(Modes)
        for call in ctx.nodes(cst.Call):
            if not ctx.names.resolve(call.func) & _DROPOUTS:
                continue
            binding = bind(call, _SIGNATURE)
            if binding.opaque or not call.args:
                continue
            if binding.value("training") is not None:
                continue
            method = ctx.enclosing(call, cst.FunctionDef)
            cls = modes.owner(method) if method is not None else None
            if method is None or not modes.module_class(cls) or method.name.value in _TRAINING_ONLY:
                continue
            params = parameters(method)
            if not params or params[0] != "self" or method.decorators:
                continue
            where = f"`{cls.name.value}.{method.name.value}`"  # type: ignore[union-attr]
            yield ctx.report(
                call,
                f"`{ctx.code(call.func)}(...)` in {where} has no `training=` (functional dropout "
                f"defaults to `training=True`): dropout stays on after `model.eval()`; pass "
                f"`training=self.training`",
                fix=self._fix(ctx, call),
            )

    @staticmethod
    def _fix(ctx: Context, call: cst.Call) -> Fix:
        end = ctx.span(call.args[-1].value)[1]
        edit = ctx.edit(end, end, ", training=self.training")
        return ctx.fix("Pass `training=self.training`", Applicability.SAFE, edit)
