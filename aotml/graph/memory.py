"""Memory planning: place every intermediate in one workspace arena.

Each temporary is live from the node that makes it to its last reader. Temporaries are placed
largest first at the lowest 64-byte-aligned offset that overlaps no placed tensor whose lifetime
intersects its own (a kernel's inputs are still live while it writes its output, so they never
share bytes with it). Returns the offsets and the arena size, and the liveness lower bound:
the most bytes simultaneously live at any node.
"""

from __future__ import annotations

from dataclasses import dataclass

from aotml.graph.ir import Graph, Value

ALIGN = 64


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


@dataclass(frozen=True)
class MemoryPlan:
    """Workspace offsets of the temporaries, by value uid."""

    offsets: dict[int, int]
    workspace_bytes: int
    lower_bound: int


def plan_memory(graph: Graph, temps: list[Value]) -> MemoryPlan:
    index = {n.result.uid: i for i, n in enumerate(graph.nodes)}
    last_use = dict.fromkeys((v.uid for v in temps), -1)
    for i, n in enumerate(graph.nodes):
        for v in n.inputs:
            if v.uid in last_use:
                last_use[v.uid] = i
    live = {v.uid: (index[v.uid], max(index[v.uid], last_use[v.uid])) for v in temps}

    placed: list[tuple[int, int, tuple[int, int]]] = []  # (offset, size, lifetime)
    offsets: dict[int, int] = {}
    for v in sorted(temps, key=lambda v: (-v.type.nbytes, index[v.uid])):
        start, end = live[v.uid]
        size = _align(v.type.nbytes)
        busy = sorted((off, sz) for off, sz, (s, e) in placed if s <= end and start <= e)
        offset = 0
        for off, sz in busy:
            if offset + size <= off:
                break
            offset = max(offset, off + sz)
        placed.append((offset, size, (start, end)))
        offsets[v.uid] = offset
    total = max((off + sz for off, sz, _ in placed), default=0)
    bound = max((sum(v.type.nbytes for v in temps if live[v.uid][0] <= i <= live[v.uid][1])
                 for i in range(len(graph.nodes))), default=0)
    return MemoryPlan(offsets, total, bound)
