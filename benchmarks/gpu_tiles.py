"""The GPU matmul's tile, tried: each tile below forced on each size, checked against torch's
fp32 product (TF32 off) and timed on device memory against it. For choosing
aotml/gpu/schedules.py's BIG_TILE, SMALL_TILE and BIG_TILE_BLOCKS on a machine with a GPU:

    python benchmarks/gpu_tiles.py [--sizes 1024,2048,4096,8192] [--arch sm_90] [--rounds 5]

Needs torch with CUDA (its tensors hold the device memory). Builds go to --build-dir with the
build cache off (a forced tile is not part of the cache key).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ["AOTML_CACHE_DIR"] = ""

from bench_gpu import timed, torch_cuda  # noqa: E402

import aotml  # noqa: E402
from aotml.driver import build  # noqa: E402
from aotml.gpu import schedules  # noqa: E402
from aotml.gpu.schedules import MatmulTile  # noqa: E402

TILES = {
    "128x128 k8 8x8": MatmulTile(128, 128, 8, 8, 8),
    "128x128 k16 8x8": MatmulTile(128, 128, 16, 8, 8),
    "128x64 k8 8x8": MatmulTile(128, 64, 8, 8, 8),
    "64x128 k8 8x8": MatmulTile(64, 128, 8, 8, 8),
    "64x64 k16 4x4": MatmulTile(64, 64, 16, 4, 4),
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1024,2048,4096,8192")
    p.add_argument("--arch", default="sm_90")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--build-dir", default=str(REPO / "build" / "gpu_tiles"))
    args = p.parse_args(argv)
    torch, peer = torch_cuda()
    if torch is None:
        print(f"needs torch with CUDA: {peer}", file=sys.stderr)
        return 2
    folder = Path(args.build_dir)
    folder.mkdir(parents=True, exist_ok=True)
    sizes = [int(x) for x in args.sizes.split(",")]
    print(f"{peer}; TFLOP/s on device memory, aotml / torch in brackets")
    print(f"{'tile':18}" + "".join(f"{n:>16}" for n in sizes))
    torch_row = []
    operands = {}
    for n in sizes:
        a, b = (torch.randn(n, n, device="cuda") for _ in range(2))
        c = torch.empty(n, n, device="cuda")

        def theirs(a=a, b=b, c=c):
            torch.matmul(a, b, out=c)
            torch.cuda.synchronize()
        operands[n] = (a, b, c, timed(theirs, args.rounds))
        torch_row.append(f"{2 * n ** 3 / operands[n][3] / 1e12:16.1f}")
    print(f"{'torch':18}" + "".join(torch_row))
    for name, tile in TILES.items():
        schedules.BIG_TILE, schedules.BIG_TILE_BLOCKS = tile, 1
        row = []
        for n in sizes:
            src = folder / f"mm{n}.mlg"
            src.write_text(f"model mm {{\n    input a: f32[{n}, {n}]\n    input b: f32[{n}, {n}]"
                           f"\n    output c = a @ b\n}}\n")
            model = aotml.load(build(src, folder / f"mm{n}_{len(row)}_{id(tile)}.so",
                                     target=f"cuda:{args.arch}").so_path, "cuda")
            a, b, c, t_torch = operands[n]
            ours_c = torch.full_like(c, float("nan"))
            ptrs = {"a": a.data_ptr(), "b": b.data_ptr()}, {"c": ours_c.data_ptr()}
            model.run_device(*ptrs)
            torch.matmul(a, b, out=c)
            err = float((ours_c - c).abs().max() / c.abs().max())
            if not err <= 1e-5:
                row.append(f"{'off ' + format(err, '.1e'):>16}")
                continue
            t = timed(lambda ptrs=ptrs, model=model: model.run_device(*ptrs), args.rounds)
            row.append(f"{2 * n ** 3 / t / 1e12:9.1f} ({t_torch / t:.2f})")
        print(f"{name:18}" + "".join(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
