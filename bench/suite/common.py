"""Timing, statistics and machine description shared by every section of bench/run.py.

Timing rules (docs/benchmarks.md):

* the variants compared in one row run interleaved, round after round, in an
  order rotated every round, so that load from other processes hits them alike;
* warm-up rounds first (compilation, allocator, caches), not recorded;
* a fast call is repeated ``inner`` times per sample (at least ~``min_sample_s``
  per sample), and the sample is the mean of those calls;
* the statistic is the median of the samples; the spread is reported as min,
  25th and 75th percentiles and max, and as the relative IQR;
* ratios are taken within one run: the ratio of the two medians, and the
  median and IQR of the per-round ratios (the two samples of one round ran
  back to back).
"""

from __future__ import annotations

import gc
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


def percentile(xs: list[float], q: float) -> float:
    """Linear-interpolated percentile of a non-empty list (q in [0, 100])."""
    s = sorted(xs)
    if len(s) == 1:
        return s[0]
    pos = (len(s) - 1) * q / 100.0
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def summarize(samples_ms: list[float]) -> dict[str, Any]:
    med = statistics.median(samples_ms)
    p25, p75 = percentile(samples_ms, 25), percentile(samples_ms, 75)
    return {
        "median_ms": round(med, 4),
        "min_ms": round(min(samples_ms), 4),
        "p25_ms": round(p25, 4),
        "p75_ms": round(p75, 4),
        "max_ms": round(max(samples_ms), 4),
        "iqr_pct": round(100.0 * (p75 - p25) / med, 1) if med > 0 else None,
        "n": len(samples_ms),
    }


@dataclass
class Measured:
    """The samples (ms per call) of every variant of one row, round by round."""

    samples: dict[str, list[float]]
    inner: dict[str, int]
    rounds: int
    wall_s: float
    extra: dict[str, Any] = field(default_factory=dict)

    def median(self, name: str) -> float:
        return statistics.median(self.samples[name])

    def stats(self) -> dict[str, dict[str, Any]]:
        return {
            k: {**summarize(v), "calls_per_sample": self.inner[k]} for k, v in self.samples.items()
        }

    def ratio(self, num: str, den: str) -> dict[str, Any]:
        """num / den: the ratio of the medians and the spread of the per-round ratios."""
        a, b = self.samples[num], self.samples[den]
        per_round = [x / y for x, y in zip(a, b, strict=True) if y > 0]
        return {
            "ratio": round(statistics.median(a) / statistics.median(b), 4),
            "ratio_of_mins": round(min(a) / min(b), 4),
            "per_round_median": round(statistics.median(per_round), 4),
            "per_round_p25": round(percentile(per_round, 25), 4),
            "per_round_p75": round(percentile(per_round, 75), 4),
            "num": num,
            "den": den,
        }


#: what a sample measures: "wall" (elapsed time) or "cpu" (the CPU time of this process,
#: all its threads: on a machine shared with other jobs it leaves out the time spent
#: waiting for a core, but not their effect on caches and memory bandwidth)
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


def measure(
    variants: Mapping[str, Callable[[], object]],
    *,
    rounds: int = 10,
    min_rounds: int = 5,
    warmup: int = 2,
    budget_s: float = 30.0,
    min_sample_s: float = 0.02,
    max_inner: int = 200,
    clock: str = "wall",
) -> Measured:
    """Time each variant (a callable that blocks until its result is ready),
    interleaved, on ``clock`` (CLOCKS). Stops after ``rounds`` rounds, or after
    ``min_rounds`` once ``budget_s`` seconds (elapsed, warm-up included) have gone by."""
    now = CLOCKS[clock]
    names = list(variants)
    t_start = time.perf_counter()
    est: dict[str, float] = {}
    for _ in range(max(warmup, 1)):
        for n in names:
            t0 = now()
            variants[n]()
            est[n] = now() - t0
    inner = {n: max(1, min(max_inner, math.ceil(min_sample_s / max(est[n], 1e-6)))) for n in names}
    samples: dict[str, list[float]] = {n: [] for n in names}
    gc.collect()
    done = 0
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for n in order:
            fn, k = variants[n], inner[n]
            t0 = now()
            for _ in range(k):
                fn()
            samples[n].append((now() - t0) * 1e3 / k)
        done += 1
        if done >= min_rounds and time.perf_counter() - t_start > budget_s:
            break
    return Measured(samples, inner, done, time.perf_counter() - t_start)


def cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def cpu_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return sorted(have & {"avx2", "avx512f", "avx512_bf16", "amx_tile", "fma"})
    except OSError:
        pass
    return []


def load_average() -> list[float] | None:
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def machine() -> dict[str, Any]:
    import seqdsl

    return {
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "seqdsl": seqdsl.__version__,
        "gpu": None,
    }


def versions(*modules: str) -> dict[str, str | None]:
    """Versions of the given distributions (None when not installed)."""
    from importlib import metadata

    out: dict[str, str | None] = {}
    for m in modules:
        try:
            out[m] = metadata.version(m)
        except metadata.PackageNotFoundError:
            out[m] = None
    return out


def lengths_uniform(rng: Any, batch: int, steps: int) -> Any:
    """Row lengths drawn uniformly from [1, steps]."""
    return rng.integers(1, steps + 1, size=batch)


def gap_mask(rng: Any, batch: int, steps: int, keep: float = 0.75) -> Any:
    """A mask with gaps: each step valid with probability ``keep``, every row nonempty."""
    m = rng.random((batch, steps)) < keep
    m[:, 0] |= ~m.any(axis=1)
    return m


def size_key(b: int, t: int, u: int) -> str:
    return f"B={b} T={t} U={u}"


def _busy_seconds() -> float | None:
    """CPU seconds all processes have spent busy since boot (/proc/stat), or None."""
    try:
        with open("/proc/stat", encoding="utf-8") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class CpuMeter:
    """How busy the machine was between creation and read(): all cores, this
    process (and its waited-for children), and everything else."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.busy0 = _busy_seconds()
        self.own0 = _own_seconds()

    def read(self) -> dict[str, Any]:
        dt = time.monotonic() - self.t0
        busy = _busy_seconds()
        if busy is None or self.busy0 is None or dt <= 0:
            return {}
        total = (busy - self.busy0) / dt
        own = (_own_seconds() - self.own0) / dt
        return {
            "busy_cores": round(total, 2),
            "own_cores": round(own, 2),
            "other_cores": round(max(total - own, 0.0), 2),
            "seconds": round(dt, 1),
        }
