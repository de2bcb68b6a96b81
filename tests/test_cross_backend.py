"""Across backends: the same initial weights from a seed, the same numbers, and
weights that move Keras layout -> torch -> JAX -> file bit-exactly (also after
a torch training step)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import seqdsl
from seqdsl.initializers import initial_weights
from seqdsl.reference import run_reference
from seqdsl.weightsfile import load_weights, save_weights

torch = pytest.importorskip("torch")
pytest.importorskip("jax")

SRC = """
model Tagger {
    input tokens: i32[B, T] pad(pre, value=0)
    e = tokens -> Embedding(30, 6, mask_zero=true)
    seq = e -> Bidirectional(LSTM(5, return_sequences=true)) -> GRU(4, return_sequences=true)
    tags = seq -> TimeDistributed(Dense(3)) -> LayerNormalization()
    pooled = seq -> GlobalAveragePooling1D() -> Dense(2) -> BatchNormalization()
    output tags with mask, pooled
}
"""

TOKENS = np.array([[3, 1, 4, 1, 5], [0, 0, 9, 2, 6], [0, 0, 0, 0, 0]], dtype=np.int32)


@pytest.fixture(scope="module")
def prog() -> seqdsl.Program:
    return seqdsl.loads(SRC, "tagger.seq")


def _np(x: object) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _flat(outputs: object) -> list[np.ndarray]:
    out: list[np.ndarray] = []
    for o in outputs if isinstance(outputs, tuple) else (outputs,):
        if isinstance(o, tuple):
            out.extend(_np(v) for v in o)
        else:
            out.append(_np(o))
    return out


def test_same_seed_gives_the_same_initial_weights_everywhere(prog: seqdsl.Program) -> None:
    m = prog.model()
    expect = initial_weights(((layer.name, layer.weights) for layer in m.layers), 7, "float32")
    t = prog.build("torch", seed=7).canonical_weights()
    j = prog.build("jax", seed=7).canonical_weights()
    assert set(t) == set(j) == set(expect)
    for k in expect:
        assert np.array_equal(_np(t[k]), expect[k]), k
        assert np.array_equal(_np(j[k]), expect[k]), k


def test_same_numbers_on_every_backend(prog: seqdsl.Program) -> None:
    m = prog.model()
    tm, jm = prog.build("torch", seed=3), prog.build("jax", seed=3)
    w64 = {k: _np(v).astype(np.float64) for k, v in tm.canonical_weights().items()}
    ref = _flat(run_reference(m, w64, [TOKENS]).outputs)
    with torch.no_grad():
        t_out = _flat(tm(torch.as_tensor(TOKENS)))
    j_out = _flat(jm(TOKENS))
    assert len(ref) == len(t_out) == len(j_out) == 3  # tags, its mask, pooled
    for r, t, j in zip(ref, t_out, j_out, strict=True):
        np.testing.assert_allclose(t, r, atol=1e-5)
        np.testing.assert_allclose(j, r, atol=1e-5)
    assert np.abs(ref[0]).max() > 1e-3 and np.abs(ref[2]).max() > 1e-3


def test_weights_move_torch_to_jax_to_file_bit_exactly(
    prog: seqdsl.Program, tmp_path: Path
) -> None:
    tm = prog.build("torch", seed=5)
    tm.train()
    opt = torch.optim.SGD(tm.parameters(), lr=0.1)
    tags, _mask = tm(torch.as_tensor(TOKENS))[0]
    loss = tags.square().mean()
    loss.backward()
    opt.step()
    after = {k: _np(v) for k, v in tm.canonical_weights().items()}
    before = initial_weights(((la.name, la.weights) for la in prog.model().layers), 5, "float32")
    assert any(not np.array_equal(after[k], before[k]) for k in after)  # the step changed weights
    jm = prog.build("jax", seed=0)
    jm.load_canonical(after)
    via_jax = {k: _np(v) for k, v in jm.canonical_weights().items()}
    path = tmp_path / "tagger.safetensors"
    save_weights(path, via_jax, {"model": "Tagger"})
    back, meta = load_weights(path)
    assert meta["model"] == "Tagger"
    assert set(back) == set(after)
    for k in after:
        assert back[k].dtype == after[k].dtype and np.array_equal(back[k], after[k]), k
    # and back into torch
    tm2 = prog.build("torch", seed=9)
    tm2.load_canonical(back)
    again = {k: _np(v) for k, v in tm2.canonical_weights().items()}
    assert all(np.array_equal(again[k], after[k]) for k in after)
