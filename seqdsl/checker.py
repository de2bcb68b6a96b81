"""Stage 3: the static checker.

Walks each model's operations in order, binds every constructor against the
catalogue, runs each layer's shape-and-mask rule, and collects every finding
(errors and warnings) in one pass. A failed operation binds its results to an
error marker so that one mistake does not cascade into many.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from .catalogue import (
    ACTIVATIONS,
    CATALOGUE,
    INITIALIZERS,
    MERGES,
    REQUIRED,
    BoundLayer,
    CallInfo,
    KernelChoice,
    LayerSpec,
    PadInfo,
    Param,
    RuleError,
    WeightSpec,
    cudnn_targets,
    spec_for,
)
from .cells import cell_spec, extern_spec
from .diagnostics import Diagnostic, Related, did_you_mean
from .dims import Dim, at_least, divisible, exact_div, sym
from .ir import (
    ApplyOp,
    Arg,
    BlockInputCheck,
    CellDef,
    DropMaskOp,
    ExternDef,
    InputDecl,
    LayerCall,
    Literal,
    MergeOp,
    Model,
    Op,
    Program,
    Span,
    ValueUse,
)
from .types import DTYPES, MaskKind, MaskType, TensorType, ValueType

__all__ = [
    "MAX_ELEMENTS",
    "MAX_PARAMETERS",
    "CheckedModel",
    "Constraint",
    "LayerInfo",
    "PAD_PARAMS",
    "check_program",
    "figure",
]

#: the most parameters a model (and so any one layer or weight) may have: 2^31 - 1,
#: what a 32-bit index addresses (8 GiB of f32); beyond it builds fail or run out of memory
MAX_PARAMETERS = 2**31 - 1
#: the most elements a value of known shape may have: what a 64-bit index addresses
MAX_ELEMENTS = 2**63 - 1

#: the range of values each integer dtype holds (pad values must fit)
_INT_RANGE = {"i32": (-(2**31), 2**31 - 1), "i64": (-(2**63), 2**63 - 1)}
_F32_MAX = 3.4028234663852886e38


def figure(n: int) -> str:
    """``n`` for a message: with thousands separators, or its order of magnitude
    when it is too long to print."""
    if abs(n) < 10**30:
        return f"{n:,}"
    digits = int(abs(n).bit_length() * 0.30103)  # log10(2): the order of magnitude
    return f"about 10^{digits}"


_ERR = object()  # marker type of a value whose definition failed


@dataclass(frozen=True)
class Constraint:
    """A condition on a size that depends on symbols (unknown statically), checked at
    run time on every backend, before any framework code: ``dim % divisor == 0`` (an
    exact division: TemporalSplit, Reshape), or, when ``minimum`` is set, ``dim >=
    minimum`` (the steps that reach a valid window must fill it once: ``divisor`` is
    then 1)."""

    dim: Dim
    divisor: int
    what: str
    span: Span
    minimum: int | None = None

    @property
    def requirement(self) -> str:
        """The condition: ``T % 2 == 0`` or ``S/2 >= 7``."""
        if self.minimum is not None:
            return f"{self.dim} >= {self.minimum}"
        return f"{self.dim.paren()} % {self.divisor} == 0"

    @property
    def rule(self) -> str:
        """The condition with its layer and line, as the backends' errors name it."""
        return f"{self.what} (line {self.span.line}) needs {self.requirement}"

    def holds(self, env: Mapping[str, int]) -> bool | None:
        """Whether the symbol sizes of ``env`` meet it; None when one is missing."""
        v = self.dim.evaluate(dict(env))
        if v is None:
            return None
        if self.minimum is not None:
            return v >= self.minimum
        return v.denominator == 1 and v.numerator % self.divisor == 0

    def __str__(self) -> str:
        return f"{self.requirement}  ({self.what})"


#: the arguments of an input's ``pad(...)`` (keras.utils.pad_sequences)
PAD_PARAMS = (
    Param("side", "choice", REQUIRED, choices=("post", "pre")),
    Param("value", "float", 0.0),
    Param("maxlen", "int_or_none", None, lo=1),
    Param("truncate", "choice", "pre", choices=("pre", "post")),
    Param("nonempty", "bool", False),
)


@dataclass(frozen=True)
class LayerInfo:
    name: str
    kind: str
    op_index: int
    config: Mapping[str, object]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    trainable_params: int
    non_trainable_params: int
    kernels: Mapping[str, KernelChoice] | None
    padding_invariant: bool
    span: Span
    #: the layer's weights in the canonical (Keras) layout and get_weights() order
    weights: tuple[WeightSpec, ...] = ()

    @property
    def params(self) -> int:
        return self.trainable_params + self.non_trainable_params


@dataclass(frozen=True)
class CheckedModel:
    model: Model
    types: Mapping[str, ValueType]
    layers: tuple[LayerInfo, ...]
    constraints: tuple[Constraint, ...]
    pads: Mapping[str, PadInfo]
    #: the extern layer declarations of the program (name -> declaration)
    externs: Mapping[str, ExternDef] = field(default_factory=dict)
    #: ``use "python.module"`` modules of the program (they register extern implementations)
    python_modules: tuple[str, ...] = ()
    #: the file the model was read from ("" for text): its folder is searched for those modules
    file: str = ""

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def trainable_params(self) -> int:
        return sum(layer.trainable_params for layer in self.layers)

    @property
    def non_trainable_params(self) -> int:
        return sum(layer.non_trainable_params for layer in self.layers)

    @property
    def total_params(self) -> int:
        return self.trainable_params + self.non_trainable_params

    def layer(self, name: str) -> LayerInfo:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)


def _check_initializer(kind: str, w: WeightSpec) -> None:
    """Keras' identity initializer takes 2D weights only, orthogonal at least 2D: a
    bias or a normalisation's gamma with either fails when Keras builds the layer."""
    init = w.initializer
    if init.startswith("unit_forget_bias("):  # the LSTM bias: [init(U), ones(U), init(2U)]
        init = init[len("unit_forget_bias(") : -1]
    rank = len(w.shape)
    if (init == "identity" and rank != 2) or (init == "orthogonal" and rank < 2):
        need = "2D weights" if init == "identity" else "weights of 2 or more dimensions"
        raise RuleError(
            "SEQ203",
            f"{kind}: the {init} initializer needs {need}, but its weight `{w.name}` has "
            f"shape {list(w.shape)}",
            "choose another initializer for it, e.g. zeros or glorot_uniform",
        )


@dataclass
class _Ctx:
    """The RuleContext the catalogue's rules see for one operation."""

    checker: _ModelChecker
    span: Span
    what: str

    def exact(self, d: Dim | None, k: int, what: str) -> Dim | None:
        if d is None:
            return None
        ok = divisible(d, k)
        q, _ = exact_div(d, k)
        if ok is False:
            raise RuleError(
                "SEQ402",
                f"{what}: the time length {d} is not divisible by {k}",
                f"choose a length that is a multiple of {k}, or pad to one (`pad(..., maxlen=...)`)",
                where="input",
            )
        if ok is None:
            self.checker.constraints.append(Constraint(d, k, what, self.span))
        return q

    def at_least(self, d: Dim, k: int, what: str) -> None:
        if at_least(d, k) is None:  # not provable from symbols >= 1: checked at run time
            # the constant moved to the right: (T + 1) // 2 >= 5, not (T + 1) // 2 - 2 >= 3
            c = math.floor(d.const)
            self.checker.constraints.append(Constraint(d - c, 1, what, self.span, minimum=k - c))

    def pad_of(self, t: TensorType) -> PadInfo | None:
        if t.padded_from is None:
            return None
        return self.checker.pads.get(t.padded_from)

    def warn(self, code: str, message: str, hint: str | None = None) -> None:
        self.checker.diag(code, message, self.span, hint)

    def fixed_batch_example(self, batch: Dim | None, size: int) -> str | None:
        # data inputs first: their dtype is the one the user wrote for the data
        decls = sorted(self.checker.model.inputs, key=lambda inp: inp.is_mask)
        for inp in decls:
            t = self.checker.types.get(inp.name)
            if not isinstance(t, (TensorType, MaskType)) or not inp.dims:
                continue
            first = t.shape[0] if isinstance(t, TensorType) else t.batch
            if first != batch:
                continue
            rest = ["_" if d.value is None else str(d.value) for d in inp.dims[1:]]
            dtype = "mask" if inp.is_mask else inp.dtype
            return f"{inp.name}: {dtype}[{', '.join([str(size), *rest])}]"
        return None


@dataclass
class _ModelChecker:
    model: Model
    diags: list[Diagnostic]
    types: dict[str, object] = field(default_factory=dict)
    defined_at: dict[str, Span] = field(default_factory=dict)
    used: set[str] = field(default_factory=set)
    layers: list[LayerInfo] = field(default_factory=list)
    layer_names: dict[str, Span] = field(default_factory=dict)
    constraints: list[Constraint] = field(default_factory=list)
    pads: dict[str, PadInfo] = field(default_factory=dict)
    #: names assigned by statements that failed to lower (already reported): silently erroneous
    failed: set[str] = field(default_factory=set)
    #: catalogue entries of the program's cell blocks and extern layers
    custom: Mapping[str, LayerSpec] = field(default_factory=dict)
    #: cell block definitions by name (bound into ``RNN(cell)`` configurations)
    cells: Mapping[str, CellDef] = field(default_factory=dict)
    #: cells and externs whose definitions have errors (already reported): calls are silent
    broken: frozenset[str] = frozenset()
    #: a value too large to index was reported (its size carries on: once per model)
    reported_elements: bool = False

    def diag(
        self,
        code: str,
        message: str,
        span: Span | None,
        hint: str | None = None,
        related: Sequence[Related] = (),
    ) -> None:
        self.diags.append(Diagnostic.make(code, message, span, hint, related))

    # ------------------------------------------------------------------ names
    def define(self, name: str, t: object, span: Span) -> None:
        if name in self.defined_at:
            prev = self.defined_at[name]
            self.diag(
                "SEQ102",
                f"`{name}` is already defined",
                span,
                "names are single-assignment: pick a new name",
                [Related(prev, "first defined here")],
            )
            return
        self.defined_at[name] = span
        self.types[name] = t
        if isinstance(t, TensorType):
            self.check_elements(name, t, span)

    def check_elements(self, name: str, t: TensorType, span: Span) -> None:
        """A value of known shape must be indexable: at most :data:`MAX_ELEMENTS` elements."""
        if self.reported_elements:
            return  # a static size carries on into every value computed from it
        n = 1
        for d in t.shape:
            v = d.value if d is not None else None
            if v is not None and v >= 1:  # a symbolic axis is at least 1
                n *= v
        if n > MAX_ELEMENTS:
            self.reported_elements = True
            self.diag(
                "SEQ312",
                f"`{name}` has {figure(n)} elements; a tensor holds at most "
                f"{figure(MAX_ELEMENTS)} (2^63 - 1)",
                span,
                "check the declared sizes: leave the batch and time axes symbolic (`B`, `T`)",
            )

    def lookup(self, use: ValueUse) -> object:
        self.used.add(use.name)
        if use.name in self.types:
            return self.types[use.name]
        if use.name in self.failed:
            return _ERR
        user = _user_names(self.model)
        cands = [n for n in self.types if n in user]
        dym = did_you_mean(use.name, cands)
        self.diag(
            "SEQ101",
            f"`{use.name}` is not defined",
            use.span,
            f"did you mean `{dym}`?"
            if dym
            else "define it with an `input` or an assignment before use",
        )
        return _ERR

    # ------------------------------------------------------------------ inputs
    def check_input(self, inp: InputDecl) -> None:
        dims: list[Dim | None] = []
        for d in inp.dims:
            if d.value is None:
                dims.append(None)
            elif isinstance(d.value, int):
                if d.value < 1:
                    self.diag(
                        "SEQ006",
                        "dimensions are positive",
                        d.span,
                        "use a positive size or a symbol",
                    )
                dims.append(Dim.of(d.value))
            else:
                dims.append(sym(d.value))
        if inp.is_mask:
            self.check_mask_input(inp, dims)
            return
        if inp.dtype not in DTYPES:
            dym = did_you_mean(inp.dtype, (*DTYPES, "mask", "f32", "i32"))
            alias = {
                "float32": "f32",
                "float64": "f64",
                "int32": "i32",
                "int64": "i64",
                "float": "f32",
                "int": "i32",
            }
            hint = alias.get(inp.dtype) or dym
            self.diag(
                "SEQ007",
                f"unknown dtype `{inp.dtype}`",
                inp.dtype_span,
                f"did you mean `{hint}`?"
                if hint
                else "dtypes are f32, f64, i32, i64, bool and mask",
            )
            self.define(inp.name, _ERR, inp.name_span)
            return
        if len(dims) < 1:
            self.diag(
                "SEQ006",
                "an input needs at least a batch dimension",
                inp.span,
                "e.g. `f32[B, T, 8]`",
            )
        pad = self.check_pad(inp, dims) if inp.pad is not None else None
        mask = None
        if inp.masked:
            if len(dims) < 2:
                self.diag("SEQ006", "a `masked` input needs a time axis: `[B, T, ...]`", inp.masked_span or inp.span,
                          "add a time axis, or remove `masked`")  # fmt: skip
            mask = MaskKind(pad.side, pad.nonempty) if pad is not None else MaskKind("any")
        if pad is not None:
            self.pads[inp.name] = pad
        t = TensorType(inp.dtype, tuple(dims), mask, inp.name if pad is not None else None)
        self.define(inp.name, t, inp.name_span)

    def check_mask_input(self, inp: InputDecl, dims: list[Dim | None]) -> None:
        side = "any"
        nonempty = False
        for word, span in inp.mask_words:
            if word in ("post", "pre", "any"):
                side = word
            elif word == "nonempty":
                nonempty = True
            elif word in ("maybe_empty", "maybe-empty"):
                nonempty = False
            else:
                dym = did_you_mean(word, ("post", "pre", "any", "nonempty"))
                self.diag(
                    "SEQ006",
                    f"unknown mask kind `{word}`",
                    span,
                    f"did you mean `{dym}`?"
                    if dym
                    else "a mask kind is post, pre or any, optionally with nonempty",
                )
        if len(dims) != 2:
            where = inp.dims[2].span if len(inp.dims) > 2 else inp.dtype_span  # the extra axis
            self.diag(
                "SEQ006",
                f"a mask input is `[B, T]`, got {len(dims)} dimension(s)",
                where,
                "write `mask[B, T]`",
            )
            self.define(inp.name, _ERR, inp.name_span)
            return
        if inp.pad is not None or inp.masked:
            self.diag("SEQ006", "a mask input takes no `pad(...)` or `masked`", inp.pad_span or inp.masked_span or inp.span,
                      "a mask is already the mask: remove `pad(...)`/`masked` here")  # fmt: skip
        self.define(
            inp.name,
            MaskType(dims[0], dims[1], MaskKind(side, nonempty, declared=True)),
            inp.name_span,
        )

    def check_pad(self, inp: InputDecl, dims: list[Dim | None]) -> PadInfo | None:
        assert inp.pad is not None
        pad_spec = LayerSpec(
            name="pad",
            category="pad",
            params=PAD_PARAMS,
            rule=lambda *a: [],
            weights=lambda *a: [],
            mask_rule="none",
            padding_invariant=True,
            doc="",
        )
        span = inp.pad_span or inp.span
        cfg = self.bind(pad_spec, inp.pad, span, "pad")
        if cfg is None:
            return None
        if len(dims) < 2:
            self.diag("SEQ006", "a padded input needs a time axis: `[B, T, ...]`", span,
                      "add a time axis, or remove `pad(...)`")  # fmt: skip
            return None
        value = cfg["value"]
        assert isinstance(value, float)
        if inp.dtype in ("i32", "i64") and not float(value).is_integer():
            arg = next((a for a in inp.pad if a.name == "value"), None)
            self.diag(
                "SEQ203",
                f"pad value {value} does not fit the input's dtype {inp.dtype}",
                arg.span if arg else span,
                f"padding is cast to {inp.dtype}, giving {int(value)}: write an integer value",
            )
            value = float(int(value))  # what the padding will be: no cascade on mask rules
        value_span = next((a.span for a in inp.pad if a.name == "value"), span)
        if inp.dtype in _INT_RANGE:
            lo, hi = _INT_RANGE[inp.dtype]
            if not lo <= value <= hi:
                self.diag(
                    "SEQ207",
                    f"pad value {_number(value)} does not fit the input's dtype {inp.dtype}",
                    value_span,
                    f"{inp.dtype} holds {lo:,} to {hi:,}: write a value in that range",
                )
                value = 0.0
        elif inp.dtype == "f32" and abs(value) > _F32_MAX:
            self.diag(
                "SEQ207",
                f"pad value {_number(value)} does not fit the input's dtype f32",
                value_span,
                "f32 holds magnitudes up to about 3.4e38 (it would become infinity): "
                "write a smaller value, or declare the input `f64`",
            )
            value = 0.0
        elif inp.dtype == "bool" and value not in (0.0, 1.0):
            self.diag(
                "SEQ207",
                f"pad value {_number(value)} does not fit the input's dtype bool",
                value_span,
                "a bool input pads with 0 (false) or 1 (true)",
            )
            value = 0.0
        maxlen = cfg["maxlen"]
        t = dims[1]
        if isinstance(maxlen, int) and t is not None and t.value is not None and t.value != maxlen:
            self.diag(
                "SEQ401",
                f"pad(maxlen={maxlen}) pads to {maxlen} steps, but the time dimension is declared {t.value}",
                next((a.span for a in inp.pad if a.name == "maxlen"), span),
                f"make them agree: `[..., {maxlen}, ...]` or `maxlen={t.value}`",
            )
        return PadInfo(
            side=str(cfg["side"]),
            value=float(value),
            nonempty=bool(cfg["nonempty"]),
            maxlen=maxlen if isinstance(maxlen, int) else None,
            truncate=str(cfg["truncate"]),
        )

    # ------------------------------------------------------------------ binding
    def bind(
        self, spec: LayerSpec, args: Sequence[Arg], span: Span, kind_name: str
    ) -> dict[str, object] | None:
        """Bind constructor arguments to the spec's parameters; None on error."""
        ok = True
        cfg: dict[str, object] = {}
        positional = [p for p in spec.params if p.name not in ("name", "trainable")]
        pos_i = 0
        arg_spans: dict[str, Span] = {}
        for a in args:
            if a.name is None:
                if pos_i >= len(positional):
                    self.diag(
                        "SEQ205",
                        f"{kind_name} takes {len(positional)} positional argument(s), got more",
                        a.span,
                        f"its positional arguments are {', '.join(p.name for p in positional[:4])}"
                        f"{', ...' if len(positional) > 4 else ''}; pass any other by keyword, `arg=value`",
                    )
                    ok = False
                    continue
                p = positional[pos_i]
                pos_i += 1
                if p.name in cfg:  # pragma: no cover - positional come first in the grammar's use
                    continue
            else:
                found = spec.param(a.name)
                if found is None:
                    ok = False
                    nspan = a.name_span or a.span
                    if a.name in spec.unsupported:
                        self.diag(
                            "SEQ202",
                            f"{kind_name}: the Keras argument `{a.name}` is not supported in v1",
                            nspan,
                            spec.unsupported[a.name],
                        )
                    elif a.name in ("mask", "initial_state", "training"):
                        self.diag(
                            "SEQ206",
                            f"`{a.name}=` is data, not configuration",
                            nspan,
                            f"pass it in the call form: `{kind_name}(...)(x, {a.name}=...)`",
                        )
                    else:
                        names = [p.name for p in spec.params]
                        dym = did_you_mean(a.name, names)
                        self.diag(
                            "SEQ201",
                            f"{kind_name} has no argument `{a.name}`",
                            nspan,
                            f"did you mean `{dym}`?"
                            if dym
                            else f"its arguments: {', '.join(names)}",
                        )
                    continue
                p = found
                if p.name in cfg:
                    self.diag(
                        "SEQ205",
                        f"{kind_name}: argument `{p.name}` given twice",
                        a.name_span or a.span,
                        "keep one",
                        [Related(arg_spans[p.name], "first given here")],
                    )
                    ok = False
                    continue
            value = self.convert(p, a.value, kind_name)
            if value is _ERR:
                ok = False
                continue
            cfg[p.name] = value
            arg_spans[p.name] = a.span
        for p in spec.params:
            if p.name not in cfg:
                if p.default is REQUIRED:
                    if ok:
                        self.diag(
                            "SEQ204",
                            f"{kind_name} needs the argument `{p.name}`",
                            span,
                            f"add `{p.name}=...`" + (f" ({p.doc})" if p.doc else ""),
                        )
                    ok = False
                else:
                    cfg[p.name] = p.default
        return cfg if ok else None

    def convert(self, p: Param, lit: Literal, kind_name: str) -> object:
        def bad(expected: str) -> object:
            self.diag(
                "SEQ203",
                f"{kind_name}: `{p.name}` expects {expected}, got `{lit.describe()}`",
                lit.span,
                _type_hint(p),
            )
            return _ERR

        v = lit.value
        t = p.type
        out: object
        if t == "int":
            if lit.kind != "int":
                return bad("an integer")
            out = v
        elif t == "float":
            if lit.kind not in ("int", "float"):
                return bad("a number")
            assert isinstance(v, (int, float))
            try:
                out = float(v)
            except OverflowError:  # an integer literal beyond the float range
                out = math.inf
            if not math.isfinite(out):
                text = lit.describe()
                self.diag(
                    "SEQ207",
                    f"{kind_name}: `{p.name}` must be a finite number, got "
                    + (text if len(text) <= 24 else text[:20] + "..."),
                    lit.span,
                    "numbers are 64-bit floats: write a value below 1e308",
                )
                return _ERR
        elif t == "bool":
            if lit.kind != "bool":
                return bad("`true` or `false`")
            out = v
        elif t == "str":
            if lit.kind != "str":
                return bad('a string in quotes, e.g. "encoder"')
            assert isinstance(v, str)
            if p.name == "name" and (not v or any(ch in v for ch in "/. ")):
                self.diag(
                    "SEQ203",
                    f"layer name `{v}` must be non-empty and free of `/`, `.` and spaces",
                    lit.span,
                    "weights are keyed by layer names; use letters, digits and `_`",
                )
                return _ERR
            out = v
        elif t in ("choice", "activation", "initializer"):
            if lit.kind not in ("name", "str"):
                return bad("a name")
            assert isinstance(v, str)
            choices = {"choice": p.choices, "activation": ACTIVATIONS, "initializer": INITIALIZERS}[
                t
            ]
            if t == "activation" and v in ("none", "None", "linear"):
                return "linear"
            if t == "choice" and p.name == "merge_mode" and v == "None":
                return "none"
            if v not in choices:
                dym = did_you_mean(v, choices)
                self.diag(
                    "SEQ203",
                    f"{kind_name}: `{v}` is not a valid {p.name}",
                    lit.span,
                    f"did you mean `{dym}`?" if dym else f"choose one of: {', '.join(choices)}",
                )
                return _ERR
            out = v
        elif t == "ints":
            if lit.kind == "list" and isinstance(v, tuple) and len(v) == 1 and v[0].kind == "int":
                out = v[0].value
            elif lit.kind == "int":
                out = v
            else:
                return bad("an integer")
        elif t == "int_or_none":
            if lit.kind == "name" and v in ("none", "None"):
                return None
            if lit.kind != "int":
                return bad("an integer or `none`")
            out = v
        elif t == "ints_or_none":
            if lit.kind == "name" and v in ("none", "None"):
                return None
            if lit.kind == "list" and isinstance(v, tuple) and len(v) == 1 and v[0].kind == "int":
                out = v[0].value
            elif lit.kind == "int":
                out = v
            else:
                return bad("an integer or `none`")
        elif t == "axes":
            if lit.kind == "name" and v in ("none", "None"):
                return None
            if lit.kind == "name" and v == "time" or lit.kind == "int":
                return v
            if (
                lit.kind == "list"
                and isinstance(v, tuple)
                and all(isinstance(i, Literal) and i.kind == "int" for i in v)
            ):
                return tuple(i.value for i in v)
            return bad("`none`, `time`, an integer axis or a list of them")
        elif t == "shape":
            items = v if lit.kind == "list" else (lit,) if lit.kind == "int" else None
            if not isinstance(items, tuple) or not all(
                isinstance(i, Literal) and i.kind == "int" for i in items
            ):
                return bad("a list of integers, e.g. `[4, -1]`")
            out = tuple(i.value for i in items)
        elif t == "axis":
            if lit.kind == "name" and v in ("time", "features") or lit.kind == "int":
                out = v
            else:
                return bad("`time`, `features` or an integer axis")
        elif t == "layer":
            if lit.kind != "layer" or not isinstance(v, LayerCall):
                return bad("a layer, e.g. `LSTM(64)`")
            bound = self.bind_nested(v)
            if bound is None:
                return _ERR
            out = bound
        else:  # pragma: no cover - catalogue typo
            raise AssertionError(f"unknown parameter type {t}")
        if isinstance(out, (int, float)) and not isinstance(out, bool):
            if p.lo is not None and out < p.lo:
                return self._range(p, lit, kind_name)
            if p.hi is not None and (out > p.hi or (p.hi_open and out >= p.hi)):
                return self._range(p, lit, kind_name)
        return out

    def _range(self, p: Param, lit: Literal, kind_name: str) -> object:
        if p.lo is not None and p.hi is not None:
            rng = f"in [{_num(p.lo)}, {_num(p.hi)}{')' if p.hi_open else ']'}"
        elif p.lo is not None:
            rng = f">= {_num(p.lo)}"
        else:
            rng = f"<= {_num(p.hi or 0)}"
        self.diag(
            "SEQ207",
            f"{kind_name}: `{p.name}` must be {rng}, got {lit.describe()}",
            lit.span,
            f"use a value {rng}" + (f" ({p.doc})" if p.doc else ""),
        )
        return _ERR

    def bind_nested(self, call: LayerCall) -> BoundLayer | None:
        spec = self.spec(call)
        if spec is None:
            return None
        cfg = self.bind(spec, call.args, call.span, call.kind)
        if cfg is None:
            return None
        cfg["__kind__"] = call.kind
        cdef = self.cells.get(call.kind)
        if cdef is not None:
            cfg["__cell__"] = cdef
        return BoundLayer(call.kind, call.name, cfg)

    def spec(self, call: LayerCall) -> LayerSpec | None:
        spec = CATALOGUE.get(call.kind) or self.custom.get(call.kind)
        if spec is not None:
            return spec
        if call.kind in self.broken:
            return None
        if call.kind in MERGES:
            self.diag(
                "SEQ005",
                f"`{call.kind}` is a function of several values, not a layer",
                call.kind_span,
                f"call it on the values: `{call.kind}(a, b)`",
            )
            return None
        dym = did_you_mean(call.kind, [*CATALOGUE, *MERGES])
        self.diag(
            "SEQ103",
            f"unknown layer `{call.kind}`",
            call.kind_span,
            f"did you mean `{dym}`?" if dym else "see `docs/language.md` for the built-in layers",
        )
        return None

    # ------------------------------------------------------------------ ops
    def check_op(self, index: int, op: Op) -> None:
        if isinstance(op, DropMaskOp):
            t = self.lookup(op.input)
            if isinstance(t, MaskType):
                self.mask_as_data(op.input)
                t = _ERR
            if isinstance(t, TensorType):
                if t.mask is None:
                    self.diag(
                        "SEQ804",
                        "drop_mask on a value that has no mask",
                        op.span,
                        "remove `drop_mask`",
                    )
                t = TensorType(t.dtype, t.shape, None, None)
            self.bind_results(op.results, [t], op.result_spans, op.span, single_ok=True)
            return
        if isinstance(op, MergeOp):
            self.check_merge(index, op)
            return
        self.check_apply(index, op)

    def mask_as_data(self, use: ValueUse) -> None:
        self.diag(
            "SEQ106",
            f"`{use.name}` is a mask, not data",
            use.span,
            f"pass it as `mask={use.name}` in a call, e.g. `LSTM(32)(x, mask={use.name})`",
        )

    def tensor_inputs(self, uses: Sequence[ValueUse]) -> list[TensorType] | None:
        out: list[TensorType] = []
        ok = True
        for u in uses:
            t = self.lookup(u)
            if isinstance(t, MaskType):
                self.mask_as_data(u)
                ok = False
            elif isinstance(t, TensorType):
                out.append(t)
            else:
                ok = False
        return out if ok else None

    def check_merge(self, index: int, op: MergeOp) -> None:
        spec = MERGES[op.fn]
        ins = self.tensor_inputs(op.inputs)
        cfg = self.bind(spec, op.args, op.span, op.fn)
        lo, hi = spec.n_inputs
        if ins is not None and not lo <= len(op.inputs) <= hi:
            exp = f"exactly {lo}" if lo == hi else f"{lo} to {hi}"
            hint = (
                f"e.g. `{op.fn}(a, b)`"
                if len(op.inputs) < lo
                else f"merge at most {hi} values at once: merge groups of them, then the results"
            )
            self.diag("SEQ205", f"{op.fn} takes {exp} values, got {len(op.inputs)}", op.span, hint)
            ins = None
        outs: list[object] = [_ERR]
        if ins is not None and cfg is not None:
            ctx = _Ctx(self, op.span, op.fn)
            try:
                outs = list(spec.rule(cfg, ins, CallInfo(op.fn), ctx))
            except RuleError as e:
                self.rule_error(e, op.span, op.inputs, None, (), op.span, op.args)
                outs = [_ERR]
            else:
                self.record_layer(index, op.name, op.fn, cfg, spec, ins, op, None)
        self.bind_results(op.results, outs, op.result_spans, op.span)

    def check_apply(self, index: int, op: ApplyOp) -> None:
        layer = op.layer
        spec = self.spec(layer)
        ins = self.tensor_inputs(op.inputs)
        cfg = self.bind(spec, layer.args, layer.span, layer.kind) if spec is not None else None
        # explicit layer names
        if not layer.auto_named:
            if layer.name in self.layer_names and self.layer_names[layer.name] == _name_arg_span(
                layer
            ):
                self.diag(
                    "SEQ104",
                    f"`name=` inside `repeat` gives every copy the same name, `{layer.name}`",
                    _name_arg_span(layer),
                    "remove `name=`: copies inside `repeat` are named automatically with the repeat index",
                )
            elif layer.name in self.layer_names:
                self.diag(
                    "SEQ104",
                    f"two layers are named `{layer.name}`",
                    _name_arg_span(layer),
                    "layer names key the weights file: make them unique",
                    [Related(self.layer_names[layer.name], "first used here")],
                )
            else:
                self.layer_names[layer.name] = _name_arg_span(layer)
        fail: list[object] = [_ERR] * max(1, len(op.results))
        if spec is None or cfg is None:
            self._lookup_data(op)
            self.bind_results(op.results, fail, op.result_spans, op.span, silent=True)
            return
        cfg["__kind__"] = layer.kind
        ok = self.check_decorators(layer, spec)
        # data arguments
        if op.mask is not None and "mask" not in spec.data_args:
            self.diag(
                "SEQ504",
                f"{layer.kind} does not take a `mask=` argument",
                op.mask.span,
                "each of its inputs brings its own mask: mask the query, value or key itself "
                "(`Embedding(mask_zero=true)`, `Masking`, a `masked` input)"
                if spec.n_inputs[1] > 1
                else "generators make their own mask and reshaping layers have none; "
                "pass the mask to the layer that consumes it",
            )
            ok = False
        if op.initial_state is not None and "initial_state" not in spec.data_args:
            self.diag(
                "SEQ206",
                f"{layer.kind} does not take `initial_state=`",
                op.initial_state_span or op.span,
                "only recurrent layers take initial states",
            )
            ok = False
        if op.training is not None:
            if "training" not in spec.data_args:
                self.diag("SEQ206", f"{layer.kind} does not take `training=`", op.training.span,
                          "only Dropout, BatchNormalization, TimeDistributed, recurrent and "
                          "attention layers do")  # fmt: skip
                ok = False
            elif op.training.kind != "bool":
                self.diag("SEQ203", "`training=` expects `true` or `false`", op.training.span,
                          "write `training=true` or `training=false`")  # fmt: skip
                ok = False
        lo, hi = spec.n_inputs
        if ins is not None and not lo <= len(op.inputs) <= hi:
            if hi == 1:
                self.diag(
                    "SEQ205",
                    f"{layer.kind} takes one input, got {len(op.inputs)}",
                    op.span,
                    "merge values first with `concat(...)` or `add(...)`",
                )
            elif layer.kind in ("Attention", "MultiHeadAttention"):
                self.diag(
                    "SEQ205",
                    f"{layer.kind} takes {lo} to {hi} inputs (query, value[, key]), "
                    f"got {len(op.inputs)}",
                    op.span,
                    f"call it on its inputs: `{layer.kind}(...)(query, value)`, "
                    "or `(query, value, key)`",
                )
            else:
                want = f"{lo} inputs" if lo == hi else f"{lo} to {hi} inputs"
                self.diag(
                    "SEQ205",
                    f"{layer.kind} takes {want}, got {len(op.inputs)}",
                    op.span,
                    f"pass {want}: `{layer.kind}(...)({', '.join(f'x{i + 1}' for i in range(lo))})`",
                )
            ok = False
        mask_t = self._explicit_mask(op, ins)
        states = self._states(op)
        if not ok or ins is None or mask_t is _ERR or states is _ERR:
            self.bind_results(op.results, fail, op.result_spans, op.span, silent=True)
            return
        assert isinstance(states, tuple) or states is None
        if isinstance(mask_t, MaskType):
            ins = [x.with_mask(mask_t.kind) for x in ins]
        call = CallInfo(
            layer.kind,
            initial_state=states,
            explicit_mask=mask_t is not None,
            training=bool(op.training.value) if op.training is not None else None,
        )
        ctx = _Ctx(self, layer.span, layer.kind)
        try:
            outs: list[object] = list(spec.rule(cfg, ins, call, ctx))
        except RuleError as e:
            self.rule_error(
                e, layer.span, op.inputs, layer, op.initial_state, op.initial_state_span
            )
            self.bind_results(op.results, fail, op.result_spans, op.span, silent=True)
            return
        try:
            kernels = self.record_layer(index, layer.name, layer.kind, cfg, spec, ins, op, layer)
        except RuleError as e:  # a weight rule of an extern or cell block
            self.rule_error(
                e, layer.span, op.inputs, layer, op.initial_state, op.initial_state_span
            )
            self.bind_results(op.results, fail, op.result_spans, op.span, silent=True)
            return
        if kernels is not None and any(d.name == "kernel" for d in layer.decorators):
            self.require_cudnn(layer, cfg, kernels)
        if len(outs) != len(op.results):
            self.result_count_error(op, layer, len(outs))
            self.bind_results(op.results, fail, op.result_spans, op.span, silent=True)
            return
        self.bind_results(op.results, outs, op.result_spans, op.span)

    def _lookup_data(self, op: ApplyOp) -> None:
        if op.mask is not None:
            self.lookup(op.mask)
        for s in op.initial_state or ():
            self.lookup(s)

    def _explicit_mask(self, op: ApplyOp, ins: list[TensorType] | None) -> object:
        if op.mask is None:
            return None
        m = self.lookup(op.mask)
        if m is _ERR:
            return _ERR
        if not isinstance(m, MaskType):
            self.diag(
                "SEQ203",
                f"`mask=` expects a mask value, and `{op.mask.name}` is a tensor",
                op.mask.span,
                "declare an explicit mask input: `input m: mask[B, T]`",
            )
            return _ERR
        if ins:
            t = ins[0]
            if t.rank < 2:
                self.diag("SEQ503", f"`{op.inputs[0].name}` has no time axis for a mask", op.mask.span,
                          "masks apply to sequences `[B, T, ...]`; remove `mask=`")  # fmt: skip
                return _ERR
            if m.time is None or t.time is None:
                unknown = [
                    f"`{n}`"
                    for n, d in ((op.mask.name, m.time), (op.inputs[0].name, t.time))
                    if d is None
                ]
                self.diag(
                    "SEQ503",
                    f"mask `{op.mask.name}` has time `{_f(m.time)}` and `{op.inputs[0].name}` has time "
                    f"`{_f(t.time)}`: an unknown time (`_`) cannot be checked to match the mask",
                    op.mask.span,
                    f"declare the time of {' and '.join(unknown)} with a symbol or a size, the same for both "
                    f"(e.g. `{_f(m.time or t.time or sym('T'))}`): the built model then checks it at every call",
                )
                return _ERR
            if not _same(m.time, t.time):
                self.diag(
                    "SEQ503",
                    f"mask `{op.mask.name}` has time `{_f(m.time)}` but `{op.inputs[0].name}` has time `{_f(t.time)}`",
                    op.mask.span,
                    "a mask must cover the value's time axis step for step; use the same time symbol",
                )
                return _ERR
            if not _same(m.batch, t.batch):
                self.diag(
                    "SEQ307",
                    f"mask `{op.mask.name}` has batch `{_f(m.batch)}` but `{op.inputs[0].name}` has batch `{_f(t.batch)}`",
                    op.mask.span,
                    "use the same batch symbol",
                )
                return _ERR
            if t.mask is not None:
                self.diag(
                    "SEQ805",
                    f"`mask={op.mask.name}` replaces the mask `{op.inputs[0].name}` already carries ({t.mask})",
                    op.mask.span,
                    f"drop the incoming mask first (`-> drop_mask`) to make this explicit, or remove `mask={op.mask.name}`",
                )
        return m

    def _states(self, op: ApplyOp) -> object:
        if op.initial_state is None:
            return None
        out: list[TensorType] = []
        bad = False
        for s in op.initial_state:
            t = self.lookup(s)
            if isinstance(t, MaskType):
                self.mask_as_data(s)
                bad = True
            elif isinstance(t, TensorType):
                out.append(t)
            else:
                bad = True
        return _ERR if bad else tuple(out)

    def check_decorators(self, layer: LayerCall, spec: LayerSpec) -> bool:
        ok = True
        for d in layer.decorators:
            if d.name != "kernel":
                self.diag(
                    "SEQ009",
                    f"unknown decorator `@{d.name}`",
                    d.span,
                    "the one decorator is `@kernel(cudnn)`",
                )
                ok = False
                continue
            if len(d.args) != 1 or d.args[0].name is not None or d.args[0].value.value != "cudnn":
                self.diag(
                    "SEQ009",
                    "`@kernel` takes one argument, `cudnn`",
                    d.span,
                    "write `@kernel(cudnn)`",
                )
                ok = False
                continue
            if spec.kernels is None:
                self.diag(
                    "SEQ009",
                    f"`@kernel(cudnn)` applies to recurrent layers, not {layer.kind}",
                    d.span,
                    "remove the decorator",
                )
                ok = False
        return ok

    def require_cudnn(
        self, layer: LayerCall, cfg: Mapping[str, object], kernels: Mapping[str, KernelChoice]
    ) -> None:
        bad = [
            f"{tgt}: {kernels[tgt].kernel} ({kernels[tgt].reason})"
            for tgt in cudnn_targets(cfg)
            if not kernels[tgt].kernel.startswith("cudnn")
        ]
        if bad:
            deco = next(d for d in layer.decorators if d.name == "kernel")
            self.diag(
                "SEQ701",
                f"{layer.kind} `{layer.name}` is not eligible for cuDNN: " + "; ".join(bad),
                layer.kind_span,
                "use the default activations (tanh/sigmoid), recurrent_dropout=0, "
                "use_bias=true, unroll=false and GRU reset_after=true, or remove `@kernel(cudnn)`",
                [Related(deco.span, "cuDNN required here")],
            )

    def record_layer(
        self,
        index: int,
        name: str,
        kind: str,
        cfg: Mapping[str, object],
        spec: LayerSpec,
        ins: Sequence[TensorType],
        op: ApplyOp | MergeOp,
        layer: LayerCall | None,
    ) -> Mapping[str, KernelChoice] | None:
        weights = tuple(spec.weights(cfg, ins))
        for w in weights:
            _check_initializer(kind, w)
        if cfg.get("trainable") is False:
            weights = tuple(replace(w, trainable=False) for w in weights)
        trainable = sum(w.size for w in weights if w.trainable)
        non_trainable = sum(w.size for w in weights if not w.trainable)
        if trainable + non_trainable > MAX_PARAMETERS:
            big = max(weights, key=lambda w: w.size)
            self.diag(
                "SEQ312",
                f"{kind} has {figure(trainable + non_trainable)} parameters; a model has at most "
                f"{figure(MAX_PARAMETERS)} (2^31 - 1)",
                layer.span if layer is not None else op.span,
                f"its weight `{big.name}` alone is {_shape_text(big.shape)}: check the sizes",
            )
        kernels = spec.kernels(cfg, ins) if spec.kernels is not None else None
        self.layers.append(
            LayerInfo(
                name=name,
                kind=kind,
                op_index=index,
                config={k: v for k, v in cfg.items() if k != "__kind__"},
                inputs=tuple(u.name for u in op.inputs),
                outputs=op.results,
                trainable_params=trainable,
                non_trainable_params=non_trainable,
                weights=weights,
                kernels=kernels,
                padding_invariant=spec.padding_invariant
                and (spec.invariant is None or spec.invariant(cfg)),
                span=layer.span if layer is not None else op.span,
            )
        )
        return kernels

    def result_count_error(self, op: ApplyOp, layer: LayerCall, n: int) -> None:
        if op.in_pipe_middle:
            self.diag(
                "SEQ306",
                f"{layer.kind} gives {n} results, so it must end the pipe",
                layer.span,
                "assign its results to names, then continue from one of them",
            )
            return
        hint = (
            f"write {n} name(s) on the left: `{', '.join(_result_names(layer.kind, n))} = ...`"
            if n > 1
            else "assign it to one name"
        )
        if layer.kind in ("LSTM", "GRU", "SimpleRNN", "RNN", "Bidirectional") and n < len(
            op.results
        ):
            hint += "; set `return_state=true` to get the states"
        self.diag(
            "SEQ306",
            f"{layer.kind} gives {n} result(s), but {len(op.results)} name(s) are assigned",
            op.result_spans[0] if op.result_spans else op.span,
            hint,
        )

    def rule_error(
        self,
        e: RuleError,
        layer_span: Span,
        inputs: Sequence[ValueUse],
        layer: LayerCall | None,
        states: Sequence[ValueUse] | None,
        states_span: Span | None,
        args: Sequence[Arg] = (),
    ) -> None:
        span = layer_span
        if e.where == "input" and inputs:
            span = inputs[min(e.index, len(inputs) - 1)].span
        elif e.where == "initial_state" and states_span is not None:
            span = states_span
        elif e.where == "arg" and layer is not None and e.arg is not None:
            span = _arg_span(layer, e.arg) or layer_span
        elif e.where == "arg" and e.arg is not None:  # a merge's own argument (`axis=`)
            span = next((a.span for a in args if a.name == e.arg), layer_span)
        self.diag(e.code, e.message, span, e.hint)

    def bind_results(
        self,
        names: Sequence[str],
        outs: Sequence[object],
        spans: Sequence[Span],
        op_span: Span,
        single_ok: bool = False,
        silent: bool = False,
    ) -> None:
        if len(outs) != len(names) and not silent and not (len(outs) == 1 and outs[0] is _ERR):
            self.diag(
                "SEQ306",
                f"this gives {len(outs)} result(s), but {len(names)} name(s) are assigned",
                spans[0] if spans else op_span,
                "assign one name per result",
            )
            outs = [_ERR] * len(names)
        for i, n in enumerate(names):
            t = outs[i] if i < len(outs) else _ERR
            self.define(n, t, spans[i] if i < len(spans) else op_span)

    # ------------------------------------------------------------------ layer blocks
    def check_block_inputs(self, checks: Sequence[BlockInputCheck]) -> bool:
        """The values passed to one call of a layer block against its typed inputs.

        Symbols in the declared shapes bind at their first use in the call, so
        ``input a: f32[B, T, F]`` and ``input b: f32[B, T, F]`` must agree.
        Reported at the call's argument; False if any does not fit."""
        ok = True
        symbols: dict[str, Dim | None] = {}
        for chk in checks:
            t = self.lookup(chk.value)
            if t is _ERR:
                continue
            decl = chk.decl
            related = [Related(decl.name_span, f"`{decl.name}` declared here")]
            head = f"`{chk.block}` declares its input `{decl.name}` as"
            if decl.is_mask:
                if not isinstance(t, MaskType):
                    self.diag("SEQ203", f"{head} a mask, and `{chk.value.name}` is a tensor",
                              chk.value.span, "pass a mask value (an explicit mask input)", related)  # fmt: skip
                    ok = False
                    continue
                shape: tuple[Dim | None, ...] = (t.batch, t.time)
            else:
                if isinstance(t, MaskType):
                    self.mask_as_data(chk.value)
                    ok = False
                    continue
                assert isinstance(t, TensorType)
                if t.dtype != decl.dtype:
                    self.diag("SEQ301", f"{head} {decl.dtype}, but `{chk.value.name}` is {t.dtype}",
                              chk.value.span, f"pass a {decl.dtype} value, or change the declaration",
                              related)  # fmt: skip
                    ok = False
                    continue
                if t.rank != len(decl.dims):
                    self.diag(
                        "SEQ303",
                        f"{head} rank {len(decl.dims)}, but `{chk.value.name}` is {t}",
                        chk.value.span,
                        "pass a value of the declared rank, or change the declaration",
                        related,
                    )
                    ok = False
                    continue
                shape = t.shape
            for axis, (d, actual) in enumerate(zip(decl.dims, shape, strict=True)):
                want: Dim | None
                if d.value is None:
                    continue
                if isinstance(d.value, int):
                    want = Dim.of(d.value)
                elif d.value in symbols:
                    want = symbols[d.value]
                else:
                    symbols[d.value] = actual
                    continue
                if _same(want, actual):
                    continue
                shown = (
                    "["
                    + ", ".join("_" if x.value is None else str(x.value) for x in decl.dims)
                    + "]"
                )
                code = (
                    "SEQ307"
                    if axis == 0
                    else "SEQ401"
                    if axis == 1 and len(shape) >= 3 or decl.is_mask
                    else "SEQ302"
                )
                self.diag(
                    code,
                    f"{head} {decl.dtype}{shown}, but `{chk.value.name}` has `{_f(actual)}` "
                    f"where `{d.value}` {'is bound to' if isinstance(d.value, str) else 'is'} "
                    f"`{_f(want)}` (axis {axis})",
                    chk.value.span,
                    "pass a value of the declared shape: a symbol means the same size "
                    "everywhere in one call",
                    related,
                )
                ok = False
                break
        return ok

    # ------------------------------------------------------------------ model
    def run(self) -> CheckedModel:
        m = self.model
        produced = {r for op in m.ops for r in op.results}
        self.failed = ({n for n, _ in m.bindings} | m.internal) - produced
        for inp in m.inputs:
            self.check_input(inp)
        calls: dict[int, list[BlockInputCheck]] = {}  # one list per call of a block
        for chk in m.block_checks:
            calls.setdefault(chk.call, []).append(chk)
        starting: dict[int, list[list[BlockInputCheck]]] = {}
        for group in sorted(calls.values(), key=lambda g: g[0].call):
            starting.setdefault(min(group[0].start, len(m.ops)), []).append(group)
        skip_to = 0
        for i in range(len(m.ops) + 1):
            for group in starting.get(i, ()):
                if not self.check_block_inputs(group):
                    skip_to = max(skip_to, group[0].end)
            if i == len(m.ops):
                break
            op = m.ops[i]
            if i < skip_to:  # the expansion of a block called with a value of the wrong type
                self.bind_results(op.results, [_ERR] * len(op.results), (), op.span, silent=True)
                continue
            self.check_op(i, op)
        seen: dict[str, Span] = {}
        if not m.outputs:
            self.diag(
                "SEQ008",
                f"model `{m.name}` declares no output",
                m.name_span,
                "add `output <name>` at the end",
            )
        for out in m.outputs:
            if out.name in seen:
                self.diag("SEQ107", f"`{out.name}` is output twice", out.span, "list each output once",
                          [Related(seen[out.name], "first output here")])  # fmt: skip
                continue
            seen[out.name] = out.span
            t = self.lookup(ValueUse(out.name, out.span))
            if isinstance(t, MaskType):
                self.diag("SEQ106", f"`{out.name}` is a mask; outputs are tensors", out.span,
                          "output the masked value with `output x with mask`")  # fmt: skip
            elif isinstance(t, TensorType) and out.with_mask and t.mask is None:
                self.diag(
                    "SEQ108",
                    f"`{out.name}` has no mask to return",
                    out.span,
                    "remove `with mask`, or output a value that carries a mask "
                    "(recurrent layers keep one only with return_sequences=true)",
                )
        for name, span in self.defined_at.items():
            unused = name not in self.used and name not in m.referenced
            if unused and not name.startswith("_") and name in _user_names(m):
                self.diag(
                    "SEQ802",
                    f"`{name}` is never used",
                    span,
                    f"use it, or rename it `_{name}` to silence this",
                )
        total = sum(info.trainable_params + info.non_trainable_params for info in self.layers)
        if total > MAX_PARAMETERS and all(
            info.trainable_params + info.non_trainable_params <= MAX_PARAMETERS
            for info in self.layers
        ):
            biggest = max(self.layers, key=lambda i: i.trainable_params + i.non_trainable_params)
            self.diag(
                "SEQ312",
                f"model `{m.name}` has {figure(total)} parameters; a model has at most "
                f"{figure(MAX_PARAMETERS)} (2^31 - 1)",
                m.name_span,
                f"the largest layer, `{biggest.name}`, has "
                f"{figure(biggest.trainable_params + biggest.non_trainable_params)}",
            )
        types = {k: v for k, v in self.types.items() if isinstance(v, (TensorType, MaskType))}
        return CheckedModel(m, types, tuple(self.layers), tuple(self.constraints), dict(self.pads))


def _user_names(m: Model) -> set[str]:
    return {i.name for i in m.inputs} | {n for n, _ in m.bindings}


def _result_names(kind: str, n: int) -> list[str]:
    if kind in ("LSTM",) and n == 3:
        return ["out", "h", "c"]
    if n == 2 and kind in ("GRU", "SimpleRNN"):
        return ["out", "h"]
    return [f"r{i}" for i in range(n)]


def _same(a: Dim | None, b: Dim | None) -> bool:
    return a is None or b is None or a == b


def _f(d: Dim | None) -> str:
    return "_" if d is None else str(d)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _type_hint(p: Param) -> str | None:
    if p.type == "choice":
        return "choose one of: " + ", ".join(p.choices)
    if p.type == "activation":
        return "e.g. tanh, relu, sigmoid, linear"
    if p.type == "initializer":
        return "e.g. glorot_uniform, orthogonal, zeros"
    generic = {
        "bool": "write `true` or `false`",
        "int": "write an integer without quotes, e.g. `32`",
        "float": "write a number, e.g. `0.5`",
        "ints": "write an integer, e.g. `3`",
        "int_or_none": "write an integer, or `none`",
        "ints_or_none": "write an integer, or `none`",
        "axes": "write `none` or `time`",
        "str": 'write a string in quotes, e.g. "encoder"',
        "shape": "write a list of integers, e.g. `[4, -1]`",
        "axis": "write `time`, `features` or an integer axis",
        "layer": "write a layer, e.g. `LSTM(64)`",
    }
    return generic.get(p.type) or p.doc or None


def _name_arg_span(layer: LayerCall) -> Span:
    for a in layer.args:
        if a.name == "name":
            return a.span
    return layer.span


def _arg_span(layer: LayerCall, path: str) -> Span | None:
    """Span of ``arg`` or ``layer.arg`` (an argument of a nested layer)."""
    head, _, rest = path.partition(".")
    spec = spec_for(layer.kind)
    positional = (
        [p.name for p in spec.params if p.name not in ("name", "trainable")] if spec else []
    )
    pos = 0
    for a in layer.args:
        name = a.name
        if name is None:
            name = positional[pos] if pos < len(positional) else None
            pos += 1
        if name == head:
            if rest and a.value.kind == "layer" and isinstance(a.value.value, LayerCall):
                return _arg_span(a.value.value, rest) or a.span
            return a.span
    return None


def check_program(program: Program) -> tuple[list[CheckedModel], list[Diagnostic]]:
    diags: list[Diagnostic] = []
    models: list[CheckedModel] = []
    seen: dict[str, Span] = {}
    custom: dict[str, LayerSpec] = {}
    for cname, cdef in program.cells.items():
        if cdef.ok:
            custom[cname] = cell_spec(cdef)
    for ename, edef in program.externs.items():
        if edef.ok:
            custom[ename] = extern_spec(edef)
    cells = {n: c for n, c in program.cells.items() if c.ok}
    broken = frozenset(
        [n for n, c in program.cells.items() if not c.ok]
        + [n for n, e in program.externs.items() if not e.ok]
    )
    for m in program.models:
        if m.name in seen:
            diags.append(
                Diagnostic.make(
                    "SEQ105",
                    f"model `{m.name}` is defined twice",
                    m.name_span,
                    "rename one of them",
                    [Related(seen[m.name], "first defined here")],
                )
            )
        seen.setdefault(m.name, m.name_span)
        cm = _ModelChecker(m, diags, custom=custom, cells=cells, broken=broken).run()
        models.append(
            replace(
                cm,
                externs={n: e for n, e in program.externs.items() if e.ok},
                python_modules=program.python_modules,
                file=program.file,
            )
        )
    return models, diags


def _shape_text(shape: Sequence[int]) -> str:
    return "[" + ", ".join(figure(d) for d in shape) + "]"


def _number(value: float) -> str:
    """A pad value as written: integral values without a fraction."""
    if value.is_integer() and abs(value) < 1e30:
        return str(int(value))
    return f"{value:g}"
