"""Differential testing: random valid programs (tests/progen.py) run on the NumPy
reference and on the torch, JAX and Keras backends with the same weights and
inputs (tests/difftest.py), and must agree within the float32 tolerance.

Default run: programs 0-119 on the reference, torch and JAX; every fourth of them
(30) on Keras too. ``pytest -m full`` runs programs 0-9999 on every backend and
reduces each disagreement to a minimal program. The same campaign from the
command line: ``python tests/difftest.py START COUNT [BACKENDS] [KERAS_EVERY]
--chunk 500 --jobs 2``. A float32 difference that the backend's own float64 run
resolves is float32 rounding, not a disagreement (tests/difftest.py).

Below them, the bugs the campaign found, each as its reduced program (or a close
variant covering its siblings), on every backend it concerns.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import seqdsl
from seqdsl.catalogue import CATALOGUE, MERGES
from seqdsl.diagnostics import SeqError

pytest.importorskip("torch")
pytest.importorskip("jax")
keras = pytest.importorskip("keras")

sys.path.insert(0, str(Path(__file__).resolve().parent))
import difftest  # noqa: E402
import progen  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore")

DEFAULT_PROGRAMS = 120
BLOCK = 40
KERAS_EVERY = 4


def _report(stats: dict[str, object]) -> str:
    lines = []
    for d in stats["disagreements"]:  # type: ignore[attr-defined]
        lines.append(f"program {d['seed']} on {d['backend']}: {d['message']}\n{d['source']}")
        if d["reduced"]:
            lines.append(f"reduced:\n{d['reduced']}")
    return "\n".join(lines)


@pytest.mark.parametrize("start", range(0, DEFAULT_PROGRAMS, BLOCK))
def test_random_programs_agree(start: int) -> None:
    stats = difftest.campaign(start, BLOCK, difftest.BACKENDS, KERAS_EVERY, reduce=False)
    assert not stats["disagreements"], _report(stats)
    # most programs are compared (a few have outputs beyond float32 or break a
    # run-time constraint such as TemporalSplit's divisibility with their data)
    assert stats["compared"] >= 0.8 * BLOCK, stats


@pytest.mark.full
def test_ten_thousand_random_programs_agree() -> None:
    """In chunks of 500 programs, each in a fresh process, two at a time."""
    stats = difftest.campaign_in_processes(0, 10_000, difftest.BACKENDS, chunk=500, jobs=2)
    assert not stats["crashed"], stats["crashed"]
    assert not stats["disagreements"], _report(stats)
    assert stats["compared"] >= 0.8 * stats["programs"], stats


# --------------------------------------------------------------------------
# the generator and the reducer


def test_generator_is_deterministic_and_valid() -> None:
    for seed in range(5):
        p = progen.generate(seed)
        assert p.text == progen.generate(seed).text
        assert progen.check(p) is not None, p.text


def test_every_catalogue_layer_and_merge_is_generated() -> None:
    """The layer kinds and options come from the catalogue: every layer (cells inside
    RNN) and every merge function appears in the programs of the default run."""
    text = "".join(progen.generate(s).text for s in range(DEFAULT_PROGRAMS))
    missing = [k for k in CATALOGUE if f"{k}(" not in text]
    missing += [k for k in MERGES if f"= {k}(" not in text]
    assert not missing


def test_reducer_keeps_the_failure_and_removes_the_rest() -> None:
    """Reduced while "an LSTM reads a Dense output" holds: what is left is that."""
    src = progen.Prog(
        inputs=(
            progen.Input("x", "fpad", "f32[B, T, 3] pad(post) masked"),
            progen.Input("y", "fplain", "f32[B, T, 3]"),
        ),
        stmts=(
            progen.Stmt(("a",), ("x",), layer=progen.Layer("Dense", (("units", "4"),))),
            progen.Stmt(("b",), ("y",), layer=progen.Layer("GRU", (("units", "3"),))),
            progen.Stmt(
                ("c",),
                ("a",),
                layer=progen.Layer(
                    "LSTM", (("units", "3"), ("go_backwards", "true"), ("use_bias", "false"))
                ),
            ),
            progen.Stmt(("d",), ("c", "b"), merge="add"),
        ),
        outputs=(("d", False), ("a", True)),
    )
    assert progen.check(src) is not None

    def fails(p: progen.Prog) -> bool:
        m = progen.check(p)
        if m is None:
            return False
        dense_out = {o for la in m.layers if la.kind == "Dense" for o in la.outputs}
        return any(la.kind == "LSTM" and la.inputs[0] in dense_out for la in m.layers)

    small = progen.reduce(src, fails)
    assert fails(small)
    assert [s.text for s in small.stmts] == ["a = Dense(units=4)(x)", "c = LSTM(units=3)(a)"]
    assert [i.name for i in small.inputs] == ["x"]


def test_outputs_past_float32_range_are_compared_by_shape_only() -> None:
    """Program 6155: a GRU with a softplus gate reaches 7e190 (float32 overflows to
    inf, NaN after the LayerNormalization, and Keras' float64 variance overflows
    too). Only the output that depends on it is compared by shape; the others of
    the program are compared, and agree."""
    p = progen.generate(6155)
    assert "recurrent_activation=softplus" in p.text
    m = progen.check(p)
    assert m is not None
    w, d = difftest.make_weights(m, 6155), difftest.make_data(m, 6155)
    ref = difftest.run_reference(
        m, {k: v.astype(np.float64) for k, v in w.items()}, d.inputs, lengths=d.lengths
    )
    assert difftest._largest_value(ref.values.values()) > 1e100
    assert difftest._beyond_float32(m, ref.values) == {0}  # v3 (of v3, v4, v5)
    r = difftest.run_prog(p, 6155, ("torch",))
    assert r.skipped is None and r.backends == {"torch": None}


# --------------------------------------------------------------------------
# bugs found by the campaign: the reduced programs


def agree(source: str, backends: tuple[str, ...], seed: int = 0) -> None:
    r = difftest.run_source(source, seed, backends)
    assert r.skipped is None, r.skipped
    assert not r.disagreements, r.disagreements


MERGES_OF_MASKED_AND_UNMASKED = """
model M {
    input x: f32[B, T, 3] pad(post) masked
    input y: f32[B, T, 3]
    input ids: i32[B, T] pad(post, value=0)
    s = x -> LSTM(3, return_sequences=true)
    e = ids -> Embedding(7, 3, mask_zero=true)
    k = y -> Masking()
    a = maximum(s, y)
    b = minimum(y, e, y)
    c = multiply(k, y)
    d = maximum(s, e)
    f = multiply(e, s)
    output a with mask, b with mask, c, d, f
}
"""


@pytest.mark.parametrize("backend", difftest.BACKENDS)
def test_maximum_minimum_multiply_compute_at_masked_steps(backend: str) -> None:
    """Item 17: Keras 3's Maximum/Minimum/Multiply replace a masked input's value at
    masked steps (by another input's, or by 1) when it carries a Keras mask (an LSTM's
    sequence, an Embedding(mask_zero=true), a Masking): errors up to 2.4 here. seqdsl's
    merges compute on every step, with the AND of the masks."""
    m = seqdsl.loads(MERGES_OF_MASKED_AND_UNMASKED).model()
    d = difftest.make_data(m, 0)
    assert not d.lengths["x"].all()  # some masked steps, where Keras substituted
    agree(MERGES_OF_MASKED_AND_UNMASKED, (backend,))


UNUSED_LAYER = """
model M {
    input x: f32[B, T, 2] pad(post) masked
    _u = x -> Dense(4)
    v = x -> LSTM(3, return_sequences=true)
    _w = v -> GlobalAveragePooling1D() -> Dense(2)
    y = x -> Dense(3)
    output y with mask
}
"""


@pytest.mark.parametrize("backend", difftest.BACKENDS)
def test_layers_of_unused_values_keep_their_weights(backend: str) -> None:
    """Item 18: a layer with weights whose result nothing uses made the Keras build
    fail (`No such layer: _u_dense`): the functional graph leaves it out. Its weights
    are the model's on every backend, and move in and out unchanged."""
    prog = seqdsl.loads(UNUSED_LAYER)
    m = prog.model()
    w = difftest.make_weights(m, 3)
    assert {"_u_dense/kernel", "v_lstm/kernel", "_w_dense/kernel"} <= set(w)
    net = prog.build(backend, seed=1)
    net.load_canonical(w)  # type: ignore[attr-defined]
    back = net.canonical_weights()  # type: ignore[attr-defined]
    assert set(back) == set(w)
    for k, v in w.items():
        got = back[k].detach().numpy() if hasattr(back[k], "detach") else np.asarray(back[k])
        assert np.array_equal(got, v), k
    agree(UNUSED_LAYER, (backend,))


def test_unused_layers_weights_are_trainable_keras_weights() -> None:
    """On Keras the layers of unused values are tracked by the model (model.weights, as
    torch's parameters() and JAX's params hold them) but are not in its graph."""
    net = seqdsl.loads(UNUSED_LAYER).build("keras", seed=0)
    paths = {v.path for v in net.weights}  # type: ignore[attr-defined]
    assert {"_u_dense/kernel", "_w_dense/bias", "v_lstm/lstm_cell/kernel"} <= paths
    assert "_u_dense" not in {la.name for la in net.layers}  # type: ignore[attr-defined]
    assert net.get_layer("_u_dense").name == "_u_dense"  # type: ignore[attr-defined]


LAYER_NORM_WITHOUT_PARAMETERS = """
model M {
    input x: f32[B, T, 3] pad(post) masked
    y = x -> LayerNormalization(center=false, scale=false)
    z = x -> TimeDistributed(LayerNormalization(center=false, scale=false))
    w = x -> LayerNormalization(center=false) -> BatchNormalization(center=false, scale=false)
    output y with mask, z, w
}
"""


@pytest.mark.parametrize("backend", difftest.BACKENDS)
def test_layer_normalization_without_parameters(backend: str) -> None:
    """Item 19: on JAX, LayerNormalization(center=false, scale=false) looked up its
    parameters, which it has none of (KeyError in apply)."""
    agree(LAYER_NORM_WITHOUT_PARAMETERS, (backend,))


LINEAR_RECURRENT = """
model M {
    input x: f32[B, T, 3] pad(post) masked
    y = x -> LSTM(3, activation=linear, recurrent_activation=linear)
    z = x -> GRU(3, activation=linear, return_sequences=true)
    w = x -> SimpleRNN(3, activation=linear)
    v = x -> RNN(GRUCell(2, recurrent_activation=linear, reset_after=false))
    u = x -> Bidirectional(LSTM(2, activation=linear))
    output y, z with mask, w, v, u
}
"""


@pytest.mark.parametrize("backend", difftest.BACKENDS)
def test_recurrent_layers_with_linear_activations(backend: str) -> None:
    """Item 20: on torch, activation=linear or recurrent_activation=linear in a
    recurrent cell passed None as the activation (TypeError when called)."""
    agree(LINEAR_RECURRENT, (backend,))


RANK2_CONCAT = """
model M {
    input x: i32[B, T] pad(pre, value=0) masked
    input z: i32[B, T]
    a = concat(x, x)
    b = concat(x, z, axis=time)
    f = concat(z, x)
    h1, h2 = x -> TemporalSplit(2)
    g = concat(x -> drop_mask, h1)
    output a with mask, b with mask, f with mask, g with mask, h2
}
"""


@pytest.mark.parametrize("backend", difftest.BACKENDS)
def test_concat_of_masked_ids_joins_their_masks_in_time(backend: str) -> None:
    """Found by the campaign: concat of masked rank-2 values (ids [B, T]) joins them on
    their last axis, which is time, but kept the AND of their masks ([B, T] for a
    [B, 2T] value: the reference failed, and JAX and Keras kept masks of the wrong
    length). Their masks are now joined in time, as torch did and as concat(...,
    axis=time) does for sequences."""
    m = seqdsl.loads(RANK2_CONCAT).model()
    assert str(m.types["a"].mask).startswith("any")  # type: ignore[union-attr]
    assert str(m.types["b"].mask).startswith("pre")  # type: ignore[union-attr]
    agree(RANK2_CONCAT, (backend,))


@pytest.mark.parametrize(
    ("layer", "weight"),
    [
        ("LayerNormalization(gamma_initializer=orthogonal)", "gamma"),
        ("Dense(2, bias_initializer=identity)", "bias"),
        ("Bidirectional(LSTM(3, bias_initializer=identity))", "forward/bias"),
        ("Conv1D(2, 3, kernel_initializer=identity)", "kernel"),
        ("BatchNormalization(moving_mean_initializer=orthogonal)", "moving_mean"),
    ],
)
def test_identity_and_orthogonal_initializers_need_their_shapes(layer: str, weight: str) -> None:
    """Found by the campaign: the checker accepted `identity` on weights that are not
    2D and `orthogonal` on 1D ones, and every backend failed when building (Keras:
    "The tensor to initialize must be at least two-dimensional"; torch and JAX: the
    identity initializer needs a 2D shape). Now a SEQ203 at the layer."""
    src = f"model M {{\n    input x: f32[B, T, 3]\n    y = x -> {layer}\n    output y\n}}\n"
    with pytest.raises(SeqError) as e:
        seqdsl.loads(src)
    (d,) = [d for d in e.value.diagnostics if d.is_error]
    assert d.code == "SEQ203" and f"`{weight}`" in d.message
    ok = src.replace("identity", "zeros").replace("orthogonal", "zeros")
    seqdsl.loads(ok)
    # 2D weights take both, as in Keras
    seqdsl.loads(
        src.replace(
            layer, "Dense(3, kernel_initializer=identity) -> LSTM(2, kernel_initializer=orthogonal)"
        )
    )


def test_an_explicit_mask_must_match_a_reshaped_time_axis() -> None:
    """Found by the campaign (program 665): `Reshape([-1, 1])` of `[B, T, 3]` had an
    unknown time, so `mask=m` with `m: mask[B, T]` passed the checker; torch and Keras
    then ran a 12-step mask on a 36-step sequence, JAX failed inside lax.scan and the
    reference with an IndexError. The checker now knows the time is `3*T` (SEQ503)."""
    src = """
model M {
    input x: f32[B, T, 3]
    input m: mask[B, T]
    v = x -> Reshape([-1, 1])
    y = LSTM(4)(v, mask=m)
    output y
}
"""
    with pytest.raises(SeqError) as e:
        seqdsl.loads(src)
    (d,) = [d for d in e.value.diagnostics if d.is_error]
    assert d.code == "SEQ503" and "`3*T`" in d.message
    ok = src.replace("Reshape([-1, 1])", "Reshape([-1, 3])")  # T steps again
    assert str(seqdsl.loads(ok).model().types["v"]) == "f32[B, T, 3]"
    agree(ok, difftest.BACKENDS)


UNKNOWN_TIME_MASK = """
model M {
    input x: f32[B, _, 3]
    input m: mask[B, T]
    y = LSTM(4)(x, mask=m)
    output y
}
"""


@pytest.mark.parametrize(
    ("x", "mask", "named"),
    [("_", "T", "`x`"), ("T", "_", "`m`"), ("_", "_", "`m` and `x`")],
)
def test_a_mask_on_an_unknown_time_is_an_error(x: str, mask: str, named: str) -> None:
    """Found by the campaign: `mask=m` on a value whose time is unknown (`_`) passed the
    checker; a 4-step mask on a 12-step sequence then ran silently on torch and Keras
    (JAX failed inside lax.scan, the reference with an IndexError). An unknown time
    cannot be checked against the mask: SEQ503, naming what to declare. With one
    symbol for both the model checks the sizes at every call on every backend."""
    src = UNKNOWN_TIME_MASK.replace("f32[B, _, 3]", f"f32[B, {x}, 3]")
    src = src.replace("mask[B, T]", f"mask[B, {mask}]")
    with pytest.raises(SeqError) as e:
        seqdsl.loads(src)
    (d,) = [d for d in e.value.diagnostics if d.is_error]
    assert d.code == "SEQ503" and "cannot be checked" in d.message, d.message
    assert f"declare the time of {named}" in (d.hint or "")
    ok = UNKNOWN_TIME_MASK.replace("f32[B, _, 3]", "f32[B, T, 3]")
    agree(ok, difftest.BACKENDS)
    prog = seqdsl.loads(ok)
    m = prog.model()
    bad = difftest.Data([np.zeros((3, 12, 3), np.float32), np.ones((3, 4), bool)], {}, {})
    for backend in difftest.BACKENDS:
        with pytest.raises(seqdsl.InputError, match="T = 12"):
            difftest.RUNNERS[backend](prog, m, difftest.make_weights(m, 0), bad)


RESHAPE_AFTER_CONV = """
model M {
    input x: f32[B, T, 3]
    v = x -> Conv1D(1, 2)
    y = v -> Reshape([2, -1])
    output y
}
"""


def test_a_reshape_of_a_symbolic_size_is_a_run_time_constraint() -> None:
    """Found by the campaign (program 901): `T - 1` values reshaped to `[2, -1]` passed
    the checker with no constraint; with T = 12 the reference failed in NumPy and each
    backend in its own reshape. Now `(T - 1) % 2 == 0` is a run-time constraint, as a
    TemporalSplit's divisibility: torch and JAX reject T = 12 naming it, the reference
    raises ReferenceError, and T = 13 runs the same everywhere."""
    m = seqdsl.loads(RESHAPE_AFTER_CONV).model()
    assert [c.requirement for c in m.constraints] == ["T >= 2", "(T - 1) % 2 == 0"]
    assert str(m.types["y"]) == "f32[B, 2, T/2 - 1/2]"
    w = difftest.make_weights(m, 0)
    bad = difftest.Data([np.zeros((3, 12, 3))], {}, {})
    with pytest.raises(difftest.ReferenceError, match="11 values per example"):
        difftest.run_reference(m, w, bad.inputs)
    prog = seqdsl.loads(RESHAPE_AFTER_CONV)
    for backend in ("torch", "jax"):
        with pytest.raises(ValueError, match=r"\(T - 1\)"):
            difftest.RUNNERS[backend](prog, m, w, bad)
    assert difftest.make_data(m, 0).inputs[0].shape[1] == 13  # the runner meets it
    agree(RESHAPE_AFTER_CONV, difftest.BACKENDS)


def test_keras_names_the_reshape_constraint() -> None:
    """Keras checks the checker's run-time constraints as torch and JAX do (it failed
    inside its Reshape): on a call and before predict() and fit(), not while it builds
    the functional model (T is None then)."""
    prog = seqdsl.loads(RESHAPE_AFTER_CONV)
    m = prog.model()
    bad = difftest.Data([np.zeros((3, 12, 3))], {}, {})
    message = r"T - 1 = 11 \(T = 12\), but Reshape .* \(line 5\) needs \(T - 1\) % 2 == 0"
    with pytest.raises(seqdsl.InputError, match=message):
        difftest.run_keras(prog, m, difftest.make_weights(m, 0), bad)
    net = prog.build("keras", seed=0)
    with pytest.raises(seqdsl.InputError, match=message):
        net.predict(np.zeros((3, 12, 3), np.float32), verbose=0)  # type: ignore[attr-defined]
    net.compile(loss="mse")  # type: ignore[attr-defined]
    with pytest.raises(seqdsl.InputError, match=message):
        net.fit(np.zeros((3, 12, 3), np.float32), np.zeros((3, 2, 5)), verbose=0)  # type: ignore[attr-defined]
    assert net.predict(np.zeros((3, 13, 3), np.float32), verbose=0).shape == (3, 2, 6)  # type: ignore[attr-defined]


def test_average_of_integer_values_is_an_error() -> None:
    """Found by the campaign (program 1549): `average` of i32 ids was typed i32, but its
    values are means (the reference's Embedding then failed on float ids). SEQ301."""
    src = """
model M {
    input x: i32[B, T] pad(post, value=0)
    input y: i32[B, T]
    v = average(x, y)
    e = v -> Embedding(10, 2)
    output e
}
"""
    with pytest.raises(SeqError) as e:
        seqdsl.loads(src)
    (d,) = [d for d in e.value.diagnostics if d.is_error]
    assert d.code == "SEQ301" and "average of i32" in d.message
    seqdsl.loads(src.replace("average", "add"))  # sums and products of ids stay ids


LONG_WINDOW = """
model M {
    input x: f32[B, S, 3] pad(post) masked
    a, b = x -> TemporalSplit(2)
    y = a -> Conv1D(5, 3, dilation_rate=3)
    output y
}
"""


def test_a_window_longer_than_the_sequence() -> None:
    """Found by the campaign (program 1447): a Conv1D window (7 steps) longer than the
    symbolic sequence (S/2) passed the checker; the reference failed in NumPy
    ('negative dimensions'). Now `S/2 >= 7` is a run-time constraint: every backend
    raises InputError naming it, the sizes and the line, the reference ReferenceError,
    and sizes that meet it run the same everywhere."""
    prog = seqdsl.loads(LONG_WINDOW)
    m = prog.model()
    assert [str(c) for c in m.constraints] == ["S % 2 == 0  (TemporalSplit)", "S/2 >= 7  (Conv1D)"]
    w = difftest.make_weights(m, 0)
    bad = difftest.Data([np.zeros((3, 12, 3))], {"x": np.array([12, 5, 1])}, {})
    with pytest.raises(difftest.ReferenceError, match=r"Conv1D \(line 5\): time length 6 is "):
        difftest.run_reference(m, w, bad.inputs, lengths=bad.lengths)
    for backend in difftest.BACKENDS:
        with pytest.raises(seqdsl.InputError) as e:
            difftest.RUNNERS[backend](prog, m, w, bad)
        assert str(e.value) == "S/2 = 6 (S = 12), but Conv1D (line 5) needs S/2 >= 7", backend
    assert difftest.make_data(m, 0).inputs[0].shape[1] == 14  # the runner meets it
    agree(LONG_WINDOW, difftest.BACKENDS)


ZERO_STEPS = """
model M {
    input x: f32[B, S, 2] pad(post) masked
    v = x -> Conv1D(3, 1, strides=3)
    y = v -> LAYER
    output y
}
"""
# S = 6: the strided Conv1D leaves 2 steps, fewer than the window of the next layer
WINDOWS = ["AveragePooling1D(3)", "MaxPooling1D(3)", "Conv1D(2, 3)"]


@pytest.mark.parametrize("layer", WINDOWS)
def test_a_window_longer_than_its_input_is_an_input_error(layer: str) -> None:
    """Found by the campaign (programs 1904 and 4631): a pooling or a convolution whose
    window is longer than its input raised inside torch (unfold, conv1d), gave 0 steps
    on JAX and 2 steps (or AbortedError) on Keras. Now `(S + 2) // 3 >= 3` is a
    run-time constraint: InputError on every backend, ReferenceError in the
    reference; S = 7 (3 steps) runs the same everywhere."""
    src = ZERO_STEPS.replace("LAYER", layer)
    prog = seqdsl.loads(src)
    m = prog.model()
    kind = layer.split("(")[0]
    assert [str(c) for c in m.constraints] == [f"(S + 2) // 3 >= 3  ({kind})"]
    w = difftest.make_weights(m, 0)
    bad = difftest.Data([np.zeros((3, 6, 2))], {"x": np.array([6, 3, 1])}, {})
    with pytest.raises(difftest.ReferenceError, match="time length 2 is shorter than its window"):
        difftest.run_reference(m, w, bad.inputs, lengths=bad.lengths)
    want = f"(S + 2) // 3 = 2 (S = 6), but {kind} (line 5) needs (S + 2) // 3 >= 3"
    for backend in difftest.BACKENDS:
        with pytest.raises(seqdsl.InputError) as e:
            difftest.RUNNERS[backend](prog, m, w, bad)
        assert str(e.value) == want, backend
    assert difftest.make_data(m, 0).inputs[0].shape[1] == 7
    agree(src, difftest.BACKENDS)


@pytest.mark.parametrize("layer", WINDOWS)
def test_a_window_on_an_unknown_time_is_an_error(layer: str) -> None:
    """A valid window on a time declared `_` has no length to be checked against: with
    fewer steps than its window torch and JAX gave 0 steps, Keras raised inside
    TensorFlow. SEQ403 at check time, naming the fix (a time symbol, which the model
    then checks at every call, or padding=same)."""
    src = f"model M {{\n    input x: f32[B, _, 2]\n    y = x -> {layer}\n    output y\n}}\n"
    with pytest.raises(SeqError) as e:
        seqdsl.loads(src)
    (d,) = [d for d in e.value.diagnostics if d.is_error]
    assert d.code == "SEQ403" and "unknown length" in d.message, d.message
    assert "`T >= 3`" in (d.hint or "")
    seqdsl.loads(src.replace("_", "T"))
    seqdsl.loads(src.replace("(3)", "(3, padding=same)").replace(", 3)", ", 3, padding=same)"))


def test_windows_that_always_fit_have_no_constraint() -> None:
    """Every length is at least 1: a valid window of 1 step, and same or causal padding
    (ceil(T / s) >= 1 steps), add no run-time constraint; a window on a known length
    that fits needs none either (one that does not is SEQ403)."""
    src = """
model M {
    input x: f32[B, T, 2]
    input k: f32[B, 9, 2]
    a = x -> Conv1D(3, 1, strides=2) -> MaxPooling1D(1) -> Conv1D(2, 5, padding=same)
    b = a -> Conv1D(2, 4, padding=causal) -> AveragePooling1D(3, padding=same)
    c = k -> Conv1D(2, 9) -> MaxPooling1D(1)
    output b, c
}
"""
    assert seqdsl.loads(src).model().constraints == ()


def test_keras_attention_on_split_parts() -> None:
    """Found by the campaign (program 1870): Keras differed by 0.22 here, with a bias
    and heads of size 1 on parts of 3 steps with 3 heads (test_attention_heads_of_size_one)."""
    agree(
        """
model M {
    input x: f32[B, T, 2] pad(pre) masked
    v0, v1, v2, v3, v4 = x -> TemporalSplit(5)
    y = MultiHeadAttention(3, 2, value_dim=1)(v1, v2, v2)
    output y
}
""",
        ("keras",),
        seed=1870,
    )


HEADS_OF_SIZE_ONE = """
model M {
    input x: f32[B, T, 2]DECL
    v0, v1, v2, v3, v4 = x -> TemporalSplit(5)
    y = MultiHeadAttention(3, KEY_DIM, value_dim=VALUE_DIM, use_bias=BIAS)(v1, v2, v2)
    output y
}
"""


@pytest.mark.parametrize("decl", [" pad(pre) masked", ""], ids=["masked", "unmasked"])
@pytest.mark.parametrize("bias", ["true", "false"])
@pytest.mark.parametrize(("key_dim", "value_dim"), [(2, 1), (1, 2), (1, 1)])
def test_attention_heads_of_size_one(key_dim: int, value_dim: int, bias: str, decl: str) -> None:
    """Found by the campaign (program 1870): Keras' TensorFlow ops.add put the bias
    [heads, 1] of a projection [B, T, heads, 1] on the time axis when T == heads (here
    the parts of the split have 3 steps and there are 3 heads); the Keras runtime's
    MultiHeadAttention adds it by broadcasting (docs/backend-keras.md)."""
    source = HEADS_OF_SIZE_ONE.replace("DECL", decl).replace("KEY_DIM", str(key_dim))
    source = source.replace("VALUE_DIM", str(value_dim)).replace("BIAS", bias)
    agree(source, difftest.BACKENDS, seed=1870)


VALUES_SIZED_UNLIKE_KEYS = [
    "y = MultiHeadAttention(2, 3, value_dim=2)(x, x)",
    "y = MultiHeadAttention(2, 3, value_dim=5, use_bias=false, use_causal_mask=true)(x, x)",
    "y = MultiHeadAttention(3, 2, value_dim=1)(x, x)",
    "y = MultiHeadAttention(2, 2, value_dim=4)(x -> Masking(), x)",
]

_KERAS_JAX = """
import sys, warnings
warnings.filterwarnings("ignore")
sys.path[:0] = [sys.argv[1], sys.argv[2]]
import keras, difftest
assert keras.backend.backend() == "jax"
for line in sys.argv[3:]:
    src = "model M {\\n input x: f32[B, T, 4]\\n " + line + "\\n output y\\n}\\n"
    r = difftest.run_source(src, 0, ("keras",))
    assert r.skipped is None and not r.disagreements, (line, r.skipped, r.disagreements)
print("OK", len(sys.argv) - 3)
"""


def test_attention_values_sized_unlike_keys_on_keras_jax_backend() -> None:
    """Found while fixing program 1870: on Keras' JAX backend MultiHeadAttention with
    value_dim != key_dim raised inside Keras' fused attention (ValueError "value shape
    should be ..."); seqdsl's Keras module takes the explicit path for it and agrees
    with the reference there, as on TensorFlow (checked here too)."""
    import os
    import subprocess

    for line in VALUES_SIZED_UNLIKE_KEYS:
        src = f"model M {{\n input x: f32[B, T, 4]\n {line}\n output y\n}}\n"
        agree(src, difftest.BACKENDS)
    root = Path(__file__).resolve().parent
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(
        [sys.executable, "-c", _KERAS_JAX, str(root), str(root.parent), *VALUES_SIZED_UNLIKE_KEYS],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0 and "OK 4" in proc.stdout, proc.stdout + proc.stderr[-3000:]
