"""``seqdsl check``, ``summary``, ``compile``, ``export`` and ``graph`` work with no deep-learning framework.

Each command runs in one subprocess whose import system refuses keras,
tensorflow, torch and jax (a ``sys.meta_path`` finder raising ImportError), over
every example (or a few embedded programs when ``examples/`` is empty). The
commands must succeed, no framework module may end up in ``sys.modules``, and
none may even be attempted (an attempt that is caught and ignored would mean
the compiler behaves differently when a framework is installed).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BLOCKED = ("keras", "tensorflow", "torch", "jax", "jaxlib")

EMBEDDED = {
    "sentiment.seq": """\
model Sentiment {
    input tokens: i32[B, T] pad(post, value=0)
    x = tokens -> Embedding(5000, 16, mask_zero=true) -> LSTM(32)
    logits = Dense(10)(x)
    output logits
}
""",
    "stack.seq": """\
model Stack {
    input frames: f32[B, T, 12] pad(pre, value=0.0) masked
    h = frames -> Conv1D(16, 3, strides=2, padding=same)
               -> repeat(2) { GRU(24, return_sequences=true) -> Dropout(0.1) }
               -> Bidirectional(LSTM(8, return_sequences=true))
    p = h -> GlobalAveragePooling1D()
    output h with mask, p
}
""",
}

# Runs inside the subprocess: block the frameworks, run the CLI, report as JSON.
DRIVER = textwrap.dedent(
    """
    import contextlib, io, json, sys

    BLOCKED = set(sys.argv[1].split(","))
    attempts = []

    class Refuse:
        def find_spec(self, name, path=None, target=None):
            top = name.partition(".")[0]
            if top in BLOCKED:
                attempts.append(name)
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.meta_path.insert(0, Refuse())
    # a framework already imported (it cannot be, in a fresh interpreter) would bypass the finder
    assert not [m for m in sys.modules if m.partition(".")[0] in BLOCKED]

    import seqdsl.cli

    command, files = sys.argv[2], sys.argv[3:]
    if command == "check":
        runs = [[command, *files]]
    elif command == "compile":
        runs = [[command, f, "--backend", b] for f in files for b in ("torch", "jax", "keras")]
    elif command == "export":
        import os
        runs = [[command, f, "--format", "onnx", "-o", os.devnull] for f in files]
    else:
        runs = [[command, f] for f in files]
    results = []
    for argv in runs:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = seqdsl.cli.main(argv)
            except SystemExit as e:
                code = e.code
        results.append({"argv": argv, "code": code, "stdout": out.getvalue(), "stderr": err.getvalue()})
    loaded = sorted(m for m in sys.modules if m.partition(".")[0] in BLOCKED)
    print(json.dumps({"results": results, "loaded": loaded, "attempts": attempts}))
    """
)


def _programs(tmp_path: Path) -> list[str]:
    files = sorted(str(p) for p in (ROOT / "examples").glob("*.seq"))
    files += sorted(str(p) for p in (ROOT / "examples" / "custom").glob("*.seq"))
    if files:
        return files
    out = []
    for name, text in EMBEDDED.items():
        p = tmp_path / name
        p.write_text(text, encoding="utf-8")
        out.append(str(p))
    return out


def _run(command: str, files: list[str]) -> dict[str, object]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (
        os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""
    )
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, ",".join(BLOCKED), command, *files],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"driver failed ({proc.returncode}):\n{proc.stderr}"
    last = proc.stdout.strip().splitlines()[-1]
    report = json.loads(last)
    assert isinstance(report, dict)
    return report


def _has_onnx() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnx") is not None


@pytest.mark.parametrize(
    "command",
    [
        "check",
        "summary",
        "compile",
        "graph",
        pytest.param(
            "export", marks=pytest.mark.skipif(not _has_onnx(), reason="onnx not installed")
        ),
    ],
)
def test_cli_runs_without_frameworks(command: str, tmp_path: Path) -> None:
    files = _programs(tmp_path)
    report = _run(command, files)
    results = report["results"]
    assert isinstance(results, list)
    # export: an unsupported construct is a user error (1) with a message naming the layer
    ok_codes = (0, 1) if command == "export" else (0,)
    bad = [r for r in results if r["code"] not in ok_codes]
    assert not bad, "\n\n".join(
        f"{' '.join(r['argv'])} -> exit {r['code']}\n{r['stdout']}{r['stderr']}" for r in bad
    )
    assert report["loaded"] == [], f"framework modules were imported: {report['loaded']}"
    assert report["attempts"] == [], f"framework imports were attempted: {report['attempts']}"
    if command == "check":
        assert len(results) == 1
        assert f"ok: {len(files)} file(s)" in results[0]["stdout"]
    elif command == "summary":
        assert len(results) == len(files)
        for r in results:
            assert "Total params:" in r["stdout"], r["stdout"]
    elif command == "graph":  # the DOT text is built from the checked model alone
        assert len(results) == len(files)
        for r in results:
            assert r["stdout"].startswith("digraph seqdsl {"), r["stdout"][:200]
    elif command == "export":  # ONNX export needs onnx only, no deep-learning framework
        assert len(results) == len(files)
        for r in results:
            assert r["code"] == 0 or "cannot export model" in r["stderr"], r["stderr"]
    else:  # compile: emitting code imports no framework either
        assert len(results) == 3 * len(files)
        for r in results:
            assert "generated by seqdsl" in r["stdout"], r["stdout"][:200]
