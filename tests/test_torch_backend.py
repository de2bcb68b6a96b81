"""The PyTorch backend: parity with the reference interpreter, fused kernels, weights, pad().

Every numeric check compares the emitted module (``program.build("torch")``)
with ``seqdsl.reference.run_reference`` on the module's own weights in float64,
so the float32 tolerance covers the computation only. ``pytest --update-golden``
rewrites tests/golden/torch/ from the current emitter.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import seqdsl  # noqa: E402
from seqdsl.checker import CheckedModel  # noqa: E402
from seqdsl.initializers import initial_weights  # noqa: E402
from seqdsl.reference import run_reference  # noqa: E402
from seqdsl.runtime import torch as runtime  # noqa: E402
from seqdsl.weightsfile import load_weights, save_weights  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from parity_cases import Case, all_cases  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.seq"))
GOLDEN = ROOT / "tests" / "golden" / "torch"
GOLDEN_EXAMPLES = (
    "sentiment_lstm", "bilstm_tagger", "conv_frontend_lstm", "masking_temporal_split",
    "rnn_guide_stateful", "masking_explicit_mask", "gru_pre_padding",
    "stateful_paragraphs",
    "attention_seq2seq",
)  # fmt: skip
F32_TOL, F64_TOL = 1e-5, 1e-10
CASES = all_cases()
F64_SUBSET = list(range(0, len(CASES), 3))


# --------------------------------------------------------------------------
# helpers


def build(
    source: str, seed: int = 1, dtype: str = "float32", name: str = "<string>"
) -> tuple[CheckedModel, Any]:
    prog = seqdsl.loads(source, name=name)
    return prog.model(), prog.build("torch", seed=seed, dtype=dtype)


def weights64(net: Any) -> dict[str, np.ndarray]:
    """The module's own weights in float64: the reference then sees exactly them."""
    return {k: v.astype(np.float64) for k, v in net.canonical_weights().items()}


def flat(x: object) -> list[np.ndarray]:
    if isinstance(x, (tuple, list)):
        return [a for item in x for a in flat(item)]
    if isinstance(x, torch.Tensor):
        return [x.detach().cpu().numpy()]
    return [np.asarray(x)]


def as_outputs(out: object, model: CheckedModel) -> tuple[object, ...]:
    n = len(model.model.outputs)
    return tuple(out) if n > 1 else (out,)  # type: ignore[arg-type]


def compare(got: Sequence[object], want: Sequence[object], tol: float, what: str = "") -> None:
    """Every output (and mask) against the reference's; masks exactly. The tolerance
    is absolute for values up to 1 and relative beyond (an unbounded relu RNN reaches
    ~30, where float32 rounding alone exceeds 1e-5)."""
    g, w = flat(list(got)), flat(list(want))
    assert len(g) == len(w), f"{what}: {len(g)} arrays, reference {len(w)}"
    for i, (a, b) in enumerate(zip(g, w, strict=True)):
        assert a.shape == b.shape, f"{what} output {i}: shape {a.shape}, reference {b.shape}"
        if b.dtype == bool:
            assert a.dtype == bool and (a == b).all(), f"{what} mask {i} differs"
            continue
        err = float(np.max(np.abs(a.astype(np.float64) - b))) if a.size else 0.0
        scale = max(1.0, float(np.max(np.abs(b)))) if b.size else 1.0
        assert err <= tol * scale, f"{what} output {i}: max error {err:.3g} > {tol} x {scale:.3g}"


def flat_t(x: object) -> list[Any]:
    """The tensors of a nested output, in order."""
    if isinstance(x, (tuple, list)):
        return [a for item in x for a in flat_t(item)]
    return [x]


def max_value(outputs: Sequence[object]) -> float:
    vals = [a for a in flat(list(outputs)) if a.dtype != bool and a.size]
    return max(float(np.max(np.abs(a))) for a in vals)


def call(net: Any, inputs: Sequence[np.ndarray], **kw: Any) -> Any:
    return net(*[torch.as_tensor(x) for x in inputs], **kw)


def check_case(case: Case, dtype: str = "float32", tol: float = F32_TOL) -> None:
    """One parity case; weight seeds are tried until the outputs are not all ~0."""
    for seed in range(1, 6):
        model, net = build(case.source, seed=seed, dtype=dtype)
        net.train(case.training)
        kw = dict(lengths=case.lengths or None, dropout_masks=case.dropout_masks or None)
        ref = run_reference(model, weights64(net), case.inputs, training=case.training,
                            lengths=case.lengths or None, dropout_masks=case.dropout_masks)  # fmt: skip
        if max_value(ref.outputs) > 1e-3:
            break
    assert max_value(ref.outputs) > 1e-3, "outputs too small to compare"
    got = call(net, case.inputs, **kw)
    compare(as_outputs(got, model), ref.outputs, tol, case.id)
    for layer, states in ref.states.items():  # stateful: the states carried to the next call
        mod = net.get_submodule(layer)
        # a stateful Bidirectional: each direction's, forward then backward
        parts = [mod.forward_layer, mod.backward_layer] if hasattr(mod, "forward_layer") else [mod]
        got = [getattr(p, s) for p in parts for s in p.state_names]
        compare(got, states, tol, f"{case.id} states of {layer}")
        again = call(net, case.inputs, **kw)
        ref2 = run_reference(model, weights64(net), case.inputs, training=case.training, states=ref.states,
                             lengths=case.lengths or None, dropout_masks=case.dropout_masks)  # fmt: skip
        compare(as_outputs(again, model), ref2.outputs, tol, f"{case.id} second call")
        net.reset_states()
        compare(
            as_outputs(call(net, case.inputs, **kw), model),
            ref.outputs,
            tol,
            f"{case.id} after reset",
        )


def example_inputs(
    model: CheckedModel, seed: int = 0, t: int = 16, b: int = 3, s: int = 7
) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
    """Inputs for any model: ids below the embedding's vocabulary, padded rows of
    decreasing length (a full one, an empty one unless declared nonempty), masks
    of the declared kinds (with gaps for `any`); b rows, t and s steps where the
    model declares the symbols B, T and S."""
    rng = np.random.default_rng(seed)
    env: dict[str, int] = {"B": b, "T": t, "S": s}
    vocab = {
        layer.inputs[0]: int(layer.config["input_dim"])
        for layer in model.layers
        if layer.kind == "Embedding"
    }  # type: ignore[call-overload]
    inputs: list[np.ndarray] = []
    lengths: dict[str, np.ndarray] = {}
    for inp in model.model.inputs:
        dims = [d.value if isinstance(d.value, int) else env.setdefault(str(d.value), 5)
                for d in inp.dims]  # fmt: skip
        b = dims[0]
        tt = dims[1] if len(dims) > 1 else 1
        pad = model.pads.get(inp.name)
        lo = 1 if pad is not None and pad.nonempty else 0
        lens = np.array([tt] + [max(lo, tt * (i + 1) // (b + 1)) for i in range(b - 2)] + [lo])[:b]
        steps = np.arange(tt)[None, :]
        if inp.is_mask:
            side = model.types[inp.name].kind.side  # type: ignore[union-attr]
            if side == "any":
                m = rng.random((b, tt)) < 0.6
                m[-1] = False  # an empty row
                inputs.append(m)
            else:
                inputs.append(
                    steps < lens[:, None] if side == "post" else steps >= tt - lens[:, None]
                )
            continue
        if inp.dtype in ("i32", "i64"):
            x = rng.integers(1, vocab.get(inp.name, 50), size=dims)
        else:
            x = rng.normal(0.0, 1.0, size=dims)
        if pad is not None or inp.masked:
            side = pad.side if pad is not None else "post"
            valid = steps < lens[:, None] if side == "post" else steps >= tt - lens[:, None]
            if pad is not None:
                x = np.where(valid.reshape(valid.shape + (1,) * (x.ndim - 2)), x, pad.value)
            if inp.masked:
                lengths[inp.name] = lens
        inputs.append(x.astype(np.int32) if inp.dtype in ("i32", "i64") else x)
    return inputs, lengths


# --------------------------------------------------------------------------
# parity on the covering array of recurrent options


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_parity_f32(case: Case) -> None:
    check_case(case)


@pytest.mark.parametrize(
    "case", [CASES[i] for i in F64_SUBSET], ids=[CASES[i].id for i in F64_SUBSET]
)
def test_parity_f64(case: Case) -> None:
    check_case(case, "float64", F64_TOL)


@pytest.mark.full
def test_parity_full() -> None:
    for case in all_cases(full=True):
        check_case(case)


# --------------------------------------------------------------------------
# parity on the examples and on the other layers


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_parity(path: Path) -> None:
    model, net = build(path.read_text(), name=f"examples/{path.name}")
    inputs, lengths = example_inputs(model)
    ref = run_reference(model, weights64(net), inputs, lengths=lengths or None)
    compare(
        as_outputs(call(net, inputs, lengths=lengths or None), model),
        ref.outputs,
        F32_TOL,
        path.stem,
    )
    assert max_value(ref.outputs) > 1e-3


ZOO = {
    "conv_pool": """
model Zoo {
    input x: f32[B, T, 6] pad(post) masked
    a = x -> Conv1D(5, 3, strides=2, padding=same, activation=gelu)
    b = x -> Conv1D(5, 2, dilation_rate=2, padding=causal, use_bias=false, activation=softplus)
    c = x -> Conv1D(5, 3, activation=leaky_relu) -> MaxPooling1D(2, strides=1, padding=same)
    d = x -> AveragePooling1D(3, strides=2, padding=same) -> Conv1D(4, 2, padding=same)
    e = x -> MaxPooling1D(2) -> LayerNormalization() -> GlobalAveragePooling1D(keepdims=true)
    f = concat(a, d) -> GlobalMaxPooling1D()
    output a with mask, b with mask, c with mask, d with mask, e, f
}""",
    "merges": """
model Zoo {
    input x: f32[B, T, 4] pad(pre) masked
    input m: mask[B, T]
    input p: f32[B, 4, 4]
    h = x -> Dense(4, activation=selu)
    g = Dense(4, activation=hard_sigmoid)(x, mask=m)
    s = add(h, x, h)
    t = average(s, g)
    u = maximum(multiply(h, x), subtract(x, h), minimum(h, x))
    v = concat(p, u, axis=time)
    w = concat(t, u) -> Activation(mish) -> TemporalSoftmax()
    a, b = v -> TemporalSplit(2)
    y = b -> GRU(5, return_sequences=true, go_backwards=true, masked_output=carry)
    k = Dense(3, activation=log_softmax)(a) -> drop_mask -> Flatten()
    r = k -> Reshape([2, -1]) -> Activation(softsign)
    output t with mask, u with mask, v with mask, w, y with mask, k, r
}""",
    "norms": """
model Zoo {
    input tokens: i32[B, T] pad(post, value=0)
    x = tokens -> Embedding(30, 6, mask_zero=true)
    a = x -> BatchNormalization(momentum=0.9, epsilon=0.01) -> TimeDistributed(Dense(4, activation=elu))
    b = x -> LayerNormalization(epsilon=0.1, center=false) -> Activation(relu6)
    c = x -> TimeDistributed(LayerNormalization(scale=false)) -> Activation(exponential)
    d = x -> BatchNormalization(center=false, scale=false, trainable=false) -> Dropout(0.5)
    e = concat(a, b, c, d) -> SimpleRNN(4, activation=swish, return_sequences=true)
    output e with mask
}""",
}


@pytest.mark.parametrize("name", list(ZOO))
@pytest.mark.parametrize("training", [False, True])
def test_layer_zoo_parity(name: str, training: bool) -> None:
    model, net = build(ZOO[name])
    inputs, lengths = example_inputs(model, seed=3)
    # training: inject every dropout keep-mask the model may need
    drops: dict[str, np.ndarray] = {}
    if training:
        rng = np.random.default_rng(5)
        probe = run_reference(model, weights64(net), inputs, lengths=lengths or None)
        for layer in model.layers:
            if layer.kind == "Dropout":
                shape = probe.values[layer.inputs[0]][0].shape
                drops[layer.name] = (rng.random(shape) > 0.5).astype(np.float64)
    net.train(training)
    before = weights64(net)
    ref = run_reference(
        model, before, inputs, lengths=lengths or None, training=training, dropout_masks=drops
    )
    got = call(net, inputs, lengths=lengths or None, dropout_masks=drops)
    compare(as_outputs(got, model), ref.outputs, F32_TOL, name)
    assert max_value(ref.outputs) > 1e-3
    after = net.canonical_weights()
    for key, value in ref.updated.items():  # BatchNormalization's moving statistics
        assert np.abs(after[key] - value).max() <= F32_TOL, key
    for key in before:
        if key not in ref.updated:
            assert np.array_equal(after[key], before[key].astype(np.float32)), key


def test_training_examples_with_dropout_and_batch_norm() -> None:
    """Dropout stacks and BatchNormalization in training, with injected keep-masks."""
    for stem in ("stacked_lstm_repeat", "rnn_guide_mnist_lstm", "bilstm_tagger"):
        path = ROOT / "examples" / f"{stem}.seq"
        model, net = build(path.read_text(), name=f"examples/{path.name}")
        inputs, lengths = example_inputs(model, t=8)
        probe = run_reference(model, weights64(net), inputs, lengths=lengths or None)
        rng = np.random.default_rng(0)
        drops = {layer.name: (rng.random(probe.values[layer.inputs[0]][0].shape) > 0.3).astype(np.float64)
                 for layer in model.layers if layer.kind == "Dropout"}  # fmt: skip
        net.train()
        w = weights64(net)
        ref = run_reference(
            model, w, inputs, lengths=lengths or None, training=True, dropout_masks=drops
        )
        compare(as_outputs(call(net, inputs, lengths=lengths or None, dropout_masks=drops), model),
                ref.outputs, F32_TOL, stem)  # fmt: skip
        for key, value in ref.updated.items():
            assert np.abs(net.canonical_weights()[key] - value).max() <= F32_TOL, key


# --------------------------------------------------------------------------
# inference: packed rows or the padded batch, cached weights, stacks


def infer(net: Any, inputs: Sequence[np.ndarray], pack: bool | None = None, **kw: Any) -> Any:
    """The outputs under torch.no_grad() (inference: cached weights, pack_rows() may
    pack), with pack_rows forced to `pack` unless None (patched where fused_rnn reads
    it: the runtime module)."""
    with pytest.MonkeyPatch.context() as mp:
        if pack is not None:
            mp.setattr(runtime, "pack_rows", lambda *args: pack)
        with torch.no_grad():
            return call(net, inputs, **kw)


INFERENCE_CASES = [c for c in CASES if not c.training]


@pytest.mark.parametrize("pack", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("case", INFERENCE_CASES, ids=[c.id for c in INFERENCE_CASES])
def test_parity_inference_packed_and_padded(case: Case, pack: bool) -> None:
    """Without autograd the fused layers may pack their rows (pack_rows()): both
    strategies match the reference, forced either way."""
    model, net = build(case.source, seed=2)
    net.eval()
    ref = run_reference(model, weights64(net), case.inputs, lengths=case.lengths or None)
    got = infer(net, case.inputs, pack, lengths=case.lengths or None)
    compare(as_outputs(got, model), ref.outputs, F32_TOL, case.id)


STACKS = """
model S {
    input x: f32[B, T, 5] %s
    a = x -> LSTM(6, return_sequences=true) -> LSTM(6, return_sequences=true) -> LSTM(6)
    b = x -> GRU(4, return_sequences=true) -> GRU(4, return_sequences=true, masked_output=carry)
    c = x -> SimpleRNN(3, return_sequences=true) -> SimpleRNN(3, activation=relu)
    d = x -> LSTM(4, return_sequences=true)
    e = d -> LSTM(4)
    output a, b with mask, c, d with mask, e
}"""


@pytest.mark.parametrize("kind", ["none", "post", "pre", "any"])
@pytest.mark.parametrize("mode", ["padded", "packed", "train"])
def test_stacks_run_in_one_call(kind: str, mode: str) -> None:
    """Layers of one cell reading each other's whole output sequence under one mask
    run in one fused call (num_layers=n, as nn.LSTM): the text says so, and the
    outputs match the reference in inference (packed or padded) and in training."""
    decl = {"post": "pad(post) masked", "pre": "pad(pre) masked", "any": "masked"}.get(kind, "")
    source = STACKS % decl if decl else (STACKS % "").replace(" with mask", "")
    model, net = build(source, seed=3)
    text = seqdsl.loads(source).compile("torch")
    assert "below=[self.a_lstm, self.a_lstm_1])" in text  # three LSTMs: one call
    assert "below=[self.b_gru])" in text
    assert "below=[self.c" not in text  # tanh then relu: two ops, two calls
    assert "below=[self.d" not in text  # d is an output too: not stacked
    rng = np.random.default_rng(4)
    x = rng.normal(size=(3, 7, 5))
    kw: dict[str, Any] = {}
    if kind in ("post", "pre"):
        kw["lengths"] = {"x": np.array([7, 3, 0])}
    elif kind == "any":
        m = rng.random((3, 7)) < 0.6
        m[2] = False
        kw["masks"] = {"x": m}
    if kind != "none":
        steps = np.arange(7)[None, :]
        valid = kw["masks"]["x"] if kind == "any" else (
            steps < np.array([7, 3, 0])[:, None] if kind == "post" else steps >= 7 - np.array([7, 3, 0])[:, None])  # fmt: skip
        x = np.where(valid[..., None], x, 0.0)
    ref = run_reference(model, weights64(net), [x], **kw)
    if mode == "train":
        net.train()
        got = call(net, [x], **kw)
    else:
        got = infer(net, [x], mode == "packed", **kw)
    compare(as_outputs(got, model), ref.outputs, F32_TOL, f"{kind} {mode}")


def test_inference_weights_are_cached_until_a_parameter_changes() -> None:
    """Without autograd the torch-layout weights are made once per layer and kept;
    an in-place change (an optimizer step, load_canonical) or .to() remakes them."""
    source = "model C {\n input x: f32[B, T, 3] pad(post) masked\n y = x -> GRU(4)\n output y\n}"
    model, net = build(source)
    x = np.random.default_rng(0).normal(size=(2, 5, 3))
    lengths = {"x": np.array([5, 2])}
    layer = net.y_gru

    def check(what: str) -> None:
        ref = run_reference(model, weights64(net), [x], lengths=lengths)
        compare(as_outputs(infer(net, [x], lengths=lengths), model), ref.outputs, F32_TOL, what)

    check("first call")
    cached = layer.cached_weights[1]
    infer(net, [x], lengths=lengths)
    assert layer.cached_weights[1] is cached  # kept
    weights = net.canonical_weights()
    net.load_canonical({k: v * 0.5 for k, v in weights.items()})
    check("after load_canonical")
    assert layer.cached_weights[1] is not cached
    net.train()  # a training step: autograd on, the cache is neither used nor needed
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    call(net, [x], lengths=lengths).square().sum().backward()
    opt.step()
    net.eval()
    check("after an SGD step")
    net.to(torch.float64)
    check("after .to(float64)")
    assert layer.cached_weights[1][0].dtype == torch.float64


# --------------------------------------------------------------------------
# the canary: the parity check can fail


def test_canary_swapped_gates_fail_parity(monkeypatch: pytest.MonkeyPatch) -> None:
    swap = [1, 0, 2, 3]  # gates f, i, c, o

    def swapped(self: Any) -> list[Any]:
        def gates(w: Any) -> Any:
            return torch.cat([w.chunk(4, dim=-1)[g] for g in swap], dim=-1)

        weights = [gates(w).t() for w in (self.kernel, self.recurrent_kernel)]
        if self.bias is not None:
            weights += [self.bias, torch.zeros_like(self.bias)]
        return weights

    monkeypatch.setattr(runtime.LSTM, "torch_weights", swapped)
    case = next(
        c for c in CASES if c.options["cell"] == "LSTM" and c.options["activation"] == "tanh"
    )
    with pytest.raises(AssertionError, match="max error"):
        check_case(case)


# --------------------------------------------------------------------------
# fused kernels: no per-step Python loop

PROFILED = """
model P {
    input x: f32[B, T, 8] %s
    %s
    y = LSTM(16, return_sequences=true)(x%s) -> Bidirectional(GRU(8, return_sequences=true))
    z = y -> SimpleRNN(4, activation=relu)
    output z
}"""


def top_level_ops(net: Any, inputs: list[Any], **kw: Any) -> int:
    """aten ops called from Python in one forward (the fused kernels' own steps run inside)."""
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad():
        net(*inputs, **kw)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            net(*inputs, **kw)
    return sum(1 for e in prof.events() if e.cpu_parent is None)


@pytest.mark.parametrize("kind", ["none", "post", "pre", "any", "loop"])
def test_no_per_step_loop(kind: str) -> None:
    decl = {"post": "pad(post) masked", "pre": "pad(pre) masked"}.get(kind, "")
    mask_in = "input m: mask[B, T]" if kind == "any" else ""
    source = PROFILED % (decl, mask_in, ", mask=m" if kind == "any" else "")
    if kind == "loop":  # the canary: a cell the checker marks `loop` does step in Python
        source = source.replace("LSTM(16,", "LSTM(16, activation=relu,")
    _, net = build(source)
    counts = []
    for t in (8, 256):
        inputs: list[Any] = [torch.randn(3, t, 8)]
        kw: dict[str, Any] = {}
        if kind in ("post", "pre"):
            kw["lengths"] = {"x": torch.tensor([t, t // 2, 0])}
        if kind == "any":
            # gaps in the same proportion at both lengths: the packing rule (pack_rows)
            # then takes the same path, and only the length may change the count
            m = (torch.arange(t) % 5 < 3).repeat(3, 1)
            m[1] = torch.arange(t) % 2 == 0
            m[2] = False
            inputs.append(m)
        counts.append(top_level_ops(net, inputs, **kw))
    if kind == "loop":
        assert counts[1] > counts[0] + 200
    else:
        assert counts[0] == counts[1], counts


def test_kernel_comments_say_how_masks_are_handled() -> None:
    text = seqdsl.load(ROOT / "examples" / "masking_temporal_split.seq").compile("torch")
    assert (
        "post mask: torch.lstm on the padded batch, h taken at each row's last valid step" in text
    )
    assert "mask with gaps: valid steps compacted to the front, torch.lstm, scattered back" in text
    assert "for t in range" not in text  # no loop snippet when every layer is fused
    pre = seqdsl.load(ROOT / "examples" / "gru_pre_padding.seq").compile("torch")
    assert "pre mask: rows rolled to right padding, torch.gru, rolled back" in pre
    loop = seqdsl.loads(
        "model L {\n input x: f32[B, T, 3]\n y = x -> GRU(4, reset_after=false)\n output y\n}"
    ).compile("torch")
    assert "per-step loop of Keras' step function: reset_after=false" in loop


# --------------------------------------------------------------------------
# weights


def test_weights_round_trip_bit_exact(tmp_path: Path) -> None:
    path = ROOT / "examples" / "seq2seq_bidir_encoder.seq"
    prog = seqdsl.load(path)
    model = prog.model()
    net = prog.build("torch", seed=3)
    w = net.canonical_weights()
    keys = [f"{layer.name}/{s.name}" for layer in model.layers for s in layer.weights]
    assert list(w) == keys and list(net.WEIGHTS) == keys
    assert set(net.state_dict()) == set(net.WEIGHTS.values())
    bidi = [k for k in keys if "/forward/" in k or "/backward/" in k]
    assert bidi and all(
        net.WEIGHTS[k]
        == k.replace("/forward/", ".forward_layer.")
        .replace("/backward/", ".backward_layer.")
        .replace("/", ".")
        for k in bidi
    )
    assert sum(p.numel() for p in net.parameters()) == model.trainable_params
    drawn = initial_weights(((layer.name, layer.weights) for layer in model.layers), 3, "float32")
    for k in keys:
        assert w[k].dtype == np.float32 and np.array_equal(w[k], drawn[k]), k
    # one SGD step: still the canonical keys and shapes, new values
    inputs, lengths = example_inputs(model, t=6)
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    out, _ = call(net, inputs, lengths=lengths or None)
    out.square().mean().backward()
    opt.step()
    trained = net.canonical_weights()
    assert list(trained) == keys and all(trained[k].shape == w[k].shape for k in keys)
    assert any(not np.array_equal(trained[k], w[k]) for k in keys)
    # through the weights file into a fresh module: bit-exact, same outputs
    save_weights(tmp_path / "w.safetensors", trained, {"model": model.name})
    loaded, meta = load_weights(tmp_path / "w.safetensors")
    assert meta["model"] == model.name
    fresh = prog.build("torch", seed=99)
    fresh.load_canonical(loaded)
    again = fresh.canonical_weights()
    assert all(np.array_equal(again[k], trained[k]) and again[k].dtype == np.float32 for k in keys)
    net.eval()
    a = call(net, inputs, lengths=lengths or None)
    b = call(fresh, inputs, lengths=lengths or None)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_pytorch_only_tensors_and_states_are_not_weights() -> None:
    model, net = build((ROOT / "examples" / "rnn_guide_stateful.seq").read_text())
    assert list(net.state_dict()) == ["output_state_lstm.kernel", "output_state_lstm.recurrent_kernel",
                                      "output_state_lstm.bias"]  # fmt: skip
    assert [n for n, _ in net.named_buffers()] == [
        "anchor",
        "output_state_lstm.h",
        "output_state_lstm.c",
    ]
    model, net = build((ROOT / "examples" / "rnn_guide_mnist_lstm.seq").read_text())
    assert [n for n, _ in net.named_buffers()] == ["anchor", "x_batch_normalization.moving_mean",
                                                   "x_batch_normalization.moving_variance"]  # fmt: skip
    assert "x_batch_normalization.moving_mean" in net.state_dict()
    assert net.x_batch_normalization.moving_mean.requires_grad is False


def test_load_canonical_rejects_bad_weights() -> None:
    _, net = build((ROOT / "examples" / "sentiment_lstm.seq").read_text())
    w = net.canonical_weights()
    with pytest.raises(KeyError, match="missing"):
        net.load_canonical({k: v for k, v in w.items() if k != "x_lstm/bias"})
    with pytest.raises(KeyError, match="unexpected"):
        net.load_canonical({**w, "x_lstm/bias_hh": w["x_lstm/bias"]})
    with pytest.raises(ValueError, match="x_lstm/kernel"):
        net.load_canonical({**w, "x_lstm/kernel": w["x_lstm/kernel"].T})


def test_float64_build_and_trainable_false() -> None:
    model, net = build(
        """
model D {
    input x: f32[B, T, 3]
    y = x -> Dense(4, trainable=false) -> LSTM(5)
    output y
}""",
        dtype="float64",
    )
    assert all(p.dtype == torch.float64 for p in net.parameters())
    assert not net.y_dense.kernel.requires_grad and net.y_lstm.kernel.requires_grad
    x = np.random.default_rng(0).normal(size=(2, 4, 3))
    ref = run_reference(model, net.canonical_weights(), [x])
    compare([call(net, [x])], ref.outputs, F64_TOL)


def test_emitted_module_is_standalone_and_deterministic() -> None:
    for path in EXAMPLES:
        prog = seqdsl.load(path)
        text = prog.compile("torch", standalone=True)
        assert text == prog.compile("torch", standalone=True)
        imports = {
            line.split()[1] for line in text.splitlines() if line.startswith(("import ", "from "))
        }
        # the standard library aside (the runtime's annotations: typing, collections.abc)
        imports = {m for m in imports if m.partition(".")[0] not in sys.stdlib_module_names}
        allowed = {"numpy", "numpy.typing", "torch", "torch.nn.functional", "torch.nn.utils.rnn"}
        assert imports <= allowed, imports
        assert "seqdsl" not in imports
        compile(text, str(path), "exec")


# --------------------------------------------------------------------------
# pad()


@pytest.fixture(scope="module")
def keras_pad() -> Any:
    keras = pytest.importorskip("keras")
    return keras.utils.pad_sequences


def random_sequences(
    rng: np.random.Generator, n: int, feat: tuple[int, ...], floats: bool
) -> list[Any]:
    seqs = []
    for _ in range(n):
        k = int(rng.integers(0, 9))
        v = rng.normal(0, 3, size=(k, *feat)) if floats else rng.integers(-5, 50, size=(k, *feat))
        seqs.append(v if feat else v.tolist())
    seqs[int(rng.integers(n))] = []  # an empty sequence
    return seqs


def test_pad_matches_keras(keras_pad: Any) -> None:
    rng = np.random.default_rng(0)
    for trial in range(24):
        side, truncate = rng.choice(["pre", "post"]), rng.choice(["pre", "post"])
        maxlen = [None, 1, 3, 7][trial % 4]
        dtype = ["i32", "f32", "i64", "f64"][trial % 4 if trial % 3 else 1]
        feat = (2,) if trial % 5 == 0 else ()
        value = (
            float(rng.choice([0, -1, 2.5])) if dtype.startswith("f") else float(rng.choice([0, 3]))
        )
        decl = (
            f"pad({side}, value={value}"
            + (f", maxlen={maxlen}, truncate={truncate}" if maxlen else "")
            + ")"
        )
        shape = f"[B, {maxlen or 'T'}{', 2' if feat else ''}]"
        src = f"model P {{\n input a: {dtype}{shape} {decl} masked\n output a\n}}"
        net = seqdsl.loads(src).build("torch")
        seqs = random_sequences(rng, 5, feat, floats=bool(trial % 2))  # floats for int inputs: cast
        np_dtype = {"i32": "int32", "i64": "int64", "f32": "float32", "f64": "float64"}[dtype]
        want = keras_pad(
            seqs, maxlen=maxlen, dtype=np_dtype, padding=side, truncating=truncate, value=value
        )
        batch, lengths = net.pad(seqs)
        assert batch.numpy().dtype == want.dtype and np.array_equal(batch.numpy(), want), (
            trial,
            src,
        )
        expect = [min(len(s), maxlen) if maxlen else len(s) for s in seqs]
        assert lengths.tolist() == expect
        out = net(batch, lengths=lengths)  # the padded batch runs, its lengths give the mask
        assert out.shape == batch.shape


def test_pad_shares_time_symbols(keras_pad: Any) -> None:
    src = """
model P {
    input a: i32[B, T] pad(post, value=0)
    input b: f32[B, T, 2] pad(pre, value=0.5) masked
    input c: i32[B, S] pad(pre, value=9, maxlen=4)
    x = a -> Embedding(60, 2, mask_zero=true)
    y = concat(x, b) -> LSTM(3)
    z = c -> Embedding(60, 2) -> GlobalAveragePooling1D()
    output y, z
}"""
    net = seqdsl.loads(src).build("torch")
    a = [[1, 2, 3], [4]]
    b = [np.ones((5, 2)), np.ones((0, 2))]
    c = [[1, 2, 3, 4, 5, 6], []]
    (pa, la), (pb, lb), (pc, lc) = net.pad(a, b, c)
    assert pa.shape == (2, 5) and pb.shape == (2, 5, 2) and pc.shape == (2, 4)
    assert np.array_equal(pa.numpy(), keras_pad(a, maxlen=5, padding="post"))
    assert np.array_equal(
        pb.numpy(), keras_pad(b, maxlen=5, padding="pre", dtype="float32", value=0.5)
    )
    assert np.array_equal(pc.numpy(), keras_pad(c, maxlen=4, value=9))
    assert la.tolist() == [3, 1] and lb.tolist() == [5, 0] and lc.tolist() == [4, 0]
    y, z = net(pa, pb, pc, lengths={"b": lb})
    assert y.shape == (2, 3) and z.shape == (2, 2)


# --------------------------------------------------------------------------
# run-time checks


def test_debug_catches_an_inner_padding_id() -> None:
    model, net = build((ROOT / "examples" / "sentiment_lstm.seq").read_text())
    tokens = np.array([[5, 0, 7, 0], [3, 4, 0, 0]], dtype=np.int32)  # an inner 0 in row 0
    net(torch.as_tensor(tokens))  # not checked by default
    net.debug = True
    with pytest.raises(
        ValueError, match=r"x_embedding: Embedding\(mask_zero=true\).*pad\(post, value=0\)"
    ):
        net(torch.as_tensor(tokens))
    net(torch.as_tensor(np.array([[5, 6, 7, 0], [0, 0, 0, 0]], dtype=np.int32)))  # fine: post


def test_debug_checks_declared_kinds_of_inputs() -> None:
    src = """
model K {
    input x: f32[B, T, 2] pad(pre) masked
    input m: mask(post, nonempty)[B, T]
    y = x -> LSTM(3)
    z = LSTM(3)(x -> drop_mask, mask=m)
    output y, z
}"""
    _, net = build(src)
    net.debug = True
    x = torch.randn(2, 4, 2)
    good = torch.tensor([[True, True, False, False], [True, False, False, False]])
    net(x, good, lengths={"x": [4, 0]})
    with pytest.raises(ValueError, match="lengths must lie in"):
        net(x, good, lengths={"x": [5, 0]})
    with pytest.raises(ValueError, match=r"input `x`.*not `pre`"):
        net(x, good, masks={"x": good})
    with pytest.raises(ValueError, match=r"input `m`.*no valid step"):
        net(x, torch.tensor([[True, True, False, False], [False] * 4]), lengths={"x": [4, 0]})
    with pytest.raises(ValueError, match="input `x` is masked"):
        net(x, good)


def test_shapes_symbols_and_constraints_are_checked() -> None:
    _, net = build((ROOT / "examples" / "masking_temporal_split.seq").read_text())
    with pytest.raises(ValueError, match=r"T = 5, but TemporalSplit \(line \d+\) needs T % 2 == 0"):
        net(torch.ones(2, 5, dtype=torch.int32))
    _, net = build((ROOT / "examples" / "rnn_guide_encoder_decoder.seq").read_text())
    with pytest.raises(ValueError, match=r"`decoder_input`: axis 0 \(B\) has size 3, but B = 2"):
        net(torch.ones(2, 4, dtype=torch.int32), torch.ones(3, 4, dtype=torch.int32))
    with pytest.raises(ValueError, match="has shape"):
        net(torch.ones(2, 4, 1, dtype=torch.int32), torch.ones(2, 4, dtype=torch.int32))
    _, net = build((ROOT / "examples" / "rnn_guide_stateful.seq").read_text())
    with pytest.raises(ValueError, match="axis 0 has size 3, declared 20"):
        net(torch.ones(3, 10, 50))


def test_dropout_draws_masks_without_injection() -> None:
    _, net = build("""
model D {
    input x: f32[B, T, 4]
    y = x -> LSTM(6, dropout=0.5, return_sequences=true) -> Dropout(0.5)
    output y
}""")
    x = torch.randn(4, 5, 4)
    net.eval()
    assert torch.equal(net(x), net(x))
    net.train()
    torch.manual_seed(0)
    a = net(x)
    assert not torch.equal(a, net(x))
    assert (a == 0).any()


# --------------------------------------------------------------------------
# golden files


@pytest.mark.parametrize("name", GOLDEN_EXAMPLES)
def test_golden(name: str, request: pytest.FixtureRequest) -> None:
    path = ROOT / "examples" / f"{name}.seq"
    text = seqdsl.loads(path.read_text(), name=f"examples/{path.name}").compile("torch")
    golden = GOLDEN / f"{name}.py"
    if request.config.getoption("--update-golden"):
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text)
    assert golden.exists(), f"no golden file {golden}: run pytest --update-golden"
    assert text == golden.read_text(), (
        f"{golden} is out of date: review the diff, then run pytest --update-golden"
    )


def test_class_name_avoids_runtime_names() -> None:
    text = seqdsl.loads(
        "model LSTM {\n input x: f32[B, T, 2]\n y = x -> LSTM(3)\n output y\n}"
    ).compile("torch")
    assert "class LSTMModel(SeqdslModule):" in text
    net = seqdsl.loads(
        "model Dense {\n input x: f32[B, 2]\n y = x -> Dense(3)\n output y\n}"
    ).build("torch")
    assert type(net).__name__ == "DenseModel"


def test_names_that_clash_with_python_or_torch() -> None:
    """Values and layers named like locals, builtins, helpers or nn.Module attributes."""
    src = """
model Names {
    input lengths: f32[B, T, 3] pad(post) masked
    input dict: f32[B, 3]
    dropout = lengths -> Dense(3, name="eval")
    list = LSTM(3, name="forward")(dropout, initial_state=[dict, dict])
    x_mask = Bidirectional(GRU(2, return_sequences=true), name="state_dict")(dropout)
    output list, x_mask with mask
}"""
    model, net = build(src)
    x = np.random.default_rng(0).normal(size=(2, 4, 3))
    s = np.random.default_rng(1).normal(size=(2, 3))
    lens = {"lengths": np.array([4, 2])}
    ref = run_reference(model, weights64(net), [x, s], lengths=lens)
    compare(as_outputs(call(net, [x, s], lengths=lens), model), ref.outputs, F32_TOL)
    assert set(net.state_dict()) == set(net.WEIGHTS.values())
    # submodules named so that none shadows an nn.Module attribute; canonical keys kept
    assert net.WEIGHTS["forward/kernel"] == "forward_layer.kernel"
    assert net.WEIGHTS["state_dict/forward/kernel"] == "state_dict_layer.forward_layer.kernel"
    assert isinstance(net.get_submodule("state_dict_layer.backward_layer"), torch.nn.Module)
    assert "forward/kernel" in net.canonical_weights()
    params = dict(net.named_parameters())
    again = torch.func.functional_call(
        net, params, (torch.as_tensor(x), torch.as_tensor(s)), {"lengths": lens}
    )
    want = call(net, [x, s], lengths=lens)
    assert all(torch.equal(a, b) for a, b in zip(flat_t(again), flat_t(want), strict=True))
    net.train()
    net.eval()
    with pytest.raises(seqdsl.emit.Unsupported, match="training"):
        seqdsl.loads(src.replace('name="eval"', 'name="training"')).compile("torch")
