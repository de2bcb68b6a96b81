"""The generated PyTorch modules outside eager mode: torch.func (functional_call,
grad, vmap), torch.compile, torch.export, torch.jit.trace, state_dict.

Under torch.compile, torch.export and torch.func (seqdsl.runtime.torch.tracing())
the masked recurrent layers take a shape-static path (fused_rnn_static): the padded
batch over every step, h gathered at each row's last valid step, LSTM's final c
kept exact by saturated gates at the padding steps; nothing reads the data in
Python. Under vmap they run Keras' step function. The default run checks a
representative subset; ``pytest -m full`` runs every example. Small shapes: the
test machine has 2 cores.
"""

from __future__ import annotations

import inspect
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

import seqdsl  # noqa: E402
from seqdsl.checker import CheckedModel  # noqa: E402
from seqdsl.runtime.torch import CellRNN, Recurrent  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_torch_backend import example_inputs  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.seq"))
# examples/custom without extern layers (those need their registered implementations)
CUSTOM = [p for p in sorted((ROOT / "examples" / "custom").glob("*.seq"))
          if "extern layer" not in p.read_text()]  # fmt: skip
TOL = 1e-5
RECURRENT = {"LSTM", "GRU", "SimpleRNN", "RNN", "Bidirectional"}

# A small recurrent model under each mask kind: LSTM's final c (return_state), a
# go_backwards GRU, Bidirectional, and a two-layer LSTM stack whose top returns c.
SMALL = """
model Small {{
    input x: f32[B, T, 3]{decl}
    s, h, c = LSTM(4, return_sequences=true, return_state=true)({call})
    g = s -> GRU(2, return_sequences=true, go_backwards=true)
    b = Bidirectional(LSTM(2, return_sequences=true))(s)
    k1 = LSTM(3, return_sequences=true)({call})
    k, kh, kc = LSTM(3, return_state=true)(k1)
    output g with mask, b with mask, h, c, k, kc
}}
"""
MASKS = {
    "post": SMALL.format(decl=" pad(post) masked", call="x"),
    "pre": SMALL.format(decl=" pad(pre) masked", call="x"),
    "gaps": SMALL.format(decl="\n    input m: mask[B, T]", call="x, mask=m"),
    "tiny": """
model Tiny {
    input x: f32[B, T, 3] pad(post) masked
    y, h, c = LSTM(4, return_state=true)(x)
    output y, c
}
""",
}
SMALL_T = 5  # time steps of the MASKS models (traced graphs unroll the RNN ops per step)


# --------------------------------------------------------------------------
# helpers


def load(name: str) -> tuple[CheckedModel, Any]:
    """(model, module in eval mode): an example's stem, a custom/ stem or a MASKS key."""
    if name in MASKS:
        prog = seqdsl.loads(MASKS[name], name=f"<{name}>")
    else:
        path = ROOT / "examples" / f"{name}.seq"
        prog = seqdsl.load(path if path.exists() else ROOT / "examples" / "custom" / f"{name}.seq")
    return prog.model(), prog.build("torch", seed=1).eval()


def tensors(model: CheckedModel, **kw: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Positional inputs and keyword arguments (lengths) for model(*args, **kwargs)."""
    if model.model.name in ("Small", "Tiny"):
        kw.setdefault("t", SMALL_T)
    inputs, lengths = example_inputs(model, **kw)
    args = tuple(torch.as_tensor(x) for x in inputs)
    if not lengths:
        return args, {}
    return args, {"lengths": {k: torch.as_tensor(v) for k, v in lengths.items()}}


def flat(x: object) -> list[Any]:
    if isinstance(x, (tuple, list)):
        return [a for item in x for a in flat(item)]
    return [x]


def values(out: object) -> list[Any]:
    """The outputs that are not masks."""
    return [o for o in flat(out) if o.dtype != torch.bool]


def assert_same(got: object, want: object, tol: float = 0.0, what: str = "") -> None:
    """Every output: masks exactly, values within tol (0: bit-identical)."""
    g, w = flat(got), flat(want)
    assert len(g) == len(w), what
    for i, (a, b) in enumerate(zip(g, w, strict=True)):
        assert a.shape == b.shape and a.dtype == b.dtype, f"{what} output {i}"
        if tol == 0.0 or b.dtype == torch.bool:
            assert torch.equal(a, b), f"{what} output {i} differs"
        else:
            err = float((a.double() - b.double()).abs().max().detach()) if a.numel() else 0.0
            assert err <= tol, f"{what} output {i}: max error {err:.3g}"


def eager(net: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The eager outputs in inference (from the initial states of a stateful model)."""
    net.reset_states()
    with torch.no_grad():
        return net(*args, **kwargs)


def is_masked(model: CheckedModel) -> bool:
    return any(t.mask is not None for t in model.types.values() if hasattr(t, "mask"))


# The time dimensions whose range the model narrows: two stride-2 valid Conv1D
# (kernels 5 and 3) need T >= 9, and torch.export's shape reasoning wants each
# convolution to give at least 2 steps (T >= 13); TemporalSplit(2) needs an even T.
TIME_DIMS: dict[str, Any] = {
    "conv_frontend_lstm": lambda: torch.export.Dim("T", min=13, max=1024),
    "masking_temporal_split": lambda: 2 * torch.export.Dim("half", min=1, max=512),
}


def dynamic_shapes(
    net: Any, model: CheckedModel, kwargs: dict[str, Any], time: bool, name: str = ""
) -> Any:
    """torch.export's dynamic_shapes: one Dim per declared symbol (the batch always;
    the other symbols with `time`), a stateful model's fixed batch excepted."""
    dims: dict[str, Any] = {}
    if time and name in TIME_DIMS:
        dims["T"] = TIME_DIMS[name]()

    def dim(symbol: object) -> Any:
        if not isinstance(symbol, str) or (symbol != "B" and not time):
            return None
        return dims.setdefault(symbol, torch.export.Dim(symbol, min=2, max=1024))

    sig = inspect.signature(net.forward)
    names = [n for n, p in sig.parameters.items() if p.kind == p.POSITIONAL_OR_KEYWORD]
    spec: dict[str, Any] = {}
    for name_ in names:
        axes = {i: dim(d) for i, d in enumerate(net.SHAPES[name_]) if dim(d) is not None}
        spec[name_] = axes or None
    if "lengths" in kwargs:
        spec["lengths"] = {k: {0: dim(net.SHAPES[k][0])} for k in kwargs["lengths"]}
    return spec


def static_time(net: Any) -> bool:
    """Whether torch.export must fix the time axes: a cell block (CellRNN) or a layer on
    Keras' step function (fused=False) loops over time in Python. torch's fused RNN ops
    are exported as one call of the operator seqdsl::fused_rnn, symbolic in time."""
    return any(
        isinstance(m, CellRNN) or (isinstance(m, Recurrent) and not m.fused) for m in net.modules()
    )


# --------------------------------------------------------------------------
# torch.func.functional_call and state_dict: every example


@pytest.mark.parametrize("name", [p.stem for p in EXAMPLES + CUSTOM])
def test_functional_call_and_state_dict_round_trip(name: str) -> None:
    model, net = load(name)
    args, kwargs = tensors(model)
    want = eager(net, args, kwargs)
    net.reset_states()
    with torch.no_grad():
        got = torch.func.functional_call(net, dict(net.named_parameters()), args, kwargs)
    assert_same(got, want, what=f"{name} functional_call")
    # state_dict into a freshly built module (other weights): bit-identical outputs
    fresh = type(net)().eval()  # zero weights
    fresh.load_state_dict(net.state_dict())
    assert_same(eager(fresh, args, kwargs), want, what=f"{name} state_dict")
    assert set(net.state_dict()) >= set(net.WEIGHTS.values())


def test_bidirectional_submodules_are_keras_names() -> None:
    """forward_layer / backward_layer: nothing shadows nn.Module.forward, so
    torch.jit.trace and named lookups work; the canonical keys stay."""
    model, net = load("bilstm_tagger")
    assert isinstance(net.x_bidirectional.forward_layer, torch.nn.Module)
    assert net.x_bidirectional.forward.__func__ is type(net.x_bidirectional).forward
    assert "x_bidirectional/forward/kernel" in net.canonical_weights()
    args, kwargs = tensors(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(net, args, check_trace=False)
    assert_same(traced(*args), eager(net, args, kwargs), TOL, "jit.trace")


# --------------------------------------------------------------------------
# torch.compile and torch.export: the shape-static path

COMPILE_DEFAULT = ["post", "pre", "gaps", "bilstm_tagger", "masking_explicit_mask",
                   "rnn_guide_stateful", "builtin_cells"]  # fmt: skip
EVERY = [*MASKS, *(p.stem for p in EXAMPLES + CUSTOM)]
COMPILE_CASES = [
    pytest.param(n, marks=() if n in COMPILE_DEFAULT else pytest.mark.full) for n in EVERY
]


def compiled(net: Any, backend: str = "aot_eager") -> Any:
    torch._dynamo.reset()
    return torch.compile(net, backend=backend, fullgraph=True)


@pytest.mark.parametrize("name", COMPILE_CASES)
def test_compile_equals_eager(name: str) -> None:
    """torch.compile(fullgraph=True): one graph, the eager numbers (eager packs or cuts
    the rows where that pays)."""
    model, net = load(name)
    args, kwargs = tensors(model, seed=1)
    want = eager(net, args, kwargs)
    net.reset_states()
    with torch.no_grad():
        got = compiled(net)(*args, **kwargs)
    assert_same(got, want, TOL, f"{name} compiled")


GRAD_DEFAULT = ["gaps", "masking_layer_float", "rnn_guide_mnist_rnn_cell"]


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=() if n in GRAD_DEFAULT else pytest.mark.full) for n in EVERY]
)
def test_compile_with_autograd(name: str) -> None:
    """The compiled module under autograd: the loss and every parameter's gradient
    equal eager's (eval mode: no dropout draws). The fused ops' input is made to read
    a weight where it needs no gradient (torch 2.13's aot_autograd fails otherwise)."""
    model, net = load(name)
    args, kwargs = tensors(model)
    fn = compiled(net)
    grads = []
    for f in (fn, net):
        net.reset_states()
        net.zero_grad()
        loss = sum(o.float().square().sum() for o in values(f(*args, **kwargs)))
        loss.backward()
        grads.append({k: p.grad.clone() for k, p in net.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for key, want in grads[1].items():
        scale = max(1.0, float(want.abs().max()))
        assert float((grads[0][key] - want).abs().max()) <= TOL * scale, key


def test_compile_inductor() -> None:
    """The default backend (inductor, C++ on the CPU) on a small LSTM with final c."""
    model, net = load("tiny")
    args, kwargs = tensors(model, t=4)
    torch._dynamo.reset()
    with torch.no_grad():
        got = torch.compile(net)(*args, **kwargs)
    assert_same(got, eager(net, args, kwargs), TOL, "inductor")


MASKED = [n for n in EVERY if n in MASKS or is_masked(load(n)[0])]
EXPLAIN_DEFAULT = ["gaps", "bilstm_tagger", "gru_pre_padding"]


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=() if n in EXPLAIN_DEFAULT else pytest.mark.full) for n in MASKED],
)
def test_no_graph_breaks(name: str) -> None:
    model, net = load(name)
    args, kwargs = tensors(model)
    torch._dynamo.reset()
    with torch.no_grad():
        report = torch._dynamo.explain(net)(*args, **kwargs)
    assert report.graph_break_count == 0, report.break_reasons
    assert report.graph_count == 1


EXPORT_DEFAULT = ["post", "gaps", "bilstm_tagger", "rnn_guide_stateful", "conv_frontend_lstm",
                  "global_pool_classifier"]  # fmt: skip


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=() if n in EXPORT_DEFAULT else pytest.mark.full) for n in EVERY]
)
def test_export_dynamic_batch_and_time(name: str) -> None:
    """torch.export with a dynamic batch and dynamic time (fixed only where a cell
    block loops over time in Python): the exported program, run on other batch sizes, rows of other lengths
    (and other time lengths), equals eager. A stateful model keeps its fixed batch;
    its exported program carries the states from call to call, as eager."""
    model, net = load(name)
    time = not static_time(net)
    args, kwargs = tensors(model, b=3 if net.STATEFUL else 4)
    net.reset_states()
    program = torch.export.export(
        net, args, kwargs, dynamic_shapes=dynamic_shapes(net, model, kwargs, time, name)
    )
    graph_ops = {str(node.target) for node in program.graph.nodes}
    assert not {op for op in graph_ops if op.startswith(("aten.item", "aten._local_scalar"))}
    others = [dict(seed=1, b=5), dict(seed=2, b=2)]
    if time:
        others = [dict(seed=1, b=5, t=14, s=4), dict(seed=2, b=2, t=20, s=9)]
    for other in others:
        args, kwargs = tensors(model, **other)
        run = program.module()
        for key, buffer in run.named_buffers():  # the initial states, as reset_states()
            if key.rsplit(".", 1)[0] in net.STATEFUL:
                buffer.zero_()
        want = [eager(net, args, kwargs)]
        got = [run(*args, **kwargs)]
        if net.STATEFUL:  # a second call, from the carried states
            with torch.no_grad():
                want.append(net(*args, **kwargs))
            got.append(run(*args, **kwargs))
        assert_same(got, want, TOL, f"{name} exported {other}")


def export_dynamic(name: str) -> tuple[CheckedModel, Any, Any]:
    model, net = load(name)
    args, kwargs = tensors(model)
    spec = dynamic_shapes(net, model, kwargs, True, name)
    return model, net, torch.export.export(net, args, kwargs, dynamic_shapes=spec)


def test_exported_rnn_is_one_operator_call() -> None:
    """Each recurrent direction is one call of seqdsl::fused_rnn in the exported graph
    (torch's own aten.lstm would unroll one step per time step and fix T): two
    Bidirectional LSTMs, four calls."""
    _, _, program = export_dynamic("bilstm_tagger")
    targets = [str(node.target) for node in program.graph.nodes if node.op == "call_function"]
    assert targets.count("seqdsl.fused_rnn.default") == 4, targets
    assert not [t for t in targets if t.startswith(("aten.lstm", "aten.gru", "aten.rnn_"))]


def test_exported_program_saved_and_loaded_in_a_fresh_process(tmp_path: Path) -> None:
    """torch.export.save, then torch.export.load where only seqdsl.runtime.torch is
    imported (it registers seqdsl::fused_rnn): other shapes give the eager numbers."""
    model, net, program = export_dynamic("gaps")
    torch.export.save(program, tmp_path / "model.pt2")
    args, kwargs = tensors(model, seed=3, b=6, t=23)
    names = [*net.SHAPES]
    feed = {n: a for n, a in zip(names, args, strict=False)}
    feed |= {f"{k}_lengths": v for k, v in kwargs.get("lengths", {}).items()}
    torch.save(feed, tmp_path / "feed.pt")
    script = f"""
import torch
import seqdsl.runtime.torch  # noqa: F401  (registers seqdsl::fused_rnn)
program = torch.export.load({str(tmp_path / "model.pt2")!r})
feed = torch.load({str(tmp_path / "feed.pt")!r})
args = [feed[n] for n in {names!r} if n in feed]
lengths = {{k[: -len("_lengths")]: v for k, v in feed.items() if k.endswith("_lengths")}}
out = program.module()(*args, **({{"lengths": lengths}} if lengths else {{}}))
torch.save(out, {str(tmp_path / "out.pt")!r})
"""
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert run.returncode == 0, run.stderr[-3000:]
    got = torch.load(tmp_path / "out.pt")
    assert_same(got, eager(net, args, kwargs), TOL, "loaded program")


def test_exported_program_gradients_equal_eager() -> None:
    """The operator's autograd (the fused op run again under autograd): the exported
    module's parameter gradients equal eager's."""
    model, net, program = export_dynamic("post")
    args, kwargs = tensors(model, seed=4, b=5, t=9)
    run = program.module()
    grads = []
    for module in (net, run):
        module.zero_grad()
        leaves = torch.utils._pytree.tree_leaves(module(*args, **kwargs))
        sum(y.square().sum() for y in leaves if y.is_floating_point()).backward()
        grads.append({k: p.grad for k, p in module.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for key in grads[0]:
        torch.testing.assert_close(grads[1][key], grads[0][key], atol=TOL, rtol=TOL)


@pytest.mark.parametrize(
    ("kind", "lengths", "final_c", "layers"),
    [("lstm", True, True, 1), pytest.param("lstm", True, False, 2, marks=pytest.mark.full),
     pytest.param("lstm", False, False, 1, marks=pytest.mark.full),
     pytest.param("gru", True, False, 1, marks=pytest.mark.full), ("rnn_tanh", False, False, 2),
     pytest.param("rnn_relu", True, False, 1, marks=pytest.mark.full)],
)  # fmt: skip
def test_fused_rnn_operator_opcheck(kind: str, lengths: bool, final_c: bool, layers: int) -> None:
    """torch.library.opcheck: schema, fake (meta) shapes, autograd registration and
    torch.compile of seqdsl::fused_rnn agree with its implementation."""
    gates = {"lstm": 4, "gru": 3}.get(kind, 1)
    g = torch.Generator().manual_seed(0)
    b, t, f, u = 3, 5, 4, 6
    x = torch.randn(b, t, f, generator=g, requires_grad=True)
    weights = []
    for layer in range(layers):
        inputs = f if layer == 0 else u
        weights += [
            (torch.randn(gates * u, inputs, generator=g) * 0.3).requires_grad_(),
            (torch.randn(gates * u, u, generator=g) * 0.3).requires_grad_(),
            torch.randn(gates * u, generator=g).requires_grad_(),
            torch.randn(gates * u, generator=g).requires_grad_(),
        ]
    count = 2 if kind == "lstm" else 1
    states = [torch.randn(b, u, generator=g) for _ in range(count)]
    lens = torch.tensor([5, 2, 1]) if lengths else None
    torch.library.opcheck(
        torch.ops.seqdsl.fused_rnn.default, (kind, x, states, weights, lens, final_c, layers)
    )


@pytest.mark.parametrize("name", ["gaps", "bilstm_tagger"])
def test_no_item_in_compiled_forward(name: str) -> None:
    """The compiled forward reads no tensor into Python (no .item(): no host sync)."""
    model, net = load(name)
    args, kwargs = tensors(model)
    fn = compiled(net)
    with torch.no_grad():
        fn(*args, **kwargs)  # compiles
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            fn(*args, **kwargs)
    names = {event.key for event in prof.key_averages()}
    assert any(n.startswith("Torch-Compiled Region") for n in names), sorted(names)
    assert not names & {"aten::item", "aten::_local_scalar_dense"}, sorted(names)
    # eager does read the lengths (cut to the longest row, packing): the check sees it
    with (
        torch.no_grad(),
        torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof,
    ):
        eager(net, args, kwargs)
    assert {event.key for event in prof.key_averages()} & {
        "aten::item",
        "aten::_local_scalar_dense",
    }


# --------------------------------------------------------------------------
# torch.func: grad over the parameters, vmap over a batch of batches

FUNC_DEFAULT = ["post", "gaps", "bilstm_tagger", "rnn_guide_mnist_rnn_cell", "rnn_guide_stateful"]
FUNC_CASES = [pytest.param(n, marks=() if n in FUNC_DEFAULT else pytest.mark.full) for n in EVERY]


@pytest.mark.parametrize("name", FUNC_CASES)
def test_func_grad_equals_backward(name: str) -> None:
    """torch.func.grad of a loss over the parameters (functional_call) equals
    loss.backward(): under a torch.func transform the masked layers take the
    shape-static path (packing reads data pointers, which functorch's tensors lack)."""
    model, net = load(name)
    args, kwargs = tensors(model)

    def loss(params: dict[str, Any]) -> Any:
        net.reset_states()
        out = torch.func.functional_call(net, params, args, kwargs)
        return sum(o.float().square().sum() for o in values(out))

    params = {k: v.detach() for k, v in net.named_parameters()}
    grads = torch.func.grad(loss)(params)
    net.zero_grad()
    loss(dict(net.named_parameters())).backward()
    for key, p in net.named_parameters():
        want = p.grad if p.grad is not None else torch.zeros_like(p)
        scale = max(1.0, float(want.abs().max()))
        assert float((grads[key] - want).abs().max()) <= 1e-5 * scale, key


@pytest.mark.parametrize("name", FUNC_CASES)
def test_func_vmap_over_batches(name: str) -> None:
    """torch.func.vmap over a leading axis of every input (and of the lengths, passed
    positionally: vmap does not map keyword arguments) equals a loop over it. Under
    vmap the recurrent layers run Keras' step function (torch's fused RNN ops have no
    batching rule)."""
    model, net = load(name)
    args, kwargs = tensors(model, b=4)
    lengths = kwargs.get("lengths", {})
    n = len(args)
    batches = tuple(torch.stack([a, a.flip(0)]) for a in args)  # two batches of rows
    lens = tuple(torch.stack([v, v.flip(0)]) for v in lengths.values())

    def run(*xs: Any) -> Any:
        net.reset_states()
        kw = {"lengths": dict(zip(lengths, xs[n:], strict=True))} if lengths else {}
        return net(*xs[:n], **kw)

    if net.STATEFUL:  # states of one fixed batch: refused with a clear message
        with pytest.raises(ValueError, match="stateful.*torch.func.vmap"):
            torch.func.vmap(run)(*batches, *lens)
        return
    with torch.no_grad():
        got = torch.func.vmap(run)(*batches, *lens)
        for i in range(2):
            want = run(*(x[i] for x in batches), *(v[i] for v in lens))
            assert_same([g[i] for g in flat(got)], flat(want), TOL, f"{name} vmap row {i}")
