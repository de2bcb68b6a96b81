"""Program generators and mutators for fuzzing the front end (issue 12).

Three sources of programs, all deterministic for a given ``random.Random``:

* :func:`derive` -- a random derivation of the Lark grammar (``grammar/seq.lark``,
  read through the parser's own compiled rules): syntactically valid by
  construction, with names drawn from the catalogue where the grammar expects a
  layer, an argument, a dtype or a dimension. Mostly *semantically* wrong
  programs: they exercise the lowering and the checker's error paths.
* :func:`model_program` -- a model built from the layer catalogue: inputs of every
  dtype and mask kind, pipes of catalogue layers with arguments drawn from each
  layer's parameter table (types, choices, ranges, and values just outside them),
  merges, unpacking. Many check clean: they reach the deep paths of the checker.
* :func:`mutate_text` -- the token mutations of ``tests/test_fuzz.py`` plus
  text-level attacks: line endings, a BOM, NUL and invisible characters, deep
  nesting, long literals, truncation, duplicated or swapped lines, keywords as names.

:func:`program` picks one of them; ``tests/test_fuzz.py`` runs a few hundred in CI
and 100,000 under ``-m full``.
"""

from __future__ import annotations

import functools
import random
import re
from collections.abc import Callable, Sequence

from lark import Lark
from lark.grammar import NonTerminal, Rule, Terminal

from seqdsl.catalogue import CATALOGUE, MERGES
from seqdsl.layerspec import REQUIRED, LayerSpec, Param
from seqdsl.parser import _parser

__all__ = ["derive", "model_program", "mutate_text", "program"]

LAYERS = tuple(sorted(CATALOGUE))
MERGE_FNS = tuple(sorted(MERGES))
ARG_NAMES = tuple(sorted({p.name for s in CATALOGUE.values() for p in s.params}))
DTYPES = ("f32", "f64", "i32", "i64", "bool", "mask", "float32", "int")
DIMS = ("B", "T", "S", "1", "2", "3", "8", "16", "0")
VALUE_NAMES = ("x", "y", "h", "tokens", "frames", "a", "b", "m", "out", "_u")
KEYWORDS = ("masked", "pad", "input", "output", "model", "mask", "with", "state", "repeat")
ACTIVATIONS = ("relu", "tanh", "sigmoid", "linear", "softmax", "gelu", "swish", "reLU")
INITS = ("glorot_uniform", "orthogonal", "zeros", "ones", "he_normal", "lecun_normal")
INTS = ("0", "1", "2", "3", "4", "8", "16", "64", "65", "1024", "99999999999")
FLOATS = ("0.0", "0.1", "0.5", "1.0", "1.5", "-0.5", "1e-3", "1e309", ".5")


# ---------------------------------------------------------------- grammar derivation


@functools.lru_cache(maxsize=1)
def _rules() -> tuple[dict[str, list[Rule]], dict[str, int], Lark]:
    lark = _parser()
    by_origin: dict[str, list[Rule]] = {}
    for r in lark.rules:
        by_origin.setdefault(r.origin.name, []).append(r)
    # the least derivation height of each nonterminal (fixpoint), to close off deep trees
    height: dict[str, int] = {}
    changed = True
    while changed:
        changed = False
        for origin, rules in by_origin.items():
            for r in rules:
                hs = [height.get(s.name) if isinstance(s, NonTerminal) else 0 for s in r.expansion]
                if any(h is None for h in hs):
                    continue
                h = 1 + max((x for x in hs if x is not None), default=0)
                if h < height.get(origin, 10**9):
                    height[origin] = h
                    changed = True
    return by_origin, height, lark


def _terminal(rng: random.Random, name: str, context: str, lark: Lark) -> str:
    term = lark.get_terminal(name)
    if term.pattern.type == "str":
        return str(term.pattern.value)
    if name == "NAME":
        if context in ("ctor", "decorator", "c_call"):
            return rng.choice(LAYERS + MERGE_FNS + ("kernel", "cudnn", "tanh", "Foo"))
        if context in ("kwarg", "c_kwarg"):
            return rng.choice(ARG_NAMES + ("mask", "initial_state", "training", "input_shape"))
        if context == "type_expr":
            return rng.choice(DTYPES)
        if context in ("dim_name", "d_name", "shape", "dim_shape"):
            return rng.choice(DIMS[:3] + ("in", "units"))
        if context == "param":
            return rng.choice(("units", "int", "float", "bool", "str", "layer", "depth"))
        if context == "kind_list":
            return rng.choice(("post", "pre", "any", "nonempty", "sideways"))
        if context in ("pad_opt", "arglist"):
            return rng.choice(("post", "pre", "value", "maxlen") + VALUE_NAMES)
        if rng.random() < 0.05:
            return rng.choice(KEYWORDS)
        return rng.choice(VALUE_NAMES + ACTIVATIONS[:2])
    if name == "INT":
        return rng.choice(INTS[:9])
    if name == "FLOAT":
        return rng.choice(FLOATS)
    if name == "STRING":
        return rng.choice(('"enc"', '"a b"', "'x'", '""', '"top"'))
    if name == "COMMENT":
        return "# c\n"
    return rng.choice(("x", "1"))  # pragma: no cover - every terminal is handled above


def derive(rng: random.Random, max_depth: int = 14) -> str:
    """A random sentence of the grammar (whitespace between tokens, a newline between
    statements)."""
    by_origin, height, lark = _rules()
    out: list[str] = []
    # iterative: (symbol, depth, nearest named rule)
    stack: list[tuple[Terminal | NonTerminal, int, str]] = [(NonTerminal("start"), 0, "start")]
    budget = 600  # tokens: keeps programs small
    while stack:
        sym, depth, ctx = stack.pop()
        if isinstance(sym, Terminal):
            tok = _terminal(rng, sym.name, ctx, lark)
            out.append(tok)
            budget -= 1
            continue
        rules = by_origin[sym.name]
        if depth >= max_depth or budget <= 0:  # close off: the shallowest expansion
            rules = sorted(rules, key=lambda r: _rule_height(r, height))[:1]
        if sym.name == "start":  # a program of at least one item
            rules = [r for r in rules if r.expansion] or rules
        if sym.name == "_item" and rng.random() < 0.6:  # mostly models
            rules = [r for r in rules if r.expansion[0].name == "model"] or rules
        r = rng.choice(rules)
        alias = r.alias or r.origin.name
        named = alias if not str(alias).startswith("_") and not str(alias).startswith("__") else ctx
        if sym.name in ("model", "assign", "input_decl", "output_decl", "layer_block"):
            out.append("\n")
        for s in reversed(r.expansion):
            stack.append((s, depth + 1, str(named)))
    text = " ".join(out)
    return text.replace(" \n ", "\n").replace("{ ", "{\n    ")


def _rule_height(r: Rule, height: dict[str, int]) -> int:
    return max(
        (height.get(s.name, 10**9) if isinstance(s, NonTerminal) else 0 for s in r.expansion),
        default=0,
    )


# ---------------------------------------------------------------- catalogue models


_WRAPPED = {
    "Bidirectional": ("LSTM(4, return_sequences=true)", "GRU(4)", "SimpleRNN(3)", "LSTM(4)"),
    "TimeDistributed": ("Dense(3)", "Dense(4, activation=relu)", "Dropout(0.1)"),
    "RNN": ("LSTMCell(4)", "GRUCell(3)", "SimpleRNNCell(2)"),
}


def _value(rng: random.Random, p: Param, spec: LayerSpec | None = None) -> str | None:
    """An argument value for ``p``: mostly of the right type and range, sometimes not."""
    r = rng.random()
    if r < 0.06:  # the wrong type, or a value just outside the range
        return rng.choice(("true", "1.5", '"s"', "-1", "0", "relu", "[1, 2]", "none"))
    t = p.type
    if t == "int":
        lo = int(p.lo) if p.lo is not None else 1
        hi = int(p.hi) if p.hi is not None else 32
        return str(rng.randint(lo, min(hi, lo + 31)))
    if t in ("int_or_none", "ints_or_none"):
        return rng.choice(("none", "2", "3"))
    if t == "ints":
        return rng.choice(("2", "3", "[2]", "1"))
    if t == "float":
        lo = p.lo if p.lo is not None else 0.0
        return str(round(lo + rng.random() * 0.5, 3))
    if t == "bool":
        return rng.choice(("true", "false"))
    if t == "choice":
        return rng.choice(p.choices) if p.choices else None
    if t == "activation":
        return rng.choice(ACTIVATIONS[:-1])
    if t == "initializer":
        return rng.choice(INITS)
    if t == "str":
        return rng.choice(('"n1"', '"n2"', '"enc"'))
    if t == "layer":
        wrapped = _WRAPPED.get(spec.name if spec is not None else "", ("LSTM(4)", "Dense(3)"))
        return rng.choice(wrapped)
    if t == "shape":
        return rng.choice(("[-1]", "[2, -1]", "[4]"))
    if t in ("axis", "axes"):
        return rng.choice(("time", "features", "-1", "1", "none"))
    return None


def _ctor(rng: random.Random, spec: LayerSpec) -> str:
    args: list[str] = []
    positional = True
    for p in spec.params:
        required = p.default is REQUIRED
        if not required and rng.random() > 0.25:
            positional = False
            continue
        v = _value(rng, p, spec)
        if v is None:
            positional = False
            continue
        if p.name == "name" and rng.random() < 0.7:
            continue
        if positional and required and rng.random() < 0.7:
            args.append(v)
        else:
            positional = False
            args.append(f"{p.name}={v}")
    return f"{spec.name}({', '.join(args)})"


def _stage(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.04:
        return "drop_mask"
    if r < 0.08:
        inner = " -> ".join(
            _ctor(rng, CATALOGUE[rng.choice(LAYERS)]) for _ in range(rng.randint(1, 2))
        )
        return f"repeat({rng.randint(1, 3)}) {{ {inner} }}"
    if r < 0.12:
        return "@kernel(cudnn) " + _ctor(rng, CATALOGUE[rng.choice(("LSTM", "GRU"))])
    return _ctor(rng, CATALOGUE[rng.choice(LAYERS)])


_COMMON = ("LSTM", "GRU", "SimpleRNN", "Dense", "Dropout", "Masking", "Bidirectional",
           "TimeDistributed", "Conv1D", "LayerNormalization", "GlobalAveragePooling1D")  # fmt: skip


def model_program(rng: random.Random) -> str:
    """A model of 1-3 inputs and 1-6 statements drawn from the catalogue."""
    lines = [f"model M{rng.randint(0, 9)} {{"]
    names: list[str] = []
    ids: list[str] = []
    masks: list[str] = []
    for i in range(rng.randint(1, 3)):
        name = ("tokens", "frames", "m", "other")[i if i < 3 else 3]
        kind = rng.random()
        if kind < 0.3:
            pad = rng.choice(("", " pad(post, value=0)", " pad(pre, value=0, maxlen=12)"))
            lines.append(f"    input {name}: {rng.choice(('i32', 'i64'))}[B, T]{pad}")
            ids.append(name)
            continue
        elif kind < 0.4:
            lines.append(f"    input {name}: mask({rng.choice(('post', 'pre', 'any'))})[B, T]")
            masks.append(name)
            continue
        else:
            dims = rng.choice(("B, T, 8", "B, T, 3", "4, 12, 8", "B, 16, 8", "B, T, 2, 4"))
            opt = rng.choice(
                ("", " masked", " pad(post, value=0.0) masked", " pad(pre, value=-1.5)")
            )
            lines.append(f"    input {name}: {rng.choice(('f32', 'f32', 'f64'))}[{dims}]{opt}")
        names.append(name)
    for k, name in enumerate(ids):  # token ids go through an embedding first
        mz = rng.choice(("true", "false"))
        lines.append(f"    e{k} = {name} -> Embedding(50, 8, mask_zero={mz})")
        names.append(f"e{k}")
    if not names:
        lines.append("    input x: f32[B, T, 8]")
        names.append("x")
    for j in range(rng.randint(1, 6)):
        src = rng.choice(names)
        target = f"v{j}"
        r = rng.random()
        if r < 0.06 and masks:
            rnn = rng.choice(("LSTM(4, return_sequences=true)", "GRU(3)", "SimpleRNN(2)"))
            lines.append(f"    {target} = {rnn}({src}, mask={rng.choice(masks)})")
        elif r < 0.12 and len(names) > 1:
            fn = rng.choice(MERGE_FNS)
            a, b = rng.sample(names, 2)
            lines.append(f"    {target} = {fn}({a}, {b})")
        elif r < 0.2:
            lines.append(f"    {target}, w{j} = {src} -> TemporalSplit(2)")
            names.append(f"w{j}")
        elif r < 0.28:
            lines.append(f"    {target} = {_ctor(rng, CATALOGUE[rng.choice(_COMMON)])}({src})")
        else:
            n = rng.randint(1, 4)
            stages = [
                _ctor(rng, CATALOGUE[rng.choice(_COMMON)]) if rng.random() < 0.6 else _stage(rng)
                for _ in range(n)
            ]
            sep = rng.choice((" -> ", "\n        -> "))
            lines.append(f"    {target} = {src} -> {sep.join(stages)}")
        names.append(target)
    outs = rng.sample(names, min(len(names), rng.randint(1, 2)))
    lines.append(
        "    output " + ", ".join(o + (" with mask" if rng.random() < 0.2 else "") for o in outs)
    )
    lines.append("}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- mutations


def _line_endings(rng: random.Random, text: str) -> str:
    return text.replace("\n", rng.choice(("\r\n", "\r", "\n\r", "\n\n")))


def _inject(rng: random.Random, text: str) -> str:
    ch = rng.choice(("\0", "\ufeff", "\u200b", "\t", "\x0c", "é", "$", ";", "`", "\\", "\u2192"))
    i = rng.randrange(len(text) + 1)
    return text[:i] + ch + text[i:]


def _nest(rng: random.Random, text: str) -> str:
    n = rng.choice((50, 99, 101, 400, 2000))
    deep = "[" * n + "1" + "]" * n if rng.random() < 0.5 else "(" * n + "x" + ")" * n
    i = text.rfind("\n    output")
    if i < 0:
        return text + deep
    return text[:i] + f"\n    q = x -> Reshape({deep})" + text[i:]


def _long_int(rng: random.Random, text: str) -> str:
    digits = rng.choice((19, 20, 100, 101, 4301, 6000))
    big = "9" * digits
    nums = [m.span() for m in re.finditer(r"\b\d+\b", text)]
    if not nums:
        return text + big
    a, b = rng.choice(nums)
    return text[:a] + big + text[b:]


def _lines(rng: random.Random, text: str) -> str:
    ls = text.split("\n")
    if len(ls) < 2:
        return text
    i = rng.randrange(len(ls))
    op = rng.randrange(4)
    if op == 0:
        del ls[i]
    elif op == 1:
        ls.insert(i, ls[i])
    elif op == 2:
        j = rng.randrange(len(ls))
        ls[i], ls[j] = ls[j], ls[i]
    else:  # a keyword as the name of a statement
        ls.insert(i, f"    {rng.choice(KEYWORDS)} = x -> Dense(3)")
    return "\n".join(ls)


def _truncate(rng: random.Random, text: str) -> str:
    return text[: rng.randrange(len(text) + 1)]


TextMutator = Callable[[random.Random, str], str]
TEXT_MUTATORS: tuple[TextMutator, ...] = (
    _line_endings,
    _inject,
    _nest,
    _long_int,
    _lines,
    _truncate,
)


def mutate_text(rng: random.Random, text: str, token_mutate: TextMutator | None = None) -> str:
    """One to three mutations: text-level ones, or ``token_mutate`` (the token mutator)."""
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        if token_mutate is not None and rng.random() < 0.5:
            text = token_mutate(rng, text)
        else:
            text = rng.choice(TEXT_MUTATORS)(rng, text)
    return text


def program(
    rng: random.Random, seeds: Sequence[str], token_mutate: TextMutator | None = None
) -> tuple[str, str]:
    """One fuzz program and how it was made: a derivation, a catalogue model, or a
    mutant of either or of a seed program."""
    r = rng.random()
    if r < 0.25:
        return derive(rng), "derive"
    if r < 0.55:
        return model_program(rng), "model"
    if r < 0.7:
        return mutate_text(rng, derive(rng), token_mutate), "derive+mutate"
    if r < 0.85:
        return mutate_text(rng, model_program(rng), token_mutate), "model+mutate"
    return mutate_text(rng, rng.choice(list(seeds)), token_mutate), "seed+mutate"
