"""Load a compiled model with cffi and call it with numpy arrays (zero-copy in and out)."""

from __future__ import annotations

import math
import operator
import os
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import cffi
import numpy as np

from aotml.dtypes import TABLE  # (importing it registers numpy's name 'bfloat16')
from aotml.errors import LoadError, RunError
from aotml.package.artifact import ABI_VERSION

_CDEF = """
typedef struct aotml_tensor_info {
    const char *name; int32_t dtype; int32_t rank; const int64_t *shape; uint64_t bytes;
    const char *const *dims;
} aotml_tensor_info;
typedef struct aotml_symbol { const char *name; int64_t max; } aotml_symbol;
typedef struct aotml_run_args {
    const int64_t *symbols; const void *const *inputs; const uint64_t *input_bytes;
    uint32_t n_inputs; void *const *outputs; const uint64_t *output_bytes; uint32_t n_outputs;
    void *workspace; uint64_t workspace_bytes;
} aotml_run_args;
typedef struct aotml_profile {
    uint32_t n_kernels; const char *const *kernels; const char *const *ops;
    int (*work)(const int64_t *symbols, uint64_t *flops, uint64_t *bytes);
    uint64_t *ns; uint64_t *runs;
} aotml_profile;
typedef struct aotml_model {
    uint32_t abi_version; const char *aotml_version; const char *name; const char *build_hash;
    uint32_t n_inputs; const aotml_tensor_info *inputs;
    uint32_t n_outputs; const aotml_tensor_info *outputs;
    uint32_t n_symbols; const aotml_symbol *symbols;
    uint64_t workspace_bytes; uint64_t weights_bytes;
    int (*bind)(const int64_t *const *input_shapes, int64_t *symbols);
    int (*shape)(const int64_t *symbols, uint32_t index, int64_t *shape, uint64_t *bytes);
    int (*workspace_size)(const int64_t *symbols, uint64_t *bytes);
    int (*run)(const int64_t *symbols, const void *const *inputs, const uint64_t *input_bytes,
               uint32_t n_inputs, void *const *outputs, const uint64_t *output_bytes,
               uint32_t n_outputs, void *workspace, uint64_t workspace_bytes);
    const char *(*last_error)(void);
    int (*set_num_threads)(int n);
    int (*num_threads)(void);
    uint32_t devices;
    int (*select_device)(const char *name);
    const char *(*device)(void);
    int (*run_device)(const int64_t *symbols, const uint64_t *inputs, const uint64_t *outputs);
    int (*run_args)(const aotml_run_args *args);
    const aotml_profile *profile;
} aotml_model;
const aotml_model *aotml_model_v1(void);
"""
_DTYPES = {d.abi_code: str(d.numpy) for d in TABLE.values()}  # ABI code -> numpy dtype name
_ffi = cffi.FFI()
_ffi.cdef(_CDEF)
_loaded: dict[str, tuple[int, int]] = {}  # path dlopen'ed -> the file's (device, inode) then
_reloaded: dict[tuple[int, int], object] = {}  # (device, inode) -> its library, from a copy


def _dlopen(path: Path):
    """The library at `path`, loaded in the global scope, so that a second library's pool calls
    bind to the first's: one thread pool per process (a library binds every other symbol to
    its own).

    The dynamic linker knows a loaded library by the path it was opened with, so a library
    rebuilt at a path already loaded (a new file: builds rename into place) would come back
    as the old one. Such a file is loaded from a private copy under a fresh name instead,
    removed once mapped."""
    flags = _ffi.RTLD_NOW | _ffi.RTLD_GLOBAL
    st = os.stat(path)
    key, identity = str(path), (st.st_dev, st.st_ino)
    if _loaded.setdefault(key, identity) == identity:
        return _ffi.dlopen(key, flags)
    if identity not in _reloaded:
        with tempfile.TemporaryDirectory(prefix="aotml-reload-") as tmp:
            copy = Path(tmp) / path.name
            shutil.copyfile(path, copy)
            _reloaded[identity] = _ffi.dlopen(str(copy), flags)
    return _reloaded[identity]


@dataclass(frozen=True)
class TensorInfo:
    """A model input or output: name, numpy dtype string, shape. A symbolic dim is its name
    (or expression) as a string: ("N", 784)."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]
    nbytes: int | None  # None when it depends on a symbol

    @property
    def rank(self) -> int:
        return len(self.shape)

    def text(self) -> str:
        return f"{self.dtype}[{', '.join(map(str, self.shape))}]"


class KernelTime(NamedTuple):
    """One kernel of a profiled library: its time summed over the runs counted, and its work
    per run (as `aotml build --report` counts it)."""

    kernel: str
    ops: str
    seconds: float
    flops: int
    bytes: int


class Profile(NamedTuple):
    """The counters of a profiled library (Model.profile): the runs, each kernel's time."""

    runs: int
    kernels: tuple[KernelTime, ...]


class Model:
    """A loaded model. Call it with keyword arrays; returns a dict of output arrays."""

    def __init__(self, path: str | os.PathLike, device: str | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise LoadError(f"no such model file: '{self.path}'")
        problem = elf_problem(self.path)
        if problem:
            raise LoadError(f"cannot load '{self.path}' as an aotml model: {problem}")
        try:
            self._lib = _dlopen(self.path.resolve())
            self._model = self._lib.aotml_model_v1()
        except (OSError, AttributeError) as e:
            # cffi appends a note about ctypes' library search, which says nothing here
            reason = str(e).split("  Additionally, ctypes")[0].strip()
            raise LoadError(f"cannot load '{self.path}' as an aotml model: {reason}") from None
        m = self._model
        if m.abi_version != ABI_VERSION:
            raise LoadError(f"'{self.path}' was built for ABI {m.abi_version}; this aotml "
                            f"speaks ABI {ABI_VERSION}: rebuild it")
        self.name = _ffi.string(m.name).decode()
        self.build_hash = _ffi.string(m.build_hash).decode()
        self.aotml_version = _ffi.string(m.aotml_version).decode()
        self.inputs = tuple(_info(m.inputs[i]) for i in range(m.n_inputs))
        self.outputs = tuple(_info(m.outputs[i]) for i in range(m.n_outputs))
        # symbol name -> upper bound (None: unbounded)
        self.symbols = {_ffi.string(m.symbols[k].name).decode(): int(m.symbols[k].max) or None
                        for k in range(m.n_symbols)}
        # for symbols within their bounds (None when an unbounded one changes it)
        self.workspace_bytes = int(m.workspace_bytes) if m.workspace_bytes or \
            all(b is not None for b in self.symbols.values()) else None
        # the code the library holds: "cpu", "cuda"
        self.devices = tuple(d for bit, d in ((1, "cpu"), (2, "cuda")) if m.devices & bit)
        if device is not None:
            self.select_device(device)
        self._prepare_fast_path()

    def select_device(self, device: str) -> None:
        """Send runs to `device`: "auto" (the default: the GPU when the library has GPU code
        and a usable GPU is present, else the CPU), "cpu", "cuda" or "cuda:N". The choice
        belongs to the model's library (every Model of it shares it). LoadError says why a device
        cannot be used (no GPU code in the library, no CUDA driver or device, no PTX for its
        architecture)."""
        if not isinstance(device, str):
            raise LoadError(f"device must be a string such as 'cpu' or 'cuda', got {device!r}")
        if self._model.select_device(device.encode()) != 0:
            raise LoadError(f"{self.name}: {_ffi.string(self._model.last_error()).decode()}")

    @property
    def device(self) -> str:
        """Where runs go now: "cpu", or "cuda:0 (NAME, sm_90)". Under "auto", reading it makes
        the choice (it loads the CUDA driver if the library has GPU code)."""
        return _ffi.string(self._model.device()).decode()

    def run_device(self, inputs: dict[str, int], outputs: dict[str, int],
                   shapes: dict[str, tuple[int, ...]] | None = None) -> None:
        """Run on buffers already in GPU memory, given as device addresses (a torch tensor's
        `data_ptr()`, say), with no copy to or from the host. Nothing can check a device
        buffer: each must be dense, of the model's dtype and of the size its shape gives.
        `shapes` gives the inputs' shapes where the model has symbolic dims."""
        names = [t.name for t in self.inputs], [t.name for t in self.outputs]
        for given, want, kind in ((inputs, names[0], "input"), (outputs, names[1], "output")):
            if sorted(given) != sorted(want):
                raise RunError(f"{self.name}: run_device takes the {kind}s {', '.join(want)}; "
                               f"got {', '.join(given) or 'none'}")
        symbols = _ffi.NULL
        if self.symbols:
            if shapes is None or sorted(shapes) != sorted(names[0]):
                raise RunError(f"{self.name}: its dims {', '.join(self.symbols)} come from the "
                               f"inputs' shapes: pass shapes={{name: shape}} for every input")
            symbols = self.bind([tuple(shapes[n]) for n in names[0]])
        ins = _ffi.new("uint64_t[]", [int(inputs[n]) for n in names[0]] or [0])
        outs = _ffi.new("uint64_t[]", [int(outputs[n]) for n in names[1]] or [0])
        if self._model.run_device(symbols, ins, outs) != 0:
            raise self._fail()

    def _prepare_fast_path(self) -> None:
        """What every call would otherwise recompute: names, numpy dtypes and shapes to check
        against, the bound C function, and (without symbols) the one plan of every call."""
        m = self._model
        self._run_c = m.run  # (each read of a struct's field makes a new cdata)
        self._input_names = frozenset(t.name for t in self.inputs)
        self._out_is_input = "out" in self._input_names
        self._n_in, self._n_out = len(self.inputs), len(self.outputs)
        self._out_names = tuple(t.name for t in self.outputs)
        self._plans: dict[tuple[int, ...], _Plan] = {}
        # pointer tables and workspaces: a call takes one and gives it back, so calls from
        # several threads at once (cffi releases the GIL) or re-entrant ones never share one
        self._pool: list[_Scratch] = []
        self._in_specs = self._plan = None
        try:
            dtypes = [np.dtype(t.dtype) for t in (*self.inputs, *self.outputs)]
        except TypeError:  # an ABI dtype code this aotml does not know: the checked path only
            return
        self._in_dtypes, self._out_dtypes = dtypes[:self._n_in], dtypes[self._n_in:]
        # per input: index, name, dtype, and its shape if static (else None); for each input
        # with symbolic dims: its rank, and a getter of its static dims with their values
        self._in_specs = tuple((k, t.name, dtype, t.shape if t.nbytes is not None else None)
                               for k, (t, dtype) in enumerate(zip(self.inputs, self._in_dtypes)))
        self._symbolic_checks = {}
        for k, t in enumerate(self.inputs):
            if t.nbytes is None:
                fixed = [d for d, n in enumerate(t.shape) if isinstance(n, int)]
                get = operator.itemgetter(*fixed) if fixed else None
                self._symbolic_checks[k] = (t.rank, get, get(t.shape) if get else None)
        if not self.symbols:  # every call has the same plan
            self._plan = self._make_plan(_ffi.NULL, [t.shape for t in self.inputs],
                                         [t.shape for t in self.outputs], int(m.workspace_bytes))

    def _make_plan(self, symbols, in_shapes, out_shapes, ws_bytes: int) -> _Plan:
        """The plan of calls with these symbol values (NULL without symbols) and shapes."""
        def nbytes(shapes, dtypes):
            return _ffi.new("uint64_t[]", [math.prod(s) * d.itemsize
                                           for s, d in zip(shapes, dtypes)] or [0])
        outs = tuple((k, name, d, tuple(s)) for k, (name, d, s) in
                     enumerate(zip(self._out_names, self._out_dtypes, out_shapes)))
        return _Plan(symbols, nbytes(in_shapes, self._in_dtypes), outs,
                     nbytes(out_shapes, self._out_dtypes), ws_bytes)

    def _new_plan(self, key: tuple[int, ...], shapes: list[tuple[int, ...]]) -> _Plan:
        """The plan of a call on inputs of these shapes (a model with symbols), kept for the
        next calls by `key`, the symbolic inputs' dims one after another (bind, shape and
        workspace_size depend on nothing else); RunError where they do not bind."""
        symbols = self.bind(shapes)
        out_shapes = [self.shape_of(symbols, self._n_in + k) for k in range(self._n_out)]
        needed = _ffi.new("uint64_t *")
        if self._model.workspace_size(symbols, needed) != 0:
            raise self._fail()
        plan = self._make_plan(symbols, shapes, out_shapes, int(needed[0]))
        if len(self._plans) >= _MAX_PLANS:  # unbounded symbols: shapes without end
            self._plans.clear()
        self._plans[key] = plan
        return plan

    @property
    def num_threads(self) -> int:
        """The threads a run may use, the calling thread included (see set_num_threads)."""
        return int(self._model.num_threads())

    def set_num_threads(self, n: int) -> int:
        """Let runs use `n` threads, the caller's included; n < 1 restores the default
        ($AOTML_NUM_THREADS, else the cores this process may run on). The pool is the
        process's, so every Model shares the setting. Results are the
        same bit for bit at every count. Returns the count now in force."""
        return int(self._model.set_num_threads(int(n)))

    @property
    def profiled(self) -> bool:
        """Whether the library was built with --profile (and times its kernels)."""
        return self._model.profile != _ffi.NULL

    def _profile(self):
        if not self.profiled:
            raise RunError(f"{self.name}: '{self.path}' was built without --profile; rebuild it "
                           "with `aotml build --profile` to time its kernels")
        return self._model.profile

    def profile(self, symbols: dict[str, int] | None = None) -> Profile:
        """The kernels' times since the library was loaded or reset_profile() last ran, with
        each kernel's work for these symbol values (every symbol of the model, by name)."""
        p = self._profile()
        symbols = dict(symbols or {})
        if set(symbols) != set(self.symbols):
            raise RunError(f"{self.name}: the profile's work needs a value for each symbol "
                           f"({', '.join(self.symbols) or 'none'}), got "
                           f"{', '.join(symbols) or 'none'}")
        values = _ffi.new("int64_t[]", [int(symbols[s]) for s in self.symbols] or [0])
        n = int(p.n_kernels)
        flops, nbytes = _ffi.new("uint64_t[]", max(n, 1)), _ffi.new("uint64_t[]", max(n, 1))
        if p.work(values, flops, nbytes) != 0:
            raise self._fail()
        runs = int(p.runs[0])
        return Profile(runs, tuple(
            KernelTime(_ffi.string(p.kernels[k]).decode(), _ffi.string(p.ops[k]).decode(),
                       int(p.ns[k]) * 1e-9, int(flops[k]), int(nbytes[k])) for k in range(n)))

    def reset_profile(self) -> None:
        """Zeroes the kernels' counters (not while a run is going on)."""
        p = self._profile()
        for k in range(p.n_kernels):
            p.ns[k] = 0
        p.runs[0] = 0

    def __repr__(self) -> str:
        def sig(ts):
            return ", ".join(f"{t.name}: {t.text()}" for t in ts)
        return f"<aotml.Model {self.name}({sig(self.inputs)}) -> ({sig(self.outputs)})>"

    def _fail(self) -> RunError:
        return RunError(f"{self.name}: {_ffi.string(self._model.last_error()).decode()}")

    def bind(self, shapes: list[tuple[int, ...]]):
        """The symbols' values (a cffi int64 array) for these input shapes; checked in C."""
        m = self._model
        keep = [_ffi.new("int64_t[]", list(s) or [0]) for s in shapes]
        table = _ffi.new("int64_t *[]", keep or [_ffi.NULL])
        symbols = _ffi.new("int64_t[]", max(len(self.symbols), 1))
        if m.bind(table, symbols) != 0:
            raise self._fail()
        return symbols

    def shape_of(self, symbols, index: int) -> tuple[int, ...]:
        """The shape of tensor `index` (inputs, then outputs) for these symbol values."""
        rank = (self.inputs + self.outputs)[index].rank
        dims, nbytes = _ffi.new("int64_t[]", max(rank, 1)), _ffi.new("uint64_t *")
        if self._model.shape(symbols, index, dims, nbytes) != 0:
            raise self._fail()
        return tuple(int(dims[k]) for k in range(rank))

    def __call__(self, /, *, out: dict[str, np.ndarray] | None = None,
                 **arrays: np.ndarray) -> dict[str, np.ndarray]:
        """model(x=..., out={...}): `out` optionally maps output names to arrays to write into
        (unless the model has an input named `out`, which then takes that keyword)."""
        if self._out_is_input and out is not None:
            arrays["out"], out = out, None
        return self.run(arrays, out)

    def run(self, arrays: dict[str, np.ndarray],
            out: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """Run on `arrays` (name -> array); write into the arrays of `out` where given."""
        # The fast path makes the checks of _run_checked, but at the first sign of anything
        # unusual (a wrong or missing array, an unknown name, an ndarray subclass, an `out` that
        # is not a dict) it leaves the call to _run_checked, which runs it or says what is
        # wrong: the messages come from one place.
        specs = self._in_specs
        if specs is None or len(arrays) != self._n_in or (out and type(out) is not dict):
            return self._run_checked(arrays, out)
        pool = self._pool
        try:
            scratch = pool.pop()
        except IndexError:
            scratch = _Scratch(self._n_in, self._n_out)
        in_ptrs, out_ptrs = scratch.in_ptrs, scratch.out_ptrs
        ins = []  # holds the inputs for the call (`arrays` may be the caller's, and change)
        key = ()
        result = {}
        try:
            for k, name, dtype, shape in specs:
                a = arrays[name]
                if type(a) is not np.ndarray or (a.dtype is not dtype and a.dtype != dtype):
                    raise _Unusual
                s = a.shape
                if s != shape:
                    if shape is not None:
                        raise _Unusual
                    rank, get, want = self._symbolic_checks[k]
                    if len(s) != rank or (get is not None and get(s) != want):
                        raise _Unusual
                    key += s
                in_ptrs[k] = _from_buffer(a)  # ValueError where it is not C-contiguous
                ins.append(a)
            plan = self._plan or self._plans.get(key) or \
                self._new_plan(key, [a.shape for a in ins])
            symbols, in_bytes, outputs, out_bytes, ws_bytes = plan
            if out:
                found = 0
                for k, name, dtype, shape in outputs:
                    o = out.get(name)
                    if o is None:
                        o = np.empty(shape, dtype)
                    else:
                        if type(o) is not np.ndarray or o.shape != shape or \
                                (o.dtype is not dtype and o.dtype != dtype):
                            raise _Unusual
                        found += 1
                    # ValueError where it is read-only or not C-contiguous
                    out_ptrs[k] = _from_buffer(o, require_writable=True)
                    result[name] = o
                if found != len(out):  # an unknown name
                    raise _Unusual
            else:
                for k, name, dtype, shape in outputs:
                    result[name] = o = np.empty(shape, dtype)
                    out_ptrs[k] = _from_buffer(o)
        except (_Unusual, KeyError, ValueError, RunError):
            pool.append(scratch)
            return self._run_checked(arrays, out)
        if scratch.ws_bytes < ws_bytes:
            scratch.grow(ws_bytes)
        rc = self._run_c(symbols, in_ptrs, in_bytes, self._n_in, out_ptrs, out_bytes,
                         self._n_out, scratch.ws_ptr, scratch.ws_bytes)
        pool.append(scratch)
        if rc != 0:
            raise self._fail()
        return result

    def _run_checked(self, arrays: dict[str, np.ndarray],
                     out: dict[str, np.ndarray] | None) -> dict[str, np.ndarray]:
        """`run` one check at a time, raising RunError at the first that fails."""
        call = self._checked_call(arrays, out)
        try:
            scratch = self._pool.pop()
        except IndexError:
            scratch = _Scratch(len(self.inputs), len(self.outputs))
        try:
            return call.run(scratch)
        finally:
            self._pool.append(scratch)

    def _checked_call(self, arrays: dict[str, np.ndarray],
                      out: dict[str, np.ndarray] | None) -> "_Call":
        """Every check of a call on `arrays` (and `out`), one at a time; RunError at the
        first that fails."""
        names = self._input_names
        unknown = sorted(set(arrays) - names)
        if unknown:
            raise RunError(f"{self.name}: unknown input(s) {', '.join(unknown)}; it takes "
                           f"{', '.join(t.name for t in self.inputs) or 'no inputs'}")
        ins = [_check(self.name, "input", t, arrays.get(t.name)) for t in self.inputs]
        out = dict(out or {})
        unknown = sorted(set(out) - {t.name for t in self.outputs})
        if unknown:
            raise RunError(f"{self.name}: unknown output(s) {', '.join(unknown)} in out=")
        if self.symbols:
            symbols = self.bind([a.shape for a in ins])
            shapes = [self.shape_of(symbols, len(self.inputs) + k)
                      for k in range(len(self.outputs))]
            needed = _ffi.new("uint64_t *")
            if self._model.workspace_size(symbols, needed) != 0:
                raise self._fail()
            ws_bytes = int(needed[0])
        else:  # every shape is in the manifest, and _check has compared the inputs' with it
            symbols, shapes = _ffi.NULL, [t.shape for t in self.outputs]
            ws_bytes = int(self._model.workspace_bytes)
        outs = [_check(self.name, "output", t, out[t.name], shape) if t.name in out
                else np.empty(shape, t.dtype) for t, shape in zip(self.outputs, shapes)]
        return _Call(self, symbols, ins, outs, ws_bytes)

    def prepare(self, /, *, out: dict[str, np.ndarray] | None = None,
                **arrays: np.ndarray) -> "Prepared":
        """A call on these arrays, checked once, to run many times: `p = model.prepare(x=x,
        out={"y": y})`, then `p()` runs the model on the arrays' contents at that moment and
        returns the outputs (one dict, the same at every run: the arrays of `out` where given,
        else arrays made once here).
        The arrays stay bound, as with ONNX Runtime's IO binding: write new inputs into them
        between runs, but keep their shapes (the Prepared holds them, so they stay alive).
        The checks of a call are made here only, which leaves a run the C call alone. A
        Prepared has its own workspace: use one from one thread at a time."""
        if self._out_is_input and out is not None:
            arrays["out"], out = out, None
        return Prepared(self._checked_call(arrays, out))


class _Call:
    """A checked call: the arrays and the C arguments that name them."""

    def __init__(self, model: Model, symbols, ins: list, outs: list, ws_bytes: int):
        self.model, self.ins, self.outs, self.ws_bytes = model, ins, outs, ws_bytes
        self.symbols = symbols
        self.in_ptrs = _ffi.new("void *[]", [_ffi.from_buffer(a) for a in ins] or [_ffi.NULL])
        self.out_ptrs = _ffi.new("void *[]", [_ffi.from_buffer(a, require_writable=True)
                                              for a in outs] or [_ffi.NULL])
        self.in_bytes = _ffi.new("uint64_t[]", [a.nbytes for a in ins] or [0])
        self.out_bytes = _ffi.new("uint64_t[]", [a.nbytes for a in outs] or [0])
        self.result = {t.name: a for t, a in zip(model.outputs, outs)}

    def arguments(self, scratch: "_Scratch") -> tuple:
        if scratch.ws_bytes < self.ws_bytes:
            scratch.grow(self.ws_bytes)
        return (self.symbols, self.in_ptrs, self.in_bytes, len(self.ins), self.out_ptrs,
                self.out_bytes, len(self.outs), scratch.ws_ptr, scratch.ws_bytes)

    def run(self, scratch: "_Scratch") -> dict[str, np.ndarray]:
        if self.model._model.run(*self.arguments(scratch)) != 0:
            raise self.model._fail()
        return self.result


class Prepared:
    """A model call bound to its arrays (Model.prepare): calling it runs the model."""

    def __init__(self, call: _Call):
        self._call = call
        model = call.model
        self.model = model
        self._scratch = _Scratch(len(model.inputs), len(model.outputs))
        self._run_c, self._fail = model._model.run_args, model._fail
        # one record passed by pointer: cffi costs ~40 ns for each argument of a call
        self._args = _ffi.new("aotml_run_args *", call.arguments(self._scratch))
        self._result = call.result

    def __call__(self) -> dict[str, np.ndarray]:
        if self._run_c(self._args) != 0:
            raise self._fail()
        return self._result

    def __repr__(self) -> str:
        return f"<aotml.Prepared call of {self.model.name}>"


class _Plan(NamedTuple):
    """What a call needs besides its arrays, for one set of input shapes. Concurrent calls
    share it: C reads its arrays only."""

    symbols: object  # cffi int64_t[] (NULL without symbols)
    in_bytes: object  # cffi uint64_t[]
    outputs: tuple[tuple[int, str, np.dtype, tuple[int, ...]], ...]  # index, name, dtype, shape
    out_bytes: object  # cffi uint64_t[]
    ws_bytes: int


class _Unusual(Exception):
    """Raised inside the fast path of a call: the checked path is to take the call over."""


_MAX_PLANS = 256  # plans kept per model with symbols; past it they are dropped and remade
_WORKSPACE_ALIGN = 64  # what the C entries allocate with ("64-byte aligned is best")
_from_buffer = _ffi.from_buffer


class _Scratch:
    """One call's pointer tables and workspace. A call has it to itself: it is taken from the
    model's pool and given back after the call."""

    __slots__ = ("in_ptrs", "out_ptrs", "ws", "ws_ptr", "ws_bytes")

    def __init__(self, n_inputs: int, n_outputs: int):
        self.in_ptrs = _ffi.new("void *[]", max(n_inputs, 1))  # (NULL where there are none)
        self.out_ptrs = _ffi.new("void *[]", max(n_outputs, 1))
        self.ws, self.ws_ptr, self.ws_bytes = None, _ffi.NULL, -1

    def grow(self, nbytes: int) -> None:
        """A workspace of at least `nbytes` (and at least 1), 64-byte aligned."""
        nbytes = max(nbytes, 1)
        raw = np.empty(nbytes + _WORKSPACE_ALIGN, np.uint8)
        skip = -raw.ctypes.data % _WORKSPACE_ALIGN
        self.ws = raw[skip:skip + nbytes]
        self.ws_ptr, self.ws_bytes = _ffi.from_buffer(self.ws), nbytes


def elf_problem(path: Path) -> str | None:
    """Why `path` is not a complete ELF file, or None. dlopen maps a truncated library and then
    faults (SIGBUS) touching the missing pages, so the layout is checked before it is called:
    every table and loadable segment must lie inside the file."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(64)
            if len(head) < 52 or head[:4] != b"\x7fELF" or head[4] not in (1, 2) \
                    or head[5] not in (1, 2):
                return "not an ELF shared library"
            end = "<" if head[5] == 1 else ">"
            if head[4] == 2:  # 64-bit
                if len(head) < 64:
                    return "truncated ELF header"
                phoff, shoff = struct.unpack_from(end + "QQ", head, 32)
                phentsize, phnum, shentsize, shnum = struct.unpack_from(end + "HHHH", head, 54)
                ph_format, ph_fields = end + "IIQQQQQQ", (0, 2, 5)  # type, offset, filesz
            else:
                phoff, shoff = struct.unpack_from(end + "II", head, 28)
                phentsize, phnum, shentsize, shnum = struct.unpack_from(end + "HHHH", head, 42)
                ph_format, ph_fields = end + "IIIIIIII", (0, 1, 4)
            if phoff + phnum * phentsize > size or (shnum and shoff + shnum * shentsize > size):
                return f"truncated ({size} bytes; its headers say it is longer)"
            f.seek(phoff)
            table = f.read(phnum * phentsize)
    except OSError as e:
        return e.strerror or str(e)
    for k in range(phnum):
        fields = struct.unpack_from(ph_format, table, k * phentsize)
        p_type, p_offset, p_filesz = (fields[i] for i in ph_fields)
        if p_type == 1 and p_offset + p_filesz > size:  # PT_LOAD
            return f"truncated ({size} bytes; a segment ends at byte {p_offset + p_filesz})"
    return None


def _info(t) -> TensorInfo:
    shape = tuple(int(t.shape[k]) if t.shape[k] >= 0 else _ffi.string(t.dims[k]).decode()
                  for k in range(t.rank))
    return TensorInfo(_ffi.string(t.name).decode(), _DTYPES.get(t.dtype, f"?{t.dtype}"), shape,
                      int(t.bytes) if all(isinstance(d, int) for d in shape) else None)


def _check(model: str, kind: str, t: TensorInfo, a, shape=None) -> np.ndarray:
    """`a` suits `t`: dtype, layout, and its shape (the one given, or else every static dim;
    the symbolic dims of inputs are checked when they are bound)."""
    if a is None:
        raise RunError(f"{model}: missing {kind} '{t.name}' ({t.text()})")
    if not isinstance(a, np.ndarray):
        raise RunError(f"{model}: {kind} '{t.name}' must be a numpy array, got "
                       f"{type(a).__name__}")
    if a.dtype != np.dtype(t.dtype):
        raise RunError(f"{model}: {kind} '{t.name}' has dtype {a.dtype}, expected {t.dtype}")
    want = shape if shape is not None else t.shape
    if len(a.shape) != t.rank or any(isinstance(w, int) and g != w
                                      for g, w in zip(a.shape, want)):
        expected = tuple(want) if all(isinstance(w, int) for w in want) else \
            "(" + ", ".join(map(str, want)) + ")"
        raise RunError(f"{model}: {kind} '{t.name}' has shape {a.shape}, expected {expected}")
    if not a.flags.c_contiguous:
        raise RunError(f"{model}: {kind} '{t.name}' is not C-contiguous; pass "
                       f"np.ascontiguousarray(...)")
    if kind == "output" and not a.flags.writeable:
        raise RunError(f"{model}: output '{t.name}' is read-only")
    return a


def load(path: str | os.PathLike, device: str | None = None) -> Model:
    return Model(path, device)
