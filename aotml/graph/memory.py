"""Memory planning: place every intermediate in one workspace arena.

Each temporary is live over a range of steps (lowering gives them: from the launch that writes
it to the last launch that reads it, after fusion). Temporaries are placed one by one at the
lowest 64-byte-aligned offset that overlaps no placed tensor whose lifetime intersects its
own, in several orders (largest first, earliest first, most byte-steps first, then seeded
shuffles until one meets the lower bound), and the smallest arena is kept. A kernel's inputs
are still live while it writes its output, so they never share bytes with it. Returns the
offsets and the arena size, and the liveness lower bound: the most bytes simultaneously live
at any step.

Symbolic sizes: a temporary whose symbols all have upper bounds is planned at its size at the
bounds (a smaller run-time size fits in its slot). The others get offsets that are polynomials
in the symbols, computed at run time: they are placed after the static part, one slot each,
a slot reused by a later temporary of the same kind of size (the same monomials: `N*64` and
`N*128`) once its holder is dead, grown to the coefficient-wise maximum. Each byte size is
rounded up term by term to a multiple of 64, so every offset stays aligned.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from aotml.graph.symbolic import Dim, Sym, evaluate, round_up_terms, symbols_of

ALIGN = 64
SHUFFLES = 64  # seeded random orders tried after the three heuristic ones


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


@dataclass(frozen=True)
class MemoryPlan:
    """Workspace offsets of the temporaries, by key (a value's uid, or a buffer's name)."""

    offsets: dict[object, Dim]
    workspace_bytes: Dim
    lower_bound: int | None  # None when some size has an unbounded symbol
    # (buffer, temporary): in-place writes, each buffer at its temporary's offset, planned as
    # one lifetime (loops/inplace.py)
    in_place: tuple[tuple[str, str], ...] = ()
    onchip_bytes: int = 0  # the last bytes of the workspace: shared and local scratch


@dataclass(frozen=True)
class Lifetime:
    """A tensor to place: its key, byte size, and the steps (inclusive) it is live over."""

    key: object
    nbytes: Dim
    start: int
    end: int


def plan(items: list[Lifetime], bounds: dict[str, int | None]) -> MemoryPlan:
    """Offsets for `items` (keyed by their keys) in one arena."""
    static, dynamic = [], []
    for t in items:
        bounded = all(bounds.get(s) is not None for s in symbols_of([t.nbytes]))
        (static if bounded else dynamic).append(t)

    result = _plan_static(static, lambda t: evaluate(t.nbytes, bounds))
    if not dynamic:
        return result
    offsets: dict[object, Dim] = dict(result.offsets)
    slots: list[list] = []  # [size, holders' lifetimes]
    slot_of: dict[object, int] = {}
    for t in sorted(dynamic, key=lambda t: t.start):
        size = round_up_terms(t.nbytes, ALIGN)
        for k, (held, lifetimes) in enumerate(slots):
            if _same_kind(held, size) and all(e < t.start or t.end < s for s, e in lifetimes):
                slots[k][0] = _merge(held, size)
                lifetimes.append((t.start, t.end))
                slot_of[t.key] = k
                break
        else:
            slot_of[t.key] = len(slots)
            slots.append([size, [(t.start, t.end)]])
    starts: list[Dim] = []
    at: Dim = result.workspace_bytes
    for size, _ in slots:
        starts.append(at)
        at = at + size
    for t in dynamic:
        offsets[t.key] = starts[slot_of[t.key]]
    return MemoryPlan(offsets, at, None)


def _same_kind(a: Dim, b: Dim) -> bool:
    return isinstance(a, Sym) and isinstance(b, Sym) and \
        {m for m, _ in a.terms} == {m for m, _ in b.terms}


def _merge(a: Sym, b: Sym) -> Dim:
    """The coefficient-wise maximum: at least both, for every value of the symbols."""
    coef = dict(b.terms)
    return Sym._make({m: max(c, coef[m]) for m, c in a.terms})


def _plan_static(items: list[Lifetime], nbytes) -> MemoryPlan:
    """First fit in a few orders, keeping the smallest arena: largest first, earliest first,
    most byte-steps first, then seeded shuffles (the same every build) until one reaches the
    liveness lower bound. No order wins on every program, and each try is cheap."""
    steps = max((t.end for t in items), default=-1) + 1
    bound = max((sum(nbytes(t) for t in items if t.start <= i <= t.end)
                 for i in range(steps)), default=0)
    orders = [sorted(items, key=key) for key in (
        lambda t: (-nbytes(t), t.start),
        lambda t: (t.start, -nbytes(t)),
        lambda t: (-(t.end - t.start + 1) * nbytes(t), t.start))]
    shuffler = random.Random(0)
    for _ in range(SHUFFLES):
        order = list(items)
        shuffler.shuffle(order)
        orders.append(order)
    best: tuple[int, dict[object, int]] | None = None
    for order in orders:
        placed = _first_fit(order, nbytes)
        total = max((off + _align(nbytes(t)) for t, off in placed), default=0)
        if best is None or total < best[0]:
            best = (total, {t.key: off for t, off in placed})
        if best[0] <= bound:  # nothing does better
            break
    return MemoryPlan(best[1], best[0], bound)


def _first_fit(items: list[Lifetime], nbytes) -> list[tuple[Lifetime, int]]:
    """Each item, in order, at the lowest aligned offset free over its lifetime."""
    placed: list[tuple[Lifetime, int]] = []
    for t in items:
        size = _align(nbytes(t))
        busy = sorted((off, _align(nbytes(p))) for p, off in placed
                      if p.start <= t.end and t.start <= p.end)
        offset = 0
        for off, sz in busy:
            if offset + size <= off:
                break
            offset = max(offset, off + sz)
        placed.append((t, offset))
    return placed
