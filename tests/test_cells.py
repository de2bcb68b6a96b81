"""Front end of cell blocks and extern layers: the type rules, bound shapes, mask
contracts and the extern registry (the run-time parity lives in the backend tests)."""

from __future__ import annotations

import pytest

import seqdsl
from seqdsl.cells import bound_cell_of, is_cell_layer
from seqdsl.externs import ExternError, check_output_shapes, get_extern, register_extern
from seqdsl.types import MaskKind

LSTM_CELL = """
cell MyLSTMCell(units: int) {
    input x: f32[in]
    state h: f32[units]
    state c: f32[units]
    weight kernel: [in, 4 * units] = glorot_uniform
    weight recurrent_kernel: [units, 4 * units] = orthogonal
    weight bias: [4 * units] = zeros
    z = x @ kernel + h @ recurrent_kernel + bias
    zi, zf, zc, zo = split(z, 4)
    c_new = sigmoid(zf) * c + sigmoid(zi) * tanh(zc)
    h_new = sigmoid(zo) * tanh(c_new)
    h <- h_new
    c <- c_new
    output h
}
"""


def _codes(text: str) -> list[tuple[str, int, int]]:
    _, diags = seqdsl.analyze(text, "t.seq")
    return [(d.code, d.span.line, d.span.col) for d in diags if d.span is not None]


def test_lstm_cell_block_counts_like_the_builtin_layer() -> None:
    prog = seqdsl.loads(
        LSTM_CELL
        + """
model M {
    input x: f32[B, T, 6] masked
    a = RNN(MyLSTMCell(8), return_sequences=true)(x)
    b = LSTM(8, return_sequences=true)(x)
    output a, b
}"""
    )
    m = prog.model()
    a, b = m.layer("a_rnn"), m.layer("b_lstm")
    # Keras' LSTM: 4u(F + u + 1) = 32 * 15
    assert a.params == b.params == 480
    assert [(w.name, w.shape) for w in a.weights] == [(w.name, w.shape) for w in b.weights]
    assert m.types["a"] == m.types["b"]
    bc = bound_cell_of(a, m.types)
    assert bc.inputs == (("x", (6,)),)
    assert bc.states == (("h", (8,)), ("c", (8,)))
    assert bc.outputs == (("h", (8,)),)
    assert bc.dims["in"] == 6 and bc.dims["units"] == 8
    assert bc.locals["z"] == (32,) and bc.locals["zi"] == (8,)
    assert is_cell_layer(a.config) and not is_cell_layer(b.config)


def test_nested_cell_types_and_states() -> None:
    prog = seqdsl.load("examples/custom/nested_cell.seq")
    m = prog.model()
    assert str(m.types["out_1"]).startswith("f32[B, 10]")
    assert str(m.types["out_2_3"]).startswith("f32[B, 20, 30]")
    layer = m.layers[0]
    # the seed's NestedCell: i1*unit_1 + i2*i3*unit_2*unit_3
    assert layer.params == 32 * 10 + 64 * 32 * 20 * 30


def test_cell_return_state_and_bidirectional_shapes() -> None:
    prog = seqdsl.loads(
        LSTM_CELL
        + """
model M {
    input x: f32[4, T, 6] masked
    y, h, c = RNN(MyLSTMCell(8), return_sequences=true, return_state=true, go_backwards=true)(x)
    z = Bidirectional(RNN(MyLSTMCell(8), return_sequences=true), merge_mode="concat")(x)
    output y, h, c, z
}"""
    )
    m = prog.model()
    assert str(m.types["h"]) == "f32[4, 8]"
    assert str(m.types["z"]).startswith("f32[4, T, 16]")
    # go_backwards flips the mask kind's side; gaps stay gaps
    assert m.types["y"].mask == MaskKind("any")  # type: ignore[union-attr]
    names = [w.name for w in m.layer("z_bidirectional").weights]
    assert names[:3] == ["forward/kernel", "forward/recurrent_kernel", "forward/bias"]
    assert m.layer("z_bidirectional").params == 2 * 480


def test_go_backwards_flips_a_post_mask() -> None:
    m = seqdsl.loads(
        LSTM_CELL
        + """
model M {
    input t: i32[B, T] pad(post, value=0)
    y = t -> Embedding(10, 4, mask_zero=true) -> RNN(MyLSTMCell(3), return_sequences=true, go_backwards=true)
    output y
}"""
    ).model()
    assert m.types["y"].mask.side == "pre"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "body, code",
    [
        ("h <- tanh(x @ kernel + h @ kernel)", "SEQ310"),  # [in, u] used as [u, u]
        ("h <- tanh(x @ kernel) + x", "SEQ310"),  # [u] + [in]
        ('h <- einsum("bi,ij->bj", x, kernel) + 1.0', None),
        ("h <- softmax(x @ kernel, axis=1)", "SEQ203"),  # axis out of range
        ("h <- concat(x @ kernel, h)[0:units]", None),
        ("h <- sum(x @ kernel)", "SEQ311"),  # the reduction removes the axis
        ("h <- x[0:units] @ kernel", "SEQ310"),  # [units] @ [in, units]
        ("a, b = split(x @ kernel, 2)\n    h <- concat(a, b)", None),
        ("h <- maximum(x @ kernel, 0.0) * scale", None),
        ("h <- kernel[0] * 2.0", "SEQ311"),  # no batch axis
    ],
)
def test_equation_rules(body: str, code: str | None) -> None:
    text = f"""
cell C(units: int, scale: float = 0.5) {{
    input x: f32[in]
    state h: f32[units]
    weight kernel: [in, units]
    {body}
    output h
}}
model M {{
    input x: f32[B, T, 6]
    y = x -> RNN(C(6))
    output y
}}"""
    got = [c for c, _, _ in _codes(text)]
    assert got == ([] if code is None else [code]), got


def test_definition_error_is_reported_once_and_calls_stay_silent() -> None:
    text = """
cell C(units: int) {
    input x: f32[in]
    state h: f32[units]
    weight kernel: [in, units]
    h <- x @ kernel @ kernel
    output h
}
model M {
    input x: f32[B, T, 6]
    y = x -> RNN(C(4))
    z = x -> RNN(C(5))
    output y, z
}"""
    assert _codes(text) == [("SEQ310", 6, 10)]


def test_call_binds_sizes_and_reports_at_the_call() -> None:
    text = """
cell Residual(units: int) {
    input x: f32[units]
    state h: f32[units]
    weight kernel: [units, units]
    h <- tanh(x @ kernel) + x
    output h
}
model M {
    input x: f32[B, T, 6]
    ok = x -> RNN(Residual(6))
    bad = x -> RNN(Residual(5))
    output ok, bad
}"""
    assert _codes(text) == [("SEQ302", 12, 11)]


EXTERNS = """
extern layer MyEmbedding(input_dim: int, output_dim: int, mask_zero: bool = false) {
    in: i32[B, T]
    out: f32[B, T, output_dim]
    mask: generate(x != 0) if mask_zero
    weight embeddings: [input_dim, output_dim] = random_normal
}
extern layer MyActivation { shape: same; mask: propagate }
extern layer MyTemporalSplit(parts: int) { outputs: parts; time: T / parts; mask: split }
extern layer MyTemporalSoftmax { shape: same; mask: consume(required) }
extern layer MyJoin { inputs: 2; shape: same; mask: concat }
"""


def test_extern_contracts_give_the_keras_guide_masks() -> None:
    m = seqdsl.loads(
        EXTERNS
        + """
model M {
    input t: i32[B, T] pad(pre, value=0)
    e = t -> MyEmbedding(10, 4, mask_zero=true)
    n = t -> MyEmbedding(10, 4, name="plain")
    a = e -> MyActivation()
    p, q = a -> MyTemporalSplit(2)
    s = q -> MyTemporalSoftmax()
    j = MyJoin()(p, q)
    output n, s, j
}"""
    ).model()
    assert m.types["e"].mask == MaskKind("pre", declared=True)  # type: ignore[union-attr]
    assert m.types["n"].mask is None  # type: ignore[union-attr]
    assert m.types["a"].mask == m.types["e"].mask  # type: ignore[union-attr]
    assert str(m.types["p"]).startswith("f32[B, T/2, 4]")
    assert m.types["s"].mask is None  # type: ignore[union-attr]
    assert str(m.types["j"]).startswith("f32[B, T, 4]")
    # the halves of a pre mask, joined again: the rule cannot know they are adjacent
    assert m.types["j"].mask.side == "any"  # type: ignore[union-attr]
    assert m.layer("e_my_embedding").params == 40
    assert [str(c) for c in m.constraints] == ["T % 2 == 0  (MyTemporalSplit)"]


def test_python_use_is_recorded_not_resolved() -> None:
    prog = seqdsl.loads(
        'use "some_pkg.externs"\n'
        + EXTERNS
        + "\nmodel M {\n input x: f32[B, T, 3] masked\n y = x -> MyActivation()\n output y\n}"
    )
    assert prog.model().python_modules == ("some_pkg.externs",)
    assert set(prog.model().externs) >= {"MyActivation"}


def test_registry_and_debug_checks() -> None:
    register_extern("TestOnlyLayer", "numpy", lambda x, **kw: x)
    assert get_extern("TestOnlyLayer", "numpy").fn(3, mask=None) == 3
    with pytest.raises(ExternError, match="no torch implementation.*numpy"):
        get_extern("TestOnlyLayer", "torch")
    assert get_extern("TestOnlyLayer", "torch", {"TestOnlyLayer": abs}).fn(-2) == 2
    with pytest.raises(ValueError):
        register_extern("X", "tensorflow", abs)
    check_output_shapes("L", [("f32", (None, None, 4))], [("float32", (2, 5, 4))], "shape: same")
    with pytest.raises(ExternError, match="output 1 is float32\\[2, 5, 3\\]"):
        check_output_shapes("L", [("f32", (None, None, 4))], [("float32", (2, 5, 3))], "d")
    with pytest.raises(ExternError, match="returned 2 output"):
        check_output_shapes("L", [("f32", (2,))], [("float32", (2,)), ("float32", (2,))], "d")
    with pytest.raises(ExternError, match="int32"):
        check_output_shapes("L", [("f32", (2,))], [("int32", (2,))], "d")
