from __future__ import annotations

from typing import Iterator, Optional, Set, Tuple

import libcst as cst

from mllint.analysis.dataflow import Assignments
from mllint.analysis.instances import Instances, constructor_of
from mllint.core.context import Context
from mllint.core.diagnostic import Diagnostic, Severity
from mllint.core.rule import Invalid, Rule, Valid

SOFTMAX, SIGMOID = "softmax", "sigmoid"
# Loss -> (the activation it applies itself, what it expects, the activation that is wrong).
_FUNCTIONS = {
    "torch.nn.functional.cross_entropy": ("F.cross_entropy", SOFTMAX),
    "torch.nn.functional.nll_loss": ("F.nll_loss", SOFTMAX),
    "torch.nn.functional.binary_cross_entropy_with_logits": ("F.binary_cross_entropy_with_logits", SIGMOID),
}
_MODULES = {
    "torch.nn.CrossEntropyLoss": ("nn.CrossEntropyLoss", SOFTMAX),
    "torch.nn.NLLLoss": ("nn.NLLLoss", SOFTMAX),
    "torch.nn.BCEWithLogitsLoss": ("nn.BCEWithLogitsLoss", SIGMOID),
}
_ACTIVATION_FUNCTIONS = {
    "torch.nn.functional.softmax": SOFTMAX, "torch.softmax": SOFTMAX, "torch.special.softmax": SOFTMAX,
    "torch.nn.functional.sigmoid": SIGMOID, "torch.sigmoid": SIGMOID, "torch.special.expit": SIGMOID,
}
_ACTIVATION_MODULES = {"torch.nn.Softmax": SOFTMAX, "torch.nn.Sigmoid": SIGMOID}
# Calls that keep the values of their receiver (moves, dtype casts, reshapes).
_KEEP_VALUES = frozenset({"to", "cuda", "cpu", "float", "double", "half", "bfloat16", "contiguous", "view",
                          "reshape", "flatten", "squeeze", "unsqueeze", "permute", "transpose", "view_as",
                          "reshape_as", "clone"})


class SoftmaxBeforeCrossEntropy(Rule):
    """## What it does
    Checks for probabilities passed where a loss expects logits: the input of
    `F.cross_entropy` / `nn.CrossEntropyLoss()(...)` (or of `F.nll_loss` / `nn.NLLLoss`, which
    expect log-probabilities) is the output of a softmax, and the input of
    `F.binary_cross_entropy_with_logits` / `nn.BCEWithLogitsLoss` is the output of a sigmoid.
    The activation is found directly (`F.cross_entropy(F.softmax(x, 1), y)`), through local
    variables and reshapes (`probs.view(-1, C)`), through `nn.Softmax` modules, and through a
    model of the same module whose `forward` always returns `F.softmax(...)` (or an
    `nn.Sequential` ending in `nn.Softmax`).

    ## Why is this bad?
    `cross_entropy` is `nll_loss(log_softmax(input))`: torch `nn/functional.py`,
    `cross_entropy` ("Predicted unnormalized logits"), calls `torch._C._nn.cross_entropy_loss`,
    which computes `nll_loss_nd(log_softmax(self, class_dim), target)` (ATen
    `native/LossNLL.cpp`, `cross_entropy_loss_symint`; torch 1.x to 2.13). Fed probabilities,
    the loss applies a second softmax: all inputs lie in [0, 1], so the second softmax is
    nearly uniform, the loss can never approach zero and its gradients shrink by the softmax's
    Jacobian; training stalls at a high loss. `nll_loss` expects log-probabilities
    (`F.nll_loss(F.log_softmax(input, dim=1), target)` in its docstring): fed probabilities it
    minimises `-p` instead of `-log p`. `binary_cross_entropy_with_logits` applies the sigmoid
    itself, so a sigmoid before it squashes every logit into (0.5, 0.73).

    The rule leaves alone `log_softmax` (with `nll_loss` it is the intended pairing, with
    `cross_entropy` harmless), `torch.log(F.softmax(...))`, softmax outputs used only for
    metrics or `argmax`, probability *targets* (soft labels and distillation are valid
    `cross_entropy` targets), and models it cannot see.

    ## Example
    ```python
    class Classifier(nn.Module):
        def forward(self, x):
            return F.softmax(self.fc(x), dim=1)

    loss = F.cross_entropy(model(x), y)
    ```

    ## Use instead
    ```python
    class Classifier(nn.Module):
        def forward(self, x):
            return self.fc(x)  # logits; apply softmax only where probabilities are needed

    loss = F.cross_entropy(model(x), y)
    ```

    ## Fix safety
    There is no fix: removing the softmax changes what the model returns to every other
    caller (inference code may rely on probabilities), and switching to `nll_loss(torch.log(...))`
    is numerically worse than returning logits.

    ## References
    - torch `nn/functional.py`, `cross_entropy`, `nll_loss`, `binary_cross_entropy_with_logits` (torch 2.13.0)
    - ATen `native/LossNLL.cpp`, `cross_entropy_loss_symint`
    - https://pytorch.org/docs/stable/generated/torch.nn.CrossEntropyLoss.html
    """

    code = "MLL401"
    name = "softmax-before-cross-entropy"
    summary = "probabilities (softmax/sigmoid output) passed to a loss that expects logits"
    severity = Severity.ERROR
    tags = ("correctness", "torch")
    triggers = (("softmax", "Softmax", "sigmoid", "Sigmoid"),
                ("cross_entropy", "CrossEntropyLoss", "nll_loss", "NLLLoss", "BCEWithLogitsLoss"))
    # Triage: checked on the stdlib `ast` tree before libcst parses (mllint.core.triage).
    requires = (
        ("import:torch",),
        ("name:softmax", "name:Softmax", "name:sigmoid", "name:Sigmoid"),
        ("name:cross_entropy", "name:CrossEntropyLoss", "name:nll_loss", "name:NLLLoss",
         "name:binary_cross_entropy_with_logits", "name:BCEWithLogitsLoss"),
    )
    premise = {"torch": ">=1.0"}
    VALID = (
        # log_softmax + nll_loss: the intended pairing.
        Valid("""
            import torch.nn.functional as F
            log_probs = F.log_softmax(logits, dim=1)
            loss = F.nll_loss(log_probs, target)
            """),
        # Softmax only for metrics.
        Valid("""
            import torch.nn.functional as F
            loss = F.cross_entropy(logits, y)
            probs = F.softmax(logits, dim=-1)
            acc = (probs.argmax(-1) == y).float().mean()
            """),
        # Distillation: probabilities as *targets*, KL with explicit log.
        Valid("""
            import torch.nn.functional as F
            soft = F.softmax(teacher_logits / T, dim=-1)
            loss = F.cross_entropy(student_logits, soft)
            kd = F.kl_div(F.log_softmax(student_logits / T, -1), soft, reduction="batchmean")
            """),
        Valid("""
            import torch
            from torch import nn
            criterion = nn.CrossEntropyLoss()
            loss = criterion(logits, target=torch.softmax(teacher, dim=1))
            """),
        # torch.log of the softmax into nll_loss.
        Valid("""
            import torch
            import torch.nn.functional as F
            loss = F.nll_loss(torch.log(F.softmax(out, dim=1) + 1e-8), y)
            """),
        # A model whose forward returns softmax only in eval mode.
        Valid("""
            import torch.nn as nn
            import torch.nn.functional as F
            class Net(nn.Module):
                def forward(self, x):
                    x = self.fc(x)
                    if self.training:
                        return x
                    return F.softmax(x, dim=1)
            model = Net()
            loss = F.cross_entropy(model(x), y)
            """),
        # An imported model: cannot see its forward.
        Valid("""
            import torch.nn.functional as F
            from models import Net
            model = Net()
            loss = F.cross_entropy(model(x), y)
            """),
        # Sigmoid into plain BCE is correct.
        Valid("""
            import torch
            from torch import nn
            criterion = nn.BCELoss()
            loss = criterion(torch.sigmoid(logits), y)
            """),
    )
    INVALID = (
        Invalid(
            """
            import torch.nn as nn
            import torch.nn.functional as F
            class Classifier(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.fc = nn.Linear(784, 10)
                def forward(self, x):
                    return F.softmax(self.fc(x), dim=1)
            model = Classifier().to(device)
            criterion = nn.CrossEntropyLoss()
            for x, y in loader:
                loss = criterion(model(x), y)
            """,
            line=12,
            message="`Classifier.forward` returns `F.softmax(self.fc(x), dim=1)` (line 8)",
        ),
        # Through a variable and a reshape.
        Invalid(
            """
            import torch
            import torch.nn.functional as F
            probs = torch.softmax(logits, dim=-1)
            loss = F.cross_entropy(probs.view(-1, probs.size(-1)), labels.view(-1))
            """,
            line=4,
            message="`torch.softmax(logits, dim=-1)` (line 3)",
        ),
        # nn.Softmax module in self.
        Invalid(
            """
            from torch import nn
            class Head(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.act = nn.Softmax(dim=1)
                    self.loss_fn = nn.NLLLoss()
                def forward(self, x, y):
                    p = self.act(x)
                    return self.loss_fn(p, y)
            """,
            line=9,
            message="log-probabilities",
        ),
        # nn.Sequential ending in Softmax.
        Invalid(
            """
            import torch
            from torch import nn
            model = nn.Sequential(nn.Linear(10, 4), nn.ReLU(), nn.Linear(4, 3), nn.Softmax(dim=1))
            loss = nn.CrossEntropyLoss()(model(x), y)
            """,
            line=4,
        ),
        # Sigmoid into BCEWithLogitsLoss.
        Invalid(
            """
            import torch
            import torch.nn.functional as F
            out = model(x).sigmoid()
            loss = F.binary_cross_entropy_with_logits(out, y.float())
            """,
            line=4,
            message="applies the sigmoid itself",
        ),
    )

    def check(self, ctx: Context) -> Iterator[Diagnostic]:
        self.ctx = ctx
        self.flow = ctx.get(Assignments)
        self.instances = ctx.get(Instances)
        for call in ctx.nodes(cst.Call):
            loss = self._loss(call)
            if loss is None:
                continue
            label, wrong = loss
            arg = self._input(call)
            if arg is None:
                continue
            found = self._activation(arg, call, set())
            if found is None or found[0] != wrong:
                continue
            yield self._report(call, arg, label, found)

    # -- the loss -----------------------------------------------------------------------------
    def _loss(self, call: cst.Call) -> Optional[Tuple[str, str]]:
        ctx = self.ctx
        for name in ctx.names.resolve(call.func):
            if name in _FUNCTIONS:
                return _FUNCTIONS[name]
        kinds = self.instances.kinds(call.func, call)
        if len(kinds) == 1 and next(iter(kinds)) in _MODULES:
            return _MODULES[next(iter(kinds))]
        return None

    @staticmethod
    def _input(call: cst.Call) -> Optional[cst.BaseExpression]:
        for index, arg in enumerate(call.args):
            if arg.star:
                return None
            if arg.keyword is not None and arg.keyword.value == "input" or index == 0 and arg.keyword is None:
                return arg.value
        return None

    # -- where the input comes from -------------------------------------------------------------
    def _activation(self, expr: cst.BaseExpression, at: cst.CSTNode,
                    seen: Set[int]) -> Optional[Tuple[str, cst.CSTNode, str]]:
        """(softmax|sigmoid, the node that applies it, how it was found), or None."""
        for _ in range(10):
            if id(expr) in seen:
                return None
            seen.add(id(expr))
            if isinstance(expr, cst.Subscript):
                expr = expr.value
                continue
            if isinstance(expr, cst.Name):
                value = self.flow.reaching(expr)
                if value is None:
                    return None
                expr = value
                continue
            if not isinstance(expr, cst.Call):
                return None
            func = expr.func
            names = self.ctx.names.resolve(func)
            for name in names:
                if name in _ACTIVATION_FUNCTIONS:
                    return _ACTIVATION_FUNCTIONS[name], expr, ""
            if isinstance(func, cst.Attribute) and not names:
                if func.attr.value in (SOFTMAX, SIGMOID):
                    return func.attr.value, expr, ""
                if func.attr.value in _KEEP_VALUES:
                    expr = func.value
                    continue
            return self._module_output(expr, seen)
        return None

    def _module_output(self, call: cst.Call, seen: Set[int]) -> Optional[Tuple[str, cst.CSTNode, str]]:
        """The activation a called module ends in: ``nn.Softmax``, an ``nn.Sequential`` whose
        last layer is one, or a class of this module whose ``forward`` always returns one."""
        kinds = self.instances.kinds(call.func, call)
        if len(kinds) == 1 and next(iter(kinds)) in _ACTIVATION_MODULES:
            return _ACTIVATION_MODULES[next(iter(kinds))], call, ""
        made = constructor_of(self.instances, call.func, call)
        if made is None:
            return None
        names = self.ctx.names.resolve(made.func)
        if "torch.nn.Sequential" in names and made.args and isinstance(made.args[-1].value, cst.Call) \
                and not made.args[-1].star:
            last = self.ctx.names.resolve(made.args[-1].value.func)
            for name in last:
                if name in _ACTIVATION_MODULES:
                    return _ACTIVATION_MODULES[name], made.args[-1].value, "the `nn.Sequential` ends in it"
            return None
        if not isinstance(made.func, cst.Name) or names:
            return None
        classes = [c for c in self.ctx.nodes(cst.ClassDef) if c.name.value == made.func.value
                   and self.ctx.enclosing(c, cst.ClassDef) is None]
        if len(classes) != 1:
            return None
        forward = next((s for s in classes[0].body.body if isinstance(s, cst.FunctionDef)
                        and s.name.value == "forward"), None)
        if forward is None:
            return None
        returns = [r for r in _returns(forward)]
        if not returns or any(r.value is None for r in returns):
            return None
        found = [self._activation(r.value, r, seen) for r in returns]  # type: ignore[arg-type]
        kinds_found = {f[0] if f else None for f in found}
        if len(kinds_found) != 1 or None in kinds_found:
            return None
        first = found[0]
        assert first is not None
        return first[0], first[1], f"`{classes[0].name.value}.forward` returns `{self.ctx.code(first[1])}`"

    def _report(self, call: cst.Call, arg: cst.BaseExpression, label: str,
                found: Tuple[str, cst.CSTNode, str]) -> Diagnostic:
        ctx = self.ctx
        kind, node, how = found
        row = ctx.locator.location(ctx.span(node)[0]).row
        evidence = how or f"it comes from `{ctx.code(node)}`"
        if "nll" in label.lower():
            why = ("which expects log-probabilities: it computes `-p` instead of `-log p`; use "
                   "`log_softmax` instead of `softmax`")
        elif kind == SIGMOID:
            why = "which applies the sigmoid itself: the logits are squashed twice; pass the logits"
        else:
            why = ("which applies `log_softmax` itself (`nll_loss(log_softmax(input))`): the softmax runs "
                   "twice, the loss cannot approach zero and its gradients shrink; pass the logits")
        return ctx.report(
            arg,
            f"`{ctx.code(arg)}` is already {kind} output ({evidence} (line {row})) but is passed to "
            f"`{label}`, {why}",
            help="Return logits from the model and apply softmax/sigmoid only where probabilities are needed",
        )


def _returns(function: cst.FunctionDef) -> Iterator[cst.Return]:
    """The ``return`` statements of ``function`` itself (not of nested functions)."""
    stack = list(function.body.children)
    while stack:
        node = stack.pop()
        if isinstance(node, cst.Return):
            yield node
        elif not isinstance(node, (cst.FunctionDef, cst.ClassDef, cst.Lambda)):
            stack.extend(node.children)
