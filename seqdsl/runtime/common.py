"""Run-time code every backend shares: NumPy only.

:func:`check_inputs` is the one structural check of a built model's inputs on
every backend (torch, JAX, Keras): ranks, declared sizes, dtype kinds, symbols
agreeing across inputs, lengths and masks; shape-only, so it costs nothing in a
traced or exported graph. :func:`check_lengths_values` and :func:`check_ids_values`
are debug-mode checks of values. All of them raise :class:`InputError`.

:func:`pad_inputs` is the body of every generated model's ``pad()``, and
:func:`pad_sequences` its ``keras.utils.pad_sequences`` in the declared dtype,
returning the lengths a ``masked`` input takes as well.

:func:`canonical_mapping` reads what every backend's ``load_canonical`` takes:
a ``{"layer/weight": array}`` mapping, the ``(weights, metadata)`` pair of
:func:`seqdsl.weightsfile.load_weights`, or the path of a weights file.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "InputError",
    "WeightsFileError",
    "canonical_mapping",
    "check_ids_values",
    "check_inputs",
    "check_lengths_values",
    "check_mask_values",
    "check_weight_keys",
    "declaration",
    "pad_inputs",
    "pad_sequences",
    "read_safetensors",
    "window_padding",
]


class InputError(ValueError):
    """Bad data given to a built model, on any backend: the message names
    the input, the axis (or the value) and the declaration it breaks. The
    structural checks (shapes, dtype kinds, lengths and masks) always run; the
    checks of values (lengths in range, ids in range, mask kinds) in debug mode."""


class WeightsFileError(ValueError):
    """A malformed weights file, or weights that do not fit the model."""


# --------------------------------------------------------------------------
# the structural checks of a model's inputs (shapes and dtypes only)

#: the dtype kinds each declared dtype accepts: f float, i integer, b bool
_ACCEPTS = {
    "f32": "fi",
    "f64": "fi",
    "i32": "i",
    "i64": "i",
    "bool": "b",
    "mask": "b",
}
_KIND_WORDS = {"f": "a float", "i": "an integer", "b": "a bool", "fi": "a number"}


def declaration(dtype: str, dims: Sequence[Any]) -> str:
    """The type of an input as the .seq source writes it: ``i32[B, T]``, ``mask[B, T]``."""
    return f"{dtype}[{', '.join('_' if d is None else str(d) for d in dims)}]"


def _dtype_name(x: Any) -> str:
    """The name of x's dtype (NumPy, torch, JAX, TensorFlow and Keras tensors alike)."""
    dt = getattr(x, "dtype", None)
    if dt is None:
        return str(np.asarray(x).dtype)
    name = getattr(dt, "name", None)  # NumPy and TensorFlow dtypes
    if isinstance(name, str):
        return name
    return str(dt).removeprefix("torch.")  # torch dtypes; Keras gives a str


def _kind(name: str) -> str:
    if name.startswith("bool"):
        return "b"
    if name.startswith(("float", "bfloat", "half", "double")):
        return "f"
    if name.startswith(("int", "uint", "long", "short")):
        return "i"
    return "?"


def _shape_of(x: Any, what: str) -> tuple[Any, ...]:
    """x's shape; None for an axis of unknown size (a symbolic Keras or TensorFlow one)."""
    shape = getattr(x, "shape", None)
    if shape is None:
        try:
            shape = np.shape(x)
        except ValueError:
            raise InputError(
                f"{what}: not a rectangular array (pad ragged sequences with pad())"
            ) from None
    try:
        return tuple(shape)
    except TypeError:  # TensorFlow: a TensorShape of unknown rank
        raise InputError(f"{what}: its rank is unknown") from None


def _array_like(x: Any, what: str) -> Any:
    """x, or a NumPy array of a list or scalar (whose dtype NumPy infers)."""
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        return x
    try:
        return np.asarray(x)
    except ValueError:
        raise InputError(
            f"{what}: not a rectangular array (pad ragged sequences with pad())"
        ) from None


def _is_zero(n: Any) -> bool:
    """Whether an axis size is 0: False for a size unknown (None) or not provably 0
    (a symbolic size of jax.export or torch.export)."""
    if n is None:
        return False
    try:
        return bool(n == 0)
    except Exception:  # a symbolic size that cannot be compared
        return False


def _check_kind(x: Any, accepts: str, what: str, decl: str) -> None:
    """decl: the declaration the dtype breaks, as `it is declared x: i32[B, T]`."""
    name = _dtype_name(x)
    if _kind(name) not in accepts:
        raise InputError(f"{what}: dtype {name}, not {_KIND_WORDS[accepts]} dtype: {decl}")


def check_inputs(
    declared: Mapping[str, tuple[str, Sequence[Any]]],
    arrays: Mapping[str, Any],
    lengths: Mapping[str, Any] | None = None,
    masks: Mapping[str, Any] | None = None,
    masked: Sequence[str] = (),
) -> dict[str, Any]:
    """The structural checks of a built model's inputs, the same on every backend:
    each array of ``arrays`` (input name -> array; a list is read by NumPy) against
    its declaration in ``declared`` (name -> (dtype, dims), a dim a size, a symbol or
    None for ``_``): its rank, its declared sizes, its dtype kind (an integer dtype
    for ``i32``/``i64``, a number for ``f32``/``f64``, bool for a mask), no axis of
    size 0, and every symbol (B, T, ...) one size across the inputs. ``lengths`` and
    ``masks`` (name -> array) of the ``masked`` inputs: integer lengths [B], bool
    masks [B, T], and only for masked inputs. Shapes and dtypes only, nothing of
    the values: under jax.jit, torch.export or Keras' tracing it costs nothing (an
    axis of unknown size, None, is not compared). Raises InputError naming the
    input, the axis and the declaration; returns the size of every symbol."""
    sizes: dict[str, Any] = {}
    source: dict[str, str] = {}
    for name, x in arrays.items():
        dtype, dims = declared[name]
        decl = f"`{name}: {declaration(dtype, dims)}`"
        what = f"input `{name}`"
        x = _array_like(x, what)
        shape = _shape_of(x, what)
        if len(shape) != len(dims):
            raise InputError(
                f"{what}: shape {list(shape)} has rank {len(shape)}, "
                f"but {decl} has rank {len(dims)}"
            )
        _check_kind(x, _ACCEPTS[dtype], what, f"it is declared {decl}")
        for axis, (n, d) in enumerate(zip(shape, dims, strict=True)):
            label = f"axis {axis}" + (f" ({d})" if isinstance(d, str) else "")
            if _is_zero(n):
                raise InputError(
                    f"{what}: {label} has size 0 (shape {list(shape)}): a model takes at "
                    f"least one row and one step ({decl})"
                )
            if n is None:
                continue
            if isinstance(d, int) and n != d:
                raise InputError(f"{what}: {label} has size {n}, but {decl} declares {d}")
            if isinstance(d, str):
                if d in sizes and sizes[d] is not None and sizes[d] != n:
                    raise InputError(
                        f"{what}: {label} has size {n}, but {d} = {sizes[d]} in input "
                        f"`{source[d]}` ({decl}; inputs that share a symbol pad together: pad())"
                    )
                sizes[d], source[d] = n, name
    for option, given, rank in (("lengths", lengths, 1), ("masks", masks, 2)):
        if given is not None and not isinstance(given, Mapping):
            known = ", ".join(f"`{m}`" for m in masked) or "none"
            raise InputError(
                f"{option}= must be a dict keyed by the names of masked inputs "
                f"(the masked inputs: {known})"
            )
        for name, value in (given or {}).items():
            if name not in masked:
                known = ", ".join(f"`{m}`" for m in masked) or "none"
                raise InputError(
                    f"{option}[{name!r}]: `{name}` is not a `masked` input "
                    f"(the masked inputs: {known})"
                )
            if value is None:
                continue
            dtype, dims = declared[name]
            decl = f"`{name}: {declaration(dtype, dims)}`"
            what = f"{option}[{name!r}]"
            value = _array_like(value, what)
            shape = _shape_of(value, what)
            x_shape = _shape_of(_array_like(arrays[name], f"input `{name}`"), f"input `{name}`")
            want = list(x_shape[:rank])
            if len(shape) != rank or any(
                a is not None and b is not None and a != b for a, b in zip(shape, want, strict=True)
            ):
                axes = "[B]" if rank == 1 else "[B, T]"
                raise InputError(
                    f"{what}: shape {list(shape)}, but the {option} of {decl} are {axes} = {want}"
                )
            why = "count the valid steps of" if rank == 1 else "are bool, one per step of"
            _check_kind(value, "i" if rank == 1 else "b", what, f"{option} {why} {decl}")
    return sizes


# --------------------------------------------------------------------------
# the checks of values, in debug mode (concrete NumPy arrays)


def check_lengths_values(name: str, lengths: Any, steps: int, nonempty: bool) -> None:
    """debug: the lengths of the `masked` input `name` lie in [0, T] ([1, T] when its
    mask is declared nonempty)."""
    lens = np.asarray(lengths)
    low = 1 if nonempty else 0
    if lens.size and (lens.min() < low or lens.max() > steps):
        bad = int(np.nonzero((lens < low) | (lens > steps))[0][0])
        raise InputError(
            f"lengths[{name!r}]: row {bad} has length {lens.flat[bad]}, but the lengths of "
            f"input `{name}` must lie in [{low}, {steps}] (T = {steps}): {lens.tolist()}"
        )


def check_ids_values(ids: Any, input_dim: int, where: str) -> None:
    """debug: token ids index an embedding table of input_dim rows: 0 <= id < input_dim."""
    ids = np.asarray(ids)
    if ids.size and (ids.min() < 0 or ids.max() >= input_dim):
        bad = np.argwhere((ids < 0) | (ids >= input_dim))[0]
        raise InputError(
            f"{where}: ids must lie in [0, {input_dim}), got {ids[tuple(bad)]} at "
            f"{list(int(i) for i in bad)} (ids range {ids.min()}..{ids.max()})"
        )


def check_mask_values(mask: Any, side: str, nonempty: bool, where: str, hint: str) -> None:
    """debug: a mask [B, T] has its declared kind: `post`, each row's valid steps
    first; `pre`, last; nonempty, no row without a valid step."""
    m = np.asarray(mask).astype(bool)
    T = m.shape[1]
    n = m.sum(axis=1)
    steps = np.arange(T)[None, :]
    expected = {"post": steps < n[:, None], "pre": steps >= T - n[:, None]}.get(side, m)
    bad = np.nonzero((m != expected).any(axis=1))[0]
    if bad.size:
        b = int(bad[0])
        row = "".join("1" if v else "0" for v in m[b][:64]) + ("..." if T > 64 else "")
        pad = (
            "right-padded (valid steps first)"
            if side == "post"
            else "left-padded (valid steps last)"
        )
        raise InputError(
            f"{where}: the mask is declared `{side}`, but row {b} is not {pad}: mask {row}. {hint}"
        )
    if nonempty and (n == 0).any():
        b = int(np.nonzero(n == 0)[0][0])
        raise InputError(f"{where}: the mask is declared nonempty, but row {b} has no valid step")


# --------------------------------------------------------------------------
# weights: what load_canonical takes, and the weights file


def read_safetensors(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """``(weights, metadata)`` of a safetensors file, read with NumPy alone
    (what load_weights returns); WeightsFileError saying what is wrong."""
    blob = Path(path).read_bytes()
    if len(blob) < 8:
        raise WeightsFileError(f"{path}: too short for a safetensors file")
    (n,) = struct.unpack("<Q", blob[:8])
    if 8 + n > len(blob):
        raise WeightsFileError(f"{path}: header length {n} exceeds the file")
    try:
        header = json.loads(blob[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise WeightsFileError(f"{path}: bad header: {e}") from None
    if not isinstance(header, dict):
        raise WeightsFileError(f"{path}: the header is a {type(header).__name__}, not an object")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict):
        raise WeightsFileError(
            f"{path}: __metadata__ is a {type(meta).__name__}, not an object of strings"
        )
    data = memoryview(blob)[8 + n :]
    out: dict[str, np.ndarray] = {}
    for key, info in header.items():
        where = f"{path}: {key}"
        if not isinstance(info, dict):
            raise WeightsFileError(f"{where}: the entry is a {type(info).__name__}, not an object")
        dt = _SAFETENSORS_DTYPES.get(info.get("dtype"))  # type: ignore[arg-type]
        if dt is None:
            raise WeightsFileError(f"{where}: unsupported dtype {info.get('dtype')!r}")
        offsets, shape = info.get("data_offsets"), info.get("shape")
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(type(o) is int for o in offsets)
            and 0 <= offsets[0] <= offsets[1] <= len(data)
        ):
            raise WeightsFileError(
                f"{where}: data_offsets {offsets!r} is not [begin, end] within the "
                f"{len(data)} bytes of data"
            )
        if not (isinstance(shape, list) and all(type(s) is int and s >= 0 for s in shape)):
            raise WeightsFileError(f"{where}: shape {shape!r} is not a list of sizes")
        begin, end = offsets
        if (end - begin) % np.dtype(dt).itemsize:
            raise WeightsFileError(
                f"{where}: {end - begin} bytes are not a whole number of {info['dtype']} values"
            )
        arr = np.frombuffer(data[begin:end], dtype=dt)
        if arr.size != int(np.prod(shape, dtype=np.int64)):
            raise WeightsFileError(f"{where}: {arr.size} values for shape {tuple(shape)}")
        out[key] = arr.reshape(shape).copy()
    return out, {str(k): str(v) for k, v in meta.items()}


_SAFETENSORS_DTYPES = {
    "F64": "<f8",
    "F32": "<f4",
    "F16": "<f2",
    "I64": "<i8",
    "I32": "<i4",
    "BOOL": "|b1",
}


def canonical_mapping(weights: Any) -> Mapping[str, Any]:
    """What load_canonical takes, on every backend: a mapping {"layer/weight": array};
    the pair (weights, metadata) that load_weights returns (the
    metadata is not a weight); or the path of a weights file (str or Path)."""
    if isinstance(weights, (str, os.PathLike)):
        return read_safetensors(weights)[0]
    if (
        isinstance(weights, tuple)
        and len(weights) == 2
        and isinstance(weights[0], Mapping)
        and isinstance(weights[1], Mapping)
    ):
        return weights[0]
    if not isinstance(weights, Mapping):
        raise TypeError(
            "load_canonical takes {'layer/weight': array}, the (weights, metadata) of "
            f"load_weights, or a weights file's path; got {type(weights).__name__}"
        )
    return weights


def check_weight_keys(expected: Sequence[str], weights: Mapping[str, Any], model: str) -> None:
    """WeightsFileError unless `weights` has exactly the canonical keys `expected`:
    it names the keys missing and the keys unknown to the model."""
    missing = [k for k in expected if k not in weights]
    unknown = sorted(k for k in weights if k not in set(expected))
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing)}")
        if unknown:
            parts.append(f"unknown to {model}: {', '.join(unknown)}")
        raise WeightsFileError(
            f"weights do not fit {model}: {'; '.join(parts)} (weights for another model?)"
        )


# --------------------------------------------------------------------------
# padding


def _fit_dtype(a: np.ndarray, dtype: np.dtype, what: str) -> None:
    """InputError unless the values of `a` fit the integer `dtype` that pad() writes
    (keras.utils.pad_sequences would wrap them, or turn NaN into a large negative)."""
    if dtype.kind not in "iu" or a.size == 0:
        return
    if a.dtype.kind not in "iufb":
        raise InputError(f"{what}: values of dtype {a.dtype}, but the input is {dtype}")
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        bad = a[~np.isfinite(a)].flat[0]
        raise InputError(f"{what}: {bad} is not a number that {dtype} can hold")
    info = np.iinfo(dtype)
    low, high = a.min(), a.max()
    if low < info.min or high > info.max:
        bad = low if low < info.min else high
        raise InputError(f"{what}: {bad} does not fit {dtype} [{info.min}, {info.max}]")


def pad_sequences(
    sequences: Sequence[Any],
    side: str,
    value: float,
    maxlen: int | None,
    truncate: str,
    dtype: np.typing.DTypeLike,
    lengths_dtype: np.typing.DTypeLike = np.int32,
    name: str = "sequences",
) -> tuple[np.ndarray, np.ndarray]:
    """keras.utils.pad_sequences in `dtype`: returns (batch, lengths after truncation).
    Values an integer `dtype` cannot hold (NaN, out of its range; Keras wraps them)
    raise InputError naming the input `name`, the sequence and the value."""
    if len(sequences) == 0:
        raise InputError(f"pad(): no sequence for `{name}` (a batch has at least one row)")
    dt = np.dtype(dtype)
    _fit_dtype(np.asarray(value), dt, f"pad(): the padding value of `{name}`")
    arrays = []
    for i, s in enumerate(sequences):
        try:
            a = np.asarray(s)
        except ValueError:
            raise InputError(f"pad(): sequence {i} of `{name}` is not rectangular") from None
        if a.ndim == 0:
            raise InputError(f"pad(): sequence {i} of `{name}` is a scalar, not a sequence")
        _fit_dtype(a, dt, f"pad(): sequence {i} of `{name}`")
        arrays.append(a)
    feature_shape = next((a.shape[1:] for a in arrays if len(a)), ())
    steps = maxlen if maxlen is not None else max(len(a) for a in arrays)
    fill = np.asarray(value).astype(dt)
    batch = np.full((len(arrays), steps, *feature_shape), fill, dtype=dt)
    lengths = np.zeros(len(arrays), dtype=lengths_dtype)
    for i, a in enumerate(arrays):
        if not len(a):
            continue
        kept = a[-steps:] if truncate == "pre" else a[:steps]
        if kept.shape[1:] != feature_shape:
            raise InputError(
                f"pad(): sequence {i} of `{name}` has feature shape {kept.shape[1:]}, "
                f"not {feature_shape}"
            )
        lengths[i] = len(kept)
        if side == "post":
            batch[i, : len(kept)] = kept.astype(dt)
        else:
            batch[i, steps - len(kept) :] = kept.astype(dt)
    return batch, lengths


def pad_inputs(
    pads: Mapping[str, tuple[Any, ...]],
    raw: Sequence[Sequence[Any]],
    lengths_dtype: np.typing.DTypeLike = np.int32,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The body of every generated model's ``pad(*raw)``: pad ragged data by the
    ``pad(...)`` declarations ``pads`` (input -> (side, value, maxlen, truncate,
    dtype, time), time a symbol, a size or None) with :func:`pad_sequences`, one
    list of sequences per padded input, in declaration order. Inputs that share a
    time symbol are padded to one length: the smallest maxlen among them, else
    their longest sequence. Returns one (batch, lengths) pair per input."""
    if len(raw) != len(pads):
        raise TypeError(
            f"pad takes {len(pads)} list(s) of sequences ({', '.join(pads)}), got {len(raw)}"
        )
    group = {name: (time if time is not None else name) for name, (*_, time) in pads.items()}
    limit: dict[Any, int] = {}
    longest: dict[Any, int] = {}
    for (name, (_, _, maxlen, _, _, time)), seqs in zip(pads.items(), raw, strict=True):
        if maxlen is None and isinstance(time, int):
            maxlen = time
        if maxlen is not None:
            limit[group[name]] = min(limit.get(group[name], maxlen), maxlen)
        longest[group[name]] = max(
            longest.get(group[name], 0), max((len(s) for s in seqs), default=0)
        )
    out = []
    for (name, (side, value, _, truncate, dtype, _)), seqs in zip(pads.items(), raw, strict=True):
        steps = limit.get(group[name], longest[group[name]])
        out.append(pad_sequences(seqs, side, value, steps, truncate, dtype, lengths_dtype, name))
    return out


def window_padding(steps: int, k_eff: int, stride: int, padding: str) -> tuple[int, int, int]:
    """(zeros before, zeros after, output steps) of Keras' padding for a window of
    k_eff steps over `steps` (Conv1D, pooling). valid: none; causal: k_eff - 1
    before; same: TensorFlow's rule, the zeros that ceil(T / stride) outputs need,
    split evenly, the odd one after."""
    if padding == "valid":
        return 0, 0, (steps - k_eff) // stride + 1
    out = -(-steps // stride)
    if padding == "causal":
        return k_eff - 1, 0, out
    total = max((out - 1) * stride + k_eff - steps, 0)
    return total // 2, total - total // 2, out
