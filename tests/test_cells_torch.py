"""The PyTorch backend's cell blocks (``RNN(MyCell(...))``) and extern layers.

* The four cells of examples/custom/builtin_cells.seq give the built-in LSTM, GRU,
  GRU(reset_after=false) and SimpleRNN layers' numbers for the same canonical
  weights, on every recurrent option and mask kind; the built-in layers are held
  to the reference interpreter in the same tests (independent of cell blocks).
* NestedCell, MinimalRNNCell and a cell using every equation feature against
  hand-written NumPy implementations of the cells (independent of seqdsl).
* examples/custom/seed_masking_layers.seq with seed_externs' torch implementations
  against a hand-written torch model; missing implementations and, in debug mode,
  implementations that break their declaration.
* The loop: the same aten ops at every step for any mask, no host synchronisation.

``pytest --update-golden`` rewrites the golden files of the custom examples.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import seqdsl  # noqa: E402
from seqdsl.externs import ExternError, Impl  # noqa: E402
from seqdsl.reference import run_reference  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CUSTOM = ROOT / "examples" / "custom"
GOLDEN = ROOT / "tests" / "golden" / "torch"
F32_TOL, F64_TOL = 1e-5, 1e-10
_SRC = (CUSTOM / "builtin_cells.seq").read_text()
CELLS = _SRC[: _SRC.index("model CellsAsLayers")]  # the four cell blocks
B, T = 5, 7
LENGTHS = np.array([T, 3, 0, 1, 5])  # a full row, padded rows, an empty row


# --------------------------------------------------------------------------
# helpers


def masks_of_every_kind(seed: int = 0) -> dict[str, np.ndarray]:
    """post, pre and gap masks [B, T], each with a full, padded and an empty row."""
    steps = np.arange(T)[None, :]
    rng = np.random.default_rng(seed)
    gaps = rng.random((B, T)) < 0.5
    gaps[0], gaps[2], gaps[3] = True, False, False
    gaps[3, 4] = True  # a single valid step in the middle
    return {
        "post": steps < LENGTHS[:, None],
        "pre": steps >= T - LENGTHS[:, None],
        "gaps": gaps,
    }


def random_weights(net: Any, seed: int, scale: float = 0.5) -> dict[str, np.ndarray]:
    """Random canonical weights for ``net`` (biases too, so every path counts)."""
    rng = np.random.default_rng(seed)
    return {k: rng.normal(0.0, scale, size=v.shape) for k, v in net.canonical_weights().items()}


def numpy_out(out: object) -> list[np.ndarray]:
    """A model's outputs as NumPy arrays, `(value, mask)` pairs flattened."""
    if isinstance(out, (tuple, list)):
        return [a for o in out for a in numpy_out(o)]
    return [out.detach().cpu().numpy() if isinstance(out, torch.Tensor) else np.asarray(out)]


def max_error(got: Sequence[np.ndarray], want: Sequence[np.ndarray]) -> float:
    assert len(got) == len(want)
    err = 0.0
    for a, b in zip(got, want, strict=True):
        assert a.shape == b.shape, (a.shape, b.shape)
        if b.dtype == bool:
            assert (a == b).all(), "masks differ"
            continue
        err = max(err, float(np.max(np.abs(a.astype(np.float64) - b))) if a.size else 0.0)
    return err


def max_abs(values: Sequence[np.ndarray]) -> float:
    return max(float(np.max(np.abs(v))) for v in values if v.dtype != bool and v.size)


def max_value_ok(values: Sequence[np.ndarray]) -> bool:
    """Outputs large enough for the comparison to mean something."""
    return max_abs(values) > 1e-3


def pair(cell_model: str, builtin_model: str, dtype: str, seed: int = 7) -> tuple[Any, Any, Any]:
    """(cell net, built-in net, checked built-in model) sharing random canonical weights."""
    prog = seqdsl.loads(CELLS + cell_model + builtin_model, name="pair.seq")
    cells = prog.build("torch", model="C", dtype=dtype)
    builtin = prog.build("torch", model="N", dtype=dtype)
    w = random_weights(builtin, seed)
    assert list(w) == list(cells.WEIGHTS)  # the same canonical keys, in the same order
    builtin.load_canonical(w)
    cells.load_canonical(w)
    return cells, builtin, prog.model("N")


# --------------------------------------------------------------------------
# the built-in cells as cell blocks

RECURRENT_OPTIONS = [  # (options, initial state?, return_state?)
    ("return_sequences=true, return_state=true", False, True),
    ("go_backwards=true, return_sequences=true", False, False),
    ("masked_output=carry, return_sequences=true", True, False),
    ("go_backwards=true, return_state=true", True, True),
    ("go_backwards=true, masked_output=carry, return_sequences=true", True, False),
    ("", False, False),
]
BUILTIN = {
    "MyLSTMCell": ("LSTM(8{})", 2),
    "MyGRUCell": ("GRU(8{})", 1),
    "MyGRUCellV1": ("GRU(8, reset_after=false{})", 1),
    "MySimpleRNNCell": ("SimpleRNN(8{})", 1),
}


def option_models(cell: str) -> tuple[str, str]:
    """Model C (the cell block under every option) and N (the built-in layer)."""
    builtin, n_states = BUILTIN[cell]
    states = [f"s{i}" for i in range(n_states)]
    head = "    input x: f32[B, T, 6] masked\n" + "".join(
        f"    input {s}: f32[B, 8]\n" for s in states
    )
    c_lines, n_lines, outs = [], [], []
    for i, (opts, init, ret_state) in enumerate(RECURRENT_OPTIONS):
        res = [f"y{i}"] + ([f"y{i}_{s}" for s in states] if ret_state else [])
        outs += res
        call = f"(x, initial_state=[{', '.join(states)}])" if init else "(x)"
        sep = ", " if opts else ""
        c_lines.append(f'    {", ".join(res)} = RNN({cell}(8){sep}{opts}, name="l{i}"){call}\n')
        inner = builtin.format(", " + opts if opts else "")
        n_lines.append(f'    {", ".join(res)} = {inner[:-1]}, name="l{i}"){call}\n')
    tail = f"    output {', '.join(outs)}\n}}\n"
    return (
        "model C {\n" + head + "".join(c_lines) + tail,
        "model N {\n" + head + "".join(n_lines) + tail,
    )


@pytest.mark.parametrize("cell", list(BUILTIN))
def test_builtin_cells_match_builtin_layers(cell: str) -> None:
    """Every option and mask kind, float32 (1e-5) and float64 (1e-10); the built-in
    layers against the reference interpreter in the same runs."""
    c_src, n_src = option_models(cell)
    n_states = BUILTIN[cell][1]
    rng = np.random.default_rng(1)
    x = rng.normal(size=(B, T, 6))
    init = [rng.normal(size=(B, 8)) for _ in range(n_states)]
    unmasked = (c_src.replace(" masked\n", "\n"), n_src.replace(" masked\n", "\n"))
    for dtype, tol, (c, n) in (
        ("float32", F32_TOL, unmasked),
        ("float32", F32_TOL, (c_src, n_src)),
        ("float64", F64_TOL, (c_src, n_src)),
    ):
        cells, builtin, model = pair(c, n, dtype)
        w64 = {k: v.astype(np.float64) for k, v in builtin.canonical_weights().items()}
        kinds = masks_of_every_kind() if c == c_src else {"none": None}
        for kind, m in kinds.items():
            kw = {} if m is None else {"masks": {"x": m}}
            got = numpy_out(cells(x, *init, **kw))
            want = numpy_out(builtin(x, *init, **kw))
            ref = run_reference(model, w64, [x, *init], **kw).outputs
            assert max_value_ok(want)
            assert max_error(got, want) <= tol, (cell, dtype, kind, max_error(got, want))
            assert max_error(want, [np.asarray(r) for r in ref]) <= tol, (cell, dtype, kind)
            assert max_error(got, [np.asarray(r) for r in ref]) <= tol, (cell, dtype, kind)


def merges(name: str, layer: Callable[[str], str]) -> str:
    """Bidirectional under every merge mode; ``layer(flags)`` is the wrapped layer."""
    return f"""
model {name} {{
    input x: f32[B, T, 6] masked
    input s0: f32[B, 8]
    input s1: f32[B, 8]
    y0 = Bidirectional({layer("return_sequences=true")}, name="b0")(x)
    y1 = Bidirectional({layer("return_sequences=true")}, merge_mode=sum, name="b1")(x)
    y2 = Bidirectional({layer("")}, merge_mode=mul, name="b2")(x)
    y3, f3, b3 = Bidirectional({layer("return_state=true")}, merge_mode=ave,
                               name="b3")(x, initial_state=[s0, s1])
    y4, z4 = Bidirectional({layer("return_sequences=true")},
                           merge_mode=none, name="b4")(x)
    output y0, y1, y2, y3, f3, b3, y4, z4
}}
"""


def flags(f: str) -> str:
    return ", " + f if f else ""


def test_bidirectional_cell_merge_modes() -> None:
    c_src = merges("C", lambda f: f"RNN(MySimpleRNNCell(8){flags(f)})")
    n_src = merges("N", lambda f: f"SimpleRNN(8{flags(f)})")
    rng = np.random.default_rng(2)
    x = rng.normal(size=(B, T, 6))
    init = [rng.normal(size=(B, 8)) for _ in range(2)]
    for dtype, tol in (("float32", F32_TOL), ("float64", F64_TOL)):
        cells, builtin, model = pair(c_src, n_src, dtype)
        w64 = {k: v.astype(np.float64) for k, v in builtin.canonical_weights().items()}
        for kind, m in masks_of_every_kind(3).items():
            kw = {"masks": {"x": m}}
            got = numpy_out(cells(x, *init, **kw))
            want = numpy_out(builtin(x, *init, **kw))
            ref = [np.asarray(r) for r in run_reference(model, w64, [x, *init], **kw).outputs]
            assert max_value_ok(want)
            assert max_error(got, want) <= tol, (dtype, kind)
            assert max_error(got, ref) <= tol, (dtype, kind)
    assert "forward_layer.kernel" in cells.b0.state_dict()  # Keras' attribute name


def stateful(name: str, gru: str, lstm: str) -> str:
    return f"""
model {name} {{
    input x: f32[4, T, 6] masked
    y, yh = {gru}, stateful=true, return_sequences=true, return_state=true, name="g")(x)
    z, zh, zc = {lstm}, stateful=true, go_backwards=true, return_state=true, name="l")(x)
    output y, yh, z, zh, zc
}}
"""


def test_stateful_cells_over_two_calls() -> None:
    c_src = stateful("C", "RNN(MyGRUCell(8)", "RNN(MyLSTMCell(8)")
    n_src = stateful("N", "GRU(8", "LSTM(8")
    cells, builtin, model = pair(c_src, n_src, "float32")
    rng = np.random.default_rng(4)
    masks = masks_of_every_kind(5)
    xs = [rng.normal(size=(4, T, 6)) for _ in range(2)]
    ms = [masks["gaps"][:4], masks["post"][1:]]
    w64 = {k: v.astype(np.float64) for k, v in builtin.canonical_weights().items()}
    states: dict[str, list[np.ndarray]] | None = None
    for x, m in zip(xs, ms, strict=True):
        got = numpy_out(cells(x, masks={"x": m}))
        want = numpy_out(builtin(x, masks={"x": m}))
        ref = run_reference(model, w64, [x], masks={"x": m}, states=states)
        states = {k: list(v) for k, v in ref.states.items()}
        assert max_value_ok(want)
        assert max_error(got, want) <= F32_TOL
        assert max_error(got, [np.asarray(r) for r in ref.outputs]) <= F32_TOL
        for layer in ("g", "l"):
            mod = cells.get_submodule(layer)
            carried = [getattr(mod, s).numpy() for s in mod.state_names]
            assert max_error(carried, ref.states[layer]) <= F32_TOL
    assert [n for n, _ in cells.named_buffers()] == ["anchor", "g.h", "l.h", "l.c"]
    assert "g.h" not in cells.state_dict()
    cells.reset_states()
    builtin.reset_states()
    got = numpy_out(cells(xs[0], masks={"x": ms[0]}))
    assert max_error(got, numpy_out(builtin(xs[0], masks={"x": ms[0]}))) <= F32_TOL


def test_cells_take_the_builtin_weights_and_train() -> None:
    """The canonical weights of RNN(MyLSTMCell(u)) are LSTM(u)'s; gradients reach them."""
    c_src, n_src = option_models("MyLSTMCell")
    cells, builtin, _ = pair(c_src, n_src, "float32")
    assert set(cells.state_dict()) == set(cells.WEIGHTS.values())
    assert cells.l0.kernel.shape == (6, 32) and cells.l0.bias.shape == (32,)
    x = np.random.default_rng(0).normal(size=(B, T, 6)).astype(np.float32)
    s = [np.zeros((B, 8), np.float32)] * 2
    cells.train()
    out = cells(x, *s, masks={"x": masks_of_every_kind()["gaps"]})
    sum(o.square().sum() for o in out).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in cells.parameters())


# --------------------------------------------------------------------------
# cells against hand-written implementations


def rnn_numpy(
    step: Callable[[list[np.ndarray], list[np.ndarray]], tuple[list[np.ndarray], list[np.ndarray]]],
    inputs: list[np.ndarray],
    mask: np.ndarray,
    states: list[np.ndarray],
    out_shapes: list[tuple[int, ...]],
    *,
    return_sequences: bool = False,
    go_backwards: bool = False,
    carry: bool = False,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """A recurrent layer over a cell's step, as Keras (masked steps keep the states)."""
    b, t = mask.shape
    if go_backwards:
        inputs, mask = [x[:, ::-1] for x in inputs], mask[:, ::-1]
    last = [np.zeros((b, *s)) for s in out_shapes]
    seqs: list[list[np.ndarray]] = [[] for _ in out_shapes]
    for i in range(t):
        out, new = step([x[:, i] for x in inputs], states)
        for j in range(len(states)):
            v = mask[:, i].reshape(b, *[1] * (states[j].ndim - 1))
            states[j] = np.where(v, new[j], states[j])
        for j, o in enumerate(out):
            v = mask[:, i].reshape(b, *[1] * (o.ndim - 1))
            last[j] = np.where(v, o, last[j])
            seqs[j].append(last[j] if carry else np.where(v, o, 0.0))
    outs = [np.stack(s, 1) for s in seqs] if return_sequences else last
    return outs, states


def test_nested_cell_example() -> None:
    prog = seqdsl.load(CUSTOM / "nested_cell.seq")
    net = prog.build("torch", seed=3, dtype="float64")
    w = net.canonical_weights()
    rng = np.random.default_rng(0)
    video, audio = rng.normal(size=(4, 5, 32)), rng.normal(size=(4, 5, 64, 32))
    kinds = masks_of_every_kind()
    mv, ma = kinds["gaps"][:4, :5], kinds["post"][:4, :5]  # the layer's mask is their AND
    got = numpy_out(net(video, audio, masks={"video": mv, "audio": ma}))

    def step(
        xs: list[np.ndarray], st: list[np.ndarray]
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        o1 = xs[0] @ w["out_1_rnn/kernel_1"]
        o23 = np.einsum("bij,ijkl->bkl", xs[1], w["out_1_rnn/kernel_2_3"])
        return [o1, o23], [st[0] + o1, st[1] + o23]

    want, _ = rnn_numpy(step, [video, audio], mv & ma, [np.zeros((4, 10)), np.zeros((4, 20, 30))],
                        [(10,), (20, 30)])  # fmt: skip
    assert max_abs(want) > 1e-3
    assert max_error(got, want) <= F64_TOL
    assert (got[0][~(mv & ma).any(1)] == 0).all()  # an empty row outputs 0


NESTED_OPTIONS = """
model M {
    input video: f32[B, T, 5] masked
    input audio: f32[B, T, 4, 3] masked
    input s1: f32[B, 2]
    input s2: f32[B, 3, 2]
    a1, a2 = RNN(NestedCell(2, 3, 2), return_sequences=true, name="n1")(video, audio)
    b1, b2, bs1, bs2 = RNN(NestedCell(2, 3, 2), return_sequences=true, return_state=true,
        go_backwards=true, masked_output=carry, name="n2")(video, audio, initial_state=[s1, s2])
    output a1 with mask, a2 with mask, b1 with mask, b2, bs1, bs2
}
"""


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_nested_cell_options(dtype: str) -> None:
    """Two inputs with different masks, states of two shapes, sequences, carry, states."""
    src = (CUSTOM / "nested_cell.seq").read_text()
    cell = src[: src.index("model NestedInputs")]
    net = seqdsl.loads(cell + NESTED_OPTIONS).build("torch", dtype=dtype)
    w = {k: v.astype(np.float64) for k, v in random_weights(net, 1).items()}
    net.load_canonical(w)
    rng = np.random.default_rng(2)
    video, audio = rng.normal(size=(B, T, 5)), rng.normal(size=(B, T, 4, 3))
    s1, s2 = rng.normal(size=(B, 2)), rng.normal(size=(B, 3, 2))
    kinds = masks_of_every_kind(6)
    mv, ma = kinds["gaps"], kinds["pre"]
    got = numpy_out(net(video, audio, s1, s2, masks={"video": mv, "audio": ma}))

    def step(layer: str) -> Callable[..., Any]:
        def f(xs: list[np.ndarray], st: list[np.ndarray]) -> Any:
            o1 = xs[0] @ w[f"{layer}/kernel_1"]
            o23 = np.einsum("bij,ijkl->bkl", xs[1], w[f"{layer}/kernel_2_3"])
            return [o1, o23], [st[0] + o1, st[1] + o23]

        return f

    m = mv & ma
    zeros = [np.zeros((B, 2)), np.zeros((B, 3, 2))]
    (a1, a2), _ = rnn_numpy(
        step("n1"), [video, audio], m, zeros, [(2,), (3, 2)], return_sequences=True
    )
    (b1, b2), (bs1, bs2) = rnn_numpy(step("n2"), [video, audio], m, [s1, s2], [(2,), (3, 2)],
                                     return_sequences=True, go_backwards=True, carry=True)  # fmt: skip
    want = [a1, m, a2, m, b1, m[:, ::-1], b2, bs1, bs2]
    tol = F32_TOL if dtype == "float32" else F64_TOL
    assert max_abs(want) > 1e-3
    assert max_error(got, want) <= tol


def test_minimal_rnn_cell_example() -> None:
    """The guide's MinimalRNNCell: Embedding(mask_zero) -> RNN(cell) -> RNN(cell, go_backwards)."""
    for dtype, tol in (("float32", F32_TOL), ("float64", F64_TOL)):
        net = seqdsl.load(CUSTOM / "minimal_rnn_cell.seq").build("torch", seed=2, dtype=dtype)
        w = {k: v.astype(np.float64) for k, v in net.canonical_weights().items()}
        tokens = np.random.default_rng(3).integers(1, 1000, size=(B, T))
        tokens[~masks_of_every_kind()["post"]] = 0  # pad(post, value=0): full, padded, empty rows
        got = numpy_out(net(tokens.astype(np.int32)))
        m = tokens != 0
        x = w["x_embedding/embeddings"][tokens]

        def cell(layer: str, w: dict[str, np.ndarray] = w) -> Callable[..., Any]:
            k, r = w[f"{layer}/kernel"], w[f"{layer}/recurrent_kernel"]

            def f(xs: list[np.ndarray], st: list[np.ndarray]) -> Any:
                h = xs[0] @ k + st[0] @ r  # Keras' MinimalRNNCell is linear
                return [h], [h]

            return f

        (seq,), _ = rnn_numpy(cell("seq_rnn"), [x], m, [np.zeros((B, 32))], [(32,)],
                              return_sequences=True)  # fmt: skip
        (last,), _ = rnn_numpy(cell("last_rnn"), [seq], m, [np.zeros((B, 32))], [(32,)],
                               go_backwards=True)  # fmt: skip
        logits = last @ w["logits_dense/kernel"] + w["logits_dense/bias"]
        assert max_abs([last]) > 1e-3
        assert max_error(got, [logits]) <= tol
    text = seqdsl.load(CUSTOM / "minimal_rnn_cell.seq").compile("torch")
    assert text.count("class MinimalRNNCell(CellRNN):") == 1  # both uses share the class


FEATURES = """
cell Zoo(units: int, alpha: float) {
    input x: f32[n]
    input y: f32[k, n]
    state h: f32[units]
    state m: f32[k, units]
    weight w: [n, units] = glorot_uniform
    weight v: [2, units] = glorot_uniform
    weight u: [k, units, units] = glorot_uniform
    weight p: [units, units] = orthogonal

    a = softmax(x @ w, axis=0)
    b = mean(y @ w, axis=0)
    c = concat(a, h, axis=-1)
    d1, d2 = split(c, 2)
    e = maximum(d1 * alpha, 0.0) - minimum(d2, v[1]) / 2.0 + exp(-square(h))
    g = m + h
    s = sum(g * sigmoid(h), axis=-1)
    q = einsum("bki,kij->bkj", m, u)
    mm = einsum("bki,bkj->bij", m, m)
    r = softplus(q[..., 0:units]) + abs(relu(g))
    h <- tanh(e + b + mean(g, axis=0) * alpha + c[units:2 * units]) - log(1.0 + sqrt(square(h) + 1.0)) / units
    m <- r * 0.5 + softsign(q) + (m @ mm) * 0.01 + (g @ p) * 0.1 - mean(s) * 0.1
    output h, m
}

model Z {
    input x: f32[B, T, 3] masked
    input y: f32[B, T, 2, 3]
    o1, o2, h, m = RNN(Zoo(4, 0.5), return_sequences=true, return_state=true)(x, y)
    output o1, o2, h, m
}
"""


def zoo_step(w: dict[str, np.ndarray]) -> Callable[..., Any]:
    def sigmoid(z: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-z))

    def softmax(z: np.ndarray) -> np.ndarray:
        e = np.exp(z - z.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    def step(xs: list[np.ndarray], st: list[np.ndarray]) -> Any:
        x, y = xs
        h, m = st
        ww, v, u, p = (w[f"o1_rnn/{n}"] for n in "wvup")
        a = softmax(x @ ww)
        b = (y @ ww).mean(1)
        c = np.concatenate([a, h], -1)
        d1, d2 = np.split(c, 2, axis=-1)
        e = np.maximum(d1 * 0.5, 0.0) - np.minimum(d2, v[1]) / 2.0 + np.exp(-np.square(h))
        g = m + h[:, None]
        s = (g * sigmoid(h)[:, None]).sum(-1)
        q = np.einsum("bki,kij->bkj", m, u)
        mm = np.einsum("bki,bkj->bij", m, m)
        r = np.logaddexp(q[..., 0:4], 0.0) + np.abs(np.maximum(g, 0.0))
        h2 = np.tanh(e + b + g.mean(1) * 0.5 + c[:, 4:8])
        h2 = h2 - np.log(1.0 + np.sqrt(np.square(h) + 1.0)) / 4
        m2 = r * 0.5 + q / (1.0 + np.abs(q)) + (m @ mm) * 0.01 + (g @ p) * 0.1
        m2 = m2 - s.mean(-1)[:, None, None] * 0.1
        return [h2, m2], [h2, m2]

    return step


def test_every_equation_feature() -> None:
    """softmax/mean/sum/concat/split/maximum/minimum/einsum/subscripts/..., hoisted or not."""
    for dtype, tol in (("float32", F32_TOL), ("float64", F64_TOL)):
        prog = seqdsl.loads(FEATURES)
        net = prog.build("torch", dtype=dtype)
        w = {k: v.astype(np.float64) for k, v in random_weights(net, 2).items()}
        net.load_canonical(w)
        rng = np.random.default_rng(4)
        x, y = rng.normal(size=(B, T, 3)), rng.normal(size=(B, T, 2, 3))
        m = masks_of_every_kind(8)["gaps"]
        got = numpy_out(net(x, y, masks={"x": m}))
        (o1, o2), (h, mm) = rnn_numpy(zoo_step(w), [x, y], m, [np.zeros((B, 4)), np.zeros((B, 2, 4))],
                                       [(4,), (2, 4)], return_sequences=True)  # fmt: skip
        want = [o1, o2, h, mm]
        assert max_abs(want) > 1e-3
        assert max_error(got, want) <= tol, (dtype, max_error(got, want))
    text = prog.compile("torch")
    assert "def project(self, inputs):" in text  # work on the inputs alone is hoisted


# --------------------------------------------------------------------------
# the loop: the same ops at every step, no host synchronisation

PROFILED = (
    CELLS
    + """
model P {
    input x: f32[B, T, 6]
    input m: mask[B, T]
    a, ah, ac = RNN(MyLSTMCell(8), return_sequences=true, return_state=true)(x, mask=m)
    b = RNN(MyGRUCell(8), masked_output=carry, return_sequences=true, go_backwards=true)(x, mask=m)
    output a, ah, ac, b
}
"""
)


def profile_ops(net: Any, t: int, kind: str) -> tuple[int, set[str]]:
    """aten ops called from Python in one forward, and every event name."""
    from torch.profiler import ProfilerActivity, profile

    x = torch.randn(3, t, 6)
    lengths = torch.tensor([t, t // 2, 0])[:, None]
    steps = torch.arange(t)[None, :]
    if kind == "gaps":
        m = torch.rand(3, t) < 0.6
        m[0], m[2] = True, False  # a full row, an empty row
    else:
        m = steps < lengths if kind == "post" else steps >= t - lengths
    with torch.no_grad():
        net(x, m)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            net(x, m)
    events = prof.events()
    return sum(1 for e in events if e.cpu_parent is None), {e.name for e in events}


def test_same_ops_at_every_step_and_no_host_sync() -> None:
    """A constant plus T times the ops of one step, for T = 8, 16 and 256 and every
    mask kind; no aten::item / _local_scalar_dense (a host synchronisation)."""
    net = seqdsl.loads(PROFILED).build("torch")
    (n8, names8), (n16, _), (n256, names256) = (profile_ops(net, t, "gaps") for t in (8, 16, 256))
    per_step = (n16 - n8) // 8
    assert (n16 - n8) % 8 == 0 and per_step > 0
    assert n256 == n8 + per_step * (256 - 8), (n8, n16, n256)
    for kind in ("post", "pre"):  # the same ops whatever the mask
        assert profile_ops(net, 8, kind)[0] == n8, kind
    for names in (names8, names256):
        assert not names & {"aten::item", "aten::_local_scalar_dense", "aten::nonzero"}, names


# --------------------------------------------------------------------------
# extern layers


def seed_model_by_hand(w: dict[str, Any], tokens: Any) -> tuple[Any, Any]:
    """seed_masking_layers.seq written by hand in torch (float64)."""
    m = tokens != 0
    x = torch.relu(w["x_my_embedding/embeddings"][tokens.long()])
    half = tokens.shape[1] // 2
    first, second = x[:, :half], x[:, half:]
    m1, m2 = m[:, :half], m[:, half:]
    k, r, b = w["h_lstm/kernel"], w["h_lstm/recurrent_kernel"], w["h_lstm/bias"]
    h = torch.zeros(tokens.shape[0], 16, dtype=torch.float64)
    c = torch.zeros_like(h)
    for t in range(half):
        i, f, g, o = (first[:, t] @ k + h @ r + b).chunk(4, -1)
        c2 = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h2 = torch.sigmoid(o) * torch.tanh(c2)
        v = m1[:, t, None]
        h, c = torch.where(v, h2, h), torch.where(v, c2, c)
    h = torch.where(m1.any(1, keepdim=True), h, 0.0)
    s = second @ w["s_dense/kernel"] + w["s_dense/bias"]
    e = torch.exp(s) * m2[..., None]
    return h, e / (e * m2[..., None]).sum(-1, keepdim=True)  # the guide's TemporalSoftmax


def seed_tokens() -> np.ndarray:
    tokens = np.random.default_rng(0).integers(1, 10, size=(B, 8)).astype(np.int32)
    steps = np.arange(8)[None, :]
    tokens[steps >= np.array([8, 5, 0, 1, 3])[:, None]] = 0  # pad(post, value=0)
    return tokens


def test_seed_externs_match_a_hand_written_model() -> None:
    prog = seqdsl.load(CUSTOM / "seed_masking_layers.seq")
    net = prog.build("torch", seed=1, dtype="float64")
    w = {k: torch.as_tensor(v) for k, v in random_weights(net, 3).items()}
    net.load_canonical({k: v.numpy() for k, v in w.items()})
    tokens = seed_tokens()
    net.debug = True  # every declaration holds for these implementations
    got = net(tokens)
    want = seed_model_by_hand(w, torch.as_tensor(tokens))
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=F64_TOL, equal_nan=True)
    assert got[0].abs().max() > 1e-3
    assert list(net.state_dict()) == list(net.WEIGHTS.values())
    assert "x_my_embedding.embeddings" in net.state_dict()  # a declared weight, canonical
    # the standalone module imports the `use`d module at its top
    text = prog.compile("torch", standalone=True)
    head = text[: text.index("\n\n\ndef ")]
    assert "import seed_externs" in head and "from seqdsl.externs import" in head


def test_externs_override_and_missing_implementation() -> None:
    src = """
extern layer Twice { shape: same; mask: propagate }
model E {
    input x: f32[B, T, 3] pad(post) masked
    y = x -> Twice() -> LSTM(2)
    output y
}"""
    prog = seqdsl.loads(src)
    with pytest.raises(
        ExternError, match='Twice has no torch implementation.*externs=\\{"Twice": fn\\}'
    ):
        prog.build("torch")
    seen: dict[str, Any] = {}

    def twice(x: Any, *, mask: Any, weights: Any, config: Any, training: bool) -> Any:
        seen.update(mask=mask, training=training)
        return 2 * x

    net = prog.build("torch", externs={"Twice": twice})
    x = np.ones((2, 4, 3), np.float32)
    net(x, lengths=[4, 2])
    assert seen["mask"].tolist() == [[True] * 4, [True, True, False, False]]
    assert seen["training"] is False
    text = prog.compile("torch")
    assert "def __init__(self, dtype=torch.float32, externs=None):" in text


def test_debug_mode_checks_an_extern_against_its_declaration() -> None:
    prog = seqdsl.load(CUSTOM / "seed_masking_layers.seq")
    tokens = seed_tokens()

    def wide(x: Any, *, mask: Any, weights: Any, config: Any, training: bool) -> Any:
        return torch.cat([x, x], dim=-1)  # declared `shape: same`

    net = prog.build("torch", externs={"MyActivation": wide})
    net.debug = True
    with pytest.raises(ExternError, match=r"MyActivation \(layer x_my_activation\): output 1 is "
                       r"float32\[5, 8, 64\].*seed_masking_layers.seq:\d+.*f32\[_, _, 32\]"):  # fmt: skip
        net(tokens)
    net.debug = False  # outside debug mode, no check

    def bad_mask(x: Any, *, mask: Any, weights: Any, config: Any, training: bool) -> Any:
        return torch.relu(x), torch.ones_like(mask)  # the contract propagates the mask

    def good_mask(x: Any, *, mask: Any, weights: Any, config: Any, training: bool) -> Any:
        return torch.relu(x), mask

    net = prog.build("torch", externs={"MyActivation": Impl(bad_mask, returns_mask=True)})
    net(tokens)
    net.debug = True
    with pytest.raises(ExternError, match=r"layer x_my_activation.*mask it returned.*propagate"):
        net(tokens)
    net = prog.build("torch", externs={"MyActivation": Impl(good_mask, returns_mask=True)})
    net.debug = True
    net(tokens)


# --------------------------------------------------------------------------
# the emitted text

GOLDEN_CUSTOM = ("builtin_cells", "seed_masking_layers")


@pytest.mark.parametrize("name", GOLDEN_CUSTOM)
def test_golden(name: str, request: pytest.FixtureRequest) -> None:
    path = CUSTOM / f"{name}.seq"
    text = seqdsl.loads(path.read_text(), name=f"examples/custom/{path.name}").compile("torch")
    golden = GOLDEN / f"{name}.py"
    if request.config.getoption("--update-golden"):
        golden.write_text(text)
    assert golden.exists(), f"no golden file {golden}: run pytest --update-golden"
    assert text == golden.read_text(), (
        f"{golden} is out of date: review the diff, then run pytest --update-golden"
    )


def test_cell_modules_are_standalone_and_ruff_clean(tmp_path: Path) -> None:
    for path in sorted(CUSTOM.glob("*.seq")):
        text = seqdsl.load(path).compile("torch", standalone=True)
        assert text == seqdsl.load(path).compile("torch", standalone=True)
        imports = {ln.split()[1] for ln in text.splitlines() if ln.startswith(("import ", "from "))}
        # the standard library aside (the runtime's annotations: typing, collections.abc)
        imports = {m for m in imports if m.partition(".")[0] not in sys.stdlib_module_names}
        if "extern layer" not in path.read_text():  # cells only: numpy and torch alone
            allowed = {"numpy", "numpy.typing", "torch", "torch.nn.functional"}
            assert imports <= allowed | {"torch.nn.utils.rnn"}, imports
        (tmp_path / f"{path.stem}.py").write_text(text)
    (tmp_path / "features.py").write_text(seqdsl.loads(FEATURES).compile("torch", standalone=True))
    if subprocess.run([sys.executable, "-m", "ruff", "--version"], capture_output=True).returncode:
        pytest.skip("ruff is not installed")
    for cmd in (["check"], ["format", "--check", "--diff"]):
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "ruff",
                *cmd,
                "--config",
                str(ROOT / "pyproject.toml"),
                str(tmp_path),
            ],
            capture_output=True,
            text=True,
        )
        assert run.returncode == 0, run.stdout + run.stderr
