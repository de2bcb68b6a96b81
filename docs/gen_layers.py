"""Generate docs/layers.md from the layer catalogue.

    python docs/gen_layers.py            # rewrite docs/layers.md
    python docs/gen_layers.py --check    # exit 1 if docs/layers.md is stale

tests/test_catalogue.py runs the check, so the page cannot drift from the code.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from seqdsl.catalogue import CATALOGUE, MERGES, REQUIRED, LayerSpec, Param  # noqa: E402

OUT = Path(__file__).resolve().parent / "layers.md"


def _default(p: Param) -> str:
    if p.default is REQUIRED:
        return "required"
    if p.default is None:
        return "none"
    if isinstance(p.default, bool):
        return "true" if p.default else "false"
    if isinstance(p.default, str):
        return p.default
    return repr(p.default)


def _type(p: Param) -> str:
    if p.choices:
        return " \\| ".join(p.choices)
    return p.type


def _section(spec: LayerSpec) -> list[str]:
    lines = [f"### `{spec.name}`", "", spec.doc[0].upper() + spec.doc[1:] + ".", ""]
    facts = [
        f"category: {spec.category}",
        f"mask rule: {spec.mask_rule}",
        f"padding invariant: {'yes' if spec.padding_invariant else 'no'}"
        + (f" ({spec.invariant_note})" if spec.invariant_note else ""),
        "data arguments: " + (", ".join(f"`{a}=`" for a in sorted(spec.data_args)) or "none"),
    ]
    if spec.kernels is not None:
        facts.append("kernel per target: yes (see language.md, Kernels)")
    lines.append("; ".join(facts) + ".")
    lines.append("")
    lines.append("| parameter | type | default | notes |")
    lines.append("| --- | --- | --- | --- |")
    for p in spec.params:
        notes = p.doc
        if p.lo is not None or p.hi is not None:
            lo = "" if p.lo is None else f">= {p.lo:g}"
            hi = "" if p.hi is None else (f"< {p.hi:g}" if p.hi_open else f"<= {p.hi:g}")
            rng = ", ".join(x for x in (lo, hi) if x)
            notes = f"{rng}; {notes}" if notes else rng
        lines.append(f"| `{p.name}` | {_type(p)} | {_default(p)} | {notes} |")
    if spec.unsupported:
        names = ", ".join(f"`{n}`" for n in sorted(spec.unsupported))
        lines += ["", f"Rejected Keras arguments (SEQ202): {names}."]
    lines.append("")
    return lines


def render() -> str:
    lines = [
        "# Built-in layers",
        "",
        "Generated from `seqdsl/catalogue.py` by `python docs/gen_layers.py`; do not edit by hand.",
        "Parameters and defaults follow Keras 3. Every layer also takes `name=` and `trainable=`.",
        "Positional arguments bind in the order listed.",
        "",
        "## Layers",
        "",
    ]
    for spec in CATALOGUE.values():
        lines += _section(spec)
    lines += ["## Merge functions", "", "Called on values: `concat(a, b, axis=time)`.", ""]
    for spec in MERGES.values():
        lines += _section(spec)
    return "\n".join(lines).rstrip() + "\n"


def main() -> int:
    text = render()
    if "--check" in sys.argv:
        if not OUT.exists() or OUT.read_text(encoding="utf-8") != text:
            print("docs/layers.md is stale: run `python docs/gen_layers.py`", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
