"""Lower a graph to a loop-IR program: place every value, then one kernel per node.

Inputs and outputs live in the caller's memory, parameters in the embedded weights blob
(64-byte aligned), temporaries in the workspace at the offsets memory planning gives. Rank-0
parameters (literals) are folded into the loops that read them and take no memory.
Assumes the graph passes have run (outputs are distinct node results).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np

from aotml import ops
from aotml.errors import CompileError, InternalError
from aotml.graph.ir import Graph, Value
from aotml.graph.memory import ALIGN, Lifetime, MemoryPlan, plan
from aotml.graph.symbolic import SymbolicError
from aotml.loops.build import Names, Operand, const
from aotml.loops.fold import fold_weight_layouts
from aotml.loops.fuse import fuse
from aotml.loops.inplace import reuse_in_place
from aotml.loops.ir import Assert, Buffer, For, Kernel, Launch, Placement, Program
from aotml.loops.schedule import block_transpose, open_unit_loops, parallelize

VIEWS = frozenset({"reshape", "squeeze", "unsqueeze"})


def lower_graph(graph: Graph, notes: list[str] | None = None,
                lowerings: dict[str, Callable] | None = None, vector_lanes: int | None = None
                ) -> tuple[Program, MemoryPlan, list]:
    """The program, the memory plan, and the weights: a list of (offset, array). Why kernels
    were not fused is appended to `notes`. `lowerings` maps op names to lowerings that take
    the place of the ops' own (a target's schedules: gpu/schedules.py's GPU_LOWERINGS); one
    that returns None declines, and the op's own lowering runs. `vector_lanes` (the f32 lanes
    of the CPU target's widest vector) lets lowerings write explicit vector code."""
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

    params: dict[str, tuple[Buffer, object]] = {}  # laid out once the kernels are final
    for p in graph.params:
        if p.value.type.rank == 0:
            # folded in as a constant of its compute dtype, holding its stored (rounded) value
            scalars[p.value.uid] = const(p.data.item(), p.value.type.dtype)
            continue
        buffers[p.value.uid] = buffer_for(p.value)
        params[buffers[p.value.uid].name] = (buffers[p.value.uid], p.data)

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
        names = Names(f"k{i}", taken, vector_lanes, frozenset(params))
        try:
            body = None
            if lowerings and node.op in lowerings:
                body = lowerings[node.op](out, operands, node.attr, names)
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
        kernel = Kernel(f"k{i}_{node.op}", args, (out.name,), tuple(body), origin,
                        names.schedule)
        kernels.append(kernel)
        launches.append(Launch(kernel.name, args))

    roots = {name: r.name for name, r in root.items()}
    kernels, launches = fuse(kernels, launches, {b.name for b in temps if b.name not in root},
                             notes, roots)
    # what fusion left of a transpose of the last axis runs in vector blocks; a loop of one
    # iteration is opened first: its nests fold and run in parallel on their own
    kernels = [replace(k, body=open_unit_loops(block_transpose(k, vector_lanes).body))
               for k in kernels]
    kernels, made = fold_weight_layouts(kernels, {n: a for n, (_, a) in params.items()},
                                        scratch)
    launches = [Launch(k.name, k.args) for k in kernels]
    scratch -= set(made)
    placed = [b for b in temps if b.name not in root and b.name not in made]
    kernels, launches, aliases = reuse_in_place(
        kernels, launches, {b.name for b in placed} - scratch, roots)
    kernels = [parallelize(k) for k in kernels]
    plan = _plan(launches, kernels, placed, graph.symbols, roots, scratch, aliases)
    live = {roots.get(b.name, b.name) for launch in launches for b in launch.args}
    # the weights still read, then the layouts made at build time
    weights, offset = [], 0
    for buf, data in [*(params[n] for n in params if n in live), *made.values()]:
        placements.append(Placement(buf, "param", offset))
        weights.append((offset, data))
        offset += (data.nbytes + ALIGN - 1) // ALIGN * ALIGN
    for b in temps:
        if b.name in root:
            if root[b.name].name in live:
                placements.append(Placement(b, "view", 0, of=root[b.name].name))
        elif b.name in live and b.name not in made:  # (fused away: no memory)
            placements.append(Placement(b, "workspace", plan.offsets[b.name]))
    program = Program(graph.name, tuple(placements), tuple(kernels), tuple(launches),
                      plan.workspace_bytes, offset, tuple(graph.symbols.items()),
                      plan.onchip_bytes)
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
    # shared and local scratch (a GPU schedule's) after the rest: a GPU keeps it on chip and
    # allocates only the part before it; the grid emulation runs it in the workspace
    onchip = {b.name for b in temps if b.scope != "global"}
    result = plan([Lifetime(h, size[h], lo, hi) for h, (lo, hi) in span.items()
                   if h not in onchip], symbols)
    chip = plan([Lifetime(h, size[h], lo, hi) for h, (lo, hi) in span.items()
                 if h in onchip], {})
    offsets = {**result.offsets,
               **{name: result.workspace_bytes + at for name, at in chip.offsets.items()},
               **{name: result.offsets[holder(name)] for name in aliases}}
    bound = None if result.lower_bound is None else result.lower_bound + chip.lower_bound
    return MemoryPlan(offsets, result.workspace_bytes + chip.workspace_bytes, bound,
                      tuple(aliases.items()), chip.workspace_bytes)



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


def share_weights(first: Program, first_weights: list, second: Program,
                  second_weights: list) -> tuple[Program, Program, list]:
    """Two lowerings of one graph (CPU and GPU) over one weights blob: `first`'s layout, then
    the weights only `second` reads. A weight of one name is one array in both (the graph's
    parameter, or a layout both made from it alike); a difference is a compiler bug."""
    at = {pl.buffer.name: pl.index for pl in first.placements if pl.region == "param"}
    first_data = dict(first_weights)
    data = {name: first_data[offset] for name, offset in at.items()}
    second_data = dict(second_weights)
    merged, end = list(first_weights), first.weights_bytes
    placements = []
    for pl in second.placements:
        if pl.region == "param":
            array = second_data[pl.index]
            name = pl.buffer.name
            if name not in at:
                at[name], data[name] = end, array
                merged.append((end, array))
                end += (array.nbytes + ALIGN - 1) // ALIGN * ALIGN
            elif data[name] is not array and not (data[name].shape == array.shape and
                                                  np.array_equal(data[name], array)):
                raise InternalError(f"the CPU and GPU lowerings disagree on weight '{name}'")
            pl = replace(pl, index=at[name])
        placements.append(pl)
    return (replace(first, weights_bytes=end),
            replace(second, placements=tuple(placements), weights_bytes=end), merged)
