"""seqdsl.padding.pad_sequences against keras.utils.pad_sequences."""

from __future__ import annotations

import os

import numpy as np
import pytest

from seqdsl.padding import lengths_to_mask, pad_sequences


@pytest.fixture(scope="module")
def keras_pad():  # type: ignore[no-untyped-def]
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    keras = pytest.importorskip("keras")
    return keras.utils.pad_sequences


def test_randomized_against_keras(keras_pad) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    for trial in range(150):
        n = int(rng.integers(1, 5))
        feat = () if trial % 3 else (int(rng.integers(1, 3)),)
        floats = trial % 4 == 0
        seqs = []
        for _ in range(n):
            k = int(rng.integers(0, 6))
            arr = rng.normal(0, 3, (k, *feat)) if floats else rng.integers(-5, 50, (k, *feat))
            seqs.append(arr.tolist())
        if all(len(s) == 0 for s in seqs):
            seqs[0] = (np.ones((2, *feat))).tolist()
        side = ["pre", "post"][int(rng.integers(2))]
        trunc = ["pre", "post"][int(rng.integers(2))]
        maxlen = None if trial % 2 else int(rng.integers(1, 7))
        value = [0, -1, 2.7, 0.5][int(rng.integers(4))]
        dtype = ["int32", "float32", "int64", "float64"][int(rng.integers(4))]
        ours, lens = pad_sequences(
            seqs, side=side, value=value, maxlen=maxlen, truncate=trunc, dtype=dtype
        )
        theirs = keras_pad(
            seqs, maxlen=maxlen, dtype=dtype, padding=side, truncating=trunc, value=value
        )
        assert ours.dtype == theirs.dtype and ours.shape == theirs.shape, (trial, seqs)
        np.testing.assert_array_equal(ours, theirs)
        expect = [min(len(s), maxlen) if maxlen else len(s) for s in seqs]
        assert lens.tolist() == expect


def test_seqdsl_dtype_names_and_errors() -> None:
    batch, lens = pad_sequences([[1.9, 2], []], side="post", value=0.7, dtype="i32")
    assert batch.tolist() == [[1, 2], [0, 0]] and lens.tolist() == [2, 0]
    with pytest.raises(ValueError):
        pad_sequences([], dtype="i32")
    with pytest.raises(ValueError):
        pad_sequences([[1]], maxlen=0)
    with pytest.raises(ValueError):
        pad_sequences([[[1, 2]], [[1, 2, 3]]], dtype="f32")


def test_lengths_to_mask() -> None:
    assert lengths_to_mask(np.array([2, 0, 3]), 3, "post").tolist() == [
        [True, True, False], [False, False, False], [True, True, True]]  # fmt: skip
    assert lengths_to_mask(np.array([1]), 3, "pre").tolist() == [[False, False, True]]
