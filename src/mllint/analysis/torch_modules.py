"""Calls of torch's transformer decoders, bound to their ``forward`` and read with their
configuration.

``decoder_call(ctx, call)`` answers, once for every rule about ``nn.Transformer`` wiring: is this
call a call of an ``nn.Transformer``, ``nn.TransformerDecoder`` or ``nn.TransformerDecoderLayer``
instance (through ``Instances``: locals, ``self.`` attributes, ModuleList loops,
``transformer.decoder``, ``.forward``)? If so, what is bound to each ``forward`` parameter, is the
module ``batch_first`` (read from its constructor, torch 2.13 ``nn/modules/transformer.py``; the
default is False), and does a custom decoder or decoder layer run instead of torch's own?
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, FrozenSet, Optional

import libcst as cst

from mllint.analysis.instances import Instances, constructor_of
from mllint.analysis.signatures import CALLS, INSTANCE_CALLS, Binding, bind

if TYPE_CHECKING:
    from mllint.core.context import Context

TRANSFORMER = "torch.nn.Transformer"
DECODER = "torch.nn.TransformerDecoder"
DECODER_LAYER = "torch.nn.TransformerDecoderLayer"
DECODER_CLASSES = (TRANSFORMER, DECODER, DECODER_LAYER)


@dataclass(frozen=True)
class DecoderCall:
    """A call of an ``nn.Transformer``, ``nn.TransformerDecoder`` or ``nn.TransformerDecoderLayer``."""

    call: cst.Call
    kinds: FrozenSet[str]
    binding: Binding
    batch_first: Optional[bool]  # from the constructor; None when it cannot be read
    custom: Optional[bool]  # a custom decoder or decoder layer runs instead of torch's (None: unknown)

    @property
    def label(self) -> str:
        kind = TRANSFORMER if TRANSFORMER in self.kinds else sorted(self.kinds)[0]
        return kind.replace("torch.nn.", "nn.")


def decoder_call(ctx: "Context", call: cst.Call) -> Optional[DecoderCall]:
    """``call`` as a call of a torch transformer decoder, bound to its ``forward`` signature."""
    instances = ctx.get(Instances)
    receiver = call.func
    if isinstance(receiver, cst.Attribute) and receiver.attr.value == "forward":
        receiver = receiver.value
    if not isinstance(receiver, (cst.Name, cst.Attribute, cst.Call)):
        return None
    kinds = instances.kinds(receiver, call)
    if not kinds or not all(k in DECODER_CLASSES for k in kinds):
        return None
    signatures = {INSTANCE_CALLS[k] for k in kinds}
    if len(signatures) != 1:
        return None
    batch_first, custom = _configuration(ctx, instances, receiver, call)
    return DecoderCall(call, kinds, bind(call, signatures.pop()), batch_first, custom)


def literal_bool(expr: Optional[cst.BaseExpression], default: bool) -> Optional[bool]:
    if expr is None:
        return default
    if isinstance(expr, cst.Name) and expr.value in ("True", "False"):
        return expr.value == "True"
    return None


def is_none(expr: Optional[cst.BaseExpression]) -> bool:
    return isinstance(expr, cst.Name) and expr.value == "None"


def _configuration(ctx: "Context", instances: Instances, receiver: cst.BaseExpression, at: cst.CSTNode):
    """``(batch_first, custom)`` of the module ``receiver`` is, read from its constructor call:
    ``custom`` is True for ``custom_decoder=`` or a decoder layer of a local class, None when the
    constructor or the layer cannot be found."""
    if isinstance(receiver, cst.Attribute) and receiver.attr.value == "decoder" \
            and instances.kinds(receiver.value, at) == {TRANSFORMER}:
        receiver = receiver.value  # nn.Transformer(...).decoder is configured by the Transformer
    ctor = constructor_of(instances, receiver, at)
    kind = _constructed(ctx, ctor)
    if ctor is None or kind is None:
        return None, None
    args = bind(ctor, CALLS[kind])
    if args.opaque:
        return None, None
    if kind == TRANSFORMER:
        if args.passed("custom_decoder") and not is_none(args.value("custom_decoder")):
            return None, True
    elif kind == DECODER:
        value = args.value("decoder_layer")
        layer = None if value is None else constructor_of(instances, value, ctor)
        if layer is None:
            return None, None
        if _constructed(ctx, layer) != DECODER_LAYER:
            local = isinstance(layer.func, cst.Name) and any(
                c.name.value == layer.func.value for c in ctx.nodes(cst.ClassDef))
            # A layer class of this module or of another library (rotary, relative positions,
            # its own masking), or nothing known.
            return None, True if local or ctx.names.resolve(layer.func) else None
        args = bind(layer, CALLS[DECODER_LAYER])
        if args.opaque:
            return None, False
    return literal_bool(args.value("batch_first"), False), False


def _constructed(ctx: "Context", ctor: Optional[cst.Call]) -> Optional[str]:
    """The decoder class a constructor call makes, when it is one of torch's."""
    if ctor is None:
        return None
    kinds = ctx.names.resolve(ctor.func)
    return next(iter(kinds)) if len(kinds) == 1 and next(iter(kinds)) in DECODER_CLASSES else None
