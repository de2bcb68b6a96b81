"""Stage 2: Lark parse tree -> typed IR (``ir.py``).

Lowering is structural only: it flattens pipes into SSA operations, unrolls
``repeat`` blocks, names every layer, and reports constructs that have no IR
form (a layer used as a value, a literal where a tensor belongs). Everything
about argument values, shapes and masks is the checker's job.

Automatic layer names (the keys of weight files) are stable:
``{target}_{stem}`` where ``target`` is the first name the statement assigns
and ``stem`` the Keras snake-case of the layer class (``LSTM`` -> ``lstm``,
``SimpleRNN`` -> ``simple_rnn``); a second layer of the same class in the same
statement gets ``_1``, then ``_2``; inside ``repeat`` the index comes first:
``{target}_r{i}_{stem}``. ``name="..."`` overrides it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from lark import Token, Tree

from .diagnostics import Diagnostic
from .ir import (
    MERGE_FUNCTIONS,
    ApplyOp,
    Arg,
    Decorator,
    DimDecl,
    DropMaskOp,
    InputDecl,
    LayerCall,
    Literal,
    MergeOp,
    Model,
    Op,
    OutputDecl,
    Program,
    Span,
    ValueUse,
)

__all__ = ["lower", "snake_case"]

_DATA_ARGS = ("mask", "initial_state", "training")

#: The most layers one statement may unroll to (``repeat`` blocks multiplied out).
MAX_UNROLLED = 4096


def snake_case(name: str) -> str:
    """Keras' ``to_snake_case``: ``SimpleRNN`` -> ``simple_rnn``."""
    s = re.sub(r"(.)([A-Z][a-z0-9]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", s).lower()


def _span(file: str, node: Tree[Token] | Token) -> Span:
    if isinstance(node, Token):
        return Span(
            file,
            node.line or 1,
            node.column or 1,
            node.end_line or node.line or 1,
            node.end_column or (node.column or 1) + len(str(node)),
        )
    m = node.meta
    if getattr(m, "empty", True):
        return Span(file, 1, 1, 1, 2)
    return Span(file, m.line, m.column, m.end_line, m.end_column)


@dataclass
class _Scope:
    """Per-model naming state."""

    file: str
    user_names: set[str]
    explicit_layer_names: set[str]
    used_layer_names: set[str] = field(default_factory=set)
    used_value_names: set[str] = field(default_factory=set)
    ops: list[Op] = field(default_factory=list)
    diags: list[Diagnostic] = field(default_factory=list)


@dataclass
class _Stmt:
    target: str
    repeat: tuple[int, ...] = ()
    counts: dict[tuple[tuple[int, ...], str], int] = field(default_factory=dict)
    too_long: bool = False  # a repeat exceeded MAX_UNROLLED (reported once)


class _Lowerer:
    def __init__(self, file: str, text: str):
        self.file = file
        self.text = text
        self.diags: list[Diagnostic] = []

    def span(self, node: Tree[Token] | Token) -> Span:
        return _span(self.file, node)

    def error(
        self, code: str, message: str, node: Tree[Token] | Token | Span, hint: str | None = None
    ) -> None:
        span = node if isinstance(node, Span) else self.span(node)
        self.diags.append(Diagnostic.make(code, message, span, hint))

    # ------------------------------------------------------------- program
    def program(self, tree: Tree[Token]) -> Program:
        models = [self.model(child) for child in tree.children if isinstance(child, Tree)]
        return Program(self.file, self.text, tuple(models))

    def model(self, node: Tree[Token]) -> Model:
        name_tok = node.children[0]
        assert isinstance(name_tok, Token)
        stmts = [c for c in node.children[1:] if isinstance(c, Tree)]
        user_names: set[str] = set()
        explicit: set[str] = set()
        referenced: set[str] = set()
        for st in stmts:
            if st.data == "input_decl":
                user_names.add(str(st.children[0]))
            elif st.data == "assign":
                targets = st.children[0]
                assert isinstance(targets, Tree)
                user_names.update(str(t) for t in targets.children)
                for sub in _subtrees(st):
                    if sub.data == "kwarg":
                        key, val = sub.children
                        if str(key) == "name" and isinstance(val, Tree) and val.data == "str_lit":
                            explicit.add(_unquote(str(val.children[0])))
                    elif sub.data == "ref":
                        referenced.add(str(sub.children[0]))
        scope = _Scope(self.file, user_names, explicit)
        inputs: list[InputDecl] = []
        outputs: list[OutputDecl] = []
        bindings: list[tuple[str, Span]] = []
        for st in stmts:
            if st.data == "input_decl":
                inputs.append(self.input_decl(st))
            elif st.data == "output_decl":
                for item in st.children:
                    assert isinstance(item, Tree)
                    out_name = item.children[0]
                    assert isinstance(out_name, Token)
                    outputs.append(
                        OutputDecl(str(out_name), item.children[1] is not None, self.span(item))
                    )
            elif st.data == "assign":
                bindings.extend(self.assign(st, scope))
        return Model(
            name=str(name_tok),
            inputs=tuple(inputs),
            ops=tuple(scope.ops),
            outputs=tuple(outputs),
            span=self.span(node),
            name_span=self.span(name_tok),
            bindings=tuple(bindings),
            referenced=frozenset(referenced),
        )

    # ------------------------------------------------------------- inputs
    def input_decl(self, node: Tree[Token]) -> InputDecl:
        name_tok, type_node, *opts = node.children
        assert isinstance(name_tok, Token) and isinstance(type_node, Tree)
        dtype_tok, kinds, shape = type_node.children
        assert isinstance(dtype_tok, Token) and isinstance(shape, Tree)
        dims = []
        for d in shape.children:
            assert isinstance(d, Tree)
            tok = d.children[0]
            assert isinstance(tok, Token)
            if d.data == "dim_int":
                dims.append(DimDecl(int(tok), self.span(tok)))
            elif str(tok) == "_":
                dims.append(DimDecl(None, self.span(tok)))
            else:
                dims.append(DimDecl(str(tok), self.span(tok)))
        mask_words: tuple[tuple[str, Span], ...] = ()
        if isinstance(kinds, Tree):
            mask_words = tuple(
                (str(t), self.span(t)) for t in kinds.children if isinstance(t, Token)
            )
        is_mask = str(dtype_tok) == "mask"
        if mask_words and not is_mask:
            assert isinstance(kinds, Tree)
            self.error(
                "SEQ006",
                f"only mask inputs take a kind in parentheses, not `{dtype_tok}`",
                kinds,
                "write `mask(post)[B, T]` for a mask input, or remove the parentheses",
            )
        pad: tuple[Arg, ...] | None = None
        pad_span = None
        masked = False
        masked_span = None
        for opt in opts:
            assert isinstance(opt, Tree)
            if opt.data == "pad_opt":
                if pad is not None:
                    self.error("SEQ006", "`pad(...)` given twice", opt, "keep one `pad(...)`")
                pad = self.arglist(opt.children[0])
                pad_span = self.span(opt)
            elif opt.data == "masked_opt":
                masked = True
                masked_span = self.span(opt)
        return InputDecl(
            name=str(name_tok),
            dtype=str(dtype_tok),
            dims=tuple(dims),
            span=self.span(node),
            name_span=self.span(name_tok),
            dtype_span=self.span(dtype_tok),
            is_mask=is_mask,
            mask_words=mask_words,
            pad=pad,
            pad_span=pad_span,
            masked=masked,
            masked_span=masked_span,
        )

    # ------------------------------------------------------------- literals
    def arglist(self, node: Tree[Token] | Token | None) -> tuple[Arg, ...]:
        if node is None or isinstance(node, Token):
            return ()
        out = []
        for a in node.children:
            if isinstance(a, Tree) and a.data == "kwarg":
                key, val = a.children
                assert isinstance(key, Token)
                lit = self.literal(val)
                out.append(Arg(str(key), lit, self.span(a), self.span(key)))
            else:
                assert a is not None
                lit = self.literal(a)
                out.append(Arg(None, lit, lit.span))
        return tuple(out)

    def literal(self, node: Tree[Token] | Token | None, parent: str = "") -> Literal:
        assert node is not None
        sp = self.span(node)
        if isinstance(node, Token):  # pragma: no cover - grammar wraps every token
            return Literal("name", str(node), sp)
        d = node.data
        kids = node.children
        if d == "int_lit":
            return Literal("int", int(str(kids[0])), sp)
        if d == "neg_int":
            return Literal("int", -int(str(kids[0])), sp)
        if d == "float_lit":
            return Literal("float", float(str(kids[0])), sp)
        if d == "neg_float":
            return Literal("float", -float(str(kids[0])), sp)
        if d == "str_lit":
            return Literal("str", _unquote(str(kids[0])), sp)
        if d == "true_lit":
            return Literal("bool", True, sp)
        if d == "false_lit":
            return Literal("bool", False, sp)
        if d == "ref":
            return Literal("name", str(kids[0]), sp)
        if d == "list_lit":
            items = tuple(self.literal(k, parent) for k in kids if k is not None)
            return Literal("list", items, sp)
        if d == "construct":
            ctor = kids[0]
            assert isinstance(ctor, Tree)
            return Literal("layer", self.nested_ctor(ctor, parent), sp)
        self.error(
            "SEQ004",
            "a data expression cannot be a configuration argument",
            node,
            "configuration arguments are literals, names or nested layers; data goes in the call form",
        )
        return Literal("name", "<error>", sp)

    def nested_ctor(self, node: Tree[Token], parent: str) -> LayerCall:
        decos, kind_tok, args = self._ctor_parts(node)
        stem = snake_case(str(kind_tok))
        return LayerCall(
            kind=str(kind_tok),
            name=f"{parent}_{stem}" if parent else stem,
            args=self.arglist(args),
            decorators=decos,
            span=self.span(node),
            kind_span=self.span(kind_tok),
        )

    def _ctor_parts(
        self, node: Tree[Token]
    ) -> tuple[tuple[Decorator, ...], Token, Tree[Token] | None]:
        *deco_nodes, kind_tok, args = node.children
        assert isinstance(kind_tok, Token)
        decos = []
        for dn in deco_nodes:
            assert isinstance(dn, Tree)
            dname, dargs = dn.children
            assert isinstance(dname, Token)
            decos.append(Decorator(str(dname), self.arglist(dargs), self.span(dn)))
        return tuple(decos), kind_tok, args if isinstance(args, Tree) else None

    # ------------------------------------------------------------- statements
    def assign(self, node: Tree[Token], scope: _Scope) -> list[tuple[str, Span]]:
        targets_node, expr = node.children
        assert isinstance(targets_node, Tree)
        targets = [t for t in targets_node.children if isinstance(t, Token)]
        names = tuple(str(t) for t in targets)
        spans = tuple(self.span(t) for t in targets)
        stmt = _Stmt(names[0])
        assert expr is not None
        before = len(scope.ops)
        n_diags = len(self.diags)
        self.value(expr, scope, stmt, results=names, result_spans=spans)
        # pragma: no cover - value() always reports or emits
        if len(scope.ops) == before and len(self.diags) == n_diags:  # pragma: no cover
            self.error("SEQ004", "expected a computation", expr)
        return list(zip(names, spans, strict=True))

    def _layer_name(
        self, scope: _Scope, stmt: _Stmt, kind: str, args: tuple[Arg, ...]
    ) -> tuple[str, bool]:
        for a in args:
            if a.name == "name" and a.value.kind == "str" and isinstance(a.value.value, str):
                name = a.value.value
                scope.used_layer_names.add(name)
                return name, False
        stem = snake_case(kind)
        key = (stmt.repeat, stem)
        n = stmt.counts.get(key, 0)
        stmt.counts[key] = n + 1
        prefix = stmt.target + "".join(f"_r{i}" for i in stmt.repeat)
        base = f"{prefix}_{stem}" + (f"_{n}" if n else "")
        name = base
        k = 1
        while name in scope.used_layer_names or name in scope.explicit_layer_names:
            name = f"{base}_{k}"
            k += 1
        scope.used_layer_names.add(name)
        return name, True

    def _fresh_value(self, scope: _Scope, base: str) -> str:
        name = base
        k = 1
        while name in scope.user_names or name in scope.used_value_names:
            name = f"{base}_out" if k == 1 else f"{base}_out{k}"
            k += 1
        scope.used_value_names.add(name)
        return name

    def layer_call(self, node: Tree[Token], scope: _Scope, stmt: _Stmt) -> LayerCall:
        decos, kind_tok, args_node = self._ctor_parts(node)
        kind = str(kind_tok)
        args = self.arglist(args_node)
        name, auto = self._layer_name(scope, stmt, kind, args)
        # nested layers (Bidirectional(LSTM(..))) are named after their wrapper
        args = tuple(self._rename_nested(a, name) for a in args)
        return LayerCall(
            kind=kind,
            name=name,
            args=args,
            decorators=decos,
            span=self.span(node),
            kind_span=self.span(kind_tok),
            repeat_index=stmt.repeat,
            auto_named=auto,
        )

    def _rename_nested(self, arg: Arg, parent: str) -> Arg:
        lit = arg.value
        if lit.kind == "layer" and isinstance(lit.value, LayerCall):
            inner = lit.value
            new = LayerCall(
                kind=inner.kind,
                name=f"{parent}_{snake_case(inner.kind)}",
                args=tuple(
                    self._rename_nested(a, f"{parent}_{snake_case(inner.kind)}") for a in inner.args
                ),
                decorators=inner.decorators,
                span=inner.span,
                kind_span=inner.kind_span,
            )
            return Arg(arg.name, Literal("layer", new, lit.span), arg.span, arg.name_span)
        return arg

    def value(
        self,
        node: Tree[Token] | Token,
        scope: _Scope,
        stmt: _Stmt,
        results: tuple[str, ...] | None = None,
        result_spans: tuple[Span, ...] = (),
    ) -> ValueUse | None:
        """Lower an expression; return a use of its (single) value.

        With ``results`` the expression is a statement's right-hand side and its
        last operation binds those names.
        """
        sp = self.span(node)
        if isinstance(node, Token):  # pragma: no cover
            self.error("SEQ004", "expected a tensor expression", node)
            return None
        d = node.data
        if d == "ref":
            name = str(node.children[0])
            if results is not None:
                self.error(
                    "SEQ004",
                    f"`{results[0]} = {name}` only renames a value",
                    node,
                    f"use `{name}` directly where `{results[0]}` is needed",
                )
                return None
            return ValueUse(name, sp)
        if d in (
            "int_lit",
            "float_lit",
            "neg_int",
            "neg_float",
            "str_lit",
            "true_lit",
            "false_lit",
            "list_lit",
        ):
            self.error(
                "SEQ004",
                "a literal is not a tensor",
                node,
                "declare an `input`, or pass the literal as a layer's configuration argument",
            )
            return None
        if d == "pipe":
            return self.pipe(node, scope, stmt, results, result_spans)
        if d == "construct":
            ctor = node.children[0]
            assert isinstance(ctor, Tree)
            _, kind_tok, args_node = self._ctor_parts(ctor)
            kind = str(kind_tok)
            if kind in MERGE_FUNCTIONS:
                return self.merge(ctor, kind, args_node, None, scope, stmt, results, result_spans)
            self.error(
                "SEQ003",
                f"`{kind}(...)` constructs a layer but gives it no input",
                ctor,
                f"call it on a value, `{kind}(...)(x)`, or pipe a value into it, `x -> {kind}(...)`",
            )
            return None
        if d == "call":
            ctor, call_args = node.children
            assert isinstance(ctor, Tree)
            return self.call(ctor, call_args, scope, stmt, results, result_spans)
        self.error("SEQ004", "expected a tensor expression", node)  # pragma: no cover
        return None

    def merge(
        self,
        ctor: Tree[Token],
        kind: str,
        args_node: Tree[Token] | None,
        call_args: Tree[Token] | None,
        scope: _Scope,
        stmt: _Stmt,
        results: tuple[str, ...] | None,
        result_spans: tuple[Span, ...],
    ) -> ValueUse | None:
        inputs: list[ValueUse] = []
        config: list[Arg] = []
        ok = True
        value_args = call_args if call_args is not None else args_node
        if call_args is not None:
            config.extend(self.arglist(args_node))
        if value_args is not None:
            for a in value_args.children:
                if isinstance(a, Tree) and a.data == "kwarg":
                    key, val = a.children
                    assert isinstance(key, Token)
                    config.append(Arg(str(key), self.literal(val), self.span(a), self.span(key)))
                else:
                    assert a is not None
                    v = self.value(a, scope, stmt)
                    if v is not None:
                        inputs.append(v)
                    else:
                        ok = False
        name, _ = self._layer_name(scope, stmt, kind, tuple(config))
        if not ok:  # a value argument failed (already reported): no operation, no cascade
            return None
        res = results or (self._fresh_value(scope, name),)
        scope.ops.append(
            MergeOp(kind, name, tuple(inputs), tuple(config), res, self.span(ctor), result_spans)
        )
        return ValueUse(res[0], self.span(ctor))

    def call(
        self,
        ctor: Tree[Token],
        call_args: Tree[Token] | Token | None,
        scope: _Scope,
        stmt: _Stmt,
        results: tuple[str, ...] | None,
        result_spans: tuple[Span, ...],
    ) -> ValueUse | None:
        _, kind_tok, args_node = self._ctor_parts(ctor)
        kind = str(kind_tok)
        ca = call_args if isinstance(call_args, Tree) else None
        if kind in MERGE_FUNCTIONS:
            return self.merge(ctor, kind, args_node, ca, scope, stmt, results, result_spans)
        inputs: list[ValueUse] = []
        mask = None
        init: tuple[ValueUse, ...] | None = None
        init_span = None
        training = None
        ok = True
        for a in ca.children if ca is not None else []:
            if isinstance(a, Tree) and a.data == "kwarg":
                key, val = a.children
                assert isinstance(key, Token) and val is not None
                k = str(key)
                if k == "mask":
                    mask = self.value(val, scope, stmt)
                    ok = ok and mask is not None
                elif k == "initial_state":
                    init_span = self.span(val)
                    items = (
                        [c for c in val.children if c is not None]
                        if isinstance(val, Tree) and val.data == "list_lit"
                        else [val]
                    )
                    uses = [self.value(i, scope, stmt) for i in items]
                    if any(u is None for u in uses):
                        ok = False
                    init = tuple(u for u in uses if u is not None)
                elif k == "training":
                    training = self.literal(val)
                else:
                    self.error(
                        "SEQ206",
                        f"`{k}=` is configuration, not data",
                        a,
                        f"move `{k}=...` into the constructor `{kind}(..., {k}=...)`; "
                        "a call takes only inputs, `mask=`, `initial_state=` and `training=`",
                    )
            else:
                assert a is not None
                v = self.value(a, scope, stmt)
                if v is None:
                    ok = False
                else:
                    inputs.append(v)
        layer = self.layer_call(ctor, scope, stmt)
        if not ok:  # a data argument failed (already reported): no operation, no cascade
            return None
        res = results or (self._fresh_value(scope, layer.name),)
        scope.ops.append(
            ApplyOp(
                layer=layer,
                inputs=tuple(inputs),
                results=res,
                span=self.span(ctor) if ca is None else _join(self.span(ctor), self.span(ca)),
                mask=mask,
                initial_state=init,
                initial_state_span=init_span,
                training=training,
                result_spans=result_spans,
            )
        )
        return ValueUse(res[0], self.span(ctor))

    def pipe(
        self,
        node: Tree[Token],
        scope: _Scope,
        stmt: _Stmt,
        results: tuple[str, ...] | None,
        result_spans: tuple[Span, ...],
    ) -> ValueUse | None:
        head, *stages = node.children
        assert head is not None
        cur = self.value(head, scope, stmt)
        flat = self._flatten_stages([s for s in stages if isinstance(s, Tree)], stmt)
        for i, (stage, rep) in enumerate(flat):
            last = i == len(flat) - 1
            saved = stmt.repeat
            stmt.repeat = rep
            cur = self.stage(
                stage,
                cur,
                scope,
                stmt,
                results if last else None,
                result_spans if last else (),
                not last,
            )
            stmt.repeat = saved
        return cur

    def _flatten_stages(
        self, stages: list[Tree[Token]], stmt: _Stmt
    ) -> list[tuple[Tree[Token], tuple[int, ...]]]:
        out: list[tuple[Tree[Token], tuple[int, ...]]] = []
        for s in stages:
            if s.data == "repeat":
                args = self.arglist(s.children[0])
                body = [c for c in s.children[1:] if isinstance(c, Tree)]
                n = _repeat_count(args)
                if n is None:
                    self.error(
                        "SEQ203",
                        "`repeat(n)` takes one positive integer",
                        s,
                        "write e.g. `repeat(3) { LSTM(64, return_sequences=true) }`",
                    )
                    n = 1
                for i in range(n):
                    saved = stmt.repeat
                    stmt.repeat = saved + (i,)
                    out.extend(self._flatten_stages(body, stmt))
                    stmt.repeat = saved
                    if stmt.too_long or len(out) > MAX_UNROLLED:
                        if not stmt.too_long:  # report once, at the innermost repeat
                            stmt.too_long = True
                            self.error(
                                "SEQ207",
                                f"`repeat({n})` unrolls to more than {MAX_UNROLLED} layers in one statement",
                                s,
                                "use fewer repetitions, or split the stack over several statements",
                            )
                        break
            else:
                out.append((s, stmt.repeat))
        return out

    def stage(
        self,
        node: Tree[Token],
        cur: ValueUse | None,
        scope: _Scope,
        stmt: _Stmt,
        results: tuple[str, ...] | None,
        result_spans: tuple[Span, ...],
        middle: bool,
    ) -> ValueUse | None:
        sp = self.span(node)
        if node.data == "drop_mask":
            if cur is None:
                return None
            res = results or (self._fresh_value(scope, f"{stmt.target}_drop_mask"),)
            scope.ops.append(DropMaskOp(cur, res, sp, result_spans))
            return ValueUse(res[0], sp)
        # a constructor stage
        _, kind_tok, _ = self._ctor_parts(node)
        kind = str(kind_tok)
        if kind in MERGE_FUNCTIONS:
            self.error(
                "SEQ005",
                f"`{kind}` combines several values and cannot be a pipe stage",
                node,
                f"call it on the values: `{kind}(a, b)`",
            )
            return None
        layer = self.layer_call(node, scope, stmt)
        if cur is None:
            return None
        res = results or (self._fresh_value(scope, layer.name),)
        scope.ops.append(
            ApplyOp(
                layer=layer,
                inputs=(cur,),
                results=res,
                span=sp,
                in_pipe_middle=middle,
                result_spans=result_spans,
            )
        )
        return ValueUse(res[0], sp)


def _subtrees(tree: Tree[Token]) -> Iterator[Tree[Token]]:
    """Every subtree, parents first (a plain stack walk; Lark's iter_subtrees
    also deduplicates shared nodes, which a parse tree never has)."""
    stack = [tree]
    while stack:
        t = stack.pop()
        yield t
        stack.extend(c for c in reversed(t.children) if isinstance(c, Tree))


def _repeat_count(args: tuple[Arg, ...]) -> int | None:
    if len(args) != 1 or args[0].name is not None:
        return None
    v = args[0].value
    if v.kind != "int" or not isinstance(v.value, int) or v.value < 1:
        return None
    return v.value


def _join(a: Span, b: Span) -> Span:
    return Span(a.file, a.line, a.col, b.end_line, b.end_col)


def _unquote(s: str) -> str:
    body = s[1:-1]
    return body.encode("utf-8").decode("unicode_escape") if "\\" in body else body


def lower(tree: Tree[Token], file: str, text: str) -> tuple[Program, list[Diagnostic]]:
    lw = _Lowerer(file, text)
    prog = lw.program(tree)
    return prog, lw.diags
