"""Deployed forms of a generated model against eager torch, side by side in one run.

    python bench/deploy.py [--examples sentiment_lstm,bilstm_tagger,gru_pre_padding]
        [--batch 32] [--steps 100] [--repeat 30] [--clock wall|cpu]

For each example (masked inputs at random lengths, pad side as declared), inference
on 1 thread of:

- eager torch: the generated module as it is (its CPU fast paths: the cut to the
  longest row, packing by the measured rule, cached weights);
- torch.compile(backend="aot_eager") and torch.export.export(...).module(): the
  shape-static path a traced graph takes;
- onnxruntime on `seqdsl export --format onnx` of the same weights.

The calls are interleaved round by round; each figure is the median of the rounds,
and each ratio is over eager torch in the same round. Outputs are compared with
eager torch (max abs difference). A form that fails says why in its cell. Writes
bench/results/deploy_cpu.json with the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

import seqdsl  # noqa: E402

DEFAULT = ("sentiment_lstm", "bilstm_tagger", "gru_pre_padding", "rnn_guide_lstm")


def inputs_for(model: Any, batch: int, steps: int, rng: np.random.Generator) -> tuple[list, dict]:
    """Random inputs of the declared types, with lengths for the masked ones."""
    arrays, lengths = [], {}
    for decl in model.model.inputs:
        t = model.types[decl.name]
        shape = []
        for i, d in enumerate(t.shape):
            v = getattr(d, "value", None)
            shape.append(v if isinstance(v, int) else (batch if i == 0 else steps))
        if t.dtype in ("i32", "i64"):
            arrays.append(rng.integers(1, 20, size=shape).astype(np.int64))
        else:
            arrays.append(rng.normal(size=shape).astype(np.float32))
        if decl.name in model.pads:
            lengths[decl.name] = rng.integers(1, shape[1] + 1, size=shape[0])
    # padding where the lengths say, so that ids != 0 masks agree with the lengths
    for decl, x in zip(model.model.inputs, arrays, strict=True):
        if decl.name in lengths:
            for b, n in enumerate(lengths[decl.name]):
                if model.pads[decl.name].side == "post":
                    x[b, n:] = 0
                else:
                    x[b, : x.shape[1] - n] = 0
    return arrays, lengths


def bench_example(name: str, batch: int, steps: int, repeat: int, now: Callable[[], float]) -> dict:
    import torch

    prog = seqdsl.load(ROOT / "examples" / f"{name}.seq")
    model = prog.model()
    net = prog.build("torch", seed=0)
    net.eval()
    rng = np.random.default_rng(0)
    arrays, lengths = inputs_for(model, batch, steps, rng)
    masked = {d.name for d in model.model.inputs if d.masked}
    targs = [torch.as_tensor(a) for a in arrays]
    tkw = (
        {"lengths": {k: torch.as_tensor(v) for k, v in lengths.items() if k in masked}}
        if masked
        else {}
    )

    def first(out: Any) -> np.ndarray:
        while isinstance(out, (tuple, list)):
            out = out[0]
        return out.detach().numpy() if hasattr(out, "detach") else np.asarray(out)

    forms: dict[str, Callable[[], Any]] = {}
    notes: dict[str, str] = {}

    def eager() -> Any:
        with torch.no_grad():
            return net(*targs, **tkw)

    forms["eager torch"] = eager
    try:
        compiled = torch.compile(net, backend="aot_eager", dynamic=False)

        def run_compiled() -> Any:
            with torch.no_grad():
                return compiled(*targs, **tkw)

        run_compiled()
        forms["torch.compile"] = run_compiled
    except Exception as e:  # noqa: BLE001 - the report says what failed
        notes["torch.compile"] = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
    try:
        exported = torch.export.export(net, tuple(targs), tkw).module()

        def run_exported() -> Any:
            with torch.no_grad():
                return exported(*targs, **tkw)

        run_exported()
        forms["torch.export"] = run_exported
    except Exception as e:  # noqa: BLE001
        notes["torch.export"] = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
    try:
        import onnxruntime as ort

        weights = {k: np.asarray(v) for k, v in net.canonical_weights().items()}
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(
            prog.export_onnx(weights=weights), opts, providers=["CPUExecutionProvider"]
        )
        feed: dict[str, np.ndarray] = {}
        for decl, a in zip(model.model.inputs, arrays, strict=True):
            feed[decl.name] = a if a.dtype != np.int64 else a.astype(np.int64)
            if decl.name in masked:
                feed[f"{decl.name}_lengths"] = lengths[decl.name].astype(np.int64)
        names = {i.name: i.type for i in sess.get_inputs()}
        for k in list(feed):
            if names.get(k) == "tensor(int32)":
                feed[k] = feed[k].astype(np.int32)

        def run_onnx() -> Any:
            return sess.run(None, feed)

        run_onnx()
        forms["onnxruntime"] = run_onnx
    except Exception as e:  # noqa: BLE001
        notes["onnxruntime"] = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"

    reference = first(eager())
    diffs = {k: float(np.abs(first(f()) - reference).max()) for k, f in forms.items()}
    times: dict[str, list[float]] = {k: [] for k in forms}
    for _ in range(repeat):
        for k, f in forms.items():
            t0 = now()
            f()
            times[k].append(now() - t0)
    ratios = {
        k: statistics.median(a / b for a, b in zip(times[k], times["eager torch"], strict=True))
        for k in forms
    }
    return {
        "example": name,
        "batch": batch,
        "steps": steps,
        "ms": {k: 1000 * statistics.median(v) for k, v in times.items()},
        "ratio_to_eager": ratios,
        "max_abs_diff_to_eager": diffs,
        "failed": notes,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", default=",".join(DEFAULT))
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "deploy_cpu.json")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    now = time.process_time if args.clock == "cpu" else time.perf_counter
    rows = [
        bench_example(n, args.batch, args.steps, args.repeat, now) for n in args.examples.split(",")
    ]
    forms = ("eager torch", "torch.compile", "torch.export", "onnxruntime")
    print(f"B={args.batch} T={args.steps}, 1 thread, median of {args.repeat} interleaved rounds")
    print(f"| example | {' | '.join(forms)} |")
    print("|---|" + "---|" * len(forms))
    for r in rows:
        cells = []
        for f in forms:
            if f in r["ms"]:
                ratio = "" if f == "eager torch" else f" ({r['ratio_to_eager'][f]:.2f}x)"
                cells.append(
                    f"{r['ms'][f]:.2f} ms{ratio}, diff {r['max_abs_diff_to_eager'][f]:.1e}"
                )
            else:
                cells.append(f"failed: {r['failed'].get(f, '?')}")
        print(f"| {r['example']} | {' | '.join(cells)} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "machine": {
                    "cpu": platform.processor() or platform.machine(),
                    "cores": os.cpu_count(),
                },
                "versions": {"torch": torch.__version__},
                "clock": args.clock,
                "rows": rows,
            },
            indent=2,
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
