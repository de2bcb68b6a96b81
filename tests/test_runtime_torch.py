"""seqdsl.runtime.torch, tested directly: no .seq program, each function against NumPy
or hand-written torch code (nn.LSTM and friends); then the generated modules'
two forms, importing and standalone, against each other.

Every expected value is computed independently of the code under test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402

import seqdsl  # noqa: E402
from seqdsl.emit.torch_backend import class_name  # noqa: E402
from seqdsl.runtime import torch as rt  # noqa: E402
from tests.refuse import refusing  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.seq")) + sorted(
    (ROOT / "examples" / "custom").glob("*.seq")
)
RNG = np.random.default_rng(0)


def t64(a: Any) -> Any:
    return torch.as_tensor(np.asarray(a, dtype=np.float64))


def masks(b: int, t: int, side: str, seed: int = 0) -> np.ndarray:
    """bool [b, t] masks of a kind, with a full row and an empty row."""
    rng = np.random.default_rng(seed)
    lens = np.array([t, 0, *rng.integers(1, t, size=b - 2)])
    steps = np.arange(t)[None]
    if side == "post":
        return steps < lens[:, None]
    if side == "pre":
        return steps >= t - lens[:, None]
    m = rng.random((b, t)) < 0.5
    m[0], m[1] = True, False
    return m


# --------------------------------------------------------------------------
# masks and rearrangements


@pytest.mark.parametrize("side", ["post", "pre"])
def test_lengths_to_mask(side: str) -> None:
    lens = np.array([0, 3, 5, 1])
    got = rt.lengths_to_mask(torch.as_tensor(lens), 5, side).numpy()
    for b, n in enumerate(lens):
        want = [t < n for t in range(5)] if side == "post" else [t >= 5 - n for t in range(5)]
        assert got[b].tolist() == want


@pytest.mark.parametrize("side", ["post", "pre", "any"])
def test_to_right_padding_moves_valid_steps_to_the_front_and_back(side: str) -> None:
    b, t, f = 6, 7, 3
    x = RNG.normal(size=(b, t, f))
    m = masks(b, t, side, seed=1)
    moved, lengths, back = rt.to_right_padding(t64(x), torch.as_tensor(m), side)
    assert lengths.tolist() == m.sum(1).tolist()
    for row in range(b):
        n = int(m[row].sum())
        np.testing.assert_array_equal(moved[row, :n].numpy(), x[row][m[row]])  # in order
    if side == "post":
        assert back is None and torch.equal(moved, t64(x))
        return
    restored = rt.gather_steps(moved, back).numpy()
    np.testing.assert_array_equal(restored[m], x[m])  # the roundtrip of the gather index


def test_carry_forward() -> None:
    b, t, u = 4, 6, 2
    y = RNG.normal(size=(b, t, u))
    m = masks(b, t, "any", seed=2)
    want = np.zeros_like(y)
    for row in range(b):
        last = None
        for s in range(t):
            if m[row, s]:
                last = y[row, s]
            want[row, s] = 0.0 if last is None else last
    got = rt.carry_forward(t64(y), torch.as_tensor(m)).numpy()
    np.testing.assert_array_equal(got, want)


def test_check_mask_errors() -> None:
    post = torch.as_tensor(masks(4, 5, "post"))
    rt.check_mask(post, "post", False, "input `x`", "promise")  # holds
    with pytest.raises(ValueError, match=r"input `x`: the mask is not `pre`: in row 0.*; promise"):
        rt.check_mask(torch.as_tensor([[True, True, False]]), "pre", False, "input `x`", "promise")
    with pytest.raises(ValueError, match=r"not `post`: in row 1, a valid step follows a masked"):
        rt.check_mask(torch.as_tensor([[True, False], [False, True]]), "post", False, "w", "p")
    with pytest.raises(
        ValueError, match="row 1 has no valid step, but the mask is declared nonempty"
    ):
        rt.check_mask(post, "post", True, "w", "p")
    rt.check_mask(torch.as_tensor([[True, False, True]]), "any", True, "w", "p")  # gaps are any


def test_check_inputs_on_torch_tensors() -> None:
    """The structural check every backend shares reads torch tensors' shapes and dtypes."""
    x, y = torch.zeros(2, 5, 3), torch.zeros(2, 4, dtype=torch.int32)
    declared = {"x": ("f32", ("B", "T", 3)), "y": ("i32", ("B", None))}
    assert rt.check_inputs(declared, {"x": x, "y": y}) == {"B": 2, "T": 5}
    with pytest.raises(rt.InputError, match=r"input `x`: shape \[2, 5, 3\] has rank 3, but"):
        rt.check_inputs({"x": ("f32", ("B", 3))}, {"x": x})
    with pytest.raises(
        rt.InputError, match=r"input `x`: axis 2 has size 3, but `x: f32\[B, T, 4\]`"
    ):
        rt.check_inputs({"x": ("f32", ("B", "T", 4))}, {"x": x})
    with pytest.raises(
        rt.InputError, match=r"input `y`: axis 1 \(T\) has size 4, but T = 5 in input `x`"
    ):
        rt.check_inputs({"x": ("f32", ("B", "T", 3)), "y": ("i32", ("B", "T"))}, {"x": x, "y": y})
    with pytest.raises(rt.InputError, match=r"input `x`: dtype float32, not an integer dtype"):
        rt.check_inputs({"x": ("i32", ("B", "T", 3))}, {"x": x})


def test_input_mask_from_lengths_or_masks() -> None:
    x = torch.zeros(3, 4, 2)
    got = rt.input_mask("x", x, "pre", {"x": [1, 0, 4]}, None)
    assert got.tolist() == [[False] * 3 + [True], [False] * 4, [True] * 4]
    m = masks(3, 4, "any")
    assert rt.input_mask("x", x, "post", None, {"x": m}).numpy().tolist() == m.tolist()
    with pytest.raises(rt.InputError, match="input `x` is masked"):
        rt.input_mask("x", x, "post", None, None)


# --------------------------------------------------------------------------
# dropout


def test_keep_mask_and_dropout() -> None:
    x = t64(RNG.normal(size=(3, 4)))
    keep = (RNG.random((3, 4)) > 0.25).astype(np.float64)
    assert torch.equal(rt.dropout(x, 0.25, False, {"d": keep}, "d"), x)  # inference: identity
    got = rt.dropout(x, 0.25, True, {"d": keep}, "d").numpy()
    np.testing.assert_allclose(got, x.numpy() * keep / 0.75, rtol=0, atol=1e-15)
    drawn = rt.keep_mask(None, "d", (200, 50), 0.4, x).numpy()  # no mask given: drawn
    assert set(np.unique(drawn).tolist()) == {0.0, 1 / 0.6}
    assert 0.5 < (drawn > 0).mean() < 0.7


# --------------------------------------------------------------------------
# torch's fused kernels


KERNELS = {
    "lstm": (torch.lstm, nn.LSTM, 2),
    "gru": (torch.gru, nn.GRU, 1),
    "rnn_tanh": (torch.rnn_tanh, nn.RNN, 1),
}


def reference_rnn(kind: str, x: Any, lengths: Any, states: list[Any], layers: int = 1) -> Any:
    """nn.LSTM / nn.GRU / nn.RNN on packed rows: outputs [B, T, U] (0 past each row's
    length) and each state of the last layer at each row's last valid step."""
    op, cls, _ = KERNELS[kind]
    f, u = x.shape[2], states[0].shape[1]
    torch.manual_seed(3)
    net = cls(f, u, num_layers=layers, batch_first=True).double()
    hx = [s.expand(layers, *s.shape).contiguous() for s in states]
    seq = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    with torch.no_grad():
        y, final = net(seq, tuple(hx) if kind == "lstm" else hx[0])
    y, _ = pad_packed_sequence(y, batch_first=True, total_length=x.shape[1])
    final = list(final) if kind == "lstm" else [final]
    return net, y, [s[-1] for s in final]


def weights_of(net: Any) -> list[Any]:
    return [w.detach() for w in net._flat_weights]


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("kind", list(KERNELS))
def test_fused_rnn_masked_matches_nn_module_on_packed_rows(kind: str, layers: int) -> None:
    op, _, n_states = KERNELS[kind]
    b, t, f, u = 5, 7, 3, 4
    x = t64(RNG.normal(size=(b, t, f)))
    lengths = torch.as_tensor([7, 1, 4, 2, 6])
    states = [t64(RNG.normal(size=(b, u))) for _ in range(n_states)]
    net, y_ref, final_ref = reference_rnn(kind, x, lengths, states, layers)
    w = weights_of(net)
    with torch.no_grad():
        y, final = rt.fused_rnn(op, x, states, w, lengths, packed=True, layers=layers)
        assert y is not None
        torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-12)
        for got, want in zip(final, final_ref, strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
        # the padded batch (packed=False, with autograd so that pack_rows() never packs):
        # the same outputs at the valid steps, the same final h
    with torch.enable_grad():
        y_pad, final_pad = rt.fused_rnn(op, x, states, w, lengths, packed=False, layers=layers)
    assert y_pad is not None and len(final_pad) == 1
    valid = rt.lengths_to_mask(lengths, t)
    torch.testing.assert_close(y_pad.detach()[valid], y_ref[valid], rtol=0, atol=1e-12)
    torch.testing.assert_close(final_pad[0].detach(), final_ref[0], rtol=0, atol=1e-12)
    # outputs=False: the final states alone
    with torch.no_grad():
        none, final = rt.fused_rnn(op, x, states, w, lengths, True, layers, outputs=False)
    assert none is None and torch.equal(final[0], final_ref[0])


@pytest.mark.parametrize("kind", list(KERNELS))
def test_fused_rnn_without_lengths_is_the_nn_module(kind: str) -> None:
    op, cls, n_states = KERNELS[kind]
    b, t, f, u = 3, 5, 2, 3
    x = t64(RNG.normal(size=(b, t, f)))
    states = [t64(RNG.normal(size=(b, u))) for _ in range(n_states)]
    net, y_ref, final_ref = reference_rnn(kind, x, torch.full((b,), t), states)
    with torch.no_grad():
        y, final = rt.fused_rnn(op, x, states, weights_of(net))
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-12)
    for got, want in zip(final, final_ref, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("kind", list(KERNELS))
def test_fused_rnn_static_is_the_packed_kernel(kind: str, layers: int, dtype: Any) -> None:
    """The shape-static path (torch.compile, torch.export): the padded batch over
    every step, h at each row's last valid step, and with final_c LSTM's exact
    final c from saturated gates at the padding steps, even with large values in
    the padding and large weights. tracing() routes fused_rnn to it."""
    op, _, n_states = KERNELS[kind]
    b, t, f, u = 5, 7, 3, 4
    x = torch.as_tensor(RNG.normal(size=(b, t, f)), dtype=dtype)
    lengths = torch.as_tensor([7, 1, 4, 2, 6])
    valid = rt.lengths_to_mask(lengths, t)
    x = torch.where(valid[..., None], x, 1e6)  # padding never reaches a valid output
    states = [torch.as_tensor(RNG.normal(size=(b, u)), dtype=dtype) for _ in range(n_states)]
    states64 = [s.double() for s in states]
    net, _, _ = reference_rnn(kind, x.double(), lengths, states64, layers)
    w = [3.0 * v.to(dtype) for v in weights_of(net)]  # |gates| up to ~10: still saturated
    with torch.no_grad():
        y_ref, final_ref = rt.fused_rnn(op, x, states, w, lengths, packed=True, layers=layers)
        y, final = rt.fused_rnn_static(op, x, states, w, lengths, True, layers)
    assert y is not None and y_ref is not None
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(y[valid], y_ref[valid], rtol=0, atol=tol)
    assert len(final) == n_states
    for got, want in zip(final, final_ref, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=tol)
    if kind == "lstm":  # 9 more padding steps leave c as it is (float32: the input
        # projection's gemm over more steps may round the valid steps differently)
        longer = torch.cat([x, torch.full((b, 9, f), -1e6, dtype=dtype)], dim=1)
        _, final_longer = rt.fused_rnn_static(op, longer, states, w, lengths, True, layers)
        torch.testing.assert_close(final_longer[1], final[1], rtol=0, atol=tol / 10)
    # fused_rnn takes this path while traced
    with pytest.MonkeyPatch.context() as mp, torch.no_grad():
        mp.setattr(rt, "tracing", lambda: True)
        y2, final2 = rt.fused_rnn(op, x, states, w, lengths, packed=True, layers=layers)
    assert y2 is not None and torch.equal(y2, y)
    assert all(torch.equal(a, b) for a, b in zip(final2, final, strict=True))


def test_pack_rows_rule() -> None:
    """Packing pays in inference when few steps are valid: at most 80% of them for
    GRU and SimpleRNN, 55% for LSTM at 256-1023 units, never for a smaller LSTM,
    80% from 1024 units; never in training (docs/benchmarks.md)."""
    lengths = torch.as_tensor([10, 5, 1, 4])  # 20 of 40 steps valid: 50%
    dense = torch.as_tensor([10, 10, 9, 6])  # 35 of 40: 87.5%
    with torch.no_grad():
        assert rt.pack_rows(torch.gru, 64, lengths, 10)
        assert rt.pack_rows(torch.rnn_tanh, 64, lengths, 10)
        assert not rt.pack_rows(torch.gru, 64, dense, 10)
        assert not rt.pack_rows(torch.lstm, 128, lengths, 10)
        assert rt.pack_rows(torch.lstm, 256, lengths, 10)
        assert not rt.pack_rows(torch.lstm, 256, torch.as_tensor([10, 10, 2, 2]), 10)  # 60%
        assert rt.pack_rows(torch.lstm, 1024, torch.as_tensor([10, 10, 10, 2]), 10)  # 80%
    with torch.enable_grad():
        assert not rt.pack_rows(torch.gru, 64, lengths, 10)


@pytest.mark.parametrize("side", ["post", "pre", "any"])
@pytest.mark.parametrize("cls", ["LSTM", "GRU", "SimpleRNN"])
def test_recurrent_fused_and_loop_agree(cls: str, side: str) -> None:
    """The fused kernel (right padding, rolls, compaction) and Keras' step function in
    a Python loop: two independent paths through the masked-step rule."""
    b, t, f, u = 5, 6, 3, 4
    x = t64(RNG.normal(size=(b, t, f)))
    m = torch.as_tensor(masks(b, t, side, seed=4))
    kw: dict[str, Any] = {"mask_side": side, "return_sequences": True, "return_state": True}
    kw["packed"] = cls == "LSTM"  # LSTM's final c is needed (as the emitter sets it)
    fused = getattr(rt, cls)("r", f, u, **kw).double()
    loop = getattr(rt, cls)("r", f, u, fused=False, **kw).double()
    with torch.no_grad():
        for p in fused.parameters():
            p.copy_(t64(RNG.normal(0, 0.5, size=p.shape)))
        loop.load_state_dict(fused.state_dict())
        got, want = fused(x, m), loop(x, m)
    for a, c in zip(got, want, strict=True):
        torch.testing.assert_close(a, c, rtol=0, atol=1e-12)


# --------------------------------------------------------------------------
# pooling


def np_pool(x: np.ndarray, m: np.ndarray, kind: str, size: int, stride: int) -> np.ndarray:
    """valid padding: each window's valid steps; 0 for a window with none."""
    steps = (x.shape[1] - size) // stride + 1
    out = np.zeros((x.shape[0], steps, x.shape[2]))
    for b in range(x.shape[0]):
        for j in range(steps):
            win = [s for s in range(j * stride, j * stride + size) if m[b, s]]
            if win:
                vals = x[b, win]
                out[b, j] = vals.max(0) if kind == "max" else vals.mean(0)
    return out


@pytest.mark.parametrize("kind", ["max", "mean"])
def test_pool1d_masked(kind: str) -> None:
    x = RNG.normal(size=(4, 9, 3))
    m = masks(4, 9, "any", seed=5)
    got = rt.pool1d(t64(x), torch.as_tensor(m), kind, 3, 2, "valid").numpy()
    np.testing.assert_allclose(got, np_pool(x, m, kind, 3, 2), rtol=0, atol=1e-12)
    unmasked = rt.pool1d(t64(x), None, kind, 3, 2, "valid").numpy()
    np.testing.assert_allclose(unmasked, np_pool(x, np.ones((4, 9), bool), kind, 3, 2), atol=1e-12)


@pytest.mark.parametrize("kind", ["max", "mean"])
def test_global_pool_masked(kind: str) -> None:
    x = RNG.normal(size=(4, 6, 3))
    m = masks(4, 6, "any", seed=6)
    want = np.zeros((4, 3))
    for b in range(4):
        if m[b].any():
            want[b] = x[b][m[b]].max(0) if kind == "max" else x[b][m[b]].mean(0)
    got = rt.global_pool(t64(x), torch.as_tensor(m), kind).numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    kept = rt.global_pool(t64(x), torch.as_tensor(m), kind, keepdims=True)
    assert tuple(kept.shape) == (4, 1, 3)


def test_window_padding_same_and_causal() -> None:
    # TensorFlow's `same`: ceil(T / s) outputs, the zeros split evenly, the odd one after
    assert rt.window_padding(10, 3, 2, "same") == (0, 1, 5)
    assert rt.window_padding(10, 4, 1, "same") == (1, 2, 10)
    assert rt.window_padding(10, 3, 1, "causal") == (2, 0, 10)
    assert rt.window_padding(10, 3, 3, "valid") == (0, 0, 3)


# --------------------------------------------------------------------------
# attention


def np_masked_softmax(s: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    out = np.zeros_like(s)
    for idx in np.ndindex(*s.shape[:-1]):
        ok = allowed[idx]
        if ok.any():
            e = np.exp(s[idx][ok] - s[idx][ok].max())
            out[idx][ok] = e / e.sum()
    return out


def test_masked_softmax_rows_with_nothing_allowed_are_zero() -> None:
    s = RNG.normal(size=(3, 4, 5))
    allowed = RNG.random((3, 4, 5)) < 0.5
    allowed[0, 0] = False  # an empty row
    allowed[1, 2] = True
    got = rt.masked_softmax(t64(s), torch.as_tensor(allowed)).numpy()
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, np_masked_softmax(s, allowed), rtol=0, atol=1e-12)
    assert not got[0, 0].any()
    full = rt.masked_softmax(t64(s), None).numpy()
    np.testing.assert_allclose(full, np_masked_softmax(s, np.ones_like(allowed)), atol=1e-12)


def test_fused_attention_empty_rows_give_zero_not_nan() -> None:
    q, k, v = (RNG.normal(size=(2, n, 3)) for n in (4, 5, 5))
    allowed = RNG.random((2, 4, 5)) < 0.6
    allowed[1, 3] = False
    allowed[0, 1] = True
    got = rt.fused_attention(t64(q), t64(k), t64(v), torch.as_tensor(allowed), 0.5).numpy()
    assert np.isfinite(got).all()
    weights = np_masked_softmax(0.5 * q @ k.transpose(0, 2, 1), allowed)
    np.testing.assert_allclose(got, weights @ v, rtol=0, atol=1e-12)
    assert not got[1, 3].any()


def test_attention_mask_causal_and_query_mask() -> None:
    q, k = torch.zeros(2, 3, 1), torch.zeros(2, 3, 1)
    key_mask = torch.as_tensor([[True, True, False], [True, False, True]])
    query_mask = torch.as_tensor([[True, False, True], [True, True, True]])
    got = rt.attention_mask(q, k, key_mask, query_mask, causal=True).numpy()
    for b in range(2):
        for i in range(3):
            for j in range(3):
                want = bool(key_mask[b, j] and query_mask[b, i] and j <= i)
                assert got[b, i, j] == want
    assert rt.attention_mask(q, k, None) is None


# --------------------------------------------------------------------------
# generated modules: importing and standalone


def test_standalone_examples_are_ruff_clean(tmp_path: Path) -> None:
    if subprocess.run([sys.executable, "-m", "ruff", "--version"], capture_output=True).returncode:
        pytest.skip("ruff is not installed")
    for path in EXAMPLES:
        prog = seqdsl.load(path)
        (tmp_path / f"{path.stem}.py").write_text(prog.compile("torch", standalone=True))
        (tmp_path / f"{path.stem}_imports.py").write_text(prog.compile("torch"))
    for cmd in (["check"], ["format", "--check", "--diff"]):
        config = ["--config", str(ROOT / "pyproject.toml")]
        run = subprocess.run([sys.executable, "-m", "ruff", *cmd, *config, str(tmp_path)],
                             capture_output=True, text=True)  # fmt: skip
        assert run.returncode == 0, run.stdout + run.stderr


# Runs in a subprocess whose import system refuses seqdsl: each standalone module
# runs on the saved inputs; its outputs are saved next to them.
DRIVER = refusing("seqdsl") + textwrap.dedent(
    """
    import importlib.util, json, sys
    import numpy as np

    import torch

    def flat(x):
        if isinstance(x, (tuple, list)):
            return [a for item in x for a in flat(item)]
        return [x.detach().numpy()]

    folder = sys.argv[1]
    for job in json.load(open(f"{folder}/jobs.json")):
        spec = importlib.util.spec_from_file_location(job["stem"], f"{folder}/{job['stem']}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        data = np.load(f"{folder}/{job['stem']}_data.npz")
        net = getattr(module, job["cls"])(dtype=torch.float64)
        net.load_canonical({k[2:]: data[k] for k in data.files if k.startswith("w:")})
        net.eval()
        inputs = [data[f"x{i}"] for i in range(job["inputs"])]
        lengths = {k[2:]: data[k] for k in data.files if k.startswith("l:")} or None
        out = flat(net(*inputs, lengths=lengths))
        np.savez(f"{folder}/{job['stem']}_out.npz", *out)
    assert not [m for m in sys.modules if m.partition(".")[0] == "seqdsl"]
    print("ok")
    """
)


def example_data(model: Any) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
    """Inputs for an example: ids below the vocabulary, rows of decreasing length."""
    rng = np.random.default_rng(1)
    sizes: dict[str, int] = {"B": 3, "T": 12}
    vocab = {la.inputs[0]: int(la.config["input_dim"]) for la in model.layers
             if la.kind == "Embedding"}  # fmt: skip
    inputs, lengths = [], {}
    for inp in model.model.inputs:
        dims = [d.value if isinstance(d.value, int) else sizes.setdefault(str(d.value), 5)
                for d in inp.dims]  # fmt: skip
        if inp.is_mask:
            inputs.append(rng.random(dims) < 0.7)
            continue
        if inp.dtype in ("i32", "i64"):
            x = rng.integers(1, vocab.get(inp.name, 50), size=dims).astype(np.int64)
        else:
            x = rng.normal(size=dims)
        if inp.masked:
            b, t = dims[0], dims[1]
            lengths[inp.name] = np.array([max(1, t * (b - i) // b) for i in range(b)])
        inputs.append(x)
    return inputs, lengths


def flat(x: Any) -> list[np.ndarray]:
    if isinstance(x, (tuple, list)):
        return [a for item in x for a in flat(item)]
    return [x.detach().numpy()]


def test_standalone_modules_run_without_seqdsl(tmp_path: Path) -> None:
    jobs, want = [], {}
    for path in EXAMPLES:
        prog = seqdsl.load(path)
        model = prog.model()
        if model.externs:  # extern models import seqdsl.externs, even standalone
            continue
        stem = path.stem
        (tmp_path / f"{stem}.py").write_text(prog.compile("torch", standalone=True))
        net = prog.build("torch", seed=1, dtype="float64").eval()
        inputs, lengths = example_data(model)
        want[stem] = flat(net(*inputs, lengths=lengths or None))
        data = {f"x{i}": x for i, x in enumerate(inputs)}
        data |= {f"w:{k}": v for k, v in net.canonical_weights().items()}
        data |= {f"l:{k}": v for k, v in lengths.items()}
        np.savez(tmp_path / f"{stem}_data.npz", **data)
        jobs.append({"stem": stem, "cls": class_name(model), "inputs": len(inputs)})
    assert len(jobs) >= 10
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    # seqdsl is importable there (PYTHONPATH): only the finder refuses it
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path])}
    run = subprocess.run([sys.executable, "-c", DRIVER, str(tmp_path)], capture_output=True,
                         text=True, cwd=tmp_path, env=env)  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    for job in jobs:
        got = np.load(tmp_path / f"{job['stem']}_out.npz")
        outs = [got[f"arr_{i}"] for i in range(len(got.files))]
        assert len(outs) == len(want[job["stem"]]), job
        for a, b in zip(outs, want[job["stem"]], strict=True):
            np.testing.assert_array_equal(a, b, err_msg=job["stem"])  # the same code, bit for bit


def test_no_runtime_code_in_strings_and_no_line_tags() -> None:
    """The torch emitter holds no run-time code as text: no string literal of its
    modules is a function or class definition, and no line carries a feature tag."""
    import ast
    import re

    files = [*sorted((ROOT / "seqdsl" / "emit").glob("torch_*.py")),
             ROOT / "seqdsl" / "runtime" / "torch.py"]  # fmt: skip
    for path in files:
        text = path.read_text()
        assert not re.search(r"#@[\w,|!]+\s*$", text, re.M), path
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                try:
                    tree = ast.parse(textwrap.dedent(node.value))
                except SyntaxError:
                    continue
                defs = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
                assert not defs, f"{path.name}:{node.lineno}: code in a string literal"
