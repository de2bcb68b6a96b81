"""The Keras runtime (seqdsl/runtime/keras.py), tested directly: no .seq program.

Every layer is compared with an independent computation (NumPy over the valid
steps, or Keras' own layer on rearranged data), and every registered layer with
Keras' serialization: get_config/from_config, and serialize_keras_object /
deserialize_keras_object finding it by its registered name without custom_objects.
"""

from __future__ import annotations

import copy
import inspect
from typing import Any

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from keras import layers, ops  # noqa: E402

import seqdsl.runtime.keras as rt  # noqa: E402
from seqdsl.weightsfile import WeightsFileError  # noqa: E402

RNG = np.random.default_rng(7)


def _np(x: Any) -> np.ndarray:
    return np.asarray(ops.convert_to_numpy(x))


def _lengths_mask(lengths: list[int], steps: int, side: str = "post") -> np.ndarray:
    out = np.zeros((len(lengths), steps), bool)
    for b, n in enumerate(lengths):
        if n:
            if side == "post":
                out[b, :n] = True
            else:
                out[b, steps - n :] = True
    return out


# --------------------------------------------------------------------------
# masks


@pytest.mark.parametrize("side", ["post", "pre"])
def test_lengths_to_mask(side: str) -> None:
    x = np.zeros((4, 5, 2), np.float32)
    lengths = np.array([5, 3, 1, 0], np.int32)
    got = _np(rt.LengthsToMask(side)(x, lengths))
    want = np.array(
        [[(t < n) if side == "post" else (t >= 5 - n) for t in range(5)] for n in lengths]
    )
    assert got.dtype == bool
    np.testing.assert_array_equal(got, want)


def test_mask_and_and_and_masks() -> None:
    a, b, c = (RNG.random((3, 6)) > 0.4 for _ in range(3))
    np.testing.assert_array_equal(_np(rt.MaskAnd()([a, b, c])), a & b & c)
    np.testing.assert_array_equal(_np(rt.and_masks([a, None, b])), a & b)
    assert rt.and_masks(None) is None
    assert rt.and_masks([None, None]) is None


def test_concat_masks() -> None:
    m1 = RNG.random((2, 3)) > 0.5
    value = np.ones((2, 4, 5), np.float32)  # an unmasked part: all valid
    m3 = RNG.random((2, 2)) > 0.5
    got = _np(rt.ConcatMasks((True, False, True))([m1, value, m3]))
    np.testing.assert_array_equal(got, np.concatenate([m1, np.ones((2, 4), bool), m3], axis=1))


def test_flip_time() -> None:
    m = RNG.random((3, 7)) > 0.5
    np.testing.assert_array_equal(_np(rt.FlipTime()(m)), m[:, ::-1])


def _window_mask_np(
    mask: np.ndarray, size: int, strides: int, dilation: int, padding: str
) -> np.ndarray:
    if padding != "valid":
        return mask[:, ::strides]
    span = (size - 1) * dilation + 1
    out = [
        [
            all(row[j + i * dilation] for i in range(size))
            for j in range(0, len(row) - span + 1, strides)
        ]
        for row in mask
    ]
    return np.array(out, bool).reshape(len(mask), -1)


@pytest.mark.parametrize(
    "size,strides,dilation,padding",
    [
        (3, 1, 1, "valid"),
        (2, 2, 1, "valid"),
        (3, 1, 2, "valid"),
        (3, 2, 1, "same"),
        (2, 1, 1, "causal"),
    ],
)
def test_window_mask(size: int, strides: int, dilation: int, padding: str) -> None:
    mask = RNG.random((4, 9)) > 0.3
    mask[0] = True
    mask[1] = False
    got = _np(rt.WindowMask(size, strides, dilation, padding)(mask))
    np.testing.assert_array_equal(got, _window_mask_np(mask, size, strides, dilation, padding))


def test_nonzero_masking_and_not_equal_masks() -> None:
    ids = np.array([[3, 0, 1], [0, 0, 2]], np.int32)
    np.testing.assert_array_equal(_np(rt.NonZeroMask()(ids)), ids != 0)
    x = RNG.normal(size=(2, 4, 3)).astype(np.float32)
    x[0, 1] = 0.5
    x[1, 3, 0] = 0.5
    np.testing.assert_array_equal(_np(rt.MaskingMask(0.5)(x)), (x != 0.5).any(axis=-1))
    y = RNG.integers(0, 2, size=(2, 5, 2, 2)).astype(np.float32)
    np.testing.assert_array_equal(_np(rt.NotEqualMask(0)(y)), (y != 0).any(axis=(2, 3)))


def test_extern_mask_helpers() -> None:
    """not_equal_mask and concat_time_masks: an extern layer's generate and concat."""
    y = RNG.integers(0, 2, size=(2, 5, 3)).astype(np.float32)
    np.testing.assert_array_equal(_np(rt.not_equal_mask(y, 1)), (y != 1).any(axis=-1))
    a = np.zeros((2, 3, 4), np.float32)
    b = np.zeros((2, 2, 2, 2), np.float32)
    ma = RNG.random((2, 3)) > 0.5
    mb = RNG.random((2, 2)) > 0.5
    joined = _np(rt.concat_time_masks([a, b], [ma, mb]))
    np.testing.assert_array_equal(joined, np.concatenate([ma, mb], axis=1))
    joined = _np(rt.concat_time_masks([a, b], [None, mb]))
    np.testing.assert_array_equal(joined, np.concatenate([np.ones((2, 3), bool), mb], axis=1))
    assert rt.concat_time_masks([a, b], [None, None]) is None


def test_temporal_split() -> None:
    x = RNG.normal(size=(2, 6, 3)).astype(np.float32)
    mask = RNG.random((2, 6)) > 0.5
    parts = rt.TemporalSplit(3)(x)
    masks = rt.TemporalSplit(3)(mask)
    for got, want in zip(parts, np.split(x, 3, axis=1), strict=True):
        np.testing.assert_array_equal(_np(got), want)
    for got, want in zip(masks, np.split(mask, 3, axis=1), strict=True):
        np.testing.assert_array_equal(_np(got), want)


def test_drop_mask_and_with_mask_propagation() -> None:
    """WithMask attaches the given mask as the Keras mask the next layer receives;
    DropMask removes it."""
    seen: dict[str, Any] = {}

    class Record(layers.Layer):
        def __init__(self, key: str, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.key = key

        def call(self, inputs: Any, mask: Any = None) -> Any:
            seen[self.key] = mask
            return ops.copy(inputs)

        def compute_mask(self, inputs: Any, mask: Any = None) -> Any:
            return None

    x = keras.Input((4, 2))
    m = keras.Input((4,), dtype="bool")
    carried = rt.WithMask()(x, mask=m)
    masked = layers.Masking(0.0)(x)
    with_mask = Record("with")(carried)
    dropped = Record("drop")(rt.DropMask()(masked))
    kept = Record("kept")(masked)
    model = keras.Model([x, m], [with_mask, dropped, kept])
    xs = RNG.normal(size=(2, 4, 2)).astype(np.float32)
    xs[0, 3] = 0.0
    ms = np.array([[1, 1, 0, 0], [1, 0, 1, 1]], bool)
    seen.clear()
    model([xs, ms])
    np.testing.assert_array_equal(_np(seen["with"]), ms)
    assert seen["drop"] is None
    np.testing.assert_array_equal(_np(seen["kept"]), (xs != 0).any(-1))  # the control
    assert rt.DropMask().compute_mask(xs, ms) is None
    np.testing.assert_array_equal(_np(rt.WithMask().compute_mask(xs, ms)), ms)


# --------------------------------------------------------------------------
# layers that use the mask where Keras does not


def _masked_rows() -> tuple[np.ndarray, np.ndarray]:
    x = RNG.normal(size=(4, 7, 3)).astype(np.float32)
    mask = np.array(
        [[1] * 7, [1, 1, 1, 0, 0, 0, 0], [0, 1, 0, 1, 1, 0, 1], [0] * 7], bool
    )  # full, right-padded, gaps, empty
    return x, mask


def test_masked_global_pooling() -> None:
    x, mask = _masked_rows()
    top = _np(rt.MaskedGlobalMaxPooling1D()(x, mask=mask))
    mean = _np(rt.MaskedGlobalAveragePooling1D()(x, mask=mask))
    for b in range(len(x)):
        valid = x[b][mask[b]]
        want_max = valid.max(axis=0) if len(valid) else np.zeros(3)
        want_mean = valid.mean(axis=0) if len(valid) else np.zeros(3)
        np.testing.assert_allclose(top[b], want_max, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(mean[b], want_mean, rtol=1e-6, atol=1e-6)
    keep = _np(rt.MaskedGlobalAveragePooling1D(keepdims=True)(x, mask=mask))
    assert keep.shape == (4, 1, 3)
    np.testing.assert_allclose(keep[:, 0], mean, rtol=1e-6)
    # without a mask: Keras' own computation
    np.testing.assert_allclose(_np(rt.MaskedGlobalMaxPooling1D()(x)), x.max(axis=1), rtol=1e-6)


@pytest.mark.parametrize("pool,strides", [(2, 2), (3, 1), (3, 2)])
def test_masked_window_pooling(pool: int, strides: int) -> None:
    x, mask = _masked_rows()
    top = _np(rt.MaskedMaxPooling1D(pool, strides)(x, mask=mask))
    mean = _np(rt.MaskedAveragePooling1D(pool, strides)(x, mask=mask))
    starts = range(0, 7 - pool + 1, strides)
    assert top.shape == mean.shape == (4, len(starts), 3)
    for b in range(4):
        for j, s in enumerate(starts):
            valid = x[b, s : s + pool][mask[b, s : s + pool]]
            want_max = valid.max(axis=0) if len(valid) else np.zeros(3)
            want_mean = valid.mean(axis=0) if len(valid) else np.zeros(3)
            np.testing.assert_allclose(top[b, j], want_max, rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(mean[b, j], want_mean, rtol=1e-6, atol=1e-6)


def test_masked_average_pooling_same_without_mask() -> None:
    """padding="same": TensorFlow's windows (zeros added around, not counted)."""
    x = RNG.normal(size=(2, 7, 3)).astype(np.float32)
    pool, strides = 3, 2
    got = _np(rt.MaskedAveragePooling1D(pool, strides, padding="same")(x))
    steps = -(-7 // strides)
    total = max((steps - 1) * strides + pool - 7, 0)
    left = total // 2
    for j in range(steps):
        lo = j * strides - left
        window = x[:, max(lo, 0) : min(lo + pool, 7)]
        np.testing.assert_allclose(got[:, j], window.mean(axis=1), rtol=1e-6, atol=1e-6)


def test_masked_conv1d_zeroes_masked_steps() -> None:
    x, mask = _masked_rows()
    conv = rt.MaskedConv1D(4, 3, name="c")
    got = _np(conv(x, mask=mask))
    plain = layers.Conv1D(4, 3)
    plain.build(x.shape)
    plain.set_weights(conv.get_weights())
    want = _np(plain(np.where(mask[:, :, None], x, 0.0)))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert conv.compute_mask(x, mask) is None


def test_temporal_softmax() -> None:
    x, mask = _masked_rows()
    got = _np(rt.TemporalSoftmax()(x, mask=mask))
    for b in range(len(x)):
        want = np.zeros((7, 3))
        if mask[b].any():
            v = x[b][mask[b]].astype(np.float64)
            e = np.exp(v - v.max(axis=0))
            want[mask[b]] = e / e.sum(axis=0)
        np.testing.assert_allclose(got[b], want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cls", ["PortableMultiHeadAttention", "MaskedMultiHeadAttention"])
def test_multi_head_attention_projections_add_their_biases_by_broadcasting(cls: str) -> None:
    """Heads of size 1 and as many heads as steps: every projection is einsum + bias
    by NumPy broadcasting (Keras' TensorFlow ops.add put the bias [heads, 1] of a
    projection [B, T, heads, 1] on the time axis)."""
    att = getattr(rt, cls)(3, 1, bias_initializer="random_normal")
    x = RNG.normal(size=(2, 3, 4)).astype(np.float32)
    att(x, x)
    heads = RNG.normal(size=(2, 3, 3, 1)).astype(np.float32)
    dense = (att.query_dense, att.key_dense, att.value_dense, att.output_dense)
    for layer, inp in zip(dense, (x, x, x, heads), strict=True):
        kernel, bias = layer.get_weights()
        assert bias.shape in ((3, 1), (4,))
        want = np.einsum(layer.equation, inp.astype(np.float64), kernel) + bias
        np.testing.assert_allclose(_np(layer(inp)), want, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------
# recurrent layers


@pytest.mark.parametrize("side", ["post", "pre", "any"])
def test_masked_gru_matches_keras_on_the_valid_steps(side: str) -> None:
    """MaskedGRU's last output per row equals Keras' GRU run on that row's valid steps
    alone (unmasked); an empty row gives 0."""
    x = RNG.normal(size=(4, 6, 3)).astype(np.float32)
    if side == "any":
        mask = np.array([[1] * 6, [1, 0, 1, 1, 0, 1], [0, 0, 1, 0, 0, 0], [0] * 6], bool)
    else:
        mask = _lengths_mask([6, 4, 1, 0], 6, side)
    masked = rt.MaskedGRU(5, mask_side=side, return_sequences=True, return_state=True)
    seqs, state = masked(x, mask=mask)
    plain = layers.GRU(5, return_state=True)
    plain.build(x.shape)
    plain.set_weights(masked.get_weights())
    seqs, state = _np(seqs), _np(state)
    for b in range(4):
        valid = x[b : b + 1][:, mask[b]]
        if not valid.shape[1]:
            np.testing.assert_array_equal(state[b], 0.0)
            np.testing.assert_array_equal(seqs[b], 0.0)
            continue
        out, _ = plain(valid)
        np.testing.assert_allclose(state[b], _np(out)[0], rtol=1e-5, atol=1e-6)
        last = np.nonzero(mask[b])[0][-1]
        np.testing.assert_allclose(seqs[b, last], _np(out)[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(seqs[b][~mask[b]], 0.0)  # masked_output zero


# --------------------------------------------------------------------------
# the model helpers


def test_pad_inputs_matches_keras() -> None:
    pads = {
        "a": ("post", 0, 3, "post", "int32", "T"),
        "b": ("pre", -1.0, None, "pre", "float32", "T"),
    }
    a = [[1, 2, 3, 4], [5], []]
    b = [RNG.normal(size=(n, 2)) for n in (2, 5, 1)]
    (pa, la), (pb, lb) = rt.pad_batches(pads, [a, b])
    kpad = keras.utils.pad_sequences
    np.testing.assert_array_equal(pa, kpad(a, maxlen=3, padding="post", truncating="post"))
    np.testing.assert_array_equal(pb, kpad(b, maxlen=3, padding="pre", value=-1.0, dtype="float32"))
    assert la.tolist() == [3, 1, 0] and lb.tolist() == [2, 3, 1]
    with pytest.raises(TypeError, match="pad takes 2"):
        rt.pad_batches(pads, [a])


# --------------------------------------------------------------------------
# serialization


def _examples() -> dict[str, Any]:
    """One configured instance of every registered runtime layer (ExternLayer, which
    resolves an extern implementation, is tested through models in test_cells_keras)."""
    return {
        "LengthsToMask": rt.LengthsToMask("pre"),
        "NonZeroMask": rt.NonZeroMask(),
        "MaskingMask": rt.MaskingMask(-1.5),
        "MaskAnd": rt.MaskAnd(),
        "ConcatMasks": rt.ConcatMasks((True, False)),
        "FlipTime": rt.FlipTime(),
        "WindowMask": rt.WindowMask(3, 2, 1, "same"),
        "DropMask": rt.DropMask(),
        "MergeMaximum": rt.MergeMaximum(),
        "MergeMinimum": rt.MergeMinimum(),
        "MergeMultiply": rt.MergeMultiply(),
        "WithMask": rt.WithMask(),
        "MaskedConv1D": rt.MaskedConv1D(4, 3, strides=2, padding="causal"),
        "MaskedMaxPooling1D": rt.MaskedMaxPooling1D(3, 2),
        "MaskedAveragePooling1D": rt.MaskedAveragePooling1D(2, padding="same"),
        "MaskedGlobalMaxPooling1D": rt.MaskedGlobalMaxPooling1D(keepdims=True),
        "MaskedGlobalAveragePooling1D": rt.MaskedGlobalAveragePooling1D(),
        "TemporalSoftmax": rt.TemporalSoftmax(),
        "TemporalSplit": rt.TemporalSplit(3),
        "TimeDistributed": rt.TimeDistributed(layers.Dense(2)),
        "MaskedAttention": rt.MaskedAttention(use_scale=True, dropout=0.1),
        "MaskedMultiHeadAttention": rt.MaskedMultiHeadAttention(2, 4),
        "PortableMultiHeadAttention": rt.PortableMultiHeadAttention(3, 1, value_dim=2),
        "MaskedLSTM": rt.MaskedLSTM(3, mask_side="pre", masked_output="carry"),
        "MaskedGRU": rt.MaskedGRU(3, go_backwards=True, mask_side="post"),
        "MaskedSimpleRNN": rt.MaskedSimpleRNN(2, return_sequences=True),
        "MaskedRNN": rt.MaskedRNN(layers.LSTMCell(2), masked_output="carry"),
        "NestedRNN": rt.NestedRNN(layers.LSTMCell(2)),
        "MaskedNestedRNN": rt.MaskedNestedRNN(layers.LSTMCell(2), mask_side="pre"),
        "NotEqualMask": rt.NotEqualMask(3),
        "StatefulBidirectional": rt.StatefulBidirectional(
            layers.LSTM(2, stateful=True, return_state=True), merge_mode="sum"
        ),
        "_FlatCell": rt._FlatCell(layers.LSTMCell(2), input_shapes=[(3,)]),
    }


def _registered() -> list[str]:
    """The runtime's classes registered with Keras (by their registered name's package)."""
    return sorted(
        name
        for name, obj in vars(rt).items()
        if inspect.isclass(obj)
        and obj.__module__ == rt.__name__
        and keras.saving.get_registered_name(obj) == f"seqdsl>{name}"
    )


def test_every_layer_is_registered() -> None:
    names = _registered()
    for name in rt.__all__:
        obj = getattr(rt, name)
        if inspect.isclass(obj):
            assert name in names, f"{name} is not registered under seqdsl>"
            assert keras.saving.get_registered_object(f"seqdsl>{name}") is obj
    layer_classes = {n for n in names if issubclass(getattr(rt, n), layers.Layer)}
    assert layer_classes - {"ExternLayer", "SeqdslModel", "_MaskLayer"} == set(_examples())


@pytest.mark.parametrize("name", sorted(_examples()))
def test_config_round_trip(name: str) -> None:
    layer = _examples()[name]
    config = layer.get_config()
    back = type(layer).from_config(copy.deepcopy(config))  # Keras' RNN pops `cell`
    assert type(back) is type(layer)
    assert back.get_config() == config
    # by the registered name, with no custom_objects
    data = keras.saving.serialize_keras_object(layer)
    assert data["registered_name"] == f"seqdsl>{name}"
    again = keras.saving.deserialize_keras_object(data)
    assert type(again) is type(layer)
    assert again.get_config() == config


def test_seqdsl_model_helpers() -> None:
    class Tiny(rt.SeqdslModel):
        WEIGHTS = {"d": (("kernel", (3, 2)), ("bias", (2,)))}
        TWIN_ORDER = ("d",)

    x = keras.Input((3,))
    net = Tiny(inputs=x, outputs=layers.Dense(2, name="d")(x))
    k = RNG.normal(size=(3, 2)).astype(np.float32)
    bias = RNG.normal(size=(2,)).astype(np.float32)
    net.load_canonical({"d/kernel": k, "d/bias": bias})
    xs = RNG.normal(size=(4, 3)).astype(np.float32)
    np.testing.assert_allclose(_np(net(xs)), xs @ k + bias, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(net.canonical_weights()["d/kernel"], k)
    with pytest.raises(WeightsFileError, match="missing"):
        net.load_canonical({"d/kernel": k})
    with pytest.raises(ValueError, match="shape"):
        net.load_canonical({"d/kernel": k, "d/bias": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match="weight arrays"):
        net.set_weights([k])


# --------------------------------------------------------------------------
# the emitter carries no run-time code as text


def test_no_runtime_code_in_keras_emitter_strings() -> None:
    """The Keras emitter writes the model; the run-time code is seqdsl/runtime/keras.py.
    No string literal of seqdsl/emit/keras_*.py (docstrings aside) holds a block of
    Python code (a `def` or `class` with a body on further lines)."""
    import ast
    from pathlib import Path

    emit = Path(rt.__file__).resolve().parent.parent / "emit"
    assert not (emit / "keras_runtime.py").exists()
    for path in sorted(emit.glob("keras_*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef))
            and node.body
            and isinstance(node.body[0], ast.Expr)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if id(node) in docstrings or "\n" not in node.value.strip("\n"):
                    continue
                code = any(
                    line.lstrip().startswith(("def ", "class ", "@"))
                    for line in node.value.splitlines()
                )
                assert not code, f"{path.name}:{node.lineno}: run-time code in a string"


@pytest.mark.parametrize(
    ("merge", "keras_merge", "op"),
    [
        ("MergeMaximum", "Maximum", np.maximum),
        ("MergeMinimum", "Minimum", np.minimum),
        ("MergeMultiply", "Multiply", np.multiply),
    ],
)
def test_merges_compute_at_masked_steps(merge: str, keras_merge: str, op: Any) -> None:
    """Keras' Maximum/Minimum/Multiply substitute a masked input's value at its masked
    steps (another input's, or 1); the runtime's compute the elementwise op everywhere."""
    a = RNG.normal(size=(2, 4, 3)).astype(np.float32)
    a[:, 2:] = 0.0  # masked by Masking(0.0): the steps where Keras substitutes
    b = RNG.normal(size=(2, 4, 3)).astype(np.float32)
    xa, xb = keras.Input((4, 3)), keras.Input((4, 3))
    masked = layers.Masking(0.0)(xa)
    ours = keras.Model([xa, xb], getattr(rt, merge)()([masked, xb]))
    theirs = keras.Model([xa, xb], getattr(layers, keras_merge)()([masked, xb]))
    want = op(a, b)
    np.testing.assert_allclose(_np(ours([a, b])), want, rtol=1e-6, atol=1e-6)
    assert not np.allclose(_np(theirs([a, b])), want, atol=1e-3)  # what Keras gives
