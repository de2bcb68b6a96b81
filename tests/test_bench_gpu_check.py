"""bench/gpu_check.py: its CPU dry run (what CI can run of the GPU check), and the
parts of it that read a GPU's kernels, fed with what a GPU would give them."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "gpu_check.py"


def _module() -> Any:
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


gc = _module()


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, dict[str, Any], str]:
    out = tmp_path_factory.mktemp("gpu_check") / "dry.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run", "--timeout", "900", "--out", str(out)],
        cwd=str(ROOT),
        capture_output=True,
        text=True,
        timeout=1000,
    )
    doc = json.loads(out.read_text(encoding="utf-8")) if out.exists() else {}
    return proc.returncode, doc, proc.stdout + proc.stderr


@pytest.mark.slow
def test_dry_run_names_the_cpu_and_succeeds(dry_run: tuple[int, dict[str, Any], str]) -> None:
    rc, doc, log = dry_run
    assert rc == 0, log[-3000:]
    assert doc["mode"] == "dry-run" and doc["gpu"] is False and doc["failures"] == []
    assert doc["device"].startswith("cpu: ")
    assert set(doc["workers"]) == set(gc.FRAMEWORKS)
    for fw, info in doc["workers"].items():
        assert info["returncode"] == 0, fw
        assert info["gpu"] is False and info["device"].startswith("cpu: "), fw


@pytest.mark.slow
def test_dry_run_kernels_cover_every_mask_and_layer_and_match_the_reference(
    dry_run: tuple[int, dict[str, Any], str],
) -> None:
    _, doc, _ = dry_run
    plan = gc.PLANS["dry-run"]["kernels"]
    rows = doc["results"]["kernels"]
    ran = {
        (r["framework"], r["dtype"], r["cell"], r["mask"]): r for r in rows if "skipped" not in r
    }
    for fw in ("torch", "jax"):
        for dtype, cells in plan["cells"].items():
            masks = gc.MASKS if dtype == "float32" else plan["bfloat16_masks"]
            for cell in cells:
                for mask in masks:
                    r = ran[(fw, dtype, cell, mask)]
                    assert "error" not in r, r
                    # the reference interpreter (float64) against the framework's output
                    assert r["numbers"]["max_abs_diff"] <= gc.TOLERANCE[dtype], r
                    # on the CPU: torch's fused ops (no Python step loop), JAX's lax.scan
                    want = "fused-cpu" if fw == "torch" else "scan"
                    assert r["inference"]["kernel"] == want, r
                    assert r["on_promised_kernel"] is None  # not judged off the GPU
                    assert r["promised"] and len(r["promised"]) == 2
    for fw in ("keras-torch", "keras-jax"):
        for cell in plan["keras_cells"]:
            for mask in gc.MASKS:
                r = ran[(fw, "float32", cell, mask)]
                assert "error" not in r, r
                assert r["numbers"]["max_abs_diff"] <= gc.TOLERANCE["float32"], r
                assert r["inference"]["kernel"] in ("loop", "scan", "fused-cpu"), r
    # every mask kind's float32 LSTM stack was checked on every framework
    assert {(fw, m) for fw, _, c, m in ran if c == "lstm"} >= {
        (fw, m) for fw in gc.FRAMEWORKS for m in gc.MASKS
    }
    trained = [r for r in rows if "train" in r]
    assert {r["framework"] for r in trained} == {"torch", "jax"}
    for r in trained:
        if r["framework"] == "torch":
            assert any("backward" in op for op in r["train"]["rnn_ops"]), r


@pytest.mark.slow
def test_dry_run_table_rows_and_outputs_agree(dry_run: tuple[int, dict[str, Any], str]) -> None:
    _, doc, _ = dry_run
    rows = [r for r in doc["results"]["table"] if "skipped" not in r]
    seen = {(r["framework"], r["section"], r["dtype"]) for r in rows}
    assert seen >= {
        ("torch", "handwritten", "float32"),
        ("torch", "handwritten", "bfloat16"),
        ("torch", "masks", "float32"),
        ("jax", "handwritten", "float32"),
        ("jax", "handwritten", "bfloat16"),
        ("jax", "masks", "float32"),
        ("keras-torch", "keras", "float32"),
        ("keras-jax", "keras", "float32"),
    }
    for r in rows:
        assert "error" not in r, r
        for v in r["variants"].values():
            assert v["median_ms"] > 0 and v["n"] >= 3
        verdicts = [r["verdict"]] if "verdict" in r else list(r["verdicts"].values())
        assert verdicts and all(v == "not judged (CPU dry run)" for v in verdicts)
        if r["section"] == "handwritten":
            tol = 1e-5 if r["dtype"] == "float32" else 0.1
            assert r["max_abs_diff"] and max(r["max_abs_diff"].values()) <= tol, r
            assert r["ratio"]["ratio"] > 0
        if r["section"] == "keras":
            assert set(r["ratios_keras3_over"]) >= {"ours-keras"}
            assert max(r["max_abs_diff_vs_keras3"].values()) <= 1e-5, r
    # jax.experimental.rnn has no CPU kernel: the hand-written cuDNN stack's weights
    # were checked through lstm_ref, and the variant is reported as not timed
    jax_hand = [r for r in rows if r["framework"] == "jax" and r["section"] == "handwritten"]
    for r in jax_hand:
        assert "experimental.rnn (lstm_ref)" in r["max_abs_diff"]
        assert "experimental.rnn" in r["skipped_variants"]


def test_hlo_reading_finds_cudnn_rnn_custom_calls() -> None:
    """The HLO text a GPU compile gives (jaxlib's custom-call targets), and a CPU scan."""
    gpu = (
        "%cc = (f32[8,24,32]{2,1,0}, f32[1,8,32]{2,1,0}) custom-call(f32[8,24,32]{2,1,0} %x), "
        'custom_call_target="cudnn_rnn_ffi", api_version=API_VERSION_TYPED_FFI\n'
        '%g = f32[1] custom-call(%a), custom_call_target="__cublas$gemm"\n'
    )
    got = gc.hlo_kernels(gpu)
    assert got["kernel"] == "cudnn" and got["rnn_custom_calls"] == ["cudnn_rnn_ffi"]
    bwd = gc.hlo_kernels('custom_call_target="cudnn_rnn_bwd_ffi"')
    assert bwd["rnn_custom_calls"] == ["cudnn_rnn_bwd_ffi"]
    cpu = gc.hlo_kernels("%w = (s32[], f32[3,4]) while((s32[], f32[3,4]) %t), condition=%c")
    assert cpu["kernel"] == "scan" and cpu["while_loops"] == 1 and cpu["rnn_custom_calls"] == []
    assert gc.hlo_kernels("%a = f32[2] add(%x, %y)")["kernel"] == "other"


def test_verdicts_and_tolerances() -> None:
    assert gc.verdict("handwritten", 1.04, True) == "met"
    assert gc.verdict("handwritten", 1.06, True) == "MISSED"
    assert gc.verdict("masks", 1.1, True) == "met"
    assert gc.verdict("keras", 2.5, True) == "met"
    assert gc.verdict("keras", 1.9, True) == "MISSED"
    assert gc.verdict("keras", 1.9, False) == "not judged (CPU dry run)"
    ref = np.zeros((2, 3))
    assert gc.numbers(ref + 5e-5, ref, "float32")["pass"]
    assert not gc.numbers(ref + 2e-4, ref, "float32")["pass"]
    assert gc.numbers(ref + 2e-2, ref, "bfloat16")["pass"]


def test_check_data_masks_have_an_empty_row() -> None:
    for mask in ("post", "pre", "gaps"):
        d = gc.check_data(4, 6, 3, mask)
        assert d["mask"].shape == (4, 6) and not d["mask"][-1].any()
        assert (d["lengths"] == d["mask"].sum(1)).all()
        assert (d["x"][~d["mask"]] == 0).all()
    post = gc.check_data(4, 6, 3, "post")
    assert all(post["mask"][b, :n].all() for b, n in enumerate(post["lengths"]))
    pre = gc.check_data(4, 6, 3, "pre")
    assert all(pre["mask"][b, 6 - n :].all() for b, n in enumerate(pre["lengths"]))


def test_torch_profile_reads_the_fused_op_on_cpu() -> None:
    import torch

    x = torch.randn(2, 5, 3)
    lstm = torch.nn.LSTM(3, 4, batch_first=True)
    with torch.no_grad():
        _, info = gc.torch_profile(lambda: lstm(x), gpu=False)
    assert info["kernel"] == "fused-cpu" and "aten::lstm" in info["rnn_ops"]
    cell = torch.nn.LSTMCell(3, 4)

    def loop() -> Any:
        h = c = torch.zeros(2, 4)
        for t in range(5):
            h, c = cell(x[:, t], (h, c))
        return h

    with torch.no_grad():
        assert gc.torch_profile(loop, gpu=False)[1]["kernel"] == "loop"


@pytest.mark.slow
def test_the_gpu_run_refuses_without_a_gpu(tmp_path: Path) -> None:
    """Without --dry-run a framework that sees no CUDA device says so (exit status 1)
    rather than running the GPU sizes on the CPU."""
    out = tmp_path / "gpu.json"
    cmd = [sys.executable, str(SCRIPT), "--frameworks", "torch", "--parts", "kernels"]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [*cmd, "--timeout", "300", "--out", str(out)],
        cwd=str(ROOT),
        capture_output=True,
        text=True,
        timeout=400,
        env=env,
    )
    assert proc.returncode == 1
    doc = json.loads(out.read_text(encoding="utf-8"))
    assert doc["mode"] == "gpu" and doc["gpu"] is False
    (setup,) = doc["results"]["setup"]
    assert "no CUDA GPU visible to torch" in setup["error"]
    assert "kernels" not in doc["results"]
    assert any("no CUDA GPU" in f for f in doc["failures"])
