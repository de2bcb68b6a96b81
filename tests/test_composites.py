"""Layer blocks (composites) and `use` imports: expansion, names, parameters,
diagnostics inside expansions and imported files, and numbers.

A call of a ``layer`` block expands, during lowering, into the operations of
its body, so every backend and the reference interpreter run it unchanged: a
composite model computes exactly what the same model written out flat does.
"""

from __future__ import annotations

import io
import json
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest

import seqdsl
from seqdsl.checker import CheckedModel
from seqdsl.cli import main
from seqdsl.dims import Dim, sym
from seqdsl.ir import ApplyOp, MergeOp
from seqdsl.reference import reference_weights, run_reference
from seqdsl.types import TensorType

ROOT = Path(__file__).resolve().parent.parent

ENCODER = """
layer Encoder(units: int, depth: int = 2, dropout: float = 0.0) {
    input x
    h = x -> repeat(depth) { LSTM(units, return_sequences=true) -> Dropout(dropout) }
    out, s_h, s_c = LSTM(units, return_state=true)(h)
    output out, s_h, s_c
}
"""

MODEL = (
    ENCODER
    + """
model M {
    input t: i32[B, T] pad(post, value=0)
    e = t -> Embedding(100, 16, mask_zero=true)
    o, h, c = Encoder(32, depth=3)(e)
    y = concat(o, h, c) -> Dense(4)
    output y
}
"""
)


def names(m: CheckedModel) -> list[str]:
    return [layer.name for layer in m.layers]


def codes(text: str, **kw: object) -> list[str]:
    _, diags = seqdsl.analyze(text, "t.seq", **kw)  # type: ignore[arg-type]
    return [d.code for d in diags]


def only(text: str, code: str) -> seqdsl.Diagnostic:
    _, diags = seqdsl.analyze(text, "t.seq")
    assert [d.code for d in diags] == [code], [(d.code, d.message) for d in diags]
    return diags[0]


# --------------------------------------------------------------------------
# expansion: shapes, names, wiring


def test_expansion_names_and_types() -> None:
    m = seqdsl.loads(MODEL).model()
    assert names(m) == [
        "e_embedding",
        "o_encoder_h_r0_lstm",
        "o_encoder_h_r0_dropout",
        "o_encoder_h_r1_lstm",
        "o_encoder_h_r1_dropout",
        "o_encoder_h_r2_lstm",
        "o_encoder_h_r2_dropout",
        "o_encoder_out_lstm",
        "y_concat",
        "y_dense",
    ]
    o, h = m.types["o"], m.types["h"]
    assert isinstance(o, TensorType) and isinstance(h, TensorType)
    assert o.shape == (sym("B"), Dim.of(32)) and h.shape == (sym("B"), Dim.of(32))
    # the body's own values get fresh names prefixed by the call; the outputs bind the call's
    last = m.model.ops[7]
    assert isinstance(last, ApplyOp)
    assert last.results == ("o", "h", "c")
    assert [u.name for u in last.inputs] == ["o_encoder_h"]
    body_lstm = m.types["o_encoder_h_r0_lstm"]
    assert isinstance(body_lstm, TensorType) and body_lstm.mask is not None  # the mask flows in


def test_parameter_substitution_and_defaults() -> None:
    text = (
        ENCODER
        + """
model M {
    input x: f32[B, T, 8]
    a, _h1, _c1 = Encoder(4)(x)
    b, _h2, _c2 = Encoder(6, dropout=0, depth=1)(x)
    y = concat(a, b)
    output y
}
"""
    )
    m = seqdsl.loads(text).model()
    a_layers = [n for n in names(m) if n.startswith("a_encoder")]
    assert len(a_layers) == 2 * 2 + 1  # depth defaults to 2
    assert m.layer("a_encoder_h_r0_lstm").config["units"] == 4
    assert m.layer("b_encoder_h_r0_lstm").config["units"] == 6
    assert "b_encoder_h_r1_lstm" not in names(m)
    # an int given to a float parameter is a float
    rate = m.layer("b_encoder_h_r0_dropout").config["rate"]
    assert rate == 0.0 and isinstance(rate, float)


def test_name_parameter_and_positional_order() -> None:
    text = """
layer Proj(units: int, act: name = tanh, label: str = "p") {
    input x
    y = x -> Dense(units, activation=act, name=label)
    output y
}
model M {
    input x: f32[B, 8]
    a = x -> Proj(3)
    b = x -> Proj(3, relu, "q")
    y = concat(a, b)
    output y
}
"""
    m = seqdsl.loads(text).model()
    assert m.layer("a_proj_p").config["activation"] == "tanh"
    assert m.layer("b_proj_q").config["activation"] == "relu"


def test_name_sets_the_prefix() -> None:
    text = (
        ENCODER
        + """
model M {
    input x: f32[B, T, 8]
    o, _h, _c = Encoder(4, depth=1, name="enc")(x)
    output o
}
"""
    )
    m = seqdsl.loads(text).model()
    assert names(m) == ["enc_h_r0_lstm", "enc_h_r0_dropout", "enc_out_lstm"]


def test_explicit_names_inside_a_body_are_prefixed() -> None:
    text = """
layer Block(units: int) {
    input x
    y = x -> Dense(units, name="proj") -> Dense(units)
    output y
}
model M {
    input x: f32[B, 8]
    a = x -> Block(3)
    b = a -> Block(3)
    output b
}
"""
    m = seqdsl.loads(text).model()
    assert names(m) == ["a_block_proj", "a_block_y_dense", "b_block_proj", "b_block_y_dense"]
    assert m.layer("a_block_proj").config["name"] == "a_block_proj"


def test_nested_composites_and_pipes() -> None:
    text = """
layer Inner(units: int) {
    input x
    h = x -> Dense(units) -> Dropout(0.1)
    output h
}
layer Outer(units: int) {
    input x
    a = x -> Inner(units) -> Inner(units)
    b = Inner(units)(a)
    output b
}
model M {
    input x: f32[B, T, 8]
    y = x -> Dense(8) -> Outer(4) -> LSTM(2)
    z = x -> repeat(2) { Inner(8) }
    output y, z
}
"""
    m = seqdsl.loads(text).model()
    assert names(m) == [
        "y_dense",
        "y_outer_a_inner_h_dense",
        "y_outer_a_inner_h_dropout",
        "y_outer_a_inner_1_h_dense",
        "y_outer_a_inner_1_h_dropout",
        "y_outer_b_inner_h_dense",
        "y_outer_b_inner_h_dropout",
        "y_lstm",
        "z_r0_inner_h_dense",
        "z_r0_inner_h_dropout",
        "z_r1_inner_h_dense",
        "z_r1_inner_h_dropout",
    ]
    assert m.layer("y_outer_b_inner_h_dense").config["units"] == 4
    z = m.types["z"]
    assert isinstance(z, TensorType) and z.shape[-1] == Dim.of(8)


def test_several_inputs_typed_and_mask_inputs() -> None:
    text = """
layer Gate(units: int) {
    input x: f32[B, T, F]
    input context: f32[B, T, F]
    input m: mask[B, T]
    a = LSTM(units, return_sequences=true)(x, mask=m)
    y = multiply(a, Dense(units)(context))
    output y
}
model M {
    input x: f32[B, T, 8]
    input c: f32[B, T, 8]
    input m: mask(post)[B, T]
    y = Gate(4)(x, c, m)
    output y
}
"""
    m = seqdsl.loads(text).model()
    y = m.types["y"]
    assert isinstance(y, TensorType) and y.shape == (sym("B"), sym("T"), Dim.of(4))
    assert y.mask is not None and y.mask.side == "post"
    assert len(m.model.block_checks) == 3


def test_program_lists_its_blocks() -> None:
    prog = seqdsl.loads(MODEL)
    (b,) = prog.blocks
    assert (b.name, b.inputs, b.outputs, b.ok) == ("Encoder", ("x",), ("out", "s_h", "s_c"), True)
    assert [(p.name, p.type) for p in b.params] == [
        ("units", "int"),
        ("depth", "int"),
        ("dropout", "float"),
    ]
    assert b.params[1].default is not None and b.params[1].default.value == 2


def test_a_file_of_blocks_alone_checks_clean() -> None:
    prog, diags = seqdsl.analyze(ENCODER, "lib.seq")
    assert diags == [] and prog is not None and prog.models == ()


def test_backends_emit_composites_unchanged() -> None:
    prog = seqdsl.loads(MODEL)
    for backend in ("torch", "jax"):
        code = prog.compile(backend)
        assert "o_encoder_h_r2_lstm" in code
        compile(code, f"<{backend}>", "exec")


# --------------------------------------------------------------------------
# numbers: a composite model computes what the flat model computes


FLAT = """
model M {
    input t: i32[B, T] pad(post, value=0)
    e = t -> Embedding(100, 16, mask_zero=true)
    h1 = e -> LSTM(32, return_sequences=true, name="o_encoder_h_r0_lstm")
           -> Dropout(0.0, name="o_encoder_h_r0_dropout")
    h2 = h1 -> LSTM(32, return_sequences=true, name="o_encoder_h_r1_lstm")
            -> Dropout(0.0, name="o_encoder_h_r1_dropout")
    h3 = h2 -> LSTM(32, return_sequences=true, name="o_encoder_h_r2_lstm")
            -> Dropout(0.0, name="o_encoder_h_r2_dropout")
    o, h, c = LSTM(32, return_state=true, name="o_encoder_out_lstm")(h3)
    y = concat(o, h, c) -> Dense(4)
    output y
}
"""


def test_reference_parity_with_the_flat_model() -> None:
    comp = seqdsl.loads(MODEL).model()
    flat = seqdsl.loads(FLAT).model()
    assert names(comp) == names(flat)
    assert comp.total_params == flat.total_params
    # the same seed draws the same weights: they are keyed by the (same) layer names
    wc, wf = reference_weights(comp, 7), reference_weights(flat, 7)
    assert wc.keys() == wf.keys()
    for k in wc:
        assert np.array_equal(wc[k], wf[k]), k
    tokens = np.array([[3, 5, 7, 9, 2], [4, 8, 1, 0, 0], [0, 0, 0, 0, 0]])
    assert np.array_equal(
        run_reference(comp, wc, [tokens]).outputs[0], run_reference(flat, wf, [tokens]).outputs[0]
    )
    # and with larger weights (the initial ones give outputs near 0)
    rng = np.random.default_rng(0)
    big = {k: rng.normal(0.0, 0.5, v.shape) for k, v in wc.items()}
    rc = run_reference(comp, big, [tokens])
    rf = run_reference(flat, big, [tokens])
    assert np.array_equal(rc.outputs[0], rf.outputs[0])
    assert float(np.abs(rc.outputs[0]).max()) > 1e-3


# --------------------------------------------------------------------------
# diagnostics inside expansions


def test_error_in_a_body_notes_the_call_chain() -> None:
    text = """
layer Inner(units: int) {
    input x
    y = x -> Dense(units)
    output y
}
layer Outer(units: int) {
    input x
    y = x -> Inner(units)
    output y
}
model M {
    input x: f32[B, T, 8]
    y = x -> Outer(-1)
    output y
}
"""
    d = only(text, "SEQ207")
    assert d.span is not None and (d.span.line, d.span.col) == (4, 20)
    assert [(r.span.line, r.span.col, r.message) for r in d.related] == [
        (9, 14, "in expansion of `Inner` called here"),
        (14, 14, "in expansion of `Outer` called here"),
    ]
    out = seqdsl.SeqError([d], {"t.seq": text}).render()
    assert "= note: t.seq:9:14: in expansion of `Inner` called here" in out
    assert d.to_dict()["related"][1]["line"] == 14  # type: ignore[index]


def test_one_report_per_body_location() -> None:
    # two calls that fail the same way report once, with the first call's note
    text = """
layer Block(units: int) {
    input x
    y = x -> Dense(units)
    output y
}
model M {
    input x: f32[B, T, 8]
    a = x -> Block(0)
    b = x -> Block(0)
    y = concat(a, b)
    output y
}
"""
    d = only(text, "SEQ207")
    assert d.related[0].span.line == 9


def test_a_broken_block_is_reported_once_and_not_expanded() -> None:
    text = """
layer Block(units: int) {
    input x
    y = x -> Dens(units)
    output y
}
model M {
    input x: f32[B, T, 8]
    a = x -> Block(3)
    b = a -> Block(3)
    output b
}
"""
    d = only(text, "SEQ103")
    assert d.related == () and "did you mean `Dense`" in (d.hint or "")


def test_typed_input_mismatches() -> None:
    block = """
layer B {
    input x: f32[N, T, 8]
    y = x -> Dense(2)
    output y
}
"""

    def model(decl: str) -> str:
        return block + f"model M {{ input x: {decl}\n y = x -> B()\n output y }}"

    assert codes(model("f32[N, T, 8]")) == []
    assert codes(model("f32[_, T, 8]")) == []  # unknown: compatible
    assert codes(model("i32[N, T, 8]")) == ["SEQ301"]
    assert codes(model("f32[N, 8]")) == ["SEQ303"]
    assert codes(model("f32[N, T, 4]")) == ["SEQ302"]
    # a failing input check skips the expansion: no cascade from the body
    d = only(model("f32[N, T, 4]"), "SEQ302")
    assert d.related[0].message == "`x` declared here"


def test_unknown_block_name_suggests_the_block() -> None:
    text = (
        ENCODER
        + """
model M {
    input x: f32[B, T, 8]
    o, _h, _c = Encodr(4)(x)
    output o
}
"""
    )
    d = only(text, "SEQ103")
    assert "did you mean `Encoder`" in (d.hint or "")


@pytest.mark.parametrize(
    ("call", "code"),
    [
        ("Encoder(4, bogus=1)(x)", "SEQ201"),
        ("Encoder(4, depth=2.5)(x)", "SEQ203"),
        ('Encoder(4, name="a.b")(x)', "SEQ203"),
        ("Encoder(depth=1)(x)", "SEQ204"),
        ("Encoder(4, 1, 0.0, 9)(x)", "SEQ205"),
        ("Encoder(4, units=4)(x)", "SEQ205"),
        ("Encoder(4)(x, x)", "SEQ208"),
        ("Encoder(4)(x, initial_state=[x])", "SEQ208"),
        ("@kernel(cudnn) Encoder(4)(x)", "SEQ009"),
    ],
)
def test_call_errors(call: str, code: str) -> None:
    text = ENCODER + f"model M {{ input x: f32[B, T, 8]\n o, _h, _c = {call}\n output o }}"
    assert codes(text) == [code]


def test_block_in_a_wrapper_is_rejected() -> None:
    text = (
        ENCODER
        + "model M { input x: f32[B, T, 8]\n o = x -> Bidirectional(Encoder(4))\n output o }"
    )
    assert codes(text) == ["SEQ203"]


def test_self_recursion() -> None:
    text = """
layer Loop(units: int) {
    input x
    y = x -> Dense(units) -> Loop(units)
    output y
}
model M { input x: f32[B, 8]  y = x -> Loop(3)  output y }
"""
    d = only(text, "SEQ111")
    assert d.message == "layer block `Loop` calls itself"


def test_expansion_size_is_bounded() -> None:
    text = """
layer Wide(units: int) {
    input x
    y = x -> repeat(4000) { Dense(units) }
    output y
}
model M { input x: f32[B, 8]  y = x -> repeat(100) { Wide(8) }  output y }
"""
    assert "SEQ207" in codes(text)


def test_block_keywords_stay_names_elsewhere() -> None:
    text = "model M { input layer: f32[B, 8]\n use = layer -> Dense(2)\n output use }"
    assert codes(text) == []


# --------------------------------------------------------------------------
# imports


LIB = """
layer Proj(units: int) {
    input x
    y = x -> Dense(units)
    output y
}
"""

MAIN = """use "lib/proj.seq"
model M {
    input x: f32[B, 8]
    y = x -> Proj(3)
    output y
}
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "proj.seq").write_text(LIB, encoding="utf-8")
    (tmp_path / "main.seq").write_text(MAIN, encoding="utf-8")
    return tmp_path


def test_load_resolves_relative_to_the_file(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(project.parent)
    prog = seqdsl.load(project / "main.seq")
    assert names(prog.model()) == ["y_proj_y_dense"]
    assert set(prog.sources) == {str(project / "main.seq"), str(project / "lib" / "proj.seq")}
    assert prog.blocks[0].file == str(project / "lib" / "proj.seq")


def test_loads_resolves_against_the_cwd_or_a_search_path(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(project)
    assert names(seqdsl.loads(MAIN).model()) == ["y_proj_y_dense"]
    monkeypatch.chdir(project.parent)
    with pytest.raises(seqdsl.SeqError) as e:
        seqdsl.loads(MAIN)
    assert [d.code for d in e.value.diagnostics] == ["SEQ011"]
    assert seqdsl.loads(MAIN, search_path=[project]).model().total_params == 27
    assert seqdsl.loads(MAIN, search_path=str(project)).model().total_params == 27
    # the name doubles as the location
    rel = f"{project.name}/main.seq"
    assert seqdsl.loads(MAIN, name=rel).model().total_params == 27


def test_missing_file_is_a_located_diagnostic(tmp_path: Path) -> None:
    f = tmp_path / "m.seq"
    f.write_text(MAIN, encoding="utf-8")
    with pytest.raises(seqdsl.SeqError) as e:
        seqdsl.load(f)
    (d,) = e.value.diagnostics
    assert (d.code, d.span.line, d.span.col) == ("SEQ011", 1, 5)  # type: ignore[union-attr]
    assert "^^^" in e.value.render()


def test_diagnostics_in_a_used_file_render_that_file(project: Path) -> None:
    (project / "main.seq").write_text(MAIN.replace("f32[B, 8]", "i32[B, 8]"), encoding="utf-8")
    with pytest.raises(seqdsl.SeqError) as e:
        seqdsl.load(project / "main.seq")
    out = e.value.render()
    lib = str(project / "lib" / "proj.seq")
    assert f"{lib}:4:9: error[SEQ301]" in out
    assert "4 |     y = x -> Dense(units)" in out
    assert f"= note: {project / 'main.seq'}:4:14: in expansion of `Proj` called here" in out


def test_diamond_imports_are_not_a_clash(tmp_path: Path) -> None:
    (tmp_path / "common.seq").write_text(LIB, encoding="utf-8")
    for n in ("a", "b"):
        (tmp_path / f"{n}.seq").write_text(
            f'use "common.seq"\nlayer {n.upper()}(units: int) {{ input x  y = x -> Proj(units)  output y }}\n',
            encoding="utf-8",
        )
    text = 'use "a.seq"\nuse "b.seq"\nmodel M { input x: f32[B, 8]\n y = x -> A(2) -> B(3) -> Proj(4)\n output y }'
    prog = seqdsl.loads(text, search_path=[tmp_path])
    assert len(prog.blocks) == 3
    assert prog.model().layer("y_b_y_proj_y_dense").config["units"] == 3


def test_self_import_is_a_cycle(tmp_path: Path) -> None:
    f = tmp_path / "self.seq"
    f.write_text('use "self.seq"\n' + LIB, encoding="utf-8")
    _, diags = seqdsl.analyze(f.read_text(encoding="utf-8"), str(f))
    assert [d.code for d in diags] == ["SEQ012"]
    assert diags[0].message == f"import cycle: {f} -> {f}"


def test_models_of_a_used_file_are_not_imported(project: Path) -> None:
    (project / "lib" / "proj.seq").write_text(LIB + "model Other { input x: f32[B, 2]  output x }")
    prog = seqdsl.load(project / "main.seq")
    assert [m.name for m in prog.models] == ["M"]


def test_cli_renders_used_files(project: Path) -> None:
    lib = project / "lib" / "proj.seq"
    lib.write_text(LIB.replace("Dense(units)", "Dense(units, bogus=1)"), encoding="utf-8")
    out = io.StringIO()
    with redirect_stdout(out):
        rc = main(["check", str(project / "main.seq")])
    assert rc == 1
    assert "y = x -> Dense(units, bogus=1)" in out.getvalue()
    out = io.StringIO()
    with redirect_stdout(out):
        rc = main(["check", str(project / "main.seq"), "--output-format", "json"])
    (d,) = json.loads(out.getvalue())
    assert d["file"] == str(lib) and d["related"][0]["file"] == str(project / "main.seq")


def test_cli_counts_the_files_it_was_given(project: Path) -> None:
    out = io.StringIO()
    with redirect_stdout(out):
        rc = main(["check", str(project / "main.seq")])
    assert rc == 0
    assert "ok: 1 file(s), 1 model(s), 0 warning(s)" in out.getvalue()


def test_the_example_library() -> None:
    prog = seqdsl.load(ROOT / "examples" / "composite_encoder.seq")
    assert {b.name for b in prog.blocks} == {"StackedEncoder", "StepClassifier", "Decoder"}
    m = prog.model()
    assert "encoder_h_r1_lstm" in names(m)
    assert not any(isinstance(op, MergeOp) for op in m.model.ops)


def test_shape_symbols_bind_per_call() -> None:
    # the inner call's `F` is its own: 16 here, while the outer call's `F` is 8
    text = """
layer Inner {
    input a: f32[B, T, F]
    y = a -> Dense(4)
    output y
}
layer Outer {
    input x: f32[B, T, F]
    input z: f32[B, T, G]
    w = z -> Inner()
    y = concat(x, w)
    output y
}
model M {
    input x: f32[B, T, 8]
    input z: f32[B, T, 16]
    y = Outer()(x, z)
    output y
}
"""
    m = seqdsl.loads(text).model()
    assert len(m.model.block_checks) == 3
    y = m.types["y"]
    assert isinstance(y, TensorType) and y.shape[-1] == Dim.of(12)
    assert codes(text.replace("f32[B, T, G]", "f32[B, T, F]")) == ["SEQ302"]
