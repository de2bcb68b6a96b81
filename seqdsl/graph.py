"""The model as a graph: Graphviz DOT text built from the checked model.

``graph_dot`` is pure and needs nothing but the checker's result: inputs with
their padding, one node per operation (its summary label, the constructor as
written, its parameter count and its kernel per target), and one edge per use
of a value, labelled with the value's type, time dimension and mask kind as the
summary writes them (:mod:`seqdsl.summary`). Masked values are drawn as thick
blue edges, unmasked ones as thin grey edges, mask values (``mask(...)``
inputs) as dashed blue edges; an operation where a mask ends (``drop_mask``,
or a layer that removes the time axis) is drawn with a double red border and
says why, one where a mask starts says so. Operations of an expanded ``layer``
block sit in a cluster named after the block and its call site.

The text is deterministic: nodes, clusters and edges follow the order of the
model's inputs and operations. ``render`` turns DOT into SVG or PNG bytes
through Graphviz' ``dot`` program, the only part that needs Graphviz.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import PurePath

from .catalogue import TARGETS
from .checker import CheckedModel, LayerInfo
from .ir import (
    ApplyOp,
    Arg,
    DropMaskOp,
    Expansion,
    LayerCall,
    Literal,
    MergeOp,
    Op,
    Span,
    ValueUse,
)
from .summary import kernel_cells, mask_of, op_label, pad_text, time_of
from .types import MaskType, TensorType, ValueType

__all__ = ["graph_dot", "render", "RENDER_FORMATS", "GraphvizError"]

#: the formats ``render`` produces (``dot -T<format>``)
RENDER_FORMATS = ("svg", "png")

# colours and pens: masked data, unmasked data, and where a mask ends
_MASKED = "#1f5fbf"
_UNMASKED = "#6b6b6b"
_MASK_END = "#c0392b"


class GraphvizError(Exception):
    """Rendering failed: ``dot`` is not installed, or it rejected the text."""


@dataclass
class _Cluster:
    label: str
    nodes: list[str] = field(default_factory=list)
    children: dict[tuple[tuple[str, Span, str], ...], _Cluster] = field(default_factory=dict)


def _q(text: str) -> str:
    """A DOT double-quoted string."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _label(lines: Sequence[str]) -> str:
    """A multi-line label: each line quoted for DOT, joined by centred line breaks."""
    return '"' + "\\n".join(_q(line)[1:-1] for line in lines) + '"'


def _attrs(pairs: Sequence[tuple[str, str]]) -> str:
    return "[" + ", ".join(f"{k}={v}" for k, v in pairs) + "]"


def _is_masked(t: ValueType | None) -> bool:
    return isinstance(t, TensorType) and t.mask is not None


def _arg_text(a: Arg) -> str:
    value = _literal_text(a.value)
    return value if a.name is None else f"{a.name}={value}"


def _literal_text(lit: Literal) -> str:
    if lit.kind == "layer":
        assert isinstance(lit.value, LayerCall)
        return _call_text(lit.value)
    if lit.kind == "list":
        assert isinstance(lit.value, tuple)
        return "[" + ", ".join(_literal_text(v) for v in lit.value) + "]"
    return lit.describe()


def _call_text(call: LayerCall) -> str:
    """A constructor as written (decorators and the ``name=`` argument left out)."""
    args = ", ".join(_arg_text(a) for a in call.args if a.name != "name")
    return f"{call.kind}({args})"


def _kernel_line(info: LayerInfo | None) -> str | None:

    cells = kernel_cells(info)
    if not any(cells):
        return None
    if len(set(cells)) == 1:
        return f"GPU kernel: {cells[0]} ({', '.join(TARGETS)})"
    return "GPU kernel: " + ", ".join(f"{t} {k}" for t, k in zip(TARGETS, cells, strict=True))


def _data_inputs(op: Op) -> tuple[ValueUse, ...]:
    return (op.input,) if isinstance(op, DropMaskOp) else op.inputs


def _mask_change(op: Op, m: CheckedModel) -> tuple[str, str] | None:
    """("end" | "start", the line that says so) where a mask ends or starts at ``op``."""
    ins = [m.types.get(u.name) for u in _data_inputs(op)]
    if isinstance(op, ApplyOp) and op.mask is not None:
        ins.append(m.types.get(op.mask.name))
    outs = [m.types.get(r) for r in op.results]
    in_masked = any(_is_masked(t) or isinstance(t, MaskType) for t in ins)
    out_masked = any(_is_masked(t) for t in outs)
    if in_masked and not out_masked:
        if isinstance(op, DropMaskOp):
            return ("end", "mask dropped")
        if all(time_of(t) == "-" for t in outs):
            return ("end", "mask ends: time axis removed")
        return ("end", "mask ends")
    if out_masked and not in_masked:
        return ("start", "mask starts")
    return None


def _edge(src: str, dst: str, value: str, role: str, t: ValueType | None) -> str:
    head = f"{value} ({role})" if role else value
    lines = [f"{head}: {'?' if t is None else t}", f"time: {time_of(t)}", f"mask: {mask_of(t)}"]
    if isinstance(t, MaskType):
        cls, style = (
            "mask-value",
            [("style", "dashed"), ("color", _q(_MASKED)), ("penwidth", "1.6")],
        )
    elif _is_masked(t):
        cls, style = "masked", [("color", _q(_MASKED)), ("penwidth", "2.4")]
    else:
        cls, style = "unmasked", [("color", _q(_UNMASKED)), ("penwidth", "1.0")]
    font = _MASKED if cls != "unmasked" else "#333333"
    pairs = [("label", _label(lines)), ("class", _q(cls)), *style, ("fontcolor", _q(font))]
    return f"{_q(src)} -> {_q(dst)} {_attrs(pairs)};"


def _model_body(m: CheckedModel, prefix: str) -> tuple[_Cluster, list[str]]:
    """The nodes of one model (in a cluster tree: the root and the block calls) and its edges."""
    root = _Cluster(label="")
    edges: list[str] = []
    producer: dict[str, str] = {}
    by_op = {layer.op_index: layer for layer in m.layers}

    for inp in m.model.inputs:
        nid = f"{prefix}in_{inp.name}"
        producer[inp.name] = nid
        t = m.types.get(inp.name)
        lines = [f"{inp.name} ({'Mask' if inp.is_mask else 'Input'})", "?" if t is None else str(t)]
        if inp.name in m.pads:
            lines.append(pad_text(m.pads[inp.name]))
        if inp.masked:
            lines.append("masked (lengths)")
        pairs = [
            ("label", _label(lines)),
            ("class", _q("input")),
            ("shape", "invhouse"),
            ("style", "filled"),
            ("fillcolor", _q("#e3ecfa")),
        ]
        root.nodes.append(f"{_q(nid)} {_attrs(pairs)};")

    for i, op in enumerate(m.model.ops):
        nid = f"{prefix}op{i}"
        info = by_op.get(i)
        lines = [op_label(op)]
        if isinstance(op, ApplyOp):
            lines.append(_call_text(op.layer))
        elif isinstance(op, MergeOp) and op.args:
            lines.append(", ".join(_arg_text(a) for a in op.args))
        if info is not None and info.params:
            lines.append(f"{info.params:,} params")
        kline = _kernel_line(info)
        if kline is not None:
            lines.append(kline)
        change = _mask_change(op, m)
        if change is not None:
            lines.append(change[1])
        classes = ["drop-mask" if isinstance(op, DropMaskOp) else "op"]
        if isinstance(op, DropMaskOp):
            pairs = [("shape", "octagon"), ("style", "filled"), ("fillcolor", _q("#fbe9e7"))]
        else:
            fill = "#fff3e0" if kline is not None else "#f5f5f5"
            pairs = [("shape", "box"), ("style", _q("rounded,filled")), ("fillcolor", _q(fill))]
        if change is not None and change[0] == "end":
            classes.append("mask-end")
            pairs += [("color", _q(_MASK_END)), ("peripheries", "2"), ("fontcolor", _q(_MASK_END))]
        elif change is not None:
            classes.append("mask-start")
            pairs += [("color", _q(_MASKED))]
        node = f"{_q(nid)} {_attrs([('label', _label(lines)), ('class', _q(' '.join(classes))), *pairs])};"
        _cluster_for(root, op.span.via).nodes.append(node)

        uses: list[tuple[ValueUse, str]] = [(u, "") for u in _data_inputs(op)]
        if isinstance(op, ApplyOp):
            if op.mask is not None:
                uses.append((op.mask, "mask"))
            uses += [(u, "initial_state") for u in op.initial_state or ()]
        for use, role in uses:
            src = producer.get(use.name)
            if src is not None:
                edges.append(_edge(src, nid, use.name, role, m.types.get(use.name)))
        for r in op.results:
            producer[r] = nid

    for out in m.model.outputs:
        nid = f"{prefix}out_{out.name}"
        lines = [f"output {out.name}" + (" with mask" if out.with_mask else "")]
        pairs = [
            ("label", _label(lines)),
            ("class", _q("output")),
            ("shape", "house"),
            ("style", "filled"),
            ("fillcolor", _q("#e8f5e9")),
        ]
        root.nodes.append(f"{_q(nid)} {_attrs(pairs)};")
        src = producer.get(out.name)
        if src is not None:
            edges.append(_edge(src, nid, out.name, "", m.types.get(out.name)))
    return root, edges


def _cluster_for(root: _Cluster, via: tuple[Expansion, ...]) -> _Cluster:
    c = root
    for k in range(1, len(via) + 1):
        # one cluster per expansion: the expansions of one call site in a `repeat` differ
        # only by their prefix
        key = tuple((e.block, e.call, e.prefix) for e in via[:k])
        if key not in c.children:
            e = via[k - 1]
            where = f"{PurePath(e.call.file).name}:{e.call.line}" if e.call.file else "?"
            name = f" as {e.prefix}" if e.prefix else ""
            c.children[key] = _Cluster(label=f"layer {e.block}{name} (called at {where})")
        c = c.children[key]
    return c


def _emit_cluster(c: _Cluster, out: list[str], indent: str, ids: list[int], prefix: str) -> None:
    out += [indent + n for n in c.nodes]
    for child in c.children.values():
        ids[0] += 1
        out.append(f"{indent}subgraph {_q(f'cluster_{prefix}b{ids[0]}')} {{")
        inner = indent + "    "
        out.append(f"{inner}label={_q(child.label)};")
        out.append(f'{inner}class="block"; style="rounded,dashed"; color="#8d6e63";')
        out.append(f'{inner}fontcolor="#5d4037"; labeljust=l;')
        _emit_cluster(child, out, inner, ids, prefix)
        out.append(f"{indent}}}")


def graph_dot(models: Sequence[CheckedModel]) -> str:
    """One DOT digraph of ``models``: a single model fills the graph, several
    models get one cluster each."""
    out = [
        "digraph seqdsl {",
        '    graph [rankdir=TB, fontname="Helvetica", fontsize=12, nodesep=0.35, ranksep=0.45];',
        '    node [fontname="Helvetica", fontsize=10, margin="0.12,0.05"];',
        '    edge [fontname="Helvetica", fontsize=8, arrowsize=0.7];',
    ]
    edges: list[str] = []
    for k, m in enumerate(models):
        single = len(models) == 1
        prefix = "" if single else f"m{k}_"
        root, model_edges = _model_body(m, prefix)
        title = f"model {m.name}"
        if single:
            out.append(f"    label={_q(title)}; labelloc=t;")
            _emit_cluster(root, out, "    ", [0], prefix)
        else:
            out.append(f"    subgraph {_q(f'cluster_m{k}')} {{")
            out.append(f"        label={_q(title)}; labelloc=t;")
            _emit_cluster(root, out, "        ", [0], prefix)
            out.append("    }")
        edges += model_edges
    out += ["    " + e for e in edges]
    out.append("}")
    return "\n".join(out) + "\n"


def render(dot: str, fmt: str) -> bytes:
    """``dot`` rendered by Graphviz as ``fmt`` (one of ``RENDER_FORMATS``).

    Raises :class:`GraphvizError` when the ``dot`` program is not installed or
    fails; the text says which."""
    if fmt not in RENDER_FORMATS:
        raise ValueError(f"cannot render {fmt!r}: formats are {', '.join(RENDER_FORMATS)}")
    exe = shutil.which("dot")
    if exe is None:
        raise GraphvizError(
            "rendering needs Graphviz' `dot` program, which is not on PATH: install Graphviz "
            "(apt-get install graphviz, brew install graphviz, conda install graphviz), "
            "or write DOT text with `-o FILE.dot` and render it elsewhere"
        )
    proc = subprocess.run(
        [exe, f"-T{fmt}"], input=dot.encode("utf-8"), capture_output=True, check=False
    )
    if proc.returncode != 0:
        msg = proc.stderr.decode("utf-8", "replace").strip()
        raise GraphvizError(f"Graphviz' dot failed (exit {proc.returncode}): {msg}")
    return proc.stdout
