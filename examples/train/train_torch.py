"""Train examples/train/digit_rows.seq in PyTorch: a plain loop with an optimizer
and a masked loss over the per-step outputs (docs/training.md).

    python examples/train/train_torch.py [--epochs 15] [--limit N] [--seed 0]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import seqdsl
from seqdsl.runtime.torch import masked_mean
from seqdsl.weightsfile import save_weights

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from digits import digits, last_step_accuracy, recipe_arguments  # noqa: E402


def main(argv: list[str] | None = None) -> float:
    args = recipe_arguments(__doc__, argv)

    torch.manual_seed(args.seed)  # dropout masks
    rng = np.random.default_rng(args.seed)  # shuffling
    train, test = digits(args.seed, args.limit)
    net = seqdsl.load(HERE / "digit_rows.seq").build("torch", seed=args.seed)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)

    for epoch in range(args.epochs):
        net.train()  # dropout on, BatchNormalization on batch moments (valid steps only)
        total, n = 0.0, 0
        for x, lengths, y_steps, _ in train.batches(args.batch_size, rng):
            logits, mask = net(torch.from_numpy(x), lengths={"rows": torch.from_numpy(lengths)})
            per_step = F.cross_entropy(
                logits.transpose(1, 2), torch.from_numpy(y_steps).long(), reduction="none"
            )  # [B, T]
            loss = masked_mean(per_step, mask)  # the padded steps do not count
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, n = total + float(loss.detach()) * len(x), n + len(x)
        acc = evaluate(net, test)
        print(f"epoch {epoch + 1}: loss {total / n:.4f}, test accuracy {acc:.4f}", flush=True)
    if args.save:  # canonical weights: any backend, or `seqdsl run --weights`, loads them
        save_weights(args.save, net.canonical_weights())
    return acc


def evaluate(net, split) -> float:
    net.eval()  # BatchNormalization on its moving statistics, no dropout
    with torch.no_grad():
        logits, _mask = net(
            torch.from_numpy(split.x), lengths={"rows": torch.from_numpy(split.lengths)}
        )
    return last_step_accuracy(logits.numpy(), split.lengths, split.y)


if __name__ == "__main__":
    main()
