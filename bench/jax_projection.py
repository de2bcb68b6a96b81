"""JAX on XLA's CPU backend: a masked LSTM/GRU scan with the input projection in the
scan body vs before it (hoisted, on the time-major x), per shape.

    /work/venv/bin/python bench/jax_projection.py [--cell lstm] [--T 64]
        [--B 1,32,256] [--F 64,128,256,512] [--U 64,128,256] [--clock cpu]

Prints body / hoisted per (B, F, U): the numbers behind _hoist_projection() in the
emitted JAX modules (docs/benchmarks.md). One layer, lengths uniform in [1, T],
one XLA thread (as bench/run.py), jitted, the median of interleaved repeats.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

os.environ.setdefault(
    "XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402


def layer(p: Any, x: Any, mask: Any, hoist: bool, cell: str) -> Any:
    """One masked layer (the mask in the body, as the emitted _scan); outputs [T, B, U]."""
    kernel, recurrent_kernel, bias, recurrent_bias = p
    xs = jnp.swapaxes(x, 0, 1)
    if hoist:
        xs = xs @ kernel + bias
    zeros = jnp.zeros((x.shape[0], recurrent_kernel.shape[0]), x.dtype)

    def body(states: Any, inputs: Any) -> Any:
        x_t, m_t = inputs
        xw = x_t if hoist else x_t @ kernel + bias
        if cell == "gru":
            (h,) = states
            xz, xr, xh = jnp.split(xw, 3, axis=-1)
            hz, hr, hh = jnp.split(h @ recurrent_kernel + recurrent_bias, 3, axis=-1)
            z, r = jax.nn.sigmoid(xz + hz), jax.nn.sigmoid(xr + hr)
            new = (z * h + (1.0 - z) * jnp.tanh(xh + r * hh),)
        else:
            h, c = states
            i, f, g, o = jnp.split(xw + h @ recurrent_kernel, 4, axis=-1)
            c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
            new = (jax.nn.sigmoid(o) * jnp.tanh(c), c)
        keep = m_t[:, None]
        new = tuple(jnp.where(keep, n, s) for n, s in zip(new, states, strict=True))
        return new, new[0]

    start = (zeros,) if cell == "gru" else (zeros, zeros)
    return lax.scan(body, start, (xs, mask.T))[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cell", default="lstm", choices=("lstm", "gru"))
    ap.add_argument("--T", type=int, default=64)
    ap.add_argument("--B", default="1,32,256")
    ap.add_argument("--F", default="64,128,256,512")
    ap.add_argument("--U", default="64,128,256")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--clock", choices=("wall", "cpu"), default="cpu", help="elapsed or CPU time")
    a = ap.parse_args()
    now = time.perf_counter if a.clock == "wall" else time.process_time
    gates = 3 if a.cell == "gru" else 4
    print(f"{a.cell}, T={a.T}, jax {jax.__version__} on {jax.default_backend()}, {a.clock} ms")
    for b in map(int, a.B.split(",")):
        for u in map(int, a.U.split(",")):
            for f in map(int, a.F.split(",")):
                rng = np.random.default_rng(0)
                shapes = [(f, gates * u), (u, gates * u), (gates * u,), (gates * u,)]
                p = tuple(jnp.asarray(rng.normal(0, 0.1, s).astype(np.float32)) for s in shapes)
                x = jnp.asarray(rng.normal(size=(b, a.T, f)).astype(np.float32))
                lengths = rng.integers(1, a.T + 1, b)
                mask = jnp.asarray(np.arange(a.T)[None, :] < lengths[:, None])
                runs = {}
                for hoist in (False, True):
                    fn = jax.jit(lambda p, x, m, hoist=hoist: layer(p, x, m, hoist, a.cell))
                    runs["hoisted" if hoist else "body"] = lambda fn=fn, p=p, x=x, mask=mask: (
                        jax.block_until_ready(fn(p, x, mask))
                    )
                for run in runs.values():  # compile, warm up
                    run()
                    run()
                t0 = now()
                runs["body"]()
                inner = max(1, int(0.01 / max(now() - t0, 1e-5)))
                times: dict[str, list[float]] = {k: [] for k in runs}
                for _ in range(a.repeat):  # interleaved
                    for k, run in runs.items():
                        t0 = now()
                        for _ in range(inner):
                            run()
                        times[k].append((now() - t0) / inner * 1e3)
                med = {k: statistics.median(v) for k, v in times.items()}
                print(
                    f"B={b:<4} F={f:<4} U={u:<4} (kernel {f}x{gates * u}): body {med['body']:8.3f}"
                    f"  hoisted {med['hoisted']:8.3f}  body/hoisted {med['body'] / med['hoisted']:.2f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
