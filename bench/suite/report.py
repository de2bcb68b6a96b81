"""Tables (Markdown pipe tables, readable in a terminal) and target verdicts of a suite run."""

from __future__ import annotations

from typing import Any

HANDWRITTEN_MAX = 1.05
HANDWRITTEN_MIN_BASELINE_MS = 1.0
MASKS_MAX = 1.25
COMPILE_MAX_MS = 200.0


def ms(v: float | None) -> str:
    if v is None:
        return "-"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    if v >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def timing(stats: dict[str, Any] | None) -> str:
    """median (IQR %)"""
    if not stats:
        return "-"
    iqr = stats.get("iqr_pct")
    return f"{ms(stats['median_ms'])} ({iqr:.0f}%)" if iqr is not None else ms(stats["median_ms"])


def ratio(r: dict[str, Any] | None) -> str:
    """ratio of medians [per-round p25-p75]"""
    if not r:
        return "-"
    return f"{r['ratio']:.2f} [{r['per_round_p25']:.2f}-{r['per_round_p75']:.2f}]"


def table(head: list[str], rows: list[list[str]]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)
    ]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    out = [line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in rows]
    return "\n".join(out)


def _sort_key(r: dict[str, Any]) -> tuple[Any, ...]:
    cells = {"lstm": 0, "gru": 1, "bilstm": 2}
    return (
        r.get("framework", ""),
        cells.get(r.get("cell", ""), 9),
        r.get("B", 0) * r.get("T", 0) * r.get("U", 0) ** 2,
        r.get("B", 0),
        r.get("mode", ""),
    )


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "MISSED")


# --------------------------------------------------------------------------
# targets


def targets(doc: dict[str, Any]) -> dict[str, Any]:
    res = doc["results"]
    out: dict[str, Any] = {}
    if "handwritten" in res:
        rows = []
        for r in res["handwritten"]:
            if "error" in r:
                continue
            base_ms = r["variants"][r["baseline"]]["median_ms"]
            ok = (
                None
                if base_ms < HANDWRITTEN_MIN_BASELINE_MS
                else r["ratio"]["ratio"] <= HANDWRITTEN_MAX
            )
            r["target"] = _verdict(ok)
            rows.append(ok)
        applicable = [x for x in rows if x is not None]
        out["handwritten"] = {
            "target": f"generated / hand-written <= {HANDWRITTEN_MAX} on every row whose baseline "
            f"takes at least {HANDWRITTEN_MIN_BASELINE_MS} ms",
            "rows": len(applicable),
            "missed": sum(1 for x in applicable if not x),
            "verdict": _verdict(all(applicable) if applicable else None),
        }
    if "masks" in res:
        n = missed = 0
        for r in res["masks"]:
            if "error" in r:
                continue
            r["target"] = {}
            for kind, rr in r["ratios"].items():
                ok = rr["ratio"] <= MASKS_MAX
                r["target"][kind] = _verdict(ok)
                n += 1
                missed += not ok
        out["masks"] = {
            "target": f"masked / unmasked <= {MASKS_MAX} for every mask kind, torch and JAX",
            "ratios": n,
            "missed": missed,
            "verdict": _verdict(missed == 0 if n else None),
        }
    if "keras" in res:
        n = missed = 0
        for r in res["keras"]:
            if "error" in r:
                continue
            native = {"torch": "ours-torch", "jax": "ours-jax"}.get(r["keras_backend"])
            if native and native in r["ratios"]:
                ok = r["ratios"][native]["ratio"] < 1.0
                r["target"] = _verdict(ok)
                n += 1
                missed += not ok
            else:
                r["target"] = "n/a"
        out["keras"] = {
            "target": "ours (native torch / JAX emission) faster than Keras 3's own masked path "
            "on Keras' torch and JAX backends",
            "rows": n,
            "missed": missed,
            "verdict": _verdict(missed == 0 if n else None),
        }
    if "compile" in res:
        verdicts = {}
        for r in res["compile"]:
            if r.get("target_ms"):
                r["target"] = {}
                for b, total in r["check_plus_emit_ms"].items():
                    ok = total < r["target_ms"]
                    r["target"][b] = _verdict(ok)
                    verdicts[b] = ok
        out["compile"] = {
            "target": f"check + emit of a 1000-layer model under {COMPILE_MAX_MS:.0f} ms",
            "per_backend": {b: _verdict(v) for b, v in verdicts.items()},
            "verdict": _verdict(all(verdicts.values()) if verdicts else None),
        }
    return out


# --------------------------------------------------------------------------
# rendering


def render_handwritten(rows: list[dict[str, Any]]) -> str:
    head = [
        "framework",
        "cell",
        "size",
        "mode",
        "generated ms",
        "hand-written ms (each option)",
        "baseline",
        "gen/hand",
        "<= 1.05",
    ]
    body = []
    for r in sorted(rows, key=_sort_key):
        v = r["variants"]
        hands = ", ".join(f"{k} {ms(s['median_ms'])}" for k, s in v.items() if k != "generated")
        body.append(
            [
                r["framework"],
                r["cell"],
                r["size"],
                r["mode"],
                timing(v["generated"]),
                hands,
                r["baseline"],
                ratio(r["ratio"]),
                r.get("target", ""),
            ]
        )
    return table(head, body)


def render_masks(rows: list[dict[str, Any]]) -> str:
    head = ["framework", "cell", "size", "mode", "unmasked ms", "post", "pre", "gaps", "<= 1.25"]
    body = []
    for r in sorted(rows, key=_sort_key):
        rr = r["ratios"]
        tgt = r.get("target", {})
        body.append(
            [
                r["framework"], r["cell"], r["size"], r["mode"], timing(r["variants"]["none"]),
                ratio(rr.get("post")), ratio(rr.get("pre")), ratio(rr.get("gaps")),
                "met" if tgt and all(t == "met" for t in tgt.values()) else ", ".join(f"{k} {t}" for k, t in tgt.items() if t != "met"),
            ]
        )  # fmt: skip
    return table(head, body)


def render_keras(rows: list[dict[str, Any]]) -> str:
    head = [
        "Keras backend",
        "cell",
        "size",
        "mode",
        "Keras 3 ms",
        "ours-native ms",
        "ours-native/Keras",
        "ours-keras ms",
        "ours-keras/Keras",
        "native faster",
    ]
    body = []
    for r in sorted(rows, key=lambda r: (r["keras_backend"], *_sort_key(r)[1:])):
        v = r["variants"]
        native = next((k for k in v if k in ("ours-torch", "ours-jax")), None)
        base = r["baseline"]
        body.append(
            [
                r["keras_backend"], r["cell"], r["size"], r["mode"],
                f"{timing(v[base])} {base.split('/')[-1] if '/' in base else ''}".strip(),
                timing(v.get(native)) if native else "-",
                ratio(r["ratios"].get(native)) if native else "-",
                timing(v.get("ours-keras")),
                ratio(r["ratios"].get("ours-keras")),
                r.get("target", ""),
            ]
        )  # fmt: skip
    return table(head, body)


def render_padding(rows: list[dict[str, Any]]) -> str:
    head = [
        "framework",
        "cell",
        "size",
        "mode",
        "comparison",
        "ms",
        "ratio",
        "tokens / padded steps",
    ]
    body = []
    for r in sorted(rows, key=lambda r: (*_sort_key(r), r["group"])):
        v = r["variants"]
        if r["group"] == "waste":
            what = f"padded batch vs exact lengths ({r['exact_calls']} calls)"
            times = f"{ms(v['padded']['median_ms'])} vs {ms(v['exact']['median_ms'])}"
            frac = f"{r['token_fraction']:.2f}"
        else:
            what = f"epoch: plain vs bucketed ({r['n_buckets']} buckets, {r['sequences']} seqs)"
            times = f"{ms(v['plain']['median_ms'])} vs {ms(v['bucketed']['median_ms'])}"
            frac = f"{r['plain']['token_fraction']:.2f} vs {r['bucketed']['token_fraction']:.2f}"
        body.append(
            [r["framework"], r["cell"], r["size"], r["mode"], what, times, ratio(r["ratio"]), frac]
        )
    return table(head, body)


def render_compile(rows: list[dict[str, Any]]) -> str:
    backends = sorted(
        {b for r in rows for b in r["check_plus_emit_ms"]}, key=["torch", "jax", "keras"].index
    )
    head = [
        "layers",
        "check ms",
        *(f"emit {b} ms" for b in backends),
        *(f"check+emit {b} ms" for b in backends),
        "< 200 ms",
    ]
    body = []
    for r in rows:
        v = r["variants"]
        tgt = r.get("target", {})
        body.append(
            [
                str(r["layers"]), timing(v["check"]),
                *(timing(v.get(f"emit_{b}")) for b in backends),
                *(ms(r["check_plus_emit_ms"].get(b)) for b in backends),
                ", ".join(f"{b} {t}" for b, t in tgt.items()) if tgt else "",
            ]
        )  # fmt: skip
    return table(head, body)


def render_deploy(rows: list[dict[str, Any]]) -> str:
    forms = ["torch.compile", "torch.export", "onnxruntime"]
    head = ["example", "size", "eager torch ms", *(f"{f} / eager" for f in forms), "max |diff|"]
    body = []
    for r in sorted(rows, key=lambda r: r["example"]):
        cells = []
        for f in forms:
            if f in r["ratio_to_eager"]:
                cells.append(f"{r['ratio_to_eager'][f]:.2f}x ({r['ms'][f]:.2f} ms)")
            else:
                cells.append("failed: " + r["failed"].get(f, "?"))
        diff = max(r["max_abs_diff_to_eager"].values())
        body.append(
            [r["example"], r["size"], f"{r['ms']['eager torch']:.2f}", *cells, f"{diff:.1e}"]
        )
    return table(head, body)


RENDER = {
    "handwritten": ("1. Generated vs hand-written (ms: median (IQR); ratio [per-round p25-p75])", render_handwritten),
    "masks": ("2. Masked / unmasked, same padded shape", render_masks),
    "keras": ("3. Ours vs Keras 3 on each Keras backend (same masked model)", render_keras),
    "padding": ("4. Padding waste and length bucketing", render_padding),
    "compile": ("5. Compile time: check + emit", render_compile),
    "deploy": ("6. Deployed forms against eager torch (inference; ratio < 1: faster)", render_deploy),
}  # fmt: skip


def render(doc: dict[str, Any]) -> str:
    parts = []
    m = doc["machine"]
    load = doc.get("load", {})
    parts.append(
        f"machine: {m['cpu_model']}, {m['cpu_count']} cores ({', '.join(m['cpu_flags'])}); "
        f"threads per framework: {doc['threads'] or 'default'}; torch denormals "
        f"{'flushed' if doc.get('torch_flush_denormal') else 'kept'}; load average at start "
        f"{load.get('start')}, at end {load.get('end')}; other processes used "
        f"{load.get('other_cores', '?')} cores on average; no GPU"
    )
    parts.append("versions: " + ", ".join(f"{k} {v}" for k, v in doc["versions"].items() if v))
    for section, rows in doc["results"].items():
        title, fn = RENDER[section]
        ok = [r for r in rows if "error" not in r]
        parts.append(f"\n{title}\n")
        parts.append(fn(ok) if ok else "(no rows)")
        for r in rows:
            if "error" in r:
                parts.append(f"FAILED: {r['runtime']} {r['row']}: {r['error']}")
        notes = sorted({n for r in ok for n in r.get("notes", [])})
        parts += [f"note: {n}" for n in notes]
    parts.append("\nTargets")
    for section, t in doc.get("targets", {}).items():
        extra = ""
        if "missed" in t:
            extra = f" ({t['missed']} of {t.get('rows', t.get('ratios'))} missed)"
        if "per_backend" in t:
            extra = " (" + ", ".join(f"{b} {v}" for b, v in t["per_backend"].items()) + ")"
        parts.append(f"  {section}: {t['verdict']}{extra}: {t['target']}")
    return "\n".join(parts)
