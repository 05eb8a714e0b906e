"""GPU kernels compiled for the CPU one block at a time, for a stand-in CUDA driver.

The runtime's GPU side (runtime/aotml_cuda.c) cannot run without a CUDA driver. To test it on
machines without a GPU, the tests load a stand-in driver (tests/fake_cuda.c) that does what a
driver does with host memory, and runs each launched kernel from a library this module
compiles: the same mapped kernels as the PTX (the same emitter, `_GpuKernelEmitter`), for the
CPU. The block index is read from a global the stand-in sets before it runs each block; the
thread loops run as loops, one barrier phase after another, as the grid emulation runs them;
shared and local buffers are the library's own globals (the stand-in runs one block at a
time). Each kernel `K` is exported as `void aotml_emu_K(void **params)`, taking the parameter
array of `cuLaunchKernel` as it is, with `aotml_emu_K_threads`, the block size it was
written for, which the stand-in checks against the launch's. What differs from the GPU is only
the math library: exp, log, tanh, erf and pow are the CPU's, not libdevice's.

With that, a run through the stand-in checks everything of the host side against the
reference: driver loading, PTX choice, weights upload, the arena's layout, each kernel's
parameters, the grid of each launch, the copies and the status word.
"""

from __future__ import annotations

import llvmlite.ir as ir

from aotml.codegen.llvm_cpu import (
    _STORAGE,
    I32,
    I64,
    PTR,
    CpuTarget,
    _KernelEmitter,
    parse_verified,
)
from aotml.codegen.nvptx import _GpuKernelEmitter, static_size
from aotml.loops import ir as L
from aotml.loops.ir import grid

BLOCK_INDEX = "aotml_emu_ctaid_x"  # the global the stand-in sets before it runs a block


def emulation_object(program: L.Program) -> bytes:
    """An object exporting `aotml_emu_K(void **params)` for each kernel K of a GPU-mapped
    program, and the index globals, for the host CPU."""
    target = CpuTarget(opt_level=1)
    tm = target.target_machine()
    module = ir.Module(name=f"{program.name}_emulation")
    module.triple = target.triple
    module.data_layout = str(tm.target_data)
    g = ir.GlobalVariable(module, I64, BLOCK_INDEX)
    g.initializer = I64(0)
    messages = L.message_numbers(program)
    symbols = tuple(s for s, _ in program.symbols)
    for kernel in program.kernels:
        fn = _BlockEmitter(module, kernel, messages, symbols).emit()
        fn.linkage = "internal"
        _wrapper(module, kernel, fn)
        threads = ir.GlobalVariable(module, I32, f"aotml_emu_{kernel.name}_threads")
        threads.initializer = I32(grid(kernel.body, kernel.name)[1])
        threads.global_constant = True
    ref = parse_verified(str(module))
    return tm.emit_object(ref)


def _wrapper(module: ir.Module, kernel: L.Kernel, fn: ir.Function) -> None:
    wrapper = ir.Function(module, ir.FunctionType(ir.VoidType(), [PTR]),
                          name=f"aotml_emu_{kernel.name}")
    b = ir.IRBuilder(wrapper.append_basic_block("entry"))
    args = []
    for k, param in enumerate(fn.args):
        slot = b.load(b.gep(wrapper.args[0], [I64(k)], source_etype=PTR), typ=PTR)
        args.append(b.load(slot, typ=param.type))
    b.call(fn, args)
    b.ret_void()


class _BlockEmitter(_GpuKernelEmitter):
    """A mapped kernel as one GPU block runs it, on the CPU."""

    def _special(self, register: str, name: str) -> ir.Value:
        return self.b.load(self.module.get_global(BLOCK_INDEX), name=name, typ=I64)

    def _for(self, s: L.For) -> None:
        if s.bind == "thread.x":  # every thread of the block in turn, phase by phase
            self._loop(s, I64(0), I64(s.extent))
        else:
            super()._for(s)

    def _storage(self, buf: L.Buffer) -> ir.Value:
        # a shared buffer, or every thread's row of a local one (the thread loops are loops
        # here): the stand-in runs one block at a time, so one copy serves
        storage = ir.ArrayType(_STORAGE[buf.dtype], static_size(buf.shape))
        g = ir.GlobalVariable(self.module, storage, f"{self.kernel.name}.{buf.name}")
        g.linkage = "internal"
        g.initializer = ir.Constant(g.value_type, None)
        g.type = PTR  # llvmlite types it [n x T]*; LLVM: ptr
        return g

    def _address(self, buf: L.Buffer, indices) -> ir.Value:
        return _KernelEmitter._address(self, buf, indices)

    def _expr(self, e) -> ir.Value:
        # every thread's row of a local buffer is here: a shuffle reads another's
        return _KernelEmitter._expr(self, e)

    def _unary(self, op: str, x: ir.Value, dt: str) -> ir.Value:
        return _KernelEmitter._unary(self, op, x, dt)

    def _binary(self, op: str, x: ir.Value, y: ir.Value, dt: str) -> ir.Value:
        return _KernelEmitter._binary(self, op, x, y, dt)
