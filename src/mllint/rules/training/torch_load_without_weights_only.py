from __future__ import annotations

from typing import Iterator, Optional, Tuple

import libcst as cst
from packaging.version import Version

from mllint.analysis.dataflow import Assignments
from mllint.analysis.signatures import Signature, bind
from mllint.core.context import Context
from mllint.core.diagnostic import Applicability, Diagnostic, Severity
from mllint.core.rule import Invalid, Rule, Valid

_LOADS = frozenset({"torch.load", "torch.serialization.load"})
# torch 2.13.0 `serialization.py` `load` (L1315): weights_only and mmap are keyword-only.
_LOAD = Signature(("f", "map_location", "pickle_module"), keyword_only=("weights_only", "mmap"), varkw=True)
# `_default_to_weights_only` made `weights_only=True` the default in torch 2.6.
_FLIP = Version("2.6")
# Methods only an `nn.Module` has: a loaded value they are called on is a whole pickled model.
_MODULE_METHODS = frozenset({"eval", "train", "parameters", "named_parameters", "modules", "children",
                             "named_modules", "state_dict", "forward", "zero_grad"})
# Methods returning the object they are called on (a module's `.to()`, `.cuda()`...).
_SAME_OBJECT = frozenset({"to", "cuda", "cpu", "float", "half", "bfloat16", "double"})
# Names that allow-list classes for the weights-only unpickler, or force the old default.
_ALLOW_LISTS = ("add_safe_globals", "safe_globals", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")


class TorchLoadWithoutWeightsOnly(Rule):
    """## What it does
    Checks for `torch.load(...)` calls that do not pass `weights_only=`, and reports what the
    target torch version makes of them:

    - before torch 2.6: the call unpickles with Python's full `pickle`, so loading a file can run
      arbitrary code (TorchFix's TOR102). Calls that pass `pickle_module=` are left alone: the
      author chose an unpickler on purpose.
    - since torch 2.6: the default is `weights_only=True`, which is safe, but refuses any object
      that is not tensors, primitive containers or allow-listed classes. The rule reports the
      load of a *whole pickled model*, which now raises instead of loading: a loaded value that
      is called or has `.eval()`, `.parameters()`, `.state_dict()`... called on it, or a file
      path the same module writes with `torch.save(model, path)` where `model` is used as a
      module (`model.eval()`, `model.load_state_dict(...)`).

    ## Why is this bad?
    torch `serialization.py`, `load`: when `weights_only` is not passed it is set by
    `_default_to_weights_only(pickle_module)`, which returns True when no `pickle_module` is
    given (torch 2.13.0; the `UNSAFE_MESSAGE` of the same file says "In PyTorch 2.6, we changed
    the default value of the `weights_only` argument in `torch.load` from `False` to `True`").
    Before 2.6 the default was `False` (2.4 and 2.5 warn about it with a `FutureWarning`), and
    `pickle` executes whatever callables the file names while loading it: a checkpoint
    downloaded from a hub or shared drive can run code on the training machine.

    Since 2.6 the weights-only unpickler loads tensors, dicts, lists, tuples and primitive
    values, and classes only when they are registered with `torch.serialization.add_safe_globals`
    (or the `safe_globals` context manager). A model object pickled by `torch.save(model, path)`
    names its classes (`__main__.Net`, `torch.nn.modules.linear.Linear`, ...), so loading it fails
    with `UnpicklingError: Weights only load failed` after a torch upgrade.

    The `weights_only` parameter exists since torch 1.13, so the rule's premise is torch >= 1.13.

    ## Example
    ```python
    # torch 2.5
    model.load_state_dict(torch.load("checkpoint.pt"))
    # torch 2.6+
    model = torch.load("model.pt")
    model.eval()
    ```

    ## Use instead
    ```python
    model.load_state_dict(torch.load("checkpoint.pt", weights_only=True))
    # save and load state dicts rather than whole models
    model = Net()
    model.load_state_dict(torch.load("model_state.pt"))
    model.eval()
    ```

    ## Fix safety
    Before torch 2.6, the fix adds `weights_only=True` when the loaded value is passed whole to
    `load_state_dict(...)` (directly, or through a variable): a state dict is tensors in a
    mapping, so the weights-only unpickler loads it identically, and the fix is safe. Elsewhere
    (a checkpoint dict that may hold an `argparse.Namespace`, a pickled vocabulary, a whole model)
    no fix is offered, since `weights_only=True` could make the load fail. Since torch 2.6 there
    is no fix: `weights_only=False` would load the model again but brings the code-execution risk
    back, and saving a `state_dict()` is a change to the saving side.

    ## References
    - torch `serialization.py`, `load` and `_default_to_weights_only`; `add_safe_globals`
    - https://pytorch.org/docs/stable/notes/serialization.html#weights-only
    - https://github.com/pytorch/pytorch/blob/main/SECURITY.md#untrusted-models
    - TorchFix TOR102 (`torchfix/visitors/security/__init__.py`)
    """

    code = "MLL408"
    name = "torch-load-without-weights-only"
    summary = "`torch.load` without `weights_only`: unsafe unpickling before torch 2.6, a failing model load since"
    severity = Severity.WARNING
    tags = ("security", "torch", "versions")
    triggers = (("torch",), ("load",))
    # Triage: checked on the stdlib `ast` tree before libcst parses (mllint.core.triage).
    requires = (("import:torch",), ("call-lacking:load/weights_only",))
    premise = {"torch": ">=1.13"}
    VALID = (
        # The flag is explicit either way.
        Valid("""
            import torch
            state = torch.load("ckpt.pt", weights_only=True)
            obj = torch.load("vocab.pt", weights_only=False)
            """, settings={"target_versions": {"torch": "2.5.1"}}),
        # A custom pickle module: the author chose the unpickler.
        Valid("""
            import dill
            import torch
            obj = torch.load("obj.pt", pickle_module=dill)
            """, settings={"target_versions": {"torch": "2.4.0"}}),
        # Since 2.6 a state-dict load is safe by default.
        Valid("""
            import torch
            model.load_state_dict(torch.load("ckpt.pt", map_location="cpu"))
            """, settings={"target_versions": {"torch": "2.6.0"}}),
        # Since 2.6: a checkpoint dict used as a dict.
        Valid("""
            import torch
            ckpt = torch.load(path)
            model.load_state_dict(ckpt["model"])
            start_epoch = ckpt["epoch"]
            """),
        # Since 2.6: the classes are allow-listed.
        Valid("""
            import torch
            torch.serialization.add_safe_globals([Net])
            model = torch.load("model.pt")
            model.eval()
            """),
        # Splatted keyword arguments may carry weights_only.
        Valid("""
            import torch
            model = torch.load("model.pt", **load_kwargs)
            model.eval()
            """, settings={"target_versions": {"torch": "2.1.0"}}),
        # Not torch's load.
        Valid("""
            import json
            import torch
            cfg = json.load(open("cfg.json"))
            """, settings={"target_versions": {"torch": "2.1.0"}}),
    )
    INVALID = (
        Invalid(
            """
            import torch
            model.load_state_dict(torch.load("checkpoint.pt", map_location="cpu"))
            """,
            line=2,
            message="torch 2.5.1 (configuration)",
            fix="""
            import torch
            model.load_state_dict(torch.load("checkpoint.pt", map_location="cpu", weights_only=True))
            """,
            applicability=Applicability.SAFE,
            settings={"target_versions": {"torch": "2.5.1"}},
        ),
        Invalid(
            """
            import torch
            def restore(model, path):
                state = torch.load(path)
                model.load_state_dict(state)
            """,
            line=3,
            fix="""
            import torch
            def restore(model, path):
                state = torch.load(path, weights_only=True)
                model.load_state_dict(state)
            """,
            settings={"target_versions": {"torch": "2.0.1"}},
        ),
        # A checkpoint dict: may hold more than tensors, so no fix.
        Invalid(
            """
            import torch
            ckpt = torch.load(args.resume)
            model.load_state_dict(ckpt["model"])
            """,
            line=2,
            message="arbitrary code",
            settings={"target_versions": {"torch": "2.5.1"}},
        ),
        # Since 2.6: a whole pickled model, judged by what was saved to the same path.
        Invalid(
            """
            import torch
            import torchvision.models as models
            model = models.vgg16()
            model.load_state_dict(torch.load("model_weights.pth"))
            model.eval()
            torch.save(model, "model.pth")
            model = torch.load("model.pth")
            """,
            line=7,
            message="(line 6) pickles the whole model",
        ),
        # Since 2.6: a whole pickled model.
        Invalid(
            """
            import torch
            model = torch.load("model.pt")
            model.eval()
            """,
            line=2,
            message="torch 2.13.0 (assumed",
        ),
        Invalid(
            """
            import torch
            model = torch.load(args.model_path).to(device)
            with torch.no_grad():
                logits = model(batch)
            """,
            line=2,
            message="`model(...)`",
        ),
        Invalid(
            """
            from torch import load
            net = load("net.pth", map_location="cpu")
            prediction = net(x)
            """,
            line=2,
            message="weights_only=True",
            settings={"target_versions": {"torch": "2.6.0"}},
        ),
    )

    def check(self, ctx: Context) -> Iterator[Diagnostic]:
        version = ctx.target_version("torch")
        if version is None:
            return
        allow_listed = any(word in ctx.source for word in _ALLOW_LISTS)
        fact = ctx.version_fact("torch")
        for call in ctx.nodes(cst.Call):
            if not ctx.names.resolve(call.func) & _LOADS:
                continue
            binding = bind(call, _LOAD)
            if binding.opaque or binding.passed("weights_only") or binding.passed("pickle_module"):
                continue
            source = ctx.code(binding.value("f")) if binding.passed("f") else "the file"
            if version < _FLIP:
                fix = None
                if call.args and self._feeds_load_state_dict(ctx, call):
                    fix = ctx.fix("Add `weights_only=True` (the value is a state dict)", Applicability.SAFE,
                                  self._add_keyword(ctx, call))
                yield ctx.report(
                    call,
                    f"with {fact}, `torch.load` defaults to `weights_only=False`: unpickling "
                    f"`{source}` can execute arbitrary code from the file",
                    fix=fix,
                    help="Pass `weights_only=True` (tensors and containers only), or "
                         "`weights_only=False` for a file you trust",
                )
                continue
            if allow_listed:
                continue
            evidence = self._used_as_module(ctx, call) or self._saved_as_module(ctx, binding.value("f"))
            if evidence is not None:
                yield ctx.report(
                    call,
                    f"with {fact}, `torch.load` defaults to `weights_only=True`, which refuses to "
                    f"unpickle a whole model object, and {evidence}: this load raises `UnpicklingError`",
                    help="Save `model.state_dict()` and load it into a constructed model, or pass "
                         "`weights_only=False` for a file you trust",
                )

    @staticmethod
    def _add_keyword(ctx: Context, call: cst.Call):
        last = call.args[-1]
        start, end = ctx.span(last.value)
        if last.comma is not cst.MaybeSentinel.DEFAULT:  # a trailing comma: insert after it
            start, end = ctx.span(last)
            return ctx.edit(end, end, " weights_only=True,")
        return ctx.edit(end, end, ", weights_only=True")

    @staticmethod
    def _assigned_name(ctx: Context, call: cst.Call) -> Optional[cst.Name]:
        parent = ctx.parent(call)
        if isinstance(parent, cst.Assign) and len(parent.targets) == 1 \
                and isinstance(parent.targets[0].target, cst.Name):
            return parent.targets[0].target
        return None

    def _uses(self, ctx: Context, call: cst.Call) -> Iterator[Tuple[cst.CSTNode, cst.CSTNode]]:
        """(use, its parent) for the loaded value itself and each later read of the name it is
        assigned to, while that assignment still reaches."""
        value = call
        while True:  # `torch.load(path).to(device)` is the same object
            parent = ctx.parent(value)
            outer = ctx.parent(parent) if parent is not None else None
            if not (isinstance(parent, cst.Attribute) and parent.attr.value in _SAME_OBJECT
                    and isinstance(outer, cst.Call) and outer.func is parent):
                break
            value = outer
        yield value, ctx.parent(value)
        call = value
        name = self._assigned_name(ctx, call)
        if name is None:
            return
        assignments = ctx.get(Assignments)
        scope = ctx.enclosing(call, cst.FunctionDef)
        for use in ctx.nodes(cst.Name):
            if use.value == name.value and use is not name and ctx.order(use) > ctx.end_order(call) \
                    and ctx.enclosing(use, cst.FunctionDef) is scope and assignments.reaching(use) is call:
                yield use, ctx.parent(use)

    def _feeds_load_state_dict(self, ctx: Context, call: cst.Call) -> bool:
        for use, parent in self._uses(ctx, call):
            if isinstance(parent, cst.Arg) and parent.keyword is None and parent.star == "":
                outer = ctx.parent(parent)
                if isinstance(outer, cst.Call) and isinstance(outer.func, cst.Attribute) \
                        and outer.func.attr.value == "load_state_dict" and outer.args[0] is parent:
                    return True
        return False

    def _used_as_module(self, ctx: Context, call: cst.Call) -> Optional[str]:
        for use, parent in self._uses(ctx, call):
            if isinstance(parent, cst.Attribute) and parent.value is use \
                    and parent.attr.value in _MODULE_METHODS:
                outer = ctx.parent(parent)
                if isinstance(outer, cst.Call) and outer.func is parent:
                    return f"the loaded value is used as a module (`{ctx.code(parent)}()`)"
            if isinstance(parent, cst.Call) and parent.func is use and use is not call:
                return f"the loaded value is used as a module (`{ctx.code(use)}(...)`)"
        return None

    @staticmethod
    def _saved_as_module(ctx: Context, path: Optional[cst.BaseExpression]) -> Optional[str]:
        """``torch.save(model, <the same literal path>)`` of a variable the file uses as a module
        (``model.eval()``, ``model.load_state_dict(...)``...)."""
        if not isinstance(path, cst.SimpleString):
            return None
        for save in ctx.nodes(cst.Call):
            if "torch.save" not in ctx.names.resolve(save.func) or len(save.args) < 2:
                continue
            saved, target = save.args[0].value, save.args[1].value
            if not (isinstance(target, cst.SimpleString) and target.evaluated_value == path.evaluated_value
                    and isinstance(saved, cst.Name)):
                continue
            for attribute in ctx.nodes(cst.Attribute):
                if isinstance(attribute.value, cst.Name) and attribute.value.value == saved.value \
                        and attribute.attr.value in _MODULE_METHODS | {"load_state_dict"}:
                    row = ctx.locator.location(ctx.span(save)[0]).row
                    return (f"`{ctx.code(save)}` (line {row}) pickles the whole model "
                            f"(`{saved.value}.{attribute.attr.value}(...)` shows it is a module)")
        return None
