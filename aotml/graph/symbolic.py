"""Symbolic dimensions: a dim known only at run time, bound from the inputs' shapes.

A `Sym` is a polynomial with integer coefficients over named symbols (`N`, `2*N*S`, `N + 2`),
kept in one canonical form so that equal dims compare equal. A polynomial with no symbol left
collapses to a plain int, so a dim is always `int | Sym`. Every symbol is at least 1 at run
time (the ABI checks it), so a dim whose coefficients are all positive is at least 1 too.

Shape rules written for ints mostly work unchanged: `+`, `-`, `*`, `==` and exact `//` are
defined. Anything whose answer depends on the symbol's value (`<`, `int()`, `range()`, an
inexact division) raises SymbolicError, which the compiler reports as "this op does not
support a symbolic dimension here" at the op's location: a shape rule can refuse a symbol, it
cannot silently get it wrong.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Union

Monomial = tuple[str, ...]  # sorted symbol names, repeated for powers: ("N", "N", "S")


class SymbolicError(Exception):
    """An operation on a symbolic dim whose answer depends on the symbol's run-time value."""


class Sym:
    """A polynomial over symbols; build one with `symbol(name)` and arithmetic."""

    __slots__ = ("terms", "_hash")

    def __init__(self, terms: tuple[tuple[Monomial, int], ...]):
        self.terms = terms  # canonical: sorted, no zero coefficient, some monomial non-empty
        self._hash = hash(terms)

    # construction

    @staticmethod
    def _make(acc: dict[Monomial, int]) -> Dim:
        terms = tuple(sorted(((m, c) for m, c in acc.items() if c), key=_term_order))
        if all(not m for m, _ in terms):
            return terms[0][1] if terms else 0
        return Sym(terms)

    @staticmethod
    def _terms_of(x) -> tuple[tuple[Monomial, int], ...]:
        if isinstance(x, Sym):
            return x.terms
        if isinstance(x, int) and not isinstance(x, bool):
            return (((), x),) if x else ()
        raise SymbolicError(f"cannot combine a symbolic dimension with {x!r}")

    # arithmetic

    def __add__(self, other) -> Dim:
        acc: dict[Monomial, int] = dict(self.terms)
        for m, c in self._terms_of(other):
            acc[m] = acc.get(m, 0) + c
        return self._make(acc)

    __radd__ = __add__

    def __neg__(self) -> Dim:
        return self._make({m: -c for m, c in self.terms})

    def __sub__(self, other) -> Dim:
        return self + (-other if isinstance(other, Sym) else -_int(other))

    def __rsub__(self, other) -> Dim:
        return (-self) + other

    def __mul__(self, other) -> Dim:
        acc: dict[Monomial, int] = {}
        for m1, c1 in self.terms:
            for m2, c2 in self._terms_of(other):
                m = tuple(sorted(m1 + m2))
                acc[m] = acc.get(m, 0) + c1 * c2
        return self._make(acc)

    __rmul__ = __mul__

    def __floordiv__(self, other) -> Dim:
        """Exact division only: by an int dividing every coefficient, or by a polynomial of
        one term that divides every term (`2*N*S // (2*S)` is `N`)."""
        divisor = self._terms_of(other)
        if len(divisor) == 1:
            dm, dc = divisor[0]
            acc = {}
            for m, c in self.terms:
                rest = _remove(m, dm)
                if rest is None or c % dc:
                    break
                acc[rest] = c // dc
            else:
                return self._make(acc)
        raise SymbolicError(f"{self} is not a multiple of {other} for every value of "
                            f"{', '.join(sorted(self.symbols))}")

    def __mod__(self, other) -> int:
        """0 when `other` divides this for every value of the symbols; otherwise unknown."""
        self // other
        return 0

    def __rfloordiv__(self, other):
        raise SymbolicError(f"{other} // {self} depends on the value of {self}")

    def __rmod__(self, other):
        raise SymbolicError(f"{other} % {self} depends on the value of {self}")

    def __truediv__(self, other):
        raise SymbolicError(f"{self} / {other} is not a dimension")

    __rtruediv__ = __truediv__

    # questions whose answer depends on the run-time value

    def _unknown(self, *_):
        raise SymbolicError(f"the answer depends on the run-time value of {self}")

    __lt__ = __le__ = __gt__ = __ge__ = _unknown
    __bool__ = __int__ = __index__ = __float__ = _unknown

    # identity

    def __eq__(self, other) -> bool:
        return isinstance(other, Sym) and self.terms == other.terms

    def __ne__(self, other) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return self._hash

    @property
    def symbols(self) -> frozenset[str]:
        return frozenset(s for m, _ in self.terms for s in m)

    @property
    def always_positive(self) -> bool:
        """True when every coefficient is positive, so the value is >= 1 for symbols >= 1."""
        return all(c > 0 for _, c in self.terms)

    def format(self, name=lambda s: s, times: str = "*") -> str:
        parts = []
        for m, c in self.terms:
            factors = [name(s) for s in m] + ([str(abs(c))] if abs(c) != 1 or not m else [])
            text = times.join(factors)
            parts.append(("- " if c < 0 else "+ ") + text if parts else ("-" if c < 0 else "")
                         + text)
        return " ".join(parts)

    def __str__(self) -> str:
        return self.format()

    # messages print shapes as lists and tuples, which use repr: show the dim as written
    __repr__ = __str__


Dim = Union[int, Sym]


def _term_order(term: tuple[Monomial, int]):
    m, _ = term
    return (-len(m), m)


def _remove(m: Monomial, d: Monomial) -> Monomial | None:
    """m with the factors of d taken out, or None when d does not divide m."""
    rest = list(m)
    for s in d:
        if s not in rest:
            return None
        rest.remove(s)
    return tuple(rest)


def _int(x) -> int:
    if isinstance(x, int) and not isinstance(x, bool):
        return x
    raise SymbolicError(f"cannot combine a symbolic dimension with {x!r}")


def symbol(name: str) -> Sym:
    return Sym((((name,), 1),))


def is_static(d) -> bool:
    return not isinstance(d, Sym)


def symbols_of(dims) -> frozenset[str]:
    """Every symbol in a sequence of dims."""
    out: frozenset[str] = frozenset()
    for d in dims:
        if isinstance(d, Sym):
            out |= d.symbols
    return out


def product(dims) -> Dim:
    """The product of dims (ints or symbolic); 1 for none."""
    out: Dim = 1
    for d in dims:
        out = d * out
    return out


def evaluate(d: Dim, values: Mapping[str, int]) -> int:
    """The value of a dim for given symbol values (every symbol it uses must be given)."""
    if not isinstance(d, Sym):
        return d
    total = 0
    for m, c in d.terms:
        for s in m:
            c *= values[s]
        total += c
    return total


def round_up_terms(d: Dim, multiple: int) -> Dim:
    """An upper bound of `d` (for symbols >= 1) whose every coefficient is a multiple of
    `multiple`, so its value is one too: byte sizes rounded so offsets stay aligned."""
    if not isinstance(d, Sym):
        return -(-d // multiple) * multiple
    if not d.always_positive:
        raise SymbolicError(f"{d} may be negative")
    return Sym._make({m: -(-c // multiple) * multiple for m, c in d.terms})
