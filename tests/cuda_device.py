"""The machine's own CUDA driver, reached with ctypes: is a GPU here, which architecture, and
device memory for the tests that hand aotml device addresses (`run_device`).

The tests that need a GPU skip without one, saying so; with AOTML_REQUIRE_GPU=1 (set by
benchmarks/gpu_session.sh on a machine lent with a GPU) a missing GPU fails them instead, so a
GPU run cannot pass by skipping. This never reads AOTML_CUDA_DRIVER: that names the tests'
stand-in driver, which is no GPU.
"""

from __future__ import annotations

import ctypes
import functools
import os

import numpy as np
import pytest

_MAJOR, _MINOR = 75, 76  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_{MAJOR,MINOR}


@functools.cache
def _driver() -> tuple[ctypes.CDLL | None, str]:
    """(the driver with device 0 usable, None) or (None, why not)."""
    try:
        cu = ctypes.CDLL("libcuda.so.1")
    except OSError as e:
        return None, f"no CUDA driver: {e}"
    count = ctypes.c_int(0)
    if cu.cuInit(0) != 0 or cu.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value < 1:
        return None, "the CUDA driver sees no device"
    return cu, ""


def _call(rc: int, what: str) -> None:
    if rc != 0:
        raise RuntimeError(f"{what} failed with CUDA error {rc}")


@functools.cache
def arch() -> str:
    """Device 0's architecture, "sm_90" say. Without a GPU it skips the calling module (called
    at a module's top) or test, or fails it (see above)."""
    cu, why = _driver()
    if cu is None:
        if os.environ.get("AOTML_REQUIRE_GPU") == "1":
            pytest.fail(f"AOTML_REQUIRE_GPU=1 but {why}")
        pytest.skip(f"needs a CUDA GPU ({why})", allow_module_level=True)
    dev, major, minor = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
    _call(cu.cuDeviceGet(ctypes.byref(dev), 0), "cuDeviceGet")
    _call(cu.cuDeviceGetAttribute(ctypes.byref(major), _MAJOR, dev), "cuDeviceGetAttribute")
    _call(cu.cuDeviceGetAttribute(ctypes.byref(minor), _MINOR, dev), "cuDeviceGetAttribute")
    return f"sm_{major.value}{minor.value}"


class DeviceArrays:
    """Device memory in device 0's primary context (the one aotml's runtime uses): upload
    numpy arrays, allocate, read back, free everything on close."""

    def __init__(self):
        arch()
        self.cu = cu = _driver()[0]
        self.dev, self.ctx = ctypes.c_int(), ctypes.c_void_p()
        _call(cu.cuDeviceGet(ctypes.byref(self.dev), 0), "cuDeviceGet")
        _call(cu.cuDevicePrimaryCtxRetain(ctypes.byref(self.ctx), self.dev),
              "cuDevicePrimaryCtxRetain")
        _call(cu.cuCtxPushCurrent_v2(self.ctx), "cuCtxPushCurrent")
        self.pointers: list[int] = []

    def empty(self, nbytes: int) -> int:
        ptr = ctypes.c_uint64()
        _call(self.cu.cuMemAlloc_v2(ctypes.byref(ptr), ctypes.c_size_t(max(nbytes, 1))),
              "cuMemAlloc")
        self.pointers.append(ptr.value)
        return ptr.value

    def upload(self, a: np.ndarray) -> int:
        a = np.ascontiguousarray(a)
        ptr = self.empty(a.nbytes)
        _call(self.cu.cuMemcpyHtoD_v2(ctypes.c_uint64(ptr), a.ctypes.data_as(ctypes.c_void_p),
                                      ctypes.c_size_t(a.nbytes)), "cuMemcpyHtoD")
        # aotml runs on a non-blocking stream, which does not wait for these copies
        _call(self.cu.cuCtxSynchronize(), "cuCtxSynchronize")
        return ptr

    def download(self, ptr: int, shape, dtype) -> np.ndarray:
        out = np.empty(shape, dtype)
        _call(self.cu.cuMemcpyDtoH_v2(out.ctypes.data_as(ctypes.c_void_p), ctypes.c_uint64(ptr),
                                      ctypes.c_size_t(out.nbytes)), "cuMemcpyDtoH")
        return out

    def close(self) -> None:
        for ptr in self.pointers:
            self.cu.cuMemFree_v2(ctypes.c_uint64(ptr))
        self.cu.cuCtxPopCurrent_v2(ctypes.byref(ctypes.c_void_p()))
        self.cu.cuDevicePrimaryCtxRelease_v2(self.dev)
