"""Post (right-padded) masks on torch's fused RNN ops: packed vs padded + gather.

    /work/venv/bin/python bench/torch_packed_vs_gather.py [--cell lstm] [--B 32 --T 128 --U 256]
        [--valid-from 0.0] [--threads 1] [--clock cpu]

Lengths are uniform in [1, T], or in [valid_from * T, T] (about (1 + valid_from) / 2
of the steps valid). The numbers behind pack_rows() in the emitted modules
(docs/backend-torch.md).

A: pack_padded_sequence(enforce_sorted=False) -> torch.lstm (packed overload) ->
   pad_packed_sequence(total_length=T): final states come from the kernel.
B: torch.lstm on the whole padded batch (padding is processed), outputs zeroed
   past each length, last output gathered at length-1 (cannot give LSTM's c).
C: the unmasked baseline (no lengths at all).
Runs are interleaved; the min and the median of the repeats are printed (ms),
for inference and for forward + backward.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cell", default="lstm", choices=["lstm", "gru"])
    ap.add_argument("--B", type=int, default=32)
    ap.add_argument("--T", type=int, default=128)
    ap.add_argument("--F", type=int, default=256)
    ap.add_argument("--U", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--valid-from", type=float, default=0.0, help="shortest length, x T")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall", help="elapsed or CPU time")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.set_flush_denormal(True)  # as bench/run.py
    now = time.perf_counter if a.clock == "wall" else time.process_time
    torch.manual_seed(0)
    g = 4 if a.cell == "lstm" else 3
    op = torch.lstm if a.cell == "lstm" else torch.gru
    params = [
        (torch.randn(g * a.U, a.F) * 0.05).requires_grad_(),
        (torch.randn(g * a.U, a.U) * 0.05).requires_grad_(),
        torch.zeros(g * a.U, requires_grad=True),
        torch.zeros(g * a.U),
    ]
    x = torch.randn(a.B, a.T, a.F)
    lengths = torch.randint(max(1, round(a.valid_from * a.T)), a.T + 1, (a.B,))
    mask = torch.arange(a.T)[None, :] < lengths[:, None]
    h0 = torch.zeros(1, a.B, a.U)
    hx = (h0, h0) if a.cell == "lstm" else h0

    def packed() -> torch.Tensor:
        p = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        h = (
            tuple(s.index_select(1, p.sorted_indices) for s in hx)
            if a.cell == "lstm"
            else hx.index_select(1, p.sorted_indices)
        )
        res = op(p.data, p.batch_sizes, h, params, True, 1, 0.0, False, False)
        y, _ = pad_packed_sequence(
            type(p)(res[0], p.batch_sizes, p.sorted_indices, p.unsorted_indices),
            batch_first=True,
            total_length=a.T,
        )
        h_n = res[1].index_select(1, p.unsorted_indices)
        return y.sum() + h_n.sum()

    def gather() -> torch.Tensor:
        res = op(x, hx, params, True, 1, 0.0, False, False, True)
        y = res[0] * mask[..., None]
        last = y.gather(1, (lengths - 1).view(-1, 1, 1).expand(-1, 1, a.U))[:, 0]
        return y.sum() + last.sum()

    def unmasked() -> torch.Tensor:
        res = op(x, hx, params, True, 1, 0.0, False, False, True)
        return res[0].sum() + res[1][0].sum() if a.cell == "lstm" else res[0].sum() + res[1].sum()

    def once(fn, grad: bool) -> float:
        t0 = now()
        if grad:
            fn().backward()
        else:
            with torch.no_grad():
                fn()
        return (now() - t0) * 1e3

    variants = (("packed", packed), ("padded+gather", gather), ("unmasked", unmasked))
    times: dict[tuple[str, bool], list[float]] = {
        (n, g): [] for n, _ in variants for g in (False, True)
    }
    for i in range(
        a.repeat + 2
    ):  # interleaved, so that load from other processes hits every variant alike
        for name, fn in variants:
            for grad in (False, True):
                t = once(fn, grad)
                if i >= 2:
                    times[name, grad].append(t)
    print(
        f"{a.cell} B={a.B} T={a.T} F={a.F} U={a.U} threads={torch.get_num_threads()} torch {torch.__version__}"
    )
    print(
        f"lengths: mean {lengths.float().mean():.1f}, min {lengths.min()}, max {lengths.max()} "
        f"({float(lengths.sum()) / (a.B * float(lengths.max())):.0%} of the steps up to the longest "
        f"row valid); {a.clock} ms, min / median of {a.repeat}"
    )
    for name, _ in variants:
        inf, fb = times[name, False], times[name, True]
        print(
            f"{name:>14}: inference {min(inf):7.2f} / {statistics.median(inf):7.2f}"
            f"   forward+backward {min(fb):7.2f} / {statistics.median(fb):7.2f}"
        )
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"packed / padded+gather: inference {med['packed', False] / med['padded+gather', False]:.2f}"
        f", forward+backward {med['packed', True] / med['padded+gather', True]:.2f}"
    )


if __name__ == "__main__":
    main()
