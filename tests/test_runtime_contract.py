"""The run-time contract of built models, attacked on every backend (issue 12).

Structural checks (rank, declared sizes, dtype kind, symbols across inputs,
lengths and masks, no empty axis) always run and raise one error type,
seqdsl.InputError, naming the input, the axis and the declaration, before any
framework code; the checks of values (lengths in [0, T], ids in range, declared
mask kinds) run in debug mode, switched by build(..., debug=True) and the
attribute `debug` on every backend. Loading weights is all or nothing; a
malformed weights file or weights for another model raise WeightsFileError.
docs/errors.md ("Run-time errors") states the contract this file pins.

Small models, built once per backend for the module (about 30 s with Keras'
import).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import seqdsl
from seqdsl import InputError, WeightsFileError
from seqdsl.weightsfile import load_weights, save_weights

SRC = """
model Ids {
    input tokens: i32[B, T] pad(post, value=0)
    x = tokens -> Embedding(50, 4, mask_zero=true) -> LSTM(3)
    output x
}
model Lens {
    input x: f32[B, T, 3] pad(post) masked
    y = x -> LSTM(3)
    output y
}
model Gaps {
    input x: f32[B, T, 3] masked
    y = x -> LSTM(3)
    output y
}
model Kinds {
    input x: f32[B, T, 3]
    input m: mask(post)[B, T]
    y = LSTM(3)(x, mask=m)
    output y
}
model Pair {
    input a: f32[B, T, 3]
    input b: i32[B, T]
    e = b -> Embedding(10, 3)
    y = concat(a, e) -> LSTM(2)
    output y
}
"""

BACKENDS = ("torch", "jax", "keras")
RNG = np.random.default_rng(12)


@pytest.fixture(scope="module")
def prog() -> seqdsl.Program:
    return seqdsl.loads(SRC)


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    pytest.importorskip({"torch": "torch", "jax": "jax", "keras": "keras"}[request.param])
    return str(request.param)


_BUILT: dict[tuple[str, str], Any] = {}


def net(prog: seqdsl.Program, backend: str, model: str) -> Any:
    """The model built once per backend (debug off: each test sets what it needs)."""
    key = (backend, model)
    if key not in _BUILT:
        _BUILT[key] = prog.build(backend, model=model, seed=1)
    built = _BUILT[key]
    built.debug = False
    return built


def arr(y: Any) -> np.ndarray:
    if hasattr(y, "detach"):
        y = y.detach()
    return np.asarray(y)


def call(backend: str, m: Any, *inputs: Any, lengths: Any = None, masks: Any = None) -> np.ndarray:
    """One call as each backend takes it: torch and JAX with lengths=/masks=; Keras
    with the lengths (pad side declared) or the mask (none) as inputs after the
    input they belong to."""
    if backend != "keras":
        return arr(m(*inputs, lengths=lengths, masks=masks))
    names = list(m.DECLARED)
    items = list(inputs)
    if lengths is not None:
        items.append(lengths)
    if masks is not None:
        items.append(masks)
    return arr(m(items if len(names) > 1 else items[0]))


def x3(b: int = 2, t: int = 5) -> np.ndarray:
    return RNG.normal(size=(b, t, 3)).astype(np.float32)


# --------------------------------------------------------------------------
# structural checks: always on, one error naming input, axis and declaration


def test_good_calls_run(prog: seqdsl.Program, backend: str) -> None:
    assert call(backend, net(prog, backend, "Ids"), np.array([[3, 4, 0], [5, 0, 0]])).shape == (
        2,
        3,
    )
    x = x3()
    lens = np.array([5, 2])
    assert call(backend, net(prog, backend, "Lens"), x, lengths=lens).shape == (2, 3)
    m = np.arange(5)[None, :] < lens[:, None]
    assert call(backend, net(prog, backend, "Gaps"), x, masks=m).shape == (2, 3)
    assert call(backend, net(prog, backend, "Kinds"), x, m).shape == (2, 3)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (x3()[:, :, :2], r"input `x`: axis 2 has size 2, but `x: f32\[B, T, 3\]` declares 3"),
        (x3()[0], r"input `x`: shape \[5, 3\] has rank 2, but `x: f32\[B, T, 3\]` has rank 3"),
        (x3(0), r"input `x`: axis 0 \(B\) has size 0 .*at least one row and one step"),
        (x3(2, 0), r"input `x`: axis 1 \(T\) has size 0 .*at least one row and one step"),
        (x3().astype(bool), r"input `x`: dtype bool, not a number dtype: it is declared `x: f32"),
    ],
)
def test_bad_input_shapes_and_dtypes(
    prog: seqdsl.Program, backend: str, bad: np.ndarray, message: str
) -> None:
    """Items 12 and 13: empty batches and T = 0, wrong rank and feature size: the
    same InputError on every backend (no torch, TensorFlow or Keras internals)."""
    lens = np.ones(len(bad) if bad.ndim == 3 else 2, np.int32)
    with pytest.raises(InputError, match=message):
        call(backend, net(prog, backend, "Lens"), bad, lengths=lens)


def test_float_tokens_are_refused(prog: seqdsl.Program, backend: str) -> None:
    """Item 5: float tokens for an i32 input (torch computed the mask on the floats)."""
    with pytest.raises(InputError, match=r"input `tokens`: dtype float\d\d, not an integer dtype"):
        call(backend, net(prog, backend, "Ids"), np.array([[0.3, 2.0, 0.0]]))
    if backend != "keras":  # (Keras reads a list as a list of inputs)
        with pytest.raises(InputError, match=r"input `tokens`: dtype float\d\d"):
            call(backend, net(prog, backend, "Ids"), [[0.3, 2.0, 0.0]])  # read by NumPy


def test_float_and_misshapen_lengths_are_refused(prog: seqdsl.Program, backend: str) -> None:
    """Item 6 (float lengths: 2.5 meant 3 steps on JAX post, 2 elsewhere) and item 13
    (lengths of another batch size), on every backend, debug mode or not."""
    m = net(prog, backend, "Lens")
    lengths_of = "input `x_lengths`" if backend == "keras" else r"lengths\['x'\]"
    for debug in (False, True):
        m.debug = debug
        with pytest.raises(InputError, match=rf"{lengths_of}: dtype float\d\d, not an integer"):
            call(backend, m, x3(), lengths=np.array([2.5, 3.0]))
        with pytest.raises(InputError, match=rf"{lengths_of}: .*3.*\b2\b"):
            call(backend, m, x3(), lengths=np.array([1, 2, 3]))


def test_short_or_float_masks_are_refused(prog: seqdsl.Program, backend: str) -> None:
    """Item 2: a mask one step too short (Keras dropped the last step)."""
    x = x3()
    short = np.ones((2, 4), bool)
    mask_of = "input `x_mask`" if backend == "keras" else r"masks\['x'\]"
    with pytest.raises(InputError, match=rf"{mask_of}: .*\b4\b.*\b5\b"):
        call(backend, net(prog, backend, "Gaps"), x, masks=short)
    with pytest.raises(InputError, match=r"input `m`: axis 1 \(T\) has size 4, but T = 5"):
        call(backend, net(prog, backend, "Kinds"), x, short)
    with pytest.raises(InputError, match=r"input `m`: dtype float\d\d, not a bool dtype"):
        call(backend, net(prog, backend, "Kinds"), x, np.ones((2, 5), np.float32))


def test_symbols_agree_across_inputs(prog: seqdsl.Program, backend: str) -> None:
    m = net(prog, backend, "Pair")
    a, b = x3(2, 5), np.ones((2, 5), np.int32)
    assert call(backend, m, a, b).shape == (2, 2)
    with pytest.raises(
        InputError, match=r"input `b`: axis 1 \(T\) has size 4, but T = 5 in input `a`"
    ):
        call(backend, m, a, b[:, :4])
    with pytest.raises(
        InputError, match=r"input `b`: axis 0 \(B\) has size 1, but B = 2 in input `a`"
    ):
        call(backend, m, a, b[:1])


def test_lengths_for_an_input_that_is_not_masked(prog: seqdsl.Program) -> None:
    """torch and JAX take lengths= by input name: one for an unmasked input is refused."""
    for backend in ("torch", "jax"):
        pytest.importorskip(backend)
        with pytest.raises(
            InputError, match=r"lengths\['tokens'\]: `tokens` is not a `masked` input"
        ):
            net(prog, backend, "Ids")(np.array([[1, 0]]), lengths={"tokens": np.array([1])})


def test_structural_checks_hold_under_jax_jit(prog: seqdsl.Program) -> None:
    """Static under jax.jit: shapes and dtypes are known at trace time."""
    jax = pytest.importorskip("jax")
    m = net(prog, "jax", "Lens")
    mod = __import__(type(m).__module__, fromlist=["apply"])
    f = jax.jit(mod.apply)
    assert arr(f(m.variables, x3(), lengths=np.array([5, 1]))).shape == (2, 3)
    with pytest.raises(InputError, match=r"input `x`: axis 2 has size 2"):
        f(m.variables, x3()[:, :, :2], lengths=np.array([5, 1]))
    with pytest.raises(InputError, match=r"lengths\['x'\]: dtype float"):
        f(m.variables, x3(), lengths=np.array([5.0, 1.0], np.float32))


def test_keras_checks_inside_predict(prog: seqdsl.Program) -> None:
    """Keras traces predict(): the structural check reads the traced shapes."""
    pytest.importorskip("keras")
    m = net(prog, "keras", "Lens")
    assert m.predict([x3(), np.array([5, 1])], verbose=0).shape == (2, 3)
    with pytest.raises(InputError, match=r"input `x`: axis 2 has size 2"):
        m.predict([x3()[:, :, :2], np.array([5, 1])], verbose=0)


# --------------------------------------------------------------------------
# checks of values: debug mode, one switch


def test_one_debug_switch(prog: seqdsl.Program, backend: str) -> None:
    """Item 8: build(..., debug=True) and the attribute `debug`, the same everywhere."""
    built = prog.build(backend, model="Lens", debug=True)
    assert built.debug is True
    built.debug = False
    assert built.debug is False


def test_lengths_out_of_range(prog: seqdsl.Program, backend: str) -> None:
    """Item 8: lengths > T or < 0 are errors in debug mode; outside it they read as
    clipped to [0, T] (documented), on every backend alike."""
    m = net(prog, backend, "Lens")
    x = x3()
    clipped = call(backend, m, x, lengths=np.array([5, 0]))
    np.testing.assert_allclose(call(backend, m, x, lengths=np.array([9, -2])), clipped, atol=1e-6)
    m.debug = True
    with pytest.raises(
        InputError, match=r"row 0 has length 9, but the lengths of input `x` must lie in \[0, 5\]"
    ):
        call(backend, m, x, lengths=np.array([9, 1]))
    with pytest.raises(InputError, match=r"row 1 has length -2"):
        call(backend, m, x, lengths=np.array([3, -2]))
    assert call(backend, m, x, lengths=np.array([5, 0])).shape == (2, 3)


def test_masks_of_another_kind(prog: seqdsl.Program, backend: str) -> None:
    """Item 8: a mask that breaks its declared kind is an error in debug mode: an
    explicit mask(post) input with a gap, and id 0 inside the data of an input
    declared pad(post, value=0) with Embedding(mask_zero=true)."""
    kinds, ids = net(prog, backend, "Kinds"), net(prog, backend, "Ids")
    gap = np.array([[1, 0, 1, 0, 0], [1, 1, 0, 0, 0]], bool)
    tokens = np.array([[3, 0, 4], [5, 0, 0]])
    call(backend, kinds, x3(), gap)  # outside debug mode: not checked
    call(backend, ids, tokens)
    kinds.debug = ids.debug = True
    with pytest.raises(InputError, match=r"mask.*declared `post`|not `post`"):
        call(backend, kinds, x3(), gap)
    with pytest.raises(InputError, match=r"x_embedding.*(declared `post`|not `post`)"):
        call(backend, ids, tokens)


def test_ids_out_of_range(prog: seqdsl.Program, backend: str) -> None:
    """Item 4: ids >= input_dim and negative ids. In debug mode an InputError on every
    backend; outside it torch and Keras' eager calls still raise it, and JAX (whose
    jitted gather cannot raise) gives rows of NaN, never another id's row."""
    m = net(prog, backend, "Ids")
    for bad in (np.array([[3, 50, 0]]), np.array([[-3, 2, 0]])):
        m.debug = True
        with pytest.raises(InputError, match=r"x_embedding.*ids must lie in \[0, 50\)"):
            call(backend, m, bad)
        m.debug = False
        if backend == "jax":
            assert np.isnan(call(backend, m, bad)).all()
        else:
            with pytest.raises(InputError, match=r"x_embedding.*ids must lie in \[0, 50\)"):
                call(backend, m, bad)


# --------------------------------------------------------------------------
# pad(): the same arrays' values on every backend, no silent overflow


def test_pad_refuses_values_the_dtype_cannot_hold(prog: seqdsl.Program, backend: str) -> None:
    """Item 7 (run-time part): keras.utils.pad_sequences wraps 3000000000 to
    -1294967296 in int32, 2**40 to 0 and NaN to -2147483648; pad() refuses them."""
    m = net(prog, backend, "Ids")
    cases = [([[1, 3_000_000_000]], "3000000000 does not fit int32"), ([[2**40]], r"\d+ does not fit int32"),
             ([[1.0, float("nan")]], "nan is not a number that int32 can hold")]  # fmt: skip
    for seqs, message in cases:
        with pytest.raises(InputError, match=rf"pad\(\): sequence 0 of `tokens`: {message}"):
            m.pad(seqs)
    with pytest.raises(InputError, match=r"pad\(\): no sequence for `tokens`"):
        m.pad([])
    batch, lengths = m.pad([[1, 2, 3], [4]])
    np.testing.assert_array_equal(arr(batch), [[1, 2, 3], [4, 0, 0]])
    np.testing.assert_array_equal(arr(lengths), [3, 1])


def test_pad_output_of_torch_runs_on_every_backend(prog: seqdsl.Program, backend: str) -> None:
    """Issue 13: torch's pad() returns torch tensors; every backend's model takes them
    (and NumPy arrays, and lists) and gives the same numbers."""
    pytest.importorskip("torch")
    m = net(prog, backend, "Lens")
    seqs = [RNG.normal(size=(4, 3)), RNG.normal(size=(2, 3))]
    tb, tl = net(prog, "torch", "Lens").pad(seqs)
    nb, nl = (arr(tb), arr(tl)) if backend == "torch" else m.pad(seqs)
    want = call(backend, m, np.asarray(nb), lengths=np.asarray(nl))
    np.testing.assert_allclose(call(backend, m, tb, lengths=tl), want, rtol=1e-6, atol=1e-6)
    if backend != "keras":  # (Keras reads nested lists as lists of inputs)
        lists = call(backend, m, np.asarray(nb).tolist(), lengths=list(nl))
        np.testing.assert_allclose(lists, want, rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------
# weights: all or nothing, one way to load a file


def test_load_canonical_is_all_or_nothing(prog: seqdsl.Program, backend: str) -> None:
    """Item 1: a weight of the wrong shape after good ones changes nothing (torch and
    Keras overwrote the weights before it)."""
    m = net(prog, backend, "Lens")
    before = {k: arr(v).copy() for k, v in m.canonical_weights().items()}
    keys = list(before)
    bad = {k: v + 1.0 for k, v in before.items()}
    bad[keys[-1]] = np.zeros((7,), np.float32)
    with pytest.raises(
        WeightsFileError, match=rf"weight {keys[-1]}: shape \[7\], but the model's is"
    ):
        m.load_canonical(bad)
    after = m.canonical_weights()
    for k in keys:
        np.testing.assert_array_equal(arr(after[k]), before[k])
    with pytest.raises(WeightsFileError, match=rf"missing {keys[0]}"):
        m.load_canonical({k: v for k, v in bad.items() if k != keys[0]})
    for k in keys:
        np.testing.assert_array_equal(arr(m.canonical_weights()[k]), before[k])


def test_load_canonical_takes_a_path_or_load_weights(
    prog: seqdsl.Program, backend: str, tmp_path: Path
) -> None:
    """Issue 13: one way to load a weights file into any built model: the path, or the
    (weights, metadata) pair of load_weights as it is. A file for another model
    names the keys that differ."""
    m = net(prog, backend, "Lens")
    new = {k: arr(v) * 0.5 for k, v in m.canonical_weights().items()}
    path = tmp_path / "w.safetensors"
    save_weights(path, new, {"model": "Lens"})
    m.load_canonical(path)
    got = m.canonical_weights()
    for k, v in new.items():
        np.testing.assert_array_equal(arr(got[k]), v)
    m.load_canonical(load_weights(path))
    m.load_canonical(str(path))
    other = tmp_path / "other.safetensors"
    save_weights(
        other, {k: arr(v) for k, v in net(prog, backend, "Ids").canonical_weights().items()}
    )
    with pytest.raises(
        WeightsFileError, match=r"missing y_lstm/kernel.*unknown to .*x_embedding/embeddings"
    ):
        m.load_canonical(other)


def _file(tmp_path: Path, header: Any, data: bytes = b"") -> Path:
    raw = json.dumps(header).encode()
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ([1, 2], "the header is a list, not an object"),
        ({"a": 3}, "a: the entry is a int, not an object"),
        ({"a": {"dtype": "F32", "shape": [1]}}, r"a: data_offsets None is not \[begin, end\]"),
        ({"a": {"dtype": "F32", "shape": "1", "data_offsets": [0, 4]}}, "a: shape '1' is not a list"),
        ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "__metadata__": [1]},
         "__metadata__ is a list"),
        ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 400]}}, "within the 4 bytes"),
        ({"a": {"dtype": "Q8", "shape": [1], "data_offsets": [0, 4]}}, "unsupported dtype 'Q8'"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, r"1 values for shape \(2,\)"),
    ],
)  # fmt: skip
def test_malformed_weights_files(
    prog: seqdsl.Program, backend: str, tmp_path: Path, header: Any, message: str
) -> None:
    """Item 11: malformed safetensors headers raise WeightsFileError saying what is
    wrong (they escaped as TypeError, KeyError, AttributeError, ValueError)."""
    path = _file(tmp_path, header, b"\0" * 4)
    with pytest.raises(WeightsFileError, match=message):
        load_weights(path)
    m = net(prog, backend, "Lens")
    before = {k: arr(v).copy() for k, v in m.canonical_weights().items()}
    with pytest.raises(WeightsFileError, match=message):
        m.load_canonical(path)
    for k, v in m.canonical_weights().items():
        np.testing.assert_array_equal(arr(v), before[k])


def test_ragged_lists_are_refused(prog: seqdsl.Program) -> None:
    """A ragged list (unpadded sequences) is an InputError pointing at pad(), not a
    NumPy or framework error."""
    for backend in ("torch", "jax"):
        pytest.importorskip(backend)
        with pytest.raises(InputError, match=r"not a rectangular array \(pad ragged"):
            net(prog, backend, "Ids")([[1, 2, 3], [4]])


def test_keras_inputs_by_name(prog: seqdsl.Program) -> None:
    """Keras takes a dict keyed by input name: checked as the list is, and a missing
    or unknown name is an InputError naming the model's inputs."""
    pytest.importorskip("keras")
    m = net(prog, "keras", "Lens")
    x = x3()
    got = call("keras", m, x, lengths=np.array([5, 2]))
    np.testing.assert_allclose(arr(m({"x": x, "x_lengths": np.array([5, 2])})), got, atol=1e-6)
    with pytest.raises(InputError, match=r"takes the inputs x, x_lengths: missing x_lengths"):
        m({"x": x})
    with pytest.raises(InputError, match=r"unknown lengths"):
        m({"x": x, "x_lengths": np.array([5, 2]), "lengths": np.array([5, 2])})
    with pytest.raises(InputError, match=r"input `x_lengths`: axis 0 \(B\) has size 1, but B = 2"):
        m({"x": x, "x_lengths": np.array([5])})


# --------------------------------------------------------------------------
# build(dtype=): float32 or float64, the same on every backend


@pytest.mark.parametrize("dtype", ["int32", "float8", "bfloat16"])
def test_build_refuses_other_dtypes(prog: seqdsl.Program, backend: str, dtype: str) -> None:
    """A dtype other than float32/float64 was accepted and gave a raw error (torch:
    WeightsFileError for int32; Keras: InvalidArgumentError from TensorFlow) or a
    model computing in it (JAX built an int32 model)."""
    with pytest.raises(ValueError, match=rf"build\(dtype='{dtype}'\).*float32, float64"):
        prog.build(backend, model="Lens", dtype=dtype)


def test_float64_builds_compute_in_float64(prog: seqdsl.Program, backend: str) -> None:
    """build(dtype="float64") computes in float64 on every backend: Keras ignored it
    (float32 layers), and JAX without its 64-bit mode made the weights float32: now a
    ValueError that says how to switch it on. Checked against the float64 reference."""
    from seqdsl.reference import run_reference

    m = prog.model("Lens")
    x, lens = x3().astype(np.float64), np.array([5, 2])
    w = {k: v.astype(np.float64) for k, v in seqdsl.reference.reference_weights(m, 4).items()}
    want = run_reference(m, w, [x], lengths={"x": lens}).outputs[0]
    if backend == "jax":
        import jax

        with pytest.raises(ValueError, match=r"jax\.enable_x64\(True\)"):
            prog.build("jax", model="Lens", dtype="float64")
        with jax.enable_x64(True):
            built = prog.build("jax", model="Lens", dtype="float64")
            built.load_canonical(w)
            got = call(backend, built, x, lengths=lens)
    else:
        built = prog.build(backend, model="Lens", dtype="float64")
        built.load_canonical(w)
        got = call(backend, built, x, lengths=lens)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
