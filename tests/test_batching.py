"""seqdsl.batching.bucket_batches: length bucketing on top of pad_sequences."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

import seqdsl.batching
from seqdsl.batching import Batch, bucket_batches, bucket_boundaries, restore_order
from seqdsl.padding import pad_sequences


def _data(n: int = 203, t: int = 50, seed: int = 0, feat: tuple[int, ...] = ()) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [
        rng.integers(1, 100, (int(k), *feat)).astype(np.int32)
        for k in rng.integers(1, t + 1, size=n)
    ]


def _all_indices(batches: list[Batch]) -> list[int]:
    return sorted(int(i) for b in batches for i in b.indices)


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize(
    "options", [{}, {"n_buckets": 1}, {"n_buckets": 5}, {"boundaries": [10, 20, 30]}]
)
def test_every_sequence_once_and_rows_are_the_sequences(options, shuffle) -> None:  # type: ignore[no-untyped-def]
    seqs = _data()
    batches = bucket_batches(seqs, 16, shuffle=shuffle, **options)
    assert _all_indices(batches) == list(range(len(seqs)))
    for b in batches:
        assert 1 <= len(b.indices) <= 16
        assert b.batch.shape[0] == b.lengths.shape[0] == len(b.indices)
        for row, length, i in zip(b.batch, b.lengths, b.indices, strict=True):
            assert length == len(seqs[i])
            np.testing.assert_array_equal(row[:length], seqs[i])  # post padding
            assert (row[length:] == 0).all()


def test_batches_are_padded_to_their_buckets_longest() -> None:
    seqs = _data()
    bounds = [10, 20, 30]
    lengths = np.array([len(s) for s in seqs])
    bucket = np.searchsorted(bounds, lengths, side="right")
    batches = bucket_batches(seqs, 8, boundaries=bounds)
    for b in batches:
        kinds = set(bucket[b.indices].tolist())
        assert len(kinds) == 1, "a batch mixes buckets"
        k = kinds.pop()
        assert b.batch.shape[1] == lengths[bucket == k].max()
        lo = bounds[k - 1] if k else 0
        hi = bounds[k] if k < len(bounds) else np.inf
        assert ((lo <= b.lengths) & (b.lengths < hi)).all()
    # pad_to="batch": each batch to its own longest
    for b in bucket_batches(seqs, 8, boundaries=bounds, pad_to="batch"):
        assert b.batch.shape[1] == b.lengths.max()


def test_bucketing_pads_less_than_plain_batching() -> None:
    seqs = _data(n=512, t=128)
    tokens = sum(len(s) for s in seqs)

    def padded(batches: list[Batch]) -> int:
        return sum(b.batch.size for b in batches)

    plain = bucket_batches(seqs, 32, n_buckets=1)
    bucketed = bucket_batches(seqs, 32, n_buckets=8)
    assert padded(bucketed) < padded(plain)
    assert padded(bucketed) - tokens < 0.35 * (padded(plain) - tokens)


def test_order_restoration() -> None:
    seqs = _data(feat=(3,))
    for shuffle in (False, True):
        batches = bucket_batches(seqs, 10, n_buckets=4, shuffle=shuffle, seed=7, dtype="float32")
        # per-row results: the sum of each row, and the last valid step (padding-invariant)
        sums = restore_order([b.batch.sum(axis=(1, 2)) for b in batches], batches)
        np.testing.assert_allclose(sums, [s.sum() for s in seqs])
        last = restore_order(
            [b.batch[np.arange(len(b.lengths)), b.lengths - 1] for b in batches], batches
        )
        np.testing.assert_array_equal(last, np.stack([s[-1] for s in seqs]))
        lens = restore_order([b.lengths for b in batches], batches)
        assert lens.tolist() == [len(s) for s in seqs]


def test_restore_order_rejects_incomplete_batches() -> None:
    seqs = _data(n=21)
    batches = bucket_batches(seqs, 4, n_buckets=1, drop_remainder=True)
    assert all(len(b.indices) == 4 for b in batches) and len(batches) == 5
    with pytest.raises(ValueError, match="exactly once"):
        restore_order([b.lengths for b in batches], batches, n=len(seqs))
    with pytest.raises(ValueError, match="exactly once"):
        restore_order([b.lengths for b in batches + batches[:1]], batches + batches[:1])
    with pytest.raises(ValueError):
        restore_order([b.lengths for b in batches[:-1]], batches)


def test_deterministic_with_a_seed() -> None:
    seqs = _data()

    def key(batches: list[Batch]) -> list[list[int]]:
        return [b.indices.tolist() for b in batches]

    a = bucket_batches(seqs, 16, n_buckets=4, shuffle=True, seed=3)
    b = bucket_batches(seqs, 16, n_buckets=4, shuffle=True, seed=3)
    c = bucket_batches(seqs, 16, n_buckets=4, shuffle=True, seed=4)
    assert key(a) == key(b)
    assert key(a) != key(c)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.batch, y.batch)
    # without shuffle: buckets in increasing length, input order within a bucket
    plain = bucket_batches(seqs, 16, n_buckets=4)
    assert key(plain) == key(bucket_batches(seqs, 16, n_buckets=4, seed=99))
    idx = np.concatenate([p.indices for p in plain])
    bucket_of = np.searchsorted(
        bucket_boundaries([len(s) for s in seqs], 4), [len(seqs[i]) for i in idx], side="right"
    )
    assert (np.diff(bucket_of) >= 0).all()
    for k in np.unique(bucket_of):
        rows = idx[bucket_of == k]
        assert (np.diff(rows) > 0).all()


def test_padding_options_and_pad_fn() -> None:
    seqs = [[1, 2, 3, 4, 5], [6], [7, 8]]
    (b,) = bucket_batches(seqs, 8, n_buckets=1, side="pre", value=-1, maxlen=3, truncate="post")
    ref, ref_lens = pad_sequences(
        [seqs[i] for i in b.indices], side="pre", value=-1, maxlen=3, truncate="post"
    )
    np.testing.assert_array_equal(b.batch, ref)
    assert b.lengths.tolist() == ref_lens.tolist() == [3, 1, 2]
    calls = []

    def pad_fn(rows, steps):  # type: ignore[no-untyped-def]
        calls.append((len(rows), steps))
        return pad_sequences(rows, side="post", maxlen=steps, dtype="float32")

    out = bucket_batches(seqs, 2, boundaries=[3], pad_fn=pad_fn)
    assert calls == [(2, 2), (1, 5)]
    assert [o.batch.dtype for o in out] == [np.float32, np.float32]


def test_empty_sequences_and_edge_cases() -> None:
    seqs = [[], [1], [], [2, 3]]
    batches = bucket_batches(seqs, 2, boundaries=[1])
    assert _all_indices(batches) == [0, 1, 2, 3]
    empty = batches[0]
    assert empty.indices.tolist() == [0, 2] and empty.batch.shape == (2, 1)
    assert empty.lengths.tolist() == [0, 0]
    assert bucket_batches([], 4) == []
    with pytest.raises(ValueError):
        bucket_batches(seqs, 0)
    with pytest.raises(ValueError):
        bucket_batches(seqs, 2, boundaries=[3, 2])
    with pytest.raises(ValueError):
        bucket_batches(seqs, 2, boundaries=[1], n_buckets=2)
    with pytest.raises(ValueError):
        bucket_batches(seqs, 2, pad_to="max")
    assert bucket_boundaries([5, 5, 5, 5], 3) == []
    assert bucket_boundaries(list(range(1, 101)), 4) == [26, 51, 76]


def test_torch_tensors_in_restore_order_keep_their_gradients() -> None:
    torch = pytest.importorskip("torch")
    seqs = _data(n=30)
    batches = bucket_batches(seqs, 8, n_buckets=3, shuffle=True)
    leaves = [torch.as_tensor(b.lengths, dtype=torch.float32).requires_grad_() for b in batches]
    out = restore_order([2.0 * leaf for leaf in leaves], batches)
    assert isinstance(out, torch.Tensor) and out.requires_grad
    assert out.tolist() == [2.0 * len(s) for s in seqs]
    # d(sum_j w_j out_j)/d leaf_k[i] = 2 w_j for the input row j that row i of batch k holds
    w = torch.arange(len(seqs), dtype=torch.float32)
    (out * w).sum().backward()
    for leaf, b in zip(leaves, batches, strict=True):
        assert leaf.grad is not None
        assert leaf.grad.tolist() == [2.0 * float(j) for j in b.indices]


def test_jax_and_tensorflow_arrays_in_restore_order() -> None:
    jnp = pytest.importorskip("jax.numpy")
    seqs = _data(n=20)
    batches = bucket_batches(seqs, 4, n_buckets=2, shuffle=True)
    out = restore_order([jnp.asarray(b.lengths) for b in batches], batches)
    assert type(out).__module__.startswith("jax") and out.tolist() == [len(s) for s in seqs]
    tf = pytest.importorskip("tensorflow")
    got = restore_order([tf.constant(b.lengths) for b in batches], batches)
    assert isinstance(got, tf.Tensor) and got.numpy().tolist() == [len(s) for s in seqs]


def test_restore_order_rejects_mixed_kinds() -> None:
    torch = pytest.importorskip("torch")
    batches = bucket_batches(_data(n=10), 4, n_buckets=2)
    mixed = [torch.as_tensor(b.lengths) for b in batches[:-1]] + [batches[-1].lengths]
    with pytest.raises(TypeError, match="mix"):
        restore_order(mixed, batches)


def test_doctest() -> None:
    assert doctest.testmod(seqdsl.batching).failed == 0
