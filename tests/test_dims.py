"""Symbolic dimensions (seqdsl/dims.py): the normal form and what it decides.

Expected values are worked out by hand from the rules in the module docstring:
a dimension is ``sum(coef * atom) + const`` with rational coefficients, atoms
sorted by their text, and a floor/ceil atom keeps only the fractional part of
its quotient (integer terms and the integer part of the constant come out).
"""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seqdsl.dims import Atom, Dim, at_least, const, divisible, exact_div, lower_bound, sym

T = sym("T")
S = sym("S")
B = sym("B")
HALF = Fraction(1, 2)


# ------------------------------------------------------------------ equality of normal forms


def test_halves_add_up() -> None:
    assert T * HALF + T * HALF == T
    assert T.scaled(1, 2) + T.scaled(1, 2) == T
    assert T.scaled(1, 3) + T.scaled(2, 3) == T


def test_floor_expression_built_twice_is_equal() -> None:
    a = (T - 3).floordiv(2) + 1
    b = (T - 3).floordiv(2) + 1
    assert a == b
    assert hash(a) == hash(b)
    assert {a: "x"}[b] == "x"


def test_equal_floors_written_differently() -> None:
    # floor((T - 3) / 2) + 1 == floor((T + 1) / 2) - 1: the constant's integer part comes out
    assert (T - 3).floordiv(2) + 1 == (T + 1).floordiv(2) - 1
    # floor((T + 4) / 2) == floor(T / 2) + 2
    assert (T + 4).floordiv(2) == T.floordiv(2) + 2
    assert (T + 5).ceildiv(3) == (T + 2).ceildiv(3) + 1


def test_order_of_terms_does_not_matter() -> None:
    assert T + S == S + T
    assert (T + 2 * S) - S == S + T
    assert 3 + T == T + 3
    assert (S + T).floordiv(2) == (T + S).floordiv(2)


def test_cancellation_drops_zero_terms() -> None:
    d = T + S - T
    assert d == S
    assert d.terms == S.terms
    z = T - T
    assert z.is_const and z.value == 0
    assert z == const(0)


def test_floor_and_ceil_are_different_atoms() -> None:
    assert T.floordiv(2) != T.ceildiv(2)
    assert T.floordiv(2) != T.floordiv(3)
    assert T.floordiv(2) != T * HALF


def test_rsub_and_neg() -> None:
    assert 10 - T == -T + 10
    assert -(T - 3) == 3 - T
    assert (T - S) + (S - T) == const(0)  # noqa: SIM300


# ------------------------------------------------------------------ floor/ceil of constants


@pytest.mark.parametrize(
    ("n", "k", "floor", "ceil"),
    [(7, 2, 3, 4), (8, 2, 4, 4), (-7, 2, -4, -3), (0, 5, 0, 0), (1, 3, 0, 1), (9, 1, 9, 9)],
)
def test_rounding_of_constants(n: int, k: int, floor: int, ceil: int) -> None:
    assert const(n).floordiv(k) == const(floor)
    assert const(n).floordiv(k).value == floor
    assert const(n).ceildiv(k).value == ceil


def test_rounding_of_a_rational_constant() -> None:
    assert Dim.of(Fraction(7, 2)).floordiv(1).value == 3
    assert Dim.of(Fraction(7, 2)).ceildiv(1).value == 4


def test_division_by_one_of_an_integral_dim_is_itself() -> None:
    assert T.floordiv(1) == T
    assert (2 * T + 3).ceildiv(1) == 2 * T + 3


@pytest.mark.parametrize("k", [0, -2])
def test_division_by_a_non_positive_integer_is_refused(k: int) -> None:
    with pytest.raises(ValueError):
        T.floordiv(k)
    with pytest.raises(ValueError):
        T.ceildiv(k)


# ------------------------------------------------------------------ integer terms come out of floors


def test_integer_terms_pulled_out() -> None:
    # (2T + 3) // 2 = T + floor(3/2) = T + 1 ; ceil: T + 2 -- no atom left
    assert (2 * T + 3).floordiv(2) == T + 1
    assert (2 * T + 3).ceildiv(2) == T + 2
    assert all(a.op == "sym" for a, _ in (2 * T + 3).floordiv(2).terms)


def test_mixed_terms_keep_only_the_fraction_inside() -> None:
    # (T + 2S + 1) // 2 = S + floor((T + 1) / 2)
    d = (T + 2 * S + 1).floordiv(2)
    atoms = dict(d.terms)
    assert atoms[Atom("sym", name="S")] == 1
    floors = [a for a in atoms if a.op == "floor"]
    assert len(floors) == 1
    (f,) = floors
    assert f.div == 2
    assert f.arg == T + 1
    assert atoms[f] == 1
    assert d.const == 0
    assert d == S + (T + 1).floordiv(2)


def test_constant_shift_inside_floor() -> None:
    # floor((T - 3)/2): the inner constant is reduced to [0, 1) of the quotient
    d = (T - 3).floordiv(2)
    ((atom, coef),) = d.terms
    assert atom.op == "floor" and atom.div == 2 and coef == 1
    assert atom.arg == T + 1
    assert d.const == -2


def test_nested_floors() -> None:
    inner = T.floordiv(2)
    d = (inner - 1).floordiv(2)
    ((atom, _),) = d.terms
    assert atom.arg == inner + 1
    assert d.const == -1


# ------------------------------------------------------------------ divisibility


def test_divisibility_decisions() -> None:
    assert divisible(2 * T, 2) is True
    assert divisible(const(12), 3) is True
    assert divisible(const(10), 3) is False
    assert divisible(T, 2) is None
    assert divisible(T + 1, 2) is None
    assert divisible(T * HALF + T * HALF, 2) is None  # = T
    assert divisible(4 * T + 2, 2) is True


def test_exact_div() -> None:
    q, needs = exact_div(T, 2)
    assert q == T * HALF and needs is True
    q, needs = exact_div(2 * T, 2)
    assert q == T and needs is False
    q, needs = exact_div(const(12), 4)
    assert q == const(3) and needs is False
    q, needs = exact_div(const(10), 4)
    assert q.value is None and q.const == Fraction(5, 2) and needs is True


def test_halves_of_a_split_join_back() -> None:
    half, _ = exact_div(T, 2)
    assert half + half == T
    third, _ = exact_div(T, 3)
    assert third + third + third == T


# ------------------------------------------------------------------ evaluation


def test_evaluate_against_an_env() -> None:
    assert ((T - 3).floordiv(2) + 1).evaluate({"T": 10}) == 4  # floor(7/2) + 1
    assert T.ceildiv(3).evaluate({"T": 10}) == 4
    assert (T * HALF).evaluate({"T": 3}) == Fraction(3, 2)
    assert (T + S).evaluate({"T": 3, "S": 4}) == 7
    assert (T + S).evaluate({"T": 3}) is None
    assert const(5).evaluate({}) == 5


def test_value_and_symbols() -> None:
    assert const(5).value == 5
    assert Dim.of(Fraction(5, 2)).value is None
    assert T.value is None
    assert T.is_const is False and const(1).is_const is True
    assert ((T + S).floordiv(2) + B).symbols() == {"T", "S", "B"}
    assert const(3).symbols() == set()


def test_is_integral() -> None:
    assert (2 * T + 3).is_integral()
    assert not (T * HALF).is_integral()
    assert not Dim.of(Fraction(1, 3)).is_integral()


@settings(max_examples=200, derandomize=True, deadline=None)
@given(
    t=st.integers(min_value=1, max_value=500),
    s=st.integers(min_value=1, max_value=500),
    a=st.integers(min_value=-5, max_value=5),
    c=st.integers(min_value=-20, max_value=20),
    k=st.integers(min_value=1, max_value=7),
)
def test_normal_form_preserves_values(t: int, s: int, a: int, c: int, k: int) -> None:
    env = {"T": t, "S": s}
    x = a * T + S + c
    xv = a * t + s + c
    assert x.evaluate(env) == xv
    assert x.floordiv(k).evaluate(env) == xv // k
    assert x.ceildiv(k).evaluate(env) == -((-xv) // k)
    # Conv1D length formula, valid padding, kernel 3, stride k, applied twice
    once = (T - 3).floordiv(k) + 1
    twice = (once - 3).floordiv(k) + 1
    o1 = (t - 3) // k + 1
    assert once.evaluate(env) == o1
    assert twice.evaluate(env) == (o1 - 3) // k + 1
    # same padding
    assert T.ceildiv(k).ceildiv(2).evaluate(env) == math.ceil(math.ceil(t / k) / 2)


# ------------------------------------------------------------------ printing


@pytest.mark.parametrize(
    ("dim", "text"),
    [
        (T, "T"),
        (const(0), "0"),
        (const(7), "7"),
        (const(-3), "-3"),
        (Dim.of(Fraction(-5, 2)), "-5/2"),
        (T - 3, "T - 3"),
        (-T + 2, "-T + 2"),
        (T * HALF, "T/2"),
        (T * Fraction(3, 2), "3*T/2"),
        (2 * T + S, "S + 2*T"),
        (T + 4, "T + 4"),
        (T.floordiv(2), "T // 2"),
        (T.ceildiv(2), "ceil(T / 2)"),
        ((S + T).floordiv(2), "(S + T) // 2"),
        (T.floordiv(2) * 2, "2*(T // 2)"),
        # `//` binds tighter than `+`: a floor atom is parenthesised only when scaled
        ((T - 3).floordiv(2) + 1, "(T + 1) // 2 - 1"),
        # terms are sorted by their text: "S" < "T // 2"
        (T.floordiv(2) + S, "S + T // 2"),
        (T.ceildiv(2) * HALF, "ceil(T / 2)/2"),
    ],
)
def test_printing(dim: Dim, text: str) -> None:
    assert str(dim) == text


def test_repr_and_paren() -> None:
    assert repr(T.floordiv(2)) == "Dim(T // 2)"
    assert T.paren() == "T"
    assert const(4).paren() == "4"
    assert (T + 1).paren() == "(T + 1)"
    assert (T * HALF).paren() == "(T/2)"


def test_lower_bound_and_at_least() -> None:
    """Symbols are at least 1; floor and ceil atoms are bounded by their argument's
    bound; a negative term has no bound (upper bounds are not tracked)."""
    T, S = sym("T"), sym("S")
    assert lower_bound(T) == 1 and lower_bound(T.scaled(1, 2)) == Fraction(1, 2)
    assert lower_bound((T - 5).floordiv(2) + 1) == -1  # floor(-4 / 2) + 1
    assert lower_bound(T.ceildiv(3) + S) == 2
    assert lower_bound(T - S) is None
    assert at_least(T.scaled(1, 2), 1) is True  # an integer size of at least 1/2
    assert at_least(T * 3 + 4, 7) is True and at_least(T * 3 + 4, 8) is None
    assert at_least((T - 5).floordiv(2) + 1, 1) is None
    assert at_least(const(4), 5) is False and at_least(const(5), 5) is True


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 60), st.integers(1, 60), st.integers(1, 4), st.integers(1, 5))
def test_lower_bound_is_a_lower_bound(t: int, s: int, k: int, c: int) -> None:
    T, S = sym("T"), sym("S")
    for d in ((T - c).floordiv(k) + 1, (T + S).ceildiv(k) - c, T.scaled(c, k) + S.floordiv(k)):
        low = lower_bound(d)
        v = d.evaluate({"T": t, "S": s})
        assert low is not None and v is not None and low <= v
