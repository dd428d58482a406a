from __future__ import annotations

import re
from typing import Iterator, List, Optional, Sequence, Tuple

import libcst as cst
from packaging.version import Version

from mllint.analysis.dataflow import Assignments, strip_transparent
from mllint.analysis.instances import Instances, constructor_of
from mllint.analysis.names import canonical, dotted
from mllint.analysis.positional import Positional
from mllint.analysis.torch_modules import TRANSFORMER, DecoderCall, decoder_call, is_none, literal_bool
from mllint.core.context import Context
from mllint.core.diagnostic import Applicability, Diagnostic, Fix, Severity
from mllint.core.rule import Invalid, Rule, Valid

# Learned queries and latents (DETR, Perceiver, Q-Former) are a set decoded at once; tokens
# replaced by a mask token (MaskGIT, masked LM) are predicted all at once too.
_SET_NAME = re.compile(r"quer(y|ies)|latent|(^|_)slots?(_|$)|mask_token", re.IGNORECASE)
# Constant placeholders a non-autoregressive decoder starts from.
_PLACEHOLDERS = frozenset({
    "torch.zeros", "torch.zeros_like", "torch.ones", "torch.ones_like", "torch.empty",
    "torch.empty_like", "torch.rand", "torch.randn", "torch.rand_like", "torch.randn_like",
    "torch.full", "torch.full_like"})
_PLACEHOLDER_METHODS = frozenset({"new_zeros", "new_ones", "new_full", "new_empty", "zero_"})
_CONCAT = frozenset({"torch.cat", "torch.concat", "torch.concatenate", "torch.hstack", "torch.vstack",
                     "torch.stack"})


def _module_path(ctx: Context) -> Optional[str]:
    """How module-level imports spell ``torch.nn.Transformer`` (``nn.Transformer``, ...)."""
    spellings = {}
    for statement in ctx.module.body:
        if not isinstance(statement, cst.SimpleStatementLine):
            continue
        for small in statement.body:
            if isinstance(small, (cst.Import, cst.ImportFrom)) and isinstance(small.names, Sequence):
                for alias in small.names:
                    local = alias.evaluated_alias or alias.evaluated_name.split(".", 1)[0]
                    targets = {canonical(t) for t in ctx.names.bindings.get(local, ())}
                    if len(targets) == 1:
                        spellings[next(iter(targets))] = local
    if TRANSFORMER in spellings:
        return spellings[TRANSFORMER]
    if "torch.nn" in spellings:
        return spellings["torch.nn"] + ".Transformer"
    if "torch" in spellings:
        return spellings["torch"] + ".nn.Transformer"
    return None


class DecoderWithoutCausalMask(Rule):
    """## What it does
    Checks for calls of an `nn.Transformer`, `nn.TransformerDecoder` or
    `nn.TransformerDecoderLayer` that bind nothing to `tgt_mask` (by keyword or by position:
    4th argument of `Transformer.forward`, 3rd of the decoders) while the target is an
    autoregressive sequence: it is embedded from tokens (`self.tgt_embed(tgt)`), it grows by one
    token per step of a decoding loop (`ys = torch.cat([ys, next_token], ...)`), or it is the
    target handed to `forward` of a module that calls a whole `nn.Transformer`. It also checks for
    `tgt_is_causal=True` passed without a `tgt_mask`. Modules are resolved through imports,
    aliases, `self.` attributes, `nn.ModuleList` loops and `nn.Transformer(...).decoder`.

    ## Why is this bad?
    Nothing in torch builds a causal mask for you. `Transformer.forward` hands `tgt_mask` to the
    decoder as given, `TransformerDecoder.forward` to each layer, and
    `TransformerDecoderLayer._sa_block` to self-attention as `attn_mask` (torch
    `nn/modules/transformer.py`, read in 2.13.0; masks have been the caller's job since
    `nn.Transformer` appeared in torch 1.2, see pytorch#28272). Without one, target position *t*
    attends to every later position: in training the decoder reads the token it is asked to
    predict and the loss collapses; in a decoding loop over the growing prefix, the prefix
    positions attend to tokens generated after them, which training never showed the model.

    `tgt_is_causal` is only a *hint* that the mask you pass is causal: `_detect_is_causal_mask`
    returns it as is. With no `tgt_mask`, `multi_head_attention_forward` raises "Need attn_mask
    if specifying the is_causal hint" (`nn/functional.py`, torch 2.13.0), and on
    `MultiheadAttention`'s inference fast path (`nn/modules/activation.py`,
    `MultiheadAttention.forward`, which calls `torch._native_multi_head_attention` without the
    hint) nothing is masked at all.

    Decoders that are not autoregressive are left alone: learned queries (DETR's
    `query_embed.weight.unsqueeze(1).repeat(1, bs, 1)`, `torch.zeros_like(query_pos)`, an
    `nn.Parameter`, anything named `query`/`latent`), tokens replaced by a `mask_token`
    (MaskGIT-style parallel decoding), a target of one position (`ys[-1:]`,
    `tgt[:, -1:]`), a target projected from features (`nn.Linear`: it may be an image or a set),
    a decoder fed by its caller, a module called as `block(x, x)`, a module built with
    `custom_decoder=` or a custom decoder layer, a call with `**kwargs`, and an explicit
    `tgt_is_causal=False`. Encoder-only models are out of scope.

    ## Example
    ```python
    out = self.transformer(src_emb, tgt_emb, src_key_padding_mask=src_pad)
    ```

    ## Use instead
    ```python
    tgt_mask = nn.Transformer.generate_square_subsequent_mask(tgt_emb.size(0), device=tgt_emb.device)
    out = self.transformer(src_emb, tgt_emb, tgt_mask=tgt_mask, src_key_padding_mask=src_pad)
    ```

    ## Fix safety
    When the constructor shows `batch_first` (or leaves the default, `False`), the target or the
    token ids it is embedded from (with no slicing or concatenation on the way) is a plain name,
    and a module-level import names `torch`, `torch.nn` or `nn.Transformer`, the fix adds
    `tgt_mask=nn.Transformer.generate_square_subsequent_mask(tgt.size(0), device=tgt.device)`
    (`tgt.size(1)` with `batch_first=True`; an embedding keeps the leading dimensions of its ids).
    It is unsafe: it changes what the model computes, which is its purpose, and a model trained
    without the mask must be retrained. The static method with a `device` argument needs
    torch >= 2.0, so no fix is offered when an older torch is targeted.

    ## References
    - torch `nn/modules/transformer.py` (2.13.0): `Transformer.forward` (L179),
      `Transformer.generate_square_subsequent_mask` (a `@staticmethod`, L299),
      `TransformerDecoder.forward` (L597), `TransformerDecoderLayer._sa_block` (L1151),
      `_detect_is_causal_mask` (L1209)
    - torch `nn/functional.py`, `multi_head_attention_forward` (L6637; the hint check at L6811)
    - torch `nn/modules/activation.py`, `MultiheadAttention.forward` (the fast path)
    - https://pytorch.org/tutorials/beginner/translation_transformer.html
    """

    code = "MLL303"
    name = "decoder-without-causal-mask"
    summary = "torch transformer decoder called on an autoregressive target without a causal `tgt_mask`"
    severity = Severity.ERROR
    tags = ("correctness", "torch")
    triggers = (("Transformer",),)
    # Triage: checked on the stdlib `ast` tree before libcst parses (mllint.core.triage).
    requires = (
        ("import:torch",),
        ("name:Transformer", "name:TransformerDecoder", "name:TransformerDecoderLayer"),
    )
    premise = {"torch": ">=1.2"}
    VALID = (
        # The tutorial's shape: the mask is the 4th positional argument.
        Valid("""
            import torch.nn as nn
            class Seq2Seq(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.transformer = nn.Transformer(d_model=512)
                    self.tgt_embed = nn.Embedding(1000, 512)
                def forward(self, src_emb, tgt, src_mask, tgt_mask):
                    return self.transformer(src_emb, self.tgt_embed(tgt), src_mask, tgt_mask)
            """),
        # DETR-style learned queries: a set, decoded at once.
        Valid("""
            from torch import nn
            import torch
            class Detr(nn.Module):
                def __init__(self, hidden=256, num_queries=100):
                    super().__init__()
                    self.transformer = nn.Transformer(hidden, 8)
                    self.query_embed = nn.Embedding(num_queries, hidden)
                def forward(self, features):
                    bs = features.size(1)
                    query = self.query_embed.weight.unsqueeze(1).repeat(1, bs, 1)
                    tgt = torch.zeros_like(query)
                    return self.transformer(features, tgt + query)
            """),
        # A learned parameter as decoder input.
        Valid("""
            import torch
            from torch import nn
            class Pooler(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.latents = nn.Parameter(torch.randn(16, 1, 256))
                    layer = nn.TransformerDecoderLayer(256, 4)
                    self.decoder = nn.TransformerDecoder(layer, 2)
                def forward(self, memory):
                    return self.decoder(self.latents.expand(-1, memory.size(1), -1), memory)
            """),
        # Masked-token prediction (MaskGIT): every position is predicted at once.
        Valid("""
            from torch import nn
            class MaskedImageTokens(nn.Module):
                def __init__(self, codebook, d=512):
                    super().__init__()
                    self.mask_token_id = codebook
                    self.emb = nn.Embedding(codebook + 1, d)
                    self.decoder = nn.TransformerDecoder(nn.TransformerDecoderLayer(d, 8, batch_first=True), 8)
                def forward(self, tokens, text_memory, masked):
                    x = self.emb(tokens.masked_fill(masked, self.mask_token_id))
                    return self.decoder(x, text_memory)
            """),
        # One target position: nothing to mask.
        Valid("""
            import torch
            from torch import nn
            class Forecaster(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.transformer = nn.Transformer(64, 4)
                def forward(self, src):
                    return self.transformer(src, src[-1:, :, :])
            """),
        # Masks through **kwargs: cannot tell.
        Valid("""
            from torch import nn
            class M(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.transformer = nn.Transformer()
                    self.emb = nn.Embedding(100, 512)
                def forward(self, src, tgt, **masks):
                    return self.transformer(src, self.emb(tgt), **masks)
            """),
        # An explicit "not causal" is a decision, not an omission.
        Valid("""
            from torch import nn
            dec = nn.TransformerDecoderLayer(256, 4, batch_first=True)
            emb = nn.Embedding(100, 256)
            out = dec(emb(tokens), memory, tgt_is_causal=False)
            """),
        # A decoder fed by the caller: queries or a sequence, the module cannot tell.
        Valid("""
            from torch import nn
            class CrossAttention(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.decoder = nn.TransformerDecoder(nn.TransformerDecoderLayer(512, 8), 6)
                def forward(self, tgt, memory):
                    return self.decoder(tgt, memory)
            """),
        # A custom decoder (it may build its own mask) and an encoder (not a decoder at all).
        Valid("""
            from torch import nn
            class M(nn.Module):
                def __init__(self, decoder):
                    super().__init__()
                    self.transformer = nn.Transformer(custom_decoder=decoder)
                    self.encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(512, 8), 6)
                    self.emb = nn.Embedding(100, 512)
                def forward(self, src, tgt):
                    memory = self.encoder(self.emb(src))
                    return self.transformer(src, self.emb(tgt))
            """),
        # Greedy decoding that builds the mask for the growing prefix.
        Valid("""
            import torch
            from torch import nn
            class Translator(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.transformer = nn.Transformer(256, 4)
                    self.emb = nn.Embedding(100, 256)
                def greedy(self, memory, bos, steps):
                    ys = torch.full((1, 1), bos)
                    for _ in range(steps):
                        mask = nn.Transformer.generate_square_subsequent_mask(ys.size(0))
                        out = self.transformer.decoder(self.emb(ys), memory, mask)
                        ys = torch.cat([ys, out[-1:].argmax(-1)], dim=0)
                    return ys
            """),
    )
    INVALID = (
        Invalid(
            """
            import torch.nn as nn
            class Seq2Seq(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.transformer = nn.Transformer(d_model=512, nhead=8, batch_first=True)
                def forward(self, src, tgt):
                    return self.transformer(src, tgt)
            """,
            line=7,
            message="`tgt` is the target given to `forward`",
            fix="""
            import torch.nn as nn
            class Seq2Seq(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.transformer = nn.Transformer(d_model=512, nhead=8, batch_first=True)
                def forward(self, src, tgt):
                    return self.transformer(src, tgt, tgt_mask=nn.Transformer.generate_square_subsequent_mask(tgt.size(1), device=tgt.device))
            """,
            applicability=Applicability.UNSAFE,
        ),
        # Embedded tokens into a decoder stack; positional padding mask but no causal mask.
        Invalid(
            """
            import torch
            from torch import nn
            class Captioner(nn.Module):
                def __init__(self, vocab):
                    super().__init__()
                    layer = nn.TransformerDecoderLayer(256, 4)
                    self.decoder = nn.TransformerDecoder(layer, 3)
                    self.embed = nn.Embedding(vocab, 256)
                def forward(self, captions, memory, pad_mask):
                    x = self.embed(captions)
                    return self.decoder(x, memory, None, None, pad_mask)
            """,
            line=11,
            message="comes from `self.embed(captions)`",
            fix="""
            import torch
            from torch import nn
            class Captioner(nn.Module):
                def __init__(self, vocab):
                    super().__init__()
                    layer = nn.TransformerDecoderLayer(256, 4)
                    self.decoder = nn.TransformerDecoder(layer, 3)
                    self.embed = nn.Embedding(vocab, 256)
                def forward(self, captions, memory, pad_mask):
                    x = self.embed(captions)
                    return self.decoder(x, memory, nn.Transformer.generate_square_subsequent_mask(x.size(0), device=x.device), None, pad_mask)
            """,
            applicability=Applicability.UNSAFE,
        ),
        # `tgt_mask=None` binds nothing; a learned position table is not a learned query.
        Invalid(
            """
            import torch
            import torch.nn as nn
            class Model(nn.Module):
                def __init__(self, vocab, d=128):
                    super().__init__()
                    self.embedding = nn.Embedding(vocab, d)
                    self.pos_encoding = nn.Parameter(torch.zeros(1, 100, d))
                    self.decoder = nn.TransformerDecoderLayer(d_model=d, nhead=8, batch_first=True)
                def forward(self, tgt, memory):
                    tgt = self.embedding(tgt) + self.pos_encoding[:, :tgt.size(1)]
                    return self.decoder(tgt, memory, tgt_mask=None)
            """,
            line=11,
            fix="""
            import torch
            import torch.nn as nn
            class Model(nn.Module):
                def __init__(self, vocab, d=128):
                    super().__init__()
                    self.embedding = nn.Embedding(vocab, d)
                    self.pos_encoding = nn.Parameter(torch.zeros(1, 100, d))
                    self.decoder = nn.TransformerDecoderLayer(d_model=d, nhead=8, batch_first=True)
                def forward(self, tgt, memory):
                    tgt = self.embedding(tgt) + self.pos_encoding[:, :tgt.size(1)]
                    return self.decoder(tgt, memory, tgt_mask=nn.Transformer.generate_square_subsequent_mask(tgt.size(1), device=tgt.device))
            """,
            applicability=Applicability.UNSAFE,
        ),
        # The hint alone raises.
        Invalid(
            """
            from torch.nn import Transformer
            model = Transformer(batch_first=True)
            out = model(src, tgt, tgt_is_causal=True)
            """,
            line=3,
            message="Need attn_mask if specifying the is_causal hint",
            fix="""
            from torch.nn import Transformer
            model = Transformer(batch_first=True)
            out = model(src, tgt, tgt_is_causal=True, tgt_mask=Transformer.generate_square_subsequent_mask(tgt.size(1), device=tgt.device))
            """,
            applicability=Applicability.UNSAFE,
        ),
        # A greedy decoding loop over a growing prefix, without a mask.
        Invalid(
            """
            import torch
            from torch import nn
            class Translator(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.transformer = nn.Transformer(256, 4)
                    self.emb = nn.Embedding(100, 256)
                def greedy(self, memory, bos, steps):
                    ys = torch.full((1, 1), bos)
                    for _ in range(steps):
                        out = self.transformer.decoder(self.emb(ys), memory)
                        ys = torch.cat([ys, out[-1:].argmax(-1)], dim=0)
                    return ys
            """,
            line=11,
            message="`ys` grows",
            fix="""
            import torch
            from torch import nn
            class Translator(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.transformer = nn.Transformer(256, 4)
                    self.emb = nn.Embedding(100, 256)
                def greedy(self, memory, bos, steps):
                    ys = torch.full((1, 1), bos)
                    for _ in range(steps):
                        out = self.transformer.decoder(self.emb(ys), memory, tgt_mask=nn.Transformer.generate_square_subsequent_mask(ys.size(0), device=ys.device))
                        ys = torch.cat([ys, out[-1:].argmax(-1)], dim=0)
                    return ys
            """,
            applicability=Applicability.UNSAFE,
        ),
        # Layers in a ModuleList; batch_first unknown (a variable): no fix.
        Invalid(
            """
            from torch import nn
            class Decoder(nn.Module):
                def __init__(self, vocab, batch_first):
                    super().__init__()
                    self.tok = nn.Embedding(vocab, 512)
                    self.layers = nn.ModuleList([nn.TransformerDecoderLayer(512, 8, batch_first=batch_first) for _ in range(6)])
                def forward(self, ids, memory):
                    x = self.tok(ids)
                    for layer in self.layers:
                        x = layer(x, memory)
                    return x
            """,
            line=10,
            message="`nn.TransformerDecoderLayer`",
        ),
    )

    def check(self, ctx: Context) -> Iterator[Diagnostic]:
        for call in ctx.nodes(cst.Call):
            found = decoder_call(ctx, call)
            if found is None or found.custom is True or found.binding.opaque:
                continue
            binding = found.binding
            tgt = binding.value("tgt")
            if tgt is None or (binding.passed("tgt_mask") and not is_none(binding.value("tgt_mask"))):
                continue
            hint = binding.value("tgt_is_causal")
            if hint is not None:
                if literal_bool(hint, False) is True:
                    yield ctx.report(
                        binding.args["tgt_is_causal"],
                        f"`tgt_is_causal=True` without a `tgt_mask`: the hint does not build a mask. "
                        f"`{found.label}` raises \"Need attn_mask if specifying the is_causal hint\" "
                        f"(torch 2.13.0 `nn/functional.py`), and on the inference fast path of "
                        f"`MultiheadAttention` the hint is dropped and nothing is masked",
                        fix=self._fix(ctx, found, tgt),
                        help="Pass the mask itself: "
                             "`tgt_mask=nn.Transformer.generate_square_subsequent_mask(T)`")
                continue
            evidence = self._autoregressive(ctx, found, tgt)
            if evidence is None:
                continue
            reason, decoding = evidence
            effect = ("when generating, each prefix position attends to the tokens generated after "
                      "it, which training never showed the model" if decoding else
                      "in training the model reads the token it should predict and learns to copy it")
            yield ctx.report(
                call,
                f"`{ctx.code(call.func)}(...)` gets no `tgt_mask` although the target is "
                f"autoregressive ({reason}): `{found.label}` builds no causal mask, so every target "
                f"position attends to the positions after it; {effect}",
                fix=self._fix(ctx, found, tgt),
                help="Pass `tgt_mask=nn.Transformer.generate_square_subsequent_mask(T, device=...)`, "
                     "T the target length")

    def _autoregressive(self, ctx: Context, found: DecoderCall, tgt: cst.BaseExpression
                        ) -> Optional[Tuple[str, bool]]:
        """Why the target is a sequence decoded left to right (None: not known to be), and
        whether the call is a decoding loop rather than teacher forcing."""
        binding = found.binding
        other = binding.value("src") if TRANSFORMER in found.kinds else binding.value("memory")
        if other is not None and ctx.code(strip_transparent(other)) == ctx.code(strip_transparent(tgt)):
            return None  # the same tensor on both sides: not a target sequence
        if _single_position(ctx, tgt):
            return None  # the last token of a prefix: nothing to mask
        nodes = list(ctx.get(Assignments).derivation(tgt))
        grown = _grown(ctx, found.call, nodes)
        if grown is not None:
            return f"`{grown}` grows by one token per step of the enclosing loop", True
        if not any(isinstance(n, cst.Call) and ctx.names.resolve(n.func) & _CONCAT for n in nodes) \
                and any(_placeholder(ctx, n) for n in nodes):
            return None
        flow = ctx.get(Positional).flow(tgt)
        if flow.embedded is not None:
            # Token ids: a sequence. A projection of features may be an image or a set.
            return (f"it comes from `{ctx.code(flow.embedded)}`", False) if flow.tokens else None
        if TRANSFORMER in found.kinds and flow.complete and flow.outside is not None \
                and not _called_with_one_value_twice(ctx, found.call):
            where = _function_name(ctx, flow.outside)
            return f"`{flow.outside.value}` is the target given to `{where}`", False
        return None

    def _fix(self, ctx: Context, found: DecoderCall, tgt: cst.BaseExpression) -> Optional[Fix]:
        version = ctx.target_version("torch")
        path = _module_path(ctx)
        name = _length_source(ctx, tgt)
        if found.batch_first is None or path is None or name is None \
                or (version is not None and version < Version("2.0")):
            return None
        mask = (f"{path}.generate_square_subsequent_mask({name}.size({1 if found.batch_first else 0}), "
                f"device={name}.device)")
        existing = found.binding.arg("tgt_mask")
        if existing is not None:
            edit = ctx.replace(existing.value, mask)
        else:
            end = ctx.span(found.call.args[-1].value)[1]
            edit = ctx.edit(end, end, f", tgt_mask={mask}")
        return ctx.fix("Pass a causal `tgt_mask`", Applicability.UNSAFE, edit)


def _length_source(ctx: Context, tgt: cst.BaseExpression) -> Optional[str]:
    """A plain name whose sizes 0 and 1 are the target's: the target itself, or the token ids
    it embeds (an embedding keeps the leading dimensions) when nothing slices or concatenates
    on the way."""
    name = dotted(tgt)
    if name is not None:
        return name
    embedded = ctx.get(Positional).flow(tgt).embedded
    if embedded is None or len(embedded.args) != 1 or embedded.args[0].keyword or embedded.args[0].star:
        return None
    for node in ctx.get(Assignments).derivation(tgt):
        if isinstance(node, cst.Subscript) or (
                isinstance(node, cst.Call) and ctx.names.resolve(node.func) & _CONCAT):
            return None
    return dotted(embedded.args[0].value)


def _called_with_one_value_twice(ctx: Context, call: cst.Call) -> bool:
    """Whether the module class around ``call`` is called in this file with one value as both
    of its first arguments (``self.block(x, x)``): a feature model, not a sequence-to-sequence one."""
    cls = ctx.enclosing(call, cst.ClassDef)
    if cls is None:
        return False
    instances = ctx.get(Instances)
    for other in ctx.nodes(cst.Call):
        positional = [a.value for a in other.args if a.keyword is None and not a.star]
        if len(positional) < 2 or ctx.code(positional[0]) != ctx.code(positional[1]):
            continue
        ctor = constructor_of(instances, other.func, other) \
            if isinstance(other.func, (cst.Name, cst.Attribute)) else None
        if ctor is not None and isinstance(ctor.func, cst.Name) and ctor.func.value == cls.name.value:
            return True
    return False


def _function_name(ctx: Context, node: cst.CSTNode) -> str:
    function = ctx.enclosing(node, cst.FunctionDef)
    return function.name.value if function is not None else "the script"


def _single_position(ctx: Context, tgt: cst.BaseExpression) -> bool:
    """Whether the target is one position of a sequence: ``x[-1:]`` on the way from the target
    to where it is computed, through assignments, calls and operators, but not through the
    pieces of a ``torch.cat`` (a sequence built from a last token is longer than one)."""
    flows = ctx.get(Assignments)
    pending: List[cst.BaseExpression] = [tgt]
    seen = set()
    while pending and len(seen) < 200:
        node = pending.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if _one_position(node):
            return True
        if isinstance(node, cst.Name):
            value = flows.reaching(node)
            pending.extend([value] if value is not None else [])
        elif isinstance(node, cst.Call) and not ctx.names.resolve(node.func) & _CONCAT:
            if isinstance(node.func, cst.Attribute):
                pending.append(node.func.value)
            pending.extend(arg.value for arg in node.args)
        elif isinstance(node, (cst.Subscript, cst.Attribute)):
            pending.append(node.value)
        elif isinstance(node, cst.BinaryOperation):
            pending.extend((node.left, node.right))
    return False


def _one_position(node: cst.BaseExpression) -> bool:
    """``x[-1:]``, ``x[:, -1:]``, ``x[-1]``: one position of a sequence (not ``x.shape[-1]``)."""
    if not isinstance(node, cst.Subscript):
        return False
    base = node.value
    if isinstance(base, cst.Attribute) and base.attr.value == "shape":
        return False
    if isinstance(base, cst.Call) and isinstance(base.func, cst.Attribute) and base.func.attr.value == "size":
        return False
    for element in node.slice:
        index = element.slice
        if isinstance(index, cst.Slice) and _minus_one(index.lower) and index.upper is None:
            return True
        if isinstance(index, cst.Index) and _minus_one(index.value):
            return True
    return False


def _minus_one(expr: Optional[cst.BaseExpression]) -> bool:
    return isinstance(expr, cst.UnaryOperation) and isinstance(expr.operator, cst.Minus) \
        and isinstance(expr.expression, cst.Integer) and expr.expression.value == "1"


def _placeholder(ctx: Context, node: cst.BaseExpression) -> bool:
    """Evidence of a non-autoregressive decoder input: learned queries (an embedding's
    ``.weight``, an ``nn.Parameter`` that is not a position table) or a constant tensor."""
    if isinstance(node, cst.Attribute) and node.attr.value == "weight":
        return not _positional_attribute(ctx, node.value)
    if isinstance(node, (cst.Name, cst.Attribute)):
        last = node.value if isinstance(node, cst.Name) else node.attr.value
        if _SET_NAME.search(last):
            return True
        if _is_self_attribute(node):
            cls = ctx.enclosing(node, cst.ClassDef)
            values = ctx.get(Instances).attr_values.get(cls, {}).get(node.attr.value, []) if cls else []
            return not _positional_attribute(ctx, node) and any(
                isinstance(v, cst.Call) and ctx.names.matches(v.func, "torch.nn.Parameter") for v in values)
    if isinstance(node, cst.Call):
        if ctx.names.resolve(node.func) & _PLACEHOLDERS:
            return True
        return isinstance(node.func, cst.Attribute) and node.func.attr.value in _PLACEHOLDER_METHODS
    return False


def _positional_attribute(ctx: Context, node: cst.BaseExpression) -> bool:
    """``self.x`` holding a positional encoding or position table."""
    cls = ctx.enclosing(node, cst.ClassDef)
    return _is_self_attribute(node) and cls is not None \
        and ctx.get(Positional).attribute_evidence(cls, node.attr.value) is not None


def _is_self_attribute(node: cst.BaseExpression) -> bool:
    return isinstance(node, cst.Attribute) and isinstance(node.value, cst.Name) and node.value.value == "self"


def _grown(ctx: Context, call: cst.Call, nodes: List[cst.BaseExpression]) -> Optional[str]:
    """A name the target is computed from that an enclosing loop extends with ``torch.cat``."""
    names = {n.value for n in nodes if isinstance(n, cst.Name)}
    loops = []
    for ancestor in ctx.ancestors(call):
        if isinstance(ancestor, (cst.FunctionDef, cst.ClassDef)):
            break
        if isinstance(ancestor, (cst.For, cst.While)):
            loops.append(ancestor)
    for loop in loops:
        start, end = ctx.order(loop), ctx.end_order(loop)
        for assign in ctx.nodes(cst.Assign):
            if not start < ctx.order(assign) <= end or len(assign.targets) != 1:
                continue
            target = assign.targets[0].target
            value = assign.value
            if isinstance(target, cst.Name) and target.value in names and isinstance(value, cst.Call) \
                    and ctx.names.resolve(value.func) & _CONCAT \
                    and any(isinstance(n, cst.Name) and n.value == target.value
                            for n in _walk(value.args[0].value if value.args else value)):
                return target.value
    return None


def _walk(node: cst.CSTNode) -> Iterator[cst.CSTNode]:
    yield node
    for child in node.children:
        yield from _walk(child)
