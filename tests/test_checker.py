"""The checker's typing rules: shapes, time dimensions and mask kinds.

Every expectation here is derived by hand from docs/language.md §4-§7 (and
LANGUAGE.md §6), not from the checker's output.
"""

from __future__ import annotations

import pytest

import seqdsl
from seqdsl.dims import Dim, sym
from seqdsl.types import MaskKind, MaskType, TensorType

T = sym("T")
B = sym("B")


def model(body: str, inputs: str = "input x: f32[B, T, 8] pad(post) masked") -> seqdsl.Program:
    src = f"model M {{\n{inputs}\n{body}\n}}"
    return seqdsl.loads(src, name="t.seq")


def types(body: str, inputs: str = "input x: f32[B, T, 8] pad(post) masked") -> dict[str, object]:
    return dict(model(body, inputs).model().types)


def tt(body: str, name: str, inputs: str = "input x: f32[B, T, 8] pad(post) masked") -> TensorType:
    t = types(body, inputs)[name]
    assert isinstance(t, TensorType)
    return t


def codes(src: str) -> list[str]:
    _, diags = seqdsl.analyze(src, "t.seq")
    return sorted(d.code for d in diags)


# ------------------------------------------------------------------ inputs


def test_masked_input_has_the_pad_side_and_is_maybe_empty() -> None:
    t = tt("y = x -> Dense(4)\noutput y", "x")
    assert t.mask == MaskKind("post", nonempty=False, declared=False)
    assert t.shape == (B, T, Dim.of(8))


def test_nonempty_pad_option_makes_nonempty_kinds() -> None:
    t = tt(
        "y = x -> Dense(4)\noutput y", "y", "input x: f32[B, T, 8] pad(pre, nonempty=true) masked"
    )
    assert t.mask == MaskKind("pre", nonempty=True)


def test_explicit_mask_input_kinds() -> None:
    ty = types(
        "y = LSTM(4)(x, mask=m)\nz = LSTM(4)(x, mask=m2)\noutput y, z",
        "input x: f32[B, T, 8]\ninput m: mask[B, T]\ninput m2: mask(post, nonempty)[B, T]",
    )
    m, m2 = ty["m"], ty["m2"]
    assert isinstance(m, MaskType) and isinstance(m2, MaskType)
    assert m.kind == MaskKind("any", False, True)
    assert m2.kind == MaskKind("post", True, True)


def test_embedding_mask_is_declared_only_for_pad_value_zero() -> None:
    ok = tt(
        "e = t -> Embedding(10, 4, mask_zero=true)\ny = e -> LSTM(3)\noutput y",
        "e",
        "input t: i32[B, T] pad(pre, value=0)",
    )
    assert ok.mask == MaskKind("pre", False, True)
    src = "model M {\ninput t: i32[B, T] pad(post, value=5)\ne = t -> Embedding(10, 4, mask_zero=true)\ny = e -> LSTM(3)\noutput y\n}"
    prog, diags = seqdsl.analyze(src, "t.seq")
    assert [d.code for d in diags] == ["SEQ803"]
    assert prog is not None
    e = prog.model().types["e"]
    assert isinstance(e, TensorType) and e.mask == MaskKind("any", False, False)


def test_masking_matches_pad_value() -> None:
    t = tt(
        "y = x -> Masking(mask_value=-1.0)\nz = y -> LSTM(3)\noutput z",
        "y",
        "input x: f32[B, T, 8] pad(post, value=-1)",
    )
    assert t.mask == MaskKind("post", False, True)


# ------------------------------------------------------------------ recurrent


def test_return_sequences_keeps_mask_and_go_backwards_flips_it() -> None:
    ty = types(
        "a = x -> LSTM(5, return_sequences=true)\n"
        "b = x -> GRU(6, return_sequences=true, go_backwards=true)\n"
        "c = x -> SimpleRNN(7)\n"
        "output a, b, c"
    )
    a, b, c = ty["a"], ty["b"], ty["c"]
    assert isinstance(a, TensorType) and isinstance(b, TensorType) and isinstance(c, TensorType)
    assert a.shape == (B, T, Dim.of(5)) and a.mask == MaskKind("post")
    assert b.shape == (B, T, Dim.of(6)) and b.mask == MaskKind("pre")
    assert c.shape == (B, Dim.of(7)) and c.mask is None


def test_return_state_results_and_bidirectional_widths() -> None:
    ty = types(
        "o, h, c = LSTM(5, return_state=true)(x)\n"
        'bo, hf, cf, hb, cb = Bidirectional(LSTM(3, return_sequences=true, return_state=true), merge_mode=concat, name="bi")(x)\n'
        "s = Bidirectional(GRU(4), merge_mode=sum)(x)\n"
        "f, g = Bidirectional(SimpleRNN(2), merge_mode=none)(x)\n"
        "output o, h, c, bo, hf, cf, hb, cb, s, f, g"
    )
    for n in ("o", "h", "c"):
        assert ty[n] == TensorType("f32", (B, Dim.of(5)))
    bo = ty["bo"]
    assert isinstance(bo, TensorType)
    assert bo.shape == (B, T, Dim.of(6)) and bo.mask == MaskKind("post")  # not flipped
    for n in ("hf", "cf", "hb", "cb"):
        assert ty[n] == TensorType("f32", (B, Dim.of(3)))
    assert ty["s"] == TensorType("f32", (B, Dim.of(4)))
    assert ty["f"] == ty["g"] == TensorType("f32", (B, Dim.of(2)))


def test_explicit_mask_replaces_input_mask_kind() -> None:
    t = tt(
        "y = LSTM(4, return_sequences=true)(x, mask=m)\noutput y",
        "y",
        "input x: f32[B, T, 8]\ninput m: mask(pre)[B, T]",
    )
    assert t.mask == MaskKind("pre", False, True)


def test_initial_state_from_bidirectional_encoder_merged_by_concat() -> None:
    prog = model(
        "e, hf, cf, hb, cb = Bidirectional(LSTM(8, return_state=true))(x)\n"
        "h = concat(hf, hb)\nc = concat(cf, cb)\n"
        "d = LSTM(16)(y, initial_state=[h, c])\n"
        "output e, d",
        "input x: f32[B, T, 4] pad(post) masked\ninput y: f32[B, S, 4] pad(post) masked",
    )
    assert prog.model().types["d"] == TensorType("f32", (B, Dim.of(16)))


def test_bidirectional_states_into_unidirectional_decoder_hint() -> None:
    src = (
        "model M {\ninput x: f32[B, T, 4] pad(post) masked\n"
        "e, hf, cf, hb, cb = Bidirectional(LSTM(8, return_state=true))(x)\n"
        "d = LSTM(8)(x, initial_state=[hf, cf, hb, cb])\noutput e, d\n}"
    )
    _, diags = seqdsl.analyze(src, "t.seq")
    (d,) = diags
    assert d.code == "SEQ304"
    assert d.hint is not None and "concat" in d.hint and "add" in d.hint and "units=16" in d.hint


# ------------------------------------------------------------------ merges and time


def test_merge_and_of_masks() -> None:
    ins = "input x: f32[B, T, 8] pad(post) masked\ninput y: f32[B, T, 8] pad(pre) masked\ninput z: f32[B, T, 8]"
    ty = types(
        "a = add(x, x)\nb = add(x, y)\nc = multiply(x, z)\nd = concat(x, z)\noutput a, b, c, d", ins
    )
    assert ty["a"] == TensorType("f32", (B, T, Dim.of(8)), MaskKind("post"), "x")
    b = ty["b"]
    assert isinstance(b, TensorType) and b.mask == MaskKind("any")
    c = ty["c"]
    assert isinstance(c, TensorType) and c.mask == MaskKind(
        "post"
    )  # unmasked input imposes nothing
    d = ty["d"]
    assert (
        isinstance(d, TensorType) and d.shape == (B, T, Dim.of(16)) and d.mask == MaskKind("post")
    )


def test_nonempty_survives_and_of_two_nonempty_prefixes() -> None:
    ins = "input x: f32[B, T, 8] pad(post, nonempty=true) masked\ninput y: f32[B, T, 8] pad(post, nonempty=true) masked"
    t = tt("a = add(x, y)\noutput a", "a", ins)
    assert t.mask == MaskKind("post", True)


def test_concat_on_time_sums_lengths_and_joins_masks() -> None:
    ins = (
        "input x: f32[B, T, 8] pad(post) masked\ninput u: f32[B, S, 8]\n"
        "input p: f32[B, S, 8] pad(pre) masked"
    )
    ty = types(
        "a = concat(u, x, axis=time)\nb = concat(p, u, axis=time)\nc = concat(x, u, axis=time)\noutput a, b, c",
        ins,
    )
    S = sym("S")
    a, b, c = ty["a"], ty["b"], ty["c"]
    assert isinstance(a, TensorType) and isinstance(b, TensorType) and isinstance(c, TensorType)
    assert a.shape == (B, S + T, Dim.of(8))
    assert a.mask == MaskKind("post", True)  # unmasked part: every row has valid steps
    assert b.mask == MaskKind("pre", True)
    assert c.mask == MaskKind("any", True)


def test_temporal_split_halves_time_and_keeps_sides() -> None:
    prog = model(
        "a, b = x -> TemporalSplit(2)\nz = concat(a, b, axis=time)\noutput z",
        "input x: f32[B, T, 8] pad(post, nonempty=true) masked",
    )
    m = prog.model()
    a, b, z = m.types["a"], m.types["b"], m.types["z"]
    assert isinstance(a, TensorType) and isinstance(b, TensorType) and isinstance(z, TensorType)
    assert a.time == T.scaled(1, 2)
    assert a.mask == MaskKind("post", True) and b.mask == MaskKind("post", False)
    assert z.time == T  # T/2 + T/2 normalises to T
    assert z.mask is not None and z.mask.side == "any"
    (c,) = m.constraints
    assert c.dim == T and c.divisor == 2


def test_a_valid_window_on_a_symbolic_length_is_a_runtime_constraint() -> None:
    """A valid window must fit in the steps that reach it: `dim >= window`, a run-time
    constraint when the length is symbolic (SEQ403 when it is known), with the
    constant moved to the right. None where it is provable from lengths >= 1: a
    window of 1 step, same or causal padding, a length known to be long enough."""
    prog = model(
        "a = x -> Conv1D(4, 5, strides=2) -> Conv1D(4, 3, dilation_rate=2)\n"
        "b = x -> MaxPooling1D(1) -> Conv1D(4, 9, padding=causal) -> AveragePooling1D(4, padding=same)\n"
        "c = k -> Conv1D(4, 3) -> MaxPooling1D(6)\n"
        "output a, b, c",
        "input x: f32[B, T, 8] pad(post) masked\ninput k: f32[B, 8, 8]",
    )
    m = prog.model()
    assert [str(c) for c in m.constraints] == [
        "T >= 5  (Conv1D)",
        "(T + 1) // 2 >= 7  (Conv1D)",
    ]
    first, second = m.constraints
    assert first.dim == T and first.minimum == 5 and first.divisor == 1
    assert first.rule == "Conv1D (line 4) needs T >= 5"  # the line of `a = ...`
    assert [second.holds({"T": t}) for t in (12, 13)] == [False, True]
    assert second.holds({}) is None
    assert "Run-time constraints:\n  T >= 5  (Conv1D)\n  (T + 1) // 2 >= 7  (Conv1D)" in (
        prog.summary()
    )


def test_known_length_split_needs_no_runtime_constraint() -> None:
    prog = model("a, b = x -> TemporalSplit(2)\noutput a, b", "input x: f32[B, 100, 8]")
    m = prog.model()
    a = m.types["a"]
    assert isinstance(a, TensorType) and a.time == Dim.of(50)
    assert m.constraints == ()


def test_strided_conv_length_formulas() -> None:
    ty = types(
        "v = x -> Conv1D(4, 3, strides=2)\n"
        "s = x -> Conv1D(4, 3, strides=2, padding=same)\n"
        "c = x -> Conv1D(4, 3, padding=causal, dilation_rate=2)\n"
        "p = x -> MaxPooling1D(2)\n"
        "output v, s, c, p"
    )
    v, s, c, p = ty["v"], ty["s"], ty["c"], ty["p"]
    assert isinstance(v, TensorType) and isinstance(s, TensorType)
    assert isinstance(c, TensorType) and isinstance(p, TensorType)
    assert v.time == (T - 3).floordiv(2) + 1
    # normal form keeps the constant inside a floor in [0, divisor): (T - 3)//2 + 1 == (T + 1)//2 - 1
    assert str(v.time) == "(T + 1) // 2 - 1"
    assert s.time == T.ceildiv(2)
    assert c.time == T
    assert p.time == (T - 2).floordiv(2) + 1
    assert v.mask == MaskKind("post", False) and c.mask == MaskKind("post", False)


def test_conv_on_known_length() -> None:
    t = tt("y = x -> Conv1D(4, 5, strides=2)\noutput y", "y", "input x: f32[B, 101, 8]")
    assert t.time == Dim.of(49)  # (101 - 5) // 2 + 1


def test_strided_conv_time_meets_original_time_is_an_error() -> None:
    src = "model M {\ninput x: f32[B, T, 8]\ny = x -> Conv1D(8, 3, strides=2)\nz = add(x, y)\noutput z\n}"
    assert codes(src) == ["SEQ401"]


def test_same_padding_twice_equals_known_symbolic_result() -> None:
    ty = types(
        "a = x -> Conv1D(4, 3, strides=2, padding=same)\nb = x -> AveragePooling1D(3, strides=2, padding=same)\nc = concat(a, b)\noutput c"
    )
    c = ty["c"]
    assert isinstance(c, TensorType) and c.shape == (B, T.ceildiv(2), Dim.of(12))


def test_global_pooling_consumes_mask_and_flatten_needs_drop_mask() -> None:
    ty = types(
        "g = x -> GlobalMaxPooling1D()\nf = x -> drop_mask -> Flatten()\noutput g, f",
        "input x: f32[B, 6, 8] pad(post) masked",
    )
    assert ty["g"] == TensorType("f32", (B, Dim.of(8)))
    assert ty["f"] == TensorType("f32", (B, Dim.of(48)))


def test_time_distributed_and_propagators_keep_the_mask() -> None:
    t = tt(
        "y = x -> TimeDistributed(Dense(3)) -> LayerNormalization() -> Dropout(0.1) -> Activation(relu)\noutput y",
        "y",
    )
    assert t.shape == (B, T, Dim.of(3)) and t.mask == MaskKind("post")


def test_repeat_stacks_layers_with_fresh_names() -> None:
    prog = model("s = x -> repeat(3) { LSTM(4, return_sequences=true) -> Dropout(0.2) }\noutput s")
    names = [layer.name for layer in prog.model().layers]
    assert names == [
        "s_r0_lstm",
        "s_r0_dropout",
        "s_r1_lstm",
        "s_r1_dropout",
        "s_r2_lstm",
        "s_r2_dropout",
    ]
    # first LSTM sees 8 features, the others 4
    counts = [layer.params for layer in prog.model().layers if layer.kind == "LSTM"]
    assert counts == [4 * (8 * 4 + 4 * 4 + 4), 4 * (4 * 4 + 4 * 4 + 4), 4 * (4 * 4 + 4 * 4 + 4)]


def test_errors_do_not_cascade() -> None:
    src = "model M {\ninput x: f32[B, T, 8]\ny = x -> Nope(3)\nz = y -> LSTM(4)\nw = Dense(2)(z)\noutput w\n}"
    assert codes(src) == ["SEQ103"]


@pytest.mark.parametrize(
    ("line", "code"),
    [
        ("y = x -> Flatten()", "SEQ501"),
        ("y = x -> Reshape([8, -1])", "SEQ501"),
        ("y = x -> drop_mask -> TemporalSoftmax()", "SEQ502"),
        ("y = x -> LSTM(4, stateful=true)", "SEQ601"),
        ("y = x -> Bidirectional(LSTM(4, stateful=true))", "SEQ601"),
        ("y = x -> Bidirectional(LSTM(4), backward_layer=LSTM(4))", "SEQ602"),
        ("y = x -> Bidirectional(LSTM(4), backward_layer=GRU(4, go_backwards=true))", "SEQ602"),
        ("y = x -> Bidirectional(LSTM(4), backward_layer=LSTM(5, go_backwards=true))", "SEQ602"),
        (
            "y = x -> Bidirectional(LSTM(4), backward_layer=LSTM(4, go_backwards=true, "
            "return_sequences=true))",
            "SEQ602",
        ),
        ("y = x -> SimpleRNN(4, implementation=2)", "SEQ202"),
        ("y = x -> LSTM(4, implementation=3)", "SEQ207"),
        ("y = x -> Bidirectional(LSTM(4, masked_output=carry, return_sequences=true))", "SEQ603"),
        ("y = x -> @kernel(cudnn) LSTM(4, activation=relu)", "SEQ701"),
        ("y = x -> @kernel(cudnn) LSTM(4, recurrent_dropout=0.1)", "SEQ701"),
        ("y = x -> Embedding(10, 4)", "SEQ301"),
        ("y = x -> LSTM(4, unroll=true)", "SEQ203"),
    ],
)
def test_rule_errors(line: str, code: str) -> None:
    src = f"model M {{\ninput x: f32[B, T, 8] pad(post) masked\n{line}\noutput y\n}}"
    assert codes(src) == [code]


def test_stateful_hint_declares_the_input_in_its_own_dtype() -> None:
    """SEQ601's hint rewrites the declaration the batch comes from: an `i32` token
    input gets `i32[32, T]`, not a float example."""
    src = (
        "model M {\ninput tokens: i32[B, T] pad(post, value=0)\n"
        "y = tokens -> Embedding(100, 8, mask_zero=true) -> LSTM(4, stateful=true)\noutput y\n}"
    )
    _, diags = seqdsl.analyze(src, "t.seq")
    (d,) = diags
    assert d.code == "SEQ601" and d.hint is not None
    assert "`tokens: i32[32, T]`" in d.hint and "f32" not in d.hint
    src = "model M {\ninput m: mask[B, T]\ninput x: f64[B, T, 3]\ny = LSTM(4, stateful=true)(x, mask=m)\noutput y\n}"
    _, diags = seqdsl.analyze(src, "t.seq")
    assert [d.code for d in diags] == ["SEQ601"] and "`x: f64[32, T, 3]`" in (diags[0].hint or "")


def test_keras_shape_arguments_say_what_to_write() -> None:
    src = "model M {\ninput x: f32[B, T, 8]\ny = x -> LSTM(4, input_shape=[8, 8])\noutput y\n}"
    _, diags = seqdsl.analyze(src, "t.seq")
    (d,) = diags
    assert d.code == "SEQ202" and "`input_shape`" in d.message
    assert "declare the input's type" in (d.hint or "") and "f32[B, T, F]" in (d.hint or "")


def test_implementation_is_recorded_and_shown() -> None:
    prog = model("y = x -> LSTM(4, implementation=1)\noutput y")
    (layer,) = prog.model().layers
    assert layer.config["implementation"] == 1
    assert "# y_lstm: LSTM(4, implementation=1)" in prog.compile("jax")  # its comment quotes it
    assert "LSTM(4, implementation=1, " in prog.compile("keras")  # passed to Keras' layer


def test_kernel_cudnn_accepts_eligible_layers_and_dropout() -> None:
    src = (
        "model M {\ninput x: f32[B, T, 8] pad(pre) masked\n"
        "y = x -> @kernel(cudnn) LSTM(4, dropout=0.3, return_sequences=true) -> @kernel(cudnn) GRU(4)\n"
        "output y\n}"
    )
    assert codes(src) == []


def test_pad_input_without_mask_warns_once_at_the_rnn() -> None:
    src = (
        "model M {\ninput t: i32[B, T] pad(post, value=0)\n"
        "y = t -> Embedding(10, 4) -> Dense(4) -> Conv1D(4, 3, padding=same) -> LSTM(4)\noutput y\n}"
    )
    _, diags = seqdsl.analyze(src, "t.seq")
    assert [(d.code, d.span.line if d.span else 0) for d in diags] == [("SEQ801", 3)]


# ------------------------------------------------------------------ attention

ATT_INPUTS = (
    "input q: f32[B, T, 8] pad(pre, nonempty=true) masked\n"
    "input v: f32[B, S, 8] pad(post) masked\n"
    "input k: f32[B, S, 5]"
)


def test_attention_output_has_the_query_time_and_mask() -> None:
    S = sym("S")
    ty = types(
        "y, w = Attention(return_attention_scores=true)(q, v)\n"
        "z, zw = MultiHeadAttention(3, 4, value_dim=2, return_attention_scores=true)(q, v, k)\n"
        "o = MultiHeadAttention(2, 4, output_shape=[6])(v, q)\n"
        "p = Attention()(q, k, v)\n"
        "output y, w, z, zw, o, p",
        ATT_INPUTS,
    )
    y, w, z, zw, o = (ty[n] for n in ("y", "w", "z", "zw", "o"))
    for t in (y, w, z, zw, o):
        assert isinstance(t, TensorType)
    # the query's batch, time and mask (kind preserved, declaration included); the
    # value's features for Attention, the query's for MultiHeadAttention
    assert y.shape == (B, T, Dim.of(8)) and y.mask == MaskKind("pre", nonempty=True)
    assert z.shape == (B, T, Dim.of(8)) and z.mask == MaskKind("pre", nonempty=True)
    assert o.shape == (B, S, Dim.of(6)) and o.mask == MaskKind("post")
    # the weights: [B, Tq, Tv] and [B, heads, Tq, Tv], no mask
    assert w.shape == (B, T, S) and w.mask is None
    assert zw.shape == (B, Dim.of(3), T, S) and zw.mask is None
    # the key (8 features, as the query's) scores, the value (5 features) is averaged
    p = ty["p"]
    assert isinstance(p, TensorType) and p.shape == (B, T, Dim.of(5))


def test_attention_parameters_and_padding_invariance() -> None:
    m = model(
        "a = MultiHeadAttention(3, 4, value_dim=2, output_shape=7)(q, v, k)\n"
        "b = Attention(use_scale=true, use_causal_mask=true)(q, q)\n"
        "c = Attention(score_mode=concat)(v, v)\n"
        "output a, b, c",
        ATT_INPUTS,
    ).model()
    a, b, c = m.layer("a_multi_head_attention"), m.layer("b_attention"), m.layer("c_attention")
    # query 8*3*4 + 12, key 5*3*4 + 12, value 8*3*2 + 6, output 3*2*7 + 7
    assert a.params == (96 + 12) + (60 + 12) + (48 + 6) + (42 + 7)
    assert (b.params, c.params) == (1, 1)
    assert a.padding_invariant and c.padding_invariant and not b.padding_invariant


@pytest.mark.parametrize(
    "body, code",
    [
        ("y = Attention()(q, v, k)", "SEQ302"),  # dot scores: 8 against 5 features
        ("y = Attention()(k, v)", "SEQ302"),  # (the value is the key)
        ("y = MultiHeadAttention(2, 4)(q, k, q)", "SEQ401"),  # key time T, value time S
        ("y = Attention()(q)", "SEQ205"),
        ("y = Attention()(q, v, k, v)", "SEQ205"),
        ("y = MultiHeadAttention(2, 4, output_shape=[2, 3])(q, v)", "SEQ203"),
        ("y = MultiHeadAttention(2, 4, attention_axes=2)(q, v)", "SEQ202"),
        ("y = MultiHeadAttention(2, 4, kernel_initializer=identity)(q, v)", "SEQ203"),
        ("y = MultiHeadAttention(0, 4)(q, v)", "SEQ207"),
        ("y = Attention(dropout=1.0)(q, v)", "SEQ207"),
        ("y = Attention(score_mode=additive)(q, v)", "SEQ203"),
        ("y = Attention()(q, v, training=1)", "SEQ203"),
        ("y = Attention(seed=3)(q, v)", "SEQ202"),
        ("y = MultiHeadAttention(2, 4, use_gate=true)(q, v)", "SEQ202"),
    ],
)
def test_attention_rule_errors(body: str, code: str) -> None:
    found = codes(f"model M {{\n{ATT_INPUTS}\n{body}\noutput y\n}}")
    assert [c for c in found if c != "SEQ802"] == [code]  # (some inputs are unused)


def test_attention_batch_and_dtype_must_agree() -> None:
    src = "model M {{\ninput q: {q}\ninput v: {v}\ny = Attention()(q, v)\noutput y\n}}"
    assert codes(src.format(q="f32[4, T, 8]", v="f32[3, S, 8]")) == ["SEQ307"]
    assert codes(src.format(q="f32[B, T, 8]", v="f64[B, S, 8]")) == ["SEQ301"]
    assert codes(src.format(q="f32[B, T, 8]", v="f32[B, S, 8, 2]")) == ["SEQ303"]


# ------------------------------------------------------------------ issue 12: limits with figures


def _diag(src: str, code: str) -> seqdsl.Diagnostic:
    _, diags = seqdsl.analyze(src, "t.seq")
    found = [d for d in diags if d.code == code]
    assert found, [f"{d.code} {d.message}" for d in diags]
    return found[0]


@pytest.mark.parametrize(
    ("dtype", "value", "ok"),
    [
        ("i32", "2147483647", True),
        ("i32", "2147483648", False),
        ("i32", "-2147483648", True),
        ("i32", "-2147483649", False),
        ("i32", "3000000000", False),
        ("i64", "3000000000", True),
        ("i64", "1e19", False),
        ("f32", "3e38", True),
        ("f32", "1e39", False),
        ("f64", "1e39", True),
    ],
)
def test_pad_value_must_fit_the_dtype(dtype: str, value: str, ok: bool) -> None:
    # item 7: pad(value=3000000000) on i32 passed and wrapped to -1294967296 at run time
    feats = "B, T" if dtype.startswith("i") else "B, T, 3"
    src = f"model M {{\n input t: {dtype}[{feats}] pad(post, value={value})\n output t\n}}"
    if ok:
        assert codes(src) == []
        return
    d = _diag(src, "SEQ207")
    assert d.span is not None and (d.span.line, d.span.col) == (
        2,
        src.splitlines()[1].index("value") + 1,
    )
    assert dtype in d.message and "does not fit" in d.message
    if dtype == "i32":
        assert "-2,147,483,648 to 2,147,483,647" in (d.hint or "")


def test_bool_pad_value() -> None:
    src = "model M {\n input t: bool[B, T, 2] pad(post, value=2)\n output t\n}"
    assert "SEQ207" in codes(src)
    assert codes(src.replace("value=2", "value=1")) == []


def test_too_many_parameters_in_one_layer_gives_the_figure() -> None:
    # item 14: LSTM(3000000000) failed at build with a 358 GiB MemoryError
    d = _diag(
        "model M {\n input x: f32[B, T, 8]\n y = x -> LSTM(3000000000)\n output y\n}", "SEQ312"
    )
    # Keras' count: 4 * units * (in + units + 1)
    n = 4 * 3000000000 * (8 + 3000000000 + 1)
    assert f"{n:,} parameters" in d.message and "2,147,483,647" in d.message
    assert d.span is not None and (d.span.line, d.span.col) == (3, 11)
    assert "recurrent_kernel" in (d.hint or "") and "12,000,000,000" in (d.hint or "")


def test_too_many_parameters_in_the_model() -> None:
    # each layer under the limit, the model over it: 3 * Dense(30000) on 30000 features
    body = "\n".join(f" y{i} = x -> Dense(30000)" for i in range(3))
    src = f"model M {{\n input x: f32[B, T, 30000]\n{body}\n o = concat(y0, y1, y2)\n output o\n}}"
    d = _diag(src, "SEQ312")
    per = 30000 * 30000 + 30000
    assert f"model `M` has {3 * per:,} parameters" in d.message
    assert d.span is not None and d.span.line == 1
    # the limit itself is fine
    assert "SEQ312" not in codes(src.replace("Dense(30000)\n y1", "Dense(3)\n y1").replace(
        " y2 = x -> Dense(30000)", " y2 = x -> Dense(3)"))  # fmt: skip


def test_values_beyond_a_64_bit_index() -> None:
    big = 10**10
    src = f"model M {{\n input x: f32[B, {big}, {big}]\n y = x -> GlobalAveragePooling1D()\n output y\n}}"
    d = _diag(src, "SEQ312")
    assert f"{big * big:,} elements" in d.message and "9,223,372,036,854,775,807" in d.message
    assert d.span is not None and (d.span.line, d.span.col) == (2, 8)
    # reported once: the size carries on into `y`
    assert codes(src).count("SEQ312") == 1


def test_merge_states_its_real_limit() -> None:
    # item 15: "concat takes at least 2 values, got 65"
    src = (
        "model M {\n input x: f32[B, T, 8]\n y = concat("
        + ", ".join(["x"] * 65)
        + ")\n output y\n}"
    )
    d = _diag(src, "SEQ205")
    assert d.message == "concat takes 2 to 64 values, got 65"
    assert "64" in (d.hint or "")
    ok = src.replace(", ".join(["x"] * 65), ", ".join(["x"] * 64))
    assert codes(ok) == []
    one = _diag(src.replace(", ".join(["x"] * 65), "x"), "SEQ205")
    assert one.message == "concat takes 2 to 64 values, got 1"
