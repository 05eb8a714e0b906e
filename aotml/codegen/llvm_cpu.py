"""The CPU target: loop IR -> LLVM IR (llvmlite.ir) -> verify -> O3 -> PIC object.

Each kernel becomes an internal function whose buffer arguments are `noalias` (memory planning
never lets a kernel's output share bytes with its inputs), so LLVM may vectorize across them.
`aotml_entry(inputs, outputs, workspace, weights)` resolves every buffer's address from its
placement and calls the kernels in launch order. Scalar locals are allocas that mem2reg promotes.
Float semantics are IEEE (no fast-math): results match the reference up to rounding order.
"""

from __future__ import annotations

import functools

import llvmlite.binding as llvm
import llvmlite.ir as ir

from aotml.codegen.target import Capabilities, Emitted
from aotml.errors import CompileError, InternalError
from aotml.loops import ir as L

ENTRY = "aotml_entry"
F32 = ir.FloatType()
I64 = ir.IntType(64)
PTR = ir.PointerType()
_LLVM_TYPES = {"f32": F32, L.INDEX: I64}


@functools.cache
def _init_llvm(all_targets: bool) -> None:
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    if all_targets:
        llvm.initialize_all_targets()
        llvm.initialize_all_asmprinters()


class _FunctionAttributes(ir.values.FunctionAttributes):
    # llvmlite knows only the classic enum attributes; string attributes such as
    # "prefer-vector-width" are written out as given.
    _known = ir.values.FunctionAttributes._known | {"__string__"}

    def __init__(self, strings: dict[str, str]):
        super().__init__()
        self.strings = strings

    def _to_list(self, ret_type):
        return super()._to_list(ret_type) + [f'"{k}"="{v}"' for k, v in self.strings.items()]


class CpuTarget:
    """A CPU described by an LLVM triple, cpu name and feature string (default: this host)."""

    name = "cpu"

    def __init__(self, cpu: str | None = None, triple: str | None = None,
                 features: str | None = None, opt_level: int = 3):
        host = triple is None and cpu is None
        _init_llvm(all_targets=not host)
        self.triple = triple or llvm.get_process_triple()
        self.cpu = cpu or llvm.get_host_cpu_name()
        if features is None:
            features = llvm.get_host_cpu_features().flatten() if host else ""
        self.features = features
        self.opt_level = opt_level
        try:
            self._target = llvm.Target.from_triple(self.triple)
        except RuntimeError as e:
            raise CompileError(f"unknown target triple '{self.triple}': {e}") from None

    @functools.cached_property
    def capabilities(self) -> Capabilities:
        feats = set(self.features.split(","))
        bits = 512 if "+avx512f" in feats else 256 if "+avx" in feats else 128
        return Capabilities(vector_bits=bits)

    def describe(self) -> str:
        return f"{self.triple} cpu={self.cpu} features={self.features} O{self.opt_level}"

    def target_machine(self) -> llvm.TargetMachine:
        return self._target.create_target_machine(
            cpu=self.cpu, features=self.features, opt=self.opt_level, reloc="pic",
            codemodel="default")

    def emit(self, program: L.Program, dump: frozenset[str] = frozenset()) -> Emitted:
        tm = self.target_machine()
        module = build_module(program, self, tm)
        text = str(module)
        try:
            ref = llvm.parse_assembly(text)
            ref.verify()
        except RuntimeError as e:
            raise InternalError(f"generated LLVM IR does not verify: {e}") from None
        pto = llvm.create_pipeline_tuning_options(speed_level=self.opt_level)
        pto.loop_vectorization = self.opt_level >= 2
        pto.slp_vectorization = self.opt_level >= 2
        pb = llvm.create_pass_builder(tm, pto)
        pb.getModulePassManager().run(ref, pb)
        ref.verify()
        dumps = {}
        if "llvm" in dump:
            dumps["llvm"] = str(ref)
        if "asm" in dump:
            dumps["asm"] = tm.emit_assembly(ref)
        return Emitted(tm.emit_object(ref), dumps)


def build_module(program: L.Program, target: CpuTarget, tm: llvm.TargetMachine) -> ir.Module:
    module = ir.Module(name=program.name)
    module.triple = target.triple
    module.data_layout = str(tm.target_data)
    attrs = {"target-cpu": target.cpu, "prefer-vector-width": str(target.capabilities.vector_bits)}
    if target.features:
        attrs["target-features"] = target.features
    kernels = {k.name: _KernelEmitter(module, k, attrs).emit() for k in program.kernels}

    entry = ir.Function(module, ir.FunctionType(ir.VoidType(), [PTR] * 4), name=ENTRY)
    entry.visibility = "hidden"
    entry.attributes = _FunctionAttributes(attrs)
    entry.attributes.add("nounwind")
    inputs, outputs, workspace, weights = entry.args
    for arg, name in zip(entry.args, ("inputs", "outputs", "workspace", "weights")):
        arg.name = name
    b = ir.IRBuilder(entry.append_basic_block("entry"))
    address = {}
    for pl in program.placements:
        if pl.region in ("input", "output"):
            table = inputs if pl.region == "input" else outputs
            slot = b.gep(table, [I64(pl.index)], inbounds=True, source_etype=PTR)
            address[pl.buffer.name] = b.load(slot, name=pl.buffer.name, typ=PTR)
        else:
            base = weights if pl.region == "param" else workspace
            address[pl.buffer.name] = b.gep(base, [I64(pl.index)], inbounds=True,
                                            name=pl.buffer.name, source_etype=ir.IntType(8))
    for launch in program.launches:
        b.call(kernels[launch.kernel], [address[buf.name] for buf in launch.args])
    b.ret_void()
    return module


class _KernelEmitter:
    """Emits one kernel: loops as bottom-tested blocks (every extent is at least 1)."""

    def __init__(self, module: ir.Module, kernel: L.Kernel, attrs: dict[str, str]):
        self.module, self.kernel = module, kernel
        fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [PTR] * len(kernel.args)),
                         name=kernel.name)
        fn.linkage = "internal"
        fn.attributes = _FunctionAttributes(attrs)
        fn.attributes.add("nounwind")
        for arg, buf in zip(fn.args, kernel.args):
            arg.name = buf.name
            arg.add_attribute("noalias")
        self.fn = fn
        self.base = {buf.name: arg for buf, arg in zip(kernel.args, fn.args)}
        self.vars: dict[str, ir.Value] = {}
        self.locals: dict[str, ir.Value] = {}

    def emit(self) -> ir.Function:
        self.b = ir.IRBuilder(self.fn.append_basic_block("entry"))
        self._stmts(self.kernel.body)
        self.b.ret_void()
        return self.fn

    # statements

    def _stmts(self, stmts) -> None:
        for s in stmts:
            if isinstance(s, L.For):
                self._for(s)
            elif isinstance(s, L.Store):
                self.b.store(self._expr(s.value), self._address(s.buffer, s.indices))
            elif isinstance(s, L.Local):
                slot = self._alloca(s.var)
                self.locals[s.var.name] = slot
                self.b.store(self._expr(s.init), slot)
            elif isinstance(s, L.Assign):
                self.b.store(self._expr(s.value), self.locals[s.var.name])
            else:
                raise InternalError(f"CPU codegen cannot emit {type(s).__name__}")

    def _alloca(self, var: L.Var) -> ir.Value:
        with self.b.goto_entry_block():
            self.b.position_at_start(self.fn.entry_basic_block)
            return self.b.alloca(_LLVM_TYPES[var.dtype], name=var.name)

    def _for(self, s: L.For) -> None:
        pre = self.b.block
        header = self.fn.append_basic_block(f"{s.var.name}.loop")
        self.b.branch(header)
        self.b.position_at_end(header)
        i = self.b.phi(I64, name=s.var.name)
        i.add_incoming(I64(0), pre)
        self.vars[s.var.name] = i
        self._stmts(s.body)
        nxt = self.b.add(i, I64(1), name=f"{s.var.name}.next", flags=["nuw", "nsw"])
        i.add_incoming(nxt, self.b.block)
        done = self.fn.append_basic_block(f"{s.var.name}.done")
        self.b.cbranch(self.b.icmp_signed("<", nxt, I64(s.extent)), header, done)
        self.b.position_at_end(done)
        del self.vars[s.var.name]

    # expressions

    def _address(self, buf: L.Buffer, indices) -> ir.Value:
        flat = None
        for index, stride in zip(indices, buf.strides):
            if isinstance(index, L.Const) and index.value == 0:
                continue
            term = self._expr(index)
            if stride != 1:
                term = self.b.mul(term, I64(stride), flags=["nuw", "nsw"])
            flat = term if flat is None else self.b.add(flat, term, flags=["nuw", "nsw"])
        if flat is None:
            flat = I64(0)
        return self.b.gep(self.base[buf.name], [flat], inbounds=True,
                          source_etype=_LLVM_TYPES[buf.dtype])

    def _expr(self, e) -> ir.Value:
        b = self.b
        if isinstance(e, L.Const):
            return _LLVM_TYPES[e.dtype](e.value)
        if isinstance(e, L.Var):
            if e.name in self.vars:
                return self.vars[e.name]
            return b.load(self.locals[e.name], typ=_LLVM_TYPES[e.dtype])
        if isinstance(e, L.Load):
            return b.load(self._address(e.buffer, e.indices), typ=_LLVM_TYPES[e.buffer.dtype])
        if isinstance(e, L.Unary):
            x = self._expr(e.operand)
            if e.op == "neg":
                return b.fneg(x)
            if e.op == "exp":
                return b.call(self._intrinsic("llvm.exp.f32", 1), [x])
            if e.op == "tanh":
                return b.call(self._libm("tanhf", 1), [x])
        if isinstance(e, L.Binary):
            x, y = self._expr(e.lhs), self._expr(e.rhs)
            if e.op == "max":
                return b.call(self._intrinsic("llvm.maximum.f32", 2), [x, y])
            return {"add": b.fadd, "sub": b.fsub, "mul": b.fmul, "div": b.fdiv}[e.op](x, y)
        raise InternalError(f"CPU codegen cannot emit {e!r}")

    def _intrinsic(self, name: str, arity: int) -> ir.Function:
        return self._declare(name, arity)

    def _libm(self, name: str, arity: int) -> ir.Function:
        fn = self._declare(name, arity)
        fn.attributes.add("nounwind")
        return fn

    def _declare(self, name: str, arity: int) -> ir.Function:
        try:
            return self.module.get_global(name)
        except KeyError:
            return ir.Function(self.module, ir.FunctionType(F32, [F32] * arity), name=name)
