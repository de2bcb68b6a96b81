"""The types of the layer catalogue, below everything that builds entries.

:class:`LayerSpec` (one catalogue entry), :class:`Param`, :class:`WeightSpec`,
:class:`KernelChoice`, the rule interface (:class:`CallInfo`,
:class:`RuleContext`, :class:`RuleError`), the typed configuration reader
:class:`Cfg`, and the mask-kind helpers that built-in rules and extern
declarations share. ``seqdsl.cells`` (cell blocks and externs) and
``seqdsl.catalogue`` (the built-in layers) both build on this module; the
catalogue re-exports every name, so ``from seqdsl.catalogue import LayerSpec``
keeps working.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from .dims import Dim
from .types import MaskKind, TensorType

__all__ = [
    "ACTIVATIONS",
    "INITIALIZERS",
    "KERNELS",
    "TARGETS",
    "BoundLayer",
    "CallInfo",
    "Cfg",
    "Config",
    "KernelChoice",
    "KernelFn",
    "LayerSpec",
    "PadInfo",
    "Param",
    "REQUIRED",
    "Rule",
    "RuleContext",
    "RuleError",
    "WeightSpec",
    "WeightsFn",
    "and_kind",
    "concat_time_kind",
    "pad_mask_kind",
]

TARGETS = ("keras", "torch", "jax")
KERNELS = ("cudnn", "cudnn+roll", "cudnn+compact", "scan", "loop")

ACTIVATIONS = (
    "linear", "relu", "sigmoid", "tanh", "softmax", "log_softmax", "softplus", "softsign",
    "elu", "selu", "gelu", "silu", "swish", "exponential", "hard_sigmoid", "relu6",
    "leaky_relu", "mish",
)  # fmt: skip
INITIALIZERS = (
    "glorot_uniform", "glorot_normal", "he_uniform", "he_normal", "lecun_uniform",
    "lecun_normal", "orthogonal", "zeros", "ones", "uniform", "random_uniform",
    "random_normal", "truncated_normal", "identity",
)  # fmt: skip


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: object = _Required()


@dataclass(frozen=True)
class Param:
    """One configuration parameter.

    ``type`` is one of: ``int``, ``float``, ``bool``, ``str``, ``choice``
    (a bare name or string among ``choices``), ``activation``,
    ``initializer``, ``layer`` (a nested layer constructor), ``ints`` (an int
    or a one-element list, Keras' ``kernel_size=3`` or ``(3,)``), ``int_or_none``,
    ``ints_or_none`` (``ints`` or ``none``), ``shape`` (a list of ints), ``axis``
    (``time``/``features`` or an int), ``axes`` (``none``, ``time``, an int or a
    list of ints).
    """

    name: str
    type: str
    default: object = REQUIRED
    choices: tuple[str, ...] = ()
    lo: float | None = None
    hi: float | None = None
    hi_open: bool = False
    doc: str = ""


@dataclass(frozen=True)
class BoundLayer:
    """A nested layer argument after binding (``Bidirectional(LSTM(64))``)."""

    kind: str
    name: str
    config: Mapping[str, object]


class Cfg:
    """Typed reads of a checked layer configuration (``Cfg(layer.config).integer("units")``).

    The checker has bound every parameter to its :class:`Param` type, so a read of
    the wrong type is a bug in seqdsl: it raises TypeError naming the parameter."""

    __slots__ = ("_cfg",)

    def __init__(self, cfg: Mapping[str, object]):
        self._cfg = cfg

    def _wrong(self, key: str, what: str) -> TypeError:
        return TypeError(f"configuration {key!r} is {self._cfg[key]!r}, not {what}")

    def __contains__(self, key: str) -> bool:
        return key in self._cfg

    def raw(self, key: str) -> object:
        """The value as bound (any type)."""
        return self._cfg[key]

    # each read tests the exact type first: emitters read thousands of values
    def integer(self, key: str) -> int:
        v = self._cfg[key]
        if type(v) is int:
            return v
        raise self._wrong(key, "int")

    def number(self, key: str) -> float:
        v = self._cfg[key]
        if type(v) is float:
            return v
        if type(v) is int:
            return float(v)
        raise self._wrong(key, "a number")

    def flag(self, key: str) -> bool:
        v = self._cfg[key]
        if v is True or v is False:
            return v
        raise self._wrong(key, "bool")

    def text(self, key: str) -> str:
        v = self._cfg[key]
        if isinstance(v, str):
            return v
        raise self._wrong(key, "str")

    def opt_integer(self, key: str) -> int | None:
        """An ``int_or_none`` parameter."""
        return None if self._cfg[key] is None else self.integer(key)

    def opt_text(self, key: str) -> str | None:
        return None if self._cfg[key] is None else self.text(key)

    def integers(self, key: str) -> tuple[int, ...]:
        """A ``shape`` or an ``ints`` parameter, as a tuple of ints."""
        v = self._cfg[key]
        items = v if isinstance(v, (tuple, list)) else (v,)
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in items):
            raise TypeError(f"configuration {key!r} is {v!r}, not ints")
        return tuple(i for i in items if isinstance(i, int))

    def layer(self, key: str) -> BoundLayer:
        """A ``layer`` parameter (``Bidirectional``'s ``layer``)."""
        v = self._cfg[key]
        if isinstance(v, BoundLayer):
            return v
        raise self._wrong(key, "a layer")


@dataclass(frozen=True)
class WeightSpec:
    """One weight in the canonical (Keras) layout: ``{layer}/{name}`` in weight files."""

    name: str
    shape: tuple[int, ...]
    initializer: str
    trainable: bool = True

    @property
    def size(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class KernelChoice:
    kernel: str
    reason: str | None = None

    def __str__(self) -> str:
        return self.kernel


@dataclass(frozen=True)
class PadInfo:
    """A ``pad(...)`` declaration: keras.utils.pad_sequences semantics in the input's dtype."""

    side: str
    value: float
    nonempty: bool = False
    maxlen: int | None = None
    truncate: str = "pre"


@dataclass(frozen=True)
class CallInfo:
    """What a rule sees of a call besides the inputs."""

    layer_kind: str
    initial_state: tuple[TensorType, ...] | None = None
    explicit_mask: bool = False
    training: bool | None = None


class RuleContext(Protocol):
    def exact(self, d: Dim | None, k: int, what: str) -> Dim | None: ...

    def at_least(self, d: Dim, k: int, what: str) -> None:
        """Require the size ``d >= k``: a run-time constraint unless it is provable."""
        ...

    def pad_of(self, t: TensorType) -> PadInfo | None: ...

    def warn(self, code: str, message: str, hint: str | None = None) -> None: ...

    def fixed_batch_example(self, batch: Dim | None, size: int) -> str | None:
        """The declaration of the input a batch dimension comes from, rewritten with a
        fixed batch ``size`` (``tokens: i32[32, T]``); None when no input declares it."""
        ...


class RuleError(Exception):
    """A rule violation. ``arg`` names the argument to point at; ``where`` is
    ``layer`` (the constructor), ``input`` (the data argument), ``initial_state``
    or ``arg``."""

    def __init__(
        self,
        code: str,
        message: str,
        hint: str | None = None,
        arg: str | None = None,
        where: str = "layer",
        index: int = 0,
    ):
        super().__init__(message)
        self.code = code
        self.message = message
        self.hint = hint
        self.arg = arg
        self.where = "arg" if arg is not None and where == "layer" else where
        #: with ``where="input"``: which input to point at (a merge's mismatching value)
        self.index = index


Config = Mapping[str, object]
Rule = Callable[[Config, Sequence[TensorType], CallInfo, RuleContext], list[TensorType]]
WeightsFn = Callable[[Config, Sequence[TensorType]], list["WeightSpec"]]
KernelFn = Callable[[Config, Sequence[TensorType]], dict[str, KernelChoice]]


@dataclass(frozen=True)
class LayerSpec:
    name: str
    category: str
    params: tuple[Param, ...]
    rule: Rule
    weights: WeightsFn
    mask_rule: str
    padding_invariant: bool
    doc: str
    unsupported: Mapping[str, str] = field(default_factory=dict)
    kernels: KernelFn | None = None
    data_args: frozenset[str] = frozenset({"mask"})
    n_inputs: tuple[int, int] = (1, 1)
    #: whether a configuration keeps the layer padding invariant (None: always, when
    #: ``padding_invariant`` is set), and the exception in words, for the docs
    invariant: Callable[[Config], bool] | None = None
    invariant_note: str = ""

    def param(self, name: str) -> Param | None:
        for p in self.params:
            if p.name == name:
                return p
        return None


# --------------------------------------------------------------------------
# mask kinds shared by the built-in rules and extern declarations


def and_kind(kinds: Sequence[MaskKind]) -> MaskKind:
    sides = {k.side for k in kinds}
    side = sides.pop() if len(sides) == 1 and "any" not in sides else "any"
    nonempty = side != "any" and all(k.nonempty for k in kinds)
    return MaskKind(side, nonempty, any(k.declared for k in kinds))


def concat_time_kind(parts: Sequence[TensorType]) -> MaskKind | None:
    if all(p.mask is None for p in parts):
        return None
    sides = ["none" if p.mask is None else p.mask.side for p in parts]
    # unmasked ++ ... ++ unmasked ++ post = post ; pre ++ unmasked ++ ... = pre
    if all(s == "none" for s in sides[:-1]) and sides[-1] == "post":
        side = "post"
    elif sides[0] == "pre" and all(s == "none" for s in sides[1:]):
        side = "pre"
    else:
        side = "any"
    nonempty = any(p.mask is None or p.mask.nonempty for p in parts)
    return MaskKind(side, nonempty, any(p.mask is not None and p.mask.declared for p in parts))


def pad_mask_kind(pad: PadInfo | None, value: float) -> MaskKind:
    """The kind of a mask ``x != value`` on ids: declared by a matching ``pad(...)``, else any."""
    if pad is not None and pad.value == value:
        return MaskKind(pad.side, pad.nonempty, declared=True)
    return MaskKind("any")
