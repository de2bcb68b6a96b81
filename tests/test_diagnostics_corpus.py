"""The diagnostics corpus: hand-annotated invalid programs and their valid twins.

``tests/invalid/*.seq`` each hold one realistic mistake and one or more lines

    # expect: SEQnnn line:col

giving every diagnostic the checker must report (code and the 1-based position
of the offending token), no more and no fewer. ``tests/valid/<stem>.seq`` is
the same program with the mistake fixed: it must check with no diagnostic at all.

Only the top-level files are programs: a subfolder holds the files they
``use``. A diagnostic located in such a file is expected as
``# expect: SEQnnn path/to/other.seq:line:col``, the path relative to the
program's folder.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import seqdsl
from seqdsl.cli import main
from seqdsl.diagnostics import CODES, render

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
INVALID = sorted((HERE / "invalid").glob("*.seq"))
VALID = sorted((HERE / "valid").glob("*.seq"))

_EXPECT = re.compile(r"^#\s*expect:\s*(SEQ\d{3})\s+(?:([\w./-]+\.seq):)?(\d+):(\d+)\s*$")

#: (code, file relative to the program's folder or "" for the program, line, col)
Key = tuple[str, str, int, int]


def _name(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def expectations(path: Path) -> set[Key]:
    out: set[Key] = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        if re.match(r"\s*#\s*expect\b", line):
            m = _EXPECT.match(line.strip())
            assert m, f"{path.name}: malformed expectation line: {line!r}"
            out.add((m.group(1), m.group(2) or "", int(m.group(3)), int(m.group(4))))
    return out


def _analysis(path: Path) -> seqdsl.Analysis:
    # the folder is also on the search path: the names stay relative to the
    # checkout, and `use` still resolves when the tests run from another folder
    # read as `seqdsl compile` reads them: every program declares a model (SEQ016)
    return seqdsl.analyze_sources(
        path.read_text(encoding="utf-8"), _name(path), search_path=[path.parent], need_model=True
    )


def _analyze(path: Path) -> list[seqdsl.Diagnostic]:
    return list(_analysis(path).diagnostics)


def _file_key(path: Path, file: str) -> str:
    """How an expectation names the file a diagnostic is in ("" for the program itself)."""
    if file == _name(path):
        return ""
    return Path(os.path.relpath(Path(file).resolve(), path.parent.resolve())).as_posix()


def _keys(path: Path, diags: list[seqdsl.Diagnostic]) -> set[Key]:
    keys = set()
    for d in diags:
        assert d.span is not None, f"{d.code} has no location: {d.message}"
        keys.add((d.code, _file_key(path, d.span.file), d.span.line, d.span.col))
    return keys


@pytest.mark.parametrize("path", INVALID, ids=[p.stem for p in INVALID])
def test_invalid_program(path: Path) -> None:
    expected = expectations(path)
    assert expected, f"{path.name} has no `# expect:` line"
    a = _analysis(path)
    diags = list(a.diagnostics)
    got = _keys(path, diags)
    assert got == expected, (
        f"\nmissing: {sorted(expected - got)}\nunexpected: {sorted(got - expected)}\n"
        + a.render("concise")
    )
    assert len(diags) == len(got), "a diagnostic is reported twice at one place"
    for d in diags:
        assert d.severity == CODES[d.code].severity


@pytest.mark.parametrize("path", VALID, ids=[p.stem for p in VALID])
def test_valid_twin(path: Path) -> None:
    assert not expectations(path), f"{path.name}: a valid program expects nothing"
    a = _analysis(path)
    assert a.program is not None and a.diagnostics == (), a.render("concise")


def test_every_valid_file_is_a_twin() -> None:
    invalid = {p.stem for p in INVALID}
    orphans = [p.name for p in VALID if p.stem not in invalid]
    assert not orphans, f"valid files without an invalid original: {orphans}"


def test_corpus_size() -> None:
    assert len(INVALID) >= 60
    assert len(VALID) >= len(CODES)


def test_every_code_has_an_invalid_program_and_a_twin() -> None:
    twins = {p.stem for p in VALID}
    by_code: dict[str, set[str]] = {}
    for p in INVALID:
        for code, _, _, _ in expectations(p):
            assert code in CODES, f"{p.name} expects an unregistered code {code}"
            by_code.setdefault(code, set()).add(p.stem)
    no_program = sorted(set(CODES) - set(by_code))
    assert not no_program, f"codes with no invalid program: {no_program}"
    no_twin = sorted(c for c, stems in by_code.items() if not stems & twins)
    assert not no_twin, f"codes with no valid twin: {no_twin}"


@pytest.mark.parametrize("path", INVALID, ids=[p.stem for p in INVALID])
def test_full_rendering(path: Path) -> None:
    a = _analysis(path)
    diags = list(a.diagnostics)
    out = render(diags, a.sources, "full")
    lines = out.splitlines()
    for d in diags:
        assert d.span is not None
        # a diagnostic in a file the program uses shows that file's line
        text = a.sources[d.span.file]
        head = f"{d.span.file}:{d.span.line}:{d.span.col}: {d.severity}[{d.code}]: {d.message}"
        assert head in lines, out
        block = lines[lines.index(head) :]
        end = block.index("") if "" in block else len(block)
        block = block[:end]
        # the excerpt: the source line, then a caret line starting under the column
        src = f"{d.span.line} | {text.splitlines()[d.span.line - 1]}"
        assert any(b.rstrip() == src.rstrip() for b in block), out
        carets = [b for b in block if re.fullmatch(r"\s*\| *\^+", b)]
        assert carets, out
        assert carets[0].split("|", 1)[1].index("^") == d.span.col, out
        if d.is_error:
            assert any(b.startswith("  = help: ") and len(b) > len("  = help: ") for b in block), (
                out
            )
    assert lines[-1].endswith("warning(s)")


def _hint(path: str, code: str) -> str:
    diags = _analyze(HERE / path)
    hints = [d.hint or "" for d in diags if d.code == code]
    assert hints, f"{path}: no {code}"
    return hints[0]


def test_hints_that_matter() -> None:
    assert "did you mean `LSTM`" in _hint("invalid/unknown_layer.seq", "SEQ103")
    assert "did you mean `tokens`" in _hint("invalid/undefined_name.seq", "SEQ101")
    assert "did you mean `return_sequences`" in _hint("invalid/unknown_argument.seq", "SEQ201")
    assert "did you mean `tanh`" in _hint("invalid/wrong_activation.seq", "SEQ203")
    assert "`f32`" in _hint("invalid/dtype_float32.seq", "SEQ007")
    for f in (
        "invalid/initial_state_bidirectional.seq",
        "invalid/initial_state_bidirectional_gru.seq",
    ):
        h = _hint(f, "SEQ304")
        assert "concat" in h and "add" in h, h
    assert "masked_output" in _hint("invalid/unsupported_zero_output_for_mask.seq", "SEQ202")
    assert "@kernel(cudnn)" in _hint("invalid/unsupported_use_cudnn.seq", "SEQ202")
    assert "drop_mask" in _hint("invalid/flatten_masked.seq", "SEQ501")


# ---------------------------------------------------------------- the CLI


def test_cli_full_and_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    f = _name(HERE / "invalid" / "unknown_layer.seq")
    rc = main(["check", str(ROOT / f)])
    out = capsys.readouterr().out
    assert rc == 1
    assert "error[SEQ103]" in out and "^^^^" in out and "= help: did you mean `LSTM`?" in out


def test_cli_concise(capsys: pytest.CaptureFixture[str]) -> None:
    files = [
        HERE / "invalid" / "add_feature_mismatch.seq",
        HERE / "invalid" / "warn_unused_value.seq",
    ]
    rc = main(["check", *map(str, files), "--output-format", "concise"])
    out = capsys.readouterr().out.splitlines()
    assert rc == 1  # one file has an error
    assert len(out) == 2, out
    assert re.fullmatch(r".*add_feature_mismatch\.seq:7:20: error\[SEQ302\]: .+", out[0]), out
    assert re.fullmatch(r".*warn_unused_value\.seq:6:5: warning\[SEQ802\]: .+", out[1]), out


def test_cli_warnings_only_exit_zero(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["check", str(HERE / "invalid" / "warn_unused_value.seq")])
    assert rc == 0
    assert "warning[SEQ802]" in capsys.readouterr().out


def test_cli_json_subprocess() -> None:
    """The one subprocess: `python -m seqdsl check --output-format json`."""
    files = [
        HERE / "invalid" / "initial_state_bidirectional.seq",
        HERE / "valid" / "unknown_layer.seq",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "seqdsl", "check", *map(str, files), "--output-format", "json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1, proc.stderr
    data = json.loads(proc.stdout)
    assert isinstance(data, list) and len(data) == 1
    d = data[0]
    assert {
        "code",
        "severity",
        "message",
        "hint",
        "file",
        "line",
        "col",
        "end_line",
        "end_col",
        "related",
    } <= set(d)
    assert (d["code"], d["severity"], d["line"], d["col"]) == ("SEQ304", "error", 10, 31)
    assert d["file"].endswith("initial_state_bidirectional.seq")
    assert "concat" in d["hint"] and "add" in d["hint"]
