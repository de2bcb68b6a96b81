"""Keras' own recurrent-layer test cases that pass ``implementation=``,
``backward_layer=`` or a stateful layer to ``Bidirectional``, ported to `.seq`
and run on every backend (the reference interpreter, torch, JAX, Keras).

The expected numbers are Keras' own, copied from Keras 3.15's tests
(``keras/src/layers/rnn/lstm_test.py``, ``gru_test.py``,
``bidirectional_test.py``): the sequences and the constant initializers are
those of the tests (``Constant(0.01)`` kernel, ``Constant(0.02)`` recurrent
kernel, ``Constant(0.03)`` bias; an LSTM's ``unit_forget_bias`` makes its
forget-gate bias 1, as Keras' bias initializer does), given here as canonical
weights. Keras' tolerance, ``atol=rtol=1e-5``, applies.

Masked cases are not in those tests: ``test_masked_*`` compares every backend
with the reference interpreter on masked rows (post and pre padding, an empty
row) for ``backward_layer`` and stateful ``Bidirectional``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest

import seqdsl
from seqdsl.checker import CheckedModel
from seqdsl.reference import run_reference

BACKENDS = ["reference", "torch", "jax", "keras"]
_MODULE = {"torch": "torch", "jax": "jax", "keras": "keras"}

#: Keras' constant initializers of these tests, per weight (forward, backward)
FW = {"kernel": 0.01, "recurrent_kernel": 0.02, "bias": 0.03}


def constant_weights(
    model: CheckedModel,
    values: dict[str, dict[str, float]] | None = None,
    forget_bias_one: bool = True,
) -> dict[str, np.ndarray]:
    """Keras' Constant initializers as canonical weights. ``values``: per direction
    ("forward", "backward"; "" for a layer of its own) the constant of each weight.
    An LSTM with unit_forget_bias (Keras' default) gets 1 in its forget-gate block."""
    out: dict[str, np.ndarray] = {}
    for layer in model.layers:
        for w in layer.weights:
            parts = w.name.split("/")
            direction, weight = (parts[0], parts[-1]) if len(parts) > 1 else ("", parts[0])
            consts = (values or {}).get(direction, FW)
            a = np.full(w.shape, consts[weight], np.float64)
            if weight == "bias" and forget_bias_one and "unit_forget_bias" in w.initializer:
                u = w.shape[0] // 4
                a[u : 2 * u] = 1.0
            out[f"{layer.name}/{w.name}"] = a
    return out


class Runner:
    """One built model on one backend: call(inputs) -> outputs (NumPy), reset()."""

    def __init__(self, backend: str, source: str, weights: dict[str, np.ndarray]):
        self.backend = backend
        self.prog = seqdsl.loads(source, name="keras_case.seq")
        self.model = self.prog.model()
        self.weights = weights
        self.states: dict[str, Any] | None = None
        if backend == "reference":
            return
        self.net: Any = self.prog.build(backend, seed=0)
        if backend == "jax":
            import jax

            self.variables = self.net.from_canonical(weights)
            self.apply = jax.jit(self.net.apply, static_argnames=("return_state",))
        else:
            self.net.load_canonical({k: v.astype(np.float32) for k, v in weights.items()})
        if backend == "torch":
            self.net.eval()

    def call(self, *inputs: np.ndarray) -> list[np.ndarray]:
        if self.backend == "reference":
            r = run_reference(self.model, self.weights, list(inputs), states=self.states)
            self.states = dict(r.states) or None
            return [np.asarray(o) for o in r.outputs]
        if self.backend == "torch":
            import torch

            with torch.no_grad():
                out = self.net(*[torch.as_tensor(x) for x in inputs])
            outs = out if isinstance(out, tuple) else (out,)
            return [o.numpy() for o in outs]
        if self.backend == "jax":
            out, state = self.apply(self.variables, *inputs, return_state=True)
            self.variables = {**self.variables, "state": state}
            outs = out if isinstance(out, tuple) else (out,)
            return [np.asarray(o) for o in outs]
        import keras

        xs = [keras.ops.convert_to_tensor(x) for x in inputs]
        out = self.net(xs if len(xs) > 1 else xs[0], training=False)
        outs = out if isinstance(out, (list, tuple)) else [out]
        return [np.asarray(keras.ops.convert_to_numpy(o)) for o in outs]

    def reset(self) -> None:
        if self.backend == "reference":
            self.states = None
        elif self.backend == "jax":
            self.variables = self.net.from_canonical(self.weights)  # zero states
        else:
            self.net.reset_states()


def runner(backend: str, source: str, weights: dict[str, np.ndarray]) -> Runner:
    if backend != "reference" and importlib.util.find_spec(_MODULE[backend]) is None:
        pytest.skip(f"{backend} is not installed")
    return Runner(backend, source, weights)


def close(got: np.ndarray, want: Sequence[Any], what: str) -> None:
    np.testing.assert_allclose(got, np.array(want), atol=1e-5, rtol=1e-5, err_msg=what)


def model_of(source: str) -> CheckedModel:
    return seqdsl.loads(source, name="keras_case.seq").model()


# --------------------------------------------------------------------------
# lstm_test.py / gru_test.py: test_correctness, parameterized by implementation

SEQUENCE_3_6_4 = np.arange(72).reshape((3, 6, 4)).astype("float32")

#: (layer arguments besides units and implementation, Keras' expected output)
LSTM_CASES: list[tuple[str, list[list[float]]]] = [
    ("", [[0.6288687] * 3, [0.86899155] * 3, [0.9460773] * 3]),
    ("go_backwards=true", [[0.35622165] * 3, [0.74789524] * 3, [0.8872726] * 3]),
    ("unroll=true", [[0.6288687] * 3, [0.86899155] * 3, [0.9460773] * 3]),
    ("unit_forget_bias=false", [[0.57019705] * 3, [0.8661914] * 3, [0.9459622] * 3]),
    ("use_bias=false", [[0.54986924] * 3, [0.86226785] * 3, [0.9443936] * 3]),
]
#: gru_test.test_correctness is parameterized by implementation (its layers do not
#: receive it there; here they do, which must not change the numbers)
GRU_CASES: list[tuple[str, list[list[float]]]] = [
    ("", [[0.5217289] * 3, [0.6371659] * 3, [0.39384964, 0.39384964, 0.3938496]]),
    ("go_backwards=true", [[0.24406259] * 3, [0.611516] * 3, [0.3928808] * 3]),
    ("unroll=true", [[0.5217289] * 3, [0.6371659] * 3, [0.39384964, 0.39384964, 0.3938496]]),
    ("reset_after=false", [[0.51447755] * 3, [0.6426879] * 3, [0.40208298] * 3]),
    ("use_bias=false", [[0.49988455] * 3, [0.64701194] * 3, [0.4103359] * 3]),
]


#: every (kind, implementation, arguments, expected) of the two tests, in one model
CORRECTNESS = [
    (kind, impl, args, want)
    for kind, cases in (("LSTM", LSTM_CASES), ("GRU", GRU_CASES))
    for impl in (1, 2)
    for args, want in cases
]


def _correctness_source(cases: Sequence[tuple[str, int, str, Any]]) -> str:
    lines = ["model Correctness {", "    input x: f32[3, 6, 4]"]
    outs = []
    for i, (kind, impl, args, _) in enumerate(cases):
        extra = f", {args}" if args else ""
        lines.append(f"    y{i} = x -> {kind}(3, implementation={impl}{extra})")
        outs.append(f"y{i}")
    lines += [f"    output {', '.join(outs)}", "}"]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("backend", BACKENDS)
def test_correctness_with_implementation(backend: str) -> None:
    source = _correctness_source(CORRECTNESS)
    model = model_of(source)
    # recorded, not acted on: the config keeps it, every backend computes the same numbers
    impls = [layer.config["implementation"] for layer in model.layers]
    assert impls == [impl for _, impl, _, _ in CORRECTNESS]
    weights = constant_weights(model)
    for (kind, _, args, _), info in zip(CORRECTNESS, model.layers, strict=True):
        if kind == "LSTM" and "unit_forget_bias=false" in args:
            weights[f"{info.name}/bias"][:] = 0.03  # Keras: the bias initializer alone
    outs = runner(backend, source, weights).call(SEQUENCE_3_6_4)
    for (kind, impl, args, want), got in zip(CORRECTNESS, outs, strict=True):
        close(got, want, f"{kind}({args or 'defaults'}) implementation={impl}")


@pytest.mark.parametrize("backend", ["keras"])
def test_keras_layers_receive_implementation(backend: str) -> None:
    if importlib.util.find_spec("keras") is None:
        pytest.skip("keras is not installed")
    src = _correctness_source([("LSTM", 1, "", None)])
    net: Any = seqdsl.loads(src).build("keras")
    assert net.get_layer("y0_lstm").cell.implementation == 1
    assert "implementation=1" in seqdsl.loads(src).compile("keras")


# --------------------------------------------------------------------------
# bidirectional_test.py

SEQUENCE_2_3_4 = np.arange(24).reshape((2, 3, 4)).astype("float32")
SEQUENCE_2_4_3 = np.arange(24).reshape((2, 4, 3)).astype("float32")

BACKWARD_LAYER = """
model BackwardLayer {
    input x: f32[2, 3, 4]
    y = x -> Bidirectional(SimpleRNN(2), backward_layer=SimpleRNN(2, go_backwards=true),
                           merge_mode=mul, name="bi")
    output y
}
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_backward_layer_correctness(backend: str) -> None:
    """test_correctness: a backward SimpleRNN with its own initializers, merge_mode="mul"."""
    model = model_of(BACKWARD_LAYER)
    values = {"forward": FW, "backward": {"kernel": 0.03, "recurrent_kernel": 0.02, "bias": 0.01}}
    (y,) = runner(backend, BACKWARD_LAYER, constant_weights(model, values)).call(SEQUENCE_2_3_4)
    close(y, [[0.08374989, 0.08374989], [0.6740834, 0.6740834]], "backward_layer, mul")


def test_backward_layer_basics_weights_and_params() -> None:
    """test_basics: SimpleRNN(4) with backward_layer=SimpleRNN(4, go_backwards=True),
    merge_mode="sum" on (3, 2, 4): output (3, 4), 6 trainable weights (as Keras)."""
    src = """
    model Basics {
        input x: f32[3, 2, 4]
        y = x -> Bidirectional(SimpleRNN(4), backward_layer=SimpleRNN(4, go_backwards=true),
                               merge_mode=sum, name="bi")
        output y
    }
    """
    model = model_of(src)
    (info,) = model.layers
    assert str(model.types["y"]) == "f32[3, 4]"
    assert [w.name for w in info.weights] == [
        "forward/kernel", "forward/recurrent_kernel", "forward/bias",
        "backward/kernel", "backward/recurrent_kernel", "backward/bias",
    ]  # fmt: skip
    assert info.params == 2 * (4 * 4 + 4 * 4 + 4)
    if importlib.util.find_spec("keras") is not None:
        import keras

        layer = keras.layers.Bidirectional(
            keras.layers.SimpleRNN(4),
            backward_layer=keras.layers.SimpleRNN(4, go_backwards=True),
            merge_mode="sum",
        )
        layer.build((3, 2, 4))
        assert layer.count_params() == info.params and len(layer.trainable_weights) == 6


def test_backward_layer_has_its_own_config_and_weights() -> None:
    """A backward layer without a bias and with another activation: its own weights
    (no backward/bias), its own parameter count, and the summary's totals."""
    src = """
    model Own {
        input x: f32[2, 3, 4]
        y = x -> Bidirectional(GRU(3), backward_layer=GRU(3, go_backwards=true, use_bias=false,
                               activation=relu), name="bi")
        output y
    }
    """
    prog = seqdsl.loads(src)
    (info,) = prog.model().layers
    names = [w.name for w in info.weights]
    assert names == ["forward/kernel", "forward/recurrent_kernel", "forward/bias",
                     "backward/kernel", "backward/recurrent_kernel"]  # fmt: skip
    assert info.params == (4 * 9 + 3 * 9 + 2 * 9) + (4 * 9 + 3 * 9)
    assert "backward_layer" in info.kernels["torch"].reason  # type: ignore[index,operator]
    assert f"Total params: {info.params:,}" in prog.summary()


STATEFUL = """
model Stateful {
    input x: f32[2, 4, 3]
    y = x -> Bidirectional(LSTM(2, stateful=true), name="bi")
    output y
}
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_stateful_bidirectional(backend: str) -> None:
    """test_statefulness: two calls, then reset_states and two calls again: the second
    call of each pair gives Keras' numbers (each direction continued from its own states)."""
    want = [
        [0.26234663, 0.26234663, 0.16959146, 0.16959146],
        [0.6137073, 0.6137073, 0.5381646, 0.5381646],
    ]
    run = runner(backend, STATEFUL, constant_weights(model_of(STATEFUL)))
    (first,) = run.call(SEQUENCE_2_4_3)
    (second,) = run.call(SEQUENCE_2_4_3)
    close(second, want, "second call")
    run.reset()
    (again,) = run.call(SEQUENCE_2_4_3)
    close(again, first, "after reset_states, as the first call")
    (second,) = run.call(SEQUENCE_2_4_3)
    close(second, want, "second call after reset_states")


def test_stateful_bidirectional_is_a_forward_and_a_backward_pair() -> None:
    """A hand-written pair of stateful LSTMs (NumPy, float64), one reading the steps
    in reverse, each carrying its own states across calls, gives the same numbers."""

    def sigmoid(z: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-z))

    def lstm(x: np.ndarray, h: np.ndarray, c: np.ndarray, reverse: bool) -> tuple[Any, Any]:
        kernel, rec = np.full((3, 8), 0.01), np.full((2, 8), 0.02)
        bias = np.full(8, 0.03)
        bias[2:4] = 1.0  # unit_forget_bias
        steps = range(x.shape[1] - 1, -1, -1) if reverse else range(x.shape[1])
        for t in steps:
            z = x[:, t] @ kernel + h @ rec + bias
            i, f, g, o = (
                sigmoid(z[:, :2]),
                sigmoid(z[:, 2:4]),
                np.tanh(z[:, 4:6]),
                sigmoid(z[:, 6:]),
            )
            c = f * c + i * g
            h = o * np.tanh(c)
        return h, c

    x = SEQUENCE_2_4_3.astype(np.float64)
    fw = bw = (np.zeros((2, 2)), np.zeros((2, 2)))
    run = runner("reference", STATEFUL, constant_weights(model_of(STATEFUL)))
    for call in range(3):
        fw, bw = lstm(x, *fw, reverse=False), lstm(x, *bw, reverse=True)
        (got,) = run.call(SEQUENCE_2_4_3)
        np.testing.assert_allclose(got, np.concatenate([fw[0], bw[0]], 1), atol=1e-12,
                                   err_msg=f"call {call}")  # fmt: skip


# --------------------------------------------------------------------------
# masked rows: every backend against the reference interpreter

MASKED = """
model Masked {
    input x: f32[3, T, 4] pad(%s) masked
    y, h1, h2 = x -> Bidirectional(GRU(3, return_sequences=true, return_state=true%s),
                                   backward_layer=GRU(3, go_backwards=true, return_sequences=true,
                                   return_state=true, reset_after=false, activation=relu%s),
                                   name="bi")
    z = x -> Bidirectional(LSTM(3, stateful=true, return_sequences=true), merge_mode=ave,
                           name="st")
    output y with mask, h1, h2, z with mask
}
"""


@pytest.mark.parametrize("backend", ["torch", "jax", "keras"])
@pytest.mark.parametrize("side", ["post", "pre"])
def test_masked_backward_layer_and_stateful_match_the_reference(backend: str, side: str) -> None:
    src = MASKED % (side, "", "")
    model = model_of(src)
    rng = np.random.default_rng(3)
    weights = {
        f"{layer.name}/{w.name}": rng.normal(0.0, 0.5, w.shape)
        for layer in model.layers
        for w in layer.weights
    }
    x = rng.normal(0.0, 1.0, (3, 5, 4))
    lengths = np.array([5, 2, 0])  # a full, a padded and an empty row
    ref = _masked_runner(Runner("reference", src, weights), lengths)
    got = _masked_runner(runner(backend, src, weights), lengths)
    for call in range(2):  # the stateful layer continues from the first call's states
        want_outs, got_outs = ref(x), got(x)
        assert len(want_outs) == len(got_outs)
        for i, (w, g) in enumerate(zip(want_outs, got_outs, strict=True)):
            np.testing.assert_allclose(np.asarray(g, np.float64), w, atol=2e-5,
                                       err_msg=f"{backend} {side} call {call} output {i}")  # fmt: skip


def _masked_runner(run: Runner, lengths: np.ndarray) -> Callable[[np.ndarray], list[np.ndarray]]:
    """Calls with the rows' lengths, outputs and masks flattened to NumPy."""

    def call(x: np.ndarray) -> list[np.ndarray]:
        if run.backend == "reference":
            r = run_reference(
                run.model, run.weights, [x], lengths={"x": lengths}, states=run.states
            )
            run.states = dict(r.states) or None
            outs: list[Any] = list(r.outputs)
        elif run.backend == "torch":
            import torch

            with torch.no_grad():
                outs = list(run.net(torch.as_tensor(x), lengths={"x": torch.as_tensor(lengths)}))
        elif run.backend == "jax":
            out, state = run.apply(run.variables, x, lengths={"x": lengths}, return_state=True)
            run.variables = {**run.variables, "state": state}
            outs = list(out)
        else:
            out = run.net([x.astype(np.float32), lengths.astype(np.int32)], training=False)
            outs = list(out)
        flat: list[np.ndarray] = []
        for o in outs:
            for a in o if isinstance(o, tuple) else (o,):
                flat.append(_numpy(a))
        return flat

    return call


def _numpy(a: Any) -> np.ndarray:
    if hasattr(a, "detach"):
        return a.detach().numpy()
    if type(a).__module__.startswith(("tensorflow", "keras")):
        import keras

        return np.asarray(keras.ops.convert_to_numpy(a))
    return np.asarray(a)


DROPOUT = """
model Dropout {
    input x: f32[3, T, 4] pad(pre) masked
    y = Bidirectional(GRU(3, dropout=0.3, return_sequences=true),
                      backward_layer=GRU(3, go_backwards=true, recurrent_dropout=0.2,
                                         return_sequences=true), name="bi")(x, training=true)
    output y with mask
}
"""


@pytest.mark.parametrize("backend", ["torch", "jax", "keras"])
def test_backward_layer_has_its_own_dropout(backend: str) -> None:
    """Training with injected keep-masks: the forward layer's input dropout, the
    backward layer's recurrent dropout (its own rates), against the reference."""
    model = model_of(DROPOUT)
    rng = np.random.default_rng(5)
    weights = {
        f"{layer.name}/{w.name}": rng.normal(0.0, 0.5, w.shape)
        for layer in model.layers
        for w in layer.weights
    }
    x = rng.normal(0.0, 1.0, (3, 5, 4))
    lengths = np.array([5, 3, 0])
    keep = {
        "bi/forward/input": (rng.random((3, 4)) > 0.3).astype(np.float64),
        "bi/backward/recurrent": (rng.random((3, 3)) > 0.2).astype(np.float64),
    }
    ref = run_reference(model, weights, [x], lengths={"x": lengths}, training=True,
                        dropout_masks=keep)  # fmt: skip
    (want, want_mask) = ref.outputs[0]  # type: ignore[misc]
    run = runner(backend, DROPOUT, weights)
    if backend == "torch":
        import torch

        run.net.train()
        with torch.no_grad():
            got, mask = run.net(torch.as_tensor(x), lengths={"x": torch.as_tensor(lengths)},
                                dropout_masks={k: torch.as_tensor(v) for k, v in keep.items()})  # fmt: skip
    elif backend == "jax":
        got, mask = run.net.apply(run.variables, x, lengths={"x": lengths}, dropout_masks=keep)
    else:
        from seqdsl.runtime.keras import dropout_masks

        with dropout_masks(run.net, keep):
            got, mask = run.net([x.astype(np.float32), lengths.astype(np.int32)])
    np.testing.assert_allclose(_numpy(got), want, atol=2e-5)
    assert (_numpy(mask) == want_mask).all()
    # the keep-masks matter: without them the reference differs
    other = run_reference(model, weights, [x], lengths={"x": lengths}, training=True,
                          dropout_masks={k: np.ones_like(v) for k, v in keep.items()})  # fmt: skip
    assert np.abs(other.outputs[0][0] - want).max() > 1e-3  # type: ignore[index]
