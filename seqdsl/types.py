"""Static types of values: dtype, shape (symbolic dims) and mask kind."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from .dims import Dim

__all__ = [
    "DTYPES",
    "FLOAT_DTYPES",
    "INT_DTYPES",
    "MaskKind",
    "TensorType",
    "MaskType",
    "ValueType",
    "fmt_dim",
    "fmt_shape",
    "dims_equal",
]

DTYPES = ("f32", "f64", "i32", "i64", "bool")
FLOAT_DTYPES = ("f32", "f64")
INT_DTYPES = ("i32", "i64")

#: ``None`` stands for ``_``: unknown, compatible with anything.
MaybeDim = Dim | None


@dataclass(frozen=True)
class MaskKind:
    """side x emptiness, and whether the kind rests on a padding declaration."""

    side: str  # "post" | "pre" | "any"
    nonempty: bool = False
    declared: bool = False

    def __str__(self) -> str:
        s = self.side + ("" if self.nonempty else ", maybe-empty")
        return s + (" (declared)" if self.declared else "")

    def flipped(self) -> MaskKind:
        side = {"post": "pre", "pre": "post"}.get(self.side, self.side)
        return replace(self, side=side)

    def to_dict(self) -> dict[str, object]:
        return {"side": self.side, "nonempty": self.nonempty, "declared": self.declared}


@dataclass(frozen=True)
class TensorType:
    dtype: str
    shape: tuple[MaybeDim, ...]
    mask: MaskKind | None = None
    #: name of the ``pad(...)`` input this value's time axis comes from, if any
    padded_from: str | None = None

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def batch(self) -> MaybeDim:
        return self.shape[0] if self.shape else None

    @property
    def time(self) -> MaybeDim:
        return self.shape[1] if len(self.shape) > 1 else None

    @property
    def features(self) -> MaybeDim:
        return self.shape[-1] if len(self.shape) > 1 else None

    def with_mask(self, mask: MaskKind | None) -> TensorType:
        return replace(self, mask=mask)

    def __str__(self) -> str:
        return f"{self.dtype}{fmt_shape(self.shape)}"


@dataclass(frozen=True)
class MaskType:
    """An explicit mask value (``input m: mask[B, T]``)."""

    batch: MaybeDim
    time: MaybeDim
    kind: MaskKind

    def __str__(self) -> str:
        return f"mask({self.kind.side}){fmt_shape((self.batch, self.time))}"


ValueType = TensorType | MaskType


def fmt_dim(d: MaybeDim) -> str:
    return "_" if d is None else str(d)


def fmt_shape(shape: Sequence[MaybeDim]) -> str:
    return "[" + ", ".join(fmt_dim(d) for d in shape) + "]"


def dims_equal(a: MaybeDim, b: MaybeDim) -> bool:
    """Equal in normal form, or one of them unknown."""
    return a is None or b is None or a == b
