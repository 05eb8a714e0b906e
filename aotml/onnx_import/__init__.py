"""Import ONNX models: `import_onnx(path) -> Graph`, and `write_mlg` to keep one as `.mlg`.

`onnx` is an optional dependency (the `onnx` extra); without it every entry point raises an
OnnxImportError saying how to install it.
"""

from aotml.onnx_import.convert import CONVERTERS, import_onnx
from aotml.onnx_import.reader import DEFAULT_MAX_BYTES, OnnxImportError
from aotml.onnx_import.write import write_mlg

__all__ = ["CONVERTERS", "DEFAULT_MAX_BYTES", "OnnxImportError", "import_onnx", "write_mlg"]
