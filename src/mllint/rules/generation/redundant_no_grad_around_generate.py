from __future__ import annotations

from typing import Iterator, Union

import libcst as cst

from mllint.analysis.batches import Batches
from mllint.analysis.generation import Generation, is_literal
from mllint.core.context import Context
from mllint.core.diagnostic import Diagnostic, Severity
from mllint.core.rule import Invalid, Rule, Valid

_NO_GRAD = frozenset({"torch.no_grad", "torch.autograd.no_grad", "torch.autograd.grad_mode.no_grad"})
_INFERENCE = frozenset({"torch.inference_mode", "torch.autograd.grad_mode.inference_mode"})
_SET_GRAD = frozenset({"torch.set_grad_enabled", "torch.autograd.set_grad_enabled"})
# Calls that never need gradient tracking switched off: Python built-ins, string/list/dict
# methods, device moves and logging.
_BUILTINS = frozenset({"print", "len", "range", "enumerate", "zip", "list", "tuple", "dict", "set", "str", "int",
                       "float", "bool", "sorted", "isinstance", "tqdm"})
_METHODS = frozenset({"to", "cuda", "cpu", "tolist", "item", "append", "extend", "format", "strip", "split",
                      "replace", "join", "lower", "upper", "startswith", "endswith", "keys", "values", "items",
                      "get", "write", "info", "debug", "warning"})
_TORCH_FACTORIES = frozenset({"torch.tensor", "torch.LongTensor", "torch.manual_seed"})


class RedundantNoGradAroundGenerate(Rule):
    """## What it does
    Points out `with torch.no_grad():`, `with torch.inference_mode():`,
    `with torch.set_grad_enabled(False):` and the `@torch.no_grad()` / `@torch.inference_mode()`
    decorators when all they wrap is `generate()` of a Hugging Face model plus work that never
    records gradients anyway (tokenizing, decoding, printing, moving tensors, list and string
    operations). A block that also calls the model, computes a loss, or calls anything the rule
    does not know is left alone, as are `generate()` calls of models that are not Hugging Face
    models (a home-grown `generate` may need the wrapper).

    This is an explanatory diagnostic, off by default: the wrapper does no harm.

    ## Why is this bad?
    It is not a bug, and that is the point: `GenerationMixin.generate` is itself decorated with
    `@torch.no_grad()` (transformers `generation/utils.py`, in 4.30.0, 4.46.0, 4.57.6 and
    5.23.0), and peft's `PeftModel.generate` delegates to it. Wrapping it again does not change
    the generated tokens, so adding `torch.no_grad()` is never the fix for bad generations
    (outputs that are all padding, repeated, or cut short), a folk remedy that hides the real
    cause: labels padded with the pad id instead of -100, a missing attention mask or a
    right-padded batch for a decoder-only model, `max_length` counting the prompt. In Lightning,
    `validation_step` and `test_step` already run under `torch.inference_mode()` by default.

    ## Example
    ```python
    with torch.no_grad():
        output_ids = model.generate(**inputs, max_new_tokens=64)
    text = tokenizer.batch_decode(output_ids, skip_special_tokens=True)
    ```

    ## Use instead
    ```python
    output_ids = model.generate(**inputs, max_new_tokens=64)
    text = tokenizer.batch_decode(output_ids, skip_special_tokens=True)
    ```

    ## Fix safety
    There is no fix: removing the wrapper means re-indenting the block by hand, and keeping it is
    harmless.

    ## References
    - transformers `generation/utils.py`, `GenerationMixin.generate` (`@torch.no_grad()`)
    - lightning `pytorch/trainer/trainer.py`, `Trainer(inference_mode=True)`
    """

    code = "MLL207"
    name = "redundant-no-grad-around-generate"
    summary = "`torch.no_grad()` around `generate()`, which already runs without gradients"
    severity = Severity.INFO
    default_enabled = False
    tags = ("explanation", "transformers", "generation")
    triggers = (("generate",), ("no_grad", "inference_mode", "set_grad_enabled"))
    # Triage: checked on the stdlib `ast` tree before libcst parses (mllint.core.triage).
    requires = (
        ("import:transformers", "import:peft"),
        ("call:generate",),
        ("name:no_grad", "name:inference_mode", "name:set_grad_enabled"),
    )
    premise = {"transformers": ">=4.30"}
    VALID = (
        # The block also runs a forward pass for the loss.
        Valid("""
            import torch
            from transformers import AutoModelForCausalLM
            model = AutoModelForCausalLM.from_pretrained("gpt2")
            with torch.no_grad():
                loss = model(**batch, labels=batch["input_ids"]).loss
                out = model.generate(**prompt, max_new_tokens=20)
            """),
        # A home-grown model's generate.
        Valid("""
            import torch
            model = GPT(config)
            with torch.no_grad():
                y = model.generate(x, max_new_tokens=500)
            """),
        # Something the rule does not know runs in the block.
        Valid("""
            import torch
            from transformers import AutoModelForSeq2SeqLM
            model = AutoModelForSeq2SeqLM.from_pretrained("t5-small")
            with torch.no_grad():
                out = model.generate(**enc)
                score = compute_metrics(out, refs)
            """),
        # set_grad_enabled(True) is not a no-grad block.
        Valid("""
            import torch
            from transformers import AutoModelForCausalLM
            model = AutoModelForCausalLM.from_pretrained("gpt2")
            with torch.set_grad_enabled(True):
                out = model.generate(**enc)
            """),
        # A decorated function that also scores with a forward pass.
        Valid("""
            import torch
            from transformers import AutoModelForCausalLM
            model = AutoModelForCausalLM.from_pretrained("gpt2")
            @torch.no_grad()
            def evaluate(batch):
                logits = model(**batch).logits
                return model.generate(**batch), logits
            """),
    )
    INVALID = (
        Invalid(
            """
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
            tokenizer = AutoTokenizer.from_pretrained("gpt2")
            model = AutoModelForCausalLM.from_pretrained("gpt2")
            inputs = tokenizer(prompt, return_tensors="pt").to("cuda")
            with torch.no_grad():
                out = model.generate(**inputs, max_new_tokens=50)
                print(tokenizer.decode(out[0], skip_special_tokens=True))
            """,
            line=6,
            message="`torch.no_grad()`",
        ),
        # Decorated generation helper in a Lightning module.
        Invalid(
            """
            import torch
            import lightning as L
            from transformers import T5ForConditionalGeneration
            class Summarizer(L.LightningModule):
                def __init__(self):
                    super().__init__()
                    self.model = T5ForConditionalGeneration.from_pretrained("t5-small")
                @torch.no_grad()
                def summarize(self, input_ids, attention_mask):
                    ids = self.model.generate(input_ids=input_ids, attention_mask=attention_mask, num_beams=4)
                    return [self.tokenizer.decode(i, skip_special_tokens=True) for i in ids]
            """,
            line=8,
            message="decorated",
        ),
        Invalid(
            """
            import torch
            from transformers import AutoModelForCausalLM
            model = AutoModelForCausalLM.from_pretrained("gpt2")
            with torch.inference_mode():
                out = model.generate(ids, max_new_tokens=20)
            """,
            line=4,
            message="`torch.inference_mode()`",
        ),
    )

    def check(self, ctx: Context) -> Iterator[Diagnostic]:
        for node in ctx.nodes(cst.With):
            for item in node.items:
                if self._wrapper(ctx, item.item):
                    yield from self._check(ctx, item.item, node.body, node)
        for function in ctx.nodes(cst.FunctionDef):
            for decorator in function.decorators:
                if self._wrapper(ctx, decorator.decorator, decorator=True):
                    yield from self._check(ctx, decorator.decorator, function.body, function)

    def _wrapper(self, ctx: Context, expr: cst.BaseExpression, decorator: bool = False) -> bool:
        if isinstance(expr, cst.Call):
            names = ctx.names.resolve(expr.func)
            if names & (_NO_GRAD | _INFERENCE):
                return not expr.args
            return bool(names & _SET_GRAD) and len(expr.args) == 1 and is_literal(expr.args[0].value, "False")
        return decorator and bool(ctx.names.resolve(expr) & (_NO_GRAD | _INFERENCE))

    def _check(self, ctx: Context, wrapper: cst.BaseExpression, body: cst.BaseSuite,
               owner: Union[cst.With, cst.FunctionDef]) -> Iterator[Diagnostic]:
        start, end = ctx.order(body), ctx.end_order(body)
        if any(start < ctx.order(n) <= end for kind in (cst.FunctionDef, cst.ClassDef, cst.Lambda)
               for n in ctx.nodes(kind)):
            return
        generation = ctx.get(Generation)
        generates = {id(c.call): c for c in generation.calls}
        found = []
        for call in ctx.nodes(cst.Call):
            if not start < ctx.order(call) <= end:
                continue
            if id(call) in generates:
                found.append(generates[id(call)])
            elif not self._harmless(ctx, call):
                return
        if not found:
            return
        shown = ctx.code(wrapper)
        form = (f"`{owner.name.value}` decorated with `@{shown}`" if isinstance(owner, cst.FunctionDef)
                else f"`with {shown}:`")
        call = ctx.code(found[0].call.func)
        yield ctx.report(
            wrapper,
            f"{form} only wraps `{call}()` and work that records no gradients: `GenerationMixin.generate` "
            f"is already decorated with `@torch.no_grad()` (transformers 4.30 to 5.23), so "
            f"`{shown}` changes nothing about what is generated and is not a fix for bad outputs",
            help="Keep it if you like; look for the cause of bad generations elsewhere (labels, attention "
                 "mask, padding side, length settings)",
        )

    def _harmless(self, ctx: Context, call: cst.Call) -> bool:
        func = call.func
        names = ctx.names.resolve(func)
        if names & _TORCH_FACTORIES:
            return True
        if isinstance(func, cst.Name):
            allowed = {func.value, f"builtins.{func.value}", "tqdm.tqdm", "tqdm.auto.tqdm"}
            if func.value in _BUILTINS and not names - allowed:
                return True
            return ctx.get(Batches).is_tokenizer(func, call)
        if isinstance(func, cst.Attribute):
            if func.attr.value in _METHODS and not names:
                return True
            return ctx.get(Batches).is_tokenizer(func.value, call) or ctx.get(Batches).is_tokenizer(func, call)
        return False
