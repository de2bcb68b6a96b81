"""The model summary: a Keras-style layer table plus time, mask and kernels.

Keras' ``model.summary()`` shows layer, output shape and parameter count. This
adds what Keras lacks: the time dimension and the mask kind of every value,
and the kernel each target (keras, torch, jax) will use for each recurrent
layer on a GPU, with the reason when it is not the fastest. The kernel columns
are headed ``keras GPU`` ...: ``cudnn`` names NVIDIA's fused kernel, which
only a GPU runs (on a CPU each framework runs its own path, :data:`CPU_NOTE`).
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Sequence

from .catalogue import TARGETS, PadInfo
from .checker import CheckedModel, LayerInfo
from .ir import DropMaskOp, MergeOp, Op
from .types import MaskType, TensorType, ValueType, fmt_dim

__all__ = [
    "CPU_NOTE",
    "summary_text",
    "summary_json",
    "time_of",
    "mask_of",
    "op_label",
    "pad_text",
    "kernel_cells",
    "HEADER",
    "summary_rows",
]

#: what the kernel columns mean off a GPU (the summary's last lines, and its JSON)
CPU_NOTE = (
    "The kernel columns name the kernel each target runs on a GPU (cudnn: the fused "
    "cuDNN kernel); on a CPU, torch runs its fused CPU kernel where they say cudnn, "
    "JAX lax.scan, Keras its own CPU path."
)

#: the columns of the summary table (the kernel columns: the kernel on a GPU, CPU_NOTE)
HEADER = (
    "Layer (type)",
    "Value",
    "Output",
    "Time",
    "Mask",
    "Param #",
    *(f"{t} GPU" for t in TARGETS),
)


def time_of(t: ValueType | None) -> str:
    """The time dimension of a value, or ``-`` for values with no time axis."""
    if isinstance(t, MaskType):
        return fmt_dim(t.time)
    if isinstance(t, TensorType) and (
        t.rank >= 3 or (t.rank == 2 and t.dtype not in ("f32", "f64"))
    ):
        return fmt_dim(t.time)
    return "-"


def mask_of(t: ValueType | None) -> str:
    if isinstance(t, MaskType):
        return str(t.kind)
    if isinstance(t, TensorType) and t.mask is not None:
        return str(t.mask)
    return "-"


def op_label(op: Op) -> str:
    """An operation as the summary's "Layer (type)" column writes it."""
    if isinstance(op, DropMaskOp):
        return "drop_mask"
    if isinstance(op, MergeOp):
        return f"{op.name} ({op.fn})"
    return f"{op.layer.name} ({op.layer.kind})"


def pad_text(p: PadInfo) -> str:
    """An input's padding as the summary's "Padding:" lines write it."""
    extra = f", maxlen={p.maxlen}, truncate={p.truncate}" if p.maxlen is not None else ""
    return f"pad({p.side}, value={_num(p.value)}{extra})" + (", nonempty" if p.nonempty else "")


def kernel_cells(info: LayerInfo | None) -> list[str]:
    """The kernel of a layer per target (in ``TARGETS`` order); empty strings when it has none."""
    if info is None or info.kernels is None:
        return ["" for _ in TARGETS]
    return [info.kernels[t].kernel for t in TARGETS]


def _type_str(t: ValueType | None) -> str:
    return "?" if t is None else str(t)


def _rows(m: CheckedModel) -> list[tuple[list[str], LayerInfo | None]]:
    by_op = {layer.op_index: layer for layer in m.layers}
    rows: list[tuple[list[str], LayerInfo | None]] = []
    for inp in m.model.inputs:
        t = m.types.get(inp.name)
        kind = "Mask" if inp.is_mask else "Input"
        rows.append(
            ([f"{inp.name} ({kind})", inp.name, _type_str(t), time_of(t), mask_of(t), "0"], None)
        )
    for i, op in enumerate(m.model.ops):
        info = by_op.get(i)
        label = op_label(op)
        params = (
            f"{info.params:,}" if info is not None else ("0" if isinstance(op, DropMaskOp) else "?")
        )
        for j, res in enumerate(op.results):
            t = m.types.get(res)
            cells = [
                label if j == 0 else "",
                res,
                _type_str(t),
                time_of(t),
                mask_of(t),
                params if j == 0 else "",
            ]
            rows.append((cells, info if j == 0 else None))
    return rows


def summary_rows(m: CheckedModel) -> list[tuple[list[str], LayerInfo | None]]:
    """The rows of the summary table (the cells under :data:`HEADER`), one per value,
    in model order, with the layer that made the row's first value (None for
    inputs, ``drop_mask``, a layer's further results and layers that failed)."""
    return [(cells + kernel_cells(info), info) for cells, info in _rows(m)]


def summary_text(m: CheckedModel, file: str = "") -> str:
    header = list(HEADER)
    table: list[list[str]] = []
    notes: list[str] = []
    for cells, info in _rows(m):
        ks = kernel_cells(info)
        if info is not None and info.kernels is not None:
            for t in TARGETS:
                reason = info.kernels[t].reason
                if reason:
                    notes.append(
                        f"  {info.name} ({info.kind}) on {t} (GPU): {info.kernels[t].kernel} - {reason}"
                    )
        table.append(cells + ks)
    widths = [max(len(r[i]) for r in [header, *table]) for i in range(len(header))]
    right = {5}

    def fmt(row: Sequence[str]) -> str:
        parts = [
            c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(row)
        ]
        return " " + "  ".join(parts).rstrip()

    rule = "─" * (sum(widths) + 2 * (len(widths) - 1) + 1)
    out = [f'Model: "{m.name}"' + (f"  ({file})" if file else ""), rule, fmt(header), rule]
    out += [fmt(r) for r in table]
    out.append(rule)
    total = m.total_params
    out.append(f" Total params: {total:,} ({_kb(total)})")
    out.append(f" Trainable params: {m.trainable_params:,} ({_kb(m.trainable_params)})")
    out.append(f" Non-trainable params: {m.non_trainable_params:,} ({_kb(m.non_trainable_params)})")
    outs = ", ".join(o.name + (" with mask" if o.with_mask else "") for o in m.model.outputs)
    out.append(f" Outputs: {outs}")
    if m.constraints:
        out.append(" Run-time constraints:")
        out += [f"  {c}" for c in m.constraints]
    if m.pads:
        out.append(" Padding:")
        for name, p in m.pads.items():
            out.append(f"  {name}: {pad_text(p)}")
    if notes:
        out.append(" Kernel notes:")
        out += notes
    if any(info.kernels is not None for info in m.layers):
        out += textwrap.wrap(CPU_NOTE, 100, initial_indent=" ", subsequent_indent=" ")
    out.append(
        " Parameter counts follow Keras (count_params()); torch's fixed-zero bias_hh is not counted."
    )
    return "\n".join(out) + "\n"


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else str(v)


def _kb(n: int) -> str:
    b = n * 4
    if b >= 1024**5:  # integer arithmetic: huge counts overflow a float
        return f"{b // 1024**4:,} TB"
    if b >= 1024 * 1024:
        return f"{b / 1024 / 1024:.2f} MB"
    if b >= 1024:
        return f"{b / 1024:.2f} KB"
    return f"{b} B"


def summary_json(models: Sequence[CheckedModel], file: str = "") -> str:
    doc = []
    for m in models:
        values = {
            name: {
                "type": str(t),
                "time": time_of(t),
                "mask": None if mask_of(t) == "-" else mask_of(t),
            }
            for name, t in m.types.items()
        }
        layers = [
            {
                "name": layer.name,
                "kind": layer.kind,
                "inputs": list(layer.inputs),
                "outputs": list(layer.outputs),
                "trainable_params": layer.trainable_params,
                "non_trainable_params": layer.non_trainable_params,
                "padding_invariant": layer.padding_invariant,
                # the kernel on a GPU, per target (CPU_NOTE: what runs on a CPU)
                "kernels": (
                    {t: {"kernel": k.kernel, "reason": k.reason} for t, k in layer.kernels.items()}
                    if layer.kernels is not None
                    else None
                ),
                "line": layer.span.line,
                # a layer of an expanded `layer` block: the file that defines the block
                "source": layer.span.file,
            }
            for layer in m.layers
        ]
        doc.append(
            {
                "model": m.name,
                "file": file,
                "values": values,
                "layers": layers,
                "total_params": m.total_params,
                "trainable_params": m.trainable_params,
                "non_trainable_params": m.non_trainable_params,
                "outputs": [{"name": o.name, "with_mask": o.with_mask} for o in m.model.outputs],
                "constraints": [str(c) for c in m.constraints],
                "kernel_note": CPU_NOTE,
            }
        )
    return json.dumps(doc, indent=2) + "\n"
