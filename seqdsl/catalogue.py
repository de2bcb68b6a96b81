"""The layer catalogue: the single source of truth for every built-in layer.

Each :class:`LayerSpec` holds the layer's Keras 3 parameters and defaults, the
Keras arguments v1 rejects by name, its shape-and-mask rule (the static form of
Keras' ``compute_output_shape``/``compute_mask``), its parameter count (Keras'
convention: what ``count_params()`` reports), whether it is padding invariant,
and, for recurrent layers, the kernel each target will use. The checker, the
summary and every emitter read this table; adding a layer means one entry here.

Rules raise :class:`RuleError`; the checker turns it into a located diagnostic.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Protocol

from .cells import bind_cell
from .dims import Dim, divisible, exact_div
from .ir import CellDef
from .layerspec import (
    ACTIVATIONS,
    INITIALIZERS,
    KERNELS,
    REQUIRED,
    TARGETS,
    BoundLayer,
    CallInfo,
    Cfg,
    Config,
    KernelChoice,
    KernelFn,
    LayerSpec,
    PadInfo,
    Param,
    Rule,
    RuleContext,
    RuleError,
    WeightsFn,
    WeightSpec,
)
from .layerspec import _Required as _Required
from .layerspec import and_kind as _and_kind
from .layerspec import concat_time_kind as _concat_time_kind
from .layerspec import concat_time_kind as concat_time_kind
from .layerspec import pad_mask_kind as pad_mask_kind
from .types import FLOAT_DTYPES, INT_DTYPES, MaskKind, TensorType, fmt_shape

__all__ = [
    "ACTIVATIONS",
    "INITIALIZERS",
    "KERNELS",
    "TARGETS",
    "BoundLayer",
    "CallInfo",
    "Cfg",
    "KernelChoice",
    "WeightSpec",
    "LayerSpec",
    "Param",
    "PadInfo",
    "REQUIRED",
    "RuleContext",
    "RuleError",
    "CATALOGUE",
    "MERGES",
    "spec_for",
]


# --------------------------------------------------------------------------
# common parameters and unsupported Keras arguments

COMMON = (
    Param("name", "str", None, doc="stable layer name (weights are keyed by it)"),
    Param("trainable", "bool", True),
)

_REG = "regularizers and constraints are not supported in v1; add penalties in your training loop"
_QUANT = "quantization is not supported in v1; quantize the exported model"
_UNSUPPORTED_COMMON = {
    "dtype": "layers compute in the input's dtype; declare the input `f64` for double precision",
    "input_shape": "remove it and declare the input's type instead: Keras' `input_shape=(T, F)` "
    "is `input x: f32[B, T, F]` (the batch first, then the same sizes)",
    "batch_input_shape": "remove it and declare the input's type instead: "
    "`batch_input_shape=(32, T, F)` is `input x: f32[32, T, F]`",
    "batch_size": "remove it and give the input a fixed batch dimension: `input x: f32[32, T, F]`",
    "input_dim": "remove it: the input size comes from the value; declare it as the last "
    "dimension of the `input`, e.g. `f32[B, T, 8]`",
    "input_length": "remove it (Keras 3 deprecates it too): declare the time length on the "
    "`input`, e.g. `i32[B, 100]`",
    "autocast": "mixed precision is out of scope for v1",
    "activity_regularizer": _REG,
    "kernel_regularizer": _REG,
    "bias_regularizer": _REG,
    "kernel_constraint": _REG,
    "bias_constraint": _REG,
    "lora_rank": "LoRA is not supported in v1",
    "lora_alpha": "LoRA is not supported in v1",
    "weights": "load weights with the weights file, not a constructor argument",
    "seed": "seeds are set once per model: `program.build(backend, seed=...)`",
}
_UNSUPPORTED_RNN = {
    **_UNSUPPORTED_COMMON,
    "recurrent_regularizer": _REG,
    "recurrent_constraint": _REG,
    "zero_output_for_mask": "use `masked_output=zero` (the default) or `masked_output=carry`",
    "use_cudnn": "kernels are chosen by the compiler; write `@kernel(cudnn)` to require cuDNN",
    "time_major": "sequences are batch-major, `[B, T, F]`",
    "implementation": "Keras 3 takes `implementation` on LSTM and GRU (and their cells) only; "
    "its SimpleRNN rejects it: remove it",
}

# --------------------------------------------------------------------------
# small rule helpers


def _need_float(kind: str, t: TensorType, what: str = "input") -> None:
    if t.dtype not in FLOAT_DTYPES:
        hint = (
            "integer ids need an `Embedding` first"
            if t.dtype in INT_DTYPES
            else "declare the input as `f32`"
        )
        raise RuleError(
            "SEQ301", f"{kind} expects a float {what}, got {t.dtype}", hint, where="input"
        )


def _need_rank(kind: str, t: TensorType, ranks: Sequence[int], shape_text: str) -> None:
    if t.rank not in ranks:
        raise RuleError(
            "SEQ303",
            f"{kind} expects {shape_text}, got {t.dtype}{fmt_shape(t.shape)} (rank {t.rank})",
            "check the layers before it, or add a time axis to the input declaration",
            where="input",
        )


def _need_features(kind: str, t: TensorType) -> int:
    f = t.features
    v = f.value if f is not None else None
    if v is None:
        raise RuleError(
            "SEQ309",
            f"{kind} needs a known feature size to create its weights, got {fmt_shape(t.shape)}",
            "declare the last dimension of the input as an integer",
            where="input",
        )
    return v


def _replace_last(t: TensorType, d: Dim | None) -> tuple[Dim | None, ...]:
    return (*t.shape[:-1], d)


def _int(cfg: Config, key: str) -> int:
    v = cfg[key]
    assert isinstance(v, int)
    return v


def _float(cfg: Config, key: str) -> float:
    v = cfg[key]
    assert isinstance(v, (int, float))
    return float(v)


def _bool(cfg: Config, key: str) -> bool:
    return bool(cfg[key])


def _str(cfg: Config, key: str) -> str:
    v = cfg[key]
    assert isinstance(v, str)
    return v


def _feat(t: TensorType) -> int:
    """The static feature size (rules have already required it to be known)."""
    f = t.features
    v = f.value if f is not None else None
    return v if v is not None else 0


def _no_weights(cfg: Config, ins: Sequence[TensorType]) -> list[WeightSpec]:
    return []


def _propagate(
    t: TensorType, shape: tuple[Dim | None, ...] | None = None, dtype: str | None = None
) -> TensorType:
    return TensorType(dtype or t.dtype, t.shape if shape is None else shape, t.mask, t.padded_from)


# --------------------------------------------------------------------------
# mask generators


def _embedding_rule(
    cfg: Config, ins: Sequence[TensorType], call: CallInfo, ctx: RuleContext
) -> list[TensorType]:
    (t,) = ins
    if t.dtype not in INT_DTYPES:
        raise RuleError(
            "SEQ301",
            f"Embedding takes integer ids, got {t.dtype}",
            "declare the input as `i32` (token ids), or use `Dense` on float features",
            where="input",
        )
    shape = (*t.shape, Dim.of(_int(cfg, "output_dim")))
    mask = t.mask  # without mask_zero, a `masked` id input's mask passes through
    if _bool(cfg, "mask_zero") and t.rank != 2:
        raise RuleError(
            "SEQ303",
            f"Embedding(mask_zero=true) masks steps of `[B, T]` ids, got {t.dtype}{fmt_shape(t.shape)}",
            "give it token ids of shape `[B, T]`, or drop `mask_zero=true`",
            where="input",
        )
    if _bool(cfg, "mask_zero") and t.mask is not None:
        raise RuleError(
            "SEQ501",
            f"Embedding(mask_zero=true) makes a new mask, and the mask its input carries ({t.mask}) "
            "would be dropped",
            "keep one mask: remove `mask_zero=true` to keep the input's mask, or remove `masked` "
            "from the input declaration",
            arg="mask_zero",
        )
    if _bool(cfg, "mask_zero"):
        pad = ctx.pad_of(t)
        if pad is not None and pad.value == 0:
            mask = MaskKind(pad.side, pad.nonempty, declared=True)
        else:
            mask = MaskKind("any")
            if pad is not None:
                ctx.warn(
                    "SEQ803",
                    f"mask_zero=true masks id 0, but the input pads with value={_fmt_num(pad.value)}",
                    "pad with `value=0`, or the padded steps stay unmasked",
                )
    return [TensorType("f32" if t.dtype != "f64" else "f64", shape, mask, t.padded_from)]


def _fmt_num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else str(v)


def _masking_rule(
    cfg: Config, ins: Sequence[TensorType], call: CallInfo, ctx: RuleContext
) -> list[TensorType]:
    (t,) = ins
    _need_float("Masking", t)
    _need_rank("Masking", t, (3,), "a sequence `[B, T, F]`")
    if t.mask is not None:
        raise RuleError(
            "SEQ501",
            f"Masking makes a new mask, and the mask its input carries ({t.mask}) would be dropped",
            "keep one mask: remove `Masking`, or remove `masked` from the input declaration "
            "(or write `drop_mask` before `Masking` to replace it on purpose)",
            where="input",
        )
    pad = ctx.pad_of(t)
    mv = _float(cfg, "mask_value")
    if pad is not None and pad.value == mv:
        mask = MaskKind(pad.side, pad.nonempty, declared=True)
    else:
        mask = MaskKind("any")
        if pad is not None:
            ctx.warn(
                "SEQ803",
                f"Masking(mask_value={_fmt_num(mv)}) but the input pads with value={_fmt_num(pad.value)}",
                f"use `Masking(mask_value={_fmt_num(pad.value)})`, or the padded steps stay unmasked",
            )
    return [TensorType(t.dtype, t.shape, mask, t.padded_from)]


# --------------------------------------------------------------------------
# recurrent layers

_CELL_OF = {"LSTM": "lstm", "GRU": "gru", "SimpleRNN": "simple_rnn"}
_CELL_LAYER = {"LSTMCell": "lstm", "GRUCell": "gru", "SimpleRNNCell": "simple_rnn"}
_N_STATES = {"lstm": 2, "gru": 1, "simple_rnn": 1}
_GATES = {"lstm": 4, "gru": 3, "simple_rnn": 1}


def _cell_params(cell: str) -> tuple[Param, ...]:
    ps = [
        Param("units", "int", lo=1, doc="size of the output and of each state"),
        Param("activation", "activation", "tanh"),
    ]
    if cell != "simple_rnn":
        ps.append(Param("recurrent_activation", "activation", "sigmoid"))
    ps += [
        Param("use_bias", "bool", True),
        Param("kernel_initializer", "initializer", "glorot_uniform"),
        Param("recurrent_initializer", "initializer", "orthogonal"),
        Param("bias_initializer", "initializer", "zeros"),
    ]
    if cell == "lstm":
        ps.append(Param("unit_forget_bias", "bool", True))
    ps += [
        Param("dropout", "float", 0.0, lo=0.0, hi=1.0, hi_open=True),
        Param("recurrent_dropout", "float", 0.0, lo=0.0, hi=1.0, hi_open=True),
    ]
    if cell == "gru":
        ps.append(Param("reset_after", "bool", True))
    if cell != "simple_rnn":  # Keras 3's SimpleRNN rejects `implementation`
        ps.append(
            Param("implementation", "int", 2, lo=1, hi=2,
                  doc="Keras' speed hint (1: one product per gate, 2: fused); recorded, "
                  "the numbers are the same on every backend")
        )  # fmt: skip
    return tuple(ps)


_RNN_FLAGS = (
    Param("return_sequences", "bool", False),
    Param("return_state", "bool", False),
    Param("go_backwards", "bool", False),
    Param("stateful", "bool", False),
    Param("unroll", "bool", False),
    Param("masked_output", "choice", "zero", choices=("zero", "carry"),
          doc="output at masked steps with return_sequences: zeros, or the last valid output"),
)  # fmt: skip


def _cell_of(cfg: Config, kind: str) -> tuple[str, Config]:
    """(cell type, cell config) of a recurrent layer or RNN(cell)."""
    if kind == "RNN":
        cell = cfg["cell"]
        assert isinstance(cell, BoundLayer)
        if "__cell__" in cell.config:  # a cell block
            return "custom", cell.config
        if cell.kind not in _CELL_LAYER:
            raise RuleError(
                "SEQ203",
                f"RNN runs a cell ({', '.join(_CELL_LAYER)}), not {cell.kind}",
                "e.g. `RNN(LSTMCell(64))`; a layer such as `LSTM(64)` is used directly",
                arg="cell",
            )
        return _CELL_LAYER[cell.kind], cell.config
    if kind == "Bidirectional":
        inner = cfg["layer"]
        assert isinstance(inner, BoundLayer)
        return _cell_of(inner.config, inner.kind)
    return _CELL_OF[kind], cfg


def backward_of(cfg: Config) -> BoundLayer:
    """The layer a Bidirectional runs backwards: its ``backward_layer`` when given
    (its own config and weights), else ``layer`` itself (a copy: the same config)."""
    bw = cfg.get("backward_layer")
    if isinstance(bw, BoundLayer):
        return bw
    return _inner(cfg)


def directions_of(cfg: Config) -> tuple[tuple[str, Config], tuple[str, Config]]:
    """(cell type, cell config) of a Bidirectional's forward and backward layers."""
    fw = _inner(cfg)
    bw = backward_of(cfg)
    return _cell_of(fw.config, fw.kind), _cell_of(bw.config, bw.kind)


def rnn_weights(cell: str, c: Config, features: int, prefix: str = "") -> list[WeightSpec]:
    """Keras' weights of one recurrent cell: kernel, recurrent_kernel, bias."""
    u = _int(c, "units")
    g = _GATES[cell]
    ws = [
        WeightSpec(prefix + "kernel", (features, g * u), _str(c, "kernel_initializer")),
        WeightSpec(prefix + "recurrent_kernel", (u, g * u), _str(c, "recurrent_initializer")),
    ]
    if _bool(c, "use_bias"):
        init = _str(c, "bias_initializer")
        if cell == "lstm" and _bool(c, "unit_forget_bias"):
            init = f"unit_forget_bias({init})"
        shape = (2, 3 * u) if cell == "gru" and _bool(c, "reset_after") else (g * u,)
        ws.append(WeightSpec(prefix + "bias", shape, init))
    return ws


def _rnn_weights(cfg: Config, ins: Sequence[TensorType]) -> list[WeightSpec]:
    cell, c = _cell_of(cfg, str(cfg["__kind__"]))
    if cell == "custom":
        return list(bound_cell(c, ins).weights)
    return rnn_weights(cell, c, _feat(ins[0]))


def bound_cell(c: Config, ins: Sequence[TensorType]) -> BoundCellLike:
    """The cell block of ``RNN(MyCell(...))`` bound at this call (see ``cells.bind_cell``)."""
    cdef = c["__cell__"]
    assert isinstance(cdef, CellDef)
    return bind_cell(cdef, c, ins)


class BoundCellLike(Protocol):
    @property
    def weights(self) -> tuple[WeightSpec, ...]: ...

    @property
    def states(self) -> tuple[tuple[str, tuple[int, ...]], ...]: ...

    @property
    def outputs(self) -> tuple[tuple[str, tuple[int, ...]], ...]: ...


def _step_mask(kind: str, ins: Sequence[TensorType]) -> TensorType:
    """One value standing for several inputs of a cell: the first, with the AND of the masks."""
    t = ins[0]
    for i, x in enumerate(ins[1:], 1):
        if not (_same(x.batch, t.batch) and _same(x.time, t.time)):
            raise RuleError(
                "SEQ401",
                f"the inputs of {kind} must share batch and time: {fmt_shape(t.shape)} and "
                f"{fmt_shape(x.shape)}",
                "a cell reads one step of every input at a time",
                where="input",
                index=i,
            )
    masks = [x.mask for x in ins if x.mask is not None]
    if len(masks) > 1:
        return t.with_mask(_and_kind(masks))
    if masks:
        return t.with_mask(masks[0])
    return t


def recurrent_outputs(
    kind: str,
    cfg: Config,
    ins: Sequence[TensorType],
    call: CallInfo,
    ctx: RuleContext,
    directions: int,
    merge_mode: str,
) -> list[TensorType]:
    """Shape and mask rule shared by LSTM, GRU, SimpleRNN, RNN and Bidirectional."""
    cell, c = _cell_of(cfg, kind)
    if cell == "custom":
        return _custom_outputs(kind, cfg, c, ins, call, ctx, directions, merge_mode)
    if len(ins) != 1:
        raise RuleError(
            "SEQ205",
            f"{kind} takes one input, got {len(ins)}",
            "merge values first with `concat(...)`; only a cell block with several "
            "`input` declarations reads several sequences",
            where="input",
        )
    (t,) = ins
    _need_float(kind, t)
    _need_rank(kind, t, (3,), "a sequence `[B, T, F]`")
    _need_features(kind, t)
    flags = cfg if kind != "Bidirectional" else _inner(cfg).config
    units = _int(c, "units")
    n_states = _N_STATES[cell]
    b = t.batch
    if t.mask is None and t.padded_from is not None:
        ctx.warn(
            "SEQ801",
            f"{kind} reads `{t.padded_from}`, which is padded, but no mask reaches it: "
            "the padded steps are processed as data",
            "mask the padding: `Embedding(..., mask_zero=true)` or `Masking(mask_value=...)`, "
            "or declare the input `masked` and pass lengths",
        )
    if _bool(flags, "stateful") and (b is None or b.value is None):
        raise RuleError(
            "SEQ601",
            f"stateful {kind} needs a fixed batch size, but the batch dimension is "
            f"`{'_' if b is None else b}`",
            _fixed_batch_hint(t, ctx),
            arg="layer.stateful" if kind == "Bidirectional" else "stateful",
        )
    if _bool(flags, "unroll") and (t.time is None or t.time.value is None):
        raise RuleError(
            "SEQ203",
            "unroll=true needs a known time length",
            "declare the time dimension as an integer, or drop `unroll=true`",
            arg="unroll",
        )
    # initial_state
    expected = n_states * directions
    if call.initial_state is not None:
        got = len(call.initial_state)
        if got != expected:
            hint = f"{kind} takes {expected} state(s)" + (
                " ([h, c])" if cell == "lstm" and directions == 1 else ""
            )
            if directions == 1 and got == 2 * n_states:
                pair = "h_fw, c_fw, h_bw, c_bw" if cell == "lstm" else "h_fw, h_bw"
                w = call.initial_state[0].features if call.initial_state[0].rank == 2 else None
                w_units = (
                    2 * w.value
                    if w is not None and w.value is not None
                    else "2 x the encoder's units"
                )
                # 4 states into an LSTM are a Bidirectional encoder's; 2 into a GRU may also be
                # an LSTM's [h, c]
                lead = (
                    "these look like" if cell == "lstm" else f"{kind} takes 1 state; if these are"
                )
                hint = (
                    f"{lead} a Bidirectional encoder's states ({pair}): merge each pair, "
                    f"e.g. `h = concat(h_fw, h_bw)` with `units={w_units}` on this layer, "
                    f"or `h = add(h_fw, h_bw)`"
                )
            raise RuleError(
                "SEQ304",
                f"{kind} expects {expected} initial state(s), got {got}",
                hint,
                where="initial_state",
            )
        for i, s in enumerate(call.initial_state):
            ok = s.rank == 2 and _dim_ok(s.shape[1], units) and _same(s.batch, b)
            if not ok:
                raise RuleError(
                    "SEQ305",
                    f"initial state {i} of {kind} must be `[{_fmt(b)}, {units}]`, got {s.dtype}{fmt_shape(s.shape)}",
                    "a state has the layer's batch and `units` columns"
                    + (
                        "; Bidirectional states are per direction: concat or add them to change the size"
                        if s.rank == 2 and s.shape[1] is not None and s.shape[1].value == units * 2
                        else ""
                    ),
                    where="initial_state",
                )
    width = units * (2 if directions == 2 and merge_mode == "concat" else 1)
    outs: list[TensorType] = []
    if _bool(flags, "return_sequences"):
        mask = t.mask
        if mask is not None and directions == 1 and _bool(flags, "go_backwards"):
            mask = mask.flipped()
        seq = TensorType(t.dtype, (b, t.time, Dim.of(width)), mask, None)
        if directions == 2 and merge_mode == "none":
            one = TensorType(t.dtype, (b, t.time, Dim.of(units)), mask, None)
            outs += [one, one]
        else:
            outs.append(seq)
    else:
        if directions == 2 and merge_mode == "none":
            one = TensorType(t.dtype, (b, Dim.of(units)))
            outs += [one, one]
        else:
            outs.append(TensorType(t.dtype, (b, Dim.of(width))))
    if _bool(flags, "return_state"):
        outs += [TensorType(t.dtype, (b, Dim.of(units))) for _ in range(expected)]
    return outs


def _custom_outputs(
    kind: str,
    cfg: Config,
    c: Config,
    ins: Sequence[TensorType],
    call: CallInfo,
    ctx: RuleContext,
    directions: int,
    merge_mode: str,
) -> list[TensorType]:
    """The recurrent rule for a cell block: several inputs, states and outputs of any shape."""
    for i, x in enumerate(ins):
        if x.rank < 3:
            raise RuleError(
                "SEQ303",
                f"{kind} expects sequences `[B, T, ...]`, got {x.dtype}{fmt_shape(x.shape)}",
                "check the layers before it",
                where="input",
                index=i,
            )
    t = _step_mask(kind, ins)
    bc = bound_cell(c, ins)
    flags = cfg if kind != "Bidirectional" else _inner(cfg).config
    b = t.batch
    if t.mask is None and t.padded_from is not None:
        ctx.warn(
            "SEQ801",
            f"{kind} reads `{t.padded_from}`, which is padded, but no mask reaches it: "
            "the padded steps are processed as data",
            "mask the padding, or declare the input `masked` and pass lengths",
        )
    if _bool(flags, "stateful") and (b is None or b.value is None):
        raise RuleError(
            "SEQ601",
            f"stateful {kind} needs a fixed batch size, but the batch dimension is `{_fmt(b)}`",
            _fixed_batch_hint(t, ctx),
            arg="layer.stateful" if kind == "Bidirectional" else "stateful",
        )
    if _bool(flags, "unroll") and (t.time is None or t.time.value is None):
        raise RuleError("SEQ203", "unroll=true needs a known time length",
                        "declare the time dimension as an integer, or drop `unroll=true`", arg="unroll")  # fmt: skip
    if directions == 2 and (len(ins) != 1 or len(bc.outputs) != 1 or len(bc.outputs[0][1]) != 1):
        raise RuleError(
            "SEQ203",
            "Bidirectional runs a cell block with one input and one output of shape `[n]`",
            "use RNN(...) twice (one with go_backwards=true) and merge the results yourself",
            arg="layer",
        )
    expected = len(bc.states) * directions
    state_types = [
        TensorType(t.dtype, (b, *(Dim.of(n) for n in shape))) for _, shape in bc.states
    ] * directions
    if call.initial_state is not None:
        got = len(call.initial_state)
        if got != expected:
            names = ", ".join(n for n, _ in bc.states)
            raise RuleError(
                "SEQ304",
                f"{kind} expects {expected} initial state(s), got {got}",
                f"the cell's states, in order: {names}"
                + (" (forward, then backward)" if directions == 2 else ""),
                where="initial_state",
            )
        for i, (s, want) in enumerate(zip(call.initial_state, state_types, strict=True)):
            ok = s.rank == want.rank and all(
                _same(x, y) for x, y in zip(s.shape, want.shape, strict=True)
            )
            if not ok:
                raise RuleError(
                    "SEQ305",
                    f"initial state {i} of {kind} must be `{fmt_shape(want.shape)}`, got "
                    f"{s.dtype}{fmt_shape(s.shape)}",
                    "a state has the layer's batch and the cell's declared state shape",
                    where="initial_state",
                )
    outs: list[TensorType] = []
    seq = _bool(flags, "return_sequences")
    mask = t.mask
    if mask is not None and directions == 1 and _bool(flags, "go_backwards"):
        mask = mask.flipped()
    for _, shape in bc.outputs:
        dims = tuple(Dim.of(n) for n in shape)
        if directions == 2:
            (u,) = shape
            width = u * (2 if merge_mode == "concat" else 1)
            dims = (Dim.of(width),)
            n_out = 2 if merge_mode == "none" else 1
            if merge_mode == "none":
                dims = (Dim.of(u),)
        else:
            n_out = 1
        for _ in range(n_out):
            if seq:
                outs.append(TensorType(t.dtype, (b, t.time, *dims), mask, None))
            else:
                outs.append(TensorType(t.dtype, (b, *dims)))
    if _bool(flags, "return_state"):
        outs += state_types
    return outs


def _fixed_batch_hint(t: TensorType, ctx: RuleContext) -> str:
    """SEQ601's hint: the input the batch comes from, declared with a fixed batch, in
    its own dtype and shape (``tokens: i32[32, T]``), else this value's type."""
    example = ctx.fixed_batch_example(t.batch, 32)
    if example is None:
        example = f"{t.dtype}{fmt_shape((Dim.of(32), *t.shape[1:]))}"
    return f"declare the input with an integer batch, e.g. `{example}`"


def _fmt(d: Dim | None) -> str:
    return "_" if d is None else str(d)


def _dim_ok(d: Dim | None, n: int) -> bool:
    return d is None or d.value == n


def _same(a: Dim | None, b: Dim | None) -> bool:
    return a is None or b is None or a == b


def _rnn_rule(
    cfg: Config, ins: Sequence[TensorType], call: CallInfo, ctx: RuleContext
) -> list[TensorType]:
    return recurrent_outputs(call.layer_kind, cfg, ins, call, ctx, 1, "concat")


def _inner(cfg: Config) -> BoundLayer:
    inner = cfg["layer"]
    assert isinstance(inner, BoundLayer)
    return inner


def _bidirectional_rule(
    cfg: Config, ins: Sequence[TensorType], call: CallInfo, ctx: RuleContext
) -> list[TensorType]:
    inner = _inner(cfg)
    if inner.kind not in ("LSTM", "GRU", "SimpleRNN", "RNN"):
        raise RuleError(
            "SEQ203",
            f"Bidirectional wraps a recurrent layer, not {inner.kind}",
            "wrap LSTM, GRU, SimpleRNN or RNN(cell)",
            arg="layer",
        )
    cell = inner.config.get("cell")
    if (
        _bool(inner.config, "stateful")
        and isinstance(cell, BoundLayer)
        and "__cell__" in cell.config
    ):
        raise RuleError(
            "SEQ203",
            "a stateful Bidirectional around a cell block is not supported in v1",
            "remove `stateful=true`, or run the cell block in one direction "
            "(`RNN(...)`, stateful) and the other with `go_backwards=true`",
            arg="layer.stateful",
        )
    if inner.config.get("masked_output") == "carry":
        raise RuleError(
            "SEQ603",
            "masked_output=carry is not available inside Bidirectional",
            "Bidirectional outputs zeros at masked steps (as Keras forces); remove `masked_output=carry`",
            arg="layer.masked_output",
        )
    if _bool(inner.config, "go_backwards"):
        raise RuleError(
            "SEQ203",
            "the layer inside Bidirectional must not set go_backwards",
            "Bidirectional builds the backward copy itself; remove `go_backwards=true`",
            arg="layer.go_backwards",
        )
    bw = cfg.get("backward_layer")
    if isinstance(bw, BoundLayer):
        _check_backward_layer(inner, bw)
    return recurrent_outputs("Bidirectional", cfg, ins, call, ctx, 2, _str(cfg, "merge_mode"))


def _check_backward_layer(fw: BoundLayer, bw: BoundLayer) -> None:
    """Keras' rules for ``Bidirectional(layer, backward_layer=...)`` (its
    ``_verify_layer_config``), and the ones that keep both directions the same shape."""

    def mismatch(what: str, hint: str, arg: str = "backward_layer") -> RuleError:
        return RuleError("SEQ602", f"Bidirectional's backward_layer {what}", hint, arg=arg)

    same = "the same kind of layer as `layer`, with its own configuration and weights"
    if bw.kind != fw.kind:
        raise mismatch(
            f"is {bw.kind}, but the forward layer is {fw.kind}",
            f"write `backward_layer={fw.kind}(..., go_backwards=true)`: {same}",
        )
    if fw.kind == "RNN":
        fc, bc = fw.config["cell"], bw.config["cell"]
        assert isinstance(fc, BoundLayer) and isinstance(bc, BoundLayer)
        if "__cell__" in fc.config or "__cell__" in bc.config:
            raise RuleError(
                "SEQ203",
                "backward_layer is not supported around a cell block",
                "remove `backward_layer`: the backward copy of a cell block is built from `layer`",
                arg="backward_layer",
            )
        if bc.kind != fc.kind:
            raise mismatch(
                f"runs {bc.kind}, but the forward layer runs {fc.kind}",
                f"give both the same cell: `RNN({fc.kind}(...), go_backwards=true)`",
                "backward_layer.cell",
            )
    if not _bool(bw.config, "go_backwards"):
        raise mismatch(
            "must read the steps in reverse",
            "add `go_backwards=true` to it (Keras requires the two layers to differ in "
            "go_backwards)",
        )
    for flag in ("stateful", "return_sequences", "return_state"):
        if _bool(bw.config, flag) != _bool(fw.config, flag):
            raise mismatch(
                f"has {flag}={str(_bool(bw.config, flag)).lower()}, the forward layer "
                f"{str(_bool(fw.config, flag)).lower()}",
                f"give both layers the same `{flag}` (Keras requires it)",
                f"backward_layer.{flag}",
            )
    (_, fc_cfg), (_, bc_cfg) = _cell_of(fw.config, fw.kind), _cell_of(bw.config, bw.kind)
    if _int(bc_cfg, "units") != _int(fc_cfg, "units"):
        raise mismatch(
            f"has {_int(bc_cfg, 'units')} units, the forward layer {_int(fc_cfg, 'units')}",
            "give both layers the same `units`: Keras shapes the merged output and the "
            "states from the forward layer",
        )
    if bw.config.get("masked_output") == "carry":
        raise RuleError(
            "SEQ603",
            "masked_output=carry is not available inside Bidirectional",
            "Bidirectional outputs zeros at masked steps (as Keras forces); remove `masked_output=carry`",
            arg="backward_layer.masked_output",
        )


def _bidirectional_weights(cfg: Config, ins: Sequence[TensorType]) -> list[WeightSpec]:
    cell, c = _cell_of(cfg, "Bidirectional")
    if cell == "custom":
        ws = bound_cell(c, ins).weights
        return [replace(w, name=f"{d}/{w.name}") for d in ("forward", "backward") for w in ws]
    f = _feat(ins[0])
    (_, fw), (bcell, bw) = directions_of(cfg)  # backward_layer: its own configuration
    return rnn_weights(cell, fw, f, "forward/") + rnn_weights(bcell, bw, f, "backward/")


def _kernel_suffix(mask: MaskKind | None) -> KernelChoice:
    if mask is None or mask.side == "post":
        reason = None
        if mask is not None and not mask.nonempty:
            reason = "empty rows are given length 1 and restored afterwards"
        return KernelChoice("cudnn", reason)
    if mask.side == "pre":
        return KernelChoice("cudnn+roll", "left padding: rows are rolled to right padding and back")
    return KernelChoice(
        "cudnn+compact",
        "gaps in the mask: valid steps are compacted to the front and scattered back",
    )


def recurrent_kernels(cfg: Config, ins: Sequence[TensorType]) -> dict[str, KernelChoice]:
    """Kernel per target for a recurrent layer (see docs/language.md, "Kernels"). A
    Bidirectional with a ``backward_layer`` of another configuration takes, per target,
    the slower kernel of its two directions."""
    kind = str(cfg["__kind__"])
    bw = cfg.get("backward_layer") if kind == "Bidirectional" else None
    if not isinstance(bw, BoundLayer):
        return _direction_kernels(kind, cfg, ins)
    one = _direction_kernels(kind, cfg, ins)
    two = _direction_kernels(kind, {**cfg, "layer": bw}, ins)  # the backward layer's own
    out: dict[str, KernelChoice] = {}
    for target, a in one.items():
        b = two[target]
        slower = _SPEED.get(b.kernel, 0) > _SPEED.get(a.kernel, 0)
        out[target] = KernelChoice(b.kernel, f"backward_layer: {b.reason}") if slower else a
    return out


#: kernels from fast to slow (a fused kernel: 0)
_SPEED = {"scan": 1, "loop": 2}


def _direction_kernels(
    kind: str, cfg: Config, ins: Sequence[TensorType]
) -> dict[str, KernelChoice]:
    """The kernels of one recurrent layer, or of a Bidirectional's ``layer``."""
    cell, c = _cell_of(cfg, kind)
    if cell == "custom":
        why = "a cell block runs its equations step by step"
        return {
            "keras": KernelChoice("scan", why + " (keras.layers.RNN)"),
            "torch": KernelChoice("loop", why),
            "jax": KernelChoice("scan", why + " (lax.scan)"),
        }
    flags = cfg if kind != "Bidirectional" else _inner(cfg).config
    t = ins[0]
    mask = t.mask
    if mask is not None and kind != "Bidirectional" and _bool(flags, "go_backwards"):
        mask = mask.flipped()  # the layer runs on the reversed steps: post becomes pre
    act = _str(c, "activation")
    ract = _str(c, "recurrent_activation") if cell != "simple_rnn" else "sigmoid"
    rdrop = _float(c, "recurrent_dropout") > 0
    fused = _kernel_suffix(mask)

    def pick(reasons: list[str], fallback: str) -> KernelChoice:
        if reasons:
            return KernelChoice(fallback, "; ".join(reasons))
        return fused

    common: list[str] = []
    if cell != "simple_rnn" and act != "tanh":
        common.append(f"activation={act} (fused kernels need tanh)")
    if cell != "simple_rnn" and ract != "sigmoid":
        common.append(f"recurrent_activation={ract} (fused kernels need sigmoid)")
    if rdrop:
        common.append("recurrent_dropout > 0 (fused kernels have no recurrent dropout)")
    if cell == "gru" and not _bool(c, "reset_after"):
        common.append("reset_after=false (fused GRU kernels compute reset_after=true)")

    keras = list(common)
    if cell == "simple_rnn":
        keras.append("Keras has no cuDNN SimpleRNN")
    elif act != "tanh" and not any(r.startswith("activation=") for r in keras):
        keras.append(f"activation={act}")
    if not _bool(c, "use_bias"):
        keras.append("use_bias=false (Keras' cuDNN path needs a bias)")
    if _bool(flags, "unroll"):
        keras.append("unroll=true")
    torch = list(common)
    if cell == "simple_rnn" and act not in ("tanh", "relu"):
        torch.append(f"activation={act} (nn.RNN supports tanh and relu)")
    jax = list(common)
    if cell != "lstm":
        jax.append("JAX has no fused GRU or SimpleRNN kernel: lax.scan")
    if t.dtype == "f64":
        jax.append("jax.experimental.rnn is float32 only")
    return {
        "keras": pick(keras, "loop" if _bool(flags, "unroll") else "scan"),
        "torch": pick(torch, "loop"),
        "jax": pick(jax, "scan"),
    }


#: targets on which a cell type has a cuDNN kernel at all
CUDNN_TARGETS = {
    "lstm": ("keras", "torch", "jax"),
    "gru": ("keras", "torch"),
    "simple_rnn": ("torch",),
}


def cudnn_targets(cfg: Config) -> tuple[str, ...]:
    cell, _ = _cell_of(cfg, str(cfg["__kind__"]))
    return CUDNN_TARGETS[cell]


# --------------------------------------------------------------------------
# mask-propagating layers


def _dense_rule(
    cfg: Config, ins: Sequence[TensorType], call: CallInfo, ctx: RuleContext
) -> list[TensorType]:
    (t,) = ins
    _need_float("Dense", t)
    if t.rank < 2:
        _need_rank("Dense", t, (2, 3), "`[B, F]` or `[B, T, F]`")
    _need_features("Dense", t)
    return [_propagate(t, _replace_last(t, Dim.of(_int(cfg, "units"))))]


def _dense_weights(cfg: Config, ins: Sequence[TensorType]) -> list[WeightSpec]:
    u = _int(cfg, "units")
    ws = [WeightSpec("kernel", (_feat(ins[0]), u), _str(cfg, "kernel_initializer"))]
    if _bool(cfg, "use_bias"):
        ws.append(WeightSpec("bias", (u,), _str(cfg, "bias_initializer")))
    return ws


def _same_rule(
    cfg: Config, ins: Sequence[TensorType], call: CallInfo, ctx: RuleContext
) -> list[TensorType]:
    (t,) = ins
    if call.layer_kind != "Activation" or t.dtype not in FLOAT_DTYPES:
        _need_float(call.layer_kind, t)
    return [_propagate(t)]


def _sequence_same_rule(
    cfg: Config, ins: Sequence[TensorType], call: CallInfo, ctx: RuleContext
) -> list[TensorType]:
    """A float sequence ``[B, T, F]`` in, the same type and mask out (SpatialDropout1D)."""
    (t,) = ins
    _need_float(call.layer_kind, t)
    _need_rank(call.layer_kind, t, (3,), "a sequence `[B, T, F]`")
    return [_propagate(t)]


def _norm_rule(
    cfg: Config, ins: Sequence[TensorType], call: CallInfo, ctx: RuleContext
) -> list[TensorType]:
    (t,) = ins
    _need_float(call.layer_kind, t)
    _need_features(call.layer_kind, t)
    if _int(cfg, "axis") not in (-1, t.rank - 1):
        raise RuleError(
            "SEQ207",
            f"{call.layer_kind} normalises the last axis only in v1 (axis=-1)",
            "remove `axis=` or set `axis=-1`",
            arg="axis",
        )
    return [_propagate(t)]


def _ln_weights(cfg: Config, ins: Sequence[TensorType]) -> list[WeightSpec]:
    f = _feat(ins[0])
    ws = []
    if _bool(cfg, "scale"):
        ws.append(WeightSpec("gamma", (f,), _str(cfg, "gamma_initializer")))
    if _bool(cfg, "center"):
        ws.append(WeightSpec("beta", (f,), _str(cfg, "beta_initializer")))
    return ws


def _bn_weights(cfg: Config, ins: Sequence[TensorType]) -> list[WeightSpec]:
    f = _feat(ins[0])
    return _ln_weights(cfg, ins) + [
        WeightSpec("moving_mean", (f,), _str(cfg, "moving_mean_initializer"), trainable=False),
        WeightSpec(
            "moving_variance", (f,), _str(cfg, "moving_variance_initializer"), trainable=False
        ),
    ]


_PER_STEP = ("Dense", "Activation", "Dropout", "LayerNormalization")


def _time_distributed_rule(
    cfg: Config, ins: Sequence[TensorType], call: CallInfo, ctx: RuleContext
) -> list[TensorType]:
    (t,) = ins
    inner = _inner(cfg)
    if inner.kind not in _PER_STEP:
        raise RuleError(
            "SEQ203",
            f"TimeDistributed wraps a per-step layer ({', '.join(_PER_STEP)}), not {inner.kind}",
            "apply recurrent and time-changing layers directly to the sequence",
            arg="layer",
        )
    _need_rank("TimeDistributed", t, (3, 4, 5), "a sequence `[B, T, ...]`")
    step = TensorType(t.dtype, (t.batch, *t.shape[2:]))
    spec = CATALOGUE[inner.kind]
    (out,) = spec.rule(inner.config, [step], CallInfo(inner.kind), ctx)
    return [TensorType(out.dtype, (t.batch, t.time, *out.shape[1:]), t.mask, t.padded_from)]


def _time_distributed_weights(cfg: Config, ins: Sequence[TensorType]) -> list[WeightSpec]:
    inner = _inner(cfg)
    t = ins[0]
    step = TensorType(t.dtype, (t.batch, *t.shape[2:]))
    return CATALOGUE[inner.kind].weights(inner.config, [step])


# --------------------------------------------------------------------------
# merges


def _axis_of(cfg: Config, rank: int) -> int:
    a = cfg.get("axis", "features")
    if a == "features":
        return rank - 1
    if a == "time":
        return 1
    assert isinstance(a, int)
    return a % rank if -rank <= a < rank else -99


def _merge_rule(
    cfg: Config, ins: Sequence[TensorType], call: CallInfo, ctx: RuleContext
) -> list[TensorType]:
    fn = call.layer_kind
    first = ins[0]
    for i, t in enumerate(ins[1:], start=1):
        if t.dtype != first.dtype:
            raise RuleError("SEQ301", f"{fn}: input {i} is {t.dtype} but input 0 is {first.dtype}",
                            "merge values of one dtype", where="input", index=i)  # fmt: skip
        if t.rank != first.rank:
            raise RuleError("SEQ303", f"{fn}: input {i} has rank {t.rank} but input 0 has rank {first.rank}",
                            f"got {fmt_shape(first.shape)} and {fmt_shape(t.shape)}", where="input", index=i)  # fmt: skip
    if fn == "average" and first.dtype in INT_DTYPES:  # the mean of ids is no id
        raise RuleError("SEQ301", f"average of {first.dtype} values: the mean of integers is not an integer",
                        "average float values (embed ids first: `Embedding`)", where="input")  # fmt: skip
    axis = _axis_of(cfg, first.rank) if fn == "concat" else -1
    if fn == "concat" and not 1 <= axis < first.rank:
        raise RuleError("SEQ207", f"concat axis {cfg.get('axis')} is out of range for rank {first.rank}",
                        "use `axis=features` or `axis=time`", arg="axis")  # fmt: skip
    for i, t in enumerate(ins[1:], start=1):
        for ax in range(first.rank):
            if ax == axis:
                continue
            a, b = first.shape[ax], t.shape[ax]
            if _same(a, b):
                continue
            if ax == 0:
                raise RuleError("SEQ307", f"{fn}: batch dimensions differ: `{_fmt(a)}` and `{_fmt(b)}`",
                                "merge values of the same batch", where="input", index=i)  # fmt: skip
            if ax == 1 and first.rank >= 3:
                raise RuleError(
                    "SEQ401",
                    f"{fn}: time dimensions differ: `{_fmt(a)}` (input 0) and `{_fmt(b)}` (input {i})",
                    "values that meet must share a time axis; use one time symbol for inputs that "
                    "are padded together"
                    + ("; to join in time, use `concat(..., axis=time)`" if fn == "concat" else ""),
                    where="input",
                    index=i,
                )
            raise RuleError(
                "SEQ302",
                f"{fn}: feature sizes differ: {fmt_shape(first.shape)} and {fmt_shape(t.shape)}",
                "elementwise merges need equal shapes; use `concat` to join features, "
                "or a `Dense` to change a size"
                if fn != "concat"
                else "concat needs equal sizes off its axis",
                where="input",
                index=i,
            )
    if fn == "concat":
        total: Dim | None = Dim.of(0)
        for t in ins:
            d = t.shape[axis]
            total = None if (d is None or total is None) else total + d
        shape = (*first.shape[:axis], total, *first.shape[axis + 1 :])
        if axis == 1:  # in time (a rank-2 value's last axis is its time axis)
            mask = _concat_time_kind(ins)
            return [TensorType(first.dtype, shape, mask, _first_padded(ins))]
    else:
        shape = first.shape
    kinds = [t.mask for t in ins if t.mask is not None]
    return [TensorType(first.dtype, shape, _and_kind(kinds) if kinds else None, _first_padded(ins))]


def _first_padded(ins: Sequence[TensorType]) -> str | None:
    for t in ins:
        if t.padded_from is not None:
            return t.padded_from
    return None


# --------------------------------------------------------------------------
# time-changing layers


def _window_time(
    ctx: RuleContext, kind: str, T: Dim | None, k: int, s: int, d: int, padding: str
) -> Dim | None:
    window = d * (k - 1) + 1
    if T is None:
        if padding == "valid" and window > 1:
            # nothing to check a length against: a shorter input would have no whole
            # window (0 steps on torch and JAX, an error inside TensorFlow on Keras)
            raise RuleError(
                "SEQ403",
                f"{kind}: a window of {window} steps with padding=valid on a sequence of "
                "unknown length (`_`): inputs shorter than the window cannot be checked",
                f"declare the time axis with a symbol (e.g. `T`): the built model then "
                f"checks `T >= {window}` at every call; or use `padding=same`",
                where="input",
            )
        return None
    if padding == "valid":
        out = (T - window).floordiv(s) + 1
    else:  # same, causal
        out = T.ceildiv(s)
    v = out.value
    if v is not None and v < 1:
        raise RuleError(
            "SEQ403",
            f"{kind}: a sequence of length {T} is too short for a window of {d * (k - 1) + 1} "
            f"with padding={padding}",
            "use `padding=same`, a smaller kernel, or longer inputs",
            where="input",
        )
    if padding == "valid" and v is None and d * (k - 1) + 1 > 1:
        # a symbolic length must fill the window once: T >= window, a run-time constraint
        # unless provable (every length is at least 1: a window of 1 never needs one;
        # same and causal padding give ceil(T / s) >= 1 steps)
        ctx.at_least(T, d * (k - 1) + 1, kind)
    return out


def _window_mask(m: MaskKind | None, padding: str, strides: int = 1) -> MaskKind | None:
    if m is None:
        return None
    # A valid window can be empty for short rows; same/causal keep the steps whose anchor
    # j * s is valid: one at least when s == 1, or for post masks (anchor 0), but a pre or
    # any mask with s > 1 can have all its valid steps between anchors.
    keeps = padding != "valid" and (strides == 1 or m.side == "post")
    return MaskKind(m.side, m.nonempty and keeps, m.declared)


def _conv_rule(
    cfg: Config, ins: Sequence[TensorType], call: CallInfo, ctx: RuleContext
) -> list[TensorType]:
    (t,) = ins
    _need_float("Conv1D", t)
    _need_rank("Conv1D", t, (3,), "a sequence `[B, T, F]`")
    _need_features("Conv1D", t)
    k, s, d = _int(cfg, "kernel_size"), _int(cfg, "strides"), _int(cfg, "dilation_rate")
    if s > 1 and d > 1:
        raise RuleError("SEQ207", "Conv1D cannot combine strides > 1 with dilation_rate > 1",
                        "use one of them (Keras rejects the combination)", arg="dilation_rate")  # fmt: skip
    T = _window_time(ctx, "Conv1D", t.time, k, s, d, _str(cfg, "padding"))
    return [TensorType(t.dtype, (t.batch, T, Dim.of(_int(cfg, "filters"))),
                       _window_mask(t.mask, _str(cfg, "padding"), s), t.padded_from)]  # fmt: skip


def _conv_weights(cfg: Config, ins: Sequence[TensorType]) -> list[WeightSpec]:
    k, n = _int(cfg, "kernel_size"), _int(cfg, "filters")
    ws = [WeightSpec("kernel", (k, _feat(ins[0]), n), _str(cfg, "kernel_initializer"))]
    if _bool(cfg, "use_bias"):
        ws.append(WeightSpec("bias", (n,), _str(cfg, "bias_initializer")))
    return ws


def _pool_rule(
    cfg: Config, ins: Sequence[TensorType], call: CallInfo, ctx: RuleContext
) -> list[TensorType]:
    (t,) = ins
    kind = call.layer_kind
    _need_float(kind, t)
    _need_rank(kind, t, (3,), "a sequence `[B, T, F]`")
    p = _int(cfg, "pool_size")
    s_opt = Cfg(cfg).opt_integer("strides")
    s = p if s_opt is None else s_opt
    T = _window_time(ctx, kind, t.time, p, s, 1, _str(cfg, "padding"))
    return [
        TensorType(
            t.dtype,
            (t.batch, T, t.shape[2]),
            _window_mask(t.mask, _str(cfg, "padding"), s),
            t.padded_from,
        )
    ]


def _global_pool_rule(
    cfg: Config, ins: Sequence[TensorType], call: CallInfo, ctx: RuleContext
) -> list[TensorType]:
    (t,) = ins
    kind = call.layer_kind
    _need_float(kind, t)
    _need_rank(kind, t, (3,), "a sequence `[B, T, F]`")
    if t.mask is None and t.padded_from is not None:
        ctx.warn(
            "SEQ801",
            f"{kind} pools over `{t.padded_from}`, which is padded, but no mask reaches it: "
            "the padded steps take part",
            "mask the padding (`Embedding(mask_zero=true)`, `Masking`, or a `masked` input)",
        )
    shape = (t.batch, Dim.of(1), t.shape[2]) if _bool(cfg, "keepdims") else (t.batch, t.shape[2])
    return [TensorType(t.dtype, shape)]


def _no_mask_rule_check(kind: str, t: TensorType) -> None:
    if t.mask is not None:
        raise RuleError(
            "SEQ501",
            f"{kind} has no mask rule, and its input carries a mask ({t.mask}) that would be dropped",
            "write `-> drop_mask ->` before it to drop the mask on purpose, or pool first with "
            "`GlobalAveragePooling1D()`, which uses the mask",
            where="input",
        )


def _product(dims: Sequence[Dim | None]) -> Dim | None:
    out: Dim = Dim.of(1)
    sym_seen = False
    for d in dims:
        if d is None:
            return None
        if d.value is not None:
            out = out * d.value
        elif sym_seen or out.terms:
            return None
        else:
            out = d * (out.value or 1)
            sym_seen = True
    return out


def _flatten_rule(
    cfg: Config, ins: Sequence[TensorType], call: CallInfo, ctx: RuleContext
) -> list[TensorType]:
    (t,) = ins
    _no_mask_rule_check("Flatten", t)
    if t.rank < 2:
        _need_rank("Flatten", t, (2, 3, 4), "a value with a batch and at least one more axis")
    return [TensorType(t.dtype, (t.batch, _product(t.shape[1:])))]


def _reshape_rule(
    cfg: Config, ins: Sequence[TensorType], call: CallInfo, ctx: RuleContext
) -> list[TensorType]:
    (t,) = ins
    _no_mask_rule_check("Reshape", t)
    target = cfg["target_shape"]
    assert isinstance(target, tuple)
    if sum(1 for x in target if x == -1) > 1 or any(x == 0 or x < -1 for x in target):
        raise RuleError("SEQ207", "target_shape may hold positive sizes and at most one -1",
                        "e.g. `Reshape([4, -1])`", arg="target_shape")  # fmt: skip
    size = _product(t.shape[1:])
    known = 1
    for x in target:
        if x != -1:
            known *= x
    out: list[Dim | None] = [Dim.of(x) if x != -1 else None for x in target]
    if size is not None and size.value is not None:
        n = size.value
        if (-1 in target and n % known) or (-1 not in target and n != known):
            raise RuleError(
                "SEQ308",
                f"Reshape: {n} values per example do not fit target_shape {list(target)}",
                f"the input is {fmt_shape(t.shape)}",
                arg="target_shape",
            )
        if -1 in target:
            out = [Dim.of(n // known) if x == -1 else Dim.of(x) for x in target]
    elif size is not None and -1 in target:
        # symbolic (`[B, T, 3]` to `[-1, 1]`: 3*T): later rules (an explicit mask's time,
        # a merge) see the size instead of an unknown; a size that is not a multiple of
        # the known part for every T (`T - 1` values into `[2, -1]`) is a run-time
        # constraint, as TemporalSplit's
        q = ctx.exact(size, known, f"Reshape to {list(target)}: the values per example")
        out = [q if x == -1 else Dim.of(x) for x in target]
    return [TensorType(t.dtype, (t.batch, *out))]


def _temporal_softmax_rule(
    cfg: Config, ins: Sequence[TensorType], call: CallInfo, ctx: RuleContext
) -> list[TensorType]:
    (t,) = ins
    _need_float("TemporalSoftmax", t)
    _need_rank("TemporalSoftmax", t, (3,), "a sequence `[B, T, F]`")
    if t.mask is None:
        raise RuleError(
            "SEQ502",
            "TemporalSoftmax requires a mask, and its input has none",
            "mask the sequence first (`Embedding(mask_zero=true)`, `Masking`, a `masked` input), "
            "or pass one: `TemporalSoftmax()(x, mask=m)`",
            where="input",
        )
    return [TensorType(t.dtype, t.shape)]


def _temporal_split_rule(
    cfg: Config, ins: Sequence[TensorType], call: CallInfo, ctx: RuleContext
) -> list[TensorType]:
    (t,) = ins
    _need_rank("TemporalSplit", t, (2, 3, 4), "a sequence `[B, T, ...]`")
    n = _int(cfg, "parts")
    T = ctx.exact(t.time, n, "TemporalSplit")
    outs = []
    for i in range(n):
        m = t.mask
        if m is not None:
            keep = (m.side == "post" and i == 0) or (m.side == "pre" and i == n - 1)
            m = replace(m, nonempty=m.nonempty and keep)
        outs.append(TensorType(t.dtype, (t.batch, T, *t.shape[2:]), m, t.padded_from))
    return outs


# --------------------------------------------------------------------------
# attention layers


def _attention_masks_hint(kind: str) -> str:
    return (
        f"{kind} takes its masks from its inputs: each value brings its own "
        "(`Embedding(mask_zero=true)`, `Masking`, a `masked` input)"
    )


def _attention_rule(
    cfg: Config, ins: Sequence[TensorType], call: CallInfo, ctx: RuleContext
) -> list[TensorType]:
    """Attention and MultiHeadAttention: ``(query, value[, key])``, each a sequence."""
    kind = call.layer_kind
    roles = ("query", "value", "key")
    q = ins[0]
    for i, t in enumerate(ins):
        role = roles[i]
        if t.dtype not in FLOAT_DTYPES:
            hint = (
                "integer ids need an `Embedding` first"
                if t.dtype in INT_DTYPES
                else "declare the input as `f32`"
            )
            raise RuleError("SEQ301", f"{kind} expects a float {role}, got {t.dtype}", hint,
                            where="input", index=i)  # fmt: skip
        if t.rank != 3:
            raise RuleError(
                "SEQ303",
                f"{kind} expects its {role} to be a sequence `[B, T, F]`, got "
                f"{t.dtype}{fmt_shape(t.shape)} (rank {t.rank})",
                "attention reads sequences: keep `return_sequences=true` on a recurrent layer "
                "before it, or add a time axis to the input declaration",
                where="input",
                index=i,
            )
        if i and t.dtype != q.dtype:
            raise RuleError("SEQ301", f"{kind}: the {role} is {t.dtype} but the query is {q.dtype}",
                            "attend over values of the query's dtype", where="input", index=i)  # fmt: skip
        if i and not _same(t.batch, q.batch):
            raise RuleError(
                "SEQ307",
                f"{kind}: batch dimensions differ: `{_fmt(q.batch)}` (query) and "
                f"`{_fmt(t.batch)}` ({role})",
                "attend over values of the same batch",
                where="input",
                index=i,
            )
    v = ins[1]
    k = ins[2] if len(ins) > 2 else v
    if len(ins) > 2 and not _same(k.time, v.time):
        raise RuleError(
            "SEQ401",
            f"{kind}: the key has time `{_fmt(k.time)}` but the value has time `{_fmt(v.time)}`; "
            "key step j scores value step j",
            "pass a key computed from the value's sequence (e.g. `Dense(...)(value)`), "
            "or leave the key out: the value is then the key",
            where="input",
            index=2,
        )
    for i, t in enumerate(ins[1:], start=1):
        if t.mask is None and t.padded_from is not None:
            ctx.warn(
                "SEQ801",
                f"{kind} attends over `{t.padded_from}` (its {roles[i]}), which is padded, but no "
                "mask reaches it: the padded steps get attention weight",
                "mask the padding: `Embedding(..., mask_zero=true)` or `Masking(mask_value=...)`, "
                "or declare the input `masked` and pass lengths",
            )
    b = q.batch
    if kind == "Attention":
        if not _same(q.features, k.features):
            which = "keys" if len(ins) > 2 else "keys (the value is the key)"
            raise RuleError(
                "SEQ302",
                f"Attention scores queries of {_fmt(q.features)} features against {which} of "
                f"{_fmt(k.features)}: they must be the same size",
                "Attention compares query and key vectors directly: project one with "
                f"`Dense({_fmt(k.features)})` first, or use `MultiHeadAttention`, which "
                "projects both",
                where="input",
                index=2 if len(ins) > 2 else 1,
            )
        out_f = v.features
        scores = TensorType(q.dtype, (b, q.time, v.time))
    else:
        for t in ins:
            _need_features(kind, t)
        axes = cfg["attention_axes"]
        if axes not in (None, 1, -2, (1,), (-2,), "time"):
            raise RuleError(
                "SEQ202",
                f"MultiHeadAttention: attention_axes={_axes_text(axes)} is not supported in v1",
                "attention runs over the time axis (Keras' default, `attention_axes=none`); "
                "remove the argument",
                arg="attention_axes",
            )
        if cfg["kernel_initializer"] == "identity":
            raise RuleError(
                "SEQ203",
                "MultiHeadAttention: the identity initializer needs 2D kernels; its kernels "
                "are 3D ([features, heads, size])",
                "choose another initializer, e.g. glorot_uniform",
                arg="kernel_initializer",
            )
        shape = cfg["output_shape"]
        out_f = Dim.of(shape) if isinstance(shape, int) else q.features
        scores = TensorType(q.dtype, (b, Dim.of(_int(cfg, "num_heads")), q.time, v.time))
    out = TensorType(q.dtype, (b, q.time, out_f), q.mask, q.padded_from)
    return [out, scores] if _bool(cfg, "return_attention_scores") else [out]


def _axes_text(v: object) -> str:
    if isinstance(v, tuple):
        return "[" + ", ".join(str(x) for x in v) + "]"
    return str(v)


def _attention_weights(cfg: Config, ins: Sequence[TensorType]) -> list[WeightSpec]:
    ws = []
    if _bool(cfg, "use_scale"):
        ws.append(WeightSpec("scale", (), "ones"))
    if cfg["score_mode"] == "concat":
        ws.append(WeightSpec("concat_score_weight", (), "ones"))
    return ws


def mha_sizes(cfg: Config, ins: Sequence[TensorType]) -> tuple[int, int, int, int]:
    """(heads, key_dim, value_dim, output features) of a MultiHeadAttention."""
    vd = cfg["value_dim"]
    shape = cfg["output_shape"]
    return (
        _int(cfg, "num_heads"),
        _int(cfg, "key_dim"),
        vd if isinstance(vd, int) else _int(cfg, "key_dim"),
        shape if isinstance(shape, int) else _feat(ins[0]),
    )


def _mha_weights(cfg: Config, ins: Sequence[TensorType]) -> list[WeightSpec]:
    """Keras' four EinsumDense sub-layers: query, key, value, attention_output."""
    n, kd, vd, out_f = mha_sizes(cfg, ins)
    key = ins[2] if len(ins) > 2 else ins[1]
    kinit, binit = _str(cfg, "kernel_initializer"), _str(cfg, "bias_initializer")
    bias = _bool(cfg, "use_bias")
    ws: list[WeightSpec] = []
    for part, t, size in (("query", ins[0], kd), ("key", key, kd), ("value", ins[1], vd)):
        ws.append(WeightSpec(f"{part}/kernel", (_feat(t), n, size), kinit))
        if bias:
            ws.append(WeightSpec(f"{part}/bias", (n, size), binit))
    ws.append(WeightSpec("attention_output/kernel", (n, vd, out_f), kinit))
    if bias:
        ws.append(WeightSpec("attention_output/bias", (out_f,), binit))
    return ws


def _attention_invariant(cfg: Config) -> bool:
    # a causal mask compares absolute positions of two sequences: padding one of them on
    # the other side moves its steps relative to the other's
    return not _bool(cfg, "use_causal_mask")


_CAUSAL_NOTE = "not with use_causal_mask=true, which compares positions across two sequences"
_ATTENTION_CALL_FLAGS = (
    Param("use_causal_mask", "bool", False,
          doc="query step i attends to key steps j <= i only (Keras' call argument)"),
    Param("return_attention_scores", "bool", False,
          doc="also return the attention weights (Keras' call argument)"),
)  # fmt: skip
_UNSUPPORTED_ATTENTION = {
    **_UNSUPPORTED_COMMON,
    "query_mask": "masks come with the values: mask the query itself",
    "value_mask": "masks come with the values: mask the value itself",
    "key_mask": "masks come with the values: mask the key itself",
    "attention_mask": "an explicit [B, Tq, Tv] attention mask is not supported in v1; masks come "
    "with the values, and `use_causal_mask=true` adds the causal one",
}
_UNSUPPORTED_MHA = {
    **_UNSUPPORTED_ATTENTION,
    "flash_attention": "kernels are chosen by the compiler (PyTorch's fused attention where it "
    "computes the same numbers)",
    "sliding_window": "sliding-window attention is not supported in v1",
    "use_gate": "gated attention is not supported in v1",
}


# --------------------------------------------------------------------------
# the table

_ACT_INIT_DENSE = (
    Param("activation", "activation", "linear"),
    Param("use_bias", "bool", True),
    Param("kernel_initializer", "initializer", "glorot_uniform"),
    Param("bias_initializer", "initializer", "zeros"),
)


def _spec(
    *,
    name: str,
    category: str,
    rule: Rule,
    weights: WeightsFn,
    mask_rule: str,
    padding_invariant: bool,
    doc: str,
    params: tuple[Param, ...] = (),
    unsupported: Mapping[str, str] | None = None,
    kernels: KernelFn | None = None,
    data_args: frozenset[str] = frozenset({"mask"}),
    n_inputs: tuple[int, int] = (1, 1),
    invariant: Callable[[Config], bool] | None = None,
    invariant_note: str = "",
) -> LayerSpec:
    """A built-in entry: its own parameters plus :data:`COMMON`."""
    params = params + COMMON
    # a Keras argument is "unsupported" only where the layer has no such parameter
    names = {p.name for p in params}
    kept = {k: v for k, v in (unsupported or {}).items() if k not in names}
    return LayerSpec(
        name=name,
        category=category,
        params=params,
        rule=rule,
        weights=weights,
        mask_rule=mask_rule,
        padding_invariant=padding_invariant,
        doc=doc,
        unsupported=kept,
        kernels=kernels,
        data_args=data_args,
        n_inputs=n_inputs,
        invariant=invariant,
        invariant_note=invariant_note,
    )


def _rnn_layer(name: str, cell: str, doc: str) -> LayerSpec:
    return _spec(
        name=name,
        category="recurrent",
        params=_cell_params(cell) + _RNN_FLAGS,
        rule=_rnn_rule,
        weights=_rnn_weights,
        mask_rule="consume",
        padding_invariant=True,
        doc=doc,
        unsupported=_UNSUPPORTED_RNN,
        kernels=recurrent_kernels,
        data_args=frozenset({"mask", "initial_state", "training"}),
    )


def _cell(name: str, cell: str) -> LayerSpec:
    return _spec(
        name=name,
        category="cell",
        params=_cell_params(cell),
        rule=_cell_as_layer_rule,
        weights=_no_weights,
        mask_rule="none",
        padding_invariant=True,
        doc=f"the cell of {name[:-4]}; use inside `RNN(...)`",
        unsupported=_UNSUPPORTED_RNN,
    )


def _cell_as_layer_rule(
    cfg: Config, ins: Sequence[TensorType], call: CallInfo, ctx: RuleContext
) -> list[TensorType]:
    raise RuleError(
        "SEQ203",
        f"{call.layer_kind} is a cell, not a layer",
        f"wrap it in a recurrent layer: `RNN({call.layer_kind}(...))`",
    )


_POOL_PARAMS = (
    Param("pool_size", "ints", 2, lo=1),
    Param("strides", "int_or_none", None, lo=1),
    Param("padding", "choice", "valid", choices=("valid", "same")),
)

_GLOBAL_POOL = (Param("keepdims", "bool", False),)
_DATA_FORMAT = {"data_format": "only channels_last (`[B, T, F]`) is supported"}

_LAYERS: list[LayerSpec] = [
    _spec(
        name="Embedding", category="generator",
        params=(
            Param("input_dim", "int", lo=1, doc="vocabulary size"),
            Param("output_dim", "int", lo=1),
            Param("embeddings_initializer", "initializer", "uniform"),
            Param("mask_zero", "bool", False, doc="mask steps whose id is 0"),
        ),
        rule=_embedding_rule,
        weights=lambda cfg, ins: [
            WeightSpec("embeddings", (_int(cfg, "input_dim"), _int(cfg, "output_dim")),
                       _str(cfg, "embeddings_initializer"))
        ],
        mask_rule="generate", padding_invariant=True,
        doc="integer ids -> vectors; mask_zero=true masks id 0",
        unsupported={**_UNSUPPORTED_COMMON, "embeddings_regularizer": _REG, "embeddings_constraint": _REG,
                     "sparse": "sparse embeddings are not supported", "quantization_config": _QUANT},
        data_args=frozenset(),
    ),
    _spec(
        name="Masking", category="generator",
        params=(Param("mask_value", "float", 0.0),),
        rule=_masking_rule, weights=_no_weights, mask_rule="generate", padding_invariant=True,
        doc="mask steps whose features all equal mask_value (and zero them)",
        unsupported=_UNSUPPORTED_COMMON, data_args=frozenset(),
    ),
    _rnn_layer("LSTM", "lstm", "long short-term memory layer"),
    _rnn_layer("GRU", "gru", "gated recurrent unit layer"),
    _rnn_layer("SimpleRNN", "simple_rnn", "fully connected recurrent layer"),
    _spec(
        name="RNN", category="recurrent",
        params=(Param("cell", "layer", doc="SimpleRNNCell, GRUCell, LSTMCell or a cell block"),) + _RNN_FLAGS,
        rule=_rnn_rule, weights=_rnn_weights, mask_rule="consume", padding_invariant=True,
        doc="a recurrent layer around a cell (a cell block may read several sequences)",
        unsupported=_UNSUPPORTED_RNN, kernels=recurrent_kernels,
        data_args=frozenset({"mask", "initial_state", "training"}), n_inputs=(1, 16),
    ),
    _cell("LSTMCell", "lstm"),
    _cell("GRUCell", "gru"),
    _cell("SimpleRNNCell", "simple_rnn"),
    _spec(
        name="Bidirectional", category="recurrent",
        params=(
            Param("layer", "layer", doc="the recurrent layer to run both ways"),
            Param("merge_mode", "choice", "concat", choices=("concat", "sum", "mul", "ave", "none")),
            Param("backward_layer", "layer", None,
                  doc="the layer run backwards (go_backwards=true, its own config and weights); "
                  "default: a copy of `layer`"),
        ),
        rule=_bidirectional_rule, weights=_bidirectional_weights, mask_rule="consume",
        padding_invariant=True, doc="runs a recurrent layer forwards and backwards",
        unsupported=_UNSUPPORTED_COMMON,
        kernels=recurrent_kernels, data_args=frozenset({"mask", "initial_state", "training"}),
    ),
    _spec(
        name="Dense", category="propagate",
        params=(Param("units", "int", lo=1),) + _ACT_INIT_DENSE,
        rule=_dense_rule, weights=_dense_weights, mask_rule="propagate", padding_invariant=True,
        doc="a fully connected layer on the last axis",
        unsupported={**_UNSUPPORTED_COMMON, "quantization_config": _QUANT},
    ),
    _spec(
        name="Activation", category="propagate",
        params=(Param("activation", "activation"),),
        rule=_same_rule, weights=_no_weights, mask_rule="propagate", padding_invariant=True,
        doc="an elementwise activation", unsupported=_UNSUPPORTED_COMMON,
    ),
    _spec(
        name="Dropout", category="propagate",
        params=(Param("rate", "float", lo=0.0, hi=1.0, hi_open=True),),
        rule=_same_rule, weights=_no_weights, mask_rule="propagate", padding_invariant=True,
        doc="dropout in training, identity in inference",
        unsupported={**_UNSUPPORTED_COMMON, "noise_shape": "dropout masks are per element"},
        data_args=frozenset({"mask", "training"}),
    ),
    _spec(
        name="SpatialDropout1D", category="propagate",
        params=(Param("rate", "float", lo=0.0, hi=1.0, hi_open=True),),
        rule=_sequence_same_rule, weights=_no_weights, mask_rule="propagate",
        padding_invariant=True,  # one keep-mask per row and channel: padding changes nothing
        doc="drops whole feature channels (the same at every step) in training; "
        "identity in inference",
        unsupported=_UNSUPPORTED_COMMON,
        data_args=frozenset({"mask", "training"}),
    ),
    _spec(
        name="TimeDistributed", category="propagate",
        params=(Param("layer", "layer"),),
        rule=_time_distributed_rule, weights=_time_distributed_weights, mask_rule="propagate",
        padding_invariant=True, doc="applies a per-step layer at every time step",
        unsupported=_UNSUPPORTED_COMMON, data_args=frozenset({"mask", "training"}),
    ),
    _spec(
        name="LayerNormalization", category="propagate",
        params=(
            Param("axis", "int", -1), Param("epsilon", "float", 1e-3, lo=0.0),
            Param("center", "bool", True), Param("scale", "bool", True),
            Param("beta_initializer", "initializer", "zeros"),
            Param("gamma_initializer", "initializer", "ones"),
        ),
        rule=_norm_rule, weights=_ln_weights, mask_rule="propagate", padding_invariant=True,
        doc="normalises each step over its features",
        unsupported={**_UNSUPPORTED_COMMON, "beta_regularizer": _REG, "gamma_regularizer": _REG,
                     "beta_constraint": _REG, "gamma_constraint": _REG,
                     "rms_scaling": "RMS scaling is not supported in v1"},
    ),
    _spec(
        name="BatchNormalization", category="propagate",
        params=(
            Param("axis", "int", -1), Param("momentum", "float", 0.99, lo=0.0, hi=1.0),
            Param("epsilon", "float", 1e-3, lo=0.0),
            Param("center", "bool", True), Param("scale", "bool", True),
            Param("beta_initializer", "initializer", "zeros"),
            Param("gamma_initializer", "initializer", "ones"),
            Param("moving_mean_initializer", "initializer", "zeros"),
            Param("moving_variance_initializer", "initializer", "ones"),
        ),
        rule=_norm_rule, weights=_bn_weights, mask_rule="propagate", padding_invariant=True,
        doc="batch normalisation over the last axis (masked moments in training)",
        unsupported={**_UNSUPPORTED_COMMON, "beta_regularizer": _REG, "gamma_regularizer": _REG,
                     "beta_constraint": _REG, "gamma_constraint": _REG,
                     "synchronized": "distributed training is out of scope for v1",
                     "renorm": "batch renormalisation is not supported in v1",
                     "renorm_clipping": "batch renormalisation is not supported in v1",
                     "renorm_momentum": "batch renormalisation is not supported in v1"},
        data_args=frozenset({"mask", "training"}),
    ),
    _spec(
        name="Conv1D", category="time",
        params=(
            Param("filters", "int", lo=1), Param("kernel_size", "ints", lo=1),
            Param("strides", "ints", 1, lo=1),
            Param("padding", "choice", "valid", choices=("valid", "same", "causal")),
            Param("dilation_rate", "ints", 1, lo=1),
            Param("groups", "int", 1, lo=1, hi=1, doc="only 1 in v1"),
        ) + _ACT_INIT_DENSE,
        rule=_conv_rule, weights=_conv_weights, mask_rule="time", padding_invariant=False,
        doc="1D convolution over time; maps lengths through the window formula",
        unsupported={**_UNSUPPORTED_COMMON, **_DATA_FORMAT},
    ),
    _spec(
        name="MaxPooling1D", category="time", params=_POOL_PARAMS, rule=_pool_rule,
        weights=_no_weights, mask_rule="time", padding_invariant=False,
        doc="max over windows in time", unsupported={**_UNSUPPORTED_COMMON, **_DATA_FORMAT},
    ),
    _spec(
        name="AveragePooling1D", category="time", params=_POOL_PARAMS, rule=_pool_rule,
        weights=_no_weights, mask_rule="time", padding_invariant=False,
        doc="mean over windows in time", unsupported={**_UNSUPPORTED_COMMON, **_DATA_FORMAT},
    ),
    _spec(
        name="GlobalAveragePooling1D", category="reduce", params=_GLOBAL_POOL,
        rule=_global_pool_rule, weights=_no_weights, mask_rule="consume", padding_invariant=True,
        doc="masked mean over time (0 for an empty row)",
        unsupported={**_UNSUPPORTED_COMMON, **_DATA_FORMAT},
    ),
    _spec(
        name="GlobalMaxPooling1D", category="reduce", params=_GLOBAL_POOL,
        rule=_global_pool_rule, weights=_no_weights, mask_rule="consume", padding_invariant=True,
        doc="masked max over time (0 for an empty row)",
        unsupported={**_UNSUPPORTED_COMMON, **_DATA_FORMAT},
    ),
    _spec(
        name="Flatten", category="reshape", params=(), rule=_flatten_rule, weights=_no_weights,
        mask_rule="none", padding_invariant=False, doc="flattens all axes after the batch",
        unsupported={**_UNSUPPORTED_COMMON, **_DATA_FORMAT}, data_args=frozenset(),
    ),
    _spec(
        name="Reshape", category="reshape", params=(Param("target_shape", "shape"),),
        rule=_reshape_rule, weights=_no_weights, mask_rule="none", padding_invariant=False,
        doc="reshapes the axes after the batch", unsupported=_UNSUPPORTED_COMMON,
        data_args=frozenset(),
    ),
    _spec(
        name="TemporalSoftmax", category="consumer", params=(), rule=_temporal_softmax_rule,
        weights=_no_weights, mask_rule="consume-required", padding_invariant=True,
        doc="softmax over time at valid steps; 0 at masked steps and for empty rows",
        unsupported=_UNSUPPORTED_COMMON,
    ),
    _spec(
        name="TemporalSplit", category="time", params=(Param("parts", "int", 2, lo=1, hi=1024),),
        rule=_temporal_split_rule, weights=_no_weights, mask_rule="split", padding_invariant=False,
        doc="splits the time axis into equal parts, masks too", unsupported=_UNSUPPORTED_COMMON,
    ),
    _spec(
        name="Attention", category="attention",
        params=(
            Param("use_scale", "bool", False, doc="learn a scalar `scale` that multiplies the scores"),
            Param("score_mode", "choice", "dot", choices=("dot", "concat"),
                  doc="dot: query . key; concat: sum(tanh(query + key))"),
            Param("dropout", "float", 0.0, lo=0.0, hi=1.0, hi_open=True,
                  doc="on the attention weights, in training"),
        ) + _ATTENTION_CALL_FLAGS,
        rule=_attention_rule, weights=_attention_weights, mask_rule="attend",
        padding_invariant=True, invariant=_attention_invariant, invariant_note=_CAUSAL_NOTE,
        doc="dot-product (Luong) attention: `Attention()(query, value)` or `(query, value, key)`",
        unsupported=_UNSUPPORTED_ATTENTION, data_args=frozenset({"training"}), n_inputs=(2, 3),
    ),
    _spec(
        name="MultiHeadAttention", category="attention",
        params=(
            Param("num_heads", "int", lo=1),
            Param("key_dim", "int", lo=1, doc="size of each head for query and key"),
            Param("value_dim", "int_or_none", None, lo=1,
                  doc="size of each head for value (none: key_dim)"),
            Param("dropout", "float", 0.0, lo=0.0, hi=1.0, hi_open=True,
                  doc="on the attention weights, in training"),
            Param("use_bias", "bool", True),
            Param("output_shape", "ints_or_none", None, lo=1,
                  doc="output features (none: the query's)"),
            Param("attention_axes", "axes", None, doc="none (time) only"),
            Param("kernel_initializer", "initializer", "glorot_uniform"),
            Param("bias_initializer", "initializer", "zeros"),
        ) + _ATTENTION_CALL_FLAGS,
        rule=_attention_rule, weights=_mha_weights, mask_rule="attend",
        padding_invariant=True, invariant=_attention_invariant, invariant_note=_CAUSAL_NOTE,
        doc="multi-head attention: `MultiHeadAttention(num_heads, key_dim)(query, value[, key])`",
        unsupported=_UNSUPPORTED_MHA, data_args=frozenset({"training"}), n_inputs=(2, 3),
    ),
]  # fmt: skip

_MERGE_DOCS = {
    "add": "elementwise sum", "subtract": "elementwise difference of two values",
    "multiply": "elementwise product", "average": "elementwise mean",
    "maximum": "elementwise maximum", "minimum": "elementwise minimum",
    "concat": "joins values on the feature axis (default) or on time",
}  # fmt: skip

MERGES: dict[str, LayerSpec] = {
    fn: _spec(
        name=fn,
        category="merge",
        params=(Param("axis", "axis", "features"),) if fn == "concat" else (),
        rule=_merge_rule,
        weights=_no_weights,
        mask_rule="concat" if fn == "concat" else "merge",
        padding_invariant=True,
        doc=doc,
        unsupported=_UNSUPPORTED_COMMON,
        n_inputs=(2, 2) if fn == "subtract" else (2, 64),
    )
    for fn, doc in _MERGE_DOCS.items()
}

CATALOGUE: dict[str, LayerSpec] = {s.name: s for s in _LAYERS}


def spec_for(kind: str) -> LayerSpec | None:
    return CATALOGUE.get(kind) or MERGES.get(kind)


def exact_time(d: Dim | None, k: int) -> tuple[Dim | None, bool | None]:
    """``d / k`` and whether it is divisible (None: decided at run time)."""
    if d is None:
        return None, None
    ok = divisible(d, k)
    q, _ = exact_div(d, k)
    return q, ok
