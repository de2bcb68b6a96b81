"""The benchmarked models: seqdsl source text, and the data every section feeds them.

Every model is a two-layer recurrent stack on ``x: f32[B, T, U]`` (features =
units) whose output is the last layer's final output ``[B, U]``:

    lstm    LSTM(U, return_sequences=true) -> LSTM(U)
    gru     GRU(U, return_sequences=true) -> GRU(U)
    bilstm  Bidirectional(LSTM(U/2, return_sequences=true)) -> Bidirectional(LSTM(U/2))

(U/2 per direction keeps the width, and so the cost per step, close to the
unidirectional stacks.) The input's declaration gives the mask kind:

    none    input x: f32[B, T, U]                               (no mask)
    post    input x: f32[B, T, U] pad(post, value=0) masked     (lengths)
    pre     input x: f32[B, T, U] pad(pre, value=0) masked      (lengths)
    gaps    input x: f32[B, T, U] masked                        (a bool mask, kind `any`)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

CELLS = ("lstm", "gru", "bilstm")
MASKS = ("none", "post", "pre", "gaps")

_DECL = {
    "none": "",
    "post": " pad(post, value=0) masked",
    "pre": " pad(pre, value=0) masked",
    "gaps": " masked",
}


def stack(cell: str, units: int) -> str:
    if cell == "lstm":
        return f"LSTM({units}, return_sequences=true) -> LSTM({units})"
    if cell == "gru":
        return f"GRU({units}, return_sequences=true) -> GRU({units})"
    if cell == "bilstm":
        half = units // 2
        return f"Bidirectional(LSTM({half}, return_sequences=true)) -> Bidirectional(LSTM({half}))"
    raise ValueError(cell)


def seq_text(cell: str, units: int, mask: str = "post") -> str:
    return (
        f"# bench/suite/models.py: {cell}, mask {mask}\n"
        f"model Bench {{\n"
        f"    input x: f32[B, T, {units}]{_DECL[mask]}\n"
        f"    y = x -> {stack(cell, units)}\n"
        f"    output y\n"
        f"}}\n"
    )


def load(cell: str, units: int, mask: str = "post") -> Any:
    import seqdsl

    return seqdsl.loads(seq_text(cell, units, mask), f"bench_{cell}_{mask}.seq")


@dataclass
class Data:
    """One batch: x [B, T, U] float32 with zeros at masked steps, the lengths
    (uniform in [1, T]) and the bool mask of the given kind."""

    x: np.ndarray
    lengths: np.ndarray
    mask: np.ndarray
    kind: str

    @property
    def valid_fraction(self) -> float:
        return float(self.mask.mean())


def make_data(batch: int, steps: int, units: int, kind: str = "post", seed: int = 0) -> Data:
    from .common import gap_mask, lengths_uniform

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, steps, units), dtype=np.float32)
    lengths = lengths_uniform(rng, batch, steps).astype(np.int64)
    t = np.arange(steps)[None, :]
    if kind in ("post", "none"):
        mask = t < lengths[:, None]
    elif kind == "pre":
        mask = t >= steps - lengths[:, None]
    elif kind == "gaps":
        mask = gap_mask(rng, batch, steps)
        lengths = mask.sum(axis=1).astype(np.int64)
    else:
        raise ValueError(kind)
    if kind != "none":
        x = np.where(mask[..., None], x, np.float32(0.0)).astype(np.float32)
    return Data(x, lengths, mask, kind)


def layer_weights(canonical: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """Canonical weights grouped by layer, in order: [{"kernel": ..., "forward/kernel": ...}]."""
    layers: dict[str, dict[str, np.ndarray]] = {}
    for key, value in canonical.items():
        layer, name = key.split("/", 1)
        layers.setdefault(layer, {})[name] = np.asarray(value)
    return list(layers.values())


def bench_sizes_note() -> str:
    return (
        "features = units; lengths uniform in [1, T] (seed 0); gaps: each step valid "
        "with probability 0.75, every row nonempty"
    )
