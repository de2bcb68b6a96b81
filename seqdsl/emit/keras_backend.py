"""The Keras 3 emitter: a checked model -> a readable Keras 3 module.

The emitted module imports numpy and keras (``keras.ops`` only, so it runs on
Keras' TensorFlow, JAX and torch backends) and defines ``build_model()``, which
returns a functional ``keras.Model`` made of standard Keras layers where they
compute what docs/semantics.md says, and of small custom layers where Keras
deviates, imported from :mod:`seqdsl.runtime.keras` (``--standalone`` copies
them in: :mod:`seqdsl.emit.standalone`). Every layer is named after its seqdsl
layer, the masks are explicit tensors passed with ``mask=`` to every layer that
takes one, and every Keras LSTM/GRU receives a strictly right-padded mask with
no empty row (cuDNN-eligible on a GPU). docs/backend-keras.md describes the
emitted code.

Each layer kind has one small rule, found through :data:`RULES` (kind -> rule);
extern layers have theirs (``_Emitter.emit_extern``). This module only writes
text; it imports no framework (``seqdsl compile`` runs without Keras installed).
"""

from __future__ import annotations

import ast
import builtins
import keyword
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType

import numpy as np

from ..catalogue import REQUIRED, BoundLayer, Cfg, spec_for
from ..cells import bound_cell_of, is_cell_layer
from ..checker import CheckedModel, LayerInfo
from ..ir import ApplyOp, CellDef, DropMaskOp, InputDecl, MergeOp
from ..types import MaskKind, MaskType, TensorType
from . import CodeWriter, Unsupported
from .common import constraint_check
from .common import decl_text as _decl_text
from .common import describe_layer as _describe
from .common import py_literal as _lit
from .keras_custom import (
    EXTERN_HELPERS,
    cell_class_lines,
    cell_is_nested,
    custom_args,
    custom_text,
    extern_class_lines,
    uses_externs,
)
from .standalone import ImportItem, format_imports

__all__ = ["RULES", "class_name", "emit_model", "instantiate", "runtime_names", "twin_order"]

_KERAS_DTYPE = {"f32": "float32", "f64": "float64", "i32": "int32", "i64": "int64", "bool": "bool"}
_RECURRENT = ("LSTM", "GRU", "SimpleRNN", "RNN")
_CELL_CLASS = {"LSTMCell": "LSTMCell", "GRUCell": "GRUCell", "SimpleRNNCell": "SimpleRNNCell"}
_CELL_NAME = {"LSTMCell": "lstm_cell", "GRUCell": "gru_cell", "SimpleRNNCell": "simple_rnn_cell"}
_MERGE_CLASS = {
    "add": "Add", "subtract": "Subtract", "multiply": "MergeMultiply", "average": "Average",
    "maximum": "MergeMaximum", "minimum": "MergeMinimum", "concat": "Concatenate",
}  # fmt: skip
#: merges whose Keras layer substitutes values at masked steps: seqdsl.runtime.keras's instead
_RUNTIME_MERGES = ("MergeMaximum", "MergeMinimum", "MergeMultiply")
#: the Keras layer class of each plain (standard) seqdsl layer
_PLAIN_CLASS = {
    "Embedding": "Embedding", "Masking": "Masking", "Dense": "Dense", "Activation": "Activation",
    "Dropout": "Dropout", "SpatialDropout1D": "SpatialDropout1D",
    "LayerNormalization": "LayerNormalization",
    "BatchNormalization": "BatchNormalization", "Conv1D": "Conv1D", "MaxPooling1D": "MaxPooling1D",
    "AveragePooling1D": "AveragePooling1D", "GlobalAveragePooling1D": "GlobalAveragePooling1D",
    "GlobalMaxPooling1D": "GlobalMaxPooling1D", "Flatten": "Flatten", "Reshape": "Reshape",
    "TimeDistributed": "TimeDistributed", "Bidirectional": "Bidirectional",
    "LSTM": "LSTM", "GRU": "GRU", "SimpleRNN": "SimpleRNN", "RNN": "RNN",
}  # fmt: skip
#: the layers whose keep-masks dropout_masks(model, masks) injects
_DROPOUT = ("Dropout", "SpatialDropout1D")
#: arguments emitted even at their seqdsl default (Keras requires them)
_ALWAYS = {"pool_size"}
#: config keys that are seqdsl's own, not Keras arguments
_NOT_KERAS = {
    "masked_output", "name", "layer", "cell",
    # Keras call arguments, and attention_axes (the time axis only: Keras' default)
    "use_causal_mask", "return_attention_scores", "attention_axes",
}  # fmt: skip
#: the names a generated module binds itself
_MODULE_NAMES = {
    "MODEL", "INPUTS", "OUTPUTS", "WEIGHTS", "TWIN_ORDER", "STATEFUL", "FIXED_TRAINING", "PADS",
    "DECLARED", "CHECKS",
    "EXTERNS", "build_model", "pad", "keras", "layers", "ops", "np", "_register_own",
}  # fmt: skip
#: the runtime module generated modules import from (and standalone ones copy)
RUNTIME_MODULE = "seqdsl.runtime.keras"


@cache
def runtime_names() -> frozenset[str]:
    """Every name the Keras runtime modules bind at top level (definitions and imports):
    a generated module may import them, and a standalone one holds copies."""
    names: set[str] = set()
    folder = Path(__file__).resolve().parent.parent / "runtime"
    for module in ("keras", "common"):
        tree = ast.parse((folder / f"{module}.py").read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names |= {a.asname or a.name.partition(".")[0] for a in node.names}
    return frozenset(names)


def class_name(model: CheckedModel) -> str:
    """The name of the keras.Model subclass in the emitted module."""
    name = model.name
    if name in _MODULE_NAMES or name in runtime_names() or keyword.iskeyword(name):
        name += "Model"
    if name in dir(builtins):
        name += "Model"
    return name


def instantiate(
    module: ModuleType,
    model: CheckedModel,
    weights: Mapping[str, np.ndarray],
    dtype: str | None = None,
    externs: Mapping[str, object] | None = None,
) -> object:
    """``module.build_model()`` with the canonical ``weights`` loaded; a model with extern
    layers takes their implementations from ``externs`` first (name -> function), then
    from the registry. ``dtype`` (the build's float dtype, e.g. ``"float64"``) is the
    layers' Keras dtype policy while they are made, as ``build(..., dtype=)`` makes the
    torch and JAX models compute in it; float inputs are cast to it by the layers."""
    import keras

    kwargs = {"externs": externs} if uses_externs(model.layers, model.externs) else {}
    before = keras.config.dtype_policy()
    if dtype not in (None, "float32"):  # float32 keeps the policy the user set (mixed_float16...)
        keras.config.set_dtype_policy(dtype)
    try:
        built = module.build_model(**kwargs)
    finally:
        keras.config.set_dtype_policy(before)
    built.load_canonical(dict(weights))
    return built


def emit_model(model: CheckedModel, source: str) -> str:
    return _Emitter(model, source).module()


# --------------------------------------------------------------------------
# small helpers


def _identifier(base: str) -> str:
    s = "".join(c if c.isalnum() or c == "_" else "_" for c in base)
    if not s or s[0].isdigit():
        s = "v_" + s
    return s


class _Namer:
    """Unique names from a base, avoiding a reserved set."""

    def __init__(self, reserved: set[str]):
        self.taken = set(reserved)

    def fresh(self, base: str, python: bool = True) -> str:
        base = _identifier(base) if python else base
        name, i = base, 2
        while name in self.taken or (python and keyword.iskeyword(name)):
            name = f"{base}_{i}"
            i += 1
        self.taken.add(name)
        return name


# --------------------------------------------------------------------------
# the weight order of a hand-written twin


def twin_order(model: CheckedModel) -> list[str]:
    """The layers with weights in the order ``get_weights()`` of a hand-written
    Keras twin lists them: the twin has one Keras layer per seqdsl operation
    (``drop_mask`` has none) connected like the .seq model, and Keras orders a
    functional model's layers by depth from the outputs, ties broken by the
    depth-first traversal order (``keras.src.ops.function.map_graph``)."""
    ops_ = model.model.ops
    producer: dict[str, int | None] = {inp.name: None for inp in model.model.inputs}
    parents: dict[int, list[int]] = {}
    for i, op in enumerate(ops_):
        if isinstance(op, DropMaskOp):
            producer[op.results[0]] = producer[op.input.name]
            continue
        uses = [u.name for u in op.inputs]
        if isinstance(op, ApplyOp):  # args first, then keyword tensors by name
            uses += [s.name for s in op.initial_state or ()]
            if op.mask is not None:
                uses.append(op.mask.name)
        parents[i] = [p for p in (producer[u] for u in uses) if p is not None]
        for r in op.results:
            producer[r] = i
    traversal: dict[int, int] = {}
    finished: set[int] = set()
    post_order: list[int] = []

    def visit(node: int | None) -> None:
        if node is None or node in finished:
            return
        traversal.setdefault(node, len(traversal))
        for p in parents[node]:
            visit(p)
        finished.add(node)
        post_order.append(node)

    for out in model.model.outputs:
        visit(producer[out.name])
    depth: dict[int, int] = {}
    for node in reversed(post_order):
        d = depth.setdefault(node, 0)
        for p in parents[node]:
            depth[p] = max(d + 1, depth.get(p, 0))
    order = sorted(post_order, key=lambda n: (-depth[n], traversal[n]))
    infos = {layer.op_index: layer for layer in model.layers}
    return [infos[n].name for n in order if n in infos and infos[n].weights]


# --------------------------------------------------------------------------
# statements, laid out as `ruff format` would (the golden files are checked by it)

_WIDTH = 100


@dataclass(frozen=True)
class _Call:
    """``callee(arg, ...)``: an argument is text or a nested call."""

    callee: str
    args: tuple[str | _Call, ...]

    def __str__(self) -> str:
        return f"{self.callee}({', '.join(map(str, self.args))})"


def _call_lines(indent: str, head: str, args: Sequence[str | _Call], tail: str = "") -> list[str]:
    """``head(args)tail``: on one line; else the arguments on a line of their own;
    else one argument per line, each laid out the same way."""
    one = f"{indent}{head}({', '.join(map(str, args))}){tail}"
    if len(one) <= _WIDTH:
        return [one]
    inner = indent + "    "
    body = inner + ", ".join(map(str, args))
    if len(body) <= _WIDTH:
        return [f"{indent}{head}(", body, f"{indent}){tail}"]
    lines = [f"{indent}{head}("]
    for a in args:
        text = f"{inner}{a},"
        listed = re.fullmatch(r"(\w+=)?\[(.*)\]", a) if isinstance(a, str) else None
        if len(text) <= _WIDTH or (not isinstance(a, _Call) and listed is None):
            lines.append(text)
        elif listed is not None:  # a long list: one item per line
            lines.append(f"{inner}{listed.group(1) or ''}[")
            lines += [f"{inner}    {item}," for item in _top_level_items(listed.group(2))]
            lines.append(f"{inner}],")
        else:
            assert isinstance(a, _Call)
            lines += _call_lines(inner, a.callee, a.args, ",")
    return lines + [f"{indent}){tail}"]


def _top_level_items(text: str) -> list[str]:
    """The comma-separated items of ``text`` outside brackets."""
    items, depth, start = [], 0, 0
    for i, c in enumerate(text):
        depth += c in "([{"
        depth -= c in ")]}"
        if c == "," and depth == 0:
            items.append(text[start:i].strip())
            start = i + 1
    return items + [text[start:].strip()]


def _assign_lines(indent: str, lhs: str, ctor: _Call, call_args: Sequence[str]) -> list[str]:
    """``lhs = Ctor(args)(call_args)``: split at the call's parentheses when what
    precedes them fits, else at the constructor's."""
    call = ", ".join(call_args)
    one = f"{indent}{lhs} = {ctor}({call})"
    if len(one) <= _WIDTH:
        return [one]
    if len(f"{indent}{lhs} = {ctor}(") <= _WIDTH:
        return _call_lines(indent, f"{lhs} = {ctor}", list(call_args))
    return _call_lines(indent, f"{lhs} = {ctor.callee}", ctor.args, f"({call})")


def _literal_lines(indent: str, prefix: str, value: object, suffix: str = "") -> list[str]:
    """A tuple or dict literal: on one line, else one element per line."""
    one = f"{indent}{prefix}{_lit(value)}{suffix}"
    if len(one) <= _WIDTH or not isinstance(value, (tuple, dict)) or not value:
        return [one]
    inner = indent + "    "
    lines = [f"{indent}{prefix}{'(' if isinstance(value, tuple) else '{'}"]
    if isinstance(value, dict):
        for k, v in value.items():
            lines += _literal_lines(inner, f"{_lit(k)}: ", v, ",")
    else:
        for v in value:
            lines += _literal_lines(inner, "", v, ",")
    return lines + [f"{indent}{')' if isinstance(value, tuple) else '}'}{suffix}"]


def _exploded_dict(name: str, entries: Sequence[tuple[str, object]]) -> list[str]:
    """``NAME = {...}`` with one entry per line (a trailing comma keeps it so)."""
    if not entries:
        return [f"{name} = {{}}"]
    lines = [f"{name} = {{"]
    for k, v in entries:
        lines += _literal_lines("    ", f"{_lit(k)}: ", v, ",")
    return lines + ["}"]


# --------------------------------------------------------------------------
# the emitter


def _num_text(v: float) -> str:
    """A number as the .seq source writes it: 0, not 0.0."""
    return str(int(v)) if float(v).is_integer() else repr(float(v))


@dataclass
class _Apply:
    """One layer call being emitted: what every rule of RULES reads."""

    op: ApplyOp
    info: LayerInfo
    cfg: Cfg
    #: the first input value, the results and their Python variables
    x: str
    results: list[str]
    vars: list[str]
    #: the explicit mask the layer gets (variable) and its kind
    mask_var: str | None
    mask_kind: MaskKind | None
    #: `training=` as written in the .seq source
    training: bool | None
    #: ``dtype="float64"`` where the layer computes in f64
    dtype: list[str]
    #: the call's first argument: the input's variable
    call_args: list[str]

    @property
    def name_kw(self) -> list[str]:
        return [*self.dtype, f"name={_lit(self.info.name)}"]

    @property
    def with_mask(self) -> list[str]:
        return [f"mask={self.mask_var}"] if self.mask_var is not None else []

    @property
    def fixed(self) -> list[str]:
        return [f"training={self.training}"] if self.training is not None else []


class _Emitter:
    def __init__(self, model: CheckedModel, source: str):
        self.m = model
        self.source = source
        self.by_op = {layer.op_index: layer for layer in model.layers}
        reserved = set(dir(builtins)) | _MODULE_NAMES | runtime_names() | {class_name(model)}
        reserved |= {"l", "O", "I"}  # ambiguous names (ruff E741)
        self.py = _Namer(reserved)
        # Keras layer names: the seqdsl layer names and the input names are taken first
        self.kn = _Namer(set())
        self.kn.taken |= {layer.name for layer in model.layers}
        self.kn.taken |= {inp.name for inp in model.model.inputs}
        self.body: list[str] = []
        self.staged: list[str] = []
        #: mask variable -> the statement that computes it, not emitted yet
        self.pending: dict[str, list[str]] = {}
        self.used: set[str] = set()
        #: value -> Python variable of its tensor / of its explicit mask tensor
        self.var: dict[str, str] = {}
        self.mask: dict[str, str | None] = {}
        #: value -> whether the Keras mask its tensor carries equals its seqdsl mask
        self.ok: dict[str, bool] = {}
        #: the model's Keras inputs: (variable, Keras name, dtype, shape, what)
        self.keras_inputs: list[tuple[str, str, str, tuple[int | None, ...], str]] = []
        #: the Keras inputs as declared: (Keras name, (seqdsl dtype, dims))
        self.declared: list[tuple[str, tuple[str, tuple[int | str | None, ...]]]] = []
        #: the checks of values (SeqdslModel.CHECKS) and the Keras names of mask layers
        self.checks: list[tuple[object, ...]] = []
        self.mask_names: dict[str, str] = {}
        self.outputs: list[str] = []
        self.stateful: list[str] = []
        self.fixed_training: list[str] = []
        self.kernel_notes: list[str] = []
        self.has_dropout = False
        self.used_values = {o.name for o in model.model.outputs}
        for op in model.model.ops:
            uses = [op.input] if isinstance(op, DropMaskOp) else list(op.inputs)
            if isinstance(op, ApplyOp):
                uses += [*(op.initial_state or ()), *([op.mask] if op.mask else [])]
            self.used_values |= {u.name for u in uses}
        #: cell blocks and extern layers: their classes' lines, in order of first use
        self.custom_classes: list[list[str]] = []
        self.cell_classes: dict[tuple[str, ...], str] = {}
        self.extern_classes: dict[str, str] = {}
        self.cell_ctor: _Call | None = None
        #: extern layers: layer -> declared outputs (Keras dtype, shape with None)
        self.extern_layers: list[tuple[str, tuple[tuple[str, tuple[int | None, ...]], ...]]] = []
        self.externs_used = uses_externs(model.layers, model.externs)
        if self.externs_used:
            self.py.taken |= {"externs", "debug", "model"}
            self.py.taken |= {m.partition(".")[0] for m in model.python_modules}

    # ------------------------------------------------------------ helpers
    def tensor(self, v: str) -> TensorType:
        t = self.m.types[v]
        assert isinstance(t, TensorType), v
        return t

    def seq_mask(self, v: str) -> MaskKind | None:
        t = self.m.types[v]
        return t.kind if isinstance(t, MaskType) else t.mask

    def use(self, name: str) -> str:
        self.used.add(name)
        return name

    def dtype_kw(self, *values: str) -> list[str]:
        """``dtype="float64"`` for layers that compute on f64 values."""
        for v in values:
            t = self.m.types.get(v)
            if isinstance(t, TensorType) and t.dtype == "f64":
                return ['dtype="float64"']
        return []

    def comment(self, text: str) -> None:
        """A comment line, emitted with the next statement."""
        self.staged.append(f"    # {text}" if text else "")

    def emit(self, lines: list[str]) -> None:
        """Append a statement (and the staged comments), preceded by the pending mask
        statements it uses: a mask is computed where it is first needed, never unused."""
        lines = self.staged + lines
        self.staged = []
        self.require("\n".join(lines))
        self.body += lines

    def require(self, text: str) -> None:
        """Emit the pending mask statements that ``text`` uses."""
        for var in list(self.pending):
            if var in self.pending and re.search(rf"\b{re.escape(var)}\b", text):
                entry = self.pending[var]
                for k in [k for k, e in self.pending.items() if e is entry]:
                    del self.pending[k]
                self.emit(entry)

    def assign(self, targets: Sequence[str], ctor: _Call, call_args: Sequence[str]) -> None:
        self.emit(_assign_lines("    ", ", ".join(targets), ctor, call_args))

    def lazy(
        self, targets: Sequence[str], ctor: _Call, call_args: Sequence[str], note: str = ""
    ) -> None:
        """A mask statement, emitted when (if) a later statement uses one of its targets."""
        lines = [f"    # {note}"] if note else []
        lines += _assign_lines("    ", ", ".join(targets), ctor, call_args)
        for t in targets:
            self.pending[t.rstrip(",")] = lines

    def mask_layer(
        self,
        base: str,
        layer: str,
        cls: str,
        args: Sequence[str],
        call: Sequence[str],
        note: str = "",
    ) -> str:
        """``{base}_mask = Cls(args, name="{layer}_mask")(call)``: a mask-computing layer."""
        mv = self.py.fresh(f"{base}_mask")
        name = self.kn.fresh(f"{layer}_mask", python=False)
        self.lazy([mv], _Call(self.use(cls), (*args, f"name={_lit(name)}")), call, note)
        self.mask_names[mv] = name
        return mv

    def check_declared_mask(self, result: str, mv: str, where: str, token: str) -> None:
        """Debug mode: the kind of a data-derived mask rests on a declaration."""
        t = self.tensor(result)
        kind = t.mask
        if kind is None or not kind.declared or (kind.side == "any" and not kind.nonempty):
            return
        src = t.padded_from
        pad = self.m.pads.get(src) if src is not None else None
        hint = (
            f"`{src}` declares pad({pad.side}, value={_num_text(pad.value)}): {token} must "
            "occur only "
            "as padding"
            if pad is not None
            else "the declared mask kind"
        )
        self.checks.append(("mask", self.mask_names[mv], kind.side, kind.nonempty, where, hint))

    def new_var(self, value: str, single: bool = False) -> str:
        """The variable of a value; ``_``-prefixed when a single result is never used."""
        unused = single and value not in self.used_values and not value.startswith("_")
        v = self.py.fresh(f"_{value}" if unused else value)
        self.var[value] = v
        return v

    # ------------------------------------------------------------ module
    def module(self) -> str:
        self.emit_body()
        w = CodeWriter()
        self.tables(w)
        if self.custom_classes:
            w("")
            w("")
            w(f"# {'-' * 74}")
            w("# the cell blocks and extern layers of the .seq program, registered under the")
            w("# model's name (Keras clones a Bidirectional's layer through the registry, by name)")
            w("")
            w('_register_own = keras.saving.register_keras_serializable(package=f"seqdsl.{MODEL}")')
            for lines in self.custom_classes:
                w("")
                w("")
                for ln in lines:
                    w(ln)
        w("")
        w("")
        w(f"# {'-' * 74}")
        w("# the model")
        w("")
        w("")
        self.model_class(w)
        w("")
        w("")
        self.build_function(w)
        rest = w.text()
        head = CodeWriter()
        self.header(head)
        head("")
        for ln in format_imports(self.imports(rest)):
            head(ln)
        head("")
        return head.text() + rest

    def imports(self, rest: str) -> list[ImportItem]:
        """The imports the module's code (``rest``) reads."""
        items = [ImportItem("__future__", "annotations")]
        read = set(_READS_MODULE.findall(rest))  # one pass over the text
        if "keras" in read:
            items.append(ImportItem("keras"))
        if "np" in read:
            items.append(ImportItem("numpy", None, "np"))
        items += [ImportItem("keras", name) for name in ("layers", "ops") if name in read]
        if self.externs_used:  # their imports register the extern layers' implementations
            note = "# noqa: F401 (extern layers)"
            items += [ImportItem(m, None, None, note) for m in self.m.python_modules]
        items += [ImportItem(RUNTIME_MODULE, n) for n in sorted(self.used)]
        return items

    def model_class(self, w: CodeWriter) -> None:
        """pad() and the model's keras.Model subclass (SeqdslModel with this module's tables)."""
        self.use("pad_batches")
        w("def pad(*raw):")
        w('    """Pad ragged data by the pad(...) declarations (PADS), keras.utils.pad_sequences')
        w("    semantics in the declared dtype: one list of sequences per padded input, in")
        w("    declaration order. Returns (batch, lengths) for one input, a tuple of them for")
        w('    several. Inputs sharing a time symbol are padded to one length."""')
        w("    return pad_batches(PADS, raw)")
        w("")
        w("")
        w('@keras.saving.register_keras_serializable(package="seqdsl")')
        w(f"class {class_name(self.m)}({self.use('SeqdslModel')}):")
        w('    """The functional keras.Model that build_model() returns, with seqdsl\'s helpers')
        w("    (SeqdslModel): canonical weights, pad(), reset_states(), and get_weights() /")
        w('    set_weights() in the order of a hand-written Keras twin (TWIN_ORDER)."""')
        w("")
        for table in (
            "OUTPUTS", "WEIGHTS", "TWIN_ORDER", "STATEFUL", "FIXED_TRAINING", "DECLARED", "CHECKS"
        ):  # fmt: skip
            w(f"    {table} = {table}")
        if self.externs_used:
            w("    EXTERNS = EXTERNS")
        w("    pad = staticmethod(pad)")
        if self.has_dropout:
            w("    #: `with model.dropout_masks({key: keep}):` fixed dropout keep-masks")
            w(f"    dropout_masks = {self.use('dropout_masks')}")
        if self.m.constraints:
            w("")
            w("    def check_constraints(self, sizes):")
            w('        """The checker\'s run-time constraints, at every call and before fit(),')
            w("        predict(), evaluate(): a size unknown while Keras traces is absent from")
            w('        sizes, and not checked."""')
            for c in self.m.constraints:
                test, msg = constraint_check(c)
                known = " and ".join(f'"{n}" in sizes' for n in sorted(c.dim.symbols()))
                w(f"        if {known} and {test}:  # a run-time constraint")
                w.lines.extend(
                    _call_lines("            ", f"raise {self.use('InputError')}", [msg])
                )

    def header(self, w: CodeWriter) -> None:
        m = self.m
        w(f'"""{m.name}: a Keras 3 model generated by seqdsl from {self.source}.')
        w("")
        w("Standard Keras layers named after the seqdsl layers, and a few custom layers")
        w("(seqdsl.runtime.keras) where Keras' behaviour differs from seqdsl's semantics.")
        w("Only keras.ops is used: it runs with KERAS_BACKEND=tensorflow, jax or torch.")
        w("")
        w(f"    model = build_model()                # a keras.Model ({class_name(m)})")
        w('    model.load_canonical(weights)        # {"layer/weight": array}, Keras\' layout')
        ins = ", ".join(v for v, *_ in self.keras_inputs)
        w(f"    outputs = model({ins if len(self.keras_inputs) == 1 else '[' + ins + ']'})")
        w("")
        w("Inputs, in this order (a list, or a dict keyed by these names):")
        width = max(len(name) for _, name, *_ in self.keras_inputs)
        spec_width = max(len(f"{d} {_shape_text(s)}") for _, _, d, s, _ in self.keras_inputs)
        for _, name, dtype, shape, what in self.keras_inputs:
            spec = f"{dtype} {_shape_text(shape)}"
            w(f"    {name.ljust(width)}  {spec.ljust(spec_width)}  {what}")
        w("")
        outs = [f"({o.name}, its mask)" if o.with_mask else o.name for o in m.model.outputs]
        w(f"Outputs: {outs[0] if len(outs) == 1 else '[' + ', '.join(outs) + ']'}")
        if self.externs_used:
            w("")
            w("Extern layers call Python implementations: build_model(externs={name: fn})")
            w('first, then those registered with @seqdsl.extern(name, backend="keras") by the')
            w("modules the .seq file `use`s (imported below). model.debug = True checks their")
            w("outputs (and returned masks) against the declarations at every call.")
        if self.kernel_notes:
            w("")
            w("Recurrent layers (kernel for TensorFlow on a GPU; docs/backend-keras.md):")
            for note in self.kernel_notes:
                w(f"    {note}")
        w('"""')

    def tables(self, w: CodeWriter) -> None:
        m = self.m
        w("")
        w(f"MODEL = {_lit(m.name)}")
        w("")
        w("#: the Keras inputs, in order: (name, dtype, shape without the batch)")
        inputs = tuple((name, dtype, shape) for _, name, dtype, shape, _ in self.keras_inputs)
        for ln in _literal_lines("", "INPUTS = ", inputs):
            w(ln)
        outputs = tuple(o.name + (" with mask" if o.with_mask else "") for o in m.model.outputs)
        for ln in _literal_lines("", "OUTPUTS = ", outputs):
            w(ln)
        w("")
        w("#: canonical weights (Keras' layout and order): layer -> ((weight, shape), ...)")
        weights = [
            (layer.name, tuple((ws.name, ws.shape) for ws in layer.weights))
            for layer in m.layers
            if layer.weights
        ]
        for ln in _exploded_dict("WEIGHTS", weights):
            w(ln)
        w("")
        w("#: the layers with weights in the order of a hand-written twin's get_weights()")
        for ln in _literal_lines("", "TWIN_ORDER = ", tuple(twin_order(m))):
            w(ln)
        w("")
        w("#: stateful recurrent layers (reset_states)")
        for ln in _literal_lines("", "STATEFUL = ", tuple(self.stateful)):
            w(ln)
        w("")
        w("#: layers called with `training=` in the .seq source: it wins over the model's flag")
        for ln in _literal_lines("", "FIXED_TRAINING = ", tuple(self.fixed_training)):
            w(ln)
        w("")
        w("#: the Keras inputs as declared, checked at every call: name -> (dtype, dims)")
        for ln in _exploded_dict("DECLARED", self.declared):
            w(ln)
        w("")
        w("#: checks of values: ids (every eager call); lengths, mask kinds (debug mode)")
        for ln in _literal_lines("", "CHECKS = ", tuple(self.checks)):
            w(ln)
        w("")
        w("#: pad(...) declarations: input -> (side, value, maxlen, truncate, dtype, time length)")
        pads = []
        for inp in m.model.inputs:
            pad = m.pads.get(inp.name)
            if pad is not None:
                t = inp.dims[1].value if len(inp.dims) > 1 else None
                dtype = _KERAS_DTYPE[inp.dtype]
                pads.append((inp.name, (pad.side, pad.value, pad.maxlen, pad.truncate, dtype, t)))
        for ln in _exploded_dict("PADS", pads):
            w(ln)
        if self.externs_used:
            w("")
            w("#: extern layers -> their declared outputs (dtype, shape; None: known at run time)")
            for ln in _exploded_dict("EXTERNS", self.extern_layers):
                w(ln)

    def build_function(self, w: CodeWriter) -> None:
        m = self.m
        if self.externs_used:
            w("def build_model(externs=None, debug=False):")
            w(f'    """{m.name} as a functional keras.Model (see the module docstring);')
            w("    externs: implementations of extern layers (name -> function), before the")
            w('    registry; debug: check the extern layers\' outputs at every call."""')
        else:
            w("def build_model():")
            w(f'    """{m.name} as a functional keras.Model (see the module docstring)."""')
        w.lines.extend(self.body)
        w("")
        inputs = [v for v, *_ in self.keras_inputs]
        ins = inputs[0] if len(inputs) == 1 else "[" + ", ".join(inputs) + "]"
        outputs = self.outputs[0] if len(self.outputs) == 1 else "[" + ", ".join(self.outputs) + "]"
        args = [f"inputs={ins}", f"outputs={outputs}", f"name={_lit(m.name)}"]
        unused = self.unused_values()
        if unused:  # their layers' weights are the model's too, as on torch and JAX
            args.append("unused=[" + ", ".join(unused) + "]")
        if self.externs_used:
            for ln in _call_lines("    ", f"model = {class_name(m)}", args):
                w(ln)
            w("    model.debug = debug")
            w("    return model")
            return
        for ln in _call_lines("    ", f"return {class_name(m)}", args):
            w(ln)

    def unused_values(self) -> list[str]:
        """The variables of the values no output depends on and no later op reads
        (a functional keras.Model leaves their layers out: SeqdslModel keeps them)."""
        live = {o.name for o in self.m.model.outputs}
        read: set[str] = set()
        for op in reversed(self.m.model.ops):
            uses = [op.input] if isinstance(op, DropMaskOp) else list(op.inputs)
            if isinstance(op, ApplyOp):
                uses += [op.mask] if op.mask is not None else []
                uses += list(op.initial_state or ())
            names = {u.name for u in uses}
            if live & set(op.results):
                live |= names
            read |= names
        out = []
        for op in self.m.model.ops:
            for r in op.results:
                if r not in live and r not in read and r in self.var:
                    out.append(self.var[r])
        return out

    # ------------------------------------------------------------ body
    def emit_body(self) -> None:
        for inp in self.m.model.inputs:
            self.emit_input(inp)
        for i, op in enumerate(self.m.model.ops):
            self.comment("")
            if isinstance(op, DropMaskOp):
                self.emit_drop_mask(op)
            elif isinstance(op, MergeOp):
                self.emit_merge(op, self.by_op[i])
            else:
                self.emit_apply(op, self.by_op[i])
        fix = [
            o.name for o in self.m.model.outputs if self.tensor(o.name).mask and not self.ok[o.name]
        ]
        if fix:
            self.comment("")
            self.comment(
                "outputs carry their mask as their Keras mask (fit() masks the loss with it)"
            )
        for o in self.m.model.outputs:
            v = self.var[o.name]
            if o.name in fix:
                v = self.py.fresh(f"{o.name}_out")
                name = self.kn.fresh(f"{o.name}_with_mask", python=False)
                ctor = _Call(self.use("WithMask"), (f"name={_lit(name)}",))
                self.assign([v], ctor, [self.var[o.name], f"mask={self.mask[o.name]}"])
            if o.with_mask:
                v = f"({v}, {self.mask[o.name]})"
            self.outputs.append(v)
        self.staged = []
        self.require(" ".join(self.outputs))  # the masks returned with their values

    def emit_input(self, inp: InputDecl) -> None:
        v = self.new_var(inp.name)
        dims = [d.value for d in inp.dims]
        batch = dims[0] if dims and isinstance(dims[0], int) else None
        rest = tuple(d if isinstance(d, int) else None for d in dims[1:])

        def keras_input(
            var: str,
            name: str,
            dtype: str,
            shape: tuple[int | None, ...],
            what: str,
            declared: tuple[str, tuple[int | str | None, ...]],
        ) -> None:
            self.declared.append((name, declared))
            size = (
                f"batch_shape={_lit((batch, *shape))}"
                if batch is not None
                else f"shape={_lit(shape)}"
            )
            args = [size, f"dtype={_lit(dtype)}", f"name={_lit(name)}"]
            self.emit(_call_lines("    ", f"{var} = keras.Input", args))
            self.keras_inputs.append((var, name, dtype, shape, what))

        decl = _decl_text(inp)
        self.comment(decl)
        self.mask[inp.name] = None
        self.ok[inp.name] = True
        if inp.is_mask:
            keras_input(v, inp.name, "bool", rest, f"mask input: {decl}", ("mask", tuple(dims)))
            mt = self.m.types.get(inp.name)
            kind = mt.kind if isinstance(mt, MaskType) else None
            if kind is not None and (kind.side != "any" or kind.nonempty):
                self.checks.append(
                    ("mask", inp.name, kind.side, kind.nonempty, f"mask input `{decl}`",
                     "pass a mask of the declared kind, or declare it `mask[B, T]` (kind any)")
                )  # fmt: skip
            return
        keras_input(v, inp.name, _KERAS_DTYPE[inp.dtype], rest, decl, (inp.dtype, tuple(dims)))
        if not inp.masked:
            return
        self.ok[inp.name] = False
        pad = self.m.pads.get(inp.name)
        if pad is not None:
            lv = self.py.fresh(f"{inp.name}_lengths")
            lname = self.kn.fresh(f"{inp.name}_lengths", python=False)
            rule = "t < len[b]" if pad.side == "post" else "t >= T - len[b]"
            keras_input(lv, lname, "int32", (), f"lengths of `{inp.name}`: mask[b, t] = {rule}",
                        ("i32", tuple(dims[:1])))  # fmt: skip
            t = self.tensor(inp.name)
            self.checks.append(("lengths", lname, inp.name, bool(t.mask and t.mask.nonempty)))
            self.mask[inp.name] = self.mask_layer(
                inp.name, inp.name, "LengthsToMask", [_lit(pad.side)], [v, lv]
            )
        else:
            mv = self.py.fresh(f"{inp.name}_mask")
            mname = self.kn.fresh(f"{inp.name}_mask", python=False)
            keras_input(mv, mname, "bool", rest[:1], f"mask of `{inp.name}` (any bool [B, T])",
                        ("mask", tuple(dims[:2])))  # fmt: skip
            self.mask[inp.name] = mv

    def declared_names(self) -> set[str]:
        """The names of the .seq inputs (ids checks apply to an Embedding on one)."""
        return {inp.name for inp in self.m.model.inputs}

    def emit_drop_mask(self, op: DropMaskOp) -> None:
        src, out = op.input.name, op.results[0]
        v = self.new_var(out, single=True)
        name = self.kn.fresh(out, python=False)
        self.comment(f"{out} = {src} -> drop_mask: no Keras mask from here on either")
        self.assign([v], _Call(self.use("DropMask"), (f"name={_lit(name)}",)), [self.var[src]])
        self.mask[out] = None
        self.ok[out] = True

    # ------------------------------------------------------------ merges
    def emit_merge(self, op: MergeOp, info: LayerInfo) -> None:
        ins = [u.name for u in op.inputs]
        out = op.results[0]
        rank = self.tensor(ins[0]).rank
        args: list[str] = []
        note = ""
        time_concat = False
        if op.fn == "concat":
            a = info.config.get("axis", "features")
            if a == "features":
                axis = rank - 1
            elif a == "time":
                axis = 1
            else:
                axis = (a if isinstance(a, int) else int(str(a))) % rank
            time_concat = axis == 1  # rank 2 too: the last axis of ids [B, T] is time
            args.append(f"axis={-1 if axis == rank - 1 else axis}")
            note = f", axis={a}"
        self.comment(f"{out} = {op.fn}({', '.join(ins)}{note})")
        v = self.new_var(out, single=True)
        cls = _MERGE_CLASS[op.fn]
        cls = self.use(cls) if cls in _RUNTIME_MERGES else f"layers.{cls}"
        ctor = _Call(cls, (*args, *self.dtype_kw(out), f"name={_lit(info.name)}"))
        self.assign([v], ctor, ["[" + ", ".join(self.var[i] for i in ins) + "]"])
        masks = [self.mask[i] for i in ins]
        if all(mk is None for mk in masks):
            self.mask[out] = None
            self.ok[out] = all(self.ok[i] for i in ins)
            return
        if time_concat:  # Keras joins the masks in time too
            parts = [
                mk if mk is not None else self.var[i] for i, mk in zip(ins, masks, strict=True)
            ]
            flags = _lit(tuple(mk is not None for mk in masks))
            self.mask[out] = self.mask_layer(
                out, info.name, "ConcatMasks", [flags], ["[" + ", ".join(parts) + "]"]
            )
            self.ok[out] = all(self.ok[i] for i in ins)
            return
        distinct = list(dict.fromkeys(mk for mk in masks if mk is not None))
        if len(distinct) == 1:
            self.mask[out] = distinct[0]
        else:  # valid where every masked input is (Keras ORs the masks)
            self.mask[out] = self.mask_layer(
                out, info.name, "MaskAnd", [], ["[" + ", ".join(distinct) + "]"]
            )
        same = len(distinct) == 1 and all(mk is not None for mk in masks)
        self.ok[out] = same and all(self.ok[i] for i in ins)

    # ------------------------------------------------------------ layers
    def keras_args(self, kind: str, cfg: Mapping[str, object]) -> list[str]:
        """The Keras constructor arguments of a layer: required ones positionally,
        the others when they differ from the default (seqdsl's defaults are Keras')."""
        spec = spec_for(kind)
        assert spec is not None
        pos: list[str] = []
        kw: list[str] = []
        for p in spec.params:
            if p.name in _NOT_KERAS or p.name not in cfg or p.name == "trainable":
                continue
            v = cfg[p.name]
            if isinstance(v, BoundLayer):
                continue
            if p.name == "merge_mode" and v == "none":
                v = None
            if p.default is REQUIRED or p.name in _ALWAYS:
                pos.append(_lit(v))
            elif not (v == p.default and type(v) is type(p.default)):
                kw.append(f"{p.name}={_lit(v)}")
        if cfg.get("trainable") is False:
            kw.append("trainable=False")
        return pos + kw

    def inner_layer(
        self, bound: BoundLayer, dtype: list[str], extra: Sequence[str] = (), cls: str | None = None
    ) -> _Call:
        """A nested layer (inside TimeDistributed, Bidirectional, RNN)."""
        kind = bound.kind
        if "__cell__" in bound.config:  # a cell block: its class, made by emit_recurrent
            assert self.cell_ctor is not None
            return self.cell_ctor
        if kind in _CELL_CLASS:
            cell_args = [*self.keras_args(kind, bound.config), *dtype]
            cell_args.append(f"name={_lit(_CELL_NAME[kind])}")
            return _Call(f"layers.{_CELL_CLASS[kind]}", tuple(cell_args))
        nested: list[str | _Call] = []
        if kind == "RNN":
            cell = bound.config["cell"]
            assert isinstance(cell, BoundLayer)
            nested.append(self.inner_layer(cell, dtype))
        args: list[str | _Call] = [
            *nested,
            *self.keras_args(kind, bound.config),
            *extra,
            *dtype,
            f"name={_lit(_snake(kind))}",
        ]
        return _Call(cls or f"layers.{_PLAIN_CLASS[kind]}", tuple(args))

    def emit_apply(self, op: ApplyOp, info: LayerInfo) -> None:
        """A layer call: the prelude every layer shares, then its kind's rule (RULES)."""
        kind = info.kind
        cfg = info.config
        x = op.inputs[0].name
        results = list(op.results)
        mask_var = self.mask[x]
        mask_kind = self.seq_mask(x)
        if op.mask is not None:
            mask_var = self.var[op.mask.name]
            mask_kind = self.seq_mask(op.mask.name)
        training: bool | None = None
        if op.training is not None:
            training = bool(op.training.value)
            self.fixed_training.append(info.name)
        dtype = self.dtype_kw(x, *results)
        src = [u.name for u in op.inputs]
        if op.mask is not None:
            src.append(f"mask={op.mask.name}")
        if op.initial_state is not None:
            src.append(f"initial_state=[{', '.join(s.name for s in op.initial_state)}]")
        if op.training is not None:
            src.append(f"training={'true' if training else 'false'}")
        self.comment(f"{', '.join(results)} = {self.describe(kind, cfg)}({', '.join(src)})")
        vars_ = [self.new_var(r, single=len(results) == 1) for r in results]
        a = _Apply(
            op,
            info,
            Cfg(cfg),
            x,
            results,
            vars_,
            mask_var,
            mask_kind,
            training,
            dtype,
            [self.var[x]],
        )
        if kind in self.m.externs:
            self.emit_extern(a)
            return
        rule = RULES.get(kind)
        if rule is None:  # pragma: no cover
            raise Unsupported(info.name, f"the Keras backend has no rule for {kind}")
        if kind in _TAKES_MASK and mask_var is None:
            # a value without a seqdsl mask carries no Keras mask either: none is picked up
            assert self.ok[x], (info.name, x)
        inner = cfg.get("layer")
        if kind in _DROPOUT or (isinstance(inner, BoundLayer) and inner.kind in _DROPOUT):
            self.has_dropout = True
        rule(self, a)

    def finish(self, a: _Apply, mask: str | None, ok: bool) -> None:
        """The results' explicit masks (``mask`` for the masked ones), and whether their
        Keras masks equal them."""
        for r in a.results:
            masked = self.tensor(r).mask is not None
            self.mask[r] = mask if masked else None
            self.ok[r] = ok if masked else True

    def emit_embedding(self, a: _Apply) -> None:
        ctor = _Call("layers.Embedding", (*self.keras_args(a.info.kind, a.info.config), *a.name_kw))
        self.assign(a.vars, ctor, a.call_args)
        if a.x in self.declared_names():
            self.checks.append(("ids", a.x, a.cfg.integer("input_dim"), a.info.name))
        if a.cfg.flag("mask_zero"):
            mv = self.mask_layer(a.results[0], a.info.name, "NonZeroMask", [], a.call_args)
            self.check_declared_mask(a.results[0], mv, f"{a.info.name}: Embedding(mask_zero=true)",
                                     "id 0")  # fmt: skip
            self.finish(a, mv, True)
        else:  # a `masked` id input's mask passes through
            self.finish(a, a.mask_var, self.ok[a.x])

    def emit_masking(self, a: _Apply) -> None:
        ctor = _Call("layers.Masking", (*self.keras_args(a.info.kind, a.info.config), *a.name_kw))
        self.assign(a.vars, ctor, a.call_args)
        value = _lit(a.cfg.raw("mask_value"))
        mv = self.mask_layer(
            a.results[0], a.info.name, "MaskingMask", [value, *a.dtype], a.call_args
        )
        shown = _num_text(a.cfg.number("mask_value"))
        self.check_declared_mask(a.results[0], mv, f"{a.info.name}: Masking(mask_value={shown})",
                                 f"a step of all {shown}")  # fmt: skip
        self.finish(a, mv, True)

    def emit_elementwise(self, a: _Apply) -> None:
        """Dense, Activation, Dropout, SpatialDropout1D, LayerNormalization, Flatten, Reshape:
        the mask passes."""
        kind = a.info.kind
        ctor = _Call(f"layers.{kind}", (*self.keras_args(kind, a.info.config), *a.name_kw))
        self.assign(a.vars, ctor, a.call_args + a.fixed)
        self.finish(a, a.mask_var, self.ok[a.x] and a.op.mask is None)

    def emit_mask_taking(self, a: _Apply) -> None:
        """BatchNormalization, TimeDistributed: Keras' own layer, given the mask
        (TimeDistributed: the runtime's, which maps over the steps in a traced graph)."""
        kind = a.info.kind
        nested: list[str | _Call] = []
        if "layer" in a.cfg:
            nested.append(self.inner_layer(a.cfg.layer("layer"), a.dtype))
        cls = self.use(kind) if kind == "TimeDistributed" else f"layers.{kind}"
        ctor = _Call(cls, (*nested, *self.keras_args(kind, a.info.config), *a.name_kw))
        self.assign(a.vars, ctor, a.call_args + a.with_mask + a.fixed)
        self.finish(a, a.mask_var, True)

    def emit_window(self, a: _Apply) -> None:
        """Conv1D, MaxPooling1D, AveragePooling1D: the masked variant on a masked input,
        and an explicit output mask (WindowMask)."""
        kind, cfg = a.info.kind, a.cfg
        args = (*self.keras_args(kind, a.info.config), *a.name_kw)
        same_avg = kind == "AveragePooling1D" and cfg.text("padding") == "same"
        if a.mask_var is None and not same_avg:
            self.assign(a.vars, _Call(f"layers.{kind}", args), a.call_args)
            self.finish(a, None, True)
            return
        if a.mask_var is None:
            self.comment("padding=same as TensorFlow pads (Keras' torch backend repeats the edge)")
        self.assign(a.vars, _Call(self.use(f"Masked{kind}"), args), a.call_args + a.with_mask)
        if a.mask_var is None:
            self.finish(a, None, True)
            return
        if kind == "Conv1D":
            k, s, d = cfg.raw("kernel_size"), cfg.raw("strides"), cfg.raw("dilation_rate")
        else:
            k, d = cfg.raw("pool_size"), 1
            s = cfg.raw("strides") if cfg.raw("strides") is not None else k
        wargs = [_lit(k), _lit(s), _lit(d), _lit(cfg.text("padding"))]
        mv = self.mask_layer(a.results[0], a.info.name, "WindowMask", wargs, [a.mask_var])
        self.finish(a, mv, False)

    def emit_global_pooling(self, a: _Apply) -> None:
        kind = a.info.kind
        args = (*self.keras_args(kind, a.info.config), *a.name_kw)
        if a.mask_var is None:
            self.assign(a.vars, _Call(f"layers.{kind}", args), a.call_args)
        elif kind == "GlobalAveragePooling1D" and a.mask_kind is not None and a.mask_kind.nonempty:
            # Keras' masked mean: exact when no row is empty
            self.assign(a.vars, _Call(f"layers.{kind}", args), a.call_args + a.with_mask)
        else:
            cls = self.use(f"Masked{kind}")
            self.assign(a.vars, _Call(cls, args), a.call_args + a.with_mask)
        self.finish(a, None, True)

    def emit_temporal_softmax(self, a: _Apply) -> None:
        ctor = _Call(self.use("TemporalSoftmax"), tuple(a.name_kw))
        self.assign(a.vars, ctor, a.call_args + a.with_mask)
        self.finish(a, None, True)

    def emit_temporal_split(self, a: _Apply) -> None:
        n = _lit(a.cfg.integer("parts"))
        targets = a.vars if len(a.vars) > 1 else [a.vars[0] + ","]
        self.assign(targets, _Call(self.use("TemporalSplit"), (n, *a.name_kw)), a.call_args)
        if a.mask_var is None:
            self.finish(a, None, True)
            return
        mvs = [self.py.fresh(f"{r}_mask") for r in a.results]
        mname = self.kn.fresh(f"{a.info.name}_mask", python=False)
        targets = mvs if len(mvs) > 1 else [mvs[0] + ","]
        ctor = _Call("TemporalSplit", (n, f"name={_lit(mname)}"))
        self.lazy(targets, ctor, [a.mask_var], "the mask, split likewise")
        for r, mv in zip(a.results, mvs, strict=True):
            self.mask[r] = mv
            self.ok[r] = False

    # ------------------------------------------------------------ attention
    def emit_attention(self, a: _Apply) -> None:
        """Keras' Attention / MultiHeadAttention with explicit masks: the query's, and
        for the key steps the AND of the value's and the key's. Keras' own layer where
        no query step can be left without a valid key (and, for Attention, without
        dropout); a small subclass otherwise (docs/backend-keras.md)."""
        op, info, vars_, training, name_kw = a.op, a.info, a.vars, a.training, a.name_kw
        kind, cfg = info.kind, info.config
        names = [u.name for u in op.inputs]
        xs = [self.var[n] for n in names]
        q_mask = self.mask[names[0]]
        key_names = list(dict.fromkeys(n for n in names[1:] if self.mask[n] is not None))
        key_masks = list(dict.fromkeys(m for m in (self.mask[n] for n in key_names) if m))
        kinds = [k for k in (self.seq_mask(n) for n in key_names) if k is not None]
        causal = a.cfg.flag("use_causal_mask")
        dropout = _rate(cfg, "dropout")
        if dropout > 0:
            self.has_dropout = True
        key_mask: str | None = key_masks[0] if key_masks else None
        if len(key_masks) > 1:
            key_mask = self.mask_layer(f"{info.name}_keys", f"{info.name}_keys", "MaskAnd", [],
                                       ["[" + ", ".join(key_masks) + "]"],
                                       "a key step is valid where the value and the key are")  # fmt: skip
        # can a query step be left with no valid key step?
        sides = {k.side for k in kinds}
        nonempty = all(k.nonempty for k in kinds) and (len(sides) <= 1 and "any" not in sides)
        safe = not kinds or (nonempty and (not causal or sides == {"post"}))
        fixed = [f"training={training}"] if training is not None else []
        flags = ["use_causal_mask=True"] if causal else []
        if a.cfg.flag("return_attention_scores"):
            flags.append("return_attention_scores=True")
        if kind == "Attention":
            plain = safe and dropout == 0
            cls = "layers.Attention" if plain else self.use("MaskedAttention")
            if not safe:
                self.comment(
                    "a query step with no valid key gets 0 (Keras: the mean of the values)"
                )
            ctor = _Call(cls, (*self.keras_args(kind, cfg), *name_kw))
            call = ["[" + ", ".join(xs) + "]"]
            if q_mask is not None or key_mask is not None:
                call.append(f"mask=[{q_mask or 'None'}, {key_mask or 'None'}]")
            self.assign(vars_, ctor, call + flags + fixed)
        else:
            plain = safe and q_mask is None
            # heads of size 1 with a bias: Keras' TensorFlow ops.add puts the bias
            # [heads, 1] of a projection [B, T, heads, 1] on the time axis when T == heads
            key_dim, value_dim = a.cfg.integer("key_dim"), a.cfg.raw("value_dim")
            size_one = 1 in (key_dim, value_dim)
            misplaced = a.cfg.flag("use_bias") and a.cfg.integer("num_heads") > 1 and size_one
            # Keras' fused attention raises on its JAX backend when values and keys differ in size
            sizes_differ = value_dim is not None and value_dim != key_dim
            if not plain:
                cls = self.use("MaskedMultiHeadAttention")
                self.comment("a query step with nothing to attend to gets weights 0")
                self.comment("(Keras' fused path gives it the mean of the values)")
            elif misplaced or sizes_differ:
                cls = self.use("PortableMultiHeadAttention")
                if misplaced:
                    self.comment("heads of size 1: the projections' biases added by broadcasting")
                    self.comment("(Keras on TensorFlow adds them on the time axis when T == heads)")
                if sizes_differ:
                    self.comment("value_dim != key_dim: the explicit softmax path (Keras' fused")
                    self.comment("attention raises on its JAX backend for such values)")
            else:
                cls = "layers.MultiHeadAttention"
            ctor = _Call(cls, (*self.keras_args(kind, cfg), *name_kw))
            # MultiHeadAttention takes the query's mask from its Keras mask and removes the
            # Keras masks of its inputs: it gets copies, the query's carrying its mask
            call = list(xs)
            if q_mask is not None:
                v = self.py.fresh(f"{names[0]}_query")
                kname = self.kn.fresh(f"{info.name}_query", python=False)
                self.assign([v], _Call(self.use("WithMask"), (f"name={_lit(kname)}",)),
                            [xs[0], f"mask={q_mask}"])  # fmt: skip
                call[0] = v
            for i, n in enumerate(names[1:], start=1):
                if self.mask[n] is not None:
                    v = self.py.fresh(f"{n}_{'value' if i == 1 else 'key'}")
                    kname = self.kn.fresh(
                        f"{info.name}_{'value' if i == 1 else 'key'}", python=False
                    )
                    self.assign([v], _Call(self.use("DropMask"), (f"name={_lit(kname)}",)), [xs[i]])
                    call[i] = v
            if key_mask is not None:
                call.append(f"value_mask={key_mask}")
                if len(names) > 2:
                    call.append(f"key_mask={key_mask}")
            self.assign(vars_, ctor, call + flags + fixed)
            if len(vars_) > 1:  # the weights: Keras' inner Softmax leaves its mask on them
                kname = self.kn.fresh(f"{info.name}_scores", python=False)
                self.assign([vars_[1]], _Call(self.use("DropMask"), (f"name={_lit(kname)}",)),
                            [vars_[1]])  # fmt: skip
        for r in op.results:
            self.mask[r] = q_mask if self.tensor(r).mask is not None else None
            self.ok[r] = True

    # ------------------------------------------------------------ cell blocks and extern layers
    def describe(self, kind: str, cfg: Mapping[str, object]) -> str:
        """The .seq text of a layer call, cell blocks and extern layers included."""
        if kind in self.m.externs:
            return custom_text(kind, self.m.externs[kind].params, cfg)
        text = _describe(kind, cfg)
        if kind in ("RNN", "Bidirectional") and is_cell_layer(cfg):
            layer = cfg.get("layer")
            inner = layer.config if isinstance(layer, BoundLayer) else cfg
            cell = inner["cell"]
            assert isinstance(cell, BoundLayer)
            cdef = cell.config["__cell__"]
            assert isinstance(cdef, CellDef)
            call = custom_text(cell.kind, cdef.params, cell.config)
            text = re.sub(rf"\b{re.escape(cell.kind)}\b", call, text, count=1)
        return text

    def cell_block(
        self,
        op: ApplyOp,
        info: LayerInfo,
        dtype: list[str],
        mask_var: str | None,
        kind_: MaskKind | None,
    ) -> tuple[int, bool, str | None, MaskKind | None]:
        """The cell class of ``RNN(MyCell(...))`` (one per distinct text), set as the cell
        that inner_layer() gives; several inputs are masked by the AND of their masks.
        Returns (the cell's outputs, whether it runs in a NestedRNN, mask, mask kind)."""
        bc = bound_cell_of(info, self.m.types)
        key = tuple(cell_class_lines(bc, "{Cell}"))
        cls = self.cell_classes.get(key)
        if cls is None:
            cls = self.py.fresh(bc.cdef.name)
            self.cell_classes[key] = cls
            self.custom_classes.append(cell_class_lines(bc, cls))
        cell = info.config.get("cell")
        if cell is None:
            inner = info.config["layer"]
            assert isinstance(inner, BoundLayer)
            cell = inner.config["cell"]
        assert isinstance(cell, BoundLayer)
        args = [
            *custom_args(bc.cdef.params, cell.config),
            *dtype,
            f"name={_lit(_snake(cell.kind))}",
        ]
        self.cell_ctor = _Call(cls, tuple(args))
        nested = cell_is_nested(bc)
        if len(op.inputs) > 1 and op.mask is None:
            masks = list(dict.fromkeys(m for u in op.inputs if (m := self.mask[u.name])))
            kinds = [k for u in op.inputs if (k := self.seq_mask(u.name)) is not None]
            if not masks:
                return len(bc.outputs), nested, None, None
            if len(masks) == 1:
                mask_var = masks[0]
            else:  # valid where every input is
                base = op.results[0]
                mask_var = self.mask_layer(
                    base, info.name, "MaskAnd", [], ["[" + ", ".join(masks) + "]"]
                )
            sides = {k.side for k in kinds}
            side = sides.pop() if len(sides) == 1 and "any" not in sides else "any"
            nonempty = side != "any" and all(k.nonempty for k in kinds)
            kind_ = MaskKind(side, nonempty, any(k.declared for k in kinds))
        return len(bc.outputs), nested, mask_var, kind_

    def emit_extern(self, a: _Apply) -> None:
        """An extern layer: its class (one per declaration), the call, the output masks
        the declaration gives (explicit mask layers, as everywhere)."""
        op, info, vars_, training, dtype = a.op, a.info, a.vars, a.training, a.dtype
        edef = self.m.externs[info.kind]
        cls = self.extern_classes.get(edef.name)
        if cls is None:
            cls = self.py.fresh(edef.name)
            self.extern_classes[edef.name] = cls
            self.custom_classes.append(extern_class_lines(edef, cls))
            text = "\n".join(self.custom_classes[-1])
            for helper in EXTERN_HELPERS:
                if re.search(rf"\b{helper}\(", text):
                    self.use(helper)
        self.use("ExternLayer")
        ins = [u.name for u in op.inputs]
        masks = [self.mask[i] for i in ins]
        if op.mask is not None:
            masks = [self.var[op.mask.name]] * len(ins)
        args = [*custom_args(edef.params, info.config), "externs=externs", *dtype]
        args.append(f"name={_lit(info.name)}")
        call = [
            self.var[ins[0]] if len(ins) == 1 else "[" + ", ".join(self.var[i] for i in ins) + "]"
        ]
        if any(m is not None for m in masks):
            call.append(
                f"mask={masks[0] if len(ins) == 1 else '[' + ', '.join(str(m) for m in masks) + ']'}"
            )
        if training is not None:
            call.append(f"training={training}")
        targets = vars_ if len(vars_) > 1 else [vars_[0]]
        self.assign(targets, _Call(cls, tuple(args)), call)
        declared = []
        for r in op.results:
            t = self.tensor(r)
            shape = tuple(None if d is None else d.value for d in t.shape)
            declared.append((_KERAS_DTYPE[t.dtype], shape))
        self.extern_layers.append((info.name, tuple(declared)))
        # the output masks, by the declaration
        mk = edef.mask
        kind = mk.kind if mk.cond is None or bool(info.config.get(mk.cond)) else "none"
        in_mask = next((m for m in masks if m is not None), None)
        out_masks: list[str | None] = [None] * len(op.results)
        if kind == "propagate":
            out_masks = [in_mask] * len(op.results)
        elif kind == "generate":
            x = self.tensor(ins[0])
            if mk.value == 0 and x.rank == 2:
                mv = self.mask_layer(
                    op.results[0], info.name, "NonZeroMask", [], [self.var[ins[0]]]
                )
            else:
                value = _lit(
                    int(mk.value)
                    if mk.value is not None and float(mk.value).is_integer()
                    else mk.value
                )
                mv = self.mask_layer(
                    op.results[0], info.name, "NotEqualMask", [value], [self.var[ins[0]]]
                )
            out_masks = [mv] * len(op.results)
        elif kind == "split" and in_mask is not None:
            mvs = [self.py.fresh(f"{r}_mask") for r in op.results]
            mname = self.kn.fresh(f"{info.name}_mask", python=False)
            n = _lit(len(op.results))
            targets = mvs if len(mvs) > 1 else [mvs[0] + ","]
            ctor = _Call(self.use("TemporalSplit"), (n, f"name={_lit(mname)}"))
            self.lazy(targets, ctor, [in_mask], "the mask, split likewise")
            out_masks = list(mvs)
        elif kind == "concat" and in_mask is not None:
            parts = [m if m is not None else self.var[i] for i, m in zip(ins, masks, strict=True)]
            flags = _lit(tuple(m is not None for m in masks))
            mv = self.mask_layer(
                op.results[0], info.name, "ConcatMasks", [flags], ["[" + ", ".join(parts) + "]"]
            )
            out_masks = [mv] * len(op.results)
        for r, out_mask in zip(op.results, out_masks, strict=True):
            masked = self.tensor(r).mask is not None
            self.mask[r] = out_mask if masked else None
            self.ok[r] = True

    # ------------------------------------------------------------ recurrent
    def emit_recurrent(self, a: _Apply) -> None:
        """LSTM, GRU, SimpleRNN, RNN (cell blocks included) and Bidirectional: Keras' own
        layer on right-padded rows with no empty row read forwards, else its Masked
        variant (_MaskedRecurrent), which rearranges the rows to that shape."""
        op, info, vars_, training, dtype = a.op, a.info, a.vars, a.training, a.dtype
        mask_var, kind_ = a.mask_var, a.mask_kind
        kind = info.kind
        cfg = info.config
        bi = kind == "Bidirectional"
        inner = a.cfg.layer("layer") if bi else None
        flags = inner.config if inner is not None else cfg
        typed = Cfg(flags)
        rs = typed.flag("return_sequences")
        gb = typed.flag("go_backwards")
        unroll = typed.flag("unroll")
        mo = typed.text("masked_output") if "masked_output" in typed else "zero"
        cell_cfg = flags
        cell = flags.get("cell")
        if isinstance(cell, BoundLayer):
            cell_cfg = cell.config
        n_outputs, nested_cell = 1, False
        if is_cell_layer(cfg):  # a cell block: its class, and the mask of several inputs
            n_outputs, nested_cell, mask_var, kind_ = self.cell_block(
                op, info, dtype, mask_var, kind_
            )
        if _rate(cell_cfg, "dropout") > 0 or _rate(cell_cfg, "recurrent_dropout") > 0:
            self.has_dropout = True
        # Keras' own layer computes seqdsl's semantics exactly, on every backend and device,
        # for right-padded rows with no empty row, read forwards, not unrolled
        plain = mask_var is None or (
            kind_ is not None
            and kind_.side == "post"
            and kind_.nonempty
            and not unroll
            and (bi or (not gb and (not rs or mo == "zero")))
        )
        extra: list[str] = []
        if not plain:
            assert kind_ is not None
            if kind_.side != "any":
                extra.append(f"mask_side={_lit(kind_.side)}")
            if mo != "zero":
                extra.append(f"masked_output={_lit(mo)}")
        if bi:
            assert isinstance(inner, BoundLayer)
            cls = None if plain else f"Masked{inner.kind}"
            if nested_cell:
                cls = "NestedRNN" if plain else "MaskedNestedRNN"
            if cls is not None:
                self.use(cls)
            nested = self.inner_layer(inner, dtype, extra, cls)
            back: list[_Call] = []
            backward_layer = cfg.get("backward_layer")
            if isinstance(backward_layer, BoundLayer):  # its own config (go_backwards=True)
                b = self.inner_layer(backward_layer, dtype, extra, cls)
                name = f"name={_lit('backward_' + _snake(backward_layer.kind))}"
                back.append(_Call(f"backward_layer={b.callee}", (*b.args[:-1], name)))
            # around stateful layers: Keras' class with a compute_mask that works there
            bi_cls = self.use("StatefulBidirectional") if typed.flag("stateful") else None
            ctor = _Call(
                bi_cls or "layers.Bidirectional",
                (nested, *self.keras_args(kind, cfg), *back, *dtype, f"name={_lit(info.name)}"),
            )
        else:
            if mask_var is not None and rs and mo == "zero":
                extra.insert(0, "zero_output_for_mask=True")
            args: list[str | _Call] = []
            if isinstance(cell, BoundLayer):
                args.append(self.inner_layer(cell, dtype))
            args += [*self.keras_args(kind, cfg), *extra, *dtype, f"name={_lit(info.name)}"]
            if nested_cell:
                cls = self.use("NestedRNN" if plain else "MaskedNestedRNN")
            else:
                cls = f"layers.{kind}" if plain else self.use(f"Masked{kind}")
            ctor = _Call(cls, tuple(args))
        call_args = [self.var[op.inputs[0].name]]
        if len(op.inputs) > 1:
            call_args = ["[" + ", ".join(self.var[u.name] for u in op.inputs) + "]"]
        if op.initial_state is not None:
            call_args.append(
                "initial_state=[" + ", ".join(self.var[s.name] for s in op.initial_state) + "]"
            )
        if mask_var is not None:
            call_args.append(f"mask={mask_var}")
        if training is not None:
            call_args.append(f"training={training}")
        kc = info.kernels["keras"] if info.kernels else None
        reason = f" ({kc.reason})" if kc is not None and kc.reason else ""
        cls_name = ctor.callee if not bi else str(ctor.args[0]).partition("(")[0]
        self.kernel_notes.append(f"{info.name} ({cls_name.removeprefix('layers.')}): {kc}{reason}")
        if not plain and kind_ is not None:
            self.comment(
                _REARRANGED[kind_.side] + ("" if kind_.nonempty else "; empty rows as length 1")
            )
        self.assign(vars_, ctor, call_args)
        if typed.flag("stateful"):
            self.stateful.append(info.name)
        out_mask = mask_var
        if rs and mask_var is not None and gb and not bi:  # reversed time order
            out_mask = self.mask_layer(op.results[0], info.name, "FlipTime", [], [mask_var])
        n_seq = 2 if bi and a.cfg.text("merge_mode") == "none" else n_outputs
        sequences = vars_[:n_seq] if rs else []
        for r, v in zip(op.results, vars_, strict=True):
            self.mask[r] = out_mask if v in sequences else None
            self.ok[r] = True


#: the module names generated code reads (`keras.`, `np.`, `layers.`, `ops.`)
_READS_MODULE = re.compile(r"(?<![\w.])(keras|np|layers|ops)\.")

#: the rule of each built-in layer kind (extern layers: _Emitter.emit_extern)
RULES: dict[str, Callable[[_Emitter, _Apply], None]] = {
    "Embedding": _Emitter.emit_embedding,
    "Masking": _Emitter.emit_masking,
    **dict.fromkeys(
        ("Dense", "Activation", "Dropout", "SpatialDropout1D", "LayerNormalization", "Flatten")
        + ("Reshape",),
        _Emitter.emit_elementwise,
    ),
    **dict.fromkeys(("BatchNormalization", "TimeDistributed"), _Emitter.emit_mask_taking),
    **dict.fromkeys(("Conv1D", "MaxPooling1D", "AveragePooling1D"), _Emitter.emit_window),
    **dict.fromkeys(("GlobalAveragePooling1D", "GlobalMaxPooling1D"), _Emitter.emit_global_pooling),
    "TemporalSoftmax": _Emitter.emit_temporal_softmax,
    "TemporalSplit": _Emitter.emit_temporal_split,
    **dict.fromkeys(("Attention", "MultiHeadAttention"), _Emitter.emit_attention),
    **dict.fromkeys((*_RECURRENT, "Bidirectional"), _Emitter.emit_recurrent),
}

#: layers that take Keras' mask from their input: it must be the seqdsl one
_TAKES_MASK = frozenset(
    ("BatchNormalization", "TimeDistributed", "TemporalSoftmax", "GlobalAveragePooling1D")
)

_REARRANGED = {
    "post": "the Keras layer runs on right-padded rows",
    "pre": "the Keras layer runs on rows rolled to right padding",
    "any": "the Keras layer runs on rows compacted to right padding",
}


def _shape_text(shape: tuple[int | None, ...]) -> str:
    return (
        "[B"
        + "".join(
            f", {'T' if i == 0 and d is None else '_' if d is None else d}"
            for i, d in enumerate(shape)
        )
        + "]"
    )


def _rate(cfg: Mapping[str, object], key: str) -> float:
    v = cfg.get(key, 0.0)
    return float(v) if isinstance(v, (int, float)) else 0.0


def _snake(kind: str) -> str:
    out = ""
    for i, c in enumerate(kind):
        if (
            c.isupper()
            and i
            and (not kind[i - 1].isupper() or (i + 1 < len(kind) and kind[i + 1].islower()))
        ):
            out += "_"
        out += c.lower()
    return out
