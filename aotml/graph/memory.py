"""Memory planning: place every intermediate in one workspace arena.

Each temporary is live from the node that makes it to its last reader. Temporaries are placed
largest first at the lowest 64-byte-aligned offset that overlaps no placed tensor whose lifetime
intersects its own (a kernel's inputs are still live while it writes its output, so they never
share bytes with it). Returns the offsets and the arena size, and the liveness lower bound:
the most bytes simultaneously live at any node.

Symbolic sizes: a temporary whose symbols all have upper bounds is planned at its size at the
bounds (a smaller run-time size fits in its slot). The others get offsets that are polynomials
in the symbols, computed at run time: they are placed after the static part, one slot each,
a slot reused by a later temporary of the same kind of size (the same monomials: `N*64` and
`N*128`) once its holder is dead, grown to the coefficient-wise maximum. Each byte size is
rounded up term by term to a multiple of 64, so every offset stays aligned.
"""

from __future__ import annotations

from dataclasses import dataclass

from aotml.graph.ir import Graph, Value
from aotml.graph.symbolic import Dim, Sym, evaluate, round_up_terms

ALIGN = 64


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


@dataclass(frozen=True)
class MemoryPlan:
    """Workspace offsets of the temporaries, by value uid."""

    offsets: dict[int, Dim]
    workspace_bytes: Dim
    lower_bound: int | None  # None when some size has an unbounded symbol


def plan_memory(graph: Graph, temps: list[Value]) -> MemoryPlan:
    bounds = graph.symbols
    static, dynamic = [], []
    for v in temps:
        bounded = all(bounds.get(s) is not None for s in v.type.symbols)
        (static if bounded else dynamic).append(v)

    def size_at_bounds(v: Value) -> int:
        return evaluate(v.type.nbytes, bounds)

    plan = _plan_static(graph, static, size_at_bounds)
    if not dynamic:
        return plan
    offsets: dict[int, Dim] = dict(plan.offsets)
    live = _lifetimes(graph, dynamic)
    slots: list[list] = []  # [size, holders' lifetimes]
    slot_of: dict[int, int] = {}
    for v in sorted(dynamic, key=lambda v: live[v.uid][0]):
        size = round_up_terms(v.type.nbytes, ALIGN)
        start, end = live[v.uid]
        for k, (held, lifetimes) in enumerate(slots):
            if _same_kind(held, size) and all(e < start or end < s for s, e in lifetimes):
                slots[k][0] = _merge(held, size)
                lifetimes.append((start, end))
                slot_of[v.uid] = k
                break
        else:
            slot_of[v.uid] = len(slots)
            slots.append([size, [(start, end)]])
    starts: list[Dim] = []
    at: Dim = plan.workspace_bytes
    for size, _ in slots:
        starts.append(at)
        at = at + size
    for v in dynamic:
        offsets[v.uid] = starts[slot_of[v.uid]]
    return MemoryPlan(offsets, at, None)


def _same_kind(a: Dim, b: Dim) -> bool:
    return isinstance(a, Sym) and isinstance(b, Sym) and \
        {m for m, _ in a.terms} == {m for m, _ in b.terms}


def _merge(a: Sym, b: Sym) -> Dim:
    """The coefficient-wise maximum: at least both, for every value of the symbols."""
    coef = dict(b.terms)
    return Sym._make({m: max(c, coef[m]) for m, c in a.terms})


def _lifetimes(graph: Graph, temps: list[Value]) -> dict[int, tuple[int, int]]:
    index = {n.result.uid: i for i, n in enumerate(graph.nodes)}
    last_use = dict.fromkeys((v.uid for v in temps), -1)
    for i, n in enumerate(graph.nodes):
        for v in n.inputs:
            if v.uid in last_use:
                last_use[v.uid] = i
    return {v.uid: (index[v.uid], max(index[v.uid], last_use[v.uid])) for v in temps}


def _plan_static(graph: Graph, temps: list[Value], nbytes) -> MemoryPlan:
    """First fit, largest first, on sizes known at build time."""
    index = {n.result.uid: i for i, n in enumerate(graph.nodes)}
    live = _lifetimes(graph, temps)
    placed: list[tuple[int, int, tuple[int, int]]] = []  # (offset, size, lifetime)
    offsets: dict[int, int] = {}
    for v in sorted(temps, key=lambda v: (-nbytes(v), index[v.uid])):
        start, end = live[v.uid]
        size = _align(nbytes(v))
        busy = sorted((off, sz) for off, sz, (s, e) in placed if s <= end and start <= e)
        offset = 0
        for off, sz in busy:
            if offset + size <= off:
                break
            offset = max(offset, off + sz)
        placed.append((offset, size, (start, end)))
        offsets[v.uid] = offset
    total = max((off + sz for off, sz, _ in placed), default=0)
    bound = max((sum(nbytes(v) for v in temps if live[v.uid][0] <= i <= live[v.uid][1])
                 for i in range(len(graph.nodes))), default=0)
    return MemoryPlan(offsets, total, bound)
