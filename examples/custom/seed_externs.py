"""Implementations of the extern layers of seed_masking_layers.seq, one per backend.

Each is the masking guide's Keras layer written as a function of the inputs,
with the mask, the declared weights and the configuration as keywords (see
docs/custom.md). ``use "seed_externs"`` in the .seq file imports this module
when the program is built; nothing here is imported by ``seqdsl check``.
The frameworks are imported inside the functions, so registering costs nothing.
"""

from __future__ import annotations

import numpy as np

import seqdsl

# --------------------------------------------------------------------- numpy (the reference)


@seqdsl.extern("MyEmbedding", backend="numpy")
def embedding_np(x, *, mask, weights, config, training):
    return weights["embeddings"][x]


@seqdsl.extern("MyActivation", backend="numpy")
def activation_np(x, *, mask, weights, config, training):
    return np.maximum(x, 0.0)


@seqdsl.extern("MyTemporalSplit", backend="numpy")
def split_np(x, *, mask, weights, config, training):
    return tuple(np.split(x, config["parts"], axis=1))


@seqdsl.extern("MyTemporalSoftmax", backend="numpy")
def temporal_softmax_np(x, *, mask, weights, config, training):
    m = mask[..., None].astype(x.dtype)
    e = np.exp(x) * m
    with np.errstate(invalid="ignore"):  # 0/0 at masked steps, as in the guide
        return e / np.sum(e * m, axis=-1, keepdims=True)


# --------------------------------------------------------------------- torch


@seqdsl.extern("MyEmbedding", backend="torch")
def embedding_torch(x, *, mask, weights, config, training):
    import torch

    return torch.nn.functional.embedding(x.long(), weights["embeddings"])


@seqdsl.extern("MyActivation", backend="torch")
def activation_torch(x, *, mask, weights, config, training):
    import torch

    return torch.relu(x)


@seqdsl.extern("MyTemporalSplit", backend="torch")
def split_torch(x, *, mask, weights, config, training):
    return tuple(x.chunk(config["parts"], dim=1))


@seqdsl.extern("MyTemporalSoftmax", backend="torch")
def temporal_softmax_torch(x, *, mask, weights, config, training):
    import torch

    m = mask.unsqueeze(-1).to(x.dtype)
    e = torch.exp(x) * m
    return e / torch.sum(e * m, dim=-1, keepdim=True)


# --------------------------------------------------------------------- jax


@seqdsl.extern("MyEmbedding", backend="jax")
def embedding_jax(x, *, mask, weights, config, training):
    return weights["embeddings"][x]


@seqdsl.extern("MyActivation", backend="jax")
def activation_jax(x, *, mask, weights, config, training):
    import jax

    return jax.nn.relu(x)


@seqdsl.extern("MyTemporalSplit", backend="jax")
def split_jax(x, *, mask, weights, config, training):
    import jax.numpy as jnp

    return tuple(jnp.split(x, config["parts"], axis=1))


@seqdsl.extern("MyTemporalSoftmax", backend="jax")
def temporal_softmax_jax(x, *, mask, weights, config, training):
    import jax.numpy as jnp

    m = mask[..., None].astype(x.dtype)
    e = jnp.exp(x) * m
    return e / jnp.sum(e * m, axis=-1, keepdims=True)


# --------------------------------------------------------------------- keras (keras.ops: any Keras backend)


@seqdsl.extern("MyEmbedding", backend="keras")
def embedding_keras(x, *, mask, weights, config, training):
    from keras import ops

    return ops.take(weights["embeddings"], ops.cast(x, "int32"), axis=0)


@seqdsl.extern("MyActivation", backend="keras")
def activation_keras(x, *, mask, weights, config, training):
    from keras import ops

    return ops.relu(x)


@seqdsl.extern("MyTemporalSplit", backend="keras")
def split_keras(x, *, mask, weights, config, training):
    from keras import ops

    return tuple(ops.split(x, config["parts"], axis=1))


@seqdsl.extern("MyTemporalSoftmax", backend="keras")
def temporal_softmax_keras(x, *, mask, weights, config, training):
    from keras import ops

    m = ops.expand_dims(ops.cast(mask, x.dtype), -1)
    e = ops.exp(x) * m
    return e / ops.sum(e * m, axis=-1, keepdims=True)
