"""The one table of element types. Every stage derives what it needs from it, so adding a
dtype is a row here, its codegen in the targets, and its enum value in runtime/aotml.h (a test
checks the header against this table)."""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes  # numpy has no bfloat16
import numpy as np


@dataclass(frozen=True)
class DType:
    """One element type: its numpy dtype, ABI code, C element type, and compute dtype."""

    name: str
    numpy: np.dtype
    abi_code: int        # the aotml_dtype enum value in runtime/aotml.h
    c_type: str          # the typed entry's element type; half-width floats travel as bits
    compute: str         # arithmetic happens in this dtype (f16/bf16 widen to f32)

    @property
    def itemsize(self) -> int:
        return self.numpy.itemsize

    @property
    def abi_enum(self) -> str:
        return f"AOTML_{self.name.upper()}"


TABLE: dict[str, DType] = {d.name: d for d in [
    DType("f32", np.dtype(np.float32), 1, "float", "f32"),
    DType("f16", np.dtype(np.float16), 2, "uint16_t", "f32"),
    DType("bf16", np.dtype(ml_dtypes.bfloat16), 3, "uint16_t", "f32"),
    DType("i32", np.dtype(np.int32), 4, "int32_t", "i32"),
    DType("i64", np.dtype(np.int64), 5, "int64_t", "i64"),
    DType("bool", np.dtype(np.bool_), 6, "uint8_t", "bool"),
]}

FLOATS = frozenset({"f32", "f16", "bf16"})
INTS = frozenset({"i32", "i64"})


def compute_dtype(dtype: str) -> str:
    return TABLE[dtype].compute
