"""Deploying the generated Keras models (issue 11): what Keras users do with a model.

- ``model.export()`` (SavedModel) reloaded with ``keras.layers.TFSMLayer`` and
  ``tf.saved_model.load``: the same outputs as the eager model (1e-5) on two time
  lengths, Bidirectional and TimeDistributed included (Keras' TimeDistributed maps
  over range(batch size) when the time axis is unknown while tracing: the exported
  tagger returned B steps; the runtime's TimeDistributed maps over the steps).
- ``.keras`` save and ``keras.models.load_model``: the same outputs.
- ``fit`` on models with ``output x with mask``: the loss sees the values only, each
  masked by its Keras mask (the hand-computed mean over the valid steps), and the
  weights change; losses and metrics by .seq output name.
- The same emitted module on ``KERAS_BACKEND=jax`` and ``torch`` (subprocesses):
  parity with the reference interpreter, ``.keras`` round trip, a masked fit step.
- ``keras.distribution.DataParallel`` on the JAX backend over 2 host devices
  (subprocess with ``XLA_FLAGS=--xla_force_host_platform_device_count=2``): predict
  and a fit step of a unidirectional and a Bidirectional model.

By default a representative subset of the examples runs; ``pytest -m full`` runs every
example (examples/ and examples/custom/, extern layers included) through export and
``.keras`` round trips, and every example without extern layers on JAX and torch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import seqdsl  # noqa: E402
from seqdsl.checker import CheckedModel  # noqa: E402
from seqdsl.reference import run_reference  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_keras_backend import (  # noqa: E402
    ROOT,
    TOL,
    call,
    compare,
    example_inputs,
    flat,
    keras_inputs,
    weights64,
)

#: every example, custom cells and extern layers (seed_externs.py) included
EXAMPLES = sorted((ROOT / "examples").glob("*.seq")) + sorted(
    (ROOT / "examples" / "custom").glob("*.seq")
)
#: those without extern layers (the other backends' full run)
NO_EXTERNS = tuple(p.stem for p in EXAMPLES if "extern layer" not in p.read_text(encoding="utf-8"))
BY_STEM = {p.stem: p for p in EXAMPLES}
#: the default subset: Bidirectional + TimeDistributed + `with mask` (the tagger), a
#: Bidirectional encoder with several inputs, a masked output of a stack, a stateful
#: model, shaped cell inputs
SUBSET = (
    "bilstm_tagger", "seq2seq_bidir_encoder", "stacked_lstm_repeat", "rnn_guide_stateful",
    "nested_cell",
)  # fmt: skip
ops = keras.ops
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept:DeprecationWarning"
)


def _tensorflow() -> None:
    if keras.backend.backend() != "tensorflow":
        pytest.skip("SavedModel export runs on Keras' TensorFlow backend")


def model_inputs(m: CheckedModel, net: Any, seed: int = 0, steps: int = 12) -> list[np.ndarray]:
    """Example inputs (a full, a half and an empty row) in the dtypes of the model's inputs."""
    inputs, lengths, masks = example_inputs(m, seed=seed, steps=steps)
    xs = keras_inputs(m, inputs, lengths, masks)
    return [np.asarray(x).astype(t.dtype) for x, t in zip(xs, net.inputs, strict=True)]


def predict(net: Any, xs: list[np.ndarray]) -> Any:
    """model.predict on one batch: one compiled call (Keras' JAX backend compiles eager
    calls op by op)."""
    return net.predict(xs if len(xs) > 1 else xs[0], batch_size=len(xs[0]), verbose=0)


def params(stems: tuple[str, ...] | None) -> list[Any]:
    """Every example under -m full, the subset by default."""
    if stems is None:
        return [pytest.param(p, marks=pytest.mark.full, id=p.stem) for p in EXAMPLES]
    return [pytest.param(BY_STEM[s], id=s) for s in stems]


# --------------------------------------------------------------------------
# SavedModel export


def check_export(path: Path, folder: Path) -> None:
    """model.export() reloaded as a TFSMLayer: the eager outputs, by name, on two time
    lengths and (unless the model's batch is fixed) two batch sizes."""
    prog = seqdsl.load(path)
    m = prog.model()
    net = prog.build("keras", seed=0)
    net.reset_states()  # a stateful model: both continue from zero states
    net.export(str(folder), verbose=False)
    served = keras.layers.TFSMLayer(str(folder), call_endpoint="serve")
    for seed, steps in ((0, 12), (1, 8)):
        xs = model_inputs(m, net, seed, steps)
        if seed and net.inputs[0].shape[0] is None:
            xs = [x[:2] for x in xs]  # rows 0 and 1: full and half
        want = flat(call(net, xs, training=False))
        got = served(xs if len(xs) > 1 else xs[0])
        assert sorted(got) == sorted(net.output_keys())
        compare([got[k] for k in net.output_keys()], want, what=f"{path.stem} T={steps}")


@pytest.mark.parametrize("path", params(SUBSET))
def test_export_reload(path: Path, tmp_path: Path) -> None:
    _tensorflow()
    check_export(path, tmp_path / "saved")


@pytest.mark.parametrize("path", params(None))
def test_export_reload_full(path: Path, tmp_path: Path) -> None:
    _tensorflow()
    check_export(path, tmp_path / "saved")


def test_export_serving_signature(tmp_path: Path) -> None:
    """The docs' serving code: tf.saved_model.load, the "serve" function and the
    serving_default signature return {name: value, name_mask: mask}."""
    _tensorflow()
    import tensorflow as tf

    prog = seqdsl.load(ROOT / "examples" / "bilstm_tagger.seq")
    m = prog.model()
    model = prog.build("keras", seed=0)
    model.export(str(tmp_path / "tagger"), verbose=False)
    (frames,) = model_inputs(m, model, seed=2, steps=9)
    tags, mask = model(frames, training=False)

    reloaded = tf.saved_model.load(str(tmp_path / "tagger"))
    out = reloaded.serve(tf.constant(frames))
    assert sorted(out) == ["tags", "tags_mask"]
    assert out["tags"].shape == (3, 9, 17)
    np.testing.assert_allclose(out["tags"].numpy(), ops.convert_to_numpy(tags), **TOL)
    assert np.array_equal(out["tags_mask"].numpy(), ops.convert_to_numpy(mask))
    signature = reloaded.signatures["serving_default"]
    out = signature(tf.constant(frames))
    np.testing.assert_allclose(out["tags"].numpy(), ops.convert_to_numpy(tags), **TOL)


def test_time_distributed_with_unknown_time() -> None:
    """The runtime's TimeDistributed in a tf.function traced with a None time axis
    returns one output per step (Keras' maps over range(batch size) there)."""
    _tensorflow()
    import tensorflow as tf

    from seqdsl.runtime.keras import TimeDistributed

    layer = TimeDistributed(keras.layers.Dense(2))
    x = np.random.default_rng(0).normal(size=(3, 5, 4)).astype(np.float32)
    eager = ops.convert_to_numpy(layer(x))
    traced = tf.function(layer, input_signature=[tf.TensorSpec((None, None, 4), tf.float32)])
    got = traced(tf.constant(x)).numpy()
    assert got.shape == (3, 5, 2)
    np.testing.assert_allclose(got, eager, **TOL)


# --------------------------------------------------------------------------
# .keras save and load_model


def check_keras_file(path: Path, folder: Path) -> None:
    prog = seqdsl.load(path)
    m = prog.model()
    net = prog.build("keras", seed=0)
    net.reset_states()
    xs = model_inputs(m, net)
    file = folder / f"{path.stem}.keras"
    net.save(file)
    want = flat(predict(net, xs))
    loaded = keras.models.load_model(file)
    assert type(loaded).__name__ == type(net).__name__
    loaded.reset_states()
    compare(flat(predict(loaded, xs)), want, what=path.stem)


@pytest.mark.parametrize("path", params(SUBSET))
def test_keras_file_round_trip(path: Path, tmp_path: Path) -> None:
    check_keras_file(path, tmp_path)


@pytest.mark.parametrize("path", params(None))
def test_keras_file_round_trip_full(path: Path, tmp_path: Path) -> None:
    check_keras_file(path, tmp_path)


# --------------------------------------------------------------------------
# fit on models with `output x with mask`

TWO_HEADS = """
model TwoHeads {
    input x: f32[B, T, 4] pad(pre) masked
    h = x -> GRU(5, return_sequences=true)
    tags = TimeDistributed(Dense(3))(h)
    last = h -> GlobalAveragePooling1D() -> Dense(2)
    output tags with mask, last
}
"""


def check_tagger_fit() -> dict[str, float]:
    """The docs' fit example on examples/bilstm_tagger.seq (`output tags with mask`):
    one SGD step on a batch with a full, a half and an empty row. The loss Keras reports
    is the mean cross-entropy over the valid steps only, and the weights change."""
    prog = seqdsl.load(ROOT / "examples" / "bilstm_tagger.seq")
    m = prog.model()
    model = prog.build("keras", seed=0)
    model.get_layer("x_dropout").rate = 0.0  # (deterministic: the loss is computed by hand)
    (frames,) = model_inputs(m, model, steps=6)
    labels = np.random.default_rng(0).integers(0, 17, (3, 6))

    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    tags, mask = model.predict(frames, batch_size=3, verbose=0)
    before = [w.copy() for w in model.get_weights()]
    history = model.fit(frames, labels, batch_size=3, epochs=1, shuffle=False, verbose=0)

    p = np.take_along_axis(tags.astype(np.float64), labels[..., None], axis=-1)[..., 0]
    want = float(-np.log(p)[mask].mean())  # over the valid steps only
    unmasked = float(-np.log(p).mean())
    got = history.history["loss"][0]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert abs(got - unmasked) > 1e-3  # (the padded steps would change it)
    assert any(not np.allclose(a, b) for a, b in zip(before, model.get_weights(), strict=True))
    return {"loss": got, "want": want}


def test_fit_with_masked_output() -> None:
    check_tagger_fit()


def test_fit_two_outputs_by_name() -> None:
    """Losses, loss weights, metrics and targets by .seq output name (dicts) or in
    output order (lists), for a `with mask` output and a plain one."""
    prog = seqdsl.loads(TWO_HEADS)
    m = prog.model()
    rng = np.random.default_rng(0)
    y_tags = rng.normal(size=(3, 6, 3)).astype(np.float32)
    y_last = rng.normal(size=(3, 2)).astype(np.float32)
    for by_name in (True, False):
        model = prog.build("keras", seed=0)
        xs = model_inputs(m, model, steps=6)
        assert model.output_names == ["tags", "last"]
        if by_name:
            model.compile(
                optimizer=keras.optimizers.SGD(0.1),
                loss={"tags": "mse", "last": "mse"},
                loss_weights={"tags": 1.0, "last": 0.5},
                metrics={"tags": ["mae"], "last": ["mae"]},
            )
            y: Any = {"tags": y_tags, "last": y_last}
        else:
            model.compile(
                optimizer=keras.optimizers.SGD(0.1),
                loss=["mse", "mse"],
                loss_weights=[1.0, 0.5],
                metrics=[["mae"], ["mae"]],
            )
            y = (y_tags, y_last)
        (tags, mask), last = model(xs, training=False)
        tags, mask, last = (ops.convert_to_numpy(a) for a in (tags, mask, last))
        want_tags = ((tags - y_tags) ** 2).mean(-1)[mask].mean()
        want_last = ((last - y_last) ** 2).mean()
        h = model.fit(xs, y, batch_size=3, epochs=1, shuffle=False, verbose=0).history
        assert {"loss", "tags_loss", "last_loss", "tags_mae", "last_mae"} <= set(h)
        np.testing.assert_allclose(h["tags_loss"][0], want_tags, rtol=1e-5)
        np.testing.assert_allclose(h["last_loss"][0], want_last, rtol=1e-5)
        np.testing.assert_allclose(h["loss"][0], want_tags + 0.5 * want_last, rtol=1e-5)
        # evaluate and predict: the same structure as calling the model
        assert len(model.evaluate(xs, y, verbose=0)) == 5
        (p_tags, p_mask), p_last = model.predict(xs, verbose=0)
        assert p_tags.shape == (3, 6, 3) and p_mask.dtype == bool and p_last.shape == (3, 2)


# --------------------------------------------------------------------------
# other Keras backends and DataParallel (subprocesses)

#: parity with the reference on the torch backend (Bidirectional, TimeDistributed,
#: `with mask`, several inputs, a stateful model, shaped cell inputs) and .keras files
OTHER_EXAMPLES = ("bilstm_tagger", "seq2seq_bidir_encoder", "stacked_lstm_repeat",
                  "rnn_guide_stateful", "nested_cell")  # fmt: skip
OTHER_FILES = ("bilstm_tagger", "stacked_lstm_repeat")
#: on JAX, whose every model compiles for seconds, fewer (the tagger runs in its fit
#: step here and in test_data_parallel_jax)
JAX_EXAMPLES = ("seq2seq_bidir_encoder", "rnn_guide_stateful")
JAX_FILES = ("stacked_lstm_repeat",)


def _parity(path: Path) -> None:
    prog = seqdsl.load(path)
    m = prog.model()
    net = prog.build("keras", seed=0)
    net.reset_states()
    inputs, lengths, masks = example_inputs(m)
    ref = run_reference(m, weights64(net), inputs, lengths=lengths, masks=masks)
    xs = model_inputs(m, net)
    out = predict(net, xs)
    compare(list(out) if len(m.model.outputs) > 1 else [out], ref.outputs, what=path.stem)


def _other_backend_main(full: bool, folder: str) -> None:  # pragma: no cover - subprocess
    backend = keras.backend.backend()
    done = []
    jax = backend == "jax"
    stems = (JAX_EXAMPLES if jax else OTHER_EXAMPLES, JAX_FILES if jax else OTHER_FILES)
    if full:
        stems = (NO_EXTERNS, NO_EXTERNS)
    for stem in stems[0]:
        _parity(BY_STEM[stem])
        done.append(stem)
    for stem in stems[1]:
        check_keras_file(BY_STEM[stem], Path(folder))
        done.append(f"{stem}.keras")
    fit = check_tagger_fit()
    print("REPORT " + json.dumps({"backend": backend, "done": done, "fit": fit}))


def _batch4(m: CheckedModel) -> tuple[list[np.ndarray], dict[str, Any], dict[str, Any]]:
    """4 rows (a batch that 2 devices share): a full, a half and an empty row, and a
    full row of other values."""
    a, b = example_inputs(m, seed=0, steps=6), example_inputs(m, seed=1, steps=6)
    inputs = [np.concatenate([x, y[:1]]) for x, y in zip(a[0], b[0], strict=True)]
    lengths = {k: np.concatenate([v, b[1][k][:1]]) for k, v in a[1].items()}
    masks = {k: np.concatenate([v, b[2][k][:1]]) for k, v in a[2].items()}
    return inputs, lengths, masks


def _data_parallel_main() -> None:  # pragma: no cover - runs in a subprocess
    """DataParallel over the 2 host devices: predict equals the reference, and a fit
    step's loss equals the hand-computed masked mean (tagger) or the mean (sentiment)."""
    import jax

    devices = keras.distribution.list_devices()
    assert len(devices) == 2, devices
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
    report: dict[str, Any] = {"devices": len(jax.devices())}
    for stem in ("sentiment_lstm", "bilstm_tagger"):
        prog = seqdsl.load(BY_STEM[stem])
        m = prog.model()
        model = prog.build("keras", seed=0)
        if stem == "bilstm_tagger":
            model.get_layer("x_dropout").rate = 0.0
        inputs, lengths, masks = _batch4(m)
        xs = [
            np.asarray(x).astype(t.dtype)
            for x, t in zip(keras_inputs(m, inputs, lengths, masks), model.inputs, strict=True)
        ]
        x: Any = xs if len(xs) > 1 else xs[0]
        ref = run_reference(m, weights64(model), inputs, lengths=lengths, masks=masks)
        pred = model.predict(x, batch_size=4, verbose=0)
        compare(list(pred) if isinstance(pred, (list, tuple)) else [pred], ref.outputs, what=stem)
        rng = np.random.default_rng(0)
        if stem == "bilstm_tagger":
            probs, mask = ref.outputs[0]
            y = rng.integers(0, 17, (4, 6))
            p = np.take_along_axis(probs, y[..., None], axis=-1)[..., 0]
            want = float(-np.log(p)[mask].mean())
            model.compile(
                optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy"
            )
        else:
            (score,) = ref.outputs
            y = rng.integers(0, 2, score.shape).astype(np.float32)
            want = float(np.mean((score - y) ** 2))
            model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        before = [w.copy() for w in model.get_weights()]
        loss = model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0).history["loss"][0]
        np.testing.assert_allclose(loss, want, rtol=1e-5)
        assert any(not np.allclose(a, b) for a, b in zip(before, model.get_weights(), strict=True))
        sharding = model.get_layer(model.TWIN_ORDER[0]).weights[0].value.sharding
        report[stem] = {"loss": loss, "want": want, "replicated": sharding.is_fully_replicated}
    print("REPORT " + json.dumps(report))


def _run(code: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", code, str(ROOT / "tests"), str(ROOT)],
        cwd=ROOT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **env},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _report(name: str, proc: subprocess.Popen[str], timeout: int) -> dict[str, Any]:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"{name}:\n" + out[-3000:] + err[-6000:]
    report: dict[str, Any] = json.loads(out.split("REPORT ", 1)[1])
    return report


def run_other_backends(full: bool, folder: Path) -> None:
    procs = {}
    for backend in ("jax", "torch"):
        pytest.importorskip(backend)
        code = (
            "import sys; sys.path[:0] = [sys.argv[1], sys.argv[2]]\n"
            f"import test_keras_deploy as t; t._other_backend_main({full}, {str(folder / backend)!r})\n"
        )
        (folder / backend).mkdir()
        procs[backend] = _run(code, {"KERAS_BACKEND": backend})
    for backend, proc in procs.items():
        report = _report(backend, proc, 3600 if full else 600)
        assert report["backend"] == backend
        if full:
            assert len(report["done"]) == 2 * len(NO_EXTERNS)
        elif backend == "jax":
            assert len(report["done"]) == len(JAX_EXAMPLES) + len(JAX_FILES)
        else:
            assert len(report["done"]) == len(OTHER_EXAMPLES) + len(OTHER_FILES)
        np.testing.assert_allclose(report["fit"]["loss"], report["fit"]["want"], rtol=1e-5)


@pytest.mark.slow
def test_other_backends(tmp_path: Path) -> None:
    """The same emitted modules on KERAS_BACKEND=jax and torch: parity with the reference
    for a few examples, .keras round trips, the masked fit step (side by side)."""
    run_other_backends(False, tmp_path)


@pytest.mark.full
def test_other_backends_full(tmp_path: Path) -> None:
    run_other_backends(True, tmp_path)


@pytest.mark.slow
def test_data_parallel_jax() -> None:
    """keras.distribution.DataParallel on the JAX backend over 2 host devices."""
    pytest.importorskip("jax")
    code = (
        "import sys; sys.path[:0] = [sys.argv[1], sys.argv[2]]\n"
        "import test_keras_deploy as t; t._data_parallel_main()\n"
    )
    env = {
        "KERAS_BACKEND": "jax",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
        "JAX_PLATFORMS": "cpu",
    }
    report = _report("DataParallel", _run(code, env), 600)
    assert report["devices"] == 2
    for stem in ("sentiment_lstm", "bilstm_tagger"):
        np.testing.assert_allclose(report[stem]["loss"], report[stem]["want"], rtol=1e-5)
        assert report[stem]["replicated"]
