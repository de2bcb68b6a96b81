"""Benchmark the language server's hover on a generated 300-line file.

The file is ``bench/bench_check.py``'s generated model (recurrent layers,
strided convolutions, TemporalSplit/concat on time, repeat blocks,
Bidirectional layers, merges), made just long enough to reach 300 lines.
Measured, each next to ``seqdsl.analyze`` of the same text (the check alone):

- in process (``seqdsl.ide.Document``): building the document after an edit
  (analysis and the position index), and a hover on a document already built,
  at the first character of every value use, layer and target of the file;
- through the server (``python -m seqdsl lsp`` over stdio, JSON-RPC written by
  hand): a hover's round trip on an unchanged document; a hover sent right
  after an edit elsewhere (a character on the first line), before the
  debounced analysis ran (answered from the last analysis, marked so); and a
  hover on the word just edited (a target renamed: the server analyses the new
  text first).

    python bench/bench_lsp.py            # prints a table, writes bench/results/lsp_cpu.json
    python bench/bench_lsp.py --quick    # fewer repetitions, writes lsp_cpu_quick.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from bench_check import generate, machine  # noqa: E402

import seqdsl  # noqa: E402
from seqdsl.ide import Document  # noqa: E402

LINES = 300


def text_of_lines(lines: int) -> tuple[str, int]:
    n = 10
    while True:
        text = generate(n)
        if text.count("\n") >= lines:
            return text, n
        n += 5


def positions(text: str) -> list[tuple[int, int]]:
    """The start of every identifier after the model's header that has a hover (values,
    layers, targets; not argument names or keywords such as `repeat`)."""
    doc = Document(text, "bench.seq")
    out = []
    for i, line in enumerate(text.split("\n")):
        if i < 3:
            continue
        for m in re.finditer(r"[A-Za-z_][A-Za-z0-9_]*", line):
            if doc.hover(i, m.start()) is not None:
                out.append((i, m.start()))
    return out


def ms(xs: list[float]) -> dict[str, float]:
    xs = sorted(xs)
    return {
        "median_ms": round(statistics.median(xs), 3),
        "p95_ms": round(xs[min(len(xs) - 1, int(0.95 * len(xs)))], 3),
        "max_ms": round(xs[-1], 3),
        "n": len(xs),
    }


def in_process(text: str, runs: int) -> dict[str, object]:
    seqdsl.analyze(text, "bench.seq")  # warm-up
    analyze = []
    for _ in range(runs):
        t0 = time.perf_counter()
        seqdsl.analyze(text, "bench.seq")
        analyze.append((time.perf_counter() - t0) * 1000)
    made, full = [], []
    pos = positions(text)
    for _ in range(runs):
        t0 = time.perf_counter()
        doc = Document(text, "bench.seq")
        made.append((time.perf_counter() - t0) * 1000)
        doc.diagnostics()
        doc.hover(*pos[0])  # builds the position index
        full.append((time.perf_counter() - t0) * 1000)
    hovers = []
    answered = 0
    for line, col in pos:
        t0 = time.perf_counter()
        h = doc.hover(line, col)
        hovers.append((time.perf_counter() - t0) * 1000)
        answered += h is not None
    # an edit (a character on the first line), then hovers before the new text is analysed
    stale = []
    edited = Document("#" + text, "bench.seq", previous=doc)
    for line, col in pos:
        t0 = time.perf_counter()
        edited.hover(line, col)
        stale.append((time.perf_counter() - t0) * 1000)
    assert not edited.analysed
    return {
        "analyze": ms(analyze),
        "document_made": ms(made),
        "document_analysed_and_indexed": ms(full),
        "hover_analysed_document": {**ms(hovers), "answered": answered},
        "hover_after_edit_before_analysis": ms(stale),
    }


class Rpc:
    def __init__(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.p = subprocess.Popen(
            [sys.executable, "-m", "seqdsl", "lsp"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        self.id = 0

    def send(self, method: str, params: object, request: bool = True) -> int:
        msg: dict[str, object] = {"jsonrpc": "2.0", "method": method, "params": params}
        if request:
            self.id += 1
            msg["id"] = self.id
        body = json.dumps(msg).encode()
        stdin = self.p.stdin
        assert stdin is not None
        stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        stdin.flush()
        return self.id

    def read(self) -> dict[str, object]:
        out: IO[bytes] | None = self.p.stdout
        assert out is not None
        header = b""
        while not header.endswith(b"\r\n\r\n"):
            c = out.read(1)
            if not c:
                raise SystemExit("the server stopped")
            header += c
        n = int(re.search(rb"Content-Length: (\d+)", header).group(1))  # type: ignore[union-attr]
        msg: dict[str, object] = json.loads(out.read(n))
        return msg

    def until(self, pred: object) -> dict[str, object]:
        while True:
            msg = self.read()
            if callable(pred) and pred(msg):
                return msg

    def request(self, method: str, params: object) -> dict[str, object]:
        i = self.send(method, params)
        return self.until(lambda m: m.get("id") == i)


def through_server(text: str, runs: int) -> dict[str, object]:
    rpc = Rpc()
    uri = "file:///bench/bench.seq"
    rpc.request("initialize", {"processId": None, "rootUri": None, "capabilities": {}})
    rpc.send("initialized", {}, request=False)
    rpc.send(
        "textDocument/didOpen",
        {"textDocument": {"uri": uri, "languageId": "seqdsl", "version": 1, "text": text}},
        request=False,
    )
    rpc.until(lambda m: m.get("method") == "textDocument/publishDiagnostics")
    pos = positions(text)
    step = max(1, len(pos) // (runs * 10))
    cached = []
    for line, col in pos[::step]:
        t0 = time.perf_counter()
        r = rpc.request(
            "textDocument/hover",
            {"textDocument": {"uri": uri}, "position": {"line": line, "character": col}},
        )
        cached.append((time.perf_counter() - t0) * 1000)
        assert "result" in r, r
    edited = []
    for k in range(runs * 2):
        line, col = pos[(k * 37) % len(pos)]
        rpc.send(
            "textDocument/didChange",
            {
                "textDocument": {"uri": uri, "version": 2 + k},
                "contentChanges": [
                    {
                        "range": {
                            "start": {"line": 0, "character": 0},
                            "end": {"line": 0, "character": 0},
                        },
                        "text": "#",
                    }
                ],
            },
            request=False,
        )
        t0 = time.perf_counter()
        r = rpc.request(
            "textDocument/hover",
            {"textDocument": {"uri": uri}, "position": {"line": line, "character": col}},
        )
        edited.append((time.perf_counter() - t0) * 1000)
        assert r.get("result") is not None, r
    # an edit of the hovered word itself (a target `vN` renamed `wN`): the new text is
    # analysed first
    targets = [(i, ln) for i, ln in enumerate(text.split("\n")) if re.match(r"    v\d+ = ", ln)]
    renamed = []
    for k in range(runs):
        line, _ = targets[(k * 7) % len(targets)]
        version = 100 + k
        rpc.send(
            "textDocument/didChange",
            {
                "textDocument": {"uri": uri, "version": version},
                "contentChanges": [
                    {
                        "range": {
                            "start": {"line": line, "character": 4},
                            "end": {"line": line, "character": 5},
                        },
                        "text": "w",
                    }
                ],
            },
            request=False,
        )
        t0 = time.perf_counter()
        r = rpc.request(
            "textDocument/hover",
            {"textDocument": {"uri": uri}, "position": {"line": line, "character": 5}},
        )
        renamed.append((time.perf_counter() - t0) * 1000)
        assert r.get("result") is not None, r
    rpc.request("shutdown", None)
    rpc.send("exit", None, request=False)
    rpc.p.wait(10)
    return {
        "hover_unchanged": ms(cached),
        "hover_right_after_edit_elsewhere": ms(edited),
        "hover_right_after_edit_of_the_word": ms(renamed),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    runs = 3 if args.quick else 10
    text, layers = text_of_lines(LINES)
    doc = {
        "benchmark": "seqdsl lsp hover on a generated file (bench/bench_lsp.py)",
        "file": {"lines": text.count("\n"), "layers": layers, "chars": len(text)},
        "machine": machine(),
        "in_process": in_process(text, runs),
        "server_stdio": through_server(text, runs),
    }
    ip = doc["in_process"]
    sv = doc["server_stdio"]
    assert isinstance(ip, dict) and isinstance(sv, dict)
    base = ip["analyze"]["median_ms"]
    print(f"{doc['file']['lines']} lines, {layers} layers")  # type: ignore[index]
    print(f"{'measure':<46} {'median ms':>10} {'p95 ms':>8} {'max ms':>8} {'/ analyze':>10}")
    rows = [
        ("seqdsl.analyze (the check alone)", ip["analyze"]),
        ("ide.Document made (lexed, not analysed)", ip["document_made"]),
        ("ide.Document analysed and indexed", ip["document_analysed_and_indexed"]),
        ("ide hover, analysed document", ip["hover_analysed_document"]),
        ("ide hover after an edit, before analysis", ip["hover_after_edit_before_analysis"]),
        ("server hover, unchanged text", sv["hover_unchanged"]),
        ("server hover right after an edit elsewhere", sv["hover_right_after_edit_elsewhere"]),
        ("server hover right after an edit of the word", sv["hover_right_after_edit_of_the_word"]),
    ]
    for label, r in rows:
        print(
            f"{label:<46} {r['median_ms']:>10.3f} {r['p95_ms']:>8.3f} {r['max_ms']:>8.3f} "
            f"{r['median_ms'] / base:>10.3f}"
        )
    out = HERE / "results" / ("lsp_cpu_quick.json" if args.quick else "lsp_cpu.json")
    out.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
