"""Build-time weight layouts: a loop nest that computes only from weights runs once, here.

A matmul packs b's column panels into a scratch buffer before its tiles run (ops/nn.py). When b
is a weight, that copy gives the same bytes on every run, so it is done at build time instead:
the nest is evaluated with numpy over its whole iteration space, its scratch buffer becomes a
weight holding the result, and the nest leaves the kernel. A weight no kernel reads any more
is then dropped from the library (lowering lays out only the weights still read).

A nest qualifies when it is a perfect nest of static loops around one store into a scratch
buffer that nothing else in the kernel stores, and its indices and value are made of loop
variables, integer constants and arithmetic, comparisons, selects, loads from weights, and
f32 additions, subtractions and multiplications of those (a Winograd conv's weight transform,
ops/winograd.py). numpy rounds each f32 operation as the compiled code does (IEEE, no
fast-math, no multiply and add contracted into one), in the order the expression gives, so
its result is the compiled code's bit for bit (tests/test_winograd.py compares). A nest whose
result would take more bytes than the weights it reads (panels per matrix of a batch that
broadcasts one weight) is left to run, so the library does not grow by copies; a Winograd
conv's 16 transformed matrices, each smaller than its weight, together take 16/9 of it.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from aotml.dtypes import TABLE
from aotml.loops.ir import (
    Binary,
    Buffer,
    Compare,
    Const,
    Expr,
    For,
    Kernel,
    Load,
    Select,
    Store,
    Var,
    VecLoad,
    children,
    dtype_of,
    stmt_exprs,
    walk_expr,
    walk_stmts,
)

MAX_POINTS = 1 << 26  # the largest nest evaluated (64M elements)


def fold_weight_layouts(kernels: list[Kernel], weights: dict[str, np.ndarray],
                        scratch: set[str]
                        ) -> tuple[list[Kernel], dict[str, tuple[Buffer, np.ndarray]]]:
    """Kernels without their foldable top-level nests (open loops of one iteration first:
    schedule.open_unit_loops), and the new weights: a scratch buffer's name -> the buffer and
    its contents. `weights` maps each weight buffer's name to its array."""
    made: dict[str, tuple[Buffer, np.ndarray]] = {}
    out = []
    for k in kernels:
        body = k.body
        kept = []
        for s in body:
            value = _fold(s, body, weights, scratch)
            if value is None:
                kept.append(s)
            else:
                made[value[0].name] = value
        if len(kept) == len(body):
            out.append(k)
            continue
        used = _buffers(kept)
        args = tuple(b for b in k.args if b.name in used or b.name in k.outputs)
        out.append(replace(k, args=args, body=tuple(kept)))
    return out, made


def _fold(s, body, weights, scratch) -> tuple[Buffer, np.ndarray] | None:
    loops = []
    while isinstance(s, For):
        if not isinstance(s.extent, int) or s.bind or s.parallel or len(s.body) != 1:
            return None
        loops.append(s)
        s = s.body[0]
    if not loops or not isinstance(s, Store):
        return None
    target = s.buffer
    if target.name not in scratch or target.scope != "global" or \
            not all(isinstance(d, int) for d in target.shape):
        return None
    if _stores_to(body, target) != 1:
        return None
    reads: set[str] = set()
    own = {f.var.name for f in loops}
    if not all(_copy_expr(e, weights, reads, own) for e in (*s.indices, s.value)):
        return None
    if int(np.prod(target.shape)) * TABLE[target.dtype].numpy.itemsize > \
            sum(weights[name].nbytes for name in reads):
        return None
    shape = tuple(f.trips for f in loops)
    if int(np.prod(shape)) > MAX_POINTS:
        return None
    grids = np.meshgrid(*(np.arange(0, f.extent, f.step, dtype=np.int64) for f in loops),
                        indexing="ij", sparse=True)
    env = {f.var.name: g for f, g in zip(loops, grids)}
    try:
        index = tuple(np.broadcast_to(_eval(i, env, weights), shape) for i in s.indices)
        value = np.broadcast_to(_eval(s.value, env, weights), shape)
    except IndexError:  # a load out of its weight's bounds: left to the run-time code
        return None
    if any((i < 0).any() or (i >= d).any() for i, d in zip(index, target.shape)):
        return None
    result = np.zeros(target.shape, dtype=TABLE[target.dtype].numpy)
    result[index] = value
    return target, result


def _copy_expr(e: Expr, weights, reads: set[str], own: set[str]) -> bool:
    """Whether `e` is index arithmetic on the nest's loop variables, a comparison or select of
    such, a load of a weight, or f32 additions, subtractions and multiplications of those."""
    if isinstance(e, Var):
        return e.name in own  # the nest's own loop variables, not a local from outside
    if isinstance(e, Const):
        return True
    if isinstance(e, Load):
        if e.buffer.name not in weights:
            return False
        reads.add(e.buffer.name)
    elif isinstance(e, Binary):
        if dtype_of(e) == "f32":
            if e.op not in ("add", "sub", "mul"):
                return False
        elif e.op not in ("add", "sub", "mul", "idiv", "irem", "min", "max") or \
                dtype_of(e) not in ("i32", "i64"):
            return False
    elif not isinstance(e, (Compare, Select)):
        return False
    return all(_copy_expr(c, weights, reads, own) for c in children(e))


def _eval(e: Expr, env: dict, weights):
    if isinstance(e, Var):
        return env[e.name]
    if isinstance(e, Const):
        return np.asarray(e.value, dtype=TABLE[e.dtype].numpy)
    if isinstance(e, Load):
        return weights[e.buffer.name][tuple(_eval(i, env, weights) for i in e.indices)]
    if isinstance(e, Select):
        return np.where(_eval(e.cond, env, weights), _eval(e.a, env, weights),
                        _eval(e.b, env, weights))
    a, b = _eval(e.lhs, env, weights), _eval(e.rhs, env, weights)
    if isinstance(e, Compare):
        return {"eq": np.equal, "ne": np.not_equal, "lt": np.less, "le": np.less_equal,
                "gt": np.greater, "ge": np.greater_equal}[e.op](a, b)
    if e.op in ("idiv", "irem"):  # C's: truncated toward zero
        q = _tdiv(a, b)
        return q if e.op == "idiv" else a - q * b
    return {"add": np.add, "sub": np.subtract, "mul": np.multiply, "min": np.minimum,
            "max": np.maximum}[e.op](a, b)


def _tdiv(a, b):
    """a / b truncated toward zero (numpy's // floors)."""
    q = np.floor_divide(a, b)
    return q + ((q < 0) & (q * b != a))


def _stores_to(stmts, buf: Buffer) -> int:
    return sum(isinstance(s, Store) and s.buffer == buf for s in walk_stmts(stmts))


def _buffers(stmts) -> set[str]:
    """The names of the buffers `stmts` load or store."""
    found = set()
    for s in walk_stmts(stmts):
        if isinstance(s, Store):
            found.add(s.buffer.name)
        found |= {x.buffer.name for e in stmt_exprs(s) for x in walk_expr(e)
                  if isinstance(x, (Load, VecLoad))}
    return found
