#!/usr/bin/env bash
# Issue 6's checks and timings on a machine with an NVIDIA GPU, in one go (a device lease is
# short: one prepared command). From the repository root:
#
#     bash benchmarks/gpu_session.sh OUTDIR [ARCH]
#
# 1. wheels in .whl/ (packages the machine lacks: lark, cffi, pycparser, llvmlite) are installed
#    into /tmp/site first, if there are any;
# 2. the machine: GPU, driver, clocks, Python and package versions, the C compiler;
# 3. the GPU tests against the reference (tests/test_gpu_device.py, with AOTML_REQUIRE_GPU=1
#    so that a missing GPU fails rather than skips), the runtime's and the PTX tests;
# 4. benchmarks/bench_gpu.py for ARCH (default sm_90), its table written to OUTDIR;
# 5. benchmarks/gpu_tiles.py: the matmul tiles tried on each size (TILES=0 leaves it out).
# Every step writes its log under OUTDIR; a failed step does not stop the next.
set -uo pipefail
out=${1:?usage: gpu_session.sh OUTDIR [ARCH]}
arch=${2:-sm_90}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 AOTML_REQUIRE_GPU=1 PYTHONPATH="$PWD"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/site:$PWD"
fi

{
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,clocks.mem \
        --format=csv
    python3 -c "import sys, llvmlite, numpy, cffi, lark; print('python', sys.version.split()[0],
'llvmlite', llvmlite.__version__, 'numpy', numpy.__version__, 'cffi', cffi.__version__)"
    python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
    cc --version | head -1
    echo "cores: $(nproc)"
} 2>&1 | tee "$out/machine.txt"

start=$SECONDS
timeout 240 python3 -m pytest -q -n "$(nproc)" -p no:cacheprovider -rfE \
    tests/test_gpu_device.py tests/test_gpu_runtime.py tests/test_gpu_ptx.py \
    >"$out/tests.log" 2>&1
echo "tests: exit $? in $((SECONDS - start)) s"
tail -25 "$out/tests.log"

start=$SECONDS
timeout 300 python3 benchmarks/bench_gpu.py --arch "$arch" --markdown "$out/bench_gpu.md" \
    --build-dir /tmp/bench_gpu >"$out/bench.log" 2>&1
echo "bench_gpu: exit $? in $((SECONDS - start)) s"
cat "$out/bench.log"

[ "${TILES:-1}" = 1 ] || exit 0
start=$SECONDS
timeout 200 python3 benchmarks/gpu_tiles.py --build-dir /tmp/gpu_tiles >"$out/tiles.log" 2>&1
echo "gpu_tiles: exit $? in $((SECONDS - start)) s"
cat "$out/tiles.log"
