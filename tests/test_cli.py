"""The command line: output formats and stable exit codes (in-process, no subprocess)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import seqdsl
import seqdsl.cli as cli

GOOD = """\
model Sentiment {
    input tokens: i32[B, T] pad(post, value=0)
    x = tokens -> Embedding(5000, 16, mask_zero=true) -> LSTM(32)
    output x
}
"""
BAD = """\
model M {
    input x: f32[B, T, 8]
    y = x -> LSTM(4, return_sequencs=true)
    output y
}
"""


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    good, bad = tmp_path / "good.seq", tmp_path / "bad.seq"
    good.write_text(GOOD)
    bad.write_text(BAD)
    return good, bad


def test_check_ok(files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check", str(files[0])]) == cli.EXIT_OK
    assert "ok: 1 file(s), 1 model(s), 0 warning(s)" in capsys.readouterr().out


def test_check_error_full_and_concise(
    files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["check", str(files[0]), str(files[1])]) == cli.EXIT_USER
    out = capsys.readouterr().out
    assert f"{files[1]}:3:22: error[SEQ201]: LSTM has no argument `return_sequencs`" in out
    assert "^^^^^^^^^^^^^^^" in out and "did you mean `return_sequences`?" in out
    assert cli.main(["check", "--output-format", "concise", str(files[1])]) == cli.EXIT_USER
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines == [f"{files[1]}:3:22: error[SEQ201]: LSTM has no argument `return_sequencs`"]


def test_check_json(files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check", "--output-format", "json", str(files[1])]) == cli.EXIT_USER
    (d,) = json.loads(capsys.readouterr().out)
    assert (d["code"], d["line"], d["col"], d["severity"]) == ("SEQ201", 3, 22, "error")
    assert cli.main(["check", "--output-format", "json", str(files[0])]) == cli.EXIT_OK
    assert json.loads(capsys.readouterr().out) == []


def test_summary_text_and_json(
    files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["summary", str(files[0])]) == cli.EXIT_OK
    out = capsys.readouterr().out
    assert "Total params: 86,272" in out  # 5000*16 + 4*(16*32 + 32*32 + 32)
    assert "post, maybe-empty (declared)" in out
    assert cli.main(["summary", "--format", "json", str(files[0])]) == cli.EXIT_OK
    (doc,) = json.loads(capsys.readouterr().out)
    assert doc["total_params"] == 86272
    lstm = next(layer for layer in doc["layers"] if layer["kind"] == "LSTM")
    assert lstm["kernels"]["torch"]["kernel"] == "cudnn"
    assert "on a GPU" in doc["kernel_note"]


def test_summary_says_the_kernel_columns_are_gpu_kernels(
    files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["summary", str(files[0])]) == cli.EXIT_OK
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if "Layer (type)" in line)
    assert header.split()[-6:] == ["keras", "GPU", "torch", "GPU", "jax", "GPU"]
    assert "x_lstm (LSTM) on torch (GPU): cudnn" in out
    assert "on a GPU (cudnn: the fused cuDNN kernel); on a" in out


def test_summary_of_bad_file_is_a_user_error(
    files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["summary", str(files[1])]) == cli.EXIT_USER
    assert "SEQ201" in capsys.readouterr().out


def test_usage_and_io_errors(
    files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(["frobnicate"])
    assert e.value.code == cli.EXIT_USAGE
    assert cli.main(["check", str(tmp_path / "missing.seq")]) == cli.EXIT_USAGE
    assert "cannot read" in capsys.readouterr().err
    assert cli.main(["summary", "--model", "Nope", str(files[0])]) == cli.EXIT_USAGE
    assert "no model named 'Nope'" in capsys.readouterr().err


def test_internal_error_is_reported_without_traceback(
    files: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def boom(text: str, name: str) -> None:
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(cli, "analyze_sources", boom)
    assert cli.main(["check", str(files[0])]) == cli.EXIT_INTERNAL
    err = capsys.readouterr().err
    assert "internal error: RuntimeError: simulated bug" in err and "Traceback" not in err
    assert cli.main(["check", "--traceback", str(files[0])]) == cli.EXIT_INTERNAL
    assert "Traceback" in capsys.readouterr().err


def test_exit_codes_are_distinct() -> None:
    codes = {cli.EXIT_OK, cli.EXIT_USER, cli.EXIT_USAGE, cli.EXIT_INTERNAL}
    assert len(codes) == 4


@pytest.mark.parametrize("backend", ["torch", "jax", "keras"])
def test_compile_writes_a_module(
    backend: str, files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / f"sentiment_{backend}.py"
    assert cli.main(["compile", str(files[0]), "--backend", backend, "-o", str(out)]) == cli.EXIT_OK
    text = out.read_text()
    assert "Sentiment" in text and f"import {backend}" in text
    compile(text, str(out), "exec")  # valid Python
    assert cli.main(["compile", str(files[0]), "--backend", backend]) == cli.EXIT_OK
    assert capsys.readouterr().out == text  # stdout and -o agree: deterministic


@pytest.mark.parametrize("backend", ["torch", "jax", "keras"])
def test_compile_standalone_copies_the_runtime(
    backend: str, files: tuple[Path, Path], tmp_path: Path
) -> None:
    """By default the module imports seqdsl.runtime.<backend>; --standalone copies what
    it uses instead, so that it imports no seqdsl at all."""
    plain, alone = tmp_path / "plain.py", tmp_path / "alone.py"
    src = str(files[0])
    assert cli.main(["compile", src, "--backend", backend, "-o", str(plain)]) == cli.EXIT_OK
    assert cli.main(["compile", src, "--backend", backend, "--standalone", "-o", str(alone)]) == 0

    def imports(path: Path) -> set[str]:
        lines = path.read_text().splitlines()
        return {ln.split()[1] for ln in lines if ln.startswith(("import ", "from "))}

    assert f"seqdsl.runtime.{backend}" in imports(plain)
    assert not {m for m in imports(alone) if m.partition(".")[0] == "seqdsl"}
    assert len(alone.read_text()) > len(plain.read_text())
    compile(alone.read_text(), str(alone), "exec")


def test_compile_errors(
    files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["compile", str(files[1]), "--backend", "torch"]) == cli.EXIT_USER
    assert "SEQ201" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        cli.main(["compile", str(files[0]), "--backend", "tensorflow-lite"])
    assert e.value.code == cli.EXIT_USAGE
    bad_dir = tmp_path / "missing" / "out.py"
    assert (
        cli.main(["compile", str(files[0]), "--backend", "jax", "-o", str(bad_dir)])
        == cli.EXIT_USAGE
    )


# ---------------------------------------------------------------- issue 12: no traceback, no exit 70

_LIBRARY = "layer Enc(units: int) {\n    input x\n    h = x -> LSTM(units)\n    output h\n}\n"


@pytest.mark.parametrize("argv", [["compile", "--backend", "torch"], ["summary"],
                                  ["export", "--format", "onnx", "-o", "out.onnx"]])  # fmt: skip
def test_file_without_a_model_is_a_user_error(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # item 9: `compile` exited 70 with a KeyError
    f = tmp_path / "lib.seq"
    f.write_text(_LIBRARY, encoding="utf-8")
    cmd, *rest = argv
    rest = [str(tmp_path / r) if r.endswith(".onnx") else r for r in rest]
    assert cli.main([cmd, str(f), *rest]) == cli.EXIT_USER
    out = capsys.readouterr().out
    assert f"{f}:1:1: error[SEQ016]: the file declares no model" in out
    assert "= help:" in out and "^" in out
    # `check` accepts a library of layer blocks
    assert cli.main(["check", str(f)]) == cli.EXIT_OK


def test_api_on_a_file_without_a_model_raises_the_diagnostic() -> None:
    """The Python API says what the CLI says (it raised a bare KeyError)."""
    prog = seqdsl.loads(_LIBRARY, name="lib.seq")
    for call in (
        lambda: prog.compile("torch"),
        lambda: prog.build("torch"),
        lambda: prog.export_onnx(),
        lambda: prog.model(),
    ):
        with pytest.raises(seqdsl.SeqError) as err:
            call()
        assert [d.code for d in err.value.diagnostics] == ["SEQ016"]
        assert "lib.seq:1:1" in str(err.value) and "^" in err.value.render()


def test_empty_file_compiles_to_a_diagnostic(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "empty.seq"
    f.write_text("", encoding="utf-8")
    assert cli.main(["compile", str(f), "--backend", "jax"]) == cli.EXIT_USER
    assert "SEQ016" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("text", "code"),
    [
        # item 10: RecursionError and ValueError escaped as exit 70
        (
            "model M { input x: f32[B, T, 8]\n y = x -> Reshape("
            + "[" * 400
            + "1"
            + "]" * 400
            + ")\n output y }",
            "SEQ015",
        ),  # fmt: skip
        (
            "model M { input x: f32[B, T, 8]\n y = x -> Dense(1" + "0" * 5000 + ")\n output y }",
            "SEQ015",
        ),
        # item 14: a 358 GiB MemoryError at build
        ("model M { input x: f32[B, T, 8]\n y = x -> LSTM(3000000000)\n output y }", "SEQ312"),
        # item 16
        ("model M {\0}", "SEQ002"),
    ],
)
@pytest.mark.parametrize("command", ["check", "compile"])
def test_front_end_attacks_exit_one(
    text: str, code: str, command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "a.seq"
    f.write_text(text, encoding="utf-8")
    argv = [command, str(f)] + (["--backend", "torch"] if command == "compile" else [])
    assert cli.main(argv) == cli.EXIT_USER
    assert f"error[{code}]" in capsys.readouterr().out


def test_cr_only_file_compiles(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "mac.seq"
    f.write_bytes(b"\xef\xbb\xbf# classic Mac line ends\rmodel M {\r input x: f32[B, T, 8]\r"
                  b" y = x -> LSTM(4)\r output y\r}\r")  # fmt: skip
    assert cli.main(["compile", str(f), "--backend", "torch"]) == cli.EXIT_OK
    assert "class M" in capsys.readouterr().out
