"""The differential runner: one program on the reference interpreter and on the
torch, JAX and Keras backends, with the same canonical weights and inputs.

Weights are drawn at random (biases and normalisation statistics included, so
no term hides behind a zero initializer), cast to float32, and loaded into
every backend with ``load_canonical``; the reference runs in float64 on
exactly those float32 values. Inputs have :data:`progen.B_ROWS` rows: a full
row, a padded row and an empty row where the declaration allows one; ids stay
below :data:`progen.VOCAB`; explicit masks have gaps. Everything runs in
inference.

Agreement is the parity tests' float32 tolerance: every shape and mask equal,
and every value within ``TOL`` x max(1, the output's largest magnitude) of the
reference. An output whose reference values are not finite or exceed
``MAX_MAGNITUDE`` (an LSTM with exponential gates blows up over 12 steps) is
compared by shape only: float32 cannot follow float64 there. A program none of
whose outputs can be compared counts as *skipped*, never as agreement; so does
one whose data break a run-time constraint (the reference raises
ReferenceError, e.g. a TemporalSplit that does not divide a convolved length).
An output that depends on an intermediate value beyond ``FLOAT32_RANGE`` (a GRU
with a softplus gate reaching 1e190 before a LayerNormalization brings it back)
is compared by shape only too; the other outputs of its program are compared.

A value difference beyond ``TOL`` is run again on that backend in float64 (the
same float32 weights and inputs; ``build(..., dtype="float64")``): when that run
agrees with the reference within ``TOL_64``, the difference is float32 rounding
(an ill-conditioned model: exponential gates, long recurrences) and is listed
under ``precision``, not as a disagreement. A bug that lives only in a
backend's float32 code would be classed so too: the campaign prints every one.

A long campaign runs in chunks of fresh processes (``--chunk``,
:func:`campaign_in_processes`): one process's JIT state grows with every model.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import seqdsl
from seqdsl.checker import CheckedModel
from seqdsl.ir import DropMaskOp, MergeOp
from seqdsl.padding import lengths_to_mask
from seqdsl.reference import ReferenceError, run_reference
from seqdsl.types import MaskType, TensorType

sys.path.insert(0, str(Path(__file__).resolve().parent))
import progen  # noqa: E402

TOL = 1e-5
#: a backend's float64 run against the reference (float32 differences beyond TOL
#: whose float64 run agrees this closely are float32 rounding or range, not bugs)
TOL_64 = 1e-9
#: a program any of whose intermediate values (in the reference) is larger than this
#: (float32's largest value's square root: a square, a variance, a dot product of it
#: overflows float32) is skipped: float32 cannot compute it, and its float64 results
#: depend on each framework's formulas at the edge of float64's range
FLOAT32_RANGE = float(np.sqrt(np.finfo(np.float32).max))
MAX_MAGNITUDE = 1e4
BACKENDS = ("torch", "jax", "keras")


@dataclass
class Data:
    inputs: list[np.ndarray]
    lengths: dict[str, np.ndarray]
    masks: dict[str, np.ndarray]


def make_data(m: CheckedModel, seed: int) -> Data:
    """Inputs for the model: see the module docstring."""
    rng = np.random.default_rng(seed)
    sizes = {"B": progen.B_ROWS, "T": progen.T_STEPS, "S": progen.S_STEPS}
    # step counts that meet the checker's run-time constraints ((T - 1) % 2 == 0 after
    # a Conv1D and a Reshape, S/2 >= 13 before a valid window of 13), from the defaults up
    for t in range(progen.T_STEPS, progen.T_STEPS + 48):
        for s in range(progen.S_STEPS, progen.S_STEPS + 48):
            env = {**sizes, "T": t, "S": s}
            if all(_meets(c, env) for c in m.constraints):
                sizes = env
                break
        else:
            continue
        break

    def size(d: Any) -> int:
        return d.value if isinstance(d.value, int) else sizes[str(d.value)]

    data = Data([], {}, {})
    for decl in m.model.inputs:
        t = m.types[decl.name]
        shape = [size(d) for d in decl.dims]
        if isinstance(t, MaskType):
            mk = rng.random(shape) > 0.4
            mk[0] = True
            mk[-1] = False
            data.inputs.append(mk)
            continue
        assert isinstance(t, TensorType)
        pad = m.pads.get(decl.name)
        if t.dtype in ("i32", "i64"):
            x: np.ndarray = rng.integers(1, progen.VOCAB, shape).astype(np.int32)
        else:
            # float32 values (in float64): the reference and every run see the same inputs
            x = rng.normal(0.0, 1.0, shape).astype(np.float32).astype(np.float64)
        if pad is not None:
            n = shape[1]
            lens = np.array([n, rng.integers(1, n), 1 if pad.nonempty else 0])[: shape[0]]
            mk = lengths_to_mask(lens, n, pad.side)
            x = np.where(mk.reshape(mk.shape + (1,) * (x.ndim - 2)), x, pad.value).astype(x.dtype)
            if decl.masked:
                data.lengths[decl.name] = lens
        elif decl.masked:
            mk = rng.random(shape[:2]) > 0.4
            mk[0] = True
            mk[-1] = False
            data.masks[decl.name] = mk
        data.inputs.append(x)
    return data


def _meets(c: Any, env: dict[str, int]) -> bool:
    return c.holds(env) is True  # both kinds: dim % divisor == 0, dim >= minimum


def make_weights(m: CheckedModel, seed: int) -> dict[str, np.ndarray]:
    """Random canonical weights in float32 (moving variances positive)."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for layer in m.layers:
        for w in layer.weights:
            if w.name == "moving_variance":
                v = rng.uniform(0.5, 1.5, w.shape)
            else:
                v = rng.normal(0.0, 0.5, w.shape)
            out[f"{layer.name}/{w.name}"] = v.astype(np.float32)
    return out


def flat(x: object) -> list[np.ndarray]:
    if isinstance(x, (tuple, list)):
        return [a for item in x for a in flat(item)]
    if hasattr(x, "detach"):
        return [x.detach().cpu().numpy()]  # type: ignore[union-attr]
    if type(x).__module__.startswith("tensorflow"):
        return [np.asarray(x.numpy())]  # type: ignore[attr-defined]
    return [np.asarray(x)]


def _outputs(out: object, m: CheckedModel) -> list[np.ndarray]:
    return flat(list(out) if len(m.model.outputs) > 1 else [out])  # type: ignore[call-overload]


def run_torch(
    prog: seqdsl.Program,
    m: CheckedModel,
    w: dict[str, np.ndarray],
    d: Data,
    dtype: str = "float32",
) -> list[np.ndarray]:
    import torch

    net = prog.build("torch", seed=0, dtype=dtype)
    net.load_canonical(_weights(w, dtype))  # type: ignore[attr-defined]
    net.eval()  # type: ignore[attr-defined]
    with torch.no_grad():
        out = net(  # type: ignore[operator]
            *[torch.as_tensor(x) for x in d.inputs],
            lengths={k: torch.as_tensor(v) for k, v in d.lengths.items()} or None,
            masks={k: torch.as_tensor(v) for k, v in d.masks.items()} or None,
        )
    return _outputs(out, m)


def run_jax(
    prog: seqdsl.Program,
    m: CheckedModel,
    w: dict[str, np.ndarray],
    d: Data,
    dtype: str = "float32",
) -> list[np.ndarray]:
    import jax

    with jax.enable_x64(dtype == "float64"):
        net = prog.build("jax", seed=0, dtype=dtype)
        net.load_canonical(_weights(w, dtype))  # type: ignore[attr-defined]
        out = net(  # type: ignore[operator]
            *[_floats(x, dtype) for x in d.inputs],
            lengths=d.lengths or None,
            masks=d.masks or None,
        )
        return _outputs(out, m)


def _weights(w: dict[str, np.ndarray], dtype: str) -> dict[str, np.ndarray]:
    """The float32 weights as they are, or exactly those values in float64."""
    return w if dtype == "float32" else {k: v.astype(np.float64) for k, v in w.items()}


def _floats(x: np.ndarray, dtype: str) -> np.ndarray:
    return x.astype(dtype) if x.dtype.kind == "f" else x


def keras_inputs(m: CheckedModel, d: Data, dtype: str = "float32") -> list[np.ndarray]:
    """The declared inputs in order, each `masked` one followed by its lengths or mask."""
    out: list[np.ndarray] = []
    for decl, x in zip(m.model.inputs, d.inputs, strict=True):
        out.append(_floats(x, dtype))
        if decl.masked:
            if decl.name in m.pads:
                out.append(np.asarray(d.lengths[decl.name], np.int32))
            else:
                out.append(np.asarray(d.masks[decl.name], bool))
    return out


_KERAS_BUILDS = [0]


def run_keras(
    prog: seqdsl.Program,
    m: CheckedModel,
    w: dict[str, np.ndarray],
    d: Data,
    dtype: str = "float32",
) -> list[np.ndarray]:
    import keras

    _KERAS_BUILDS[0] += 1
    if _KERAS_BUILDS[0] % 100 == 0:  # Keras' global graph state grows with every model
        keras.backend.clear_session()
    net = prog.build("keras", seed=0, dtype=dtype)
    net.load_canonical(_weights(w, dtype))  # type: ignore[attr-defined]
    xs = keras_inputs(m, d, dtype)
    out = net(xs if len(xs) > 1 else xs[0], training=False)  # type: ignore[operator]
    return _outputs(out, m)


RUNNERS: dict[str, Callable[..., list[np.ndarray]]] = {
    "torch": run_torch,
    "jax": run_jax,
    "keras": run_keras,
}


def comparable(a: np.ndarray) -> bool:
    """Whether a reference output can be compared in float32 (finite, not huge)."""
    if a.dtype == bool or not a.size:
        return True
    return bool(np.all(np.isfinite(a))) and float(np.max(np.abs(a))) <= MAX_MAGNITUDE


def _beyond_float32(m: CheckedModel, values: Mapping[str, Any]) -> set[int] | None:
    """The indices of the output arrays (as :func:`flat` lists them) whose value depends
    on a value of the reference beyond ``FLOAT32_RANGE`` (or not finite), by walking the
    model's operations back from each output; None when such a value is not one the
    walk knows (the program is then skipped whole)."""
    big = {
        name for name, (a, _) in values.items() if not _largest_value([(a, None)]) <= FLOAT32_RANGE
    }
    if not big:
        return set()
    ancestors: dict[str, set[str]] = {inp.name: {inp.name} for inp in m.model.inputs}
    for op in m.model.ops:
        if isinstance(op, DropMaskOp):
            uses = [op.input]
        elif isinstance(op, MergeOp):
            uses = list(op.inputs)
        else:
            uses = [*op.inputs, *([op.mask] if op.mask else []), *(op.initial_state or ())]
        seen = set().union(*(ancestors.get(u.name, {u.name}) for u in uses))
        for r in op.results:
            ancestors[r] = seen | {r}
    if not big <= set(ancestors):
        return None
    out: set[int] = set()
    i = 0
    for o in m.model.outputs:
        if ancestors.get(o.name, {o.name}) & big:
            out.add(i)
        i += 2 if o.with_mask else 1
    return out


def _largest_value(values: Any) -> float:
    """The largest magnitude of the reference's values (NaN if one is not finite)."""
    big = 0.0
    for a, _ in values:
        a = np.asarray(a)
        if a.dtype.kind == "f" and a.size:
            m = float(np.max(np.abs(a)))
            if not np.isfinite(m):
                return float("nan")
            big = max(big, m)
    return big


def compare(
    got: Sequence[np.ndarray],
    want: Sequence[np.ndarray],
    tol: float = TOL,
    shape_only: Collection[int] = (),
) -> str | None:
    """None when ``got`` agrees with ``want`` (module docstring) within ``tol``, else
    what differs. Outputs that are not :func:`comparable`, and the value arrays of
    ``shape_only`` (indices into ``want``), are compared by shape only."""
    if len(got) != len(want):
        return f"{len(got)} arrays, reference {len(want)}"
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        if a.shape != b.shape:
            return f"output {i}: shape {a.shape}, reference {b.shape}"
        if b.dtype == bool:
            if a.dtype != bool or not np.array_equal(a, b):
                return f"output {i}: mask differs"
            continue
        if not b.size or not comparable(b) or i in shape_only:
            continue
        err = float(np.max(np.abs(a.astype(np.float64) - b)))
        scale = max(1.0, float(np.max(np.abs(b))))
        if not err <= tol * scale:
            return f"output {i}: max error {err:.3g} > {tol} x {scale:.3g}"
    return None


@dataclass
class Result:
    """What one program gave: ``skipped`` (why), or per backend None (agrees) or what
    differs. ``precision``: the backends whose float32 values differed but whose float64
    run agrees with the reference (:func:`run_source`), with what differed in float32."""

    source: str
    skipped: str | None
    backends: dict[str, str | None]
    precision: dict[str, str] = field(default_factory=dict)

    @property
    def disagreements(self) -> dict[str, str]:
        return {b: r for b, r in self.backends.items() if r is not None}


def run_source(source: str, seed: int = 0, backends: Sequence[str] = BACKENDS) -> Result:
    """Run ``source`` on the reference and on ``backends``; compare."""
    prog = seqdsl.loads(source, "fuzz.seq")
    m = prog.model()
    w = make_weights(m, seed)
    d = make_data(m, seed)
    try:
        ref = run_reference(
            m,
            {k: v.astype(np.float64) for k, v in w.items()},
            d.inputs,
            lengths=d.lengths or None,
            masks=d.masks or None,
        )
    except ReferenceError as e:  # the data break a run-time constraint (e.g. divisibility)
        return Result(source, f"reference: {e}", {})
    except Exception:  # a bug of the reference interpreter: report it as such
        return Result(source, None, {"reference": traceback.format_exc(limit=-3)})
    want = flat(list(ref.outputs))
    beyond = _beyond_float32(m, ref.values)
    if beyond is None:
        big = _largest_value(ref.values.values())
        return Result(
            source, f"intermediate values beyond float32's range: |v| up to {big:.3g}", {}
        )
    values = [a for i, a in enumerate(want) if a.dtype != bool and a.size and i not in beyond]
    if not any(comparable(a) for a in values):
        if beyond:
            return Result(source, "every output depends on values beyond float32's range", {})
        if values:
            return Result(source, f"no reference output finite and within {MAX_MAGNITUDE:g}", {})
    res: dict[str, str | None] = {}
    for b in backends:
        try:
            got = RUNNERS[b](prog, m, w, d)
        except Exception as e:  # a valid program must run: the error is the disagreement
            res[b] = f"raised {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            continue
        res[b] = compare(got, want, shape_only=beyond)
    precision: dict[str, str] = {}
    for b, msg in list(res.items()):
        if msg is None or "max error" not in msg:
            continue
        # float32 rounding or range, or a bug? The same backend computing in float64
        # from the same (float32) weights and inputs must then agree to TOL_64
        try:
            got64 = RUNNERS[b](prog, m, w, d, "float64")
        except Exception as e:
            res[b] = f"{msg}; in float64 raised {type(e).__name__}"
            continue
        if compare(got64, want, TOL_64, beyond) is None:
            precision[b], res[b] = msg, None
    return Result(source, None, res, precision)


def run_prog(p: progen.Prog, seed: int = 0, backends: Sequence[str] = BACKENDS) -> Result:
    return run_source(p.text, seed, backends)


def minimal(p: progen.Prog, backend: str, seed: int = 0) -> progen.Prog:
    """``p`` reduced while ``backend`` still disagrees with the reference the same way
    (the same kind of failure: an exception type, a mask, a shape or a value)."""
    first = run_prog(p, seed, (backend,)).backends.get(backend)
    assert first is not None, "the program agrees"
    kind = _kind(first)

    def fails(c: progen.Prog) -> bool:
        r = run_prog(c, seed, (backend,))
        got = r.backends.get(backend)
        return r.skipped is None and got is not None and _kind(got) == kind

    return progen.reduce(p, fails)


def _kind(message: str) -> str:
    if message.startswith("raised "):
        return message.split(":")[0]
    for k in ("mask differs", "shape", "max error", "arrays"):
        if k in message:
            return k
    return message


def campaign(
    start: int,
    count: int,
    backends: Sequence[str],
    keras_every: int = 1,
    reduce: bool = True,
    seconds: float | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Programs ``start`` .. ``start + count - 1`` (the seed is the program's index): each
    on the reference and ``backends`` (Keras only on every ``keras_every``-th), in this
    process. Returns the counts; per disagreement the program, the message and the
    reduced program; per float32 difference that the backend's float64 run resolves
    (:func:`run_source`), the program and the float32 message (``precision``).
    ``seconds``: stop starting programs after that long (``programs`` says how many ran);
    ``progress`` is called with the counts every 100 programs."""
    import time

    t0 = time.perf_counter()
    stats = _empty_stats()
    runs: dict[str, int] = stats["runs"]
    for seed in range(start, start + count):
        if seconds is not None and time.perf_counter() - t0 > seconds:
            break
        if progress is not None and stats["programs"] and stats["programs"] % 100 == 0:
            progress(stats)
        p = progen.generate(seed)
        backs = [b for b in backends if b != "keras" or seed % keras_every == 0]
        r = run_prog(p, seed, backs)
        stats["programs"] += 1
        if r.skipped is not None:
            stats["skipped"] += 1
            why = r.skipped.split(":")[0]
            stats["skip_reasons"][why] = stats["skip_reasons"].get(why, 0) + 1
            continue
        stats["compared"] += 1
        for b in backs:
            runs[b] = runs.get(b, 0) + 1
        for b, msg in r.precision.items():
            stats["precision"].append({"seed": seed, "backend": b, "message": msg})
        for b, msg in r.disagreements.items():
            small = minimal(p, b, seed).text if reduce and b != "reference" else None
            stats["disagreements"].append(
                {"seed": seed, "backend": b, "message": msg, "source": p.text, "reduced": small}
            )
            if progress is not None:
                progress(stats)
    return stats


def _empty_stats() -> dict[str, Any]:
    return {
        "programs": 0,
        "compared": 0,
        "skipped": 0,
        "skip_reasons": {},
        "runs": {},
        "disagreements": [],
        "precision": [],
        "crashed": [],
    }


def _merge(total: dict[str, Any], part: dict[str, Any]) -> None:
    for k in ("programs", "compared", "skipped"):
        total[k] += part[k]
    for k in ("skip_reasons", "runs"):
        for name, n in part[k].items():
            total[k][name] = total[k].get(name, 0) + n
    for k in ("disagreements", "precision", "crashed"):
        total[k] += part.get(k, [])


def campaign_in_processes(
    start: int,
    count: int,
    backends: Sequence[str],
    keras_every: int = 1,
    chunk: int = 500,
    jobs: int = 1,
    reduce: bool = True,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """:func:`campaign` in chunks of ``chunk`` programs, each in a fresh Python process,
    ``jobs`` at a time; the counts are summed. The JIT state of one process grows with
    every new model (JAX and XLA compile each one): one process died after about 2,400
    programs with LLVM "Cannot allocate memory". A chunk whose process dies is listed
    under ``crashed`` with its programs and exit status."""
    import json
    import os
    import subprocess
    import tempfile

    total = _empty_stats()
    chunks = [(s, min(chunk, start + count - s)) for s in range(start, start + count, chunk)]
    running: list[tuple[subprocess.Popen[bytes], int, int, str]] = []
    with tempfile.TemporaryDirectory() as tmp:

        def launch(s: int, n: int) -> None:
            out = os.path.join(tmp, f"{s}.json")
            cmd = [sys.executable, __file__, str(s), str(n), ",".join(backends)]
            cmd += [str(keras_every), "--json", out] + ([] if reduce else ["--no-reduce"])
            with open(out + ".err", "wb") as err:
                proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
            running.append((proc, s, n, out))

        def collect(item: tuple[subprocess.Popen[bytes], int, int, str]) -> None:
            proc, s, n, out = item
            if proc.returncode in (0, 1) and os.path.exists(out):
                with open(out) as f:
                    _merge(total, json.load(f))
            else:
                with open(out + ".err", errors="replace") as f:
                    tail = f.read()[-2000:]
                total["crashed"].append(
                    {"start": s, "count": n, "returncode": proc.returncode, "stderr": tail}
                )
            if progress is not None:
                progress(total)

        while chunks or running:
            while chunks and len(running) < jobs:
                launch(*chunks.pop(0))
            item = running[0]
            item[0].wait()
            running.pop(0)
            collect(item)
    return total


def main(argv: Sequence[str] | None = None) -> int:
    """``python tests/difftest.py START COUNT [BACKENDS] [KERAS_EVERY] [--seconds S]
    [--chunk N --jobs J] [--json FILE]``: a campaign; prints the counts as it goes and
    every disagreement with its reduced program; exit 1 on any (or on a crashed chunk).
    ``--chunk``: run it in fresh processes of N programs each, J at a time
    (:func:`campaign_in_processes`); ``--json``: write the counts to FILE."""
    import argparse
    import json
    import time

    ap = argparse.ArgumentParser(prog="difftest")
    ap.add_argument("start", type=int)
    ap.add_argument("count", type=int)
    ap.add_argument("backends", nargs="?", default=",".join(BACKENDS))
    ap.add_argument("keras_every", nargs="?", type=int, default=1)
    ap.add_argument("--seconds", type=float)
    ap.add_argument("--chunk", type=int)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--json")
    ap.add_argument("--no-reduce", dest="reduce", action="store_false")
    a = ap.parse_args(sys.argv[1:] if argv is None else argv)
    backends = a.backends.split(",")
    t0 = time.perf_counter()
    shown = [0, 0]

    def progress(st: dict[str, Any]) -> None:
        for d in st["disagreements"][shown[0] :]:
            print(f"== program {d['seed']} on {d['backend']}: {d['message']}\n{d['source']}")
            print(f"-- reduced:\n{d['reduced']}", flush=True)
        for d in st["precision"][shown[1] :]:
            print(f"~~ program {d['seed']} on {d['backend']} (float64 agrees): {d['message']}")
        shown[:] = [len(st["disagreements"]), len(st["precision"])]
        print(
            f"[{time.perf_counter() - t0:.0f} s] programs {st['programs']}, compared"
            f" {st['compared']}, runs {st['runs']}, disagreements {len(st['disagreements'])},"
            f" float32-only {len(st['precision'])}, crashed chunks {len(st['crashed'])}",
            flush=True,
        )

    if a.chunk:
        stats = campaign_in_processes(
            a.start, a.count, backends, a.keras_every, a.chunk, a.jobs, a.reduce, progress
        )
    else:
        stats = campaign(a.start, a.count, backends, a.keras_every, a.reduce, a.seconds, progress)
    progress(stats)
    print(
        f"programs {stats['programs']}, compared {stats['compared']}, skipped"
        f" {stats['skipped']} ({stats['skip_reasons']}), runs per backend {stats['runs']},"
        f" disagreements {len(stats['disagreements'])}, float32-only differences"
        f" {len(stats['precision'])}, crashed chunks {stats['crashed']},"
        f" {time.perf_counter() - t0:.0f} s"
    )
    if a.json:
        with open(a.json, "w") as f:
            json.dump(stats, f)
    return 1 if stats["disagreements"] or stats["crashed"] else 0


if __name__ == "__main__":
    import warnings

    warnings.filterwarnings("ignore")
    raise SystemExit(main())
