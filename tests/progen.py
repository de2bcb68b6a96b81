"""Random *valid* `.seq` programs for differential testing (as NNSmith does for
deep-learning compilers), and a reducer that shrinks a failing one.

The generator knows no layer by name: the layer kinds, their parameters, the
parameter types, ranges and choices come from the catalogue
(``seqdsl.catalogue.CATALOGUE`` and ``MERGES``), so a new layer is fuzzed as
soon as it has an entry. A program grows one statement at a time; each
candidate statement (a layer call with random options, a merge, a
``drop_mask``) is kept only if the checker accepts the program with it, and the
checker's types of the new values (rank, mask kind) steer the next choices.
What the catalogue cannot say is kept in two small tables: ids stay below
:data:`VOCAB` (so an ``Embedding`` gets ``input_dim >= VOCAB``), and the sizes
of the inputs. The time symbols ``T`` and ``S`` are run with :data:`T_STEPS`
and :data:`S_STEPS` steps (divisible by 2 and 3, for ``TemporalSplit``; 12 also by 4).

A :class:`Prog` is a list of input declarations, statements and outputs; its
``text`` is the `.seq` source. :func:`reduce` removes statements, outputs,
options and inputs while a predicate still holds (delta debugging, one element
at a time, to a fixed point).
"""

from __future__ import annotations

import functools
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import seqdsl
from seqdsl.catalogue import ACTIVATIONS, CATALOGUE, INITIALIZERS, MERGES, REQUIRED, Param
from seqdsl.checker import CheckedModel
from seqdsl.types import TensorType

VOCAB = 7
B_ROWS = 3
T_STEPS = 12
S_STEPS = 6
#: catalogue parameters the generator leaves alone: names only rename weights, and
#: `stateful` needs a fixed batch and a second call (tests/parity_cases.py covers it)
SKIPPED_PARAMS = frozenset({"name", "trainable", "stateful", "unroll"})
#: layer kinds drawn for a statement: everything but cells (they live inside `RNN`)
LAYER_KINDS = tuple(sorted(k for k, s in CATALOGUE.items() if s.category != "cell"))
CELL_KINDS = tuple(sorted(k for k, s in CATALOGUE.items() if s.category == "cell"))
RECURRENT_KINDS = tuple(
    sorted(k for k, s in CATALOGUE.items() if s.category == "recurrent" and k != "Bidirectional")
)
MERGE_KINDS = tuple(sorted(MERGES))


@dataclass(frozen=True)
class Layer:
    """A layer constructor: kind and keyword options (values are `.seq` text or a
    nested :class:`Layer`)."""

    kind: str
    options: tuple[tuple[str, object], ...] = ()

    @property
    def text(self) -> str:
        args = ", ".join(f"{k}={v.text if isinstance(v, Layer) else v}" for k, v in self.options)
        return f"{self.kind}({args})"


@dataclass(frozen=True)
class Input:
    name: str
    #: one of fpad, fmask, fplain, ids, idsmasked, mask, vec, spad
    kind: str
    decl: str


@dataclass(frozen=True)
class Stmt:
    targets: tuple[str, ...]
    sources: tuple[str, ...]
    layer: Layer | None = None  # a layer call
    merge: str | None = None  # or a merge function
    merge_options: tuple[tuple[str, str], ...] = ()
    call: tuple[tuple[str, str], ...] = ()  # mask=..., initial_state=[...]
    #: neither: `target = source -> drop_mask`

    @property
    def text(self) -> str:
        lhs = ", ".join(self.targets)
        if self.layer is None and self.merge is None:
            return f"{lhs} = {self.sources[0]} -> drop_mask"
        args = [*self.sources, *(f"{k}={v}" for k, v in self.call)]
        if self.merge is not None:
            args = [*self.sources, *(f"{k}={v}" for k, v in self.merge_options)]
            return f"{lhs} = {self.merge}({', '.join(args)})"
        assert self.layer is not None
        return f"{lhs} = {self.layer.text}({', '.join(args)})"

    @property
    def reads(self) -> tuple[str, ...]:
        out = list(self.sources)
        for _, v in self.call:
            out += re.findall(r"[A-Za-z_]\w*", v)
        return tuple(out)


@dataclass(frozen=True)
class Prog:
    inputs: tuple[Input, ...]
    stmts: tuple[Stmt, ...] = ()
    #: (value, with its mask)
    outputs: tuple[tuple[str, bool], ...] = ()

    @property
    def text(self) -> str:
        lines = [f"    input {i.name}: {i.decl}" for i in self.inputs]
        lines += [f"    {s.text}" for s in self.stmts]
        outs = [f"{n} with mask" if m else n for n, m in self.outputs]
        if outs:
            lines.append(f"    output {', '.join(outs)}")
        return "model Fuzz {\n" + "\n".join(lines) + "\n}\n"


def check(prog: Prog) -> CheckedModel | None:
    """The checked model, or None when the checker rejects the program."""
    program, diags = seqdsl.analyze(prog.text, "fuzz.seq")
    if program is None or any(d.is_error for d in diags) or not program.models:
        return None
    return program.models[0]


def _results(prog: Prog) -> int | None:
    """How many results the last statement gives (from the checker's SEQ306), or None."""
    _, diags = seqdsl.analyze(prog.text, "fuzz.seq")
    for d in diags:
        if d.code == "SEQ306":
            m = re.search(r"gives (\d+) result", d.message)
            if m:
                return int(m.group(1))
    return None


# --------------------------------------------------------------------------
# option values from the catalogue's parameter types


def _int_value(rng: random.Random, p: Param) -> int:
    lo = int(p.lo) if p.lo is not None else 1
    hi = int(p.hi) if p.hi is not None else lo + 4
    if p.name == "input_dim":
        return rng.choice([VOCAB, VOCAB + 3])
    if p.name == "axis":
        return rng.choice([-1, -1, 2, 1])
    return rng.randint(lo, min(hi, lo + 4))


def _float_value(rng: random.Random, p: Param) -> str:
    if p.name == "mask_value":
        return rng.choice(["0.0", "0.0", "1.5"])
    lo = p.lo if p.lo is not None else -1.0
    hi = p.hi if p.hi is not None else lo + 0.5
    v = round(rng.uniform(lo, hi), 3)
    if p.hi_open and p.hi is not None and v >= p.hi:
        v = lo
    return repr(float(v))


def value_of(rng: random.Random, p: Param, parent: str, depth: int) -> object:
    """A random value of parameter ``p`` of layer ``parent``, as `.seq` text (or a Layer)."""
    t = p.type
    if t == "int":
        return str(_int_value(rng, p))
    if t == "float":
        return _float_value(rng, p)
    if t == "bool":
        return rng.choice(["true", "false"])
    if t == "choice":
        return rng.choice(p.choices)
    if t == "activation":
        return rng.choice(ACTIVATIONS)
    if t == "initializer":
        return rng.choice(INITIALIZERS)
    if t == "ints":
        return str(rng.randint(1, 3))
    if t == "int_or_none":
        return rng.choice(["none", str(rng.randint(1, 3))])
    if t == "ints_or_none":
        return rng.choice(["none", str(rng.randint(1, 4))])
    if t == "shape":
        return rng.choice(["[-1]", "[2, -1]", "[-1, 1]"])
    if t == "axis":
        return rng.choice(["time", "features"])
    if t == "axes":
        return "none"
    if t == "layer":
        if p.name == "cell":
            kinds = CELL_KINDS
        elif CATALOGUE[parent].category == "recurrent":
            kinds = RECURRENT_KINDS
        else:
            kinds = tuple(k for k in LAYER_KINDS if k != parent)
        return random_layer(rng, rng.choice(kinds), depth + 1)
    raise ValueError(f"no generator for parameter type {t!r} ({parent}.{p.name})")


def random_layer(rng: random.Random, kind: str, depth: int = 0) -> Layer:
    """``kind`` with its required parameters and each optional one with probability 0.3."""
    spec = CATALOGUE[kind]
    opts: list[tuple[str, object]] = []
    for p in spec.params:
        if p.name in SKIPPED_PARAMS:
            continue
        if p.default is REQUIRED or rng.random() < 0.3:
            if p.type == "layer" and depth >= 2:
                raise _Reject
            opts.append((p.name, value_of(rng, p, kind, depth)))
    return Layer(kind, tuple(opts))


class _Reject(Exception):
    pass


# --------------------------------------------------------------------------
# programs


_INPUT_KINDS = ("fpad", "fpad", "fmask", "fplain", "ids", "idsmasked", "spad")


def _input(rng: random.Random, name: str, kind: str) -> Input:
    f = rng.randint(2, 4)
    side = rng.choice(["post", "pre"])
    nonempty = ", nonempty=true" if rng.random() < 0.2 else ""
    decl = {
        "fpad": f"f32[B, T, {f}] pad({side}{nonempty}) masked",
        "spad": f"f32[B, S, {f}] pad({side}) masked",
        "fmask": f"f32[B, T, {f}] masked",
        "fplain": f"f32[B, T, {f}]",
        "ids": f"i32[B, T] pad({side}, value=0{nonempty})",
        "idsmasked": f"i32[B, T] pad({side}, value=0{nonempty}) masked",
        "mask": "mask[B, T]",
    }[kind]
    return Input(name, kind, decl)


def _seqs(model: CheckedModel, names: Sequence[str]) -> list[str]:
    return [
        n
        for n in names
        if isinstance(model.types.get(n), TensorType) and model.types[n].rank == 3  # type: ignore[union-attr]
    ]


def _propose(
    rng: random.Random, prog: Prog, model: CheckedModel, values: list[str], n: int
) -> tuple[Prog, Stmt]:
    """A candidate statement (with any new inputs it needs), not yet checked."""
    inputs = list(prog.inputs)
    target = f"{'_' if rng.random() < 0.08 else ''}v{n}"
    r = rng.random()
    seqs = _seqs(model, values)
    if r < 0.15 and len(values) >= 2:
        fn = rng.choice(MERGE_KINDS)
        pool = seqs if len(seqs) >= 2 and rng.random() < 0.8 else values
        k = 2 if fn == "subtract" else rng.choice([2, 2, 3])
        srcs = tuple(rng.choice(pool) for _ in range(k))
        mopts: tuple[tuple[str, str], ...] = ()
        spec = MERGES[fn]
        for p in spec.params:
            if p.name not in SKIPPED_PARAMS and rng.random() < 0.5:
                mopts += ((p.name, str(value_of(rng, p, fn, 0))),)
        return replace(prog, inputs=tuple(inputs)), Stmt(
            (target,), srcs, merge=fn, merge_options=mopts
        )
    if r < 0.2:
        return prog, Stmt((target,), (rng.choice(values),))
    kind = rng.choice(LAYER_KINDS)
    spec = CATALOGUE[kind]
    layer = random_layer(rng, kind)
    lo, hi = spec.n_inputs
    count = rng.randint(lo, min(hi, 3)) if kind != "RNN" else 1
    pool = seqs if seqs and rng.random() < 0.85 else values
    srcs = tuple(rng.choice(pool) for _ in range(count))
    call: list[tuple[str, str]] = []
    if "mask" in spec.data_args and rng.random() < 0.15:
        m = next((i.name for i in inputs if i.kind == "mask"), None)
        if m is None:
            m = f"m{len(inputs)}"
            inputs.append(_input(rng, m, "mask"))
        call.append(("mask", m))
    if "initial_state" in spec.data_args and rng.random() < 0.2:
        units = _units(layer)
        if units is not None:
            n_states = rng.choice([1, 2, 4])
            names = []
            for _ in range(n_states):
                s = f"s{len(inputs)}"
                inputs.append(Input(s, "vec", f"f32[B, {units}]"))
                names.append(s)
            call.append(("initial_state", f"[{', '.join(names)}]"))
    return replace(prog, inputs=tuple(inputs)), Stmt((target,), srcs, layer=layer, call=tuple(call))


def _units(layer: Layer) -> str | None:
    for k, v in layer.options:
        if k == "units":
            return str(v)
        if isinstance(v, Layer):
            return _units(v)
    return None


@functools.lru_cache(maxsize=1024)  # programs are immutable; tests share them
def generate(seed: int, max_stmts: int = 6, tries: int = 40) -> Prog:
    """A random program that the checker accepts (deterministic in ``seed``)."""
    rng = random.Random(seed)
    n_inputs = rng.choice([1, 1, 2, 2, 3])
    inputs = tuple(_input(rng, f"x{i}", rng.choice(_INPUT_KINDS)) for i in range(n_inputs))
    prog = Prog(inputs, (), ())
    values = [i.name for i in inputs if i.kind not in ("mask", "vec")]
    # an input that nothing reads yet is output as it is, so every program checks
    prog = replace(prog, outputs=tuple((v, False) for v in values))
    model = check(prog)
    assert model is not None, prog.text
    goal = rng.randint(1, max_stmts)
    n = 0
    for _ in range(tries):
        if n >= goal:
            break
        try:
            cand, stmt = _propose(rng, prog, model, values, n)
        except _Reject:
            continue
        trial = replace(cand, stmts=(*cand.stmts, stmt), outputs=((stmt.targets[0], False),))
        got = _results(trial)
        if got is not None and got > 1:
            base = stmt.targets[0]
            stmt = replace(stmt, targets=(base, *(f"{base}_{j}" for j in range(1, got))))
        trial = _with_outputs(replace(cand, stmts=(*cand.stmts, stmt)), rng)
        checked = check(trial)
        if checked is None:
            continue
        prog, model = trial, checked
        values += [t for t in stmt.targets if not t.startswith("_")]
        n += 1
    return prog


def _with_outputs(prog: Prog, rng: random.Random) -> Prog:
    """Output every value nothing reads (with its mask where it has one), and some others."""
    read = {r for s in prog.stmts for r in s.reads}
    names = [i.name for i in prog.inputs if i.kind not in ("mask", "vec")]
    names += [t for s in prog.stmts for t in s.targets]
    outs = []
    model = check(replace(prog, outputs=()))
    for n in names:
        if n.startswith("_"):
            continue
        if n not in read or rng.random() < 0.2:
            t = model.types.get(n) if model is not None else None
            masked = isinstance(t, TensorType) and t.mask is not None and t.rank >= 2
            outs.append((n, masked and rng.random() < 0.7))
    if not outs:
        outs = [(next(n for n in names if not n.startswith("_")), False)]
    return replace(prog, outputs=tuple(outs))


# --------------------------------------------------------------------------
# the reducer


def _drop_unread_inputs(prog: Prog) -> Prog:
    read = {r for s in prog.stmts for r in s.reads} | {n for n, _ in prog.outputs}
    return replace(prog, inputs=tuple(i for i in prog.inputs if i.name in read))


def _candidates(prog: Prog) -> list[Prog]:
    """Smaller programs: one statement, output, option or call argument less, or a
    nested layer replaced by its default, or a merge of fewer values."""
    out: list[Prog] = []
    for i, s in enumerate(prog.stmts):  # a statement, its outputs replaced by its first source
        rest = prog.stmts[:i] + prog.stmts[i + 1 :]
        src = s.sources[0]
        if any(t in {r for x in rest for r in x.reads} for t in s.targets):
            ren = {t: src for t in s.targets}
            rest = tuple(replace(x, sources=tuple(ren.get(y, y) for y in x.sources)) for x in rest)
        outs = tuple((src if n in s.targets else n, m) for n, m in prog.outputs)
        outs = tuple(dict.fromkeys(outs))
        out.append(_drop_unread_inputs(replace(prog, stmts=rest, outputs=outs)))
    if len(prog.outputs) > 1:
        for j in range(len(prog.outputs)):
            out.append(
                _drop_unread_inputs(replace(prog, outputs=prog.outputs[:j] + prog.outputs[j + 1 :]))
            )
    for j, (n, m) in enumerate(prog.outputs):
        if m:
            outs = prog.outputs[:j] + ((n, False),) + prog.outputs[j + 1 :]
            out.append(replace(prog, outputs=outs))
    for i, s in enumerate(prog.stmts):

        def put(new: Stmt, i: int = i) -> None:
            out.append(
                _drop_unread_inputs(
                    replace(prog, stmts=prog.stmts[:i] + (new,) + prog.stmts[i + 1 :])
                )
            )

        if s.layer is not None:
            for smaller in _smaller_layers(s.layer):
                put(replace(s, layer=smaller))
        for j in range(len(s.call)):
            put(replace(s, call=s.call[:j] + s.call[j + 1 :]))
        for j in range(len(s.merge_options)):
            put(replace(s, merge_options=s.merge_options[:j] + s.merge_options[j + 1 :]))
        if s.merge is not None and len(s.sources) > 2:
            for j in range(len(s.sources)):
                put(replace(s, sources=s.sources[:j] + s.sources[j + 1 :]))
    return out


def _smaller_layers(layer: Layer) -> list[Layer]:
    out = []
    for j, (k, v) in enumerate(layer.options):
        spec = CATALOGUE[layer.kind].param(k)
        if spec is not None and spec.default is not REQUIRED:
            out.append(replace(layer, options=layer.options[:j] + layer.options[j + 1 :]))
        if isinstance(v, Layer):
            for inner in _smaller_layers(v):
                opts = layer.options[:j] + ((k, inner),) + layer.options[j + 1 :]
                out.append(replace(layer, options=opts))
    return out


def size(prog: Prog) -> int:
    n = len(prog.inputs) + len(prog.outputs) + sum(m for _, m in prog.outputs)
    for s in prog.stmts:
        n += 1 + len(s.call) + len(s.merge_options) + len(s.sources)
        n += _layer_size(s.layer) if s.layer is not None else 0
    return n


def _layer_size(layer: Layer) -> int:
    return 1 + sum(1 + (_layer_size(v) if isinstance(v, Layer) else 0) for _, v in layer.options)


def reduce(prog: Prog, fails: Callable[[Prog], bool], budget: int = 400) -> Prog:
    """The smallest program reachable by one-element removals for which ``fails``
    still holds (and the checker accepts it): greedy, to a fixed point."""
    tried = 0
    progress = True
    while progress and tried < budget:
        progress = False
        for cand in sorted(_candidates(prog), key=size):
            if size(cand) >= size(prog) or check(cand) is None:
                continue
            tried += 1
            if fails(cand):
                prog = cand
                progress = True
                break
            if tried >= budget:
                break
    return prog
