"""The JAX backend: emitted modules against the NumPy reference interpreter.

Compile cost dominates on CPU (XLA compiles each jitted program once, ~0.3 s
for a small recurrent model), so the parity tests trace many models into ONE
jitted computation (a module fixture) and compare case by case afterwards.
That also exercises the contract that ``apply`` is jit-able.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

# XLA's backend optimisations buy nothing at these tiny shapes and cost compile
# time: without them each compile takes about half as long. Effective only if
# no JAX computation ran before this module was imported; numerics unaffected.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")
jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")

import seqdsl  # noqa: E402
import seqdsl.runtime.jax as jax_runtime  # noqa: E402
from seqdsl.checker import CheckedModel  # noqa: E402
from seqdsl.emit import load_source  # noqa: E402
from seqdsl.emit.jax_backend import class_name, instantiate  # noqa: E402
from seqdsl.reference import run_reference  # noqa: E402
from seqdsl.types import TensorType  # noqa: E402
from seqdsl.weightsfile import (  # noqa: E402
    WeightsFileError,
    load_weights,
    save_weights,
)
from tests.parity_cases import OPTIONS, Case, all_cases, make_case  # noqa: E402
from tests.refuse import refusing  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.seq"))
GOLDEN = ROOT / "tests" / "golden" / "jax"
GOLDEN_EXAMPLES = (
    "sentiment_lstm", "bilstm_tagger", "conv_frontend_lstm", "masking_temporal_split",
    "rnn_guide_stateful", "rnn_guide_mnist_lstm", "rnn_guide_gru_stack",
    "stateful_paragraphs",
    "attention_seq2seq",
)  # fmt: skip
F32_TOL, F64_TOL = 1e-5, 1e-10
CASES = all_cases()


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


def build(
    source: str, seed: int = 1, dtype: str = "float32", name: str = "<string>"
) -> tuple[CheckedModel, Any]:
    prog = seqdsl.loads(source, name=name)
    return prog.model(), prog.build("jax", seed=seed, dtype=dtype)


def weights64(model: Any) -> dict[str, np.ndarray]:
    """The model's own weights in float64 (the reference then sees exactly them)."""
    return {k: np.asarray(v, np.float64) for k, v in model.canonical_weights().items()}


def leaves(x: object) -> list[np.ndarray]:
    return [np.asarray(a) for a in jax.tree_util.tree_leaves(x)]


def as_outputs(out: object, n: int) -> tuple[object, ...]:
    return tuple(out) if n > 1 else (out,)  # type: ignore[arg-type]


def compare(got: Sequence[object], want: Sequence[object], tol: float, what: str = "") -> None:
    """Every output (and mask) of ``got`` against the reference's; masks exactly."""
    g, w = leaves(got), leaves(want)
    assert len(g) == len(w), f"{what}: {len(g)} arrays, reference {len(w)}"
    for i, (a, b) in enumerate(zip(g, w, strict=True)):
        assert a.shape == b.shape, f"{what} output {i}: shape {a.shape}, reference {b.shape}"
        if b.dtype == bool:
            assert a.dtype == bool and (a == b).all(), f"{what} mask {i} differs"
            continue
        err = float(np.max(np.abs(a.astype(np.float64) - b))) if a.size else 0.0
        assert err <= tol, f"{what} output {i}: max error {err:.3g} > {tol}"


def max_value(outputs: Sequence[object]) -> float:
    vals = [a for a in leaves(outputs) if a.dtype != bool and a.size]
    return max(float(np.max(np.abs(a))) for a in vals)


def reference(model: CheckedModel, jm: Any, case: Case, **kw: Any) -> Any:
    return run_reference(model, weights64(jm), case.inputs, lengths=case.lengths or None,
                         training=case.training, dropout_masks=case.dropout_masks, **kw)  # fmt: skip


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


def run_all(built: Sequence[tuple[Case, CheckedModel, Any]], twice: bool = True) -> list[Any]:
    """Every case through one jax.jit: [(outputs, new_state, second outputs or None)]."""

    def go(all_variables: list[Any]) -> list[Any]:
        res = []
        for (case, _, jm), v in zip(built, all_variables, strict=True):
            kw = dict(
                lengths=case.lengths or None,
                dropout_masks=case.dropout_masks,
                training=case.training,
            )
            out, state = jm.apply(v, *case.inputs, return_state=True, **kw)
            again = None
            if twice and module_of(jm).STATEFUL:  # a second call continues from the states
                again = jm.apply({"params": v["params"], "state": state}, *case.inputs, **kw)
            res.append((out, state, again))
        return res

    return jax.jit(go)([jm.variables for _, _, jm in built])


def check_case(case: Case, model: CheckedModel, jm: Any, result: Any, tol: float) -> None:
    out, state, again = result
    n = len(model.model.outputs)
    ref = reference(model, jm, case)
    compare(as_outputs(out, n), ref.outputs, tol, case.id)
    assert max_value(ref.outputs) > 1e-3, "outputs too small to compare"
    for layer, states in ref.states.items():
        names = module_of(jm).STATEFUL[layer][2]
        compare([state[layer][n] for n in names], states, tol, f"{case.id} final states of {layer}")
    if again is not None:
        ref2 = reference(model, jm, case, states=ref.states)
        compare(as_outputs(again, n), ref2.outputs, tol, f"{case.id} second stateful call")


def lstm_ref_adapter(calls: list[int]) -> Callable[..., Any]:
    """jax.experimental.rnn.lstm's signature around lstm_ref (which runs on CPU)."""
    from jax.experimental import rnn

    def fused(x, h0, c0, weights, seq_lengths, input_size, hidden_size, bidirectional):  # type: ignore[no-untyped-def]
        calls.append(1)
        w_ih, w_hh, b_ih, b_hh = rnn.unpack_lstm_weights(
            weights, input_size, hidden_size, 1, bidirectional
        )
        return rnn.lstm_ref(x, h0, c0, w_ih, w_hh, b_ih, b_hh, seq_lengths, input_size, hidden_size, 1, 0.0,
                            bidirectional)  # fmt: skip

    return fused


def example_inputs(
    model: CheckedModel, seed: int = 0, t: int = 12, b: int = 3
) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
    """Inputs for any model: ids below the embedding's vocabulary, padded rows of
    decreasing length (a full one, an empty one unless declared nonempty), masks
    of the declared kinds. b rows where the batch is a symbol, t steps for the
    other symbols."""
    rng = np.random.default_rng(seed)
    env: dict[str, int] = {}
    vocab = {
        layer.inputs[0]: int(layer.config["input_dim"])
        for layer in model.layers
        if layer.kind == "Embedding"
    }  # type: ignore[call-overload]
    inputs: list[np.ndarray] = []
    lengths: dict[str, np.ndarray] = {}
    for inp in model.model.inputs:
        dims = [d.value if isinstance(d.value, int) else env.setdefault(str(d.value), b if d.value == "B" else t)
                for d in inp.dims]  # fmt: skip
        b = dims[0]
        tt = dims[1] if len(dims) > 1 else 1
        pad = model.pads.get(inp.name)
        lo = 1 if pad is not None and pad.nonempty else 0
        lens = np.array([tt] + [max(lo, tt * (i + 1) // (b + 1)) for i in range(b - 2)] + [lo])[:b]
        steps = np.arange(tt)[None, :]
        if inp.is_mask:
            side = model.types[inp.name].kind.side  # type: ignore[union-attr]
            if side == "any":
                inputs.append(rng.random((b, tt)) < 0.7)
            else:
                inputs.append(
                    steps < lens[:, None] if side == "post" else steps >= tt - lens[:, None]
                )
            continue
        if inp.dtype in ("i32", "i64"):
            x = rng.integers(1, vocab.get(inp.name, 50), size=dims)
        else:
            x = rng.normal(0.0, 1.0, size=dims)
        if pad is not None or inp.masked:
            side = pad.side if pad is not None else "post"
            valid = steps < lens[:, None] if side == "post" else steps >= tt - lens[:, None]
            if pad is not None:
                x = np.where(valid.reshape(valid.shape + (1,) * (x.ndim - 2)), x, pad.value)
            if inp.masked:
                lengths[inp.name] = lens
        inputs.append(x.astype(np.int32) if inp.dtype in ("i32", "i64") else x)
    return inputs, lengths


# --------------------------------------------------------------------------
# parity on the covering array of recurrent options


@pytest.fixture(scope="module")
def parity_results() -> list[tuple[Case, CheckedModel, Any, Any]]:
    built = [(c, *build(c.source)) for c in CASES]
    results = run_all(built)
    return [(c, m, jm, r) for (c, m, jm), r in zip(built, results, strict=True)]


@pytest.mark.parametrize("index", range(len(CASES)), ids=[c.id for c in CASES])
def test_parity_f32(parity_results: list[Any], index: int) -> None:
    case, model, jm, result = parity_results[index]
    check_case(case, model, jm, result, F32_TOL)


F64_SUBSET = list(range(0, len(CASES), 4))


@pytest.fixture(scope="module")
def parity_results_f64() -> Any:
    with jax.enable_x64(True):
        built = [(CASES[i], *build(CASES[i].source, dtype="float64")) for i in F64_SUBSET]
        results = run_all(built)
    return [(c, m, jm, r) for (c, m, jm), r in zip(built, results, strict=True)]


@pytest.mark.parametrize("k", range(len(F64_SUBSET)), ids=[CASES[i].id for i in F64_SUBSET])
def test_parity_f64(parity_results_f64: list[Any], k: int) -> None:
    case, model, jm, result = parity_results_f64[k]
    assert leaves(jm.variables["params"])[0].dtype == np.float64
    with jax.enable_x64(True):
        check_case(case, model, jm, result, F64_TOL)


@pytest.mark.full
def test_parity_full() -> None:
    cases = all_cases(full=True)
    for start in range(0, len(cases), 48):
        chunk = [(c, *build(c.source)) for c in cases[start : start + 48]]
        for (c, m, jm), r in zip(chunk, run_all(chunk), strict=True):
            check_case(c, m, jm, r, F32_TOL)


@pytest.fixture(scope="module")
def hoisted_results() -> list[tuple[Case, CheckedModel, Any, Any]]:
    """Every case with the input projection done before the scan: on the CPU the
    small test layers project inside the scan body (_hoist_projection)."""
    built = []
    with pytest.MonkeyPatch.context() as mp:  # the knob lives in the shared runtime
        mp.setattr(jax_runtime, "_hoist_projection", lambda x, kernel: True)
        for c in CASES:
            model, jm = build(c.source)
            built.append((c, model, jm))
        results = run_all(built)
    return [(c, m, jm, r) for (c, m, jm), r in zip(built, results, strict=True)]


@pytest.mark.parametrize("index", range(len(CASES)), ids=[c.id for c in CASES])
def test_parity_hoisted_projection(hoisted_results: list[Any], index: int) -> None:
    case, model, jm, result = hoisted_results[index]
    check_case(case, model, jm, result, F32_TOL)


def test_projection_in_the_scan_body_by_shape() -> None:
    """_hoist_projection follows the rule measured on XLA's CPU backend (and hoists
    on GPUs): the projection goes in the scan body except for one-row batches,
    kernels of 2**20 entries or more, and F >= 256 features into at most 2F gates
    in batches under 64 rows."""
    hoist = jax_runtime._hoist_projection

    def case(b: int, f: int, g: int) -> bool:
        return bool(hoist(jnp.zeros((b, 2, f)), jnp.zeros((f, g))))

    gpu = jax.default_backend() != "cpu"
    assert case(1, 64, 256) and case(32, 1024, 4096) and case(32, 256, 512)
    assert case(32, 256, 1024) == gpu and case(256, 256, 512) == gpu
    assert case(8, 64, 256) == gpu and case(32, 64, 192) == gpu


# --------------------------------------------------------------------------
# the fused LSTM path (jax.experimental.rnn), with lstm_ref in place of cuDNN


def _fused_cases() -> list[Case]:
    base = {k: v[0] for k, v in OPTIONS.items()}
    out: list[Case] = []
    grid = [
        ("LSTM", "none", mask, rs, mo, gb, ist)
        for mask in ("post", "pre", "any", "unmasked")
        for rs, mo, gb, ist in ((True, "zero", False, False), (True, "carry", True, True),
                                (False, "zero", False, True), (True, "carry", False, False))
    ] + [
        ("RNN_LSTMCell", wrapper, mask, rs, "zero", False, ist)
        for mask in ("post", "pre", "any", "unmasked")
        for wrapper, rs, ist in (("concat", True, False), ("none2", False, True))
    ]  # fmt: skip
    for cell, wrapper, mask, rs, mo, gb, ist in grid:
        opts = dict(base, cell=cell, wrapper=wrapper, mask=mask, return_sequences=rs, masked_output=mo,
                    go_backwards=gb, initial_state=ist, return_state=True)  # fmt: skip
        out.append(make_case(opts, seed=len(out)))
    # input dropout only (recurrent dropout rules the fused kernel out): the
    # directions of a Bidirectional have their own masks, so two fused calls
    for wrapper in ("none", "sum"):
        opts = dict(base, wrapper=wrapper, mask="any", return_sequences=True, training=True)
        c = make_case(opts, seed=len(out))
        c.source = c.source.replace(", recurrent_dropout=0.2", "")
        c.dropout_masks = {k: v for k, v in c.dropout_masks.items() if not k.endswith("/recurrent")}
        c.id += "-input_dropout_only"
        out.append(c)
    return out


FUSED_CASES = _fused_cases()


@pytest.fixture(scope="module")
def fused_results() -> list[Any]:
    calls: list[int] = []
    built = []
    with pytest.MonkeyPatch.context() as mp:  # the knobs live in the shared runtime
        mp.setattr(jax_runtime, "FUSED_LSTM", "always")
        mp.setattr(jax_runtime, "_fused_lstm", lstm_ref_adapter(calls))
        for c in FUSED_CASES:
            model, jm = build(c.source)
            built.append((c, model, jm))
        results = run_all(built)
    assert calls, "the fused kernel was never called"
    return [(c, m, jm, r) for (c, m, jm), r in zip(built, results, strict=True)]


@pytest.mark.parametrize("index", range(len(FUSED_CASES)), ids=[c.id for c in FUSED_CASES])
def test_fused_lstm_parity(fused_results: list[Any], index: int) -> None:
    case, model, jm, result = fused_results[index]
    text = seqdsl.loads(case.source).compile("jax")
    assert re.search(r"fused=\"(post|pre|any)\"", text), (
        "layer not marked eligible for the fused kernel"
    )
    check_case(case, model, jm, result, F32_TOL)


def test_fused_lstm_is_selected_only_on_gpu() -> None:
    mod = jax_runtime
    assert mod.FUSED_LSTM == "auto"
    x = jnp.zeros((1, 2, 3), jnp.float32)
    assert mod._use_fused_lstm(x) == (jax.default_backend() == "gpu")
    assert not mod._use_fused_lstm(x.astype(jnp.bfloat16))


# --------------------------------------------------------------------------
# examples


@pytest.fixture(scope="module")
def example_results() -> list[Any]:
    built = []
    for path in EXAMPLES:
        model, jm = build(path.read_text(), seed=0, name=f"examples/{path.name}")
        inputs, lengths = example_inputs(model)
        built.append((path.stem, model, jm, inputs, lengths))

    def go(all_variables: list[Any]) -> list[Any]:
        return [jm.apply(v, *inputs, lengths=lengths or None)
                for (_, _, jm, inputs, lengths), v in zip(built, all_variables, strict=True)]  # fmt: skip

    results = jax.jit(go)([b[2].variables for b in built])
    return [(*b, r) for b, r in zip(built, results, strict=True)]


@pytest.mark.parametrize("index", range(len(EXAMPLES)), ids=[p.stem for p in EXAMPLES])
def test_example_parity(example_results: list[Any], index: int) -> None:
    name, model, jm, inputs, lengths, out = example_results[index]
    ref = run_reference(model, weights64(jm), inputs, lengths=lengths or None)
    compare(as_outputs(out, len(model.model.outputs)), ref.outputs, F32_TOL, name)
    assert max_value(ref.outputs) > 1e-3


def test_layer_zoo_parity() -> None:
    """Every non-recurrent layer of the catalogue, with every mask kind, in
    inference and training (BatchNormalization statistics, dropout masks)."""
    source = """
model Zoo {
    input x: f32[B, T, 4] pad(post) masked
    input y: f32[B, T, 4] pad(pre) masked
    input z: f32[B, T, 4] pad(post, value=0.0)
    input m: mask[B, T]
    input mp: mask(pre)[B, T]
    input ids: i32[B, T] pad(pre) masked
    a = x -> Conv1D(5, 3, strides=2, activation=relu)
    b = x -> Conv1D(5, 3, padding=same, dilation_rate=2, activation=gelu)
    c = y -> Conv1D(5, 4, padding=causal, strides=3, activation=elu)
    d = Conv1D(3, 2, dilation_rate=2, padding=same)(x -> drop_mask, mask=m)
    e = x -> MaxPooling1D(2)
    f = y -> AveragePooling1D(3, strides=2, padding=same)
    g = MaxPooling1D(3, strides=1, padding=same)(x -> drop_mask, mask=m)
    h = AveragePooling1D(2)(y -> drop_mask, mask=m)
    i = x -> GlobalAveragePooling1D()
    j = y -> GlobalMaxPooling1D(keepdims=true)
    k = GlobalMaxPooling1D()(x -> drop_mask, mask=m)
    l2 = x -> Dense(1) -> TemporalSoftmax()
    n = TemporalSoftmax()(y -> drop_mask, mask=m)
    p = z -> Masking(mask_value=0.0) -> Dense(8, activation=softsign) -> LayerNormalization()
    q = p -> BatchNormalization(momentum=0.9) -> Dropout(0.25)
    r = TimeDistributed(Dense(8, activation=selu))(q)
    s = TimeDistributed(Dropout(0.5))(r)
    u = TimeDistributed(LayerNormalization(center=false))(s)
    v = add(u, r, p)
    w = subtract(v, x -> drop_mask -> Dense(8))
    w1 = multiply(w, p)
    w2 = average(w1, w, v)
    w3 = maximum(w2, w1)
    w4 = minimum(w3, w)
    w5 = concat(w4, p)
    w6 = concat(w4, Dense(8)(z, mask=mp), axis=time)
    w7 = Activation(mish)(w5) -> drop_mask -> Reshape([-1, 4])
    w8 = z -> BatchNormalization(center=false) -> Flatten()
    a1 = z -> Dense(3, activation=hard_sigmoid) -> Activation(softmax)
    a2 = z -> Dense(3, activation=leaky_relu) -> Activation(log_softmax)
    a3 = z -> Dense(3, activation=exponential) -> Activation(relu6)
    a4 = z -> Dense(3, activation=swish) -> Activation(softplus)
    a5 = z -> Dense(3, activation=silu, use_bias=false) -> Activation(sigmoid)
    a6 = z -> Dense(3, activation=tanh) -> Activation(linear)
    e2 = ids -> Embedding(20, 4) -> Dense(3)
    output a with mask, b with mask, c with mask, d with mask, e with mask, f with mask,
           g with mask, h with mask, i, j, k, l2, n, w5 with mask, w6 with mask, w7, w8,
           a1, a2, a3, a4, a5, a6, e2 with mask
}
"""
    model, jm = build(source, seed=3)
    inputs, lengths = example_inputs(model, t=13)
    rng = np.random.default_rng(1)
    probe = run_reference(model, weights64(jm), inputs, lengths=lengths)
    drop = {layer.name: (rng.random(probe.values[layer.inputs[0]][0].shape) > 0.3).astype(np.float64)
            for layer in model.layers if "Dropout" in (layer.kind, getattr(layer.config.get("layer"), "kind", ""))}  # fmt: skip
    assert len(drop) == 2
    apply = jax.jit(jm.apply, static_argnames=("training", "return_state"))
    for training in (False, True):
        ref = run_reference(
            model, weights64(jm), inputs, lengths=lengths, training=training, dropout_masks=drop
        )
        out, state = apply(jm.variables, *inputs, lengths=lengths, training=training, dropout_masks=drop,
                           return_state=True)  # fmt: skip
        compare(out, ref.outputs, F32_TOL, f"zoo training={training}")
        assert len(ref.updated) == (4 if training else 0)
        for key, want in ref.updated.items():
            layer, name = key.split("/")
            compare([state[layer][name]], [want], F32_TOL, key)


# --------------------------------------------------------------------------
# the emitted code itself


def test_canary_swapped_gates_fail_parity() -> None:
    """Parity is sensitive: swapping the input and forget gates of the LSTM cell
    in the emitted text makes the outputs differ from the reference."""
    case = next(c for c in CASES if c.options["cell"] == "LSTM" and not c.training)
    prog = seqdsl.loads(case.source)
    model = prog.model()
    text = prog.compile("jax", standalone=True)  # the runtime's code, copied in
    line = "i, f, g, o = jnp.split(z, 4, axis=-1)"
    assert text.count(line) == 1
    jm = prog.build("jax", seed=1)
    ref = reference(model, jm, case)
    for src, ok in (
        (text, True),
        (text.replace(line, "f, i, g, o = jnp.split(z, 4, axis=-1)"), False),
    ):
        mod = load_source(src, "canary")
        bad = instantiate(mod, model, jm.canonical_weights())
        with jax.disable_jit():
            out = bad.apply(bad.variables, *case.inputs, lengths=case.lengths or None)
        err = max(float(np.max(np.abs(a - b))) for a, b in
                  zip(leaves(as_outputs(out, len(ref.outputs))), leaves(ref.outputs), strict=True) if b.dtype != bool)  # fmt: skip
        assert (err < F32_TOL) == ok, err


SCALING = {
    "post": "input x: f32[B, T, 4] pad(post) masked",
    "pre": "input x: f32[B, T, 4] pad(pre) masked",
    "any": "input x0: f32[B, T, 4]\n    input m: mask[B, T]",
    "none": "input x: f32[B, T, 4]",
}


@pytest.mark.parametrize("kind", list(SCALING))
def test_no_per_step_loop(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The traced program does not grow with T: recurrent layers are one scan
    (also the fused path), windows one reduce_window/conv."""
    first = "x = LayerNormalization()(x0, mask=m)" if kind == "any" else ""
    source = f"""
model Scaling {{
    {SCALING[kind]}
    {first}
    a = x -> LSTM(3, return_sequences=true) -> GRU(3, return_sequences=true, go_backwards=true)
    b = x -> Bidirectional(SimpleRNN(3, return_sequences=true)) -> GRU(2, reset_after=false, masked_output=carry, return_sequences=true)
    c = x -> Conv1D(2, 3, padding=same) -> MaxPooling1D(2, padding=same) -> LSTM(2)
    d, dh, dc = RNN(LSTMCell(3), return_state=true)(x)
    output a, b, c, d, dh, dc
}}
"""
    _, jm = build(source)
    mod = module_of(jm)

    def count(t: int) -> int:
        args = [np.zeros((2, t, 4), np.float32)] + (
            [np.ones((2, t), bool)] if kind == "any" else []
        )
        kw = {"lengths": {"x": np.array([t, 1])}} if kind in ("post", "pre") else {}
        return count_eqns(
            jax.make_jaxpr(lambda v, *a: mod.apply(v, *a, **kw))(jm.variables, *args).jaxpr
        )

    assert count(8) == count(256)
    monkeypatch.setattr(jax_runtime, "FUSED_LSTM", "always")
    monkeypatch.setattr(jax_runtime, "_fused_lstm", lstm_ref_adapter([]))
    assert count(8) == count(256)


def test_jit_matches_eager() -> None:
    model, jm = build((ROOT / "examples" / "masking_layer_float.seq").read_text(), seed=0)
    inputs, _ = example_inputs(model, t=6)
    eager = jm.apply(jm.variables, *inputs)
    jitted = jax.jit(jm.apply)(jm.variables, *inputs)
    np.testing.assert_allclose(eager, jitted, atol=1e-6)
    # the wrapper class calls a jitted apply too
    np.testing.assert_allclose(jm(*inputs), eager, atol=1e-6)


def test_emitted_module_is_standalone_and_deterministic() -> None:
    path = ROOT / "examples" / "seq2seq_bidir_encoder.seq"
    text = seqdsl.load(path).compile("jax", standalone=True)
    assert text == seqdsl.load(path).compile("jax", standalone=True)
    imports = set(re.findall(r"^(?:import|from) ([\w.]+)", text, re.M))
    assert imports <= {
        "__future__",
        "collections.abc",  # the annotations of the copied runtime code (stdlib)
        "typing",
        "zlib",
        "functools",  # stdlib: _Model, and the weights file reader of load_canonical
        "json",
        "os",
        "pathlib",
        "struct",
        "jax",
        "jax.numpy",
        "jax.experimental.rnn",
        "numpy",
    }
    for forbidden in ("flax", "haiku", "optax", "equinox", "seqdsl"):
        assert forbidden not in imports
    # one small function per layer kind used, and only those
    assert "def _lstm(" in text and "def _gru(" not in text and "def _conv1d(" not in text
    assert "lax.scan" in text and "for t in range" not in text


# Runs in a subprocess whose import system refuses seqdsl: imports standalone
# modules from files and runs each on its inputs (all from one .npz).
_STANDALONE_DRIVER = refusing("seqdsl") + textwrap.dedent(
    """
    import importlib.util, sys

    import jax
    import numpy as np

    data, out, *paths = sys.argv[1:]
    d = np.load(data)
    results = {}
    for i, path in enumerate(paths):
        spec = importlib.util.spec_from_file_location(f"standalone_{i}", path)
        mod = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(mod)
        except ImportError as e:
            results[f"{i}/import_error"] = np.array(str(e))
            continue
        pre = f"{i}/"
        weights = {k[len(pre) + 2 :]: d[k] for k in d.files if k.startswith(pre + "w:")}
        inputs = [d[f"{pre}x{j}"] for j in range(int(d[pre + "n"]))]
        lengths = {k[len(pre) + 2 :]: d[k] for k in d.files if k.startswith(pre + "l:")}
        masks = {k[len(pre) + 2 :]: d[k] for k in d.files if k.startswith(pre + "m:")}
        variables = mod.from_canonical(weights)
        outs = mod.apply(variables, *inputs, lengths=lengths or None, masks=masks or None)
        for j, leaf in enumerate(jax.tree_util.tree_leaves(outs)):
            results[f"{pre}{j}"] = np.asarray(leaf)
    assert not [m for m in sys.modules if m.partition(".")[0] == "seqdsl"]
    np.savez(out, **results)
    """
)


def test_standalone_modules_run_without_seqdsl(tmp_path: Path) -> None:
    """Standalone modules (standalone=True: the runtime's code copied in) import in
    an interpreter that refuses seqdsl and compute exactly what the modules that
    import seqdsl.runtime.jax compute. (Extern models import seqdsl.externs even
    standalone: left out.)"""
    names = (
        "sentiment_lstm", "bilstm_tagger", "conv_frontend_lstm", "masking_temporal_split",
        "masking_temporal_softmax", "attention_seq2seq", "rnn_guide_stateful",
        "rnn_guide_mnist_lstm", "global_pool_classifier", "gru_pre_padding",
        "custom/builtin_cells", "custom/nested_cell", "custom/seed_masking_layers",
    )  # fmt: skip
    sources = [ROOT / "examples" / f"{name}.seq" for name in names]
    data: dict[str, np.ndarray] = {}
    paths, wants = [], []
    for path in sources:
        prog = seqdsl.load(path)
        model = prog.model()
        if model.externs:
            continue
        i = len(paths)
        jm = prog.build("jax", seed=0)
        inputs, lengths = example_inputs(model)
        masks = {}  # lengths cannot say which steps are valid without a pad side: masks
        for inp, x in zip(model.model.inputs, inputs, strict=True):
            t = model.types[inp.name]
            if (
                inp.name in lengths
                and isinstance(t, TensorType)
                and t.mask
                and t.mask.side == "any"
            ):
                masks[inp.name] = np.arange(x.shape[1])[None, :] < lengths.pop(inp.name)[:, None]
        out = jm.apply(jm.variables, *inputs, lengths=lengths or None, masks=masks or None)
        wants.append(leaves(out))
        data.update({f"{i}/m:{k}": v for k, v in masks.items()})
        data[f"{i}/n"] = np.array(len(inputs))
        data.update({f"{i}/x{j}": x for j, x in enumerate(inputs)})
        data.update({f"{i}/l:{k}": v for k, v in lengths.items()})
        data.update({f"{i}/w:{k}": v for k, v in jm.canonical_weights().items()})
        file = tmp_path / f"{path.stem}_standalone.py"
        file.write_text(prog.compile("jax", standalone=True))
        paths.append(str(file))
    # the importing module of the last one: the finder must refuse it
    file = tmp_path / "importing.py"
    file.write_text(prog.compile("jax"))
    paths.append(str(file))
    np.savez(tmp_path / "data.npz", **data)  # type: ignore[arg-type]
    run = subprocess.run(
        [sys.executable, "-c", _STANDALONE_DRIVER, str(tmp_path / "data.npz"),
         str(tmp_path / "out.npz"), *paths],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    got = np.load(tmp_path / "out.npz")
    assert f"{len(wants)}/import_error" in got.files  # the importing module needs seqdsl
    assert len(wants) >= 10
    for i, want in enumerate(wants):
        assert [k for k in got.files if k.startswith(f"{i}/")] == [
            f"{i}/{j}" for j in range(len(want))
        ]
        for j, w in enumerate(want):
            np.testing.assert_array_equal(got[f"{i}/{j}"], w, err_msg=paths[i])


@pytest.mark.parametrize("name", GOLDEN_EXAMPLES)
def test_golden(name: str, request: pytest.FixtureRequest) -> None:
    text = seqdsl.loads(
        (ROOT / "examples" / f"{name}.seq").read_text(), name=f"examples/{name}.seq"
    ).compile("jax")
    path = GOLDEN / f"{name}.py"
    if request.config.getoption("--update-golden"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"no golden file {path}: run pytest --update-golden"
    assert text == path.read_text(), (
        f"{path} is out of date: review the diff, then run pytest --update-golden"
    )


# --------------------------------------------------------------------------
# variables, weights, state


def _zoo_bn() -> str:
    return (ROOT / "examples" / "rnn_guide_mnist_lstm.seq").read_text()


SMALL = """
model Small {
    input x: f32[4, T, 3] pad(post) masked
    a = x -> Bidirectional(LSTM(4, return_sequences=true, dropout=0.2))
          -> BatchNormalization()
          -> Dropout(0.5)
          -> GRU(3, stateful=true, recurrent_dropout=0.1)
    y = Dense(2, trainable=false)(a)
    output y
}
"""


def test_weights_round_trip_bit_exact(tmp_path: Path) -> None:
    model, jm = build(SMALL, seed=5)
    mod = module_of(jm)
    canonical = jm.canonical_weights()
    assert list(canonical) == [
        f"{layer.name}/{w.name}" for layer in model.layers for w in layer.weights
    ]
    assert set(jm.variables["state"]) == {"a_batch_normalization", "a_gru"}
    again = mod.to_canonical(mod.from_canonical(canonical))
    for k, v in canonical.items():
        assert again[k].dtype == v.dtype == np.float32
        assert again[k].tobytes() == v.tobytes(), k

    # one SGD step via jax.grad, then canonical -> jax -> canonical again
    inputs, lengths = example_inputs(model, t=5)

    def loss(params: Any) -> Any:
        out = mod.apply(
            {"params": params, "state": jm.variables["state"]}, *inputs, lengths=lengths
        )
        return jnp.sum(jnp.square(out))

    grads = jax.jit(jax.grad(loss))(jm.variables["params"])
    assert not np.any(np.asarray(grads["y_dense"]["kernel"])), (
        "trainable=false weights get no gradient"
    )
    params = jax.tree_util.tree_map(lambda p, g: p - 0.1 * g, jm.variables["params"], grads)
    stepped = mod.to_canonical({"params": params, "state": jm.variables["state"]})
    changed = [k for k in canonical if not np.array_equal(stepped[k], canonical[k])]
    assert "a_bidirectional/forward/kernel" in changed and "y_dense/kernel" not in changed
    back = mod.to_canonical(mod.from_canonical(stepped))
    assert all(back[k].tobytes() == stepped[k].tobytes() for k in stepped)

    # through the weights file
    file = tmp_path / "small.safetensors"
    save_weights(file, stepped, {"model": model.name})
    loaded, meta = load_weights(file)
    jm.load_canonical(loaded)
    assert meta["model"] == model.name
    assert all(jm.canonical_weights()[k].tobytes() == stepped[k].tobytes() for k in stepped)


def test_from_canonical_rejects_bad_weights() -> None:
    _, jm = build(_zoo_bn())
    mod = module_of(jm)
    w = jm.canonical_weights()
    with pytest.raises(WeightsFileError, match="missing"):
        mod.from_canonical({k: v for k, v in w.items() if not k.endswith("bias")})
    with pytest.raises(WeightsFileError, match="unknown to"):
        mod.from_canonical({**w, "extra/kernel": np.zeros(1)})
    bad = dict(w)
    key = next(iter(bad))
    bad[key] = bad[key].T
    with pytest.raises(ValueError, match="shape"):
        mod.from_canonical(bad)


def test_init_draws_keras_formulas() -> None:
    _, jm = build(SMALL)
    mod = module_of(jm)
    v = jax.jit(mod.init)(jax.random.key(3))
    assert jax.tree_util.tree_structure(v) == jax.tree_util.tree_structure(jm.variables)
    w = mod.to_canonical(v)
    assert all(w[k].shape == jm.canonical_weights()[k].shape for k in w)
    k, r, b = (w[f"a_bidirectional/backward/{n}"] for n in ("kernel", "recurrent_kernel", "bias"))
    limit = np.sqrt(6 / (3 + 16))  # glorot_uniform
    assert 0.5 * limit < np.abs(k).max() <= limit
    np.testing.assert_allclose(r @ r.T, np.eye(4), atol=1e-5)  # orthogonal rows (rows < cols)
    np.testing.assert_array_equal(b[4:8], 1.0)  # unit_forget_bias
    np.testing.assert_array_equal(np.concatenate([b[:4], b[8:]]), 0.0)
    assert (w["a_batch_normalization/moving_variance"] == 1).all()
    assert not np.array_equal(w["a_bidirectional/forward/kernel"], k)
    assert all((v["state"]["a_gru"]["h"] == 0).all() for _ in [0])
    again = mod.to_canonical(jax.jit(mod.init)(jax.random.key(3)))
    assert all(np.array_equal(again[k], w[k]) for k in w)


def test_batch_norm_state_through_the_class() -> None:
    model, jm = build(_zoo_bn(), seed=2)
    inputs, _ = example_inputs(model, t=4)
    before = jm.canonical_weights()
    ref = run_reference(model, weights64(jm), inputs, training=True)
    out = jm(*inputs, training=True)  # the class keeps the new state
    compare([out], ref.outputs, F32_TOL, "training output")
    after = jm.canonical_weights()
    for key, want in ref.updated.items():
        np.testing.assert_allclose(after[key], want, atol=F32_TOL)
        assert not np.allclose(after[key], before[key])
    # inference leaves it alone
    jm(*inputs)
    assert all(np.array_equal(jm.canonical_weights()[k], after[k]) for k in after)


def test_stateful_calls_and_reset_states() -> None:
    model, jm = build((ROOT / "examples" / "rnn_guide_stateful.seq").read_text(), seed=4)
    rng = np.random.default_rng(0)
    x1, x2 = rng.normal(size=(20, 10, 50)), rng.normal(size=(20, 10, 50))
    r1 = run_reference(model, weights64(jm), [x1])
    r2 = run_reference(model, weights64(jm), [x2], states=r1.states)
    compare([jm(x1)], r1.outputs, F32_TOL, "first call")
    compare([jm(x2)], r2.outputs, F32_TOL, "second call")
    compare([jm.variables["state"]["output_state_lstm"][n] for n in ("h", "c")], r2.states["output_state_lstm"],
            F32_TOL)  # fmt: skip
    jm.reset_states()
    compare(
        [jm(x2)], run_reference(model, weights64(jm), [x2]).outputs, F32_TOL, "after reset_states"
    )


def test_float64_instantiate() -> None:
    with jax.enable_x64(True):
        model, jm = build((ROOT / "examples" / "sentiment_lstm.seq").read_text(), dtype="float64")
        assert all(a.dtype == np.float64 for a in leaves(jm.variables))
        inputs, _ = example_inputs(model)
        out = jm.apply(jm.variables, *inputs)
        assert out.dtype == np.float64
        compare([out], run_reference(model, weights64(jm), inputs).outputs, F64_TOL)


# --------------------------------------------------------------------------
# run-time checks and debug


def test_debug_rejects_an_inner_padding_id() -> None:
    _, jm = build((ROOT / "examples" / "sentiment_lstm.seq").read_text())
    ok = np.array([[5, 6, 7, 0], [3, 0, 0, 0]])
    debug_call(jm, ok)
    with pytest.raises(ValueError) as e:
        debug_call(jm, np.array([[5, 0, 7, 0], [3, 0, 0, 0]]))
    msg = str(e.value)
    assert "x_embedding" in msg and "tokens: i32[B, T] pad(post, value=0)" in msg and "row 0" in msg
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 5000\)"):
        debug_call(jm, np.array([[5000, 1]]))
    with pytest.raises(ValueError, match="outside jax.jit"):
        jax.jit(lambda v, t: module_of(jm).debug(v, t))(jm.variables, ok)


def test_debug_checks_declared_kinds_of_inputs() -> None:
    _, jm = build("""
model M {
    input x: f32[B, T, 2] pad(pre, nonempty=true) masked
    input m: mask(post)[B, T]
    a = GRU(2)(x)
    b = GRU(2)(x -> drop_mask, mask=m)
    output a, b
}
""")
    x = np.ones((2, 3, 2))
    post = np.array([[1, 1, 0], [1, 0, 0]], bool)
    debug_call(jm, x, post, lengths=np.array([3, 1]))
    with pytest.raises(ValueError, match=r"lengths of input `x` must lie in \[1, 3\]"):
        debug_call(jm, x, post, lengths=np.array([3, 0]))
    with pytest.raises(ValueError, match="declared `pre`"):
        debug_call(jm, x, post, masks={"x": post})
    with pytest.raises(ValueError, match="mask input `m: mask\\(post\\)"):
        debug_call(jm, x, post[:, ::-1], lengths=np.array([3, 1]))
    with pytest.raises(ValueError, match="declared `masked`"):
        jm(x, post)


def test_runtime_constraints_and_symbols() -> None:
    _, split = build((ROOT / "examples" / "masking_temporal_split.seq").read_text())
    with pytest.raises(ValueError, match=r"T = 5, but TemporalSplit \(line 15\) needs T % 2 == 0"):
        split(np.ones((2, 5), np.int32))
    _, two = build((ROOT / "examples" / "rnn_guide_encoder_decoder.seq").read_text())
    with pytest.raises(
        ValueError,
        match=r"`decoder_input`: axis 0 \(B\) has size 3, but B = 2 in input `encoder_input`",
    ):
        two(np.ones((2, 4), np.int32), np.ones((3, 4), np.int32))
    with pytest.raises(ValueError, match="rank 2"):
        two(np.ones((2, 4, 1), np.int32), np.ones((2, 4), np.int32))
    _, fixed = build((ROOT / "examples" / "rnn_guide_stateful.seq").read_text())
    with pytest.raises(ValueError, match=r"axis 0 has size 19, but .* declares 20"):
        fixed(np.ones((19, 10, 50)))


def test_dropout_needs_rng_or_masks() -> None:
    model, jm = build(SMALL)
    inputs, lengths = example_inputs(model, t=4)
    with pytest.raises(ValueError, match="rng="):
        jax.make_jaxpr(lambda v: jm.apply(v, *inputs, lengths=lengths, training=True))(jm.variables)

    @jax.jit
    def both(v: Any, key: Any) -> Any:
        return (jm.apply(v, *inputs, lengths=lengths, training=True, rng=key),
                jm.apply(v, *inputs, lengths=lengths))  # fmt: skip

    (a, d), (b, _), (c, _) = (both(jm.variables, jax.random.key(k)) for k in (0, 0, 1))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert not np.allclose(a, d)


# --------------------------------------------------------------------------
# pad() against keras.utils.pad_sequences


@pytest.fixture(scope="module")
def keras_pad() -> Callable[..., np.ndarray]:
    os.environ.setdefault("KERAS_BACKEND", "jax")  # tests/conftest.py may have chosen one
    keras = pytest.importorskip("keras")
    return keras.utils.pad_sequences  # type: ignore[no-any-return]


def _pad_module() -> Any:
    return jax_runtime  # pad() of every generated module calls its _pad_sequences


def test_pad_matches_keras(keras_pad: Callable[..., np.ndarray]) -> None:
    mod = _pad_module()
    rng = np.random.default_rng(0)
    for trial in range(300):
        n = int(rng.integers(1, 5))
        feat = () if trial % 3 else (int(rng.integers(1, 3)),)
        lens = rng.integers(0, 7, size=n)
        if trial % 7 == 0:
            lens[0] = 0
        if lens.max() == 0:
            lens[-1] = 1  # keras needs one non-empty sequence to learn the feature shape
        floaty = trial % 2 == 0
        seqs = [(rng.normal(0, 3, (int(k), *feat)) if floaty else rng.integers(-5, 9, (int(k), *feat))).tolist()
                for k in lens]  # fmt: skip
        side, trunc = ("pre", "post")[trial % 2], ("pre", "post")[(trial // 2) % 2]
        maxlen = None if trial % 5 == 0 else int(rng.integers(1, 8))
        value = float(rng.choice([0.0, -1.0, 0.7, 2.5]))
        dtype = ("int32", "float32", "int64", "float64")[trial % 4]
        want = keras_pad(
            seqs, maxlen=maxlen, dtype=dtype, padding=side, truncating=trunc, value=value
        )
        got, got_lens = mod._pad_sequences(seqs, side, value, maxlen if maxlen is not None else max(lens),
                                           trunc, dtype)  # fmt: skip
        assert got.dtype == want.dtype and got.shape == want.shape, (trial, got.shape, want.shape)
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(got_lens, np.minimum(lens, got.shape[1]))


def test_pad_of_a_model(keras_pad: Callable[..., np.ndarray]) -> None:
    _, jm = build("""
model P {
    input a: i32[B, T] pad(post, value=0, maxlen=4, truncate=post)
    input b: f32[B, T, 2] pad(pre, value=-1.0) masked
    input c: f32[B, S] pad(pre, value=0.5)
    x = concat(a -> Embedding(10, 2), b)
    output x, c
}
""")
    a = [[1, 2, 3, 4, 5, 6], [7], []]
    b = [[[1.0, 2.0]], [[3.0, 4.0], [5.0, 6.0]], []]
    c = [[1.9, 2.2], [3.1], [0.2]]
    (pa, la), (pb, lb), (pc, lc) = jm.pad(a, b, c)
    np.testing.assert_array_equal(
        pa, keras_pad(a, maxlen=4, padding="post", truncating="post", value=0)
    )
    assert pa.dtype == np.int32 and la.tolist() == [4, 1, 0]
    # b shares T with a, whose maxlen=4 sets the length of both
    np.testing.assert_array_equal(pb, keras_pad(b, maxlen=4, dtype="float32", value=-1.0))
    assert lb.tolist() == [1, 2, 0]
    np.testing.assert_array_equal(pc, keras_pad(c, dtype="float32", value=0.5))
    assert pc.shape == (3, 2) and lc.tolist() == [2, 1, 1]
    jm(pa, pb, pc, lengths={"b": lb})
    with pytest.raises(ValueError):
        jm.pad([], b, c)
    with pytest.raises(TypeError, match="3 list"):
        jm.pad(a, b)


def test_pad_casts_to_the_declared_dtype(keras_pad: Callable[..., np.ndarray]) -> None:
    _, jm = build(
        "model P { input t: i32[B, T] pad(post, value=0)\n x = t -> Embedding(9, 2)\n output x }"
    )
    seqs = [[1.9, 2.2, 0.7], [3.5]]
    batch, lens = jm.pad(seqs)
    np.testing.assert_array_equal(batch, keras_pad(seqs, padding="post"))
    assert (
        batch.dtype == np.int32
        and batch.tolist() == [[1, 2, 0], [3, 0, 0]]
        and lens.tolist() == [3, 1]
    )


def test_class_name_avoids_module_names() -> None:
    model = seqdsl.loads("model init { input x: f32[B, 2]\n y = Dense(2)(x)\n output y }").model()
    assert class_name(model) == "initModel"
