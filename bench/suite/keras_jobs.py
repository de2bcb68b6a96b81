"""Section 3: our models against Keras 3 running the same masked model, per Keras backend.

Runs in a subprocess with ``KERAS_BACKEND`` set (one per backend). Variants,
all with the same weights, the same right-padded batch and the same mask:

  keras3          a hand-written functional Keras 3 model: inputs x and a bool mask,
                  ``LSTM(...)(x, mask=m)`` per layer (Keras' own masked path);
                  inference: ``predict_on_batch`` (compiled: tf.function / jax.jit), and on
                  the torch backend also ``model(..., training=False)`` under no_grad, the
                  faster of the two; training: ``train_on_batch`` (SGD, mse against zeros).
                  (The eager call on TensorFlow and JAX is 5x slower than predict_on_batch
                  at the centre size, so it is not timed.)
  ours-keras      seqdsl's Keras emission (``build("keras")``), the same calls
                  (when seqdsl.emit.BACKENDS has "keras")
  ours-torch /    seqdsl's native emission on the framework under this Keras backend
  ours-jax        (torch: eager module, no_grad / SGD step; jax: jitted apply / step)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np

from .common import measure, size_key
from .models import layer_weights, load, make_data

LR = 1e-4


def _keras_model(keras: Any, cell: str, steps: int, units: int) -> Any:
    x = keras.Input((steps, units), name="x")
    m = keras.Input((steps,), dtype="bool", name="m")
    layers = keras.layers
    if cell == "bilstm":
        first = layers.Bidirectional(layers.LSTM(units // 2, return_sequences=True))
        second = layers.Bidirectional(layers.LSTM(units // 2))
    else:
        rnn = layers.GRU if cell == "gru" else layers.LSTM
        first, second = rnn(units, return_sequences=True), rnn(units)
    y = first(x, mask=m)
    y = second(y, mask=m)
    return keras.Model([x, m], y)


def _weights_list(cell: str, canonical: dict[str, np.ndarray]) -> list[np.ndarray]:
    out: list[np.ndarray] = []
    for w in layer_weights(canonical):
        out += list(w.values())  # Keras' get_weights() order (docs/semantics.md §1)
    return out


def section(row: dict[str, Any], opts: dict[str, Any]) -> list[dict[str, Any]]:
    import keras

    import seqdsl.emit
    from seqdsl.initializers import initial_weights

    backend = keras.backend.backend()
    cell, b, t, u = row["cell"], row["B"], row["T"], row["U"]
    data = make_data(b, t, u, "post")
    prog = load(cell, u, "post")
    model = prog.model()
    canonical = initial_weights(((lay.name, lay.weights) for lay in model.layers), 0, "float32")
    target = np.zeros((b, u), np.float32)
    mask = data.mask
    lengths32 = data.lengths.astype(np.int32)

    k3 = _keras_model(keras, cell, t, u)
    k3.set_weights(_weights_list(cell, canonical))
    k3.compile(optimizer=keras.optimizers.SGD(LR), loss="mse")
    infer: dict[str, Callable[[], object]] = {}
    train: dict[str, Callable[[], object]] = {}
    outs: dict[str, Any] = {}
    x_b = keras.ops.convert_to_tensor(data.x)
    m_b = keras.ops.convert_to_tensor(mask)

    if backend == "torch":  # eager torch: the plain call is as idiomatic as predict_on_batch
        import torch

        def k3_call() -> Any:
            with torch.no_grad():
                return keras.ops.convert_to_numpy(k3([x_b, m_b], training=False))

        infer["keras3/call"] = k3_call
    infer["keras3/predict"] = lambda: k3.predict_on_batch([data.x, mask])
    train["keras3"] = lambda: k3.train_on_batch([data.x, mask], target)
    outs["keras3"] = np.asarray(k3.predict_on_batch([data.x, mask]))
    notes: list[str] = []

    if "keras" in seqdsl.emit.BACKENDS:
        try:
            ours = prog.build("keras", seed=0)
            ours.compile(optimizer=keras.optimizers.SGD(LR), loss="mse")
            infer["ours-keras"] = lambda: ours.predict_on_batch([data.x, lengths32])
            train["ours-keras"] = lambda: ours.train_on_batch([data.x, lengths32], target)
            outs["ours-keras"] = np.asarray(ours.predict_on_batch([data.x, lengths32]))
        except Exception as e:  # the Keras emitter is being finished: report, go on
            notes.append(f"ours-keras skipped: {type(e).__name__}: {e}"[:300])
    else:
        notes.append("ours-keras skipped: seqdsl.emit.BACKENDS has no 'keras'")

    native = None
    if backend == "torch":
        import torch

        net = prog.build("torch", seed=0)
        xt, lt = torch.from_numpy(data.x), torch.from_numpy(data.lengths)
        opt = torch.optim.SGD(net.parameters(), lr=LR)

        def torch_infer() -> Any:
            with torch.no_grad():
                return net(xt, lengths=lt)

        def torch_train() -> None:
            net.train()
            opt.zero_grad(set_to_none=True)
            net(xt, lengths=lt).square().mean().backward()
            opt.step()

        native = "ours-torch"
        infer[native], train[native] = torch_infer, torch_train
        outs[native] = torch_infer().numpy()
    elif backend == "jax":
        import jax
        import jax.numpy as jnp

        from .jax_jobs import _sgd, _Trainer

        net = prog.build("jax", seed=0)
        xj, lj = jnp.asarray(data.x), jnp.asarray(lengths32)
        call = jax.jit(lambda v, x, n: net.apply(v, x, lengths=n))

        def loss(p: Any, s: Any, x: Any, n: Any) -> Any:
            return jnp.mean(net.apply({"params": p, "state": s}, x, lengths=n) ** 2)

        native = "ours-jax"
        v = net.variables
        infer[native] = lambda: jax.block_until_ready(call(v, xj, lj))
        train[native] = _Trainer(_sgd(loss), v["params"], v["state"], xj, lj)
        outs[native] = np.asarray(call(v, xj, lj))

    diffs = {k: float(np.max(np.abs(v - outs["keras3"]))) for k, v in outs.items() if k != "keras3"}
    rows = []
    for mode, fns in (("inference", infer), ("train", train)):
        if mode not in row.get("modes", ("inference", "train")):
            continue
        m = measure(fns, **opts)
        if mode == "inference":
            base = min((k for k in fns if k.startswith("keras3")), key=m.median)
        else:
            base = "keras3"
        ratios = {k: m.ratio(k, base) for k in fns if k.startswith("ours")}
        rows.append(
            {
                "section": "keras",
                "framework": f"keras-{backend}",
                "keras_backend": backend,
                "cell": cell,
                "B": b,
                "T": t,
                "U": u,
                "size": size_key(b, t, u),
                "mode": mode,
                "variants": m.stats(),
                "baseline": base,
                "ratios": ratios,
                "max_abs_diff_vs_keras3": diffs,
                "notes": notes,
                "rounds": m.rounds,
                "wall_s": round(m.wall_s, 2),
                "keras_jit_compile": str(getattr(k3, "jit_compile", None)),
            }
        )
    return rows


def backend_name() -> str:
    return os.environ.get("KERAS_BACKEND", "tensorflow")


SECTIONS = {"keras": section}
