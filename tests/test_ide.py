"""The editor model (seqdsl/ide.py), without an editor: diagnostics, hover,
definitions, completion, symbols and quick fixes on texts written here.

Expected positions are found in the text (``text.index(...)``), expected
types and mask kinds follow from the language's rules (a ``pad(post)`` input
through ``Embedding(mask_zero=true)`` is masked ``post``), and a quick fix is
checked by applying its edits and checking the result again.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from seqdsl.ide import Document, Range, TextEdit
from tests.test_fuzz import make_mutants

ROOT = Path(__file__).resolve().parent.parent

TAGGER = """\
model Tagger {
    input tokens: i32[B, T] pad(post, value=0)
    e = tokens -> Embedding(1000, 16, mask_zero=true)
    h = e -> Bidirectional(LSTM(8, return_sequences=true))
    p = h -> GlobalAveragePooling1D()
    output p
}
"""


def at(text: str, needle: str, delta: int = 0, nth: int = 0) -> tuple[int, int]:
    """(line, column) of the ``nth`` occurrence of ``needle`` (plus ``delta`` columns)."""
    i = -1
    for _ in range(nth + 1):
        i = text.index(needle, i + 1)
    i += delta
    line = text.count("\n", 0, i)
    return line, i - (text.rfind("\n", 0, i) + 1)


def apply(text: str, edits: tuple[TextEdit, ...]) -> str:
    def off(line: int, col: int) -> int:
        starts = [0] + [i + 1 for i, c in enumerate(text) if c == "\n"]
        return starts[line] + col

    for e in sorted(edits, key=lambda e: (e.range.start_line, e.range.start_col), reverse=True):
        a = off(e.range.start_line, e.range.start_col)
        b = off(e.range.end_line, e.range.end_col)
        text = text[:a] + e.new_text + text[b:]
    return text


def codes(doc: Document) -> list[str]:
    return [d.code for d in doc.diagnostics()]


# ------------------------------------------------------------------ hover


def test_hover_masked_value_shows_type_time_and_mask() -> None:
    doc = Document(TAGGER, "tagger.seq")
    h = doc.hover(*at(TAGGER, "e = "))
    assert h is not None
    assert "e: f32[B, T, 16]" in h.markdown
    assert "time: `T` · mask: `post, maybe-empty (declared)`" in h.markdown
    assert (
        "| e_embedding (Embedding) | e | f32[B, T, 16] | T | post, maybe-empty (declared) | 16,000 |"
        in h.markdown
    )
    assert h.range == Range(2, 4, 2, 5)
    # the same value where it is used
    h2 = doc.hover(*at(TAGGER, "e -> Bidirectional"))
    assert h2 is not None and "mask: `post, maybe-empty (declared)`" in h2.markdown
    # after pooling the mask is consumed
    h3 = doc.hover(*at(TAGGER, "p = "))
    assert h3 is not None and "p: f32[B, 16]" in h3.markdown and "mask: `-`" in h3.markdown


def test_hover_input_shows_padding() -> None:
    doc = Document(TAGGER, "tagger.seq")
    h = doc.hover(*at(TAGGER, "tokens:"))
    assert h is not None
    assert "tokens: i32[B, T]" in h.markdown and "pad(post, value=0)" in h.markdown


def test_hover_layer_shows_parameters_and_kernel_per_target() -> None:
    doc = Document(TAGGER, "tagger.seq")
    h = doc.hover(*at(TAGGER, "Bidirectional"))
    assert h is not None
    # Keras: 2 * 4 * 8 * (16 + 8 + 1) = 1,600 parameters
    assert "parameters: 1,600" in h.markdown
    for target in ("keras", "torch", "jax"):
        assert f"- {target}: `" in h.markdown
    # the inner LSTM names the same layer, and its catalogue entry
    inner = doc.hover(*at(TAGGER, "LSTM(8"))
    assert inner is not None and "parameters: 1,600" in inner.markdown
    assert "LSTM(units, activation=tanh" in inner.markdown


def test_hover_in_block_body_shows_each_call() -> None:
    text = """\
layer Enc(units: int) {
    input x
    y = x -> LSTM(units, return_sequences=true)
    output y
}
model M {
    input a: f32[B, T, 4] pad(pre, value=0) masked
    input b: f32[B, S, 4] pad(post, value=0) masked
    ya = Enc(3)(a)
    yb = Enc(5)(b)
    output ya, yb
}
"""
    doc = Document(text, "m.seq")
    assert codes(doc) == []
    h = doc.hover(*at(text, "y = "))
    assert h is not None
    assert "ya: f32[B, T, 3]" in h.markdown and "mask: `pre, maybe-empty`" in h.markdown
    assert "yb: f32[B, S, 5]" in h.markdown and "mask: `post, maybe-empty`" in h.markdown
    assert "`Enc` called at line 9" in h.markdown and "`Enc` called at line 10" in h.markdown


def test_hover_argument_name_from_catalogue() -> None:
    doc = Document(TAGGER, "tagger.seq")
    h = doc.hover(*at(TAGGER, "return_sequences"))
    assert h is not None and "return_sequences: bool = false" in h.markdown


def test_hover_after_edit_elsewhere_uses_last_analysis() -> None:
    doc = Document(TAGGER, "tagger.seq")
    doc.diagnostics()
    edited_text = TAGGER.replace("model Tagger {", "# a comment\nmodel Tagger {")
    edited = Document(edited_text, "tagger.seq", previous=doc)
    h = edited.hover(*at(edited_text, "e = "))
    assert h is not None and not edited.analysed
    assert h.range == Range(3, 4, 3, 5)
    assert "mask: `post, maybe-empty (declared)`" in h.markdown
    assert "before the last edit" in h.markdown
    # a hover on the word just edited waits for the new analysis
    renamed = edited_text.replace("e = tokens", "q = tokens")
    doc3 = Document(renamed, "tagger.seq", previous=edited)
    h3 = doc3.hover(*at(renamed, "q = "))
    assert doc3.analysed and h3 is not None and "q: f32[B, T, 16]" in h3.markdown


# ------------------------------------------------------------------ diagnostics


def test_diagnostics_ranges_codes_and_hints() -> None:
    text = TAGGER.replace("LSTM(8", "Lstm(8").replace("-> GlobalAveragePooling1D()", "-> Flatten()")
    doc = Document(text, "t.seq")
    diags = {d.code: d for d in doc.diagnostics()}
    assert set(diags) == {"SEQ103"}  # the unknown layer stops the rest of the statement chain
    d = diags["SEQ103"]
    line, col = at(text, "Lstm")
    assert d.range == Range(line, col, line, col + 4)
    assert d.hint == "did you mean `LSTM`?" and d.severity == "error"


def test_diagnostic_in_used_file_is_shown_at_the_call(tmp_path: Path) -> None:
    (tmp_path / "lib.seq").write_text(
        "layer Enc(units: int) {\n    input x\n    y = x -> Flatten()\n    output y\n}\n",
        encoding="utf-8",
    )
    text = 'use "lib.seq"\n' + TAGGER.replace(
        "h = e -> Bidirectional(LSTM(8, return_sequences=true))", "h = Enc(3)(e)"
    ).replace("p = h -> GlobalAveragePooling1D()", "p = h")
    main = tmp_path / "main.seq"
    doc = Document(text, str(main))
    (d,) = [d for d in doc.diagnostics() if d.code == "SEQ501"]
    line, col = at(text, "Enc(3)(e)")
    assert d.range.start_line == line and d.range.start_col == col
    lib = str(tmp_path / "lib.seq")
    assert d.message.startswith(f"{lib}:3:")
    assert d.related[0][0].file == lib and d.related[0][0].range.start_line == 2
    assert any(loc.file == str(main) for loc, _ in d.related)


# ------------------------------------------------------------------ definition


def test_definition_of_values_blocks_cells_externs_and_use(tmp_path: Path) -> None:
    (tmp_path / "lib.seq").write_text(
        "layer Enc(units: int) {\n    input x\n    y = x -> LSTM(units, return_sequences=true)\n"
        "    output y\n}\n",
        encoding="utf-8",
    )
    text = 'use "lib.seq"\n' + TAGGER.replace(
        "h = e -> Bidirectional(LSTM(8, return_sequences=true))", "h = Enc(3)(e)"
    )
    main = str(tmp_path / "main.seq")
    doc = Document(text, main)
    assert codes(doc) == []
    (loc,) = doc.definition(*at(text, "Enc(3)"))
    assert loc.file == str(tmp_path / "lib.seq") and (
        loc.range.start_line,
        loc.range.start_col,
    ) == (0, 6)
    (loc,) = doc.definition(*at(text, "(e)", 1))
    assert loc.file == main and loc.range == Range(*at(text, "e = "), *at(text, "e = ", 1))
    (loc,) = doc.definition(*at(text, "tokens ->"))
    assert loc.range.start_line == at(text, "tokens:")[0]
    (loc,) = doc.definition(*at(text, '"lib.seq"', 2))
    assert Path(loc.file).resolve() == (tmp_path / "lib.seq").resolve()

    cells = (ROOT / "examples/custom/minimal_rnn_cell.seq").read_text(encoding="utf-8")
    cdoc = Document(cells, str(ROOT / "examples/custom/minimal_rnn_cell.seq"))
    (loc,) = cdoc.definition(*at(cells, "MinimalRNNCell(32), return"))
    assert (loc.range.start_line, loc.range.start_col) == at(cells, "MinimalRNNCell(units")
    # inside the cell: a weight's use goes to its declaration
    (loc,) = cdoc.definition(*at(cells, "kernel + h"))
    assert (loc.range.start_line, loc.range.start_col) == at(cells, "kernel: [in")

    ext = (ROOT / "examples/custom/seed_masking_layers.seq").read_text(encoding="utf-8")
    edoc = Document(ext, str(ROOT / "examples/custom/seed_masking_layers.seq"))
    (loc,) = edoc.definition(*at(ext, "MyTemporalSplit(2)"))
    assert (loc.range.start_line, loc.range.start_col) == at(ext, "MyTemporalSplit(parts")


def test_definition_of_block_input_inside_block() -> None:
    text = """\
layer Enc(units: int) {
    input x
    y = x -> LSTM(units, return_sequences=true)
    output y
}
model M {
    input a: f32[B, T, 4]
    ya = Enc(3)(a)
    output ya
}
"""
    doc = Document(text, "m.seq")
    (loc,) = doc.definition(*at(text, "x -> LSTM"))
    assert (loc.range.start_line, loc.range.start_col) == at(text, "x\n")
    (loc,) = doc.definition(*at(text, "units, return"))
    assert (loc.range.start_line, loc.range.start_col) == at(text, "units: int")


# ------------------------------------------------------------------ completion


def labels(doc: Document, pos: tuple[int, int]) -> list[str]:
    return [c.label for c in doc.completion(*pos)]


def test_completion_keras_arguments_after_lstm_paren() -> None:
    text = TAGGER.replace("LSTM(8, return_sequences=true)", "LSTM(")
    base = Document(TAGGER, "t.seq")
    base.diagnostics()
    doc = Document(text, "t.seq", previous=base)
    pos = at(text, "LSTM(", 5)
    items = {c.label: c for c in doc.completion(*pos)}
    assert {"units", "return_sequences", "go_backwards", "dropout", "recurrent_dropout"} <= set(
        items
    )
    assert items["dropout"].detail == "dropout: float = 0.0, >= 0, < 1"
    assert items["units"].insert_text == "units="
    # a positional argument given binds `units`; given keywords are not offered again
    text2 = TAGGER.replace("LSTM(8, return_sequences=true)", "LSTM(8, return_sequences=true, ")
    doc2 = Document(text2, "t.seq", previous=base)
    got = labels(doc2, at(text2, "true, ", 6))
    assert "units" not in got and "return_sequences" not in got and "go_backwards" in got


def test_completion_allowed_values_and_layers() -> None:
    text = TAGGER.replace("GlobalAveragePooling1D()", "Dense(4, activation=)")
    doc = Document(text, "t.seq")
    assert labels(doc, at(text, "activation=", 11))[:4] == ["linear", "relu", "sigmoid", "tanh"]
    text = TAGGER.replace(
        "Bidirectional(LSTM(8, return_sequences=true))", "Bidirectional(LSTM(8), merge_mode=)"
    )
    doc = Document(text, "t.seq")
    # Keras' merge_mode values (None written `none`)
    assert set(labels(doc, at(text, "merge_mode=", 11))) == {"sum", "mul", "concat", "ave", "none"}
    # after `->`: built-in layers, merges, drop_mask and repeat
    text = TAGGER.replace("p = h -> GlobalAveragePooling1D()", "p = h -> ")
    got = labels(Document(text, "t.seq"), at(text, "h -> ", 5))
    assert {"LSTM", "Embedding", "Bidirectional", "drop_mask", "repeat"} <= set(got)
    # `@kernel(`: the kernels
    text = TAGGER.replace("Bidirectional(", "@kernel() Bidirectional(")
    assert labels(Document(text, "t.seq"), at(text, "kernel(", 7))[0] == "cudnn"


def test_completion_values_in_scope_with_types() -> None:
    base = Document(TAGGER, "t.seq")
    base.diagnostics()
    text = TAGGER.replace("output p", "q = concat(")
    doc = Document(text, "t.seq", previous=base)
    items = {c.label: c for c in doc.completion(*at(text, "concat(", 7))}
    assert [n for n in items if n in ("tokens", "e", "h", "p", "q")] == ["tokens", "e", "h", "p"]
    assert items["e"].detail == "f32[B, T, 16]  time T  mask post, maybe-empty (declared)"
    # data arguments of a call
    text = TAGGER.replace("p = h -> GlobalAveragePooling1D()", "p = LSTM(4)(")
    got = labels(Document(text, "t.seq", previous=base), at(text, "LSTM(4)(", 8))
    assert {"e", "h", "mask", "initial_state", "training"} <= set(got) and "p" not in got


# ------------------------------------------------------------------ symbols


def test_symbols() -> None:
    text = (ROOT / "examples/custom/seed_masking_layers.seq").read_text(encoding="utf-8")
    doc = Document(text, str(ROOT / "examples/custom/seed_masking_layers.seq"))
    syms = doc.symbols()
    assert [(s.name, s.kind) for s in syms] == [
        ('"seed_externs"', "use"),
        ("MyEmbedding", "extern"),
        ("MyActivation", "extern"),
        ("MyTemporalSplit", "extern"),
        ("MyTemporalSoftmax", "extern"),
        ("SeedMasking", "model"),
    ]
    model = syms[-1]
    assert [c.name for c in model.children] == ["tokens", "x", "first", "second", "h", "s"]
    assert model.selection_range == Range(*at(text, "SeedMasking {"), *at(text, " {", 0, 4))
    cells = (ROOT / "examples/custom/minimal_rnn_cell.seq").read_text(encoding="utf-8")
    kinds = [(s.name, s.kind) for s in Document(cells, "c.seq").symbols()]
    assert kinds == [("MinimalRNNCell", "cell"), ("MinimalRNN", "model")]


# ------------------------------------------------------------------ quick fixes

FIXES = [
    # (replace in TAGGER, code, the fix's title starts with)
    (("LSTM(8", "Lstm(8"), "SEQ103", "Change `Lstm` to `LSTM`"),
    (("return_sequences=true", "return_sequence=true"), "SEQ201", "Change `return_sequence`"),
    (("GlobalAveragePooling1D()", "Flatten()"), "SEQ501", "Drop the mask on purpose"),
    ((", mask_zero=true", ""), "SEQ801", "Mask the padding"),
    (("Embedding(1000, 16, mask_zero=true)", "Embedding(1000, 16, mask_zero=false)"), "SEQ801", "Mask the padding"),
    (("p = h -> GlobalAveragePooling1D()", "p = h -> GlobalAveragePooling1D() -> drop_mask"), "SEQ804", "Remove `drop_mask`"),
    (("output p", "output p with mask"), "SEQ108", "Remove `with mask`"),
    (("LSTM(8,", "LSTM(8, activation=tanhh,"), "SEQ203", "Change `tanhh` to `tanh`"),
    (("pad(post, value=0)", "pad(post, value=0) masked"), "SEQ501", "Remove `mask_zero=true`"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("change", "code", "title"), FIXES, ids=[f[1] + "-" + f[2][:12] for f in FIXES]
)
def test_quick_fix_removes_the_diagnostic(change: tuple[str, str], code: str, title: str) -> None:
    text = TAGGER.replace(*change)
    assert text != TAGGER
    doc = Document(text, "t.seq")
    assert code in codes(doc)
    actions = [a for a in doc.code_actions(Range(0, 0, 99, 0)) if a.diagnostic.code == code]
    assert [a.title for a in actions if a.title.startswith(title)], [a.title for a in actions]
    action = next(a for a in actions if a.title.startswith(title))
    fixed = apply(text, action.edits)
    after = Document(fixed, "t.seq")
    assert code not in codes(after), fixed
    assert not [d for d in after.diagnostics() if d.severity == "error"], fixed


def test_no_quick_fix_without_a_mechanical_one() -> None:
    text = TAGGER.replace("LSTM(8", "Qwertz(8")  # unknown layer, nothing close
    doc = Document(text, "t.seq")
    assert codes(doc) == ["SEQ103"]
    assert doc.code_actions(Range(0, 0, 99, 0)) == []


# ------------------------------------------------------------------ robustness


def _every_question(doc: Document, rng: random.Random, n: int) -> None:
    lines = doc.text.split("\n")
    doc.diagnostics()
    doc.symbols()
    doc.code_actions(Range(0, 0, len(lines), 0))
    for _ in range(n):
        line = rng.randrange(len(lines))
        col = rng.randrange(len(lines[line]) + 1)
        doc.hover(line, col)
        doc.definition(line, col)
        doc.completion(line, col)


def test_fuzz_corpus_never_raises() -> None:
    """Every mutant of tests/test_fuzz.py, asked everything at random positions; each
    also as an edit of its seed (answers from the last analysis)."""
    rng = random.Random(11)
    seeds: dict[str, Document] = {}
    t0 = time.perf_counter()
    for m in make_mutants():
        if m.seed not in seeds:
            seeds[m.seed] = Document(m.text, m.seed)
        base = Document(m.text, m.seed)
        _every_question(base, rng, 6)
        edited = Document(m.text + "\n", m.seed, previous=base)
        line = rng.randrange(m.text.count("\n") + 1)
        edited.hover(line, 4)
        edited.completion(line, 4)
    assert time.perf_counter() - t0 < 120


def test_hover_model_name_and_parameters() -> None:
    doc = Document(TAGGER, "tagger.seq")
    h = doc.hover(*at(TAGGER, "Tagger"))
    # Embedding 1000 * 16 + Bidirectional(LSTM(8)) 2 * 4 * 8 * (16 + 8 + 1)
    assert h is not None and "parameters: 17,600 (17,600 trainable); 3 layers" in h.markdown
    assert "outputs: `p: f32[B, 16]`" in h.markdown
    window = "model W {\n    input x: f32[B, T, 2]\n    y = x -> Conv1D(2, 4)\n    output y\n}\n"
    hw = Document(window, "w.seq").hover(*at(window, "W {"))
    assert hw is not None and "run-time constraints: `T >= 4  (Conv1D)`" in hw.markdown
    text = """\
layer Enc(units: int, rate: float = 0.5) {
    input x
    y = x -> LSTM(units, return_sequences=true) -> Dropout(rate)
    output y
}
model M {
    input a: f32[B, T, 4]
    ya = Enc(3, rate=0.25)(a)
    output ya
}
"""
    doc = Document(text, "m.seq")
    h = doc.hover(*at(text, "rate)"))
    assert (
        h is not None and "`rate: float = 0.5`" in h.markdown and "parameter of `Enc`" in h.markdown
    )
    h = doc.hover(*at(text, "rate=0.25"))
    assert h is not None and "`rate: float = 0.5`" in h.markdown


@pytest.mark.full
def test_fuzz_corpus_every_position() -> None:
    """Every mutant, hover, definition and completion at every position of every line,
    and a hover and a completion on a line of an edit before its analysis."""
    for m in make_mutants():
        doc = Document(m.text, m.seed)
        lines = m.text.split("\n")
        doc.diagnostics()
        doc.symbols()
        doc.code_actions(Range(0, 0, len(lines), 0))
        for i, text in enumerate(lines):
            for c in range(len(text) + 1):
                doc.hover(i, c)
                doc.definition(i, c)
                doc.completion(i, c)
        edited = Document(m.text.replace("(", "( ", 1), m.seed, previous=doc)
        for i in range(min(len(lines), 40)):
            edited.hover(i, 5)
            edited.completion(i, 5)
