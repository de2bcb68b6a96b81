"""Initial weights, drawn once in the canonical (Keras) layout with NumPy.

Every backend starts from these numbers, so models built with the same seed
are identical everywhere. Each layer draws from its own stream,
``numpy.random.default_rng([seed, crc32(layer_name)])``, in the order of its
weights, so adding a layer never changes another layer's initial weights.
The formulas are Keras 3's (``keras.initializers``); the random streams are
ours (Keras' own seeds are backend-specific).
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Iterable

import numpy as np

from .layerspec import WeightSpec

__all__ = ["initial_weights", "initialize", "layer_rng", "INITIALIZER_NAMES"]

# Keras' VarianceScaling(distribution="truncated_normal") divides the stddev by
# the stddev of a standard normal truncated to [-2, 2].
_TRUNC_STD = 0.87962566103423978

INITIALIZER_NAMES = (
    "zeros", "ones", "uniform", "random_uniform", "random_normal", "truncated_normal",
    "glorot_uniform", "glorot_normal", "he_uniform", "he_normal", "lecun_uniform",
    "lecun_normal", "orthogonal", "identity",
)  # fmt: skip


def layer_rng(seed: int, layer_name: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(layer_name.encode("utf-8"))])


def _fans(shape: tuple[int, ...]) -> tuple[float, float]:
    if len(shape) == 0:
        return 1.0, 1.0
    if len(shape) == 1:
        return float(shape[0]), float(shape[0])
    if len(shape) == 2:
        return float(shape[0]), float(shape[1])
    receptive = math.prod(shape[:-2])
    return float(shape[-2] * receptive), float(shape[-1] * receptive)


def _truncated(rng: np.random.Generator, shape: tuple[int, ...], std: float) -> np.ndarray:
    out = rng.standard_normal(shape)
    bad = np.abs(out) > 2.0
    while bad.any():  # resample outside [-2, 2]
        out[bad] = rng.standard_normal(int(bad.sum()))
        bad = np.abs(out) > 2.0
    return out * std


def initialize(name: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """One weight by Keras' formula for initializer ``name`` (float64)."""
    m = re.fullmatch(r"unit_forget_bias\((\w+)\)", name)
    if m is not None:  # LSTM bias: [init(U), ones(U), init(2U)]
        (n,) = shape
        u = n // 4
        return np.concatenate(
            [initialize(m.group(1), (u,), rng), np.ones(u), initialize(m.group(1), (2 * u,), rng)]
        )
    fan_in, fan_out = _fans(shape)
    if name == "zeros":
        return np.zeros(shape)
    if name == "ones":
        return np.ones(shape)
    if name in ("uniform", "random_uniform"):
        return rng.uniform(-0.05, 0.05, shape)
    if name == "random_normal":
        return rng.normal(0.0, 0.05, shape)
    if name == "truncated_normal":
        return _truncated(rng, shape, 0.05)
    if name == "glorot_uniform":
        lim = math.sqrt(6.0 / (fan_in + fan_out))
        return rng.uniform(-lim, lim, shape)
    if name == "glorot_normal":
        return _truncated(rng, shape, math.sqrt(2.0 / (fan_in + fan_out)) / _TRUNC_STD)
    if name == "he_uniform":
        lim = math.sqrt(6.0 / fan_in)
        return rng.uniform(-lim, lim, shape)
    if name == "he_normal":
        return _truncated(rng, shape, math.sqrt(2.0 / fan_in) / _TRUNC_STD)
    if name == "lecun_uniform":
        lim = math.sqrt(3.0 / fan_in)
        return rng.uniform(-lim, lim, shape)
    if name == "lecun_normal":
        return _truncated(rng, shape, math.sqrt(1.0 / fan_in) / _TRUNC_STD)
    if name == "orthogonal":
        rows = math.prod(shape[:-1]) if len(shape) > 1 else 1
        cols = shape[-1]
        a = rng.standard_normal((max(rows, cols), min(rows, cols)))
        q, r = np.linalg.qr(a)
        q = q * np.sign(np.diag(r))
        if rows < cols:
            q = q.T
        return q.reshape(shape)
    if name == "identity":
        if len(shape) != 2:
            raise ValueError("the identity initializer needs a 2D shape")
        return np.eye(shape[0], shape[1])
    raise ValueError(f"unknown initializer {name!r}")


def initial_weights(
    layers: Iterable[tuple[str, tuple[WeightSpec, ...]]], seed: int, dtype: str = "float32"
) -> dict[str, np.ndarray]:
    """``{"layer/weight": array}`` for every layer, drawn from ``seed``."""
    out: dict[str, np.ndarray] = {}
    for layer_name, specs in layers:
        rng = layer_rng(seed, layer_name)
        for w in specs:
            # (np.ascontiguousarray would turn a scalar weight, shape (), into shape (1,))
            out[f"{layer_name}/{w.name}"] = np.array(
                initialize(w.initializer, w.shape, rng), dtype=dtype, order="C"
            )
    return out
