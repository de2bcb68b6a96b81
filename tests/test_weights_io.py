"""Initial weights (Keras formulas, per-layer streams) and the weights file."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

import seqdsl
from seqdsl.initializers import initial_weights, initialize, layer_rng
from seqdsl.weightsfile import WeightsFileError, load_weights, save_weights

SRC = """
model M {
    input t: i32[B, T] pad(post, value=0)
    x = t -> Embedding(50, 8, mask_zero=true) -> LSTM(6, return_sequences=true) -> GRU(5)
    y = x -> Dense(3) -> BatchNormalization()
    output y
}
"""


def weights_of(src: str, seed: int) -> dict[str, np.ndarray]:
    m = seqdsl.loads(src, "m.seq").model()
    return initial_weights(((layer.name, layer.weights) for layer in m.layers), seed, "float64")


def test_keys_shapes_and_order_follow_keras() -> None:
    w = weights_of(SRC, 0)
    assert list(w) == [
        "x_embedding/embeddings",
        "x_lstm/kernel", "x_lstm/recurrent_kernel", "x_lstm/bias",
        "x_gru/kernel", "x_gru/recurrent_kernel", "x_gru/bias",
        "y_dense/kernel", "y_dense/bias",
        "y_batch_normalization/gamma", "y_batch_normalization/beta",
        "y_batch_normalization/moving_mean", "y_batch_normalization/moving_variance",
    ]  # fmt: skip
    assert w["x_lstm/kernel"].shape == (8, 24) and w["x_lstm/recurrent_kernel"].shape == (6, 24)
    assert w["x_gru/bias"].shape == (2, 15)
    # LSTM unit_forget_bias: zeros except the forget block (i, f, c, o)
    np.testing.assert_array_equal(w["x_lstm/bias"], np.r_[np.zeros(6), np.ones(6), np.zeros(12)])
    np.testing.assert_array_equal(w["y_batch_normalization/moving_variance"], np.ones(3))


def test_distributions_match_keras_formulas() -> None:
    w = weights_of(SRC, 1)
    lim = math.sqrt(6 / (8 + 24))  # glorot_uniform on the LSTM kernel
    k = w["x_lstm/kernel"]
    assert np.abs(k).max() <= lim and np.abs(k).max() > 0.8 * lim
    r = w["x_lstm/recurrent_kernel"]  # orthogonal (6, 24): orthonormal rows
    np.testing.assert_allclose(r @ r.T, np.eye(6), atol=1e-12)
    e = w["x_embedding/embeddings"]  # Keras' "uniform": U(-0.05, 0.05)
    assert np.abs(e).max() <= 0.05


def test_same_seed_same_weights_and_streams_are_per_layer() -> None:
    a, b = weights_of(SRC, 7), weights_of(SRC, 7)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(weights_of(SRC, 8)["x_lstm/kernel"], a["x_lstm/kernel"])
    # adding a layer to another statement leaves this layer's weights alone
    more = SRC.replace("output y", "z = t -> Embedding(9, 2)\n    output y, z")
    c = weights_of(more, 7)
    assert all(np.array_equal(a[k], c[k]) for k in a)


def test_truncated_normal_stays_within_two_stddevs() -> None:
    v = initialize("truncated_normal", (2000,), layer_rng(0, "l"))
    assert np.abs(v).max() <= 0.1 and abs(v.std() - 0.05 * 0.8796) < 0.005


def test_weights_file_round_trip(tmp_path: Path) -> None:
    w = weights_of(SRC, 3)
    w32 = {k: v.astype(np.float32) for k, v in w.items()}
    p = tmp_path / "w.safetensors"
    save_weights(p, w32, {"model": "M"})
    back, meta = load_weights(p)
    assert meta == {"format": "seqdsl", "model": "M"}
    assert set(back) == set(w32)
    for k in w32:
        assert back[k].dtype == np.float32 and np.array_equal(back[k], w32[k])


def test_weights_file_is_real_safetensors(tmp_path: Path) -> None:
    st = pytest.importorskip("safetensors.numpy")
    w = {k: v.astype(np.float32) for k, v in weights_of(SRC, 4).items()}
    ours = tmp_path / "ours.safetensors"
    save_weights(ours, w)
    read = st.load_file(str(ours))
    assert all(np.array_equal(read[k], w[k]) for k in w)
    theirs = tmp_path / "theirs.safetensors"
    st.save_file(w, str(theirs))
    back, _ = load_weights(theirs)
    assert all(np.array_equal(back[k], w[k]) for k in w)


def test_malformed_weights_file(tmp_path: Path) -> None:
    p = tmp_path / "bad.safetensors"
    p.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(WeightsFileError):
        load_weights(p)
