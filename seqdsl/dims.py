"""Symbolic dimensions in a normal form.

A dimension is a linear combination, with rational coefficients, of *atoms*
plus a rational constant. An atom is a symbol (``T``) or a floor/ceil division
of another dimension by a positive integer (``(T - 3) // 2``). Construction
always normalises, so two dimensions are equal exactly when their normal forms
are: ``T/2 + T/2 == T`` and ``(T - 3) // 2 + 1`` built twice compare equal.

Symbols stand for positive integers. Division that must be exact (``T / 2``)
returns the quotient and leaves the caller to record the constraint
``T % 2 == 0`` (see :func:`exact_div`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

__all__ = ["Atom", "Dim", "at_least", "exact_div", "lower_bound", "sym", "const"]


@dataclass(frozen=True)
class Atom:
    """A symbol (``op == "sym"``) or ``floor``/``ceil`` of ``arg / div``."""

    op: str
    name: str = ""
    arg: Dim | None = None
    div: int = 1

    # Atoms nest (a floor of a floor of ...), and sorting and hashing terms ask for
    # their text and hash over and over: both are computed once per atom and kept
    # in the instance dict (not a field, so equality and repr ignore them).
    def key(self) -> str:
        k = self.__dict__.get("_key")
        if k is None:
            k = self._text()
            object.__setattr__(self, "_key", k)
        return k

    def __hash__(self) -> int:
        h = self.__dict__.get("_hash")
        if h is None:
            h = hash((self.op, self.name, self.arg, self.div))
            object.__setattr__(self, "_hash", h)
        return h

    def __str__(self) -> str:
        return self.key()

    def _text(self) -> str:
        if self.op == "sym":
            return self.name
        assert self.arg is not None
        if self.op == "floor":
            return f"{self.arg.paren()} // {self.div}"
        return f"ceil({self.arg} / {self.div})"

    def evaluate(self, env: dict[str, int]) -> Fraction | None:
        if self.op == "sym":
            v = env.get(self.name)
            return None if v is None else Fraction(v)
        assert self.arg is not None
        inner = self.arg.evaluate(env)
        if inner is None:
            return None
        q = inner / self.div
        return Fraction(math.floor(q) if self.op == "floor" else math.ceil(q))


@dataclass(frozen=True)
class Dim:
    """``sum(coef * atom) + const`` with terms sorted by atom and no zero coefficient."""

    terms: tuple[tuple[Atom, Fraction], ...] = ()
    const: Fraction = Fraction(0)

    def __hash__(self) -> int:  # cached, see Atom.key
        h = self.__dict__.get("_hash")
        if h is None:
            h = hash((self.terms, self.const))
            object.__setattr__(self, "_hash", h)
        return h

    # ---------------------------------------------------------- construction
    @staticmethod
    def of(value: int | Fraction | Dim) -> Dim:
        if isinstance(value, Dim):
            return value
        return Dim((), Fraction(value))

    @staticmethod
    def _build(coefs: dict[Atom, Fraction], c: Fraction) -> Dim:
        items = sorted(((a, k) for a, k in coefs.items() if k != 0), key=lambda p: p[0].key())
        return Dim(tuple(items), Fraction(c))

    # ---------------------------------------------------------- queries
    @property
    def is_const(self) -> bool:
        return not self.terms

    @property
    def value(self) -> int | None:
        """The integer value of a constant dimension, else None."""
        if self.terms or self.const.denominator != 1:
            return None
        return int(self.const)

    def symbols(self) -> set[str]:
        out: set[str] = set()
        for atom, _ in self.terms:
            if atom.op == "sym":
                out.add(atom.name)
            elif atom.arg is not None:
                out |= atom.arg.symbols()
        return out

    def is_integral(self) -> bool:
        """True when every coefficient and the constant are integers."""
        return self.const.denominator == 1 and all(k.denominator == 1 for _, k in self.terms)

    def evaluate(self, env: dict[str, int]) -> Fraction | None:
        total = self.const
        for atom, k in self.terms:
            v = atom.evaluate(env)
            if v is None:
                return None
            total += k * v
        return total

    # ---------------------------------------------------------- arithmetic
    def __add__(self, other: int | Dim) -> Dim:
        o = Dim.of(other)
        coefs: dict[Atom, Fraction] = dict(self.terms)
        for a, k in o.terms:
            coefs[a] = coefs.get(a, Fraction(0)) + k
        return Dim._build(coefs, self.const + o.const)

    __radd__ = __add__

    def __neg__(self) -> Dim:
        return Dim(tuple((a, -k) for a, k in self.terms), -self.const)

    def __sub__(self, other: int | Dim) -> Dim:
        return self + (-Dim.of(other))

    def __rsub__(self, other: int | Dim) -> Dim:
        return Dim.of(other) - self

    def __mul__(self, factor: int | Fraction) -> Dim:
        f = Fraction(factor)
        return Dim._build({a: k * f for a, k in self.terms}, self.const * f)

    __rmul__ = __mul__

    def scaled(self, num: int, den: int = 1) -> Dim:
        return self * Fraction(num, den)

    def floordiv(self, k: int) -> Dim:
        return _div_round(self, k, "floor")

    def ceildiv(self, k: int) -> Dim:
        return _div_round(self, k, "ceil")

    # ---------------------------------------------------------- printing
    def __str__(self) -> str:
        parts: list[tuple[int, str]] = []  # (sign, text)
        for atom, k in self.terms:
            sign = -1 if k < 0 else 1
            mag = abs(k)
            text = str(atom)
            if atom.op == "floor" and mag != 1:
                text = f"({text})"
            if mag.denominator != 1:
                num = f"{mag.numerator}*{text}" if mag.numerator != 1 else text
                text = f"{num}/{mag.denominator}"
            elif mag != 1:
                text = f"{mag.numerator}*{text}"
            parts.append((sign, text))
        if self.const or not parts:
            c = self.const
            sign = -1 if c < 0 else 1
            mag = abs(c)
            text = (
                str(mag.numerator) if mag.denominator == 1 else f"{mag.numerator}/{mag.denominator}"
            )
            parts.append((sign, text))
        out = ""
        for i, (sign, text) in enumerate(parts):
            if i == 0:
                out = ("-" if sign < 0 else "") + text
            else:
                out += (" - " if sign < 0 else " + ") + text
        return out

    def paren(self) -> str:
        s = str(self)
        return s if (len(self.terms) + (1 if self.const else 0)) <= 1 and "/" not in s else f"({s})"

    def __repr__(self) -> str:
        return f"Dim({self})"


def _div_round(d: Dim, k: int, op: str) -> Dim:
    if k <= 0:
        raise ValueError("division by a non-positive integer")
    if k == 1 and d.is_integral():
        return d
    q = d * Fraction(1, k)
    if q.is_const:
        c = q.const
        return Dim.of(math.floor(c) if op == "floor" else math.ceil(c))
    # Integer-coefficient terms of the quotient come out of the rounding.
    whole = {a: c for a, c in q.terms if c.denominator == 1}
    rest = {a: c for a, c in q.terms if c.denominator != 1}
    if not rest:
        c = q.const
        return Dim._build(whole, Fraction(math.floor(c) if op == "floor" else math.ceil(c)))
    # Pull the integer part of the constant out too: floor(x + n) = floor(x) + n.
    c = q.const
    shift = math.floor(c)
    inner = Dim._build(rest, c - shift) * k
    atom = Atom(op, arg=inner, div=k)
    whole[atom] = whole.get(atom, Fraction(0)) + 1
    return Dim._build(whole, Fraction(shift))


def exact_div(d: Dim, k: int) -> tuple[Dim, bool]:
    """``d / k`` and whether a divisibility constraint ``d % k == 0`` is needed.

    For a constant ``d`` not divisible by ``k`` the caller must report an error;
    this function returns ``(d * 1/k, True)`` and :func:`divisible` tells which.
    """
    q = d * Fraction(1, k)
    return q, not q.is_integral()


def divisible(d: Dim, k: int) -> bool | None:
    """True/False when decidable statically, None when it depends on symbols."""
    q = d * Fraction(1, k)
    if q.is_integral():
        return True
    if d.is_const:
        return False
    return None


def lower_bound(d: Dim) -> Fraction | None:
    """A lower bound of ``d`` over every value of its symbols (each at least 1), or
    None when none is found: a term with a negative coefficient is not bounded (upper
    bounds are not tracked), floor and ceil atoms are bounded by their argument's."""
    low = d.const
    for atom, k in d.terms:
        if k < 0:
            return None
        if atom.op == "sym":
            low += k
            continue
        assert atom.arg is not None
        inner = lower_bound(atom.arg)
        if inner is None:
            return None
        q = inner / atom.div
        low += k * (math.floor(q) if atom.op == "floor" else math.ceil(q))
    return low


def at_least(d: Dim, k: int) -> bool | None:
    """Whether the size ``d`` is at least ``k``: True/False when decidable statically
    (a size is an integer, so a bound of 1/2 proves 1), None when it depends on symbols."""
    if d.is_const:
        return d.const >= k
    low = lower_bound(d)
    if low is not None and math.ceil(low) >= k:
        return True
    return None


def sym(name: str) -> Dim:
    return Dim(((Atom("sym", name=name), Fraction(1)),), Fraction(0))


def const(n: int) -> Dim:
    return Dim.of(n)
