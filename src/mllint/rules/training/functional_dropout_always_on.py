from __future__ import annotations

from typing import Iterator, Optional

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
    a `training=` argument, or with `training=True`.

    It stays silent for `training=self.training` or any other expression, `training=False`,
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
    The fix adds `training=self.training` (or replaces a literal `True` with `self.training`) and
    is safe: it keeps dropout on whenever the module trains and turns it off only in `eval()`
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
    requires = (("import:torch",), ("call:dropout", "call:dropout1d", "call:dropout2d", "call:dropout3d"))
    premise = {"torch": ">=1.0"}
    VALID = (
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
        # A literal training=True, through a subclass of a local module class.
        Invalid(
            """
            import torch
            class Base(torch.nn.Module):
                pass
            class Head(Base):
                def forward(self, h):
                    return torch.nn.functional.dropout2d(h, p=0.2, training=True)
            """,
            line=6,
            message="`training=True`",
            fix="""
            import torch
            class Base(torch.nn.Module):
                pass
            class Head(Base):
                def forward(self, h):
                    return torch.nn.functional.dropout2d(h, p=0.2, training=self.training)
            """,
            applicability=Applicability.SAFE,
        ),
        # Positional True, imported by name, in a helper method of a LightningModule.
        Invalid(
            """
            from torch.nn.functional import dropout
            import pytorch_lightning as pl
            class Lit(pl.LightningModule):
                def encode(self, x):
                    return dropout(self.enc(x), 0.3, True)
            """,
            line=5,
            fix="""
            from torch.nn.functional import dropout
            import pytorch_lightning as pl
            class Lit(pl.LightningModule):
                def encode(self, x):
                    return dropout(self.enc(x), 0.3, self.training)
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
            training = binding.value("training")
            if training is not None and not (isinstance(training, cst.Name) and training.value == "True"):
                continue
            method = ctx.enclosing(call, cst.FunctionDef)
            cls = modes.owner(method) if method is not None else None
            if method is None or not modes.module_class(cls) or method.name.value in _TRAINING_ONLY:
                continue
            params = parameters(method)
            if not params or params[0] != "self" or method.decorators:
                continue
            where = f"`{cls.name.value}.{method.name.value}`"  # type: ignore[union-attr]
            problem = "passes `training=True`" if training is not None else "has no `training=`"
            default = " (functional dropout defaults to `training=True`)" if training is None else ""
            yield ctx.report(
                call,
                f"`{ctx.code(call.func)}(...)` in {where} {problem}{default}: dropout stays on after "
                f"`model.eval()`; pass `training=self.training`",
                fix=self._fix(ctx, call, training),
            )

    @staticmethod
    def _fix(ctx: Context, call: cst.Call, training: Optional[cst.BaseExpression]) -> Fix:
        if training is not None:
            edit = ctx.replace(training, "self.training")
        else:
            end = ctx.span(call.args[-1].value)[1]
            edit = ctx.edit(end, end, ", training=self.training")
        return ctx.fix("Pass `training=self.training`", Applicability.SAFE, edit)
