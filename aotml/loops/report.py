"""The build report (`aotml build --report`): each kernel with the graph ops fused into it, its
arithmetic and its memory traffic, why neighbouring kernels were not fused, and the workspace
against the liveness lower bound.

FLOPs count the floating-point operations of the loop bodies times their trip counts (a
transcendental function counts as one); bytes count each argument buffer once, the traffic of
a kernel that keeps its working set in cache, but twice for an output written in place over an
input (read, then written). Both are polynomials when dims are symbolic.
"""

from __future__ import annotations

from typing import NamedTuple

from aotml.graph.memory import MemoryPlan
from aotml.graph.symbolic import Dim
from aotml.loops.ir import (
    Assign,
    Binary,
    For,
    If,
    Load,
    Local,
    MulAdd,
    Program,
    Store,
    Unary,
    children,
    dtype_of,
    lanes_of,
)


def flops(stmts, trips: Dim = 1) -> Dim:
    total: Dim = 0
    for s in stmts:
        if isinstance(s, For):
            total = total + flops(s.body, trips * s.trips)
        elif isinstance(s, If):
            total = total + flops(s.body, trips)
        elif isinstance(s, (Store, Assign)):
            total = total + trips * _ops(s.value)
        elif isinstance(s, Local):
            total = total + trips * _ops(s.init)
    return total


def _ops(e) -> int:
    own = 0
    dt = dtype_of(e)
    if isinstance(e, (Unary, Binary)) and (dt == "f32" or lanes_of(dt)):
        own = lanes_of(dt) or 1
    elif isinstance(e, MulAdd):
        own = 2 * (lanes_of(dt) or 1)
    if isinstance(e, Load):
        return 0
    return own + sum(_ops(c) for c in children(e))


class KernelWork(NamedTuple):
    """A kernel, the graph ops fused into it, and its arithmetic and traffic."""

    kernel: str
    ops: str  # joined by " + "
    flops: Dim
    bytes: Dim


def kernel_work(program: Program, plan: MemoryPlan) -> list[KernelWork]:
    """Each kernel's work, in the program's kernel order."""
    rows = []
    over = {out for out, _ in plan.in_place}
    for k in program.kernels:
        traffic: Dim = 0
        for b in k.args:
            if b.scope == "global":  # (shared and local buffers are on chip)
                twice = b.name in over and b.name in k.outputs
                traffic = traffic + b.nbytes * (2 if twice else 1)
        ops = [part.split(" at ")[0] for part in k.origin.split("; ")] if k.origin else []
        rows.append(KernelWork(k.name, " + ".join(ops), flops(k.body), traffic))
    return rows


def report(program: Program, plan: MemoryPlan, notes: list[str]) -> str:
    rows = [(w.kernel, w.ops, str(w.flops), str(w.bytes)) for w in kernel_work(program, plan)]
    widths = [max(len(r[i]) for r in rows + [("kernel", "ops", "flops", "bytes")])
              for i in range(4)]
    lines = [f"report for {program.name}: {len(program.kernels)} kernels"]
    head = ("kernel", "ops", "flops", "bytes")
    lines.append("  " + "  ".join(h.ljust(w) for h, w in zip(head, widths)))
    for r in rows:
        lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)))
    chosen = [k for k in program.kernels if k.schedule]
    if chosen:
        lines.append("schedules:")
        lines += [f"  {k.name}: {k.schedule}" for k in chosen]
    if notes:
        lines.append("not fused:")
        lines += [f"  {n}" for n in notes]
    if plan.in_place:
        lines.append("in place (an output over an input that dies with its kernel):")
        lines += [f"  {out} over {over}" for out, over in plan.in_place]
    lower_bound = plan.lower_bound
    bound = "unknown (an unbounded symbol)" if lower_bound is None else f"{lower_bound} bytes"
    lines.append(f"workspace: {program.workspace_bytes} bytes; liveness lower bound: {bound}")
    return "\n".join(lines)
