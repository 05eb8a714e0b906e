"""The host side of a GPU build: what the runtime (runtime/aotml_cuda.c) launches, in order.

A GPU-mapped program (gpu/mapping.py) is a list of launches of kernels whose body is one
`block.x` loop over an index space of `points`, stepping by the `thread.x` loop's extent. For
each launch the runtime needs the kernel's name, where each buffer argument lives on the device
(an input or output copied into the arena, a workspace offset, an offset into the uploaded
weights), and the grid: `ceil(points / threads)` blocks of `threads` threads. Offsets and
index spaces may be polynomials of the symbols; the runtime evaluates them per run.
"""

from __future__ import annotations

from dataclasses import dataclass

from aotml.errors import CompileError
from aotml.graph.symbolic import Dim
from aotml.loops.ir import Placement, Program, grid

MAX_PARAMS = 256  # the runtime's per-kernel parameter table (runtime/aotml_cuda.c)
REGIONS = {"input": 0, "output": 1, "workspace": 2, "param": 3}  # AOTML_GPU_* in C


@dataclass(frozen=True)
class GpuArg:
    region: str  # input, output, workspace or param
    index: Dim  # the input/output number, or the byte offset into the workspace/weights


@dataclass(frozen=True)
class GpuLaunch:
    kernel: int  # index into GpuPlan.kernels
    args: tuple[GpuArg, ...]
    points: Dim
    threads: int


@dataclass(frozen=True)
class GpuPlan:
    """Kernel names (each an .entry of every PTX module), launches in order, the device
    workspace bytes, and the PTX text per compute capability (80 for sm_80), ascending."""

    kernels: tuple[str, ...]
    launches: tuple[GpuLaunch, ...]
    workspace: Dim
    ptx: tuple[tuple[int, str], ...]


def plan_launches(program: Program, ptx: dict[str, str]) -> GpuPlan:
    """The plan of a GPU-mapped program whose PTX per architecture ("sm_80") is `ptx`."""
    placed = {p.buffer.name: p for p in program.placements}
    kernels = {k.name: k for k in program.kernels}
    names = tuple(k.name for k in program.kernels)
    index = {name: i for i, name in enumerate(names)}
    launches = []
    for launch in program.launches:
        kernel = kernels[launch.kernel]
        # (shared and local buffers are the kernel's own on-chip storage, not parameters)
        args = tuple(GpuArg(p.region, p.index) for p in
                     (_resolve(placed, buf.name) for buf in launch.args if buf.scope == "global"))
        params = len(args) + len(program.symbols) + 1
        if params > MAX_PARAMS:
            raise CompileError(f"GPU kernel {kernel.name} takes {params} parameters, more than "
                               f"the runtime's {MAX_PARAMS}")
        points, threads = grid(kernel.body, kernel.name)
        launches.append(GpuLaunch(index[launch.kernel], args, points, threads))
    sms = tuple(sorted((int(arch.removeprefix("sm_")), text) for arch, text in ptx.items()))
    workspace = program.workspace_bytes - program.onchip_bytes  # (scratch on chip: none)
    return GpuPlan(names, tuple(launches), workspace, sms)


def _resolve(placed: dict[str, Placement], name: str) -> Placement:
    p = placed[name]
    while p.region == "view":
        p = placed[p.of]
    return p
