"""The wheel works on its own: a fresh venv, a non-editable install, the CLI.

Builds and installs the repository into a new virtual environment (pip's
normal build isolation, so hatchling comes from the configured index), then
runs the installed ``seqdsl`` on an example copied to a directory outside the
checkout. This catches files missing from the wheel -- above all the grammar,
which lives in the top-level ``grammar/`` folder and is force-included as
``seqdsl/grammar/seq.lark``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

FALLBACK = """\
model Sentiment {
    input tokens: i32[B, T] pad(post, value=0)
    x = tokens -> Embedding(5000, 16, mask_zero=true) -> LSTM(32)
    logits = Dense(10)(x)
    output logits
}
"""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # the installed package, not the checkout, must be the one imported
    env.pop("PYTHONPATH", None)
    env.pop("PYTHONHOME", None)
    env.pop("VIRTUAL_ENV", None)
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _bin(venv: Path, name: str) -> Path:
    return venv / ("Scripts" if os.name == "nt" else "bin") / name


def _run(cmd: list[str], cwd: Path, timeout: float = 100) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("install")
    venv = base / "venv"
    r = _run([sys.executable, "-m", "venv", str(venv)], cwd=base, timeout=60)
    assert r.returncode == 0, r.stderr
    r = _run(
        [str(_bin(venv, "python")), "-m", "pip", "install", "--no-cache-dir", "-q", str(ROOT)],
        cwd=base,
        timeout=110,
    )
    assert r.returncode == 0, f"pip install failed:\n{r.stdout}\n{r.stderr}"
    return venv


@pytest.fixture()
def example(tmp_path: Path) -> Path:
    work = tmp_path / "elsewhere"
    work.mkdir()
    src = ROOT / "examples" / "sentiment_lstm.seq"
    dst = work / "model.seq"
    if src.exists():
        shutil.copy(src, dst)
    else:
        dst.write_text(FALLBACK, encoding="utf-8")
    return dst


@pytest.mark.slow
def test_installed_package_is_not_the_checkout(installed: Path, tmp_path: Path) -> None:
    r = _run(
        [str(_bin(installed, "python")), "-c", "import seqdsl, sys; print(seqdsl.__file__)"],
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    where = Path(r.stdout.strip()).resolve()
    assert installed.resolve() in where.parents, where
    assert ROOT.resolve() not in where.parents, where


@pytest.mark.slow
def test_grammar_is_inside_the_installed_package(installed: Path, tmp_path: Path) -> None:
    code = (
        "from importlib import resources; import seqdsl; "
        "r = resources.files('seqdsl').joinpath('grammar/seq.lark'); "
        "print(r.is_file()); print(len(r.read_text(encoding='utf-8')))"
    )
    r = _run([str(_bin(installed, "python")), "-c", code], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    is_file, size = r.stdout.split()
    assert is_file == "True"
    assert int(size) == len((ROOT / "grammar" / "seq.lark").read_text(encoding="utf-8"))


@pytest.mark.slow
def test_installed_cli_check(installed: Path, example: Path) -> None:
    r = _run([str(_bin(installed, "seqdsl")), "check", example.name], cwd=example.parent)
    assert r.returncode == 0, f"{r.stdout}\n{r.stderr}"
    assert "ok: 1 file(s)" in r.stdout


@pytest.mark.slow
def test_installed_cli_summary(installed: Path, example: Path) -> None:
    r = _run([str(_bin(installed, "seqdsl")), "summary", str(example)], cwd=example.parent)
    assert r.returncode == 0, f"{r.stdout}\n{r.stderr}"
    assert "Layer (type)" in r.stdout
    assert "Total params:" in r.stdout
    assert "LSTM" in r.stdout


@pytest.mark.slow
def test_installed_cli_reports_errors(installed: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.seq"
    bad.write_text("model M {\n    input x: f32[B, T, 8]\n    y = x -> Lstm(4)\n    output y\n}\n")
    r = _run(
        [str(_bin(installed, "seqdsl")), "check", "--output-format", "concise", str(bad)],
        cwd=tmp_path,
    )
    assert r.returncode == 1, f"{r.stdout}\n{r.stderr}"
    assert "SEQ103" in r.stdout


@pytest.mark.slow
def test_installed_cli_run(installed: Path, example: Path) -> None:
    """The README's first command: the base install (lark, numpy) runs a model on data."""
    data = ROOT / "examples" / "data" / "sentiment.jsonl"
    shutil.copy(data, example.parent / "data.jsonl")
    r = _run(
        [str(_bin(installed, "seqdsl")), "run", example.name, "--data", "data.jsonl"],
        cwd=example.parent,
    )
    assert r.returncode == 0, f"{r.stdout}\n{r.stderr}"
    assert "backend reference interpreter" in r.stdout
    assert "time: build" in r.stdout
