"""Parsing and lowering (seqdsl/parser.py, seqdsl/lower.py) into the IR.

Expected names are written from the naming rules in lower.py's docstring:
``{target}_{stem}`` with the Keras snake-case stem, ``_1``/``_2`` for further
layers of one class in a statement, ``{target}_r{i}_{stem}`` inside
``repeat``, ``name="..."`` overriding; nested layers are named after their
wrapper. Intermediate values of a pipe are named after the layer that makes
them.
"""

from __future__ import annotations

import pytest

from seqdsl import analyze
from seqdsl.ir import ApplyOp, DropMaskOp, LayerCall, MergeOp, Model
from seqdsl.lower import lower, snake_case
from seqdsl.parser import ParseFailure, grammar_text, parse_tree


def lowered(body: str, inputs: str = "input x: f32[B, T, 8]") -> Model:
    text = f"model M {{\n    {inputs}\n{body}\n}}\n"
    prog, diags = lower(parse_tree(text, "t.seq"), "t.seq", text)
    assert not diags, [f"{d.code} {d.message}" for d in diags]
    (m,) = prog.models
    return m


def layer_names(m: Model) -> list[str]:
    out = []
    for op in m.ops:
        if isinstance(op, ApplyOp):
            out.append(op.layer.name)
        elif isinstance(op, MergeOp):
            out.append(op.name)
    return out


def applies(m: Model) -> list[ApplyOp]:
    return [op for op in m.ops if isinstance(op, ApplyOp)]


# ------------------------------------------------------------------ the grammar and the parser


def test_grammar_is_found() -> None:
    text = grammar_text()
    assert "model" in text and "repeat" in text


def test_empty_file_parses() -> None:
    prog, diags = analyze("", "empty.seq")
    assert prog is not None and prog.ir.models == ()
    assert diags == []


def test_syntax_error_location() -> None:
    text = "model M {\n    input x: f32[B, T, 8]\n    y = x -> Dense(units: 4)\n    output y\n}\n"
    with pytest.raises(ParseFailure) as e:
        parse_tree(text, "bad.seq")
    d = e.value.diagnostic
    assert d.code == "SEQ001"
    # the `:` after `units` on line 3: "    y = x -> Dense(units" is 24 characters
    assert (d.span.file, d.span.line, d.span.col) == ("bad.seq", 3, 25)


def test_unexpected_character_location() -> None:
    text = "model M {\n  input x: f32[B, T, 8] $\n}\n"
    with pytest.raises(ParseFailure) as e:
        parse_tree(text, "bad.seq")
    assert e.value.diagnostic.code == "SEQ002"
    assert (e.value.diagnostic.span.line, e.value.diagnostic.span.col) == (2, 25)


def test_unexpected_end_of_file() -> None:
    with pytest.raises(ParseFailure) as e:
        parse_tree("model M {\n    input x: f32[B, T, 8]\n", "eof.seq")
    d = e.value.diagnostic
    assert d.code == "SEQ001"
    # points at the block left open: "model M {" has its `{` at column 9
    assert (d.span.line, d.span.col) == (1, 9)
    assert "unclosed" in d.message


# ------------------------------------------------------------------ snake case stems


@pytest.mark.parametrize(
    ("kind", "stem"),
    [
        ("LSTM", "lstm"),
        ("GRU", "gru"),
        ("SimpleRNN", "simple_rnn"),
        ("Dense", "dense"),
        ("Conv1D", "conv1d"),
        ("GlobalAveragePooling1D", "global_average_pooling1d"),
        ("LayerNormalization", "layer_normalization"),
        ("TimeDistributed", "time_distributed"),
        ("TemporalSplit", "temporal_split"),
        ("LSTMCell", "lstm_cell"),
        ("concat", "concat"),
    ],
)
def test_snake_case(kind: str, stem: str) -> None:
    assert snake_case(kind) == stem


# ------------------------------------------------------------------ pipes


def test_pipe_flattens_to_ops() -> None:
    m = lowered(
        "    y = x -> Dense(16) -> LSTM(8, return_sequences=true) -> Dropout(0.5)\n    output y"
    )
    ops = applies(m)
    assert len(ops) == len(m.ops) == 3
    assert [op.layer.kind for op in ops] == ["Dense", "LSTM", "Dropout"]
    assert [op.layer.name for op in ops] == ["y_dense", "y_lstm", "y_dropout"]
    # each stage reads the previous stage's value; the last binds the target
    assert [op.inputs[0].name for op in ops] == ["x", "y_dense", "y_lstm"]
    assert [op.results for op in ops] == [("y_dense",), ("y_lstm",), ("y",)]
    assert [op.in_pipe_middle for op in ops] == [True, True, False]


def test_newlines_and_comments_inside_a_pipe() -> None:
    m = lowered(
        "    # a comment on its own line\n"
        "    y = x   # after the head\n"
        "        -> Dense(4)     # first stage\n"
        "\n"
        "        # between stages\n"
        "        -> Dense(2)\n"
        "    output y  # trailing"
    )
    assert layer_names(m) == ["y_dense", "y_dense_1"]
    assert [o.name for o in m.outputs] == ["y"]


def test_same_class_twice_gets_numbered() -> None:
    m = lowered(
        "    y = x -> Dense(8) -> Dense(8) -> LSTM(4, return_sequences=true) -> Dense(2)\n    output y"
    )
    assert layer_names(m) == ["y_dense", "y_dense_1", "y_lstm", "y_dense_2"]


def test_numbering_restarts_per_statement() -> None:
    m = lowered("    a = x -> Dense(8)\n    b = a -> Dense(8) -> Dense(8)\n    output b")
    assert layer_names(m) == ["a_dense", "b_dense", "b_dense_1"]


def test_call_form_with_a_nested_pipe() -> None:
    m = lowered("    y = Dense(3)(x -> LSTM(4))\n    output y")
    ops = applies(m)
    # the argument is lowered before the layer that consumes it
    assert [op.layer.name for op in ops] == ["y_lstm", "y_dense"]
    assert ops[0].results == ("y_lstm",)
    assert ops[1].inputs[0].name == "y_lstm" and ops[1].results == ("y",)


def test_intermediate_value_avoids_user_names() -> None:
    m = lowered(
        "    y = x -> Dense(8) -> Dense(4)\n    y_dense = x -> Dense(2)\n    output y, y_dense"
    )
    first = applies(m)[0]
    assert first.layer.name == "y_dense"
    # `y_dense` is a user name, so the intermediate value is renamed
    assert first.results == ("y_dense_out",)
    assert applies(m)[1].inputs[0].name == "y_dense_out"


# ------------------------------------------------------------------ repeat


def test_repeat_unrolls_with_indexed_names() -> None:
    m = lowered(
        "    s = x -> repeat(3) { LSTM(8, return_sequences=true) -> Dropout(0.2) }\n    output s"
    )
    assert layer_names(m) == [
        "s_r0_lstm", "s_r0_dropout",
        "s_r1_lstm", "s_r1_dropout",
        "s_r2_lstm", "s_r2_dropout",
    ]  # fmt: skip
    assert [op.layer.repeat_index for op in applies(m)] == [(0,), (0,), (1,), (1,), (2,), (2,)]
    assert applies(m)[-1].results == ("s",)


def test_repeat_between_stages_and_same_class_inside() -> None:
    m = lowered(
        "    s = x -> Dense(8) -> repeat(2) { Dense(8) -> Dense(8) } -> Dense(2)\n    output s"
    )
    assert layer_names(m) == [
        "s_dense",
        "s_r0_dense", "s_r0_dense_1",
        "s_r1_dense", "s_r1_dense_1",
        "s_dense_1",
    ]  # fmt: skip


def test_nested_repeat() -> None:
    m = lowered("    s = x -> repeat(2) { repeat(2) { Dense(8) } -> Dropout(0.1) }\n    output s")
    assert layer_names(m) == [
        "s_r0_r0_dense", "s_r0_r1_dense", "s_r0_dropout",
        "s_r1_r0_dense", "s_r1_r1_dense", "s_r1_dropout",
    ]  # fmt: skip


def test_repeat_one() -> None:
    m = lowered("    s = x -> repeat(1) { GRU(8) }\n    output s")
    assert layer_names(m) == ["s_r0_gru"]


@pytest.mark.parametrize("count", ["0", "-1", "2.5", "n=2", "2, 3"])
def test_bad_repeat_count(count: str) -> None:
    text = f"model M {{\n    input x: f32[B, T, 8]\n    s = x -> repeat({count}) {{ Dense(8) }}\n    output s\n}}\n"
    _, diags = analyze(text, "t.seq")
    assert "SEQ203" in [d.code for d in diags]


# ------------------------------------------------------------------ explicit and nested names


def test_explicit_name() -> None:
    m = lowered(
        '    y = x -> LSTM(8, name="encoder", return_sequences=true) -> LSTM(8)\n    output y'
    )
    ops = applies(m)
    assert ops[0].layer.name == "encoder" and ops[0].layer.auto_named is False
    assert ops[1].layer.name == "y_lstm" and ops[1].layer.auto_named is True
    # the intermediate value is named after the layer
    assert ops[0].results == ("encoder",)


def test_explicit_name_does_not_use_up_the_auto_counter() -> None:
    m = lowered('    y = x -> Dense(8, name="proj") -> Dense(4)\n    output y')
    assert layer_names(m) == ["proj", "y_dense"]


def test_auto_name_never_collides_with_an_explicit_name() -> None:
    m = lowered('    a = x -> LSTM(4, name="b_lstm")\n    b = x -> LSTM(4)\n    output a, b')
    assert layer_names(m) == ["b_lstm", "b_lstm_1"]


def test_nested_bidirectional_naming() -> None:
    m = lowered("    y = x -> Bidirectional(LSTM(16, return_sequences=true))\n    output y")
    (op,) = applies(m)
    assert op.layer.name == "y_bidirectional"
    inner = op.layer.args[0].value.value
    assert isinstance(inner, LayerCall)
    assert inner.kind == "LSTM" and inner.name == "y_bidirectional_lstm"


def test_nested_naming_under_an_explicit_name() -> None:
    m = lowered('    y = Bidirectional(GRU(16), name="encoder")(x)\n    output y')
    (op,) = applies(m)
    assert op.layer.name == "encoder"
    inner = op.layer.args[0].value.value
    assert isinstance(inner, LayerCall) and inner.name == "encoder_gru"


def test_nested_rnn_cell_naming() -> None:
    m = lowered("    y = x -> Bidirectional(RNN(LSTMCell(8)))\n    output y")
    (op,) = applies(m)
    rnn = op.layer.args[0].value.value
    assert isinstance(rnn, LayerCall) and rnn.name == "y_bidirectional_rnn"
    cell = rnn.args[0].value.value
    assert isinstance(cell, LayerCall) and cell.name == "y_bidirectional_rnn_lstm_cell"


def test_repeat_index_in_nested_names() -> None:
    m = lowered(
        "    y = x -> repeat(2) { Bidirectional(LSTM(4, return_sequences=true)) }\n    output y"
    )
    names = []
    for op in applies(m):
        inner = op.layer.args[0].value.value
        assert isinstance(inner, LayerCall)
        names.append((op.layer.name, inner.name))
    assert names == [
        ("y_r0_bidirectional", "y_r0_bidirectional_lstm"),
        ("y_r1_bidirectional", "y_r1_bidirectional_lstm"),
    ]


# ------------------------------------------------------------------ results, merges, masks, outputs


def test_multi_result_unpacking() -> None:
    m = lowered("    out, h, c = LSTM(16, return_state=true)(x)\n    output out, h, c")
    (op,) = applies(m)
    assert op.results == ("out", "h", "c")
    assert op.layer.name == "out_lstm"  # the target is the first name
    assert [s.col for s in op.result_spans] == [5, 10, 13]
    assert [n for n, _ in m.bindings] == ["out", "h", "c"]


def test_multi_result_stage_ends_a_pipe() -> None:
    m = lowered("    a, b = x -> Dense(8) -> TemporalSplit(2)\n    output a, b")
    ops = applies(m)
    assert [op.layer.name for op in ops] == ["a_dense", "a_temporal_split"]
    assert ops[1].results == ("a", "b")


def test_merge_ops() -> None:
    m = lowered(
        "    a, b = x -> TemporalSplit(2)\n"
        "    j = concat(a, b, axis=time)\n"
        "    s = add(j, j)\n"
        "    output s",
    )
    merges = [op for op in m.ops if isinstance(op, MergeOp)]
    assert [(op.fn, op.name) for op in merges] == [("concat", "j_concat"), ("add", "s_add")]
    cat = merges[0]
    assert [u.name for u in cat.inputs] == ["a", "b"]
    assert [(a.name, a.value.kind, a.value.value) for a in cat.args] == [("axis", "name", "time")]
    assert cat.results == ("j",)


def test_merge_of_nested_expressions() -> None:
    m = lowered("    y = add(x -> Dense(4), x -> Dense(4))\n    output y")
    assert layer_names(m) == ["y_dense", "y_dense_1", "y_add"]
    merge = m.ops[-1]
    assert isinstance(merge, MergeOp)
    assert [u.name for u in merge.inputs] == ["y_dense", "y_dense_1"]


def test_drop_mask_stage() -> None:
    m = lowered(
        "    y = x -> drop_mask -> Flatten()\n    output y",
        inputs="input x: f32[B, 10, 8] pad(post) masked",
    )
    assert isinstance(m.ops[0], DropMaskOp)
    assert m.ops[0].input.name == "x"
    assert m.ops[0].results == ("y_drop_mask",)
    flat = m.ops[1]
    assert (
        isinstance(flat, ApplyOp)
        and flat.inputs[0].name == "y_drop_mask"
        and flat.results == ("y",)
    )


def test_call_data_arguments() -> None:
    m = lowered(
        "    _o, h, c = LSTM(8, return_state=true)(x)\n"
        "    y = LSTM(8)(x, mask=m, initial_state=[h, c], training=false)\n"
        "    output y",
        inputs="input x: f32[B, T, 8]\n    input m: mask(post)[B, T]",
    )
    op = applies(m)[1]
    assert op.mask is not None and op.mask.name == "m"
    assert op.initial_state is not None and [u.name for u in op.initial_state] == ["h", "c"]
    assert op.training is not None and op.training.value is False
    assert op.layer.name == "y_lstm"


def test_output_with_mask() -> None:
    m = lowered(
        "    y = x -> LSTM(8, return_sequences=true)\n    output y with mask, x",
        inputs="input x: f32[B, T, 8] pad(post) masked",
    )
    assert [(o.name, o.with_mask) for o in m.outputs] == [("y", True), ("x", False)]


def test_several_output_lines() -> None:
    m = lowered("    y = x -> Dense(2)\n    output y\n    output x")
    assert [o.name for o in m.outputs] == ["y", "x"]


# ------------------------------------------------------------------ inputs and literals


def test_input_declarations() -> None:
    m = lowered(
        "    y = x -> Dense(2)\n    output y",
        inputs=(
            "input x: f32[B, T, 8] pad(post, value=0, maxlen=20, truncate=pre, nonempty=true) masked\n"
            "    input m: mask(post, nonempty)[B, T]\n"
            "    input u: i32[_, 5]"
        ),
    )
    x, mk, u = m.inputs
    assert (x.name, x.dtype, [d.value for d in x.dims]) == ("x", "f32", ["B", "T", 8])
    assert x.masked is True and x.pad is not None
    assert [(a.name, a.value.value) for a in x.pad] == [
        (None, "post"), ("value", 0), ("maxlen", 20), ("truncate", "pre"), ("nonempty", True),
    ]  # fmt: skip
    assert mk.is_mask and [w for w, _ in mk.mask_words] == ["post", "nonempty"]
    assert [d.value for d in u.dims] == [None, 5]


def test_literal_kinds() -> None:
    m = lowered(
        '    y = x -> Reshape([-1, 4], name="r") -> Dense(2, activation=relu, use_bias=false) '
        "-> Dropout(.5)\n    output y",
        inputs="input x: f32[B, 4, 8]",
    )
    reshape, dense, drop = applies(m)
    (shape, name) = reshape.layer.args
    assert shape.value.kind == "list"
    assert [(v.kind, v.value) for v in shape.value.value] == [("int", -1), ("int", 4)]
    assert (name.value.kind, name.value.value) == ("str", "r")
    assert [(a.name, a.value.kind, a.value.value) for a in dense.layer.args] == [
        (None, "int", 2), ("activation", "name", "relu"), ("use_bias", "bool", False),
    ]  # fmt: skip
    assert (drop.layer.args[0].value.kind, drop.layer.args[0].value.value) == ("float", 0.5)


def test_decorator() -> None:
    m = lowered("    y = x -> @kernel(cudnn) LSTM(8)\n    output y")
    (op,) = applies(m)
    (deco,) = op.layer.decorators
    assert deco.name == "kernel" and deco.args[0].value.value == "cudnn"


def test_two_models() -> None:
    text = (
        "model A {\n  input x: f32[B, T, 4]\n  y = x -> Dense(2)\n  output y\n}\n"
        "# between\n"
        "model B {\n  input x: f32[B, T, 4]\n  y = x -> Dense(3)\n  output y\n}\n"
    )
    prog, diags = analyze(text, "two.seq")
    assert diags == []
    assert prog is not None
    assert [m.name for m in prog.ir.models] == ["A", "B"]
    assert [layer_names(m) for m in prog.ir.models] == [["y_dense"], ["y_dense"]]


def test_spans() -> None:
    text = "model M {\n    input x: f32[B, T, 8]\n    y = x -> Dense(4)\n    output y\n}\n"
    prog, _ = analyze(text, "s.seq")
    assert prog is not None
    m = prog.ir.models[0]
    (op,) = applies(m)
    # "    y = x -> Dense(4)": the input `x` at col 9, `Dense` at col 14
    assert (op.inputs[0].span.line, op.inputs[0].span.col) == (3, 9)
    assert (op.layer.kind_span.line, op.layer.kind_span.col) == (3, 14)
    assert (m.name_span.line, m.name_span.col) == (1, 7)


# ---------------------------------------------------------------- issue 12 and 13: the front end

_PROGRAM = (
    "model M {\n    input x: f32[B, T, 8]  # the frames\n    y = x -> LSTM(4)\n    output y\n}\n"
)


def _codes(text: str) -> list[tuple[str, int, int]]:
    _, diags = analyze(text, "t.seq")
    return [(d.code, d.span.line, d.span.col) for d in diags if d.span is not None]


@pytest.mark.parametrize("eol", ["\n", "\r\n", "\r"])
def test_any_line_ending_reads_as_editors_read_it(eol: str) -> None:
    # issue 12 item 3: with `\r` alone, the first comment swallowed the rest of the file
    prog, diags = analyze(_PROGRAM.replace("\n", eol), "t.seq")
    assert diags == [] and prog is not None
    assert [m.name for m in prog.models] == ["M"]
    # positions count lines as an editor does
    bad = _PROGRAM.replace("LSTM(4)", "LSTM(4) Dense(3)").replace("\n", eol)
    assert _codes(bad) == [("SEQ001", 3, 22)]


def test_leading_bom_is_accepted_and_columns_ignore_it() -> None:
    # issue 12 item 16: every file saved with a BOM was rejected
    prog, diags = analyze("\ufeff" + _PROGRAM, "t.seq")
    assert diags == [] and prog is not None and len(prog.models) == 1
    assert _codes(
        "\ufeffmodel M { input x: f32[B, T, 8]\n y = x -> LSTM(4) Dense(3)\n output y }"
    ) == [("SEQ001", 2, 19)]


def test_bom_file_through_load(tmp_path: object) -> None:
    from pathlib import Path

    import seqdsl

    assert isinstance(tmp_path, Path)
    f = tmp_path / "bom.seq"
    f.write_bytes(b"\xef\xbb\xbf" + _PROGRAM.replace("\n", "\r\n").encode())
    assert [m.name for m in seqdsl.load(f).models] == ["M"]


@pytest.mark.parametrize(
    ("ch", "words"),
    [
        ("\0", ["NUL", "U+0000"]),
        ("\ufeff", ["byte-order mark", "U+FEFF"]),
        ("\u200b", ["invisible", "U+200B"]),
    ],
)
def test_odd_characters_are_named(ch: str, words: list[str]) -> None:
    text = _PROGRAM.replace("y = x", f"y = {ch}x")
    _, diags = analyze(text, "t.seq")
    assert [(d.code, d.span.line, d.span.col) for d in diags if d.span] == [("SEQ002", 3, 9)]
    d = diags[0]
    assert all(w in d.message for w in words), d.message
    assert d.hint and "`#` starts a comment" not in d.hint


def test_nul_hint_says_what_to_do() -> None:
    _, diags = analyze("\0\0" + _PROGRAM, "t.seq")
    assert diags[0].hint is not None and "UTF-8" in diags[0].hint


@pytest.mark.parametrize("depth", [400, 2000])
def test_deep_nesting_is_a_diagnostic(depth: int) -> None:
    # issue 12 item 10: RecursionError
    text = f"model M {{ input x: f32[B, T, 8]\n y = x -> Reshape({'[' * depth}1{']' * depth})\n output y }}"
    (code,) = {c for c, _, _ in _codes(text)}
    assert code == "SEQ015"


def test_nesting_under_the_limit_still_parses() -> None:
    from seqdsl.parser import MAX_NESTING

    n = MAX_NESTING - 10
    text = (
        "cell C(units: int) { input x: f32[in]\n state h: f32[units]\n weight k: [in, units]\n"
        " h <- tanh(" + " + ".join(["x @ k"] * n) + ")\n output h }\n"
        "model M { input x: f32[B, T, 8]\n y = x -> RNN(C(4))\n output y }"
    )
    prog, diags = analyze(text, "t.seq")
    assert diags == [] and prog is not None
    for backend in ("torch", "jax", "keras"):
        assert "class" in prog.compile(backend)


def test_integer_literal_limit() -> None:
    # issue 12 item 10: a literal over 4,300 digits gave ValueError
    from seqdsl.parser import MAX_INT_DIGITS

    for digits in (MAX_INT_DIGITS + 1, 4301, 10000):
        text = f"model M {{ input x: f32[B, T, 8]\n y = x -> Dense(1{'0' * (digits - 1)})\n output y }}"
        _, diags = analyze(text, "t.seq")
        assert [(d.code, d.span.line, d.span.col) for d in diags if d.span] == [("SEQ015", 2, 17)]
        assert f"{digits} digits" in diags[0].message
    ok = f"model M {{ input x: f32[B, T, 8]\n y = x -> Dense(1{'0' * (MAX_INT_DIGITS - 1)})\n output y }}"
    assert "SEQ015" not in {c for c, _, _ in _codes(ok)}


@pytest.mark.parametrize(
    "stmt",
    [
        "masked = frames -> Dense(3)",
        "pad = frames -> Dense(3)",
        "debug = frames -> Dense(3)",
        "input = frames -> Dense(3)",
        "output = frames -> Dense(3)",
        "masked, pad = frames -> TemporalSplit(2)",
    ],
)
def test_keywords_do_not_steal_the_next_statements_name(stmt: str) -> None:
    # issue 13: `masked = ...` after `input frames: ...` failed with "unexpected `=`"
    name = stmt.split("=")[0].split(",")[0].strip()
    for decl in ("input frames: f32[B, T, 3]", "input frames: f32[B, T, 3] masked",
                 "input frames: f32[B, T, 3] pad(post, value=0.0)"):  # fmt: skip
        text = f"model M {{\n    {decl}\n    {stmt}\n    y = {name} -> LSTM(4)\n    output y\n}}\n"
        prog, diags = analyze(text, "t.seq")
        assert not [d for d in diags if d.is_error], (text, diags)
        assert prog is not None


def test_modifiers_keep_working_on_the_next_line() -> None:
    # newlines are whitespace: a modifier on the next line still belongs to the input
    text = "model M {\n input x: f32[B, T, 3]\n   pad(post, value=0.0)\n   masked\n y = x -> LSTM(4)\n output y\n}\n"
    prog, diags = analyze(text, "t.seq")
    assert diags == [] and prog is not None
    (inp,) = prog.models[0].model.inputs
    assert inp.masked and inp.pad is not None


def test_every_syntax_error_is_reported() -> None:
    # issue 13: one syntax error hid the rest of the file
    text = (
        "model M {\n"
        "    input x: f32[B, T, 8]\n"
        "    h = x -> LSTM(32, return_sequences: true)\n"
        "    d = h -> Dense(16 activation=relu)\n"
        "    z == d -> Dense(4)\n"
        "    ok = z -> Dropout(0.1)\n"
        "    y = ok -> Dense(5) $\n"
        "    output y\n"
        "}\n"
        "model N {\n"
        "    input a: f32[B, T, 2]\n"
        "    b = a ->\n"
        "    output b\n"
        "}\n"
    )
    assert _codes(text) == [
        ("SEQ001", 3, 39),
        ("SEQ001", 4, 23),
        ("SEQ001", 5, 8),
        ("SEQ002", 7, 24),
        ("SEQ001", 12, 11),
    ]


def test_parse_failure_carries_every_diagnostic() -> None:
    with pytest.raises(ParseFailure) as e:
        parse_tree("model M {\n x = a Dense(3)\n y == x\n}\n", "t.seq")
    assert [(d.line, d.col) for d in (x.span for x in e.value.diagnostics) if d] == [(2, 8), (3, 5)]
    assert e.value.diagnostic == e.value.diagnostics[0]


def test_syntax_error_count_is_bounded() -> None:
    from seqdsl.parser import MAX_SYNTAX_ERRORS

    text = "model M {\n input x: f32[B, T, 8]\n" + " y == x\n" * 50 + " output x\n}\n"
    codes = _codes(text)
    assert len(codes) == MAX_SYNTAX_ERRORS
    assert codes[:2] == [("SEQ001", 3, 5), ("SEQ001", 4, 5)]


def test_python_tuples_read_as_lists() -> None:
    # Keras code writes sizes as tuples; `input_shape=(8, 8)` was a bare syntax error
    # (issue 13) and now reaches the checker's SEQ202 with its hint
    _, diags = analyze(
        "model M {\n input x: f32[B, T, 8]\n y = x -> LSTM(3, input_shape=(8, 8))\n output y\n}",
        "t.seq",
    )
    assert [(d.code, d.span.line, d.span.col) for d in diags if d.span] == [("SEQ202", 3, 19)]
    assert "input" in (diags[0].hint or "")
    m = lowered("    y = x -> Conv1D(4, kernel_size=(3,), strides=(1,))\n    output y")
    (conv,) = applies(m)
    args = {a.name: a.value for a in conv.layer.args if a.name}
    assert args["kernel_size"].describe() == "[3]" and args["strides"].describe() == "[1]"
    # a parenthesised value is still a value, not a one-element tuple
    assert lowered("    y = x -> Dense((3))\n    output y").ops


def test_unquote_keeps_text_and_unknown_escapes() -> None:
    # the campaign's only warnings: `"\e"` went through Python's unicode_escape codec
    # (a DeprecationWarning, an error in later Pythons), which also garbled non-ASCII text
    import warnings

    from seqdsl.parser import unquote

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert unquote('"a\\eb"') == "a\\eb"
        assert unquote('"é\\t"') == "é\t"
        assert unquote('"\\u00e9\\x41\\\\\\""') == 'éA\\"'
        assert unquote("'it\\'s'") == "it's"
        assert unquote('"x\\ny"') == "x\ny"
