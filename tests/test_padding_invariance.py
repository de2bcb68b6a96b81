"""Padding invariance (docs/semantics.md §4), checked on the reference interpreter.

Models made only of ``padding_invariant`` layers give, in inference, the same
outputs at valid steps and the same final states when a row is padded more,
padded on the other side (with the matching mask kind), or batched with other
rows. The backends are tied to the reference by the parity tests, so the
property carries over to them. Every layer that is *not* padding invariant
has a counterexample below.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import seqdsl
from seqdsl.catalogue import CATALOGUE, MERGES
from seqdsl.checker import CheckedModel
from seqdsl.reference import reference_weights, run_reference

F = 3

# Each body reads `x` (f32[B, T, 3], masked) and outputs `seq` (a masked
# sequence, compared at valid steps) and `fin` (per-row results).
BODIES = {
    "lstm_stack": """
    seq = x -> Dense(4, activation=tanh) -> LSTM(5, return_sequences=true)
    fin, h, c = LSTM(4, return_state=true)(seq)
    """,
    "bidirectional_gru": """
    seq = x -> Bidirectional(GRU(3, return_sequences=true), merge_mode=concat)
              -> TimeDistributed(Dense(2)) -> LayerNormalization()
    fin = seq -> GlobalAveragePooling1D()
    """,
    "rnn_backwards_pooling": """
    seq = x -> SimpleRNN(4, return_sequences=true, go_backwards=true)
    fin = x -> GlobalMaxPooling1D()
    """,
    "merges": """
    a = x -> Dense(4)
    b = x -> GRU(4, return_sequences=true, reset_after=false)
    seq = add(a, b)
    fin = Bidirectional(LSTM(2), merge_mode=sum)(concat(a, b))
    """,
    "attention": """
    h = x -> Dense(4, activation=tanh)
    k = x -> Dense(4)
    a = Attention(use_scale=true)(h, x, k)
    seq = MultiHeadAttention(2, 3)(a, h)
    fin = MultiHeadAttention(2, 2)(h, seq) -> GlobalAveragePooling1D()
    """,
}


def _source(body: str, side: str) -> str:
    outs = "seq with mask, fin"
    return f"model M {{\n    input x: f32[B, T, {F}] pad({side}) masked\n{body}\n    output {outs}\n}}\n"


_MODELS: dict[tuple[str, str], CheckedModel] = {}


def model(name: str, side: str) -> CheckedModel:
    key = (name, side)
    if key not in _MODELS:
        _MODELS[key] = seqdsl.loads(_source(BODIES[name], side), f"{name}.seq").model()
    return _MODELS[key]


def run(
    name: str, side: str, rows: list[np.ndarray], t: int
) -> tuple[list[np.ndarray], np.ndarray]:
    """Pad ``rows`` to ``t`` steps on ``side``; return each row's valid-step
    outputs of ``seq`` (in time order) and the per-row ``fin``."""
    m = model(name, side)
    w = reference_weights(m, seed=11)
    x = np.zeros((len(rows), t, F))
    lengths = np.array([len(r) for r in rows])
    for i, r in enumerate(rows):
        if len(r):
            if side == "post":
                x[i, : len(r)] = r
            else:
                x[i, t - len(r) :] = r
    res = run_reference(m, w, [x], lengths={"x": lengths})
    (seq, mask), fin = res.outputs
    valid = [seq[i][mask[i]] for i in range(len(rows))]
    return valid, fin


rows_strategy = st.lists(
    st.integers(0, 4).flatmap(
        lambda n: st.lists(
            st.lists(st.floats(-2, 2, allow_nan=False, width=32), min_size=F, max_size=F),
            min_size=n,
            max_size=n,
        )
    ),
    min_size=1,
    max_size=3,
)


@pytest.mark.parametrize("name", sorted(BODIES))
@settings(
    max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(raw=rows_strategy, extra=st.integers(1, 3))
def test_padding_invariance(name: str, raw: list[list[list[float]]], extra: int) -> None:
    rows = [np.array(r, dtype=np.float64).reshape(len(r), F) for r in raw]
    t = max(1, max(len(r) for r in rows))
    base_seq, base_fin = run(name, "post", rows, t)
    # padded more
    more_seq, more_fin = run(name, "post", rows, t + extra)
    # padded on the other side
    pre_seq, pre_fin = run(name, "pre", rows, t + extra)
    for i, r in enumerate(rows):
        # alone, padded to its own length (at least one step)
        alone_seq, alone_fin = run(name, "post", [r], max(1, len(r)))
        for other_seq, other_fin in ((more_seq, more_fin), (pre_seq, pre_fin)):
            np.testing.assert_allclose(other_seq[i], base_seq[i], atol=1e-12)
            np.testing.assert_allclose(other_fin[i], base_fin[i], atol=1e-12)
        np.testing.assert_allclose(alone_seq[0], base_seq[i], atol=1e-12)
        np.testing.assert_allclose(alone_fin[0], base_fin[i], atol=1e-12)


def test_invariance_cases_are_not_trivial() -> None:
    rows = [np.linspace(-1, 1, 3 * F).reshape(3, F), np.ones((1, F))]
    for name in BODIES:
        seq, fin = run(name, "post", rows, 4)
        assert np.abs(seq[0]).max() > 1e-3 and np.abs(fin).max() > 1e-3, name


# ------------------------------------------------------------------ counterexamples
# Each non-invariant layer: one row, padded more or on the other side, changes
# the result at valid steps (or its shape). Shapes are kept tiny; the row is fixed.

ROW = np.array([[0.5, -1.0, 2.0], [1.5, 0.25, -0.5], [-2.0, 1.0, 0.75]])


def _run_layer(
    stage: str, side: str, t: int, out_mask: bool = True
) -> tuple[np.ndarray, np.ndarray | None]:
    src = (
        f"model M {{\n    input x: f32[B, T, {F}] pad({side}) masked\n"
        f"    y = x -> {stage}\n    output y{' with mask' if out_mask else ''}\n}}\n"
    )
    m = seqdsl.loads(src, "c.seq").model()
    x = np.zeros((1, t, F))
    if side == "post":
        x[0, : len(ROW)] = ROW
    else:
        x[0, t - len(ROW) :] = ROW
    (out,) = run_reference(
        m, reference_weights(m, 3), [x], lengths={"x": np.array([len(ROW)])}
    ).outputs
    if out_mask:
        y, mask = out
        return y, mask
    return out, None


def _valid(y: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    return y[0] if mask is None else y[0][mask[0]]


def _differs(
    a: tuple[np.ndarray, np.ndarray | None], b: tuple[np.ndarray, np.ndarray | None]
) -> bool:
    va, vb = _valid(*a), _valid(*b)
    return va.shape != vb.shape or not np.allclose(va, vb, atol=1e-9)


COUNTEREXAMPLES = {
    # stride 2 windows start at different steps once the row is padded on the left
    "Conv1D": lambda: _differs(
        _run_layer("Conv1D(2, 2, strides=2)", "post", 4),
        _run_layer("Conv1D(2, 2, strides=2)", "pre", 6),
    ),
    "MaxPooling1D": lambda: _differs(
        _run_layer("MaxPooling1D(2)", "post", 4), _run_layer("MaxPooling1D(2)", "pre", 6)
    ),
    "AveragePooling1D": lambda: _differs(
        _run_layer("AveragePooling1D(2)", "post", 4), _run_layer("AveragePooling1D(2)", "pre", 6)
    ),
    # the split point moves with the padded length
    "TemporalSplit": lambda: _differs(_split("post", 4), _split("post", 6)),
    # no mask rule: the flattened vector grows with the padding
    "Flatten": lambda: _differs(
        _run_layer("drop_mask -> Flatten()", "post", 4, False),
        _run_layer("drop_mask -> Flatten()", "post", 5, False),
    ),
    "Reshape": lambda: _differs(
        _run_layer("drop_mask -> Reshape([-1])", "post", 4, False),
        _run_layer("drop_mask -> Reshape([-1])", "post", 5, False),
    ),
}


def _split(side: str, t: int) -> tuple[np.ndarray, np.ndarray | None]:
    src = (
        f"model M {{\n    input x: f32[B, T, {F}] pad({side}) masked\n"
        "    a, _b = x -> TemporalSplit(2)\n    output a with mask\n}\n"
    )
    m = seqdsl.loads(src, "s.seq").model()
    x = np.zeros((1, t, F))
    x[0, : len(ROW)] = ROW
    ((y, mask),) = run_reference(m, {}, [x], lengths={"x": np.array([len(ROW)])}).outputs
    return y, mask


def _cross_attention(causal: bool, side: str, steps: int) -> np.ndarray:
    """The query's valid outputs when the value is padded on ``side`` to ``steps``."""
    src = (
        f"model M {{\n    input q: f32[B, T, {F}] pad(post) masked\n"
        f"    input v: f32[B, S, {F}] pad({side}) masked\n"
        f"    y = Attention(use_causal_mask={'true' if causal else 'false'})(q, v)\n"
        "    output y with mask\n}\n"
    )
    m = seqdsl.loads(src, "x.seq").model()
    assert m.layers[0].padding_invariant is not causal
    q = np.zeros((1, 4, F))
    q[0, :3] = ROW
    v = np.zeros((1, steps, F))
    rows = ROW[::-1] * 0.5
    if side == "post":
        v[0, : len(rows)] = rows
    else:
        v[0, steps - len(rows) :] = rows
    ((y, mask),) = run_reference(
        m, {}, [q, v], lengths={"q": np.array([3]), "v": np.array([3])}
    ).outputs
    return y[0][mask[0]]


def test_causal_cross_attention_is_not_padding_invariant() -> None:
    """use_causal_mask compares the absolute positions of two sequences: padding the
    value on the left moves its steps relative to the query's. Without it the layer
    is padding invariant (the value's padding gets no weight)."""
    base = _cross_attention(False, "post", 3)
    assert np.abs(base).max() > 1e-3
    np.testing.assert_allclose(_cross_attention(False, "pre", 6), base, atol=1e-12)
    np.testing.assert_allclose(_cross_attention(False, "post", 5), base, atol=1e-12)
    causal = _cross_attention(True, "post", 3)
    assert not np.allclose(_cross_attention(True, "pre", 6), causal, atol=1e-9)


def test_every_non_invariant_layer_has_a_counterexample() -> None:
    non_invariant = {
        name for name, spec in {**CATALOGUE, **MERGES}.items() if not spec.padding_invariant
    }
    assert non_invariant == set(COUNTEREXAMPLES)


@pytest.mark.parametrize("layer", sorted(COUNTEREXAMPLES))
def test_counterexample(layer: str) -> None:
    assert COUNTEREXAMPLES[layer](), f"{layer} gave the same values: not a counterexample"
