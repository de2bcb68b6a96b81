"""Train examples/train/digit_rows.seq in Keras: compile and fit, as any Keras
model. The model returns `logits with mask`; fit sees the logits with their
Keras mask, so the loss averages over the valid steps (docs/training.md).

    python examples/train/train_keras.py [--epochs 15] [--limit N] [--seed 0]
"""

from __future__ import annotations

import sys
from pathlib import Path

import keras

import seqdsl
from seqdsl.weightsfile import save_weights

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from digits import digits, last_step_accuracy, recipe_arguments  # noqa: E402


def main(argv: list[str] | None = None) -> float:
    args = recipe_arguments(__doc__, argv)

    keras.utils.set_random_seed(args.seed)  # Python, NumPy and the backend: dropout, shuffling
    train, test = digits(args.seed, args.limit)
    model = seqdsl.load(HERE / "digit_rows.seq").build("keras", seed=args.seed)
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    accuracies: list[float] = []

    def evaluate(epoch: int, logs: dict) -> None:
        logits, _mask = model.predict([test.x, test.lengths], verbose=0)  # (value, mask)
        accuracies.append(last_step_accuracy(logits, test.lengths, test.y))
        print(f"epoch {epoch + 1}: loss {logs['loss']:.4f}, test accuracy {accuracies[-1]:.4f}")

    # inputs: the rows, then their lengths (the `masked` input's second Keras input)
    model.fit(
        [train.x, train.lengths],
        train.y_steps,  # one target per step; the padded ones are masked out of the loss
        batch_size=args.batch_size,
        epochs=args.epochs,
        verbose=0,
        callbacks=[keras.callbacks.LambdaCallback(on_epoch_end=evaluate)],
    )
    if args.save:  # canonical weights: any backend, or `seqdsl run --weights`, loads them
        save_weights(args.save, model.canonical_weights())
    return accuracies[-1]


if __name__ == "__main__":
    main()
