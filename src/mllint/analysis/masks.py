"""Attention masks, evaluated symbolically, and the torch attention slots a value reaches.

``Masks.evaluate(expr)`` is a small abstract interpreter over the expressions people build square
attention masks with. Every such construction (``torch.ones``/``full``/``zeros``, ``triu``/``tril``
with a literal ``diagonal``, transposes, comparisons, ``~``, dtype casts, ``masked_fill``,
``torch.where``, arithmetic with scalars, ``torch.log``) gives a T x T matrix whose entry depends
only on the diagonal offset ``d = column - row``. A ``Mask`` therefore stores one value per offset
in ``-WINDOW..WINDOW``; the two end values stand for every offset beyond them, which stays exact as
long as ``triu``/``tril`` diagonals lie strictly inside the window. Constant scalars are understood
in their usual spellings (``float('-inf')``, ``-1e9``, ``math.inf``, ``torch.finfo(t).min``).

Values flow through local assignments (``Assignments.reaching``), module-level constants,
``self.x = ...`` / ``self.register_buffer("x", ...)`` set once in the class, one level of a helper
function or method of the module that ``return``s the mask (the translation tutorial's
``generate_square_subsequent_mask(sz)``), and ``nn.Transformer.generate_square_subsequent_mask``.
Anything else is unknown (``None``), and rules stay silent.

``Mask.blocked(true_blocks)`` says, per offset, whether attention is blocked, given the callee's
polarity for boolean masks (torch modules: True = not allowed, ``_canonical_mask``;
``F.scaled_dot_product_attention``: True = take part). Float masks are *added* to the scores, so
an entry blocks only when it is -inf or a large negative number; ``Mask.shape()`` names the
pattern (correct causal, anti-causal, diagonal blocked, 0/1 float, ...).

``AttentionSlots`` answers which torch attention argument a value reaches: directly (an
``nn.Transformer*``/``nn.MultiheadAttention`` instance, resolved with ``Instances``, or
``F.scaled_dot_product_attention``), or through one level of a module-local class whose method
passes its parameter on (a ``Seq2Seq`` module whose ``forward(src, tgt, tgt_mask)`` calls
``self.transformer``). Local instances are found through assignments, ``self`` attributes, and, for
a parameter of a module-level function, the arguments at that function's call sites.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Callable, Dict, FrozenSet, Iterator, List, Optional, Tuple, Union

import libcst as cst

from mllint.analysis.dataflow import Assignments
from mllint.analysis.instances import UNKNOWN, Instances, constructor_of
from mllint.analysis.signatures import CALLS, INSTANCE_CALLS, SDPA, Binding, Signature, bind

if TYPE_CHECKING:
    from mllint.core.context import Context

WINDOW = 4
OFFSETS = tuple(range(-WINDOW, WINDOW + 1))
LARGE_NEGATIVE = -1e4  # at or below this an additive mask entry blocks (fp16 code uses -1e4)
_FINFO_MAX = 3.4028234663852886e38

# Canonical torch callees and the arguments that take an attention mask (torch 2.13.0,
# nn/modules/transformer.py, activation.py, functional.py). ``memory_mask`` is (T, S), not a
# causal mask, and is left out.
MASK_PARAMS: Dict[str, Tuple[str, ...]] = {
    "torch.nn.Transformer": ("src_mask", "tgt_mask"),
    "torch.nn.TransformerDecoder": ("tgt_mask",),
    "torch.nn.TransformerDecoderLayer": ("tgt_mask",),
    "torch.nn.TransformerEncoder": ("mask",),
    "torch.nn.TransformerEncoderLayer": ("src_mask",),
    "torch.nn.MultiheadAttention": ("attn_mask",),
    "torch.nn.functional.scaled_dot_product_attention": ("attn_mask",),
}
SDPA_NAME = "torch.nn.functional.scaled_dot_product_attention"
DECODERS = ("torch.nn.Transformer", "torch.nn.TransformerDecoder", "torch.nn.TransformerDecoderLayer")

_DTYPES = {
    "torch.bool": "bool", "bool": "bool",
    "torch.float": "float", "torch.float32": "float", "torch.float16": "float", "torch.half": "float",
    "torch.bfloat16": "float", "torch.float64": "float", "torch.double": "float", "float": "float",
    "torch.long": "int", "torch.int64": "int", "torch.int": "int", "torch.int32": "int",
    "torch.int16": "int", "torch.short": "int", "torch.int8": "int", "torch.uint8": "int", "int": "int",
}
_CAST_METHODS = {"bool": "bool", "float": "float", "double": "float", "long": "int", "int": "int",
                 "byte": "int", "short": "int"}
_LOW_PRECISION = frozenset({"half", "bfloat16"})  # float, but a dtype a fix would have to spell
_KEEP_METHODS = frozenset({"detach", "clone", "contiguous", "requires_grad_"})
_INFINITIES = frozenset({"math.inf", "torch.inf", "numpy.inf"})
_CREATORS = {"torch.ones": 1, "torch.zeros": 0, "torch.full": None}
_LIKE = {"torch.ones_like": 1, "torch.zeros_like": 0, "torch.full_like": None}
_GENERATE = frozenset({"torch.nn.Transformer.generate_square_subsequent_mask",
                       "torch.nn.modules.transformer._generate_square_subsequent_mask"})
_COMPARE = {cst.Equal: lambda a, b: a == b, cst.NotEqual: lambda a, b: a != b,
            cst.LessThan: lambda a, b: a < b, cst.GreaterThan: lambda a, b: a > b,
            cst.LessThanEqual: lambda a, b: a <= b, cst.GreaterThanEqual: lambda a, b: a >= b}
_FLIPPED = {cst.LessThan: cst.GreaterThan, cst.GreaterThan: cst.LessThan,
            cst.LessThanEqual: cst.GreaterThanEqual, cst.GreaterThanEqual: cst.LessThanEqual}
_METHOD_COMPARE = {"eq": cst.Equal, "ne": cst.NotEqual, "lt": cst.LessThan, "gt": cst.GreaterThan,
                   "le": cst.LessThanEqual, "ge": cst.GreaterThanEqual}

Scalar = Union[bool, int, float]
# What ``.to(x)`` moves to when ``x`` is a name: a device, not another tensor's dtype.
_DEVICE_NAME = re.compile(r"device|^dev$|^(local_)?rank$|^gpu(_id)?$", re.IGNORECASE)

# Shapes of a mask, as ``Mask.shape`` names them.
CAUSAL = "causal"  # future blocked, past and diagonal visible: correct
DIAGONAL_BLOCKED = "diagonal-blocked"  # future and the diagonal blocked: row 0 fully masked
ANTI_CAUSAL = "anti-causal"  # past blocked, future visible
ANTI_CAUSAL_DIAGONAL = "anti-causal-diagonal"  # past and diagonal blocked: the last row fully masked
NOTHING_BLOCKED = "nothing-blocked"
ALL_BLOCKED = "all-blocked"
FLOAT_01 = "float-0-1"  # a float mask of 0s and 1s: added to the scores, blocks nothing


@dataclass(frozen=True)
class Mask:
    """A square attention mask: ``values[i]`` is the entry at offset ``OFFSETS[i]``."""

    dtype: str  # "bool", "float" or "int"
    values: Tuple[Scalar, ...]
    size: str  # source text of T
    ndim: int = 2
    triangular: bool = False  # built with triu/tril (so meant as a causal-style mask)
    device: Optional[str] = None  # source text of the device it was created on or moved to
    dtype_text: Optional[str] = None  # source text of an explicit float dtype
    plain: bool = True  # 2-D as created: size, device and dtype texts describe it fully
    node: Optional[cst.BaseExpression] = None  # the whole construction, when it is one expression

    def at(self, offset: int) -> Scalar:
        return self.values[OFFSETS.index(offset)]

    def blocked(self, true_blocks: bool) -> Optional[Tuple[bool, ...]]:
        """Per offset, whether attention is blocked; None when some entry is no mask value."""
        if self.dtype == "bool":
            return tuple(bool(v) == true_blocks for v in self.values)
        if self.dtype != "float":
            return None
        # Added to the scores: -inf or a large negative number blocks; one constant on every
        # other entry of a row leaves the softmax unchanged.
        out = tuple(v <= LARGE_NEGATIVE for v in self.values)
        others = {v for v, b in zip(self.values, out) if not b}
        if len(others) > 1 or not all(math.isfinite(v) for v in others):
            return None
        return out

    def shape(self, true_blocks: bool) -> Optional[str]:
        """The pattern this mask has for a callee with the given bool polarity (None: other)."""
        if self.dtype == "float" and self.triangular and set(self.values) == {0.0, 1.0}:
            return FLOAT_01
        blocked = self.blocked(true_blocks)
        if blocked is None:
            return None
        rows = {
            CAUSAL: lambda d: d > 0, DIAGONAL_BLOCKED: lambda d: d >= 0,
            ANTI_CAUSAL: lambda d: d < 0, ANTI_CAUSAL_DIAGONAL: lambda d: d <= 0,
            NOTHING_BLOCKED: lambda d: False, ALL_BLOCKED: lambda d: True,
        }
        for name, rule in rows.items():
            if blocked == tuple(rule(d) for d in OFFSETS):
                return name
        return None


@dataclass(frozen=True)
class _Thunk:
    """An argument bound to a parameter: evaluated where it was passed."""

    expr: cst.BaseExpression
    env: "Env"


Env = Dict[str, _Thunk]
Value = Union[Mask, Scalar, None]


def _scalar(value: Value) -> bool:
    return isinstance(value, (bool, int, float))


def _cast(value: Scalar, dtype: str) -> Optional[Scalar]:
    if dtype == "bool":
        return bool(value)
    if dtype == "float":
        return float(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return int(value)


def _scalar_dtype(value: Scalar) -> str:
    return "bool" if isinstance(value, bool) else "int" if isinstance(value, int) else "float"


def _promote(a: str, b: str) -> str:
    order = ("bool", "int", "float")
    return order[max(order.index(a), order.index(b))]


def _literal_int(expr: Optional[cst.BaseExpression]) -> Optional[int]:
    if isinstance(expr, cst.Integer):
        return int(expr.value, 0)
    if isinstance(expr, cst.UnaryOperation) and isinstance(expr.operator, cst.Minus):
        inner = _literal_int(expr.expression)
        return None if inner is None else -inner
    return None


def _args(call: cst.Call) -> Tuple[List[cst.BaseExpression], Dict[str, cst.BaseExpression]]:
    """Positional values and keyword values of a call (unknown when it has splats)."""
    positional: List[cst.BaseExpression] = []
    keywords: Dict[str, cst.BaseExpression] = {}
    for arg in call.args:
        if arg.star:
            raise _Unknown
        if arg.keyword is not None:
            keywords[arg.keyword.value] = arg.value
        else:
            positional.append(arg.value)
    return positional, keywords


class _Unknown(Exception):
    """Raised inside the interpreter for anything it does not understand."""


def _signature_of(function: cst.FunctionDef, method: bool) -> Signature:
    params = [p.name.value for p in function.params.params]
    if method and params:
        params = params[1:]
    return Signature(tuple(params), tuple(p.name.value for p in function.params.kwonly_params),
                     varargs=isinstance(function.params.star_arg, cst.Param),
                     varkw=function.params.star_kwarg is not None)


def _param_names(function: cst.FunctionDef) -> FrozenSet[str]:
    p = function.params
    names = [x.name.value for x in (*p.posonly_params, *p.params, *p.kwonly_params)]
    if isinstance(p.star_arg, cst.Param):
        names.append(p.star_arg.name.value)
    if p.star_kwarg is not None:
        names.append(p.star_kwarg.name.value)
    return frozenset(names)


class Masks:
    """Evaluate mask constructions (see the module docstring)."""

    HELPER_DEPTH = 1

    def __init__(self, ctx: "Context") -> None:
        self.ctx = ctx
        self.flow = ctx.get(Assignments)
        self.instances = ctx.get(Instances)
        self.functions: Dict[str, cst.FunctionDef] = {
            s.name.value: s for s in ctx.module.body if isinstance(s, cst.FunctionDef)}
        self._active: set = set()

    # -- entry points --------------------------------------------------------------------------
    def evaluate(self, expr: cst.BaseExpression, env: Optional[Env] = None) -> Optional[Mask]:
        """The mask ``expr`` evaluates to, or None when unknown. ``env`` binds parameters."""
        try:
            value = self._eval(expr, env or {}, 0)
        except (_Unknown, ArithmeticError, ValueError):
            return None
        return value if isinstance(value, Mask) else None

    @staticmethod
    def bind_params(function: cst.FunctionDef, call: cst.Call, method: bool, env: Optional[Env] = None) -> Env:
        """Thunks for the parameters of ``function`` that ``call`` passes."""
        binding = bind(call, _signature_of(function, method))
        return {name: _Thunk(arg.value, env or {}) for name, arg in binding.args.items()}

    # -- the interpreter -----------------------------------------------------------------------
    def _eval(self, expr: cst.BaseExpression, env: Env, depth: int) -> Value:
        key = (id(expr), id(env))
        if key in self._active:
            raise _Unknown
        self._active.add(key)
        try:
            return self._dispatch(expr, env, depth)
        finally:
            self._active.discard(key)

    def _dispatch(self, expr: cst.BaseExpression, env: Env, depth: int) -> Value:
        if isinstance(expr, cst.Integer):
            return int(expr.value, 0)
        if isinstance(expr, cst.Float):
            return float(expr.value)
        if isinstance(expr, cst.Name):
            return self._name(expr, env, depth)
        if isinstance(expr, cst.Attribute):
            return self._attribute(expr, env, depth)
        if isinstance(expr, cst.UnaryOperation):
            return self._unary(expr, env, depth)
        if isinstance(expr, cst.BinaryOperation):
            return self._binary(expr, env, depth)
        if isinstance(expr, cst.Comparison):
            return self._comparison(expr, env, depth)
        if isinstance(expr, cst.Call):
            return self._call(expr, env, depth)
        if isinstance(expr, cst.Subscript):
            return self._subscript(expr, env, depth)
        raise _Unknown

    def _mask(self, expr: cst.BaseExpression, env: Env, depth: int) -> Mask:
        value = self._eval(expr, env, depth)
        if not isinstance(value, Mask):
            raise _Unknown
        return value

    def _number(self, expr: cst.BaseExpression, env: Env, depth: int) -> Scalar:
        value = self._eval(expr, env, depth)
        if not _scalar(value):
            raise _Unknown
        return value  # type: ignore[return-value]

    # names and attributes
    def _name(self, expr: cst.Name, env: Env, depth: int) -> Value:
        if expr.value in env:
            thunk = env[expr.value]
            return _detached(self._eval(thunk.expr, thunk.env, depth))
        if expr.value in ("True", "False"):
            return expr.value == "True"
        if self.ctx.names.resolve(expr) & _INFINITIES:
            return math.inf
        value = self.flow.reaching(expr)  # same scope: the parameters stay bound
        if value is not None:
            return _detached(self._eval(value, env, depth))
        value = self._module_constant(expr)
        if value is None:
            raise _Unknown
        return _detached(self._eval(value, {}, depth))

    def _module_constant(self, expr: cst.Name) -> Optional[cst.BaseExpression]:
        """The single module-level value of a name that is not bound in its own function."""
        function = self.ctx.enclosing(expr, cst.FunctionDef)
        if function is None or self.flow.is_bound_locally(expr) or expr.value in _param_names(function):
            return None
        values = self.instances.scope_values.get(self.ctx.module, {}).get(expr.value, [])
        if len(values) == 1 and isinstance(values[0], cst.BaseExpression):
            return values[0]
        return None

    def _attribute(self, expr: cst.Attribute, env: Env, depth: int) -> Value:
        names = self.ctx.names.resolve(expr)
        if names & _INFINITIES:
            return math.inf
        if expr.attr.value in ("min", "max") and isinstance(expr.value, cst.Call) \
                and self.ctx.names.matches(expr.value.func, "torch.finfo"):
            return -_FINFO_MAX if expr.attr.value == "min" else _FINFO_MAX
        if expr.attr.value in ("T", "mT"):
            return _transposed(self._mask(expr.value, env, depth), expr, from_attr=True)
        if isinstance(expr.value, cst.Name) and expr.value.value == "self":
            value = self._self_attribute(expr)
            if value is not None:
                return _detached(self._eval(value, {}, depth))
        raise _Unknown

    def _self_attribute(self, expr: cst.Attribute) -> Optional[cst.BaseExpression]:
        """The one value ``self.<attr>`` is given in its class (assignment or register_buffer)."""
        cls = self.ctx.enclosing(expr, cst.ClassDef)
        if cls is None:
            return None
        values = list(self.instances.attr_values.get(cls, {}).get(expr.attr.value, []))
        for call in self.ctx.nodes(cst.Call):
            func = call.func
            if isinstance(func, cst.Attribute) and func.attr.value == "register_buffer" \
                    and isinstance(func.value, cst.Name) and func.value.value == "self" \
                    and len(call.args) >= 2 and isinstance(call.args[0].value, cst.SimpleString) \
                    and call.args[0].value.evaluated_value == expr.attr.value \
                    and self.ctx.enclosing(call, cst.ClassDef) is cls:
                values.append(call.args[1].value)
        if len(values) == 1 and isinstance(values[0], cst.BaseExpression):
            return values[0]
        return None

    # operators
    def _unary(self, expr: cst.UnaryOperation, env: Env, depth: int) -> Value:
        value = self._eval(expr.expression, env, depth)
        op = expr.operator
        if isinstance(op, cst.Minus):
            return -value if _scalar(value) else _map(value, lambda v: -v, node=expr)  # type: ignore[operator]
        if isinstance(op, cst.Plus):
            return value
        if isinstance(op, cst.BitInvert) and isinstance(value, Mask) and value.dtype == "bool":
            return _map(value, lambda v: not v, node=expr)
        raise _Unknown

    def _binary(self, expr: cst.BinaryOperation, env: Env, depth: int) -> Value:
        left = self._eval(expr.left, env, depth)
        right = self._eval(expr.right, env, depth)
        op = expr.operator
        arithmetic = {cst.Add: lambda a, b: a + b, cst.Subtract: lambda a, b: a - b,
                      cst.Multiply: lambda a, b: a * b}
        logical = {cst.BitAnd: lambda a, b: a and b, cst.BitOr: lambda a, b: a or b,
                   cst.BitXor: lambda a, b: a != b}
        if _scalar(left) and _scalar(right):
            if type(op) in arithmetic:
                return arithmetic[type(op)](left, right)
            raise _Unknown
        dtypes = [v.dtype if isinstance(v, Mask) else _scalar_dtype(v) for v in (left, right)]  # type: ignore[arg-type]
        if type(op) in logical and dtypes == ["bool", "bool"]:
            return _combine(left, right, logical[type(op)], "bool", expr)
        if type(op) in arithmetic:
            if "bool" in dtypes and (not isinstance(op, cst.Multiply) or dtypes == ["bool", "bool"]):
                raise _Unknown  # torch rejects `-` on bool tensors; `+` on bools is a logical or
            dtype = _promote(*dtypes)
            return _combine(left, right, lambda a, b: arithmetic[type(op)](_cast(a, dtype), _cast(b, dtype)),
                            dtype, expr)
        raise _Unknown

    def _comparison(self, expr: cst.Comparison, env: Env, depth: int) -> Value:
        if len(expr.comparisons) != 1 or type(expr.comparisons[0].operator) not in _COMPARE:
            raise _Unknown
        left = self._eval(expr.left, env, depth)
        right = self._eval(expr.comparisons[0].comparator, env, depth)
        return _compare(left, right, type(expr.comparisons[0].operator), expr)

    # calls
    def _call(self, call: cst.Call, env: Env, depth: int) -> Value:
        names = self.ctx.names.resolve(call.func)
        positional, keywords = _args(call)
        func = call.func
        if isinstance(func, cst.Name) and func.value == "float" and not names and len(positional) == 1:
            arg = positional[0]
            if isinstance(arg, cst.SimpleString):
                return float(arg.evaluated_value)
            return float(self._number(arg, env, depth))
        for name in names:
            if name in _CREATORS:
                return self._create(call, _CREATORS[name], positional, keywords, env, depth)
            if name in _LIKE:
                return self._create_like(call, _LIKE[name], positional, keywords, env, depth)
            if name in ("torch.triu", "torch.tril") and positional:
                return self._triangle(call, name[6:], self._mask(positional[0], env, depth),
                                      positional[1:], keywords)
            if name == "torch.transpose" and len(positional) == 3:
                return _transposed(self._mask(positional[0], env, depth), call, dims=positional[1:])
            if name in ("torch.t", "torch.logical_not", "torch.log") and len(positional) == 1:
                return self._method(call, name[6:], self._mask(positional[0], env, depth), [], {}, env, depth)
            if name == "torch.where" and len(positional) == 3:
                return self._where(call, *positional, env=env, depth=depth)
            if name in _GENERATE:
                return self._generated(call, positional, keywords)
        if isinstance(func, cst.Attribute):
            if func.attr.value == "generate_square_subsequent_mask" and self.instances.is_instance(
                    func.value, ("torch.nn.Transformer",), call):
                return self._generated(call, positional, keywords)
            if not names:
                receiver = self._eval(func.value, env, depth) if not self._is_self(func.value) else None
                if isinstance(receiver, Mask):
                    return self._method(call, func.attr.value, receiver, positional, keywords, env, depth)
        helper = self._helper(call)
        if helper is not None and depth < self.HELPER_DEPTH:
            function, method = helper
            return self._return_value(function, self.bind_params(function, call, method, env), depth + 1)
        raise _Unknown

    @staticmethod
    def _is_self(expr: cst.BaseExpression) -> bool:
        return isinstance(expr, cst.Name) and expr.value == "self"

    def _create(self, call: cst.Call, fill: Optional[int], positional, keywords, env, depth) -> Mask:
        """``torch.ones(T, T)``, ``torch.zeros((T, T))``, ``torch.full((T, T), value)``."""
        if fill is None:
            fill_expr = positional[1] if len(positional) == 2 else keywords.get("fill_value")
            if fill_expr is None or len(positional) not in (1, 2):
                raise _Unknown
            value: Scalar = self._number(fill_expr, env, depth)
            size_args = positional[:1]
        else:
            value = float(fill)
            size_args = positional or ([keywords["size"]] if "size" in keywords else [])
        if len(size_args) == 1 and isinstance(size_args[0], (cst.Tuple, cst.List)):
            size_args = [e.value for e in size_args[0].elements]
        sizes = {self._text(e, env) for e in size_args}
        if len(size_args) != 2 or len(sizes) != 1 or any(isinstance(e, cst.StarredElement) for e in size_args):
            raise _Unknown
        dtype, dtype_text = self._dtype_argument(keywords, _scalar_dtype(value))
        return Mask(dtype, tuple(_cast(value, dtype) for _ in OFFSETS), sizes.pop(),  # type: ignore[misc]
                    device=self._device(keywords, env), dtype_text=dtype_text, node=call)

    def _create_like(self, call, fill, positional, keywords, env, depth) -> Mask:
        if not positional:
            raise _Unknown
        like = self._mask(positional[0], env, depth)
        value: Scalar = fill if fill is not None else self._number(
            positional[1] if len(positional) > 1 else keywords.get("fill_value"), env, depth)
        dtype, dtype_text = self._dtype_argument(keywords, like.dtype)
        return replace(like, dtype=dtype, values=tuple(_cast(value, dtype) for _ in OFFSETS), triangular=False,
                       dtype_text=dtype_text if dtype_text else like.dtype_text,
                       device=self._device(keywords, env) or like.device, node=_node(call, like))

    def _dtype_argument(self, keywords, default: str) -> Tuple[str, Optional[str]]:
        if "dtype" not in keywords:
            return default, None
        dtype = self._dtype(keywords["dtype"])
        if dtype is None:
            raise _Unknown
        return dtype, self.ctx.code(keywords["dtype"]) if dtype == "float" else None

    def _dtype(self, expr: Optional[cst.BaseExpression]) -> Optional[str]:
        if expr is None:
            return None
        if isinstance(expr, cst.Name) and expr.value in ("bool", "float", "int") \
                and not self.ctx.names.resolve(expr):
            return _DTYPES[expr.value]
        for name in self.ctx.names.resolve(expr):
            if name.startswith("torch.") and name in _DTYPES:
                return _DTYPES[name]
        return None

    def _text(self, expr: cst.BaseExpression, env: Env) -> str:
        """Source text of a size, with a helper's parameter replaced by what was passed."""
        while isinstance(expr, cst.Name) and expr.value in env:
            expr, env = env[expr.value].expr, env[expr.value].env
        return self.ctx.code(expr)

    def _device(self, keywords: Dict[str, cst.BaseExpression], env: Env) -> Optional[str]:
        return self._text(keywords["device"], env) if "device" in keywords else None

    def _generated(self, call: cst.Call, positional, keywords) -> Mask:
        """``nn.Transformer.generate_square_subsequent_mask(sz, device, dtype)``: -inf above the
        diagonal, 0 elsewhere (torch ``nn/modules/transformer.py``)."""
        size = positional[0] if positional else keywords.get("sz")
        if size is None:
            raise _Unknown
        return Mask("float", tuple(-math.inf if d > 0 else 0.0 for d in OFFSETS), self.ctx.code(size),
                    triangular=True, node=call)

    def _triangle(self, call, kind: str, mask: Mask, positional, keywords) -> Mask:
        diagonal_expr = positional[0] if positional else keywords.get("diagonal")
        diagonal = 0 if diagonal_expr is None else _literal_int(diagonal_expr)
        if diagonal is None or abs(diagonal) >= WINDOW or mask.ndim < 2:
            raise _Unknown
        zero = _cast(0, mask.dtype)
        keep = (lambda d: d >= diagonal) if kind.startswith("triu") else (lambda d: d <= diagonal)
        values = tuple(v if keep(d) else zero for d, v in zip(OFFSETS, mask.values))
        return replace(mask, values=values, triangular=True, node=_node(call, mask))

    def _where(self, call, cond, a, b, env, depth) -> Mask:
        condition = self._mask(cond, env, depth)
        if condition.dtype != "bool":
            raise _Unknown
        left, right = self._eval(a, env, depth), self._eval(b, env, depth)
        dtype = _promote(*(v.dtype if isinstance(v, Mask) else _scalar_dtype(v) for v in (left, right)))  # type: ignore[arg-type]
        choice = _combine(condition, left, lambda c, x: x if c else None, dtype, call, cast=False)
        picked = _combine(choice, right, lambda x, y: y if x is None else x, dtype, call)
        return replace(picked, triangular=condition.triangular or picked.triangular,
                       node=_node(call, condition, left, right))

    def _method(self, call: cst.Call, method: str, mask: Mask, positional, keywords, env, depth) -> Mask:
        if method.endswith("_") and method not in ("requires_grad_",):
            method = method[:-1]  # in-place variants return the tensor they changed
        if method in ("triu", "tril"):
            return self._triangle(call, method, mask, positional, keywords)
        if method in ("transpose", "t", "permute", "swapaxes"):
            return _transposed(mask, call, dims=positional if method != "t" else None)
        if method in _CAST_METHODS and not positional:
            return _cast_mask(mask, _CAST_METHODS[method], call)
        if method in _LOW_PRECISION and not positional:
            return replace(_cast_mask(mask, "float", call), plain=False)
        if method in ("cuda", "cpu"):
            moved = replace(mask, device=f'"{method}"', node=_node(call, mask))
            return moved if not positional and not keywords else replace(moved, plain=False)
        if method in _KEEP_METHODS:
            return replace(mask, node=_node(call, mask))
        if method in ("to", "type"):
            return self._to(call, mask, positional, keywords)
        if method in _METHOD_COMPARE and len(positional) == 1:
            return _compare(mask, self._eval(positional[0], env, depth), _METHOD_COMPARE[method], call)  # type: ignore[return-value]
        if method == "logical_not" and mask.dtype == "bool":
            return _map(mask, lambda v: not v, node=call)
        if method == "log" and mask.dtype == "float" and not positional:
            return _map(mask, lambda v: math.log(v) if v > 0 else (-math.inf if v == 0 else math.nan), node=call)
        if method == "masked_fill" and len(positional) == 2:
            condition = self._mask(positional[0], env, depth)
            value = self._number(positional[1], env, depth)
            if condition.dtype != "bool" or condition.size != mask.size:
                raise _Unknown
            values = tuple(_cast(value, mask.dtype) if c else v for c, v in zip(condition.values, mask.values))
            return replace(mask, values=values, triangular=mask.triangular or condition.triangular,
                           node=_node(call, mask, condition))
        if method == "fill" and len(positional) == 1:
            value = self._number(positional[0], env, depth)
            return replace(mask, values=tuple(_cast(value, mask.dtype) for _ in OFFSETS), node=_node(call, mask))
        if method == "unsqueeze" and len(positional) == 1:
            dim = _literal_int(positional[0])
            if dim is None or not (0 <= dim <= mask.ndim - 2 or dim <= -3):
                raise _Unknown
            return replace(mask, ndim=mask.ndim + 1, plain=False, node=_node(call, mask))
        if method in ("view", "reshape"):
            return self._reshape(call, mask, positional)
        raise _Unknown

    def _to(self, call: cst.Call, mask: Mask, positional, keywords) -> Mask:
        result = mask
        device = keywords.get("device")
        dtype_expr = keywords.get("dtype")
        for arg in positional:
            if self._dtype(arg) is not None:
                dtype_expr = arg
            elif _looks_like_device(arg):
                device = arg
            else:
                raise _Unknown  # .to(other_tensor), .type(t): another tensor's dtype
        if dtype_expr is not None:
            dtype = self._dtype(dtype_expr)
            if dtype is None:
                raise _Unknown
            result = _cast_mask(result, dtype, call)
            if dtype == "float":
                result = replace(result, dtype_text=self.ctx.code(dtype_expr))
        if device is not None:
            result = replace(result, device=self.ctx.code(device))
        return replace(result, node=_node(call, mask))

    def _reshape(self, call: cst.Call, mask: Mask, positional) -> Mask:
        dims = positional
        if len(dims) == 1 and isinstance(dims[0], (cst.Tuple, cst.List)):
            dims = [e.value for e in dims[0].elements]
        if len(dims) < 2 or {self.ctx.code(d) for d in dims[-2:]} != {mask.size} \
                or any(_literal_int(d) != 1 for d in dims[:-2]):
            raise _Unknown
        return replace(mask, ndim=len(dims), plain=False, node=_node(call, mask))

    def _subscript(self, expr: cst.Subscript, env: Env, depth: int) -> Mask:
        mask = self._mask(expr.value, env, depth)
        elements = [e.slice for e in expr.slice]
        if elements and isinstance(elements[0], cst.Index) and isinstance(elements[0].value, cst.Ellipsis):
            lead: List[cst.BaseSlice] = []
            elements = elements[1:]
            ndim_lead = mask.ndim - 2
        else:
            lead, elements = elements[:-2], elements[-2:]
            ndim_lead = None
        if len(elements) != 2 or not all(isinstance(e, cst.Slice) and e.lower is None and e.step is None
                                         for e in elements):
            raise _Unknown
        uppers = {None if e.upper is None else self.ctx.code(e.upper) for e in elements}  # type: ignore[union-attr]
        if len(uppers) != 1:
            raise _Unknown
        upper = uppers.pop()
        ndim = mask.ndim
        consumed = 0
        for element in lead:
            if isinstance(element, cst.Index) and _literal_int(element.value) is not None:
                ndim, consumed = ndim - 1, consumed + 1
            elif isinstance(element, cst.Index) and isinstance(element.value, cst.Name) \
                    and element.value.value == "None":
                ndim += 1
            elif isinstance(element, cst.Slice) and element.lower is None and element.upper is None:
                consumed += 1
            else:
                raise _Unknown
        if ndim_lead is None and consumed != mask.ndim - 2:
            raise _Unknown
        return replace(mask, ndim=ndim, size=upper if upper is not None else mask.size,
                       plain=False, node=_node(expr, mask))

    # helpers defined in the module
    def _helper(self, call: cst.Call) -> Optional[Tuple[cst.FunctionDef, bool]]:
        func = call.func
        if isinstance(func, cst.Name) and func.value in self.functions and not self.ctx.names.resolve(func):
            return self.functions[func.value], False
        if isinstance(func, cst.Attribute) and self._is_self(func.value):
            cls = self.ctx.enclosing(call, cst.ClassDef)
            for statement in cls.body.body if cls is not None else ():
                if isinstance(statement, cst.FunctionDef) and statement.name.value == func.attr.value:
                    return statement, True
        return None

    def _return_value(self, function: cst.FunctionDef, env: Env, depth: int) -> Value:
        returns = [r for r in self.ctx.nodes(cst.Return)
                   if self.ctx.enclosing(r, cst.FunctionDef) is function and r.value is not None]
        if len(returns) != 1:
            raise _Unknown
        return _detached(self._eval(returns[0].value, env, depth))  # type: ignore[arg-type]


def _node(expr: cst.BaseExpression, *operands: Value) -> Optional[cst.BaseExpression]:
    """``expr`` is the whole construction when every mask operand was one inside it."""
    masks = [o for o in operands if isinstance(o, Mask)]
    return expr if all(m.node is not None for m in masks) else None


def _detached(value: Value) -> Value:
    """A value reached through a name, attribute or helper: not one inline expression."""
    return replace(value, node=None) if isinstance(value, Mask) else value


def _map(mask: Mask, fn: Callable[[Scalar], Scalar], node: cst.BaseExpression) -> Mask:
    return replace(mask, values=tuple(fn(v) for v in mask.values), node=_node(node, mask))


def _cast_mask(mask: Mask, dtype: str, node: cst.BaseExpression) -> Mask:
    values = tuple(_cast(v, dtype) for v in mask.values)
    if any(v is None for v in values):
        raise _Unknown
    return replace(mask, dtype=dtype, values=values, node=_node(node, mask),  # type: ignore[arg-type]
                   dtype_text=None if dtype != "float" else mask.dtype_text)


def _transposed(mask: Mask, node: cst.BaseExpression, dims=None, from_attr: bool = False) -> Mask:
    if dims is not None and not from_attr:
        ints = [_literal_int(d) for d in dims]
        last_two = {mask.ndim - 2, mask.ndim - 1}
        normalized = {i % mask.ndim if i is not None else None for i in ints}
        if len(ints) != 2 or normalized != last_two:
            raise _Unknown
    elif mask.ndim != 2:
        raise _Unknown
    values = tuple(mask.at(-d) for d in OFFSETS)
    return replace(mask, values=values, node=_node(node, mask))


def _combine(left: Value, right: Value, fn, dtype: str, node: cst.BaseExpression, cast: bool = True) -> Mask:
    masks = [v for v in (left, right) if isinstance(v, Mask)]
    if len({m.size for m in masks}) != 1 or len({m.ndim for m in masks}) != 1:
        raise _Unknown
    base = masks[0]
    lvalues = left.values if isinstance(left, Mask) else (left,) * len(OFFSETS)
    rvalues = right.values if isinstance(right, Mask) else (right,) * len(OFFSETS)
    values = tuple(fn(a, b) for a, b in zip(lvalues, rvalues))
    if cast:
        values = tuple(_cast(v, dtype) for v in values)
        if None in values:
            raise _Unknown
    return replace(base, dtype=dtype, values=values, triangular=any(m.triangular for m in masks),
                   node=_node(node, *masks))


def _compare(left: Value, right: Value, op: type, node: cst.BaseExpression) -> Mask:
    if isinstance(right, Mask) and not isinstance(left, Mask):
        left, right, op = right, left, _FLIPPED.get(op, op)
    if not isinstance(left, Mask):
        raise _Unknown
    return _combine(left, right, _COMPARE[op], "bool", node)


def _looks_like_device(expr: cst.BaseExpression) -> bool:
    if isinstance(expr, cst.SimpleString):
        return str(expr.evaluated_value).split(":")[0] in ("cuda", "cpu", "mps", "xpu")
    if isinstance(expr, cst.Call):
        return isinstance(expr.func, (cst.Name, cst.Attribute)) and \
            (expr.func.attr.value if isinstance(expr.func, cst.Attribute) else expr.func.value) == "device"
    last = expr.attr.value if isinstance(expr, cst.Attribute) else expr.value if isinstance(expr, cst.Name) else ""
    return bool(_DEVICE_NAME.search(last))


# -- where values go -------------------------------------------------------------------------------

@dataclass(frozen=True)
class TorchCall:
    """A call of a torch attention callee, with its arguments bound."""

    call: cst.Call
    callee: str  # canonical class (of the instance called) or function name
    binding: Binding

    @property
    def true_blocks(self) -> bool:
        """Bool-mask polarity: True = not allowed for torch modules, True = attend for SDPA."""
        return self.callee != SDPA_NAME


@dataclass(frozen=True)
class LocalCall:
    """A call of a method of a module-local class (``model(...)`` is its ``forward``)."""

    call: cst.Call
    cls: cst.ClassDef
    method: cst.FunctionDef
    binding: Binding


class AttentionSlots:
    """Which torch attention callee (directly or through one local method) a call reaches."""

    def __init__(self, ctx: "Context") -> None:
        self.ctx = ctx
        self.instances = ctx.get(Instances)
        self.flow = ctx.get(Assignments)
        self.classes: Dict[str, cst.ClassDef] = {
            s.name.value: s for s in ctx.module.body if isinstance(s, cst.ClassDef)}
        self._visiting: set = set()
        self.torch_calls: List[TorchCall] = [t for t in map(self.torch_call, ctx.nodes(cst.Call)) if t]

    def torch_call(self, call: cst.Call) -> Optional[TorchCall]:
        """``call`` as a call of a torch transformer module, MHA or SDPA, else None."""
        if self.ctx.names.matches(call.func, SDPA_NAME):
            return TorchCall(call, SDPA_NAME, bind(call, SDPA))
        receiver = call.func
        if isinstance(receiver, cst.Attribute) and receiver.attr.value == "forward":
            receiver = receiver.value
        if not isinstance(receiver, (cst.Name, cst.Attribute)):
            return None
        kinds = self.instances.kinds(receiver, call)
        if not kinds or UNKNOWN in kinds or not all(k in INSTANCE_CALLS for k in kinds):
            return None
        signatures = {INSTANCE_CALLS[k] for k in kinds}
        if len(signatures) != 1 or len(kinds) != 1:
            return None
        return TorchCall(call, next(iter(kinds)), bind(call, signatures.pop()))

    def inside(self, function: cst.FunctionDef) -> Iterator[TorchCall]:
        """Torch calls made directly in ``function`` (not in functions nested in it)."""
        for torch_call in self.torch_calls:
            if self.ctx.enclosing(torch_call.call, cst.FunctionDef) is function:
                yield torch_call

    # -- local classes ------------------------------------------------------------------------
    def local_call(self, call: cst.Call) -> Optional[LocalCall]:
        """``model(...)``, ``self(...)`` or ``model.method(...)`` on an instance of a local class."""
        func = call.func
        if isinstance(func, cst.Attribute):
            cls = self.local_class(func.value, call)
            name = func.attr.value
        else:
            cls = self.local_class(func, call)
            name = "forward"
        if cls is None:
            return None
        for statement in cls.body.body:
            if isinstance(statement, cst.FunctionDef) and statement.name.value == name:
                return LocalCall(call, cls, statement, bind(call, _signature_of(statement, method=True)))
        return None

    def local_class(self, expr: cst.BaseExpression, at: cst.CSTNode, hops: int = 1) -> Optional[cst.ClassDef]:
        """The module-local class ``expr`` is an instance of, when every assignment agrees."""
        classes = self._classes(expr, at, hops)
        return classes.pop() if len(classes) == 1 and None not in classes else None

    def _classes(self, expr: cst.BaseExpression, at: cst.CSTNode, hops: int) -> set:
        """Candidate classes (None for anything unknown); a value that refers back to the
        variable being resolved (``model = model.to(device)``) adds nothing."""
        if isinstance(expr, cst.Name) and expr.value == "self":
            function = self.ctx.enclosing(at, cst.FunctionDef)
            cls = self.ctx.enclosing(function, cst.ClassDef) if function is not None else None
            return {cls if cls is not None and self.ctx.parent(self.ctx.parent(function)) is cls else None}
        values: List[Tuple[cst.BaseExpression, cst.CSTNode]] = []
        if isinstance(expr, cst.Name):
            function = self.ctx.enclosing(at, cst.FunctionDef)
            if function is not None and expr.value in _param_names(function):
                values = self.call_site_arguments(expr, at) if hops > 0 else []
            else:
                values = [(v, v) for v in self.instances.values(expr.value, at)]
        elif isinstance(expr, cst.Attribute) and isinstance(expr.value, cst.Name) and expr.value.value == "self":
            cls = self.ctx.enclosing(at, cst.ClassDef)
            found = self.instances.attr_values.get(cls, {}).get(expr.attr.value, []) if cls else []
            values = [(v, v) for v in found if isinstance(v, cst.BaseExpression)]
        if not values:
            return {None}
        out: set = set()
        for value, where in values:
            if id(value) in self._visiting:
                continue
            self._visiting.add(id(value))
            try:
                out |= self._classes_of_value(value, where, hops)
            finally:
                self._visiting.discard(id(value))
        return out

    def _classes_of_value(self, value: cst.BaseExpression, at: cst.CSTNode, hops: int) -> set:
        if isinstance(value, cst.Call):
            func = value.func
            if isinstance(func, cst.Name) and func.value in self.classes and not self.ctx.names.resolve(func):
                return {self.classes[func.value]}
            if isinstance(func, cst.Attribute) and func.attr.value in ("to", "cuda", "cpu", "train", "eval",
                                                                       "half", "float", "bfloat16"):
                return self._classes_of_value(func.value, at, hops)
        elif isinstance(value, (cst.Name, cst.Attribute)):
            return self._classes(value, at, hops)
        return {None}

    def call_site_arguments(self, name: cst.Name, at: cst.CSTNode) -> List[Tuple[cst.BaseExpression, cst.CSTNode]]:
        """For a parameter of a module-level function: the argument every call site passes it
        (empty when some call site passes nothing visible or the name is no such parameter)."""
        function = self.ctx.enclosing(at, cst.FunctionDef)
        if function is None or self.ctx.parent(function) is not self.ctx.module \
                or self.flow.is_bound_locally(name) or name.value not in _param_names(function):
            return []
        signature = _signature_of(function, method=False)
        out: List[Tuple[cst.BaseExpression, cst.CSTNode]] = []
        for call in self.ctx.nodes(cst.Call):
            if isinstance(call.func, cst.Name) and call.func.value == function.name.value:
                arg = bind(call, signature).arg(name.value)
                if arg is None:
                    return []
                out.append((arg.value, call))
        return out

    def kinds(self, expr: cst.BaseExpression, at: cst.CSTNode) -> FrozenSet[str]:
        """``Instances.kinds``, and for a parameter of a module-level function the kinds of the
        arguments its call sites pass (one level)."""
        kinds = self.instances.kinds(expr, at)
        if isinstance(expr, cst.Name) and kinds == frozenset({UNKNOWN}):
            sites = self.call_site_arguments(expr, at)
            if sites:
                out: set = set()
                for value, call in sites:
                    out |= self.instances.kinds(value, call)
                return frozenset(out)
        return kinds

    # -- layout -----------------------------------------------------------------------------------
    def batch_first(self, torch_call: TorchCall) -> Optional[bool]:
        """``batch_first`` of the torch module called: its constructor's argument, False when not
        passed (the default of every torch 2.x transformer class and of MHA), None when unknown."""
        if torch_call.callee == SDPA_NAME:
            return None
        receiver = torch_call.call.func
        if isinstance(receiver, cst.Attribute) and receiver.attr.value == "forward":
            receiver = receiver.value
        return self._batch_first(receiver, torch_call.call, torch_call.callee)

    def _batch_first(self, expr: cst.BaseExpression, at: cst.CSTNode, kind: str) -> Optional[bool]:
        if isinstance(expr, cst.Attribute) and expr.attr.value in ("encoder", "decoder") \
                and self.instances.is_instance(expr.value, ("torch.nn.Transformer",), at):
            return self._batch_first(expr.value, at, "torch.nn.Transformer")
        constructor = expr if isinstance(expr, cst.Call) else constructor_of(self.instances, expr, at)
        if constructor is None or self.instances.constructed(constructor, at) != frozenset({kind}):
            return None
        if kind in _STACKS:  # the layers' setting
            layer = bind(constructor, _constructor_signature(kind)).value(_STACKS[kind])
            return self._batch_first(layer, constructor, kind + "Layer") if layer is not None else None
        binding = bind(constructor, _constructor_signature(kind))
        value = binding.value("batch_first")
        if value is None:
            return None if binding.opaque else False
        if isinstance(value, cst.Name) and value.value in ("True", "False"):
            return value.value == "True"
        return None


def _constructor_signature(kind: str) -> Signature:
    return CALLS[kind] if kind in CALLS else _CONSTRUCTORS[kind]


# torch 2.13.0 constructors that ``signatures.CALLS`` does not list (nn/modules/transformer.py,
# activation.py): where ``batch_first`` is.
_CONSTRUCTORS: Dict[str, Signature] = {
    "torch.nn.TransformerEncoder": Signature(("encoder_layer", "num_layers", "norm", "enable_nested_tensor",
                                              "mask_check")),
    "torch.nn.TransformerEncoderLayer": CALLS["torch.nn.TransformerDecoderLayer"],  # the same parameters
    "torch.nn.MultiheadAttention": Signature((
        "embed_dim", "num_heads", "dropout", "bias", "add_bias_kv", "add_zero_attn", "kdim", "vdim",
        "batch_first", "device", "dtype")),
}
# Stacks take ``batch_first`` from their layer argument.
_STACKS = {"torch.nn.TransformerDecoder": "decoder_layer", "torch.nn.TransformerEncoder": "encoder_layer"}
