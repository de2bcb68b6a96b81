"""Train examples/train/digit_rows.seq in JAX: jax.value_and_grad and optax, the
{"params", "state"} variables (BatchNormalization's moving statistics live in
"state" and come back from apply(..., return_state=True)), and a masked loss
over the per-step outputs (docs/training.md).

    python examples/train/train_jax.py [--epochs 15] [--limit N] [--seed 0]
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import numpy as np
import optax

import seqdsl
from seqdsl.runtime.jax import masked_mean
from seqdsl.weightsfile import save_weights

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from digits import digits, last_step_accuracy, recipe_arguments  # noqa: E402


def main(argv: list[str] | None = None) -> float:
    args = recipe_arguments(__doc__, argv)

    rng = np.random.default_rng(args.seed)  # shuffling
    key = jax.random.key(args.seed)  # dropout masks
    train, test = digits(args.seed, args.limit)
    model = seqdsl.load(HERE / "digit_rows.seq").build("jax", seed=args.seed)
    apply = model.apply  # the generated module's pure apply function
    params, state = model.variables["params"], model.variables["state"]
    opt = optax.adam(3e-3)
    opt_state = opt.init(params)

    def loss_fn(params, state, x, lengths, y_steps, key):
        (logits, mask), new_state = apply(
            {"params": params, "state": state},
            x,
            lengths={"rows": lengths},
            training=True,  # dropout on, BatchNormalization on batch moments
            rng=key,
            return_state=True,  # the updated moving statistics
        )
        per_step = optax.softmax_cross_entropy_with_integer_labels(logits, y_steps)  # [B, T]
        return masked_mean(per_step, mask), new_state  # the padded steps do not count

    @jax.jit
    def step(params, state, opt_state, x, lengths, y_steps, key):
        (loss, state), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, state, x, lengths, y_steps, key
        )
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), state, opt_state, loss

    predict = jax.jit(lambda variables, x, lengths: apply(variables, x, lengths={"rows": lengths}))

    for epoch in range(args.epochs):
        total, n = 0.0, 0
        for x, lengths, y_steps, _ in train.batches(args.batch_size, rng):
            key, sub = jax.random.split(key)
            params, state, opt_state, loss = step(
                params, state, opt_state, x, lengths, y_steps, sub
            )
            total, n = total + float(loss) * len(x), n + len(x)
        logits, _mask = predict({"params": params, "state": state}, test.x, test.lengths)
        acc = last_step_accuracy(np.asarray(logits), test.lengths, test.y)
        print(f"epoch {epoch + 1}: loss {total / n:.4f}, test accuracy {acc:.4f}", flush=True)
    model.variables = {"params": params, "state": state}  # the trained model, for later calls
    if args.save:  # canonical weights: any backend, or `seqdsl run --weights`, loads them
        save_weights(args.save, model.canonical_weights())
    return acc


if __name__ == "__main__":
    main()
