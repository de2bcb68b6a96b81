"""Section 4's data: one padded batch vs its rows unpadded, and an epoch batched
plainly vs by length buckets (seqdsl.batching.bucket_batches).

waste      one batch of B rows, lengths uniform in [1, T]:
             padded  the masked model on the [B, T] batch with lengths
             exact   the unmasked model on the rows of each distinct length,
                     [n_L, L] each, the calls summed: the same tokens, no padding
bucketing  an epoch of n_batches * B sequences, lengths uniform in [1, T]:
             plain     batches of B in input order, each padded to its longest
                       (bucket_batches(n_buckets=1, pad_to="batch"))
             bucketed  bucket_batches(n_buckets=8): batches of B rows of similar
                       lengths, padded to their bucket's longest
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from seqdsl.batching import bucket_batches

from .common import Measured, lengths_uniform, size_key


@dataclass
class Plan:
    B: int
    T: int
    U: int
    one_batch: tuple[np.ndarray, np.ndarray]
    exact_groups: list[np.ndarray]
    epochs: dict[str, list[tuple[np.ndarray, np.ndarray]]]
    info: dict[str, Any]

    def row(self, framework: str, cell: str, mode: str, group: str, m: Measured) -> dict[str, Any]:
        if group == "waste":
            ratio = m.ratio("padded", "exact")
            info = self.info["waste"]
        else:
            ratio = m.ratio("plain", "bucketed")
            info = self.info["bucketing"]
        return {
            "section": "padding",
            "framework": framework,
            "cell": cell,
            "B": self.B,
            "T": self.T,
            "U": self.U,
            "size": size_key(self.B, self.T, self.U),
            "mode": mode,
            "group": group,
            "variants": m.stats(),
            "ratio": ratio,
            **info,
            "rounds": m.rounds,
            "wall_s": round(m.wall_s, 2),
        }


def plan(b: int, t: int, u: int, n_batches: int = 8, n_buckets: int = 8, seed: int = 0) -> Plan:
    rng = np.random.default_rng(seed)
    # one batch
    lengths = lengths_uniform(rng, b, t).astype(np.int64)
    x = rng.standard_normal((b, t, u), dtype=np.float32)
    x *= (np.arange(t)[None, :] < lengths[:, None])[..., None]
    groups = [x[lengths == n, :n] for n in np.unique(lengths)]
    # an epoch
    n_seq = n_batches * b
    seq_lengths = lengths_uniform(rng, n_seq, t)
    seqs = [rng.standard_normal((int(n), u), dtype=np.float32) for n in seq_lengths]
    epochs: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    info_epoch: dict[str, Any] = {"sequences": n_seq, "tokens": int(seq_lengths.sum())}
    for name, kw in (
        ("plain", {"n_buckets": 1, "pad_to": "batch"}),
        ("bucketed", {"n_buckets": n_buckets}),
    ):
        batches = bucket_batches(seqs, b, dtype="float32", side="post", **kw)
        epochs[name] = [(bt.batch, bt.lengths.astype(np.int64)) for bt in batches]
        cells = sum(bt.batch.shape[0] * bt.batch.shape[1] for bt in batches)
        info_epoch[name] = {
            "batches": len(batches),
            "padded_steps": cells,
            "token_fraction": round(float(seq_lengths.sum()) / cells, 4),
            "shapes": sorted({tuple(bt.batch.shape[:2]) for bt in batches}),
        }
    info = {
        "waste": {
            "tokens": int(lengths.sum()),
            "padded_steps": b * t,
            "token_fraction": round(float(lengths.sum()) / (b * t), 4),
            "exact_calls": len(groups),
        },
        "bucketing": {"n_buckets": n_buckets, **info_epoch},
    }
    return Plan(b, t, u, (x, lengths), groups, epochs, info)
