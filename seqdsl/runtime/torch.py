"""The run-time code of generated PyTorch modules: layers, fused-kernel helpers, mask rules.

A generated module imports what it uses from here (``from seqdsl.runtime.torch
import LSTM, check_inputs``); ``seqdsl compile --standalone`` copies those
definitions, with what they read, into the generated file instead (see
:mod:`seqdsl.emit.standalone` and the rules in ``seqdsl/runtime/__init__.py``).

Every option of a layer is a constructor argument and every variant an ordinary
branch on a Python attribute: a model pays only for the tensor work of the
features it uses. See docs/backend-torch.md.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from seqdsl.externs import ExternError, check_output_shapes, get_extern

from .common import (
    InputError,
    WeightsFileError,
    canonical_mapping,
    check_inputs,
    check_lengths_values,
    check_weight_keys,
    pad_inputs,
    window_padding,
)

__all__ = [
    "Attention",
    "BatchNormalization",
    "Bidirectional",
    "CellRNN",
    "Conv1D",
    "Dense",
    "Embedding",
    "Extern",
    "GRU",
    "InputError",
    "WeightsFileError",
    "LSTM",
    "LayerNormalization",
    "MultiHeadAttention",
    "Projection",
    "Recurrent",
    "SimpleRNN",
    "all_valid",
    "attention_mask",
    "carry_forward",
    "carry_state",
    "carried_states",
    "check_inputs",
    "check_lengths",
    "check_mask",
    "check_not_vmapped",
    "dropout",
    "fused_attention",
    "fused_rnn",
    "fused_rnn_static",
    "FUSED_RNN_OPERATOR",
    "RNN_OPS",
    "define_rnn_operator",
    "rnn_kernel",
    "gather_steps",
    "global_pool",
    "hard_sigmoid",
    "input_mask",
    "keep_mask",
    "leaky_relu",
    "linear",
    "lengths_to_mask",
    "log_softmax",
    "masked_mean",
    "masked_softmax",
    "pack_rows",
    "pool1d",
    "softmax",
    "softplus",
    "step_mask",
    "temporal_softmax",
    "to_right_padding",
    "tracing",
    "vmapped",
    "where_valid",
    "window_mask",
    "window_padding",
]

# --------------------------------------------------------------------------
# activations that torch has under another definition


def linear(x: Tensor) -> Tensor:
    """Keras' linear activation, for the recurrent cells, which call their activations
    (a Dense or Conv1D with ``activation=linear`` applies nothing)."""
    return x


def softmax(x: Tensor) -> Tensor:
    """Keras' softmax activation: over the last axis."""
    return torch.softmax(x, dim=-1)


def log_softmax(x: Tensor) -> Tensor:
    """Keras' log_softmax activation: over the last axis."""
    return torch.log_softmax(x, dim=-1)


def softplus(x: Tensor) -> Tensor:
    """Keras' softplus, log(1 + exp(x)), exact for large x (F.softplus turns linear at 20)."""
    return torch.logaddexp(x, torch.zeros_like(x))


def hard_sigmoid(x: Tensor) -> Tensor:
    """Keras 3's hard_sigmoid: relu6(x + 3) / 6."""
    return F.relu6(x + 3.0) / 6.0


def leaky_relu(x: Tensor) -> Tensor:
    """Keras 3's leaky_relu: negative_slope=0.2 (torch's default is 0.01)."""
    return F.leaky_relu(x, 0.2)


# --------------------------------------------------------------------------
# inputs, shapes and masks


def lengths_to_mask(lengths: Tensor, steps: int, side: str = "post") -> Tensor:
    """A bool [B, T] mask: the first (post) or last (pre) lengths[b] steps of row b are valid."""
    t = torch.arange(steps, device=lengths.device)
    lengths = lengths[:, None]
    return t < lengths if side == "post" else t >= steps - lengths


def input_mask(
    name: str, x: Tensor, side: str, lengths: Mapping | None, masks: Mapping | None
) -> Tensor:
    """The mask of a `masked` input: masks[name] (bool [B, T]) or from lengths[name] ([B]);
    check_inputs has checked their shapes and dtypes."""
    if masks is not None and masks.get(name) is not None:
        return torch.as_tensor(masks[name], dtype=torch.bool, device=x.device)
    if lengths is not None and lengths.get(name) is not None:
        lens = torch.as_tensor(lengths[name], dtype=torch.int64, device=x.device)
        return lengths_to_mask(lens, x.shape[1], side)
    raise InputError(f"input `{name}` is masked: pass lengths={{{name!r}: ...}} or masks=")


def check_lengths(name: str, lengths: Mapping | None, steps: int, nonempty: bool) -> None:
    """debug: the lengths of a `masked` input lie in [0, T] ([1, T] if declared nonempty)."""
    if lengths is None or lengths.get(name) is None:
        return
    lens = lengths[name]
    lens = lens.detach().cpu().numpy() if isinstance(lens, Tensor) else np.asarray(lens)
    check_lengths_values(name, lens, steps, nonempty)


def check_mask(mask: Tensor, side: str, nonempty: bool, where: str, promise: str) -> None:
    """debug: raise InputError unless `mask` has its declared kind. post: the valid
    steps of each row form a prefix; pre: a suffix; nonempty: no row is fully masked."""
    mask = mask.detach().cpu()
    bad, what = None, ""
    if side == "post":
        bad, what = mask[:, 1:] & ~mask[:, :-1], "a valid step follows a masked one"
    elif side == "pre":
        bad, what = ~mask[:, 1:] & mask[:, :-1], "a masked step follows a valid one"
    if bad is not None and bool(bad.any()):
        row, step = (int(i) for i in bad.nonzero()[0])
        problem = f"the mask is not `{side}`: in row {row}, {what} at step {step + 1}"
        raise InputError(f"{where}: {problem}; {promise}")
    if nonempty and not bool(mask.any(1).all()):
        row = int((~mask.any(1)).nonzero()[0, 0])
        problem = f"row {row} has no valid step, but the mask is declared nonempty"
        raise InputError(f"{where}: {problem}; {promise}")


def all_valid(x: Tensor) -> Tensor:
    """The mask of an unmasked sequence: every step valid."""
    return torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)


# --------------------------------------------------------------------------
# dropout


def keep_mask(
    dropout_masks: Mapping | None, key: str, shape: Sequence[int], rate: float, like: Tensor
) -> Tensor:
    """A dropout keep-mask scaled by 1 / (1 - rate): dropout_masks[key] when given, else drawn."""
    if dropout_masks is not None and key in dropout_masks:
        keep = torch.as_tensor(dropout_masks[key], dtype=like.dtype, device=like.device)
    else:
        keep = (torch.rand(shape, device=like.device) >= rate).to(like.dtype)
    return keep / (1.0 - rate)


def dropout(
    x: Tensor, rate: float, training: bool, dropout_masks: Mapping | None, key: str
) -> Tensor:
    """Keras' Dropout: the identity in inference; in training x * keep / (1 - rate)."""
    if not training:
        return x
    return x * keep_mask(dropout_masks, key, x.shape, rate, x)


def spatial_dropout_1d(
    x: Tensor, rate: float, training: bool, dropout_masks: Mapping | None, key: str
) -> Tensor:
    """Keras' SpatialDropout1D: the identity in inference; in training x * keep / (1 - rate)
    with one keep-mask [B, 1, F] for every step of a row (whole channels dropped)."""
    if not training:
        return x
    return x * keep_mask(dropout_masks, key, (x.shape[0], 1, x.shape[2]), rate, x)


# --------------------------------------------------------------------------
# recurrent layers: mask rearrangements and torch's fused kernels


def gather_steps(x: Tensor, index: Tensor) -> Tensor:
    """x[b, index[b, j]] for x [B, T, F] and index [B, J]."""
    return x.gather(1, index[..., None].expand(-1, -1, x.shape[2]))


def to_right_padding(x: Tensor, mask: Tensor, side: str) -> tuple[Tensor, Tensor, Tensor | None]:
    """Move each row's valid steps to the front, in order, as the fused kernels want.

    side: the mask's kind, "post" (already right-padded), "pre" (each row is rolled
    left by its padding) or "any" (gaps: the valid steps are compacted). Returns the
    moved x, each row's number of valid steps and the index that moves the outputs
    back with gather_steps (None when nothing moved).
    """
    lengths = mask.sum(1)
    if side == "post":  # already right-padded
        return x, lengths, None
    if side == "pre":  # roll each row left by its padding, and back
        steps = torch.arange(x.shape[1], device=x.device)
        shift = x.shape[1] - lengths[:, None]
        return gather_steps(x, (steps + shift) % x.shape[1]), lengths, (steps - shift) % x.shape[1]
    # gaps: a stable argsort of ~mask puts the valid steps first, in order;
    # valid step t is the cumsum(mask)[t]-th of them
    order = torch.argsort(~mask, dim=1, stable=True)
    back = (mask.cumsum(1) - 1).clamp(min=0)
    return gather_steps(x, order), lengths, back


def tracing() -> bool:
    """Whether torch.compile, torch.export or torch.jit.trace is tracing this call, or
    a torch.func transform (grad, vmap, jacrev, ...) runs it: then nothing on the path
    may depend on the data in Python (no .item(), no packing, no cut to the longest
    row, no cache keyed on data pointers), so that a graph holds for every batch and
    every mask. A few Python bools per call."""
    return (
        torch.compiler.is_compiling()
        or torch.jit.is_tracing()  # type: ignore[attr-defined]
        or torch._C._are_functorch_transforms_active()
    )


def vmapped(x: Tensor) -> bool:
    """Whether x is batched by torch.func.vmap: torch's fused RNN ops have no batching
    rule there, so the recurrent layers run Keras' step function in a loop."""
    return bool(torch._C._functorch.is_batchedtensor(x))


def pack_rows(op: Callable, units: int, lengths: Tensor, longest: int) -> bool:
    """Whether to pack the rows rather than run the padded batch (both are exact).
    Measured on the CPU (docs/benchmarks.md): packing wins in inference when few of
    the steps up to the longest row are valid, since the kernel skips the padding:
    at most 80% for torch.gru and torch.rnn_*, whose packed and padded kernels are
    the same. torch.lstm's padded kernel (oneDNN's) is faster per step than its
    packed one: 2.5x at 64-128 units, so never pack there; 1.7x at 256-512 units:
    at most 55%; about 1.1x from 1024 units: at most 80%. In training the padded
    batch wins: the backward pass is much slower packed."""
    if torch.is_grad_enabled():
        return False
    share = 0.8
    if op is torch.lstm and units < 1024:
        share = 0.55 if units >= 256 else 0.0
    return int(lengths.sum()) <= share * len(lengths) * longest


def fused_rnn(
    op: Callable,
    x: Tensor,
    states: Sequence[Tensor],
    weights: Sequence[Tensor],
    lengths: Tensor | None = None,
    packed: bool = False,
    layers: int = 1,
    outputs: bool = True,
) -> tuple[Tensor | None, list[Tensor]]:
    """torch's fused RNN ops (what nn.LSTM, nn.GRU and nn.RNN call; cuDNN on CUDA) on
    a batch-first, right-padded x: one layer, or `layers` stacked, each reading all
    the outputs of the one before (nn.LSTM(num_layers=...)).

    op: torch.lstm, torch.gru, torch.rnn_tanh or torch.rnn_relu; states: [B, U]
    tensors ([h, c] for torch.lstm), where every layer starts; weights: torch's
    layout, [W_ih, W_hh(, b_ih, b_hh)] for each layer in turn. Returns the last
    layer's outputs [B, T, U] and final states.
    Without lengths every step is valid. With lengths (each >= 1) the steps past a
    row's length are padding and the final states are those of its last valid step.
    Either the rows are packed (packed=True, or when pack_rows() says it pays): the
    kernel skips the padding, whose outputs are 0. Or the padded batch runs (on the
    CPU only up to its longest row) and h is gathered from the outputs; the final
    states are then [h] alone (LSTM's c is not known). outputs=False: the final
    states alone matter, the outputs are None.
    While traced (tracing(): torch.compile, torch.export, torch.func) nothing of this
    reads the data: with lengths, fused_rnn_static gives the same numbers.
    """
    if tracing():
        if torch.compiler.is_compiling() and torch.is_grad_enabled() and not x.requires_grad:
            # torch.compile with autograd fails on a fused RNN op whose input needs no
            # gradient (torch 2.13's aot_autograd: "expected all tensors_saved_with_vc_check
            # to be Tensors"): x, exactly, but reading a weight; its gradient there is 0
            x = torch.where(torch.ones((), dtype=torch.bool, device=x.device), x, weights[0][0, 0])
        if torch.compiler.is_exporting():  # one operator call, symbolic in batch and time
            kind = next(k for k, v in RNN_OPS.items() if v is op)
            y, *final = FUSED_RNN_OPERATOR(
                kind, x, list(states), list(weights), lengths, packed, layers
            )
            return (y if outputs else None), final
        if lengths is not None:
            return fused_rnn_static(op, x, states, weights, lengths, packed, layers, outputs)
    lstm = op is torch.lstm
    hx = [s.expand(layers, *s.shape).contiguous() for s in states]
    bias = len(weights) == 4 * layers
    train = torch.is_grad_enabled()
    cut = 0
    if lengths is not None and x.device.type == "cpu":  # (CUDA: not measured, as it is)
        longest = int(lengths.max())
        packed = packed or pack_rows(op, states[0].shape[1], lengths, longest)
        cut = x.shape[1] - longest  # steps that are padding in every row
    if lengths is not None and packed:
        seq = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        assert seq.sorted_indices is not None and seq.unsorted_indices is not None
        hx = [h.index_select(1, seq.sorted_indices) for h in hx]
        start = tuple(hx) if lstm else hx[0]
        y, *final = op(seq.data, seq.batch_sizes, start, weights, bias, layers, 0.0, train, False)
        final = [h[-1].index_select(0, seq.unsorted_indices) for h in final]
        if not outputs:
            return None, final
        y = PackedSequence(y, seq.batch_sizes, seq.sorted_indices, seq.unsorted_indices)
        y, _ = pad_packed_sequence(y, batch_first=True, total_length=x.shape[1])
        return y, final
    if cut:
        x = x[:, : x.shape[1] - cut]
    start = tuple(hx) if lstm else hx[0]
    y, *final = op(x, start, weights, bias, layers, 0.0, train, False, True)
    if lengths is None:
        return y, [h[-1] for h in final]
    h = y[torch.arange(len(y), device=y.device), lengths - 1]  # at each row's last valid step
    if not outputs:
        return None, [h]
    return (F.pad(y, (0, 0, 0, cut)) if cut else y), [h]  # the cut steps back, as 0


def fused_rnn_static(
    op: Callable,
    x: Tensor,
    states: Sequence[Tensor],
    weights: Sequence[Tensor],
    lengths: Tensor,
    final_c: bool = False,
    layers: int = 1,
    outputs: bool = True,
) -> tuple[Tensor | None, list[Tensor]]:
    """fused_rnn with lengths, shape-static (what torch.compile and torch.export see):
    the padded batch runs over every step, whatever the lengths, and h is gathered
    at each row's last valid step; the same numbers as the packed or cut kernels.

    final_c (LSTM: the final c is needed, where fused_rnn packs): the top layer
    reads one more input feature, 1 at the padding steps and 0 at the valid ones,
    whose weights are -big for the input gate, +big for the forget gate and 0 for
    the others, with x zeroed at the padding steps. big exceeds the largest
    |recurrent_kernel row| sum + |biases| (|h| <= 1 under tanh) by 1000, so at a
    padding step sigmoid gives exactly f = 1 and i = 0 (in float32 and float64) and
    c' = 1 * c + 0 * g = c: the final c of the kernel is, bit for bit, the c of the
    last valid step. At valid steps the extra feature adds 0 to every gate. The
    layers below the top one (a stack) run first, in one call."""
    lstm = op is torch.lstm
    train = torch.is_grad_enabled()
    per = len(weights) // layers  # 4 with biases, else 2
    steps = torch.arange(x.shape[1], device=x.device)
    valid = steps < lengths[:, None]  # [B, T]
    if lstm and final_c:
        top = list(weights[-per:])
        if layers > 1:  # the layers below, outputs only
            below = [s.expand(layers - 1, *s.shape).contiguous() for s in states]
            hx_below = (below[0], below[1])
            x, _, _ = op(x, hx_below, weights[:-per], per == 4, layers - 1, 0.0, train, False, True)
            layers = 1
        w_ih, w_hh = top[0], top[1]
        units = w_hh.shape[1]
        with torch.no_grad():
            big = w_hh.abs().sum(1)
            for b in top[2:]:
                big = big + b.abs()
            big = big.max() + 1000.0
            gates = torch.tensor([-1.0, 1.0, 0.0, 0.0], dtype=w_ih.dtype, device=w_ih.device)
            column = gates.repeat_interleave(units) * big  # [4U]: gates i, f, g, o
        pad = (~valid).to(x.dtype)[..., None]
        x = torch.cat([torch.where(valid[..., None], x, 0.0), pad], dim=-1)
        weights = [torch.cat([w_ih, column[:, None]], dim=1), *top[1:]]
    hx = [s.expand(layers, *s.shape).contiguous() for s in states]
    start = tuple(hx) if lstm else hx[0]
    y, *final = op(x, start, weights, per == 4, layers, 0.0, train, False, True)
    h = y[torch.arange(y.shape[0], device=y.device), lengths - 1]  # at each row's last valid step
    states_out = [h, final[1][-1]] if lstm and final_c else [h]
    return (y if outputs else None), states_out


RNN_OPS: dict[str, Callable] = {
    "lstm": torch.lstm,
    "gru": torch.gru,
    "rnn_tanh": torch.rnn_tanh,
    "rnn_relu": torch.rnn_relu,
}


def rnn_kernel(
    kind: str,
    x: Tensor,
    states: list[Tensor],
    weights: list[Tensor],
    lengths: Tensor | None,
    final_c: bool,
    layers: int,
) -> list[Tensor]:
    """The shape-static fused RNN (fused_rnn_static; without lengths, the plain op):
    [outputs, *final states]. What the operator seqdsl::fused_rnn runs."""
    op = RNN_OPS[kind]
    if lengths is not None:
        y, final = fused_rnn_static(op, x, states, weights, lengths, final_c, layers)
        assert y is not None
        return [y.contiguous(), *final]
    hx = [s.expand(layers, *s.shape).contiguous() for s in states]
    start = tuple(hx) if op is torch.lstm else hx[0]
    bias = len(weights) == 4 * layers
    y, *last = op(x, start, weights, bias, layers, 0.0, False, False, True)
    # fresh outputs, as the fake ones: the kernel's y may be time-major, h[-1] a view
    return [y.contiguous(), *(h[-1].clone() if layers > 1 else h[-1] for h in last)]


def rnn_kernel_fake(
    kind: str,
    x: Tensor,
    states: list[Tensor],
    weights: list[Tensor],
    lengths: Tensor | None,
    final_c: bool,
    layers: int,
) -> list[Tensor]:
    """rnn_kernel's output shapes, symbolic in batch and time (torch.export)."""
    batch, steps, units = x.shape[0], x.shape[1], weights[1].shape[1]
    count = 2 if kind == "lstm" and (lengths is None or final_c) else 1
    return [x.new_empty(batch, steps, units), *(x.new_empty(batch, units) for _ in range(count))]


def rnn_kernel_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
    kind, x, states, weights, lengths, final_c, layers = inputs
    ctx.config = (kind, len(states), lengths is not None, final_c, layers)
    ctx.save_for_backward(x, *states, *weights, *([] if lengths is None else [lengths]))


def rnn_kernel_backward(ctx: Any, grads: list[Tensor | None]) -> tuple[Any, ...]:
    """The gradients of rnn_kernel, by running it again under autograd (the fused
    ops have their own backward)."""
    kind, count, has_lengths, final_c, layers = ctx.config
    saved = list(ctx.saved_tensors)
    lengths = saved.pop() if has_lengths else None
    leaves = [t.detach().requires_grad_(t.is_floating_point()) for t in saved]
    x, states, weights = leaves[0], leaves[1 : 1 + count], leaves[1 + count :]
    with torch.enable_grad():
        outs = rnn_kernel(kind, x, states, weights, lengths, final_c, layers)
        pairs = [(o, g) for o, g in zip(outs, grads, strict=True) if g is not None]
        wanted = [t for t in leaves if t.requires_grad]
        got = iter(
            torch.autograd.grad(
                [o for o, _ in pairs], wanted, [g for _, g in pairs], allow_unused=True
            )
        )
    result = [next(got) if t.requires_grad else None for t in leaves]
    return None, result[0], result[1 : 1 + count], result[1 + count :], None, None, None


def define_rnn_operator() -> Any:
    """Register the operator seqdsl::fused_rnn (once per process: a standalone
    generated module that copies this finds it registered by seqdsl, or registers
    it): torch.export keeps one call of it, with symbolic batch and time, where it
    would unroll torch's fused RNN ops into one step per time step. Its
    implementation is rnn_kernel; an exported program that calls it needs this
    module (or the generated one) imported to run."""
    if hasattr(torch.ops.seqdsl, "fused_rnn"):
        return torch.ops.seqdsl.fused_rnn
    op = torch.library.custom_op("seqdsl::fused_rnn", rnn_kernel, mutates_args=())
    op.register_fake(rnn_kernel_fake)
    op.register_autograd(rnn_kernel_backward, setup_context=rnn_kernel_context)
    return torch.ops.seqdsl.fused_rnn


FUSED_RNN_OPERATOR = define_rnn_operator()


def check_not_vmapped(name: str, x: Tensor) -> None:
    """A stateful layer refuses torch.func.vmap: its states belong to one fixed batch
    and would leave the vmapped function."""
    if vmapped(x):
        raise ValueError(
            f"layer `{name}` is stateful: its states belong to one fixed batch, so it "
            "cannot run under torch.func.vmap (call the model on each batch instead)"
        )


def carried_states(layer: Any) -> list[Tensor]:
    """A stateful layer's states from the call before (its buffers): copies under
    torch.compile, where carry_state updates the buffers in place (autograd may
    still need the values read)."""
    states = [getattr(layer, state) for state in layer.state_names]
    if torch.compiler.is_compiling():
        states = [s.clone() for s in states]
    return states


def carry_state(layer: nn.Module, state: str, value: Tensor) -> None:
    """A stateful layer's buffer `state` takes `value` (detached) for the next call:
    in place under torch.compile and torch.export, which record it as a buffer
    mutation (an assignment would be lost from the exported program); else assigned
    (autograd may still need the old value)."""
    if torch.compiler.is_compiling():
        getattr(layer, state).copy_(value.detach())
    else:
        setattr(layer, state, value.detach())


def carry_forward(y: Tensor, mask: Tensor) -> Tensor:
    """masked_output=carry: a masked step repeats the last valid output (0 before the first)."""
    steps = torch.arange(y.shape[1], device=y.device)
    last = torch.where(mask, steps, -1).cummax(1).values  # the last valid step so far
    return torch.where((last >= 0)[..., None], gather_steps(y, last.clamp(min=0)), 0.0)


class Recurrent(nn.Module):
    """What LSTM, GRU and SimpleRNN share: Keras' rules for masks, direction and state.

    A masked step is skipped: every state keeps its value, so the final states are
    those of the valid steps alone, and a fully masked row keeps its initial state
    and outputs 0. With return_sequences the output at a masked step is 0
    (masked_output="zero"), or the last valid output, 0 before the first ("carry").
    go_backwards reads the steps in reverse and returns the outputs in that
    reversed order, as Keras does.
    fused: torch's fused kernel (fused_rnn); else Keras' step function in a loop
    (also under torch.func.vmap, where the fused ops have no batching rule).
    packed: with a mask, the fused kernel always packs the rows (LSTM's final c is
    needed: return_state or stateful).
    dropout and recurrent_dropout (training only) use one keep-mask per sequence,
    as Keras: dropout_masks["{name}/input"] [B, F] and ["{name}/recurrent"] [B, U]
    when given, else drawn.
    stateful_batch: the final states are carried from call to call (buffers).
    forward(x, mask, below=[...]) runs a stack: the layers below this one, each
    reading all the outputs of the one before under the same mask, from x up,
    in one call of the fused op (num_layers = len(below) + 1, as nn.LSTM).
    """

    state_names: tuple[str, ...] = ("h",)
    op: Callable = torch.rnn_tanh
    # a subclass's weights, in Keras' layout
    kernel: nn.Parameter
    recurrent_kernel: nn.Parameter
    bias: nn.Parameter | None

    def __init__(
        self,
        name: str,
        units: int,
        *,
        mask_side: str | None = None,
        fused: bool = True,
        packed: bool = False,
        return_sequences: bool = False,
        return_state: bool = False,
        go_backwards: bool = False,
        masked_output: str = "zero",
        dropout: float = 0.0,
        recurrent_dropout: float = 0.0,
        stateful_batch: int | None = None,
    ):
        super().__init__()
        self.name = name  # its weights' canonical prefix, and its dropout masks' key
        self.units = units
        self.mask_side = mask_side  # of the input: "post", "pre", "any" or None
        self.fused = fused  # torch's fused kernel, or Keras' step function in a loop
        self.packed = packed  # pack the rows: LSTM's final c is needed
        self.return_sequences = return_sequences
        self.return_state = return_state
        self.go_backwards = go_backwards
        self.masked_output = masked_output
        self.dropout = dropout
        self.recurrent_dropout = recurrent_dropout
        self.stateful = stateful_batch is not None
        self.cached_weights: tuple[list, list[Tensor]] | None = None  # fused_weights()
        if stateful_batch is not None:  # states carried from call to call: buffers
            for state in self.state_names:
                self.register_buffer(state, torch.zeros(stateful_batch, units), persistent=False)

    def forward(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        initial_state: Sequence[Tensor] | None = None,
        dropout_masks: Mapping | None = None,
        training: bool | None = None,
        below: Sequence[Recurrent] = (),
    ) -> Any:
        if initial_state is not None:
            states = list(initial_state)
        elif self.stateful:
            check_not_vmapped(self.name, x)
            states = carried_states(self)
        else:
            states = [x.new_zeros(x.shape[0], self.units)] * len(self.state_names)  # read only
        recurrent_mask = None
        training = self.training if training is None else training
        if training and self.dropout:
            shape = (x.shape[0], x.shape[2])
            x = x * keep_mask(dropout_masks, self.name + "/input", shape, self.dropout, x)[:, None]
        if training and self.recurrent_dropout:
            shape, rate = (x.shape[0], self.units), self.recurrent_dropout
            recurrent_mask = keep_mask(dropout_masks, self.name + "/recurrent", shape, rate, x)
        side = self.mask_side
        if self.go_backwards:
            x = x.flip(1)
            mask = None if mask is None else mask.flip(1)
            side = {"post": "pre", "pre": "post"}.get(side, side) if side is not None else None
        if self.fused and not vmapped(x):
            y, final = self.scan_fused(x, mask, side, states, below)
        elif below:  # a stack under vmap: each layer's step function in turn
            for layer in below:
                x = layer.scan_loop(x, mask, states, None)[0]
            y, final = self.scan_loop(x, mask, states, recurrent_mask)
        else:
            y, final = self.scan_loop(x, mask, states, recurrent_mask)
        last = final[0]  # h: in a row with no valid step, the initial state
        if mask is not None and (initial_state is not None or self.stateful):
            last = torch.where(mask.any(1, keepdim=True), last, 0.0)  # which outputs 0 there
        if self.stateful:
            for state, value in zip(self.state_names, final, strict=True):
                carry_state(self, state, value)
        out = y if self.return_sequences else last
        if self.return_sequences and mask is not None and self.masked_output == "carry":
            out = carry_forward(y, mask)
        return (out, *final) if self.return_state else out

    def reset_states(self) -> None:
        """Zero the carried states (as after construction)."""
        for state in self.state_names:
            setattr(self, state, torch.zeros_like(getattr(self, state)))

    def scan_fused(
        self,
        x: Tensor,
        mask: Tensor | None,
        side: str | None,
        states: list[Tensor],
        below: Sequence[Recurrent] = (),
    ) -> tuple[Any, list[Tensor]]:
        """torch's fused kernel: the outputs (0 at masked steps) and the final states.
        The layers `below` this one (a stack) run first, in the same call."""
        if below:
            weights = [w for layer in (*below, self) for w in layer.fused_weights()]
        else:
            weights = self.fused_weights()
        layers = len(below) + 1
        if mask is None:
            return fused_rnn(self.op, x, states, weights, layers=layers)
        assert side is not None
        x, lengths, back = to_right_padding(x, mask, side)
        run = lengths.clamp(min=1)  # an empty row runs one step
        outputs = self.return_sequences  # without, the outputs are not made
        y, final = fused_rnn(self.op, x, states, weights, run, self.packed, layers, outputs)
        if y is not None:
            y = torch.where(mask[..., None], y if back is None else gather_steps(y, back), 0.0)
        empty = (lengths == 0)[:, None]  # ran as length 1: restore the initial state
        # (final is [h] alone when the padded batch ran and LSTM's c is not known)
        return y, [torch.where(empty, s0, s) for s0, s in zip(states, final, strict=False)]

    def fused_weights(self) -> list[Tensor]:
        """torch_weights(), contiguous (the fused kernels copy strided weights on
        every call). Without autograd (inference) they are made once and kept while
        the parameters stay the same: an optimizer step, load_canonical, .to() or any
        in-place change of a parameter (not through .data) remakes them."""
        if torch.is_grad_enabled() or tracing():  # (autograd: the copies pass gradients on)
            return [w.contiguous() for w in self.torch_weights()]
        key = [
            (id(p), p._version, p.data_ptr()) for p in self._parameters.values() if p is not None
        ]
        if self.cached_weights is None or self.cached_weights[0] != key:
            self.cached_weights = (key, [w.contiguous() for w in self.torch_weights()])
        return self.cached_weights[1]

    def scan_loop(
        self,
        x: Tensor,
        mask: Tensor | None,
        states: list[Tensor],
        recurrent_mask: Tensor | None,
    ) -> tuple[Tensor, list[Tensor]]:
        """Keras' step function, one step at a time (no fused kernel computes this cell)."""
        inputs = self.input_projection(x)  # x @ kernel (+ bias) for every step at once
        outputs = []
        for t in range(x.shape[1]):
            new = self.step(inputs[:, t], states, recurrent_mask)
            if mask is not None:  # a masked step keeps every state and outputs 0
                valid = mask[:, t, None]
                new = [torch.where(valid, n, s) for n, s in zip(new, states, strict=True)]
                outputs.append(torch.where(valid, new[0], 0.0))
            else:
                outputs.append(new[0])
            states = new
        return torch.stack(outputs, 1), states

    def torch_weights(self) -> list[Tensor]:
        """The weights in the fused op's layout: for torch.lstm and torch.rnn_*,
        kernel.T, recurrent_kernel.T, the bias and a zero bias_hh (GRU has its own)."""
        weights = [self.kernel.t(), self.recurrent_kernel.t()]
        if self.bias is not None:
            weights += [self.bias, torch.zeros_like(self.bias)]
        return weights

    def input_projection(self, x: Tensor) -> Tensor:
        """x @ kernel (+ bias) for every step at once (GRU has its own)."""
        return x @ self.kernel if self.bias is None else x @ self.kernel + self.bias

    def step(
        self, inputs: Tensor, states: list[Tensor], recurrent_mask: Tensor | None
    ) -> list[Tensor]:
        """Keras' step function: the new states, h first (a subclass's)."""
        raise NotImplementedError


class LSTM(Recurrent):
    """Keras' LSTM, also RNN(LSTMCell): kernel [F, 4U], recurrent_kernel [U, 4U],
    bias [4U], gates i, f, c, o."""

    state_names = ("h", "c")
    op = torch.lstm

    def __init__(
        self,
        name: str,
        input_size: int,
        units: int,
        *,
        use_bias: bool = True,
        activation: Callable = torch.tanh,
        recurrent_activation: Callable = torch.sigmoid,
        **options: Any,
    ):
        super().__init__(name, units, **options)
        self.kernel = nn.Parameter(torch.zeros(input_size, 4 * units))
        self.recurrent_kernel = nn.Parameter(torch.zeros(units, 4 * units))
        self.bias = nn.Parameter(torch.zeros(4 * units)) if use_bias else None
        self.activation = activation
        self.recurrent_activation = recurrent_activation

    def step(
        self, inputs: Tensor, states: list[Tensor], recurrent_mask: Tensor | None
    ) -> list[Tensor]:
        h, c = states
        if recurrent_mask is not None:
            h = h * recurrent_mask
        i, f, g, o = (inputs + h @ self.recurrent_kernel).chunk(4, dim=-1)
        c = self.recurrent_activation(f) * c + self.recurrent_activation(i) * self.activation(g)
        return [self.recurrent_activation(o) * self.activation(c), c]


class GRU(Recurrent):
    """Keras' GRU, also RNN(GRUCell): kernel [F, 3U], recurrent_kernel [U, 3U], gates
    z, r, h; bias [2, 3U] (input and recurrent rows) with reset_after=True, else [3U]."""

    op = torch.gru

    def __init__(
        self,
        name: str,
        input_size: int,
        units: int,
        *,
        use_bias: bool = True,
        reset_after: bool = True,
        activation: Callable = torch.tanh,
        recurrent_activation: Callable = torch.sigmoid,
        **options: Any,
    ):
        super().__init__(name, units, **options)
        self.reset_after = reset_after
        self.kernel = nn.Parameter(torch.zeros(input_size, 3 * units))
        self.recurrent_kernel = nn.Parameter(torch.zeros(units, 3 * units))
        bias_shape = (2, 3 * units) if reset_after else (3 * units,)
        self.bias = nn.Parameter(torch.zeros(bias_shape)) if use_bias else None
        self.activation = activation
        self.recurrent_activation = recurrent_activation

    def torch_weights(self) -> list[Tensor]:
        """torch.gru's layout: gate blocks r, z, n (Keras: z, r, h), transposed; the input
        and recurrent biases stay apart (the candidate uses r * (W_hn h + b_hn))."""

        def rzn(w: Tensor) -> Tensor:
            z, r, h = w.chunk(3, dim=-1)
            return torch.cat([r, z, h], dim=-1)

        weights = [rzn(self.kernel).t(), rzn(self.recurrent_kernel).t()]
        if self.bias is not None:
            weights += [rzn(self.bias[0]), rzn(self.bias[1])]
        return weights

    def input_projection(self, x: Tensor) -> Tensor:
        if self.bias is None:
            return x @ self.kernel
        return x @ self.kernel + (self.bias[0] if self.reset_after else self.bias)

    def step(
        self, inputs: Tensor, states: list[Tensor], recurrent_mask: Tensor | None
    ) -> list[Tensor]:
        (h,) = states
        hr = h if recurrent_mask is None else h * recurrent_mask
        x_z, x_r, x_h = inputs.chunk(3, dim=-1)
        if self.reset_after:
            inner = hr @ self.recurrent_kernel
            if self.bias is not None:
                inner = inner + self.bias[1]
            h_z, h_r, h_h = inner.chunk(3, dim=-1)
            z = self.recurrent_activation(x_z + h_z)
            r = self.recurrent_activation(x_r + h_r)
            candidate = self.activation(x_h + r * h_h)
        else:
            k_z, k_r, k_h = self.recurrent_kernel.chunk(3, dim=-1)
            z = self.recurrent_activation(x_z + hr @ k_z)
            r = self.recurrent_activation(x_r + hr @ k_r)
            candidate = self.activation(x_h + (r * hr) @ k_h)
        return [z * h + (1.0 - z) * candidate]


class SimpleRNN(Recurrent):
    """Keras' SimpleRNN, also RNN(SimpleRNNCell): kernel [F, U], recurrent_kernel [U, U],
    bias [U]."""

    def __init__(
        self,
        name: str,
        input_size: int,
        units: int,
        *,
        use_bias: bool = True,
        activation: Callable = torch.tanh,
        **options: Any,
    ):
        super().__init__(name, units, **options)
        self.kernel = nn.Parameter(torch.zeros(input_size, units))
        self.recurrent_kernel = nn.Parameter(torch.zeros(units, units))
        self.bias = nn.Parameter(torch.zeros(units)) if use_bias else None
        self.activation = activation
        self.op = torch.rnn_relu if activation is torch.relu else torch.rnn_tanh

    def step(
        self, inputs: Tensor, states: list[Tensor], recurrent_mask: Tensor | None
    ) -> list[Tensor]:
        (h,) = states
        if recurrent_mask is not None:
            h = h * recurrent_mask
        return [self.activation(inputs + h @ self.recurrent_kernel)]


class Bidirectional(nn.Module):
    """Keras' Bidirectional: the forward layer, and a go_backwards copy whose output
    sequence is flipped back to input order, merged by merge_mode ("none": both).
    Initial and returned states: the forward layer's, then the backward layer's.
    The submodules are `forward_layer` and `backward_layer`, Keras' attribute names
    (`forward` would shadow nn.Module.forward for torch.func, torch.export and
    torch.jit); their weights keep the canonical keys "{name}/forward/..." and
    "{name}/backward/..." (SeqdslModule.WEIGHTS maps them to state_dict keys).
    The backward layer may have its own configuration (Keras' backward_layer).
    Around stateful layers each direction carries its own states from call to call
    (the backward one's: those after reading the batch in reverse), as Keras;
    reset_states zeroes both."""

    def __init__(
        self, name: str, forward_layer: nn.Module, backward_layer: nn.Module, merge_mode="concat"
    ):
        super().__init__()
        self.name = name
        self.forward_layer = forward_layer
        self.backward_layer = backward_layer
        self.merge_mode = merge_mode

    def forward(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        initial_state: Sequence[Tensor] | None = None,
        dropout_masks: Mapping | None = None,
        training: bool | None = None,
    ) -> Any:
        fw: Any = self.forward_layer
        bw: Any = self.backward_layer
        start_fw = start_bw = None
        if initial_state is not None:
            n = len(fw.state_names)
            start_fw, start_bw = initial_state[:n], initial_state[n:]
        kw = {"mask": mask, "dropout_masks": dropout_masks, "training": training}
        out_fw = fw(x, initial_state=start_fw, **kw)
        out_bw = bw(x, initial_state=start_bw, **kw)
        if not fw.return_state:
            out_fw, out_bw = (out_fw,), (out_bw,)
        (y_fw, *s_fw), (y_bw, *s_bw) = out_fw, out_bw
        if fw.return_sequences:
            y_bw = y_bw.flip(1)  # back to input order
        if self.merge_mode == "concat":
            y = [torch.cat([y_fw, y_bw], dim=-1)]
        elif self.merge_mode == "sum":
            y = [y_fw + y_bw]
        elif self.merge_mode == "mul":
            y = [y_fw * y_bw]
        elif self.merge_mode == "ave":
            y = [(y_fw + y_bw) / 2.0]
        else:
            y = [y_fw, y_bw]
        out = (*y, *s_fw, *s_bw)
        return out[0] if len(out) == 1 else out

    def reset_states(self) -> None:
        """Zero the carried states of both directions (stateful layers inside)."""
        fw: Any = self.forward_layer
        bw: Any = self.backward_layer
        fw.reset_states()
        bw.reset_states()


# --------------------------------------------------------------------------
# cell blocks: RNN(MyCell(...)) in a Python loop over time


def step_mask(mask: Tensor, rank: int) -> Tensor:
    """A [B, T] mask as [B, T, 1, ...], against values with `rank` axes per step."""
    return mask.reshape(*mask.shape, *[1] * rank)


def where_valid(
    valid: Sequence[Sequence[Tensor]], t: int, new: Sequence[Tensor], old: Sequence[Tensor]
) -> list[Tensor]:
    """Each of `new` where step t is valid, else the one of `old` (valid[i][t]: [B, 1, ...])."""
    return [torch.where(v[t], n, o) for v, n, o in zip(valid, new, old, strict=True)]


class CellRNN(nn.Module):
    """keras.layers.RNN around a cell block: the subclass's `step` (the cell's equations
    for one time step) in a Python loop over time.

    A masked step keeps every state: torch.where with that step's mask, split off once
    before the loop, so the loop has no host synchronisation and runs the same ops at
    every step whatever the mask. The final states are those of the valid steps alone;
    a fully masked row keeps its initial state. With return_sequences an output at a
    masked step is 0 (masked_output="zero") or the last valid output, 0 before the
    first ("carry"); without it, the output of the last valid step (0 for a row with
    none). go_backwards reads the steps in reverse and returns the outputs in that
    reversed order, as Keras. stateful_batch: the final states are carried from call
    to call (buffers).
    """

    def __init__(
        self,
        name: str,
        states: Mapping[str, Sequence[int]],
        outputs: Sequence[Sequence[int]],
        *,
        return_sequences: bool = False,
        return_state: bool = False,
        go_backwards: bool = False,
        masked_output: str = "zero",
        stateful_batch: int | None = None,
    ):
        super().__init__()
        self.name = name  # its weights' canonical prefix
        self.state_names = tuple(states)  # the cell's states {name: shape without the batch}
        self.state_shapes = tuple(states.values())
        self.output_shapes = tuple(outputs)
        self.return_sequences = return_sequences
        self.return_state = return_state
        self.go_backwards = go_backwards
        self.masked_output = masked_output
        self.stateful = stateful_batch is not None
        if stateful_batch is not None:  # states carried from call to call: buffers
            for state, shape in states.items():
                value = torch.zeros(stateful_batch, *shape)
                self.register_buffer(state, value, persistent=False)

    def project(self, inputs: Sequence[Tensor]) -> Sequence[Tensor]:
        """The per-step sequences `step` reads: the inputs, and what a subclass computes
        from them for every step at once."""
        return inputs

    def step(self, inputs: list[Tensor], states: list[Tensor]) -> tuple[Any, Any]:
        """The cell's equations for one step: (outputs, new states) (a subclass's)."""
        raise NotImplementedError

    def forward(
        self,
        *inputs: Tensor,
        mask: Tensor | None = None,
        initial_state: Sequence[Tensor] | None = None,
        dropout_masks: Mapping | None = None,
        training: bool | None = None,
    ) -> Any:
        # (dropout_masks and training: Bidirectional passes them; a cell block has no dropout)
        x = inputs[0]
        batch, steps = x.shape[:2]
        if initial_state is not None:
            states = list(initial_state)
        elif self.stateful:
            check_not_vmapped(self.name, x)
            states = carried_states(self)
        else:
            states = [x.new_zeros(batch, *shape) for shape in self.state_shapes]
        sequences_in: Sequence[Tensor] = inputs
        if self.go_backwards:
            sequences_in = [x.flip(1) for x in inputs]
            mask = None if mask is None else mask.flip(1)
        per_step = [x.unbind(1) for x in self.project(sequences_in)]  # each sequence split once
        last = [x.new_zeros(batch, *shape) for shape in self.output_shapes]
        sequences: list[list[Tensor]] = [[] for _ in self.output_shapes]
        # the last valid output is carried where it is returned: carry mode, or the last output
        carry = mask is not None and (self.masked_output == "carry" or not self.return_sequences)
        if mask is not None:  # each step's mask, as [B, 1, ...] against each state and output
            ranks = {len(shape) for shape in self.state_shapes + self.output_shapes}
            valid = {r: step_mask(mask, r).unbind(1) for r in ranks}
            state_valid = [valid[len(shape)] for shape in self.state_shapes]
            output_valid = [valid[len(shape)] for shape in self.output_shapes]
        for t in range(steps):
            out, new = self.step([x[t] for x in per_step], states)
            if mask is None:
                states, last = new, out
            else:  # a masked step keeps every state
                states = where_valid(state_valid, t, new, states)
                last = where_valid(output_valid, t, out, last) if carry else out
            if self.return_sequences:
                for seq, y in zip(sequences, last, strict=True):
                    seq.append(y)
        if self.stateful:
            for state, value in zip(self.state_names, states, strict=True):
                carry_state(self, state, value)
        outputs = last
        if self.return_sequences:
            outputs = [torch.stack(seq, 1) for seq in sequences]
        if self.return_sequences and mask is not None and not carry:  # 0 at masked steps
            outputs = [torch.where(step_mask(mask, y.dim() - 2), y, 0.0) for y in outputs]
        out = (*outputs, *states) if self.return_state else tuple(outputs)
        return out[0] if len(out) == 1 else out

    def reset_states(self) -> None:
        """Zero the carried states (as after construction)."""
        for state in self.state_names:
            setattr(self, state, torch.zeros_like(getattr(self, state)))


# --------------------------------------------------------------------------
# extern layers


class Extern(nn.Module):
    """An extern layer: the implementation registered for "torch" with @seqdsl.extern
    (looked up when the module is made; externs={kind: fn} overrides it), called with
    the layer's inputs and mask=, weights= (the declared weights, parameters under
    their canonical names), config= (the declared parameters) and training=. The
    output masks follow the declared mask contract (made in the model's forward);
    check() holds a call to the declaration (debug mode)."""

    def __init__(
        self,
        kind: str,
        name: str,
        weights: Mapping[str, Sequence[int]],
        config: Mapping[str, Any],
        declared: Sequence[Any],
        declaration: str,
        externs: Mapping[str, Callable] | None = None,
    ):
        super().__init__()
        impl = get_extern(kind, "torch", externs)  # ExternError when there is none
        self.fn: Any = impl.fn
        self.returns_mask = impl.returns_mask
        self.kind, self.name, self.config = kind, name, config
        self.declared = declared  # (dtype, shape with None for run-time sizes) per output
        self.declaration = declaration
        self.weight_names = tuple(weights)
        for weight, shape in weights.items():
            self.register_parameter(weight, nn.Parameter(torch.zeros(shape)))
        self.returned_mask: Any = None

    def forward(self, *inputs: Any, mask: Any = None, training: bool = False) -> Any:
        weights = {w: getattr(self, w) for w in self.weight_names}
        out = self.fn(*inputs, mask=mask, weights=weights, config=self.config, training=training)
        if self.returns_mask:  # (outputs, mask): kept for check()
            out, self.returned_mask = out
        return out

    def check(self, out: Any, masks: Sequence[Tensor | None]) -> None:
        """debug: the outputs (number, dtypes, declared sizes) and a returned mask against
        the declaration; `masks` are the declared contract's output masks."""
        outs = list(out) if isinstance(out, (tuple, list)) else [out]
        where = f"{self.kind} (layer {self.name})"
        got = [(str(y.dtype).removeprefix("torch."), tuple(y.shape)) for y in outs]
        check_output_shapes(where, self.declared, got, self.declaration)
        if not self.returns_mask:
            return
        returned = self.returned_mask
        returned = list(returned) if isinstance(returned, (tuple, list)) else [returned]
        if len(returned) != len(masks):
            raise ExternError(
                f"extern layer {where} returned {len(returned)} mask(s) for {len(masks)} "
                f"output(s); the declaration: {self.declaration}"
            )
        for i, (got_mask, want) in enumerate(zip(returned, masks, strict=True)):
            if got_mask is None or want is None:
                same = got_mask is None and want is None
            else:
                got_mask = torch.as_tensor(got_mask, device=want.device)
                same = got_mask.shape == want.shape and torch.equal(got_mask.bool(), want)
            if not same:
                raise ExternError(
                    f"extern layer {where}: the mask it returned for output {i + 1} is not the "
                    f"mask of its declaration ({self.declaration})"
                )


# --------------------------------------------------------------------------
# layers with weights


class Embedding(nn.Module):
    """Keras' Embedding: embeddings [input_dim, output_dim]; the vector of id 0 is not
    zeroed. An id out of the table is an InputError naming the layer (`name`) in eager
    calls (torch's own error names nothing); traced, torch's gather decides."""

    def __init__(self, input_dim: int, output_dim: int, name: str = "Embedding"):
        super().__init__()
        self.name = name
        self.embeddings = nn.Parameter(torch.zeros(input_dim, output_dim))

    def forward(self, ids: Tensor) -> Tensor:
        if tracing():
            return F.embedding(ids.long(), self.embeddings)
        try:
            return F.embedding(ids.long(), self.embeddings)
        except IndexError:  # an id out of range: torch names no input, no id
            n = self.embeddings.shape[0]
            bad = ids[(ids < 0) | (ids >= n)]
            raise InputError(
                f"{self.name}: ids must lie in [0, {n}), got {bad.flatten()[0].item()} "
                f"(ids range {ids.min().item()}..{ids.max().item()})"
            ) from None


class Dense(nn.Module):
    """Keras' Dense on the last axis: kernel [F, units], bias [units]."""

    def __init__(
        self,
        input_size: int,
        units: int,
        *,
        use_bias: bool = True,
        activation: Callable | None = None,
    ):
        super().__init__()
        self.kernel = nn.Parameter(torch.zeros(input_size, units))
        self.bias = nn.Parameter(torch.zeros(units)) if use_bias else None
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        y = x @ self.kernel
        if self.bias is not None:
            y = y + self.bias
        return y if self.activation is None else self.activation(y)


class LayerNormalization(nn.Module):
    """Keras' LayerNormalization over the last axis: gamma, beta [F]."""

    def __init__(
        self, features: int, *, epsilon: float = 1e-3, center: bool = True, scale: bool = True
    ):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(features)) if scale else None
        self.beta = nn.Parameter(torch.zeros(features)) if center else None
        self.epsilon = epsilon

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, x.shape[-1:], self.gamma, self.beta, self.epsilon)


class BatchNormalization(nn.Module):
    """Keras' BatchNormalization over the last axis: gamma, beta (weights) and the
    moving_mean, moving_variance buffers. Inference uses the moving statistics.
    Training uses the moments of the valid steps (population variance) and updates
    moving = momentum * moving + (1 - momentum) * batch (Keras' convention)."""

    moving_mean: Tensor
    moving_variance: Tensor

    def __init__(
        self,
        features: int,
        *,
        momentum: float = 0.99,
        epsilon: float = 1e-3,
        center: bool = True,
        scale: bool = True,
    ):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(features)) if scale else None
        self.beta = nn.Parameter(torch.zeros(features)) if center else None
        self.register_buffer("moving_mean", torch.zeros(features))
        self.register_buffer("moving_variance", torch.ones(features))
        self.momentum = momentum
        self.epsilon = epsilon

    def forward(
        self, x: Tensor, mask: Tensor | None = None, training: bool | None = None
    ) -> Tensor:
        training = self.training if training is None else training
        if training:
            axes = tuple(range(x.dim() - 1))
            if mask is None:
                weight = torch.ones_like(x[..., :1])
            else:  # [B, T] -> [B, T, ..., 1]
                weight = mask.reshape(*mask.shape, *[1] * (x.dim() - 2)).to(x.dtype)
                weight = weight.expand(*x.shape[:-1], 1)
            count = weight.sum(axes).clamp(min=1.0)
            mean = (x * weight).sum(axes) / count
            variance = ((x - mean) ** 2 * weight).sum(axes) / count
            with torch.no_grad():
                m = self.momentum
                self.moving_mean.copy_(m * self.moving_mean + (1.0 - m) * mean)
                self.moving_variance.copy_(m * self.moving_variance + (1.0 - m) * variance)
        else:
            mean, variance = self.moving_mean, self.moving_variance
        y = (x - mean) * torch.rsqrt(variance + self.epsilon)
        if self.gamma is not None:
            y = y * self.gamma
        if self.beta is not None:
            y = y + self.beta
        return y


# --------------------------------------------------------------------------
# time-changing layers


def window_mask(
    mask: Tensor, size: int, stride: int, dilation: int, padding: str, steps: int
) -> Tensor:
    """The output mask of Conv1D and pooling. valid: output step j is valid iff every
    input step of its window is; same, causal: iff its anchor input step j * stride is.
    For post/pre masks this maps each row's length L to max(0, (L - k_eff) // s + 1)
    (valid) or ceil(L / s) (same, causal)."""
    if padding != "valid":
        return mask[:, ::stride][:, :steps]
    span = (size - 1) * dilation + 1  # the steps a window covers
    if mask.shape[1] < span:  # no whole window: 0 steps
        return mask[:, :0]
    windows = (~mask).unfold(1, span, stride)[..., ::dilation]  # [B, T', size]: invalid
    return ~windows.any(-1)[:, :steps]


class Conv1D(nn.Module):
    """Keras' Conv1D on [B, T, F]: kernel [k, F, filters], bias [filters].
    Masked input steps are zeroed first, so padding never leaks into a valid window."""

    def __init__(
        self,
        input_size: int,
        filters: int,
        kernel_size: int,
        *,
        strides: int = 1,
        padding: str = "valid",
        dilation_rate: int = 1,
        use_bias: bool = True,
        activation: Callable | None = None,
    ):
        super().__init__()
        self.kernel = nn.Parameter(torch.zeros(kernel_size, input_size, filters))
        self.bias = nn.Parameter(torch.zeros(filters)) if use_bias else None
        self.strides, self.padding, self.dilation_rate = strides, padding, dilation_rate
        self.activation = activation

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        if mask is not None:
            x = torch.where(mask[..., None], x, 0.0)
        k_eff = self.dilation_rate * (self.kernel.shape[0] - 1) + 1
        before, after, steps = window_padding(x.shape[1], k_eff, self.strides, self.padding)
        if x.shape[1] + before + after < k_eff:  # no whole window: 0 steps (conv1d needs one)
            y = x.new_zeros(x.shape[0], 0, self.kernel.shape[2])
            return y if self.activation is None else self.activation(y)
        x = F.pad(x.transpose(1, 2), (before, after))
        weight = self.kernel.permute(2, 1, 0)  # torch's [filters, F, k]
        y = F.conv1d(x, weight, self.bias, stride=self.strides, dilation=self.dilation_rate)
        y = y[..., :steps].transpose(1, 2).contiguous()
        return y if self.activation is None else self.activation(y)


def pool1d(
    x: Tensor, mask: Tensor | None, kind: str, size: int, stride: int, padding: str
) -> Tensor:
    """MaxPooling1D ("max") / AveragePooling1D ("mean") over the valid steps of each
    window (padding zeros are not steps); 0 for a window with none."""
    before, after, steps = window_padding(x.shape[1], size, stride, padding)
    if x.shape[1] + before + after < size:  # no whole window: 0 steps (unfold needs one)
        after = size - x.shape[1] - before
    valid = x.new_ones(x.shape[:2]) if mask is None else mask.to(x.dtype)
    # windows [B, steps, F, size] and their valid steps [B, steps, 1, size]
    windows = F.pad(x, (0, 0, before, after)).unfold(1, size, stride)[:, :steps]
    valid = F.pad(valid, (before, after)).unfold(1, size, stride)[:, :steps, None] > 0
    count = valid.sum(-1)
    if kind == "max":
        y = torch.where(valid, windows, -torch.inf).amax(-1)
    else:
        y = torch.where(valid, windows, 0.0).sum(-1) / count.clamp(min=1)
    return torch.where(count > 0, y, 0.0)


def global_pool(x: Tensor, mask: Tensor | None, kind: str, keepdims: bool = False) -> Tensor:
    """GlobalMaxPooling1D ("max") / GlobalAveragePooling1D ("mean") over the valid
    steps; 0 for a row with none."""
    if mask is None:
        y = x.amax(1) if kind == "max" else x.mean(1)
    else:
        valid = mask[..., None]
        count = valid.sum(1)
        if kind == "max":
            y = torch.where(valid, x, -torch.inf).amax(1)
        else:
            y = torch.where(valid, x, 0.0).sum(1) / count.clamp(min=1)
        y = torch.where(count > 0, y, 0.0)
    return y[:, None] if keepdims else y


def temporal_softmax(x: Tensor, mask: Tensor) -> Tensor:
    """Softmax over time, per feature, over each row's valid steps; 0 at masked
    steps and in rows with none."""
    valid = mask[..., None]
    top = torch.where(valid, x, -torch.inf).amax(1, keepdim=True)
    top = torch.where(torch.isfinite(top), top, 0.0)
    e = torch.exp(torch.where(valid, x - top, -torch.inf))
    total = e.sum(1, keepdim=True)
    return e / torch.where(total > 0, total, 1.0)


# --------------------------------------------------------------------------
# attention


def attention_mask(
    query: Tensor,
    key: Tensor,
    key_mask: Tensor | None,
    query_mask: Tensor | None = None,
    causal: bool = False,
) -> Tensor | None:
    """Which key steps each query step attends to, bool [B, Tq, Tk], or None for all:
    the valid key steps, the valid query steps (MultiHeadAttention: a masked query
    step attends to nothing) and, with causal, the steps j <= i."""
    allowed = None if key_mask is None else key_mask[:, None, :]
    if query_mask is not None:
        valid = query_mask[:, :, None]
        allowed = valid if allowed is None else allowed & valid
    if causal:
        steps = torch.ones(query.shape[1], key.shape[1], dtype=torch.bool, device=query.device)
        allowed = steps.tril()[None] if allowed is None else allowed & steps.tril()
    if allowed is None:
        return None
    return allowed.expand(query.shape[0], query.shape[1], key.shape[1])


def masked_softmax(scores: Tensor, allowed: Tensor | None) -> Tensor:
    """Softmax over the last axis among the allowed entries: 0 elsewhere, and 0 for
    a row with none (Keras gives such a row a uniform average)."""
    if allowed is None:
        return torch.softmax(scores, dim=-1)
    scores = scores.masked_fill(~allowed, -torch.inf)
    top = scores.amax(-1, keepdim=True)
    e = torch.exp(scores - torch.where(torch.isfinite(top), top, 0.0))
    total = e.sum(-1, keepdim=True)
    return e / torch.where(total > 0, total, 1.0)


def attend(
    scores: Tensor,
    allowed: Tensor | None,
    value: Tensor,
    dropping: bool,
    rate: float,
    dropout_masks: Mapping | None,
    key: str,
) -> tuple[Tensor, Tensor]:
    """The explicit attention path (Attention and MultiHeadAttention): the weights, a
    softmax of `scores` over the allowed steps; in training (dropping) dropout on
    them, dropout_masks[key] when given, else drawn. Returns (weights @ value, weights)."""
    weights = masked_softmax(scores, allowed)
    used = weights
    if dropping:
        used = weights * keep_mask(dropout_masks, key, weights.shape, rate, weights)
    return used @ value, weights


def fused_attention(
    query: Tensor, key: Tensor, value: Tensor, allowed: Tensor | None, scale: float
) -> Tensor:
    """softmax(query . key * scale) @ value on F.scaled_dot_product_attention, with a
    boolean mask (True: attend). SDPA gives NaN in a row with no allowed key: such
    rows attend to every key, then get 0."""
    if allowed is None:
        return F.scaled_dot_product_attention(query, key, value, scale=scale)
    some = allowed.any(-1, keepdim=True)
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=allowed | ~some, scale=scale)
    return torch.where(some, out, 0.0)


class Attention(nn.Module):
    """Keras' Attention (Luong): the weights are a softmax of the scores over the valid
    key steps (and the steps j <= i with causal); the output is weights @ value, 0 at
    the masked query steps. A query step with no valid key gets weights 0 and output
    0 (Keras gives it the mean of the values). The scores are query . key, times
    `scale` with use_scale.
    score_mode="concat": concat_score_weight * sum(tanh(scale * (query + key))).
    sdpa: F.scaled_dot_product_attention computes the output (no weights to return).
    Dropout on the weights in training: dropout_masks["{name}"] [B, Tq, Tk] when
    given, else drawn; the weights are then computed explicitly.
    """

    def __init__(
        self,
        name: str,
        *,
        use_scale: bool = False,
        score_mode: str = "dot",
        dropout: float = 0.0,
        causal: bool = False,
        return_scores: bool = False,
        sdpa: bool = True,
    ):
        super().__init__()
        self.name = name  # its weights' canonical prefix, and its dropout mask's key
        self.scale = nn.Parameter(torch.ones(())) if use_scale else None
        concat = score_mode == "concat"
        self.concat_score_weight = nn.Parameter(torch.ones(())) if concat else None
        self.dropout = dropout
        self.causal = causal
        self.return_scores = return_scores
        self.sdpa = sdpa

    def scores(self, query: Tensor, key: Tensor) -> Tensor:
        """[B, Tq, Tk]."""
        if self.concat_score_weight is not None:
            pairs = query[:, :, None] + key[:, None]
            if self.scale is not None:
                pairs = pairs * self.scale
            return self.concat_score_weight * torch.tanh(pairs).sum(-1)
        scores = query @ key.transpose(1, 2)
        return scores if self.scale is None else scores * self.scale

    def forward(
        self,
        query: Tensor,
        value: Tensor,
        key: Tensor | None = None,
        query_mask: Tensor | None = None,
        key_mask: Tensor | None = None,
        dropout_masks: Mapping | None = None,
        training: bool | None = None,
    ) -> Any:
        key = value if key is None else key
        allowed = attention_mask(query, key, key_mask, causal=self.causal)
        training = self.training if training is None else training
        dropping = training and self.dropout > 0
        if self.sdpa and not dropping:
            scaled = query if self.scale is None else query * self.scale
            out = fused_attention(scaled, key, value, allowed, scale=1.0)
        else:
            out, weights = attend(
                self.scores(query, key),
                allowed,
                value,
                dropping,
                self.dropout,
                dropout_masks,
                self.name,
            )
        if query_mask is not None:
            out = torch.where(query_mask[..., None], out, 0.0)
        return (out, weights) if self.return_scores else out


class Projection(nn.Module):
    """A MultiHeadAttention sub-layer's weights, Keras' EinsumDense: kernel and bias."""

    def __init__(self, kernel_shape: Sequence[int], bias_shape: Sequence[int] | None = None):
        super().__init__()
        self.kernel = nn.Parameter(torch.zeros(kernel_shape))
        self.bias = nn.Parameter(torch.zeros(bias_shape)) if bias_shape is not None else None


class MultiHeadAttention(nn.Module):
    """Keras' MultiHeadAttention. query, key and value are projected to heads
    (kernels [F, heads, size], biases [heads, size]); the weights are
    softmax(q . k / sqrt(key_dim)) over the allowed key steps; the heads' context is
    projected back by attention_output (kernel [heads, value_dim, F_out]). As in
    Keras, the query mask is part of the attention mask: a query step that attends
    to nothing (masked, or no valid key) gets weights 0, so its output is
    attention_output's bias. sdpa: F.scaled_dot_product_attention computes the
    context (no weights to return).
    Dropout on the weights in training: dropout_masks["{name}"] [B, heads, Tq, Tk]
    when given, else drawn; the weights are then computed explicitly.
    """

    def __init__(
        self,
        name: str,
        sizes: Sequence[int],
        num_heads: int,
        key_dim: int,
        value_dim: int,
        *,
        use_bias: bool = True,
        dropout: float = 0.0,
        causal: bool = False,
        return_scores: bool = False,
        sdpa: bool = True,
    ):
        super().__init__()
        self.name = name  # its weights' canonical prefix, and its dropout mask's key
        query_size, key_size, value_size, output_size = sizes
        n = num_heads
        self.query = Projection((query_size, n, key_dim), (n, key_dim) if use_bias else None)
        self.key = Projection((key_size, n, key_dim), (n, key_dim) if use_bias else None)
        self.value = Projection((value_size, n, value_dim), (n, value_dim) if use_bias else None)
        self.attention_output = Projection(
            (n, value_dim, output_size), (output_size,) if use_bias else None
        )
        self.key_dim = key_dim
        self.dropout = dropout
        self.causal = causal
        self.return_scores = return_scores
        self.sdpa = sdpa

    @staticmethod
    def heads(x: Tensor, projection: Projection) -> Tensor:
        """[B, T, F] -> [B, heads, T, size]."""
        y = torch.einsum("btf,fnh->bnth", x, projection.kernel)
        return y if projection.bias is None else y + projection.bias[:, None, :]

    def forward(
        self,
        query: Tensor,
        value: Tensor,
        key: Tensor | None = None,
        query_mask: Tensor | None = None,
        key_mask: Tensor | None = None,
        dropout_masks: Mapping | None = None,
        training: bool | None = None,
    ) -> Any:
        key = value if key is None else key
        allowed = attention_mask(query, key, key_mask, query_mask, self.causal)
        allowed = None if allowed is None else allowed[:, None]  # the same for every head
        q = self.heads(query, self.query)
        k = self.heads(key, self.key)
        v = self.heads(value, self.value)
        scale = self.key_dim**-0.5
        training = self.training if training is None else training
        dropping = training and self.dropout > 0
        if self.sdpa and not dropping:
            context = fused_attention(q, k, v, allowed, scale)
        else:
            scores = (q * scale) @ k.transpose(-1, -2)
            context, weights = attend(
                scores, allowed, v, dropping, self.dropout, dropout_masks, self.name
            )
        out = torch.einsum("bnth,nho->bto", context, self.attention_output.kernel)
        if self.attention_output.bias is not None:
            out = out + self.attention_output.bias
        return (out, weights) if self.return_scores else out


class SeqdslModule(nn.Module):
    """The base of a generated model: canonical weights, pad() and reset_states(),
    from the tables its subclass sets. ``anchor`` follows .to(): the dtype and device
    that inputs are cast to. Every call checks the inputs' shapes and dtypes
    (check_inputs); ``debug = True`` (or ``build(..., debug=True)``) also checks
    their values: lengths in range, ids in range, the declared mask kinds."""

    #: canonical key "layer/weight" -> its state_dict key, in Keras' get_weights() order
    #: (the submodule path differs from the canonical one where a name would collide
    #: with an nn.Module attribute: Bidirectional's forward_layer / backward_layer)
    WEIGHTS: Mapping[str, str] = {}
    #: declared inputs: (dtype, dims), a symbol, a size or None (`_`) per axis
    INPUTS: Mapping[str, tuple[str, tuple[Any, ...]]] = {}
    #: pad(...) declarations: input -> (side, value, maxlen, truncate, dtype, time symbol)
    PADS: Mapping[str, tuple[Any, ...]] = {}
    #: the stateful layers (their submodule names)
    STATEFUL: tuple[str, ...] = ()

    def __init__(self) -> None:
        super().__init__()
        self.debug = False
        self.register_buffer("anchor", torch.zeros(()), persistent=False)

    def pad(self, *raw: Sequence[Any]) -> Any:
        """Pad ragged data by the pad(...) declarations: keras.utils.pad_sequences in the
        declared dtype, one list of sequences per padded input, in declaration order.
        Inputs that share a time symbol are padded to one length. Returns (batch, lengths)
        for one padded input, a tuple of such pairs for several: torch tensors here (JAX
        and Keras models return NumPy arrays; every backend's model takes either)."""
        out = [
            (torch.from_numpy(batch), torch.from_numpy(lengths))
            for batch, lengths in pad_inputs(self.PADS, raw, np.int64)
        ]
        return out[0] if len(out) == 1 else tuple(out)

    def load_canonical(self, weights: Any) -> None:
        """Load {"layer/weight": array} in the canonical layout (bit-exact in the same
        dtype), the (weights, metadata) of load_weights, or a
        weights file's path. All or nothing: every key and shape is checked before
        any weight changes (WeightsFileError naming the keys or the shape)."""
        weights = canonical_mapping(weights)
        check_weight_keys(list(self.WEIGHTS), weights, type(self).__name__)
        state = self.state_dict(keep_vars=True)
        values = []
        for key, state_key in self.WEIGHTS.items():
            target = state[state_key]
            try:
                value = torch.as_tensor(np.asarray(weights[key]))
            except (TypeError, ValueError, RuntimeError) as e:
                raise WeightsFileError(f"weight {key}: not an array of numbers ({e})") from None
            if tuple(value.shape) != tuple(target.shape):
                raise WeightsFileError(
                    f"weight {key}: shape {list(value.shape)}, but the model's is "
                    f"{list(target.shape)}"
                )
            if not (value.is_floating_point() or value.dtype == target.dtype):
                raise WeightsFileError(f"weight {key}: dtype {value.dtype}, not a float dtype")
            values.append((target, value))
        with torch.no_grad():
            for target, value in values:
                target.copy_(value)

    def canonical_weights(self) -> dict[str, np.ndarray]:
        """The weights as {"layer/weight": numpy array}, in the canonical layout."""
        state = self.state_dict()
        return {
            key: state[state_key].cpu().numpy().copy() for key, state_key in self.WEIGHTS.items()
        }

    def reset_states(self) -> None:
        """Zero the states of the stateful layers (as after construction)."""
        for name in self.STATEFUL:
            layer: Any = self._modules[name]
            layer.reset_states()


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """The mean of per-step ``values`` over the valid steps of ``mask``: the loss of
    an ``output x with mask``, as Keras' masked losses average it. ``values`` is
    ``[B, T]`` (per-step losses, e.g. ``F.cross_entropy(logits.transpose(1, 2), y,
    reduction="none")``) or ``[B, T, ...]`` (each valid step's entries all count);
    ``mask`` is the bool ``[B, T]`` mask the model returns. A batch with no valid
    step gives 0. No data-dependent Python: it traces under torch.compile."""
    m = mask.to(values.dtype).reshape(mask.shape + (1,) * (values.dim() - mask.dim()))
    m = m.expand_as(values)
    return (values * m).sum() / m.sum().clamp(min=1.0)
