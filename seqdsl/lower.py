"""Stage 2: Lark parse trees -> typed IR (``ir.py``).

Lowering is structural only: it flattens pipes into SSA operations, unrolls
``repeat`` blocks, expands calls of ``layer`` blocks (composites), names every
layer, and reports constructs that have no IR form (a layer used as a value, a
literal where a tensor belongs). Everything about argument values, shapes and
masks is the checker's job.

Automatic layer names (the keys of weight files) are stable:
``{target}_{stem}`` where ``target`` is the first name the statement assigns
and ``stem`` the Keras snake-case of the layer class (``LSTM`` -> ``lstm``,
``SimpleRNN`` -> ``simple_rnn``); a second layer of the same class in the same
statement gets ``_1``, then ``_2``; inside ``repeat`` the index comes first:
``{target}_r{i}_{stem}``. ``name="..."`` overrides it.

A call of a ``layer`` block gets a name by the same rule (``o_encoder`` for
``o, h, c = Encoder(32)(e)``, or its ``name="..."``): that name prefixes every
layer of its body, whose own names follow the rule inside the body:
``o_encoder_h_r0_lstm``. Parameters are substituted where the body names
them, inputs and outputs are wired to the call's values, and the body's own
values get fresh names (``o_encoder_h``). Every span inside an expansion
records the chain of calls (:attr:`Span.via`).

Each ``layer`` block is also lowered once on its own ("dry", with its
parameters as placeholders) where it is defined: that pass reports the body's
name errors and structural mistakes once, finds which blocks it calls (for
the recursion check) and decides whether the block can be expanded at all.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from lark import Token, Tree

from .catalogue import CATALOGUE, MERGES
from .diagnostics import Diagnostic, Related, did_you_mean
from .imports import SourceFile, Sources
from .ir import (
    MERGE_FUNCTIONS,
    ApplyOp,
    Arg,
    BlockInputCheck,
    CellDef,
    Decorator,
    DimDecl,
    DropMaskOp,
    Expansion,
    ExternDef,
    InputDecl,
    LayerBlock,
    LayerCall,
    Literal,
    MergeOp,
    Model,
    Op,
    OutputDecl,
    ParamDecl,
    Program,
    Span,
    ValueUse,
)
from .lower_custom import lower_cell, lower_extern
from .parser import unquote

__all__ = ["lower", "lower_sources", "snake_case", "PARAM_TYPES"]

_DATA_ARGS = ("mask", "initial_state", "training")

#: top-level blocks that define a callable name, and what diagnostics call them
_BLOCK_KINDS = {"layer_block": "layer", "cell_block": "cell", "extern_block": "extern"}
_WHAT = {"layer": "layer block", "cell": "cell block", "extern": "extern layer"}

#: The most layers one statement may unroll to (``repeat`` blocks multiplied out).
MAX_UNROLLED = 4096

#: The most operations one model may expand to (``layer`` blocks multiplied out).
MAX_EXPANDED = 16384

#: The types a ``layer`` block parameter may declare.
PARAM_TYPES = ("int", "float", "bool", "str", "name")

_PARAM_ALIASES = {
    "integer": "int",
    "i32": "int",
    "i64": "int",
    "f32": "float",
    "f64": "float",
    "double": "float",
    "number": "float",
    "boolean": "bool",
    "string": "str",
    "enum": "name",
    "ident": "name",
}

_PARAM_EXPECTS = {
    "int": ("an integer", "write an integer without quotes, e.g. `32`"),
    "float": ("a number", "write a number, e.g. `0.5`"),
    "bool": ("`true` or `false`", "write `true` or `false`"),
    "str": ('a string in quotes, e.g. "encoder"', 'write a string in quotes, e.g. "encoder"'),
    "name": ("a name, e.g. `tanh`", "write a bare name, e.g. `tanh` or `post`"),
}

#: Names a layer block cannot take: built-in layers and merges (from the
#: catalogue), and the pipe keywords.
_RESERVED = ("repeat", "drop_mask")


def snake_case(name: str) -> str:
    """Keras' ``to_snake_case``: ``SimpleRNN`` -> ``simple_rnn``."""
    s = re.sub(r"(.)([A-Z][a-z0-9]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", s).lower()


def _span(file: str, node: Tree[Token] | Token, via: tuple[Expansion, ...] = ()) -> Span:
    if isinstance(node, Token):
        return Span(
            file,
            node.line or 1,
            node.column or 1,
            node.end_line or node.line or 1,
            node.end_column or (node.column or 1) + len(str(node)),
            via,
        )
    m = node.meta
    if getattr(m, "empty", True):
        return Span(file, 1, 1, 1, 2, via)
    return Span(file, m.line, m.column, m.end_line, m.end_column, via)


@dataclass
class _Scope:
    """Per-model naming state."""

    file: str
    user_names: set[str]
    explicit_layer_names: set[str]
    used_layer_names: set[str] = field(default_factory=set)
    used_value_names: set[str] = field(default_factory=set)
    #: the suffix number each ``_fresh_value`` base goes on from (names below it are taken)
    fresh_next: dict[str, int] = field(default_factory=dict)
    ops: list[Op] = field(default_factory=list)
    diags: list[Diagnostic] = field(default_factory=list)
    #: values bound inside expansions (see Model.internal)
    internal: set[str] = field(default_factory=set)
    #: typed block inputs to check (see Model.block_checks)
    checks: list[BlockInputCheck] = field(default_factory=list)
    #: explicit `name=` prefixes of layer-block calls
    prefixes: dict[str, Span] = field(default_factory=dict)
    #: the model passed MAX_EXPANDED operations (reported once)
    too_big: bool = False
    #: expansions so far (numbers the calls of BlockInputCheck)
    expansions: int = 0


@dataclass
class _Block:
    """A ``layer`` block definition and what its definition pass found."""

    name: str
    src: SourceFile
    node: Tree[Token]
    name_span: Span
    span: Span
    params: list[ParamDecl] = field(default_factory=list)
    inputs: list[tuple[str, Span]] = field(default_factory=list)
    typed: dict[str, InputDecl] = field(default_factory=dict)
    outputs: list[tuple[str, Span]] = field(default_factory=list)
    stmts: list[Tree[Token]] = field(default_factory=list)
    #: every name the body's statements assign, in order
    targets: list[str] = field(default_factory=list)
    #: `name="..."` strings inside the body
    explicit_names: list[str] = field(default_factory=list)
    #: (block name, span) of every layer-block call in the body
    calls: list[tuple[str, Span]] = field(default_factory=list)
    header_ok: bool = True
    ok: bool = True
    recursive: bool = False
    #: ``layer``, or ``cell``/``extern`` for the blocks ``lower_custom`` lowers
    what: str = "layer"


@dataclass
class _Frame:
    """Where lowering is: the model, or the body of a block (definition pass or expansion)."""

    file: str
    key: str
    via: tuple[Expansion, ...] = ()
    block: _Block | None = None
    #: prefix of the layer names (the block call's name); "" at model level
    prefix: str = ""
    #: parameter name -> the literal it stands for
    params: dict[str, Literal] = field(default_factory=dict)
    #: body name -> the model's value name
    values: dict[str, str] = field(default_factory=dict)
    #: body names defined so far (and where, for SEQ102)
    defined: dict[str, Span] = field(default_factory=dict)
    used: set[str] = field(default_factory=set)
    #: body output -> the span of the call's result it binds
    result_spans: dict[str, Span] = field(default_factory=dict)
    #: the definition pass: report name errors, expand nothing
    dry: bool = False


@dataclass
class _Stmt:
    target: str
    repeat: tuple[int, ...] = ()
    counts: dict[tuple[tuple[int, ...], str], int] = field(default_factory=dict)
    too_long: bool = False  # a repeat exceeded MAX_UNROLLED (reported once)


class _Lowerer:
    def __init__(self, sources: Sources):
        self.sources = sources
        self.diags: list[Diagnostic] = []
        root = sources.root
        self.frame = _Frame(root.name, root.key)
        #: every layer block that can be called, in definition order
        self.blocks: list[_Block] = []
        #: cell blocks and extern layers, in definition order
        self.customs: list[_Block] = []
        #: file key -> the layer blocks visible there (its own and those it uses)
        self.visible: dict[str, dict[str, _Block]] = {}
        #: files missing some import: an unknown layer there may be from it (not reported)
        self.incomplete: set[str] = set()
        #: failures that report nothing (already reported elsewhere)
        self.silent = 0
        #: configuration literals that were rejected (the layer is then not made)
        self.bad_literals = 0

    def span(self, node: Tree[Token] | Token) -> Span:
        return _span(self.frame.file, node, self.frame.via)

    def error(
        self,
        code: str,
        message: str,
        node: Tree[Token] | Token | Span,
        hint: str | None = None,
        related: Sequence[Related] = (),
    ) -> None:
        span = node if isinstance(node, Span) else self.span(node)
        self.diags.append(Diagnostic.make(code, message, span, hint, related))

    def error_count(self) -> int:
        return sum(1 for d in self.diags if d.is_error)

    def _progress(self, scope: _Scope) -> int:
        return len(scope.ops) + len(self.diags) + self.silent

    def _fail(self) -> None:
        self.silent += 1

    # ------------------------------------------------------------- program
    def program(self) -> Program:
        src = self.sources
        own: dict[str, dict[str, _Block]] = {}
        for key, f in src.files.items():
            if f.tree is not None:
                own[key] = self.collect_blocks(f)
        for key in src.files:
            self.namespace(key, own)
        for b in self.blocks:
            self.block_header(b)
        for b in self.blocks:
            self.block_body(b)
        self.find_cycles()
        cells: dict[str, CellDef] = {}
        externs: dict[str, ExternDef] = {}
        for b in self.customs:
            self.frame = _Frame(b.src.name, b.src.key)
            if b.what == "cell":
                cells.setdefault(b.name, lower_cell(self, b.node, b.src.name))
            else:
                externs.setdefault(b.name, lower_extern(self, b.node, b.src.name))
        python_modules = tuple(
            dict.fromkeys(u.path for f in src.files.values() for u in f.uses if u.python)
        )
        root = src.root
        assert root.tree is not None
        self.frame = _Frame(root.name, root.key)
        models = [
            self.model(child)
            for child in root.tree.children
            if isinstance(child, Tree) and child.data == "model"
        ]
        blocks = tuple(
            LayerBlock(
                name=b.name,
                file=b.src.name,
                params=tuple(b.params),
                inputs=tuple(n for n, _ in b.inputs),
                outputs=tuple(n for n, _ in b.outputs),
                span=b.span,
                name_span=b.name_span,
                ok=b.ok and not b.recursive,
            )
            for b in self.blocks
        )
        return Program(
            root.name, root.text, tuple(models), blocks, src.texts(), cells, externs, python_modules
        )

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
                explicit.update(_explicit_names(st))
                for sub in _subtrees(st):
                    if sub.data == "ref":
                        referenced.add(str(sub.children[0]))
        scope = _Scope(self.frame.file, user_names, explicit)
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
            block_checks=tuple(scope.checks),
            internal=frozenset(scope.internal),
        )

    # ------------------------------------------------------------- layer blocks: definitions
    def collect_blocks(self, f: SourceFile) -> dict[str, _Block]:
        """The layer blocks a file defines (SEQ109 for built-in names, SEQ110 for duplicates)."""
        assert f.tree is not None
        self.frame = _Frame(f.name, f.key)
        out: dict[str, _Block] = {}
        for node in f.tree.children:
            if not (isinstance(node, Tree) and node.data in _BLOCK_KINDS):
                continue
            what = _BLOCK_KINDS[node.data]
            name_tok = node.children[0]
            assert isinstance(name_tok, Token)
            name = str(name_tok)
            nspan = self.span(name_tok)
            if name in CATALOGUE or name in MERGES or name in _RESERVED:
                self.error(
                    "SEQ109",
                    f"{_WHAT[what]} `{name}` has the name of a built-in "
                    + (
                        "merge function"
                        if name in MERGES
                        else "keyword"
                        if name in _RESERVED
                        else "layer"
                    ),
                    nspan,
                    f"rename it, e.g. `My{name[:1].upper()}{name[1:]}`: a call `{name}(...)` "
                    f"always means the built-in",
                )
                continue
            if name in out:
                self.error(
                    "SEQ110",
                    f"`{name}` is defined twice in this file",
                    nspan,
                    "rename one of them, or delete the copy",
                    [Related(out[name].name_span, "first defined here")],
                )
                continue
            b = _Block(name, f, node, nspan, self.span(node), what=what)
            out[name] = b
            (self.blocks if what == "layer" else self.customs).append(b)
        return out

    def namespace(self, key: str, own: dict[str, dict[str, _Block]]) -> dict[str, _Block]:
        """The blocks visible in a file: its own, then those of each file it uses (SEQ112)."""
        if key in self.visible:
            return self.visible[key]
        f = self.sources.files[key]
        ns = dict(own.get(key, {}))
        self.visible[key] = ns  # the use graph has no cycle left: never read half-built
        origin: dict[str, str | None] = {n: None for n in ns}  # None: this file
        incomplete = f.tree is None
        for u in f.uses:
            if u.python:
                continue
            if u.target is None:
                incomplete = True
                continue
            sub = self.namespace(u.target, own)
            incomplete = incomplete or u.target in self.incomplete
            for n, b in sub.items():
                prev = ns.get(n)
                if prev is None:
                    ns[n] = b
                    origin[n] = u.path
                    continue
                if prev is b:
                    continue
                first = origin[n]
                where = "defined in this file" if first is None else f'from `use "{first}"`'
                self.frame = _Frame(f.name, f.key)
                self.error(
                    "SEQ112",
                    f'`use "{u.path}"` brings in a layer block `{n}` that clashes with '
                    f"the `{n}` {where}",
                    u.span,
                    "rename one of the two blocks: the layer blocks of a file and of the "
                    "files it uses share one namespace",
                    [
                        Related(prev.name_span, f"`{n}` defined here"),
                        Related(b.name_span, f"and `{n}` defined here"),
                    ],
                )
        if incomplete:
            self.incomplete.add(key)
        return ns

    def block_header(self, b: _Block) -> None:
        """Parameters, inputs, outputs and the names the body assigns."""
        n_err = self.error_count()
        self.frame = _Frame(b.src.name, b.src.key, block=b)
        declared: dict[str, Span] = {}

        def declare(name: str, span: Span, what: str) -> bool:
            if name in declared:
                self.error(
                    "SEQ102",
                    f"`{name}` is already declared in layer block `{b.name}`",
                    span,
                    f"give the {what} another name: parameters and inputs share the block's names",
                    [Related(declared[name], "first declared here")],
                )
                return False
            declared[name] = span
            return True

        params_node = b.node.children[1]
        for pn in params_node.children if isinstance(params_node, Tree) else ():
            if not isinstance(pn, Tree):
                continue
            ptok, ttok, dnode = pn.children
            assert isinstance(ptok, Token) and isinstance(ttok, Token)
            pname, ptype = str(ptok), str(ttok)
            pspan = self.span(ptok)
            if not declare(pname, pspan, "parameter"):
                continue
            if pname == "name":
                self.error(
                    "SEQ010",
                    "`name` cannot be a parameter: `name=` on a call names the block's layers",
                    pspan,
                    "call the parameter something else, e.g. `label`",
                )
                continue
            if ptype not in PARAM_TYPES:
                alt = _PARAM_ALIASES.get(ptype) or did_you_mean(ptype, PARAM_TYPES)
                self.error(
                    "SEQ010",
                    f"unknown parameter type `{ptype}`",
                    ttok,
                    f"did you mean `{alt}`?"
                    if alt
                    else "parameter types are " + ", ".join(PARAM_TYPES),
                )
            default = None
            if dnode is not None:
                lit = self.literal(dnode)
                if not (lit.kind == "name" and lit.value == "<error>"):  # else reported
                    default = self.convert_param(b.name, pname, ptype, lit)
            b.params.append(ParamDecl(pname, ptype, default, pspan))
        stmts = [c for c in b.node.children[2:] if isinstance(c, Tree)]
        for st in stmts:
            if st.data == "block_input":
                name_tok, type_node, *opts = st.children
                assert isinstance(name_tok, Token)
                ispan = self.span(name_tok)
                if not declare(str(name_tok), ispan, "input"):
                    continue
                for opt in opts:
                    assert isinstance(opt, Tree)
                    word = "pad(...)" if opt.data == "pad_opt" else "masked"
                    self.error(
                        "SEQ010",
                        f"a layer block's input takes no `{word}`",
                        opt,
                        "declare padding on the model's inputs: a mask flows into the block "
                        "with its value",
                    )
                b.inputs.append((str(name_tok), ispan))
                if isinstance(type_node, Tree):
                    decl = self.block_input_type(st)
                    if decl is not None:
                        b.typed[str(name_tok)] = decl
            elif st.data == "output_decl":
                for item in st.children:
                    assert isinstance(item, Tree)
                    otok = item.children[0]
                    assert isinstance(otok, Token)
                    ospan = self.span(otok)
                    first = next((s for n, s in b.outputs if n == str(otok)), None)
                    if first is not None:
                        self.error(
                            "SEQ107",
                            f"`{otok}` is output twice",
                            ospan,
                            "list each output once",
                            [Related(first, "first output here")],
                        )
                        continue
                    if item.children[1] is not None:
                        self.error(
                            "SEQ010",
                            "`with mask` is for a model's outputs",
                            item.children[1],
                            "remove `with mask`: a block's outputs keep their masks",
                        )
                    b.outputs.append((str(otok), ospan))
            elif st.data == "assign":
                b.stmts.append(st)
                targets = st.children[0]
                assert isinstance(targets, Tree)
                b.targets.extend(str(t) for t in targets.children)
                b.explicit_names.extend(_explicit_names(st))
        missing = [w for w, have in (("input", b.inputs), ("output", b.outputs)) if not have]
        if missing:
            hints = {
                "input": "declare what it takes with `input x` (the type is optional)",
                "output": "list what it gives with `output y` at the end",
            }
            self.error(
                "SEQ010",
                f"layer block `{b.name}` declares no " + " and no ".join(missing),
                b.name_span,
                "; ".join(hints[w] for w in missing),
            )
        b.header_ok = self.error_count() == n_err
        b.ok = b.header_ok

    def block_input_type(self, node: Tree[Token]) -> InputDecl | None:
        """The declared type of a block input (checked at each call), or None if it is wrong."""
        n_err = self.error_count()
        decl = self.input_decl(node)
        if decl.is_mask:
            if len(decl.dims) != 2:
                self.error(
                    "SEQ006",
                    f"a mask input is `[B, T]`, got {len(decl.dims)} dimension(s)",
                    decl.dtype_span,
                    "write `mask[B, T]`",
                )
        elif decl.dtype not in ("f32", "f64", "i32", "i64", "bool"):
            alias = {"float32": "f32", "float64": "f64", "int32": "i32", "int64": "i64"}
            alt = alias.get(decl.dtype) or did_you_mean(
                decl.dtype, ("f32", "f64", "i32", "i64", "bool", "mask")
            )
            self.error(
                "SEQ007",
                f"unknown dtype `{decl.dtype}`",
                decl.dtype_span,
                f"did you mean `{alt}`?" if alt else "dtypes are f32, f64, i32, i64, bool and mask",
            )
        if decl.mask_words:
            self.error(
                "SEQ010",
                "a layer block's mask input takes no kind",
                decl.mask_words[0][1],
                "write `mask[B, T]`: the kind comes with the value passed at the call",
            )
        for d in decl.dims:
            if isinstance(d.value, int) and d.value < 1:
                self.error(
                    "SEQ006", "dimensions are positive", d.span, "use a positive size or a symbol"
                )
        return decl if self.error_count() == n_err else None

    def block_body(self, b: _Block) -> None:
        """The definition pass over the body: names, structure, calls (no expansion)."""
        n_err = self.error_count()
        fr = _Frame(b.src.name, b.src.key, block=b, dry=True)
        fr.params = {p.name: Literal("param", p.name, p.span) for p in b.params}
        for name, span in b.inputs:
            fr.values[name] = name
            fr.defined[name] = span
        for t in b.targets:
            fr.values[t] = t
        self.frame = fr
        scope = _Scope(b.src.name, set(), set())
        failed: set[str] = set()  # assigned by a statement with an error: not "unused"
        for st in b.stmts:
            n = self.error_count()
            self.assign(st, scope)
            if self.error_count() > n:
                targets = st.children[0]
                assert isinstance(targets, Tree)
                failed.update(str(t) for t in targets.children)
        inputs = {n for n, _ in b.inputs}
        for o, ospan in b.outputs:
            fr.used.add(o)
            if o in fr.params:
                self.error(
                    "SEQ010",
                    f"`{o}` is a parameter of `{b.name}`, not a value it computes",
                    ospan,
                    "output a value that a statement of the block assigns",
                )
            elif o in inputs:
                self.error(
                    "SEQ010",
                    f"`{o}` is an input of `{b.name}`; a block outputs values it computes",
                    ospan,
                    "output a value that a statement assigns, or use the input directly "
                    "at the call site",
                )
            elif o not in fr.defined:
                dym = did_you_mean(o, [n for n in fr.defined if n not in inputs])
                self.error(
                    "SEQ101",
                    f"`{o}` is not defined in layer block `{b.name}`",
                    ospan,
                    f"did you mean `{dym}`?" if dym else "assign it in the block before `output`",
                )
        for name, span in fr.defined.items() if b.outputs else ():
            if name not in fr.used and name not in failed and not name.startswith("_"):
                self.error(
                    "SEQ802",
                    f"`{name}` is never used in layer block `{b.name}`",
                    span,
                    f"use it, or rename it `_{name}` to silence this",
                )
        b.ok = b.header_ok and self.error_count() == n_err

    def find_cycles(self) -> None:
        """SEQ111 for every cycle of layer-block calls; blocks on a cycle are never expanded."""
        edges: dict[int, list[tuple[_Block, Span]]] = {}
        for b in self.blocks:
            ns = self.visible.get(b.src.key, {})
            edges[id(b)] = [(ns[n], sp) for n, sp in b.calls if n in ns]
        on_cycle: set[int] = set()
        for b in self.blocks:
            if id(b) in on_cycle:
                continue
            path = _path_back(b, edges)
            if path is None:
                continue
            on_cycle.add(id(b))
            on_cycle.update(id(t) for t, _ in path)
            names = " -> ".join([b.name, *(t.name for t, _ in path)])
            self.frame = _Frame(b.src.name, b.src.key)
            self.error(
                "SEQ111",
                f"layer block `{b.name}` calls itself"
                if len(path) == 1
                else f"layer blocks call each other in a cycle: {names}",
                path[0][1],
                "a layer block expands into its body, so it cannot contain itself; "
                "stack copies with `repeat(n) { ... }` instead",
            )
        for b in self.blocks:
            b.recursive = id(b) in on_cycle

    def convert_param(self, block: str, pname: str, ptype: str, lit: Literal) -> Literal | None:
        """``lit`` as a value of a parameter of type ``ptype`` (SEQ203 when it is not one)."""
        k = lit.kind
        if k == "param" or ptype not in PARAM_TYPES:
            return lit
        if ptype == "int" and k == "int":
            return lit
        if ptype == "float" and k in ("int", "float"):
            assert isinstance(lit.value, (int, float))
            try:
                return Literal("float", float(lit.value), lit.span)
            except OverflowError:
                self.error(
                    "SEQ207",
                    f"{block}: `{pname}` must be a finite number",
                    lit.span,
                    "numbers are 64-bit floats: write a value below 1e308",
                )
                return None
        if (ptype, k) in (("bool", "bool"), ("str", "str"), ("name", "name"), ("name", "str")):
            return lit
        expected, hint = _PARAM_EXPECTS[ptype]
        text = lit.describe()
        self.error(
            "SEQ203",
            f"{block}: `{pname}` expects {expected}, got `{text if len(text) <= 24 else text[:20] + '...'}`",
            lit.span,
            hint,
        )
        return None

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
            return Literal("str", unquote(str(kids[0])), sp)
        if d == "true_lit":
            return Literal("bool", True, sp)
        if d == "false_lit":
            return Literal("bool", False, sp)
        if d == "ref":
            name = str(kids[0])
            bound = self.frame.params.get(name)
            if bound is not None:  # a layer block's parameter: its value, located here
                self.frame.used.add(name)
                return Literal(bound.kind, bound.value, sp)
            return Literal("name", name, sp)
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
        kind = str(kind_tok)
        stem = snake_case(kind)
        if self.block_for(kind) is not None:
            self.error(
                "SEQ203",
                f"`{kind}` is a layer block; it cannot be the argument of another layer",
                kind_tok,
                f"call it on a value instead: `{kind}(...)(x)`",
            )
            self.bad_literals += 1
        elif self.frame.dry and kind not in CATALOGUE and kind not in MERGES:
            self.unknown_kind(kind, kind_tok)
            self.bad_literals += 1
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
        local = tuple(str(t) for t in targets)
        spans = tuple(self.span(t) for t in targets)
        fr = self.frame
        names, rspans = local, spans
        if fr.block is not None:  # a layer block's body: its names map to the model's
            if fr.dry:
                for t, sp in zip(local, spans, strict=True):
                    prev = fr.defined.get(t)
                    if prev is None and t in fr.params:
                        prev = fr.params[t].span
                    if prev is not None:
                        self.error(
                            "SEQ102",
                            f"`{t}` is already defined in layer block `{fr.block.name}`",
                            sp,
                            "names are single-assignment: pick a new name",
                            [Related(prev, "first defined here")],
                        )
            names = tuple(fr.values.get(t, t) for t in local)
            rspans = tuple(fr.result_spans.get(t, sp) for t, sp in zip(local, spans, strict=True))
        stmt = _Stmt(local[0])
        assert expr is not None
        before = self._progress(scope)
        self.value(expr, scope, stmt, results=names, result_spans=rspans)
        if self._progress(scope) == before:  # pragma: no cover - value() always reports or emits
            self.error("SEQ004", "expected a computation", expr)
        if fr.block is not None:
            for t, sp in zip(local, spans, strict=True):
                fr.defined.setdefault(t, sp)
        return list(zip(names, spans, strict=True))

    def _layer_name(
        self, scope: _Scope, stmt: _Stmt, kind: str, args: tuple[Arg, ...]
    ) -> tuple[str, bool]:
        """The layer's name and whether it is automatic; inside a block, prefixed by the call's."""
        for a in args:
            if a.name == "name" and a.value.kind == "str" and isinstance(a.value.value, str):
                name = self._prefixed(a.value.value)
                scope.used_layer_names.add(name)
                return name, False
        stem = snake_case(kind)
        key = (stmt.repeat, stem)
        n = stmt.counts.get(key, 0)
        stmt.counts[key] = n + 1
        prefix = self._prefixed(stmt.target) + "".join(f"_r{i}" for i in stmt.repeat)
        base = f"{prefix}_{stem}" + (f"_{n}" if n else "")
        name = base
        k = 1
        while name in scope.used_layer_names or name in scope.explicit_layer_names:
            name = f"{base}_{k}"
            k += 1
        scope.used_layer_names.add(name)
        return name, True

    def _prefixed(self, name: str) -> str:
        return f"{self.frame.prefix}_{name}" if self.frame.prefix else name

    def _fresh_value(self, scope: _Scope, base: str) -> str:
        # names are only ever added, so the search goes on where the last one for
        # this base stopped: linear, not quadratic, in the copies of a `repeat`
        k = scope.fresh_next.get(base, 0)
        name = base if k == 0 else (f"{base}_out" if k == 1 else f"{base}_out{k}")
        while name in scope.user_names or name in scope.used_value_names:
            k += 1
            name = f"{base}_out" if k == 1 else f"{base}_out{k}"
        scope.fresh_next[base] = k + 1
        scope.used_value_names.add(name)
        return name

    def layer_call(self, node: Tree[Token], scope: _Scope, stmt: _Stmt) -> LayerCall | None:
        """The constructor of a built-in layer; None when a configuration literal was rejected."""
        decos, kind_tok, args_node = self._ctor_parts(node)
        kind = str(kind_tok)
        bad = self.bad_literals
        args = self.arglist(args_node)
        name, auto = self._layer_name(scope, stmt, kind, args)
        if self.bad_literals != bad:
            return None
        if not auto and self.frame.prefix:  # the prefixed name is the layer's name
            args = tuple(
                Arg(a.name, Literal("str", name, a.value.span), a.span, a.name_span)
                if a.name == "name"
                else a
                for a in args
            )
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
                    f"`{stmt.target} = {name}` only renames a value",
                    node,
                    f"use `{name}` directly where `{stmt.target}` is needed",
                )
                return None
            return self.ref(name, node, sp)
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

    def ref(self, name: str, node: Tree[Token], sp: Span) -> ValueUse | None:
        """A use of a value; inside a block, resolved to the model's value (or reported)."""
        fr = self.frame
        if fr.block is None:
            return ValueUse(name, sp)
        if name in fr.params:
            if fr.dry:
                self.error(
                    "SEQ004",
                    f"`{name}` is a parameter of `{fr.block.name}`, not a tensor",
                    node,
                    "values come into a layer block through its `input`s; "
                    "parameters configure its layers",
                )
            self._fail()
            return None
        if name not in fr.defined:
            if fr.dry:
                later = name in fr.block.targets
                dym = None if later else did_you_mean(name, list(fr.defined))
                self.error(
                    "SEQ101",
                    f"`{name}` is not defined {'yet ' if later else ''}in layer block `{fr.block.name}`",
                    node,
                    "statements run in order: define it before this use"
                    if later
                    else f"did you mean `{dym}`?"
                    if dym
                    else "declare it with `input` in the block, or assign it before use",
                )
            self._fail()
            return None
        fr.used.add(name)
        return ValueUse(fr.values[name], sp)

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
        block = self.block_for(kind)
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
                if block is not None and k in _DATA_ARGS:
                    self.error(
                        "SEQ208",
                        f"layer block `{kind}` takes no `{k}=`",
                        a,
                        f"pass the values it needs as its inputs, in order: "
                        f"`{kind}(...)({', '.join(n for n, _ in block.inputs)})`",
                    )
                    ok = False
                elif k == "mask":
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
        span = self.span(ctor) if ca is None else _join(self.span(ctor), self.span(ca))
        if block is not None:
            return self.composite(ctor, block, inputs, ok, scope, stmt, results, result_spans, span)
        if self.unknown_kind(kind, kind_tok):
            return None
        layer = self.layer_call(ctor, scope, stmt)
        if not ok or layer is None:  # a data argument failed (already reported): no cascade
            return None
        res = results or (self._fresh_value(scope, layer.name),)
        scope.ops.append(
            ApplyOp(
                layer=layer,
                inputs=tuple(inputs),
                results=res,
                span=span,
                mask=mask,
                initial_state=init,
                initial_state_span=init_span,
                training=training,
                result_spans=result_spans,
            )
        )
        return ValueUse(res[0], self.span(ctor))

    # ------------------------------------------------------------- layer blocks: calls
    def block_for(self, kind: str) -> _Block | None:
        """The layer block a constructor names here, if any (built-ins are never blocks)."""
        b = self.visible.get(self.frame.key, {}).get(kind)
        return b if b is not None and b.what == "layer" else None

    def unknown_kind(self, kind: str, kind_tok: Token) -> bool:
        """Handle a constructor of no built-in layer and no block; True if it was handled.

        In a block's definition pass it is reported here (SEQ103); in a file whose
        imports failed it may come from the missing file (nothing more is said);
        when the likely fix is a layer block, it is reported here with that hint.
        Otherwise the checker reports it, as for any model."""
        if kind in CATALOGUE or kind in MERGES:
            return False
        custom = self.visible.get(self.frame.key, {}).get(kind)
        if custom is not None and custom.what != "layer":  # a cell or extern: the checker's
            return False
        if self.frame.key in self.incomplete:
            self._fail()
            return True
        blocks = self.visible.get(self.frame.key, {})
        dym = did_you_mean(kind, [*CATALOGUE, *MERGES, *blocks])
        if not self.frame.dry and dym not in blocks:
            return False
        self.error(
            "SEQ103",
            f"unknown layer `{kind}`",
            kind_tok,
            f"did you mean `{dym}`?" if dym else "see `docs/language.md` for the built-in layers",
        )
        return True

    def composite(
        self,
        ctor: Tree[Token],
        block: _Block,
        inputs: list[ValueUse],
        inputs_ok: bool,
        scope: _Scope,
        stmt: _Stmt,
        results: tuple[str, ...] | None,
        result_spans: tuple[Span, ...],
        call_span: Span,
        middle: bool = False,
        pipe: bool = False,
    ) -> ValueUse | None:
        """A call of a layer block: arguments bound, then its body expanded in place."""
        fr = self.frame
        decos, kind_tok, args_node = self._ctor_parts(ctor)
        kspan = self.span(kind_tok)
        ok = inputs_ok
        for d in decos:
            self.error(
                "SEQ009",
                f"`@{d.name}` applies to built-in layers, not to the layer block `{block.name}`",
                d.span,
                f"put the decorator on the layers inside `{block.name}`",
            )
            ok = False
        bad = self.bad_literals
        args = self.arglist(args_node)
        ok = ok and self.bad_literals == bad
        if not block.header_ok:  # its definition is wrong (reported there)
            self._fail()
            return None
        bound = self.bind_params(block, args, kspan)
        ok = ok and bound is not None
        prefix, auto = self._layer_name(scope, stmt, block.name, args)
        if not auto and not fr.dry:
            name_arg = next(a for a in args if a.name == "name")
            prev = scope.prefixes.get(prefix)
            if prev is not None:
                self.error(
                    "SEQ104",
                    f"two calls of layer blocks are named `{prefix}`",
                    name_arg.span,
                    "the name prefixes the names of the block's layers: make it unique",
                    [Related(prev, "first used here")],
                )
                ok = False
            else:
                scope.prefixes[prefix] = name_arg.span
        names_in = ", ".join(n for n, _ in block.inputs)
        n_in, n_out = len(block.inputs), len(block.outputs)
        if pipe and n_in != 1:
            self.error(
                "SEQ208",
                f"layer block `{block.name}` takes {n_in} inputs, so it cannot be a pipe stage",
                kspan,
                f"call it on its inputs: `{block.name}(...)({names_in})`",
            )
            ok = False
        elif not pipe and inputs_ok and len(inputs) != n_in:
            self.error(
                "SEQ208",
                f"layer block `{block.name}` takes {n_in} input(s) ({names_in}), got {len(inputs)}",
                call_span,
                f"pass one value per input, in order: `{block.name}(...)({names_in})`",
            )
            ok = False
        outs = ", ".join(n for n, _ in block.outputs)
        if results is not None and len(results) != n_out:
            self.error(
                "SEQ306",
                f"layer block `{block.name}` gives {n_out} result(s), "
                f"but {len(results)} name(s) are assigned",
                result_spans[0] if result_spans else call_span,
                f"write {n_out} name(s) on the left: `{outs} = ...`",
            )
            ok = False
        elif results is None and n_out != 1:
            self.error(
                "SEQ306",
                f"layer block `{block.name}` gives {n_out} results, so it must end the pipe"
                if middle
                else f"layer block `{block.name}` gives {n_out} results",
                kspan,
                f"assign its results to names, `{outs} = ...`, then continue from one of them",
            )
            ok = False
        if fr.dry:
            block_calls = fr.block.calls if fr.block is not None else []
            block_calls.append((block.name, kspan))
            self._fail()
            return None
        if not ok or bound is None or not block.ok or block.recursive or scope.too_big:
            self._fail()
            return None
        if len(scope.ops) >= MAX_EXPANDED:
            scope.too_big = True
            self.error(
                "SEQ207",
                f"the model expands to more than {MAX_EXPANDED} operations",
                kspan,
                "call fewer or smaller layer blocks: `repeat` around a block that itself "
                "repeats multiplies the layers",
            )
            return None
        return self.expand(block, bound, prefix, inputs, results, result_spans, call_span, scope)

    def bind_params(
        self, block: _Block, args: Sequence[Arg], span: Span
    ) -> dict[str, Literal] | None:
        """The call's arguments bound to the block's parameters (SEQ201/203/204/205), or None."""
        ok = True
        out: dict[str, Literal] = {}
        given: dict[str, Span] = {}
        params = {p.name: p for p in block.params}
        pos = 0
        for a in args:
            if a.name == "name":
                v = a.value
                if v.kind == "param":
                    continue
                if v.kind != "str" or not v.value or any(ch in str(v.value) for ch in "/. "):
                    self.error(
                        "SEQ203",
                        f"`name=` of a layer block call expects a layer name, got `{v.describe()}`",
                        v.span,
                        'write a string of letters, digits and `_`, e.g. name="encoder"',
                    )
                    ok = False
                continue
            if a.name is None:
                if pos >= len(block.params):
                    self.error(
                        "SEQ205",
                        f"{block.name} takes {len(block.params)} positional argument(s), got more",
                        a.span,
                        f"its parameters: {', '.join(params) or 'none'}",
                    )
                    ok = False
                    continue
                p = block.params[pos]
                pos += 1
            else:
                found = params.get(a.name)
                if found is None:
                    dym = did_you_mean(a.name, list(params))
                    self.error(
                        "SEQ201",
                        f"layer block {block.name} has no parameter `{a.name}`",
                        a.name_span or a.span,
                        f"did you mean `{dym}`?"
                        if dym
                        else f"its parameters: {', '.join(params) or 'none'}",
                    )
                    ok = False
                    continue
                p = found
            if p.name in given:
                self.error(
                    "SEQ205",
                    f"{block.name}: argument `{p.name}` given twice",
                    a.name_span or a.span,
                    "keep one",
                    [Related(given[p.name], "first given here")],
                )
                ok = False
                continue
            given[p.name] = a.span
            lit = self.convert_param(block.name, p.name, p.type, a.value)
            if lit is None:
                ok = False
                continue
            out[p.name] = lit
        for p in block.params:
            if p.name in out or p.name in given:
                continue
            if p.default is None:
                if ok:
                    self.error(
                        "SEQ204",
                        f"{block.name} needs the argument `{p.name}`",
                        span,
                        f"add `{p.name}=...` ({p.type})",
                    )
                ok = False
            else:
                out[p.name] = p.default
        return out if ok else None

    def expand(
        self,
        block: _Block,
        bound: dict[str, Literal],
        prefix: str,
        inputs: list[ValueUse],
        results: tuple[str, ...] | None,
        result_spans: tuple[Span, ...],
        call_span: Span,
        scope: _Scope,
    ) -> ValueUse | None:
        """The body's statements, lowered into the model with the call's names and values."""
        parent = self.frame
        via = (*parent.via, Expansion(block.name, replace(call_span, via=()), prefix))
        fr = _Frame(block.src.name, block.src.key, via, block, prefix, dict(bound))
        for (name, span), use in zip(block.inputs, inputs, strict=True):
            fr.values[name] = use.name
            fr.defined[name] = span
        if results is None:
            outs = tuple(self._fresh_value(scope, f"{prefix}_{o}") for o, _ in block.outputs)
            scope.internal.update(outs)
        else:
            outs = results
            fr.result_spans = {o: s for (o, _), s in zip(block.outputs, result_spans, strict=False)}
        for (o, _), r in zip(block.outputs, outs, strict=True):
            fr.values[o] = r
        for t in block.targets:
            if t not in fr.values:
                fr.values[t] = self._fresh_value(scope, f"{prefix}_{t}")
                scope.internal.add(fr.values[t])
        scope.explicit_layer_names.update(f"{prefix}_{n}" for n in block.explicit_names)
        start = len(scope.ops)
        scope.expansions += 1
        call = scope.expansions
        self.frame = fr
        try:
            for st in block.stmts:
                self.assign(st, scope)
        finally:
            self.frame = parent
        for (name, _), use in zip(block.inputs, inputs, strict=True):
            decl = block.typed.get(name)
            if decl is not None:
                scope.checks.append(
                    BlockInputCheck(block.name, use, decl, start, len(scope.ops), call)
                )
        return ValueUse(outs[0], call_span)

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
                if self.frame.dry and any(a.value.kind == "param" for a in args):
                    n = 1  # a parameter: checked at each expansion
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
            res = results or (self._fresh_value(scope, f"{self._prefixed(stmt.target)}_drop_mask"),)
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
        block = self.block_for(kind)
        if block is not None:
            inputs = [cur] if cur is not None else []
            return self.composite(
                node, block, inputs, cur is not None, scope, stmt, results, result_spans, sp,
                middle=middle, pipe=True,
            )  # fmt: skip
        if self.unknown_kind(kind, kind_tok):
            return None
        layer = self.layer_call(node, scope, stmt)
        if cur is None or layer is None:
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
    return replace(a, end_line=b.end_line, end_col=b.end_col)


def _explicit_names(stmt: Tree[Token]) -> list[str]:
    """The ``name="..."`` strings of a statement."""
    out = []
    for sub in _subtrees(stmt):
        if sub.data == "kwarg":
            key, val = sub.children
            if str(key) == "name" and isinstance(val, Tree) and val.data == "str_lit":
                out.append(unquote(str(val.children[0])))
    return out


def _path_back(
    start: _Block, edges: dict[int, list[tuple[_Block, Span]]]
) -> list[tuple[_Block, Span]] | None:
    """The shortest chain of calls from ``start`` back to itself (breadth first), or None."""
    prev: dict[int, tuple[int, _Block, Span]] = {}
    queue = [start]
    seen = {id(start)}
    while queue:
        nxt = []
        for b in queue:
            for t, sp in edges.get(id(b), ()):
                if t is start:
                    path = [(t, sp)]
                    cur = id(b)
                    while cur != id(start):
                        p, blk, psp = prev[cur]
                        path.append((blk, psp))
                        cur = p
                    return list(reversed(path))
                if id(t) not in seen:
                    seen.add(id(t))
                    prev[id(t)] = (id(b), t, sp)
                    nxt.append(t)
        queue = nxt
    return None


def lower_sources(sources: Sources) -> tuple[Program, list[Diagnostic]]:
    """Lower a parsed program: the root's models, with every layer block call expanded."""
    lw = _Lowerer(sources)
    prog = lw.program()
    return prog, lw.diags


def lower(tree: Tree[Token], file: str, text: str) -> tuple[Program, list[Diagnostic]]:
    """Lower one parsed file on its own (its ``use`` declarations are not followed)."""
    root = SourceFile(file, f"<text:{file}>", text, Path("."), tree)
    return lower_sources(Sources(root, {root.key: root}, []))
