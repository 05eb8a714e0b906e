"""The loop-level IR.

A `Program` is a list of kernels and the order to launch them, over buffers placed in four
regions: the caller's inputs and outputs, the embedded weights, and the workspace arena. A kernel
is a loop nest over its buffer arguments. Indices are integer expressions (affine in loop
variables in everything lowered so far); buffers are dense and row-major. A dim, a loop extent
or a workspace offset is an int or a symbolic dim (`N*16`, see aotml/graph/symbolic.py) whose
value every kernel receives at run time; `Size` reads one inside an expression.
Scalar locals (`Local`/`Assign`) hold reduction accumulators.

Vectors: a value of dtype `f32xL` is L f32 lanes, one register of the target's widest vector
(L = 4, 8 or 16: 128, 256 or 512 bits). Only the CPU's register tiles make them: `VecLoad`
reads L consecutive elements along a buffer's last dim, `Splat` copies a scalar to every lane,
`MulAdd`, `Unary` and `Binary` (arithmetic, max/min, exp and the other float functions: not
pow) work lane by lane, `Lane` reads one lane back as a scalar, and locals may hold them.
Stores stay scalar (`out[i, j] = lane(acc, 3)`), so an epilogue fused into them sees scalars.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Union

from aotml.dtypes import FLOATS, TABLE
from aotml.errors import InternalError
from aotml.graph.symbolic import Dim, Sym, SymbolicError, product, symbols_of

INDEX = "i64"
DTYPES = frozenset(TABLE)
# Arithmetic happens in these; f16/bf16 values only pass through Load, Store and Cast.
ARITH = frozenset(d.compute for d in TABLE.values()) - {"bool"}
FLOAT_UNARY = frozenset({"exp", "log", "sqrt", "rsqrt", "tanh", "erf"})
UNARY_OPS = FLOAT_UNARY | {"neg", "abs", "not"}
BINARY_OPS = frozenset({"add", "sub", "mul", "div", "max", "min", "pow", "and", "or", "idiv",
                        "irem"})
FLOAT_BINARY = frozenset({"div", "pow"})
# Integer division and remainder truncate toward zero (C semantics), and are for index
# arithmetic: the divisor must be a positive constant or known nonzero.
INT_BINARY = frozenset({"idiv", "irem"})
BOOL_BINARY = frozenset({"and", "or"})
COMPARE_OPS = frozenset({"eq", "ne", "lt", "le", "gt", "ge"})
REGIONS = ("input", "output", "param", "workspace", "view")
VECTOR_LANES = (4, 8, 16)


def vector_dtype(lanes: int) -> str:
    """The dtype of `lanes` f32 lanes."""
    if lanes not in VECTOR_LANES:
        raise InternalError(f"no vector of {lanes} lanes")
    return f"f32x{lanes}"


def lanes_of(dtype: str) -> int | None:
    """How many lanes a vector dtype has; None for a scalar dtype."""
    return int(dtype[4:]) if dtype.startswith("f32x") else None


SCOPES = ("global", "shared", "local")


@dataclass(frozen=True)
class Buffer:
    """A dense row-major tensor in memory. Its scope matters to a GPU kernel in block form
    (gpu/schedules.py): "global" is device memory; "shared" is one copy per block, in the
    block's shared memory; "local" is one row per thread (its first index is always the thread
    loop's variable), in the thread's registers. Everywhere else (the CPU, the grid emulation)
    every buffer is a buffer: shared and local ones are kernel scratch."""

    name: str
    dtype: str
    shape: tuple[Dim, ...]
    scope: str = "global"

    def __post_init__(self):
        if self.scope not in SCOPES:
            raise InternalError(f"unknown buffer scope {self.scope!r}")

    @property
    def nbytes(self) -> Dim:
        return product(self.shape) * TABLE[self.dtype].itemsize

    @property
    def strides(self) -> tuple[Dim, ...]:
        out, acc = [], 1
        for d in reversed(self.shape):
            out.append(acc)
            acc *= d
        return tuple(reversed(out))


@dataclass(frozen=True)
class Const:
    """A scalar constant."""

    value: float | int | bool
    dtype: str

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise InternalError(f"constant of unknown dtype {self.dtype!r}")


@dataclass(frozen=True)
class Var:
    """A loop variable (dtype i64) or a scalar local."""

    name: str
    dtype: str = INDEX


@dataclass(frozen=True)
class Size:
    """The run-time value of a symbolic dim (or any polynomial of the symbols), as an index."""

    dim: Sym
    dtype: str = INDEX

    def __post_init__(self):
        if not isinstance(self.dim, Sym):
            raise InternalError(f"Size of a static value {self.dim!r}: use a Const")


@dataclass(frozen=True)
class Load:
    """Read one element of a buffer."""

    buffer: Buffer
    indices: tuple["Expr", ...]

    def __post_init__(self):
        if len(self.indices) != len(self.buffer.shape):
            raise InternalError(f"load of {self.buffer.name} with {len(self.indices)} indices")


@dataclass(frozen=True)
class VecLoad:
    """Read `lanes` consecutive f32 elements along the buffer's last dim: lane l holds the
    element at `indices` with l added to the last index."""

    buffer: Buffer
    indices: tuple["Expr", ...]
    lanes: int

    def __post_init__(self):
        vector_dtype(self.lanes)
        if len(self.indices) != len(self.buffer.shape) or self.buffer.dtype != "f32":
            raise InternalError(f"vector load of {self.buffer.name} ({self.buffer.dtype}) "
                                f"with {len(self.indices)} indices")


@dataclass(frozen=True)
class Splat:
    """An f32 scalar in every lane of a vector."""

    value: "Expr"
    lanes: int

    def __post_init__(self):
        vector_dtype(self.lanes)
        if dtype_of(self.value) != "f32":
            raise InternalError(f"splat of {dtype_of(self.value)}")


@dataclass(frozen=True)
class Lane:
    """One lane of a vector, as an f32 scalar."""

    vector: "Expr"
    lane: int

    def __post_init__(self):
        lanes = lanes_of(dtype_of(self.vector))
        if lanes is None or not 0 <= self.lane < lanes:
            raise InternalError(f"lane {self.lane} of a {dtype_of(self.vector)}")


WARP = 32  # threads that run in lockstep on the GPU, and exchange registers by shuffles


@dataclass(frozen=True)
class Shuffle:
    """Element `indices` of a local buffer as another thread of the warp holds it: thread t
    reads its row `t + delta` where its lane (t % WARP) + delta < WARP, else its own (CUDA's
    shfl.down). `indices` starts with the thread loop's variable. On the GPU it is a register
    exchange, so every thread of the warp must reach it together: it may stand only in the
    top-level statements of a thread loop (check_warp_phases). The grid emulation reads the
    other thread's row of the buffer, which holds what that thread stored in an earlier
    phase: so a shuffle may not read an element its phase stored before it (check_warp_phases
    refuses that), where the GPU would see the other thread's new value."""

    buffer: Buffer
    indices: tuple["Expr", ...]
    delta: int

    def __post_init__(self):
        if self.buffer.scope != "local" or len(self.indices) != len(self.buffer.shape) \
                or not 0 < self.delta < WARP:
            raise InternalError(f"shuffle of {self.buffer.name} ({self.buffer.scope}) by "
                                f"{self.delta}")


@dataclass(frozen=True)
class Unary:
    """A unary scalar operation."""

    op: str
    operand: "Expr"

    def __post_init__(self):
        if self.op not in UNARY_OPS:
            raise InternalError(f"unknown unary op {self.op!r}")
        _check_operand(self.op, dtype_of(self.operand))


@dataclass(frozen=True)
class Binary:
    """A binary scalar operation; both operands have the same dtype."""

    op: str
    lhs: "Expr"
    rhs: "Expr"

    def __post_init__(self):
        if self.op not in BINARY_OPS:
            raise InternalError(f"unknown binary op {self.op!r}")
        if dtype_of(self.lhs) != dtype_of(self.rhs):
            raise InternalError(f"{self.op} of {dtype_of(self.lhs)} and {dtype_of(self.rhs)}")
        _check_operand(self.op, dtype_of(self.lhs))


# what a vector of f32 lanes may take: arithmetic lane by lane (not pow, a library call)
VECTOR_OPS = frozenset({"add", "sub", "mul", "div", "max", "min", "neg", "abs"}) | \
    (FLOAT_UNARY)


def _check_operand(op: str, dtype: str) -> None:
    if lanes_of(dtype) is not None:
        ok = op in VECTOR_OPS
    elif op in ("not", "and", "or"):
        ok = dtype == "bool"
    elif op in FLOAT_UNARY or op in FLOAT_BINARY:
        ok = dtype == "f32"
    elif op in INT_BINARY:
        ok = dtype in ("i32", "i64")
    else:
        ok = dtype in ARITH
    if not ok:
        raise InternalError(f"scalar op {op} on {dtype}")


@dataclass(frozen=True)
class Cast:
    """Convert a scalar to another dtype (float to int saturates; NaN becomes 0)."""

    to: str
    operand: "Expr"

    def __post_init__(self):
        if self.to not in DTYPES:
            raise InternalError(f"cast to unknown dtype {self.to!r}")


@dataclass(frozen=True)
class Compare:
    """A comparison of two scalars of one dtype; its value is a bool (NaN compares unequal)."""

    op: str
    lhs: "Expr"
    rhs: "Expr"

    def __post_init__(self):
        if self.op not in COMPARE_OPS:
            raise InternalError(f"unknown comparison {self.op!r}")
        if dtype_of(self.lhs) != dtype_of(self.rhs) or dtype_of(self.lhs) not in ARITH | {"bool"}:
            raise InternalError(f"{self.op} of {dtype_of(self.lhs)} and {dtype_of(self.rhs)}")


@dataclass(frozen=True)
class Select:
    """`cond ? a : b` with a bool condition."""

    cond: "Expr"
    a: "Expr"
    b: "Expr"

    def __post_init__(self):
        if dtype_of(self.cond) != "bool" or dtype_of(self.a) != dtype_of(self.b):
            raise InternalError("select needs a bool condition and operands of one dtype")


@dataclass(frozen=True)
class MulAdd:
    """`a * b + c` in f32 (or lane by lane, on vectors of f32), rounded once where the target
    has a fused multiply-add (LLVM's fmuladd): the contraction step of matmul and conv tiles.
    It may differ from a separate mul and add by one rounding, which every tolerance against
    the reference allows."""

    a: "Expr"
    b: "Expr"
    c: "Expr"

    def __post_init__(self):
        dt = dtype_of(self.a)
        if not dt == dtype_of(self.b) == dtype_of(self.c) or \
                (dt != "f32" and lanes_of(dt) is None):
            raise InternalError("muladd of operands other than f32 or one f32 vector type")


Expr = Union[Const, Var, Size, Load, Shuffle, Unary, Binary, Cast, Compare, Select, MulAdd,
             VecLoad, Splat, Lane]


def dtype_of(e: Expr) -> str:
    if isinstance(e, (Const, Var, Size)):
        return e.dtype
    if isinstance(e, (Load, Shuffle)):
        return e.buffer.dtype
    if isinstance(e, Unary):
        return dtype_of(e.operand)
    if isinstance(e, Cast):
        return e.to
    if isinstance(e, Compare):
        return "bool"
    if isinstance(e, Select):
        return dtype_of(e.a)
    if isinstance(e, MulAdd):
        return dtype_of(e.c)
    if isinstance(e, (VecLoad, Splat)):
        return vector_dtype(e.lanes)
    if isinstance(e, Lane):
        return "f32"
    return dtype_of(e.lhs)


def children(e: Expr) -> tuple:
    """The operands of an expression node (a load's are its indices)."""
    if isinstance(e, (Unary, Cast)):
        return (e.operand,)
    if isinstance(e, (Binary, Compare)):
        return (e.lhs, e.rhs)
    if isinstance(e, Select):
        return (e.cond, e.a, e.b)
    if isinstance(e, MulAdd):
        return (e.a, e.b, e.c)
    if isinstance(e, (Load, Shuffle, VecLoad)):
        return e.indices
    if isinstance(e, Splat):
        return (e.value,)
    if isinstance(e, Lane):
        return (e.vector,)
    return ()


def map_expr(e: Expr, f) -> Expr:
    """`e` rebuilt bottom-up with `f` applied to every node once its children are rebuilt."""
    if isinstance(e, Load):
        e = Load(e.buffer, tuple(map_expr(i, f) for i in e.indices))
    elif isinstance(e, Shuffle):
        e = Shuffle(e.buffer, tuple(map_expr(i, f) for i in e.indices), e.delta)
    elif isinstance(e, Unary):
        e = Unary(e.op, map_expr(e.operand, f))
    elif isinstance(e, Cast):
        e = Cast(e.to, map_expr(e.operand, f))
    elif isinstance(e, Binary):
        e = Binary(e.op, map_expr(e.lhs, f), map_expr(e.rhs, f))
    elif isinstance(e, Compare):
        e = Compare(e.op, map_expr(e.lhs, f), map_expr(e.rhs, f))
    elif isinstance(e, Select):
        e = Select(map_expr(e.cond, f), map_expr(e.a, f), map_expr(e.b, f))
    elif isinstance(e, MulAdd):
        e = MulAdd(map_expr(e.a, f), map_expr(e.b, f), map_expr(e.c, f))
    elif isinstance(e, VecLoad):
        e = VecLoad(e.buffer, tuple(map_expr(i, f) for i in e.indices), e.lanes)
    elif isinstance(e, Splat):
        e = Splat(map_expr(e.value, f), e.lanes)
    elif isinstance(e, Lane):
        e = Lane(map_expr(e.vector, f), e.lane)
    return f(e)


BINDS = ("", "block.x", "thread.x")


@dataclass(frozen=True)
class For:
    """`for var in 0..extent step step` (extent >= 1, for every value of its symbols). A
    `parallel` loop runs its iterations in ranges of at least `grain` on the runtime's threads:
    only loops/schedule.py sets it, after proving that the iterations write disjoint elements.

    On a GPU a *bound* loop does not iterate: `bind="block.x"` gives each value to its own
    block (the grid has ceil(extent / step) of them) and `bind="thread.x"` to its own thread
    of the block (extent = the block's size). gpu/mapping.py makes them; anywhere else (the
    CPU, the grid emulation) they are ordinary loops. In a block-form kernel each thread loop
    is a phase ended by a barrier of the block; `barrier=False` leaves it out where the threads
    exchange nothing after the phase but by Shuffle, within their warp (check_warp_phases)."""

    var: Var
    extent: Dim
    body: tuple["Stmt", ...]
    parallel: bool = False
    grain: int = 1
    step: int = 1
    bind: str = ""
    barrier: bool = True

    def __post_init__(self):
        if not self.barrier and self.bind != "thread.x":
            raise InternalError(f"loop {self.var.name}: only a thread loop may skip its barrier")
        if self.bind not in BINDS or self.step < 1:
            raise InternalError(f"loop {self.var.name}: bind {self.bind!r}, step {self.step}")
        if isinstance(self.extent, Sym):
            if not self.extent.always_positive:
                raise InternalError(f"loop {self.var.name} with extent {self.extent}")
        elif self.extent < 1:
            raise InternalError(f"loop {self.var.name} with extent {self.extent}")

    @property
    def trips(self) -> Dim:
        """How many times the body runs: ceil(extent / step); for a symbolic extent (a GPU
        block loop over a symbolic index space) exact when the step divides it, else the
        extent, an upper bound."""
        if self.step == 1:
            return self.extent
        if isinstance(self.extent, int):
            return -(-self.extent // self.step)
        try:
            return self.extent // self.step
        except SymbolicError:
            return self.extent


@dataclass(frozen=True)
class Store:
    """Write one element of a buffer."""

    buffer: Buffer
    indices: tuple[Expr, ...]
    value: Expr

    def __post_init__(self):
        if len(self.indices) != len(self.buffer.shape):
            raise InternalError(f"store to {self.buffer.name} with {len(self.indices)} indices")
        if dtype_of(self.value) != self.buffer.dtype:
            raise InternalError(f"store of {dtype_of(self.value)} into {self.buffer.name}")


@dataclass(frozen=True)
class Local:
    """Declare a local (a scalar, or a vector of f32) and give it its first value."""

    var: Var
    init: Expr

    def __post_init__(self):
        if dtype_of(self.init) != self.var.dtype:
            raise InternalError(f"local {self.var.name}: {self.var.dtype} given a "
                                f"{dtype_of(self.init)}")


@dataclass(frozen=True)
class Assign:
    """Give a local a new value."""

    var: Var
    value: Expr


@dataclass(frozen=True)
class Assert:
    """A run-time check: when `cond` is false the run stops and fails with `message` (lowering
    adds the op's source location). Loops holding one are not vectorized: use it sparingly."""

    cond: Expr
    message: str

    def __post_init__(self):
        if dtype_of(self.cond) != "bool":
            raise InternalError("assert of a non-bool condition")


@dataclass(frozen=True)
class If:
    """Run `body` only where `cond` holds: the guard of a GPU thread past the end of its
    index space (gpu/mapping.py); locals declared in `body` are its own."""

    cond: Expr
    body: tuple["Stmt", ...]

    def __post_init__(self):
        if dtype_of(self.cond) != "bool":
            raise InternalError("if of a non-bool condition")


Stmt = Union[For, Store, Local, Assign, Assert, If]


def walk_stmts(stmts):
    """Every statement of `stmts`, loop and guard bodies included, in program order."""
    for s in stmts:
        yield s
        if isinstance(s, (For, If)):
            yield from walk_stmts(s.body)


def stmt_exprs(s) -> tuple:
    """The expressions a statement holds itself (not those of a body)."""
    if isinstance(s, Store):
        return (*s.indices, s.value)
    if isinstance(s, Local):
        return (s.init,)
    if isinstance(s, Assign):
        return (s.value,)
    if isinstance(s, (If, Assert)):
        return (s.cond,)
    return ()


def walk_expr(e: Expr):
    """`e` and every expression inside it."""
    yield e
    for c in children(e):
        yield from walk_expr(c)


def map_stmt_exprs(stmts, f) -> tuple:
    """`stmts` with every expression in them (conditions, indices, values) rebuilt by
    `map_expr(e, f)`; loops and their bounds are kept."""
    def expr(e: Expr) -> Expr:
        return map_expr(e, f)

    def stmt(s):
        if isinstance(s, For):
            return replace(s, body=map_stmt_exprs(s.body, f))
        if isinstance(s, If):
            return If(expr(s.cond), map_stmt_exprs(s.body, f))
        if isinstance(s, Store):
            return Store(s.buffer, tuple(expr(i) for i in s.indices), expr(s.value))
        if isinstance(s, Local):
            return Local(s.var, expr(s.init))
        if isinstance(s, Assign):
            return Assign(s.var, expr(s.value))
        return replace(s, cond=expr(s.cond))  # Assert

    return tuple(stmt(s) for s in stmts)


def vector_form(e: Expr, var: Var, lanes: int) -> Expr | None:
    """`e` (an f32 expression) as an f32xL whose lane l is e with var + l for var, or None
    where that takes more than vector loads, splats and lane-by-lane arithmetic: a load using
    var anywhere but as its last index (a gather across rows), a select, a cast, pow."""
    if not any(x == var for x in walk_expr(e)):  # the same in every lane
        return Splat(e, lanes) if dtype_of(e) == "f32" else None
    if isinstance(e, Load):
        *lead, last = e.indices
        if last != var or e.buffer.dtype != "f32" or \
                any(x == var for i in lead for x in walk_expr(i)):
            return None
        return VecLoad(e.buffer, e.indices, lanes)
    if isinstance(e, (Unary, Binary)) and e.op in VECTOR_OPS and dtype_of(e) == "f32":
        parts = [vector_form(c, var, lanes) for c in children(e)]
        if any(p is None for p in parts):
            return None
        return Unary(e.op, parts[0]) if isinstance(e, Unary) else Binary(e.op, *parts)
    return None


def lane_store_run(stmts, k: int) -> tuple[Expr, int] | None:
    """(v, L) where stmts[k:k + L] store lane 0..L-1 of one vector v to L consecutive f32
    elements along a buffer's last dim (what one vector store does); else None."""
    first = stmts[k]
    if not (isinstance(first, Store) and isinstance(first.value, Lane)
            and first.value.lane == 0 and first.buffer.dtype == "f32"):
        return None
    vector = first.value.vector
    lanes = lanes_of(dtype_of(vector))
    if k + lanes > len(stmts):
        return None
    *lead, last = first.indices
    base, at = _split_offset(last)
    for j in range(1, lanes):
        s = stmts[k + j]
        if not (isinstance(s, Store) and s.buffer == first.buffer
                and s.value == Lane(vector, j) and tuple(s.indices[:-1]) == tuple(lead)
                and _split_offset(s.indices[-1]) == (base, at + j)):
            return None
    return vector, lanes


def _split_offset(e: Expr) -> tuple[Expr | None, int]:
    """An index as (e0, c) with e = e0 + c for a constant c (e0 None for a constant)."""
    if isinstance(e, Const):
        return None, int(e.value)
    if isinstance(e, Binary) and e.op == "add" and isinstance(e.rhs, Const):
        inner, c = _split_offset(e.lhs)
        return inner, c + int(e.rhs.value)
    return e, 0


def thread_extents(stmts):
    """The extent of every `thread.x` loop in `stmts`, in order (a GPU kernel in block form has
    several: its barrier phases)."""
    for s in stmts:
        if isinstance(s, For) and s.bind == "thread.x":
            yield s.extent
        elif isinstance(s, (For, If)):
            yield from thread_extents(s.body)


def check_warp_phases(kernel: "Kernel") -> None:
    """What Shuffle and barrier-less phases need to mean the same on the GPU and in the grid
    emulation, as far as shared memory and shuffles go (InternalError otherwise):
    - a Shuffle stands only in a thread loop's top-level statements, where every thread of the
      warp reaches it, in a block of whole warps, and reads the row of that loop's thread;
    - it reads no element of its buffer that the phase stored before it (on the GPU that is the
      other thread's new value; the emulation, running threads in turn, would read the old);
    - a phase without a barrier writes no shared memory, and no phase writes a shared buffer
      that a phase read since the last barrier (in program order, a serial loop's body taken
      twice: a thread of another warp may still be reading it).
    Global memory written in a barrier-less phase is the schedule's own care: the schedules
    read it back only on the thread that wrote it."""
    def shuffles_in(s) -> list:
        return [x for e in stmt_exprs(s) for x in walk_expr(e) if isinstance(x, Shuffle)]

    def column(indices) -> tuple:
        """The element of a thread's row an access names (None where not a constant)."""
        return tuple(i.value if isinstance(i, Const) else None for i in indices[1:])

    def placed(stmts, loop: "For | None") -> None:
        stored: set = set()
        for s in stmts:
            for x in shuffles_in(s):
                if loop is None:
                    raise InternalError(f"{kernel.name}: a shuffle outside a thread loop's "
                                        f"top level")
                if x.indices[0] != loop.var:
                    raise InternalError(f"{kernel.name}: a shuffle of {x.buffer.name} not at "
                                        f"its thread's row")
                col = column(x.indices)
                if any(b == x.buffer.name and (c == col or None in c or None in col)
                       for b, c in stored):
                    raise InternalError(f"{kernel.name}: a shuffle of {x.buffer.name} after "
                                        f"a store to it in the same phase")
            if loop is not None:
                stored |= {(t.buffer.name, column(t.indices)) for t in walk_stmts([s])
                           if isinstance(t, Store) and t.buffer.scope == "local"}
            if isinstance(s, (For, If)):
                inner = s if isinstance(s, For) and s.bind == "thread.x" else None
                placed(s.body, inner)

    placed(kernel.body, None)

    def phases(stmts):
        """The thread loops in program order, a serial loop's taken twice."""
        for s in stmts:
            if isinstance(s, For) and s.bind == "thread.x":
                yield s
            elif isinstance(s, (For, If)):
                repeat = 2 if isinstance(s, For) and not s.bind else 1
                for _ in range(repeat):
                    yield from phases(s.body)

    unguarded: set[str] = set()  # shared buffers read since the last barrier
    for loop in phases(kernel.body):
        if any(shuffles_in(s) for s in walk_stmts(loop.body)) and \
                (not isinstance(loop.extent, int) or loop.extent % WARP):
            raise InternalError(f"{kernel.name}: shuffles in a block of {loop.extent} threads")
        stmts = list(walk_stmts(loop.body))
        written = {s.buffer.name for s in stmts
                   if isinstance(s, Store) and s.buffer.scope == "shared"}
        if written and not loop.barrier:
            raise InternalError(f"{kernel.name}: a phase without a barrier writes shared memory")
        if written & unguarded:
            raise InternalError(f"{kernel.name}: shared {', '.join(sorted(written & unguarded))}"
                                f" written while another warp may still read it")
        read = {x.buffer.name for s in stmts for e in stmt_exprs(s) for x in walk_expr(e)
                if isinstance(x, Load) and x.buffer.scope == "shared"}
        unguarded = set() if loop.barrier else unguarded | read


def grid(body, name: str) -> tuple[Dim, int]:
    """(points, threads) of a mapped kernel: its body is one block loop stepping by the
    extent of the thread loops inside it (one, or a block form's several)."""
    if len(body) == 1 and isinstance(body[0], For) and body[0].bind == "block.x":
        extents = set(thread_extents(body[0].body))
        if extents == {body[0].step}:
            return body[0].extent, body[0].step
    raise InternalError(f"GPU kernel {name} is not one block loop around thread loops of its "
                        "step")


def message_numbers(program: "Program") -> dict[str, int]:
    """Each Assert message's status number: its 1-based position in `assert_messages`."""
    return {m: i + 1 for i, m in enumerate(assert_messages(program))}


def assert_messages(program: "Program") -> tuple[str, ...]:
    """Every distinct Assert message of a program, in order: a failing check returns its
    1-based position here as the run's status."""
    found: dict[str, None] = {}

    def walk(stmts):
        for s in stmts:
            if isinstance(s, Assert):
                found.setdefault(s.message)
            elif isinstance(s, (For, If)):
                walk(s.body)

    for k in program.kernels:
        walk(k.body)
    return tuple(found)


@dataclass(frozen=True)
class Kernel:
    """A loop nest over buffer arguments; `outputs` names the buffers it writes."""

    name: str
    args: tuple[Buffer, ...]
    outputs: tuple[str, ...]
    body: tuple[Stmt, ...]
    origin: str = ""  # the graph op(s) it came from, for dumps and reports
    schedule: str = ""  # the algorithm its lowering chose, where it had several (for reports)


@dataclass(frozen=True)
class Placement:
    """Where a buffer lives: `index` is the argument position (input/output) or byte offset
    (a polynomial of the symbols for a workspace buffer whose size has an unbounded one).
    Inputs and outputs also keep their name at the ABI, which may differ from the buffer's
    (an output may share its name with an input; buffer names are unique). A `view` is the
    bytes of buffer `of` under another shape (a reshape): it takes no memory of its own."""

    buffer: Buffer
    region: str
    index: Dim
    abi_name: str = ""
    of: str = ""

    def __post_init__(self):
        if self.region not in REGIONS:
            raise InternalError(f"unknown region {self.region!r}")
        if (self.region == "view") != bool(self.of):
            raise InternalError(f"placement of {self.buffer.name}: a view (only) names its base")


@dataclass(frozen=True)
class Launch:
    """Run a kernel on these buffers."""

    kernel: str
    args: tuple[Buffer, ...]


@dataclass(frozen=True)
class Program:
    """Everything codegen needs: placed buffers, kernels, launch order, arena sizes, and the
    symbols (name, upper bound or None) in the order the ABI passes their values."""

    name: str
    placements: tuple[Placement, ...]
    kernels: tuple[Kernel, ...]
    launches: tuple[Launch, ...]
    workspace_bytes: Dim
    weights_bytes: int
    symbols: tuple[tuple[str, int | None], ...] = ()
    # the workspace's last bytes, holding shared and local scratch: on a GPU that lives on
    # chip, so its workspace is workspace_bytes - onchip_bytes
    onchip_bytes: int = 0

    def __post_init__(self):
        known = {s for s, _ in self.symbols}
        used = symbols_of([self.workspace_bytes])
        for p in self.placements:
            used |= symbols_of((*p.buffer.shape, p.index))
        if not used <= known:
            raise InternalError(f"program uses undeclared symbols {sorted(used - known)}")


# ---------------------------------------------------------------------------------------------
# Printer


def format_expr(e: Expr) -> str:
    if isinstance(e, Const):
        if e.dtype == "bool":
            return "true" if e.value else "false"
        return repr(float(e.value)) if e.dtype in FLOATS else str(int(e.value))
    if isinstance(e, Var):
        return e.name
    if isinstance(e, Size):
        return f"({e.dim})" if len(e.dim.terms) > 1 else str(e.dim)
    if isinstance(e, Load):
        return f"{e.buffer.name}[{', '.join(format_expr(i) for i in e.indices)}]"
    if isinstance(e, Shuffle):
        return f"shfl_down({e.buffer.name}[{', '.join(format_expr(i) for i in e.indices)}], " \
            f"{e.delta})"
    if isinstance(e, Unary):
        return f"-{_atom(e.operand)}" if e.op == "neg" else f"{e.op}({format_expr(e.operand)})"
    if isinstance(e, Cast):
        return f"{e.to}({format_expr(e.operand)})"
    if isinstance(e, Compare):
        return f"{e.op}({format_expr(e.lhs)}, {format_expr(e.rhs)})"
    if isinstance(e, Select):
        return f"select({format_expr(e.cond)}, {format_expr(e.a)}, {format_expr(e.b)})"
    if isinstance(e, MulAdd):
        return f"muladd({format_expr(e.a)}, {format_expr(e.b)}, {format_expr(e.c)})"
    if isinstance(e, VecLoad):
        *lead, last = (format_expr(i) for i in e.indices)
        return f"{e.buffer.name}[{', '.join([*lead, f'{last} +: {e.lanes}'])}]"
    if isinstance(e, Splat):
        return f"splat{e.lanes}({format_expr(e.value)})"
    if isinstance(e, Lane):
        return f"lane({format_expr(e.vector)}, {e.lane})"
    sym = {"add": "+", "sub": "-", "mul": "*", "div": "/"}.get(e.op)
    if sym is None:
        return f"{e.op}({format_expr(e.lhs)}, {format_expr(e.rhs)})"
    return f"{_atom(e.lhs)} {sym} {_atom(e.rhs)}"


def _atom(e: Expr) -> str:
    text = format_expr(e)
    return f"({text})" if isinstance(e, Binary) and e.op in ("add", "sub", "mul", "div") else text


def format_stmts(stmts, indent: int) -> list[str]:
    pad = "  " * indent
    out: list[str] = []
    for s in stmts:
        if isinstance(s, For):
            kind = f"parallel(grain {s.grain}) for" if s.parallel else "for"
            extra = (f" step {s.step}" if s.step != 1 else "") + \
                (f" bind {s.bind}" if s.bind else "") + ("" if s.barrier else " no barrier")
            out.append(f"{pad}{kind} {s.var.name} in 0..{s.extent}{extra} {{")
            out += format_stmts(s.body, indent + 1)
            out.append(f"{pad}}}")
        elif isinstance(s, Store):
            idx = ", ".join(format_expr(i) for i in s.indices)
            out.append(f"{pad}{s.buffer.name}[{idx}] = {format_expr(s.value)}")
        elif isinstance(s, Local):
            out.append(f"{pad}{s.var.name}: {s.var.dtype} = {format_expr(s.init)}")
        elif isinstance(s, Assign):
            out.append(f"{pad}{s.var.name} = {format_expr(s.value)}")
        elif isinstance(s, Assert):
            out.append(f"{pad}assert {format_expr(s.cond)}, {s.message!r}")
        elif isinstance(s, If):
            out.append(f"{pad}if {format_expr(s.cond)} {{")
            out += format_stmts(s.body, indent + 1)
            out.append(f"{pad}}}")
        else:
            raise InternalError(f"cannot print {s!r}")
    return out


def _shape(b: Buffer) -> str:
    scope = "" if b.scope == "global" else f"{b.scope} "
    return f"{scope}{b.dtype}[{', '.join(map(str, b.shape))}]"


def print_kernel(k: Kernel) -> str:
    args = ", ".join(f"{b.name}: {_shape(b)}{' out' if b.name in k.outputs else ''}"
                     for b in k.args)
    origin = f"  # {k.origin}" if k.origin else ""
    return "\n".join([f"kernel {k.name}({args}) {{{origin}", *format_stmts(k.body, 1), "}"])


def print_program(p: Program) -> str:
    lines = [f"program {p.name} (workspace {p.workspace_bytes} bytes, "
             f"weights {p.weights_bytes} bytes) {{"]
    for s, bound in p.symbols:
        lines.append(f"  dim {s}" + (f" <= {bound}" if bound is not None else ""))
    for pl in p.placements:
        if pl.region == "view":
            lines.append(f"  buffer {pl.buffer.name}: {_shape(pl.buffer)} view of {pl.of}")
            continue
        where = f"@{pl.index}" if pl.region in ("param", "workspace") else f"#{pl.index}"
        lines.append(f"  buffer {pl.buffer.name}: {_shape(pl.buffer)} {pl.region}{where}")
    for launch in p.launches:
        lines.append(f"  launch {launch.kernel}({', '.join(b.name for b in launch.args)})")
    lines.append("}")
    for k in p.kernels:
        lines.append(print_kernel(k))
    return "\n".join(lines)
