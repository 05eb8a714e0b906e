"""Load a compiled model with cffi and call it with numpy arrays (zero-copy in and out)."""

from __future__ import annotations

import os
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

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
} aotml_model;
const aotml_model *aotml_model_v1(void);
"""
_DTYPES = {d.abi_code: str(d.numpy) for d in TABLE.values()}  # ABI code -> numpy dtype name
_ffi = cffi.FFI()
_ffi.cdef(_CDEF)


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


class Model:
    """A loaded model. Call it with keyword arrays; returns a dict of output arrays."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise LoadError(f"no such model file: '{self.path}'")
        problem = elf_problem(self.path)
        if problem:
            raise LoadError(f"cannot load '{self.path}' as an aotml model: {problem}")
        try:
            self._lib = _ffi.dlopen(str(self.path.resolve()))
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
        self._local = threading.local()

    def __repr__(self) -> str:
        def sig(ts):
            return ", ".join(f"{t.name}: {t.text()}" for t in ts)
        return f"<aotml.Model {self.name}({sig(self.inputs)}) -> ({sig(self.outputs)})>"

    def _workspace(self, nbytes: int) -> np.ndarray:
        # one workspace per thread, so concurrent calls never share scratch memory; it grows
        # to the largest a call has needed
        ws = getattr(self._local, "ws", None)
        if ws is None or ws.nbytes < nbytes:
            ws = self._local.ws = np.empty(max(nbytes, 1), np.uint8)
        return ws

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

    def __call__(self, /, **arrays: np.ndarray) -> dict[str, np.ndarray]:
        """model(x=..., out={...}): `out` optionally maps output names to arrays to write into
        (unless the model has an input named `out`, which then takes that keyword)."""
        names = {t.name for t in self.inputs}
        out = None if "out" in names else arrays.pop("out", None)
        return self.run(arrays, out)

    def run(self, arrays: dict[str, np.ndarray],
            out: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """Run on `arrays` (name -> array); write into the arrays of `out` where given."""
        names = {t.name for t in self.inputs}
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
            ws = self._workspace(int(needed[0]))
        else:  # every shape is in the manifest, and _check has compared the inputs' with it
            symbols, shapes = _ffi.NULL, [t.shape for t in self.outputs]
            ws = self._workspace(int(self._model.workspace_bytes))
        outs = [_check(self.name, "output", t, out[t.name], shape) if t.name in out
                else np.empty(shape, t.dtype) for t, shape in zip(self.outputs, shapes)]
        in_ptrs = _ffi.new("void *[]", [_ffi.from_buffer(a) for a in ins] or [_ffi.NULL])
        out_ptrs = _ffi.new("void *[]",
                            [_ffi.from_buffer(a, require_writable=True) for a in outs]
                            or [_ffi.NULL])
        in_bytes = _ffi.new("uint64_t[]", [a.nbytes for a in ins] or [0])
        out_bytes = _ffi.new("uint64_t[]", [a.nbytes for a in outs] or [0])
        rc = self._model.run(symbols, in_ptrs, in_bytes, len(ins), out_ptrs, out_bytes,
                             len(outs), _ffi.from_buffer(ws), ws.nbytes)
        if rc != 0:
            raise self._fail()
        return {t.name: a for t, a in zip(self.outputs, outs)}


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


def load(path: str | os.PathLike) -> Model:
    return Model(path)
