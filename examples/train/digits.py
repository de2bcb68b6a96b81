"""The data of the training recipes (docs/training.md): scikit-learn's 8x8 digits
(bundled with scikit-learn: no download), read row by row and cropped to their
first 4 to 8 rows, so that the sequences have different lengths and the masks
matter. Every recipe uses this module, with NumPy only.

    train, test = digits(seed=0, limit=None)
    train.x     # float32 [N, 8, 8]: rows right-padded with 0.0 (pad(post, value=0.0))
    train.lengths  # int32 [N]: the rows kept (4..8)
    train.y     # int32 [N]: the digit
    train.y_steps  # int32 [N, 8]: the digit at every step (the per-step targets)
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np
from sklearn.datasets import load_digits

from seqdsl.padding import pad_sequences


@dataclass(frozen=True)
class Split:
    x: np.ndarray
    lengths: np.ndarray
    y: np.ndarray

    @property
    def y_steps(self) -> np.ndarray:
        return np.repeat(self.y[:, None], self.x.shape[1], axis=1).astype(np.int32)

    def batches(self, size: int, rng: np.random.Generator | None = None):
        """(x, lengths, y_steps, y) batches; shuffled when ``rng`` is given."""
        order = np.arange(len(self.y)) if rng is None else rng.permutation(len(self.y))
        ys = self.y_steps
        for start in range(0, len(order), size):
            i = order[start : start + size]
            yield self.x[i], self.lengths[i], ys[i], self.y[i]


def digits(
    seed: int = 0, limit: int | None = None, test_fraction: float = 0.2
) -> tuple[Split, Split]:
    """(train, test): 1797 images, 20% held out; ``limit`` keeps the first ``limit``
    training and ``limit // 4`` test examples (for a quick run)."""
    d = load_digits()
    rng = np.random.default_rng(seed)
    images = (d.images / 16.0).astype(np.float32)  # [1797, 8, 8], pixel values 0..16
    keep = rng.integers(4, 9, size=len(images))  # rows kept: 4..8
    rows = [img[:k] for img, k in zip(images, keep, strict=True)]
    x, lengths = pad_sequences(rows, side="post", value=0.0, maxlen=8, dtype="f32")
    order = rng.permutation(len(images))
    n_test = int(len(images) * test_fraction)
    test_i, train_i = order[:n_test], order[n_test:]
    if limit is not None:
        train_i, test_i = train_i[:limit], test_i[: max(limit // 4, 1)]
    y = d.target.astype(np.int32)
    lengths = lengths.astype(np.int32)
    return (
        Split(x[train_i], lengths[train_i], y[train_i]),
        Split(x[test_i], lengths[test_i], y[test_i]),
    )


def last_step_accuracy(logits: np.ndarray, lengths: np.ndarray, y: np.ndarray) -> float:
    """Accuracy of the prediction after each sequence's last valid row."""
    last = np.asarray(logits)[np.arange(len(y)), np.asarray(lengths) - 1]
    return float((last.argmax(-1) == y).mean())


def recipe_arguments(doc: str | None, argv: list[str] | None) -> argparse.Namespace:
    """The command line of the three training recipes (train_torch, train_jax, train_keras)."""
    p = argparse.ArgumentParser(description=doc)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--limit", type=int, default=None, help="training examples (quick runs)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save", metavar="F.safetensors", help="write the trained weights here")
    return p.parse_args(argv)
