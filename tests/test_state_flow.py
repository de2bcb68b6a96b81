"""State flow on every backend: encoder states into decoders, state reuse, statefulness.

Three families of models, each run on torch, JAX (also on its fused-LSTM path,
with lstm_ref standing in for cuDNN) and Keras (TensorFlow) with the same
random weights (biases included) and compared with the reference
interpreter (1e-5, scaled by the magnitude of the values above 1), and with a
hand-written Keras 3 model built from real ``keras.layers`` on those weights:

1. A Bidirectional encoder whose ``return_state`` states, merged by ``concat``
   or ``add``, are the initial state of a decoder (LSTM and GRU, the seed's
   encoder-decoder with a Bidirectional encoder). Each model holds four
   encoder/decoder pairs whose masks cover the kinds ``post``, ``pre``, gaps
   (``any``) and ``post`` nonempty (the one Keras runs with its own classes),
   on rows that are full, padded and empty; some encoders start from non-zero
   states given as inputs.
2. State reuse (the seed's "RNN state reuse"): one layer's states are the
   initial state of two different layers, of a later layer of the same stack,
   and of both directions of a Bidirectional layer.
3. Cross-batch statefulness (the seed's three paragraphs): a ``stateful=true``
   layer called on three chunks in turn, the last one padded with an empty
   row, ends in the states of one call on the concatenation; ``reset_states()``
   returns to zero. On JAX both the functional ``apply(..., return_state=True)``
   chain and the wrapper class.

Expected values come from the reference interpreter, the hand-written Keras
model or the run on the concatenated sequence, never from the backend under test.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
jax = pytest.importorskip("jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
keras = pytest.importorskip("keras")

import seqdsl  # noqa: E402
import seqdsl.runtime.jax as jax_runtime  # noqa: E402
from seqdsl.checker import CheckedModel  # noqa: E402
from seqdsl.padding import lengths_to_mask  # noqa: E402
from seqdsl.reference import run_reference  # noqa: E402
from seqdsl.types import TensorType  # noqa: E402

# TensorFlow's tensors warn under NumPy 2 when converted (np.array(tensor)); harmless
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept:DeprecationWarning"
)

ROOT = Path(__file__).resolve().parent.parent
TOL = 1e-5
#: jax-fused: the JAX module on its fused-LSTM path (jax.experimental.rnn, used on CUDA),
#: with lstm_ref in place of cuDNN so that it runs on CPU
BACKENDS = ("torch", "jax", "jax-fused", "keras")
#: the largest error seen per backend (printed at the end with `pytest -s`)
MAX_ERR: dict[str, float] = {}


def _tensorflow() -> None:
    if keras.backend.backend() != "tensorflow":
        pytest.skip("the hand-written Keras models run on Keras' TensorFlow backend")


@pytest.fixture(scope="module", autouse=True)
def _report() -> Any:
    yield
    if MAX_ERR:
        print("\nstate flow, max |error|:", {k: f"{v:.2g}" for k, v in sorted(MAX_ERR.items())})


# --------------------------------------------------------------------------
# inputs, weights, comparisons


@dataclass
class Inputs:
    """One call's arguments, as the reference takes them."""

    values: list[np.ndarray]
    lengths: dict[str, np.ndarray] = field(default_factory=dict)
    masks: dict[str, np.ndarray] = field(default_factory=dict)


def rand_weights(m: CheckedModel, seed: int, scale: float = 0.5) -> dict[str, np.ndarray]:
    """Random non-trivial weights, biases included, in float32 (canonical layout)."""
    rng = np.random.default_rng(seed)
    return {
        f"{layer.name}/{w.name}": rng.normal(0.0, scale, w.shape).astype(np.float32)
        for layer in m.layers
        for w in layer.weights
    }


def to_numpy(x: object) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return np.asarray(x.detach().cpu().numpy())
    return np.asarray(keras.ops.convert_to_numpy(x))


def flat(x: object) -> list[np.ndarray]:
    if isinstance(x, (tuple, list)):
        return [a for item in x for a in flat(item)]
    return [to_numpy(x)]


def close(got: Sequence[object], want: Sequence[object], what: str, key: str = "") -> None:
    """Every array against the expected one (masks exactly); the tolerance is absolute
    up to 1 and relative beyond. Records the largest error under ``key``."""
    g, w = flat(list(got)), flat(list(want))
    assert len(g) == len(w), f"{what}: {len(g)} arrays, expected {len(w)}"
    for i, (a, b) in enumerate(zip(g, w, strict=True)):
        assert a.shape == b.shape, f"{what} [{i}]: shape {a.shape}, expected {b.shape}"
        if b.dtype == bool:
            assert a.dtype == bool and np.array_equal(a, b), f"{what} [{i}]: mask differs"
            continue
        err = float(np.max(np.abs(a.astype(np.float64) - b))) if a.size else 0.0
        scale = max(1.0, float(np.max(np.abs(b)))) if b.size else 1.0
        if key:
            MAX_ERR[key] = max(MAX_ERR.get(key, 0.0), err)
        assert err <= TOL * scale, f"{what} [{i}]: max error {err:.3g} > {TOL} x {scale:.3g}"


def nontrivial(arrays: Sequence[object]) -> None:
    vals = [a for a in flat(list(arrays)) if a.dtype != bool and a.size]
    assert max(float(np.max(np.abs(a))) for a in vals) > 1e-3


def row_mask(
    kind: str, rows: int, steps: int, rng: np.random.Generator, empty: int = 2
) -> np.ndarray:
    """[rows, steps] masks of a kind: a full row, a padded (or gapped) row, an empty
    row at index ``empty`` (a row of one step for `full`, declared nonempty), more."""
    if kind == "any":
        m = rng.random((rows, steps)) < 0.5
        m[0] = True
        m[1] = np.arange(steps) % 3 != 1  # gaps
        m[2] = False  # empty
    else:
        lens = np.array([steps, steps // 2, 1 if kind == "full" else 0]
                        + [max(1, steps - 1 - i) for i in range(rows - 3)])  # fmt: skip
        m = lengths_to_mask(lens[:rows], steps, "pre" if kind == "pre" else "post")
    m[[2, empty]] = m[[empty, 2]]
    return m


def decl(name: str, kind: str, batch: str, time: str, features: int) -> str:
    """An input declaration with a mask of ``kind`` (post, pre, any, full = post nonempty)."""
    shape = f"f32[{batch}, {time}, {features}]"
    if kind == "any":
        return f"input {name}: {shape} masked"
    side = "post" if kind == "full" else kind
    nonempty = ", nonempty=true" if kind == "full" else ""
    return f"input {name}: {shape} pad({side}{nonempty}) masked"


def make_inputs(
    m: CheckedModel,
    kinds: dict[str, str],
    steps: dict[str, int],
    seed: int,
    empty: Callable[[str], int] = lambda name: 2,
) -> Inputs:
    """Values for every input of ``m``: sequences with masks of their kinds (padding
    zeroed; the empty row of input ``name`` at ``empty(name)``), states [B, U] drawn
    N(0, 0.8). Symbolic sizes: B = 4, time from ``steps``."""
    rng = np.random.default_rng(seed)
    out = Inputs([])
    for d in m.model.inputs:
        sizes = {"B": 4, **steps}
        shape = [v if isinstance(v, int) else sizes[str(v)] for v in (x.value for x in d.dims)]
        if len(shape) == 2:  # a state
            out.values.append(rng.normal(0.0, 0.8, shape))
            continue
        mk = row_mask(kinds[d.name], shape[0], shape[1], rng, empty(d.name))
        out.values.append(np.where(mk[..., None], rng.normal(0.0, 1.0, shape), 0.0))
        if kinds[d.name] == "any":
            out.masks[d.name] = mk
        else:
            out.lengths[d.name] = mk.sum(axis=1)
    return out


def reference(m: CheckedModel, w: dict[str, np.ndarray], inp: Inputs, **kw: Any) -> Any:
    w64 = {k: v.astype(np.float64) for k, v in w.items()}
    return run_reference(m, w64, inp.values, lengths=inp.lengths, masks=inp.masks, **kw)


# --------------------------------------------------------------------------
# the three backends behind one interface


_KNOBS = pytest.MonkeyPatch()


@pytest.fixture(autouse=True)
def _restore_runtime_knobs() -> Iterator[None]:
    yield
    _KNOBS.undo()


class Runner:
    """A built model of one backend: load weights, call, read and reset states."""

    def __init__(self, backend: str, prog: seqdsl.Program, weights: dict[str, np.ndarray]):
        self.m = prog.model()
        self.fused_calls: list[int] = []
        self.fused = backend == "jax-fused"
        if self.fused:
            fusable = [la.name for la in self.m.layers
                       if la.kernels and la.kernels["jax"].kernel.startswith("cudnn")]  # fmt: skip
            if not fusable:
                pytest.skip("no LSTM here: JAX has no fused kernel for GRU and SimpleRNN")
            self.net: Any = prog.build("jax", seed=0)
            # the knobs live in the shared runtime: set for this test, restored after it
            _KNOBS.setattr(jax_runtime, "FUSED_LSTM", "always")
            _KNOBS.setattr(jax_runtime, "_fused_lstm", lstm_ref_adapter(self.fused_calls))
            backend = "jax"
        else:
            self.net = prog.build(backend, seed=0)
        self.backend = backend
        self.net.load_canonical(weights)

    def __call__(self, inp: Inputs) -> list[object]:
        if self.backend == "torch":
            with torch.no_grad():
                out = self.net(
                    *[torch.as_tensor(x) for x in inp.values],
                    lengths=inp.lengths or None,
                    masks=inp.masks or None,
                )
        elif self.backend == "jax":
            out = self.net(*inp.values, lengths=inp.lengths or None, masks=inp.masks or None)
        else:
            out = self.net(keras_arguments(self.m, inp))
        return list(out) if len(self.m.model.outputs) > 1 else [out]

    def states(self, layer: str) -> list[np.ndarray]:
        if self.backend == "torch":
            mod = self.net.get_submodule(layer)
            return [to_numpy(getattr(mod, s)) for s in mod.state_names]
        if self.backend == "jax":
            names = sys.modules[type(self.net).__module__].STATEFUL[layer][2]
            return [np.asarray(self.net.variables["state"][layer][n]) for n in names]
        return [to_numpy(v) for v in self.net.get_layer(layer).states]

    def reset_states(self) -> None:
        self.net.reset_states()

    def done(self) -> None:
        """After the calls: a jax-fused run did take the fused kernel."""
        assert self.fused_calls or not self.fused, "the fused LSTM kernel was never called"


def lstm_ref_adapter(calls: list[int]) -> Callable[..., Any]:
    """jax.experimental.rnn.lstm's signature around lstm_ref (which runs on CPU)."""
    from jax.experimental import rnn

    def fused(x, h0, c0, weights, seq_lengths, input_size, hidden_size, bidirectional):  # type: ignore[no-untyped-def]
        calls.append(1)
        w_ih, w_hh, b_ih, b_hh = rnn.unpack_lstm_weights(
            weights, input_size, hidden_size, 1, bidirectional
        )
        return rnn.lstm_ref(x, h0, c0, w_ih, w_hh, b_ih, b_hh, seq_lengths, input_size,
                            hidden_size, 1, 0.0, bidirectional)  # fmt: skip

    return fused


def keras_arguments(m: CheckedModel, inp: Inputs) -> list[np.ndarray]:
    """The emitted Keras model's inputs: each `masked` input followed by its
    lengths (with `pad`) or its mask (without)."""
    out: list[np.ndarray] = []
    for d, x in zip(m.model.inputs, inp.values, strict=True):
        out.append(np.asarray(x, np.float32))
        if d.masked:
            if d.name in m.pads:
                out.append(np.asarray(inp.lengths[d.name], np.int32))
            else:
                out.append(np.asarray(inp.masks[d.name], bool))
    return out


def set_twin_weights(twin: Any, m: CheckedModel, w: dict[str, np.ndarray]) -> None:
    """Canonical weights into a hand-written Keras model whose layers carry the
    seqdsl layer names (the canonical layout is Keras' get_weights() order)."""
    for layer in m.layers:
        if layer.weights:
            twin.get_layer(layer.name).set_weights(
                [w[f"{layer.name}/{spec.name}"] for spec in layer.weights]
            )


def twin_arguments(m: CheckedModel, inp: Inputs) -> dict[str, list[np.ndarray]]:
    """A hand-written twin's arguments by input name: the value, then its boolean mask."""
    out: dict[str, list[np.ndarray]] = {}
    for d, x in zip(m.model.inputs, inp.values, strict=True):
        item = [np.asarray(x, np.float32)]
        if d.name in inp.masks:
            item.append(inp.masks[d.name])
        elif d.name in inp.lengths:
            item.append(lengths_to_mask(inp.lengths[d.name], x.shape[1], m.pads[d.name].side))
        out[d.name] = item
    return out


# --------------------------------------------------------------------------
# 1. a Bidirectional encoder's states into a decoder

#: (encoder mask, decoder mask, encoder starts from input states, decoder returns sequences)
PAIRS = (("post", "pre", True, True), ("pre", "any", False, False),
         ("any", "post", True, False), ("full", "full", False, True))  # fmt: skip
SEQ2SEQ_VARIANTS = ("lstm-concat", "lstm-add", "gru-concat", "gru-add")


def seq2seq_source(variant: str) -> tuple[str, dict[str, str]]:
    cell, merge = variant.split("-")
    layer = {"lstm": "LSTM", "gru": "GRU"}[cell]
    names = ["h", "c"] if cell == "lstm" else ["h"]
    dec_units = 32 if merge == "concat" else 16
    lines, outs, kinds = [], [], {}
    for i, (ek, dk, init, seq) in enumerate(PAIRS):
        kinds[f"src{i}"], kinds[f"tgt{i}"] = ek, dk
        lines += [decl(f"src{i}", ek, "B", "S", 4), decl(f"tgt{i}", dk, "B", "T", 3)]
        args = f"src{i}"
        if init:
            starts = [f"s{i}_{k}" for k in range(2 * len(names))]
            lines += [f"input {s}: f32[B, 16]" for s in starts]
            args += f", initial_state=[{', '.join(starts)}]"
        fw = [f"{n}f{i}" for n in names]
        bw = [f"{n}b{i}" for n in names]
        lines.append(
            f"e{i}, {', '.join(fw + bw)} = "
            f'Bidirectional({layer}(16, return_state=true), name="enc{i}")({args})'
        )
        for n, f, b in zip(names, fw, bw, strict=True):
            lines.append(f"{n}{i} = {merge}({f}, {b})")
        flags = "return_sequences=true, return_state=true" if seq else "return_state=true"
        dstates = [f"d{n}{i}" for n in names]
        lines.append(
            f'd{i}, {", ".join(dstates)} = {layer}({dec_units}, {flags}, name="dec{i}")'
            f"(tgt{i}, initial_state=[{', '.join(f'{n}{i}' for n in names)}])"
        )
        outs += [f"d{i} with mask" if seq else f"d{i}", f"e{i}", *fw, *bw, *dstates]
    body = "\n".join("    " + line for line in lines)
    src = f"model BiStates {{\n{body}\n    output {', '.join(outs)}\n}}\n"
    return src, kinds


def seq2seq_twin(variant: str) -> Any:
    """The same network from keras.layers, masks passed by hand (`mask=`: Keras
    gives a layer called with `initial_state` no implicit mask), zeros at masked
    steps asked of the decoders (`zero_output_for_mask`, Keras' cuDNN behaviour)."""
    cell, merge = variant.split("-")
    L = keras.layers
    layer = {"lstm": L.LSTM, "gru": L.GRU}[cell]
    n = 2 if cell == "lstm" else 1
    merge_layer = {"concat": L.Concatenate, "add": L.Add}[merge]
    inputs: list[Any] = []
    outputs: list[Any] = []
    for i, (_ek, _dk, init, seq) in enumerate(PAIRS):
        src, src_mask = keras.Input((None, 4)), keras.Input((None,), dtype="bool")
        tgt, tgt_mask = keras.Input((None, 3)), keras.Input((None,), dtype="bool")
        inputs += [src, src_mask, tgt, tgt_mask]
        starts = [keras.Input((16,)) for _ in range(2 * n)] if init else None
        inputs += starts or []
        enc = L.Bidirectional(layer(16, return_state=True), name=f"enc{i}")
        e, *states = enc(src, mask=src_mask, initial_state=starts)
        fw, bw = states[:n], states[n:]
        merged = [merge_layer()([f, b]) for f, b in zip(fw, bw, strict=True)]
        dec = layer(32 if merge == "concat" else 16, return_sequences=seq, return_state=True,
                    zero_output_for_mask=seq, name=f"dec{i}")  # fmt: skip
        d, *dstates = dec(tgt, initial_state=merged, mask=tgt_mask)
        outputs += [d, e, *fw, *bw, *dstates]
    return keras.Model(inputs, outputs)


def seq2seq_twin_inputs(m: CheckedModel, inp: Inputs) -> list[np.ndarray]:
    """The seq2seq twin's input order: per pair src, its mask, tgt, its mask, starts."""
    args = twin_arguments(m, inp)
    out: list[np.ndarray] = []
    for i, (_ek, _dk, init, _seq) in enumerate(PAIRS):
        out += [*args[f"src{i}"], *args[f"tgt{i}"]]
        if init:
            out += [a for k in range(4) if f"s{i}_{k}" in args for a in args[f"s{i}_{k}"]]
    return out


@pytest.fixture(scope="module", params=SEQ2SEQ_VARIANTS)
def seq2seq(request: pytest.FixtureRequest) -> tuple[str, seqdsl.Program, Inputs, Any]:
    variant = request.param
    src, kinds = seq2seq_source(variant)
    prog = seqdsl.loads(src, name=f"{variant}.seq")
    m = prog.model()
    # the decoders' empty row is not the encoders': it starts from carried states
    inp = make_inputs(m, kinds, {"S": 6, "T": 5}, 1, lambda n: 1 if n.startswith("tgt") else 2)
    w = rand_weights(m, seed=2)
    ref = reference(m, w, inp)
    nontrivial(ref.outputs)
    return variant, prog, inp, (w, ref)


def test_seq2seq_checks_clean(seq2seq: Any) -> None:
    _variant, prog, _inp, _ = seq2seq
    assert [d.code for d in prog.diagnostics] == []
    m = prog.model()
    # the merged states have the decoder's units
    for i in range(len(PAIRS)):
        units = m.layer(f"dec{i}").config["units"]
        t = m.types[f"h{i}"]
        assert isinstance(t, TensorType) and t.features is not None
        assert t.features.value == units and t.mask is None
    # the inputs' mask kinds: every side, maybe-empty but for the `full` pair
    kinds = set()
    for d in m.model.inputs:
        t = m.types[d.name]
        if isinstance(t, TensorType) and t.mask is not None:
            kinds.add((t.mask.side, t.mask.nonempty))
    assert kinds == {("post", False), ("pre", False), ("any", False), ("post", True)}


@pytest.mark.parametrize("backend", BACKENDS)
def test_seq2seq_parity(seq2seq: Any, backend: str) -> None:
    variant, prog, inp, (w, ref) = seq2seq
    run = Runner(backend, prog, w)
    close(run(inp), ref.outputs, f"{variant} on {backend}", backend)
    run.done()


def test_seq2seq_hand_written_keras(seq2seq: Any) -> None:
    _tensorflow()
    variant, prog, inp, (w, ref) = seq2seq
    m = prog.model()
    twin = seq2seq_twin(variant)
    set_twin_weights(twin, m, w)
    got = twin(seq2seq_twin_inputs(m, inp))
    # the reference's outputs without the masks returned `with mask`
    want = [a for a in flat(list(ref.outputs)) if a.dtype != bool]
    close(got, want, f"{variant}: hand-written Keras", "keras twin")


# --------------------------------------------------------------------------
# 2. state reuse between layers


def reuse_source(cell: str) -> str:
    """`source`'s states start `first` and `second` (two different layers), `last`
    (a later layer of the same stack: source -> mid -> last) and both directions
    of `both`."""
    n = 2 if cell == "LSTM" else 1
    st = ", ".join(["h", "c"][:n])
    st2 = ", ".join(["h2", "c2"][:n])
    st3 = ", ".join(["h3", "c3"][:n])
    starts = ", ".join(f"s{k}" for k in range(n))
    return f"""
model StateReuse {{
    input x: f32[B, T, 4] pad(post) masked
    input y: f32[B, T, 3] pad(pre) masked
    input z: f32[B, T, 5] masked
{chr(10).join(f"    input s{k}: f32[B, 8]" for k in range(n))}
    src, {st} = {cell}(8, return_sequences=true, return_state=true, name="source")(x, initial_state=[{starts}])
    first = {cell}(8, name="first")(y, initial_state=[{st}])
    second, {st2} = {cell}(8, return_sequences=true, return_state=true, go_backwards=true, name="second")(z, initial_state=[{st}])
    mid = {cell}(8, return_sequences=true, name="mid")(src)
    last, {st3} = {cell}(8, return_state=true, name="last")(mid, initial_state=[{st}])
    both = Bidirectional({cell}(8, return_sequences=true), name="both")(y, initial_state=[{st}, {st2}])
    output first, second with mask, {st2}, last, {st3}, both with mask
}}
"""


def reuse_twin(cell: str) -> Any:
    L = keras.layers
    layer = {"LSTM": L.LSTM, "GRU": L.GRU, "SimpleRNN": L.SimpleRNN}[cell]
    n = 2 if cell == "LSTM" else 1
    x, xm = keras.Input((None, 4)), keras.Input((None,), dtype="bool")
    y, ym = keras.Input((None, 3)), keras.Input((None,), dtype="bool")
    z, zm = keras.Input((None, 5)), keras.Input((None,), dtype="bool")
    starts = [keras.Input((8,)) for _ in range(n)]
    seq = dict(return_sequences=True, zero_output_for_mask=True)
    src, *st = layer(8, return_state=True, name="source", **seq)(x, initial_state=starts, mask=xm)
    first = layer(8, name="first")(y, initial_state=st, mask=ym)
    # go_backwards: the outputs in reversed time order (the zeros follow the reversed mask)
    second, *st2 = layer(8, return_state=True, go_backwards=True, name="second", **seq)(
        z, initial_state=st, mask=zm
    )
    mid = layer(8, name="mid", **seq)(src, mask=xm)
    last, *st3 = layer(8, return_state=True, name="last")(mid, initial_state=st, mask=xm)
    both = L.Bidirectional(layer(8, return_sequences=True), name="both")(
        y, initial_state=[*st, *st2], mask=ym
    )
    return keras.Model([x, xm, y, ym, z, zm, *starts], [first, second, *st2, last, *st3, both])


REUSE_KINDS = {"x": "post", "y": "pre", "z": "any"}


@pytest.fixture(scope="module", params=("LSTM", "GRU", "SimpleRNN"))
def reuse(request: pytest.FixtureRequest) -> tuple[str, seqdsl.Program, Inputs, Any]:
    cell = request.param
    prog = seqdsl.loads(reuse_source(cell), name=f"reuse_{cell}.seq")
    m = prog.model()
    inp = make_inputs(m, REUSE_KINDS, {"T": 6}, 3, lambda n: {"x": 2, "y": 3, "z": 1}[n])
    w = rand_weights(m, seed=4)
    ref = reference(m, w, inp)
    nontrivial(ref.outputs)
    return cell, prog, inp, (w, ref)


def test_reuse_checks_clean(reuse: Any) -> None:
    _cell, prog, _inp, _ = reuse
    assert [d.code for d in prog.diagnostics] == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_reuse_parity(reuse: Any, backend: str) -> None:
    cell, prog, inp, (w, ref) = reuse
    run = Runner(backend, prog, w)
    close(run(inp), ref.outputs, f"state reuse ({cell}) on {backend}", backend)
    run.done()


def test_reuse_hand_written_keras(reuse: Any) -> None:
    _tensorflow()
    cell, prog, inp, (w, ref) = reuse
    m = prog.model()
    twin = reuse_twin(cell)
    set_twin_weights(twin, m, w)
    args = twin_arguments(m, inp)
    got = twin([a for name in ("x", "y", "z", "s0", "s1") if name in args for a in args[name]])
    want = [a for a in flat(list(ref.outputs)) if a.dtype != bool]
    close(got, want, f"state reuse ({cell}): hand-written Keras", "keras twin")


def test_reuse_is_reuse(reuse: Any) -> None:
    """The states really flow: a layer started from `source`'s states differs from
    the same layer started from zeros (the reference on the same inputs)."""
    cell, prog, inp, (w, ref) = reuse
    m = prog.model()
    zero_starts = Inputs([np.zeros_like(v) if v.ndim == 2 else v for v in inp.values],
                         inp.lengths, inp.masks)  # fmt: skip
    other = reference(m, w, zero_starts)
    for name in ("first", "last"):
        a, b = ref.values[name][0], other.values[name][0]
        assert np.abs(a - b).max() > 1e-3, f"{cell}: {name} does not depend on the states"


# --------------------------------------------------------------------------
# 3. cross-batch statefulness: three paragraphs


def paragraphs_source(cell: str) -> str:
    """`reader` reads right-padded paragraphs and returns its final output and
    states; `tagger` and `holder` read paragraphs with gaps and return every step,
    0 at masked steps (`tagger`) or the last valid output (`holder`)."""
    st = "h, c" if cell == "LSTM" else "h"
    return f"""
model Paragraphs {{
    input paragraph: f32[3, T, 5] pad(post) masked
    input notes: f32[3, T, 4] masked
    out, {st} = {cell}(8, stateful=true, return_state=true, name="reader")(paragraph)
    tags = {cell}(6, stateful=true, return_sequences=true, name="tagger")(notes)
    held = {cell}(6, stateful=true, return_sequences=true, masked_output=carry, name="holder")(notes)
    output out, {st}, tags with mask, held with mask
}}
"""


STATEFUL_LAYERS = ("reader", "tagger", "holder")
N_STEPS = 5


def paragraph_chunks(seed: int) -> list[Inputs]:
    """Three calls: full paragraphs, then gaps in `notes` (row 0 starts each later
    call with a masked step), then a last paragraph padded after its end with an
    empty row (row 2), `notes` with an empty row too."""
    rng = np.random.default_rng(seed)
    chunks = []
    for k in range(3):
        p = rng.normal(0.0, 1.0, (3, N_STEPS, 5))
        lens = np.array([N_STEPS, 2, 0]) if k == 2 else np.full(3, N_STEPS)
        p = np.where(lengths_to_mask(lens, N_STEPS, "post")[..., None], p, 0.0)
        gaps = np.ones((3, N_STEPS), bool) if k == 0 else rng.random((3, N_STEPS)) < 0.6
        if k > 0:
            gaps[0, 0] = False
        if k == 2:
            gaps[1] = False
        notes = np.where(gaps[..., None], rng.normal(0.0, 1.0, (3, N_STEPS, 4)), 0.0)
        chunks.append(Inputs([p, notes], {"paragraph": lens}, {"notes": gaps}))
    return chunks


def concatenated(chunks: Sequence[Inputs]) -> Inputs:
    """The three calls as one sequence: values and masks joined in time (the
    `paragraph` mask stays right-padded: only the last chunk has padding)."""
    values = [np.concatenate([c.values[i] for c in chunks], axis=1) for i in range(2)]
    lengths = {"paragraph": np.sum([c.lengths["paragraph"] for c in chunks], axis=0)}
    masks = {"notes": np.concatenate([c.masks["notes"] for c in chunks], axis=1)}
    return Inputs(values, lengths, masks)


@pytest.fixture(scope="module", params=("LSTM", "GRU", "SimpleRNN"))
def paragraphs(request: pytest.FixtureRequest) -> Any:
    cell = request.param
    prog = seqdsl.loads(paragraphs_source(cell), name=f"paragraphs_{cell}.seq")
    m = prog.model()
    w = rand_weights(m, seed=5)
    chunks = paragraph_chunks(seed=6)
    refs, states = [], None
    for c in chunks:  # the reference, each call starting from the last one's states
        refs.append(reference(m, w, c, states=states))
        states = refs[-1].states
    whole = reference(m, w, concatenated(chunks))  # one call from zero states
    for r in refs:
        nontrivial(r.outputs)
    return cell, prog, chunks, w, refs, whole


def test_three_calls_equal_one_call_on_the_concatenation(paragraphs: Any) -> None:
    """The reference: the states after the three calls are those of one call on the
    concatenation; so are the outputs at valid steps. A row with no valid step in
    the last call keeps its carried state but outputs 0 (semantics.md: a fully
    masked row's last output is 0), where the concatenation outputs that state."""
    cell, _prog, chunks, _w, refs, whole = paragraphs
    for layer in STATEFUL_LAYERS:
        close(refs[-1].states[layer], whole.states[layer], f"{cell}: states of {layer}")
    out, out_whole = refs[-1].values["out"][0], whole.values["out"][0]
    close([out[:2]], [out_whole[:2]], f"{cell}: final output, rows with valid steps")
    assert not out[2].any() and np.abs(out_whole[2]).max() > 1e-3
    np.testing.assert_allclose(whole.states["reader"][0][2], refs[1].states["reader"][0][2])
    tags = np.concatenate([r.values["tags"][0] for r in refs], axis=1)
    close([tags], [whole.values["tags"][0]], f"{cell}: tags of the three calls, joined")
    # masked_output=carry starts at 0 in each call: before a call's first valid step
    # the joined outputs are 0 where the one call carries the previous output
    held = np.concatenate([r.values["held"][0] for r in refs], axis=1)
    held_whole = whole.values["held"][0]
    fresh = np.concatenate([np.cumsum(c.masks["notes"], axis=1) == 0 for c in chunks], axis=1)
    close([held[~fresh]], [held_whole[~fresh]], f"{cell}: held, after each call's first valid step")
    assert not held[fresh].any() and np.abs(held_whole[0, N_STEPS]).max() > 1e-3


@pytest.mark.parametrize("backend", BACKENDS)
def test_stateful_paragraphs(paragraphs: Any, backend: str) -> None:
    cell, prog, chunks, w, refs, whole = paragraphs
    run = Runner(backend, prog, w)
    what = f"{cell} on {backend}"
    for k, (c, r) in enumerate(zip(chunks, refs, strict=True)):
        close(run(c), r.outputs, f"{what}, call {k + 1}", backend)
        for layer in STATEFUL_LAYERS:
            close(run.states(layer), r.states[layer], f"{what}, states of {layer} after call {k + 1}",
                  backend)  # fmt: skip
    # reset_states(): back to zero states, so a call on the concatenation is one run
    run.reset_states()
    for layer in STATEFUL_LAYERS:
        assert all(not s.any() for s in run.states(layer)), f"{what}: {layer} not reset"
    close(run(concatenated(chunks)), whole.outputs, f"{what}, the concatenation", backend)
    for layer in STATEFUL_LAYERS:
        close(run.states(layer), refs[-1].states[layer], f"{what}, states of {layer}", backend)
    run.done()


@pytest.mark.parametrize("paragraphs", ["LSTM"], indirect=True)  # the same code for every cell
def test_stateful_jax_functional(paragraphs: Any) -> None:
    """JAX's pure form: apply(..., return_state=True) returns the new state, which the
    caller feeds to the next call; apply itself changes nothing."""
    cell, prog, chunks, w, refs, _whole = paragraphs
    jm = Runner("jax", prog, w).net
    mod = sys.modules[type(jm).__module__]
    apply = jax.jit(mod.apply, static_argnames=("training", "return_state"))
    variables = jm.variables
    start = variables
    for k, (c, r) in enumerate(zip(chunks, refs, strict=True)):
        out, state = apply(variables, *c.values, lengths=c.lengths, masks=c.masks,
                           return_state=True)  # fmt: skip
        close(list(out), r.outputs, f"{cell}: apply, call {k + 1}", "jax")
        for layer in STATEFUL_LAYERS:
            names = mod.STATEFUL[layer][2]
            close(
                [state[layer][n] for n in names], r.states[layer], f"{cell}: state {layer}", "jax"
            )
        variables = {"params": variables["params"], "state": state}
    # the same call on the initial variables gives the first call's result again
    out = apply(start, *chunks[0].values, lengths=chunks[0].lengths, masks=chunks[0].masks)
    close(list(out), refs[0].outputs, f"{cell}: apply is pure", "jax")


def paragraphs_twin(cell: str) -> Any:
    L = keras.layers
    layer = {"LSTM": L.LSTM, "GRU": L.GRU, "SimpleRNN": L.SimpleRNN}[cell]
    p = keras.Input(batch_shape=(3, None, 5))
    pm = keras.Input(batch_shape=(3, None), dtype="bool")
    n = keras.Input(batch_shape=(3, None, 4))
    nm = keras.Input(batch_shape=(3, None), dtype="bool")
    out = layer(8, stateful=True, return_state=True, name="reader")(p, mask=pm)
    tags = layer(6, stateful=True, return_sequences=True, zero_output_for_mask=True,
                 name="tagger")(n, mask=nm)  # fmt: skip
    # Keras' own default (CPU): the last valid output at masked steps, 0 before the first
    held = layer(6, stateful=True, return_sequences=True, name="holder")(n, mask=nm)
    return keras.Model([p, pm, n, nm], [*out, tags, held])


def test_stateful_hand_written_keras(paragraphs: Any) -> None:
    """keras.layers.LSTM(stateful=True) itself, called on the three paragraphs."""
    _tensorflow()
    cell, prog, chunks, w, refs, whole = paragraphs
    m = prog.model()
    twin = paragraphs_twin(cell)
    set_twin_weights(twin, m, w)
    for k, (c, r) in enumerate(zip(chunks, refs, strict=True)):
        args = twin_arguments(m, c)
        got = twin([*args["paragraph"], *args["notes"]])
        want = [a for a in flat(list(r.outputs)) if a.dtype != bool]
        close(got, want, f"{cell}: hand-written Keras, call {k + 1}", "keras twin")
        for layer in STATEFUL_LAYERS:
            got_states = [to_numpy(v) for v in twin.get_layer(layer).states]
            close(got_states, r.states[layer], f"{cell}: Keras states of {layer}", "keras twin")
    for layer in STATEFUL_LAYERS:  # Keras 3 models have no reset_states(); layers do
        twin.get_layer(layer).reset_states()
    args = twin_arguments(m, concatenated(chunks))
    got = twin([*args["paragraph"], *args["notes"]])
    close(got, [a for a in flat(list(whole.outputs)) if a.dtype != bool],
          f"{cell}: hand-written Keras, the concatenation", "keras twin")  # fmt: skip


# --------------------------------------------------------------------------
# the example: three paragraphs of a ragged text, and the guide's state reuse

EXAMPLE = ROOT / "examples" / "stateful_paragraphs.seq"

#: the guide's `new_lstm_layer(paragraph3, initial_state=existing_state)`, with the
#: weights of the example's layer: it must continue exactly as the stateful layer does
NEW_LAYER = """
model NewLayer {
    input paragraph: f32[20, T, 50] pad(post) masked
    input existing_h: f32[20, 64]
    input existing_c: f32[20, 64]
    new_output = LSTM(64, name="lstm_layer")(paragraph, initial_state=[existing_h, existing_c])
    output new_output
}
"""


@pytest.fixture(scope="module")
def example() -> Any:
    prog = seqdsl.load(EXAMPLE)
    m = prog.model()
    w = rand_weights(m, seed=7, scale=0.2)
    rng = np.random.default_rng(8)
    chunks = []
    for k in range(3):
        lens = np.full(20, 10)
        if k == 2:  # the texts end inside the last paragraph; row 3's ended before it
            lens = rng.integers(1, 11, 20)
            lens[3] = 0
        p = rng.normal(0.0, 1.0, (20, 10, 50))
        chunks.append(Inputs([np.where(lengths_to_mask(lens, 10, "post")[..., None], p, 0.0)],
                             {"paragraph": lens}))  # fmt: skip
    whole = Inputs([np.concatenate([c.values[0] for c in chunks], axis=1)],
                   {"paragraph": np.sum([c.lengths["paragraph"] for c in chunks], axis=0)})  # fmt: skip
    return prog, w, chunks, reference(m, w, whole)


@pytest.mark.parametrize("backend", ("torch", "jax", "keras"))
def test_stateful_paragraphs_example(example: Any, backend: str) -> None:
    """The example on three paragraphs ends in the states of the reference's single
    call on the joined text; the guide's state reuse (a fresh layer with the same
    weights started from the states after paragraph2, reading paragraph3) gives the
    stateful layer's third output; reset_states() zeroes the states."""
    prog, w, chunks, whole = example
    run = Runner(backend, prog, w)
    outs = [run(c) for c in chunks]
    h_whole, c_whole = whole.states["lstm_layer"]
    close(outs[-1][1:], [h_whole, c_whole], f"example on {backend}: final states", backend)
    close(run.states("lstm_layer"), [h_whole, c_whole], f"example on {backend}", backend)
    valid = chunks[-1].lengths["paragraph"] > 0
    close([to_numpy(outs[-1][0])[valid]], [h_whole[valid]], f"example on {backend}: output")
    assert not to_numpy(outs[-1][0])[~valid].any()  # no valid step in the last call: 0
    # state reuse: existing_state = the states after paragraph2
    new = Runner(backend, seqdsl.loads(NEW_LAYER), {k: v for k, v in w.items()})
    existing = [to_numpy(s) for s in outs[1][1:]]
    got = new(Inputs([chunks[2].values[0], *existing], chunks[2].lengths))
    want = reference(new.m, w, Inputs([chunks[2].values[0], *existing], chunks[2].lengths))
    close(got, want.outputs, f"new layer on {backend}", backend)
    close(got, [to_numpy(outs[-1][0])], f"new layer on {backend} = the stateful layer's 3rd call")
    run.reset_states()
    assert all(not s.any() for s in run.states("lstm_layer"))
    nontrivial([h_whole])


STATEFUL_START = """
model Restart {
    input x: f32[3, T, 4] pad(pre) masked
    input start_h: f32[3, 6]
    input start_c: f32[3, 6]
    y, h, c = LSTM(6, stateful=true, return_state=true, name="restart")(x, initial_state=[start_h, start_c])
    output y, h, c
}
"""


@pytest.mark.parametrize("backend", ("torch", "jax", "keras"))
def test_stateful_initial_state_wins(backend: str) -> None:
    """A stateful layer given `initial_state` starts every call from it (Keras' rule);
    its final states are still kept, and read by nothing else."""
    prog = seqdsl.loads(STATEFUL_START)
    m = prog.model()
    w = rand_weights(m, seed=9)
    first = make_inputs(m, {"x": "pre"}, {"T": 5}, seed=10)
    second = make_inputs(m, {"x": "pre"}, {"T": 5}, seed=11)
    run = Runner(backend, prog, w)
    run(first)
    got = run(second)
    want = reference(m, w, second)  # from the given states, not from the first call's
    close(got, want.outputs, f"stateful with initial_state on {backend}", backend)
    close(run.states("restart"), want.states["restart"], f"states on {backend}", backend)
    carried = reference(m, w, second, states=reference(m, w, first).states)
    close(want.outputs, carried.outputs, "the reference: the given state wins")
