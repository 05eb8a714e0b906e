"""The compiler pipeline, top to bottom, as one straight list of stages.

    parse -> elaborate (names, weights, types) -> graph passes -> lower to loops
          -> target codegen (LLVM, O3, object) -> package (.so + .h)

`--dump STAGE` prints a stage's text: graph, loops, llvm, asm.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import llvmlite.binding as llvm

from aotml import __version__
from aotml.codegen.llvm_cpu import CpuTarget
from aotml.codegen.nvptx import emit_ptx, parse_archs, ptx_problems
from aotml.errors import CompileError, InternalError
from aotml.frontend import parse, parse_file
from aotml.gpu.host import plan_launches
from aotml.gpu.mapping import map_program
from aotml.gpu.schedules import GPU_LOWERINGS
from aotml.graph.elaborate import elaborate
from aotml.graph.ir import Graph, print_graph
from aotml.graph.passes import run_pipeline
from aotml.loops.ir import Program, print_program
from aotml.loops.lower import lower_graph, share_weights
from aotml.loops.report import kernel_work
from aotml.loops.report import report as build_report
from aotml.ops.conv import conv_lower_without_winograd
from aotml.package.artifact import generate_header, link_library, manifest_of, write_atomically

DUMP_STAGES = ("graph", "loops", "llvm", "asm", "ptx")


def load_source(source: str | os.PathLike) -> tuple:
    """A path (str or Path) or, if it holds a newline, the text itself -> (AST, source text)."""
    if isinstance(source, str) and "\n" in source:
        return parse(source, "<string>"), source
    program = parse_file(source)
    return program, program.span.source.text


def is_onnx(source) -> bool:
    return isinstance(source, (str, os.PathLike)) and "\n" not in str(source) and \
        Path(source).suffix.lower() == ".onnx"


def source_graph(source: str | os.PathLike,
                 max_bytes: int | None = None) -> tuple[Graph, str, bytes]:
    """Source (.mlg text or path, or an .onnx path) to its graph before the passes, with the
    source's file name and bytes (for the build hash)."""
    if is_onnx(source):
        from aotml.onnx_import import DEFAULT_MAX_BYTES, import_onnx
        graph = import_onnx(source, max_bytes or DEFAULT_MAX_BYTES)
        return graph, Path(source).name, Path(source).read_bytes()
    program, text = load_source(source)
    return elaborate(program), Path(program.span.source.path).name, text.encode()


def frontend(source: str | os.PathLike, verify_each_pass: bool = False,
             on_pass: Callable[[str, Graph], None] | None = None,
             max_bytes: int | None = None) -> Graph:
    """Source to an optimized, verified graph."""
    graph, _, _ = source_graph(source, max_bytes)
    return run_pipeline(graph, check=verify_each_pass or _debug(), on_pass=on_pass)


def _debug() -> bool:
    return os.environ.get("AOTML_VERIFY", "") not in ("", "0")


@dataclass(frozen=True)
class BuildResult:
    """What a build produced, with the text of each requested dump."""

    so_path: Path  # the library (or the object, or the PTX) written
    header_path: Path | None  # None for PTX
    program: Program
    dumps: dict[str, str]
    gpu_program: Program | None = None  # the GPU-mapped program, for targets with one


def parse_dump(spec: str | Iterable[str] | None) -> frozenset[str]:
    if not spec:
        return frozenset()
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    stages = frozenset(s.strip() for s in items if s.strip())
    unknown = stages - set(DUMP_STAGES)
    if unknown:
        raise CompileError(f"unknown dump stage(s) {', '.join(sorted(unknown))}; "
                           f"choose from {', '.join(DUMP_STAGES)}")
    return stages


TARGETS = ("cpu", "grid-emulation", "cuda")


def parse_target(spec: str) -> tuple[frozenset[str], tuple[str, ...]]:
    """`cpu`, `grid-emulation`, `cuda[:sm_80,sm_90]` or `cpu,cuda[:...]` -> (kinds, CUDA
    architectures). In `cpu,cuda:sm_80,sm_90` the items after `cuda:` that name an
    architecture belong to it."""
    kinds: list[str] = []
    archs: list[str] = []
    for item in (x.strip() for x in spec.split(",")):
        kind, colon, arch = item.partition(":")
        if item.startswith("sm_") and kinds and kinds[-1] == "cuda" and archs:
            archs.append(item)
        elif kind in TARGETS and kind not in kinds and (not colon or (kind == "cuda" and arch)):
            kinds.append(kind)
            if colon:
                archs.append(arch)
        else:
            raise CompileError(f"unknown target '{spec}'; known: cpu, grid-emulation, "
                               "cuda[:sm_80,sm_90,...], cpu,cuda[:...]")
    if "grid-emulation" in kinds and len(kinds) > 1:
        raise CompileError(f"target '{spec}': grid-emulation stands alone")
    return frozenset(kinds), parse_archs(",".join(archs)) if "cuda" in kinds else ()


def _print_dumps(dumps: dict[str, str], stream) -> None:
    if stream is not None:
        for stage in (*DUMP_STAGES, "report"):
            if stage in dumps:
                print(f";; ---- {stage} ----\n{dumps[stage]}", file=stream)


def _emit_ptx(program: Program, archs: tuple[str, ...], dumps: dict[str, str],
              stages: frozenset[str]) -> dict[str, str]:
    """PTX for each architecture, each assembled by ptxas when it is installed."""
    modules = {}
    for arch in archs:
        ptx = emit_ptx(program, arch)
        problem = ptx_problems(ptx, arch)
        if problem:
            raise InternalError(f"ptxas rejects the PTX for {arch}:\n{problem}")
        modules[arch] = ptx
        if "ptx" in stages:
            dumps.setdefault("ptx", ptx)
    return modules


def _write_ptx(modules: dict[str, str], out: Path) -> None:
    """The modules as `out` (one architecture) or `NAME.sm_XX.ptx` beside it."""
    write_atomically({out if len(modules) == 1 else out.with_suffix(f".{arch}.ptx"): ptx.encode()
                      for arch, ptx in modules.items()})


def build(source: str | os.PathLike, out_so: str | os.PathLike, *, target_cpu: str | None = None,
          target_triple: str | None = None, opt_level: int = 3,
          dump: str | Iterable[str] | None = None, dump_stream=None,
          max_bytes: int | None = None, report: bool = False,
          target: str = "cpu", profile: bool = False, winograd: bool = True) -> BuildResult:
    """Compile `source` (.mlg, or .onnx) into `out_so` and the header beside it (same stem,
    `.h`). `max_bytes` caps what an ONNX model may ask for. `target` is
    - "cpu";
    - "grid-emulation": the GPU-mapped kernels (gpu/mapping.py) compiled for this CPU, every
      block and thread run in turn, which tests the GPU mapping without a GPU;
    - "cuda[:sm_80,sm_90]": a library whose kernels run on the GPU (PTX for each architecture
      embedded, launched by the runtime through the CUDA driver), or with an `out_so` ending
      in `.ptx` the PTX modules alone;
    - "cpu,cuda[:...]": both, the runtime choosing the GPU when one is usable.
    An `out_so` ending in `.o` gets the CPU kernels' object alone, unlinked: the way to
    compile for another target (`target_triple="aarch64-linux-gnu"`), which this host cannot
    link.
    `profile` builds a library that times each kernel of its CPU runs (aotml_model.profile in
    runtime/aotml.h; `aotml profile` reads it). `winograd=False` keeps every CPU conv2d out
    of the Winograd form (ops/winograd.py), which rounds differently from the direct sums."""
    stages = parse_dump(dump)
    out_so = Path(out_so)
    header_path = out_so.with_suffix(".h")
    graph, source_name, source_bytes = source_graph(source, max_bytes)
    graph = run_pipeline(graph, check=_debug())
    dumps: dict[str, str] = {}
    if "graph" in stages:
        dumps["graph"] = print_graph(graph)
    kinds, archs = parse_target(target)
    if profile and not kinds & {"cpu", "grid-emulation"}:
        raise CompileError(f"--profile times CPU runs, and target '{target}' has no CPU code",
                           hint="add the cpu target: --target cpu,cuda")
    notes: list[str] = []
    cpu_program = gpu_program = None
    machine = CpuTarget(cpu=target_cpu, triple=target_triple, opt_level=opt_level)
    if "cpu" in kinds:
        cpu_program, plan, weights = lower_graph(
            graph, notes, None if winograd else {"conv2d": conv_lower_without_winograd},
            vector_lanes=machine.capabilities.vector_bits // 32)
        reported = cpu_program
    if kinds & {"grid-emulation", "cuda"}:
        # lowered again: ops with a GPU schedule take it
        lowered, gpu_plan, gpu_weights = lower_graph(graph, [] if cpu_program else notes,
                                                     GPU_LOWERINGS)
        if cpu_program is None:
            weights = gpu_weights
        else:  # one weights blob serves both
            cpu_program, lowered, weights = share_weights(cpu_program, weights, lowered,
                                                          gpu_weights)
        gpu_program = map_program(lowered)
        if cpu_program is None:
            plan, reported = gpu_plan, lowered
    if "loops" in stages:
        dumps["loops"] = "\n".join(print_program(p) for p in (cpu_program, gpu_program) if p)
    if report:
        dumps["report"] = build_report(reported, plan, notes)
    if "cuda" in kinds and out_so.suffix in (".ptx", ".o"):
        if out_so.suffix == ".o" or "cpu" in kinds:
            raise CompileError(f"a {target} build writes a library or, for cuda alone, PTX "
                               "modules", hint=f"-o {out_so.with_suffix('.so').name}")
        modules = _emit_ptx(gpu_program, archs, dumps, stages)
        _print_dumps(dumps, dump_stream)
        _write_ptx(modules, out_so)
        return BuildResult(out_so, None, gpu_program, dumps, gpu_program)
    emitted = None
    if kinds & {"cpu", "grid-emulation"}:
        emitted = machine.emit(gpu_program if "grid-emulation" in kinds else cpu_program, stages,
                               profile)
        dumps.update(emitted.dumps)
    gpu = None
    if "cuda" in kinds:
        gpu = plan_launches(gpu_program, _emit_ptx(gpu_program, archs, dumps, stages))
    _print_dumps(dumps, dump_stream)
    program = cpu_program if "cpu" in kinds else gpu_program

    digest = hashlib.sha256()
    for part in (__version__.encode(), source_bytes, machine.describe().encode(),
                 target.encode(), f"O{opt_level}".encode(), b"profile" if profile else b""):
        digest.update(part + b"\0")
    for p in graph.params:
        digest.update(f"{p.value.name}:{p.value.type}".encode() + b"\0" + p.data.tobytes())
    manifest = manifest_of(program, digest.hexdigest(), __version__, source_name,
                           kernel_work(program, plan) if profile else None)
    if emitted is None:  # the GPU keeps its workspace in device memory
        manifest = replace(manifest, workspace_bytes=0)
    if out_so.suffix == ".o":
        write_atomically({header_path: generate_header(manifest).encode(),
                          out_so: emitted.object_code})
        return BuildResult(out_so, header_path, program, dumps, gpu_program)
    host = llvm.get_process_triple()
    if machine.triple.split("-")[0] != host.split("-")[0]:
        raise CompileError(f"cannot link a library for {machine.triple} on this {host} host",
                           hint=f"write the kernels' object instead: -o "
                                f"{out_so.with_suffix('.o').name}")
    with tempfile.TemporaryDirectory(prefix="aotml-build-") as tmp:
        linked = link_library(emitted and emitted.object_code, weights, program.weights_bytes,
                              manifest, Path(tmp), soname=out_so.name, gpu=gpu)
        # the header first: the library is replaced only once its header is in place
        write_atomically({header_path: generate_header(manifest).encode(),
                          out_so: linked.read_bytes()})
    return BuildResult(out_so, header_path, program, dumps, gpu_program)

