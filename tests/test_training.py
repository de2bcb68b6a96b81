"""The training recipes of docs/training.md: each script under examples/train runs
one short epoch (the full runs and their accuracies are in the doc), and the
masked-mean helpers of the torch and JAX runtimes against NumPy."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
TRAIN = ROOT / "examples" / "train"

pytest.importorskip("sklearn")


def _script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"seqdsl_recipe_{name}", TRAIN / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


QUICK = ["--epochs", "1", "--limit", "64"]


def test_digits_are_cropped_and_padded() -> None:
    sys.path.insert(0, str(TRAIN))
    try:
        from digits import digits  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(TRAIN))
    train, test = digits(seed=0)
    assert len(train.y) + len(test.y) == 1797
    assert train.x.shape[1:] == (8, 8)
    assert set(np.unique(train.lengths).tolist()) == {4, 5, 6, 7, 8}
    for x, n in zip(train.x[:50], train.lengths[:50], strict=True):
        assert not x[n:].any()  # right-padded with 0.0 past the kept rows
    assert train.y_steps.shape == (len(train.y), 8)


def test_torch_recipe_one_epoch_is_repeatable(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    pytest.importorskip("torch")
    import seqdsl
    from seqdsl.run import load_data, run_batch

    script = _script("train_torch")
    saved = tmp_path / "digits.safetensors"
    acc = script.main([*QUICK, "--seed", "3", "--save", str(saved)])
    first = capsys.readouterr().out
    assert 0.0 <= acc <= 1.0
    assert "epoch 1: loss" in first
    assert script.main([*QUICK, "--seed", "3"]) == acc
    assert capsys.readouterr().out == first  # seeded: the same losses, the same accuracy

    # the saved weights on the reference interpreter, via seqdsl run's data path
    sys.path.insert(0, str(TRAIN))
    try:
        from digits import digits, last_step_accuracy  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(TRAIN))
    _, test = digits(seed=3, limit=64)
    data = tmp_path / "test.npz"
    np.savez(
        data,
        rows_values=np.concatenate([x[:n] for x, n in zip(test.x, test.lengths, strict=True)]),
        rows_row_lengths=test.lengths,
    )
    model = seqdsl.load(TRAIN / "digit_rows.seq").model()
    result = run_batch(model, load_data(data, model), "reference", weights=saved)
    assert last_step_accuracy(result.outputs[0].value, test.lengths, test.y) == acc


def test_jax_recipe_one_epoch(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("optax")
    acc = _script("train_jax").main(QUICK)
    assert 0.0 <= acc <= 1.0
    assert "epoch 1: loss" in capsys.readouterr().out


def test_keras_recipe_one_epoch(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("keras")
    acc = _script("train_keras").main(QUICK)
    assert 0.0 <= acc <= 1.0
    assert "epoch 1: loss" in capsys.readouterr().out


def _masked_mean_by_hand(values: np.ndarray, mask: np.ndarray) -> float:
    total, count = 0.0, 0
    for b in range(mask.shape[0]):
        for t in range(mask.shape[1]):
            if mask[b, t]:
                entries = np.atleast_1d(values[b, t]).ravel()
                total += float(entries.sum())
                count += entries.size
    return total / max(count, 1)


CASES = [
    (np.arange(12.0).reshape(3, 4), np.array([[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]], bool)),
    (np.arange(24.0).reshape(2, 4, 3) - 5, np.array([[0, 1, 1, 1], [1, 1, 1, 1]], bool)),
    (np.ones((2, 3)), np.zeros((2, 3), bool)),  # no valid step: 0
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_masked_mean_torch(case: int) -> None:
    torch = pytest.importorskip("torch")
    from seqdsl.runtime.torch import masked_mean

    values, mask = CASES[case]
    v = torch.tensor(values, requires_grad=True)
    got = masked_mean(v, torch.tensor(mask))
    assert float(got.detach()) == pytest.approx(_masked_mean_by_hand(values, mask))
    got.backward()
    assert (v.grad.numpy()[~mask] == 0).all()  # padded steps get no gradient


@pytest.mark.parametrize("case", range(len(CASES)))
def test_masked_mean_jax(case: int) -> None:
    jax = pytest.importorskip("jax")
    from seqdsl.runtime.jax import masked_mean

    values, mask = CASES[case]
    v = jax.numpy.asarray(values, dtype="float32")
    got = jax.jit(masked_mean)(v, mask)
    assert float(got) == pytest.approx(_masked_mean_by_hand(values, mask), rel=1e-6)
    grad = np.asarray(jax.grad(masked_mean)(v, mask))
    assert (grad[~mask] == 0).all()


@pytest.mark.parametrize("backend", ["torch", "jax", "keras"])
def test_stateful_recipe_one_epoch(backend: str, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip({"jax": "optax", "torch": "torch", "keras": "keras"}[backend])
    acc = _script("train_stateful").main(["--backend", backend, *QUICK])
    assert 0.0 <= acc <= 1.0
    assert "epoch 1: loss" in capsys.readouterr().out
