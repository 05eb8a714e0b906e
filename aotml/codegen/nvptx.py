"""The CUDA target: GPU-mapped loop IR (gpu/mapping.py) -> LLVM IR for nvptx64 -> PTX text.

Each mapped kernel becomes a PTX `.entry` (marked through `nvvm.annotations`) taking its
buffers as pointers, the symbols' values as i64, and a pointer to a status word. Bound loops do
not loop: a `block.x` loop's variable is `ctaid.x * step`, a `thread.x` loop's is `tid.x`; the
launcher gives the grid `ceil(extent / step)` blocks of the thread loop's extent. A kernel in
block form (gpu/schedules.py) has several thread loops: each is one barrier phase, ended by
`bar.sync`; its shared buffers are globals in the shared address space (one per block), its
local ones a per-thread array that LLVM promotes to registers (the thread index, their first,
is dropped). A failed run-time check stores its message number in the status word and ends
the thread (block-form kernels have no checks: a thread that ended early would leave the
others at a barrier). Everything
else (loops, locals, arithmetic, conversions) is the CPU emitter's, on the same scalar
semantics: exp, log, tanh, erf and pow call libdevice (`__nv_expf`, ...), linked from the CUDA
toolkit's `libdevice.10.bc` when a kernel uses one.

One PTX module is emitted per requested architecture (`sm_80`, `sm_90`, ...); `ptx_problems`
assembles each with `ptxas` when it is installed.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tempfile
from dataclasses import replace
from pathlib import Path

import llvmlite.binding as llvm
import llvmlite.ir as ir

from aotml.codegen.llvm_cpu import (
    _STORAGE,
    _VALUE,
    F32,
    I32,
    I64,
    PTR,
    _init_llvm,
    _KernelEmitter,
    dim_value,
    parse_verified,
)
from aotml.errors import CompileError, InternalError
from aotml.graph.symbolic import Dim, product
from aotml.loops import ir as L

TRIPLE = "nvptx64-nvidia-cuda"
SHARED = 3  # NVPTX's shared-memory address space
GLOBAL_ALIGN = 16  # the alignment every buffer argument of a GPU kernel is given (and has)
SHARED_ALIGN = 16  # of a shared buffer: its 16-byte loads and stores (ld.shared.v4)
DEFAULT_ARCHS = ("sm_80", "sm_90")
# PTX ISA version per architecture (ptx78 is the first to know sm_90)
_PTX_FEATURES = {"sm_80": "+ptx70", "sm_86": "+ptx71", "sm_89": "+ptx78", "sm_90": "+ptx78"}
_SHUFFLE = {"f32": "f32", "i32": "i32"}  # the dtypes llvm.nvvm.shfl.sync.down.* exchanges
_LIBDEVICE = {"exp": "__nv_expf", "log": "__nv_logf", "tanh": "__nv_tanhf",
              "erf": "__nv_erff", "pow": "__nv_powf"}


def parse_archs(spec: str) -> tuple[str, ...]:
    """`sm_80,sm_90` (or empty: the default) as a tuple, each checked."""
    archs = tuple(a.strip() for a in spec.split(",") if a.strip()) or DEFAULT_ARCHS
    for a in archs:
        if a not in _PTX_FEATURES:
            raise CompileError(f"unknown CUDA architecture '{a}'; known: "
                               f"{', '.join(sorted(_PTX_FEATURES))}")
    return archs


@functools.cache
def libdevice_path() -> Path | None:
    """The CUDA toolkit's libdevice bitcode, or None."""
    roots = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    ptxas = shutil.which("ptxas")
    if ptxas:
        roots.append(str(Path(ptxas).resolve().parent.parent))
    for root in filter(None, roots):
        path = Path(root) / "nvvm" / "libdevice" / "libdevice.10.bc"
        if path.is_file():
            return path
    return None


def emit_ptx(program: L.Program, arch: str, opt_level: int = 3) -> str:
    """The PTX text of every kernel of a GPU-mapped program, for one architecture."""
    _init_llvm(all_targets=True)
    target = llvm.Target.from_triple(TRIPLE)
    tm = target.create_target_machine(cpu=arch, features=_PTX_FEATURES[arch],
                                      opt=opt_level, reloc="pic", codemodel="default")
    module = ir.Module(name=program.name)
    module.triple = TRIPLE
    module.data_layout = str(tm.target_data)
    messages = L.message_numbers(program)
    symbols = tuple(s for s, _ in program.symbols)
    kernels = [_GpuKernelEmitter(module, k, messages, symbols).emit() for k in program.kernels]
    annotations = module.add_named_metadata("nvvm.annotations")
    for fn in kernels:
        annotations.add(module.add_metadata([fn, "kernel", I32(1)]))
    text = str(module)
    ref = parse_verified(text)
    if any(name in text for name in _LIBDEVICE.values()):
        path = libdevice_path()
        if path is None:
            raise CompileError("this model calls exp, log, tanh, erf or pow on the GPU, which "
                               "needs the CUDA toolkit's libdevice.10.bc: none was found",
                               hint="set CUDA_HOME to the toolkit's folder")
        ref.link_in(llvm.parse_bitcode(path.read_bytes()))
        entries = {k.name for k in kernels}
        for fn in ref.functions:  # keep the kernels; the library's other functions can go
            if not fn.is_declaration and fn.name not in entries:
                fn.linkage = "internal"
    pto = llvm.create_pipeline_tuning_options(speed_level=opt_level)
    pb = llvm.create_pass_builder(tm, pto)
    pb.getModulePassManager().run(ref, pb)
    ref.verify()
    return tm.emit_assembly(ref)


def ptx_problems(ptx: str, arch: str) -> str | None:
    """What `ptxas -arch=ARCH` says about the text, or None when it assembles (or when no
    ptxas is installed: see `have_ptxas`)."""
    if not have_ptxas():
        return None
    with tempfile.TemporaryDirectory(prefix="aotml-ptx-") as tmp:
        src = Path(tmp) / "m.ptx"
        src.write_text(ptx)
        proc = subprocess.run(["ptxas", f"-arch={arch}", str(src), "-o", str(Path(tmp) / "m.o")],
                              capture_output=True, text=True)
    return None if proc.returncode == 0 else proc.stderr or f"ptxas exited {proc.returncode}"


def have_ptxas() -> bool:
    return shutil.which("ptxas") is not None


class _GpuKernelEmitter(_KernelEmitter):
    """A mapped kernel as a PTX entry: `void k(bufs..., symbols..., ptr status)`."""

    def __init__(self, module: ir.Module, kernel: L.Kernel, messages: dict[str, int],
                 symbols: tuple[str, ...]):
        # shared and local buffers are the kernel's own storage, not parameters
        self.onchip = tuple(b for b in kernel.args if b.scope != "global")
        params = replace(kernel, args=tuple(b for b in kernel.args if b.scope == "global"))
        super().__init__(module, params, {}, messages, symbols)
        self.kernel = kernel
        self.status = self.fn.args[-1]
        self.status.name = "status"
        # every buffer the runtime passes is 16-byte aligned (the device arena aligns tensors
        # to 256, the planner offsets to 64; run_device checks a caller's pointers), which
        # lets the backend merge a thread's 4 consecutive f32 accesses into one
        for arg in self.fn.args[:len(params.args)]:
            arg.attributes.align = GLOBAL_ALIGN
        # several thread loops: barrier phases (gpu/schedules.py)
        self.block_form = sum(1 for _ in L.thread_extents(kernel.body)) > 1
        L.check_warp_phases(kernel)

    def _function(self, name: str, params: list) -> ir.Function:
        # an entry: external, returning nothing, with the status word as its last parameter
        fn = ir.Function(self.module, ir.FunctionType(ir.VoidType(), params + [PTR]), name=name)
        fn.attributes.add("nounwind")
        return fn

    def emit(self) -> ir.Function:
        self.b = ir.IRBuilder(self.fn.append_basic_block("entry"))
        for buf in self.onchip:
            self.base[buf.name] = self._storage(buf)
        self._stmts(self.kernel.body)
        self.b.ret_void()
        return self.fn

    def _storage(self, buf: L.Buffer) -> ir.Value:
        """Where a shared buffer (a global in the shared address space, one per block) or a
        local one (one row per thread: the thread's own array, promoted to registers) lives."""
        if buf.scope == "shared":
            g = ir.GlobalVariable(self.module, ir.ArrayType(_STORAGE[buf.dtype],
                                                            static_size(buf.shape)),
                                  f"{self.kernel.name}.{buf.name}", addrspace=SHARED)
            g.linkage = "internal"
            g.align = SHARED_ALIGN
            g.initializer = ir.Constant(g.value_type, ir.Undefined)
            g.type = ir.PointerType(addrspace=SHARED)  # llvmlite types it [n x T]*; LLVM: ptr
            return g
        with self.b.goto_entry_block():
            return self.b.alloca(_STORAGE[buf.dtype], static_size(buf.shape[1:]), name=buf.name)

    def _address(self, buf: L.Buffer, indices) -> ir.Value:
        if buf.scope == "local":  # the row of this thread: drop the thread index
            return super()._address(L.Buffer(buf.name, buf.dtype, buf.shape[1:]), indices[1:])
        return super()._address(buf, indices)

    def _stmts(self, stmts) -> None:
        for s in stmts:
            if isinstance(s, L.Assert):
                if self.block_form:
                    # ending a thread early would leave the others waiting at a barrier
                    raise InternalError(f"run-time check in block-form GPU kernel "
                                        f"{self.kernel.name}")
                ok = self.fn.append_basic_block("check.ok")
                failed = self.fn.append_basic_block("check.failed")
                self.b.cbranch(self._expr(s.cond), ok, failed)
                self.b.position_at_end(failed)
                self.b.store(I32(self.messages[s.message]), self.status)
                self.b.ret_void()
                self.b.position_at_end(ok)
            else:
                super()._stmts([s])

    def _for(self, s: L.For) -> None:
        if not s.bind:
            self._loop(s, I64(0), dim_value(self.b, s.extent, self.symbols))
            return
        value = self._special("ctaid.x" if s.bind == "block.x" else "tid.x", s.var.name)
        if s.step != 1:
            value = self.b.mul(value, I64(s.step), flags=["nuw", "nsw"], name=s.var.name)
        self.vars[s.var.name] = value
        self._stmts(s.body)
        del self.vars[s.var.name]
        if s.bind == "thread.x" and self.block_form and s.barrier:
            self._barrier()

    def _barrier(self) -> None:
        """The end of a barrier phase: every thread of the block waits here for the others."""
        self.b.call(self._declare("llvm.nvvm.barrier0", ir.VoidType(), []), [])

    def _expr(self, e) -> ir.Value:
        if isinstance(e, L.Shuffle):
            if e.buffer.dtype not in _SHUFFLE:
                raise InternalError(f"shuffle of {e.buffer.dtype}")
            own = super()._expr(L.Load(e.buffer, e.indices))  # (this thread's register)
            typ = _VALUE[e.buffer.dtype]
            fn = self._declare(f"llvm.nvvm.shfl.sync.down.{_SHUFFLE[e.buffer.dtype]}", typ,
                               [I32, typ, I32, I32])
            # every lane takes part; the last lane of the warp clamps the source lane
            return self.b.call(fn, [I32(-1), own, I32(e.delta), I32(L.WARP - 1)])
        return super()._expr(e)

    def _special(self, register: str, name: str) -> ir.Value:
        """The thread's block or thread index (`ctaid.x`, `tid.x`) as an i64."""
        read = self._declare(f"llvm.nvvm.read.ptx.sreg.{register}", I32, [])
        return self.b.zext(self.b.call(read, []), I64, name=name)

    def _unary(self, op: str, x: ir.Value, dt: str) -> ir.Value:
        if dt == "f32" and op in _LIBDEVICE:
            return self.b.call(self._declare(_LIBDEVICE[op], F32, [F32]), [x])
        return super()._unary(op, x, dt)

    def _binary(self, op: str, x: ir.Value, y: ir.Value, dt: str) -> ir.Value:
        if dt == "f32" and op == "pow":
            return self.b.call(self._declare(_LIBDEVICE["pow"], F32, [F32, F32]), [x, y])
        return super()._binary(op, x, y, dt)



def static_size(shape: tuple[Dim, ...]) -> int:
    n = product(shape)
    if not isinstance(n, int):
        raise InternalError(f"on-chip GPU buffer of symbolic shape {shape}")
    return n
