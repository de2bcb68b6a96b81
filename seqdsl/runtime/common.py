"""Run-time code every backend shares: NumPy only.

:func:`pad_sequences` is the body of every generated model's ``pad()``:
``keras.utils.pad_sequences`` in the declared dtype, returning the lengths a
``masked`` input takes as well.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["pad_sequences"]


def pad_sequences(
    sequences: Sequence[Any],
    side: str,
    value: float,
    maxlen: int | None,
    truncate: str,
    dtype: np.typing.DTypeLike,
    lengths_dtype: np.typing.DTypeLike = np.int32,
) -> tuple[np.ndarray, np.ndarray]:
    """keras.utils.pad_sequences in `dtype`: returns (batch, lengths after truncation)."""
    if len(sequences) == 0:
        raise ValueError("pad needs at least one sequence")
    arrays = [np.asarray(s) for s in sequences]
    feature_shape = next((a.shape[1:] for a in arrays if len(a)), ())
    steps = maxlen if maxlen is not None else max(len(a) for a in arrays)
    fill = np.asarray(value).astype(dtype)
    batch = np.full((len(arrays), steps, *feature_shape), fill, dtype=dtype)
    lengths = np.zeros(len(arrays), dtype=lengths_dtype)
    for i, a in enumerate(arrays):
        if not len(a):
            continue
        kept = a[-steps:] if truncate == "pre" else a[:steps]
        if kept.shape[1:] != feature_shape:
            raise ValueError(f"sequence {i}: feature shape {kept.shape[1:]}, not {feature_shape}")
        lengths[i] = len(kept)
        if side == "post":
            batch[i, : len(kept)] = kept.astype(dtype)
        else:
            batch[i, steps - len(kept) :] = kept.astype(dtype)
    return batch, lengths
