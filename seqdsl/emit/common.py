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
from ..ir import InputDecl

__all__ = ["decl_text", "describe_layer", "py_literal", "seq_value"]


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
