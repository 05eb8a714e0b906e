"""Read an ONNX file defensively: every way a file can be broken or hostile is a clear
OnnxImportError, never a crash, a huge allocation or a read outside the model's folder.

Checked by `read_model`, before any conversion: that the path is a regular file (a FIFO is not
waited on) within the byte cap; that it parses as a ModelProto with a graph; that every string
in it is UTF-8 text; that each graph input has at most MAX_RANK dims and static dims within the
cap; that each name is defined once (by an initializer, a graph input or a node output); that no
attribute tensor but a Constant's value keeps its data in an external file; and that each node
of the default ONNX domain matches its operator's schema at the model's opset (input and output
counts, required inputs and outputs named, attributes known, of the declared type and present
when required).

Checked by `tensor_to_array`, tensor by tensor as the importer reads them: dims non-negative and
at most MAX_RANK; bytes within what is left of the cap (counted exactly: no int64 wrap-around);
data (raw or typed) exactly as long as the dims need; and external data, whose location must be
a relative path that stays inside the model's folder (no absolute path, no `..`, no symlink
leading out) and names a regular file, with its offset and length inside the file.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np

from aotml.errors import CompileError

DEFAULT_MAX_BYTES = 4 << 30  # the most a model may ask for, weights and constants together
MAX_RANK = 32  # the most dims a tensor may have (the compiler nests one loop per dim)


class OnnxImportError(CompileError):
    """An ONNX model that cannot be imported, and why (naming the node or tensor)."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message, None, hint=hint)


def require_onnx():
    try:
        import onnx
    except ImportError:
        raise OnnxImportError("importing ONNX models needs the 'onnx' package",
                              hint="pip install 'aotml[onnx]' (or: pip install onnx)") from None
    return onnx


def read_model(path: str | os.PathLike, max_bytes: int = DEFAULT_MAX_BYTES):
    """The ModelProto in `path`, checked (see the module's docstring), its external data not
    yet loaded."""
    onnx = require_onnx()
    from google.protobuf.message import DecodeError

    path = Path(path)
    try:
        with _open_regular(path, f"'{path}'") as f:
            size = os.fstat(f.fileno()).st_size
            if size > max_bytes:
                raise OnnxImportError(f"'{path}' has {size} bytes, more than the limit of "
                                      f"{max_bytes}", hint=_RAISE_HINT)
            data = f.read(size)  # read(n) sets n bytes aside: never more than the file's
            grew = bool(f.read(1))
    except OSError as e:
        raise OnnxImportError(f"cannot read '{path}': {e.strerror or e}") from None
    if grew:
        raise OnnxImportError(f"'{path}' changed while it was read")
    if not data:
        raise OnnxImportError(f"'{path}' is not an ONNX model: it is empty")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, ValueError, RuntimeError) as e:
        raise OnnxImportError(f"'{path}' is not an ONNX model: {e}") from None
    except RecursionError:
        raise OnnxImportError(f"'{path}' is not an ONNX model: nested too deeply") from None
    if not model.HasField("graph"):
        raise OnnxImportError(f"'{path}' is not an ONNX model: it has no graph")
    _check_text(model, f"'{path}'")
    _check_inputs(model.graph, max_bytes)
    _check_names(model.graph)
    _check_nodes(model)
    return model


def _open_regular(path: Path, what: str):
    """`path` opened for reading, refused unless a regular file (without blocking on a FIFO
    or a device)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OnnxImportError(f"{what} is not a regular file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


_RAISE_HINT = "raise the limit with --max-bytes (max_bytes=) if the model is meant to be this large"


def _check_text(message, where: str) -> None:
    """Every string field is text: protobuf hands back bytes for a string that is not UTF-8,
    which no name may be. (Bytes fields, such as raw tensor data, are never read here.)"""
    from google.protobuf.descriptor import FieldDescriptor as F

    plans: dict = {}
    stack = [message]
    while stack:
        msg = stack.pop()
        plan = plans.get(msg.DESCRIPTOR)
        if plan is None:
            plan = plans[msg.DESCRIPTOR] = [
                (f.name, f.type == F.TYPE_STRING, _repeated(f))
                for f in msg.DESCRIPTOR.fields if f.type in (F.TYPE_STRING, F.TYPE_MESSAGE)]
        for name, text, repeated in plan:
            if repeated:
                values = getattr(msg, name)
            elif text or msg.HasField(name):
                values = (getattr(msg, name),)
            else:
                continue
            if not text:
                stack.extend(values)
                continue
            for v in values:
                if not isinstance(v, str):
                    raise OnnxImportError(f"{where} is not an ONNX model: its "
                                          f"{msg.DESCRIPTOR.name}.{name} {bytes(v)[:40]!r} is "
                                          "not UTF-8 text")


def _repeated(field) -> bool:
    if hasattr(field, "is_repeated"):  # protobuf 5.28 and newer (no `label` from 7 on)
        return field.is_repeated
    return field.label == field.LABEL_REPEATED


def _size_over(dims, itemsize: int, limit: int) -> int | None:
    """The bytes `dims` of `itemsize` need, or None when they are over `limit` (counted
    without building a huge number, however many dims there are)."""
    if any(d == 0 for d in dims):
        return 0
    nbytes = itemsize
    for d in dims:
        nbytes *= d
        if nbytes > limit:
            return None
    return nbytes


def _check_inputs(graph, max_bytes: int) -> None:
    """A graph input of too many dims, or whose static dims alone need more than the cap."""
    for vi in graph.input:
        t = vi.type
        if not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
            continue  # said by the importer
        shape = t.tensor_type.shape.dim
        if len(shape) > MAX_RANK:
            raise OnnxImportError(f"input '{vi.name}' has {len(shape)} dims; aotml takes at "
                                  f"most {MAX_RANK}")
        dims = [d.dim_value for d in shape if d.HasField("dim_value")]
        if any(d <= 0 for d in dims):
            continue  # said by the importer, naming the dim
        code = t.tensor_type.elem_type
        itemsize = onnx_dtypes()[code][1].itemsize if code in onnx_dtypes() else 1
        if _size_over(dims, itemsize, max_bytes) is None:
            raise OnnxImportError(f"input '{vi.name}' of static dims {dims} needs more than "
                                  f"the limit of {max_bytes} bytes", hint=_RAISE_HINT)


def _check_names(graph) -> None:
    """Each name defined once: by an initializer, a graph input (one that is not also an
    initializer, as old exporters list them) or one node output."""
    defined: dict[str, str] = {}
    for t in graph.initializer:
        if t.name in defined:
            raise OnnxImportError(f"initializer '{t.name}' is given twice")
        defined[t.name] = "an initializer"
    inputs = set()
    for vi in graph.input:
        if vi.name in inputs:
            raise OnnxImportError(f"graph input '{vi.name}' is listed twice")
        inputs.add(vi.name)
        defined.setdefault(vi.name, "a graph input")
    for node in graph.node:
        where = f"node '{node.name or '(unnamed)'}' ({node.op_type})"
        for name in node.output:
            if name and name in defined:
                raise OnnxImportError(f"{where} defines '{name}', already defined by "
                                      f"{defined[name]}")
            if name:
                defined[name] = where


def _dims_text(dims) -> str:
    dims = list(dims)
    return str(dims) if len(dims) <= 8 else f"[{', '.join(map(str, dims[:8]))}, ...] (rank " \
                                             f"{len(dims)})"


def _check_nodes(model) -> None:
    """Each node of the default domain against its operator's schema at the model's opset
    (ops without one are left to the importer, which lists the unsupported ones)."""
    onnx = require_onnx()
    from onnx import defs

    opsets = {o.domain: o.version for o in model.opset_import}
    opset = min(opsets.get("", opsets.get("ai.onnx", 0)), defs.onnx_opset_version())
    if opset < 1:
        return  # said by the importer
    single = defs.OpSchema.FormalParameterOption.Single
    schemas: dict[str, tuple | None] = {}
    external = onnx.TensorProto.EXTERNAL
    for node in model.graph.node:
        for a in node.attribute:  # only a Constant's value is read through tensor_to_array
            if (node.op_type != "Constant" or node.domain not in ("", "ai.onnx")) and any(
                    t.data_location == external for t in [a.t, *a.tensors]):
                raise OnnxImportError(f"node '{node.name or '(unnamed)'}' ({node.op_type}): "
                                      f"attribute '{a.name}' keeps its tensor in an external "
                                      "file, which aotml does not read for attributes")
        if node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type not in schemas:
            try:
                s = defs.get_schema(node.op_type, opset, "")
            except defs.SchemaError:
                schemas[node.op_type] = None
            else:
                schemas[node.op_type] = (
                    ("input", s.min_input, s.max_input,
                     [(p.name, p.option == single) for p in s.inputs]),
                    ("output", s.min_output, s.max_output,
                     [(p.name, p.option == single) for p in s.outputs]),
                    {name: (int(a.type.value), a.type.name, a.required)
                     for name, a in s.attributes.items()})
        schema = schemas[node.op_type]
        if schema is None:
            continue
        where = f"node '{node.name or '(unnamed)'}' ({node.op_type})"
        for (kind, low, high, formal), names in zip(schema[:2], (node.input, node.output)):
            if not low <= len(names) <= high:
                want = f"{low}" if low == high else f"{low} to {high}" if high < 1 << 30 \
                    else f"at least {low}"
                raise OnnxImportError(f"{where} has {len(names)} {kind}s; {node.op_type} "
                                      f"(opset {opset}) takes {want}")
            for k, ((formal_name, required), name) in enumerate(zip(formal, names)):
                if required and not name:
                    raise OnnxImportError(f"{where}: its {kind} {k} ('{formal_name}') is "
                                          "required but left empty")
        attributes = schema[2]
        seen = set()
        for a in node.attribute:
            if a.name in seen:
                raise OnnxImportError(f"{where} has attribute '{a.name}' twice")
            seen.add(a.name)
            if a.ref_attr_name:
                raise OnnxImportError(f"{where}: attribute '{a.name}' refers to a function's "
                                      f"attribute '{a.ref_attr_name}', outside any function")
            spec = attributes.get(a.name)
            if spec is None:
                raise OnnxImportError(f"{where} has attribute '{a.name}', which "
                                      f"{node.op_type} (opset {opset}) does not define")
            if a.type != spec[0]:
                got = onnx.AttributeProto.AttributeType.Name(a.type) if a.type in \
                    onnx.AttributeProto.AttributeType.values() else f"type {a.type}"
                raise OnnxImportError(f"{where}: attribute '{a.name}' is {got}; "
                                      f"{node.op_type} takes {spec[1]}")
        for name, (_, _, required) in attributes.items():
            if required and name not in seen:
                raise OnnxImportError(f"{where} lacks its required attribute '{name}'")


# ONNX TensorProto data types we can hold, as numpy dtypes, and their names
def onnx_dtypes() -> dict[int, tuple[str, np.dtype]]:
    onnx = require_onnx()
    import ml_dtypes

    t = onnx.TensorProto
    return {t.FLOAT: ("f32", np.dtype(np.float32)), t.FLOAT16: ("f16", np.dtype(np.float16)),
            t.BFLOAT16: ("bf16", np.dtype(ml_dtypes.bfloat16)),
            t.INT32: ("i32", np.dtype(np.int32)), t.INT64: ("i64", np.dtype(np.int64)),
            t.BOOL: ("bool", np.dtype(np.bool_))}


def dtype_name(code: int) -> str:
    onnx = require_onnx()
    try:
        return onnx.helper.tensor_dtype_to_np_dtype(code).name
    except Exception:
        return {v: k for k, v in onnx.TensorProto.DataType.items()}.get(code, f"type {code}")


def tensor_to_array(tensor, folder: Path, what: str, budget: list[int]) -> np.ndarray:
    """A TensorProto's value, checked; `budget` holds the bytes the model may still use."""
    onnx = require_onnx()
    from onnx import numpy_helper

    name = tensor.name or "(unnamed)"
    dims = list(tensor.dims)
    if any(d < 0 for d in dims):
        raise OnnxImportError(f"{what} '{name}' has a negative dim: {_dims_text(dims)}")
    if len(dims) > MAX_RANK:
        raise OnnxImportError(f"{what} '{name}' has {len(dims)} dims; aotml takes at most "
                              f"{MAX_RANK}")
    known = onnx_dtypes().get(tensor.data_type)
    itemsize = known[1].itemsize if known else _itemsize(tensor.data_type)
    count = 1
    for d in dims:  # at most MAX_RANK of them: an exact count, however large
        count *= d
    nbytes = count * itemsize
    if nbytes > budget[0]:
        raise OnnxImportError(f"{what} '{name}' of shape {dims} needs {nbytes} bytes, more "
                              f"than the {budget[0]} left under the limit", hint=_RAISE_HINT)
    budget[0] -= nbytes
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        tensor = _with_external_data(tensor, folder, what, nbytes)
    elif tensor.HasField("raw_data"):
        if known and len(tensor.raw_data) != nbytes:
            raise OnnxImportError(f"{what} '{name}' has {len(tensor.raw_data)} bytes of data; "
                                  f"its dims {dims} need {nbytes}")
    elif known:
        field = _TYPED_FIELD[known[0]]
        have = len(getattr(tensor, field))
        if have != count:
            raise OnnxImportError(f"{what} '{name}' has {have} values in {field}; its dims "
                                  f"{dims} need {count}")
    try:
        array = numpy_helper.to_array(tensor)
    except Exception as e:  # unknown type, segments: the library's words, our frame
        raise OnnxImportError(f"{what} '{name}' cannot be read: {e}") from None
    if array.size != count:
        raise OnnxImportError(f"{what} '{name}' has {array.size} values; its dims {dims} need "
                              f"{count}")
    return array


def _itemsize(code: int) -> int:
    """The bytes per element of a dtype we do not hold (8 where numpy has no fixed size), for
    the byte count only: such a tensor is refused later, naming its dtype."""
    onnx = require_onnx()
    try:
        return max(1, onnx.helper.tensor_dtype_to_np_dtype(code).itemsize)
    except Exception:
        return 8


# where a TensorProto of each dtype we hold keeps its values when not as raw bytes
_TYPED_FIELD = {"f32": "float_data", "f16": "int32_data", "bf16": "int32_data",
                "i32": "int32_data", "i64": "int64_data", "bool": "int32_data"}


def _with_external_data(tensor, folder: Path, what: str, nbytes: int):
    onnx = require_onnx()
    info = {e.key: e.value for e in tensor.external_data}
    name = tensor.name or "(unnamed)"
    location = info.get("location", "")
    if not location:
        raise OnnxImportError(f"{what} '{name}' keeps its data externally but names no file")
    if "\0" in location:
        raise OnnxImportError(f"{what} '{name}' keeps its data at {location!r}, which is not a "
                              "file name")
    rel = Path(location)
    if rel.is_absolute() or ".." in rel.parts or location.startswith(("/", "\\")):
        raise OnnxImportError(f"{what} '{name}' keeps its data at '{location}', outside the "
                              "model's folder", hint="external data must be a relative path "
                                                     "inside the folder of the .onnx file")
    try:
        root = folder.resolve()
        target = (folder / rel).resolve()
    except (OSError, RuntimeError) as e:  # a symlink loop
        raise OnnxImportError(f"{what} '{name}': bad external data '{location}': {e}") from None
    if target != root and root not in target.parents:
        raise OnnxImportError(f"{what} '{name}' keeps its data at '{location}', which leads "
                              f"outside the model's folder (to '{target}')")
    try:
        offset = int(info.get("offset", "0"))
        length = int(info["length"]) if "length" in info else nbytes
    except ValueError as e:
        raise OnnxImportError(f"{what} '{name}': bad external data '{location}': {e}") from None
    try:
        with _open_regular(target, f"{what} '{name}': external data '{location}'") as f:
            size = os.fstat(f.fileno()).st_size
            if offset < 0 or length != nbytes or offset + length > size:
                raise OnnxImportError(f"{what} '{name}': external data '{location}' holds "
                                      f"bytes {offset}..{offset + length} of a {size}-byte "
                                      f"file; the tensor needs {nbytes}")
            f.seek(offset)
            raw = f.read(length)
    except OSError as e:
        raise OnnxImportError(f"{what} '{name}': cannot read external data '{location}': "
                              f"{e.strerror or e}") from None
    if len(raw) != length:
        raise OnnxImportError(f"{what} '{name}': external data '{location}' ended after "
                              f"{len(raw)} of {length} bytes")
    copy = onnx.TensorProto()
    copy.CopyFrom(tensor)
    del copy.external_data[:]
    copy.data_location = onnx.TensorProto.DEFAULT
    copy.raw_data = raw
    return copy
