"""Length bucketing: batches of similar lengths, so that little of a batch is padding.

    >>> from seqdsl.batching import bucket_batches, restore_order
    >>> seqs = [[1, 2, 3], [4], [5, 6], [7, 8, 9, 10], [11]]
    >>> batches = bucket_batches(seqs, 2, boundaries=[3], side="post")
    >>> [b.batch.shape for b in batches]
    [(2, 2), (1, 2), (2, 4)]
    >>> [b.indices.tolist() for b in batches]
    [[1, 2], [4], [0, 3]]
    >>> restore_order([b.lengths for b in batches], batches).tolist()
    [3, 1, 2, 4, 1]

Sequences are assigned to buckets by length (after truncation to ``maxlen``),
each bucket is cut into batches of ``batch_size`` rows, and every batch is
padded by :func:`seqdsl.padding.pad_sequences` (``keras.utils.pad_sequences``
semantics) to its bucket's longest sequence, so a bucket's batches share one
shape (one compiled program per bucket under ``jax.jit``); ``pad_to="batch"``
pads each batch to its own longest sequence instead. A batch carries the
original index of each row, and :func:`restore_order` puts per-row results back
in input order. ``bench/run.py --only padding`` measures the gain.

This module imports NumPy only.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from .padding import pad_sequences

__all__ = ["Batch", "bucket_batches", "bucket_boundaries", "restore_order"]

#: ``pad_fn(sequences, maxlen) -> (batch, lengths)``
PadFn = Callable[[Sequence[Any], int], tuple[Any, Any]]


class Batch(NamedTuple):
    """One padded batch: ``batch`` [n, T_bucket, ...], each row's ``lengths`` [n]
    (after truncation) and ``indices`` [n], the rows' positions in the input."""

    batch: Any
    lengths: Any
    indices: np.ndarray


def bucket_boundaries(lengths: Sequence[int] | np.ndarray, n_buckets: int) -> list[int]:
    """Boundaries that split ``lengths`` into at most ``n_buckets`` buckets of about
    equal counts (quantiles), in :func:`bucket_batches`' convention: bucket ``i``
    holds the lengths ``boundaries[i-1] <= n < boundaries[i]``."""
    if n_buckets < 1:
        raise ValueError(f"n_buckets must be at least 1, got {n_buckets}")
    lens = np.sort(np.asarray(lengths, dtype=np.int64))
    if lens.size == 0 or n_buckets == 1:
        return []
    cuts = [int(lens[(k * lens.size) // n_buckets]) for k in range(1, n_buckets)]
    # a cut c puts c itself in the upper bucket; drop duplicates and empty first buckets
    return sorted({c for c in cuts if c > int(lens[0])})


def bucket_batches(
    sequences: Sequence[Sequence[Any]] | Sequence[np.ndarray],
    batch_size: int,
    *,
    boundaries: Sequence[int] | None = None,
    n_buckets: int | None = None,
    pad_to: str = "bucket",
    pad_fn: PadFn | None = None,
    side: str = "post",
    value: float = 0.0,
    maxlen: int | None = None,
    truncate: str = "pre",
    dtype: str = "int32",
    drop_remainder: bool = False,
    shuffle: bool = False,
    seed: int = 0,
) -> list[Batch]:
    """Group ``sequences`` by length into padded batches of at most ``batch_size`` rows.

    Buckets: ``boundaries`` (increasing ints, TensorFlow's
    ``bucket_by_sequence_length`` convention: bucket 0 holds lengths
    ``< boundaries[0]``, bucket ``i`` holds ``boundaries[i-1] <= n < boundaries[i]``,
    the last ``>= boundaries[-1]``), or ``n_buckets`` buckets of about equal counts
    (:func:`bucket_boundaries`); with neither, 8 buckets. ``boundaries=[]`` or
    ``n_buckets=1`` is one bucket: plain batching, every batch padded to the
    longest sequence.

    Padding: ``pad_to="bucket"`` (default) pads every batch of a bucket to that
    bucket's longest sequence (one shape per bucket), ``"batch"`` to the batch's
    own longest. ``side``, ``value``, ``maxlen``, ``truncate`` and ``dtype`` are
    :func:`seqdsl.padding.pad_sequences`' (note ``side`` defaults to ``"post"``
    here, the layout fused RNN kernels want). ``pad_fn(sequences, maxlen)``
    replaces it, e.g. ``lambda s, n: model.pad(s)`` for a built seqdsl model; it
    must return ``(batch, lengths)``. A batch of empty sequences is padded to one step.

    Order: without ``shuffle``, buckets in increasing length, rows within a
    bucket in input order. With ``shuffle``, rows are shuffled within each
    bucket and the batches of all buckets are shuffled together, reproducibly
    for one ``seed``. ``drop_remainder`` drops each bucket's last, short batch.

    Returns a list of :class:`Batch` ``(batch, lengths, indices)``; every index
    appears exactly once unless ``drop_remainder`` dropped it.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if pad_to not in ("bucket", "batch"):
        raise ValueError(f'pad_to must be "bucket" or "batch", got {pad_to!r}')
    if boundaries is not None and n_buckets is not None:
        raise ValueError("give boundaries or n_buckets, not both")
    if maxlen is not None and maxlen < 1:
        raise ValueError(f"maxlen must be positive, got {maxlen}")
    n_seq = len(sequences)
    if n_seq == 0:
        return []
    lengths = np.array([len(s) for s in sequences], dtype=np.int64)
    if maxlen is not None:
        lengths = np.minimum(lengths, maxlen)
    if boundaries is None:
        bounds = bucket_boundaries(lengths, 8 if n_buckets is None else n_buckets)
    else:
        bounds = [int(b) for b in boundaries]
        if any(b <= a for a, b in zip(bounds, bounds[1:], strict=False)):
            raise ValueError(f"boundaries must be strictly increasing, got {list(boundaries)}")
    bucket_of = np.searchsorted(np.asarray(bounds, dtype=np.int64), lengths, side="right")
    rng = np.random.default_rng(seed) if shuffle else None

    def pad(rows: np.ndarray, steps: int) -> tuple[Any, Any]:
        seqs: list[Any] = [sequences[int(i)] for i in rows]
        steps = max(int(steps), 1)
        if pad_fn is not None:
            return pad_fn(seqs, steps)
        return pad_sequences(
            seqs, side=side, value=value, maxlen=steps, truncate=truncate, dtype=dtype
        )

    batches: list[Batch] = []
    for bucket in np.unique(bucket_of):
        rows = np.nonzero(bucket_of == bucket)[0]  # input order
        if rng is not None:
            rows = rng.permutation(rows)
        longest = int(lengths[rows].max())
        for start in range(0, rows.size, batch_size):
            chunk = rows[start : start + batch_size]
            if drop_remainder and chunk.size < batch_size:
                continue
            steps = longest if pad_to == "bucket" else int(lengths[chunk].max())
            batch, lens = pad(chunk, steps)
            batches.append(Batch(batch, lens, chunk.astype(np.int64)))
    if rng is not None:
        batches = [batches[int(i)] for i in rng.permutation(len(batches))]
    return batches


def restore_order(per_batch: Sequence[Any], batches: Sequence[Batch], n: int | None = None) -> Any:
    """Per-row results of each batch (``per_batch[k]`` has one row per row of
    ``batches[k]``) stacked back into input order: row ``j`` of the result is the
    row of input sequence ``j``.

    The result is of the results' own kind: NumPy arrays give a NumPy array,
    torch tensors a torch tensor (``torch.cat`` and an index, so gradients flow
    back to every batch and the device is kept), JAX arrays a JAX array,
    TensorFlow tensors a TensorFlow tensor. Results of different kinds raise
    TypeError.

    Rows of a result padded in time can only be stacked when their shapes agree
    (e.g. final states, pooled outputs, losses); pad or trim them first otherwise.
    ``n``, the number of input sequences, defaults to the number of rows. Raises
    ValueError unless the batches hold every index ``0..n-1`` exactly once (a
    batch dropped by ``drop_remainder``, a repeated batch).
    """
    if len(per_batch) != len(batches):
        raise ValueError(f"{len(per_batch)} results for {len(batches)} batches")
    indices = np.concatenate([np.asarray(b.indices, dtype=np.int64) for b in batches])
    n = indices.size if n is None else n
    if indices.size != n or (n and (np.sort(indices) != np.arange(n)).any()):
        raise ValueError("the batches do not hold every index 0..n-1 exactly once")
    kinds = {_kind(r) for r in per_batch}
    if len(kinds) > 1:
        raise TypeError(f"the results mix kinds of array ({', '.join(sorted(kinds))})")
    kind = kinds.pop() if kinds else "numpy"
    rows: list[Any] = [r if kind != "numpy" else np.asarray(r) for r in per_batch]
    for r, b in zip(rows, batches, strict=True):
        if tuple(r.shape[:1]) != (len(b.indices),):
            raise ValueError(f"a result has {tuple(r.shape[:1])} rows, its batch {len(b.indices)}")
    order = np.argsort(indices, kind="stable")  # row j of the result: stacked row order[j]
    if kind == "torch":
        import torch

        stacked = torch.cat(rows, dim=0)
        return stacked[torch.as_tensor(order, device=stacked.device)]
    if kind == "jax":
        import jax.numpy as jnp

        return jnp.concatenate(rows, axis=0)[order]
    if kind == "tensorflow":  # (no type stubs: read as Any)
        tf: Any = importlib.import_module("tensorflow")
        return tf.gather(tf.concat(rows, axis=0), order)
    return np.concatenate(rows, axis=0)[order]


def _kind(x: Any) -> str:
    """Which framework an array belongs to (by its type's module: none is imported)."""
    root = type(x).__module__.partition(".")[0]
    if root == "torch":
        return "torch"
    if root in ("jax", "jaxlib"):
        return "jax"
    if root in ("tensorflow", "tf_keras"):
        return "tensorflow"
    return "numpy"
