"""``seqdsl run``: a checked model on data, on a backend. Imports no framework
until a backend other than the reference interpreter is asked for.

Data (:func:`load_data`) comes from a file, checked against the model's input
declarations before any model sees it, or is generated from the declared types
(:func:`generate_data`). Both give a :class:`Batch`: the arrays in declaration
order, padded by the declared ``pad(...)`` with the run-time code of every
generated model's ``pad()`` (:func:`seqdsl.runtime.common.pad_inputs`), and the
lengths or masks of the ``masked`` inputs. :func:`run_batch` runs it on a
backend (``reference``, the NumPy float64 interpreter, needs only NumPy) and
times it; :func:`format_result` is the compact text the CLI prints.

File formats (one row = one sequence, or one example of an input without time):

- ``.jsonl``: one JSON object per line, ``{"tokens": [5, 8, 2], ...}`` keyed by
  the input names; for a model with one input a line may be the row itself.
- ``.json``: a list of such objects, or one object of columns
  ``{"tokens": [[5, 8, 2], [7]], ...}``.
- ``.npz`` (read with ``allow_pickle=False``): per input either ``{name}``, an
  array ``[N, ...]`` of rows of one shape, or the ragged pair
  ``{name}_values`` (every row's steps, concatenated) and
  ``{name}_row_lengths`` ``[N]`` (``tf.RaggedTensor.from_row_lengths``).

A ``masked`` input without ``pad(...)`` (mask kind ``any``) takes its mask from
the key ``{name}_mask`` (one bool per step). Keys that name no input are
ignored and listed in :attr:`Batch.ignored`.

Errors: :class:`DataFileError` when the file cannot be read as data at all (I/O,
not JSON, unknown extension); :class:`DataError` when it does not fit the model
(missing inputs, wrong dtype or shape, an id outside the embedding's
vocabulary, padding values inside a sequence). Both name the file, the row and
the input's declaration.
"""

from __future__ import annotations

import importlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .checker import CheckedModel
from .dims import Dim
from .ir import InputDecl
from .reference import ReferenceError, mask_fits_kind, reference_weights, run_reference
from .runtime.common import pad_inputs
from .types import MaskType, TensorType
from .weightsfile import load_weights

__all__ = [
    "BACKENDS",
    "BackendUnavailable",
    "Batch",
    "DataError",
    "DataFileError",
    "RunResult",
    "format_result",
    "generate_data",
    "load_data",
    "require_backend",
    "run_batch",
    "weight_problems",
]

#: the backends ``seqdsl run`` knows, and the extra each needs
BACKENDS = {"reference": None, "torch": "torch", "jax": "jax", "keras": "keras"}

_NP_DTYPES = {"f32": "float32", "f64": "float64", "i32": "int32", "i64": "int64", "bool": "bool"}
#: the dtype kinds (numpy ``dtype.kind``) a row of each declared dtype may have
_KINDS = {"f32": "iuf", "f64": "iuf", "i32": "iu", "i64": "iu", "bool": "b", "mask": "b"}
_KIND_WORDS = {"iuf": "numbers", "iu": "integers", "b": "booleans (true/false)"}
#: default number of steps of a generated sequence (more where the model needs it)
_DEFAULT_STEPS = 8


class DataFileError(Exception):
    """The data file cannot be read as data (I/O error, not JSON/NPZ, unknown extension)."""


class DataError(ValueError):
    """The data does not fit the model's input declarations."""


class BackendUnavailable(Exception):
    """The framework of a backend cannot be imported (not installed)."""

    def __init__(self, backend: str, package: str, reason: str):
        super().__init__(
            f"--backend {backend} needs the `{package}` package ({reason}): "
            f"pip install 'seqdsl[{backend}]'; the default backend, reference, needs none"
        )
        self.backend = backend
        self.package = package


def require_backend(backend: str) -> None:
    """Import the framework of ``backend`` now, or raise :class:`BackendUnavailable`."""
    package = BACKENDS.get(backend)
    if package is None:
        return
    try:
        importlib.import_module(package)
    except ImportError as e:
        raise BackendUnavailable(backend, e.name or package, str(e)) from None


@dataclass(frozen=True)
class Batch:
    """One batch for a model: its inputs in declaration order, padded."""

    #: one array per ``input`` declaration, in order (a mask input: bool ``[B, T]``)
    inputs: tuple[np.ndarray, ...]
    #: the lengths of each ``masked`` input with ``pad(...)`` (valid steps per row)
    lengths: Mapping[str, np.ndarray]
    #: the bool ``[B, T]`` mask of each ``masked`` input without ``pad(...)``
    masks: Mapping[str, np.ndarray]
    #: where the data came from (a path, or "generated (seed N)")
    source: str
    #: the steps of each row before padding, by padded input (to show them)
    row_lengths: Mapping[str, np.ndarray] = field(default_factory=dict)
    #: keys of the data that name no input (ignored)
    ignored: tuple[str, ...] = ()

    @property
    def rows(self) -> int:
        return int(self.inputs[0].shape[0]) if self.inputs else 0


@dataclass(frozen=True)
class RunOutput:
    name: str
    value: np.ndarray
    #: the bool ``[B, T]`` mask of an ``output x with mask``
    mask: np.ndarray | None


@dataclass(frozen=True)
class RunResult:
    model: str
    backend: str
    seed: int
    batch: Batch
    outputs: tuple[RunOutput, ...]
    #: seconds to build the model (emit, execute, initial weights)
    build_s: float
    #: seconds of the call (the first call: it includes jit tracing on JAX)
    run_s: float
    #: where the weights came from: a file, or "" for the initial weights of ``seed``
    weights: str = ""


# --------------------------------------------------------------------------
# reading files


def _read_records(path: Path, names: Sequence[str]) -> dict[str, list[Any]]:
    """The file's columns: key -> list of rows (a one-input model's bare rows under its name)."""
    suffix = path.suffix.lower()
    if suffix not in (".json", ".jsonl", ".npz"):
        raise DataFileError(
            f"{path}: unknown data format {suffix or '(no extension)'!r}; "
            "use .json, .jsonl or .npz (see `seqdsl run --help`)"
        )
    try:
        if suffix == ".npz":
            return _read_npz(path)
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise DataFileError(f"cannot read {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise DataFileError(f"{path}: not UTF-8 text ({e.reason})") from None
    if suffix == ".jsonl":
        records: list[Any] = []
        numbers: list[int] = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataFileError(f"{path}:{number}:{e.colno}: not JSON: {e.msg}") from None
            numbers.append(number)
        return _columns(path, records, names, "line", numbers)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataFileError(f"{path}:{e.lineno}:{e.colno}: not JSON: {e.msg}") from None
    if isinstance(doc, dict):
        bad = [k for k, v in doc.items() if not isinstance(v, list)]
        if bad:
            raise DataError(
                f"{path}: a JSON object holds columns (input name -> list of rows); "
                f"{bad[0]!r} is a {type(doc[bad[0]]).__name__}"
            )
        return dict(doc)
    if isinstance(doc, list):
        return _columns(path, doc, names, "record")
    raise DataError(f"{path}: expected a list of records or an object of columns")


def _columns(
    path: Path,
    records: list[Any],
    names: Sequence[str],
    what: str,
    numbers: Sequence[int] | None = None,
) -> dict[str, list[Any]]:
    """Columns from records (``numbers``: the line of each, for messages)."""
    if not records:
        raise DataError(f"{path}: no {what}s")
    cols: dict[str, list[Any]] = {}
    for i, rec in enumerate(records):
        where = f"{path}: {what} {numbers[i] if numbers else i + 1}"
        if isinstance(rec, list) and len(names) == 1:
            rec = {names[0]: rec}
        if not isinstance(rec, dict):
            expected = "an object keyed by input names" + (
                f" or the row of `{names[0]}`" if len(names) == 1 else ""
            )
            raise DataError(f"{where} is a {type(rec).__name__}, expected {expected}")
        if i and set(rec) != set(cols):
            missing = sorted(set(cols) - set(rec))
            extra = sorted(set(rec) - set(cols))
            raise DataError(
                f"{where} has other keys than the first {what}"
                + (f": lacks {', '.join(missing)}" if missing else "")
                + (f"; adds {', '.join(extra)}" if extra else "")
            )
        for k, v in rec.items():
            cols.setdefault(k, []).append(v)
    return cols


def _read_npz(path: Path) -> dict[str, list[Any]]:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except OSError as e:
        raise DataFileError(f"cannot read {path}: {e.strerror or e}") from None
    except ValueError as e:  # pickled objects, or not an npz file
        raise DataFileError(f"{path}: not a NumPy .npz file of plain arrays ({e})") from None
    except Exception as e:  # noqa: BLE001 - zipfile.BadZipFile and friends: not an npz
        raise DataFileError(f"{path}: not a NumPy .npz file ({e})") from None
    cols: dict[str, list[Any]] = {}
    for key, arr in arrays.items():
        if key.endswith("_row_lengths"):
            continue
        if key.endswith("_values"):
            base = key[: -len("_values")]
            lens_key = f"{base}_row_lengths"
            if lens_key not in arrays:
                raise DataError(f"{path}: {key!r} comes without {lens_key!r}")
            lens = arrays[lens_key]
            if lens.ndim != 1 or lens.dtype.kind not in "iu" or (lens < 0).any():
                raise DataError(f"{path}: {lens_key!r} must be non-negative integers [N]")
            if int(lens.sum()) != arr.shape[0] if arr.ndim else True:
                raise DataError(
                    f"{path}: {lens_key!r} sums to {int(lens.sum())}, but {key!r} has "
                    f"{arr.shape[0] if arr.ndim else 0} steps"
                )
            cuts = np.cumsum(lens)[:-1]
            cols[base] = list(np.split(arr, cuts))
        elif arr.ndim == 0:
            raise DataError(f"{path}: {key!r} is a scalar, expected one row per example")
        else:
            cols[key] = list(arr)
    stray = sorted(k for k in arrays if k.endswith("_row_lengths") and k[:-12] not in cols)
    if stray:
        raise DataError(f"{path}: {stray[0]!r} comes without {stray[0][:-12] + '_values'!r}")
    return cols


# --------------------------------------------------------------------------
# checking rows against the declarations


def _declaration(model: CheckedModel, decl: InputDecl) -> str:
    t = model.types[decl.name]
    text = f"input {decl.name}: {t}"
    pad = model.pads.get(decl.name)
    if pad is not None:
        text += f" pad({pad.side}, value={pad.value:g})"
    if decl.masked:
        text += " masked"
    return f"`{text}`"


def _row(
    model: CheckedModel, decl: InputDecl, row: Any, i: int, where: str, kind: str, rank: int
) -> np.ndarray:
    """One row as an array of ``rank`` axes and an allowed dtype kind."""
    try:
        a = np.asarray(row)
    except ValueError:
        a = np.asarray(None)  # ragged nested lists: reported below
    if a.size == 0 and a.ndim == 1 and rank > 1:
        a = a.reshape((0,) * rank)  # an empty sequence
    if a.size == 0:
        return a.astype(_np_dtype(model, decl))
    if a.dtype.kind not in kind or a.dtype == object:
        got = {"b": "booleans", "U": "text", "f": "floats", "O": "nested lists of uneven lengths"}
        raise DataError(
            f"{where}: row {i + 1} of `{decl.name}` holds "
            f"{got.get(a.dtype.kind, str(a.dtype))}; {_declaration(model, decl)} takes "
            f"{_KIND_WORDS[kind]}"
        )
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise DataError(
            f"{where}: row {i + 1} of `{decl.name}` holds NaN or infinity "
            f"(step {int(np.argmin(np.isfinite(a).reshape(len(a), -1).all(axis=1))) + 1})"
            if a.ndim
            else f"{where}: row {i + 1} of `{decl.name}` is NaN or infinite"
        )
    if a.ndim != rank:
        raise DataError(
            f"{where}: row {i + 1} of `{decl.name}` has {a.ndim} axes {list(a.shape)}; "
            f"{_declaration(model, decl)} takes rows of {rank} ax{'is' if rank == 1 else 'es'}"
            + (" (a sequence of steps)" if rank == 1 else "")
        )
    return a


def _np_dtype(model: CheckedModel, decl: InputDecl) -> str:
    return "bool" if decl.is_mask else _NP_DTYPES[decl.dtype]


def _pads_table(model: CheckedModel) -> dict[str, tuple[Any, ...]]:
    """The PADS table of the generated models (side, value, maxlen, truncate, dtype, time)."""
    table: dict[str, tuple[Any, ...]] = {}
    for decl in model.model.inputs:
        pad = model.pads.get(decl.name)
        if pad is None:
            continue
        t = decl.dims[1].value if len(decl.dims) > 1 else None
        table[decl.name] = (
            pad.side,
            pad.value,
            pad.maxlen,
            pad.truncate,
            _NP_DTYPES[decl.dtype],
            t,
        )
    return table


def _vocab(model: CheckedModel) -> dict[str, int]:
    """input -> the input_dim of the Embedding that reads it directly."""
    out: dict[str, int] = {}
    for layer in model.layers:
        if layer.kind == "Embedding" and layer.inputs:
            dim = layer.config.get("input_dim")
            if isinstance(dim, int):
                out[layer.inputs[0]] = dim
    return out


def _assemble(
    model: CheckedModel, cols: Mapping[str, Sequence[Any]], source: str, ignored: tuple[str, ...]
) -> Batch:
    """Check the rows against the declarations, pad them and make the batch."""
    decls = model.model.inputs
    counts = {k: len(v) for k, v in cols.items()}
    n = counts[decls[0].name]
    for decl in decls:
        if counts[decl.name] != n:
            raise DataError(
                f"{source}: `{decls[0].name}` has {n} rows but `{decl.name}` has "
                f"{counts[decl.name]}"
            )
    if n == 0:
        raise DataError(f"{source}: no rows")
    vocab = _vocab(model)
    pads = _pads_table(model)
    ragged: dict[str, list[np.ndarray]] = {}
    stacked: dict[str, np.ndarray] = {}
    row_lengths: dict[str, np.ndarray] = {}
    for decl in decls:
        kind = "b" if decl.is_mask else _KINDS[decl.dtype]
        rank = len(decl.dims) - 1
        rows = [_row(model, decl, r, i, source, kind, rank) for i, r in enumerate(cols[decl.name])]
        for i, r in enumerate(rows):
            if decl.name in vocab and r.size and (r.min() < 0 or r.max() >= vocab[decl.name]):
                bad = int(r.max()) if r.max() >= vocab[decl.name] else int(r.min())
                raise DataError(
                    f"{source}: row {i + 1} of `{decl.name}` holds the id {bad}, outside "
                    f"[0, {vocab[decl.name]}): the Embedding reading {_declaration(model, decl)} "
                    f"has input_dim={vocab[decl.name]}"
                )
        if decl.name in pads:
            pad = model.pads[decl.name]
            if not decl.masked:
                _no_pad_value_inside(model, decl, rows, pad.value, source)
            if pad.nonempty and any(len(r) == 0 for r in rows):
                i = next(i for i, r in enumerate(rows) if len(r) == 0)
                raise DataError(
                    f"{source}: row {i + 1} of `{decl.name}` is empty, but "
                    f"{_declaration(model, decl)} declares nonempty=true"
                )
            feats = {r.shape[1:] for r in rows if len(r)}
            if len(feats) > 1:
                raise DataError(
                    f"{source}: the steps of `{decl.name}` have different shapes "
                    f"{sorted(list(f) for f in feats)}"
                )
            row_lengths[decl.name] = np.array([len(r) for r in rows])
            ragged[decl.name] = rows
            continue
        odd = next((i for i, r in enumerate(rows) if r.shape != rows[0].shape), None)
        if odd is not None:
            raise DataError(
                f"{source}: row {odd + 1} of `{decl.name}` has shape {list(rows[odd].shape)}, row 1 "
                f"{list(rows[0].shape)}: {_declaration(model, decl)} declares no pad(...), so "
                "every row must have the same shape (declare `pad(post, value=...)` to pad "
                "ragged sequences)"
            )
        stacked[decl.name] = np.stack(rows).astype(_np_dtype(model, decl))
    lengths: dict[str, np.ndarray] = {}
    if pads:
        out = pad_inputs(pads, [ragged[name] for name in pads], np.int64)
        for name, (arr, lens) in zip(pads, out, strict=True):
            stacked[name] = arr
            if any(d.name == name and d.masked for d in decls):
                lengths[name] = lens
    masks: dict[str, np.ndarray] = {}
    for decl in decls:
        if decl.masked and decl.name not in pads:
            masks[decl.name] = _explicit_mask(model, decl, cols, stacked[decl.name], source)
    inputs = tuple(stacked[d.name] for d in decls)
    batch = Batch(inputs, lengths, masks, source, row_lengths, ignored)
    _check_shapes(model, batch)
    return batch


def _no_pad_value_inside(
    model: CheckedModel, decl: InputDecl, rows: Sequence[np.ndarray], value: float, source: str
) -> None:
    for i, r in enumerate(rows):
        if not len(r):
            continue
        hit = (r == value).reshape(len(r), -1).all(axis=1)
        if hit.any():
            step = int(np.argmax(hit))
            raise DataError(
                f"{source}: row {i + 1} of `{decl.name}` holds the padding value {value:g} at "
                f"step {step + 1}: {_declaration(model, decl)} says that value marks padding, "
                "so a mask derived from it would cut the sequence there (use another padding "
                "value, or declare the input `masked` so that its lengths give the mask)"
            )


def _explicit_mask(
    model: CheckedModel,
    decl: InputDecl,
    cols: Mapping[str, Sequence[Any]],
    x: np.ndarray,
    source: str,
) -> np.ndarray:
    key = f"{decl.name}_mask"
    if key not in cols:
        raise DataError(
            f"{source}: {_declaration(model, decl)} is `masked` without pad(...), so its "
            f"mask has no side to be derived from lengths: give one bool per step as `{key}`"
        )
    rows = [np.asarray(r) for r in cols[key]]
    for i, r in enumerate(rows):
        if r.size and r.dtype.kind != "b":
            raise DataError(f"{source}: row {i + 1} of `{key}` must hold booleans (true/false)")
    want = x.shape[:2]
    if len(rows) != want[0] or any(r.shape != want[1:] for r in rows):
        raise DataError(
            f"{source}: `{key}` must give {want[1]} booleans for each of {want[0]} rows"
        )
    return np.stack(rows).astype(bool)


def _check_shapes(model: CheckedModel, batch: Batch) -> None:
    """Declared sizes, symbols that agree across inputs, the checker's constraints,
    mask kinds, and no time axis that shrinks to nothing inside the model."""
    env: dict[str, int] = {}
    first: dict[str, str] = {}
    src = batch.source
    for decl, x in zip(model.model.inputs, batch.inputs, strict=True):
        for axis, (d, n) in enumerate(zip(decl.dims, x.shape, strict=True)):
            what = "rows" if axis == 0 else ("steps" if axis == 1 else f"axis {axis}")
            if isinstance(d.value, int) and n != d.value:
                raise DataError(
                    f"{src}: `{decl.name}` has {n} {what}, but {_declaration(model, decl)} "
                    f"declares {d.value}"
                )
            if isinstance(d.value, str):
                if d.value in env and env[d.value] != n:
                    raise DataError(
                        f"{src}: `{decl.name}` has {n} {what} ({d.value}), but "
                        f"{d.value} = {env[d.value]} in `{first[d.value]}`"
                    )
                env[d.value] = n
                first[d.value] = decl.name
        t = model.types[decl.name]
        if isinstance(t, MaskType) and not mask_fits_kind(x, t.kind):
            raise DataError(f"{src}: the mask `{decl.name}` does not fit its kind {t.kind}")
    for name, m in batch.masks.items():
        t = model.types[name]
        assert isinstance(t, TensorType) and t.mask is not None
        if not mask_fits_kind(m, t.mask):
            raise DataError(f"{src}: `{name}_mask` does not fit the kind {t.mask} of `{name}`")
    for c in model.constraints:
        if c.holds(env) is not False:
            continue
        v = c.dim.evaluate(env)
        if c.minimum is not None:
            raise DataError(
                f"{src}: {c.rule}, and {c.dim} is {v} here: the sequences are too short "
                "for its window (pad to a longer length: `pad(..., maxlen=...)`)"
            )
        raise DataError(
            f"{src}: {c.what} needs {c.dim} to be a multiple of {c.divisor}, and it is {v} "
            "here (pad to such a length: `pad(..., maxlen=...)`)"
        )
    problem = _shrunk(model, env)
    if problem is not None:
        raise DataError(f"{src}: {problem}")


def _shrunk(model: CheckedModel, env: Mapping[str, int]) -> str | None:
    """A value whose time axis has no step at these sizes (a window longer than the data)."""
    for name, t in model.types.items():
        if not isinstance(t, TensorType) or len(t.shape) < 2:
            continue
        d = t.shape[1]
        if isinstance(d, Dim):
            v = d.evaluate(dict(env))
            if v is not None and v < 1:
                return (
                    f"`{name}` would have {v} steps ({d} with "
                    + ", ".join(f"{k} = {n}" for k, n in sorted(env.items()))
                    + "): the sequences are too short for the model's windows"
                )
    return None


def load_data(path: str | Path, model: CheckedModel) -> Batch:
    """Read ragged sequences from ``path`` (``.json``, ``.jsonl``, ``.npz``), check
    them against the model's inputs and pad them by the declared ``pad(...)``."""
    p = Path(path)
    names = [d.name for d in model.model.inputs]
    cols = _read_records(p, names)
    wanted = set(names) | {f"{d.name}_mask" for d in model.model.inputs if d.masked}
    missing = [n for n in names if n not in cols]
    if missing:
        have = ", ".join(sorted(cols)) or "none"
        raise DataError(
            f"{p}: no data for the input{'s' if len(missing) > 1 else ''} "
            f"{', '.join(missing)} of model {model.name} (its inputs: {', '.join(names)}; "
            f"keys in the file: {have})"
        )
    ignored = tuple(sorted(k for k in cols if k not in wanted))
    return _assemble(model, cols, str(p), ignored)


# --------------------------------------------------------------------------
# generated data


def _symbol_sizes(model: CheckedModel, rows: int) -> dict[str, int]:
    """A size per symbol: the batch symbol ``rows``, the others the smallest size
    from _DEFAULT_STEPS up that meets the constraints and leaves every value a step."""
    batch_syms: set[str] = set()
    other: list[str] = []
    for decl in model.model.inputs:
        for axis, d in enumerate(decl.dims):
            if isinstance(d.value, str):
                if axis == 0:
                    batch_syms.add(d.value)
                elif d.value not in other:
                    other.append(d.value)
    env = {s: rows for s in batch_syms}
    for s in other:
        if s in env:
            continue
        for n in range(_DEFAULT_STEPS, 4097):
            trial = {**env, s: n}
            if (
                all(c.holds(trial) is not False for c in model.constraints)
                and _shrunk(model, {k: v for k, v in trial.items() if k in {*env, s}}) is None
            ):
                env[s] = n
                break
        else:  # pragma: no cover - no model of the examples needs this
            env[s] = _DEFAULT_STEPS
    return env


def generate_data(model: CheckedModel, seed: int = 0, rows: int = 4) -> Batch:
    """Random data of the declared types: ``rows`` rows (the declared batch where
    fixed); padded inputs get sequences of different lengths (the first one full)
    padded by ``pad(...)``; ids are drawn below the vocabulary of the Embedding
    that reads them, never equal to the padding value."""
    rng = np.random.default_rng(seed)
    for decl in model.model.inputs:
        if isinstance(decl.dims[0].value, int):
            rows = decl.dims[0].value
    env = _symbol_sizes(model, rows)
    vocab = _vocab(model)
    cols: dict[str, list[Any]] = {}
    lens_by_time: dict[object, np.ndarray] = {}
    for decl in model.model.inputs:
        dims = [
            d.value
            if isinstance(d.value, int)
            else env.get(d.value, 4)
            if isinstance(d.value, str)
            else (_DEFAULT_STEPS if axis == 1 else 4)
            for axis, d in enumerate(decl.dims)
        ]
        steps = dims[1] if len(dims) > 1 else 0
        pad = model.pads.get(decl.name)
        key = decl.dims[1].value if len(dims) > 1 else None
        if key not in lens_by_time:
            lens = rng.integers(1, max(steps, 1) + 1, size=rows)
            lens[0] = steps
            lens_by_time[key] = lens
        lens = lens_by_time[key]
        if decl.is_mask:
            t = model.types[decl.name]
            assert isinstance(t, MaskType)
            cols[decl.name] = list(_random_mask(rng, rows, steps, t.kind.side, lens))
            continue
        shape = (rows, *dims[1:])
        if decl.dtype in ("i32", "i64"):
            hi = vocab.get(decl.name, 10)
            x: np.ndarray = rng.integers(1, max(hi, 2), size=shape)
            if pad is not None:
                x = np.where(x == pad.value, (x % (hi - 1)) + 1 if hi > 2 else 1, x)
        elif decl.dtype == "bool":
            x = rng.random(shape) < 0.5
        else:
            x = rng.normal(0.0, 1.0, size=shape)
        if pad is not None:
            cols[decl.name] = [x[i, : lens[i]] for i in range(rows)]
        else:
            cols[decl.name] = list(x)
        if decl.masked and pad is None:
            cols[f"{decl.name}_mask"] = list(_random_mask(rng, rows, steps, "any", lens))
    return _assemble(model, cols, f"generated (seed {seed})", ())


def _random_mask(
    rng: np.random.Generator, rows: int, steps: int, side: str, lens: np.ndarray
) -> np.ndarray:
    pos = np.arange(steps)[None, :]
    if side == "post":
        return pos < lens[:, None]
    if side == "pre":
        return pos >= steps - lens[:, None]
    m = rng.random((rows, steps)) < 0.7
    m[0] = True
    return m


# --------------------------------------------------------------------------
# running


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch
        return np.asarray(x.detach().cpu().numpy())
    return np.asarray(x)


def _outputs(model: CheckedModel, raw: Any) -> tuple[RunOutput, ...]:
    """Name the outputs of any backend (one output: the value; several: a tuple;
    an ``output x with mask``: a (value, mask) pair, or value then mask)."""
    decls = model.model.outputs
    flat: list[Any] = []
    items = list(raw) if isinstance(raw, (tuple, list)) else [raw]
    if len(decls) == 1 and not decls[0].with_mask:
        items = [raw]
    if len(decls) == 1 and decls[0].with_mask and len(items) == 2:
        items = [tuple(items)]
    flat = items
    if len(flat) != len(decls):
        raise AssertionError(f"{len(flat)} outputs for {len(decls)} declared")  # a seqdsl bug
    out: list[RunOutput] = []
    for decl, item in zip(decls, flat, strict=True):
        if decl.with_mask:
            value, mask = item
            out.append(RunOutput(decl.name, _to_numpy(value), _to_numpy(mask).astype(bool)))
        else:
            out.append(RunOutput(decl.name, _to_numpy(item), None))
    return tuple(out)


def weight_problems(model: CheckedModel, weights: Mapping[str, np.ndarray]) -> list[str]:
    """What keeps canonical ``weights`` from fitting ``model``: missing and unknown
    keys, wrong shapes (empty when they fit)."""
    out: list[str] = []
    known: set[str] = set()
    for layer in model.layers:
        for spec in layer.weights:
            key = f"{layer.name}/{spec.name}"
            known.add(key)
            if key not in weights:
                out.append(f"missing weight {key!r} {list(spec.shape)}")
            elif tuple(np.shape(weights[key])) != tuple(spec.shape):
                out.append(
                    f"weight {key!r} has shape {list(np.shape(weights[key]))}, "
                    f"the model's is {list(spec.shape)}"
                )
    out += [
        f"unknown weight {key!r} (not a weight of {model.name})"
        for key in weights
        if key not in known
    ]
    return out


def run_batch(
    model: CheckedModel,
    batch: Batch,
    backend: str = "reference",
    seed: int = 0,
    source: str = "",
    weights: Mapping[str, np.ndarray] | str | Path | None = None,
) -> RunResult:
    """Build ``model`` on ``backend`` with the initial weights of ``seed``, or with
    canonical ``weights`` (``{"layer/weight": array}``, or the path of a weights
    file: :func:`seqdsl.weightsfile.load_weights`, whose OSError and
    WeightsFileError pass through), and run it on ``batch`` in inference mode. A
    backend whose framework is not installed raises :class:`BackendUnavailable`;
    weights that do not fit raise :class:`DataError`."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    label = ""
    if isinstance(weights, (str, Path)):
        label = str(weights)
        weights, _meta = load_weights(weights)
    if weights is not None:
        problems = weight_problems(model, weights)
        if problems:
            raise DataError(
                f"the weights do not fit model {model.name}: "
                + "; ".join(problems[:5])
                + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
            )
    start = time.perf_counter()
    if backend == "reference":
        if weights is None:
            weights = reference_weights(model, seed)
        built = time.perf_counter()
        try:
            res = run_reference(
                model, weights, list(batch.inputs), lengths=batch.lengths, masks=batch.masks
            )
        except ReferenceError as e:
            raise DataError(f"{batch.source}: {e}") from None
        raw: Any = res.outputs
        outputs = _outputs_from_reference(model, raw)
    else:
        from .emit import build

        require_backend(backend)
        net = build(model, backend, seed=seed, source=source or model.file or "<string>")
        if weights is not None:
            net.load_canonical(
                {k: v.astype(np.float32) if v.dtype.kind == "f" else v for k, v in weights.items()}
            )
        built = time.perf_counter()
        raw = _call(backend, net, model, batch)
        outputs = _outputs(model, raw)
    done = time.perf_counter()
    return RunResult(model.name, backend, seed, batch, outputs, built - start, done - built, label)


def _outputs_from_reference(model: CheckedModel, raw: Sequence[Any]) -> tuple[RunOutput, ...]:
    out = []
    for decl, item in zip(model.model.outputs, raw, strict=True):
        if decl.with_mask:
            value, mask = item
            out.append(RunOutput(decl.name, np.asarray(value), np.asarray(mask, dtype=bool)))
        else:
            out.append(RunOutput(decl.name, np.asarray(item), None))
    return tuple(out)


def _call(backend: str, net: Any, model: CheckedModel, batch: Batch) -> Any:
    opts: dict[str, Any] = {}
    if backend == "torch":
        import torch

        net.eval()
        if batch.lengths:
            opts["lengths"] = {k: torch.as_tensor(v) for k, v in batch.lengths.items()}
        if batch.masks:
            opts["masks"] = {k: torch.as_tensor(v) for k, v in batch.masks.items()}
        with torch.no_grad():
            return net(*[torch.as_tensor(x) for x in batch.inputs], **opts)
    if backend == "jax":
        if batch.lengths:
            opts["lengths"] = {k: v.astype(np.int32) for k, v in batch.lengths.items()}
        if batch.masks:
            opts["masks"] = dict(batch.masks)
        return net(*batch.inputs, **opts)
    # keras: the Keras inputs in order, each masked input followed by its lengths or mask
    feed: list[np.ndarray] = []
    for decl, x in zip(model.model.inputs, batch.inputs, strict=True):
        feed.append(x)
        if decl.name in batch.lengths:
            feed.append(batch.lengths[decl.name].astype(np.int32))
        if decl.name in batch.masks:
            feed.append(batch.masks[decl.name])
    return net(feed[0] if len(feed) == 1 else feed, training=False)


# --------------------------------------------------------------------------
# printing


def _mask_rows(mask: np.ndarray, limit: int = 6) -> str:
    """``[B, T]`` mask rows as valid-step counts, or ``#``/``.`` strings for gaps."""
    lens = mask.sum(axis=1)
    t = mask.shape[1]
    steps = np.arange(t)[None, :]
    post = (mask == (steps < lens[:, None])).all()
    pre = (mask == (steps >= t - lens[:, None])).all()
    if post or pre:
        shown = " ".join(str(int(n)) for n in lens[:limit])
        more = " ..." if len(lens) > limit else ""
        side = "first" if post else "last"
        return f"valid steps per row ({side} ones): {shown}{more} of {t}"
    rows = ["".join("#" if v else "." for v in r[:40]) for r in mask[:limit]]
    return "mask (# valid, . masked): " + " | ".join(rows) + (" ..." if len(mask) > limit else "")


def _array(a: np.ndarray) -> str:
    body = np.array2string(
        np.asarray(a),
        precision=4,
        threshold=24,
        edgeitems=2,
        suppress_small=True,
        max_line_width=96,
    )
    return "\n".join(("    " + line).rstrip() for line in body.splitlines())


def format_result(result: RunResult, model: CheckedModel) -> str:
    """The compact text ``seqdsl run`` prints: the data, each output and the times."""
    b = result.batch
    where = {"reference": "reference interpreter, NumPy float64"}.get(
        result.backend, result.backend
    )
    weights = (
        f"weights {result.weights}" if result.weights else f"initial weights of seed {result.seed}"
    )
    lines = [f"model {result.model} on {b.source}: {b.rows} row(s); backend {where}; {weights}"]
    for decl, x in zip(model.model.inputs, b.inputs, strict=True):
        info = f"  input {decl.name}: {x.dtype} {list(x.shape)}"
        if decl.name in b.row_lengths:
            lens = b.row_lengths[decl.name]
            info += f", sequences of {int(lens.min())} to {int(lens.max())} steps"
            pad = model.pads[decl.name]
            info += f" padded {pad.side} with {pad.value:g}"
        lines.append(info)
    for out in result.outputs:
        lines.append(f"output {out.name}: {out.value.dtype} {list(out.value.shape)}")
        if out.mask is not None:
            lines.append(f"  {_mask_rows(out.mask)}")
        lines.append(_array(out.value))
    lines.append(f"time: build {result.build_s:.3f} s, run {result.run_s:.3f} s")
    return "\n".join(lines) + "\n"
