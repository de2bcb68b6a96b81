"""Deploying the generated JAX modules as JAX users do (docs/deploy.md, docs/scale.md).

- jax.export with a symbolic batch and symbolic time: the exported program is
  serialized, deserialized and run on other batch sizes and time lengths, and
  must equal ``apply`` run at those concrete shapes (1e-5, float32; jax.jit, as
  the model class runs it), for every example without externs and for post,
  pre and gap masks on a small recurrent stack; clear errors where a symbolic
  size cannot satisfy what the model needs.
- jax.jit with the batch sharded over several devices (a NamedSharding on a
  Mesh of 4 CPU devices, Explicit and Auto axes, in a subprocess started with
  --xla_force_host_platform_device_count=4): inference and a training step
  equal the unsharded ones, and the outputs stay sharded on the batch.

The default run takes a representative subset; ``-m full`` every example.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")
jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")

import seqdsl  # noqa: E402
from seqdsl.checker import CheckedModel  # noqa: E402
from tests.test_jax_backend import example_inputs, module_of  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.seq")) + sorted(
    (ROOT / "examples" / "custom").glob("*.seq")
)
TOL = 1e-5
#: (batch, time) pairs each exported program runs on: two batch sizes, two lengths
SHAPES = ((2, 10), (5, 16))
FULL_SHAPES = ((2, 10), (5, 10), (2, 16), (5, 16))  # -m full: every pair
#: the default run's examples: lengths and conv windows, two time symbols with
#: attention and a `with mask` output, a divisibility constraint, cell blocks
#: with gap masks (the other examples: -m full)
DEFAULT_EXAMPLES = (
    "conv_frontend_lstm", "attention_seq2seq", "masking_temporal_split", "builtin_cells",
)  # fmt: skip


def _ids(paths: list[Path]) -> list[str]:
    return [p.stem for p in paths]


def _without_externs(paths: list[Path]) -> list[Path]:
    """Examples whose models have no extern layer (their implementations are
    arbitrary Python, outside what seqdsl can promise about export)."""
    return [p for p in paths if not any(m.externs for m in seqdsl.load(p).models)]


ALL = _without_externs(EXAMPLES)
SUBSET = [p for p in ALL if p.stem in DEFAULT_EXAMPLES]


# --------------------------------------------------------------------------
# helpers


def build(path: Path) -> tuple[CheckedModel, Any, Any]:
    prog = seqdsl.load(path)
    jm = prog.build("jax", seed=0)
    return prog.model(), jm, module_of(jm)


def multiples(model: CheckedModel) -> dict[str, int]:
    """Size symbols the checker requires to be multiples (TemporalSplit: T % 2 == 0)."""
    out: dict[str, int] = {}
    for c in model.constraints:
        syms = sorted(c.dim.symbols())
        if len(syms) == 1 and c.minimum is None:
            out[syms[0]] = int(np.lcm(out.get(syms[0], 1), c.divisor))
    return out


#: lower bounds the symbolic time needs: a valid window must fit in the steps that
#: reach it (the checker's run-time constraints T >= 5 and (T + 1) // 2 >= 5; Zoo: T >= 3)
CONSTRAINTS = {"ConvFrontend": ("t >= 9",), "Zoo": ("t >= 3",)}


def symbols(mod: Any, model: CheckedModel) -> dict[str, Any]:
    """One jax.export symbol per size symbol of the .seq inputs (B -> b, T -> t),
    all in one scope; a symbol that must be a multiple of k is given as k*name."""
    names = sorted({d for _, dims in mod.INPUTS.values() for d in dims if isinstance(d, str)})
    mult = multiples(model)
    text = ", ".join(f"{mult[n]}*{n.lower()}" if n in mult else n.lower() for n in names)
    dims = jax.export.symbolic_shape(text, constraints=CONSTRAINTS.get(model.name, ()))
    return dict(zip(names, dims, strict=True))


def gap_mask(b: int, t: int, seed: int) -> np.ndarray:
    """A mask with gaps: a full row first, an empty row last."""
    m = np.random.default_rng(seed).random((b, t)) < 0.6
    m[0] = True
    m[-1] = False
    return m


def call_args(
    mod: Any, model: CheckedModel, b: int, t: int, seed: int = 0
) -> tuple[list[np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Inputs for batch b and time t, with lengths (inputs with a pad side) and
    masks (masked inputs without one: gaps)."""
    inputs, lengths = example_inputs(model, seed=seed, t=t, b=b)
    masks = {}
    for name in list(lengths):
        if model.pads.get(name) is None:
            x = inputs[list(mod.INPUTS).index(name)]
            masks[name] = gap_mask(x.shape[0], x.shape[1], seed)
            del lengths[name]
    return inputs, {k: v.astype(np.int32) for k, v in lengths.items()}, masks


def specs(
    mod: Any, model: CheckedModel, inputs: list[np.ndarray], lengths: dict, masks: dict
) -> tuple[list[Any], dict[str, Any], dict[str, Any]]:
    """Symbolic specs of apply's inputs, lengths and masks (declared sizes stay)."""
    scope = symbols(mod, model)

    def dims(name: str, n: int) -> tuple[Any, ...]:
        return tuple(scope[d] if isinstance(d, str) else d for d in mod.INPUTS[name][1][:n])

    xs = [jax.ShapeDtypeStruct(dims(name, x.ndim), x.dtype) for name, x in zip(mod.INPUTS, inputs, strict=True)]  # fmt: skip
    ls = {k: jax.ShapeDtypeStruct(dims(k, 1), np.int32) for k in lengths}
    ms = {k: jax.ShapeDtypeStruct(dims(k, 2), bool) for k in masks}
    return xs, ls, ms


def spec_of(a: Any) -> Any:
    return jax.ShapeDtypeStruct(a.shape, a.dtype)


def export_roundtrip(mod: Any, variables: Any, xs: list, ls: dict, ms: dict) -> Any:
    """jax.export with the given specs, serialized and deserialized."""

    def serve(variables: Any, inputs: list, lengths: dict, masks: dict) -> Any:
        return mod.apply(variables, *inputs, lengths=lengths or None, masks=masks or None)

    exported = jax.export.export(jax.jit(serve))(jax.tree.map(spec_of, variables), xs, ls, ms)
    blob = exported.serialize()
    assert isinstance(blob, (bytes, bytearray)) and len(blob) > 0
    return jax.export.deserialize(blob)


def compare(got: Any, want: Any, what: str) -> None:
    g, w = jax.tree.leaves(got), jax.tree.leaves(want)
    assert len(g) == len(w), what
    for i, (a, e) in enumerate(zip(g, w, strict=True)):
        a, e = np.asarray(a), np.asarray(e)
        assert a.shape == e.shape, f"{what} output {i}: shape {a.shape}, eager {e.shape}"
        if e.dtype == bool:
            assert (a == e).all(), f"{what} mask {i} differs"
        elif a.size:
            err = float(np.max(np.abs(a.astype(np.float64) - e)))
            assert err <= TOL, f"{what} output {i}: max error {err:.3g}"


def check_export(model: CheckedModel, jm: Any, shapes: Any, seed: int = 0) -> None:
    """Export jm's apply once with symbolic sizes, serialize, deserialize, and run
    it on every (batch, time) of ``shapes`` (a declared batch stays): equal to
    apply at those concrete shapes. Both sides run all shapes in one jax.jit
    (one compile each, instead of one per shape)."""
    mod = module_of(jm)
    fixed_b = next(iter(mod.INPUTS.values()))[1][0]
    k = multiples(model).get("T", 1)
    calls = []
    for b, t in shapes:
        b = fixed_b if isinstance(fixed_b, int) else b
        calls.append(call_args(mod, model, b, t - t % k, seed=seed + b + t))
    exported = export_roundtrip(mod, jm.variables, *specs(mod, model, *calls[0]))

    def run_exported(v: Any, calls: Any) -> Any:
        return [exported.call(v, *c) for c in calls]

    def run_apply(v: Any, calls: Any) -> Any:
        return [mod.apply(v, *x, lengths=ls or None, masks=ms or None) for x, ls, ms in calls]

    got = jax.jit(run_exported)(jm.variables, calls)
    want = jax.jit(run_apply)(jm.variables, calls)
    for (x, _, _), g, w in zip(calls, got, want, strict=True):
        compare(g, w, f"{model.name} shapes {[a.shape for a in x]}")


# --------------------------------------------------------------------------
# jax.export with symbolic batch and time


@pytest.mark.parametrize("path", SUBSET, ids=_ids(SUBSET))
def test_export_symbolic_batch_and_time(path: Path) -> None:
    model, jm, _ = build(path)
    check_export(model, jm, SHAPES)


@pytest.mark.full
@pytest.mark.parametrize("path", ALL, ids=_ids(ALL))
def test_export_symbolic_every_example(path: Path) -> None:
    model, jm, _ = build(path)
    check_export(model, jm, FULL_SHAPES)


SMALL = """
model Small {
    input x: f32[B, T, 3] pad(post) masked
    input y: f32[B, T, 3] pad(pre) masked
    input z: f32[B, T, 3] masked
    input u: f32[B, T, 3]
    hx = x -> LSTM(4, return_sequences=true) -> Bidirectional(GRU(3, return_sequences=true))
    hy = y -> GRU(4, return_sequences=true) -> Bidirectional(LSTM(3), merge_mode=sum)
    hz = z -> LSTM(4, return_sequences=true, go_backwards=true) -> GRU(3, return_sequences=true)
    hu = u -> Bidirectional(LSTM(3, return_sequences=true)) -> GRU(2, go_backwards=true)
    output hx with mask, hy, hz with mask, hu
}
"""


def test_export_symbolic_mask_kinds() -> None:
    """A small LSTM/GRU stack (Bidirectional, go_backwards) on a post, a pre, a
    gap-masked and an unmasked input (lengths for post and pre, a bool mask with
    gaps and an empty row for the third)."""
    prog = seqdsl.loads(SMALL, name="small")
    check_export(prog.model(), prog.build("jax", seed=1), SHAPES)


def test_export_symbolic_time_layer_zoo() -> None:
    """Window layers (Conv1D valid/same/causal with strides and dilation, pooling),
    time concat, attention, Flatten and Reshape with a symbolic T (and B), in
    inference."""
    source = """
model Zoo {
    input x: f32[B, T, 4] pad(post) masked
    input y: f32[B, T, 4] pad(pre) masked
    input m: mask[B, T]
    a = x -> Conv1D(5, 3, strides=2, activation=relu)
    b = x -> Conv1D(5, 3, padding=same, dilation_rate=2, activation=gelu)
    c = y -> Conv1D(5, 4, padding=causal, strides=3, activation=elu)
    d = Conv1D(3, 2, dilation_rate=2, padding=same)(x -> drop_mask, mask=m)
    e = x -> MaxPooling1D(2)
    f = y -> AveragePooling1D(3, strides=2, padding=same)
    g = MaxPooling1D(3, strides=1, padding=same)(x -> drop_mask, mask=m)
    i = x -> GlobalAveragePooling1D()
    n = TemporalSoftmax()(y -> drop_mask, mask=m)
    w6 = concat(x, y, axis=time)
    at = Attention(use_causal_mask=true)(x, y)
    mh = MultiHeadAttention(2, 3)(x, y)
    fl = x -> drop_mask -> Dense(2) -> Flatten()
    rs = x -> drop_mask -> Dense(2) -> Reshape([-1, 1])
    output a with mask, b with mask, c with mask, d with mask, e with mask, f with mask,
           g with mask, i, n, w6 with mask, at with mask, mh with mask, fl, rs
}
"""
    prog = seqdsl.loads(source, name="zoo")
    check_export(prog.model(), prog.build("jax", seed=3), ((3, 13), (4, 8)))


TRAIN = """
model Train {
    input x: f32[B, T, 3] pad(post) masked
    h = x -> LSTM(4, dropout=0.2, recurrent_dropout=0.3, return_sequences=true)
          -> Dropout(0.25) -> BatchNormalization() -> GRU(3)
    output h
}
"""


def test_export_training_step_with_rng() -> None:
    """apply(training=True) exported with a symbolic batch and time: dropout masks
    drawn from an rng argument (a raw uint32 key), BatchNormalization's batch
    statistics and its new moving statistics (return_state) equal apply's."""
    prog = seqdsl.loads(TRAIN, name="train")
    model, jm = prog.model(), prog.build("jax", seed=2)
    mod = module_of(jm)
    key = jax.random.PRNGKey(7)

    def step(variables: Any, x: Any, lengths: Any, rng: Any) -> Any:
        return mod.apply(variables, x, lengths=lengths, training=True, rng=rng, return_state=True)

    calls = [call_args(mod, model, b, t, seed=b) for b, t in SHAPES]
    xs, ls, _ = specs(mod, model, *calls[0])
    exported = jax.export.export(jax.jit(step))(
        jax.tree.map(spec_of, jm.variables), xs[0], ls["x"], spec_of(key)
    )
    exported = jax.export.deserialize(exported.serialize())
    for x, lengths, _ in calls:
        got = exported.call(jm.variables, x[0], lengths["x"], key)
        want = jax.jit(step)(jm.variables, x[0], lengths["x"], key)
        compare(got, want, f"training B, T = {x[0].shape[:2]}")


def test_export_divisibility_needs_a_multiple() -> None:
    """TemporalSplit needs an even T: a free symbolic T is refused with a clear
    error naming the constraint; T given as 2*k exports (test above)."""
    model, jm, mod = build(ROOT / "examples" / "masking_temporal_split.seq")
    b, t = jax.export.symbolic_shape("b, t")
    with pytest.raises(ValueError, match=r"needs T % 2 == 0, which the symbolic size t does not"):
        jax.export.export(jax.jit(mod.apply))(
            jax.tree.map(spec_of, jm.variables), jax.ShapeDtypeStruct((b, t), np.int32)
        )
    with pytest.raises(ValueError, match=r"T = 5, but .* needs T % 2 == 0"):  # concrete sizes
        mod.apply(jm.variables, np.ones((2, 5), np.int32))


def test_export_needs_a_time_bound_after_shortening_windows() -> None:
    """Two strided valid convolutions (windows of 5 and 3) need T >= 5 and
    (T + 1) // 2 >= 5 steps, run-time constraints: a symbolic t without a lower bound
    that proves them is refused naming the constraint and the bound that proves them
    all (t >= 9 exports, test above)."""
    model, jm, mod = build(ROOT / "examples" / "conv_frontend_lstm.seq")
    for bound, line in (("", 22), ("t >= 5", 23)):
        b, t = jax.export.symbolic_shape("b, t", constraints=(bound,) if bound else ())
        with pytest.raises(
            ValueError,
            match=rf"Conv1D \(line {line}\) needs .*, which the symbolic size .* does not "
            r'guarantee: .* constraints=\("t >= 9",\)',
        ):
            jax.export.export(jax.jit(mod.apply))(
                jax.tree.map(spec_of, jm.variables),
                jax.ShapeDtypeStruct((b, t, 40), np.float32),
                lengths=jax.ShapeDtypeStruct((b,), np.int32),
            )


def doc_snippet(doc: str, section: str) -> str:
    """The first Python block of ``## {section}`` in docs/{doc}: the tests run the
    documented code as it stands there."""
    text = (ROOT / "docs" / doc).read_text(encoding="utf-8")
    start = text.index(f"\n## {section}\n")
    begin = text.index("```python\n", start) + len("```python\n")
    return text[begin : text.index("```", begin)]


# the code of docs/deploy.md, section JAX
DEPLOY_SNIPPET = doc_snippet("deploy.md", "JAX")


def test_deploy_doc_snippet(tmp_path: Path) -> None:
    source = seqdsl.load(ROOT / "examples" / "conv_frontend_lstm.seq").compile("jax")
    (tmp_path / "conv_frontend.py").write_text(source)
    sys.path.insert(0, str(tmp_path))
    try:
        exec(compile(DEPLOY_SNIPPET, "docs/deploy.md", "exec"), {})
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("conv_frontend", None)


# --------------------------------------------------------------------------
# jax.jit under a NamedSharding of the batch (4 CPU devices, in a subprocess)

# the code of docs/scale.md, section JAX (`mod` is a generated module, `inputs` its
# inputs, `lengths`/`masks` as apply takes them)
SCALE_SNIPPET = doc_snippet("scale.md", "JAX")

SHARDED_SCRIPT = """
import json, sys
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

import seqdsl
from tests.test_jax_deploy import call_args

assert jax.device_count() == 4, jax.devices()
report = []
MESHES = {  # the snippet's mesh (Explicit axes: shardings in the types), and Auto axes
    "explicit": 'jax.make_mesh((jax.device_count(),), ("batch",))',
    "auto": 'jax.sharding.Mesh(jax.devices(), ("batch",))',
}
for arg in sys.argv[1:]:
    kind, path = arg.split("=", 1)
    code = SNIPPET.replace(MESHES["explicit"], MESHES[kind])
    assert MESHES[kind] in code
    prog = seqdsl.load(path)
    model, jm = prog.model(), prog.build("jax", seed=0)
    mod = sys.modules[type(jm).__module__]
    fixed = next(iter(mod.INPUTS.values()))[1][0]
    b = fixed if isinstance(fixed, int) else 8
    inputs, lengths, masks = call_args(mod, model, b, 12)
    plain = mod.init(jax.random.key(0))
    want = jax.jit(mod.apply)(plain, *inputs, lengths=lengths, masks=masks)
    first = jax.tree.leaves(want)[0]
    targets = np.random.default_rng(0).normal(size=first.shape).astype(np.float32)
    host = dict(inputs=inputs, lengths=lengths, masks=masks, targets=targets)
    ns = {"mod": mod, **host}
    exec(compile(code, "docs/scale.md", "exec"), ns)
    sharded_out, sharded_vars, sharded_value = ns["outputs"], ns["variables"], ns["value"]
    # the same step, unsharded
    ns1 = {"mod": mod}  # the imports and the functions of the snippet, nothing sharded
    head, defs = SNIPPET[:SNIPPET.index("mesh = ")], SNIPPET[SNIPPET.index("def loss"):SNIPPET.index("targets = ")]
    exec(compile(head + defs, "plain", "exec"), ns1)
    want_vars, want_value = ns1["train_step"](plain, inputs, lengths, masks, targets)
    err = lambda a, e: float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(e, np.float64)))) if np.asarray(e).size else 0.0
    out_err = max(err(a, e) for a, e in zip(jax.tree.leaves(sharded_out), jax.tree.leaves(want)))
    masks_equal = all((np.asarray(a) == np.asarray(e)).all() for a, e in
                      zip(jax.tree.leaves(sharded_out), jax.tree.leaves(want)) if np.asarray(e).dtype == bool)
    var_err = max(err(a, e) for a, e in zip(jax.tree.leaves(sharded_vars), jax.tree.leaves(want_vars)))
    rows = ns["rows"]
    on_batch = [bool(o.sharding.is_equivalent_to(rows, o.ndim)) for o in jax.tree.leaves(sharded_out)]
    devices = [len(o.sharding.device_set) for o in jax.tree.leaves(sharded_out)]
    params_replicated = all(p.sharding.is_fully_replicated for p in jax.tree.leaves(sharded_vars["params"]))
    report.append(dict(name=arg, out_err=out_err, masks_equal=masks_equal, var_err=var_err,
                       value_err=err(sharded_value, want_value), on_batch=on_batch, devices=devices,
                       params_replicated=params_replicated))
print("REPORT" + json.dumps(report))
"""


def run_sharded(runs: list[tuple[str, Path]]) -> list[dict[str, Any]]:
    """Each (mesh kind, example) in the subprocess: a report per run."""
    script = "SNIPPET = " + repr(SCALE_SNIPPET) + "\n" + SHARDED_SCRIPT
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4 --xla_backend_optimization_level=0"
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["JAX_PLATFORMS"] = "cpu"
    args = [f"{kind}={path}" for kind, path in runs]
    proc = subprocess.run([sys.executable, "-c", script, *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("REPORT"))
    return list(json.loads(line[len("REPORT") :]))


def check_sharded(runs: list[tuple[str, Path]]) -> None:
    for r in run_sharded(runs):
        name = r["name"]
        assert r["out_err"] <= TOL and r["masks_equal"], f"{name}: sharded outputs differ: {r}"
        assert r["var_err"] <= TOL and r["value_err"] <= TOL, f"{name}: sharded step differs: {r}"
        assert all(r["on_batch"]) and all(n == 4 for n in r["devices"]), f"{name}: {r}"
        assert r["params_replicated"], f"{name}: {r}"


SHARDED_DEFAULT = [
    (kind, ROOT / "examples" / f"{name}.seq")
    for kind in ("explicit", "auto")
    for name in ("conv_frontend_lstm", "attention_seq2seq")
]


def test_sharded_batch_inference_and_training() -> None:
    """Explicit axes (jax.make_mesh) and Auto axes (jax.sharding.Mesh)."""
    check_sharded(SHARDED_DEFAULT)


@pytest.mark.full
def test_sharded_batch_every_example() -> None:
    check_sharded([(kind, p) for kind in ("explicit", "auto") for p in ALL])


# keep the snippets the docs quote readable
assert textwrap.dedent(DEPLOY_SNIPPET) == DEPLOY_SNIPPET
