"""Loop-level fusion: a pointwise producer is computed inside the kernels that read it.

A kernel is *pointwise* when its body is a perfect loop nest over its output's shape whose only
statement stores one expression at exactly the loop variables (`t[i, j] = f(x[i, j], b[j])`):
each element is a function of its index alone. Such a producer's buffer, when it is a
temporary, can be dropped: every read `t[e0, e1]` in a consumer becomes `f` with `i := e0,
j := e1` (the producer's own rounding to its dtype kept, as a Cast). Chains collapse one
producer at a time, in launch order, so `max(x*2+1, 0)*0.5` becomes one loop nest, and a bias
add or a scale before a softmax or a norm is read through, not stored.

Recomputation is the price: a consumer that reads an element several times (a softmax's
passes, a broadcast) computes it each time. A producer is inlined when every consumer's loads of its
buffer run exactly as many times as it has elements (a pointwise consumer, or a reduction
that reads each element once), or when it is cheap (a few arithmetic operations, no
transcendental function), except one that computes from bool or integer elements and would be
recomputed for each of several reads of an element.

A consumer that reads the buffer by vector loads (L consecutive elements along its last dim: a
softmax's row passes) gets the producer in vector form, when it has one: each of its loads
indexed by the last loop variable as its own last index becomes a vector load, each load
that does not depend on that variable a splat, and its arithmetic works lane by lane
(`vector_form` in loops/ir.py). Such a consumer must read each element at most twice, so
that a register tile, which re-reads its operand once per tile, keeps stored elements.

This runs before memory planning, which then sees the fused kernels' real lifetimes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from aotml.graph.symbolic import product
from aotml.loops.ir import (
    FLOAT_UNARY,
    Assign,
    Binary,
    Buffer,
    Compare,
    Expr,
    For,
    If,
    Kernel,
    Lane,
    Launch,
    Load,
    Local,
    MulAdd,
    Select,
    Store,
    Unary,
    Var,
    VecLoad,
    children,
    dtype_of,
    lane_store_run,
    map_expr,
    map_stmt_exprs,
    stmt_exprs,
    vector_form,
    walk_expr,
    walk_stmts,
)

CHEAP_OPS = 4  # the most scalar operations a producer may cost to be recomputed freely
MAX_INLINED_SIZE = 64  # the largest expression (in nodes) inlined into a consumer


@dataclass(frozen=True)
class Pointwise:
    buffer: Buffer
    vars: tuple[Var, ...]
    value: Expr


def fuse(kernels: list[Kernel], launches: list[Launch], temps: set[str],
         notes: list[str] | None = None,
         views: dict[str, str] | None = None) -> tuple[list[Kernel], list[Launch]]:
    """Kernels and launches with every profitable pointwise temporary inlined. Why a kernel
    feeding others was kept is appended to `notes`. `views` maps a view's buffer name to the
    buffer whose bytes it shows."""
    notes = notes if notes is not None else []
    first_note = len(notes)
    views = views or {}
    by_name = {k.name: k for k in kernels}
    order = [launch.kernel for launch in launches]
    # epilogues first: a bias and an activation after a matmul are computed once, in its
    # stores, rather than inlined into each of its readers
    def epilogues(record: bool) -> None:
        for producer in list(order):
            if producer in by_name and pointwise(by_name[producer]) is None:
                why = _fuse_epilogue(producer, by_name, order, temps, views)
                while why is None:
                    why = _fuse_epilogue(producer, by_name, order, temps, views)
                if why and record:
                    notes.append(why)

    epilogues(record=False)
    for producer in list(order):
        k = by_name[producer]
        at = order.index(producer)
        out = {b.name for b in k.args if b.name in k.outputs}
        consumers = [c for c in order[at + 1:]
                     if any(views.get(b.name, b.name) in out for b in by_name[c].args)]
        if not consumers:
            continue
        through = [c for c in consumers
                   if any(b.name in views and views[b.name] in out for b in by_name[c].args)]
        if through:
            notes.append(f"{producer} -> {', '.join(through)}: read through a view (a "
                         "reshape), which fusion does not see through yet")
            continue
        pw = pointwise(k)
        if pw is None:
            continue  # (its epilogue was fused above, or why not noted)
        if pw.buffer.name not in temps:
            notes.append(f"{producer} -> {', '.join(consumers)}: {producer} writes the model "
                         f"output '{pw.buffer.name}', which must be stored anyway")
            continue
        vectored = [c for c in consumers if _vector_loads(by_name[c].body, pw.buffer)
                    and not _vector_inlinable(pw, by_name[c])]
        if vectored:
            notes.append(f"{producer} -> {', '.join(vectored)}: {', '.join(vectored)} reads "
                         f"{pw.buffer.name} in vector loads, and {producer} has no vector form "
                         "there (a load across its rows, a select, a cast or pow; or a register "
                         "tile, which re-reads it)")
            continue
        masked = [c for c in consumers if _recomputed_from_masks(pw, by_name[c])]
        if masked:
            notes.append(f"{producer} -> {', '.join(masked)}: {', '.join(masked)} reads each "
                         f"element of {pw.buffer.name} several times, and {producer} computes "
                         "from bool or integer elements, which vector code turns into masks "
                         "lane by lane at every read: stored once instead")
            continue
        costly = [c for c in consumers if not _profitable(pw, by_name[c])]
        if costly:
            notes.append(f"{producer} -> {', '.join(costly)}: recomputing {producer} "
                         f"({_cost(pw.value):g} operations per element) at each read costs "
                         "more than storing it")
            continue
        for c in consumers:
            by_name[c] = _inline(by_name[c], k, pw)
        order.remove(producer)
        del by_name[producer]
    # again, now that pointwise chains are one kernel each: an activation written as several
    # ops reading the matmul's result (gelu from ONNX: x * 0.5 * (1 + erf(x / sqrt 2)) reads
    # x twice) had several readers before and has one now; why a producer keeps its own
    # stores is said as of this round
    epilogues(record=True)
    # (a note on a producer that a later step fused away no longer holds)
    notes[first_note:] = [n for n in notes[first_note:] if n.split(" -> ")[0] in by_name]
    kept = [by_name[name] for name in order]
    return kept, [Launch(k.name, k.args) for k in kept]


def _fuse_epilogue(producer: str, by_name: dict[str, Kernel], order: list[str],
                   temps: set[str], views: dict[str, str]) -> str | None:
    """Fuse the one pointwise consumer of a non-pointwise kernel's temporary into the stores
    that write it (the bias and activation after a matmul); returns None when it did, else
    why not ("" when nothing reads the kernel's result).

    Every store `t[idx] = v` in the producer becomes `y[idx] = g(v)`, where `y[i] = g(t[i])`
    is the consumer: since `t` is never read back by the producer, the last value stored at
    each element is the one the consumer would have read. The fused kernel runs at the
    producer's launch, so nothing launched in between may write what the consumer reads,
    unless it can move before the producer (`_hoist`)."""
    k = by_name[producer]
    at = order.index(producer)
    outputs = [b for b in k.args if b.name in k.outputs]
    consumers = [c for c in order[at + 1:]
                 if any(b.name in k.outputs for b in by_name[c].args)]
    head = f"{producer} -> {', '.join(consumers)}"
    if not consumers:
        return ""
    if len(outputs) != 1 or outputs[0].name not in temps:
        return f"{head}: {producer} writes a model output, which must be stored anyway"
    t = outputs[0]
    if len(consumers) != 1:
        return f"{head}: {producer}'s result has {len(consumers)} readers (an epilogue " \
               "needs exactly one)"
    c = by_name[consumers[0]]
    cw = pointwise(c)
    if cw is None or cw.buffer.shape != t.shape or not reads_only_at(cw.value, t, cw.vars):
        return f"{head}: {c.name} is not elementwise over {t.name} (no epilogue to fuse)"
    if _calls(cw.value):
        return f"{head}: {c.name} calls pow, a library call per element, which in " \
               f"{producer}'s stores would keep its accumulators out of vector registers"
    if _reads(k.body, t) != 0:
        return f"{head}: {producer} reads back {t.name} as it accumulates, so its stores " \
               "are not final values"
    between = [by_name[name] for name in order[at + 1:order.index(c.name)]]
    read = {b.name for b in c.args} - {t.name, cw.buffer.name}
    for other in between:
        if any(b.name == cw.buffer.name for b in other.args) or \
                set(other.outputs) & read and not _hoist(other, producer, order, by_name, views):
            return f"{head}: {other.name}, launched in between, writes what {c.name} reads"
    if any(b.name == cw.buffer.name for b in k.args):
        return f"{head}: {producer} reads {cw.buffer.name}"

    taken = {x.var.name for x in walk_stmts(k.body) if isinstance(x, Local)}

    def vector_epilogue(run: list[Store], vector: Expr, lanes: int) -> list | None:
        """The consumer once for L stores of a vector's lanes (a register tile's), in vector
        form, when it has one: then one vector store writes them."""
        form = vector_form(cw.value, cw.vars[-1], lanes)
        if form is None:
            return None
        subst = dict(zip(cw.vars, run[0].indices))
        value = map_expr(form, lambda e: vector if isinstance(e, VecLoad) and e.buffer == t
                         else subst.get(e, e))
        n = len(taken)
        while f"vepi{n}" in taken:
            n += 1
        taken.add(f"vepi{n}")
        v = Var(f"vepi{n}", dtype_of(vector))
        return [Local(v, value), *(Store(cw.buffer, s.indices, Lane(v, j))
                                   for j, s in enumerate(run))]

    def stmts(body) -> tuple:
        out, body, at = [], list(body), 0
        while at < len(body):
            s = body[at]
            run = lane_store_run(body, at) if isinstance(s, Store) and s.buffer == t else None
            vec = run and vector_epilogue(body[at:at + run[1]], *run)
            if vec:
                out += vec
                at += run[1]
                continue
            at += 1
            if isinstance(s, (For, If)):
                out.append(replace(s, body=stmts(s.body)))
            elif isinstance(s, Store) and s.buffer == t:
                subst = dict(zip(cw.vars, s.indices))
                value = map_expr(cw.value, lambda e, s=s, subst=subst: s.value
                                 if isinstance(e, Load) and e.buffer == t else subst.get(e, e))
                out.append(Store(cw.buffer, s.indices, value))
            else:
                out.append(s)
        return tuple(out)

    args = tuple(dict.fromkeys([b for b in k.args if b != t]
                               + [b for b in c.args if b != t]))
    origin = "; ".join(o for o in (k.origin, c.origin) if o)
    by_name[producer] = replace(k, args=args, outputs=(cw.buffer.name,), body=stmts(k.body),
                                origin=origin)
    order.remove(c.name)
    del by_name[c.name]
    return None


def _hoist(other: Kernel, producer: str, order: list[str], by_name: dict[str, Kernel],
           views: dict[str, str]) -> bool:
    """Launch `other` just before `producer` if no kernel from `producer` up to it writes
    what it reads or reads what it writes (a mask computed after the matmul whose epilogue
    adds it); returns whether it moved."""
    def names(k: Kernel) -> set[str]:
        return {views.get(b.name, b.name) for b in k.args}

    def writes(k: Kernel) -> set[str]:
        return {views.get(n, n) for n in k.outputs}

    span = order[order.index(producer):order.index(other.name)]
    if any(writes(by_name[n]) & names(other) or writes(other) & names(by_name[n])
           for n in span):
        return False
    order.remove(other.name)
    order.insert(order.index(producer), other.name)
    return True


def _calls(e: Expr) -> bool:
    """Whether `e` computes pow, which compiles to a scalar library call (exp, log, tanh and
    erf are inline polynomials: codegen/vecmath.py)."""
    if isinstance(e, Binary) and e.op == "pow":
        return True
    return any(_calls(c) for c in children(e))


def reads_only_at(e: Expr, buf: Buffer, vars_: tuple[Var, ...]) -> bool:
    if isinstance(e, Load) and e.buffer == buf:
        return e.indices == vars_
    return all(reads_only_at(x, buf, vars_) for x in children(e))


def pointwise(k: Kernel) -> Pointwise | None:
    stmts, loops = k.body, []
    while len(stmts) == 1 and isinstance(stmts[0], For):
        loops.append(stmts[0])
        stmts = stmts[0].body
    if len(stmts) != 1 or not isinstance(stmts[0], Store):
        return None
    store = stmts[0]
    vars_ = tuple(f.var for f in loops)
    if store.indices != vars_ or tuple(f.extent for f in loops) != store.buffer.shape:
        return None
    if store.buffer.name not in k.outputs or not _closed(store.value, set(vars_), store.buffer):
        return None
    return Pointwise(store.buffer, vars_, store.value)


def _closed(e: Expr, vars_: set[Var], out: Buffer) -> bool:
    """`e` uses no variable but the loop's and does not read the buffer it writes."""
    if isinstance(e, Var):
        return e in vars_
    if isinstance(e, Load):
        return e.buffer != out and all(_closed(i, vars_, out) for i in e.indices)
    return all(_closed(c, vars_, out) for c in children(e))


def _cost(e: Expr) -> float:
    """Scalar operations in `e` (a transcendental function counts as many)."""
    own = 0
    if isinstance(e, Unary):
        own = CHEAP_OPS + 1 if e.op in FLOAT_UNARY else 1
    elif isinstance(e, Binary):
        own = CHEAP_OPS + 1 if e.op in ("pow", "div") else 1
    elif isinstance(e, (Compare, Select)):
        own = 1
    elif isinstance(e, MulAdd):
        own = 2
    return own + sum(_cost(c) for c in children(e))


def _profitable(pw: Pointwise, consumer: Kernel) -> bool:
    # an expression reading the buffer twice would hold two copies of the producer: a chain
    # of such consumers would grow exponentially (where(x > 1, x - 1, x), repeated)
    if _most_loads_per_statement(consumer.body, pw.buffer) > 1 and _cost(pw.value) > 0:
        return False
    if _size(pw.value) > MAX_INLINED_SIZE:
        return False
    if _cost(pw.value) <= CHEAP_OPS:
        return True
    # computed as often as stored: the consumer's loads of the buffer run once per element
    numel = product(pw.buffer.shape)
    return _reads(consumer.body, pw.buffer) == numel


def _recomputed_from_masks(pw: Pointwise, consumer: Kernel) -> bool:
    """Whether `consumer` reads the producer's elements more than once each (a broadcast) and
    the producer loads bool or integer elements. A 0/-inf attention mask from two bool
    vectors, recomputed in a matmul's epilogue for every head, ran the q·kᵀ tile at 47
    GFLOP/s against 108 with the mask stored once as f32: LLVM builds each vector's
    comparison mask bit by bit from the byte loads."""
    if not any(isinstance(x, Load) and x.buffer.dtype != "f32" for x in walk_expr(pw.value)):
        return False
    numel = product(pw.buffer.shape)
    reads = _reads(consumer.body, pw.buffer)
    return isinstance(reads, int) and isinstance(numel, int) and reads > numel


def _most_loads_per_statement(stmts, buf: Buffer) -> int:
    most = 0
    for s in stmts:
        if isinstance(s, (For, If)):
            most = max(most, _most_loads_per_statement(s.body, buf))
        else:
            value = {Store: "value", Local: "init", Assign: "value"}.get(type(s), "cond")
            # (copies of the producer: a vector load is one)
            most = max(most, sum(isinstance(x, (Load, VecLoad)) and x.buffer == buf
                                 for x in walk_expr(getattr(s, value))))
    return most


def _size(e: Expr) -> int:
    return 1 + sum(_size(c) for c in children(e))


def _reads(stmts, buf: Buffer, trips=1):
    """How many times `stmts` load from `buf` (a polynomial when extents are symbolic)."""
    total = 0
    for s in stmts:
        if isinstance(s, For):
            total = total + _reads(s.body, buf, trips * s.trips)
        elif isinstance(s, If):  # (counted as if it always held)
            total = total + trips * _loads(s.cond, buf) + _reads(s.body, buf, trips)
        elif isinstance(s, Store):
            total = total + trips * (_loads(s.value, buf)
                                     + sum(_loads(i, buf) for i in s.indices))
        elif isinstance(s, Local):
            total = total + trips * _loads(s.init, buf)
        elif isinstance(s, Assign):
            total = total + trips * _loads(s.value, buf)
        else:  # Assert
            total = total + trips * _loads(s.cond, buf)
    return total


def _loads(e: Expr, buf: Buffer) -> int:
    """Elements of `buf` that `e` loads (a vector load: one per lane)."""
    own = 0
    if isinstance(e, Load) and e.buffer == buf:
        own = 1
    elif isinstance(e, VecLoad) and e.buffer == buf:
        own = e.lanes
    return own + sum(_loads(c, buf) for c in children(e))


def _vector_loads(stmts, buf: Buffer) -> bool:
    """Whether `stmts` read `buf` by vector loads, which inlining cannot rewrite."""
    return any(isinstance(x, VecLoad) and x.buffer == buf
               for s in walk_stmts(stmts) for e in stmt_exprs(s) for x in walk_expr(e))


def _vector_inlinable(pw: Pointwise, consumer: Kernel) -> bool:
    """Whether every vector load of the producer's buffer in `consumer` can take the producer
    in vector form, and the consumer reads each element at most twice."""
    lanes = {x.lanes for s in walk_stmts(consumer.body) for e in stmt_exprs(s)
             for x in walk_expr(e) if isinstance(x, VecLoad) and x.buffer == pw.buffer}
    if any(vector_form(pw.value, pw.vars[-1], n) is None for n in lanes):
        return False
    numel = product(pw.buffer.shape)
    reads = _reads(consumer.body, pw.buffer)
    if isinstance(reads, int) and isinstance(numel, int):
        return reads <= 2 * numel
    return reads in (numel, 2 * numel)


def _inline(consumer: Kernel, producer: Kernel, pw: Pointwise) -> Kernel:
    def at_load(e: Expr) -> Expr:
        if isinstance(e, Load) and e.buffer == pw.buffer:
            return map_expr(pw.value, lambda v: dict(zip(pw.vars, e.indices)).get(v, v))
        if isinstance(e, VecLoad) and e.buffer == pw.buffer:
            vector = vector_form(pw.value, pw.vars[-1], e.lanes)
            return map_expr(vector, lambda v: dict(zip(pw.vars, e.indices)).get(v, v))
        return e

    reads = [b for b in producer.args if b != pw.buffer]
    args = tuple(dict.fromkeys([*(b for b in consumer.args if b != pw.buffer), *reads]))
    # keep the consumer's output last, as lowering does
    args = tuple(b for b in args if b.name not in consumer.outputs) + \
        tuple(b for b in args if b.name in consumer.outputs)
    origin = f"{producer.origin}; {consumer.origin}" if producer.origin else consumer.origin
    return replace(consumer, args=args, body=map_stmt_exprs(consumer.body, at_load),
                   origin=origin)
