"""The run-time code that the torch emitter copies into generated modules.

Each snippet is a top-level function or class written as a person would write
it. The emitter copies the snippets a model needs, with their dependencies, in
the order of this file, and drops the lines a model does not need: a line that
ends with ``#@feature`` is kept only when the model uses ``feature``
(``#@!feature``: only when it does not; ``#@a,b``: only when it uses both).
This module only holds text; it imports no framework.
"""

from __future__ import annotations

import re

from .common import pad_sequences_text, with_dependencies

__all__ = ["SNIPPETS", "ACTIVATION_EXPR", "select", "render"]


class Snippet:
    def __init__(
        self, name: str, text: str, deps: tuple[str, ...] = (), imports: tuple[str, ...] = ()
    ):
        self.name = name
        self.text = text.strip("\n") + "\n"
        self.deps = deps
        self.imports = imports


SNIPPETS: dict[str, Snippet] = {}


def _add(name: str, text: str, deps: tuple[str, ...] = (), imports: tuple[str, ...] = ()) -> None:
    SNIPPETS[name] = Snippet(name, text, deps, imports)


#: activation name -> the expression of a torch callable (Keras 3's definitions);
#: None for linear (nothing to apply). Names that are snippets are defined below.
ACTIVATION_EXPR: dict[str, str | None] = {
    "linear": None,
    "relu": "torch.relu",
    "sigmoid": "torch.sigmoid",
    "tanh": "torch.tanh",
    "softmax": "softmax",
    "log_softmax": "log_softmax",
    "softplus": "softplus",
    "softsign": "F.softsign",
    "elu": "F.elu",
    "selu": "F.selu",
    "gelu": "F.gelu",
    "silu": "F.silu",
    "swish": "F.silu",
    "exponential": "torch.exp",
    "hard_sigmoid": "hard_sigmoid",
    "relu6": "F.relu6",
    "leaky_relu": "leaky_relu",
    "mish": "F.mish",
}

# --------------------------------------------------------------------------
# activations that torch has under another definition

_add(
    "softmax",
    '''
def softmax(x):
    """Keras' softmax activation: over the last axis."""
    return torch.softmax(x, dim=-1)
''',
)

_add(
    "log_softmax",
    '''
def log_softmax(x):
    """Keras' log_softmax activation: over the last axis."""
    return torch.log_softmax(x, dim=-1)
''',
)

_add(
    "softplus",
    '''
def softplus(x):
    """Keras' softplus, log(1 + exp(x)), exact for large x (F.softplus turns linear at 20)."""
    return torch.logaddexp(x, torch.zeros_like(x))
''',
)

_add(
    "hard_sigmoid",
    '''
def hard_sigmoid(x):
    """Keras 3's hard_sigmoid: relu6(x + 3) / 6."""
    return F.relu6(x + 3.0) / 6.0
''',
)

_add(
    "leaky_relu",
    '''
def leaky_relu(x):
    """Keras 3's leaky_relu: negative_slope=0.2 (torch's default is 0.01)."""
    return F.leaky_relu(x, 0.2)
''',
)

# --------------------------------------------------------------------------
# inputs, shapes and masks

_add("pad_sequences", pad_sequences_text("pad_sequences", "np.int64"))

_add(
    "bind_sizes",
    '''
def bind_sizes(inputs, declared):
    """Check each input against its declared shape (a symbol, a size or None for `_`
    per axis) and return the size of every symbol: inputs sharing a symbol agree."""
    sizes, source = {}, {}
    for name, x in inputs.items():
        dims = declared[name]
        shape = tuple(x.shape)
        if len(shape) != len(dims):
            raise ValueError(f"input `{name}` has shape {list(shape)}, declared {list(dims)}")
        for axis, (n, d) in enumerate(zip(shape, dims, strict=True)):
            if isinstance(d, int) and n != d:
                raise ValueError(f"input `{name}`: axis {axis} has size {n}, declared {d}")
            if isinstance(d, str):
                if d in sizes and sizes[d] != n:
                    raise ValueError(
                        f"input `{name}`: axis {axis} ({d}) has size {n}, "
                        f"but {d} = {sizes[d]} in `{source[d]}`"
                    )
                sizes[d], source[d] = n, name
    return sizes
''',
)

_add(
    "lengths_to_mask",
    '''
def lengths_to_mask(lengths, steps, side="post"):
    """A bool [B, T] mask: the first (post) or last (pre) lengths[b] steps of row b are valid."""
    t = torch.arange(steps, device=lengths.device)
    lengths = lengths[:, None]
    return t < lengths if side == "post" else t >= steps - lengths
''',
)

_add(
    "input_mask",
    '''
def input_mask(name, x, side, lengths, masks):
    """The mask of a `masked` input: masks[name] (bool [B, T]) or from lengths[name] ([B])."""
    if masks is not None and name in masks:
        mask = torch.as_tensor(masks[name], dtype=torch.bool, device=x.device)
        if tuple(mask.shape) != tuple(x.shape[:2]):
            raise ValueError(f"masks[{name!r}]: shape {list(mask.shape)}, not {list(x.shape[:2])}")
        return mask
    if lengths is not None and name in lengths:
        lens = torch.as_tensor(lengths[name], dtype=torch.int64, device=x.device)
        if tuple(lens.shape) != (x.shape[0],):
            raise ValueError(f"lengths[{name!r}]: shape {list(lens.shape)}, not [{x.shape[0]}]")
        return lengths_to_mask(lens, x.shape[1], side)
    raise ValueError(f"input `{name}` is masked: pass lengths={{{name!r}: ...}} or masks=")
''',
    deps=("lengths_to_mask",),
)

_add(
    "check_lengths",
    '''
def check_lengths(name, lengths, steps, nonempty):
    """debug: the lengths of a `masked` input lie in [0, T] ([1, T] if declared nonempty)."""
    if lengths is None or name not in lengths:
        return
    lens = torch.as_tensor(lengths[name])
    low = 1 if nonempty else 0
    if bool(((lens < low) | (lens > steps)).any()):
        raise ValueError(f"input `{name}`: lengths must lie in [{low}, {steps}]: {lens.tolist()}")
''',
)

_add(
    "check_mask",
    '''
def check_mask(mask, side, nonempty, where, promise):
    """debug: raise ValueError unless `mask` has its declared kind. post: the valid
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
        raise ValueError(f"{where}: {problem}; {promise}")
    if nonempty and not bool(mask.any(1).all()):
        row = int((~mask.any(1)).nonzero()[0, 0])
        problem = f"row {row} has no valid step, but the mask is declared nonempty"
        raise ValueError(f"{where}: {problem}; {promise}")
''',
)

# --------------------------------------------------------------------------
# dropout

_add(
    "keep_mask",
    '''
def keep_mask(dropout_masks, key, shape, rate, like):
    """A dropout keep-mask scaled by 1 / (1 - rate): dropout_masks[key] when given, else drawn."""
    if dropout_masks is not None and key in dropout_masks:
        keep = torch.as_tensor(dropout_masks[key], dtype=like.dtype, device=like.device)
    else:
        keep = (torch.rand(shape, device=like.device) >= rate).to(like.dtype)
    return keep / (1.0 - rate)
''',
)

_add(
    "dropout",
    '''
def dropout(x, rate, training, dropout_masks, key):
    """Keras' Dropout: the identity in inference; in training x * keep / (1 - rate)."""
    if not training:
        return x
    return x * keep_mask(dropout_masks, key, x.shape, rate, x)
''',
    deps=("keep_mask",),
)

# --------------------------------------------------------------------------
# recurrent layers

_add(
    "gather_steps",
    '''
def gather_steps(x, index):
    """x[b, index[b, j]] for x [B, T, F] and index [B, J]."""
    return x.gather(1, index[..., None].expand(-1, -1, x.shape[2]))
''',
)

_add(
    "to_right_padding",
    '''
def to_right_padding(x, mask, side):
    """Move each row's valid steps to the front, in order, as the fused kernels want.

    Returns the moved x, each row's number of valid steps and the index that moves
    the outputs back (None when nothing moved).
    """
    lengths = mask.sum(1)
    if side == "post":  # already right-padded  #@side_post
        return x, lengths, None  #@side_post
    if side == "pre":  # roll each row left by its padding, and back  #@side_pre
        steps = torch.arange(x.shape[1], device=x.device)  #@side_pre
        shift = x.shape[1] - lengths[:, None]  #@side_pre
        return gather_steps(x, (steps + shift) % x.shape[1]), lengths, (steps - shift) % x.shape[1]  #@side_pre
    # gaps: a stable argsort of ~mask puts the valid steps first, in order;  #@side_any
    # valid step t is the cumsum(mask)[t]-th of them  #@side_any
    order = torch.argsort(~mask, dim=1, stable=True)  #@side_any
    back = (mask.cumsum(1) - 1).clamp(min=0)  #@side_any
    return gather_steps(x, order), lengths, back  #@side_any
''',
)

_add(
    "fused_rnn",
    '''
def fused_rnn(op, x, states, weights, lengths=None, packed=False, layers=1, outputs=True):  #@fused_mask
def fused_rnn(op, x, states, weights, layers=1):  #@!fused_mask
    """torch's fused RNN ops (what nn.LSTM, nn.GRU and nn.RNN call; cuDNN on CUDA) on
    a batch-first, right-padded x: one layer, or `layers` stacked, each reading all
    the outputs of the one before (nn.LSTM(num_layers=...)).

    op: torch.lstm, torch.gru, torch.rnn_tanh or torch.rnn_relu; states: [B, U]
    tensors ([h, c] for torch.lstm), where every layer starts; weights: torch's
    layout, [W_ih, W_hh(, b_ih, b_hh)] for each layer in turn. Returns the last
    layer's outputs [B, T, U] and final states.
    With lengths (each >= 1) the steps past a row's length are padding and the  #@fused_mask
    final states are those of its last valid step. Either the rows are packed  #@fused_mask
    (packed=True, or when pack_rows() says it pays): the kernel skips the padding,  #@fused_mask
    whose outputs are 0. Or the padded batch runs (on the CPU only up to its  #@fused_mask
    longest row) and h is gathered from the outputs; the final states are then  #@fused_mask
    [h] alone (LSTM's c is not known). outputs=False: the final states alone  #@fused_mask
    matter, the outputs are None.  #@fused_mask
    """
    lstm = op is torch.lstm
    hx = [s.expand(layers, *s.shape).contiguous() for s in states]
    bias = len(weights) == 4 * layers
    train = torch.is_grad_enabled()
    cut = 0  #@fused_mask
    if lengths is not None and x.device.type == "cpu":  # (CUDA: not measured, as it is)  #@fused_mask
        longest = int(lengths.max())  #@fused_mask
        packed = packed or pack_rows(op, states[0].shape[1], lengths, longest)  #@fused_mask
        cut = x.shape[1] - longest  # steps that are padding in every row  #@fused_mask
    if lengths is not None and packed:  #@fused_mask
        seq = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)  #@fused_mask
        hx = [h.index_select(1, seq.sorted_indices) for h in hx]  #@fused_mask
        hx = tuple(hx) if lstm else hx[0]  #@fused_mask
        y, *final = op(seq.data, seq.batch_sizes, hx, weights, bias, layers, 0.0, train, False)  #@fused_mask
        final = [h[-1].index_select(0, seq.unsorted_indices) for h in final]  #@fused_mask
        if not outputs:  #@fused_mask
            return None, final  #@fused_mask
        y = PackedSequence(y, seq.batch_sizes, seq.sorted_indices, seq.unsorted_indices)  #@fused_mask
        y, _ = pad_packed_sequence(y, batch_first=True, total_length=x.shape[1])  #@fused_mask
        return y, final  #@fused_mask
    if cut:  #@fused_mask
        x = x[:, : x.shape[1] - cut]  #@fused_mask
    hx = tuple(hx) if lstm else hx[0]
    y, *final = op(x, hx, weights, bias, layers, 0.0, train, False, True)
    if lengths is None:  #@fused_mask
        return y, [h[-1] for h in final]  #@fused_mask
    h = y[torch.arange(len(y), device=y.device), lengths - 1]  # at each row's last valid step  #@fused_mask
    if not outputs:  #@fused_mask
        return None, [h]  #@fused_mask
    return (F.pad(y, (0, 0, 0, cut)) if cut else y), [h]  # the cut steps back, as 0  #@fused_mask
    return y, [h[-1] for h in final]  #@!fused_mask
''',
)

_add(
    "pack_rows",
    '''
def pack_rows(op, units, lengths, longest):
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
''',
)

_add(
    "carry_forward",
    '''
def carry_forward(y, mask):
    """masked_output=carry: a masked step repeats the last valid output (0 before the first)."""
    steps = torch.arange(y.shape[1], device=y.device)
    last = torch.where(mask, steps, -1).cummax(1).values  # the last valid step so far
    return torch.where((last >= 0)[..., None], gather_steps(y, last.clamp(min=0)), 0.0)
''',
    deps=("gather_steps",),
)

_add(
    "Recurrent",
    '''
class Recurrent(nn.Module):
    """What LSTM, GRU and SimpleRNN share: Keras' rules for masks, direction and state.

    A masked step is skipped: every state keeps its value, so the final states are
    those of the valid steps alone, and a fully masked row keeps its initial state
    and outputs 0. With return_sequences the output at a masked step is 0
    (masked_output="zero"), or the last valid output, 0 before the first ("carry").  #@carry
    (masked_output="zero").  #@!carry
    go_backwards reads the steps in reverse and returns the outputs in that  #@go_backwards
    reversed order, as Keras does.  #@go_backwards
    dropout and recurrent_dropout (training only) use one keep-mask per sequence,  #@dropout
    as Keras: dropout_masks["{name}/input"] [B, F] and ["{name}/recurrent"] [B, U]  #@dropout
    when given, else drawn.  #@dropout
    forward(x, mask, below=[...]) runs a stack: the layers below this one, each  #@stack
    reading all the outputs of the one before under the same mask, from x up,  #@stack
    in one call of the fused op (num_layers = len(below) + 1, as nn.LSTM).  #@stack
    """

    state_names = ("h",)

    def __init__(
        self,
        name,
        units,
        *,
        mask_side=None,
        fused=True,  #@fused,loop
        packed=False,  #@packed
        return_sequences=False,
        return_state=False,
        go_backwards=False,  #@go_backwards
        masked_output="zero",  #@carry
        dropout=0.0,  #@input_dropout
        recurrent_dropout=0.0,  #@recurrent_dropout
        stateful_batch=None,  #@stateful
    ):
        super().__init__()
        self.name = name  # its weights' canonical prefix, and its dropout masks' key
        self.units = units
        self.mask_side = mask_side  # of the input: "post", "pre", "any" or None
        self.fused = fused  # torch's fused kernel, or Keras' step function in a loop  #@fused,loop
        self.packed = packed  # pack the rows: LSTM's final c is needed  #@packed
        self.return_sequences = return_sequences
        self.return_state = return_state
        self.go_backwards = go_backwards  #@go_backwards
        self.masked_output = masked_output  #@carry
        self.dropout = dropout  #@input_dropout
        self.recurrent_dropout = recurrent_dropout  #@recurrent_dropout
        self.stateful = stateful_batch is not None  #@stateful
        self.cached_weights = None  # fused_weights(), in inference: (key, weights)  #@fused
        if self.stateful:  # states carried from call to call: buffers, not weights  #@stateful
            for state in self.state_names:  #@stateful
                self.register_buffer(state, torch.zeros(stateful_batch, units), persistent=False)  #@stateful

    def forward(self, x, mask=None, initial_state=None, dropout_masks=None, training=None):  #@!stack
    def forward(  #@stack
        self, x, mask=None, initial_state=None, dropout_masks=None, training=None, below=()  #@stack
    ):  #@stack
        if initial_state is not None:
            states = list(initial_state)
        elif self.stateful:  #@stateful
            states = [getattr(self, state) for state in self.state_names]  #@stateful
        else:
            states = [x.new_zeros(x.shape[0], self.units)] * len(self.state_names)  # read only
        recurrent_mask = None  #@loop
        training = self.training if training is None else training  #@dropout
        if training and self.dropout:  #@input_dropout
            shape = (x.shape[0], x.shape[2])  #@input_dropout
            x = x * keep_mask(dropout_masks, self.name + "/input", shape, self.dropout, x)[:, None]  #@input_dropout
        if training and self.recurrent_dropout:  #@recurrent_dropout
            shape, rate = (x.shape[0], self.units), self.recurrent_dropout  #@recurrent_dropout
            recurrent_mask = keep_mask(dropout_masks, self.name + "/recurrent", shape, rate, x)  #@recurrent_dropout
        side = self.mask_side  #@fused
        if self.go_backwards:  #@go_backwards
            x = x.flip(1)  #@go_backwards
            mask = None if mask is None else mask.flip(1)  #@go_backwards
            side = {"post": "pre", "pre": "post"}.get(side, side)  #@go_backwards,fused
        if self.fused:  #@fused,loop
            y, final = self.scan_fused(x, mask, side, states)  #@fused,loop,!stack
            y, final = self.scan_fused(x, mask, side, states, below)  #@fused,loop,stack
        else:  #@fused,loop
            y, final = self.scan_loop(x, mask, states, recurrent_mask)  #@fused,loop
        y, final = self.scan_fused(x, mask, side, states)  #@fused,!loop,!stack
        y, final = self.scan_fused(x, mask, side, states, below)  #@fused,!loop,stack
        y, final = self.scan_loop(x, mask, states, recurrent_mask)  #@loop,!fused
        last = final[0]  # h: in a row with no valid step, the initial state
        if mask is not None and initial_state is not None:  #@!stateful
        if mask is not None and (initial_state is not None or self.stateful):  #@stateful
            last = torch.where(mask.any(1, keepdim=True), last, 0.0)  # which outputs 0 there
        if self.stateful:  #@stateful
            for state, value in zip(self.state_names, final, strict=True):  #@stateful
                setattr(self, state, value.detach())  #@stateful
        out = y if self.return_sequences else last
        if self.return_sequences and mask is not None and self.masked_output == "carry":  #@carry
            out = carry_forward(y, mask)  #@carry
        return (out, *final) if self.return_state else out
''',
)

_add(
    "Recurrent.reset_states",
    '''
    def reset_states(self):
        """Zero the carried states (as after construction)."""
        for state in self.state_names:
            setattr(self, state, torch.zeros_like(getattr(self, state)))
''',
)

_add(
    "Recurrent.scan_fused",
    '''
    def scan_fused(self, x, mask, side, states):  #@!stack
    def scan_fused(self, x, mask, side, states, below=()):  #@stack
        """torch's fused kernel: the outputs (0 at masked steps) and the final states."""  #@!stack
        """torch's fused kernel: the outputs (0 at masked steps) and the final states.  #@stack
        The layers `below` this one (a stack) run first, in the same call."""  #@stack
        weights = self.fused_weights()  #@!stack
        layers = (*below, self)  #@stack
        weights = [w for layer in layers for w in layer.fused_weights()]  #@stack
        if mask is None:  #@fused_mask
            return fused_rnn(self.op, x, states, weights)  #@fused_mask,!stack
            return fused_rnn(self.op, x, states, weights, layers=len(layers))  #@fused_mask,stack
        return fused_rnn(self.op, x, states, weights)  #@!fused_mask,!stack
        return fused_rnn(self.op, x, states, weights, len(layers))  #@!fused_mask,stack
        x, lengths, back = to_right_padding(x, mask, side)  #@fused_mask
        run = lengths.clamp(min=1)  # an empty row runs one step  #@fused_mask
        outputs = self.return_sequences  # without, the outputs are not made  #@fused_mask
        y, final = fused_rnn(self.op, x, states, weights, run, outputs=outputs)  #@fused_mask,!packed,!stack
        y, final = fused_rnn(self.op, x, states, weights, run, self.packed, outputs=outputs)  #@fused_mask,packed,!stack
        y, final = fused_rnn(self.op, x, states, weights, run, layers=len(layers), outputs=outputs)  #@fused_mask,!packed,stack
        y, final = fused_rnn(self.op, x, states, weights, run, self.packed, len(layers), outputs)  #@fused_mask,packed,stack
        if outputs:  #@fused_mask
            y = torch.where(mask[..., None], y if back is None else gather_steps(y, back), 0.0)  #@fused_mask,side_pre|side_any
            y = torch.where(mask[..., None], y, 0.0)  #@fused_mask,!side_pre,!side_any
        empty = (lengths == 0)[:, None]  # ran as length 1: restore the initial state  #@fused_mask
        # (final is [h] alone when the padded batch ran and LSTM's c is not known)  #@fused_mask
        return y, [torch.where(empty, s0, s) for s0, s in zip(states, final, strict=False)]  #@fused_mask

    def fused_weights(self):
        """torch_weights(), contiguous (the fused kernels copy strided weights on
        every call). Without autograd (inference) they are made once and kept while
        the parameters stay the same: an optimizer step, load_canonical, .to() or any
        in-place change of a parameter (not through .data) remakes them."""
        if torch.is_grad_enabled():  # gradients flow through these copies to the parameters
            return [w.contiguous() for w in self.torch_weights()]
        key = [(id(p), p._version, p.data_ptr()) for p in self._parameters.values()]
        if self.cached_weights is None or self.cached_weights[0] != key:
            self.cached_weights = (key, [w.contiguous() for w in self.torch_weights()])
        return self.cached_weights[1]
''',
)

_add(
    "Recurrent.scan_loop",
    '''
    def scan_loop(self, x, mask, states, recurrent_mask):
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
''',
)

_add(
    "LSTM",
    '''
class LSTM(Recurrent):
    """Keras' LSTM, also RNN(LSTMCell): kernel [F, 4U], recurrent_kernel [U, 4U],
    bias [4U], gates i, f, c, o."""

    state_names = ("h", "c")
    op = torch.lstm  #@fused

    def __init__(self, name, input_size, units, *, use_bias=True, **options):  #@!loop
    def __init__(  #@loop
        self,  #@loop
        name,  #@loop
        input_size,  #@loop
        units,  #@loop
        *,  #@loop
        use_bias=True,  #@loop
        activation=torch.tanh,  #@loop
        recurrent_activation=torch.sigmoid,  #@loop
        **options,  #@loop
    ):  #@loop
        super().__init__(name, units, **options)
        self.kernel = nn.Parameter(torch.zeros(input_size, 4 * units))
        self.recurrent_kernel = nn.Parameter(torch.zeros(units, 4 * units))
        self.bias = nn.Parameter(torch.zeros(4 * units)) if use_bias else None
        self.activation = activation  #@loop
        self.recurrent_activation = recurrent_activation  #@loop
''',
    deps=("Recurrent",),
)

_add(
    "LSTM.fused",
    '''
    def torch_weights(self):
        """torch.lstm's layout: kernel.T, recurrent_kernel.T, bias and a zero bias_hh."""
        weights = [self.kernel.t(), self.recurrent_kernel.t()]
        if self.bias is not None:
            weights += [self.bias, torch.zeros_like(self.bias)]
        return weights
''',
)

_add(
    "LSTM.loop",
    """
    def input_projection(self, x):
        return x @ self.kernel if self.bias is None else x @ self.kernel + self.bias

    def step(self, inputs, states, recurrent_mask):
        h, c = states
        if recurrent_mask is not None:
            h = h * recurrent_mask
        i, f, g, o = (inputs + h @ self.recurrent_kernel).chunk(4, dim=-1)
        c = self.recurrent_activation(f) * c + self.recurrent_activation(i) * self.activation(g)
        return [self.recurrent_activation(o) * self.activation(c), c]
""",
)

_add(
    "GRU",
    '''
class GRU(Recurrent):
    """Keras' GRU, also RNN(GRUCell): kernel [F, 3U], recurrent_kernel [U, 3U], gates
    z, r, h; bias [2, 3U] (input and recurrent rows) with reset_after=True, else [3U]."""

    op = torch.gru  #@fused

    def __init__(self, name, input_size, units, *, use_bias=True, reset_after=True, **options):  #@!loop
    def __init__(  #@loop
        self,  #@loop
        name,  #@loop
        input_size,  #@loop
        units,  #@loop
        *,  #@loop
        use_bias=True,  #@loop
        reset_after=True,  #@loop
        activation=torch.tanh,  #@loop
        recurrent_activation=torch.sigmoid,  #@loop
        **options,  #@loop
    ):  #@loop
        super().__init__(name, units, **options)
        self.reset_after = reset_after
        self.kernel = nn.Parameter(torch.zeros(input_size, 3 * units))
        self.recurrent_kernel = nn.Parameter(torch.zeros(units, 3 * units))
        bias_shape = (2, 3 * units) if reset_after else (3 * units,)
        self.bias = nn.Parameter(torch.zeros(bias_shape)) if use_bias else None
        self.activation = activation  #@loop
        self.recurrent_activation = recurrent_activation  #@loop
''',
    deps=("Recurrent",),
)

_add(
    "GRU.fused",
    '''
    def torch_weights(self):
        """torch.gru's layout: gate blocks r, z, n (Keras: z, r, h), transposed; the input
        and recurrent biases stay apart (the candidate uses r * (W_hn h + b_hn))."""

        def rzn(w):
            z, r, h = w.chunk(3, dim=-1)
            return torch.cat([r, z, h], dim=-1)

        weights = [rzn(self.kernel).t(), rzn(self.recurrent_kernel).t()]
        if self.bias is not None:
            weights += [rzn(self.bias[0]), rzn(self.bias[1])]
        return weights
''',
)

_add(
    "GRU.loop",
    """
    def input_projection(self, x):
        if self.bias is None:
            return x @ self.kernel
        return x @ self.kernel + (self.bias[0] if self.reset_after else self.bias)

    def step(self, inputs, states, recurrent_mask):
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
""",
)

_add(
    "SimpleRNN",
    '''
class SimpleRNN(Recurrent):
    """Keras' SimpleRNN, also RNN(SimpleRNNCell): kernel [F, U], recurrent_kernel [U, U],
    bias [U]."""

    def __init__(self, name, input_size, units, *, use_bias=True, activation=torch.tanh, **options):
        super().__init__(name, units, **options)
        self.kernel = nn.Parameter(torch.zeros(input_size, units))
        self.recurrent_kernel = nn.Parameter(torch.zeros(units, units))
        self.bias = nn.Parameter(torch.zeros(units)) if use_bias else None
        self.activation = activation
        self.op = torch.rnn_relu if activation is torch.relu else torch.rnn_tanh  #@fused
''',
    deps=("Recurrent",),
)

_add(
    "SimpleRNN.fused",
    '''
    def torch_weights(self):
        """torch.rnn_tanh's layout: kernel.T, recurrent_kernel.T, bias and a zero bias_hh."""
        weights = [self.kernel.t(), self.recurrent_kernel.t()]
        if self.bias is not None:
            weights += [self.bias, torch.zeros_like(self.bias)]
        return weights
''',
)

_add(
    "SimpleRNN.loop",
    """
    def input_projection(self, x):
        return x @ self.kernel if self.bias is None else x @ self.kernel + self.bias

    def step(self, inputs, states, recurrent_mask):
        (h,) = states
        if recurrent_mask is not None:
            h = h * recurrent_mask
        return [self.activation(inputs + h @ self.recurrent_kernel)]
""",
)

_add(
    "Bidirectional",
    '''
class Bidirectional(nn.Module):
    """Keras' Bidirectional: the forward layer, and a go_backwards copy whose output
    sequence is flipped back to input order, merged by merge_mode ("none": both).
    Initial and returned states: the forward layer's, then the backward layer's."""

    def __init__(self, name, forward_layer, backward_layer, merge_mode="concat"):
        super().__init__()
        self.name = name
        # Registered under the canonical weight names "forward" and "backward"
        # (add_module refuses "forward", the name of nn.Module's method).
        self._modules["forward"] = forward_layer
        self._modules["backward"] = backward_layer
        self.merge_mode = merge_mode

    def forward(self, x, mask=None, initial_state=None, dropout_masks=None, training=None):
        fw, bw = self._modules["forward"], self._modules["backward"]
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
''',
)

# --------------------------------------------------------------------------
# layers with weights

_add(
    "Embedding",
    '''
class Embedding(nn.Module):
    """Keras' Embedding: embeddings [input_dim, output_dim]; the vector of id 0 is not zeroed."""

    def __init__(self, input_dim, output_dim):
        super().__init__()
        self.embeddings = nn.Parameter(torch.zeros(input_dim, output_dim))

    def forward(self, ids):
        return F.embedding(ids.long(), self.embeddings)
''',
)

_add(
    "Dense",
    '''
class Dense(nn.Module):
    """Keras' Dense on the last axis: kernel [F, units], bias [units]."""

    def __init__(self, input_size, units, *, use_bias=True, activation=None):
        super().__init__()
        self.kernel = nn.Parameter(torch.zeros(input_size, units))
        self.bias = nn.Parameter(torch.zeros(units)) if use_bias else None
        self.activation = activation

    def forward(self, x):
        y = x @ self.kernel
        if self.bias is not None:
            y = y + self.bias
        return y if self.activation is None else self.activation(y)
''',
)

_add(
    "LayerNormalization",
    '''
class LayerNormalization(nn.Module):
    """Keras' LayerNormalization over the last axis: gamma, beta [F]."""

    def __init__(self, features, *, epsilon=1e-3, center=True, scale=True):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(features)) if scale else None
        self.beta = nn.Parameter(torch.zeros(features)) if center else None
        self.epsilon = epsilon

    def forward(self, x):
        return F.layer_norm(x, x.shape[-1:], self.gamma, self.beta, self.epsilon)
''',
)

_add(
    "BatchNormalization",
    '''
class BatchNormalization(nn.Module):
    """Keras' BatchNormalization over the last axis: gamma, beta (weights) and the
    moving_mean, moving_variance buffers. Inference uses the moving statistics.
    Training uses the moments of the valid steps (population variance) and updates
    moving = momentum * moving + (1 - momentum) * batch (Keras' convention)."""

    def __init__(self, features, *, momentum=0.99, epsilon=1e-3, center=True, scale=True):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(features)) if scale else None
        self.beta = nn.Parameter(torch.zeros(features)) if center else None
        self.register_buffer("moving_mean", torch.zeros(features))
        self.register_buffer("moving_variance", torch.ones(features))
        self.momentum = momentum
        self.epsilon = epsilon

    def forward(self, x, mask=None, training=None):
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
''',
)

# --------------------------------------------------------------------------
# time-changing layers

_add(
    "window_padding",
    '''
def window_padding(steps, k_eff, stride, padding):
    """(zeros before, zeros after, output steps) of Keras' padding for a window of
    k_eff steps. valid: none; causal: k_eff - 1 before; same: TensorFlow's rule, the
    zeros that ceil(T / stride) outputs need, split evenly, the odd one after."""
    if padding == "valid":
        return 0, 0, (steps - k_eff) // stride + 1
    out = -(-steps // stride)
    if padding == "causal":
        return k_eff - 1, 0, out
    total = max((out - 1) * stride + k_eff - steps, 0)
    return total // 2, total - total // 2, out
''',
)

_add(
    "window_mask",
    '''
def window_mask(mask, size, stride, dilation, padding, steps):
    """The output mask of Conv1D and pooling. valid: output step j is valid iff every
    input step of its window is; same, causal: iff its anchor input step j * stride is.
    For post/pre masks this maps each row's length L to max(0, (L - k_eff) // s + 1)
    (valid) or ceil(L / s) (same, causal)."""
    if padding != "valid":
        return mask[:, ::stride][:, :steps]
    invalid = (~mask)[:, None].to(torch.float32)
    return F.max_pool1d(invalid, size, stride, dilation=dilation)[:, 0, :steps] == 0
''',
)

_add(
    "Conv1D",
    '''
class Conv1D(nn.Module):
    """Keras' Conv1D on [B, T, F]: kernel [k, F, filters], bias [filters].
    Masked input steps are zeroed first, so padding never leaks into a valid window."""

    def __init__(
        self,
        input_size,
        filters,
        kernel_size,
        *,
        strides=1,
        padding="valid",
        dilation_rate=1,
        use_bias=True,
        activation=None,
    ):
        super().__init__()
        self.kernel = nn.Parameter(torch.zeros(kernel_size, input_size, filters))
        self.bias = nn.Parameter(torch.zeros(filters)) if use_bias else None
        self.strides, self.padding, self.dilation_rate = strides, padding, dilation_rate
        self.activation = activation

    def forward(self, x, mask=None):
        if mask is not None:
            x = torch.where(mask[..., None], x, 0.0)
        k_eff = self.dilation_rate * (self.kernel.shape[0] - 1) + 1
        before, after, steps = window_padding(x.shape[1], k_eff, self.strides, self.padding)
        x = F.pad(x.transpose(1, 2), (before, after))
        weight = self.kernel.permute(2, 1, 0)  # torch's [filters, F, k]
        y = F.conv1d(x, weight, self.bias, stride=self.strides, dilation=self.dilation_rate)
        y = y[..., :steps].transpose(1, 2)
        return y if self.activation is None else self.activation(y)
''',
    deps=("window_padding",),
)

_add(
    "pool1d",
    '''
def pool1d(x, mask, kind, size, stride, padding):
    """MaxPooling1D ("max") / AveragePooling1D ("mean") over the valid steps of each
    window (padding zeros are not steps); 0 for a window with none."""
    before, after, steps = window_padding(x.shape[1], size, stride, padding)
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
''',
    deps=("window_padding",),
)

_add(
    "global_pool",
    '''
def global_pool(x, mask, kind, keepdims=False):
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
''',
)

_add(
    "temporal_softmax",
    '''
def temporal_softmax(x, mask):
    """Softmax over time, per feature, over each row's valid steps; 0 at masked
    steps and in rows with none."""
    valid = mask[..., None]
    top = torch.where(valid, x, -torch.inf).amax(1, keepdim=True)
    top = torch.where(torch.isfinite(top), top, 0.0)
    e = torch.exp(torch.where(valid, x - top, -torch.inf))
    total = e.sum(1, keepdim=True)
    return e / torch.where(total > 0, total, 1.0)
''',
)

# --------------------------------------------------------------------------
# attention

_add(
    "attention_mask",
    '''
def attention_mask(query, key, key_mask, query_mask=None, causal=False):
    """Which key steps each query step attends to, bool [B, Tq, Tk], or None for all:
    the valid key steps, the valid query steps (MultiHeadAttention: a masked query
    step attends to nothing) and, with causal, the steps j <= i."""
    allowed = None if key_mask is None else key_mask[:, None, :]
    if query_mask is not None:  #@attn_query_mask
        valid = query_mask[:, :, None]  #@attn_query_mask
        allowed = valid if allowed is None else allowed & valid  #@attn_query_mask
    if causal:  #@attn_causal
        steps = torch.ones(query.shape[1], key.shape[1], dtype=torch.bool, device=query.device)  #@attn_causal
        allowed = steps.tril()[None] if allowed is None else allowed & steps.tril()  #@attn_causal
    if allowed is None:
        return None
    return allowed.expand(query.shape[0], query.shape[1], key.shape[1])
''',
)

_add(
    "masked_softmax",
    '''
def masked_softmax(scores, allowed):
    """Softmax over the last axis among the allowed entries: 0 elsewhere, and 0 for
    a row with none (Keras gives such a row a uniform average)."""
    if allowed is None:
        return torch.softmax(scores, dim=-1)
    scores = scores.masked_fill(~allowed, -torch.inf)
    top = scores.amax(-1, keepdim=True)
    e = torch.exp(scores - torch.where(torch.isfinite(top), top, 0.0))
    total = e.sum(-1, keepdim=True)
    return e / torch.where(total > 0, total, 1.0)
''',
)

_add(
    "fused_attention",
    '''
def fused_attention(query, key, value, allowed, scale):
    """softmax(query . key * scale) @ value on F.scaled_dot_product_attention, with a
    boolean mask (True: attend). SDPA gives NaN in a row with no allowed key: such
    rows attend to every key, then get 0."""
    if allowed is None:
        return F.scaled_dot_product_attention(query, key, value, scale=scale)
    some = allowed.any(-1, keepdim=True)
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=allowed | ~some, scale=scale)
    return torch.where(some, out, 0.0)
''',
)

_add(
    "Attention",
    '''
class Attention(nn.Module):
    """Keras' Attention (Luong): the weights are a softmax of the scores over the valid
    key steps (and the steps j <= i with causal); the output is weights @ value, 0 at
    the masked query steps. A query step with no valid key gets weights 0 and output
    0 (Keras gives it the mean of the values). The scores are query . key, times
    `scale` with use_scale.
    score_mode="concat": concat_score_weight * sum(tanh(scale * (query + key))).  #@attn_concat
    sdpa: F.scaled_dot_product_attention computes the output (no weights to return).
    Dropout on the weights in training: dropout_masks["{name}"] [B, Tq, Tk] when  #@attn_dropout
    given, else drawn; the weights are then computed explicitly.  #@attn_dropout
    """

    def __init__(
        self,
        name,
        *,
        use_scale=False,
        score_mode="dot",  #@attn_concat
        dropout=0.0,  #@attn_dropout
        causal=False,  #@attn_causal
        return_scores=False,  #@attn_scores
        sdpa=True,
    ):
        super().__init__()
        self.name = name  # its weights' canonical prefix, and its dropout mask's key
        self.scale = nn.Parameter(torch.ones(())) if use_scale else None
        concat = score_mode == "concat"  #@attn_concat
        self.concat_score_weight = nn.Parameter(torch.ones(())) if concat else None  #@attn_concat
        self.dropout = dropout  #@attn_dropout
        self.causal = causal  #@attn_causal
        self.return_scores = return_scores  #@attn_scores
        self.sdpa = sdpa

    def scores(self, query, key):
        """[B, Tq, Tk]."""
        if self.concat_score_weight is not None:  #@attn_concat
            pairs = query[:, :, None] + key[:, None]  #@attn_concat
            if self.scale is not None:  #@attn_concat
                pairs = pairs * self.scale  #@attn_concat
            return self.concat_score_weight * torch.tanh(pairs).sum(-1)  #@attn_concat
        scores = query @ key.transpose(1, 2)
        return scores if self.scale is None else scores * self.scale

    def forward(
        self,
        query,
        value,
        key=None,
        query_mask=None,
        key_mask=None,
        dropout_masks=None,  #@attn_dropout
        training=None,  #@attn_dropout
    ):
        key = value if key is None else key
        allowed = attention_mask(query, key, key_mask, causal=self.causal)  #@attn_causal
        allowed = attention_mask(query, key, key_mask)  #@!attn_causal
        training = self.training if training is None else training  #@attn_dropout
        dropping = training and self.dropout > 0  #@attn_dropout
        if self.sdpa and not dropping:  #@attn_dropout
        if self.sdpa:  #@!attn_dropout
            scaled = query if self.scale is None else query * self.scale
            out = fused_attention(scaled, key, value, allowed, scale=1.0)
        else:
            weights = masked_softmax(self.scores(query, key), allowed)
            used = weights  #@attn_dropout
            if dropping:  #@attn_dropout
                keep = keep_mask(dropout_masks, self.name, weights.shape, self.dropout, weights)  #@attn_dropout
                used = weights * keep  #@attn_dropout
            out = used @ value  #@attn_dropout
            out = weights @ value  #@!attn_dropout
        if query_mask is not None:
            out = torch.where(query_mask[..., None], out, 0.0)
        return (out, weights) if self.return_scores else out  #@attn_scores
        return out  #@!attn_scores
''',
    deps=("attention_mask", "masked_softmax", "fused_attention"),
)

_add(
    "Projection",
    '''
class Projection(nn.Module):
    """A MultiHeadAttention sub-layer's weights, Keras' EinsumDense: kernel and bias."""

    def __init__(self, kernel_shape, bias_shape=None):
        super().__init__()
        self.kernel = nn.Parameter(torch.zeros(kernel_shape))
        self.bias = nn.Parameter(torch.zeros(bias_shape)) if bias_shape is not None else None
''',
)

_add(
    "MultiHeadAttention",
    '''
class MultiHeadAttention(nn.Module):
    """Keras' MultiHeadAttention. query, key and value are projected to heads
    (kernels [F, heads, size], biases [heads, size]); the weights are
    softmax(q . k / sqrt(key_dim)) over the allowed key steps; the heads' context is
    projected back by attention_output (kernel [heads, value_dim, F_out]). As in
    Keras, the query mask is part of the attention mask: a query step that attends
    to nothing (masked, or no valid key) gets weights 0, so its output is
    attention_output's bias. sdpa: F.scaled_dot_product_attention computes the
    context (no weights to return).
    Dropout on the weights in training: dropout_masks["{name}"] [B, heads, Tq, Tk]  #@attn_dropout
    when given, else drawn; the weights are then computed explicitly.  #@attn_dropout
    """

    def __init__(
        self,
        name,
        sizes,
        num_heads,
        key_dim,
        value_dim,
        *,
        use_bias=True,
        dropout=0.0,  #@attn_dropout
        causal=False,  #@attn_causal
        return_scores=False,  #@attn_scores
        sdpa=True,
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
        self.dropout = dropout  #@attn_dropout
        self.causal = causal  #@attn_causal
        self.return_scores = return_scores  #@attn_scores
        self.sdpa = sdpa

    @staticmethod
    def heads(x, projection):
        """[B, T, F] -> [B, heads, T, size]."""
        y = torch.einsum("btf,fnh->bnth", x, projection.kernel)
        return y if projection.bias is None else y + projection.bias[:, None, :]

    def forward(
        self,
        query,
        value,
        key=None,
        query_mask=None,
        key_mask=None,
        dropout_masks=None,  #@attn_dropout
        training=None,  #@attn_dropout
    ):
        key = value if key is None else key
        allowed = attention_mask(query, key, key_mask, query_mask, self.causal)  #@attn_causal
        allowed = attention_mask(query, key, key_mask, query_mask)  #@!attn_causal
        allowed = None if allowed is None else allowed[:, None]  # the same for every head
        q = self.heads(query, self.query)
        k = self.heads(key, self.key)
        v = self.heads(value, self.value)
        scale = self.key_dim**-0.5
        training = self.training if training is None else training  #@attn_dropout
        dropping = training and self.dropout > 0  #@attn_dropout
        if self.sdpa and not dropping:  #@attn_dropout
        if self.sdpa:  #@!attn_dropout
            context = fused_attention(q, k, v, allowed, scale)
        else:
            weights = masked_softmax((q * scale) @ k.transpose(-1, -2), allowed)
            used = weights  #@attn_dropout
            if dropping:  #@attn_dropout
                keep = keep_mask(dropout_masks, self.name, weights.shape, self.dropout, weights)  #@attn_dropout
                used = weights * keep  #@attn_dropout
            context = used @ v  #@attn_dropout
            context = weights @ v  #@!attn_dropout
        out = torch.einsum("bnth,nho->bto", context, self.attention_output.kernel)
        if self.attention_output.bias is not None:
            out = out + self.attention_output.bias
        return (out, weights) if self.return_scores else out  #@attn_scores
        return out  #@!attn_scores
''',
    deps=("Projection", "attention_mask", "masked_softmax", "fused_attention"),
)

_add(
    "all_valid",
    '''
def all_valid(x):
    """The mask of an unmasked sequence: every step valid."""
    return torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
''',
)

#: the import line a snippet's ``imports`` name stands for
IMPORT_LINES = {
    "packed": "from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence",
}

_TAG = re.compile(r"\s*#@([\w,|!]+)$")


def _keep(tag: str, features: set[str]) -> bool:
    """``a,b``: both; ``a|b``: either; ``!a``: not a."""

    def atom(a: str) -> bool:
        return (a[1:] not in features) if a.startswith("!") else (a in features)

    return all(any(atom(a) for a in part.split("|")) for part in tag.split(","))


def render(name: str, features: set[str]) -> str:
    """A snippet's text with its tagged lines kept or dropped for ``features``."""
    out: list[str] = []
    for line in SNIPPETS[name].text.splitlines():
        m = _TAG.search(line)
        if m is not None:
            if not _keep(m.group(1), features):
                continue
            line = line[: m.start()]
        line = line.rstrip()
        if line or (out and out[-1]):  # a dropped line leaves no double blank line
            out.append(line)
    return "\n".join(out) + "\n"


def select(names: set[str]) -> list[str]:
    """``names`` and their dependencies, in the order of this file."""
    return with_dependencies(names, {n: s.deps for n, s in SNIPPETS.items()})
