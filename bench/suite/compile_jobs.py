"""Section 5: compile time, check + emit, for generated models of 10 to 1000 layers.

The models are bench/bench_check.py's generator (recurrent layers, strided
convolutions, TemporalSplit/concat on time, repeat blocks, Bidirectional,
merges). Timed in-process, after one warm-up, median of ``runs``:

  check  seqdsl.analyze: parse + lower + check
  emit   seqdsl.emit.emit(model, backend): the module text (no framework imported)

Target: check + emit of a 1000-layer model in under 0.2 s, per backend.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path
from typing import Any

from .common import CLOCKS, summarize

HERE = Path(__file__).resolve().parent.parent
TARGET_MS = 200.0


def _generate(n: int) -> str:
    sys.path.insert(0, str(HERE))
    import bench_check

    return bench_check.generate(n)


def run(sizes: list[int], runs: int, clock: str = "wall") -> list[dict[str, Any]]:
    import seqdsl
    from seqdsl.emit import BACKENDS, emit

    backends = [b for b in ("torch", "jax", "keras") if b in BACKENDS]
    now = CLOCKS[clock]
    rows = []
    for n in sizes:
        text = _generate(n)
        name = f"bench{n}.seq"
        prog, diags = seqdsl.analyze(text, name)  # warm-up
        if prog is None or any(d.is_error for d in diags):
            raise SystemExit(f"the generated {n}-layer model does not check")
        model = prog.model()
        skipped: dict[str, str] = {}
        for b in list(backends):
            try:
                emit(model, b, name)  # warm-up
            except Exception as e:  # a backend that cannot emit this model: say so
                skipped[b] = f"{type(e).__name__}: {e}"[:200]
        ok = [b for b in backends if b not in skipped]
        samples: dict[str, list[float]] = {"check": [], **{f"emit_{b}": [] for b in ok}}
        for _ in range(runs):  # interleaved, as every other section
            t0 = now()
            prog, _ = seqdsl.analyze(text, name)
            samples["check"].append((now() - t0) * 1e3)
            assert prog is not None
            for b in ok:
                t0 = now()
                emit(prog.model(), b, name)
                samples[f"emit_{b}"].append((now() - t0) * 1e3)
        stats = {k: summarize(v) for k, v in samples.items()}
        totals = {
            b: round(
                statistics.median(samples["check"]) + statistics.median(samples[f"emit_{b}"]), 3
            )
            for b in ok
        }
        rows.append(
            {
                "section": "compile",
                "layers": n,
                "lines": text.count("\n"),
                "runs": runs,
                "variants": stats,
                "check_plus_emit_ms": totals,
                "target_ms": TARGET_MS if n == 1000 else None,
                "skipped": skipped,
            }
        )
    return rows
