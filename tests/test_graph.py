"""``seqdsl graph``: the DOT text of seqdsl/graph.py, parsed back by Graphviz.

Graphviz (``dot -Tjson0``) is the parser: every example's DOT is laid out by
it and read back as JSON, and the labels are compared with what the summary
(``summary_json``) says of each value. The tests that need ``dot`` are skipped
when it is not installed, except under CI (``SEQDSL_CI=1``, set by .ci/run,
which installs Graphviz), where a missing ``dot`` is a failure.
``pytest --update-golden`` rewrites tests/golden/graph/.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import pytest

import seqdsl
from seqdsl.cli import main
from seqdsl.graph import graph_dot, render
from seqdsl.summary import summary_json

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden" / "graph"
EXAMPLES = sorted(p for p in (ROOT / "examples").rglob("*.seq") if "lib" not in p.parts)
# the model drawn in docs/graph.md
EXAMPLES.append(ROOT / "docs" / "graph" / "tagger.seq")


def _need_dot() -> str:
    exe = shutil.which("dot")
    if exe is None:
        if os.environ.get("SEQDSL_CI"):
            pytest.fail("Graphviz' dot is not installed, but CI (SEQDSL_CI) must run these tests")
        pytest.skip("Graphviz' dot is not installed")
    return exe


def _layout(dot_text: str) -> dict[str, Any]:
    """The graph as Graphviz reads it (``dot -Tjson0``); fails on any warning."""
    proc = subprocess.run(
        [_need_dot(), "-Tjson0"], input=dot_text, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0 and not proc.stderr, proc.stderr
    doc: dict[str, Any] = json.loads(proc.stdout)
    return doc


def _nodes(doc: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """Graphviz' nodes (objects with no subgraph list are nodes) by id."""
    return {o["_gvid"]: o for o in doc.get("objects", []) if "nodes" not in o}


def _edges(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    nodes = _nodes(doc)
    return [(nodes[e["tail"]]["name"], nodes[e["head"]]["name"], e) for e in doc.get("edges", [])]


def _label_lines(obj: dict[str, Any]) -> list[str]:
    return str(obj["label"]).split("\\n")


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_example_parses_and_labels_as_the_summary(path: Path) -> None:
    prog = seqdsl.load(path)
    if len(prog.models) > 1:  # all models in one graph: parsed by Graphviz too
        _layout(graph_dot(list(prog.models)))
    for m, want in zip(prog.models, json.loads(summary_json(prog.models)), strict=True):
        doc = _layout(graph_dot([m]))
        edges = _edges(doc)
        assert edges, "a graph with no edge"
        assert len(_nodes(doc)) == len(m.model.ops) + len(m.model.inputs) + len(m.model.outputs)
        for _tail, _head, e in edges:
            head, time, mask = _label_lines(e)
            name, _, typ = head.partition(": ")
            value = want["values"][name.split(" (")[0]]  # "h (initial_state)"
            assert typ == value["type"]
            assert time == f"time: {value['time']}"
            assert mask == f"mask: {value['mask'] or '-'}"
            if value["mask"] is None:
                assert e["class"] == "unmasked" and "style" not in e
            elif typ.startswith("mask("):
                assert e["class"] == "mask-value" and e["style"] == "dashed"
            else:
                assert e["class"] == "masked" and float(e["penwidth"]) > 2


BI = """\
model BiTagger {
    input tokens: i32[B, T] pad(pre, value=0)
    x = tokens -> Embedding(1000, 16, mask_zero=true)
               -> Bidirectional(LSTM(8, return_sequences=true))
    z = x -> drop_mask -> Dense(3)
    v = x -> LSTM(4)
    output x with mask, z, v
}
"""


def test_bidirectional_over_a_masked_embedding_then_drop_mask() -> None:
    doc = _layout(graph_dot(list(seqdsl.loads(BI, "bi.seq").models)))
    nodes = {n["name"]: n for n in _nodes(doc).values()}
    edges = {(t, h): e for t, h, e in _edges(doc)}
    by_label = {_label_lines(n)[0]: name for name, n in nodes.items()}
    emb = by_label["x_embedding (Embedding)"]
    bi = by_label["x_bidirectional (Bidirectional)"]
    drop = by_label["drop_mask"]
    dense = by_label["z_dense (Dense)"]
    lstm = by_label["v_lstm (LSTM)"]

    # left padding with value 0 and mask_zero: the mask is pre, may be empty, rests on pad(...)
    e = edges[(emb, bi)]
    assert _label_lines(e) == [
        "x_embedding: f32[B, T, 16]",
        "time: T",
        "mask: pre, maybe-empty (declared)",
    ]
    assert e["class"] == "masked"
    assert "mask starts" in _label_lines(nodes[emb])
    # Bidirectional: its constructor as written and its kernel (left padding: rolled for cuDNN)
    assert _label_lines(nodes[bi])[1:] == [
        "Bidirectional(LSTM(8, return_sequences=true))",
        "1,600 params",
        "GPU kernel: cudnn+roll (keras, torch, jax)",
    ]
    assert _label_lines(edges[(bi, drop)])[2] == "mask: pre, maybe-empty (declared)"
    assert edges[(bi, drop)]["class"] == "masked"
    # drop_mask ends the mask: drawn as such, and the edge after it is unmasked
    assert nodes[drop]["class"] == "drop-mask mask-end"
    assert nodes[drop]["peripheries"] == "2" and nodes[drop]["shape"] == "octagon"
    assert _label_lines(nodes[drop]) == ["drop_mask", "mask dropped"]
    after = edges[(drop, dense)]
    assert _label_lines(after) == ["z_drop_mask: f32[B, T, 16]", "time: T", "mask: -"]
    assert after["class"] == "unmasked"
    assert after["color"] != edges[(bi, drop)]["color"]
    assert float(after["penwidth"]) < float(edges[(bi, drop)]["penwidth"])
    # an LSTM without return_sequences removes the time axis, and the mask with it
    assert nodes[lstm]["class"] == "op mask-end"
    assert _label_lines(nodes[lstm])[-1] == "mask ends: time axis removed"
    assert _label_lines(edges[(lstm, "out_v")]) == ["v: f32[B, 4]", "time: -", "mask: -"]
    # the output keeps its mask
    assert _label_lines(nodes["out_x"]) == ["output x with mask"]
    assert edges[(bi, "out_x")]["class"] == "masked"
    # the input shows its padding
    assert _label_lines(nodes["in_tokens"]) == ["tokens (Input)", "i32[B, T]", "pad(pre, value=0)"]


def test_explicit_mask_input_and_initial_state_edges() -> None:
    src = """\
model M {
    input x: f32[B, T, 4]
    input m: mask(post)[B, T]
    input h0: f32[B, 8]
    y = GRU(8, return_sequences=true)(x, mask=m, initial_state=[h0])
    output y with mask
}
"""
    doc = _layout(graph_dot(list(seqdsl.loads(src, "m.seq").models)))
    edges = {(t, h): e for t, h, e in _edges(doc)}
    mask_edge = edges[("in_m", "op0")]
    assert mask_edge["class"] == "mask-value" and mask_edge["style"] == "dashed"
    assert _label_lines(mask_edge)[0] == "m (mask): mask(post)[B, T]"
    state = edges[("in_h0", "op0")]
    assert _label_lines(state) == ["h0 (initial_state): f32[B, 8]", "time: -", "mask: -"]
    assert edges[("op0", "out_y")]["class"] == "masked"


def test_blocks_are_clusters() -> None:
    prog = seqdsl.load(ROOT / "examples" / "composite_encoder.seq")
    doc = _layout(graph_dot(list(prog.models)))
    clusters = {o["label"]: o for o in doc["objects"] if "nodes" in o}
    nodes = _nodes(doc)
    enc = clusters["layer StackedEncoder as encoder (called at composite_encoder.seq:25)"]
    dec = clusters["layer Decoder as logits_decoder (called at composite_encoder.seq:26)"]
    head = clusters[
        "layer StepClassifier as logits_decoder_probs_step_classifier (called at composite_encoder.seq:16)"
    ]
    first = {_label_lines(nodes[i])[0] for i in enc["nodes"]}
    assert first == {
        "encoder_h_r0_lstm (LSTM)",
        "encoder_h_r0_dropout (Dropout)",
        "encoder_h_r1_lstm (LSTM)",
        "encoder_h_r1_dropout (Dropout)",
        "encoder_out_lstm (LSTM)",
    }
    # the nested block's node is in both clusters; the model's own layer in neither
    td = "logits_decoder_probs_step_classifier_y_time_distributed (TimeDistributed)"
    assert {_label_lines(nodes[i])[0] for i in head["nodes"]} == {td}
    assert td in {_label_lines(nodes[i])[0] for i in dec["nodes"]}
    assert head["_gvid"] in dec["subgraphs"]
    assert all(_label_lines(nodes[i])[0] != "src_embedding (Embedding)" for i in dec["nodes"])


def test_each_expansion_of_a_block_in_a_repeat_is_its_own_cluster() -> None:
    src = """\
layer Head(units: int) {
    input x
    y = x -> Dense(units) -> Dropout(0.1)
    output y
}
model R {
    input x: f32[B, T, 4] pad(post, value=0.0)
    h = x -> Masking(mask_value=0.0) -> repeat(2) { Head(8) }
    output h with mask
}
"""
    doc = _layout(graph_dot(list(seqdsl.loads(src, "rep.seq").models)))
    nodes = _nodes(doc)
    clusters = {o["label"]: o for o in doc["objects"] if "nodes" in o}
    assert sorted(clusters) == [
        "layer Head as h_r0_head (called at rep.seq:8)",
        "layer Head as h_r1_head (called at rep.seq:8)",
    ]
    for k in (0, 1):
        members = clusters[f"layer Head as h_r{k}_head (called at rep.seq:8)"]["nodes"]
        assert sorted(_label_lines(nodes[i])[0] for i in members) == [
            f"h_r{k}_head_y_dense (Dense)",
            f"h_r{k}_head_y_dropout (Dropout)",
        ]


def test_several_models_get_a_cluster_each() -> None:
    src = """\
model A {
    input x: f32[B, T, 4]
    y = x -> LSTM(2)
    output y
}
model B {
    input x: f32[B, 4]
    y = x -> Dense(2)
    output y
}
"""
    doc = _layout(graph_dot(list(seqdsl.loads(src, "two.seq").models)))
    clusters = {o["label"]: o for o in doc["objects"] if "nodes" in o}
    assert set(clusters) == {"model A", "model B"}
    names = {n["name"] for n in _nodes(doc).values()}
    assert names == {"m0_in_x", "m0_op0", "m0_out_y", "m1_in_x", "m1_op0", "m1_out_y"}


@pytest.mark.full  # about 10 s: analyses the whole fuzz corpus again
def test_every_fuzz_mutant_that_checks_draws() -> None:
    """The fuzz corpus (tests/test_fuzz.py's mutants of the examples): every program that
    checks gets DOT text that Graphviz reads (all graphs in one `dot` run)."""
    from tests.test_fuzz import MUTANTS

    texts = []
    for m in MUTANTS:
        prog, diags = seqdsl.analyze(m.text, "mutant.seq")
        if prog is not None and prog.models and not any(d.is_error for d in diags):
            texts.append(graph_dot(list(prog.models)))
    assert len(texts) > 20
    proc = subprocess.run(
        [_need_dot(), "-Tcanon"], input="".join(texts), capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0 and not proc.stderr, proc.stderr
    assert proc.stdout.count("digraph seqdsl {") == len(texts)


def test_golden_dot(request: pytest.FixtureRequest) -> None:
    """The DOT text is deterministic and reviewed: one example with blocks, pinned."""
    text = graph_dot(list(seqdsl.load(ROOT / "examples" / "composite_encoder.seq").models))
    assert text == graph_dot(list(seqdsl.load(ROOT / "examples" / "composite_encoder.seq").models))
    golden = GOLDEN / "composite_encoder.dot"
    if request.config.getoption("--update-golden"):
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text)
    assert golden.exists(), f"no golden file {golden}: run pytest --update-golden"
    assert text == golden.read_text(), (
        f"{golden} is out of date: review the diff, then run pytest --update-golden"
    )


def test_labels_are_quoted_for_dot() -> None:
    # a string argument with a quote and a backslash stays one label
    src = 'model Q {\n    input x: f32[B, 4]\n    y = x -> Dense(2, name="a\\\\b\\"c")\n    output y\n}\n'
    prog = seqdsl.loads(src, "q.seq")
    text = graph_dot(list(prog.models))
    doc = _layout(text)
    assert len(_nodes(doc)) == 3  # the quote did not end the label early
    # drawn as written: a backslash, a quote
    assert "a\\b&quot;c (Dense)</text>" in render(text, "svg").decode()


@pytest.mark.parametrize(
    "seq, svg",
    [
        ("docs/graph/tagger.seq", "docs/graph/tagger.svg"),
        ("examples/composite_encoder.seq", "docs/graph/composite_encoder.svg"),
    ],
)
def test_pictures_in_docs_are_current(seq: str, svg: str) -> None:
    """The committed pictures show what `seqdsl graph` draws now: every text of the
    SVG is a label line of the current DOT and the other way round (no Graphviz needed)."""
    text = graph_dot(list(seqdsl.load(ROOT / seq).models))
    lines: list[str] = []
    for label in re.findall(r'label="((?:[^"\\]|\\.)*)"', text):
        lines += [line.replace('\\"', '"') for line in label.split("\\n")]
    ns = "{http://www.w3.org/2000/svg}"
    drawn = [t.text or "" for t in ET.parse(ROOT / svg).iter(f"{ns}text")]
    assert sorted(drawn) == sorted(lines), (
        f"{svg} is out of date: rerun `seqdsl graph {seq} -o {svg}`"
    )


# ---------------------------------------------------------------- the command


def test_cli_writes_dot_to_stdout_and_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ex = str(ROOT / "examples" / "bilstm_tagger.seq")
    assert main(["graph", ex]) == 0
    out = capsys.readouterr().out
    assert out.startswith("digraph seqdsl {")
    assert main(["graph", ex, "-o", str(tmp_path / "g.dot")]) == 0
    assert (tmp_path / "g.dot").read_text() == out


def test_cli_renders_svg_and_png(tmp_path: Path) -> None:
    _need_dot()
    ex = str(ROOT / "examples" / "bilstm_tagger.seq")
    assert main(["graph", ex, "-o", str(tmp_path / "g.svg")]) == 0
    svg = (tmp_path / "g.svg").read_text()
    assert "<svg" in svg and 'class="edge masked"' in svg
    assert main(["graph", ex, "-o", str(tmp_path / "g.png")]) == 0
    assert (tmp_path / "g.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_without_graphviz_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no `dot` here
    ex = str(ROOT / "examples" / "bilstm_tagger.seq")
    assert main(["graph", ex, "-o", str(tmp_path / "g.svg")]) == 2
    err = capsys.readouterr().err
    assert "Graphviz" in err and "-o FILE.dot" in err
    assert not (tmp_path / "g.svg").exists()
    with pytest.raises(Exception, match="not on PATH"):
        render("digraph {}", "svg")


def test_cli_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ex = str(ROOT / "examples" / "bilstm_tagger.seq")
    assert main(["graph", ex, "-o", str(tmp_path / "g.pdf")]) == 2
    assert "graph writes .dot, .gv, .svg or .png" in capsys.readouterr().err
    assert main(["graph", ex, "--model", "Nope"]) == 2
    assert "no model named 'Nope'" in capsys.readouterr().err
    assert main(["graph", ex, "-o", str(tmp_path / "missing" / "g.dot")]) == 2
    bad = tmp_path / "bad.seq"
    bad.write_text("model M {\n    input x: f32[B, 4]\n    y = x -> Nope(2)\n    output y\n}\n")
    assert main(["graph", str(bad)]) == 1
    assert "SEQ" in capsys.readouterr().out


def test_cli_model_option_draws_one_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    two = tmp_path / "two.seq"
    two.write_text(
        "model A {\n    input x: f32[B, 4]\n    y = x -> Dense(2)\n    output y\n}\n"
        "model B {\n    input x: f32[B, 4]\n    y = x -> Dense(3)\n    output y\n}\n"
    )
    assert main(["graph", str(two), "--model", "B"]) == 0
    out = capsys.readouterr().out
    assert 'label="model B"' in out and "model A" not in out and "Dense(3)" in out
