from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from typing import Iterator, List, Optional, Tuple

import libcst as cst

from mllint.analysis.dataflow import Assignments
from mllint.analysis.instances import UNKNOWN, Instances
from mllint.analysis.masks import DECODERS, AttentionSlots, TorchCall
from mllint.analysis.signatures import Signature, bind
from mllint.core.context import Context
from mllint.core.diagnostic import Diagnostic, Severity
from mllint.core.rule import Invalid, Rule, Valid

_LOSS_CLASSES = ("torch.nn.CrossEntropyLoss", "torch.nn.NLLLoss")
_LOSS_FUNCTIONS = ("torch.nn.functional.cross_entropy", "torch.nn.functional.nll_loss")
_LOSS_CALL = Signature(("input", "target"), varkw=True)
# Calls that keep a tensor's content (and order of positions) for "is it the same target?".
_SAME_CONTENT = frozenset({"view", "reshape", "flatten", "contiguous", "transpose", "permute", "t",
                           "squeeze", "unsqueeze", "to", "cuda", "cpu", "long", "int", "detach", "clone",
                           "type"})
_TRANSPOSING = frozenset({"transpose", "permute", "t", "T"})
# Calls that tile a start-token tensor over the batch.
_TILING = frozenset({"repeat", "expand", "repeat_interleave", "unsqueeze", "view", "reshape", "to",
                     "long", "cuda", "type"})
_START = re.compile(r"bos|sos|start|begin|<s>", re.IGNORECASE)
_BACKWARD = ("backward", "manual_backward")


@dataclass(frozen=True)
class DecoderInput:
    """The argument a model call gives the decoder as its input tokens."""

    call: cst.Call  # the model call in the training step
    arg: cst.Arg  # at that call
    leaves: Tuple[cst.BaseExpression, ...]  # the token tensors it is computed from, unsliced
    torch_call: TorchCall
    transposed: bool  # the way from the argument to the decoder transposes it
    via: Optional[str]  # "Seq2Seq.forward" when the call goes through a local module


class TargetNotShifted(Rule):
    """## What it does
    Checks training steps of `nn.Transformer` / `nn.TransformerDecoder(Layer)` models (called
    directly, or through one module of the same file whose `forward` passes its target argument
    on to the decoder) for a missing teacher-forcing split:

    - the same un-sliced target tensor is both the decoder input and the target of the
      cross-entropy / NLL loss (`out = model(src, tgt)` ... `criterion(out.view(-1, V),
      tgt.view(-1))`); reshapes, transposes and device moves do not count as a shift;
    - the decoder input is a constant start-token tensor (`torch.full((B, T), BOS)`,
      `torch.full_like(tgt, SOS)`, `torch.ones(B, T).long() * bos_idx`, `.fill_(start)`,
      `torch.tensor([[sos]] * batch_size)`) while the model is trained.

    A training step is a function or loop that calls `.backward()` (or `manual_backward`), or a
    Lightning `training_step`; code under `torch.no_grad()` is left alone, and so is a start-token
    tensor that grows inside the loop (autoregressive decoding).

    ## Why is this bad?
    `nn.Transformer` does not shift anything: its `forward` runs the encoder and the decoder on
    exactly the tensors it is given (torch `nn/modules/transformer.py`, `Transformer.forward`,
    every 2.x release). With the target itself as decoder input, position *t* sees token *t*
    (the causal mask allows the diagonal) and is asked to predict token *t*: the model learns to
    copy, the loss drops towards zero, and at inference, where the next token is unknown, it
    produces garbage. With a constant start-token input the decoder never sees the target
    prefix, so every position has to guess from the source alone and the model cannot learn
    to continue a sequence. The reference recipe (pytorch/tutorials
    `beginner_source/translation_transformer.py`) feeds `tgt[:-1]` to the model and computes the
    loss against `tgt[1:]`.

    Only torch transformer decoders are checked: Hugging Face models shift labels internally,
    and objectives that legitimately predict the input (denoising, masked LM, regression on the
    same time step) use computed inputs or other losses.

    ## Example
    ```python
    for src, tgt in loader:
        logits = model(src, tgt)
        loss = criterion(logits.reshape(-1, logits.size(-1)), tgt.reshape(-1))
        loss.backward()
    ```

    ## Use instead
    ```python
    for src, tgt in loader:
        tgt_input, tgt_out = tgt[:-1], tgt[1:]  # sequence-first; tgt[:, :-1] / tgt[:, 1:] if batch_first
        logits = model(src, tgt_input)
        loss = criterion(logits.reshape(-1, logits.size(-1)), tgt_out.reshape(-1))
        loss.backward()
    ```

    ## Fix safety
    There is no fix: where to slice depends on the batch layout and on whether the data has a
    start token, and the causal mask and padding masks must follow the shorter input. The
    message shows the split for the layout the decoder was built with.

    ## References
    - torch `nn/modules/transformer.py`, `Transformer.forward`, `TransformerDecoder.forward`
    - https://github.com/pytorch/tutorials/blob/main/beginner_source/translation_transformer.py
    - https://pytorch.org/docs/stable/generated/torch.nn.Transformer.html
    """

    code = "MLL305"
    name = "target-not-shifted"
    summary = "target used unshifted as decoder input and loss target, or constant start tokens in training"
    severity = Severity.ERROR
    tags = ("correctness", "torch")
    triggers = (("Transformer",), ("backward", "training_step"))
    # Triage: checked on the stdlib `ast` tree before libcst parses (mllint.core.triage).
    requires = (
        ("import:torch",),
        ("name:Transformer", "name:TransformerDecoder", "name:TransformerDecoderLayer"),
        ("call:backward", "call:manual_backward", "name:training_step"),
    )
    premise = {"torch": ">=1.2"}
    VALID = (
        # The tutorial's split, sequence-first.
        Valid("""
            import torch
            from torch import nn
            class Seq2Seq(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.transformer = nn.Transformer(d_model=256)
                def forward(self, src, trg):
                    return self.transformer(self.src_emb(src), self.tgt_emb(trg))
            model = Seq2Seq()
            loss_fn = torch.nn.CrossEntropyLoss(ignore_index=PAD_IDX)
            for src, tgt in loader:
                tgt_input = tgt[:-1, :]
                logits = model(src, tgt_input)
                tgt_out = tgt[1:, :]
                loss = loss_fn(logits.reshape(-1, logits.shape[-1]), tgt_out.reshape(-1))
                loss.backward()
            """),
        # The full target goes in and the *outputs* are shifted against it: fine.
        Valid("""
            import torch.nn.functional as F
            from torch import nn
            class LM(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.dec = nn.TransformerDecoder(nn.TransformerDecoderLayer(128, 4, batch_first=True), 2)
                def forward(self, memory, tokens):
                    return self.dec(self.emb(tokens), memory)
            model = LM()
            def train_step(memory, tokens, opt):
                out = model(memory, tokens)
                loss = F.cross_entropy(out[:, :-1].flatten(0, 1), tokens[:, 1:].flatten())
                loss.backward()
            """),
        # The module shifts inside forward.
        Valid("""
            import torch
            from torch import nn
            class Seq2Seq(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.transformer = nn.Transformer(batch_first=True)
                def forward(self, src, tgt):
                    dec_in = torch.cat([self.bos.expand(tgt.size(0), 1), tgt[:, :-1]], dim=1)
                    return self.transformer(self.emb(src), self.emb(dec_in))
            model = Seq2Seq()
            crit = torch.nn.CrossEntropyLoss()
            for src, tgt in loader:
                out = model(src, tgt)
                loss = crit(out.reshape(-1, V), tgt.reshape(-1))
                loss.backward()
            """),
        # A method of the module shifts the target before the decoder sees it.
        Valid("""
            import torch
            from torch import nn
            class Model(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.t = nn.Transformer(batch_first=True)
                def shift_right(self, x):
                    return torch.cat([torch.full_like(x[:, :1], self.bos), x[:, :-1]], dim=1)
                def training_step(self, batch, batch_idx):
                    src, tgt = batch
                    out = self.head(self.t(self.emb(src), self.emb(self.shift_right(tgt))))
                    return nn.functional.cross_entropy(out.flatten(0, 1), tgt.flatten())
            """),
        # Start tokens at inference (greedy decoding, no backward) are correct.
        Valid("""
            import torch
            from torch import nn
            transformer = nn.Transformer()
            @torch.no_grad()
            def greedy(src_emb, embed, bos_idx, steps):
                ys = torch.full((1, src_emb.size(1)), bos_idx, dtype=torch.long)
                for _ in range(steps):
                    out = transformer(src_emb, embed(ys))
                    ys = torch.cat([ys, out[-1:].argmax(-1)], dim=0)
                return ys
            """),
        # Hugging Face models shift labels themselves; regression losses are not token targets.
        Valid("""
            import torch
            from transformers import AutoModelForSeq2SeqLM
            model = AutoModelForSeq2SeqLM.from_pretrained("t5-small")
            for batch in loader:
                out = model(input_ids=batch["input_ids"], decoder_input_ids=batch["labels"])
                loss = torch.nn.functional.cross_entropy(out.logits.view(-1, V), batch["labels"].view(-1))
                loss.backward()
            dec = torch.nn.TransformerDecoder(torch.nn.TransformerDecoderLayer(32, 4), 2)
            mse = torch.nn.MSELoss()
            for series, memory in loader:
                pred = dec(series, memory)
                mse(pred, series).backward()
            """),
    )
    INVALID = (
        Invalid(
            """
            import torch
            from torch import nn
            class Translator(nn.Module):
                def __init__(self, vocab):
                    super().__init__()
                    self.emb = nn.Embedding(vocab, 256)
                    self.transformer = nn.Transformer(d_model=256, batch_first=True)
                    self.out = nn.Linear(256, vocab)
                def forward(self, src, tgt, tgt_mask=None):
                    return self.out(self.transformer(self.emb(src), self.emb(tgt), tgt_mask=tgt_mask))
            def train(model, loader, criterion, optimizer):
                for src, tgt in loader:
                    logits = model(src, tgt)
                    loss = criterion(logits.view(-1, logits.size(-1)), tgt.view(-1))
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
            model = Translator(8000)
            train(model, loader, nn.CrossEntropyLoss(ignore_index=0), torch.optim.Adam(model.parameters()))
            """,
            line=13,
            message="`tgt[:, :-1]`",
        ),
        # Lightning, sequence-first decoder called from training_step.
        Invalid(
            """
            import lightning as L
            import torch.nn.functional as F
            from torch import nn
            class Captioner(L.LightningModule):
                def __init__(self):
                    super().__init__()
                    self.decoder = nn.TransformerDecoder(nn.TransformerDecoderLayer(512, 8), 6)
                def forward(self, memory, captions):
                    return self.head(self.decoder(self.embed(captions), memory))
                def training_step(self, batch, batch_idx):
                    memory, captions = batch
                    logits = self(memory, captions)
                    return F.cross_entropy(logits.flatten(0, 1), captions.flatten())
            """,
            line=12,
            message="`captions[:-1]`",
        ),
        # Constant start tokens as the decoder input while training.
        Invalid(
            """
            import torch
            from torch import nn
            transformer = nn.Transformer(d_model=128, nhead=4)
            loss_fn = nn.CrossEntropyLoss()
            for src, tgt in loader:
                dec_in = torch.full((tgt.size(0), tgt.size(1)), BOS_IDX, dtype=torch.long)
                out = transformer(embed(src), embed(dec_in))
                loss = loss_fn(head(out).view(-1, V), tgt.view(-1))
                loss.backward()
            """,
            line=7,
            message="constant start-token tensor",
        ),
        # Repeated start tokens through a local module, layout unknown.
        Invalid(
            """
            import torch
            from torch import nn
            class Model(nn.Module):
                def __init__(self, layer):
                    super().__init__()
                    self.dec = nn.TransformerDecoder(layer, 3)
                def forward(self, tgt_tokens, memory):
                    return self.dec(self.embedding(tgt_tokens), memory)
            model = Model(make_layer())
            for memory, target in loader:
                start = torch.tensor([[vocab["<sos>"]]] * target.size(0)).repeat(1, target.size(1))
                logits = model(start, memory)
                torch.nn.functional.cross_entropy(logits.transpose(1, 2), target).backward()
            """,
            line=12,
            message="`target[:, :-1]` or `target[:-1]`",
        ),
    )

    def check(self, ctx: Context) -> Iterator[Diagnostic]:
        slots = ctx.get(AttentionSlots)
        flow = ctx.get(Assignments)
        self._backward_orders: Optional[List[int]] = None
        losses: Optional[List[Tuple[cst.Call, cst.BaseExpression, cst.BaseExpression]]] = None
        for call in ctx.nodes(cst.Call):
            region = self._training_region(ctx, call)
            item = self._decoder_input(ctx, slots, call) if region is not None else None
            if item is None:
                continue
            if losses is None:
                losses = list(self._loss_calls(ctx, slots))
            start = self._start_tokens(ctx, flow, item.arg.value)
            if start is not None:
                targets = [self._content_root(flow, target) for _, target in self._losses_of(ctx, flow, item, losses, region)]
                yield self._report_start(ctx, slots, item, start, next((t for t in targets if t), "tgt"))
                continue
            found = self._same_target(ctx, flow, item, losses, region)
            if found is not None:
                yield self._report_same(ctx, slots, item, *found)

    # -- training steps ---------------------------------------------------------------------------
    def _has_backward(self, ctx: Context, node: cst.CSTNode) -> bool:
        if self._backward_orders is None:
            self._backward_orders = sorted(
                ctx.order(c) for c in ctx.nodes(cst.Call)
                if isinstance(c.func, cst.Attribute) and c.func.attr.value in _BACKWARD)
        at = bisect.bisect_left(self._backward_orders, ctx.order(node))
        return at < len(self._backward_orders) and self._backward_orders[at] <= ctx.end_order(node)

    def _training_region(self, ctx: Context, node: cst.CSTNode) -> Optional[cst.CSTNode]:
        """The innermost loop or function around ``node`` that trains (calls backward)."""
        for ancestor in ctx.ancestors(node):
            if isinstance(ancestor, cst.With) and any(
                    isinstance(item.item, cst.Call) and ctx.names.matches(
                        item.item.func, "torch.no_grad", "torch.inference_mode") for item in ancestor.items):
                return None
            if isinstance(ancestor, (cst.For, cst.While)) and self._has_backward(ctx, ancestor):
                return ancestor
            if isinstance(ancestor, cst.FunctionDef):
                if any(ctx.names.matches(d.decorator.func if isinstance(d.decorator, cst.Call) else d.decorator,
                                         "torch.no_grad", "torch.inference_mode") for d in ancestor.decorators):
                    return None
                trains = ancestor.name.value == "training_step" or self._has_backward(ctx, ancestor)
                return ancestor if trains else None
        return None

    # -- the decoder input of a model call --------------------------------------------------------
    def _decoder_input(self, ctx: Context, slots: AttentionSlots, call: cst.Call) -> Optional[DecoderInput]:
        torch_call = slots.torch_call(call)
        if torch_call is not None:
            arg = torch_call.binding.args.get("tgt") if torch_call.callee in DECODERS else None
            if arg is None:
                return None
            leaves = list(self._token_leaves(ctx, arg.value))
            return DecoderInput(call, arg, tuple(leaf for leaf, _ in leaves), torch_call,
                                any(t for _, t in leaves), None)
        local = slots.local_call(call)
        if local is None or local.binding.opaque:
            return None
        params = {p.name.value for p in local.method.params.params}
        for inner in slots.inside(local.method):
            arg = inner.binding.args.get("tgt") if inner.callee in DECODERS else None
            for leaf, transposed in self._token_leaves(ctx, arg.value) if arg is not None else ():
                if isinstance(leaf, cst.Name) and leaf.value in params and leaf.value in local.binding.args:
                    outer = local.binding.args[leaf.value]
                    via = f"{local.cls.name.value}.{local.method.name.value}"
                    return DecoderInput(call, outer, (outer.value,), inner, transposed, via)
        return None

    def _token_leaves(self, ctx: Context, expr: cst.BaseExpression,
                      transposed: bool = False, depth: int = 0) -> Iterator[Tuple[cst.BaseExpression, bool]]:
        """The token tensors a decoder input is computed from without slicing: through local
        assignments, submodule calls (embeddings, positional encodings, dropout), sums and
        products, and content-keeping tensor methods. Sliced values yield nothing."""
        if depth > 12:
            return
        flow = ctx.get(Assignments)
        if isinstance(expr, cst.Name):
            value = flow.reaching(expr)
            if value is None:
                yield expr, transposed
            else:
                yield from self._token_leaves(ctx, value, transposed, depth + 1)
        elif isinstance(expr, cst.BinaryOperation) and isinstance(expr.operator, (cst.Add, cst.Multiply)):
            yield from self._token_leaves(ctx, expr.left, transposed, depth + 1)
            yield from self._token_leaves(ctx, expr.right, transposed, depth + 1)
        elif isinstance(expr, cst.Attribute) and expr.attr.value == "T":
            yield from self._token_leaves(ctx, expr.value, True, depth + 1)
        elif isinstance(expr, cst.Call):
            func = expr.func
            if isinstance(func, cst.Attribute) and func.attr.value in _SAME_CONTENT \
                    and not self._is_module(ctx, func, expr):
                yield from self._token_leaves(ctx, func.value, transposed or func.attr.value in _TRANSPOSING,
                                              depth + 1)
            elif self._is_module(ctx, func, expr) and expr.args and expr.args[0].keyword is None \
                    and not expr.args[0].star:
                yield from self._token_leaves(ctx, expr.args[0].value, transposed, depth + 1)
            else:
                yield expr, transposed
        elif isinstance(expr, (cst.Subscript, cst.Attribute)) and flow.unsliced_root(expr) is not None:
            yield expr, transposed

    @staticmethod
    def _is_module(ctx: Context, func: cst.BaseExpression, at: cst.CSTNode) -> bool:
        """A submodule call: ``self.embed(...)``, ``self.decoder.w_emb(...)``, or a local
        ``torch.nn`` module instance such as ``embed = nn.Embedding(...)``. A method of the class
        (``self.shift_right(tgt)``) is not one: it may shift."""
        base = func
        while isinstance(base, cst.Attribute):
            base = base.value
        if isinstance(base, cst.Name) and base.value == "self" and isinstance(func, cst.Attribute):
            cls = ctx.enclosing(at, cst.ClassDef)
            methods = {s.name.value for s in cls.body.body if isinstance(s, cst.FunctionDef)} if cls else set()
            return not (func.value is base and func.attr.value in methods)
        if isinstance(func, cst.Name):
            kinds = ctx.get(Instances).kinds(func, at)
            return bool(kinds) and UNKNOWN not in kinds and all(k.startswith("torch.nn.") for k in kinds)
        return False

    # -- losses ---------------------------------------------------------------------------------
    def _loss_calls(self, ctx: Context, slots: AttentionSlots):
        """(call, input, target) of every cross-entropy / NLL loss call."""
        for call in ctx.nodes(cst.Call):
            is_function = ctx.names.matches(call.func, *_LOSS_FUNCTIONS)
            if not is_function:
                if not isinstance(call.func, (cst.Name, cst.Attribute)) or ctx.names.resolve(call.func):
                    continue
                kinds = slots.kinds(call.func, call)
                if not kinds or not all(k in _LOSS_CLASSES for k in kinds):
                    continue
            binding = bind(call, _LOSS_CALL)
            if binding.opaque or "input" not in binding.args or "target" not in binding.args:
                continue
            yield call, binding.args["input"].value, binding.args["target"].value

    @staticmethod
    def _losses_of(ctx: Context, flow: Assignments, item: DecoderInput, losses, region):
        """(loss call, target) of the losses computed from the model call's output in the step."""
        last = ctx.end_order(region)
        for call, loss_input, target in losses:
            if ctx.order(item.call) < ctx.order(call) <= last \
                    and any(n is item.call for n in flow.derivation(loss_input)):
                yield call, target

    def _same_target(self, ctx: Context, flow: Assignments, item: DecoderInput, losses, region):
        roots = {self._content_root(flow, leaf) for leaf in item.leaves} - {None}
        for call, target in self._losses_of(ctx, flow, item, losses, region) if roots else ():
            root = self._content_root(flow, target)
            if root in roots:
                return call, root
        return None

    @staticmethod
    def _content_root(flow: Assignments, expr: cst.BaseExpression) -> Optional[str]:
        """``unsliced_root`` that also looks through reshapes and transposes (``tgt.view(-1)``,
        ``tgt.transpose(0, 1).reshape(-1)``): they keep every position, so they are no shift."""
        for _ in range(8):
            while True:
                if isinstance(expr, cst.Call) and isinstance(expr.func, cst.Attribute) \
                        and expr.func.attr.value in _SAME_CONTENT:
                    expr = expr.func.value
                elif isinstance(expr, cst.Attribute) and expr.attr.value == "T":
                    expr = expr.value
                else:
                    break
            value = flow.reaching(expr) if isinstance(expr, cst.Name) else None
            if isinstance(value, (cst.Call, cst.Attribute)) and value is not _strip(value):
                expr = value
                continue
            return flow.unsliced_root(expr)
        return None

    # -- constant start tokens -------------------------------------------------------------------
    def _start_tokens(self, ctx: Context, flow: Assignments, expr: cst.BaseExpression,
                      depth: int = 0) -> Optional[cst.BaseExpression]:
        """The construction when a decoder input is made of a constant start-token tensor: through
        local assignments (not re-assigned in a loop around the use: decoding step by step), tiling
        and dtype calls, and any call of it (embedding it does not make it less constant)."""
        if depth > 12:
            return None
        if self._is_start_construction(ctx, expr):
            return expr
        if isinstance(expr, cst.Name):
            value = flow.reaching(expr)
            if value is None or self._changes(ctx, expr):
                return None
            return self._start_tokens(ctx, flow, value, depth + 1)
        if isinstance(expr, cst.Call):
            func = expr.func
            if isinstance(func, cst.Attribute) and func.attr.value in _TILING | _SAME_CONTENT:
                return self._start_tokens(ctx, flow, func.value, depth + 1)
            if expr.args and expr.args[0].keyword is None and not expr.args[0].star:
                return self._start_tokens(ctx, flow, expr.args[0].value, depth + 1)
        if isinstance(expr, cst.BinaryOperation) and isinstance(expr.operator, (cst.Add, cst.Multiply)):
            return self._start_tokens(ctx, flow, expr.left, depth + 1)
        return None

    @staticmethod
    def _changes(ctx: Context, name: cst.Name) -> bool:
        """Whether the tensor ``name`` holds is filled in elsewhere in its scope (``x[:, 1:] = ...``,
        ``x.copy_(...)``), or re-assigned after this use inside a loop around it, so the next
        iteration sees another value (decoding step by step)."""
        loops = [a for a in ctx.ancestors(name) if isinstance(a, (cst.For, cst.While))]
        scope = ctx.enclosing(name, cst.FunctionDef)

        def same(node: cst.CSTNode, target: cst.BaseExpression) -> bool:
            return isinstance(target, cst.Name) and target.value == name.value \
                and ctx.enclosing(node, cst.FunctionDef) is scope

        for node in (*ctx.nodes(cst.Assign), *ctx.nodes(cst.AugAssign)):
            for target in [t.target for t in node.targets] if isinstance(node, cst.Assign) else [node.target]:
                if isinstance(target, cst.Subscript) and same(node, target.value):
                    return True
                if same(node, target) and any(ctx.order(name) < ctx.order(node) <= ctx.end_order(loop)
                                              for loop in loops):
                    return True
        for call in ctx.nodes(cst.Call):
            func = call.func
            base = func.value if isinstance(func, cst.Attribute) else None
            while isinstance(base, cst.Subscript):
                base = base.value
            if isinstance(func, cst.Attribute) and func.attr.value.endswith("_") and base is not None \
                    and same(call, base):
                return True
        return False

    def _is_start_construction(self, ctx: Context, expr: cst.BaseExpression) -> bool:
        names = ctx.names.resolve(expr.func) if isinstance(expr, cst.Call) else frozenset()
        if isinstance(expr, cst.Call):
            positional = [a.value for a in expr.args if a.keyword is None and not a.star]
            keywords = {a.keyword.value: a.value for a in expr.args if a.keyword is not None}
            if names & {"torch.full", "torch.full_like"}:
                fill = positional[1] if len(positional) > 1 else keywords.get("fill_value")
                return fill is not None and self._is_start_token(ctx, fill)
            if isinstance(expr.func, cst.Attribute) and expr.func.attr.value == "fill_" and len(positional) == 1:
                return self._is_start_token(ctx, positional[0])
            if names & {"torch.tensor", "torch.LongTensor", "torch.as_tensor"} and positional:
                return self._is_start_list(ctx, positional[0])
            return False
        if isinstance(expr, cst.BinaryOperation) and isinstance(expr.operator, cst.Multiply):
            for ones, token in ((expr.left, expr.right), (expr.right, expr.left)):
                base = _strip(ones)
                if isinstance(base, cst.Call) and ctx.names.matches(base.func, "torch.ones", "torch.ones_like") \
                        and self._is_start_token(ctx, token):
                    return True
        return False

    def _is_start_list(self, ctx: Context, data: cst.BaseExpression) -> bool:
        """``[[sos]] * batch``, ``[sos] * n``, ``[[sos] * n]``, ``[[sos]]``."""
        if isinstance(data, cst.BinaryOperation) and isinstance(data.operator, cst.Multiply):
            return self._is_start_list(ctx, data.left)
        if isinstance(data, cst.List) and len(data.elements) == 1:
            element = data.elements[0].value
            if isinstance(element, (cst.List, cst.BinaryOperation)):
                return self._is_start_list(ctx, element)
            return self._is_start_token(ctx, element)
        return False

    @staticmethod
    def _is_start_token(ctx: Context, expr: cst.BaseExpression) -> bool:
        if isinstance(expr, cst.SimpleString):
            return False
        return isinstance(expr, (cst.Name, cst.Attribute, cst.Subscript, cst.Call)) \
            and bool(_START.search(ctx.code(expr)))

    # -- messages --------------------------------------------------------------------------------
    def _split(self, slots: AttentionSlots, item: DecoderInput, name: str) -> str:
        batch_first = None if item.transposed else slots.batch_first(item.torch_call)
        seq_first = f"`{name}[:-1]` as decoder input and `{name}[1:]` as loss target"
        batch = f"`{name}[:, :-1]` as decoder input and `{name}[:, 1:]` as loss target"
        if batch_first is True:
            return f"{batch} (the decoder is batch_first)"
        if batch_first is False:
            return f"{seq_first} (the decoder is sequence-first: batch_first=False)"
        return (f"`{name}[:, :-1]` or `{name}[:-1]` as decoder input and `{name}[:, 1:]` or `{name}[1:]` "
                f"as loss target, for a batch-first or a sequence-first layout")

    def _where(self, ctx: Context, item: DecoderInput) -> str:
        via = f" (through `{item.via}`)" if item.via else ""
        return f"`{_short(ctx, item.call)}`{via}"

    def _report_same(self, ctx: Context, slots: AttentionSlots, item: DecoderInput,
                     loss: cst.Call, root: str) -> Diagnostic:
        row = ctx.locator.location(ctx.span(loss)[0]).row
        names = [leaf.value for leaf in item.leaves if isinstance(leaf, cst.Name)]
        name = names[0] if len(names) == 1 else root
        return ctx.report(
            item.arg,
            f"`{name}` is both the decoder input of {self._where(ctx, item)} and the target of "
            f"`{_short(ctx, loss)}` (line {row}), un-shifted: position t sees token t and is trained to "
            f"output it, so the model learns to copy instead of predicting the next token. Split it: "
            f"{self._split(slots, item, name)}",
            help="Feed the target without its last token to the model and compute the loss against the "
                 "target without its first token (and build the causal and padding masks for the shorter input)")

    def _report_start(self, ctx: Context, slots: AttentionSlots, item: DecoderInput,
                      start: cst.BaseExpression, target: str) -> Diagnostic:
        row = ctx.locator.location(ctx.span(start)[0]).row
        return ctx.report(
            item.arg,
            f"the decoder input of {self._where(ctx, item)} is a constant start-token tensor "
            f"(`{_short(ctx, start)}`, line {row}) in a training step: the decoder never sees the target "
            f"prefix (no teacher forcing) and cannot learn to continue a sequence. Feed the shifted target "
            f"instead: {self._split(slots, item, target)}",
            help="Start tokens as the only decoder input are right at inference, where the sequence grows "
                 "step by step; in training pass the target (starting with the start token) without its "
                 "last token")


def _strip(expr: cst.BaseExpression) -> cst.BaseExpression:
    while isinstance(expr, cst.Call) and isinstance(expr.func, cst.Attribute) and expr.func.attr.value in _SAME_CONTENT:
        expr = expr.func.value
    return expr


def _short(ctx: Context, node: cst.CSTNode) -> str:
    text = " ".join(ctx.code(node).split())
    return text if len(text) <= 70 else text[:67] + "..."
