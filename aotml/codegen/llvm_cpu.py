"""The CPU target: loop IR -> LLVM IR (llvmlite.ir) -> verify -> O3 -> PIC object.

Each kernel becomes an internal function whose buffer arguments are `noalias` (memory planning
never lets a kernel's output share bytes with its inputs), so LLVM may vectorize across them.
`aotml_entry(inputs, outputs, workspace, weights, symbols)` resolves every buffer's address
from its placement and calls the kernels in launch order, passing each kernel the values of the
program's symbolic dims (already checked by the runtime: each at least 1, every size in range)
as trailing i64 arguments. Scalar locals are allocas that mem2reg promotes.
A profiled build (`profile=True`) also reads the runtime's clock after each kernel and adds the
time since the previous read to that launch's counter in `aotml_profile_ns`, and counts the
completed runs in `aotml_profile_runs` (both hidden globals the glue hands to the ABI).
Float semantics are IEEE (no fast-math): results match the reference up to rounding order.
"""

from __future__ import annotations

import functools

import llvmlite.binding as llvm
import llvmlite.ir as ir

from aotml.codegen import vecmath
from aotml.codegen.target import Capabilities, Emitted
from aotml.errors import CompileError, InternalError
from aotml.graph.symbolic import Sym
from aotml.loops import ir as L

ENTRY = "aotml_entry"
F32 = ir.FloatType()
HALF = ir.HalfType()
I1, I8, I16, I32, I64 = (ir.IntType(n) for n in (1, 8, 16, 32, 64))
PTR = ir.PointerType()
# Values in registers; bf16 travels as its bit pattern (llvmlite has no bfloat type, and LLVM
# would lower f32 -> bf16 rounding to a libgcc call that older toolchains lack).
_VALUE = {"f32": F32, "f16": HALF, "bf16": I16, "i32": I32, "i64": I64, "bool": I1}
# Values in memory: a bool is a byte, as in numpy.
_STORAGE = {**_VALUE, "bool": I8}
_INT_BITS = {"i32": 32, "i64": 64}


def _value_type(dtype: str) -> ir.Type:
    """A dtype's register type: a scalar's, or <L x float> for a vector of L f32 lanes."""
    lanes = L.lanes_of(dtype)
    return _VALUE[dtype] if lanes is None else ir.VectorType(F32, lanes)


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
        # another triple without a cpu: that architecture's baseline, not this host's cpu
        self.cpu = cpu or (llvm.get_host_cpu_name() if triple is None else "generic")
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
        return Capabilities(vector_bits=_widest_vector_bits(self.target_machine()))

    def describe(self) -> str:
        return f"{self.triple} cpu={self.cpu} features={self.features} O{self.opt_level}"

    def target_machine(self) -> llvm.TargetMachine:
        return self._target.create_target_machine(
            cpu=self.cpu, features=self.features, opt=self.opt_level, reloc="pic",
            codemodel="default")

    def emit(self, program: L.Program, dump: frozenset[str] = frozenset(),
             profile: bool = False) -> Emitted:
        tm = self.target_machine()
        ref = parse_verified(str(build_module(program, self, tm, profile)))
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


_PROBE = """define void @probe(ptr %p) {
  %v = load <16 x float>, ptr %p
  %w = fadd <16 x float> %v, %v
  store <16 x float> %w, ptr %p
  ret void
}"""


def _widest_vector_bits(tm: llvm.TargetMachine) -> int:
    """The target's widest float vector, asked of its code generator: the add of two 512-bit
    vectors takes one instruction where registers are 512 bits wide (AVX-512), two at 256
    (AVX2), four at 128 (SSE, NEON). A cpu name alone (`--target-cpu haswell`) implies
    features no feature string lists, and the backend knows them."""
    module = llvm.parse_assembly(_PROBE)
    module.triple = tm.triple
    adds = [line for line in tm.emit_assembly(module).splitlines()
            if line.startswith("\t") and "add" in line.split()[0]]
    if not adds or 512 % len(adds):
        raise InternalError(f"cannot tell the vector width of {tm.triple}: {adds}")
    return max(128, 512 // len(adds))


def parse_verified(text: str) -> llvm.ModuleRef:
    """Generated LLVM IR parsed and verified; a failure is a compiler bug."""
    try:
        ref = llvm.parse_assembly(text)
        ref.verify()
    except RuntimeError as e:
        raise InternalError(f"generated LLVM IR does not verify: {e}") from None
    return ref


PROFILE_NS, PROFILE_RUNS, CLOCK = "aotml_profile_ns", "aotml_profile_runs", "aotml_rt_clock_ns"


def build_module(program: L.Program, target: CpuTarget, tm: llvm.TargetMachine,
                 profile: bool = False) -> ir.Module:
    module = ir.Module(name=program.name)
    module.triple = target.triple
    module.data_layout = str(tm.target_data)
    attrs = {"target-cpu": target.cpu, "prefer-vector-width": str(target.capabilities.vector_bits)}
    if target.features:
        attrs["target-features"] = target.features

    messages = L.message_numbers(program)
    symbols = tuple(s for s, _ in program.symbols)
    kernels = {k.name: _KernelEmitter(module, k, attrs, messages, symbols).emit()
               for k in program.kernels}

    # Returns 0, or the 1-based index of the failed run-time check's message.
    entry = ir.Function(module, ir.FunctionType(I32, [PTR] * 5), name=ENTRY)
    entry.visibility = "hidden"
    entry.attributes = _FunctionAttributes(attrs)
    entry.attributes.add("nounwind")
    inputs, outputs, workspace, weights, table = entry.args
    for arg, name in zip(entry.args, ("inputs", "outputs", "workspace", "weights", "symbols")):
        arg.name = name
    b = ir.IRBuilder(entry.append_basic_block("entry"))
    values = {}
    for k, s in enumerate(symbols):
        slot = b.gep(table, [I64(k)], inbounds=True, source_etype=I64)
        values[s] = b.load(slot, name=s, typ=I64)
    address = {}
    for pl in program.placements:
        if pl.region == "view":
            continue
        if pl.region in ("input", "output"):
            table = inputs if pl.region == "input" else outputs
            slot = b.gep(table, [I64(pl.index)], inbounds=True, source_etype=PTR)
            address[pl.buffer.name] = b.load(slot, name=pl.buffer.name, typ=PTR)
        else:
            base = weights if pl.region == "param" else workspace
            address[pl.buffer.name] = b.gep(base, [dim_value(b, pl.index, values)],
                                            inbounds=True, name=pl.buffer.name,
                                            source_etype=ir.IntType(8))
    for pl in program.placements:
        if pl.region == "view":
            address[pl.buffer.name] = address[pl.of]
    if profile:
        counters = _hidden_global(module, ir.ArrayType(I64, len(program.launches)), PROFILE_NS)
        runs = _hidden_global(module, I64, PROFILE_RUNS)
        clock = ir.Function(module, ir.FunctionType(I64, []), name=CLOCK)
        clock.attributes.add("nounwind")
        last = b.call(clock, [], name="t0")
    for n, launch in enumerate(program.launches):
        status = b.call(kernels[launch.kernel], [address[buf.name] for buf in launch.args]
                        + [values[s] for s in symbols])
        if profile:
            now = b.call(clock, [], name=f"t{n + 1}")
            slot = b.gep(counters, [I64(0), I64(n)], inbounds=True,
                         source_etype=counters.value_type)
            b.atomic_rmw("add", slot, b.sub(now, last), "monotonic")
            last = now
        failed = entry.append_basic_block(f"{launch.kernel}.failed")
        ok = entry.append_basic_block(f"{launch.kernel}.ok")
        b.cbranch(b.icmp_unsigned("!=", status, I32(0)), failed, ok)
        b.position_at_end(failed)
        b.ret(status)
        b.position_at_end(ok)
    if profile:
        b.atomic_rmw("add", runs, I64(1), "monotonic")
    b.ret(I32(0))
    return module


def _hidden_global(module: ir.Module, typ: ir.Type, name: str) -> ir.GlobalVariable:
    """A zero-initialized global the library's C glue can name and no other library sees."""
    g = ir.GlobalVariable(module, typ, name=name)
    g.initializer = ir.Constant(typ, None)
    g.visibility = "hidden"
    g.align = 64
    return g


def dim_value(b: ir.IRBuilder, d, values: dict[str, ir.Value]) -> ir.Value:
    """A dim as an i64: a constant, or its polynomial over the symbols' values. The runtime
    has checked that every size fits, so no step overflows (nsw)."""
    if not isinstance(d, Sym):
        return I64(d)
    total = None
    for monomial, coef in d.terms:
        term = I64(coef) if not monomial or coef != 1 else None
        for s in monomial:
            term = values[s] if term is None else b.mul(term, values[s], flags=["nsw"])
        total = term if total is None else b.add(total, term, flags=["nsw"])
    return total


class _KernelEmitter:
    """Emits one kernel: loops as bottom-tested blocks (every extent is at least 1).

    A parallel loop becomes two more functions: its *range* function, which runs the loop over
    [begin, end) with the kernel's buffers as noalias arguments (so LLVM vectorizes it as it
    would the kernel), and a *task* that unpacks a context record (buffer addresses, symbols,
    enclosing loop variables) and calls it. The kernel fills the record on its stack and
    hands the task to the runtime's aotml_rt_parallel_for."""

    def __init__(self, module: ir.Module, kernel: L.Kernel, attrs: dict[str, str],
                 messages: dict[str, int], symbols: tuple[str, ...],
                 name: str | None = None, captured: tuple[str, ...] = (),
                 ranged: L.For | None = None):
        self.module, self.kernel, self.messages, self.attrs = module, kernel, messages, attrs
        self.symbol_names = symbols
        params = [PTR] * len(kernel.args) + [I64] * (len(symbols) + len(captured))
        if ranged is not None:
            params += [I64, I64]
        fn = self._function(name or kernel.name, params)
        for arg, buf in zip(fn.args, kernel.args):
            arg.name = buf.name
            arg.add_attribute("noalias")
        n = len(kernel.args)
        self.symbols = dict(zip(symbols, fn.args[n:n + len(symbols)]))
        for s, arg in self.symbols.items():
            arg.name = s
        self.fn = fn
        self.base = {buf.name: arg for buf, arg in zip(kernel.args, fn.args)}
        self.vars: dict[str, ir.Value] = dict(zip(captured, fn.args[n + len(symbols):]))
        self.locals: dict[str, ir.Value] = {}
        self.ranged = ranged
        self.parallel_count = 0

    def _function(self, name: str, params: list) -> ir.Function:
        """The function a kernel (or a parallel loop's range) is emitted into."""
        fn = ir.Function(self.module, ir.FunctionType(I32, params), name=name)
        fn.linkage = "internal"
        fn.attributes = _FunctionAttributes(self.attrs)
        fn.attributes.add("nounwind")
        return fn

    def emit(self) -> ir.Function:
        self.b = ir.IRBuilder(self.fn.append_basic_block("entry"))
        if self.ranged is not None:
            begin, end = self.fn.args[-2:]
            begin.name, end.name = "begin", "end"
            self._loop(self.ranged, begin, end)
        else:
            self._stmts(self.kernel.body)
        self.b.ret(I32(0))
        return self.fn

    # statements

    def _stmts(self, stmts) -> None:
        stmts = list(stmts)
        k = 0
        while k < len(stmts):
            s = stmts[k]
            k += 1
            whole = L.lane_store_run(stmts, k - 1)
            if whole is not None:
                vector, lanes = whole  # one vector store (LLVM's SLP merged such runs only
                # in part, into odd pieces, around an exp)
                self.b.store(self._expr(vector), self._address(s.buffer, s.indices), align=4)
                k += lanes - 1
            elif isinstance(s, L.For):
                self._for(s)
            elif isinstance(s, L.Store):
                value = self._expr(s.value)
                if s.buffer.dtype == "bool":
                    value = self.b.zext(value, I8)
                self.b.store(value, self._address(s.buffer, s.indices))
            elif isinstance(s, L.Local):
                slot = self._alloca(s.var)
                self.locals[s.var.name] = slot
                self.b.store(self._expr(s.init), slot)
            elif isinstance(s, L.Assign):
                self.b.store(self._expr(s.value), self.locals[s.var.name])
            elif isinstance(s, L.If):
                then = self.fn.append_basic_block("if.then")
                after = self.fn.append_basic_block("if.end")
                self.b.cbranch(self._expr(s.cond), then, after)
                self.b.position_at_end(then)
                self._stmts(s.body)
                self.b.branch(after)
                self.b.position_at_end(after)
            elif isinstance(s, L.Assert):
                ok = self.fn.append_basic_block("check.ok")
                failed = self.fn.append_basic_block("check.failed")
                self.b.cbranch(self._expr(s.cond), ok, failed)
                self.b.position_at_end(failed)
                self.b.ret(I32(self.messages[s.message]))
                self.b.position_at_end(ok)
            else:
                raise InternalError(f"CPU codegen cannot emit {type(s).__name__}")

    def _alloca(self, var: L.Var) -> ir.Value:
        with self.b.goto_entry_block():
            self.b.position_at_start(self.fn.entry_basic_block)
            return self.b.alloca(_value_type(var.dtype), name=var.name)

    def _for(self, s: L.For) -> None:
        if s.parallel and self.ranged is None:
            self._parallel_for(s)
        else:
            self._loop(s, I64(0), dim_value(self.b, s.extent, self.symbols))

    def _loop(self, s: L.For, begin: ir.Value, end: ir.Value) -> None:
        pre = self.b.block
        header = self.fn.append_basic_block(f"{s.var.name}.loop")
        self.b.branch(header)
        self.b.position_at_end(header)
        i = self.b.phi(I64, name=s.var.name)
        i.add_incoming(begin, pre)
        self.vars[s.var.name] = i
        self._stmts(s.body)
        nxt = self.b.add(i, I64(s.step), name=f"{s.var.name}.next", flags=["nuw", "nsw"])
        i.add_incoming(nxt, self.b.block)
        done = self.fn.append_basic_block(f"{s.var.name}.done")
        self.b.cbranch(self.b.icmp_signed("<", nxt, end), header, done)
        self.b.position_at_end(done)
        del self.vars[s.var.name]

    def _parallel_for(self, s: L.For) -> None:
        k = self.parallel_count
        self.parallel_count += 1
        captured = tuple(self.vars)
        body = _KernelEmitter(self.module, self.kernel, self.attrs, self.messages,
                              self.symbol_names, f"{self.kernel.name}.range{k}", captured,
                              s).emit()
        slots = [PTR] * len(self.kernel.args) + [I64] * (len(self.symbols) + len(captured))
        record = ir.LiteralStructType(slots)
        task = ir.Function(self.module, ir.FunctionType(I32, [PTR, I64, I64]),
                           name=f"{self.kernel.name}.task{k}")
        task.linkage = "internal"
        task.attributes = _FunctionAttributes(self.attrs)
        task.attributes.add("nounwind")
        tb = ir.IRBuilder(task.append_basic_block("entry"))
        ctx, begin, end = task.args
        values = [tb.load(tb.gep(ctx, [I32(0), I32(j)], inbounds=True, source_etype=record),
                          typ=t) for j, t in enumerate(slots)]
        tb.ret(tb.call(body, values + [begin, end]))

        with self.b.goto_entry_block():
            self.b.position_at_start(self.fn.entry_basic_block)
            ctx = self.b.alloca(record, name=f"par{k}.ctx")
        values = ([self.base[buf.name] for buf in self.kernel.args]
                  + list(self.symbols.values()) + [self.vars[v] for v in captured])
        for j, v in enumerate(values):
            # (the alloca is typed: gep finds the slot's type from it)
            self.b.store(v, self.b.gep(ctx, [I32(0), I32(j)], inbounds=True))
        run = self._declare("aotml_rt_parallel_for", I32, [PTR, PTR, I64, I64])
        status = self.b.call(run, [task, ctx, dim_value(self.b, s.extent, self.symbols),
                                   I64(s.grain)])
        failed = self.fn.append_basic_block(f"par{k}.failed")
        ok = self.fn.append_basic_block(f"par{k}.ok")
        self.b.cbranch(self.b.icmp_unsigned("!=", status, I32(0)), failed, ok)
        self.b.position_at_end(failed)
        self.b.ret(status)
        self.b.position_at_end(ok)

    # expressions

    def _address(self, buf: L.Buffer, indices) -> ir.Value:
        flat = None
        for index, stride in zip(indices, buf.strides):
            if isinstance(index, L.Const) and index.value == 0:
                continue
            term = self._expr(index)
            if stride != 1:
                term = self.b.mul(term, dim_value(self.b, stride, self.symbols),
                                  flags=["nuw", "nsw"])
            flat = term if flat is None else self.b.add(flat, term, flags=["nuw", "nsw"])
        if flat is None:
            flat = I64(0)
        return self.b.gep(self.base[buf.name], [flat], inbounds=True,
                          source_etype=_STORAGE[buf.dtype])

    def _expr(self, e) -> ir.Value:
        b = self.b
        if isinstance(e, L.Const):
            if e.dtype in ("f16", "bf16"):
                raise InternalError("narrow-float constants are folded to f32 before codegen")
            return _VALUE[e.dtype](int(e.value) if e.dtype == "bool" else e.value)
        if isinstance(e, L.Size):
            return dim_value(b, e.dim, self.symbols)
        if isinstance(e, L.Var):
            if e.name in self.vars:
                return self.vars[e.name]
            return b.load(self.locals[e.name], typ=_value_type(e.dtype))
        if isinstance(e, L.Load):
            value = b.load(self._address(e.buffer, e.indices), typ=_STORAGE[e.buffer.dtype])
            return b.icmp_unsigned("!=", value, I8(0)) if e.buffer.dtype == "bool" else value
        if isinstance(e, L.Shuffle):
            return self._expr(self._shuffle_as_load(e))
        if isinstance(e, L.Cast):
            return self._convert(self._expr(e.operand), L.dtype_of(e.operand), e.to)
        if isinstance(e, L.Compare):
            return self._compare(e)
        if isinstance(e, L.Select):
            return b.select(self._expr(e.cond), self._expr(e.a), self._expr(e.b))
        if isinstance(e, L.MulAdd):
            fn = vecmath.float_intrinsic(b, "fmuladd", _value_type(L.dtype_of(e)), 3)
            return b.call(fn, [self._expr(e.a), self._expr(e.b), self._expr(e.c)])
        if isinstance(e, L.VecLoad):
            # element alignment: a vector may start anywhere in a row
            return b.load(self._address(e.buffer, e.indices), typ=ir.VectorType(F32, e.lanes),
                          align=4)
        if isinstance(e, L.Splat):
            t = ir.VectorType(F32, e.lanes)
            one = b.insert_element(ir.Constant(t, ir.Undefined), self._expr(e.value), I32(0))
            return b.shuffle_vector(one, ir.Constant(t, ir.Undefined),
                                    ir.Constant(ir.VectorType(I32, e.lanes), [0] * e.lanes))
        if isinstance(e, L.Lane):
            return b.extract_element(self._expr(e.vector), I32(e.lane))
        if isinstance(e, L.Unary):
            return self._unary(e.op, self._expr(e.operand), L.dtype_of(e.operand))
        if isinstance(e, L.Binary):
            return self._binary(e.op, self._expr(e.lhs), self._expr(e.rhs), L.dtype_of(e.lhs))
        raise InternalError(f"CPU codegen cannot emit {e!r}")

    @staticmethod
    def _shuffle_as_load(e: L.Shuffle) -> L.Load:
        """A shuffle where the threads are loops over a local buffer's rows: the row `delta`
        threads on while that stays in the warp, else the thread's own."""
        t, rest = e.indices[0], e.indices[1:]
        lane = L.Binary("add", L.Binary("irem", t, L.Const(L.WARP, L.INDEX)),
                        L.Const(e.delta, L.INDEX))
        other = L.Binary("add", t, L.Const(e.delta, L.INDEX))
        row = L.Select(L.Compare("lt", lane, L.Const(L.WARP, L.INDEX)), other, t)
        return L.Load(e.buffer, (row, *rest))

    _FCMP = {"eq": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}

    def _compare(self, e: L.Compare) -> ir.Value:
        x, y, dt = self._expr(e.lhs), self._expr(e.rhs), L.dtype_of(e.lhs)
        op = self._FCMP[e.op]
        if dt == "f32":
            # numpy: NaN is unequal to everything, and every ordered comparison with it is false
            if e.op == "ne":
                return self.b.fcmp_unordered(op, x, y)
            return self.b.fcmp_ordered(op, x, y)
        if dt == "bool":
            return self.b.icmp_unsigned(op, x, y)
        return self.b.icmp_signed(op, x, y)

    def _float_intrinsic(self, name: str, x: ir.Value, nargs: int) -> ir.Function:
        """llvm.NAME.f32, or its vLf32 form for a vector x."""
        return vecmath.float_intrinsic(self.b, name, x.type, nargs)

    def _unary(self, op: str, x: ir.Value, dt: str) -> ir.Value:
        b = self.b
        if op == "not":
            return b.xor(x, I1(1))
        if dt != "f32" and L.lanes_of(dt) is None:  # integers
            if op == "neg":
                return b.sub(x.type(0), x)
            if op == "abs":  # wraps at the minimum, as numpy does
                return b.call(self._declare(f"llvm.abs.i{_INT_BITS[dt]}", x.type,
                                            [x.type, I1]), [x, I1(0)])
        elif op == "neg":
            return b.fneg(x)
        elif op == "abs":
            return b.call(self._float_intrinsic("fabs", x, 1), [x])
        elif op in vecmath.FUNCTIONS:  # inline polynomials: libm calls would not vectorize
            return vecmath.FUNCTIONS[op](b, x)
        elif op in ("sqrt", "rsqrt"):
            sqrt = b.call(self._float_intrinsic("sqrt", x, 1), [x])
            return sqrt if op == "sqrt" else b.fdiv(vecmath.splat_like(x, 1.0), sqrt)
        raise InternalError(f"CPU codegen has no unary {op} on {dt}")

    def _binary(self, op: str, x: ir.Value, y: ir.Value, dt: str) -> ir.Value:
        b = self.b
        if op == "and":
            return b.and_(x, y)
        if op == "or":
            return b.or_(x, y)
        if dt == "f32" or L.lanes_of(dt) is not None:
            if op in ("max", "min"):  # NaN-propagating, like numpy.maximum/minimum
                fn = self._float_intrinsic("maximum" if op == "max" else "minimum", x, 2)
                return b.call(fn, [x, y])
            if op == "pow":
                return b.call(self._float_intrinsic("pow", x, 2), [x, y])
            return {"add": b.fadd, "sub": b.fsub, "mul": b.fmul, "div": b.fdiv}[op](x, y)
        if op in ("max", "min"):
            name = f"llvm.s{op}.i{_INT_BITS[dt]}"
            return b.call(self._declare(name, x.type, [x.type, x.type]), [x, y])
        if op in ("add", "sub", "mul"):  # wrapping, as numpy's integers
            return {"add": b.add, "sub": b.sub, "mul": b.mul}[op](x, y)
        if op in ("idiv", "irem"):
            return b.sdiv(x, y) if op == "idiv" else b.srem(x, y)
        raise InternalError(f"CPU codegen has no binary {op} on {dt}")

    def _convert(self, x: ir.Value, src: str, dst: str) -> ir.Value:
        b = self.b
        if src == dst:
            return x
        if src == "bf16":  # widen: the bits are the top half of an f32
            x = b.bitcast(b.shl(b.zext(x, I32), I32(16)), F32)
            return self._convert(x, "f32", dst)
        if dst == "bf16":
            return self._to_bf16(self._convert(x, src, "f32"))
        if src == "f16":
            return self._convert(b.fpext(x, F32), "f32", dst)
        if dst == "f16":
            return b.fptrunc(self._convert(x, src, "f32"), HALF)
        if src == "f32":
            if dst == "bool":  # numpy: NaN is true
                return b.fcmp_unordered("!=", x, F32(0.0))
            name = f"llvm.fptosi.sat.i{_INT_BITS[dst]}.f32"  # saturating; NaN gives 0
            return b.call(self._declare(name, _VALUE[dst], [F32]), [x])
        if src == "bool":
            return b.uitofp(x, F32) if dst == "f32" else b.zext(x, _VALUE[dst])
        # src is an integer
        if dst == "f32":
            return b.sitofp(x, F32)
        if dst == "bool":
            return b.icmp_signed("!=", x, x.type(0))
        if _INT_BITS[dst] > _INT_BITS[src]:
            return b.sext(x, _VALUE[dst])
        return b.trunc(x, _VALUE[dst])

    def _to_bf16(self, x: ir.Value) -> ir.Value:
        # round to nearest even on the bit pattern; a NaN stays a (quiet) NaN
        b = self.b
        bits = b.bitcast(x, I32)
        odd = b.and_(b.lshr(bits, I32(16)), I32(1))
        rounded = b.lshr(b.add(b.add(bits, I32(0x7FFF)), odd), I32(16))
        quiet_nan = b.or_(b.lshr(bits, I32(16)), I32(0x40))
        is_nan = b.fcmp_unordered("uno", x, x)
        return b.trunc(b.select(is_nan, quiet_nan, rounded), I16)

    def _declare(self, name: str, ret: ir.Type, args: list[ir.Type]) -> ir.Function:
        try:
            return self.module.get_global(name)
        except KeyError:
            return ir.Function(self.module, ir.FunctionType(ret, args), name=name)
