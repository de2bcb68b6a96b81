"""The JAX backend's cell blocks and extern layers (docs/backend-jax.md).

Cell blocks: the four cells of examples/custom/builtin_cells.seq give the
numbers of the built-in LSTM / GRU / GRU(reset_after=false) / SimpleRNN for the
same canonical weights, over every mask kind and recurrent option (and the
built-in layers match the NumPy reference); NestedCell and MinimalRNNCell match
hand-written NumPy. Extern layers: the masking guide's layers (seed_externs.py)
against a hand-written model, and ExternError for what breaks a declaration.

As in tests/test_jax_backend.py, compile time dominates on CPU: each model is
traced once into one jitted function and called with several inputs.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")
jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")

import seqdsl  # noqa: E402
from seqdsl.checker import CheckedModel  # noqa: E402
from seqdsl.externs import ExternError, Impl  # noqa: E402
from seqdsl.reference import run_reference  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CUSTOM = ROOT / "examples" / "custom"
GOLDEN = ROOT / "tests" / "golden" / "jax"
F32_TOL, F64_TOL = 1e-5, 1e-10
B, T, F, U = 4, 7, 5, 3


# --------------------------------------------------------------------------
# helpers


def debug_call(model: Any, *inputs: Any, **options: Any) -> Any:
    """One call in debug mode (the attribute `debug`, the same on every backend)."""
    model.debug = True
    try:
        return model(*inputs, **options)
    finally:
        model.debug = False


def module_of(model: object) -> Any:
    return sys.modules[type(model).__module__]


def cell_text(path: Path, *names: str) -> str:
    """The `cell` blocks ``names`` of a .seq file (without its models)."""
    text = path.read_text()
    out = []
    for name in names:
        m = re.search(rf"^cell {name}\(.*?^}}\n", text, re.M | re.S)
        assert m, name
        out.append(m.group(0))
    return "\n".join(out)


def count_eqns(jaxpr: Any) -> int:
    """Equations of a jaxpr, recursively through every sub-jaxpr (scan bodies...)."""
    n = 0
    for eqn in jaxpr.eqns:
        n += 1
        for v in eqn.params.values():
            for sub in v if isinstance(v, (list, tuple)) else (v,):
                if hasattr(sub, "jaxpr") and hasattr(sub.jaxpr, "eqns"):
                    n += count_eqns(sub.jaxpr)
                elif hasattr(sub, "eqns"):
                    n += count_eqns(sub)
    return n


def masks_of(kind: str) -> np.ndarray:
    """[B, T] masks: a full row, two padded (or gapped) rows, an empty row."""
    steps = np.arange(T)[None, :]
    lens = np.array([T, 4, 1, 0])[:, None]
    if kind == "post":
        return steps < lens
    if kind == "pre":
        return steps >= T - lens
    gaps = np.array([[1] * T, [0, 1, 1, 0, 1, 0, 1], [1, 0, 0, 0, 0, 0, 1], [0] * T], bool)
    return gaps[:, :T]


def err(a: object, b: object) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def random_weights(
    model: CheckedModel, seed: int, dtype: Any = np.float32
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        f"{layer.name}/{w.name}": rng.normal(0.0, 0.5, w.shape).astype(dtype)
        for layer in model.layers
        for w in layer.weights
    }


def layer_of(model: CheckedModel, value: str) -> str:
    return next(layer.name for layer in model.layers if value in layer.outputs)


# --------------------------------------------------------------------------
# the four built-in cells as cell blocks, against the built-in layers

CELLS = cell_text(
    CUSTOM / "builtin_cells.seq", "MyLSTMCell", "MyGRUCell", "MyGRUCellV1", "MySimpleRNNCell"
)
#: cell block -> (the built-in layer, its number of states)
BUILTIN = {
    "MyLSTMCell": ("LSTM({u})", 2),
    "MyGRUCell": ("GRU({u})", 1),
    "MyGRUCellV1": ("GRU({u}, reset_after=false)", 1),
    "MySimpleRNNCell": ("SimpleRNN({u})", 1),
}
#: (options, input, initial state?) per pair; every cell gets every row
OPTIONS = [
    ("return_sequences=true, return_state=true", "x", True),
    ("go_backwards=true, return_state=true", "x", False),
    ("return_sequences=true, go_backwards=true, masked_output=carry", "x", False),
    ("return_sequences=true, go_backwards=true, return_state=true", "x", True),
    ("return_sequences=true, stateful=true", "x", False),
    ("return_sequences=true, return_state=true", "y", False),
]
#: Bidirectional(SimpleRNN): (merge mode, options, input, initial states?)
BIDI = [
    ("concat", "return_sequences=true", "x", False),
    ("sum", "", "x", False),
    ("mul", "return_sequences=true", "x", True),
    ("ave", "return_sequences=true, return_state=true", "y", False),
    ("none", "return_state=true", "x", True),
]


def _pairs_source(with_cells: bool, options: Sequence[tuple[str, str, bool]] = OPTIONS,
                  bidi: Sequence[tuple[str, str, str, bool]] = BIDI) -> tuple[str, list[tuple[str, str]]]:  # fmt: skip
    """A model running each cell block and its built-in twin side by side (the
    built-in half only, for the reference, without ``with_cells``). Returns the
    source and the (cell value, built-in value) pairs to compare."""
    lines, outs, pairs = [], [], []
    for ci, (cell, (builtin, n_states)) in enumerate(BUILTIN.items()):
        for oi, (opts, inp, init) in enumerate(options):
            tag = f"{ci}_{oi}"
            states = ["h0", "c0"][:n_states]
            call = f"({inp}" + (f", initial_state=[{', '.join(states)}])" if init else ")")
            rst = "return_state=true" in opts
            for who, layer in (("c", f"RNN({cell}({U}), {opts})"),
                               ("b", builtin.format(u=U)[:-1] + f", {opts})")):  # fmt: skip
                if who == "c" and not with_cells:
                    continue
                res = [f"{who}{tag}"] + (
                    [f"{who}{tag}s{k}" for k in range(n_states)] if rst else []
                )
                lines.append(f"    {', '.join(res)} = {layer}{call}")
                outs += res
            pairs += [(f"c{tag}", f"b{tag}")] + (
                [(f"c{tag}s{k}", f"b{tag}s{k}") for k in range(n_states)] if rst else []
            )
    for bi, (merge, opts, inp, init) in enumerate(bidi):
        tag = f"bi{bi}"
        n_main = 2 if merge == "none" else 1
        rst = "return_state=true" in opts
        call = f"({inp}" + (", initial_state=[h0, h1])" if init else ")")
        sep = ", " if opts else ""
        for who, inner in (("c", f"RNN(MySimpleRNNCell({U}){sep}{opts})"),
                           ("b", f"SimpleRNN({U}{sep}{opts})")):  # fmt: skip
            if who == "c" and not with_cells:
                continue
            res = [f"{who}{tag}m{k}" for k in range(n_main)] + (
                [f"{who}{tag}s{k}" for k in range(2)] if rst else []
            )
            lines.append(f"    {', '.join(res)} = Bidirectional({inner}, merge_mode={merge}){call}")
            outs += res
        pairs += [(f"c{tag}m{k}", f"b{tag}m{k}") for k in range(n_main)]
        pairs += [(f"c{tag}s{k}", f"b{tag}s{k}") for k in range(2)] if rst else []
    source = (
        (CELLS if with_cells else "")
        + f"""
model Pairs {{
    input x: f32[{B}, T, {F}] masked
    input y: f32[{B}, T, {F}]
    input h0: f32[{B}, {U}]
    input c0: f32[{B}, {U}]
    input h1: f32[{B}, {U}]
"""
        + "\n".join(lines)
        + f"\n    output {', '.join(outs)}\n}}\n"
    )
    return source, pairs


def _shared_weights(model: CheckedModel, pairs: Sequence[tuple[str, str]], dtype: Any) -> dict[str, np.ndarray]:  # fmt: skip
    """Random weights, the cell layer of each pair given its built-in twin's."""
    w = random_weights(model, 7, dtype)
    for c, b in pairs:
        if c.endswith(("s0", "s1", "m1")):
            continue
        lc, lb = layer_of(model, c), layer_of(model, b)
        for k in [k for k in w if k.startswith(lb + "/")]:
            w[lc + k[len(lb) :]] = w[k]
    return w


def _inputs(dtype: Any) -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [
        rng.normal(size=s).astype(dtype) for s in ((B, T, F), (B, T, F), (B, U), (B, U), (B, U))
    ]


def _run_pairs(dtype: Any, kinds: Sequence[str], options: Any = OPTIONS, bidi: Any = BIDI) -> Any:
    source, pairs = _pairs_source(True, options, bidi)
    prog = seqdsl.loads(source)
    model = prog.model()
    jm = prog.build("jax", dtype="float64" if dtype == np.float64 else "float32")
    weights = _shared_weights(model, pairs, dtype)
    jm.load_canonical(weights)
    inputs = _inputs(dtype)
    apply = jax.jit(jm.apply, static_argnames=("return_state",))
    runs = {}
    for kind in kinds:
        mask = masks_of(kind)
        out, state = apply(jm.variables, *inputs, masks=mask, return_state=True)
        again, _ = apply({"params": jm.variables["params"], "state": state}, *inputs, masks=mask,
                         return_state=True)  # fmt: skip
        runs[kind] = (out, state, again)
    ref_source, _ = _pairs_source(False, options, bidi)
    ref_model = seqdsl.loads(ref_source).model()
    return model, ref_model, jm, weights, inputs, pairs, runs


@pytest.fixture(scope="module")
def pairs_f32() -> Any:
    return _run_pairs(np.float32, ("post", "pre", "gaps"))


@pytest.fixture(scope="module")
def pairs_f64() -> Any:
    with jax.enable_x64(True):
        return _run_pairs(np.float64, ("gaps",), OPTIONS[:4:3], BIDI[2:3])


def _check_pairs(result: Any, tol: float) -> dict[str, float]:
    model, ref_model, jm, weights, inputs, pairs, runs = result
    names = [o.name for o in model.model.outputs]
    ref_names = [o.name for o in ref_model.model.outputs]
    ref_weights = {k: np.asarray(v, np.float64) for k, v in weights.items()
                   if k.split("/")[0] in {layer.name for layer in ref_model.layers}}  # fmt: skip
    worst = {"cell-builtin": 0.0, "cell-reference": 0.0, "builtin-reference": 0.0}
    stateful = [layer.name for layer in ref_model.layers if layer.config.get("stateful") is True]
    for kind, (out, state, again) in runs.items():
        got = dict(zip(names, out, strict=True))
        got2 = dict(zip(names, again, strict=True))
        ins64 = [np.asarray(a, np.float64) for a in inputs]
        ref = run_reference(ref_model, ref_weights, ins64, masks={"x": masks_of(kind)})
        ref2 = run_reference(ref_model, ref_weights, ins64, masks={"x": masks_of(kind)},
                             states=ref.states)  # fmt: skip
        want = dict(zip(ref_names, ref.outputs, strict=True))
        want2 = dict(zip(ref_names, ref2.outputs, strict=True))
        for c, b in pairs:
            assert float(np.max(np.abs(want[b]))) > 1e-3, f"{b} too small to compare"
            for what, e in (("cell-builtin", err(got[c], got[b])),
                            ("cell-reference", err(got[c], want[b])),
                            ("builtin-reference", err(got[b], want[b]))):  # fmt: skip
                assert e <= tol, f"{kind} {c} vs {b}: {what} error {e:.3g}"
                worst[what] = max(worst[what], e)
            # the second call continues from the states of the first (stateful layers)
            e2 = max(err(got2[c], got2[b]), err(got2[c], want2[b]))
            assert e2 <= tol, f"{kind} second call {c}: error {e2:.3g}"
        # the final states of the stateful cell layers are those of their twins
        for c, b in pairs:
            lc, lb = layer_of(model, c), layer_of(model, b)
            if lb in stateful and not c.endswith(("s0", "s1")):
                for n in state[lc]:
                    assert err(state[lc][n], state[lb][n]) <= tol
                    assert err(state[lc][n], ref.states[lb][["h", "c"].index(n)]) <= tol
    return worst


def test_builtin_cells_match_builtin_layers_f32(pairs_f32: Any) -> None:
    assert any(layer.config.get("stateful") is True for layer in pairs_f32[1].layers)
    worst = _check_pairs(pairs_f32, F32_TOL)
    print("float32 max errors:", worst)


def test_builtin_cells_match_builtin_layers_f64(pairs_f64: Any) -> None:
    _, _, jm, *_ = pairs_f64
    assert jax.tree_util.tree_leaves(jm.variables["params"])[0].dtype == np.float64
    with jax.enable_x64(True):
        worst = _check_pairs(pairs_f64, F64_TOL)
    print("float64 max errors:", worst)


def test_cell_variables_and_states(pairs_f32: Any) -> None:
    model, _, jm, weights, *_ = pairs_f32
    mod = module_of(jm)
    # canonical names, bit-exact round trip
    canonical = jm.canonical_weights()
    assert list(canonical) == [f"{la.name}/{w.name}" for la in model.layers for w in la.weights]
    assert all(canonical[k].tobytes() == weights[k].tobytes() for k in weights)
    again = mod.to_canonical(mod.from_canonical(canonical))
    assert all(again[k].tobytes() == canonical[k].tobytes() for k in canonical)
    lstm = layer_of(model, "c0_0")
    assert {"kernel", "recurrent_kernel", "bias"} == set(jm.variables["params"][lstm])
    bi = layer_of(model, "cbi0m0")
    assert "forward/recurrent_kernel" in jm.variables["params"][bi]
    # stateful cell layers: state in variables, zeroed by reset_states
    st = layer_of(model, "c0_4")
    assert set(mod.STATEFUL[st][2]) == {"h", "c"} and mod.STATEFUL[st][1] == ((U,), (U,))
    jm.variables = {"params": jm.variables["params"],
                    "state": jax.tree_util.tree_map(jnp.ones_like, jm.variables["state"])}  # fmt: skip
    jm.reset_states()
    assert all(not np.asarray(a).any() for a in jax.tree_util.tree_leaves(jm.variables["state"]))


# --------------------------------------------------------------------------
# NestedCell and MinimalRNNCell against hand-written NumPy


def nested_np(w: dict[str, np.ndarray], video: np.ndarray, audio: np.ndarray, mask: np.ndarray,
              go_backwards: bool = False, carry: bool = False) -> dict[str, Any]:  # fmt: skip
    """The RNN guide's NestedCell over time, with Keras' masking."""
    k1, k23 = w["kernel_1"], w["kernel_2_3"]
    b, t = video.shape[:2]
    s1 = np.zeros((b, k1.shape[1]))
    s2 = np.zeros((b, *k23.shape[2:]))
    last = [np.zeros_like(s1), np.zeros_like(s2)]
    seq: list[list[np.ndarray]] = [[], []]
    for step in reversed(range(t)) if go_backwards else range(t):
        o1 = video[:, step] @ k1
        o23 = np.einsum("bij,ijkl->bkl", audio[:, step], k23)
        m = mask[:, step]
        s1 = np.where(m[:, None], s1 + o1, s1)
        s2 = np.where(m[:, None, None], s2 + o23, s2)
        for i, o in enumerate((o1, o23)):
            mm = m.reshape((-1,) + (1,) * (o.ndim - 1))
            last[i] = np.where(mm, o, last[i])
            seq[i].append(last[i] if carry else np.where(mm, o, 0.0))
    return {"seq": [np.stack(s, axis=1) for s in seq], "last": last, "states": [s1, s2]}


NESTED = (
    cell_text(CUSTOM / "nested_cell.seq", "NestedCell")
    + """
model Nested {
    input video: f32[B, T, 4] masked
    input audio: f32[B, T, 3, 2] masked
    o1, o23 = RNN(NestedCell(3, 2, 5))(video, audio)
    s1, s23, st1, st2 = RNN(NestedCell(3, 2, 5), return_sequences=true, return_state=true,
                            go_backwards=true)(video, audio)
    c1, c23 = RNN(NestedCell(3, 2, 5), return_sequences=true, masked_output=carry)(video, audio)
    output o1, o23, s1 with mask, s23, st1, st2, c1, c23
}
"""
)


def test_nested_cell_matches_numpy() -> None:
    prog = seqdsl.loads(NESTED, name="nested.seq")
    jm = prog.build("jax", seed=2)
    text = prog.compile("jax")
    assert text.count("def _nested_cell(") == 1  # one step function for the three layers
    assert 'jnp.einsum("bij,ijkl->bkl", audio, kernel_2_3)' in text
    rng = np.random.default_rng(0)
    video, audio = rng.normal(size=(B, T, 4)), rng.normal(size=(B, T, 3, 2))
    mv, ma = masks_of("gaps"), masks_of("post")
    apply = jax.jit(jm.apply)
    out = apply(jm.variables, video, audio, masks={"video": mv, "audio": ma})
    eager = jm.apply(jm.variables, video, audio, masks={"video": mv, "audio": ma})
    for a, b in zip(jax.tree_util.tree_leaves(out), jax.tree_util.tree_leaves(eager), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)  # jit == eager
    names = ("o1_rnn", "s1_rnn", "c1_rnn")
    assert {k.split("/")[0] for k in jm.canonical_weights()} == set(names)
    ws = {n: {k.split("/")[1]: np.asarray(v, np.float64) for k, v in jm.canonical_weights().items()
              if k.startswith(n + "/")} for n in names}  # fmt: skip
    mask = mv & ma
    plain = nested_np(ws["o1_rnn"], video, audio, mask)
    back = nested_np(ws["s1_rnn"], video, audio, mask, go_backwards=True)
    carry = nested_np(ws["c1_rnn"], video, audio, mask, carry=True)
    o1, o23, (s1, s1_mask), s23, st1, st2, c1, c23 = out
    want = [*plain["last"], *back["seq"], *back["states"], *carry["seq"]]
    for got, ref in zip((o1, o23, s1, s23, st1, st2, c1, c23), want, strict=True):
        assert err(got, ref) <= F32_TOL and np.max(np.abs(ref)) > 1e-3
    np.testing.assert_array_equal(s1_mask, mask[:, ::-1])  # go_backwards flips the mask
    assert not np.asarray(o1)[3].any()  # the empty row


def test_nested_cell_example() -> None:
    prog = seqdsl.load(CUSTOM / "nested_cell.seq")
    jm = prog.build("jax", seed=0)
    rng = np.random.default_rng(1)
    video, audio = rng.normal(size=(2, 3, 32)), rng.normal(size=(2, 3, 64, 32))
    m = np.array([[1, 0, 1], [0, 0, 0]], bool)
    o1, o23 = jm(video, audio, masks={"video": m, "audio": m})
    w = {k.split("/")[1]: np.asarray(v, np.float64) for k, v in jm.canonical_weights().items()}
    ref = nested_np(w, video, audio, m)
    assert err(o1, ref["last"][0]) <= F32_TOL and err(o23, ref["last"][1]) <= F32_TOL
    assert np.max(np.abs(ref["last"][1])) > 1e-3


def minimal_np(w: dict[str, np.ndarray], x: np.ndarray, mask: np.ndarray, go_backwards: bool,
               return_sequences: bool) -> np.ndarray:  # fmt: skip
    h = np.zeros((x.shape[0], w["kernel"].shape[1]))
    last, seq = np.zeros_like(h), []
    for t in reversed(range(x.shape[1])) if go_backwards else range(x.shape[1]):
        m = mask[:, t][:, None]
        new = x[:, t] @ w["kernel"] + h @ w["recurrent_kernel"]  # Keras' MinimalRNNCell: linear
        h = np.where(m, new, h)
        last = np.where(m, new, last)
        seq.append(np.where(m, new, 0.0))
    return np.stack(seq, axis=1) if return_sequences else last


def test_minimal_rnn_cell_example_matches_numpy() -> None:
    prog = seqdsl.load(CUSTOM / "minimal_rnn_cell.seq")
    model = prog.model()
    jm = prog.build("jax", seed=3)
    rng = np.random.default_rng(2)
    lens = [T, 3, 1, 0]  # full, padded, one step, empty
    tokens = np.zeros((B, T), np.int32)
    for i, n in enumerate(lens):
        tokens[i, :n] = rng.integers(1, 1000, n)
    out = jax.jit(jm.apply)(jm.variables, tokens)
    cw = jm.canonical_weights()
    w = {la.name: {wn.name: np.asarray(cw[f"{la.name}/{wn.name}"], np.float64) for wn in la.weights}
         for la in model.layers}  # fmt: skip
    mask = tokens != 0
    x = w["x_embedding"]["embeddings"][tokens]
    seq = minimal_np(w["seq_rnn"], x, mask, False, True)
    last = minimal_np(w["last_rnn"], seq, mask, True, False)
    logits = last @ w["logits_dense"]["kernel"] + w["logits_dense"]["bias"]
    assert err(out, logits) <= F32_TOL and np.max(np.abs(logits)) > 1e-3
    np.testing.assert_allclose(np.asarray(out)[3], w["logits_dense"]["bias"], atol=1e-6)
    # init draws the cell weights by their initializer (Keras' `uniform`: U(-0.05, 0.05))
    fresh = module_of(jm).to_canonical(jax.jit(module_of(jm).init)(jax.random.key(0)))
    assert all(fresh[k].shape == cw[k].shape for k in cw)
    for name in ("seq_rnn/kernel", "seq_rnn/recurrent_kernel"):
        k = np.asarray(fresh[name])
        assert 0.04 < np.abs(k).max() <= 0.05 and abs(float(k.mean())) < 0.01, name


SINK = """
cell Sink(units: int, scale: float = 0.5) {
    input x: f32[n]
    input m: f32[2, n]
    state h: f32[units]
    state g: f32[2, units]
    weight w: [n, units] = glorot_uniform
    weight v: [2, units] = zeros

    a = tanh(x @ w) * scale - -h
    b2 = m @ w + v
    c = g + a
    d = softmax(c, axis=0) + softmax(c)
    e = sum(d, axis=0) / (1.0 + square(mean(c, axis=-1)[0]))
    gg = g @ einsum("bij->bji", g)
    s = 0.1 * sum(sum(gg, axis=-1), axis=0)
    f = concat(e + s, maximum(a, h), axis=0)
    f1, f2 = split(f, 2)
    k = abs(f1[0:units]) + sqrt(square(f2)) + softplus(exp(-abs(h))) + relu(log(1.0 + square(h)))
    h <- k * 0.1 + softsign(a) + minimum(a, 0.5) / units
    g <- g * 0.5 + b2[..., 0:units] + (m @ w)[1] - 0.2 * (c - h)
    output h, g
}

cell CumSum {
    input x: f32[n]
    state s: f32[n]
    s <- s + x
    output s
}

model Sinks {
    input x: f32[B, T, 4]
    input m: f32[B, T, 2, 4]
    input mk: mask[B, T]
    h, g = RNN(Sink(3), return_sequences=true)(x, m, mask=mk)
    cs = RNN(CumSum(), return_sequences=true)(x)
    output h, g, cs
}
"""


def sink_np(w: np.ndarray, v: np.ndarray, x: np.ndarray, m: np.ndarray, mask: np.ndarray) -> Any:
    """Cell Sink one sample and step at a time: the cell language is NumPy on
    values without the batch axis."""

    def softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
        e = np.exp(z - z.max(axis=axis, keepdims=True))
        return e / e.sum(axis=axis, keepdims=True)  # type: ignore[no-any-return]

    hs, gs = np.zeros(x.shape[:2] + (3,)), np.zeros(x.shape[:2] + (2, 3))
    for b in range(x.shape[0]):
        h, g = np.zeros(3), np.zeros((2, 3))
        for t in range(x.shape[1]):
            if not mask[b, t]:
                continue  # state carried, output 0
            xt, mt = x[b, t], m[b, t]
            a = np.tanh(xt @ w) * 0.5 - -h
            b2 = mt @ w + v
            c = g + a
            d = softmax(c, axis=0) + softmax(c)
            e = d.sum(axis=0) / (1.0 + np.square(c.mean(axis=-1)[0]))
            s = 0.1 * (g @ g.T).sum(axis=-1).sum(axis=0)
            f1, f2 = np.split(np.concatenate([e + s, np.maximum(a, h)]), 2)
            k = (np.abs(f1[0:3]) + np.sqrt(np.square(f2)) + np.log1p(np.exp(np.exp(-np.abs(h))))
                 + np.maximum(np.log(1.0 + np.square(h)), 0.0))  # fmt: skip
            h, g = (
                k * 0.1 + a / (1.0 + np.abs(a)) + np.minimum(a, 0.5) / 3,
                g * 0.5 + b2[..., 0:3] + (mt @ w)[1] - 0.2 * (c - h),
            )
            hs[b, t], gs[b, t] = h, g
    return hs, gs


def test_expression_cell_matches_numpy() -> None:
    """Every function of the equation language, axes and subscripts after the
    batch axis, broadcasting of per-step values of different ranks, a float
    parameter, an explicit mask, a cell without weights."""
    prog = seqdsl.loads(SINK)
    jm = prog.build("jax", seed=5)
    text = prog.compile("jax")
    assert "jnp.expand_dims(a, (1,))" in text and "f1[:, 0:3]" in text and "b2[..., 0:3]" in text
    rng = np.random.default_rng(4)
    weights = {k: rng.normal(0.0, 0.5, v.shape).astype(np.float32) for k, v in jm.canonical_weights().items()}  # fmt: skip
    jm.load_canonical(weights)
    x, m = rng.normal(size=(B, T, 4)), rng.normal(size=(B, T, 2, 4))
    mask = masks_of("gaps")
    h, g, cs = jax.jit(jm.apply)(jm.variables, x, m, mask)
    want_h, want_g = sink_np(weights["h_rnn/w"].astype(np.float64), weights["h_rnn/v"].astype(np.float64), x, m, mask)  # fmt: skip
    for got, want in ((h, want_h), (g, want_g), (cs, np.cumsum(x, axis=1))):
        scale = max(1.0, float(np.max(np.abs(want))))
        assert err(got, want) <= F32_TOL * scale and np.max(np.abs(want)) > 1e-3


def test_cell_scan_does_not_grow_with_time() -> None:
    """One lax.scan per layer: the same jaxpr at T = 8 and T = 256, masked
    (the inputs' masks, an explicit mask) or not."""
    nested = seqdsl.loads(NESTED).build("jax")
    sink = seqdsl.loads(SINK).build("jax")

    def count(jm: Any, t: int) -> int:
        mod = module_of(jm)
        if jm is nested:
            args = [np.zeros((2, t, 4), np.float32), np.zeros((2, t, 3, 2), np.float32)]
            masks = {"video": np.arange(t)[None] < np.array([[t], [1]]),
                     "audio": np.arange(2 * t).reshape(2, t) % 3 == 0}  # fmt: skip
            kw = {"masks": masks}
        else:
            args = [np.zeros((2, t, 4), np.float32), np.zeros((2, t, 2, 4), np.float32),
                    np.arange(2 * t).reshape(2, t) % 3 == 0]  # fmt: skip
            kw = {}
        fn = lambda v, *a: mod.apply(v, *a, **kw)  # noqa: E731
        return count_eqns(jax.make_jaxpr(fn)(jm.variables, *args).jaxpr)

    counts = {name: (count(jm, 8), count(jm, 256)) for name, jm in (("nested", nested), ("sink", sink))}  # fmt: skip
    print("jaxpr equations (T=8, T=256):", counts)
    assert all(a == b for a, b in counts.values()), counts


# --------------------------------------------------------------------------
# extern layers: the masking guide's layers


def lstm_np(w: dict[str, np.ndarray], x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    u = w["recurrent_kernel"].shape[0]
    h = c = np.zeros((x.shape[0], u))
    sig = lambda z: 1.0 / (1.0 + np.exp(-z))  # noqa: E731
    for t in range(x.shape[1]):
        z = x[:, t] @ w["kernel"] + h @ w["recurrent_kernel"] + w["bias"]
        i, f, g, o = (z[:, k * u : (k + 1) * u] for k in range(4))
        c2 = sig(f) * c + sig(i) * np.tanh(g)
        h2 = sig(o) * np.tanh(c2)
        m = mask[:, t][:, None]
        h, c = np.where(m, h2, h), np.where(m, c2, c)
    return h


def seed_tokens() -> np.ndarray:
    rng = np.random.default_rng(5)
    tokens = np.zeros((B, 8), np.int32)
    for i, n in enumerate((8, 5, 2, 0)):
        tokens[i, :n] = rng.integers(1, 10, n)
    return tokens


@pytest.fixture(scope="module")
def seed_model() -> Any:
    prog = seqdsl.load(CUSTOM / "seed_masking_layers.seq")
    return prog, prog.model(), prog.build("jax", seed=4)


def test_seed_masking_externs_match_hand_written(seed_model: Any) -> None:
    _, model, jm = seed_model
    tokens = seed_tokens()
    h, s = jax.jit(jm.apply)(jm.variables, tokens)
    cw = {k: np.asarray(v, np.float64) for k, v in jm.canonical_weights().items()}
    x = np.maximum(cw["x_my_embedding/embeddings"][tokens], 0.0)
    mask = tokens != 0
    first, second = np.split(x, 2, axis=1)
    m1, m2 = np.split(mask, 2, axis=1)
    want_h = lstm_np(
        {n: cw[f"h_lstm/{n}"] for n in ("kernel", "recurrent_kernel", "bias")}, first, m1
    )
    d = second @ cw["s_dense/kernel"] + cw["s_dense/bias"]
    e = np.exp(d) * m2[..., None]
    with np.errstate(invalid="ignore"):  # the guide's layer: 0 / 0 at masked steps
        want_s = e / np.sum(e * m2[..., None], axis=-1, keepdims=True)
    assert err(h, want_h) <= F32_TOL and np.max(np.abs(want_h)) > 1e-3
    # NaN exactly where the hand-written model has NaN
    np.testing.assert_allclose(np.asarray(s, np.float64), want_s, atol=F32_TOL)
    assert np.isfinite(np.asarray(s)[m2]).all()
    debug_call(jm, tokens)  # every declaration holds


def test_seed_module_imports_the_used_module(seed_model: Any) -> None:
    prog, _, _ = seed_model
    text = prog.compile("jax")
    assert re.search(r"^import seed_externs  # noqa: F401$", text, re.M)
    assert "from seqdsl.externs import" in text and '"MyTemporalSplit": "extern layer' in text
    # a standalone model without externs imports nothing of seqdsl
    plain = seqdsl.load(CUSTOM / "minimal_rnn_cell.seq").compile("jax", standalone=True)
    assert "seqdsl" not in re.sub(r'""".*?"""', "", plain, flags=re.S).replace("seqdsl from", "")


def test_extern_override_and_missing_implementation(seed_model: Any) -> None:
    prog, _, _ = seed_model
    calls = []

    def act(x: Any, *, mask: Any, weights: Any, config: Any, training: bool) -> Any:
        calls.append(mask is not None)
        return jnp.tanh(x)

    jm = prog.build("jax", seed=4, externs={"MyActivation": act})
    jm(seed_tokens())
    assert calls == [True]
    missing = seqdsl.loads("""
extern layer NoImpl { shape: same; mask: propagate }
model M {
    input x: f32[B, T, 2]
    y = x -> NoImpl()
    output y
}
""")
    with pytest.raises(ExternError, match=r"NoImpl has no jax implementation.*externs="):
        missing.build("jax")
    jm2 = missing.build("jax", externs={"NoImpl": lambda x, **kw: 2 * x})
    np.testing.assert_allclose(jm2(np.ones((1, 2, 2), np.float32)), 2.0)


def test_debug_catches_a_wrong_output_shape(seed_model: Any) -> None:
    prog, _, _ = seed_model
    jm = prog.build("jax", seed=4, externs={"MyActivation": lambda x, **kw: x[..., :3]})
    with pytest.raises(ExternError) as e:
        debug_call(jm, seed_tokens())
    msg = str(e.value)
    assert "MyActivation (layer `x_my_activation`)" in msg and "[_, _, 32]" in msg
    assert "extern layer MyActivation { shape: same; mask: propagate }" in msg
    # under jax.jit the shapes are checked at trace time
    prog2 = seqdsl.loads("""
extern layer Half(n: int) { out: f32[B, T, n]; mask: propagate }
model M {
    input x: f32[B, T, 4]
    y = x -> Half(2)
    output y
}
""")
    bad = prog2.build("jax", externs={"Half": lambda x, **kw: x})
    mod = module_of(bad)
    x = np.ones((2, 3, 4), np.float32)
    bad(x)  # outside debug mode nothing is checked
    with pytest.raises(ExternError, match=r"output 1 is float32\[2, 3, 4\].*f32\[_, _, 2\]"):
        jax.jit(lambda v, x: mod.apply(v, x, debug=True, externs=bad.externs))(bad.variables, x)


def test_debug_compares_a_returned_mask(seed_model: Any) -> None:
    prog, _, _ = seed_model
    tokens = seed_tokens()

    def emb(bad: bool) -> Impl:
        def fn(x: Any, *, mask: Any, weights: Any, config: Any, training: bool) -> Any:
            m = x != 0
            return weights["embeddings"][x], (m.at[:, 0].set(True) if bad else m)

        return Impl(fn, returns_mask=True)

    debug_call(prog.build("jax", externs={"MyEmbedding": emb(False)}), tokens)
    jm = prog.build("jax", externs={"MyEmbedding": emb(True)})
    jm(tokens)  # no check outside debug mode
    with pytest.raises(
        ExternError, match=r"MyEmbedding \(layer `x_my_embedding`\).*differs in row 3"
    ):
        debug_call(jm, tokens)

    def split_no_mask(x: Any, **kw: Any) -> Any:
        return tuple(jnp.split(x, 2, axis=1)), None

    ok = prog.build("jax", externs={"MyTemporalSplit": Impl(split_no_mask, returns_mask=True)})
    debug_call(ok, tokens)  # None: nothing to compare

    def split_one_mask(x: Any, *, mask: Any, **kw: Any) -> Any:
        return tuple(jnp.split(x, 2, axis=1)), (mask[:, :4], None)

    with pytest.raises(ExternError, match="output 2 has no mask"):
        debug_call(
            prog.build("jax", externs={"MyTemporalSplit": Impl(split_one_mask, returns_mask=True)}),
            tokens,
        )


def test_extern_mask_contracts() -> None:
    """concat (an unmasked input counts as valid), generate on [B, T, F] and
    switched off by its parameter, propagate with two inputs."""
    prog = seqdsl.loads("""
extern layer Join { inputs: 2; shape: same; mask: concat }
extern layer Gen(on: bool = true) { shape: same; mask: generate(x != 0.5) if on }
extern layer Pair { inputs: 2; shape: same; mask: propagate }
model M {
    input a: f32[B, T, 3] pad(post) masked
    input b: f32[B, S, 3]
    j = Join()(a, b)
    g = b -> Gen()
    g2 = b -> Gen(on=false)
    p = Pair()(a, a)
    output j with mask, g with mask, g2, p with mask
}
""")
    seen: dict[str, Any] = {}

    def pair(x: Any, y: Any, *, mask: Any, **kw: Any) -> Any:
        seen["pair"] = mask
        return x + y

    impls = {"Join": lambda x, y, **kw: jnp.concatenate([x, y], axis=1),
             "Gen": lambda x, **kw: x, "Pair": pair}  # fmt: skip
    jm = prog.build("jax", externs=impls)
    a, b = np.ones((2, 3, 3), np.float32), np.full((2, 2, 3), 0.5, np.float32)
    b[0, 0, 1] = 2.0
    (j, jm_), (g, gm), g2, (p, pm) = debug_call(jm, a, b, lengths=np.array([3, 1]))
    a_mask = np.array([[1, 1, 1], [1, 0, 0]], bool)
    np.testing.assert_array_equal(jm_, np.concatenate([a_mask, np.ones((2, 2), bool)], axis=1))
    np.testing.assert_array_equal(gm, [[True, False], [False, False]])
    np.testing.assert_array_equal(pm, a_mask)
    assert len(seen["pair"]) == 2 and np.array_equal(seen["pair"][1], a_mask)
    np.testing.assert_allclose(p, 2.0)


# --------------------------------------------------------------------------
# golden files


@pytest.mark.parametrize("name", ["builtin_cells", "seed_masking_layers"])
def test_golden(name: str, request: pytest.FixtureRequest) -> None:
    src = f"examples/custom/{name}.seq"
    text = seqdsl.loads((ROOT / src).read_text(), name=src).compile("jax")
    path = GOLDEN / f"custom_{name}.py"
    if request.config.getoption("--update-golden"):
        path.write_text(text)
    assert path.exists(), f"no golden file {path}: run pytest --update-golden"
    assert text == path.read_text(), (
        f"{path} is out of date: review the diff, then run pytest --update-golden"
    )
