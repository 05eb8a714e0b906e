"""Lower a graph to a loop-IR program: place every value, then one kernel per node.

Inputs and outputs live in the caller's memory, parameters in the embedded weights blob
(64-byte aligned), temporaries in the workspace at the offsets memory planning gives. Rank-0
parameters (literals) are folded into the loops that read them and take no memory.
Assumes the graph passes have run (outputs are distinct node results).
"""

from __future__ import annotations

from dataclasses import replace

from aotml import ops
from aotml.errors import CompileError
from aotml.gpu.schedules import GPU_LOWERINGS
from aotml.graph.ir import Graph, Value
from aotml.graph.memory import ALIGN, Lifetime, MemoryPlan, plan
from aotml.graph.symbolic import SymbolicError
from aotml.loops.build import Names, Operand, const
from aotml.loops.fuse import fuse
from aotml.loops.inplace import reuse_in_place
from aotml.loops.ir import Assert, Buffer, For, Kernel, Launch, Placement, Program
from aotml.loops.schedule import parallelize

VIEWS = frozenset({"reshape", "squeeze", "unsqueeze"})


def lower_graph(graph: Graph, notes: list[str] | None = None,
                gpu: bool = False) -> tuple[Program, MemoryPlan, list]:
    """The program, the memory plan, and the weights: a list of (offset, array). Why kernels
    were not fused is appended to `notes`. `gpu` lowers the ops that have a GPU schedule
    (gpu/schedules.py) through it, in block form."""
    taken: set[str] = set()

    def buffer_for(v: Value, base: str | None = None) -> Buffer:
        base = base or v.name
        name, k = base, 1
        while name in taken:
            name, k = f"{base}_{k}", k + 1
        taken.add(name)
        return Buffer(name, v.type.dtype, v.type.shape)

    buffers: dict[int, Buffer] = {}
    scalars: dict = {}
    placements: list[Placement] = []

    for i, v in enumerate(graph.inputs):
        buffers[v.uid] = buffer_for(v)
        placements.append(Placement(buffers[v.uid], "input", i, v.name))
    output_ids = {v.uid: i for i, (_, v) in enumerate(graph.outputs)}
    for i, (name, v) in enumerate(graph.outputs):
        buffers[v.uid] = buffer_for(v, name)
        placements.append(Placement(buffers[v.uid], "output", i, name))

    weights, offset = [], 0
    for p in graph.params:
        if p.value.type.rank == 0:
            # folded in as a constant of its compute dtype, holding its stored (rounded) value
            scalars[p.value.uid] = const(p.data.item(), p.value.type.dtype)
            continue
        buffers[p.value.uid] = buffer_for(p.value)
        placements.append(Placement(buffers[p.value.uid], "param", offset))
        weights.append((offset, p.data))
        offset += (p.value.type.nbytes + ALIGN - 1) // ALIGN * ALIGN

    temps = [buffer_for(n.result) for n in graph.nodes if n.result.uid not in output_ids]
    for n, b in zip((n for n in graph.nodes if n.result.uid not in output_ids), temps):
        buffers[n.result.uid] = b

    # reshape/squeeze/unsqueeze of a buffer are views: the same bytes under another shape
    # (every buffer is dense row-major); a model output is still written by a copy
    root: dict[str, Buffer] = {}
    kernels, launches = [], []
    scratch: set[str] = set()
    for i, node in enumerate(graph.nodes):
        src = node.inputs[0].uid if node.inputs else None
        if node.op in VIEWS and node.result.uid not in output_ids and src in buffers:
            source = buffers[src]
            root[buffers[node.result.uid].name] = root.get(source.name, source)
            continue
        operands = [Operand(v.type.shape, scalar=scalars[v.uid], scalar_dtype=v.type.dtype)
                    if v.uid in scalars
                    else Operand(v.type.shape, buffer=buffers[v.uid]) for v in node.inputs]
        out = buffers[node.result.uid]
        names = Names(f"k{i}", taken)
        try:
            body = None
            if gpu and node.op in GPU_LOWERINGS:
                body = GPU_LOWERINGS[node.op](out, operands, node.attr, names)
            if body is None:
                body = ops.REGISTRY[node.op].lower(out, operands, node.attr, names)
        except SymbolicError as err:
            raise CompileError(f"'{node.op}' cannot be compiled for the symbolic shape "
                               f"{node.result.type}: {err}", node.span,
                               hint="this op needs that dim fixed at build time") from None
        body = _locate_asserts(body, f"'{node.op}' at {node.span}" if node.span else node.op)
        args = tuple(dict.fromkeys([o.buffer for o in operands if o.buffer is not None] + [out]
                                   + names.scratch))
        temps += names.scratch
        scratch.update(b.name for b in names.scratch)
        origin = node.op + (f" at {node.span}" if node.span is not None else "")
        kernel = Kernel(f"k{i}_{node.op}", args, (out.name,), tuple(body), origin)
        kernels.append(kernel)
        launches.append(Launch(kernel.name, args))

    roots = {name: r.name for name, r in root.items()}
    kernels, launches = fuse(kernels, launches, {b.name for b in temps if b.name not in root},
                             notes, roots)
    placed = [b for b in temps if b.name not in root]
    kernels, launches, aliases = reuse_in_place(
        kernels, launches, {b.name for b in placed} - scratch, roots, scratch)
    kernels = [parallelize(k) for k in kernels]
    plan = _plan(launches, kernels, placed, graph.symbols, roots, scratch, aliases)
    live = {roots.get(b.name, b.name) for launch in launches for b in launch.args}
    for b in temps:
        if b.name in root:
            if root[b.name].name in live:
                placements.append(Placement(b, "view", 0, of=root[b.name].name))
        elif b.name in live:  # (a temporary fused away takes no memory)
            placements.append(Placement(b, "workspace", plan.offsets[b.name]))
    program = Program(graph.name, tuple(placements), tuple(kernels), tuple(launches),
                      plan.workspace_bytes, offset, tuple(graph.symbols.items()))
    return program, plan, weights


def _plan(launches, kernels, temps: list[Buffer], symbols, roots: dict[str, str],
          scratch: set[str], aliases: dict[str, str]) -> MemoryPlan:
    """Workspace offsets by liveness over the launches: a temporary lives from the launch that
    writes it to the last launch that reads it or a view of it (a kernel's inputs and output
    never share bytes: both are live at its launch, but for the in-place writes in `aliases`,
    whose buffers are planned as one); a scratch buffer, during its launch."""
    writes = {k.name: set(k.outputs) | (scratch & {b.name for b in k.args}) for k in kernels}
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    for i, launch in enumerate(launches):
        for b in launch.args:
            name = roots.get(b.name, b.name)
            if b.name in writes[launch.kernel]:
                first.setdefault(name, i)
            last[name] = i
    def holder(name: str) -> str:  # the first of a chain of in-place writes
        while name in aliases:
            name = aliases[name]
        return name

    span: dict[str, tuple[int, int]] = {}
    size: dict[str, object] = {}
    for b in temps:
        if b.name in first:
            h = holder(b.name)
            lo, hi = span.get(h, (first[b.name], last[b.name]))
            span[h] = (min(lo, first[b.name]), max(hi, last[b.name]))
            size[h] = b.nbytes  # (an in-place write keeps the size)
    result = plan([Lifetime(h, size[h], lo, hi) for h, (lo, hi) in span.items()], symbols)
    offsets = {**result.offsets, **{name: result.offsets[holder(name)] for name in aliases}}
    return replace(result, offsets=offsets, in_place=tuple(aliases.items()))



def _locate_asserts(stmts, where: str) -> list:
    """Append the op and its source location to every run-time check's message."""
    out = []
    for s in stmts:
        if isinstance(s, Assert):
            s = Assert(s.cond, f"{s.message} in {where}")
        elif isinstance(s, For):
            s = replace(s, body=tuple(_locate_asserts(s.body, where)))
        out.append(s)
    return out
