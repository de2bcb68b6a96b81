"""torch's fused LSTM op with the weights as the emitted modules hand them over.

    /work/venv/bin/python bench/torch_weight_layout.py [--sizes 1x16x64,32x128x256,32x16x1024]
        [--clock cpu]

One layer (F = U), per size: inference with strided views of Keras-layout weights
(kernel.t(), recurrent_kernel.t(), made on every call: the generated code before
fused_weights()), with contiguous copies made on every call, and with contiguous
copies made once (fused_weights()' cache); training (forward + backward) with the
views and with the copies. Interleaved, median of the repeats, 1 thread; the
outputs are compared bit for bit.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch


def one_size(size: str, repeat: int, now: Callable[[], float]) -> str:
    """The measurements at one BxTxU, as a line of text."""
    b, t, u = map(int, size.split("x"))
    torch.manual_seed(0)
    kernel = (torch.randn(u, 4 * u) * 0.1).requires_grad_()  # Keras layout [F, 4U]
    recurrent = (torch.randn(u, 4 * u) * 0.1).requires_grad_()
    bias = torch.zeros(4 * u, requires_grad=True)
    x = torch.randn(b, t, u)
    h0 = torch.zeros(1, b, u)

    def views() -> list[torch.Tensor]:
        return [kernel.t(), recurrent.t(), bias, torch.zeros_like(bias)]

    def copies() -> list[torch.Tensor]:
        return [w.contiguous() for w in views()]

    with torch.no_grad():
        cached = copies()

    def run(weights: list[torch.Tensor]) -> torch.Tensor:
        grad = torch.is_grad_enabled()
        return torch.lstm(x, (h0, h0), weights, True, 1, 0.0, grad, False, True)[0]

    def infer(make: Callable[[], list[torch.Tensor]]) -> Callable[[], object]:
        def f() -> object:
            with torch.no_grad():
                return run(make())

        return f

    def train(make: Callable[[], list[torch.Tensor]]) -> Callable[[], object]:
        def f() -> object:
            run(make()).square().mean().backward()
            return None

        return f

    with torch.no_grad():
        same = torch.equal(run(views()), run(cached))
    variants = {
        "inference views": infer(views),
        "inference copies": infer(copies),
        "inference cached": infer(lambda: cached),
        "train views": train(views),
        "train copies": train(copies),
    }
    for f in variants.values():
        f()
    t0 = now()
    variants["inference views"]()
    inner = max(1, int(0.02 / max(now() - t0, 1e-6)))
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(repeat):
        for k, f in variants.items():
            n = inner if k.startswith("inference") else max(1, inner // 4)
            t0 = now()
            for _ in range(n):
                f()
            times[k].append((now() - t0) / n * 1e3)
    med = {k: statistics.median(v) for k, v in times.items()}
    return (
        f"B={b} T={t} U={u}: "
        + ", ".join(f"{k} {v:.3f}" for k, v in med.items())
        + f"; outputs views == cached: {same}"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1x16x64,32x128x256,32x16x1024", help="BxTxU,...")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--clock", choices=("wall", "cpu"), default="cpu", help="elapsed or CPU time")
    a = ap.parse_args()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    now = time.perf_counter if a.clock == "wall" else time.process_time
    print(f"torch {torch.__version__}, 1 thread, {a.clock} ms, median of {a.repeat}")
    for size in a.sizes.split(","):
        print(one_size(size, a.repeat, now), flush=True)


if __name__ == "__main__":
    main()
