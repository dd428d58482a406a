"""Symbolic evaluation of attention masks, and the torch attention slots a value reaches."""

from __future__ import annotations

import math
import textwrap

import libcst as cst
import pytest

from mllint import Settings
from mllint.analysis.masks import (
    ALL_BLOCKED, ANTI_CAUSAL, ANTI_CAUSAL_DIAGONAL, CAUSAL, DIAGONAL_BLOCKED, FLOAT_01, NOTHING_BLOCKED,
    OFFSETS,
    AttentionSlots, Masks,
)
from mllint.core.context import Context

PRELUDE = """
import math
import torch
import torch.nn.functional as F
from torch import nn
"""


def ctx_for(code: str) -> Context:
    code = textwrap.dedent(code)
    return Context(code, "t.py", cst.parse_module(code), Settings())


def value_of(ctx: Context, name: str) -> cst.BaseExpression:
    """The right-hand side of the last assignment to ``name``."""
    return [a.value for a in ctx.nodes(cst.Assign)
            if isinstance(a.targets[0].target, cst.Name) and a.targets[0].target.value == name][-1]


def evaluate(expression: str, setup: str = ""):
    ctx = ctx_for(PRELUDE + textwrap.dedent(setup) + f"\nresult = {expression}\n")
    return ctx.get(Masks).evaluate(value_of(ctx, "result"))


# (expression, shape for torch modules (bool True = blocked), shape for SDPA (bool True = attend))
CASES = [
    ("nn.Transformer.generate_square_subsequent_mask(T)", CAUSAL, CAUSAL),
    ("torch.triu(torch.full((T, T), float('-inf')), diagonal=1)", CAUSAL, CAUSAL),
    ("torch.triu(torch.full((T, T), float('-inf')))", DIAGONAL_BLOCKED, DIAGONAL_BLOCKED),
    ("torch.log(torch.tril(torch.ones(T, T)))", CAUSAL, CAUSAL),
    ("(1.0 - torch.tril(torch.ones(T, T))) * -1e9", CAUSAL, CAUSAL),
    ("torch.zeros(T, T).masked_fill(torch.ones(T, T).triu(1).bool(), torch.finfo(torch.float32).min)",
     CAUSAL, CAUSAL),
    ("torch.where(torch.tril(torch.ones(T, T)) == 1, 0.0, -math.inf)", CAUSAL, CAUSAL),
    ("torch.tril(torch.ones(T, T))", FLOAT_01, FLOAT_01),
    ("torch.triu(torch.ones(T, T), diagonal=1)", FLOAT_01, FLOAT_01),
    ("torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)", CAUSAL, ANTI_CAUSAL_DIAGONAL),
    ("torch.ones(T, T, dtype=torch.bool).tril()", ANTI_CAUSAL_DIAGONAL, CAUSAL),
    ("~torch.tril(torch.ones(T, T)).bool()", CAUSAL, ANTI_CAUSAL_DIAGONAL),
    ("torch.tril(torch.ones(T, T)).logical_not()", None, None),  # not a bool tensor: unknown
    ("torch.triu(torch.ones(T, T)) == 1", DIAGONAL_BLOCKED, ANTI_CAUSAL),
    ("torch.tril(torch.ones(T, T)).T == 0", ANTI_CAUSAL, DIAGONAL_BLOCKED),
    ("(torch.triu(torch.ones(T, T)) == 1).float().masked_fill(torch.triu(torch.ones(T, T)) == 0, "
     "float('-inf'))", ANTI_CAUSAL, ANTI_CAUSAL),
    ("torch.full((T, T), True).tril() | torch.full((T, T), True).triu(1)", ALL_BLOCKED, NOTHING_BLOCKED),
    ("torch.triu(torch.ones(T, T), 3).bool()", None, None),  # leaks two future tokens: not reported
    ("torch.ones(T, T, dtype=torch.bool).triu(1) | torch.ones(T, T, dtype=torch.bool).tril(-3)",
     None, None),  # a sliding window
]


@pytest.mark.parametrize("expression, module_shape, sdpa_shape", CASES)
def test_shapes(expression, module_shape, sdpa_shape):
    mask = evaluate(expression)
    if module_shape is None and sdpa_shape is None and mask is None:
        return
    assert mask is not None, expression
    assert mask.shape(True) == module_shape
    assert mask.shape(False) == sdpa_shape


def test_the_tutorial_helper_is_a_correct_causal_mask():
    mask = evaluate("subsequent(n)", """
        DEVICE = torch.device("cpu")
        def subsequent(sz):
            m = (torch.triu(torch.ones((sz, sz), device=DEVICE)) == 1).transpose(0, 1)
            m = m.float().masked_fill(m == 0, float('-inf')).masked_fill(m == 1, float(0.0))
            return m
    """)
    assert mask is not None and mask.dtype == "float"
    assert mask.values == tuple(-math.inf if d > 0 else 0.0 for d in OFFSETS)
    assert mask.shape(True) == CAUSAL
    assert mask.size == "n" and mask.device == "DEVICE"  # the helper's parameter is substituted
    assert mask.node is None  # reached through a helper: not one inline expression


def test_values_follow_locals_constants_attributes_and_buffers():
    ctx = ctx_for(PRELUDE + """
NEG = -1e9
class Block(nn.Module):
    def __init__(self, n):
        self.register_buffer("bias", torch.tril(torch.ones(n, n)).view(1, 1, n, n))
        self.fixed = torch.triu(torch.ones(n, n), diagonal=1) * NEG
    def forward(self, x, t):
        a = self.bias[:, :, :t, :t]
        b = self.fixed
        c = self.bias[0, 0, :t, :t]
        return a, b, c
""")
    masks = ctx.get(Masks)
    a, b, c = (masks.evaluate(value_of(ctx, name)) for name in "abc")
    assert a.ndim == 4 and a.size == "t" and a.shape(True) == FLOAT_01
    assert b.shape(True) == CAUSAL
    assert c.ndim == 2 and not c.plain


def test_unknown_constructions_stay_unknown():
    for expression in (
        "torch.rand(T, T)",
        "make_mask(T)",  # not defined in the module
        "torch.tril(torch.ones(T, T)).to(other)",  # another tensor's dtype
        "torch.tril(torch.ones(T, S))",  # not square
        "torch.triu(torch.ones(T, T), diagonal=k)",  # unknown diagonal
        "torch.triu(torch.ones(T, T), diagonal=4)",  # outside the window
        "torch.tril(torch.ones(B, T, T))",
        "torch.tril(torch.ones(T, T)) - torch.tril(torch.ones(N, N))",  # sizes differ
    ):
        assert evaluate(expression) is None, expression


def test_one_level_of_helpers():
    setup = """
        def inner(n):
            return torch.tril(torch.ones(n, n))
        def outer(n):
            return inner(n)
        def two_returns(n, flag):
            if flag:
                return torch.tril(torch.ones(n, n))
            return None
    """
    assert evaluate("inner(T)", setup).shape(True) == FLOAT_01
    assert evaluate("outer(T)", setup) is None
    assert evaluate("two_returns(T, True)", setup) is None


def test_inline_constructions_know_their_node_and_device():
    ctx = ctx_for(PRELUDE + """
def f(T, dev):
    m = torch.tril(torch.ones(T, T)).to(dev)
    n = m.bool()
    o = torch.ones(T, T, dtype=torch.float16, device=dev).tril().cuda()
""")
    masks = ctx.get(Masks)
    m = masks.evaluate(value_of(ctx, "m"))
    assert m.node is value_of(ctx, "m") and m.device == "dev" and m.plain
    assert masks.evaluate(value_of(ctx, "n")).node is None  # built through the name `m`
    o = masks.evaluate(value_of(ctx, "o"))
    assert o.dtype_text == "torch.float16" and o.device == '"cuda"'


def test_parameters_bound_by_a_call():
    ctx = ctx_for(PRELUDE + """
class Wrapper(nn.Module):
    def forward(self, x, mask):
        return self.t(x, x, mask=~mask)
w = Wrapper()
out = w(x, torch.ones(T, T, dtype=torch.bool).triu(1))
""")
    masks = ctx.get(Masks)
    call = value_of(ctx, "out")
    method = next(f for f in ctx.nodes(cst.FunctionDef) if f.name.value == "forward")
    inner = next(c for c in ctx.nodes(cst.Call) if ctx.code(c).startswith("self.t("))
    env = Masks.bind_params(method, call, method=True)
    mask = masks.evaluate(inner.args[2].value, env)
    assert mask.shape(True) == ANTI_CAUSAL_DIAGONAL  # the wrapper inverts a correct mask
    assert masks.evaluate(inner.args[2].value) is None  # without the binding: unknown


def test_attention_slots_resolve_torch_callees_and_local_modules():
    ctx = ctx_for(PRELUDE + """
class Seq2Seq(nn.Module):
    def __init__(self):
        layer = nn.TransformerDecoderLayer(256, 8, batch_first=True)
        self.dec = nn.TransformerDecoder(layer, 2)
        self.full = nn.Transformer(256, 8)
        self.mha = nn.MultiheadAttention(256, 8, 0.1, True, False, False, None, None, True)
    def forward(self, src, tgt):
        a = self.dec(tgt, src)
        b = self.full(src, tgt)
        c = self.full.decoder(tgt, src)
        d = self.mha(tgt, tgt, tgt)
        e = F.scaled_dot_product_attention(q, k, v, attn_mask=m)
        return a
def train(model, loader):
    for src, tgt in loader:
        out = model(src, tgt)
model = Seq2Seq().to("cuda")
train(model, [])
""")
    slots = ctx.get(AttentionSlots)
    by_name = {name: slots.torch_call(value_of(ctx, name)) for name in "abcde"}
    assert {n: t.callee for n, t in by_name.items()} == {
        "a": "torch.nn.TransformerDecoder", "b": "torch.nn.Transformer",
        "c": "torch.nn.TransformerDecoder", "d": "torch.nn.MultiheadAttention",
        "e": "torch.nn.functional.scaled_dot_product_attention"}
    assert [slots.batch_first(by_name[n]) for n in "abcde"] == [True, False, False, True, None]
    assert not by_name["e"].true_blocks and by_name["d"].true_blocks
    local = slots.local_call(value_of(ctx, "out"))  # `model` is a parameter: from the call site
    assert local is not None and local.cls.name.value == "Seq2Seq" and local.method.name.value == "forward"
    assert local.binding.value("tgt").value == "tgt"
    assert [t.callee for t in slots.inside(local.method)][:2] == ["torch.nn.TransformerDecoder",
                                                                  "torch.nn.Transformer"]


def test_local_class_needs_every_assignment_to_agree():
    ctx = ctx_for(PRELUDE + """
class A(nn.Module):
    def forward(self, x):
        return x
if flag:
    model = A()
else:
    model = load()
out = model(x)
""")
    assert ctx.get(AttentionSlots).local_call(value_of(ctx, "out")) is None
