"""Cell blocks vs built-in layers on the torch backend (CPU).

    PYTHONPATH=. /work/venv/bin/python bench/cells_torch.py [--quick] [--threads 1]

RNN(MyLSTMCell(U)) and RNN(MyGRUCell(U)) of examples/custom/builtin_cells.seq (a
per-step Python loop over the cell's equations, `x @ kernel` hoisted out of the
loop) against LSTM(U) and GRU(U) (torch's fused torch.lstm / torch.gru), with the
same canonical weights (the outputs are checked equal first), B=32, T=128,
F=U, U in (64, 256), return_sequences=true, without a mask and with a post mask
(lengths uniform in [1, T]): inference (no_grad) and one training step (forward,
sum of squares, backward, SGD step). Custom and built-in run interleaved in one
process (bench/suite/common.py: warm-up, rotated order, median of the samples);
the ratio custom / built-in is the ratio of the medians (and the median of the
per-round ratios). Writes bench/results/cells_torch_cpu.json (--quick:
cells_torch_cpu_quick.json).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from bench.suite.common import CpuMeter, load_average, machine, measure, versions  # noqa: E402

SRC = (ROOT / "examples" / "custom" / "builtin_cells.seq").read_text()
CELLS = SRC[: SRC.index("model CellsAsLayers")]
BUILTIN = {"lstm": ("MyLSTMCell", "LSTM"), "gru": ("MyGRUCell", "GRU")}


def models(cell: str, units: int, masked: bool) -> str:
    custom, builtin = BUILTIN[cell]
    decl = " pad(post) masked" if masked else ""
    out = []
    for name, layer in (("Custom", f"RNN({custom}({units})"), ("Builtin", f"{builtin}({units}")):
        out.append(
            f"model {name} {{\n    input x: f32[B, T, {units}]{decl}\n"
            f'    y = {layer}, return_sequences=true, name="rnn")(x)\n    output y\n}}\n'
        )
    return CELLS + "".join(out)


def row(cell: str, units: int, masked: bool, args: argparse.Namespace) -> list[dict[str, Any]]:
    import numpy as np
    import torch

    import seqdsl

    prog = seqdsl.loads(models(cell, units, masked), name="bench_cells.seq")
    nets = {
        "custom": prog.build("torch", seed=0, model="Custom"),
        "builtin": prog.build("torch", seed=0, model="Builtin"),
    }
    nets["custom"].load_canonical(nets["builtin"].canonical_weights())
    rng = np.random.default_rng(0)
    x = torch.as_tensor(rng.normal(size=(args.B, args.T, units)), dtype=torch.float32)
    kw: dict[str, Any] = {}
    if masked:
        kw["lengths"] = torch.as_tensor(rng.integers(1, args.T + 1, size=args.B))
    with torch.no_grad():  # the same numbers before timing anything
        ys = {k: n(x, **kw) for k, n in nets.items()}
    err = float((ys["custom"] - ys["builtin"]).abs().max())
    assert err < 1e-4, f"{cell} U={units}: custom and built-in differ by {err}"
    opts = {k: torch.optim.SGD(n.parameters(), lr=1e-3) for k, n in nets.items()}

    def infer(net: Any) -> Any:
        def f() -> None:
            with torch.no_grad():
                net(x, **kw)

        return f

    def train(name: str) -> Any:
        net, opt = nets[name], opts[name]

        def f() -> None:
            opt.zero_grad(set_to_none=True)
            net(x, **kw).square().sum().backward()
            opt.step()

        return f

    out = []
    for mode in ("inference", "train_step"):
        variants = (
            {k: infer(n) for k, n in nets.items()}
            if mode == "inference"
            else {k: train(k) for k in nets}
        )
        for n in nets.values():
            n.train(mode == "train_step")
        m = measure(variants, rounds=args.rounds, min_rounds=3, warmup=2, budget_s=args.budget)
        stats = m.stats()
        ratio = m.ratio("custom", "builtin")
        out.append(
            {
                "cell": cell,
                "units": units,
                "features": units,
                "mask": "post (lengths uniform in [1, T])" if masked else "none",
                "mode": mode,
                "custom_ms": stats["custom"],
                "builtin_ms": stats["builtin"],
                "ratio_custom_over_builtin": ratio,
                "max_abs_difference": err,
                "rounds": m.rounds,
            }
        )
        print(
            f"{cell:>4} U={units:<3} mask={'post' if masked else 'none':<4} {mode:<10} "
            f"custom {stats['custom']['median_ms']:9.2f} ms  builtin "
            f"{stats['builtin']['median_ms']:8.2f} ms  ratio {ratio['ratio']:6.2f} "
            f"(per round {ratio['per_round_median']:.2f})",
            flush=True,
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--B", type=int, default=32)
    ap.add_argument("--T", type=int, default=128)
    ap.add_argument("--units", default="64,256")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--budget", type=float, default=40.0, help="seconds per row (after 3 rounds)")
    ap.add_argument("--quick", action="store_true", help="2 rounds, T=32: a smoke run")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.T, args.budget = 2, 32, 2.0
    import torch

    torch.set_num_threads(args.threads)
    flushed = torch.set_flush_denormal(True)
    torch.manual_seed(0)
    meter, start_load, t0 = CpuMeter(), load_average(), time.time()
    rows = []
    for cell in ("lstm", "gru"):
        for units in (int(u) for u in args.units.split(",")):
            for masked in (False, True):
                rows += row(cell, units, masked, args)
    doc = {
        "benchmark": "cell blocks vs built-in recurrent layers, torch backend: bench/cells_torch.py",
        "command": "python bench/cells_torch.py" + (" --quick" if args.quick else ""),
        "shape": {"B": args.B, "T": args.T, "F": "= U"},
        "threads": args.threads,
        "torch_flush_denormal": flushed,
        "statistic": "median of interleaved samples after 2 warm-up rounds; ratio = custom / "
        "built-in medians (per_round_*: the per-round ratios)",
        "machine": machine(),
        "versions": versions("torch", "numpy"),
        "load": {"start": start_load, "end": load_average(), **meter.read()},
        "wall_s": round(time.time() - t0, 1),
        "rows": rows,
    }
    name = "cells_torch_cpu_quick.json" if args.quick else "cells_torch_cpu.json"
    path = Path(args.out) if args.out else HERE / "results" / name
    path.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
