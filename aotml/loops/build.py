"""Helpers the op lowerings share: loop nests, broadcasting indices, reductions.

An op's lowering writes loops for one output buffer from *operands*: a buffer, or a scalar
constant folded in at lowering time (a literal like the `2` in `x * 2`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from aotml.loops.ir import INDEX, Buffer, Const, Expr, For, Load, Stmt, Var


@dataclass(frozen=True)
class Operand:
    """An op input as seen by its lowering: a buffer, or a scalar known at build time."""

    shape: tuple[int, ...]
    buffer: Buffer | None = None
    scalar: Const | None = None

    def load(self, indices: Sequence[Expr]) -> Expr:
        if self.scalar is not None:
            return self.scalar
        return Load(self.buffer, tuple(indices))


class Names:
    """Fresh variable names within one kernel."""

    def __init__(self):
        self._n: dict[str, int] = {}

    def var(self, prefix: str, dtype: str = INDEX) -> Var:
        k = self._n.get(prefix, 0)
        self._n[prefix] = k + 1
        return Var(f"{prefix}{k}", dtype)


def idx(i: int) -> Const:
    return Const(i, INDEX)


def loop_nest(shape: Sequence[int], names: Names,
              body: Callable[[tuple[Var, ...]], list[Stmt]], prefix: str = "i") -> list[Stmt]:
    """Loops over every index of `shape`, outermost first; rank 0 gives the body alone."""
    vars_ = tuple(names.var(prefix) for _ in shape)
    stmts = body(vars_)
    for v, extent in reversed(list(zip(vars_, shape))):
        stmts = [For(v, extent, tuple(stmts))]
    return stmts


def broadcast_indices(out_idx: Sequence[Expr], in_shape: Sequence[int],
                      out_shape: Sequence[int]) -> tuple[Expr, ...]:
    """numpy broadcasting: shapes align on the right; a size-1 dim is read at index 0."""
    lead = len(out_shape) - len(in_shape)
    return tuple(idx(0) if d == 1 and out_shape[lead + k] != 1 else out_idx[lead + k]
                 for k, d in enumerate(in_shape))


def with_axis(outer: Sequence[Expr], axis: int, at: Expr, keepdims: bool = False) -> tuple:
    """Full indices from the indices of the other dims and the index along `axis`.

    With keepdims, `outer` already has a placeholder at `axis`, which is replaced.
    """
    outer = list(outer)
    if keepdims:
        outer[axis] = at
        return tuple(outer)
    return tuple(outer[:axis] + [at] + outer[axis:])
