"""Stateful training on examples/train/digit_halves.seq (docs/training.md): each
digit is read in two calls of 4 rows; the stateful LSTM carries its state from
the first call to the second, the loss is taken after the second, and the states
are reset before the next batch of images. Gradients stop at the call boundary
(truncated backpropagation through time, as in Keras).

    python examples/train/train_stateful.py --backend torch|jax|keras [--epochs 15] [--limit N]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import seqdsl

HERE = Path(__file__).resolve().parent
BATCH = 32  # the declared batch of digit_halves.seq


def full_images(seed: int, limit: int | None):
    """Uncropped images (the stateful model reads all 8 rows), split as digits() does."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = int(len(x) * 0.2)
    test_i, train_i = order[:n_test], order[n_test:]
    if limit is not None:
        train_i, test_i = train_i[:limit], test_i[: max(limit // 4, BATCH)]
    y = d.target.astype(np.int64)
    return (x[train_i], y[train_i]), (x[test_i], y[test_i])


def batches(x, y, rng=None):
    order = np.arange(len(y)) if rng is None else rng.permutation(len(y))
    for start in range(0, len(order) - BATCH + 1, BATCH):  # the last partial batch is dropped
        i = order[start : start + BATCH]
        yield x[i, :4], x[i, 4:], y[i]


def train_torch(args, train, test) -> float:
    import torch
    import torch.nn.functional as F

    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    net = seqdsl.load(HERE / "digit_halves.seq").build("torch", seed=args.seed)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for epoch in range(args.epochs):
        net.train()
        total, n = 0.0, 0
        for top, bottom, y in batches(*train, rng):
            net.reset_states()  # a new batch of images: zero states
            with torch.no_grad():
                net(torch.from_numpy(top))  # the first 4 rows: only the states matter
            loss = F.cross_entropy(net(torch.from_numpy(bottom)), torch.from_numpy(y))
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, n = total + float(loss.detach()) * BATCH, n + BATCH
        net.eval()
        right = count = 0
        with torch.no_grad():
            for top, bottom, y in batches(*test):
                net.reset_states()
                net(torch.from_numpy(top))
                right += int((net(torch.from_numpy(bottom)).argmax(-1).numpy() == y).sum())
                count += BATCH
        acc = right / count
        print(f"epoch {epoch + 1}: loss {total / n:.4f}, test accuracy {acc:.4f}", flush=True)
    return acc


def train_jax(args, train, test) -> float:
    import jax
    import optax

    rng = np.random.default_rng(args.seed)
    model = seqdsl.load(HERE / "digit_halves.seq").build("jax", seed=args.seed)
    apply = model.apply
    params = model.variables["params"]
    zero_state = model.variables["state"]  # the LSTM's h and c, zeros: a reset is this state
    opt = optax.adam(3e-3)
    opt_state = opt.init(params)

    def loss_fn(params, state, x, y):
        logits = apply({"params": params, "state": state}, x, training=True)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def step(params, opt_state, top, bottom, y):
        # the first call only advances the state (return_state=True gives it)
        _, state = apply({"params": params, "state": zero_state}, top, return_state=True)
        state = jax.lax.stop_gradient(state)  # truncated: gradients stop at the call boundary
        loss, grads = jax.value_and_grad(loss_fn)(params, state, bottom, y)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    @jax.jit
    def predict(params, top, bottom):
        _, state = apply({"params": params, "state": zero_state}, top, return_state=True)
        return apply({"params": params, "state": state}, bottom)

    for epoch in range(args.epochs):
        total, n = 0.0, 0
        for top, bottom, y in batches(*train, rng):
            params, opt_state, loss = step(params, opt_state, top, bottom, y)
            total, n = total + float(loss) * BATCH, n + BATCH
        right = count = 0
        for top, bottom, y in batches(*test):
            right += int((np.asarray(predict(params, top, bottom)).argmax(-1) == y).sum())
            count += BATCH
        acc = right / count
        print(f"epoch {epoch + 1}: loss {total / n:.4f}, test accuracy {acc:.4f}", flush=True)
    return acc


def train_keras(args, train, test) -> float:
    import keras

    keras.utils.set_random_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    model = seqdsl.load(HERE / "digit_halves.seq").build("keras", seed=args.seed)
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    for epoch in range(args.epochs):
        total, n = 0.0, 0
        for top, bottom, y in batches(*train, rng):
            model.reset_states()  # a new batch of images: zero states
            model.predict_on_batch(top)  # the first 4 rows: only the states matter
            loss = model.train_on_batch(bottom, y)
            total, n = total + float(loss) * BATCH, n + BATCH
        right = count = 0
        for top, bottom, y in batches(*test):
            model.reset_states()
            model.predict_on_batch(top)
            right += int((model.predict_on_batch(bottom).argmax(-1) == y).sum())
            count += BATCH
        acc = right / count
        print(f"epoch {epoch + 1}: loss {total / n:.4f}, test accuracy {acc:.4f}", flush=True)
    return acc


TRAIN = {"torch": train_torch, "jax": train_jax, "keras": train_keras}


def main(argv: list[str] | None = None) -> float:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--backend", choices=sorted(TRAIN), default="torch")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--limit", type=int, default=None, help="training examples (quick runs)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    train, test = full_images(args.seed, args.limit)
    return TRAIN[args.backend](args, train, test)


if __name__ == "__main__":
    main()
