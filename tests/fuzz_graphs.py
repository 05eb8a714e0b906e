"""Differential fuzzing of the whole compiler (NNSmith-style): random valid models, compiled to a
real .so, run on random inputs and compared with the float64 reference interpreter.

A graph is grown by rejection against the op registry itself: each step picks an op, operands
from a pool of typed values (or fresh inputs and params of shapes related to them) and attribute
values from a small space per attribute kind, and keeps the node only if the op's own `infer`
accepts it (where it refuses, the operand or attribute its OpTypeError names is redrawn, a few
times). Ops added to the registry later are fuzzed with no change here; only ops whose operands
need a restricted domain (log of a positive number, an index in range) appear in the tables
below. Every sink is an output, so no node is dead code; a tenth of the graphs get NaN, ±inf
and ±0 among their float data.

The graph is written as .mlg text (plus a weights .npz when it has params), compiled with
`aotml.build`, run, and each output compared with `interpret_graph(..., precise=True)` on the
*elaborated, unoptimized* graph: the oracle then also checks the graph passes (folding,
simplification, CSE), which `aotml.interpret` would share with the compiled code. When outputs
differ, the optimized graph is interpreted too, to say whether the passes or the lowering and
code generation are at fault.

A graph is a pure function of a `GraphSpec` (a seed for the leaves, outputs and input values,
and one seed per node step): hypothesis draws specs (tests/test_fuzz.py), so shrinking drops
steps; the command line loops over seeds, and shrinks a failing graph itself (steps, then
outputs), saving one reproducer per kind of failure and set of ops:

    python tests/fuzz_graphs.py --graphs 5000 [--seed N] [--jobs 2] [--op NAME] [--show SEED]

Symbolic dims: `symbolize` turns the input dims of one size into a run-time symbol N (with or
without `dim N <= B`), leaving params and attributes as they were. The compiler may refuse the
result with a CompileError (an op's rule cannot handle the symbol, or a static dim meets it):
that is counted, by op, not failed. What it accepts is built once and checked at the original
size, on the graph's own arrays, and at other sizes on fresh ones; where the reference itself
refuses another size, the compiler accepted a graph that holds at one size only. The command
line does this for a share of the graphs that pass (`--symbolic P`, default 0.25).

A failure is saved as a self-contained reproducer in tests/fuzz_regressions/ (see the README
there), which tests/test_fuzz.py replays on every run.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import math
import os
import re
import sys
import tempfile
import textwrap
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script: use this checkout, not an installed aotml
    sys.path.insert(0, str(REPO))
os.environ.setdefault("AOTML_VERIFY", "1")  # the graph verifier after every pass, as in tests

import aotml  # noqa: E402
from aotml import ops  # noqa: E402
from aotml.errors import CompileError  # noqa: E402
from aotml.frontend import parse_file  # noqa: E402
from aotml.graph.elaborate import elaborate  # noqa: E402
from aotml.graph.interpret import interpret_graph  # noqa: E402
from aotml.graph.ir import DTYPES, FLOATS, Graph, TensorType, format_attr  # noqa: E402
from aotml.graph.ir import Node as GraphNode  # noqa: E402
from aotml.graph.symbolic import evaluate, symbol  # noqa: E402

REGRESSIONS = Path(__file__).resolve().parent / "fuzz_regressions"

# ---------------------------------------------------------------------------------------------
# The space graphs are drawn from

DIMS = (1, 2, 3, 5, 7)
DIM_WEIGHTS = (0.25, 0.25, 0.2, 0.15, 0.15)  # small dims likelier: rank-4 values stay small
LEAF_DTYPES = ("f32", "f16", "bf16", "i32", "i64", "bool")
LEAF_DTYPE_WEIGHTS = (0.62, 0.1, 0.08, 0.07, 0.07, 0.06)
MAX_STEPS = 8          # node steps per graph (guards come on top)
MAX_NUMEL = 2048       # elements of any one value: keeps builds and runs fast
MAX_LEAF_NUMEL = 512
OPS_PER_STEP = 8       # ops tried per step ...
DRAWS_PER_OP = 4       # ... and operand/attribute draws tried per op ...
REPAIRS = 12           # ... each repaired this often where the op's rule blames a part
SKIPPED_OPS = frozenset({"copy"})  # inserted by the compiler itself; not part of the language

MAX_OUTPUTS = 5
SPECIALS_RATE = 0.1    # graphs whose float data include NaN, ±inf, ±0 (see draw_values)
SYMBOLIC_RATE = 0.25   # the command line's passing graphs run again symbolized (see symbolize)
_IDENT = re.compile(r"[A-Za-z_]\w*")
FLOAT_ATTRS = (0.0, 0.5, -0.5, 1.0, 2.0, -1.0, 0.1, 1e-5)
INFIX = {"add": "+", "sub": "-", "mul": "*", "div": "/", "matmul": "@"}

# Operand guards, op -> {operand index: guard}. A guard is inserted as ops in front of a float
# operand (a literal operand is drawn from a matching set instead):
#   positive: exp(tanh(v)), in [1/e, e]: away from zero and from the poles of log, sqrt, 1/x
#   bounded:  tanh(v), in (-1, 1): exponents and long products stay finite
POSITIVE, BOUNDED = "positive", "bounded"
GUARDS: dict[str, dict[int, str]] = {
    "exp": {0: BOUNDED},          # exp of an unbounded value overflows f16 and amplifies error
    "log": {0: POSITIVE},
    "sqrt": {0: POSITIVE},
    "rsqrt": {0: POSITIVE},
    "div": {1: POSITIVE},         # a divisor near 0 turns rounding noise into huge values
    "pow": {0: POSITIVE, 1: BOUNDED},  # a negative base with a fractional exponent is NaN
    "prod": {0: BOUNDED},         # a product of up to 2048 values of [-2, 2] overflows
    "batch_norm": {4: POSITIVE},  # the variance: rsqrt(var + eps) near its pole otherwise
}
GUARD_TEXT = {POSITIVE: "exp(tanh({}))", BOUNDED: "tanh({})"}
LITERALS = {None: (0.5, 2.0, -1.5, 3.0), POSITIVE: (0.5, 2.0, 1.5), BOUNDED: (0.5, -0.5, 0.25)}
INT_LITERALS = {None: (2, 3, -1), POSITIVE: (2, 3), BOUNDED: (0, 1)}

# Index operands: op -> {operand index: rule giving n}. The operand is then a dedicated i64
# input (or param) whose values the runner draws in [-n, n) (negative indices count from the end).
IndexBound = Callable[[Sequence[TensorType], dict], int]
INDEX_OPERANDS: dict[str, dict[int, IndexBound]] = {
    "gather": {1: lambda types, attrs: types[0].shape[attrs["axis"] % types[0].rank]},
}

# Known bugs, reproducer in tests/fuzz_regressions/ -> which nodes hit it: the generator leaves
# those out, so the fuzz tests keep looking for new bugs. Remove an entry once its bug is fixed
# (its reproducer then passes, and the strict xfail of its replay says so).
KnownBug = Callable[[str, Sequence[TensorType], dict], bool]
KNOWN_BUGS: dict[str, KnownBug] = {}  # none open: pad/slice/transpose_scalar.mlg were fixed

# The same for symbolized graphs (see symbolize), by node of the elaborated symbolic graph: a
# graph that hits one is counted as such, and not built.
KNOWN_SYMBOLIC_BUGS: dict[str, Callable[[GraphNode], bool]] = {}

# Ops whose float result jumps (float -> int and float -> bool results are found by dtype).
# Near a jump, float32 and float64 can land on different sides; see compare_outputs.
DISCONTINUOUS_OPS = frozenset({"floor", "ceil", "round", "sign", "trunc", "mod", "fmod",
                               "remainder"})


# ---------------------------------------------------------------------------------------------
# The generated graph


@dataclass
class Leaf:
    """A model input or param. `index_bound` n: an index operand, its values drawn in [-n, n)."""

    name: str
    type: TensorType
    is_param: bool = False
    index_bound: int | None = None


@dataclass
class Node:
    """One op application: its text form and result type. `operands` are names or literals."""

    name: str
    op: str
    operands: list[str]
    attrs: dict[str, Any]
    type: TensorType | None  # None: the op's infer crashed on it (the graph then ends here)
    infix: bool = False
    guard: bool = False

    def expr(self) -> str:
        if self.guard:  # a guard's one operand is its whole expression
            return self.operands[0]
        if self.infix and self.op == "neg":
            return f"-{self.operands[0]}"
        if self.infix:
            return f" {INFIX[self.op]} ".join(self.operands)
        args = self.operands + [f"{k}={format_attr(v)}" for k, v in self.attrs.items()]
        return f"{self.op}({', '.join(args)})"


@dataclass
class FuzzGraph:
    """A generated model: leaves, nodes in order, and the names marked as outputs."""

    leaves: list[Leaf] = field(default_factory=list)
    nodes: list[Node] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    inline_outputs: set[str] = field(default_factory=set)  # written `output t3 = expr`
    renamed_outputs: set[str] = field(default_factory=set)  # leaves: `output a0_out = a0`
    data_seed: int = 0
    specials: bool = False  # NaN, ±inf and ±0 among the float inputs and weights
    infer_crash: str | None = None  # an op's infer raised something other than OpTypeError
    # a symbolized graph (see symbolize): `dim` statements (name -> bound, None: unbounded),
    # and the symbols' values to run it at, the first being the sizes they replaced
    dims: dict[str, int | None] = field(default_factory=dict)
    runs: tuple[dict[str, int], ...] = ()

    @property
    def params(self) -> list[Leaf]:
        return [leaf for leaf in self.leaves if leaf.is_param]

    @property
    def symbols(self) -> frozenset[str]:
        return frozenset().union(*(leaf.type.symbols for leaf in self.leaves))

    def ops(self) -> list[str]:
        return [n.op for n in self.nodes if not n.guard]

    def source(self, weights_file: str = "weights.npz", header: str = "") -> str:
        lines = [header.rstrip("\n")] if header else []
        if self.params:
            lines.append(f'weights "{weights_file}"')
        lines.append("model fuzz {")
        used = self.symbols
        for name, bound in self.dims.items():
            if name in used:  # (pruning may have dropped every input that used it)
                lines.append(f"    dim {name}" + (f" <= {bound}" if bound is not None else ""))
        for leaf in self.leaves:
            kind = "param" if leaf.is_param else "input"
            lines.append(f"    {kind} {leaf.name}: {leaf.type}")
        for n in self.nodes:
            if n.name in self.inline_outputs:
                lines.append(f"    output {n.name} = {n.expr()}")
            else:
                lines.append(f"    {n.name} = {n.expr()}")
        leaves = {leaf.name for leaf in self.leaves}
        for name in self.outputs:
            if name in leaves and name in self.renamed_outputs:
                lines.append(f"    output {name}_out = {name}")
            elif name not in self.inline_outputs:
                lines.append(f"    output {name}")
        lines.append("}")
        return "\n".join(lines) + "\n"

    def _draw(self, rng: np.random.Generator, leaves: list[Leaf], values: dict[str, int],
              index_bounds: dict[str, int]) -> dict[str, np.ndarray]:
        return {leaf.name: draw_values(rng, concrete(leaf.type, values),
                                       index_bounds.get(leaf.name, leaf.index_bound),
                                       self.specials)
                for leaf in leaves}

    def weights(self) -> dict[str, np.ndarray]:
        return self._draw(np.random.default_rng([self.data_seed, 1]), self.params, {}, {})

    def inputs(self, values: dict[str, int] | None = None,
               index_bounds: dict[str, int] | None = None) -> dict[str, np.ndarray]:
        """The input arrays; for a symbolized graph, at these values of its symbols (by default
        its first run's: then they are the arrays of the graph it was made from), with index
        operands drawn within `index_bounds` (by input name) where their range changed."""
        first = self.runs[0] if self.runs else {}
        values = first if values is None else values
        seed = [self.data_seed, 2] + ([] if values == first else
                                      [values[k] for k in sorted(values)])
        return self._draw(np.random.default_rng(seed),
                          [leaf for leaf in self.leaves if not leaf.is_param], values,
                          index_bounds or {})

    def concrete(self) -> FuzzGraph:
        """A symbolized graph as it was before: its first run's values back in every shape."""
        first = self.runs[0] if self.runs else {}
        return replace(self, leaves=[replace(leaf, type=concrete(leaf.type, first))
                                     for leaf in self.leaves], dims={}, runs=())


def concrete(ty: TensorType, values: dict[str, int]) -> TensorType:
    """`ty` with its symbolic dims evaluated at `values`."""
    if ty.is_static:
        return ty
    return TensorType(ty.dtype, tuple(evaluate(d, values) for d in ty.shape))


SPECIAL_VALUES = (np.nan, np.inf, -np.inf, -0.0, 0.0)


def draw_values(rng: np.random.Generator, ty: TensorType, index_bound: int | None = None,
                specials: bool = False):
    """Fresh values: floats in [-2, 2), integers in [-20, 20), random bools; indices in range.
    With `specials`, a fifth of the floats are NaN, ±inf or ±0."""
    shape = ty.shape
    if index_bound is not None:
        return rng.integers(-index_bound, index_bound, size=shape).astype(ty.np_dtype)
    if ty.dtype == "bool":
        return np.asarray(rng.random(shape) < 0.5)
    if ty.dtype in FLOATS:
        x = np.asarray(rng.uniform(-2.0, 2.0, size=shape))
        if specials:
            x = np.where(rng.random(shape) < 0.2, rng.choice(SPECIAL_VALUES, size=shape), x)
        return x.astype(ty.np_dtype)
    return np.asarray(rng.integers(-20, 20, size=shape)).astype(ty.np_dtype)


# ---------------------------------------------------------------------------------------------
# Generation


@dataclass(frozen=True)
class GraphSpec:
    """What a graph is made from: a seed for leaves, outputs and data, and one seed per step."""

    seed: int
    steps: tuple[int, ...]
    focus: str | None = None  # an op to draw far more often than the others

    @staticmethod
    def from_seed(seed: int, focus: str | None = None) -> GraphSpec:
        rng = np.random.default_rng([seed, 0xF022])
        n = int(rng.integers(2, MAX_STEPS + 1))
        return GraphSpec(seed, tuple(int(s) for s in rng.integers(0, 2**32, size=n)), focus)


def _pick(rng: np.random.Generator, seq: Sequence, p=None):
    return seq[int(rng.choice(len(seq), p=p))]


def random_dim(rng: np.random.Generator) -> int:
    return int(rng.choice(DIMS, p=DIM_WEIGHTS))


def random_shape(rng: np.random.Generator, max_numel: int = MAX_LEAF_NUMEL) -> tuple[int, ...]:
    rank = int(rng.choice(5, p=(0.1, 0.25, 0.3, 0.2, 0.15)))
    shape = tuple(random_dim(rng) for _ in range(rank))
    while math.prod(shape) > max_numel:
        shape = shape[1:]
    return shape


def random_dtype(rng: np.random.Generator) -> str:
    return _pick(rng, LEAF_DTYPES, p=LEAF_DTYPE_WEIGHTS)


RELATED = ("same", "suffix", "ones", "contraction", "one_dim", "changed", "kernel", "reversed",
           "random")
RELATED_WEIGHTS = (0.25, 0.2, 0.2, 0.08, 0.08, 0.06, 0.05, 0.04, 0.04)


def related_shape(rng: np.random.Generator, shape: tuple[int, ...]) -> tuple[int, ...]:
    """A shape likely to fit next to `shape` in some op: equal, broadcastable, or sharing dims."""
    rank = len(shape)
    style = _pick(rng, RELATED, p=RELATED_WEIGHTS) if rank else "random"
    if style == "same":
        return shape
    if style == "suffix":  # broadcasts from the right, some dims 1 as well
        part = shape[int(rng.integers(1, rank)):] if rank > 1 else ()
        return tuple(1 if rng.random() < 0.2 else d for d in part)
    if style == "ones":  # broadcasts
        return tuple(1 if rng.random() < 0.4 else d for d in shape)
    if style == "contraction":  # [..., K] @ [..., K, N]; linear's [OUT, IN]
        d = random_dim(rng)
        return shape[:-2] + (shape[-1], d) if rng.random() < 0.6 else (d, shape[-1])
    if style == "one_dim":  # per-channel vectors (batch_norm, bias)
        return (shape[int(rng.integers(0, rank))],)
    if style == "changed":  # concat partners
        k = int(rng.integers(0, rank))
        return shape[:k] + (random_dim(rng),) + shape[k + 1:]
    if style == "kernel":  # one dim kept, the others small: convolution kernels
        k = int(rng.integers(0, rank))
        return tuple(d if j == k else int(rng.integers(1, 4)) for j, d in enumerate(shape))
    if style == "reversed":
        return tuple(reversed(shape))
    return random_shape(rng)


def _axes(rng: np.random.Generator, rank: int, length: int) -> tuple[int, ...]:
    if rank == 0:
        return ()
    axes = [int(a) for a in rng.permutation(rank)[:min(length, rank)]]
    if rng.random() < 0.7:
        axes.sort()
    return tuple(a - rank if rng.random() < 0.3 else a for a in axes)


def _factor_shape(rng: np.random.Generator, numel: int) -> tuple[int, ...]:
    dims, left = [], numel
    for _ in range(int(rng.integers(0, 4))):
        divisors = [d for d in (2, 3, 5, 7) if left % d == 0]
        if not divisors:
            break
        d = int(rng.choice(divisors))
        dims.append(d)
        left //= d
    dims.append(left)
    order = [int(i) for i in rng.permutation(len(dims))]
    shape = [dims[i] for i in order]
    if rng.random() < 0.25:
        shape[int(rng.integers(0, len(shape)))] = -1
    return tuple(shape)


def draw_attr(rng: np.random.Generator, attr: ops.Attr, x: TensorType | None, length: int):
    """A value for `attr` from a small space per kind, shaped by the first operand `x`.

    `length` is shared by the tuple attributes of one draw, so that starts/ends/axes agree."""
    rank = x.rank if x is not None else 0
    name = attr.name
    if attr.choices:
        return _pick(rng, attr.choices)
    if attr.kind == "bool":
        return bool(rng.random() < 0.5)
    if attr.kind == "float":
        return float(_pick(rng, FLOAT_ATTRS))
    if attr.kind == "floats":
        return tuple(float(_pick(rng, FLOAT_ATTRS)) for _ in range(max(length, 1)))
    if attr.kind == "str":
        return _pick(rng, list(DTYPES))
    if attr.kind == "int":
        if rank and rng.random() < 0.75:
            return int(rng.integers(-rank, rank))
        return int(_pick(rng, (0, 1, 2, 3, -1)))
    # 'ints': styles by likely meaning; the op's infer sorts out which fit
    axis_like = any(w in name for w in ("ax", "perm", "dim"))
    style = int(rng.integers(0, 6))
    if axis_like and style < 3:
        if "perm" in name or (style == 2 and rank):
            return tuple(int(a) for a in rng.permutation(rank))
        return _axes(rng, rank, length)
    if style == 0 and x is not None:
        return _factor_shape(rng, x.numel)
    if style == 1 and x is not None:  # a broadcast target
        target = tuple(random_dim(rng) if d == 1 and rng.random() < 0.6 else d
                       for d in x.shape)
        lead = tuple(random_dim(rng) for _ in range(int(rng.integers(0, 2))))
        return lead + target
    if style == 2 and x is not None and rank:  # positions along the dims: starts, ends
        dims = x.shape[-length:] if length else ()
        return tuple(int(rng.integers(-d, d + 1)) for d in dims)
    n = _pick(rng, (length, 1, 2, 4, 2 * rank)) if length else _pick(rng, (1, 2, 4))
    return tuple(int(_pick(rng, (0, 1, 1, 2, 3, -1))) for _ in range(n))


@dataclass
class Slot:
    """An operand being drawn: a pool value's name, a fresh leaf, or a literal."""

    name: str
    type: TensorType
    leaf: Leaf | None = None
    literal: bool = False


class _Builder:
    """Grows one graph; `step` adds one node (with its guards and fresh leaves) or nothing."""

    def __init__(self, seed: int):
        self.graph = FuzzGraph(data_seed=seed)
        self.pool: list[tuple[str, TensorType, bool]] = []  # name, type, is a node result
        self.leaf_rng = np.random.default_rng([seed, 3])

    def new_leaf(self, rng: np.random.Generator, ty: TensorType) -> Leaf:
        """A fresh input (or, a quarter of the time, param); named when it is added."""
        is_param = bool(rng.random() < 0.25)
        return Leaf("p" if is_param else "a", ty, is_param)

    def add_leaf(self, leaf: Leaf) -> None:
        self.graph.leaves.append(leaf)
        if leaf.index_bound is None:  # index operands serve their op only
            self.pool.append((leaf.name, leaf.type, False))

    def start(self) -> None:
        rng = self.leaf_rng
        for _ in range(int(rng.integers(1, 3))):
            leaf = self.new_leaf(rng, TensorType(random_dtype(rng), random_shape(rng)))
            leaf.name += str(len(self.graph.leaves))
            self.add_leaf(leaf)

    def pick_value(self, rng: np.random.Generator) -> tuple[str, TensorType]:
        # recent node results are likelier, so graphs grow deep as well as wide
        weights = np.array([1.0 + (2.0 + i / 2 if is_node else 0.0)
                            for i, (_, _, is_node) in enumerate(self.pool)])
        name, ty, _ = self.pool[int(rng.choice(len(self.pool), p=weights / weights.sum()))]
        return name, ty

    def step(self, seed: int, focus: str | None = None) -> None:
        rng = np.random.default_rng([seed, 4])
        names = sorted(n for n in ops.REGISTRY if n not in SKIPPED_OPS)
        for _ in range(OPS_PER_STEP):
            op = ops.REGISTRY[focus if focus and rng.random() < 0.7 else _pick(rng, names)]
            for _ in range(DRAWS_PER_OP):
                if self.try_op(rng, op):
                    return

    def draw_slot(self, rng: np.random.Generator, op: ops.OpDef, i: int,
                  slots: list[Slot]) -> Slot:
        """Operand i of `op`: a pool value, a fresh leaf shaped after an earlier operand, or a
        literal (elementwise ops only; typed later)."""
        if i in INDEX_OPERANDS.get(op.name, {}):
            ty = TensorType(_pick(rng, ("i64", "i32")), random_shape(rng, 64)[:2])
            return Slot("", ty, leaf=self.new_leaf(rng, ty))
        r = rng.random()
        known = [s.type for s in slots[:i] if not s.literal]
        if not known and r < 0.2:  # a first operand of another dtype: where's bool condition
            _, ty = self.pick_value(rng)
            ty = TensorType(random_dtype(rng), related_shape(rng, ty.shape))
            if ty.numel > MAX_LEAF_NUMEL:
                ty = TensorType(ty.dtype, ())
            return Slot("", ty, leaf=self.new_leaf(rng, ty))
        if not known or r < 0.4:
            name, ty = self.pick_value(rng)
            return Slot(name, ty)
        if r < 0.9 or op.kind != "elementwise":
            if i >= 2 and rng.random() < 0.4 and not slots[i - 1].literal:
                ty = slots[i - 1].type  # many ops take several operands of one type
            else:
                ref = known[int(rng.integers(0, len(known)))]
                dtype = ref.dtype if rng.random() < 0.85 else random_dtype(rng)
                ty = TensorType(dtype, related_shape(rng, ref.shape))
            if ty.numel > MAX_LEAF_NUMEL:
                ty = TensorType(ty.dtype, ())
            return Slot("", ty, leaf=self.new_leaf(rng, ty))
        return Slot("", TensorType("f32", ()), literal=True)

    def try_op(self, rng: np.random.Generator, op: ops.OpDef) -> bool:
        """Draw operands and attributes for `op`, redrawing the operand or attribute that the
        op's rule blames, a few times; True if a node was added."""
        if isinstance(op.arity, int):
            n = op.arity
        else:
            lo, hi = op.arity
            n = int(rng.integers(lo, max(lo, min(hi if hi is not None else 3, 3)) + 1))
        guards = GUARDS.get(op.name, {})
        index_rules = INDEX_OPERANDS.get(op.name, {})
        slots: list[Slot] = []
        for i in range(n):
            slots.append(self.draw_slot(rng, op, i, slots))
        x = slots[0].type
        length = int(rng.integers(0, x.rank + 1))
        attrs = {a.name: a for a in op.attrs}
        given = {a.name: draw_attr(rng, a, x, length) for a in op.attrs
                 if a.required or rng.random() < 0.5}
        for _ in range(REPAIRS):
            # a literal takes the dtype of the first non-bool tensor operand (the language's rule)
            like = next((s.type.dtype for s in slots if not s.literal and s.type.dtype != "bool"),
                        None)
            if like is None and any(s.literal for s in slots):
                return False
            for i, s in enumerate(slots):
                if s.literal:
                    guard = guards.get(i)
                    value = _pick(rng, LITERALS[guard] if like in FLOATS else INT_LITERALS[guard])
                    s.name = repr(float(value)) if like in FLOATS else str(value)
                    s.type = TensorType(like, ())
            types = [s.type for s in slots]
            try:
                bound = op.bind_attrs(given)
                result = op.infer(tuple(types), bound)
                break
            except ops.OpTypeError as e:
                if e.arg is not None and 0 <= e.arg < n and e.arg not in index_rules:
                    slots[e.arg] = self.draw_slot(rng, op, e.arg, slots)
                elif e.attr in attrs:
                    given[e.attr] = draw_attr(rng, attrs[e.attr], slots[0].type, length)
                elif n > 1:  # no culprit named (shapes that do not broadcast): the last operand
                    k = max(i for i in range(n) if i not in index_rules)
                    slots[k] = self.draw_slot(rng, op, k, slots)
                else:
                    return False
            except Exception as e:  # a crash in the op's own rule: the compiler crashes too
                self.graph.infer_crash = f"{op.name}: {type(e).__name__}: {e}"
                result = None
                break
        else:
            return False
        if result is not None and any(hits(op.name, types, bound)
                                      for hits in KNOWN_BUGS.values()):
            return False
        if result is not None and result.numel > MAX_NUMEL:
            return False
        if any(i < n and not slots[i].literal and types[i].dtype not in FLOATS
               for i in guards):
            return False  # the guards are float ops
        for i, rule in index_rules.items():
            if result is not None:
                slots[i].leaf.index_bound = rule(types, bound)
        for s in slots:
            if s.leaf is not None:  # named now, in the order they are declared
                s.leaf.name = s.name = f"{s.leaf.name[0]}{len(self.graph.leaves)}"
                self.add_leaf(s.leaf)
        operands = [s.name for s in slots]
        literal_slots = [i for i, s in enumerate(slots) if s.literal]
        # guards: in front of tensor operands (literals were drawn from a matching set)
        guarded = list(operands)
        guard_nodes = []
        for i, guard in guards.items():
            if i >= n or i in literal_slots:
                continue
            name = f"g{len(self.graph.nodes) + len(guard_nodes)}"
            text = GUARD_TEXT[guard].format(operands[i])
            guard_nodes.append(Node(name, "guard", [text], {}, types[i], guard=True))
            guarded[i] = name
        self.graph.nodes.extend(guard_nodes)
        name = f"t{len(self.graph.nodes)}"
        infix = op.name in INFIX or op.name == "neg"
        node = Node(name, op.name, guarded, given, result,
                    infix=infix and not given and rng.random() < 0.5)
        self.graph.nodes.append(node)
        if result is not None:
            self.pool.append((name, result, True))
        return True


def generate(spec: GraphSpec) -> FuzzGraph:
    """The graph of a spec: leaves, then one step per seed, then the outputs."""
    b = _Builder(spec.seed)
    b.start()
    for s in spec.steps:
        b.step(s, spec.focus)
        if b.graph.infer_crash:
            break
    g = b.graph
    rng = np.random.default_rng([spec.seed, 5])
    g.specials = bool(rng.random() < SPECIALS_RATE)
    main = [n for n in g.nodes if not n.guard]
    if g.infer_crash:
        g.outputs = [main[-1].name]
    elif not main:
        g.outputs = [g.leaves[0].name]  # an input as output: the compiler inserts a copy
    else:
        # every sink is an output, so that no node is dead code (at most MAX_OUTPUTS: the
        # latest); now and then an intermediate value or a leaf as well
        used = {name for n in g.nodes for o in n.operands for name in _IDENT.findall(o)}
        sinks = [n.name for n in main if n.name not in used][-MAX_OUTPUTS:]
        extra = [n.name for n in main if n.name not in sinks]
        extra += [leaf.name for leaf in g.leaves if leaf.index_bound is None]
        chosen = [extra[int(i)] for i in rng.permutation(len(extra))[:int(rng.integers(0, 2))]]
        g.outputs = sinks + chosen
    for n in main:
        if n.name in g.outputs and rng.random() < 0.5:
            g.inline_outputs.add(n.name)
    for leaf in g.leaves:
        if leaf.name in g.outputs and rng.random() < 0.5:
            g.renamed_outputs.add(leaf.name)
    return g


# ---------------------------------------------------------------------------------------------
# Symbolic dims: a generated graph with some input dims turned into run-time symbols


def symbolize(g: FuzzGraph) -> FuzzGraph | None:
    """`g` with the input dims of one size (a quarter of the time, also those of a second
    size) made a symbol, N (and S); None when no input has a dim.

    The size is the leading dim of the first input that has one, or any input dim; mostly one
    that no param's shape has. Mostly every dim of that size in the inputs' shapes becomes the
    symbol, else a random part of them: shapes that then agree only at that size must be
    refused. Params stay static (the language requires it) and attributes keep their values,
    so an op joining the symbol to a param's dim, or an attribute that fits the original size
    only, must be refused too. A third of the symbols get no `dim` statement, a sixth an
    unbounded one, the others a bound at or above the size. The graph is run at the original
    sizes (on the same arrays as `g`) and at up to three others within the bounds: a build
    costs far more than a run."""
    if g.infer_crash:
        return None
    rng = np.random.default_rng([g.data_seed, 6])
    inputs = [leaf for leaf in g.leaves if not leaf.is_param and leaf.type.rank]
    if not inputs:
        return None
    dims = [d for leaf in inputs for d in leaf.type.shape]
    in_params = {d for leaf in g.params for d in leaf.type.shape}
    if rng.random() < 0.75 and set(dims) - in_params:
        dims = [d for d in dims if d not in in_params]
    lead = inputs[0].type.shape[0]
    sizes = [lead if lead in dims and rng.random() < 0.6 else _pick(rng, dims)]
    others = sorted(set(dims) - set(sizes))
    if others and rng.random() < 0.25:
        sizes.append(_pick(rng, others))
    names = {size: name for name, size in zip(("N", "S"), sizes)}
    share = 1.0 if rng.random() < 0.6 else 0.6
    occurrences = [(leaf.name, k, d) for leaf in inputs for k, d in enumerate(leaf.type.shape)
                   if d in names]
    chosen = {(leaf, k) for leaf, k, _ in occurrences if rng.random() < share}
    for size in names:  # each symbol stands somewhere: its first occurrence at least
        chosen.add(next((leaf, k) for leaf, k, d in occurrences if d == size))
    symbolic = {leaf.name for leaf in inputs}
    leaves = [_symbolized(leaf, chosen, names) if leaf.name in symbolic else leaf
              for leaf in g.leaves]
    declared: dict[str, int | None] = {}
    for size, name in names.items():
        r = rng.random()
        if r >= 1 / 3:
            declared[name] = None if r < 0.5 else int(_pick(rng, (size, size + 1, 2 * size, 64)))
    first = {name: size for size, name in names.items()}
    return replace(g, leaves=leaves, dims=declared,
                   runs=symbol_runs(rng, first, {n: declared.get(n) for n in first}))


def _symbolized(leaf: Leaf, chosen: set[tuple[str, int]], names: dict[int, str]) -> Leaf:
    """`leaf` with its chosen dims (leaf name, axis) replaced by the symbol of their size."""
    shape = tuple(symbol(names[d]) if (leaf.name, k) in chosen else d
                  for k, d in enumerate(leaf.type.shape))
    return replace(leaf, type=TensorType(leaf.type.dtype, shape))


def symbol_runs(rng: np.random.Generator, first: dict[str, int],
                bounds: dict[str, int | None], extra: int = 3) -> tuple[dict[str, int], ...]:
    """`first`, then up to `extra` other values of the symbols within their bounds: 1, 2, one
    off the original size, or twice it (small, so that values stay small)."""
    runs = [dict(first)]
    for _ in range(extra):
        run = {}
        for name, size in first.items():
            limit = bounds.get(name) or 2 * size
            choices = sorted({1, 2, size - 1, size + 1, 2 * size} - {size, 0})
            choices = [c for c in choices if c <= limit] or [size]
            run[name] = int(_pick(rng, choices))
        if run not in runs:
            runs.append(run)
    return tuple(runs)


# ---------------------------------------------------------------------------------------------
# Running and judging


@dataclass
class Failure:
    """Why a graph failed: `kind` is rejected (a valid graph refused), crash (the compiler
    raised), run (the compiled model failed), oracle (the interpreter failed) or mismatch.
    A symbolized graph's failure says at which values of its symbols (`at`), on which
    `inputs`: its reproducer saves those."""

    kind: str
    message: str
    at: dict[str, int] | None = None
    inputs: dict[str, np.ndarray] | None = field(default=None, repr=False)

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"


# rtol and atol factor (atol = factor * (1 + max|expected|)) by the narrowest float in an
# output's cone: f16 and bf16 results are rounded at every node, where float32 and float64
# computations can round to neighbouring values.
TOLERANCES = {"f32": (1e-4, 1e-5), "f16": (1e-2, 1e-2), "bf16": (5e-2, 5e-2)}


@dataclass
class OutputCheck:
    """How one output is judged, from the ops and dtypes that reach it."""

    float_dtypes: set[str]
    discontinuous: bool

    def tolerance(self) -> tuple[float, float]:
        worst = max((TOLERANCES[d] for d in self.float_dtypes), default=TOLERANCES["f32"])
        return worst


def output_checks(graph: Graph) -> dict[str, OutputCheck]:
    producers = graph.producers()
    result = {}
    for name, value in graph.outputs:
        dtypes, discontinuous, seen, todo = set(), False, set(), [value]
        while todo:
            v = todo.pop()
            if v.uid in seen:
                continue
            seen.add(v.uid)
            if v.type.dtype in FLOATS:
                dtypes.add(v.type.dtype)
            node = producers.get(v.uid)
            if node is None:
                continue
            float_in = any(i.type.dtype in FLOATS for i in node.inputs)
            if node.op in DISCONTINUOUS_OPS or (float_in and v.type.dtype not in FLOATS):
                discontinuous = True
            todo.extend(node.inputs)
        result[name] = OutputCheck(dtypes, discontinuous)
    return result


def compare(got: np.ndarray, want: np.ndarray, rtol: float, atol_factor: float) -> str | None:
    """None if `got` matches `want`, else a description of the worst element."""
    if got.shape != want.shape or got.dtype != want.dtype:
        return f"got {got.dtype}{list(got.shape)}, expected {want.dtype}{list(want.shape)}"
    if want.dtype.kind not in "f" and str(want.dtype) != "bfloat16":
        bad = got != want
        if not bad.any():
            return None
        k = tuple(int(i) for i in np.argwhere(bad)[0])
        return f"{int(bad.sum())} of {bad.size} differ; at {k}: got {got[k]}, expected {want[k]}"
    g, w = got.astype(np.float64), want.astype(np.float64)
    finite = np.isfinite(w)
    scale = float(np.max(np.abs(w[finite]))) if finite.any() else 0.0
    atol = atol_factor * (1.0 + scale)
    with np.errstate(invalid="ignore"):
        close = np.abs(g - w) <= atol + rtol * np.abs(w)
    close |= (np.isnan(g) & np.isnan(w)) | (np.isinf(w) & (g == w))
    if close.all():
        return None
    err = np.where(close, 0.0, np.nan_to_num(np.abs(g - w), nan=np.inf, posinf=np.inf))
    k = tuple(int(i) for i in np.unravel_index(int(np.argmax(err)), err.shape))
    return (f"{int((~close).sum())} of {close.size} differ beyond rtol {rtol:g}, atol {atol:.3g}; "
            f"worst at {k}: got {g[k]!r}, expected {w[k]!r}")


def compare_outputs(graph: Graph, got: dict[str, np.ndarray], inputs: dict[str, np.ndarray],
                    precise: dict[str, np.ndarray] | None = None) -> dict[str, str]:
    """Each output that differs from the reference -> why.

    The reference is the float64 interpreter. An output reached by a discontinuous op (a
    comparison, argmax, a float -> int cast) may also match the float32 interpreter instead,
    which rounds as the compiled code does: at a near-tie float64 can decide the other way. (In
    practice no such flip was seen in ~1000 discontinuous outputs of 1500 graphs; the second
    chance costs nothing until one happens.)"""
    checks = output_checks(graph)
    if precise is None:
        precise = interpret_graph(graph, inputs, precise=True)
    single = None
    bad = {}
    for name, check in checks.items():
        problem = compare(got[name], precise[name], *check.tolerance())
        if problem and check.discontinuous:
            if single is None:
                single = interpret_graph(graph, inputs, precise=False)
            if compare(got[name], single[name], *check.tolerance()) is None:
                problem = None
        if problem:
            bad[name] = problem
    return bad


def check_model(mlg: Path, inputs: dict[str, np.ndarray], workdir: Path) -> Failure | None:
    """Build `mlg`, run it on `inputs`, compare with the interpreter; None when all is well."""
    try:
        graph = elaborate(parse_file(mlg))
    except CompileError as e:
        return Failure("rejected", e.format().splitlines()[0])
    except Exception as e:
        return Failure("crash", f"elaboration: {type(e).__name__}: {e}")
    inputs = _typed_inputs(graph, inputs)
    try:
        so = aotml.build(mlg, workdir / f"{mlg.stem}.so")
    except CompileError as e:
        return Failure("rejected", f"build: {e.format().splitlines()[0]}")
    except Exception as e:
        return Failure("crash", f"build: {type(e).__name__}: {_first_line(e)}")
    return check_run(mlg, aotml.load(so), graph, inputs)


def check_run(mlg: Path, model: aotml.Model, graph: Graph, inputs: dict[str, np.ndarray],
              precise: dict[str, np.ndarray] | None = None) -> Failure | None:
    """Run the built `model` on `inputs` and compare with the interpreter (or with `precise`,
    its result computed already); None when all is well."""
    try:
        got = model.run(inputs)
    except Exception as e:
        return Failure("run", f"{type(e).__name__}: {_first_line(e)}")
    names = [name for name, _ in graph.outputs]
    if list(got) != names:
        return Failure("mismatch", f"the compiled model's outputs are named {list(got)}; "
                       f"the source's are {names}")
    try:
        if precise is None:
            precise = interpret_graph(graph, inputs, precise=True)
        bad = compare_outputs(graph, got, inputs, precise)
    except Exception as e:
        return Failure("oracle", f"{type(e).__name__}: {_first_line(e)}")
    if not bad:
        return None
    return Failure("mismatch", _blame(mlg, graph, inputs, bad) + "; ".join(
        f"output {name}: {why}" for name, why in bad.items()))


def _blame(mlg: Path, graph: Graph, inputs, bad: dict[str, str]) -> str:
    """Whether the optimized graph already differs (the passes) or only the compiled code."""
    from aotml.driver import frontend

    try:
        optimized = interpret_graph(frontend(mlg), inputs, precise=True)
        still = compare_outputs(graph, optimized, inputs)
    except Exception as e:
        return f"[the optimized graph fails to interpret: {type(e).__name__}] "
    if any(name in still for name in bad):
        return "[graph passes: interpreting the optimized graph differs from the reference too] "
    return ("[compiled code or the reference itself: interpreting the optimized graph agrees "
            "with the reference] ")


def _first_line(e: BaseException) -> str:
    return (str(e).splitlines() or [""])[0]


def _typed_inputs(graph: Graph, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Arrays from an .npz, with bf16 bits (saved by numpy as V2) viewed as bf16 again."""
    types = {v.name: v.type for v in graph.inputs}
    out = {}
    for name, a in arrays.items():
        ty = types.get(name)
        if ty is not None and ty.dtype == "bf16" and a.dtype != ty.np_dtype:
            a = a.view(ty.np_dtype)
        out[name] = a
    return out


def write_graph(g: FuzzGraph, folder: Path, stem: str = "g", header: str = "") -> Path:
    """The graph as `stem.mlg` (and `stem.weights.npz`) in `folder`; returns the .mlg path."""
    weights_file = f"{stem}.weights.npz"
    if g.params:
        np.savez(folder / weights_file, **g.weights())
    path = folder / f"{stem}.mlg"
    path.write_text(g.source(weights_file, header))
    return path


def run_graph(g: FuzzGraph, workdir: Path) -> Failure | None:
    """Build and check one generated graph in `workdir`."""
    if g.symbols:
        return run_symbolic(g, workdir).failure
    if g.infer_crash:
        # elaboration calls the same rule: this is the reproducer, whatever build says
        failure = check_model(write_graph(g, workdir), g.inputs(), workdir)
        return failure or Failure("crash", f"infer raised: {g.infer_crash}")
    return check_model(write_graph(g, workdir), g.inputs(), workdir)


def run_spec(spec: GraphSpec, workdir: Path | None = None) -> tuple[FuzzGraph, Failure | None]:
    g = generate(spec)
    if workdir is not None:
        return g, run_graph(g, workdir)
    with tempfile.TemporaryDirectory(prefix="aotml-fuzz-") as tmp:
        return g, run_graph(g, Path(tmp))


# ---------------------------------------------------------------------------------------------
# Running a symbolized graph

# The compiler's own refusal of a symbolic dim an op's rule cannot handle (at elaboration, and
# at lowering). A symbolized graph may also meet an op's ordinary type error: a partly
# symbolized shape against the same size left static, an attribute that fits one size only.
SYMBOLIC_ERRORS = re.compile(r"^'(\w+)' (does not support these symbolic dims|cannot be "
                             r"compiled for the symbolic shape)")
MAX_SYMBOLIC_NUMEL = 8 * MAX_NUMEL  # a run at larger sizes whose values grow past this: skipped
_STATEMENT = re.compile(r"^\s*(?:output\s+)?(\w+)\s*=")


@dataclass
class Rejection:
    """A symbolized graph not checked: refused by the compiler with a CompileError (`kind`
    "symbolic": its symbolic-dims error; "type": an op's ordinary type error), or hitting a
    known bug ("known bug"); the op at fault, where it can be told."""

    op: str
    kind: str
    message: str


@dataclass
class SymbolicOutcome:
    """How a symbolized graph fared: refused, failed, or compiled and checked at `checked`
    values of its symbols."""

    rejected: Rejection | None = None
    failure: Failure | None = None
    checked: int = 0


def rejection(g: FuzzGraph, e: CompileError) -> Rejection:
    """What refused: the op the symbolic-dims error names, else the node on the error's line."""
    m = SYMBOLIC_ERRORS.match(e.message)
    if m:
        return Rejection(m.group(1), "symbolic", e.message)
    op = "?"
    if e.span is not None:
        line = _STATEMENT.match(e.span.source.line(e.span.line))
        ops_by_name = {n.name: n.op for n in g.nodes}
        op = ops_by_name.get(line.group(1), "?") if line else "?"
    return Rejection(op, "type", e.message)


def known_symbolic_bug(graph: Graph) -> Rejection | None:
    for stem, hits in KNOWN_SYMBOLIC_BUGS.items():
        node = next((n for n in graph.nodes if hits(n)), None)
        if node is not None:
            return Rejection(node.op, "known bug", f"hits the known bug of {stem}")
    return None


def build_symbolic(g: FuzzGraph, mlg: Path, workdir: Path):
    """Elaborate and build a symbolized graph: (graph, model), or a Rejection, or a Failure.
    A CompileError is an accepted refusal here; any other exception is a crash."""
    try:
        graph = elaborate(parse_file(mlg))
    except CompileError as e:
        return rejection(g, e)
    except Exception as e:
        return Failure("crash", f"elaboration: {type(e).__name__}: {_first_line(e)}")
    known = known_symbolic_bug(graph)
    if known is not None:
        return known
    try:
        so = aotml.build(mlg, workdir / f"{mlg.stem}.so")
    except CompileError as e:
        return rejection(g, e)
    except Exception as e:
        return Failure("crash", f"build: {type(e).__name__}: {_first_line(e)}")
    try:
        return graph, aotml.load(so)
    except Exception as e:
        return Failure("run", f"load: {type(e).__name__}: {_first_line(e)}")


def index_bounds(graph: Graph, values: dict[str, int]) -> dict[str, int]:
    """Each index operand's range n (values in [-n, n)) at these values of the symbols, by
    input or param name: the dim it indexes may be symbolic."""
    leaves = {v.uid: v.name for v in graph.inputs} | {p.value.uid: p.value.name
                                                      for p in graph.params}
    bounds: dict[str, int] = {}
    for n in graph.nodes:
        for i, rule in INDEX_OPERANDS.get(n.op, {}).items():
            name = leaves.get(n.inputs[i].uid)
            if name is not None:
                size = rule([concrete(v.type, values) for v in n.inputs], n.attr)
                bounds[name] = min(size, bounds.get(name, size))
    return bounds


def _runnable(g: FuzzGraph, graph: Graph, values: dict[str, int]) -> bool:
    """Whether the graph can run at these values: every value stays small, and no param's
    indices (drawn for the first run's sizes) fall out of a range that shrank."""
    if any(evaluate(n.result.type.numel, values) > MAX_SYMBOLIC_NUMEL for n in graph.nodes):
        return False
    bounds = index_bounds(graph, values)
    return all(bounds.get(p.name, p.index_bound) >= p.index_bound
               for p in g.params if p.index_bound is not None)


def _at(values: dict[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items())


def run_symbolic(g: FuzzGraph, workdir: Path) -> SymbolicOutcome:
    """Build a symbolized graph once and check it at each of its runs' sizes: the first on the
    arrays of the graph it was made from (whose reference must not change either), the others
    on fresh arrays of their shapes. Refusal with a CompileError is accepted."""
    mlg = write_graph(g, workdir, "sym")
    built = build_symbolic(g, mlg, workdir)
    if isinstance(built, Rejection):
        return SymbolicOutcome(rejected=built)
    if isinstance(built, Failure):
        built.at, built.inputs = g.runs[0], g.inputs()
        return SymbolicOutcome(failure=built)
    graph, model = built
    checked = 0
    for k, values in enumerate(g.runs):
        if k and not _runnable(g, graph, values):
            continue
        inputs = g.inputs() if k == 0 else g.inputs(values, index_bounds(graph, values))
        failure = _check_symbolic_run(g, mlg, model, graph, inputs, first=k == 0, workdir=workdir)
        if failure is not None:
            failure.message = f"at {_at(values)}: {failure.message}"
            failure.at, failure.inputs = values, inputs
            return SymbolicOutcome(failure=failure, checked=checked)
        checked += 1
    return SymbolicOutcome(checked=checked)


def _check_symbolic_run(g: FuzzGraph, mlg: Path, model: aotml.Model, graph: Graph,
                        inputs: dict[str, np.ndarray], first: bool,
                        workdir: Path) -> Failure | None:
    """One run of a symbolized graph. The reference comes first: where it refuses the sizes,
    the compiler accepted a graph that does not hold at them (an attribute or a rule that fits
    the original size only), whatever the compiled code does."""
    try:
        precise = interpret_graph(graph, inputs, precise=True)
    except Exception as e:
        why = "" if first else ("the compiler accepted the graph, but it does not hold at "
                                "these sizes: ")
        return Failure("oracle", f"{why}{type(e).__name__}: {_first_line(e)}")
    if first:  # the same arrays as the graph it was made from: the same reference
        static = write_graph(g.concrete(), workdir, "static")
        try:
            before = interpret_graph(elaborate(parse_file(static)), inputs, precise=True)
        except Exception as e:
            return Failure("oracle", f"the static graph: {type(e).__name__}: {_first_line(e)}")
        bad = {name: why for name in before
               if (why := compare(precise[name], before[name], 0.0, 0.0))}
        if bad:
            return Failure("oracle", "the symbolic graph's reference differs from the static "
                           "graph's: " + "; ".join(f"output {n}: {w}" for n, w in bad.items()))
    return check_run(mlg, model, graph, inputs, precise)


def run_symbolic_spec(spec: GraphSpec) -> tuple[FuzzGraph, Failure | None]:
    """The symbolized graph of a spec and its failure. None as the failure where the graph
    cannot be symbolized or its static form fails already (a bug that is not about symbols):
    shrinking a symbolic failure keeps to symbolic failures."""
    g, failure = run_spec(spec)
    s = symbolize(g) if failure is None else None
    if s is None:
        return g, None
    with tempfile.TemporaryDirectory(prefix="aotml-fuzz-") as tmp:
        return s, run_symbolic(s, Path(tmp)).failure


# ---------------------------------------------------------------------------------------------
# Reproducers: tests/fuzz_regressions/STEM.{mlg,json,weights.npz,inputs.npz}


def save_reproducer(g: FuzzGraph, failure: Failure, found_by: str,
                    folder: Path = REGRESSIONS) -> Path:
    """Write a failing graph with its weights, inputs and a JSON record; returns the .mlg.
    A symbolized graph's inputs are those it failed on: their shapes give the symbols' values,
    which the record names too."""
    inputs = failure.inputs if failure.inputs is not None else g.inputs()
    digest = hashlib.sha256(g.source("w").encode())
    for name in sorted(inputs):
        digest.update(name.encode() + inputs[name].tobytes())
    stem = f"graph_{digest.hexdigest()[:10]}"
    folder.mkdir(parents=True, exist_ok=True)
    words = textwrap.wrap(str(failure), 96, break_long_words=True)[:6]
    header = "\n".join(f"# {line}" for line in [f"fuzz reproducer ({stem}.json):", *words])
    path = write_graph(g, folder, stem, header)
    if inputs:
        np.savez(folder / f"{stem}.inputs.npz", **inputs)
    meta = {"kind": "differential", "found_by": found_by, "failure": str(failure),
            "xfail": None}
    if g.symbols:
        meta["symbolic"] = failure.at or g.runs[0]
        meta["shapes"] = {name: list(a.shape) for name, a in inputs.items()}
    (folder / f"{stem}.json").write_text(json.dumps(meta, indent=2) + "\n")
    return path


def save_check_reproducer(data: bytes, failure: str, found_by: str, build: bool = False,
                          companions: dict[str, bytes] | None = None,
                          folder: Path = REGRESSIONS) -> Path:
    """Write source bytes on which `aotml check` (or a build) failed, with a JSON record. With
    `companions` (the files the source names, by name) all go into a folder of their own."""
    stem = f"check_{hashlib.sha256(data).hexdigest()[:10]}"
    if companions:
        folder = folder / stem
        stem = "source"
        for name, content in companions.items():
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(content)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}.mlg"
    path.write_bytes(data)
    meta = {"kind": "check", "found_by": found_by, "failure": failure, "build": build,
            "xfail": None}
    (folder / f"{stem}.json").write_text(json.dumps(meta, indent=2) + "\n")
    return path


def reproducers(folder: Path = REGRESSIONS) -> list[Path]:
    """The saved reproducers: STEM.mlg files, and source.mlg in folders of their own."""
    return sorted(folder.glob("*.mlg")) + sorted(folder.glob("*/source.mlg"))


def load_inputs(mlg: Path) -> dict[str, np.ndarray]:
    path = mlg.with_name(f"{mlg.stem}.inputs.npz")
    if not path.exists():
        return {}
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


# ---------------------------------------------------------------------------------------------
# `aotml check` in-process, judged: success, or a located user error


LOCATED = re.compile(r"^(?P<path>.+):(?P<line>\d+):(?P<col>\d+): error: \S")


def check_cli(path: Path) -> str | None:
    """Run `aotml check path` in-process; None if it succeeded or printed a proper user error
    (`path:L:C: error: ...` pointing inside the file, or `error: ...` for file-level problems),
    else what went wrong."""
    from aotml.cli import main

    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(["check", str(path)])
    except BaseException as e:  # noqa: B036 (SystemExit, RecursionError: all are bugs here)
        return f"exception escaped: {type(e).__name__}: {_first_line(e)}"
    text = err.getvalue()
    if rc == 0:
        return None
    if rc != 1:
        return f"exit status {rc}: {text.strip()[:300]}"
    out_lines = text.split("\n")  # not splitlines(): the quoted source may hold \f, \x1d...
    first = out_lines[0]
    if "Traceback" in text:
        return f"a traceback in the message: {text[:300]}"
    if first.startswith("error: "):
        return None
    m = LOCATED.match(first)
    if not m or m.group("path") != str(path):
        return f"exit 1 without a located error: {first[:300]!r}"
    quoted = out_lines[1] if len(out_lines) > 1 else None
    return _location_problem(path, int(m.group("line")), int(m.group("col")), quoted)


def _location_problem(path: Path, line: int, col: int, quoted: str | None) -> str | None:
    """None if line:col lies in the file and the diagnostic quotes that line (lines end at
    '\\n', '\\r\\n' or '\\r': aotml reads sources with Python's universal newlines)."""
    try:
        lines = re.split(r"\r\n|\r|\n", path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        return None
    if not 1 <= line <= len(lines):
        return f"error at line {line}, the file has {len(lines)}"
    text = lines[line - 1]
    if not 1 <= col <= len(text) + 1:
        return f"error at {line}:{col}, the line has {len(text)} characters"
    if quoted is not None and not _quotes(quoted.removeprefix("    "), text):
        return f"the error at line {line} quotes {quoted[4:]!r}; line {line} is {text!r}"
    return None


def _quotes(shown: str, line: str) -> bool:
    """Whether a diagnostic's quoted `shown` is `line`, or a window of a long one (elided with
    '...' at either end)."""
    if shown == line:
        return True
    core = shown.removeprefix("...").removesuffix("...")
    return core != shown and core in line


# ---------------------------------------------------------------------------------------------
# Replaying saved reproducers


def replay(mlg: Path, workdir: Path) -> str | None:
    """Re-run a saved reproducer; None if it now passes, else the failure."""
    meta = json.loads(mlg.with_suffix(".json").read_text())
    if meta["kind"] == "check":
        problem = check_cli(mlg)
        if problem or not meta.get("build"):
            return problem
        try:
            aotml.build(mlg, workdir / "m.so")
        except CompileError:
            return None
        except Exception as e:
            return f"build crashed: {type(e).__name__}: {_first_line(e)}"
        return None
    if meta.get("symbolic"):
        return _replay_symbolic(mlg, workdir)
    failure = check_model(mlg, load_inputs(mlg), workdir)
    return str(failure) if failure else None


def _replay_symbolic(mlg: Path, workdir: Path) -> str | None:
    """A symbolized graph on its saved inputs; it passes when it matches the reference, or when
    the compiler now refuses it with a CompileError (the fix for a graph it should not have
    accepted)."""
    try:
        graph = elaborate(parse_file(mlg))
        so = aotml.build(mlg, workdir / f"{mlg.stem}.so")
    except CompileError:
        return None
    except Exception as e:
        return f"crash: {type(e).__name__}: {_first_line(e)}"
    inputs = _typed_inputs(graph, load_inputs(mlg))
    try:  # the reference first: the compiled code may not survive sizes it should refuse
        precise = interpret_graph(graph, inputs, precise=True)
    except Exception as e:
        return f"oracle: {type(e).__name__}: {_first_line(e)}"
    failure = check_run(mlg, aotml.load(so), graph, inputs, precise)
    return str(failure) if failure else None


# ---------------------------------------------------------------------------------------------
# Shrinking (the command line's; hypothesis shrinks on its own)


def shrink(spec: GraphSpec, failure: Failure,
           runner: Callable[[GraphSpec], tuple[FuzzGraph, Failure | None]] = run_spec
           ) -> tuple[GraphSpec, Failure]:
    """Drop steps while the graph still fails the same way (run by `runner`: run_spec, or
    run_symbolic_spec for a symbolized graph's failure)."""
    changed = True
    while changed and len(spec.steps) > 1:
        changed = False
        for k in range(len(spec.steps)):
            smaller = GraphSpec(spec.seed, spec.steps[:k] + spec.steps[k + 1:], spec.focus)
            _, f = runner(smaller)
            if f is not None and f.kind == failure.kind:
                spec, failure, changed = smaller, f, True
                break
    return spec, failure


def prune(g: FuzzGraph, outputs: list[str]) -> FuzzGraph:
    """`g` with only these outputs, and only the nodes and leaves they need."""
    needed, todo = set(), list(outputs)
    producers = {n.name: n for n in g.nodes}
    while todo:
        name = todo.pop()
        if name in needed:
            continue
        needed.add(name)
        if name in producers:
            todo += [v for o in producers[name].operands for v in _IDENT.findall(o)]
    return replace(g, leaves=[leaf for leaf in g.leaves if leaf.name in needed],
                   nodes=[n for n in g.nodes if n.name in needed], outputs=list(outputs))


def shrink_outputs(g: FuzzGraph, failure: Failure) -> tuple[FuzzGraph, Failure]:
    """Drop outputs (and what only they need) while the graph still fails the same way."""
    g = prune(g, g.outputs)
    for name in list(g.outputs):
        if len(g.outputs) == 1:
            break
        smaller = prune(g, [o for o in g.outputs if o != name])
        with tempfile.TemporaryDirectory(prefix="aotml-fuzz-") as tmp:
            f = run_graph(smaller, Path(tmp))
        if f is not None and f.kind == failure.kind:
            g, failure = smaller, f
    return g, failure


# ---------------------------------------------------------------------------------------------
# The command line


@dataclass
class SeedResult:
    """One seed's run: its graph (the symbolized one where that failed; shrunk if it failed),
    the ops drawn, the failure, the steps left, and how its symbolized form fared (None where
    it was not symbolized; `no_dims`: it was to be, but no input has a dim)."""

    seed: int
    graph: FuzzGraph
    ops: list[str]
    failure: Failure | None
    steps: int
    symbolic: SymbolicOutcome | None = None
    no_dims: bool = False


def _one(seed: int, do_shrink: bool, focus: str | None, symbolic_rate: float) -> SeedResult:
    """Run one seed; when its graph passes, a `symbolic_rate` share of seeds also run it
    symbolized (see symbolize)."""
    spec = GraphSpec.from_seed(seed, focus)
    g, failure = run_spec(spec)
    result = SeedResult(seed, g, g.ops(), failure, len(spec.steps))
    if failure is None and np.random.default_rng([seed, 0x5E]).random() < symbolic_rate:
        s = symbolize(g)
        if s is None:
            result.no_dims = True
        else:
            with tempfile.TemporaryDirectory(prefix="aotml-fuzz-") as tmp:
                result.symbolic = run_symbolic(s, Path(tmp))
            result.graph, result.failure = s, result.symbolic.failure
    if result.failure is not None and do_shrink:
        symbolic = bool(result.graph.symbols)
        spec, failure = shrink(spec, result.failure,
                               run_symbolic_spec if symbolic else run_spec)
        g = symbolize(generate(spec)) if symbolic else generate(spec)
        result.graph, result.failure = shrink_outputs(g, failure)
        result.steps = len(spec.steps)
    return result


@dataclass
class SymbolicStats:
    """The command line's count of symbolized graphs and how they fared."""

    symbolized: int = 0
    no_dims: int = 0
    compiled: int = 0
    sizes: int = 0  # runs checked, over all compiled graphs
    failed: int = 0
    rejected: Counter = field(default_factory=Counter)  # (Rejection.kind, op) -> graphs
    example: dict = field(default_factory=dict)  # (Rejection.kind, op) -> a message

    def add(self, r: SeedResult) -> None:
        self.no_dims += r.no_dims
        o = r.symbolic
        if o is None:
            return
        self.symbolized += 1
        if o.rejected is not None:
            key = (o.rejected.kind, o.rejected.op)
            self.rejected[key] += 1
            self.example.setdefault(key, o.rejected.message)
        else:
            self.compiled += 1
            self.sizes += o.checked
            self.failed += o.failure is not None

    def _count(self, kind: str) -> Counter:
        return Counter({op: n for (k, op), n in self.rejected.items() if k == kind})

    def line(self) -> str:
        refused = sum(self._count("symbolic").values()) + sum(self._count("type").values())
        return (f"symbolized {self.symbolized}: {self.compiled} compiled, {refused} rejected, "
                f"{sum(self._count('known bug').values())} known bugs, {self.failed} failing")

    def report(self, why: bool) -> list[str]:
        lines = [f"symbolized {self.symbolized} graphs ({self.no_dims} more had no input dim "
                 f"to symbolize): {self.compiled} compiled and were checked at {self.sizes} "
                 f"sizes; {self.failed} failing"]
        for kind, title in (("symbolic", "rejected with the compiler's symbolic-dims error"),
                            ("type", "rejected by an op's type rule (a static param, attribute "
                                     "or dim against the symbol)"),
                            ("known bug", "not built: a known bug (KNOWN_SYMBOLIC_BUGS)")):
            counts = self._count(kind)
            lines.append(f"  {title}, {sum(counts.values())}: " + (", ".join(
                f"{op} {n}" for op, n in counts.most_common()) or "none"))
            if why:
                lines += [f"    {op}: {self.example[kind, op][:200]}"
                          for op, _ in counts.most_common()]
        return lines


def main(argv: list[str] | None = None) -> int:
    global SPECIALS_RATE
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--graphs", type=int, default=1000, help="how many graphs (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="the first seed (default 0)")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--save-dir", type=Path, default=REGRESSIONS,
                        help="where reproducers go (default tests/fuzz_regressions)")
    parser.add_argument("--no-save", action="store_true", help="report failures only")
    parser.add_argument("--no-shrink", action="store_true", help="keep failing graphs whole")
    parser.add_argument("--op", default=None, help="draw this op far more often")
    parser.add_argument("--specials", type=float, default=SPECIALS_RATE, metavar="P",
                        help="the share of graphs given NaN, ±inf and ±0 among their data")
    parser.add_argument("--symbolic", type=float, default=SYMBOLIC_RATE, metavar="P",
                        help="the share of passing graphs run again with symbolic input dims "
                             f"(default {SYMBOLIC_RATE}; 1: all)")
    parser.add_argument("--why", action="store_true",
                        help="show a rejection message per op for the symbolized graphs")
    parser.add_argument("--show", type=int, metavar="SEED",
                        help="print one seed's graph (and its symbolized form)")
    args = parser.parse_args(argv)
    SPECIALS_RATE = args.specials

    if args.show is not None:
        g = generate(GraphSpec.from_seed(args.show, args.op))
        print(g.source(), end="")
        s = symbolize(g)
        if s is not None:
            runs = "; ".join(_at(values) for values in s.runs)
            print(s.source(header=f"# symbolized, run at {runs}"), end="")
        return 0
    seeds = range(args.seed, args.seed + args.graphs)
    op_counts: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    symbolic = SymbolicStats()
    signatures: set[tuple] = set()
    t0, done = time.perf_counter(), 0
    jobs = [seeds, [not args.no_shrink] * len(seeds), [args.op] * len(seeds),
            [args.symbolic] * len(seeds)]
    if args.jobs > 1:
        from concurrent.futures import ProcessPoolExecutor

        pool = ProcessPoolExecutor(args.jobs)
        results = pool.map(_one, *jobs, chunksize=4)
    else:
        pool = None
        results = map(_one, *jobs)
    try:
        for r in results:
            done += 1
            op_counts.update(r.ops)
            symbolic.add(r)
            if r.failure is not None:
                kind = ("symbolic " if r.graph.symbols else "") + r.failure.kind
                kinds[kind] += 1
                where = "(not saved)"
                signature = (kind, tuple(sorted(set(r.graph.ops()))))
                if not args.no_save and signature not in signatures:
                    where = str(save_reproducer(r.graph, r.failure, f"fuzz_graphs.py seed "
                                                f"{r.seed} (shrunk to {r.steps} steps)",
                                                args.save_dir))
                elif signature in signatures:
                    where = "(same kind and ops as one saved already)"
                signatures.add(signature)
                print(f"FAIL seed {r.seed}: {kind}: {r.failure.message}\n    -> {where}",
                      flush=True)
            if done % 100 == 0 or done == len(seeds):
                rate = done / (time.perf_counter() - t0)
                print(f"{done} graphs, {sum(kinds.values())} failing "
                      f"({', '.join(f'{k} {n}' for k, n in kinds.items()) or 'none'}), "
                      f"{rate:.1f} graphs/s, {len(op_counts)} ops used; {symbolic.line()}",
                      flush=True)
    finally:
        if pool is not None:
            pool.shutdown()
    unused = sorted(set(ops.REGISTRY) - set(op_counts) - SKIPPED_OPS)
    print(f"ops never drawn: {', '.join(unused) or 'none'}")
    print("least drawn: " + ", ".join(f"{op} {n}" for op, n in op_counts.most_common()[-8:]))
    print("\n".join(symbolic.report(args.why)))
    print(f"{time.perf_counter() - t0:.0f} s")
    return 1 if kinds else 0


if __name__ == "__main__":
    sys.exit(main())
