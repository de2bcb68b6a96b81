"""``pad(...)``: keras.utils.pad_sequences semantics, in the declared dtype.

Returns the padded batch and each row's length after truncation (the lengths
a ``masked`` input takes). The padding itself is the run-time code every
generated model's ``pad()`` runs (:func:`seqdsl.runtime.common.pad_sequences`);
this is its checked public form, used by the reference interpreter and
``seqdsl.batching`` (tests compare both with Keras).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .runtime.common import pad_sequences as _pad

__all__ = ["pad_sequences", "lengths_to_mask"]

_NP_DTYPES = {"f32": "float32", "f64": "float64", "i32": "int32", "i64": "int64", "bool": "bool"}


def pad_sequences(
    sequences: Sequence[Sequence[object]] | Sequence[np.ndarray],
    *,
    side: str = "pre",
    value: float = 0.0,
    maxlen: int | None = None,
    truncate: str = "pre",
    dtype: str = "int32",
) -> tuple[np.ndarray, np.ndarray]:
    """Pad ragged ``sequences`` to ``[N, maxlen, ...]``; return ``(batch, lengths)``.

    ``dtype`` is a NumPy name or a seqdsl dtype (``i32``...). Raises ValueError
    on an empty outer list, ``maxlen=0``, bad sides or ragged feature shapes,
    as Keras does.
    """
    np_dtype = np.dtype(_NP_DTYPES.get(dtype, dtype))
    if side not in ("pre", "post"):
        raise ValueError(f'padding side must be "pre" or "post", got {side!r}')
    if truncate not in ("pre", "post"):
        raise ValueError(f'truncating side must be "pre" or "post", got {truncate!r}')
    if len(sequences) == 0:
        raise ValueError("pad_sequences needs at least one sequence")
    if maxlen is not None and maxlen < 1:
        raise ValueError(f"maxlen must be positive, got {maxlen}")
    return _pad(sequences, side, value, maxlen, truncate, np_dtype, np.int64)


def lengths_to_mask(lengths: np.ndarray, t: int, side: str = "post") -> np.ndarray:
    """A boolean ``[B, T]`` mask from lengths, right (``post``) or left (``pre``) aligned."""
    steps = np.arange(t)[None, :]
    lens = np.asarray(lengths)[:, None]
    return steps < lens if side == "post" else steps >= (t - lens)
