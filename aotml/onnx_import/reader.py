"""Read an ONNX file defensively: every way a file can be broken or hostile is a clear
OnnxImportError, never a crash, a huge allocation or a read outside the model's folder.

Checked here: the file's size against the byte cap; that it parses as a ModelProto with a
graph; each tensor's dtype, dims (non-negative, product within the cap) and data length; and
external data, whose location must be a relative path that stays inside the model's folder
(no absolute path, no `..`, no symlink leading out) with its offset and length inside the file.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from aotml.errors import CompileError

DEFAULT_MAX_BYTES = 4 << 30  # the most a model may ask for, weights and constants together


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
    """The ModelProto in `path`, its external data not yet loaded."""
    onnx = require_onnx()
    from google.protobuf.message import DecodeError

    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as e:
        raise OnnxImportError(f"cannot read '{path}': {e.strerror or e}") from None
    if size > max_bytes:
        raise OnnxImportError(f"'{path}' has {size} bytes, more than the limit of {max_bytes}",
                              hint="raise the limit with --max-bytes if the model is meant to "
                                   "be this large")
    data = path.read_bytes()
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, ValueError, RuntimeError) as e:
        raise OnnxImportError(f"'{path}' is not an ONNX model: {e}") from None
    except RecursionError:
        raise OnnxImportError(f"'{path}' is not an ONNX model: nested too deeply") from None
    if not model.HasField("graph"):
        raise OnnxImportError(f"'{path}' is not an ONNX model: it has no graph")
    return model


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
        raise OnnxImportError(f"{what} '{name}' has a negative dim: {dims}")
    count = 1
    for d in dims:
        count *= d
    itemsize = 8 if tensor.data_type not in onnx_dtypes() else \
        onnx_dtypes()[tensor.data_type][1].itemsize
    nbytes = count * itemsize
    if nbytes > budget[0]:
        raise OnnxImportError(f"{what} '{name}' of shape {dims} needs {nbytes} bytes, more than "
                              f"the {budget[0]} left under the limit",
                              hint="raise the limit with --max-bytes if it is meant to be "
                                   "this large")
    budget[0] -= nbytes
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        tensor = _with_external_data(tensor, folder, what, nbytes)
    elif tensor.HasField("raw_data") and len(tensor.raw_data) != nbytes and \
            tensor.data_type in onnx_dtypes():
        raise OnnxImportError(f"{what} '{name}' has {len(tensor.raw_data)} bytes of data; its "
                              f"dims {dims} need {nbytes}")
    try:
        array = numpy_helper.to_array(tensor)
    except Exception as e:  # short typed data, unknown type: the library's words, our frame
        raise OnnxImportError(f"{what} '{name}' cannot be read: {e}") from None
    if array.size != count:
        raise OnnxImportError(f"{what} '{name}' has {array.size} values; its dims {dims} need "
                              f"{count}")
    return array


def _with_external_data(tensor, folder: Path, what: str, nbytes: int):
    onnx = require_onnx()
    info = {e.key: e.value for e in tensor.external_data}
    name = tensor.name or "(unnamed)"
    location = info.get("location", "")
    rel = Path(location)
    if not location or rel.is_absolute() or ".." in rel.parts or location.startswith(("/", "\\")):
        raise OnnxImportError(f"{what} '{name}' keeps its data at '{location}', outside the "
                              "model's folder", hint="external data must be a relative path "
                                                     "inside the folder of the .onnx file")
    root = folder.resolve()
    target = (folder / rel).resolve()
    if root not in target.parents:
        raise OnnxImportError(f"{what} '{name}' keeps its data at '{location}', which leads "
                              f"outside the model's folder (to '{target}')")
    try:
        offset = int(info.get("offset", "0"))
        length = int(info["length"]) if "length" in info else nbytes
        size = target.stat().st_size
    except (ValueError, OSError) as e:
        raise OnnxImportError(f"{what} '{name}': bad external data '{location}': {e}") from None
    if offset < 0 or length != nbytes or offset + length > size:
        raise OnnxImportError(f"{what} '{name}': external data '{location}' holds bytes "
                              f"{offset}..{offset + length} of a {size}-byte file; the tensor "
                              f"needs {nbytes}")
    with open(target, "rb") as f:
        f.seek(offset)
        raw = f.read(length)
    copy = onnx.TensorProto()
    copy.CopyFrom(tensor)
    del copy.external_data[:]
    copy.data_location = onnx.TensorProto.DEFAULT
    copy.raw_data = raw
    return copy
