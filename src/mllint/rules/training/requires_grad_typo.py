from __future__ import annotations

from typing import Iterator, Optional

import libcst as cst

from mllint.analysis.dataflow import Assignments
from mllint.analysis.hf import is_model_kind
from mllint.analysis.instances import UNKNOWN, Instances
from mllint.core.context import Context
from mllint.core.diagnostic import Applicability, Diagnostic, Fix, Severity
from mllint.core.rule import Invalid, Rule, Valid

# Misspellings of ``requires_grad`` that Python accepts silently as new attributes.
TYPOS = frozenset({"require_grad", "require_grads", "requires_grads", "requries_grad",
                   "requires_gradient", "require_gradient"})
# Iterating over these yields tensors (parameters, buffers) or modules.
_TENSOR_ITERATORS = frozenset({"parameters", "named_parameters", "buffers", "named_buffers"})
_MODULE_ITERATORS = frozenset({"modules", "named_modules", "children", "named_children"})
# Wrappers a loop may put around such an iterator.
_ITER_WRAPPERS = frozenset({"list", "tuple", "enumerate", "chain", "filter"})
# Tensor methods that return a tensor (``target = input.clone()``).
_TENSOR_METHODS = frozenset({"clone", "detach", "to", "cuda", "cpu", "float", "half", "double",
                             "bfloat16", "long", "view", "reshape", "contiguous", "new_tensor",
                             "new_zeros", "new_ones", "new_empty"})
_MODULE_BASES = ("torch.nn.Module", "lightning.pytorch.LightningModule", "transformers.PreTrainedModel")

TENSOR, MODULE = "tensor", "module"


class RequiresGradTypo(Rule):
    """## What it does
    Checks for assignments to a misspelled `requires_grad` attribute, such as
    `p.require_grad = False`, `x.requires_grads = True` or `model.requries_grad = False`, on a
    parameter, a tensor or a module.

    ## Why is this bad?
    `torch.Tensor` instances (and so `nn.Parameter`) have a `__dict__`, so assigning to any
    attribute name succeeds: `p.require_grad = False` quietly creates a new attribute and
    leaves `p.requires_grad` unchanged. The "frozen" backbone keeps training (and its optimizer
    state and gradients keep using memory), or a tensor meant to need gradients gets none.
    Nothing fails, so the typo survives until someone counts trainable parameters.

    On a module the misspelling is doubly wrong: `nn.Module.__setattr__` (torch
    `nn/modules/module.py`) stores a plain attribute for a value that is not a parameter, module
    or buffer, and a module has no `requires_grad` flag at all; freezing a module is
    `Module.requires_grad_(False)`, which sets the flag on every parameter.

    The rule stays silent when the file reads the attribute back (`if layer.require_grad:`), a
    class of the file defines it (a config object with its own `require_grad` field), the name
    appears as a string (`getattr(obj, "require_grad")`), or the receiver is not known to be a
    tensor or module (a parameter iterated from `.parameters()`, a `.weight`/`.bias`, a tensor
    made by `torch.*` or a tensor method, a module of a known class or `self` in an
    `nn.Module` subclass). The behaviour is the same in every torch version.

    ## Example
    ```python
    for p in model.encoder.parameters():
        p.require_grad = False
    ```

    ## Use instead
    ```python
    for p in model.encoder.parameters():
        p.requires_grad = False
    ```
    or `model.encoder.requires_grad_(False)`.

    ## Fix safety
    On a tensor or parameter the fix renames the attribute to `requires_grad`; it is safe: it
    does what the statement was written to do. On a module the rename would still set a
    meaningless attribute, so the fix rewrites the statement to `module.requires_grad_(value)`;
    that is unsafe because it changes which parameters train (which is the point, but it should
    be reviewed).

    ## References
    - torch `nn/modules/module.py`, `Module.__setattr__` and `Module.requires_grad_`
    - https://pytorch.org/docs/stable/notes/autograd.html#setting-requires-grad
    - TorchFix TOR002 (`torchfix/visitors/misc/__init__.py`, `TorchRequireGradVisitor`)
    """

    code = "MLL407"
    name = "requires-grad-typo"
    summary = "assignment to a misspelled `requires_grad` creates a new attribute and freezes nothing"
    severity = Severity.ERROR
    tags = ("correctness", "torch", "training")
    triggers = (("require_grad", "requires_grads", "requries_grad", "requires_gradient", "require_gradient"),)
    # Triage: checked on the stdlib `ast` tree before libcst parses (mllint.core.triage).
    requires = (tuple(f"assign:{typo}" for typo in sorted(TYPOS)),)
    premise = {"torch": ">=1.0"}
    VALID = (
        # The right spelling, and the in-place method.
        Valid("""
            for p in model.parameters():
                p.requires_grad = False
            model.encoder.requires_grad_(False)
            """),
        # A user class that defines the attribute as a field of its own.
        Valid("""
            class FreezeConfig:
                require_grad = True
            cfg = FreezeConfig()
            cfg.require_grad = False
            """),
        # The attribute is read back: a flag of the program, not a typo of torch's.
        Valid("""
            import torch.nn as nn
            class Adapter(nn.Module):
                def __init__(self, require_grad):
                    super().__init__()
                    self.require_grad = require_grad
                    self.proj = nn.Linear(8, 8)
                def forward(self, x):
                    return self.proj(x) if self.require_grad else self.proj(x).detach()
            """),
        # Unknown receiver (an argparse namespace): cannot tell.
        Valid("""
            args = parser.parse_args()
            args.require_grad = False
            """),
        # Read through getattr by name.
        Valid("""
            for p in model.parameters():
                p.require_grad = False
            frozen = [p for p in model.parameters() if getattr(p, "require_grad", False)]
            """),
    )
    INVALID = (
        Invalid(
            """
            for p in model.backbone.parameters():
                p.require_grad = False
            """,
            line=2,
            message="`p.requires_grad` is unchanged",
            fix="""
            for p in model.backbone.parameters():
                p.requires_grad = False
            """,
            applicability=Applicability.SAFE,
        ),
        Invalid(
            """
            for name, param in model.named_parameters():
                if not name.startswith("classifier"):
                    param.requires_grads = False
            """,
            line=3,
            fix="""
            for name, param in model.named_parameters():
                if not name.startswith("classifier"):
                    param.requires_grad = False
            """,
            applicability=Applicability.SAFE,
        ),
        Invalid(
            """
            import torch
            target = batch.clone()
            target.require_grad = False
            w = torch.zeros(10, 1)
            w.require_grad = True
            """,
            line=3,
            count=2,
        ),
        Invalid(
            """
            from transformers import AutoModel
            encoder = AutoModel.from_pretrained("bert-base-uncased")
            encoder.embeddings.word_embeddings.weight.require_grad = False
            """,
            line=3,
            applicability=Applicability.SAFE,
        ),
        Invalid(
            """
            from transformers import AutoModel
            encoder = AutoModel.from_pretrained("bert-base-uncased")
            encoder.require_grad = False
            """,
            line=3,
            message="`encoder.requires_grad_(False)`",
            fix="""
            from transformers import AutoModel
            encoder = AutoModel.from_pretrained("bert-base-uncased")
            encoder.requires_grad_(False)
            """,
            applicability=Applicability.UNSAFE,
        ),
        Invalid(
            """
            import torch.nn as nn
            class Head(nn.Module):
                def freeze(self):
                    self.require_grad = False
            """,
            line=4,
            applicability=Applicability.UNSAFE,
        ),
        Invalid(
            """
            for m in model.modules():
                m.require_grad = False
            """,
            line=2,
            applicability=Applicability.UNSAFE,
        ),
    )

    def check(self, ctx: Context) -> Iterator[Diagnostic]:
        targets = [(assign, t.target) for assign in ctx.nodes(cst.Assign) for t in assign.targets
                   if isinstance(t.target, cst.Attribute) and t.target.attr.value in TYPOS]
        if not targets:
            return
        stored = {id(target) for _, target in targets}
        used = {node.attr.value for node in ctx.nodes(cst.Attribute)
                if node.attr.value in TYPOS and id(node) not in stored}
        used |= {s.evaluated_value for s in ctx.nodes(cst.SimpleString)
                 if isinstance(s.evaluated_value, str) and s.evaluated_value in TYPOS}
        used |= self._class_fields(ctx)
        for assign, target in targets:
            attr = target.attr.value
            if attr in used:
                continue
            kind = self._receiver_kind(ctx, target.value, assign)
            if kind is None:
                continue
            receiver = ctx.code(target.value)
            if kind == TENSOR:
                message = (f"`{receiver}.{attr} = ...` creates a new attribute: `{receiver}.requires_grad` "
                           "is unchanged, so the tensor's gradient tracking is not switched")
                fix = ctx.fix("Rename to `requires_grad`", Applicability.SAFE,
                              ctx.replace(target.attr, "requires_grad"))
            else:
                value = ctx.code(assign.value)
                message = (f"`{receiver}.{attr} = ...` sets a plain attribute on a module: no parameter "
                           f"is frozen or unfrozen; use `{receiver}.requires_grad_({value})`")
                fix = self._module_fix(ctx, assign, receiver, value)
            yield ctx.report(target, message, fix=fix,
                             help="`requires_grad` is the tensor flag; `requires_grad_()` sets it on a module's parameters")

    @staticmethod
    def _class_fields(ctx: Context) -> set:
        """Typo names a class of the file defines in its body (``require_grad = True``)."""
        out = set()
        for cls in ctx.nodes(cst.ClassDef):
            for statement in cls.body.body:
                if isinstance(statement, cst.SimpleStatementLine):
                    for small in statement.body:
                        target = small.target if isinstance(small, cst.AnnAssign) else None
                        if isinstance(small, cst.Assign):
                            target = small.targets[0].target
                        if isinstance(target, cst.Name) and target.value in TYPOS:
                            out.add(target.value)
        return out

    def _receiver_kind(self, ctx: Context, receiver: cst.BaseExpression, at: cst.CSTNode) -> Optional[str]:
        if isinstance(receiver, cst.Attribute) and receiver.attr.value in ("weight", "bias"):
            return TENSOR
        if isinstance(receiver, cst.Name):
            if receiver.value == "self":
                cls = ctx.enclosing(at, cst.ClassDef)
                if cls is not None and any(ctx.names.resolve(b.value) & set(_MODULE_BASES) for b in cls.bases):
                    return MODULE
                return None
            loop = self._loop_kind(ctx, receiver, at)
            if loop is not None:
                return loop
            value = ctx.get(Assignments).reaching(receiver)
            if isinstance(value, cst.Call) and self._makes_tensor(ctx, value):
                return TENSOR
        kinds = ctx.get(Instances).kinds(receiver, at)
        if kinds and UNKNOWN not in kinds and all(is_model_kind(k) or k.startswith("torch.nn.") for k in kinds):
            return MODULE
        return None

    @staticmethod
    def _makes_tensor(ctx: Context, call: cst.Call) -> bool:
        names = ctx.names.resolve(call.func)
        if any(n.startswith("torch.") and n.rsplit(".", 1)[-1][:1].islower() for n in names) \
                or "torch.nn.Parameter" in names:
            return True
        return not names and isinstance(call.func, cst.Attribute) and call.func.attr.value in _TENSOR_METHODS

    @staticmethod
    def _loop_kind(ctx: Context, name: cst.Name, at: cst.CSTNode) -> Optional[str]:
        """TENSOR/MODULE when ``name`` is the (last) target of an enclosing ``for`` over
        ``.parameters()``-like / ``.modules()``-like iterators."""
        for loop in ctx.ancestors(at):
            if not isinstance(loop, cst.For):
                continue
            target = loop.target
            if isinstance(target, cst.Tuple) and target.elements:
                target = target.elements[-1].value
            if not (isinstance(target, cst.Name) and target.value == name.value):
                continue
            iterable = loop.iter
            while isinstance(iterable, cst.Call) and isinstance(iterable.func, cst.Name) \
                    and iterable.func.value in _ITER_WRAPPERS:
                positional = [a for a in iterable.args if a.keyword is None and not a.star]
                if not positional:
                    return None
                iterable = positional[-1].value
            if isinstance(iterable, cst.Call) and isinstance(iterable.func, cst.Attribute):
                method = iterable.func.attr.value
                if method in _TENSOR_ITERATORS:
                    return TENSOR
                if method in _MODULE_ITERATORS:
                    return MODULE
            return None
        return None

    @staticmethod
    def _module_fix(ctx: Context, assign: cst.Assign, receiver: str, value: str) -> Fix:
        message = f"Call `{receiver}.requires_grad_({value})`"
        if len(assign.targets) == 1 and isinstance(ctx.parent(assign), cst.SimpleStatementLine):
            return ctx.fix(message, Applicability.UNSAFE, ctx.replace(assign, f"{receiver}.requires_grad_({value})"))
        return ctx.fix(message, Applicability.DISPLAY_ONLY, ctx.replace(assign, f"{receiver}.requires_grad_({value})"))
