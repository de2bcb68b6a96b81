"""Helpers every emitter shares: Python literals and `.seq` text for comments.

Emitters write readable code whose comments quote the `.seq` source; these
functions rebuild that text from the checked model, one implementation for
every target.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping

from ..catalogue import REQUIRED, BoundLayer, spec_for
from ..checker import Constraint
from ..dims import Dim
from ..ir import InputDecl

__all__ = [
    "constraint_check",
    "constraint_values",
    "decl_text",
    "describe_layer",
    "f_string",
    "py_literal",
    "scaled_size_code",
    "seq_value",
    "size_code",
]


def py_literal(v: object) -> str:
    """A Python literal for a configuration value."""
    if isinstance(v, str):
        if v.isascii() and v.isprintable() and '"' not in v and "\\" not in v:
            return f'"{v}"'  # what json.dumps gives, without its cost
        return json.dumps(v)
    if isinstance(v, bool) or v is None:
        return repr(v)
    if isinstance(v, float):
        if math.isnan(v):
            return 'float("nan")'
        if math.isinf(v):
            return 'float("inf")' if v > 0 else '-float("inf")'
        return repr(v)
    if isinstance(v, int):
        return repr(v)
    if isinstance(v, (tuple, list)):
        return "(" + ", ".join(py_literal(x) for x in v) + ("," if len(v) == 1 else "") + ")"
    raise TypeError(f"no literal for {v!r}")


def seq_value(v: object) -> str:
    """A configuration value as written in `.seq` source."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, BoundLayer):
        return describe_layer(v.kind, v.config)
    if isinstance(v, float):
        return str(int(v)) if v.is_integer() and abs(v) < 1e15 else repr(v)
    if isinstance(v, tuple):
        return "[" + ", ".join(seq_value(x) for x in v) + "]"
    if isinstance(v, str) and v not in ("post", "pre") and not v.isidentifier():
        return json.dumps(v)
    return str(v)


def describe_layer(kind: str, cfg: Mapping[str, object]) -> str:
    """``LSTM(32, return_sequences=true)``: a layer with its non-default arguments."""
    spec = spec_for(kind)
    if spec is None:  # pragma: no cover - checked models only hold known layers
        return kind
    args: list[str] = []
    for p in spec.params:
        if p.name in ("name", "trainable") or p.name not in cfg:
            continue
        v = cfg[p.name]
        if p.default is not REQUIRED and v == p.default and type(v) is type(p.default):
            continue
        args.append(seq_value(v) if p.default is REQUIRED else f"{p.name}={seq_value(v)}")
    if cfg.get("trainable") is False:
        args.append("trainable=false")
    return f"{kind}({', '.join(args)})"


def decl_text(inp: InputDecl) -> str:
    """``tokens: i32[B, T] pad(post, value=0)``, rebuilt from the declaration."""
    dims = ", ".join("_" if d.value is None else str(d.value) for d in inp.dims)
    if inp.is_mask:
        kind = ", ".join(w for w, _ in inp.mask_words)
        return f"{inp.name}: mask{'(' + kind + ')' if kind else ''}[{dims}]"
    out = f"{inp.name}: {inp.dtype}[{dims}]"
    if inp.pad is not None:
        parts = [
            a.value.describe() if a.name is None else f"{a.name}={a.value.describe()}"
            for a in inp.pad
        ]
        out += " pad(" + ", ".join(parts) + ")"
    if inp.masked:
        out += " masked"
    return out


def scaled_size_code(d: Dim, sizes: str) -> tuple[str, int]:
    """(integer expression over ``sizes``, denominator L): ``d == expr / L`` exactly."""
    den = d.const.denominator
    for _, k in d.terms:
        den = den * k.denominator // math.gcd(den, k.denominator)
    parts: list[str] = []
    for atom, k in d.terms:
        coef = int(k * den)
        if atom.op == "sym":
            code = f'{sizes}["{atom.name}"]'
        else:
            assert atom.arg is not None
            inner, l2 = scaled_size_code(atom.arg, sizes)
            inner = inner if " " not in inner else f"({inner})"
            code = f"{inner} // {atom.div * l2}"
            code = f"-(-{inner} // {atom.div * l2})" if atom.op == "ceil" else code
            code = code if coef == 1 or atom.op == "ceil" else f"({code})"
        parts.append(code if coef == 1 else f"{coef} * {code}")
    c = int(d.const * den)
    if c or not parts:
        parts.append(str(c))
    return " + ".join(parts).replace("+ -", "- "), den


def size_code(d: Dim, sizes: str = "sizes") -> str:
    """A Python expression for the size ``d`` over ``sizes["T"]`` etc.: integer
    arithmetic over one common denominator, exact where ``d`` is an integer (the
    run-time constraints are checked in order: its exact divisions hold by then)."""
    code, den = scaled_size_code(d, sizes)
    if den == 1:
        return code
    return f"{code} // {den}" if " " not in code else f"({code}) // {den}"


def constraint_check(c: Constraint, sizes: str = "sizes") -> tuple[str, str]:
    """(a test over ``sizes``, true when the run-time constraint ``c`` is broken; the
    f-string literal of its error), one text on every backend: "T = 5, but
    TemporalSplit (line 15) needs T % 2 == 0", "S/2 = 6 (S = 12), but Conv1D (line 4)
    needs S/2 >= 7": the size, the symbols' values, the layer, its line, the condition."""
    expr = size_code(c.dim, sizes)
    if c.minimum is not None:
        test = f"{expr} < {c.minimum}"
    else:
        test = f"{expr if ' ' not in expr else f'({expr})'} % {c.divisor}"
    rule = c.rule.replace("{", "{{").replace("}", "}}")
    return test, f_string(f"{constraint_values(c, sizes)}, but {rule}")


def constraint_values(c: Constraint, sizes: str = "sizes") -> str:
    """The text of the sizes of a constraint as an f-string's body: "T = {sizes['T']}",
    or "S/2 = {sizes['S'] // 2} (S = {sizes['S']})" for a size made of symbols."""
    names = sorted(c.dim.symbols())
    symbols = ", ".join(f"{s} = {{{sizes}[{s!r}]}}" for s in names)
    shown = str(c.dim)
    if names == [shown]:
        return symbols
    code = size_code(c.dim, sizes).replace('"', "'")  # inside the f-string's quotes
    return f"{shown} = {{{code}}} ({symbols})"


def f_string(body: str) -> str:
    """An f-string literal of ``body`` (its braces are the replacement fields)."""
    return py_literal(body).replace('"', 'f"', 1)
