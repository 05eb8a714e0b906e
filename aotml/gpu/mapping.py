"""The GPU mapping: each kernel's independent loops become a grid of blocks and threads.

A CPU kernel's body is a sequence of top-level loop nests (a matmul: pack the panels, then the
tiles, then the tails). Each becomes its own GPU kernel, launched in order: the launch boundary
is the grid-wide barrier between the phases. In a nest, the longest prefix of the perfect nest
whose loops are independent (loops/schedule.py's proof: each iteration writes its own elements
and reads back only its own) is collapsed into one index space of `total = e1 * ... * ek`
points. Thread `t` of the block starting at `b` takes the point `g = b + t`, guarded by
`g < total`, and recovers each loop variable by division and remainder; the rest of the nest
runs serially in that thread:

    for b in 0..total step 256 bind block.x {
      for t in 0..256 bind thread.x {
        g = b + t
        if lt(g, total) {
          i = idiv(g, 64)
          j = irem(g, 64)
          ...the body of the j loop...

A pointwise nest (one store under the collapsed loops) whose innermost extent is a multiple of
4 gives each thread 4 consecutive elements (`_widen`), which the backend turns into 16-byte
vector loads and stores.

Top-level statements that are not such nests (a scalar accumulated across the whole body, a
nest with no independent loop, a tail tile) run on one thread of one block, as one GPU kernel
per run of them between nests: correct, and slow.
Every op therefore has a mapping; faster schedules for the big ones (the tiled matmul in shared
memory) are written in block form by gpu/schedules.py and pass through unchanged.

Bound loops are ordinary loops to the CPU code generator, so the mapped program runs on the CPU
as it is (`--target grid-emulation`): every block, every thread, with the same index
arithmetic and guards the GPU runs.
"""

from __future__ import annotations

from dataclasses import replace

from aotml.gpu.schedules import in_block_form
from aotml.graph.symbolic import Dim, Sym, product
from aotml.loops.ir import (
    INDEX,
    Assert,
    Assign,
    Binary,
    Compare,
    Const,
    Expr,
    For,
    If,
    Kernel,
    Launch,
    Local,
    Program,
    Size,
    Store,
    Var,
    check_warp_phases,
    children,
    dtype_of,
    map_stmt_exprs,
)
from aotml.loops.schedule import independent

BLOCK = 256  # threads per block
VEC = 4  # consecutive elements per thread of a pointwise grid (16 bytes of f32)


def map_program(program: Program, block: int = BLOCK) -> Program:
    """`program` with every kernel split into GPU kernels (see the module docstring)."""
    mapped: dict[str, list[Kernel]] = {k.name: map_kernel(k, block) for k in program.kernels}
    kernels = tuple(g for k in program.kernels for g in mapped[k.name])
    launches = tuple(Launch(g.name, launch.args) for launch in program.launches
                     for g in mapped[launch.kernel])
    return replace(program, kernels=kernels, launches=launches)


def map_kernel(kernel: Kernel, block: int = BLOCK) -> list[Kernel]:
    """The GPU kernels that run `kernel`, in launch order. A kernel a GPU schedule wrote in
    block form (gpu/schedules.py) is one GPU kernel as it is."""
    if in_block_form(kernel.body):
        check_warp_phases(kernel)
        return [replace(kernel, name=f"{kernel.name}_g0", body=(_serial(kernel.body[0]),))]
    bodies: list[For] = []
    run: list = []  # consecutive statements that run on one thread
    stmts = list(kernel.body)
    for k, s in enumerate(stmts):
        chain = _independent_prefix(s) if isinstance(s, For) else []
        # a split must not separate a local from its later uses
        if chain and not (_declared(run) & _used(stmts[k + 1:])):
            if run:
                bodies.append(_single_thread(run))
                run = []
            bodies.append(_grid(_widen(chain), block))
        else:
            run.append(s)
    if run:
        bodies.append(_single_thread(run))
    return [replace(kernel, name=f"{kernel.name}_g{k}", body=(_serial(body),))
            for k, body in enumerate(bodies)]


def _declared(stmts) -> set[str]:
    return {s.var.name for s in stmts if isinstance(s, Local)}


def _used(stmts) -> set[str]:
    names: set[str] = set()

    def expr(e):
        if isinstance(e, Var):
            names.add(e.name)
        for c in children(e):
            expr(c)

    def walk(ss):
        for s in ss:
            if isinstance(s, (For, If)):
                if isinstance(s, If):
                    expr(s.cond)
                walk(s.body)
            elif isinstance(s, Store):
                for i in s.indices:
                    expr(i)
                expr(s.value)
            elif isinstance(s, (Local, Assign)):
                names.add(s.var.name)
                expr(s.init if isinstance(s, Local) else s.value)
            elif isinstance(s, Assert):
                expr(s.cond)

    walk(stmts)
    return names


def _serial(s):
    """A statement with no loop left marked for the CPU's thread pool: on the GPU, and in its
    emulation, the grid is the parallelism."""
    if isinstance(s, For):
        return replace(s, parallel=False, grain=1, body=tuple(_serial(b) for b in s.body))
    if isinstance(s, If):
        return replace(s, body=tuple(_serial(b) for b in s.body))
    return s


def _independent_prefix(top: For) -> list[For]:
    chain: list[For] = []
    s = top
    while True:
        if s.bind or s.step != 1 or not independent(s, tuple(c.var.name for c in chain)):
            break
        chain.append(s)
        if len(s.body) != 1 or not isinstance(s.body[0], For):
            break
        s = s.body[0]
    return chain


def _grid(chain: list[For], block: int) -> For:
    total: Dim = product(f.extent for f in chain)
    threads = block if isinstance(total, Sym) or total >= block else total
    b, t, g = Var(f"{chain[0].var.name}_block"), Var(f"{chain[0].var.name}_thread"), \
        Var(f"{chain[0].var.name}_flat")
    recover: list = []
    rest: Expr = g
    for k, f in enumerate(reversed(chain)):
        first = k == len(chain) - 1
        if f.extent == 1:
            value: Expr = Const(0, INDEX)
        elif first:
            value = rest
        else:
            value = Binary("irem", rest, _index(f.extent))
            rest = Binary("idiv", rest, _index(f.extent))
        recover.append(Local(f.var, value))
    guarded = If(Compare("lt", g, _index(total)), (*reversed(recover), *chain[-1].body))
    inner = For(t, threads, (Local(g, Binary("add", b, t)), guarded), bind="thread.x")
    return For(b, total, (inner,), step=threads, bind="block.x")


def _widen(chain: list[For]) -> list[For]:
    """A pointwise nest (the chain is all of it, around one store) whose innermost extent is
    a multiple of VEC, with VEC consecutive elements per iteration of that loop: the values
    first, then the stores. Each thread then moves 16 bytes of each buffer it touches, which
    the NVPTX backend merges into one vector load or store (the buffers are 16-byte aligned:
    every kernel argument is `align 16`), and a block covers VEC times the elements for the
    same index arithmetic. Loading iteration j+1's values before storing j's is safe: the
    loop is independent, so j+1 reads back nothing j writes."""
    last = chain[-1]
    if len(last.body) != 1 or not isinstance(last.body[0], Store) or \
            not isinstance(last.extent, int) or last.extent % VEC:
        return chain
    store, v = last.body[0], Var(f"{last.var.name}_vec")
    values, stores = [], []
    for u in range(VEC):
        at = Binary("mul", v, Const(VEC, INDEX))
        at = Binary("add", at, Const(u, INDEX)) if u else at
        (one,) = map_stmt_exprs((store,), lambda e, at=at: at if e == last.var else e)
        value = Var(f"{last.var.name}_v{u}", dtype_of(one.value))
        values.append(Local(value, one.value))
        stores.append(Store(one.buffer, one.indices, value))
    return [*chain[:-1], For(v, last.extent // VEC, (*values, *stores))]


def _single_thread(body) -> For:
    b, t = Var("solo_block"), Var("solo_thread")
    return For(b, 1, (For(t, 1, tuple(body), bind="thread.x"),), bind="block.x")


def _index(d: Dim) -> Expr:
    return Size(d) if isinstance(d, Sym) else Const(d, INDEX)
