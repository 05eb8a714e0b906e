"""The `aotml` command: check, build, import, run, profile.

User errors print as located diagnostics and exit with status 1, never with a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from aotml.errors import AotmlError, CompileError, InternalError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="aotml", description="Ahead-of-time compiler for "
                                     ".mlg model graphs.")
    from aotml import __version__
    parser.add_argument("--version", action="version", version=f"aotml {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("check", help="parse and type-check a model; print its signature")
    p.add_argument("file", help="an .mlg or .onnx file")
    p.add_argument("--max-bytes", type=int, default=None, help="for .onnx: the most bytes "
                   "the model may ask for (default 4 GiB)")

    p = sub.add_parser("build", help="compile a model to a shared library and header")
    p.add_argument("file")
    p.add_argument("-o", "--output", required=True, help="the .so to write (the .h goes beside)")
    p.add_argument("--dump", default="", help="print stages: graph,loops,llvm,asm,ptx")
    p.add_argument("--target-cpu", default=None, help="LLVM cpu name (default: this host)")
    p.add_argument("--target-triple", default=None, help="LLVM triple (default: this host)")
    p.add_argument("-O", dest="opt_level", type=int, choices=range(4), default=3)
    p.add_argument("--target", default="cpu", help="cpu (default); cuda[:sm_80,sm_90]: a "
                   "library whose kernels run on the GPU (PTX for each architecture inside; "
                   "-o NAME.ptx writes the PTX alone); cpu,cuda[:...]: both, the GPU used "
                   "when one is present; grid-emulation: the GPU-mapped kernels run on this "
                   "CPU, block by block, thread by thread")
    p.add_argument("--max-bytes", type=int, default=None, help="for .onnx: the most bytes "
                   "the model may ask for (default 4 GiB)")
    p.add_argument("--report", action="store_true", help="print each kernel with the ops fused "
                   "into it, its flops and bytes, what was not fused and why, and the "
                   "workspace against its liveness lower bound")
    p.add_argument("--profile", action="store_true", help="time each kernel of every CPU run "
                   "(read by `aotml profile` or the ABI's aotml_model.profile)")
    p.add_argument("--no-winograd", action="store_true", help="compute every 3x3 conv by "
                   "direct sums, not Winograd's F(2x2, 3x3) (which rounds differently and "
                   "spreads an inf or NaN input to its whole 2x2 tile)")

    p = sub.add_parser("profile", help="run a model repeatedly and print where the time goes, "
                       "kernel by kernel")
    p.add_argument("file", help="an .mlg or .onnx file (built here with --profile), or a .so "
                   "built with --profile")
    p.add_argument("--input", "-i", action="append", default=[], metavar="NAME=FILE.npy",
                   help="an input's values (default: random; integers 0 or 1)")
    p.add_argument("--dim", action="append", default=[], metavar="NAME=VALUE",
                   help="a symbolic dim's value, for the random inputs")
    p.add_argument("--threads", type=int, default=None, help="threads a run may use "
                   "(default: $AOTML_NUM_THREADS, else the cores)")
    p.add_argument("--seconds", type=float, default=1.0, help="time to spend running "
                   "(default 1)")
    p.add_argument("--top", type=int, default=None, help="show only the N slowest kernels")
    p.add_argument("--group", action="store_true", help="one row per list of fused ops: the "
                   "kernels that share it summed (a model's repeated layers)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the profile here "
                   "as JSON (every kernel in launch order)")
    p.add_argument("--target-cpu", default=None, help="LLVM cpu name (default: this host)")
    p.add_argument("--max-bytes", type=int, default=None, help="for .onnx: the most bytes "
                   "the model may ask for (default 4 GiB)")
    p.add_argument("--no-winograd", action="store_true", help="build as `aotml build "
                   "--no-winograd` does")

    p = sub.add_parser("import", help="convert an ONNX model to .mlg source and weights")
    p.add_argument("file", help="the .onnx file")
    p.add_argument("-o", "--output", required=True, help="the .mlg to write (its weights go "
                   "beside it as .safetensors)")
    p.add_argument("--max-bytes", type=int, default=None, help="the most bytes the model may "
                   "ask for (default 4 GiB)")

    p = sub.add_parser("run", help="run a compiled model (or interpret an .mlg) on .npy inputs")
    p.add_argument("file", help="a built .so, or an .mlg with --interpret")
    p.add_argument("--input", "-i", action="append", default=[], metavar="NAME=FILE.npy")
    p.add_argument("--output-dir", default=None, help="write each output as NAME.npy here")
    p.add_argument("--device", default="auto", help="auto (default: the GPU when the library "
                   "has GPU code and one is present), cpu, cuda, cuda:N")
    p.add_argument("--interpret", action="store_true", help="run the .mlg with the reference "
                   "interpreter instead of a compiled library")

    args = parser.parse_args(argv)
    try:
        return {"check": _check, "build": _build, "run": _run, "import": _import,
                "profile": _profile}[args.command](args)
    except InternalError as e:
        print(str(e), file=sys.stderr)
        return 2
    except CompileError as e:
        print(e.format(), file=sys.stderr)
        return 1
    except AotmlError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # the file system said no: a missing folder, a file in the way
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # a compiler bug: say so, keep the traceback available on request
        if os.environ.get("AOTML_TRACEBACK"):
            raise
        print(f"internal compiler error: {type(e).__name__}: {e}\n"
              "This is a bug in aotml; please report it with the input that caused it "
              "(set AOTML_TRACEBACK=1 for the traceback).", file=sys.stderr)
        return 2


def _check(args) -> int:
    from aotml.driver import frontend

    g = frontend(args.file, max_bytes=args.max_bytes)

    def sig(values):
        return ", ".join(f"{name}: {v.type}" for name, v in values)

    dims = ", ".join(s if b is None else f"{s} <= {b}" for s, b in g.symbols.items())
    print(f"model {g.name}({sig((v.name, v) for v in g.inputs)}) -> ({sig(g.outputs)})"
          + (f" for {dims}" if dims else ""))
    return 0


def _build(args) -> int:
    from aotml.driver import build

    build(args.file, args.output, target_cpu=args.target_cpu, target_triple=args.target_triple,
          opt_level=args.opt_level, dump=args.dump, dump_stream=sys.stdout,
          max_bytes=args.max_bytes, report=args.report, target=args.target,
          profile=args.profile, winograd=not args.no_winograd)
    return 0


def _profile(args) -> int:
    from aotml.package.artifact import write_atomically
    from aotml.profile import format_timing, profile_file, timing_record

    dims = {}
    for spec in args.dim:
        name, sep, value = spec.partition("=")
        if not sep or not name or not value.strip().isdigit() or int(value) < 1:
            raise CompileError(f"--dim takes NAME=VALUE with a positive integer, got '{spec}'")
        dims[name] = int(value)
    if args.seconds <= 0 or (args.threads is not None and args.threads < 1) or \
            (args.top is not None and args.top < 1):
        raise CompileError("--seconds, --threads and --top take positive values")
    timing, name = profile_file(args.file, inputs=_load_inputs(args.input), dims=dims,
                                seconds=args.seconds, threads=args.threads,
                                target_cpu=args.target_cpu, max_bytes=args.max_bytes,
                                winograd=not args.no_winograd)
    print(format_timing(timing, f"profile of {name} ({os.path.basename(args.file)})", args.top,
                        args.group))
    if args.json:
        record = json.dumps(timing_record(timing, name), indent=1) + "\n"
        write_atomically({Path(args.json): record.encode()})
    return 0


def _import(args) -> int:
    from aotml.onnx_import import DEFAULT_MAX_BYTES, import_onnx, write_mlg

    if not args.output.endswith(".mlg"):
        raise CompileError(f"the output of import is .mlg source, got '{args.output}'")
    graph = import_onnx(args.file, args.max_bytes or DEFAULT_MAX_BYTES,
                        name=Path(args.output).stem)
    mlg, weights = write_mlg(graph, args.output, Path(args.file).name)
    print(f"wrote {mlg}" + (f" and {weights}" if weights else ""))
    return 0


def _load_inputs(specs: list[str]) -> dict[str, np.ndarray]:
    arrays = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name:
            raise CompileError(f"--input takes NAME=FILE.npy, got '{spec}'")
        try:
            arrays[name] = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:  # EOFError: an empty file
            raise CompileError(f"cannot read input '{name}' from '{path}': "
                               f"{e or 'the file is empty'}") from None
    return arrays


def _run(args) -> int:
    import aotml

    arrays = _load_inputs(args.input)
    if args.interpret:
        results = aotml.interpret(args.file, **arrays)
    else:
        if args.file.endswith(".mlg"):
            raise CompileError(f"'{args.file}' is source: build it first, or add --interpret")
        model = aotml.load(args.file, args.device)
        results = model(**arrays)
        if "cuda" in model.devices:  # where a library with GPU code ran is worth saying
            print(f"ran on {model.device}", file=sys.stderr)
    out_dir = Path(args.output_dir) if args.output_dir else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    with np.printoptions(precision=6, suppress=True, threshold=20):
        for name, value in results.items():
            print(f"{name}: {value.dtype}{list(value.shape)}\n{value}")
            if out_dir is not None:
                np.save(out_dir / f"{name}.npy", value)
    return 0


if __name__ == "__main__":
    sys.exit(main())
