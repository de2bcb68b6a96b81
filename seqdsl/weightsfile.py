"""The weights file: safetensors, written and read with NumPy alone.

Format (https://github.com/huggingface/safetensors): an 8-byte little-endian
header length, a JSON header mapping each key to its dtype, shape and byte
offsets (plus ``__metadata__``), then the raw little-endian data. Keys are the
canonical ``"{layer}/{weight}"`` names (docs/semantics.md §1). The reader is
:func:`seqdsl.runtime.common.read_safetensors` (NumPy only), so that every
built model's ``load_canonical(path)`` reads the file with it, standalone
modules included.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .runtime.common import WeightsFileError, read_safetensors

__all__ = ["save_weights", "load_weights", "WeightsFileError"]

_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "BOOL": "|b1"}
_NAMES = {np.dtype(v).str: k for k, v in _DTYPES.items()}


def save_weights(
    path: str | Path, weights: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None
) -> None:
    header: dict[str, object] = {}
    chunks: list[bytes] = []
    offset = 0
    for key in sorted(weights):
        arr = np.asarray(weights[key])
        le = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
        name = _NAMES.get(le.dtype.str)
        if name is None:
            raise WeightsFileError(f"{key}: dtype {arr.dtype} cannot be stored")
        data = np.ascontiguousarray(le).tobytes()
        header[key] = {
            "dtype": name,
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        chunks.append(data)
        offset += len(data)
    header["__metadata__"] = {"format": "seqdsl", **dict(metadata or {})}
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for c in chunks:
            f.write(c)


def load_weights(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """``(weights, metadata)``; raises WeightsFileError saying what is wrong with a
    malformed file. Every built model's ``load_canonical`` takes the pair as it is
    (or the path), and reads the weights alone."""
    return read_safetensors(path)
