"""ONNX export (``seqdsl.emit.onnx_backend``): onnxruntime against the reference interpreter.

Every example the exporter supports, and post/pre/gap/unmasked variants of
small recurrent models, run in onnxruntime on two batch sizes and two time
lengths (where the time axis is symbolic) and must equal the reference
interpreter on the same float32 weights within 1e-5. The graphs must use
ONNX's recurrent ops (no Loop/Scan) and pass ``onnx.checker``; unsupported
examples raise ``Unsupported`` naming the layer; the CLI writes a file.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import seqdsl
import seqdsl.cli as cli
from seqdsl.checker import CheckedModel
from seqdsl.emit import Unsupported
from seqdsl.initializers import initial_weights
from seqdsl.padding import lengths_to_mask
from seqdsl.reference import run_reference
from seqdsl.types import MaskType, TensorType
from seqdsl.weightsfile import save_weights

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from seqdsl.emit.onnx_backend import export_onnx, input_names  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.seq")) + sorted(
    (ROOT / "examples" / "custom").glob("*.seq")
)

#: example file -> the layer the exporter names as unsupported
UNSUPPORTED = {
    "rnn_guide_stateful.seq": "output_state_lstm",
    "stateful_paragraphs.seq": "lstm_layer",
    "builtin_cells.seq": "a_rnn",
    "minimal_rnn_cell.seq": "seq_rnn",
    "nested_cell.seq": "out_1_rnn",
    "seed_masking_layers.seq": "x_my_embedding",
}

RECURRENT_OPS = {"LSTM", "GRU", "RNN"}
SIZES = ((2, 4), (3, 6))  # (batch, time): two batch sizes, two time lengths
#: the examples' convolutions need longer sequences
EXAMPLE_SIZES = ((2, 12), (3, 16))


def _weights(m: CheckedModel, seed: int = 0) -> dict[str, np.ndarray]:
    return initial_weights(((la.name, la.weights) for la in m.layers), seed, "float32")


def _vocab(m: CheckedModel) -> int:
    dims = [int(str(la.config["input_dim"])) for la in m.layers if la.kind == "Embedding"]
    return min(dims) if dims else 10


def _lengths(b: int, t: int, nonempty: bool) -> np.ndarray:
    pattern = [t, 0, 1, t - 1, 2]
    lens = np.array([pattern[i % len(pattern)] for i in range(b)], np.int64)
    return np.maximum(lens, 1) if nonempty else lens


def _gaps(rng: np.random.Generator, b: int, t: int, nonempty: bool) -> np.ndarray:
    m = rng.random((b, t)) < 0.6
    m[0] = True
    if b > 1:
        m[1] = False  # an empty row
    if nonempty:
        m[~m.any(axis=1), 0] = True
    return m


def make_case(
    m: CheckedModel, b: int, t: int, seed: int = 0
) -> tuple[dict[str, np.ndarray], list[np.ndarray], dict[str, Any]]:
    """ONNX feeds, the reference's inputs and its keyword arguments (lengths, masks)."""
    rng = np.random.default_rng(seed)
    env: dict[str, int] = {}
    times: list[str] = []

    def size(d: object, axis: int) -> int:
        if d is None:
            return t
        v = getattr(d, "value", None)
        if isinstance(v, int):
            return v
        key = str(d)
        if key not in env:  # the batch; each further time symbol one step longer
            env[key] = b if axis == 0 else t + len(times)
            if axis != 0:
                times.append(key)
        return env[key]

    feeds: dict[str, np.ndarray] = {}
    inputs: list[np.ndarray] = []
    lengths: dict[str, np.ndarray] = {}
    masks: dict[str, np.ndarray] = {}
    vocab = _vocab(m)
    for decl in m.model.inputs:
        ty = m.types[decl.name]
        if isinstance(ty, MaskType):
            bb, tt = size(ty.batch, 0), size(ty.time, 1)
            if ty.kind.side == "any":
                mask = _gaps(rng, bb, tt, ty.kind.nonempty)
            else:
                mask = lengths_to_mask(_lengths(bb, tt, ty.kind.nonempty), tt, ty.kind.side)
            feeds[decl.name] = mask
            inputs.append(mask)
            continue
        assert isinstance(ty, TensorType)
        shape = tuple(size(d, i) for i, d in enumerate(ty.shape))
        if ty.dtype in ("f32", "f64"):
            x: np.ndarray = rng.normal(size=shape).astype(
                np.float32 if ty.dtype == "f32" else np.float64
            )
        elif ty.dtype in ("i32", "i64"):
            x = rng.integers(1, vocab, size=shape).astype(
                np.int32 if ty.dtype == "i32" else np.int64
            )
        else:
            x = rng.random(shape) < 0.5
        pad = m.pads.get(decl.name)
        if pad is not None:
            lens = _lengths(shape[0], shape[1], pad.nonempty)
            valid = lengths_to_mask(lens, shape[1], pad.side)
            x[~valid] = pad.value
            if decl.masked:
                feeds[f"{decl.name}_lengths"] = lens
                lengths[decl.name] = lens
        elif decl.masked:
            assert ty.mask is not None
            mask = _gaps(rng, shape[0], shape[1], ty.mask.nonempty)
            feeds[f"{decl.name}_mask"] = mask
            masks[decl.name] = mask
        feeds[decl.name] = x
        inputs.append(x)
    return feeds, inputs, {"lengths": lengths, "masks": masks}


def _session(data: bytes) -> Any:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def _flat_reference(outputs: tuple[object, ...]) -> list[np.ndarray]:
    flat: list[np.ndarray] = []
    for o in outputs:
        if isinstance(o, tuple):
            flat += [np.asarray(o[0]), np.asarray(o[1])]
        else:
            flat.append(np.asarray(o))
    return flat


def check_parity(m: CheckedModel, sizes: tuple[tuple[int, int], ...] = SIZES) -> Any:
    weights = _weights(m)
    data = export_onnx(m, weights)
    proto = onnx.load_from_string(data)
    onnx.checker.check_model(proto, full_check=True)  # strict shape inference too
    sess = _session(data)
    assert [i.name for i in sess.get_inputs()] == input_names(m)
    for seed, (b, t) in enumerate(sizes):
        feeds, inputs, kw = make_case(m, b, t, seed)
        got = sess.run(None, feeds)
        want = _flat_reference(run_reference(m, weights, inputs, **kw).outputs)
        assert len(got) == len(want)
        for out, g, w in zip(sess.get_outputs(), got, want, strict=True):
            assert g.shape == w.shape, (out.name, b, t)
            if w.dtype == np.bool_:
                np.testing.assert_array_equal(g, w, err_msg=f"{out.name} (B={b}, T={t})")
            else:
                np.testing.assert_allclose(
                    g, w, rtol=1e-5, atol=1e-5, err_msg=f"{out.name} (B={b}, T={t})"
                )
    return proto


def op_types(proto: Any) -> set[str]:
    return {n.op_type for n in proto.graph.node}


def _has_rnn(m: CheckedModel) -> bool:
    return any(la.kind in ("LSTM", "GRU", "SimpleRNN", "RNN", "Bidirectional") for la in m.layers)


# ---------------------------------------------------------------- examples


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example(path: Path) -> None:
    prog = seqdsl.load(path)
    for m in prog.models:
        if path.name in UNSUPPORTED:
            with pytest.raises(Unsupported) as e:
                export_onnx(m)
            assert e.value.layer == UNSUPPORTED[path.name]
            assert e.value.layer in str(e.value)
            continue
        proto = check_parity(m, EXAMPLE_SIZES)
        ops = op_types(proto)
        assert not ops & {"Loop", "Scan", "If"}
        if _has_rnn(m):
            assert ops & RECURRENT_OPS


# ---------------------------------------------------------------- small recurrent models

LAYERS = {
    "lstm": "LSTM(4, return_sequences=true)",
    "lstm_last": "LSTM(4)",
    "gru": "GRU(4, return_sequences=true)",
    "gru_v1": "GRU(4, reset_after=false, return_sequences=true)",
    "gru_v1_last": "GRU(3, reset_after=false)",
    "rnn": "SimpleRNN(4, return_sequences=true)",
    "rnn_relu_last": "SimpleRNN(3, activation=relu)",
    "lstm_back": "LSTM(4, return_sequences=true, go_backwards=true)",
    "gru_back_last": "GRU(4, go_backwards=true)",
    "lstm_carry": "LSTM(3, return_sequences=true, masked_output=carry)",
    "gru_back_carry": "GRU(3, return_sequences=true, go_backwards=true, masked_output=carry)",
    "lstm_hard_sigmoid": "LSTM(3, recurrent_activation=hard_sigmoid, activation=relu)",
    "gru_linear": "GRU(3, activation=linear, return_sequences=true)",
    "bi_rnn_leaky": "Bidirectional(SimpleRNN(3, activation=leaky_relu))",
    "lstm_mixed": "LSTM(3, recurrent_activation=hard_sigmoid, activation=elu, "
    "return_sequences=true)",
    "bi_gru_mixed": "Bidirectional(GRU(3, recurrent_activation=hard_sigmoid, "
    "activation=linear, return_sequences=true))",
    "cell": "RNN(GRUCell(3), return_sequences=true)",
    "cell_lstm_last": "RNN(LSTMCell(3))",
    "lstm_nobias": "LSTM(3, use_bias=false, return_sequences=true)",
    "gru_nobias": "GRU(3, use_bias=false)",
    "rnn_nobias_back": "SimpleRNN(3, use_bias=false, go_backwards=true, return_sequences=true)",
    "bi_concat": "Bidirectional(LSTM(4, return_sequences=true))",
    "bi_sum_gru": "Bidirectional(GRU(3, return_sequences=true), merge_mode=sum)",
    "bi_mul_rnn": "Bidirectional(SimpleRNN(3, return_sequences=true), merge_mode=mul)",
    "bi_ave_last": "Bidirectional(LSTM(3), merge_mode=ave)",
    "bi_gru_v1": "Bidirectional(GRU(3, reset_after=false))",
    "bi_backward_layer": "Bidirectional(LSTM(3, return_sequences=true, implementation=1), "
    "backward_layer=LSTM(3, go_backwards=true, return_sequences=true, use_bias=false))",
    "stack": "LSTM(4, return_sequences=true) -> GRU(3, return_sequences=true) "
    "-> GlobalAveragePooling1D()",
    "maxpool": "GRU(3, return_sequences=true) -> GlobalMaxPooling1D()",
}

MASKS = {
    "post": "input x: f32[B, T, 3] pad(post, value=0.0) masked",
    "pre": "input x: f32[B, T, 3] pad(pre, value=0.0) masked",
    "gaps": "input x: f32[B, T, 3] masked",
    "none": "input x: f32[B, T, 3]",
}


def _small(layer: str, mask: str) -> CheckedModel:
    src = f"model M {{\n    {MASKS[mask]}\n    y = x -> {layer}\n    output y\n}}\n"
    return seqdsl.loads(src).model()


@pytest.mark.parametrize("mask", list(MASKS))
@pytest.mark.parametrize("layer", list(LAYERS))
def test_small_recurrent(layer: str, mask: str) -> None:
    proto = check_parity(_small(LAYERS[layer], mask))
    ops = op_types(proto)
    assert ops & RECURRENT_OPS and not ops & {"Loop", "Scan"}
    if mask == "post":  # sequence_lens directly: nothing is moved
        assert "ScatterElements" not in ops


STATES = """\
model States {
    input x: f32[B, T, 3] %s
    input y: f32[B, S, 2] pad(post, value=0.0) masked
    seq, h, c = LSTM(4, return_sequences=true, return_state=true)(x)
    _o, hf, cf, hb, cb = Bidirectional(LSTM(4, return_state=true), name="enc")(x)
    dec = LSTM(8, return_sequences=true, name="dec")(y, initial_state=[concat(hf, hb), concat(cf, cb)])
    g, gh = GRU(4, return_state=true, go_backwards=true)(x, initial_state=[h])
    both = add(h, gh)
    output seq%s, h, c, dec with mask, g, both
}
"""


@pytest.mark.parametrize("mask", ["pad(post, value=0.0) masked", "pad(pre) masked", "masked", ""])
def test_states_and_initial_states(mask: str) -> None:
    check_parity(seqdsl.loads(STATES % (mask, " with mask" if mask else "")).model())


MERGES = """\
model Merges {
    input a: i32[B, T] pad(post, value=0)
    input m: mask[B, T]
    e = a -> Embedding(7, 4, mask_zero=true)
    f = a -> Embedding(7, 4) -> Dense(4, activation=gelu)
    s = add(e, f)
    j = concat(e, f)
    t = concat(e, f, axis=time)
    r = LSTM(3)(t)
    k = SimpleRNN(2, return_sequences=true)(j, mask=m)
    l = Bidirectional(GRU(2), merge_mode=concat)(f, mask=m)
    p = s -> GlobalMaxPooling1D()
    n = s -> LayerNormalization() -> TimeDistributed(Dense(2, activation=softmax))
    output r, k with mask, l, p, n with mask
}
"""


def test_merges_explicit_masks_and_per_step_layers() -> None:
    check_parity(seqdsl.loads(MERGES).model())


WINDOWS = {
    "conv_valid": "Conv1D(3, 3, strides=2)",
    "conv_same": "Conv1D(3, 3, strides=2, padding=same, activation=relu)",
    "conv_causal": "Conv1D(2, 2, dilation_rate=2, padding=causal, use_bias=false)",
    "conv_same_s1": "Conv1D(2, 4, padding=same)",
    "maxpool": "MaxPooling1D(2)",
    "avgpool_same": "AveragePooling1D(3, strides=2, padding=same)",
    "avgpool": "AveragePooling1D(2, strides=1)",
    "maxpool_same": "MaxPooling1D(3, strides=2, padding=same)",
}


@pytest.mark.parametrize("mask", ["post", "pre", "gaps", "none"])
@pytest.mark.parametrize("layer", list(WINDOWS))
def test_windows(layer: str, mask: str) -> None:
    src = f"model W {{\n    {MASKS[mask]}\n    y = x -> {WINDOWS[layer]}\n"
    src += "    output y%s\n}\n" % ("" if mask == "none" else " with mask")
    check_parity(seqdsl.loads(src).model(), sizes=((2, 7), (3, 8)))


ATTENTION = {
    "dot": "Attention()(q, v)",
    "scaled_causal": "Attention(use_scale=true, use_causal_mask=true)(q, v)",
    "concat_key": "Attention(score_mode=concat)(q, v, k)",
    "mha": "MultiHeadAttention(num_heads=2, key_dim=3)(q, v)",
    "mha_causal_key": "MultiHeadAttention(num_heads=2, key_dim=2, value_dim=3, "
    "use_causal_mask=true, use_bias=false)(q, v, k)",
}


@pytest.mark.parametrize("masked", [True, False])
@pytest.mark.parametrize("layer", list(ATTENTION))
def test_attention(layer: str, masked: bool) -> None:
    qm = " pad(post, value=0.0) masked" if masked else ""
    vm = " masked" if masked else ""
    src = f"""model Att {{
    input q: f32[B, T, 4]{qm}
    input v: f32[B, S, 4]{vm}
    input k: f32[B, S, 4]
    y = {ATTENTION[layer]}
    output y
}}"""
    check_parity(seqdsl.loads(src).model())


@pytest.mark.parametrize(
    "act",
    ["relu", "tanh", "sigmoid", "softmax", "linear", "gelu", "elu", "selu", "softplus",
     "softsign", "swish", "hard_sigmoid", "relu6", "leaky_relu", "mish", "log_softmax",
     "exponential"],
)  # fmt: skip
def test_activations(act: str) -> None:
    src = f"""model A {{
    input x: f32[B, T, 3]
    y = x -> Dense(4, activation={act}) -> Activation({act})
    output y
}}"""
    check_parity(seqdsl.loads(src).model(), sizes=((2, 3),))


@pytest.mark.parametrize("opset", [17, 18, 20])
def test_opsets_and_f64_inputs(opset: int) -> None:
    src = """model P {
    input x: f64[B, T, 3] pad(pre, value=0.0) masked
    y = x -> LSTM(3, return_sequences=true) -> GlobalMaxPooling1D()
    z = x -> Conv1D(2, 3, padding=same) -> LayerNormalization() -> TemporalSoftmax()
    output y, z
}"""
    m = seqdsl.loads(src).model()
    w = _weights(m)
    data = export_onnx(m, w, opset=opset)
    proto = onnx.load_from_string(data)
    onnx.checker.check_model(proto)
    assert proto.opset_import[0].version == opset
    feeds, inputs, kw = make_case(m, 3, 5)
    got = _session(data).run(None, feeds)
    want = _flat_reference(run_reference(m, w, inputs, **kw).outputs)
    for g, r in zip(got, want, strict=True):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5)


def test_dynamic_dims_and_io_contract() -> None:
    m = _small("Bidirectional(LSTM(4, return_sequences=true))", "post")
    proto = onnx.load_from_string(export_onnx(m, seed=3))
    ins = {i.name: i for i in proto.graph.input}
    assert list(ins) == ["x", "x_lengths"]
    dims = [d.dim_param or d.dim_value for d in ins["x"].type.tensor_type.shape.dim]
    assert dims == ["B", "T", 3]
    assert ins["x_lengths"].type.tensor_type.elem_type == onnx.TensorProto.INT64
    assert [o.name for o in proto.graph.output] == ["y"]
    assert {i.name for i in proto.graph.initializer} and not op_types(proto) & {"Loop", "Scan"}


def test_unsupported_activation_inside_rnn_names_the_layer() -> None:
    m = _small('LSTM(4, activation=gelu, name="enc")', "none")
    with pytest.raises(Unsupported, match="enc") as e:
        export_onnx(m)
    assert e.value.layer == "enc"


def test_backward_layer_of_another_cell_and_stateful_bidirectional_are_unsupported() -> None:
    m = _small(
        'Bidirectional(GRU(3), backward_layer=GRU(3, go_backwards=true, activation=relu), name="bi")',
        "none",
    )
    with pytest.raises(Unsupported, match="backward_layer with another activation") as e:
        export_onnx(m)
    assert e.value.layer == "bi"
    src = 'model M {\n input x: f32[2, T, 3]\n y = x -> Bidirectional(GRU(3, stateful=true), name="st")\n output y\n}'
    with pytest.raises(Unsupported, match="stateless"):
        export_onnx(seqdsl.loads(src).model())


def test_training_calls_are_unsupported() -> None:
    src = """model M {
    input x: f32[B, T, 3]
    y = LSTM(3, dropout=0.2, name="r")(x, training=true)
    output y
}"""
    with pytest.raises(Unsupported, match="inference only") as e:
        export_onnx(seqdsl.loads(src).model())
    assert e.value.layer == "r"


def test_program_api_and_weights() -> None:
    prog = seqdsl.loads(STATES % ("masked", " with mask"))
    m = prog.model()
    w = _weights(m, seed=5)
    assert prog.export_onnx(weights=w) == export_onnx(m, w)
    bad = dict(w)
    bad.pop("dec/bias")
    with pytest.raises(ValueError, match="dec/bias"):
        prog.export_onnx(weights=bad)


# ---------------------------------------------------------------- CLI

GOOD = """\
model Sentiment {
    input tokens: i32[B, T] pad(post, value=0)
    x = tokens -> Embedding(50, 8, mask_zero=true) -> LSTM(4)
    output x
}
"""


def test_cli_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "good.seq"
    src.write_text(GOOD)
    out = tmp_path / "model.onnx"
    assert cli.main(["export", str(src), "--format", "onnx", "-o", str(out)]) == cli.EXIT_OK
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto)
    assert "LSTM" in op_types(proto)
    # with a weights file: the same numbers as the Python API with those weights
    m = seqdsl.load(src).model()
    w: Mapping[str, np.ndarray] = _weights(m, seed=9)
    wf = tmp_path / "w.safetensors"
    save_weights(wf, w)
    args = ["export", str(src), "--format", "onnx", "-o", str(out), "--weights", str(wf)]
    assert cli.main(args) == cli.EXIT_OK
    assert out.read_bytes() == export_onnx(m, w)
    seeded = ["export", str(src), "--format", "onnx", "-o", str(out), "--seed", "9"]
    assert cli.main(seeded) == cli.EXIT_OK
    assert out.read_bytes() == export_onnx(m, w)
    capsys.readouterr()


def test_cli_export_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m.onnx"
    stateful = ROOT / "examples" / "stateful_paragraphs.seq"
    args = ["export", str(stateful), "--format", "onnx", "-o", str(out)]
    assert cli.main(args) == cli.EXIT_USER
    err = capsys.readouterr().err
    assert "lstm_layer" in err and "stateful" in err and not out.exists()
    src = tmp_path / "good.seq"
    src.write_text(GOOD)
    wf = tmp_path / "w.safetensors"
    save_weights(wf, {"x/y": np.zeros(2, np.float32)})
    args = ["export", str(src), "--format", "onnx", "-o", str(out), "--weights", str(wf)]
    assert cli.main(args) == cli.EXIT_USER
    assert "missing weight" in capsys.readouterr().err
    args = ["export", str(src), "--format", "onnx", "-o", str(out), "--weights", "nope.st"]
    assert cli.main(args) == cli.EXIT_USAGE
    missing = ["export", str(tmp_path / "none.seq"), "--format", "onnx", "-o", str(out)]
    assert cli.main(missing) == cli.EXIT_USAGE
    with pytest.raises(SystemExit) as e:
        cli.main(["export", str(src), "--format", "tflite", "-o", str(out)])
    assert e.value.code == cli.EXIT_USAGE
