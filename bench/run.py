"""The seqdsl benchmark suite: one command, a table per section, one JSON file.

    python bench/run.py                     # the full suite (12-20 min on 2 CPU cores)
    python bench/run.py --quick             # a smoke run of every section (< 2 min)
    python bench/run.py --only masks,keras  # some sections (names or numbers 1-5)
    python bench/run.py --only 1 --runtimes torch --cells lstm --sizes 32x128x256 --modes inference
                                            # a focused subset of the rows

Sections (docs/benchmarks.md explains every ratio and target):

  1 handwritten  generated models vs hand-written idiomatic ones: torch (nn.LSTM/nn.GRU,
                 packed or padded + gather, the faster) and JAX (lax.scan, two styles, the
                 faster); LSTM, GRU and Bidirectional(LSTM) stacks; inference and one
                 training step (forward + backward + SGD)
  2 masks        masked (post, pre, gaps) vs unmasked, same padded shape, torch and JAX
  3 keras        ours (native torch / JAX emission, our Keras emission) vs Keras 3 running
                 the same masked model, on Keras' tensorflow, torch and jax backends
  4 padding      one padded batch vs the same tokens unpadded; an epoch batched plainly vs
                 with seqdsl.batching.bucket_batches
  5 compile      check + emit (torch, jax, keras) of 10 to 1000-layer models
  6 deploy       deployed forms against eager torch (inference): torch.compile,
                 torch.export(...).module(), onnxruntime on `seqdsl export --format onnx`,
                 on example models (bench/deploy.py runs the same rows alone)

Every framework runs in its own subprocess (one per Keras backend), pinned to
``--threads`` intra-op threads (default 1: see docs/benchmarks.md for why).
Writes bench/results/suite_cpu.json (--quick: suite_cpu_quick.json; --only:
suite_cpu_only_<sections>.json, with _subset when rows are filtered; --out overrides).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from suite import common  # noqa: E402
from suite.report import render, targets  # noqa: E402

SECTIONS = ("handwritten", "masks", "keras", "padding", "compile", "deploy")
RUNTIMES = ("torch", "jax", "keras-tensorflow", "keras-torch", "keras-jax")


def _row(cell: str, b: int, t: int, u: int, **extra: Any) -> dict[str, Any]:
    return {"cell": cell, "B": b, "T": t, "U": u, **extra}


def _deploy(example: str, b: int, t: int) -> dict[str, Any]:
    """A deploy row: an example model at batch b and time t (U: the example's own)."""
    return {"cell": "example", "example": example, "B": b, "T": t, "U": 0}


S, M = (1, 16, 64), (32, 128, 256)

#: rows per section and runtime. "opts" overrides the timing options of a row.
FULL: dict[str, dict[str, list[dict[str, Any]]]] = {
    "handwritten": {
        rt: [
            *(_row(c, *S) for c in ("lstm", "gru", "bilstm")),
            *(_row(c, *M) for c in ("lstm", "gru", "bilstm")),
            *(_row(c, 256, 16, 64) for c in ("lstm", "gru", "bilstm")),
            *(_row(c, 1, 512, 64) for c in ("lstm", "gru", "bilstm")),
            _row("lstm", 32, 512, 256, opts={"rounds": 6, "budget_s": 20}),
            _row("lstm", 32, 16, 1024, opts={"rounds": 6, "budget_s": 20}),
        ]
        for rt in ("torch", "jax")
    },
    "masks": {
        rt: [
            _row("lstm", *S),
            _row("lstm", *M),
            _row("gru", *M),
            _row("bilstm", *M),
            _row("lstm", 1, 512, 64),
        ]
        for rt in ("torch", "jax")
    },
    "keras": {
        rt: [_row("lstm", *S), _row("lstm", *M), _row("gru", *M)]
        for rt in ("keras-tensorflow", "keras-torch", "keras-jax")
    },
    "padding": {rt: [_row("lstm", *M, n_batches=8, n_buckets=8)] for rt in ("torch", "jax")},
    "compile": {"main": [{"sizes": [10, 30, 100, 300, 1000], "runs": 5}]},
    "deploy": {
        "torch": [
            _deploy(e, 32, 100)
            for e in ("sentiment_lstm", "bilstm_tagger", "gru_pre_padding", "rnn_guide_lstm")
        ]
    },
}

Q = (8, 32, 64)
QUICK: dict[str, dict[str, list[dict[str, Any]]]] = {
    "handwritten": {rt: [_row("lstm", *Q)] for rt in ("torch", "jax")},
    "masks": {rt: [_row("lstm", *Q)] for rt in ("torch", "jax")},
    "keras": {
        rt: [_row("lstm", *Q, modes=("inference",))]
        for rt in ("keras-tensorflow", "keras-torch", "keras-jax")
    },
    "padding": {rt: [_row("lstm", *Q, n_batches=4, n_buckets=4)] for rt in ("torch",)},
    "compile": {"main": [{"sizes": [10, 100, 1000], "runs": 3}]},
    "deploy": {"torch": [_deploy("bilstm_tagger", 8, 32)]},
}

FULL_OPTS = {"rounds": 10, "min_rounds": 5, "warmup": 2, "budget_s": 10.0}
QUICK_OPTS = {"rounds": 3, "min_rounds": 3, "warmup": 1, "budget_s": 2.0}

#: what the grid leaves out, and why (printed, saved, and in docs/benchmarks.md)
CUT = [
    "The full grid (batch {1, 32, 256} x T {16, 128, 512} x units {64, 256, 1024}, 27 sizes, "
    "x 3 cells x 2 frameworks x 2 modes) would take hours on 2 CPU cores; the suite runs a "
    "diagonal and the corners that stress something different:",
    "  kept: B=1 T=16 U=64 (per-call overhead), B=32 T=128 U=256 (the centre), B=256 T=16 "
    "U=64 (wide batch, short rows), B=1 T=512 U=64 (per-step overhead of long sequences), "
    "LSTM only: B=32 T=512 U=256 (long) and B=32 T=16 U=1024 (wide units).",
    "  cut: the far end of the diagonal, B=256 T=512 U=1024 (about 4 TFLOP per two-layer "
    "forward pass: about a minute per call here, x 3 for a training step), and every size "
    "whose forward pass costs more than about 30 GFLOP (0.5-2 s per call, 2-6 s per "
    "training step, x 3 options x 5-10 rounds x 2 frameworks): U=1024 with T >= 128 or B=256, "
    "B=256 with T >= 128 and U >= 256, T=512 with B=256. Cheaper sizes not listed were left "
    "out for the total time; GRU and Bidirectional run the kept long and wide sizes through "
    "the same kernels as LSTM and were cut there for time.",
    "  masks (section 2): LSTM at B=1 T=16 U=64, B=1 T=512 U=64 and the centre; GRU and "
    "Bidirectional at the centre. Keras (section 3): LSTM and GRU at the centre, LSTM at "
    "B=1 T=16 U=64 (Bidirectional cut for time; Keras' torch backend loops over the steps in "
    "Python, so long sequences are cut too). "
    "Padding (section 4): the centre, LSTM.",
    "  GPU: none was available, so there is no GPU table.",
]


# --------------------------------------------------------------------------
# workers


def _thread_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if threads > 0:
        n = str(threads)
        env.update(
            OMP_NUM_THREADS=n,
            MKL_NUM_THREADS=n,
            OPENBLAS_NUM_THREADS=n,
            TF_NUM_INTRAOP_THREADS=n,
            TF_NUM_INTEROP_THREADS=n,
        )
        flags = env.get("XLA_FLAGS", "")
        if threads == 1:
            flags += " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        else:
            flags += f" intra_op_parallelism_threads={threads}"
        env["XLA_FLAGS"] = flags.strip()
    return env


def worker(runtime: str, job_path: Path) -> int:
    """Run one runtime's rows; append each result as a JSON line to job['result']."""
    job = json.loads(job_path.read_text(encoding="utf-8"))
    threads = job["threads"]
    out = Path(job["result"])
    info: dict[str, Any] = {"runtime": runtime}
    if runtime == "torch" or runtime == "keras-torch":
        import torch

        if threads > 0:
            torch.set_num_threads(threads)
        info["torch_threads"] = torch.get_num_threads()
        # XLA (JAX) and TensorFlow flush denormals on CPU; torch does not by default, and
        # gradients decaying through long padded stretches become denormal and slow its
        # matmuls 10-30x (docs/benchmarks.md). Flush, unless asked to keep them.
        info["torch_flush_denormal"] = job["flush_denormal"] and torch.set_flush_denormal(True)
    if runtime.startswith("keras"):
        from suite import keras_jobs as jobs
    elif runtime == "torch":
        from suite import torch_jobs as jobs  # type: ignore[no-redef]
    else:
        from suite import jax_jobs as jobs  # type: ignore[no-redef]
    if runtime in ("jax", "keras-jax"):
        import jax

        info["jax_devices"] = [str(d) for d in jax.devices()]
    with out.open("a", encoding="utf-8") as f:
        f.write(json.dumps({"info": info}) + "\n")
    for section, rows in job["sections"].items():
        fn = jobs.SECTIONS[section]
        for row in rows:
            opts = {**job["opts"], **row.get("opts", {})}
            spec = {k: v for k, v in row.items() if k != "opts"}
            load0, cpu0 = common.load_average(), common.CpuMeter()
            t0 = time.perf_counter()
            try:
                results = fn(spec, opts)
                error = None
            except Exception as e:  # report the row as failed, go on with the others
                import traceback

                results, error = [], f"{type(e).__name__}: {e}"
                traceback.print_exc()
            load = {"before": load0, "after": common.load_average(), **cpu0.read()}
            with out.open("a", encoding="utf-8") as f:
                if error:
                    rec = {"section": section, "runtime": runtime, "row": spec, "error": error}
                    f.write(json.dumps(rec) + "\n")
                for r in results:
                    r["load"] = load
                    f.write(json.dumps(r) + "\n")
            took = time.perf_counter() - t0
            print(
                f"  [{runtime}] {section} {spec.get('cell')} "
                f"B={spec.get('B')} T={spec.get('T')} U={spec.get('U')}: "
                f"{'FAILED ' + error if error else 'done'} in {took:.0f} s",
                file=sys.stderr,
                flush=True,
            )
    return 0


def run_worker(
    runtime: str,
    sections: dict[str, list[dict[str, Any]]],
    opts: dict[str, Any],
    threads: int,
    flush_denormal: bool,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    with tempfile.TemporaryDirectory(prefix="seqdsl-bench-") as tmp:
        job = Path(tmp) / "job.json"
        result = Path(tmp) / "result.jsonl"
        job.write_text(
            json.dumps(
                {
                    "sections": sections,
                    "opts": opts,
                    "threads": threads,
                    "flush_denormal": flush_denormal,
                    "result": str(result),
                }
            ),
            encoding="utf-8",
        )
        env = _thread_env(threads)
        if runtime.startswith("keras-"):
            env["KERAS_BACKEND"] = runtime.split("-", 1)[1]
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--worker",
            runtime,
            "--job",
            str(job),
        ]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, cwd=str(ROOT))
        info: dict[str, Any] = {
            "returncode": proc.returncode,
            "wall_s": round(time.perf_counter() - t0, 1),
        }
        rows: list[dict[str, Any]] = []
        if result.exists():
            for line in result.read_text(encoding="utf-8").splitlines():
                rec = json.loads(line)
                if "info" in rec:
                    info.update(rec["info"])
                else:
                    rows.append(rec)
    return info, rows


# --------------------------------------------------------------------------
# main


def _parse_only(text: str | None) -> list[str]:
    if not text:
        return list(SECTIONS)
    out = []
    for part in text.split(","):
        part = part.strip().lower()
        if part.isdigit() and 1 <= int(part) <= len(SECTIONS):
            part = SECTIONS[int(part) - 1]
        if part not in SECTIONS:
            raise SystemExit(
                f"unknown section {part!r}; choose from {', '.join(SECTIONS)} or 1-{len(SECTIONS)}"
            )
        out.append(part)
    return [s for s in SECTIONS if s in out]


def _select(
    plan: dict[str, dict[str, list[dict[str, Any]]]], args: argparse.Namespace
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """The plan restricted to the rows that --runtimes, --cells, --sizes and --modes keep."""
    runtimes = set(args.runtimes.split(",")) if args.runtimes else None
    cells = set(args.cells.split(",")) if args.cells else None
    sizes = set(args.sizes.split(",")) if args.sizes else None
    modes = tuple(args.modes.split(",")) if args.modes else None
    out: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for section, by_rt in plan.items():
        out[section] = {}
        for rt, rows in by_rt.items():
            if section != "compile" and runtimes is not None and rt not in runtimes:
                continue
            kept = []
            for row in rows:
                if section == "compile":
                    kept.append(row)
                    continue
                if cells is not None and row["cell"] not in cells:
                    continue
                if sizes is not None and f"{row['B']}x{row['T']}x{row['U']}" not in sizes:
                    continue
                if modes is not None:
                    row = {**row, "modes": tuple(m for m in row.get("modes", MODES) if m in modes)}
                    if not row["modes"]:
                        continue
                kept.append(row)
            if kept:
                out[section][rt] = kept
    return out


MODES = ("inference", "train")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="a smoke run of every section (< 2 min)")
    ap.add_argument("--only", metavar="SECTIONS", help="comma-separated section names or numbers")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="intra-op threads per framework (default 1; 0 = each framework's default)",
    )
    ap.add_argument(
        "--keep-denormals",
        action="store_true",
        help="leave torch's denormal handling alone (default: flush, as XLA and TensorFlow do)",
    )
    ap.add_argument("--out", type=Path, help="JSON output path")
    ap.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="time samples by elapsed time (default) or by the worker's CPU time, which "
        "leaves out the time spent waiting for a core on a machine shared with other jobs",
    )
    ap.add_argument(
        "--runtimes", help=f"only these workers, comma-separated: {', '.join(RUNTIMES)}"
    )
    ap.add_argument("--cells", help="only these cells, comma-separated: lstm, gru, bilstm")
    ap.add_argument("--sizes", help="only these sizes, comma-separated BxTxU, e.g. 32x128x256")
    ap.add_argument("--modes", help="only these modes, comma-separated: inference, train")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--job", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args.worker, args.job)

    sections = _parse_only(args.only)
    plan = _select(QUICK if args.quick else FULL, args)
    subset = any((args.runtimes, args.cells, args.sizes, args.modes))
    opts = {**(QUICK_OPTS if args.quick else FULL_OPTS), "clock": args.clock}
    if args.out:
        out = args.out
    elif args.only or subset:
        out = (
            HERE
            / "results"
            / f"suite_cpu_only_{'_'.join(sections)}{'_quick' if args.quick else ''}"
            f"{'_subset' if subset else ''}.json"
        )
    else:
        out = HERE / "results" / ("suite_cpu_quick.json" if args.quick else "suite_cpu.json")
    command = "python bench/run.py" + "".join(
        f" {a}" for a in (argv if argv is not None else sys.argv[1:])
    )
    print(f"{command}: sections {', '.join(sections)}; threads {args.threads or 'default'}")
    for line in CUT:
        print(line)
    t_start = time.perf_counter()
    load_start = common.load_average()
    meter = common.CpuMeter()
    results: dict[str, list[dict[str, Any]]] = {s: [] for s in sections}
    workers: dict[str, Any] = {}
    for rt in RUNTIMES:
        job = {s: plan[s][rt] for s in sections if s != "compile" and rt in plan[s]}
        if not job:
            continue
        print(f"== {rt}: {', '.join(f'{s} ({len(r)} rows)' for s, r in job.items())}", flush=True)
        info, rows = run_worker(rt, job, opts, args.threads, not args.keep_denormals)
        workers[rt] = info
        for r in rows:
            results[r["section"]].append(r)
    if "compile" in sections:
        from suite import compile_jobs

        spec = plan["compile"]["main"][0]
        print(f"== compile: {spec['sizes']} layers, median of {spec['runs']}", flush=True)
        c0 = common.CpuMeter()
        rows = compile_jobs.run(spec["sizes"], spec["runs"], args.clock)
        for r in rows:
            r["load"] = c0.read()
        results["compile"] = rows
    doc: dict[str, Any] = {
        "benchmark": "seqdsl suite: bench/run.py (docs/benchmarks.md)",
        "command": command,
        "quick": args.quick,
        "sections": sections,
        "threads": args.threads,
        "torch_flush_denormal": not args.keep_denormals,
        "timing": opts,
        "statistic": "median of interleaved samples after warm-up; spread: min, p25, p75, max, IQR%",
        "machine": common.machine(),
        "versions": common.versions(
            "torch", "jax", "jaxlib", "keras", "tensorflow", "tensorflow-cpu", "numpy"
        ),
        "load": {
            "start": load_start,
            "end": common.load_average(),
            **meter.read(),
        },
        "wall_s": round(time.perf_counter() - t_start, 1),
        "workers": workers,
        "cut": CUT,
        "results": results,
    }
    doc["targets"] = targets(doc)
    text = render(doc)
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    failed = [r for rs in results.values() for r in rs if "error" in r]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
