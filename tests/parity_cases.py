"""Parity cases for recurrent layers: a pairwise covering array of the options.

Each case is a small `.seq` program with one recurrent layer and its inputs:
three rows (a full row, a padded row and, where the mask kind allows, an empty
row), float inputs with a non-trivial scale, and a non-zero initial state when
the case asks for one. Backends are compared with the reference interpreter
on these cases (tests/test_*_backend.py); ``all_cases(full=True)`` gives the
whole product for ``pytest -m full``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

B, T, F, U = 3, 5, 4, 3

#: option -> values; the first value is the default
OPTIONS: dict[str, tuple[object, ...]] = {
    "cell": ("LSTM", "GRU", "GRU_v1", "SimpleRNN", "RNN_LSTMCell"),
    "wrapper": (
        "none",
        "concat",
        "sum",
        "mul",
        "ave",
        "none2",
    ),  # none2 = Bidirectional merge_mode=none
    "mask": ("post", "pre", "any", "unmasked"),
    "return_sequences": (True, False),
    "return_state": (False, True),
    "go_backwards": (False, True),
    "initial_state": (False, True),
    "masked_output": ("zero", "carry"),
    "stateful": (False, True),
    "activation": ("tanh", "relu"),
    "use_bias": (True, False),
    "training": (False, True),  # dropout=0.3, recurrent_dropout=0.2 with injected masks
}


def valid(c: dict[str, object]) -> bool:
    bi = c["wrapper"] != "none"
    if bi and (c["go_backwards"] or c["masked_output"] == "carry"):
        return False
    return not (c["stateful"] and c["initial_state"])


def _pairwise(options: dict[str, tuple[object, ...]]) -> list[dict[str, object]]:
    """A greedy pairwise covering array (every value pair of every two options
    appears in some valid case)."""
    names = list(options)
    uncovered: set[tuple[str, object, str, object]] = set()
    for a, b in itertools.combinations(names, 2):
        for va in options[a]:
            for vb in options[b]:
                probe = {n: options[n][0] for n in names}
                probe[a], probe[b] = va, vb
                if _completable(probe, options, {a, b}):
                    uncovered.add((a, va, b, vb))
    cases: list[dict[str, object]] = []
    rng = np.random.default_rng(0)
    while uncovered:
        best: dict[str, object] | None = None
        best_gain = -1
        for _ in range(60):
            cand = {n: options[n][int(rng.integers(len(options[n])))] for n in names}
            # seed with one uncovered pair so each round makes progress
            a, va, b, vb = sorted(uncovered, key=repr)[int(rng.integers(len(uncovered)))]
            cand[a], cand[b] = va, vb
            if not valid(cand):
                continue
            gain = sum(1 for (x, vx, y, vy) in uncovered if cand[x] == vx and cand[y] == vy)
            if gain > best_gain:
                best, best_gain = cand, gain
        if best is None or best_gain <= 0:
            break
        cases.append(best)
        uncovered = {p for p in uncovered if not (best[p[0]] == p[1] and best[p[2]] == p[3])}
    return cases


def _completable(
    probe: dict[str, object], options: dict[str, tuple[object, ...]], fixed: set[str]
) -> bool:
    free = [n for n in options if n not in fixed]
    for n in free:  # try defaults first, then the other values, one option at a time
        if valid(probe):
            return True
        for v in options[n]:
            probe[n] = v
            if valid(probe):
                return True
        probe[n] = options[n][0]
    return valid(probe)


@dataclass
class Case:
    id: str
    options: dict[str, object]
    source: str
    inputs: list[np.ndarray] = field(default_factory=list)
    lengths: dict[str, np.ndarray] = field(default_factory=dict)
    dropout_masks: dict[str, np.ndarray] = field(default_factory=dict)
    training: bool = False
    layer: str = "y_layer"


def _layer_text(c: dict[str, object]) -> tuple[str, int, int]:
    """(constructor text named "y_layer", states per direction, directions)."""
    cell = str(c["cell"])
    args = [str(U)]
    if c["activation"] != "tanh":
        args.append(f"activation={c['activation']}")
    if not c["use_bias"]:
        args.append("use_bias=false")
    if c["training"]:
        args += ["dropout=0.3", "recurrent_dropout=0.2"]
    if cell == "GRU_v1":
        args.append("reset_after=false")
    flags = [
        f"{f}=true"
        for f in ("return_sequences", "return_state", "go_backwards", "stateful")
        if c[f]
    ]
    if c["masked_output"] != "zero":
        flags.append(f"masked_output={c['masked_output']}")
    n_states = 2 if cell in ("LSTM", "RNN_LSTMCell") else 1
    bi = c["wrapper"] != "none"
    name = [] if bi else ['name="y_layer"']
    if cell == "RNN_LSTMCell":
        core = f"RNN({', '.join([f'LSTMCell({chr(44).join(args)})', *flags, *name])})"
    else:
        core = f"{cell.replace('_v1', '')}({', '.join(args + flags + name)})"
    if not bi:
        return core, n_states, 1
    merge = "none" if c["wrapper"] == "none2" else c["wrapper"]
    return f'Bidirectional({core}, merge_mode={merge}, name="y_layer")', n_states, 2


def make_case(c: dict[str, object], seed: int = 0) -> Case:
    ctor, n_states, dirs = _layer_text(c)
    batch = str(B) if c["stateful"] else "B"
    mask = c["mask"]
    lines = []
    if mask in ("post", "pre"):
        lines.append(f"    input x: f32[{batch}, T, {F}] pad({mask}) masked")
    else:
        lines.append(f"    input x: f32[{batch}, T, {F}]")
    if mask == "any":
        lines.append(f"    input m: mask[{batch}, T]")
    states = [f"s{i}" for i in range(n_states * dirs)] if c["initial_state"] else []
    for s in states:
        lines.append(f"    input {s}: f32[{batch}, {U}]")
    call_args = ["x"]
    if mask == "any":
        call_args.append("mask=m")
    if states:
        call_args.append(f"initial_state=[{', '.join(states)}]")
    if c["training"]:
        call_args.append("training=true")
    n_out = (2 if c["wrapper"] == "none2" else 1) + (n_states * dirs if c["return_state"] else 0)
    results = [f"r{i}" for i in range(n_out)]
    lines.append(f"    {', '.join(results)} = {ctor}({', '.join(call_args)})")
    first_seq = bool(c["return_sequences"]) and mask != "unmasked"
    outs = [f"{results[0]} with mask" if first_seq else results[0], *results[1:]]
    if c["wrapper"] == "none2" and first_seq:
        outs[1] = f"{results[1]} with mask"
    lines.append(f"    output {', '.join(outs)}")
    source = "model Case {\n" + "\n".join(lines) + "\n}\n"
    rng = np.random.default_rng(seed)
    inputs: list[np.ndarray] = [rng.normal(0.0, 1.5, (B, T, F))]
    lengths: dict[str, np.ndarray] = {}
    if mask in ("post", "pre"):
        lengths["x"] = np.array([T, 3, 0])  # a full, a padded and an empty row
    if mask == "any":
        m = np.zeros((B, T), dtype=bool)
        m[0] = True
        m[1, [0, 2, 3]] = True  # gaps; row 2 is empty
        inputs.append(m)
    for _ in states:
        inputs.append(rng.normal(0.0, 0.8, (B, U)))
    dropout: dict[str, np.ndarray] = {}
    if c["training"]:
        prefixes = ["y_layer/forward", "y_layer/backward"] if dirs == 2 else ["y_layer"]
        for p in prefixes:
            dropout[f"{p}/input"] = (rng.random((B, F)) > 0.3).astype(np.float64)
            dropout[f"{p}/recurrent"] = (rng.random((B, U)) > 0.2).astype(np.float64)
    ident = "-".join(f"{k}={v}" for k, v in c.items() if v != OPTIONS[k][0])
    return Case(ident or "defaults", dict(c), source, inputs, lengths, dropout, bool(c["training"]))


def all_cases(full: bool = False) -> list[Case]:
    if full:
        combos: Iterator[tuple[object, ...]] = itertools.product(*OPTIONS.values())
        dicts = [dict(zip(OPTIONS, v, strict=True)) for v in combos]
        dicts = [d for d in dicts if valid(d)]
    else:
        dicts = _pairwise(OPTIONS)
    return [make_case(d, seed=i) for i, d in enumerate(dicts)]
