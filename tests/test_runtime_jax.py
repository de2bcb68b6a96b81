"""seqdsl.runtime.jax, function by function: no .seq program, no generated module.

Each function is compared with an independent computation (NumPy loops written
here, or the definition in docs/semantics.md), in float64 where the values
matter, so that a wrong rule in the runtime makes a test fail.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")
jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")

import seqdsl.runtime.jax as rt  # noqa: E402

TOL = 1e-12


@pytest.fixture(autouse=True)
def x64() -> Iterator[None]:
    with jax.enable_x64(True):
        yield


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _masks(b: int = 5, t: int = 7) -> dict[str, np.ndarray]:
    """Masks of every kind, with an empty and a full row in each."""
    lens = np.array([t, 3, 0, 1, t - 2])[:b]
    steps = np.arange(t)[None, :]
    rng = np.random.default_rng(3)
    gaps = rng.random((b, t)) < 0.6
    gaps[2] = False
    gaps[0] = True
    return {"post": steps < lens[:, None], "pre": steps >= t - lens[:, None], "any": gaps}


# --------------------------------------------------------------------------
# inputs and masks


@pytest.mark.parametrize("side", ["post", "pre"])
def test_lengths_to_mask(side: str) -> None:
    lens = np.array([0, 1, 4, 6])
    got = np.asarray(rt._lengths_to_mask(lens, 6, side))
    want = np.zeros((4, 6), bool)
    for b, n in enumerate(lens):
        if side == "post":
            want[b, :n] = True
        else:
            want[b, 6 - n :] = True
    np.testing.assert_array_equal(got, want)


def test_input_mask_sources_and_errors() -> None:
    x = np.zeros((2, 4, 3))
    mask = np.array([[1, 1, 0, 0], [1, 0, 1, 0]], bool)
    np.testing.assert_array_equal(rt._input_mask("x", x, "any", {}, {"x": mask}), mask)
    got = rt._input_mask("x", x, "pre", {"x": np.array([1, 3])}, {})
    np.testing.assert_array_equal(got, [[0, 0, 0, 1], [0, 1, 1, 1]])
    with pytest.raises(ValueError, match="declares no pad side"):
        rt._input_mask("x", x, "any", {"x": np.array([1, 2])}, {})
    with pytest.raises(ValueError, match="is declared `masked`: pass lengths="):
        rt._input_mask("x", x, "post", {}, {})


def test_check_mask_errors() -> None:
    ok = np.array([[1, 1, 0], [0, 0, 0]], bool)
    rt._check_mask(ok, "post", False, "here", "hint")  # no error
    with pytest.raises(ValueError, match="declared nonempty, but row 1 has no valid step"):
        rt._check_mask(ok, "post", True, "here", "hint")
    with pytest.raises(ValueError, match=r"declared `pre`, but row 0 is not left-padded"):
        rt._check_mask(ok, "pre", False, "here", "hint")
    gap = np.array([[1, 0, 1]], bool)
    with pytest.raises(ValueError, match=r"row 0 is not right-padded .*: mask 101\. hint"):
        rt._check_mask(gap, "post", False, "here", "hint")
    rt._check_mask(gap, "any", True, "here", "hint")  # any kind, nonempty: fine
    with pytest.raises(ValueError, match="debug checks need concrete values"):
        jax.jit(lambda m: rt._check_mask(m, "post", False, "here", "hint"))(ok)


def test_check_ids_and_lengths_errors() -> None:
    rt._check_ids(np.array([[0, 4]]), 5, "emb")
    with pytest.raises(rt.InputError, match=r"emb: ids must lie in \[0, 5\), got 5 at \[0, 1\]"):
        rt._check_ids(np.array([[0, 5]]), 5, "emb")
    with pytest.raises(rt.InputError, match=r"got -1 at \[0, 0\] \(ids range -1\.\.2\)"):
        rt._check_ids(np.array([[-1, 2]]), 5, "emb")
    x = np.zeros((2, 4, 1))
    rt._check_lengths("x", x, {"x": np.array([0, 4])}, False)
    with pytest.raises(rt.InputError, match=r"row 0 has length 0, .* must lie in \[1, 4\]"):
        rt._check_lengths("x", x, {"x": np.array([0, 4])}, True)
    with pytest.raises(rt.InputError, match=r"must lie in \[0, 4\] \(T = 4\): \[5, 1\]"):
        rt._check_lengths("x", x, {"x": np.array([5, 1])}, False)


def test_keep_masks() -> None:
    given = np.array([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    got = rt._keep({"d": given}, None, "d", 0, (2, 3), 0.25, jnp.float64)
    np.testing.assert_allclose(np.asarray(got), given / 0.75, rtol=0, atol=TOL)
    with pytest.raises(
        ValueError, match=r"dropout_masks\['d'\] has shape \(2, 3\), expected \(3, 2\)"
    ):
        rt._keep({"d": given}, None, "d", 0, (3, 2), 0.25, jnp.float64)
    with pytest.raises(ValueError, match="training with dropout needs rng="):
        rt._keep({}, None, "d", 0, (2, 3), 0.25, jnp.float64)
    key = jax.random.key(7)
    drawn = np.asarray(rt._keep({}, key, "d", 3, (400, 50), 0.25, jnp.float64))
    assert set(np.unique(drawn)) <= {0.0, 1.0 / 0.75}
    assert abs((drawn == 0).mean() - 0.25) < 0.01  # about `rate` of the entries dropped
    again = np.asarray(rt._keep({}, key, "d", 3, (400, 50), 0.25, jnp.float64))
    other = np.asarray(rt._keep({}, key, "d", 4, (400, 50), 0.25, jnp.float64))
    np.testing.assert_array_equal(drawn, again)  # the stream is rng folded with index
    assert (drawn != other).any()


# --------------------------------------------------------------------------
# recurrent layers: _scan against a NumPy loop over the valid steps


def _np_lstm_step(p: dict[str, np.ndarray], x_t: np.ndarray, h: np.ndarray, c: np.ndarray) -> Any:
    z = x_t @ p["kernel"] + h @ p["recurrent_kernel"] + p["bias"]
    i, f, g, o = np.split(z, 4, axis=-1)
    c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
    return _sigmoid(o) * np.tanh(c), c


def _np_gru_step(p: dict[str, np.ndarray], x_t: np.ndarray, h: np.ndarray) -> Any:
    """reset_after=True: bias [2, 3U], the reset gate on the recurrent projection."""
    x_z, x_r, x_h = np.split(x_t @ p["kernel"] + p["bias"][0], 3, axis=-1)
    r_z, r_r, r_h = np.split(h @ p["recurrent_kernel"] + p["bias"][1], 3, axis=-1)
    z, r = _sigmoid(x_z + r_z), _sigmoid(x_r + r_r)
    return (z * h + (1 - z) * np.tanh(x_h + r * r_h),)


def _np_rnn(cell: str, p: dict[str, np.ndarray], x: np.ndarray, mask: np.ndarray | None,
            states: tuple[np.ndarray, ...], go_backwards: bool, masked_output: str) -> Any:  # fmt: skip
    """Row by row, step by step: a masked step is skipped (states kept); its output
    is 0 ("zero") or the last valid output, 0 before the first ("carry"). Outputs
    in reading order (reversed with go_backwards); last: h after the last valid
    step, 0 for a row with none."""
    B, T, _ = x.shape
    U = states[0].shape[1]
    seq = np.zeros((B, T, U))
    last = np.zeros((B, U))
    finals = [s.copy() for s in states]
    for b in range(B):
        st = [s[b : b + 1] for s in states]
        prev = np.zeros((1, U))
        order = range(T - 1, -1, -1) if go_backwards else range(T)
        for k, t in enumerate(order):
            if mask is None or mask[b, t]:
                if cell == "lstm":
                    st = list(_np_lstm_step(p, x[b : b + 1, t], st[0], st[1]))
                else:
                    st = list(_np_gru_step(p, x[b : b + 1, t], st[0]))
                prev = st[0]
                seq[b, k] = st[0][0]
                last[b] = st[0][0]
            elif masked_output == "carry":
                seq[b, k] = prev[0]
        for i, s in enumerate(st):
            finals[i][b] = s[0]
    return seq, last, finals


def _weights(cell: str, f: int, u: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    g = 4 if cell == "lstm" else 3
    p = {
        "kernel": rng.normal(0, 0.5, (f, g * u)),
        "recurrent_kernel": rng.normal(0, 0.5, (u, g * u)),
    }
    p["bias"] = rng.normal(0, 0.3, (g * u,) if cell == "lstm" else (2, g * u))
    return p


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("kind", ["post", "pre", "any", "none"])
@pytest.mark.parametrize(
    "go_backwards, masked_output",
    [(False, "zero"), (True, "zero"), (False, "carry"), (True, "carry")],
)
@pytest.mark.parametrize("hoist", [False, True])
def test_scan_against_a_loop_over_valid_steps(
    cell: str, kind: str, go_backwards: bool, masked_output: str, hoist: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setattr(rt, "_hoist_projection", lambda x, kernel: hoist)
    rng = np.random.default_rng(11)
    B, T, F, U = 5, 7, 3, 4
    p = _weights(cell, F, U, rng)
    x = rng.normal(0, 1, (B, T, F))
    mask = None if kind == "none" else _masks(B, T)[kind]
    states = tuple(rng.normal(0, 0.5, (B, U)) for _ in range(2 if cell == "lstm" else 1))
    jp = {k: jnp.asarray(v) for k, v in p.items()}
    fn = rt._lstm if cell == "lstm" else rt._gru
    got = fn(jp, jnp.asarray(x), None if mask is None else jnp.asarray(mask),
             tuple(jnp.asarray(s) for s in states), go_backwards=go_backwards,
             return_sequences=True, masked_output=masked_output)  # fmt: skip
    seq, last, finals = _np_rnn(cell, p, x, mask, states, go_backwards, masked_output)
    np.testing.assert_allclose(np.asarray(got.sequence), seq, rtol=0, atol=TOL)
    np.testing.assert_allclose(np.asarray(got.last), last, rtol=0, atol=TOL)
    assert len(got.states) == len(finals)
    for g, w in zip(got.states, finals, strict=True):
        np.testing.assert_allclose(np.asarray(g), w, rtol=0, atol=TOL)
    if mask is not None:  # an empty row keeps its initial states exactly
        for g, s in zip(got.states, states, strict=True):
            np.testing.assert_array_equal(np.asarray(g)[2], s[2])


def test_scan_return_last_only_has_no_sequence() -> None:
    rng = np.random.default_rng(2)
    p = {k: jnp.asarray(v) for k, v in _weights("gru", 3, 2, rng).items()}
    x = jnp.asarray(rng.normal(0, 1, (2, 4, 3)))
    out = rt._gru(p, x, None, rt._zero_states(x, 2, 1))
    assert out.sequence is None
    np.testing.assert_array_equal(np.asarray(out.last), np.asarray(out.states[0]))


def test_hoist_projection_rule_under_symbolic_batch() -> None:
    """The rule reads static shapes; with a symbolic batch (jax.export) it must
    still decide: a symbolic batch is not 1 and the kernel size is static."""
    kernel = jnp.zeros((1024, 4096))  # 2**22 entries: hoisted whatever the batch
    (b,) = jax.export.symbolic_shape("b")
    x = jax.ShapeDtypeStruct((b, 3, 1024), jnp.float32)
    seen = []
    jax.eval_shape(lambda x: seen.append(rt._hoist_projection(x, kernel)) or x, x)
    assert seen == [True]


@pytest.mark.skipif(
    jax.default_backend() != "cpu", reason="the GPU rule hoists, whatever the batch"
)
def test_hoist_projection_rule_under_symbolic_batch_small_kernel() -> None:
    """On CPU the rule compares the batch with 64 (for F >= 256 into at most 2F
    gates): a symbolic batch takes what its constraints prove, else the default,
    a batch of 64 rows or more (in the scan body). Concrete batches: the rule."""
    hoist = rt._hoist_projection

    def decide(shape: str, f: int, g: int, constraints: tuple[str, ...] = ()) -> list[bool]:
        (b,) = jax.export.symbolic_shape(shape, constraints=constraints)
        x = jax.ShapeDtypeStruct((b, 3, f), jnp.float32)
        seen: list[bool] = []
        jax.eval_shape(lambda x: seen.append(hoist(x, jnp.zeros((f, g)))) or x, x)
        return seen

    assert decide("b", 8, 32) == [False]  # a small layer: in the body for any batch
    assert decide("b", 256, 512) == [False]  # unknown batch: the default (>= 64 rows)
    assert decide("b", 256, 512, ("b <= 32",)) == [True]  # proven under 64 rows
    assert decide("b", 256, 512, ("b >= 64",)) == [False]
    assert bool(hoist(jnp.zeros((32, 3, 256)), jnp.zeros((256, 512))))  # concrete: as before
    assert not bool(hoist(jnp.zeros((64, 3, 256)), jnp.zeros((256, 512))))


def test_symbolic_sizes_in_checks_and_windows() -> None:
    """What export needs of the helpers that read sizes: divisibility provable or a
    clear error, a recurrent scan over a length provably >= 1 or a clear error,
    window results cut to a symbolic length without an undecidable slice."""
    b, t, k = jax.export.symbolic_shape("b, t, k")
    assert rt._divisible(6, 2, "w")
    with pytest.raises(rt.InputError, match="^w$"):
        rt._divisible(5, 2, "w")
    assert rt._divisible(2 * k, 2, "w")
    with pytest.raises(ValueError, match=r"w, which the symbolic size t does not guarantee"):
        rt._divisible(t, 2, "w")
    rt._check_steps(t)
    rt._check_steps(3)
    shorter = jax.core.max_dim((t - 5) // 2 + 1, 0)
    with pytest.raises(ValueError, match="may be 0 for some values"):
        rt._check_steps(shorter)
    x = jax.ShapeDtypeStruct((b, t, 4), jnp.float32)
    y = jax.eval_shape(lambda x: rt._conv1d({"kernel": jnp.zeros((5, 4, 2), x.dtype)}, x, None, 5, 2, 1,
                                            "valid", rt._linear)[0], x)  # fmt: skip
    assert y.shape[1] == shorter


# --------------------------------------------------------------------------
# time-changing layers


def _np_windows(T: int, size: int, stride: int, padding: str) -> list[list[int]]:
    """The input steps each output step reads (Keras/TensorFlow padding; -1: a pad zero)."""
    if padding == "valid":
        out = (T - size) // stride + 1
        before = 0
    else:
        out = -(-T // stride)
        total = max((out - 1) * stride + size - T, 0)
        before = total // 2
    return [[j * stride - before + k for k in range(size)] for j in range(out)]


@pytest.mark.parametrize("kind", ["max", "average"])
@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("mask_kind", ["post", "any", "none"])
def test_pool_over_valid_steps(kind: str, padding: str, mask_kind: str) -> None:
    rng = np.random.default_rng(5)
    B, T, F, size, stride = 5, 7, 2, 3, 2
    x = rng.normal(0, 1, (B, T, F))
    mask = None if mask_kind == "none" else _masks(B, T)[mask_kind]
    y, out_mask = rt._pool(jnp.asarray(x), None if mask is None else jnp.asarray(mask),
                           kind, size, stride, padding)  # fmt: skip
    windows = _np_windows(T, size, stride, padding)
    want = np.zeros((B, len(windows), F))
    for b in range(B):
        for j, steps in enumerate(windows):
            valid = [t for t in steps if 0 <= t < T and (mask is None or mask[b, t])]
            if valid:
                v = x[b, valid]
                want[b, j] = v.max(axis=0) if kind == "max" else v.mean(axis=0)
    np.testing.assert_allclose(np.asarray(y), want, rtol=0, atol=TOL)
    if mask is None:
        assert out_mask is None
    else:  # valid: every step read is valid; same: the anchor step j * stride is
        want_mask = np.array([[all(0 <= t < T and mask[b, t] for t in steps) if padding == "valid"
                               else bool(mask[b, j * stride]) for j, steps in enumerate(windows)]
                              for b in range(B)])  # fmt: skip
        np.testing.assert_array_equal(np.asarray(out_mask), want_mask)


@pytest.mark.parametrize("kind", ["max", "average"])
@pytest.mark.parametrize("keepdims", [False, True])
def test_global_pool_over_valid_steps(kind: str, keepdims: bool) -> None:
    rng = np.random.default_rng(6)
    x = rng.normal(0, 1, (5, 7, 3))
    mask = _masks()["any"]
    y = np.asarray(rt._global_pool(jnp.asarray(x), jnp.asarray(mask), kind, keepdims))
    want = np.zeros((5, 3))
    for b in range(5):
        if mask[b].any():
            v = x[b, mask[b]]
            want[b] = v.max(axis=0) if kind == "max" else v.mean(axis=0)
    np.testing.assert_allclose(y, want[:, None, :] if keepdims else want, rtol=0, atol=TOL)
    unmasked = np.asarray(rt._global_pool(jnp.asarray(x), None, kind, False))
    np.testing.assert_allclose(unmasked, x.max(axis=1) if kind == "max" else x.mean(axis=1),
                               rtol=0, atol=TOL)  # fmt: skip


def test_temporal_softmax() -> None:
    rng = np.random.default_rng(8)
    x = rng.normal(0, 3, (5, 7, 2)) + 500.0  # large values: max-subtraction matters
    mask = _masks()["any"]
    y = np.asarray(rt._temporal_softmax(jnp.asarray(x), jnp.asarray(mask)))
    want = np.zeros_like(x)
    for b in range(5):
        v = x[b, mask[b]]
        if len(v):
            e = np.exp(v - v.max(axis=0))
            want[b, mask[b]] = e / e.sum(axis=0)
    assert np.isfinite(y).all()
    np.testing.assert_allclose(y, want, rtol=0, atol=TOL)
    np.testing.assert_allclose(y[mask.any(axis=1)].sum(axis=1), 1.0, rtol=0, atol=TOL)


# --------------------------------------------------------------------------
# attention


def test_masked_softmax_rows() -> None:
    rng = np.random.default_rng(9)
    scores = rng.normal(0, 2, (2, 3, 4))
    allowed = np.array([[[1, 0, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1]],
                        [[0, 0, 0, 1], [1, 1, 0, 0], [0, 0, 0, 0]]], bool)  # fmt: skip
    w = np.asarray(rt._masked_softmax(jnp.asarray(scores), jnp.asarray(allowed)))
    assert np.isfinite(w).all()
    for b in range(2):
        for i in range(3):
            row = allowed[b, i]
            if not row.any():
                np.testing.assert_array_equal(w[b, i], 0.0)  # no key: weights 0, no NaN
                continue
            e = np.exp(scores[b, i, row] - scores[b, i, row].max())
            np.testing.assert_allclose(w[b, i, row], e / e.sum(), rtol=0, atol=TOL)
            np.testing.assert_array_equal(w[b, i, ~row], 0.0)
    e = np.exp(scores - scores.max(axis=-1, keepdims=True))
    np.testing.assert_allclose(np.asarray(rt._masked_softmax(jnp.asarray(scores), None)),
                               e / e.sum(axis=-1, keepdims=True), rtol=0, atol=TOL)  # fmt: skip


def test_attention_masked_and_causal() -> None:
    """Luong dot attention: softmax(q . k) over the valid, causal key steps; 0 at
    masked query steps; a query step with no key step gets weights 0."""
    rng = np.random.default_rng(10)
    q, v = rng.normal(0, 1, (2, 3, 4)), rng.normal(0, 1, (2, 5, 4))
    q_mask = np.array([[1, 1, 0], [1, 1, 1]], bool)
    k_mask = np.array([[0, 1, 1, 1, 0], [0, 0, 0, 0, 0]], bool)
    out, w = rt._attention({}, jnp.asarray(q), jnp.asarray(v), query_mask=jnp.asarray(q_mask),
                           key_mask=jnp.asarray(k_mask), causal=True)  # fmt: skip
    out, w = np.asarray(out), np.asarray(w)
    assert np.isfinite(out).all() and np.isfinite(w).all()
    for b in range(2):
        for i in range(3):
            keys = [j for j in range(5) if k_mask[b, j] and j <= i]
            want_w = np.zeros(5)
            if keys:
                s = q[b, i] @ v[b, keys].T
                e = np.exp(s - s.max())
                want_w[keys] = e / e.sum()
            np.testing.assert_allclose(w[b, i], want_w, rtol=0, atol=TOL)
            want_out = want_w @ v[b] if q_mask[b, i] else np.zeros(4)
            np.testing.assert_allclose(out[b, i], want_out, rtol=0, atol=TOL)


# --------------------------------------------------------------------------
# padding and variables


def test_pad_sequences_is_the_common_one() -> None:
    batch, lengths = rt._pad_sequences([[1, 2, 3], [4], []], "pre", -1.0, 2, "pre", "float32")
    np.testing.assert_array_equal(batch, [[2, 3], [-1, 4], [-1, -1]])
    assert batch.dtype == np.float32 and lengths.dtype == np.int32
    np.testing.assert_array_equal(lengths, [2, 1, 0])


def test_canonical_round_trip_and_stateful_zeros() -> None:
    table = {"d": [("kernel", (2, 3), "glorot_uniform", True, "params"),
                   ("moving_mean", (3,), "zeros", False, "state")]}  # fmt: skip
    stateful = {"r": (4, 2, ("h", "c")), "cell": (4, ((2, 3),), ("s",))}
    weights = rt._init_weights(table, jax.random.key(0), jnp.float64)
    assert weights["d/kernel"].shape == (2, 3) and (np.asarray(weights["d/moving_mean"]) == 0).all()
    limit = np.sqrt(6.0 / (2 + 3))  # glorot_uniform
    assert np.abs(np.asarray(weights["d/kernel"])).max() <= limit
    v = rt._from_canonical(table, stateful, weights)
    assert set(v["params"]) == {"d"} and set(v["state"]) == {"d", "r", "cell"}
    assert v["state"]["r"]["c"].shape == (4, 2) and v["state"]["cell"]["s"].shape == (4, 2, 3)
    back = rt._to_canonical(table, v)
    for k, w in weights.items():
        assert back[k].tobytes() == np.asarray(w).tobytes()
    with pytest.raises(rt.WeightsFileError, match="missing d/kernel"):
        rt._from_canonical(table, {}, {"d/moving_mean": np.zeros(3)})
    with pytest.raises(
        rt.WeightsFileError, match=r"d/kernel: shape \[3, 2\], but the model's is \[2, 3\]"
    ):
        rt._from_canonical(table, {}, {"d/kernel": np.zeros((3, 2)), "d/moving_mean": np.zeros(3)})


def test_input_symbols() -> None:
    """_input_symbols is seqdsl.runtime.common.check_inputs (one message format on
    every backend), also on tracers under jax.jit."""
    inputs = {"a": ("f32", ("B", "T", 2)), "b": ("i32", ("B", "S"))}
    b = np.zeros((3, 4), np.int32)
    assert rt._input_symbols(inputs, (np.zeros((3, 5, 2)), b)) == {"B": 3, "T": 5, "S": 4}
    with pytest.raises(
        rt.InputError, match=r"input `a`: axis 2 has size 3, but `a: f32\[B, T, 2\]` declares 2"
    ):
        rt._input_symbols(inputs, (np.zeros((3, 5, 3)), b))
    with pytest.raises(
        rt.InputError, match=r"input `b`: axis 0 \(B\) has size 2, but B = 3 in input `a`"
    ):
        rt._input_symbols(inputs, (np.zeros((3, 5, 2)), b[:2]))
    with pytest.raises(
        rt.InputError, match=r"input `b`: shape \[3\] has rank 1, but `b: i32\[B, S\]` has rank 2"
    ):
        rt._input_symbols(inputs, (np.zeros((3, 5, 2)), b[:, 0]))
    with pytest.raises(rt.InputError, match=r"input `b`: dtype float(32|64), not an integer dtype"):
        jax.jit(lambda a, b: rt._input_symbols(inputs, (a, b)))(
            np.zeros((3, 5, 2)), np.zeros((3, 4))
        )
