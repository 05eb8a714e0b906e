"""In-place reuse: a pointwise kernel writes its output over an input that dies with it.

Memory planning keeps a kernel's inputs and output apart, since in general a kernel may read
an input element after it has written the output element at the same place. A *pointwise*
kernel (fuse.pointwise: a perfect nest over the output's shape, one store at exactly the loop
variables) that reads a temporary only at those same variables is the exception: each
iteration reads `x[i, j]` and then writes `y[i, j]`, and no two iterations touch one element.
When `x` has `y`'s shape and dtype and this launch is its last use, `y` may take `x`'s bytes.

The kernel is rewritten to say so: its loads of `x` become loads of `y`, and `x` leaves its
arguments. The kernel then has one buffer where it had two, so nothing that assumes distinct
arguments do not overlap (codegen marks them `noalias`) sees an alias, and the parallel
schedule and the GPU mapping see a kernel that reads its own output only at the element it
writes. Memory planning then places `y` where `x` was: one lifetime from `x`'s first write to
`y`'s last read (`aliases` maps `y` to `x`, chains included).

Left alone (each would need more than this check): outputs of the model (the caller's
memory), views, kernels that are not pointwise (a softmax or a matmul epilogue reading a
residual), and inputs read at other elements (a broadcast or a transpose).
"""

from __future__ import annotations

from dataclasses import replace

from aotml.loops.fuse import pointwise, reads_only_at
from aotml.loops.ir import Kernel, Launch, Load, map_stmt_exprs


def reuse_in_place(kernels: list[Kernel], launches: list[Launch], temps: set[str],
                   views: dict[str, str]) -> tuple[list[Kernel], list[Launch], dict[str, str]]:
    """Kernels and launches with each legal in-place write made, and the aliases: a buffer's
    name -> the name of the temporary whose bytes it takes over. `temps` names the workspace
    temporaries (no views, no scratch), `views` maps a view's name to its buffer's."""
    last: dict[str, int] = {}
    for i, launch in enumerate(launches):
        for b in launch.args:
            last[views.get(b.name, b.name)] = i
    by_name = {k.name: k for k in kernels}
    aliases: dict[str, str] = {}
    out_launches = []
    for i, launch in enumerate(launches):
        k = by_name[launch.kernel]
        found = _victim(k, i, last, temps, views)
        if found is not None:
            over, out = found
            aliases[out.name] = over.name
            k = _read_from(k, over, out)
            launch = Launch(k.name, k.args)
        by_name[k.name] = k
        out_launches.append(launch)
    return [by_name[k.name] for k in kernels], out_launches, aliases


def _victim(k: Kernel, at: int, last: dict[str, int], temps: set[str],
            views: dict[str, str]):
    """The input whose bytes `k`'s output may take at launch `at`, and that output; or None."""
    pw = pointwise(k)
    if pw is None or pw.buffer.name not in temps:
        return None
    shown = {views[b.name] for b in k.args if b.name in views}
    for b in k.args:
        if (b.name in temps and b.name not in k.outputs
                and b.name not in shown and b.shape == pw.buffer.shape
                and b.dtype == pw.buffer.dtype and b.scope == pw.buffer.scope == "global"
                and last.get(b.name) == at and reads_only_at(pw.value, b, pw.vars)):
            return b, pw.buffer
    return None


def _read_from(k: Kernel, old, new) -> Kernel:
    """`k` with every load of buffer `old` a load of `new` at the same indices."""
    body = map_stmt_exprs(k.body, lambda e: Load(new, e.indices)
                          if isinstance(e, Load) and e.buffer == old else e)
    return replace(k, args=tuple(b for b in k.args if b != old), body=body)
