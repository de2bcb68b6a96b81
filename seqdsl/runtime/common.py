"""Run-time code every backend shares: NumPy only.

:func:`pad_inputs` is the body of every generated model's ``pad()``, and
:func:`pad_sequences` its ``keras.utils.pad_sequences`` in the declared dtype,
returning the lengths a ``masked`` input takes as well.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["pad_inputs", "pad_sequences", "window_padding"]


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


def pad_inputs(
    pads: Mapping[str, tuple[Any, ...]],
    raw: Sequence[Sequence[Any]],
    lengths_dtype: np.typing.DTypeLike = np.int32,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The body of every generated model's ``pad(*raw)``: pad ragged data by the
    ``pad(...)`` declarations ``pads`` (input -> (side, value, maxlen, truncate,
    dtype, time), time a symbol, a size or None) with :func:`pad_sequences`, one
    list of sequences per padded input, in declaration order. Inputs that share a
    time symbol are padded to one length: the smallest maxlen among them, else
    their longest sequence. Returns one (batch, lengths) pair per input."""
    if len(raw) != len(pads):
        raise TypeError(
            f"pad takes {len(pads)} list(s) of sequences ({', '.join(pads)}), got {len(raw)}"
        )
    group = {name: (time if time is not None else name) for name, (*_, time) in pads.items()}
    limit: dict[Any, int] = {}
    longest: dict[Any, int] = {}
    for (name, (_, _, maxlen, _, _, time)), seqs in zip(pads.items(), raw, strict=True):
        if maxlen is None and isinstance(time, int):
            maxlen = time
        if maxlen is not None:
            limit[group[name]] = min(limit.get(group[name], maxlen), maxlen)
        longest[group[name]] = max(
            longest.get(group[name], 0), max((len(s) for s in seqs), default=0)
        )
    out = []
    for (name, (side, value, _, truncate, dtype, _)), seqs in zip(pads.items(), raw, strict=True):
        steps = limit.get(group[name], longest[group[name]])
        out.append(pad_sequences(seqs, side, value, steps, truncate, dtype, lengths_dtype))
    return out


def window_padding(steps: int, k_eff: int, stride: int, padding: str) -> tuple[int, int, int]:
    """(zeros before, zeros after, output steps) of Keras' padding for a window of
    k_eff steps over `steps` (Conv1D, pooling). valid: none; causal: k_eff - 1
    before; same: TensorFlow's rule, the zeros that ceil(T / stride) outputs need,
    split evenly, the odd one after."""
    if padding == "valid":
        return 0, 0, (steps - k_eff) // stride + 1
    out = -(-steps // stride)
    if padding == "causal":
        return k_eff - 1, 0, out
    total = max((out - 1) * stride + k_eff - steps, 0)
    return total // 2, total - total // 2, out
