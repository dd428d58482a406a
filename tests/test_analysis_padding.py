"""PaddingSides: which side a tokenizer pads on at one encoding call."""

from __future__ import annotations

import textwrap

import libcst as cst

from mllint import Settings
from mllint.analysis.batches import Batches
from mllint.analysis.padding import PaddingSides, SideSource
from mllint.core.context import Context


def side_at(code: str, marker: str = "padding=True"):
    """The side of the last tokenizer call whose source contains ``marker``."""
    code = textwrap.dedent(code)
    ctx = Context(code, "t.py", cst.parse_module(code), Settings())
    batches = ctx.get(Batches)
    call = [c for c in ctx.nodes(cst.Call) if marker in ctx.code(c) and batches.tokenizer_call(c)][-1]
    tokenizer, _ = batches.tokenizer_call(call)
    side = ctx.get(PaddingSides).at(call, tokenizer)
    return side.value, side.source, (ctx.code(side.node) if side.node is not None else None)


def test_per_call_argument_decides():
    assert side_at("""
        tok = AutoTokenizer.from_pretrained("m", padding_side="left")
        enc = tok(texts, padding=True, padding_side="right")
    """)[:2] == ("right", SideSource.CALL)
    assert side_at("""
        tok.padding_side = "right"
        enc = tok.pad(features, padding=True, padding_side=side)
    """)[:2] == (None, SideSource.CALL)


def test_last_setting_in_the_same_function_wins():
    assert side_at("""
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained("m", padding_side="right")
        tok.padding_side = "left"
        enc = tok(texts, padding=True)
    """) == ("left", SideSource.SETTING, 'tok.padding_side = "left"')
    # A setting in a branch that does not hold the call may not run: fall back to the rest.
    assert side_at("""
        tok = AutoTokenizer.from_pretrained("m", padding_side="right")
        if generating:
            tok.padding_side = "left"
        enc = tok(texts, padding=True)
    """)[:2] == (None, SideSource.UNCLEAR)


def test_settings_in_other_functions_cannot_be_ordered():
    # A "left" anywhere (even through another name) may run first.
    assert side_at("""
        tok = AutoTokenizer.from_pretrained("m", padding_side="right")
        def prepare(t):
            t.padding_side = "left"
        def run(texts):
            return tok(texts, padding=True)
    """)[:2] == (None, SideSource.UNCLEAR)
    # Only "right" settings in the module, one of them this tokenizer's: right.
    assert side_at("""
        class M:
            def __init__(self):
                self.tokenizer = AutoTokenizer.from_pretrained("m", padding_side="right")
            def run(self, texts):
                return self.tokenizer(texts, padding=True)
    """) == ("right", SideSource.SETTING, 'padding_side="right"')
    # Per-call arguments of other calls do not change this call.
    assert side_at("""
        tok.padding_side = "right"
        a = tok(texts, padding_side="left", padding="longest")
        def run(texts):
            return tok(texts, padding=True)
    """)[:2] == ("right", SideSource.SETTING)


def test_default_needs_a_plain_loader_in_view():
    assert side_at("""
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained("m")
        enc = tok(texts, padding=True)
    """) == (None, SideSource.DEFAULT, 'AutoTokenizer.from_pretrained("m")')
    assert side_at("""
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained("m", **tokenizer_kwargs)
        enc = tok(texts, padding=True)
    """)[:2] == (None, SideSource.UNCLEAR)
    assert side_at("""
        def encode(tokenizer, texts):
            return tokenizer(texts, padding=True)
    """)[:2] == (None, SideSource.UNCLEAR)


def test_apply_chat_template_takes_the_side_only_through_tokenizer_kwargs():
    # Its own padding_side= goes to the chat template: the attribute decides.
    assert side_at("""
        tok.padding_side = "right"
        enc = tok.apply_chat_template(chats, padding=True, padding_side="left")
    """)[:2] == ("right", SideSource.SETTING)
    assert side_at("""
        tok.padding_side = "right"
        enc = tok.apply_chat_template(chats, padding=True, tokenizer_kwargs={"padding_side": "left"})
    """) == ("left", SideSource.CALL, '"padding_side": "left"')
    assert side_at("""
        tok.padding_side = "right"
        enc = tok.apply_chat_template(chats, padding=True, tokenizer_kwargs=options)
    """)[:2] == (None, SideSource.UNCLEAR)
