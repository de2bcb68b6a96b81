"""The GPU check (issue 15): which kernel each recurrent layer ran, its numbers
against the reference interpreter, and the benchmark suite's GPU table.

    python bench/gpu_check.py                # on a CUDA machine: every part, GPU sizes
    python bench/gpu_check.py --dry-run      # CPU kernels, small sizes (CI runs this)
    python bench/gpu_check.py --parts kernels --frameworks torch,jax --timeout 300

Parts (docs/benchmarks.md, "GPU"):

  kernels  for every layer kind (SimpleRNN, GRU, LSTM, Bidirectional(LSTM),
           Bidirectional(GRU), two-layer stacks) and every mask kind (none, post, pre,
           gaps; the masked ones with an empty row), float32 and bfloat16, inference
           and one training step: which kernel ran, read from the framework itself,
           and the summary's promise for it:
             torch        the torch profiler's ops and CUDA kernels (aten::_cudnn_rnn and
                          cuDNN's kernels on CUDA; aten::lstm/gru/rnn_* and their CPU
                          kernels; none of them: a Python step loop), the warnings the call
                          raised (cuDNN's "not part of single contiguous chunk of memory")
                          and the device-to-device copies of the call;
             jax          the compiled HLO text: its custom-call targets (cuDNN's RNN:
                          jaxlib's "cudnn_rnn_ffi" / "cudnn_rnn_bwd_ffi", matched by
                          "dnn_rnn") and its while loops (lax.scan);
             keras-torch  seqdsl's Keras emission on Keras' torch backend, profiled as torch;
             keras-jax    the same on Keras' JAX backend, the HLO of the jitted call.
           The inference outputs are compared with the NumPy float64 reference interpreter
           (seqdsl/reference.py) given the same weights: max abs diff, pass/fail at the
           dtype's tolerance (TOLERANCE), with TF32 off for the comparison (torch's
           allow_tf32 flags, JAX's default matmul precision "highest").
  table    the benchmark suite's sections on the device, under each framework's default
           precision settings, each ratio with its target:
             handwritten  generated vs hand-written (torch: nn.LSTM/GRU packed or padded;
                          JAX: lax.scan two ways, and jax.experimental.rnn.lstm for LSTMs),
                          the baseline the faster; target gen/hand <= 1.05
             masks        post, pre and gaps vs no mask (same padded shape); <= 1.1
             keras        ours (native torch / JAX, our Keras emission) vs Keras 3's own
                          masked path (keras-torch, keras-jax); keras3/ours >= 2
           GPU: batch 64-256, T 128-512, units 256-1024, float32 and bfloat16 (PLANS).

Every framework runs in its own subprocess (KERAS_BACKEND set for Keras), one after
the other, each with its share of --timeout; a worker past its share starts no new
row, and one that overruns is killed (what it wrote is kept). Without --dry-run a
framework with no CUDA device reports an error instead of running the GPU sizes on
the CPU. --dry-run hides the GPUs (CUDA_VISIBLE_DEVICES="", JAX_PLATFORMS=cpu),
pins one thread, and runs tiny sizes, float32 and bfloat16. Writes
bench/results/issue15/gpu_check_gpu.json (--dry-run: gpu_check_cpu_dry_run.json; a
subset of --parts or --frameworks adds them to the name; --out overrides). The
GPU run needs Keras (and lark, for seqdsl) carried as wheels where the image lacks
them (docs/benchmarks.md, "GPU"). Exit status 0 when every
worker ran, every row succeeded and every number passed, else 1.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
from suite import common  # noqa: E402
from suite.common import measure  # noqa: E402

FRAMEWORKS = ("torch", "jax", "keras-torch", "keras-jax")
#: each worker's share of --timeout, relative (the JAX workers compile every model)
WEIGHT = {"torch": 1.0, "jax": 1.6, "keras-torch": 0.6, "keras-jax": 0.7}
PARTS = ("kernels", "table")
MASKS = ("none", "post", "pre", "gaps")

#: layer kinds of the kernel check: two-layer stacks (the torch backend runs a stack
#: in one fused call), the second layer returning the last output
STACKS = {
    "simple_rnn": "SimpleRNN({u}, return_sequences=true) -> SimpleRNN({u})",
    "gru": "GRU({u}, return_sequences=true) -> GRU({u})",
    "lstm": "LSTM({u}, return_sequences=true) -> LSTM({u})",
    "bilstm": "Bidirectional(LSTM({h}, return_sequences=true)) -> Bidirectional(LSTM({h}))",
    "bigru": "Bidirectional(GRU({h}, return_sequences=true)) -> Bidirectional(GRU({h}))",
}
DECL = {
    "none": "",
    "post": " pad(post, value=0) masked",
    "pre": " pad(pre, value=0) masked",
    "gaps": " masked",
}

#: max abs difference from the float64 reference that passes, per dtype: float32 with
#: TF32 off (a few ulps through tanh/sigmoid stacks); bfloat16 (8 mantissa bits,
#: weights and activations rounded at every step)
TOLERANCE = {"float32": 1e-4, "bfloat16": 6e-2}

#: the targets of the table (docs/benchmarks.md)
TARGETS = {
    "handwritten": ("generated/hand-written", "<=", 1.05),
    "masks": ("masked/unmasked", "<=", 1.1),
    "keras": ("keras3/ours", ">=", 2.0),
}

RNN_KERNEL = re.compile(r"(?i)cudnn|rnn|lstm|gru|persist")
FUSED_OPS = ("aten::lstm", "aten::gru", "aten::rnn_tanh", "aten::rnn_relu")


def _size(b: int, t: int, u: int) -> dict[str, int]:
    return {"B": b, "T": t, "U": u}


#: what each mode runs. "kernels": (B, T, U) of the kernel check, the cells whose
#: training step is profiled too. "table": rows per section (cell, size), dtypes, and
#: the timing options of bench/suite/common.measure
PLANS: dict[str, dict[str, Any]] = {
    "gpu": {
        "kernels": {
            "size": _size(8, 24, 32),
            "cells": {"float32": tuple(STACKS), "bfloat16": tuple(STACKS)},
            "bfloat16_masks": MASKS,
            "keras_cells": tuple(STACKS),
            "train_cells": tuple(STACKS),
            "train_masks": MASKS,
        },
        "table": {
            # sized to fit the 540 s default with the kernel check (about 400 s
            # estimated, never measured: see docs/benchmarks.md, GPU)
            "handwritten": [
                ("lstm", _size(64, 128, 256)),
                ("lstm", _size(256, 512, 1024)),
                ("gru", _size(64, 128, 256)),
                ("bilstm", _size(64, 128, 256)),
            ],
            "masks": [
                ("lstm", _size(64, 128, 256)),
                ("lstm", _size(256, 512, 1024)),
            ],
            "keras": [
                ("lstm", _size(64, 128, 256)),
                ("lstm", _size(256, 512, 1024)),
            ],
            "dtypes": ("float32", "bfloat16"),
            "bfloat16_sections": ("handwritten", "masks", "keras"),
            "modes": ("inference", "train"),
            "opts": {"rounds": 8, "min_rounds": 5, "warmup": 2, "budget_s": 3.0},
        },
        "timeout_s": 540,
    },
    "dry-run": {
        "kernels": {
            "size": _size(3, 6, 4),
            "cells": {"float32": ("simple_rnn", "gru", "lstm", "bilstm"), "bfloat16": ("lstm",)},
            "bfloat16_masks": ("gaps",),
            "keras_cells": ("lstm",),
            "train_cells": ("lstm",),
            "train_masks": ("gaps",),
        },
        "table": {
            "handwritten": [("lstm", _size(4, 8, 8))],
            "masks": [("lstm", _size(4, 8, 8))],
            "keras": [("lstm", _size(4, 8, 8))],
            "dtypes": ("float32", "bfloat16"),
            "bfloat16_sections": ("handwritten",),
            "modes": ("inference",),
            "opts": {
                "rounds": 3,
                "min_rounds": 3,
                "warmup": 2,
                "budget_s": 0.2,
                "min_sample_s": 0.002,
                "max_inner": 5,
            },
        },
        "timeout_s": 300,
    },
}


def seq_text(cell: str, units: int, mask: str) -> str:
    return (
        f"# bench/gpu_check.py: {cell}, mask {mask}\n"
        f"model Check {{\n"
        f"    input x: f32[B, T, {units}]{DECL[mask]}\n"
        f"    y = x -> {STACKS[cell].format(u=units, h=units // 2)}\n"
        f"    output y\n"
        f"}}\n"
    )


def load(cell: str, units: int, mask: str) -> Any:
    import seqdsl

    return seqdsl.loads(seq_text(cell, units, mask), f"gpu_check_{cell}_{mask}.seq")


def check_data(b: int, t: int, u: int, mask: str, seed: int = 0) -> dict[str, np.ndarray]:
    """x [B, T, U] float32, and for a masked kind its lengths and bool mask; the last
    row of a masked batch is empty (no valid step)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((b, t, u), dtype=np.float32)
    steps = np.arange(t)[None, :]
    if mask == "none":
        return {"x": x}
    if mask == "gaps":
        m = common.gap_mask(rng, b, t)
        m[-1] = False
    else:
        lengths = rng.integers(1, t + 1, size=b)
        lengths[-1] = 0
        m = steps < lengths[:, None] if mask == "post" else steps >= t - lengths[:, None]
    x = np.where(m[..., None], x, np.float32(0.0)).astype(np.float32)
    return {"x": x, "lengths": m.sum(1).astype(np.int64), "mask": m}


def reference(
    prog: Any, weights: dict[str, np.ndarray], data: dict[str, np.ndarray], mask: str
) -> Any:
    from seqdsl.reference import run_reference

    w = {k: np.asarray(v, np.float64) for k, v in weights.items()}
    kw: dict[str, Any] = {}
    if mask in ("post", "pre"):
        kw["lengths"] = {"x": data["lengths"]}
    elif mask == "gaps":
        kw["masks"] = {"x": data["mask"]}
    out = run_reference(prog.model(), w, [data["x"].astype(np.float64)], **kw).outputs[0]
    return np.asarray(out, np.float64)


def promised(prog: Any, target: str) -> list[str]:
    """The summary's kernel for each recurrent layer on `target` (keras, torch, jax)."""
    doc = json.loads(prog.summary(fmt="json"))
    layers = doc[0]["layers"] if isinstance(doc, list) else doc["layers"]
    return [lay["kernels"][target]["kernel"] for lay in layers if lay.get("kernels")]


def numbers(out: Any, ref: np.ndarray, dtype: str) -> dict[str, Any]:
    diff = float(np.max(np.abs(np.asarray(out, np.float64) - ref)))
    tol = TOLERANCE[dtype]
    return {"max_abs_diff": diff, "tolerance": tol, "pass": bool(diff <= tol)}


def verdict(section: str, ratio: float | None, gpu: bool) -> str:
    """met / MISSED against the section's target; not judged off the GPU."""
    if ratio is None:
        return "n/a"
    if not gpu:
        return "not judged (CPU dry run)"
    _, op, bound = TARGETS[section]
    ok = ratio <= bound if op == "<=" else ratio >= bound
    return "met" if ok else "MISSED"


def _masks(plan: dict[str, Any], dtype: str) -> tuple[str, ...]:
    """The mask kinds of the kernel check in `dtype`."""
    return MASKS if dtype == "float32" else tuple(plan["bfloat16_masks"])


def _sections(plan: dict[str, Any], dtype: str, sections: tuple[str, ...]) -> tuple[str, ...]:
    """The table's sections run in `dtype` (the dry run runs bfloat16 in section 1 only)."""
    if dtype == "float32":
        return sections
    return tuple(s for s in sections if s in plan["bfloat16_sections"])


def _stats(m: Any) -> dict[str, Any]:
    return {"variants": m.stats(), "rounds": m.rounds, "wall_s": round(m.wall_s, 2)}


class Budget:
    """A worker's share of the time: rows are skipped once it is spent."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


Row = dict[str, Any]
Emit = Callable[[Row], None]


def run_rows(
    jobs: Iterable[tuple[Row, Callable[[], list[Row]]]], budget: Budget, emit: Emit
) -> None:
    """Run each job (the row's identity, a function giving its rows) while time is
    left; a job that raises gives one row with its error, and the next job runs."""
    for base, fn in jobs:
        if budget.left() < 0:
            emit({**base, "skipped": "out of time"})
            continue
        try:
            rows = fn()
        except Exception as e:
            traceback.print_exc()
            rows = [{"error": f"{type(e).__name__}: {e}"[:500]}]
        for r in rows:
            emit({**base, **r})


def kernel_jobs(
    framework: str,
    plan: dict[str, Any],
    cells: Callable[[str], Iterable[str]],
    row: Callable[..., Row],
) -> Iterator[tuple[Row, Callable[[], list[Row]]]]:
    """The kernel check's rows: every dtype, cell and mask kind of the plan."""
    s = plan["size"]
    for dtype in plan["cells"]:
        for cell in cells(dtype):
            for mask in _masks(plan, dtype):
                base = {"part": "kernels", "framework": framework, "cell": cell, "mask": mask}
                base.update(dtype=dtype, **s)
                train = cell in plan["train_cells"] and mask in plan["train_masks"]
                yield base, partial(lambda *a: [row(*a)], cell, mask, dtype, s, train)


def table_jobs(
    framework: str, plan: dict[str, Any], sections: dict[str, Callable[..., list[Row]]]
) -> Iterator[tuple[Row, Callable[[], list[Row]]]]:
    """The table's rows: every dtype, section and size of the plan."""
    for dtype in plan["dtypes"]:
        for section in _sections(plan, dtype, tuple(sections)):
            for cell, s in plan[section]:
                size = common.size_key(s["B"], s["T"], s["U"])
                base = {"part": "table", "section": section, "framework": framework, "cell": cell}
                base.update(dtype=dtype, **s, size=size)
                fn = sections[section]
                yield base, partial(fn, cell, s["B"], s["T"], s["U"], dtype, plan)


def _as_promised(rec: Row, gpu: bool) -> bool | None:
    """On a GPU: whether the layers promised a cuDNN kernel ran on one (None off the
    GPU, or when the summary promises no cuDNN kernel)."""
    if not gpu:
        return None
    if not all(p.startswith("cudnn") for p in rec.get("promised", [])):
        return None
    return bool(rec.get("inference", {}).get("kernel") == "cudnn")


# --------------------------------------------------------------------------
# torch (also Keras' torch backend)


def torch_device() -> tuple[Any, dict[str, Any]]:
    import torch

    if torch.cuda.is_available():
        dev = torch.device("cuda", 0)
        info = {
            "device": f"cuda:0 {torch.cuda.get_device_name(0)}",
            "gpu": True,
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
            "capability": list(torch.cuda.get_device_capability(0)),
            "defaults": {
                "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
                "cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            },
        }
    else:
        dev = torch.device("cpu")
        info = {"device": f"cpu: {common.cpu_model()}", "gpu": False}
    info["torch"] = torch.__version__
    return dev, info


@contextmanager
def torch_exact() -> Iterator[None]:
    """TF32 off (cuDNN and matmuls) for the comparison with the reference."""
    import torch

    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def torch_profile(fn: Callable[[], Any], gpu: bool) -> tuple[Any, dict[str, Any]]:
    """Run fn once under the torch profiler: its result, and which kernel ran:
    "cudnn" (aten::_cudnn_rnn), "fused-cpu" / "fused (not cuDNN)" (aten::lstm, gru,
    rnn_tanh or rnn_relu without cuDNN), or "loop" (none of them: a step loop)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if gpu else [])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with profile(activities=acts) as prof:
            out = fn()
            if gpu:
                torch.cuda.synchronize()
    ops: Counter[str] = Counter()
    kernels: Counter[str] = Counter()
    for e in prof.events():
        on_device = str(getattr(e, "device_type", "")).endswith("CUDA")
        (kernels if on_device else ops)[e.name] += 1
    if any(k.startswith("aten::_cudnn_rnn") for k in ops):
        kernel = "cudnn"
    elif any(k in ops for k in FUSED_OPS):
        kernel = "fused (not cuDNN)" if gpu else "fused-cpu"
    else:
        kernel = "loop"
    rnn_ops = sorted(k for k in ops if RNN_KERNEL.search(k) and k.startswith("aten::"))
    info = {
        "kernel": kernel,
        "rnn_ops": {k: ops[k] for k in rnn_ops},
        "device_kernels": {k[:160]: n for k, n in kernels.most_common() if RNN_KERNEL.search(k)},
        "device_kernel_count": sum(kernels.values()),
        "memcpy_dtod": sum(n for k, n in kernels.items() if "DtoD" in k),
        "aten_copies": ops.get("aten::copy_", 0),
        "warnings": sorted({str(w.message)[:200] for w in caught}),
    }
    return out, info


def _torch_inputs(data: dict[str, np.ndarray], mask: str, dev: Any, dtype: Any) -> tuple[Any, Row]:
    import torch

    x = torch.from_numpy(data["x"]).to(dev, dtype)
    if mask in ("post", "pre"):
        return x, {"lengths": torch.from_numpy(data["lengths"]).to(dev)}
    if mask == "gaps":
        return x, {"masks": torch.from_numpy(data["mask"]).to(dev)}
    return x, {}


def torch_sync(dev: Any) -> Callable[[], None]:
    import torch

    if dev.type == "cuda":
        return torch.cuda.synchronize
    return lambda: None


def torch_kernel_row(cell: str, mask: str, dtype_name: str, s: dict[str, int], train: bool) -> Row:
    """One model on torch: the kernel of an inference call (twice: the second shows
    what every call does, e.g. cuDNN's weight copy) and of a training step; the
    inference output against the reference."""
    import torch

    dev, info = torch_device()
    dtype = getattr(torch, dtype_name)
    prog = load(cell, s["U"], mask)
    rec: Row = {"promised": promised(prog, "torch")}
    model = prog.build("torch", seed=0)
    weights = model.canonical_weights()
    model = model.to(dev, dtype).eval()
    data = check_data(s["B"], s["T"], s["U"], mask)
    x, kw = _torch_inputs(data, mask, dev, dtype)
    with torch_exact(), torch.no_grad():
        model(x, **kw)  # warm-up: caches, cuDNN plans
        out, rec["inference"] = torch_profile(lambda: model(x, **kw), info["gpu"])
        rec["inference_second_call"] = torch_profile(lambda: model(x, **kw), info["gpu"])[1]
    ref = reference(prog, weights, data, mask)
    rec["numbers"] = numbers(out.float().cpu().numpy(), ref, dtype_name)
    if train:
        model.train()

        def step() -> Any:
            y = model(x, **kw)
            y.float().square().mean().backward()
            return y

        rec["train"] = torch_profile(step, info["gpu"])[1]
    rec["on_promised_kernel"] = _as_promised(rec, info["gpu"])
    return rec


def _torch_timed(
    f: Callable[[], Any], train: bool, params: Any, sync: Callable[[], None]
) -> Callable[[], None]:
    """A call that blocks until done: inference under no_grad, or an SGD step on the
    mean of squares of the output."""
    import torch
    from suite import torch_jobs

    if not train:

        def run() -> None:
            with torch.no_grad():
                f()
            sync()

        return run
    opt = torch.optim.SGD(params, lr=torch_jobs.LR)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        f().float().square().mean().backward()
        opt.step()
        sync()

    return step


def torch_handwritten(cell: str, b: int, t: int, u: int, dtype_name: str, plan: Row) -> list[Row]:
    """Section 1 on the device: the generated stack vs nn.LSTM/GRU (packed; padded and
    gathered, or padded and flipped for Bidirectional), the same weights."""
    import torch
    from suite import torch_jobs
    from suite.models import make_data

    dev, info = torch_device()
    sync = torch_sync(dev)
    dtype = getattr(torch, dtype_name)
    data = make_data(b, t, u, "post")
    gen = torch_jobs._build(cell, u, "post")
    hand = torch_jobs.HandStack(cell, u, gen.canonical_weights())
    gen.to(dev, dtype)
    hand.to(dev, dtype)
    x = torch.from_numpy(data.x).to(dev, dtype)
    lengths_cpu = torch.from_numpy(data.lengths)
    lengths = lengths_cpu.to(dev)
    last = lengths - 1
    rev = torch_jobs._reverse_index(lengths_cpu, t).to(dev)
    fw: dict[str, Callable[[], Any]] = {
        "generated": lambda: gen(x, lengths=lengths),
        "packed": lambda: hand.packed(x, lengths_cpu),
    }
    if hand.bi:
        fw["padded+flip"] = lambda: hand.padded_flip(x, last, rev)
    else:
        fw["padded"] = lambda: hand.padded(x, last)
    with torch.no_grad():
        ref = fw["generated"]().float()
        diffs = {
            k: float((f().float() - ref).abs().max()) for k, f in fw.items() if k != "generated"
        }
    rows = []
    for mode in plan["modes"]:
        train = mode == "train"
        gen.train(train)
        fns = {}
        for k, f in fw.items():
            params = (gen if k == "generated" else hand).parameters()
            fns[k] = _torch_timed(f, train, params, sync)
        m = measure(fns, **plan["opts"])
        best = min((k for k in fns if k != "generated"), key=m.median)
        r = m.ratio("generated", best)
        rows.append(
            {"mode": mode, **_stats(m), "baseline": best, "ratio": r, "max_abs_diff": diffs}
            | {"verdict": verdict("handwritten", r["ratio"], info["gpu"])}
        )
    return rows


def torch_masks(cell: str, b: int, t: int, u: int, dtype_name: str, plan: Row) -> list[Row]:
    """Section 2 on the device: post, pre and gaps vs no mask, the same weights."""
    import torch
    from suite import torch_jobs
    from suite.models import make_data

    dev, info = torch_device()
    sync = torch_sync(dev)
    dtype = getattr(torch, dtype_name)
    models = {"none": torch_jobs._build(cell, u, "none")}
    w = models["none"].canonical_weights()
    for k in MASKS[1:]:
        models[k] = torch_jobs._build(cell, u, k)
        models[k].load_canonical(w)
    fw: dict[str, Callable[[], Any]] = {}
    for k, model in models.items():
        d = make_data(b, t, u, "post" if k == "none" else k)
        model.to(dev, dtype)
        x, kw = _torch_inputs({"x": d.x, "lengths": d.lengths, "mask": d.mask}, k, dev, dtype)
        fw[k] = partial(model, x, **kw)
    rows = []
    for mode in plan["modes"]:
        train = mode == "train"
        fns = {}
        for k, model in models.items():
            model.train(train)
            fns[k] = _torch_timed(fw[k], train, model.parameters(), sync)
        m = measure(fns, **plan["opts"])
        ratios = {k: m.ratio(k, "none") for k in MASKS[1:]}
        verdicts = {k: verdict("masks", r["ratio"], info["gpu"]) for k, r in ratios.items()}
        rows.append({"mode": mode, **_stats(m), "ratios": ratios, "verdicts": verdicts})
    return rows


# --------------------------------------------------------------------------
# JAX (also Keras' JAX backend)


def jax_device() -> Row:
    import jax

    d = jax.devices()[0]
    gpu = d.platform == "gpu"
    name = f"{d.platform}:{d.id} {d.device_kind}" if gpu else f"cpu: {common.cpu_model()}"
    devices = [str(x) for x in jax.devices()]
    return {"device": name, "gpu": gpu, "jax": jax.__version__, "devices": devices}


def hlo_kernels(text: str) -> Row:
    """Which kernel a compiled HLO module runs: cuDNN's RNN custom call ("cudnn"),
    a while loop ("scan", lax.scan), or neither ("other")."""
    targets = Counter(re.findall(r'custom_call_target="([^"]+)"', text))
    loops = len(re.findall(r"\swhile\(", text))
    rnn = sorted(t for t in targets if "dnn_rnn" in t)
    kernel = "cudnn" if rnn else ("scan" if loops else "other")
    calls = dict(targets)
    return {
        "kernel": kernel,
        "rnn_custom_calls": rnn,
        "custom_call_targets": calls,
        "while_loops": loops,
    }


@contextmanager
def jax_exact() -> Iterator[None]:
    """Float32 matmuls (and jax.experimental.rnn's cuDNN LSTM) without TF32."""
    import jax

    with jax.default_matmul_precision("highest"):
        yield


def _jax_call(model: Any, mask: str) -> Callable[..., Any]:
    def call(v: Any, x: Any, aux: Any) -> Any:
        if mask in ("post", "pre"):
            return model.apply(v, x, lengths=aux)
        if mask == "gaps":
            return model.apply(v, x, masks=aux)
        return model.apply(v, x)

    return call


def _jax_aux(data: dict[str, np.ndarray], mask: str) -> Any:
    import jax.numpy as jnp

    if mask in ("post", "pre"):
        return jnp.asarray(data["lengths"].astype(np.int32))
    if mask == "gaps":
        return jnp.asarray(data["mask"])
    return None


def _cast(tree: Any, dtype: Any) -> Any:
    """Every float array of a pytree in dtype."""
    import jax
    import jax.numpy as jnp

    def cast(a: Any) -> Any:
        return a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a

    return jax.tree.map(cast, tree)


def jax_kernel_row(cell: str, mask: str, dtype_name: str, s: dict[str, int], train: bool) -> Row:
    """One model on JAX: the compiled HLO of the jitted apply (and of its gradient),
    the output against the reference."""
    import jax
    import jax.numpy as jnp

    info = jax_device()
    dtype = getattr(jnp, dtype_name)
    prog = load(cell, s["U"], mask)
    rec: Row = {"promised": promised(prog, "jax")}
    model = prog.build("jax", seed=0)
    weights = model.canonical_weights()
    v = _cast(model.variables, dtype)
    data = check_data(s["B"], s["T"], s["U"], mask)
    x = jnp.asarray(data["x"]).astype(dtype)
    aux = _jax_aux(data, mask)
    call = _jax_call(model, mask)
    with jax_exact():
        compiled = jax.jit(call).lower(v, x, aux).compile()
        rec["inference"] = hlo_kernels(compiled.as_text())
        out = np.asarray(compiled(v, x, aux).astype(jnp.float32))
    rec["numbers"] = numbers(out, reference(prog, weights, data, mask), dtype_name)
    if train:

        def loss(p: Any, x: Any, aux: Any) -> Any:
            y = call({"params": p, "state": v["state"]}, x, aux)
            return jnp.mean(y.astype(jnp.float32) ** 2)

        grad = jax.jit(jax.grad(loss)).lower(v["params"], x, aux).compile()
        rec["train"] = hlo_kernels(grad.as_text())
    rec["on_promised_kernel"] = _as_promised(rec, info["gpu"])
    return rec


def hand_cudnn_lstm(
    cell: str, params: list[Row], x: Any, lengths: Any, fn: Callable[..., Any] | None = None
) -> Any:
    """The hand-written JAX stack on jax.experimental.rnn.lstm: both layers (and both
    directions) in one call, cuDNN's flat weights built here (not by seqdsl's runtime):
    every W_ih, W_hh (layer by layer, forward then backward) then every b_ih, b_hh.
    Output: the last layer's final h (both directions for bilstm). fn: lstm's
    signature (default jax.experimental.rnn.lstm; lstm_ref_adapter on the CPU)."""
    import jax.numpy as jnp
    from jax.experimental import rnn

    bi = cell == "bilstm"
    layers = [[p["forward"], p["backward"]] if bi else [p] for p in params]
    mats, biases = [], []
    for directions in layers:
        for q in directions:
            mats += [q["kernel"].T.ravel(), q["recurrent_kernel"].T.ravel()]
            biases += [q["bias"], jnp.zeros_like(q["bias"])]
    weights = jnp.concatenate(mats + biases)
    hidden = layers[0][0]["recurrent_kernel"].shape[0]
    h0 = jnp.zeros((len(layers) * len(layers[0]), x.shape[0], hidden), x.dtype)
    _, h, _ = (fn or rnn.lstm)(
        x,
        h0,
        h0,
        weights,
        lengths,
        input_size=x.shape[2],
        hidden_size=hidden,
        num_layers=len(layers),
        dropout=0.0,
        bidirectional=bi,
    )
    return jnp.concatenate([h[-2], h[-1]], axis=-1) if bi else h[-1]


def lstm_ref_adapter(
    x: Any,
    h0: Any,
    c0: Any,
    weights: Any,
    seq_lengths: Any,
    *,
    input_size: int,
    hidden_size: int,
    num_layers: int,
    dropout: float,
    bidirectional: bool,
) -> Any:
    """jax.experimental.rnn.lstm's signature around lstm_ref (which runs on the CPU)."""
    from jax.experimental import rnn

    shape = (input_size, hidden_size, num_layers, bidirectional)
    w_ih, w_hh, b_ih, b_hh = rnn.unpack_lstm_weights(weights, *shape)
    return rnn.lstm_ref(
        x,
        h0,
        c0,
        w_ih,
        w_hh,
        b_ih,
        b_hh,
        seq_lengths,
        input_size,
        hidden_size,
        num_layers,
        dropout,
        bidirectional,
    )


def _f32_loss(loss: Callable[..., Any]) -> Callable[..., Any]:
    """A loss (mean of squares) returned in float32 (bfloat16 models)."""
    import jax.numpy as jnp

    def wrapped(*args: Any) -> Any:
        return loss(*args).astype(jnp.float32)

    return wrapped


def _hand_loss(cell: str, f: Callable[..., Any]) -> Callable[..., Any]:
    import jax.numpy as jnp

    def loss(p: Any, x: Any, n: Any) -> Any:
        return jnp.mean(f(cell, p, x, n).astype(jnp.float32) ** 2)

    return loss


def jax_handwritten(cell: str, b: int, t: int, u: int, dtype_name: str, plan: Row) -> list[Row]:
    """Section 1 on the device: the generated stack vs lax.scan two ways and (LSTMs,
    on the GPU) jax.experimental.rnn.lstm, the same weights."""
    import jax
    import jax.numpy as jnp
    from suite import jax_jobs
    from suite.models import make_data

    info = jax_device()
    dtype = getattr(jnp, dtype_name)
    data = make_data(b, t, u, "post")
    gen = jax_jobs._build(cell, u, "post")
    v = _cast(gen.variables, dtype)
    x = jnp.asarray(data.x).astype(dtype)
    lengths = jnp.asarray(data.lengths.astype(np.int32))
    gen_call, gen_loss = jax_jobs._gen_fns(gen, "post")
    hp = _cast(jax_jobs._hand_params(cell, gen.canonical_weights()), dtype)
    hands: dict[str, Callable[..., Any]] = dict(jax_jobs.HAND)
    skipped: dict[str, str] = {}
    diffs: dict[str, float] = {}
    ref = gen_call(v, x, lengths).astype(jnp.float32)

    def diff(y: Any) -> float:
        return float(jnp.max(jnp.abs(y.astype(jnp.float32) - ref)))

    if cell in ("lstm", "bilstm"):
        if info["gpu"]:
            hands["experimental.rnn"] = hand_cudnn_lstm
        else:  # the weights' layout checked through lstm_ref; not timed
            f = partial(hand_cudnn_lstm, cell, fn=lstm_ref_adapter)
            diffs["experimental.rnn (lstm_ref)"] = diff(jax.jit(f)(hp, x, lengths))
            skipped["experimental.rnn"] = (
                "jax.experimental.rnn.lstm has no CPU kernel (its weights were checked "
                "through lstm_ref, untimed)"
            )
    calls = {}
    for k, f in hands.items():
        call = jax.jit(partial(f, cell))
        try:
            diffs[k] = diff(call(hp, x, lengths))
            calls[k] = call
        except Exception as e:  # e.g. cuDNN's LSTM in bfloat16
            skipped[k] = f"{type(e).__name__}: {e}"[:300]
    rows = []
    for mode in plan["modes"]:
        fns: dict[str, Callable[[], Any]] = {}
        if mode == "inference":
            fns["generated"] = jax_jobs._blocking(gen_call, v, x, lengths)
            fns.update({k: jax_jobs._blocking(f, hp, x, lengths) for k, f in calls.items()})
        else:
            step = jax_jobs._sgd(_f32_loss(gen_loss))
            fns["generated"] = jax_jobs._Trainer(step, v["params"], v["state"], x, lengths)
            for k in calls:
                step = jax_jobs._sgd(_hand_loss(cell, hands[k]))
                fns[k] = jax_jobs._Trainer(step, hp, x, lengths)
        m = measure(fns, **plan["opts"])
        best = min((k for k in fns if k != "generated"), key=m.median)
        r = m.ratio("generated", best)
        rows.append(
            {"mode": mode, **_stats(m), "baseline": best, "ratio": r, "max_abs_diff": diffs}
            | {
                "skipped_variants": skipped,
                "verdict": verdict("handwritten", r["ratio"], info["gpu"]),
            }
        )
    return rows


def jax_masks(cell: str, b: int, t: int, u: int, dtype_name: str, plan: Row) -> list[Row]:
    """Section 2 on the device: post, pre and gaps vs no mask, the same weights."""
    import jax.numpy as jnp
    from suite import jax_jobs
    from suite.models import make_data

    info = jax_device()
    dtype = getattr(jnp, dtype_name)
    models = {"none": jax_jobs._build(cell, u, "none")}
    w = models["none"].canonical_weights()
    for k in MASKS[1:]:
        models[k] = jax_jobs._build(cell, u, k)
        models[k].load_canonical(w)
    args = {}
    for k in models:
        d = make_data(b, t, u, "post" if k == "none" else k)
        aux = _jax_aux({"lengths": d.lengths, "mask": d.mask}, k)
        args[k] = (jnp.asarray(d.x).astype(dtype), aux)
    rows = []
    for mode in plan["modes"]:
        fns: dict[str, Callable[[], Any]] = {}
        for k, model in models.items():
            call, loss = jax_jobs._gen_fns(model, k)
            v = _cast(model.variables, dtype)
            if mode == "inference":
                fns[k] = jax_jobs._blocking(call, v, *args[k])
            else:
                step = jax_jobs._sgd(_f32_loss(loss))
                fns[k] = jax_jobs._Trainer(step, v["params"], v["state"], *args[k])
        m = measure(fns, **plan["opts"])
        ratios = {k: m.ratio(k, "none") for k in MASKS[1:]}
        verdicts = {k: verdict("masks", r["ratio"], info["gpu"]) for k, r in ratios.items()}
        rows.append({"mode": mode, **_stats(m), "ratios": ratios, "verdicts": verdicts})
    return rows


# --------------------------------------------------------------------------
# Keras 3 (torch or JAX backend)


def _keras_inputs(data: dict[str, np.ndarray], mask: str) -> list[np.ndarray]:
    if mask in ("post", "pre"):
        return [data["x"], data["lengths"].astype(np.int32)]
    if mask == "gaps":
        return [data["x"], data["mask"]]
    return [data["x"]]


def _keras_device() -> Row:
    import keras

    return torch_device()[1] if keras.backend.backend() == "torch" else jax_device()


def _keras_jit(model: Any) -> Callable[..., Any]:
    """A Keras model (JAX backend) as a jitted function of its inputs (inference)."""
    import jax

    tv = [v.value for v in model.trainable_variables]
    ntv = [v.value for v in model.non_trainable_variables]

    def call(tv: Any, ntv: Any, *inputs: Any) -> Any:
        arg = list(inputs) if len(inputs) > 1 else inputs[0]
        return model.stateless_call(tv, ntv, arg, training=False)[0]

    return partial(jax.jit(call), tv, ntv)


BF16_KERAS = (
    "seqdsl's Keras emission builds float32 layers (the language declares f32/f64 "
    "inputs): bfloat16 is not run on Keras"
)


def keras_kernel_row(cell: str, mask: str, dtype_name: str, s: dict[str, int], train: bool) -> Row:
    """seqdsl's Keras emission on Keras' torch (profiled) or JAX (compiled HLO)
    backend: the kernel of an inference call, its output against the reference."""
    import keras

    if dtype_name != "float32":
        return {"skipped": BF16_KERAS}
    info = _keras_device()
    prog = load(cell, s["U"], mask)
    rec: Row = {"promised": promised(prog, "keras")}
    model = prog.build("keras", seed=0)
    weights = model.canonical_weights()
    data = check_data(s["B"], s["T"], s["U"], mask)
    ins = _keras_inputs(data, mask)
    if keras.backend.backend() == "torch":
        import torch

        arg = ins if len(ins) > 1 else ins[0]
        with torch_exact(), torch.no_grad():
            model(arg, training=False)
            y, rec["inference"] = torch_profile(lambda: model(arg, training=False), info["gpu"])
        out = keras.ops.convert_to_numpy(y)
    else:
        import jax

        f = _keras_jit(model)
        with jax_exact():
            compiled = jax.jit(f).lower(*ins).compile()
            rec["inference"] = hlo_kernels(compiled.as_text())
            out = np.asarray(compiled(*ins))
    rec["numbers"] = numbers(out, reference(prog, weights, data, mask), "float32")
    rec["on_promised_kernel"] = _as_promised(rec, info["gpu"])
    return rec


def keras_section(cell: str, b: int, t: int, u: int, dtype_name: str, plan: Row) -> list[Row]:
    """Section 3 on the device, inference: Keras 3's own masked model vs ours (the
    native torch or JAX emission, and our Keras emission), the same weights."""
    import keras
    from suite import keras_jobs
    from suite.models import load as load_bench
    from suite.models import make_data

    if dtype_name != "float32":
        return [{"skipped": BF16_KERAS}]
    backend = keras.backend.backend()
    info = _keras_device()
    data = make_data(b, t, u, "post")
    lengths32 = data.lengths.astype(np.int32)
    prog = load_bench(cell, u, "post")
    ours_k = prog.build("keras", seed=0)
    canonical = ours_k.canonical_weights()
    k3 = keras_jobs._keras_model(keras, cell, t, u)
    k3.set_weights(keras_jobs._weights_list(cell, canonical))
    infer: dict[str, Callable[[], Any]] = {}
    if backend == "torch":
        import torch

        dev, _ = torch_device()
        sync = torch_sync(dev)

        def timed(f: Callable[..., Any], *args: Any) -> Callable[[], Any]:
            def run() -> Any:
                with torch.no_grad():
                    y = f(*args)
                sync()
                return y

            return run

        net = prog.build("torch", seed=0)
        net.load_canonical(canonical)
        net.to(dev).eval()
        xt, lt = torch.from_numpy(data.x).to(dev), torch.from_numpy(data.lengths).to(dev)
        x_k, m_k, n_k = (keras.ops.convert_to_tensor(a) for a in (data.x, data.mask, lengths32))
        infer["keras3"] = timed(partial(k3, training=False), [x_k, m_k])
        infer["ours-keras"] = timed(partial(ours_k, training=False), [x_k, n_k])
        infer["ours-torch"] = timed(partial(net, lengths=lt), xt)
    else:
        import jax
        import jax.numpy as jnp

        net = prog.build("jax", seed=0)
        net.load_canonical(canonical)
        xj, mj, nj = jnp.asarray(data.x), jnp.asarray(data.mask), jnp.asarray(lengths32)
        apply = jax.jit(lambda v, x, n: net.apply(v, x, lengths=n))
        for k, f, args in (
            ("keras3", _keras_jit(k3), (xj, mj)),
            ("ours-keras", _keras_jit(ours_k), (xj, nj)),
            ("ours-jax", partial(apply, net.variables), (xj, nj)),
        ):
            infer[k] = partial(lambda f, args: jax.block_until_ready(f(*args)), f, args)
    outs = {k: np.asarray(keras.ops.convert_to_numpy(f())) for k, f in infer.items()}
    diffs = {k: float(np.max(np.abs(v - outs["keras3"]))) for k, v in outs.items() if k != "keras3"}
    m = measure(infer, **plan["opts"])
    ratios = {k: m.ratio("keras3", k) for k in infer if k.startswith("ours")}
    verdicts = {k: verdict("keras", r["ratio"], info["gpu"]) for k, r in ratios.items()}
    note = "inference only: Keras 3's training step is timed by bench/run.py section 3 (CPU)"
    return [
        {"mode": "inference", **_stats(m), "ratios_keras3_over": ratios}
        | {"max_abs_diff_vs_keras3": diffs, "verdicts": verdicts, "notes": [note]}
    ]


# --------------------------------------------------------------------------
# workers and main


def worker(framework: str, job_path: Path) -> int:
    job = json.loads(job_path.read_text(encoding="utf-8"))
    out = Path(job["result"])
    budget = Budget(job["budget_s"])
    plan = PLANS[job["mode"]]

    def emit(rec: Row) -> None:
        with out.open("a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")

    if framework in ("torch", "keras-torch"):
        import torch

        if job["mode"] == "dry-run":
            torch.set_num_threads(1)
        info = torch_device()[1]
    else:
        info = jax_device()
    info["framework"] = framework
    emit({"info": info})
    if job["mode"] == "gpu" and not info["gpu"]:
        error = (
            f"no CUDA GPU visible to {framework} (device {info['device']}); "
            "run with --dry-run on a machine without one"
        )
        emit({"part": "setup", "framework": framework, "error": error})
        return 1
    kp, tp = plan["kernels"], plan["table"]
    jobs: list[Iterable[tuple[Row, Callable[[], list[Row]]]]] = []
    if framework == "torch":
        if "kernels" in job["parts"]:
            jobs.append(kernel_jobs(framework, kp, lambda d: kp["cells"][d], torch_kernel_row))
        if "table" in job["parts"]:
            sections = {"handwritten": torch_handwritten, "masks": torch_masks}
            jobs.append(table_jobs(framework, tp, sections))
    elif framework == "jax":
        if "kernels" in job["parts"]:
            jobs.append(kernel_jobs(framework, kp, lambda d: kp["cells"][d], jax_kernel_row))
        if "table" in job["parts"]:
            sections = {"handwritten": jax_handwritten, "masks": jax_masks}
            jobs.append(table_jobs(framework, tp, sections))
    else:
        if "kernels" in job["parts"]:
            jobs.append(kernel_jobs(framework, kp, lambda d: kp["keras_cells"], keras_kernel_row))
        if "table" in job["parts"]:
            jobs.append(table_jobs(framework, tp, {"keras": keras_section}))
    for j in jobs:
        run_rows(j, budget, emit)
    return 0


def worker_env(framework: str, dry_run: bool) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    if framework.startswith("keras-"):
        env["KERAS_BACKEND"] = framework.split("-", 1)[1]
    if dry_run:
        env.update(
            CUDA_VISIBLE_DEVICES="",
            JAX_PLATFORMS="cpu",
            OMP_NUM_THREADS="1",
            MKL_NUM_THREADS="1",
            OPENBLAS_NUM_THREADS="1",
        )
        flags = (
            env.get("XLA_FLAGS", "")
            + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        )
        env["XLA_FLAGS"] = flags.strip()
    else:
        # one worker at a time holds the GPU; JAX would take 75% of its memory at start
        env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    return env


def run_worker(
    framework: str, mode: str, parts: list[str], budget_s: float, kill_s: float
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    with tempfile.TemporaryDirectory(prefix="seqdsl-gpu-check-") as tmp:
        job, result = Path(tmp) / "job.json", Path(tmp) / "result.jsonl"
        job.write_text(
            json.dumps({"mode": mode, "parts": parts, "budget_s": budget_s, "result": str(result)}),
            encoding="utf-8",
        )
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--worker",
            framework,
            "--job",
            str(job),
        ]
        t0 = time.perf_counter()
        info: dict[str, Any] = {}
        try:
            proc = subprocess.run(
                cmd,
                env=worker_env(framework, mode == "dry-run"),
                cwd=str(ROOT),
                timeout=kill_s,
                capture_output=True,
                text=True,
            )
            info["returncode"] = proc.returncode
            tail = proc.stderr
        except subprocess.TimeoutExpired as e:
            info["returncode"] = None
            info["timed_out"] = True
            tail = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        tail = "\n".join(ln for ln in tail.splitlines() if not ln.startswith("USDT:"))
        if tail.strip():
            sys.stderr.write(f"[{framework}]\n{tail[-4000:]}\n")
            if info.get("returncode"):
                info["stderr_tail"] = tail[-2000:]
        info["wall_s"] = round(time.perf_counter() - t0, 1)
        rows: list[dict[str, Any]] = []
        if result.exists():
            for line in result.read_text(encoding="utf-8").splitlines():
                rec = json.loads(line)
                if "info" in rec:
                    info.update(rec["info"])
                else:
                    rows.append(rec)
    return info, rows


def failures(doc: dict[str, Any]) -> list[str]:
    """What went wrong: workers that failed or overran, rows with errors, numbers that failed."""
    out = []
    for fw, info in doc["workers"].items():
        if info.get("timed_out"):
            out.append(f"{fw}: killed after its time share")
        elif info.get("returncode") != 0:
            out.append(f"{fw}: exit status {info.get('returncode')}")
    for part in ("kernels", "table", "setup"):
        for r in doc["results"].get(part, []):
            where = f"{r.get('framework')} {r.get('section', '')} {r.get('cell', '')} {r.get('mask', '')} {r.get('dtype', '')}"
            if "error" in r:
                out.append(f"{where}: {r['error']}")
            elif "numbers" in r and not r["numbers"]["pass"]:
                out.append(
                    f"{where}: max abs diff {r['numbers']['max_abs_diff']:.3g} > {r['numbers']['tolerance']}"
                )
            elif str(r.get("skipped", "")).startswith("out of time"):
                out.append(f"{where}: skipped, out of time")
    return out


def render(doc: dict[str, Any]) -> str:
    lines = [f"device: {doc['device']}  (gpu: {doc['gpu']}, mode: {doc['mode']})", "", "kernels:"]
    lines.append(
        f"  {'framework':<12}{'dtype':<10}{'cell':<12}{'mask':<6}{'promised':<28}{'inference':<18}{'train':<18}{'max diff':<10}ok"
    )
    for r in doc["results"].get("kernels", []):
        if "skipped" in r or "error" in r:
            continue
        lines.append(
            f"  {r['framework']:<12}{r['dtype']:<10}{r['cell']:<12}{r['mask']:<6}"
            f"{','.join(r.get('promised', [])):<28}{r['inference']['kernel']:<18}"
            f"{r.get('train', {}).get('kernel', '-'):<18}{r['numbers']['max_abs_diff']:<10.2g}"
            f"{'pass' if r['numbers']['pass'] else 'FAIL'}"
        )
    lines += ["", "table:"]
    for r in doc["results"].get("table", []):
        head = (
            f"  {r['framework']:<12}{r['section']:<12}{r['cell']:<7}{r['dtype']:<9}{r['size']:<20}"
        )
        if "skipped" in r or "error" in r:
            lines.append(head + (r.get("skipped") or "ERROR " + r["error"])[:90])
            continue
        med = {k: v["median_ms"] for k, v in r["variants"].items()}
        if r["section"] == "handwritten":
            tail = f"gen/hand {r['ratio']['ratio']:.2f} ({r['baseline']}) {r['verdict']}"
        elif r["section"] == "masks":
            tail = " ".join(f"{k} {v['ratio']:.2f}" for k, v in r["ratios"].items())
        else:
            tail = " ".join(
                f"keras3/{k} {v['ratio']:.2f}" for k, v in r["ratios_keras3_over"].items()
            )
        lines.append(
            head
            + f"{r['mode']:<10}"
            + " ".join(f"{k} {v:.3g}" for k, v in med.items())
            + " ms | "
            + tail
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--dry-run", action="store_true", help="CPU kernels, small sizes (CI)")
    ap.add_argument("--parts", default=",".join(PARTS), help="kernels,table")
    ap.add_argument("--frameworks", default=",".join(FRAMEWORKS), help=", ".join(FRAMEWORKS))
    ap.add_argument(
        "--timeout", type=float, help="seconds for the whole run (default: 540 on a GPU, 300 dry)"
    )
    ap.add_argument("--out", type=Path, help="JSON output path")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--job", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args.worker, args.job)
    mode = "dry-run" if args.dry_run else "gpu"
    parts = [p for p in args.parts.split(",") if p]
    frameworks = [f for f in args.frameworks.split(",") if f]
    for p in parts:
        if p not in PARTS:
            ap.error(f"unknown part {p!r}; choose from {', '.join(PARTS)}")
    for f in frameworks:
        if f not in FRAMEWORKS:
            ap.error(f"unknown framework {f!r}; choose from {', '.join(FRAMEWORKS)}")
    timeout = args.timeout or PLANS[mode]["timeout_s"]
    command = "python bench/gpu_check.py" + "".join(
        f" {a}" for a in (argv if argv is not None else sys.argv[1:])
    )
    t_start = time.monotonic()
    load_start, meter = common.load_average(), common.CpuMeter()
    workers: dict[str, Any] = {}
    results: dict[str, list[dict[str, Any]]] = {}
    for i, fw in enumerate(frameworks):
        left = timeout - (time.monotonic() - t_start)
        share = left * WEIGHT[fw] / sum(WEIGHT[f] for f in frameworks[i:])
        # the worker stops starting rows at 85% of its share, and is killed at all of it
        print(f"== {fw}: {', '.join(parts)} ({share:.0f} s)", file=sys.stderr, flush=True)
        info, rows = run_worker(fw, mode, parts, 0.85 * share, max(share, 1.0))
        workers[fw] = info
        for r in rows:
            results.setdefault(r["part"], []).append(r)
    infos = list(workers.values())
    gpu = any(i.get("gpu") for i in infos)
    devices = sorted({str(i["device"]) for i in infos if "device" in i})
    doc: dict[str, Any] = {
        "benchmark": "seqdsl GPU check: bench/gpu_check.py (docs/benchmarks.md, GPU)",
        "command": command,
        "mode": mode,
        "device": "; ".join(devices) if devices else None,
        "gpu": gpu,
        "machine": common.machine(),
        "versions": common.versions(
            "torch", "jax", "jaxlib", "keras", "numpy", "nvidia-cudnn-cu12"
        ),
        "plan": PLANS[mode],
        "tolerance": TOLERANCE,
        "targets": {k: f"{name} {op} {bound}" for k, (name, op, bound) in TARGETS.items()},
        "timeout_s": timeout,
        "wall_s": round(time.monotonic() - t_start, 1),
        # load averages, and from /proc/stat the cores busy: all, this run's, others'
        "load": {"start": load_start, "end": common.load_average(), **meter.read()},
        "cpu_s": round(sum(os.times()[2:4]), 1),  # the workers' CPU time, all of them
        "workers": workers,
        "results": results,
    }
    doc["failures"] = failures(doc)
    print(render(doc))
    name = "gpu_check_cpu_dry_run" if mode == "dry-run" else "gpu_check_gpu"
    if parts != list(PARTS):
        name += "_" + "_".join(parts)
    if frameworks != list(FRAMEWORKS):
        name += "_" + "_".join(frameworks)
    name += ".json"
    out = args.out or HERE / "results" / "issue15" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    for f in doc["failures"]:
        print(f"FAILED: {f}", file=sys.stderr)
    return 1 if doc["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
