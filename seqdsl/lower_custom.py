"""Lowering of ``cell`` blocks and ``extern layer`` declarations (part of stage 2).

Structure only, plus the definition check of a cell's equations
(:func:`seqdsl.cells.check_cell`): names, what may be updated, what a
declaration must say. The types of a cell at a call, and an extern's rule,
are the checker's (through the catalogue entries built in ``cells.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from lark import Token, Tree

from .cells import FUNCTIONS, check_cell, check_extern
from .diagnostics import Diagnostic, Related, did_you_mean
from .ir import (
    CellDef,
    CellStmt,
    CellTensor,
    CellWeight,
    CExpr,
    DimExpr,
    ExternDef,
    Literal,
    MaskContract,
    ParamDecl,
    Span,
)
from .layerspec import INITIALIZERS
from .parser import unquote

__all__ = ["Lowering", "lower_cell", "lower_extern"]


class Lowering(Protocol):
    """What this module needs of the program's lowerer (``seqdsl.lower``), which
    passes itself in: spans, diagnostics, and literal conversion. Declared here
    so that ``lower`` imports this module and not the other way round."""

    diags: list[Diagnostic]

    def span(self, node: Tree[Token] | Token) -> Span: ...

    def error(
        self,
        code: str,
        message: str,
        node: Tree[Token] | Token | Span,
        hint: str | None = None,
        related: Sequence[Related] = (),
    ) -> None: ...

    def error_count(self) -> int:
        """How many errors ``diags`` holds."""
        ...

    def literal(self, node: Tree[Token] | Token | None, parent: str = "") -> Literal: ...

    def convert_param(self, block: str, pname: str, ptype: str, lit: Literal) -> Literal | None: ...


#: parameter types a cell or extern may declare
CUSTOM_PARAM_TYPES = ("int", "float", "bool", "str")
_FLOAT_DTYPES = ("f32", "f64")
_DTYPES = ("f32", "f64", "i32", "i64", "bool")
_CLAUSES = ("in", "out", "shape", "outputs", "inputs", "time", "mask")
_CONTRACTS = ("propagate", "generate", "consume", "drop", "split", "concat")


def _params(lw: Lowering, owner: str, node: object, declared: dict[str, Span]) -> list[ParamDecl]:
    out: list[ParamDecl] = []
    for pn in node.children if isinstance(node, Tree) else ():
        if not isinstance(pn, Tree):
            continue
        ptok, ttok, dnode = pn.children
        assert isinstance(ptok, Token) and isinstance(ttok, Token)
        pname, ptype = str(ptok), str(ttok)
        pspan = lw.span(ptok)
        if pname in declared:
            lw.error("SEQ102", f"`{pname}` is declared twice in `{owner}`", pspan,
                     "give it another name", [Related(declared[pname], "first declared here")])  # fmt: skip
            continue
        declared[pname] = pspan
        if pname == "name":
            lw.error("SEQ010", "`name` cannot be a parameter: `name=` names the layer", pspan,
                     "call the parameter something else")  # fmt: skip
            continue
        if ptype not in CUSTOM_PARAM_TYPES:
            dym = did_you_mean(ptype, list(CUSTOM_PARAM_TYPES))
            lw.error("SEQ010", f"unknown parameter type `{ptype}`", ttok,
                     f"did you mean `{dym}`?" if dym else "parameter types are " + ", ".join(CUSTOM_PARAM_TYPES))  # fmt: skip
            continue
        default = None
        if dnode is not None:
            lit = lw.literal(dnode)
            if not (lit.kind == "name" and lit.value == "<error>"):
                default = lw.convert_param(owner, pname, ptype, lit)
        out.append(ParamDecl(pname, ptype, default, pspan))
    return out


def _dim(lw: Lowering, node: Tree[Token] | Token) -> DimExpr:
    sp = lw.span(node)
    if isinstance(node, Token):  # pragma: no cover - the grammar wraps every atom
        return DimExpr("name", str(node), (), sp)
    if node.data == "d_int":
        return DimExpr("int", int(str(node.children[0])), (), sp)
    if node.data == "d_name":
        return DimExpr("name", str(node.children[0]), (), sp)
    op = {"d_add": "+", "d_sub": "-", "d_mul": "*", "d_div": "/", "d_floordiv": "//"}[node.data]
    a, b = node.children
    assert a is not None and b is not None
    return DimExpr(op, None, (_dim(lw, a), _dim(lw, b)), sp)


def _shape(lw: Lowering, node: object) -> tuple[DimExpr, ...]:
    assert isinstance(node, Tree)
    return tuple(_dim(lw, c) for c in node.children if c is not None)


_BIN = {"c_add": "+", "c_sub": "-", "c_mul": "*", "c_div": "/", "c_matmul": "@"}


def _cexpr(lw: Lowering, node: Tree[Token] | Token | None) -> CExpr:
    if node is None:
        return CExpr("none", None, (), Span("", 0, 0, 0, 0))
    sp = lw.span(node)
    if isinstance(node, Token):  # pragma: no cover
        return CExpr("name", str(node), (), sp)
    d = node.data
    if d in _BIN:
        a, b = node.children
        return CExpr(_BIN[d], None, (_cexpr(lw, a), _cexpr(lw, b)), sp)
    if d == "c_neg":
        return CExpr("neg", None, (_cexpr(lw, node.children[0]),), sp)
    if d == "c_name":
        return CExpr("name", str(node.children[0]), (), sp)
    if d == "c_int":
        return CExpr("num", int(str(node.children[0])), (), sp)
    if d == "c_float":
        return CExpr("num", float(str(node.children[0])), (), sp)
    if d == "c_str":
        return CExpr("str", unquote(str(node.children[0])), (), sp)
    if d == "c_call":
        fn, *args = node.children
        pos: list[CExpr] = []
        kws: list[tuple[str, CExpr]] = []
        for a in args:
            if a is None:
                continue
            if isinstance(a, Tree) and a.data == "c_kwarg":
                k, v = a.children
                kws.append((str(k), _cexpr(lw, v)))
            else:
                pos.append(_cexpr(lw, a))
        return CExpr("call", str(fn), tuple(pos), sp, tuple(kws))
    if d == "c_index":
        base, *subs = node.children
        return CExpr("index", None, (_cexpr(lw, base), *(_cexpr(lw, s) for s in subs)), sp)
    if d == "c_at":
        return CExpr("at", None, (_cexpr(lw, node.children[0]),), sp)
    if d == "c_slice":
        a, b = node.children
        return CExpr("slice", None, (_cexpr(lw, a), _cexpr(lw, b)), sp)
    if d == "c_ellipsis":
        return CExpr("ellipsis", None, (), sp)
    raise AssertionError(d)  # pragma: no cover


def _names_in(e: CExpr) -> list[CExpr]:
    out = [e] if e.op == "name" else []
    for a in e.args:
        out += _names_in(a)
    for _, v in e.kwargs:
        out += _names_in(v)
    return out


def _weight(lw: Lowering, st: Tree[Token]) -> CellWeight | None:
    ntok, shape, init = st.children
    assert isinstance(ntok, Token)
    init_name = "glorot_uniform" if init is None else str(init)
    if init is not None and init_name not in INITIALIZERS:
        dym = did_you_mean(init_name, list(INITIALIZERS))
        lw.error("SEQ203", f"unknown initializer `{init_name}`", init,
                 f"did you mean `{dym}`?" if dym else "initializers: " + ", ".join(INITIALIZERS))  # fmt: skip
        init_name = "glorot_uniform"  # reported: keep the weight (its uses are not unknown)
    return CellWeight(
        str(ntok), _shape(lw, shape), init_name, lw.span(st), lw.span(ntok),
        lw.span(init) if init is not None else None,
    )  # fmt: skip


def lower_cell(lw: Lowering, node: Tree[Token], file: str) -> CellDef:
    n_err = lw.error_count()
    name_tok = node.children[0]
    assert isinstance(name_tok, Token)
    name = str(name_tok)
    declared: dict[str, Span] = {}
    params = _params(lw, name, node.children[1], declared)
    inputs: list[CellTensor] = []
    states: list[CellTensor] = []
    weights: list[CellWeight] = []
    body: list[CellStmt] = []
    outputs: list[tuple[str, Span]] = []
    kinds: dict[str, str] = {p.name: "parameter" for p in params}

    def declare(n: str, sp: Span, what: str) -> bool:
        if n in declared:
            lw.error("SEQ102", f"`{n}` is already declared in cell `{name}`", sp,
                     f"give the {what} another name: a cell's names are single-assignment "
                     "(update a state with `<-`)", [Related(declared[n], "first declared here")])  # fmt: skip
            return False
        declared[n] = sp
        kinds[n] = what
        return True

    updated: dict[str, Span] = {}
    for st in node.children[2:]:
        if not isinstance(st, Tree):
            continue
        if st.data in ("cell_input", "cell_state"):
            ntok, dtok, shape = st.children
            assert isinstance(ntok, Token) and isinstance(dtok, Token)
            what = "input" if st.data == "cell_input" else "state"
            dtype = str(dtok)
            if dtype not in _FLOAT_DTYPES:
                lw.error("SEQ007" if dtype not in _DTYPES else "SEQ013",
                         f"a cell {what} is a float value, not `{dtype}`", dtok,
                         "declare it `f32` (or `f64`)")  # fmt: skip
                continue
            if not declare(str(ntok), lw.span(ntok), what):
                continue
            t = CellTensor(str(ntok), dtype, _shape(lw, shape), lw.span(st), lw.span(ntok))
            if not t.dims:
                lw.error("SEQ013", f"cell {what} `{t.name}` needs a shape with at least one axis",
                         st, "e.g. `f32[units]`")  # fmt: skip
                continue
            (inputs if what == "input" else states).append(t)
        elif st.data == "cell_weight":
            w = _weight(lw, st)
            if w is not None and declare(w.name, w.name_span, "weight"):
                weights.append(w)
        elif st.data == "cell_assign":
            targets, expr = st.children
            assert isinstance(targets, Tree)
            toks = [t for t in targets.children if isinstance(t, Token)]
            ok = all(declare(str(t), lw.span(t), "value") for t in toks)
            if ok:
                body.append(CellStmt(tuple(map(str, toks)), _cexpr(lw, expr), False, lw.span(st),
                                     tuple(lw.span(t) for t in toks)))  # fmt: skip
        elif st.data == "cell_update":
            ntok, expr = st.children
            assert isinstance(ntok, Token)
            n = str(ntok)
            sp = lw.span(ntok)
            if kinds.get(n) != "state":
                kind_of = kinds.get(n)
                lw.error("SEQ013", f"`{n}` is {'a ' + kind_of if kind_of else 'not declared'}; only a state is updated with `<-`",
                         sp, f"write `{n} = ...` for a new value" if kind_of is None else
                         "declare it with `state` to carry it from step to step")  # fmt: skip
                if kind_of is None:  # reported: read on as `n = ...` (no cascade on its uses)
                    declare(n, sp, "value")
                    body.append(CellStmt((n,), _cexpr(lw, expr), False, lw.span(st), (sp,)))
                continue
            if n in updated:
                lw.error("SEQ013", f"state `{n}` is updated twice", sp,
                         "compute the new value first (`h2 = ...`) and update the state once",
                         [Related(updated[n], "first updated here")])  # fmt: skip
                continue
            updated[n] = sp
            body.append(CellStmt((n,), _cexpr(lw, expr), True, lw.span(st), (sp,)))
        elif st.data == "output_decl":
            for item in st.children:
                assert isinstance(item, Tree)
                otok = item.children[0]
                assert isinstance(otok, Token)
                if item.children[1] is not None:
                    lw.error("SEQ013", "a cell's outputs have no `with mask`", item.children[1],
                             "the RNN layer gives its outputs the input's mask")  # fmt: skip
                if str(otok) in (o for o, _ in outputs):
                    lw.error("SEQ107", f"`{otok}` is output twice", otok, "list each output once")
                    continue
                outputs.append((str(otok), lw.span(otok)))
    # names read before they are defined, outputs, structure
    seen: set[str] = {p.name for p in params} | {t.name for t in (*inputs, *states)}
    seen |= {w.name for w in weights}
    all_names = set(declared)
    for cst in body:
        for use in _names_in(cst.expr):
            n = str(use.value)
            if n in seen or n in FUNCTIONS:
                continue
            if n in all_names:
                lw.error("SEQ101", f"`{n}` is used before it is computed", use.span,
                         "equations run top to bottom: move its statement up")  # fmt: skip
            else:
                dym = did_you_mean(n, sorted(seen))
                lw.error("SEQ101", f"`{n}` is not defined in cell `{name}`", use.span,
                         f"did you mean `{dym}`?" if dym else
                         "equations read inputs, states, weights, parameters and earlier results")  # fmt: skip
        if not cst.update:
            seen.update(cst.targets)
    for o, sp in outputs:
        if o not in declared:
            dym = did_you_mean(o, sorted(seen))
            lw.error("SEQ101", f"`{o}` is not defined in cell `{name}`", sp,
                     f"did you mean `{dym}`?" if dym else "output a state or a computed value")  # fmt: skip
        elif kinds.get(o) in ("weight", "parameter", "input"):
            lw.error("SEQ013", f"`{o}` is a{'n' if kinds[o] == 'input' else ''} {kinds[o]}; a cell outputs what it computes",
                     sp, "output a state or a computed value")  # fmt: skip
    for what, have in (("input", inputs), ("state", states), ("output", outputs)):
        if not have and lw.error_count() == n_err:
            hint = {
                "input": "declare what it reads each step, e.g. `input x: f32[in]`",
                "state": "declare what it carries, e.g. `state h: f32[units]`",
                "output": "list what it gives each step, e.g. `output h`",
            }[what]
            lw.error("SEQ013", f"cell `{name}` declares no {what}", name_tok, hint)
    for s in states:
        if s.name not in updated and lw.error_count() == n_err:
            lw.error("SEQ013", f"state `{s.name}` is never updated", s.name_span,
                     f"update it each step with `{s.name} <- ...` (a constant is a `weight`)")  # fmt: skip
    cdef = CellDef(
        name=name, file=file, params=tuple(params), inputs=tuple(inputs), states=tuple(states),
        weights=tuple(weights), body=tuple(body), outputs=tuple(outputs), span=lw.span(node),
        name_span=lw.span(name_tok),
    )  # fmt: skip
    if lw.error_count() == n_err:
        for d in check_cell(cdef):
            lw.diags.append(d)
    if lw.error_count() != n_err:
        from dataclasses import replace

        cdef = replace(cdef, ok=False)
    return cdef


def lower_extern(lw: Lowering, node: Tree[Token], file: str) -> ExternDef:
    n_err = lw.error_count()
    name_tok = node.children[0]
    assert isinstance(name_tok, Token)
    name = str(name_tok)
    declared: dict[str, Span] = {}
    params = _params(lw, name, node.children[1], declared)
    ptypes = {p.name: p.type for p in params}
    in_types: list[tuple[str, tuple[DimExpr, ...], Span]] = []
    out_types: list[tuple[str, tuple[DimExpr, ...], Span]] = []
    same = False
    n_out: DimExpr | None = None
    n_in: DimExpr | None = None
    time: DimExpr | None = None
    mask: MaskContract | None = None
    weights: list[CellWeight] = []
    seen: dict[str, Span] = {}
    for item in node.children[2:]:
        if not isinstance(item, Tree):
            continue
        if item.data == "cell_weight":
            w = _weight(lw, item)
            if w is not None:
                weights.append(w)
            continue
        ktok, val, cond = item.children
        assert isinstance(ktok, Token) and isinstance(val, Tree)
        key = str(ktok)
        ksp = lw.span(ktok)
        if key not in _CLAUSES:
            dym = did_you_mean(key, list(_CLAUSES))
            lw.error("SEQ014", f"unknown clause `{key}:` in extern layer `{name}`", ksp,
                     f"did you mean `{dym}:`?" if dym else "clauses: " + ", ".join(_CLAUSES))  # fmt: skip
            continue
        if key in seen and key not in ("in", "out"):
            lw.error("SEQ014", f"`{key}:` is declared twice", ksp, "keep one",
                     [Related(seen[key], "first declared here")])  # fmt: skip
            continue
        seen[key] = ksp
        if cond is not None and key != "mask":
            lw.error("SEQ014", "only `mask:` may be conditional (`if param`)", cond,
                     "remove the `if ...`")  # fmt: skip
            continue
        if cond is not None and ptypes.get(str(cond)) != "bool":
            lw.error("SEQ014", f"`if {cond}` needs a bool parameter of `{name}`", cond,
                     f"declare it, e.g. `extern layer {name}({cond}: bool = false)`")  # fmt: skip
            continue
        if key in ("in", "out"):
            if val.data != "ext_type":
                lw.error(
                    "SEQ014", f"`{key}:` declares a type, e.g. `{key}: f32[B, T, 16]`", val, None
                )
                continue
            dtok, shape = val.children
            dtype = str(dtok)
            if dtype not in _DTYPES:
                dym = did_you_mean(dtype, list(_DTYPES))
                lw.error("SEQ007", f"unknown dtype `{dtype}`", dtok,
                         f"did you mean `{dym}`?" if dym else "dtypes: " + ", ".join(_DTYPES))  # fmt: skip
                continue
            (in_types if key == "in" else out_types).append(
                (dtype, _shape(lw, shape), lw.span(val))
            )
            continue
        if key == "mask":
            mask = _contract(lw, val, name, None if cond is None else str(cond))
            continue
        if val.data != "ext_dim":
            lw.error("SEQ014", f"`{key}:` takes a " + ("word: `shape: same`" if key == "shape" else "size, e.g. `parts` or `T / parts`"),
                     val, "see docs/custom.md for the clauses of an extern declaration")  # fmt: skip
            continue
        d = _dim(lw, val.children[0])
        if key == "shape":
            if not (d.op == "name" and d.value == "same"):
                lw.error("SEQ014", "`shape:` takes `same` (the output has the input's type)", val,
                         "declare another type with `out: f32[B, T, n]`")  # fmt: skip
                continue
            same = True
        elif key == "outputs":
            n_out = d
        elif key == "inputs":
            if d.op != "int":
                lw.error("SEQ014", "`inputs:` takes an integer", val, "e.g. `inputs: 2`")
                continue
            n_in = d
        else:
            time = d
    if mask is None:
        mask = MaskContract("none", lw.span(name_tok))
    # dimension names: parameters, B and T, and names the `in:` types bind
    bound = {p.name for p in params if p.type == "int"} | {"B", "T"}
    for _, dims, _ in in_types:
        bound |= {str(x.value) for x in dims if x.op == "name"}
    for what, exprs in (
        ("out", [x for _, ds, _ in out_types for x in ds]),
        ("weight", [x for w in weights for x in w.dims]),
        ("time", [time] if time is not None else []),
        ("outputs", [n_out] if n_out is not None else []),
    ):
        for e in exprs:
            for leaf in _dim_names(e):
                if leaf.value not in bound:
                    lw.error("SEQ101", f"`{leaf.value}` is not a size `{name}` knows ({what})", leaf.span,
                             "sizes are integers, int parameters, `B`, `T`, or names an `in:` type binds")  # fmt: skip
    if mask.kind == "split" and n_out is None:
        lw.error("SEQ014", "`mask: split` needs `outputs: n` (how many parts)", mask.span,
                 "e.g. `outputs: parts; time: T / parts; mask: split`")  # fmt: skip
    edef = ExternDef(
        name=name, file=file, params=tuple(params), in_types=tuple(in_types),
        out_types=tuple(out_types), same_shape=same, outputs=n_out, time=time, inputs=n_in,
        mask=mask, weights=tuple(weights), span=lw.span(node), name_span=lw.span(name_tok),
    )  # fmt: skip
    if lw.error_count() == n_err:
        lw.diags.extend(check_extern(edef))
    if lw.error_count() != n_err:
        from dataclasses import replace

        edef = replace(edef, ok=False)
    return edef


def _dim_names(e: DimExpr) -> list[DimExpr]:
    if e.op == "name":
        return [e]
    out: list[DimExpr] = []
    for a in e.args:
        out += _dim_names(a)
    return out


def _contract(lw: Lowering, val: Tree[Token], owner: str, cond: str | None) -> MaskContract:
    sp = lw.span(val)
    if (
        val.data == "ext_dim"
        and isinstance(val.children[0], Tree)
        and val.children[0].data == "d_name"
    ):
        word = str(val.children[0].children[0])
        args: list[Tree[Token] | Token | None] = []
    elif val.data == "ext_call":
        word = str(val.children[0])
        args = [a for a in val.children[1:] if a is not None]
    else:
        lw.error("SEQ014", "`mask:` takes a contract: " + ", ".join(_CONTRACTS), val,
                 "e.g. `mask: propagate` or `mask: consume(required)`")  # fmt: skip
        return MaskContract("none", sp)
    if word not in _CONTRACTS:
        dym = did_you_mean(word, list(_CONTRACTS))
        lw.error("SEQ014", f"unknown mask contract `{word}`", val,
                 f"did you mean `{dym}`?" if dym else "contracts: " + ", ".join(_CONTRACTS))  # fmt: skip
        return MaskContract("none", sp)
    if word == "consume":
        req = False
        for a in args:
            if isinstance(a, Tree) and a.data == "d_name" and str(a.children[0]) == "required":
                req = True
            else:
                lw.error("SEQ014", "`consume` takes only `required`", a if a is not None else val,
                         "write `mask: consume` or `mask: consume(required)`")  # fmt: skip
        return MaskContract("consume", sp, required=req, cond=cond)
    if word == "generate":
        if len(args) != 1 or not (isinstance(args[0], Tree) and args[0].data == "ext_ne"):
            lw.error("SEQ014", "`generate` takes the masking test of its input: `generate(x != 0)`", val,
                     "the mask is true where the input differs from the padding value")  # fmt: skip
            return MaskContract("none", sp)
        _x, num = args[0].children
        assert isinstance(num, Tree)
        v = float(str(num.children[0]))
        if num.data == "ext_negnum":
            v = -v
        return MaskContract("generate", sp, value=v, cond=cond)
    if args:
        lw.error("SEQ014", f"`{word}` takes no arguments", val, f"write `mask: {word}`")
    return MaskContract(word, sp, cond=cond)
