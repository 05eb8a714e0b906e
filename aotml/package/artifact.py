"""Turn an emitted object into a self-contained shared library and its C header.

The library is linked by `cc -shared` from: the kernels' object, a generated C file holding the
manifest and the exported entry points, the runtime's C source, and the weights blob (pulled in
with `.incbin`, so large weights never pass through LLVM IR). Everything is compiled in a
temporary folder under relative names, so the bytes do not depend on where the build ran.
Outputs are written to temporary files beside the destination and renamed into place.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from aotml.dtypes import TABLE
from aotml.errors import CompileError
from aotml.gpu.host import REGIONS, GpuPlan
from aotml.graph.symbolic import Dim, Sym, evaluate, product
from aotml.loops.ir import Program, assert_messages
from aotml.loops.report import KernelWork
from aotml.resources import runtime_dir

ABI_VERSION = 6
C_KEYWORDS = frozenset("""auto break case char const continue default do double else enum extern
float for goto if inline int long register restrict return short signed sizeof static struct
switch typedef union unsigned void volatile while _Bool _Complex _Imaginary bool true false
alignas alignof nullptr static_assert thread_local typeof""".split())


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output as the manifest describes it."""

    name: str
    dtype: str
    shape: tuple[Dim, ...]
    nbytes: Dim

    @property
    def elements(self) -> Dim:
        return product(self.shape)


@dataclass(frozen=True)
class Manifest:
    """What the artifact says about itself."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    workspace_bytes: Dim
    weights_bytes: int
    build_hash: str
    aotml_version: str
    source_name: str
    errors: tuple[str, ...] = ()  # messages of the run-time checks, by status - 1
    symbols: tuple[tuple[str, int | None], ...] = ()  # (name, upper bound or None), ABI order
    # a profiled build's launches, in order (None: not profiled)
    profile: tuple[KernelWork, ...] | None = None

    @property
    def static_workspace(self) -> int | None:
        """The workspace bytes for any symbol values within their bounds, if that is known."""
        if not isinstance(self.workspace_bytes, Sym):
            return self.workspace_bytes
        bounds = dict(self.symbols)
        if all(bounds[s] is not None for s in self.workspace_bytes.symbols):
            return evaluate(self.workspace_bytes, bounds)
        return None


def manifest_of(program: Program, build_hash: str, version: str, source_name: str,
                work: list[KernelWork] | None = None) -> Manifest:
    """The manifest; `work` (each kernel's, from loops.report.kernel_work) makes it a
    profiled build's."""
    def specs(region: str) -> tuple[TensorSpec, ...]:
        pls = sorted((p for p in program.placements if p.region == region), key=lambda p: p.index)
        return tuple(TensorSpec(p.abi_name, p.buffer.dtype, p.buffer.shape,
                                p.buffer.nbytes) for p in pls)

    profile = None
    if work is not None:
        by_name = {w.kernel: w for w in work}
        profile = tuple(by_name[launch.kernel] for launch in program.launches)
    return Manifest(program.name, specs("input"), specs("output"), program.workspace_bytes,
                    program.weights_bytes, build_hash, version, source_name,
                    assert_messages(program), program.symbols, profile)



def _poly(d: Dim, index: dict[str, int]) -> list[int]:
    """A size in the runtime's encoding: terms, then (coefficient, degree, symbols...) each."""
    if not isinstance(d, Sym):
        return [1, d, 0]
    out = [len(d.terms)]
    for monomial, coef in d.terms:
        out += [coef, len(monomial), *(index[s] for s in monomial)]
    return out


def _c_dim(d: Dim, names: dict[str, str]) -> str:
    """A dim as a C expression over the typed entry's symbol parameters."""
    if not isinstance(d, Sym):
        return f"{d}u"
    return "(" + d.format(lambda s: f"(uint64_t)({names[s]})", " * ") + ")"


def c_name(name: str) -> str:
    return name + "_" if name in C_KEYWORDS else name


def prototype_names(m: Manifest) -> list[str]:
    """Parameter names for the typed entry's prototype: the symbols, then the tensor names,
    made legal in C (keywords, and the trailing `workspace` parameter) and unique."""
    taken = {"workspace"}
    out = []
    for name in (*(s for s, _ in m.symbols), *(t.name for t in (*m.inputs, *m.outputs))):
        name = c_name(name)
        while name in taken:
            name += "_"
        taken.add(name)
        out.append(name)
    return out


def _c_string(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _incbin(symbol: str, file: str, align: int) -> list[str]:
    """C lines defining `symbol` as the bytes of `file` (in the link folder) and a NUL."""
    return [
        f"extern const unsigned char {symbol}[] AOTML_HIDDEN;",
        f"__asm__(\".section .rodata.{symbol},\\\"a\\\"\\n\"",
        f"        \".balign {align}\\n.globl {symbol}\\n.hidden {symbol}\\n\"",
        f"        \".type {symbol}, @object\\n{symbol}:\\n\"",
        f"        \".incbin \\\"{file}\\\"\\n.byte 0\\n\"",
        f"        \".size {symbol}, . - {symbol}\\n.previous\\n\");",
    ]


def ptx_file(sm: int) -> str:
    """The name a PTX module has in the link folder."""
    return f"kernels.sm_{sm}.ptx"


def _gpu_tables(gpu: GpuPlan, index: dict[str, int]) -> list[str]:
    """The aotml_gpu table of the runtime (runtime/aotml_runtime.h), with its PTX embedded."""
    lines = []
    for sm, _ in gpu.ptx:
        lines += _incbin(f"aotml_ptx_sm_{sm}", ptx_file(sm), 16)
    lines.append("static const aotml_gpu_module gpu_modules[] = {"
                 + ", ".join(f"{{{sm}u, (const char *)aotml_ptx_sm_{sm}}}" for sm, _ in gpu.ptx)
                 + "};")
    lines.append("static const char *const gpu_kernels[] = {"
                 + ", ".join(_c_string(k) for k in gpu.kernels) + "};")
    for n, launch in enumerate(gpu.launches):
        rows = []
        for k, arg in enumerate(launch.args):
            if arg.region in ("input", "output"):
                rows.append(f"{{{REGIONS[arg.region]}, {arg.index}u, 0}}")
            else:
                lines.append(f"static const int64_t launch_{n}_offset_{k}[] = "
                             f"{{{', '.join(map(str, _poly(arg.index, index)))}}};")
                rows.append(f"{{{REGIONS[arg.region]}, 0u, launch_{n}_offset_{k}}}")
        lines.append(f"static const aotml_gpu_arg launch_{n}_args[] = "
                     f"{{{', '.join(rows) or '{0, 0u, 0}'}}};")
        lines.append(f"static const int64_t launch_{n}_points[] = "
                     f"{{{', '.join(map(str, _poly(launch.points, index)))}}};")
    lines.append("static const aotml_gpu_launch gpu_launches[] = {")
    lines += [f"    {{{launch.kernel}u, {len(launch.args)}u, launch_{n}_args, "
              f"launch_{n}_points, {launch.threads}u}},"
              for n, launch in enumerate(gpu.launches)]
    lines.append("};")
    lines.append("static const int64_t gpu_workspace[] = "
                 f"{{{', '.join(map(str, _poly(gpu.workspace, index)))}}};")
    lines.append(f"static const aotml_gpu gpu = {{{len(gpu.ptx)}u, gpu_modules, "
                 f"{len(gpu.kernels)}u, gpu_kernels, {len(gpu.launches)}u, gpu_launches, "
                 "gpu_workspace};")
    return lines


def _profile_tables(work: tuple[KernelWork, ...], index: dict[str, int]) -> list[str]:
    """The aotml_profile of a profiled build: names, ops, the work polynomials, and the
    counters the entry adds to (hidden globals of the kernels' object)."""
    n = len(work)
    polys = {kind: [x for w in work for x in _poly(getattr(w, kind), index)]
             for kind in ("flops", "bytes")}
    return [
        "extern uint64_t aotml_profile_ns[] AOTML_HIDDEN;",
        "extern uint64_t aotml_profile_runs AOTML_HIDDEN;",
        "static const char *const profile_kernels[] = {"
        + (", ".join(_c_string(w.kernel) for w in work) or "0") + "};",
        "static const char *const profile_ops[] = {"
        + (", ".join(_c_string(w.ops) for w in work) or "0") + "};",
        *(f"static const int64_t profile_{kind}[] = {{{', '.join(map(str, poly)) or '0'}}};"
          for kind, poly in polys.items()),
        "static int profile_work(const int64_t *syms, uint64_t *flops, uint64_t *bytes) {",
        f"    return aotml_rt_profile_work(&impl, {n}u, profile_flops, profile_bytes, syms, "
        "flops, bytes);",
        "}",
        f"static const aotml_profile profile = {{{n}u, profile_kernels, profile_ops, "
        "profile_work, aotml_profile_ns, &aotml_profile_runs};",
    ]


def generate_glue(m: Manifest, gpu: GpuPlan | None = None, cpu: bool = True) -> str:
    """The C glue of a library with CPU code (`cpu`), GPU code (`gpu`), or both."""
    p = c_name(m.name)
    lines = [
        f"/* Generated by aotml {m.aotml_version}: the manifest and entry points of '{m.name}'. */",
        '#include "aotml_runtime.h"',
        "",
    ]
    if cpu:
        lines += ["extern int aotml_entry(const void *const *, void *const *, void *, "
                  "const void *,",
                  "                       const int64_t *) AOTML_HIDDEN;"]
    lines += [*_incbin("aotml_weights", "weights.bin", 64), ""]
    index = {name: k for k, (name, _) in enumerate(m.symbols)}
    if gpu is not None:
        lines += [*_gpu_tables(gpu, index), ""]
    sizes = []
    for kind, specs in (("input", m.inputs), ("output", m.outputs)):
        for i, t in enumerate(specs):
            dims = ", ".join(str(d) if isinstance(d, int) else "-1" for d in t.shape) or "0"
            lines.append(f"static const int64_t {kind}_{i}_shape[] = {{{dims}}};")
            texts = ", ".join(_c_string(str(d)) for d in t.shape) or "0"
            lines.append(f"static const char *const {kind}_{i}_dims[] = {{{texts}}};")
            poly = [x for d in (*t.shape, t.nbytes) for x in _poly(d, index)]
            lines.append(f"static const int64_t {kind}_{i}_sizes[] = "
                         f"{{{', '.join(map(str, poly))}}};")
            sizes.append(f"{kind}_{i}_sizes")
        rows = [f"    {{{_c_string(t.name)}, {TABLE[t.dtype].abi_enum}, {len(t.shape)}, "
                f"{kind}_{i}_shape, {t.nbytes if isinstance(t.nbytes, int) else 0}u, "
                f"{kind}_{i}_dims}}," for i, t in enumerate(specs)]
        lines.append(f"static const aotml_tensor_info {kind}s[] = {{")
        lines += rows or ['    {"", 0, 0, 0, 0, 0},']
        lines.append("};")
    lines.append(f"static const int64_t *const sizes[] = {{{', '.join(sizes) or '0'}}};")
    lines.append("static const int64_t workspace_size[] = "
                 f"{{{', '.join(map(str, _poly(m.workspace_bytes, index)))}}};")
    lines.append("static const aotml_symbol symbols[] = {"
                 + ", ".join(f"{{{_c_string(n)}, {b or 0}}}" for n, b in m.symbols)
                 + ("};" if m.symbols else '{"", 0}};'))
    ni, no, ns = len(m.inputs), len(m.outputs), len(m.symbols)
    lines += ["", "static const aotml_impl impl;"]
    if m.profile is not None:
        lines += _profile_tables(m.profile, index)
    lines += [
        "static int bind(const int64_t *const *input_shapes, int64_t *syms) {",
        "    return aotml_rt_bind(&impl, input_shapes, syms);",
        "}",
        "static int shape(const int64_t *syms, uint32_t index, int64_t *dims, uint64_t *bytes) {",
        "    return aotml_rt_shape(&impl, syms, index, dims, bytes);",
        "}",
        "static int workspace(const int64_t *syms, uint64_t *bytes) {",
        "    return aotml_rt_workspace_size(&impl, syms, bytes);",
        "}",
        "static int generic_run(const int64_t *syms, const void *const *inputs,",
        "                       const uint64_t *input_bytes, uint32_t n_inputs,",
        "                       void *const *outputs, const uint64_t *output_bytes,",
        "                       uint32_t n_outputs, void *ws, uint64_t ws_bytes) {",
        "    return aotml_rt_run(&impl, syms, inputs, input_bytes, n_inputs, outputs,",
        "                        output_bytes, n_outputs, ws, ws_bytes);",
        "}",
        "static int run_args(const aotml_run_args *args) {",
        "    return aotml_rt_run_args(&impl, args);",
        "}",
        *(["static int select_device(const char *name) {",
            "    return aotml_rt_gpu_select_device(&impl, name);",
            "}",
            "static const char *device(void) { return aotml_rt_gpu_device(&impl); }",
            "static int run_device(const int64_t *syms, const uint64_t *inputs,",
            "                      const uint64_t *outputs) {",
            "    return aotml_rt_gpu_run_device(&impl, syms, inputs, outputs);",
            "}"]
          if gpu is not None else
          ["#define select_device aotml_rt_cpu_select_device",
           "#define device aotml_rt_cpu_device",
           "#define run_device aotml_rt_cpu_run_device"]),
        "",
        "static const aotml_model model = {",
        f"    AOTML_ABI_VERSION, {_c_string(m.aotml_version)}, {_c_string(m.name)},",
        f"    {_c_string(m.build_hash)}, {ni}u, inputs, {no}u, outputs, {ns}u, symbols,",
        f"    {m.static_workspace or 0}u, {m.weights_bytes}u, bind, shape, workspace,",
        "    generic_run, aotml_rt_last_error, aotml_rt_set_num_threads, aotml_rt_num_threads,",
        f"    {'AOTML_DEVICE_CPU' if cpu else '0'}"
        f"{' | AOTML_DEVICE_CUDA' if gpu is not None else ''}, select_device, device,",
        f"    run_device, run_args, {'&profile' if m.profile is not None else '0'},",
        "};",
        "static const char *const errors[] = {"
        + ", ".join(_c_string(e) for e in m.errors) + (", 0};" if m.errors else "0};"),
        f"static const aotml_impl impl = {{&model, {'aotml_entry' if cpu else '0'}, "
        f"aotml_weights, errors, {len(m.errors)}u, sizes, workspace_size, "
        f"{'&gpu, aotml_rt_gpu_run' if gpu is not None else '0, 0'}}};",
        "",
        "AOTML_EXPORT const aotml_model *aotml_model_v1(void) { return &model; }",
        f"AOTML_EXPORT const aotml_model *{p}_model(void) {{ return &model; }}",
        f"AOTML_EXPORT const char *{p}_last_error(void) {{ return aotml_rt_last_error(); }}",
        f"AOTML_EXPORT int {p}_set_num_threads(int n) {{ return aotml_rt_set_num_threads(n); }}",
        f"AOTML_EXPORT int {p}_select_device(const char *name) {{ return select_device(name); }}",
        "",
        "/* Parameters are named by position here, so no tensor name can shadow a name below. */",
        f"AOTML_EXPORT {_typed_signature(m, positional=True)} {{",
        f"    const int64_t syms[{max(ns, 1)}] = "
        f"{{{', '.join(f's{k}' for k in range(ns)) or '0'}}};",
        f"    const void *ins[{max(ni, 1)}] = {{{', '.join(f'a{i}' for i in range(ni)) or '0'}}};",
        f"    void *outs[{max(no, 1)}] = {{{', '.join(f'a{ni + i}' for i in range(no)) or '0'}}};",
        "    /* the typed entry never allocates: a NULL workspace is an error if one is needed */",
        "    return aotml_rt_run_typed(&impl, syms, ins, outs, ws);",
        "}",
        "",
    ]
    return "\n".join(lines)


def _typed_signature(m: Manifest, positional: bool = False) -> str:
    ns = len(m.symbols)
    names = prototype_names(m)
    if positional:
        names = [f"s{k}" for k in range(ns)] + \
            [f"a{i}" for i in range(len(m.inputs) + len(m.outputs))]
    tensors = (*m.inputs, *m.outputs)
    params = [f"int64_t {name}" for name in names[:ns]]
    params += [f"{'const ' if k < len(m.inputs) else ''}{TABLE[t.dtype].c_type} *{name}"
               for k, (t, name) in enumerate(zip(tensors, names[ns:]))]
    params.append("void *ws" if positional else "void *workspace")
    return f"int {c_name(m.name)}_run({', '.join(params)})"


def generate_header(m: Manifest) -> str:
    upper = c_name(m.name).upper()
    guard = f"AOTML_MODEL_{m.name}_H"
    abi = (runtime_dir() / "aotml.h").read_text()

    def describe(t: TensorSpec) -> str:
        return f"{t.name}: {t.dtype}[{', '.join(map(str, t.shape))}]"

    lines = [
        f"/* {m.name}: generated by aotml {m.aotml_version} from {m.source_name}.",
        f" * build hash {m.build_hash}",
        " *",
        " * inputs:  " + "; ".join(describe(t) for t in m.inputs),
        " * outputs: " + "; ".join(describe(t) for t in m.outputs),
        *([" * dims:    " + "; ".join(f"{n} <= {b}" if b is not None else f"{n} (unbounded)"
                                      for n, b in m.symbols)] if m.symbols else []),
        " */",
        f"#ifndef {guard}",
        f"#define {guard}",
        "",
        abi.rstrip(),
        "",
        "#ifdef __cplusplus",
        'extern "C" {',
        "#endif",
        "",
    ]
    names = prototype_names(m)
    ns = len(m.symbols)
    sym_names = dict(zip((s for s, _ in m.symbols), names[:ns]))
    params = "(" + ", ".join(names[:ns]) + ")" if ns else ""
    if m.symbols:
        lines.append("/* Symbolic dims, passed first to the typed entry; each is at least 1. */")
        for (sym, bound), name in zip(m.symbols, names):
            if bound is not None:
                lines.append(f"#define {upper}_{name}_MAX {bound}")
            else:
                lines.append(f"/* {sym}: unbounded */")
    static_ws = m.static_workspace
    if static_ws is not None:
        lines += ["/* Scratch bytes a call needs (for any values of the symbols within their",
                  " * bounds); the caller provides them (64-byte aligned is best). */",
                  f"#define {upper}_WORKSPACE_BYTES {static_ws}u"]
    else:
        lines += ["/* Scratch bytes a call needs for these symbol values; the caller provides",
                  " * them (64-byte aligned is best). */",
                  f"#define {upper}_WORKSPACE_BYTES{params} "
                  f"{_c_dim(m.workspace_bytes, sym_names)}"]
    # named as the typed entry's parameters: legal, unique (an output may be named like an
    # input), and keeping their case (inputs `a` and `A` are different tensors)
    for t, name in zip((*m.inputs, *m.outputs), names[ns:]):
        if isinstance(t.elements, Sym):
            lines.append(f"#define {upper}_{name}_ELEMENTS{params} "
                         f"{_c_dim(t.elements, sym_names)}  /* {describe(t)} */")
        else:
            lines.append(f"#define {upper}_{name}_ELEMENTS {t.elements}u  /* {describe(t)} */")
    lines += [
        "",
        "/* Runs the model on dense row-major buffers. Returns AOTML_OK or an aotml_status;",
        f" * {c_name(m.name)}_last_error() then says why. Never allocates; thread-safe given one",
        " * workspace per concurrent call. */",
        f"{_typed_signature(m)};",
        "",
        "/* The manifest and the generic entry point (see aotml.h). */",
        f"const aotml_model *{c_name(m.name)}_model(void);",
        f"const char *{c_name(m.name)}_last_error(void);",
        "/* The threads its runs may use, the caller's included (n < 1: the default,",
        " * $AOTML_NUM_THREADS or the cores available); returns the count in force. */",
        f"int {c_name(m.name)}_set_num_threads(int n);",
        "/* Where runs go: \"auto\" (the default: the GPU when the library has GPU code and one",
        " * is usable, else the CPU), \"cpu\", \"cuda\" or \"cuda:N\"; AOTML_ERR_DEVICE says why",
        " * one cannot be used. */",
        f"int {c_name(m.name)}_select_device(const char *name);",
        "",
        "#ifdef __cplusplus",
        "}",
        "#endif",
        "",
        f"#endif /* {guard} */",
        "",
    ]
    return "\n".join(lines)


def link_library(object_code: bytes | None, weights: list, weights_bytes: int,
                 manifest: Manifest, workdir: Path, soname: str,
                 gpu: GpuPlan | None = None) -> Path:
    """Compile and link in `workdir`; returns the path of the linked library there.

    The soname is the output's file name, so a C program linked against `build/mlp.so` records
    `mlp.so` and finds it through its rpath, not through the path it was linked with.

    The runtime is linked as an object compiled once and kept in a cache (`_runtime_object`
    says where and how it is checked), so a build compiles only its glue. The object is
    compiled the same way on a hit, a miss, or with no cache, so the library's bytes do not
    depend on the cache.

    `object_code` is None for a library with GPU code only; `gpu` adds the GPU side: the PTX
    modules (embedded with `.incbin`), the launch tables, and the runtime's CUDA part."""
    rt = runtime_dir()
    # read once: the bytes compiled are the bytes the cache key was made of
    sources = {name: (rt / name).read_bytes() for name in _RUNTIME_SOURCES}
    for name, data in sources.items():
        (workdir / name).write_bytes(data)
    objects = ["aotml_runtime.o"]
    if object_code is not None:
        (workdir / "kernels.o").write_bytes(object_code)
        objects.append("kernels.o")
    if gpu is not None:
        objects.append("aotml_cuda.o")
        for sm, text in gpu.ptx:
            (workdir / ptx_file(sm)).write_text(text)
    blob = bytearray(weights_bytes)
    for offset, array in weights:
        data = array.tobytes()
        blob[offset:offset + len(data)] = data
    (workdir / "weights.bin").write_bytes(bytes(blob))
    (workdir / "model.c").write_text(generate_glue(manifest, gpu, cpu=object_code is not None))
    cc = os.environ.get("CC", "cc")
    for obj in objects:
        if obj.startswith("aotml_"):
            _runtime_object(cc, sources, workdir, obj.removesuffix(".o"))
    # the pool's entry points stay interposable, every other reference binds in the library
    (workdir / "dynamic.list").write_text("{ " + " ".join(f"{s};" for s in POOL_SYMBOLS) + " };\n")
    _run_cc([cc, "-shared", *_C_FLAGS, "-Wl,-z,noexecstack", f"-Wl,-soname,{soname}",
             "-Wl,--dynamic-list=dynamic.list", "-o", "model.so", "model.c", *objects, "-lm",
             *(["-ldl"] if gpu is not None else [])], workdir)
    return workdir / "model.so"


_RUNTIME_SOURCES = ("aotml.h", "aotml_runtime.h", "aotml_runtime.c", "aotml_cuda.c")
# The thread pool's exported entry points: the first loaded library's serve the process (see
# the pool in runtime/aotml_runtime.c).
POOL_SYMBOLS = ("aotml_pool1_parallel_for", "aotml_pool1_set_num_threads",
                "aotml_pool1_num_threads")
# for the runtime's object and the glue alike; -pthread in the link too, for a runtime that
# starts threads; -fsemantic-interposition so that the runtime's own calls to the pool's entry
# points go through the PLT, where the dynamic linker can bind them to another library's
_C_FLAGS = ("-fPIC", "-O2", "-std=c11", "-fvisibility=hidden", "-fsemantic-interposition",
            "-pthread", "-I.")
_CACHE_FORMAT = b"aotml runtime object cache 1"  # changes when an entry's layout does
_DIGEST_BYTES = hashlib.sha256().digest_size


def _run_cc(cmd: list[str], workdir: Path) -> None:
    try:
        proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True)
    except FileNotFoundError:
        raise CompileError(f"no C compiler '{cmd[0]}' found to link the library "
                           "(set CC)") from None
    if proc.returncode != 0:
        raise CompileError(f"linking the library failed ({' '.join(cmd)}):\n{proc.stderr}")


def _runtime_object(cc: str, sources: dict[str, bytes], workdir: Path, part: str) -> None:
    """Put the object of the runtime's `part` (aotml_runtime, aotml_cuda) in `workdir` as
    `PART.o`: from the cache if it holds one for these sources, compiler and flags, else
    compiled there from the sources already
    copied in (under relative names, so no path of this build ends up in it) and then cached.

    The cache is `$AOTML_CACHE_DIR`, else `$XDG_CACHE_HOME/aotml`, else `~/.cache/aotml`;
    `AOTML_CACHE_DIR=` (set, empty) turns it off. Entries are `runtime/KEY.o`, KEY the sha256
    of the sources, the compile command and `cc --version`; each holds the object followed by
    the object's sha256, so a truncated or damaged entry is seen as a miss (and rewritten).
    Entries are written to a temporary file in the same folder and renamed into place, so a
    concurrent build sees a whole entry or none. A cache that cannot be made, read or written
    is no cache: the build goes on as without one."""
    cmd = [cc, "-c", *_C_FLAGS, "-o", f"{part}.o", f"{part}.c"]
    folder = _cache_dir()
    entry = None if folder is None else folder / "runtime" / f"{_cache_key(cmd, sources)}.o"
    if entry is not None:
        obj = _load_cached(entry)
        if obj is not None:
            (workdir / f"{part}.o").write_bytes(obj)
            return
    _run_cc(cmd, workdir)
    if entry is not None:
        _store_cached(entry, (workdir / f"{part}.o").read_bytes())


def _cache_dir() -> Path | None:
    explicit = os.environ.get("AOTML_CACHE_DIR")
    if explicit is not None:
        return Path(os.path.abspath(explicit)) if explicit else None
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    if os.path.isabs(xdg):  # the XDG spec has relative values ignored
        return Path(xdg) / "aotml"
    home = os.path.expanduser("~")
    return Path(home) / ".cache" / "aotml" if os.path.isabs(home) else None


def _cache_key(cmd: list[str], sources: dict[str, bytes]) -> str:
    digest = hashlib.sha256(_CACHE_FORMAT)
    parts = [*(x for name in sorted(sources) for x in (name.encode(), sources[name])),
             *(arg.encode() for arg in cmd), _compiler_version(cmd[0], shutil.which(cmd[0]))]
    for part in parts:  # length-prefixed, so no two different lists of parts hash alike
        digest.update(len(part).to_bytes(8, "little") + part)
    return digest.hexdigest()


@functools.cache
def _compiler_version(cc: str, resolved: str | None) -> bytes:
    """`cc --version`, once per process for each compiler (`resolved`, where `cc` is found on
    PATH, tells two compilers of one name apart)."""
    try:
        proc = subprocess.run([cc, "--version"], capture_output=True)
    except FileNotFoundError:
        raise CompileError(f"no C compiler '{cc}' found to link the library (set CC)") from None
    return b"%d\0%s\0%s" % (proc.returncode, proc.stdout, proc.stderr)


def _load_cached(entry: Path) -> bytes | None:
    try:
        data = entry.read_bytes()
    except OSError:
        return None
    obj, digest = data[:-_DIGEST_BYTES], data[-_DIGEST_BYTES:]
    if not obj or hashlib.sha256(obj).digest() != digest:
        return None
    return obj


def _store_cached(entry: Path, obj: bytes) -> None:
    # no fsync: an entry cut short by a crash fails its digest and is compiled again
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{entry.name}.", suffix=".tmp", dir=entry.parent)
    except OSError:
        return
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(obj + hashlib.sha256(obj).digest())
        os.chmod(tmp, 0o644)
        os.replace(tmp, entry)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def write_atomically(files: dict[Path, bytes]) -> None:
    """Write every file beside its destination under a temporary name, then rename each, in
    order (put the one that matters most last: it is replaced only if all before it were).
    Any failure leaves the destinations as they were (except those already renamed) and no
    temporary file behind; it is reported as a CompileError naming the path."""
    staged: list[tuple[Path, Path]] = []
    try:
        for dest, data in files.items():
            if dest.is_dir():
                raise CompileError(f"cannot write '{dest}': it is a directory")
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
            staged.append((Path(tmp), dest))
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.chmod(tmp, 0o755 if dest.suffix == ".so" else 0o644)
        for tmp, dest in staged:
            os.replace(tmp, dest)
    except OSError as e:
        raise CompileError(f"cannot write '{e.filename or dest}': {e.strerror or e}") from None
    finally:
        for tmp, _ in staged:
            if tmp.exists():
                tmp.unlink()
