"""The runtime's GPU side (runtime/aotml_cuda.c), without a GPU: libraries built for CUDA run
through a stand-in driver (tests/fake_cuda.c) that keeps device memory on the host and runs
each launch with the kernels' CPU emulation (aotml/gpu/emulate.py), thread by thread over the
grid the runtime asked for. So the host side (driver loading, choice of PTX, weights upload,
the arena, kernel parameters, grids, copies, the status word, every error path) is checked
against the reference here; only the PTX itself runs on a real GPU (the `device` tool)."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

import aotml
from aotml.codegen.nvptx import libdevice_path
from aotml.driver import build
from aotml.gpu.emulate import emulation_object
from aotml.ops import nn
from conftest import NO_WEIGHTS_MLP, REPO, rand

CC = shutil.which("cc")
pytestmark = [
    pytest.mark.skipif(CC is None, reason="no C compiler 'cc' on PATH"),
    # the models call exp or erf, which the PTX takes from the CUDA toolkit's libdevice
    pytest.mark.skipif(libdevice_path() is None, reason="no CUDA toolkit (libdevice) found"),
]

MLP = """weights "weights.npz"
model mlp {
    dim N <= 32
    input x: f32[N, 50]
    param w1: f32[50, 70]
    param b1: f32[70]
    param w2: f32[70, 9]
    h = gelu(x @ w1 + b1)
    output p = softmax(h @ w2, axis=-1)
    output s = sum(h, axis=1)
}
"""

CNN = """model cnn {
    input x: f32[2, 3, 13, 11]
    input w: f32[8, 3, 3, 3]
    input b: f32[8]
    h = max_pool2d(relu(conv2d(x, w, b, padding=1)), kernel=2)
    output y = global_avg_pool(h)
}
"""

GATHER = """model g {
    input x: f32[6, 4]
    input i: i64[5]
    output y = gather(x, i, axis=0) * 3
}
"""


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    """The stand-in driver library."""
    out = tmp_path_factory.mktemp("fake_cuda") / "libfakecuda.so"
    subprocess.run([CC, "-shared", "-fPIC", "-O1", "-o", str(out), str(REPO / "tests" /
                                                                       "fake_cuda.c"), "-ldl"],
                   check=True)
    return out


@pytest.fixture
def gpu(driver, tmp_path, monkeypatch):
    """gpu(source, target="cuda", weights=None, **env) -> (loaded model, driver log path):
    the model built for `target`, its kernels' emulation built beside it, and the stand-in
    driver set up to run them (FAKE_CUDA_* knobs from `env`)."""
    log = tmp_path / "driver.log"
    monkeypatch.setenv("AOTML_CUDA_DRIVER", str(driver))
    monkeypatch.setenv("FAKE_CUDA_LOG", str(log))
    count = [0]

    def make(source, target="cuda", weights=None, device=None, **env):
        count[0] += 1
        folder = tmp_path / f"m{count[0]}"
        folder.mkdir()
        if weights is not None:
            np.savez(folder / "weights.npz", **weights)
        (folder / "m.mlg").write_text(source)
        result = build(folder / "m.mlg", folder / "m.so", target=target)
        (folder / "emu.o").write_bytes(emulation_object(result.gpu_program))
        subprocess.run([CC, "-shared", "-o", str(folder / "emu.so"), str(folder / "emu.o")],
                       check=True)
        monkeypatch.setenv("FAKE_CUDA_EMULATION", str(folder / "emu.so"))
        for key, value in env.items():
            monkeypatch.setenv(f"FAKE_CUDA_{key.upper()}", str(value))
        model = aotml.load(folder / "m.so", device)
        model.source_path = folder / "m.mlg"
        return model

    make.log = log
    return make


def lines(log) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def reference(model, **arrays):
    return aotml.interpret(model.source_path, precise=True, **arrays)


def close(got: dict, want: dict, rtol=2e-5, atol=2e-6) -> None:
    assert got.keys() == want.keys()
    for name in got:
        np.testing.assert_allclose(got[name], want[name], rtol=rtol, atol=atol, err_msg=name)


def mlp_weights(rng):
    return {"w1": rand(rng, (50, 70), -0.3, 0.3), "b1": rand(rng, (70,)),
            "w2": rand(rng, (70, 9))}


def test_a_cuda_library_runs_on_the_gpu_and_matches_the_reference(gpu):
    rng = np.random.default_rng(1)
    m = gpu(MLP, weights=mlp_weights(rng))
    assert m.devices == ("cuda",) and m.device == "cuda:0 (Fake GPU 0, sm_90)"
    assert m.workspace_bytes == 0  # the workspace is in device memory
    for n in (1, 7, 32):  # the symbol's values: grids, offsets and copies sized per run
        x = rand(rng, (n, 50))
        close(m(x=x), reference(m, x=x))


def test_weights_are_uploaded_once_and_the_arena_grows_only_when_needed(gpu):
    rng = np.random.default_rng(2)
    weights = mlp_weights(rng)
    m = gpu(MLP, weights=weights)
    for n in (5, 3, 20, 20):
        m(x=rand(rng, (n, 50)))
    log = lines(gpu.log)
    # set up: the weights blob (aligned, transposed where the passes chose) allocated and
    # copied once
    weights_bytes = int(log[log.index("stream 1") + 1].removeprefix("alloc "))
    assert weights_bytes >= sum(w.nbytes for w in weights.values())
    assert log.count(f"htod {weights_bytes}") == 1
    assert log.count("init") == 1 and log.count("load sm_90") == 1
    allocs = [line for line in log if line.startswith("alloc")]
    # the weights, the arena for N=5 (reused for N=3), a larger one for N=20 (reused)
    assert len(allocs) == 3 and log.count("free") == 1
    # every run copies its input in, its two outputs and the status word out
    assert log.count(f"htod {20 * 50 * 4}") == 2
    assert sum(line.startswith("dtoh") for line in log) == 4 * 3


def test_every_launch_covers_its_index_space(gpu):
    rng = np.random.default_rng(3)
    m = gpu(CNN)
    arrays = {"x": rand(rng, (2, 3, 13, 11)), "w": rand(rng, (8, 3, 3, 3)),
              "b": rand(rng, (8,))}
    close(m(**arrays), reference(m, **arrays))
    launches = [line.split() for line in lines(gpu.log) if line.startswith("launch")]
    assert launches and all(int(threads) <= 256 for _, _, threads in launches)
    assert any(int(blocks) > 1 for _, blocks, _ in launches)


def test_a_failed_check_on_the_gpu_is_the_located_run_error(gpu):
    m = gpu(GATHER)
    x = rand(np.random.default_rng(4), (6, 4))
    i = np.array([0, 5, -6, 2, 1], np.int64)
    close(m(x=x, i=i), reference(m, x=x, i=i))
    i[3] = 6
    with pytest.raises(aotml.RunError, match=r"index out of range .*at .*m\.mlg:4"):
        m(x=x, i=i)
    i[3] = 3  # the status word is cleared for the next run
    close(m(x=x, i=i), reference(m, x=x, i=i))


def test_cpu_and_cuda_picks_the_gpu_when_there_is_one_and_agrees_with_the_cpu(gpu):
    rng = np.random.default_rng(5)
    m = gpu(NO_WEIGHTS_MLP, target="cpu,cuda")
    assert m.devices == ("cpu", "cuda")
    arrays = {"x": rand(rng, (9, 96)), "w": rand(rng, (96, 64))}
    on_gpu = m(**arrays)["y"]
    assert m.device.startswith("cuda:0")
    m.select_device("cpu")
    assert m.device == "cpu"
    on_cpu = m(**arrays)["y"]
    np.testing.assert_allclose(on_gpu, on_cpu, rtol=2e-5, atol=1e-7)
    assert sum(line.startswith("launch") for line in lines(gpu.log)) == 2


def test_cpu_and_cuda_falls_back_to_the_cpu_without_a_driver(gpu, monkeypatch, tmp_path):
    monkeypatch.setenv("AOTML_CUDA_DRIVER", str(tmp_path / "no-such-libcuda.so"))
    rng = np.random.default_rng(6)
    m = gpu(NO_WEIGHTS_MLP, target="cpu,cuda")
    arrays = {"x": rand(rng, (4, 96)), "w": rand(rng, (96, 64))}
    close(m(**arrays), reference(m, **arrays))
    assert m.device == "cpu"
    with pytest.raises(aotml.LoadError, match="cannot run on cuda: no CUDA driver: cannot load "
                                              ".*no-such-libcuda.so"):
        m.select_device("cuda")
    assert m.device == "cpu"  # a refused choice leaves the last one in force


def test_no_device_names_the_driver_error(gpu):
    with pytest.raises(aotml.LoadError, match=r"cuInit: CUDA_ERROR_NO_DEVICE \(no CUDA-capable "
                                              r"device is detected\)"):
        gpu(NO_WEIGHTS_MLP, device="cuda", init_error=100)


def test_a_cuda_library_says_why_it_cannot_run(gpu, monkeypatch, tmp_path):
    monkeypatch.setenv("AOTML_CUDA_DRIVER", str(tmp_path / "none.so"))
    m = gpu(NO_WEIGHTS_MLP)
    assert m.device.startswith("none (no CUDA driver")
    with pytest.raises(aotml.RunError, match="cannot run on the GPU: no CUDA driver"):
        m(x=rand(np.random.default_rng(7), (2, 96)), w=rand(np.random.default_rng(8), (96, 64)))
    with pytest.raises(aotml.LoadError, match="no CPU code .* --target cpu,cuda"):
        m.select_device("cpu")


def test_the_newest_ptx_the_device_runs_is_loaded(gpu):
    gpu(NO_WEIGHTS_MLP, target="cuda:sm_80,sm_90", device="cuda", sm=86)
    assert "load sm_80" in lines(gpu.log)
    with pytest.raises(aotml.LoadError, match="is sm_75, but the library has PTX only for "
                                              "sm_80, sm_90: rebuild with --target cuda:sm_75"):
        gpu(NO_WEIGHTS_MLP, target="cuda:sm_80,sm_90", device="cuda", sm=75)


def test_device_numbers_and_names_are_checked(gpu):
    m = gpu(NO_WEIGHTS_MLP, target="cpu,cuda")
    with pytest.raises(aotml.LoadError, match="no CUDA device 3: the driver sees 1"):
        m.select_device("cuda:3")
    for bad in ("gpu", "cuda:", "cuda:x", "cuda:-1"):
        with pytest.raises(aotml.LoadError, match=f"unknown device '{bad}'"):
            m.select_device(bad)
    m.select_device("cuda:0")
    assert m.device.startswith("cuda:0")


def test_driver_errors_in_a_run_are_named(gpu):
    rng = np.random.default_rng(9)
    arrays = {"x": rand(rng, (3, 96)), "w": rand(rng, (96, 64))}
    m = gpu(NO_WEIGHTS_MLP, max_alloc=1000)
    with pytest.raises(aotml.RunError, match=r"cuMemAlloc \(\d+ bytes of arena\): "
                                             "CUDA_ERROR_OUT_OF_MEMORY"):
        m(**arrays)
    m = gpu(NO_WEIGHTS_MLP, max_alloc=0, launch_error=719)
    with pytest.raises(aotml.RunError, match=r"cuLaunchKernel \(k0_matmul_g0\): "
                                             r"CUDA_ERROR_LAUNCH_FAILED \(unspecified launch"):
        m(**arrays)


def test_a_cpu_library_refuses_the_gpu(build_model):
    m = build_model(NO_WEIGHTS_MLP)
    assert m.devices == ("cpu",) and m.device == "cpu"
    m.select_device("auto")
    with pytest.raises(aotml.LoadError, match="no GPU code .* --target cpu,cuda"):
        m.select_device("cuda")


def test_the_c_entry_points_choose_the_device(gpu, tmp_path):
    """A C program linking a cpu,cuda library: NAME_select_device, the manifest's devices."""
    m = gpu(NO_WEIGHTS_MLP, target="cpu,cuda")
    folder = m.path.parent
    (folder / "app.c").write_text(r"""
#include <stdio.h>
#include "m.h"
int main(void) {
    const aotml_model *m = mlp_model();
    float x[2 * 96], w[96 * 64], y[2 * 64];
    for (int i = 0; i < 2 * 96; i++) x[i] = (float)(i % 7) - 3;
    for (int i = 0; i < 96 * 64; i++) w[i] = (float)(i % 5) / 4 - 0.5f;
    static unsigned char ws[1 << 20];
    if (mlp_select_device("tpu") != AOTML_ERR_DEVICE) return 1;
    printf("%s\n", mlp_last_error());
    if (mlp_select_device("cuda") != AOTML_OK) return 2;
    printf("devices %u on %s\n", m->devices, m->device());
    if (mlp_run(2, x, w, y, ws) != AOTML_OK) return 3;
    float gpu0 = y[0];
    mlp_select_device("cpu");
    if (mlp_run(2, x, w, y, ws) != AOTML_OK) return 4;
    printf("%s %d\n", m->device(), gpu0 - y[0] <= 1e-6f * y[0] && y[0] - gpu0 <= 1e-6f * y[0]);
    return 0;
}
""")
    subprocess.run([CC, "-o", str(folder / "app"), str(folder / "app.c"), f"-I{folder}",
                    str(folder / "m.so"), f"-Wl,-rpath,{folder}"], check=True)
    out = subprocess.run([str(folder / "app")], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.splitlines() == [
        "unknown device 'tpu'; known: auto, cpu, cuda, cuda:N",
        "devices 3 on cuda:0 (Fake GPU 0, sm_90)",
        "cpu 1"]


def test_run_device_uses_device_buffers_where_they_are(gpu):
    """Device addresses in and out (here host memory: the stand-in's device memory is the
    host's), no copies but the status word's."""
    rng = np.random.default_rng(12)
    m = gpu(MLP, weights=mlp_weights(rng))
    x = rand(rng, (6, 50))
    p, s = np.empty((6, 9), np.float32), np.empty(6, np.float32)
    assert m.device.startswith("cuda:0")  # (set up, weights uploaded, before counting)
    before = len(lines(gpu.log))
    m.run_device({"x": x.ctypes.data}, {"p": p.ctypes.data, "s": s.ctypes.data},
                 shapes={"x": x.shape})
    close({"p": p, "s": s}, reference(m, x=x))
    copies = [line for line in lines(gpu.log)[before:] if line.startswith(("htod", "dtoh"))]
    assert copies == ["dtoh 4"], copies
    with pytest.raises(aotml.RunError, match="pass shapes"):
        m.run_device({"x": x.ctypes.data}, {"p": p.ctypes.data, "s": s.ctypes.data})
    with pytest.raises(aotml.RunError, match="takes the outputs p, s; got p"):
        m.run_device({"x": x.ctypes.data}, {"p": p.ctypes.data}, shapes={"x": x.shape})
    with pytest.raises(aotml.RunError, match="output 's' is a NULL device pointer"):
        m.run_device({"x": x.ctypes.data}, {"p": p.ctypes.data, "s": 0}, shapes={"x": x.shape})
    # the kernels move 16 bytes at a time: a pointer 4 bytes into an allocation is refused
    with pytest.raises(aotml.RunError, match="input 'x' at device address 0x[0-9a-f]+ is not "
                                             "16-byte aligned"):
        m.run_device({"x": x.ctypes.data + 4}, {"p": p.ctypes.data, "s": s.ctypes.data},
                     shapes={"x": (5, 50)})


def test_run_device_needs_the_gpu(gpu, build_model):
    m = gpu(NO_WEIGHTS_MLP, target="cpu,cuda")
    m.select_device("cpu")
    with pytest.raises(aotml.RunError, match="device pointers need the GPU"):
        m.run_device({"x": 4096, "w": 8192}, {"y": 12288},
                     shapes={"x": (2, 96), "w": (96, 64)})
    cpu_only = build_model(NO_WEIGHTS_MLP)
    with pytest.raises(aotml.RunError, match="no GPU code"):
        cpu_only.run_device({"x": 1, "w": 1}, {"y": 1}, shapes={"x": (2, 96), "w": (96, 64)})


def test_cpu_and_cuda_share_one_weights_blob_with_different_layouts(gpu, monkeypatch):
    """The CPU packs w's panels at build time and drops w; the GPU's tiles read w itself: the
    library holds both, each program reading its own at the right offset."""
    monkeypatch.setattr(nn, "PACK_MIN_BYTES", 0)  # (w is small: packed as a big one would be)
    rng = np.random.default_rng(12)
    source = ('weights "weights.npz"\nmodel m {\n    input x: f32[96, 80]\n'
              '    param w: f32[80, 64]\n    output y = relu(x @ w)\n}\n')
    m = gpu(source, target="cpu,cuda", weights={"w": rand(rng, (80, 64))})
    assert m._model.weights_bytes == 2 * 80 * 64 * 4  # the panels, then w
    x = rand(rng, (96, 80))
    want = reference(m, x=x)
    close(m(x=x), want)
    assert m.device.startswith("cuda:0")
    m.select_device("cpu")
    close(m(x=x), want)
