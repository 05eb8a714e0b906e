"""ONNX's own node tests, each compiled by aotml into a shared library and run.

The tests are the ones `onnx` ships (`onnx.backend.test`, built in memory). A test is selected
when every node of its model has an op type the importer converts (`aotml.onnx_import.CONVERTERS`);
tests named `..._expanded` are a function op (say LayerNormalization) written out in simpler
ops, and count under the op they expand. Each selected test is built with `aotml.build` from an
.onnx file in its own temporary folder, run on each of its data sets, and compared with ONNX's
expected outputs at ONNX's tolerances (rtol 1e-3, atol 1e-7; shapes, dtypes and the positions of
NaNs must match). A test ends as one of

    passed       every output of every data set matches
    failed       a wrong output (a bug): the worst difference is given
    unsupported  the importer refused the model (OnnxImportError): its reason
    crashed      any other error (a bug)

Inputs that carry shapes or indices (Reshape's shape, Slice's starts, reduction axes, ...) are
graph inputs in these tests, but aotml needs them at build time (in real models they are
constants): they become initializers holding the test's own data (see CONST_SLOTS).

    python tests/onnx_conformance.py --write docs/onnx-conformance.md [--jobs N] [--group N]

writes the report; without --write it prints it. `--only NAME...` runs just those tests and
prints each result. `--jobs` runs that many processes (default: one per core); `--group N`
builds up to N cases as one model, rebuilding alone any that does not pass there (the test
suite's way, several times faster: see run_group). A build that takes more than TIME_LIMIT
seconds counts as crashed.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import re
import signal
import sys
import tempfile
import threading
import traceback
import warnings
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script: use this checkout, not an installed aotml
    sys.path.insert(0, str(REPO))

RTOL, ATOL = 1e-3, 1e-7  # ONNX's defaults (each test case carries its own; all use these)
COMMAND = "python tests/onnx_conformance.py --write docs/onnx-conformance.md"
STATUSES = ("passed", "failed", "unsupported", "crashed")
TIME_LIMIT = 120  # seconds a build and run may take before it counts as crashed (a hang)

# Per op type, the inputs (by position) aotml needs at build time. A test that feeds one of them
# from a graph input gets it as an initializer instead, holding the test's data.
CONST_SLOTS: dict[str, tuple[int, ...]] = {
    "Reshape": (1,), "Slice": (1, 2, 3, 4), "Pad": (1, 2, 3), "Split": (1,),
    "Squeeze": (1,), "Unsqueeze": (1,), "Expand": (1,), "Clip": (1, 2), "Tile": (1,),
    "ReduceSum": (1,), "ReduceMean": (1,), "ReduceMax": (1,), "ReduceMin": (1,),
    "ReduceProd": (1,), "Dropout": (1, 2), "ConstantOfShape": (0,), "Range": (0, 1, 2),
    # ops whose `_expanded` tests are selected (their graph inputs are the op's)
    "CenterCropPad": (1,), "ReduceL1": (1,), "ReduceL2": (1,), "ReduceLogSum": (1,),
    "ReduceLogSumExp": (1,), "ReduceSumSquare": (1,),
}

_EXPANDED = re.compile(r"_expanded(_ver\d+)?$")
_CASES: dict | None = None  # name -> onnx TestCase (forked workers inherit it)


@dataclass(frozen=True)
class Result:
    name: str
    op: str
    status: str
    reason: str = ""


# -- the cases ---------------------------------------------------------------------------------


def load_cases() -> dict:
    """Every ONNX node test case, by name (built in memory by onnx: a few seconds; an older
    onnx keeps them as files, read here)."""
    global _CASES
    if _CASES is None:
        from onnx.backend.test.loader import load_model_tests
        with warnings.catch_warnings(), open(os.devnull, "w") as devnull, \
                contextlib.redirect_stdout(devnull):
            warnings.simplefilter("ignore")
            cases = [_materialize(c) for c in load_model_tests(kind="node")]
        _CASES = {c.name: c for c in sorted(cases, key=lambda c: c.name)}
    return _CASES


def _materialize(case):
    """The case with its model and data sets (read from its folder when not in memory)."""
    if case.model is not None or not case.model_dir:
        return case
    import dataclasses

    import onnx
    folder = Path(case.model_dir)
    model = onnx.load(folder / "model.onnx")
    sets = []
    for d in sorted(folder.glob("test_data_set_*")):
        def read(kind, d=d):
            files = sorted(d.glob(f"{kind}_*.pb"), key=lambda f: int(f.stem.split("_")[1]))
            return [onnx.TensorProto.FromString(f.read_bytes()) for f in files]
        sets.append((read("input"), read("output")))
    return dataclasses.replace(case, model=model, data_sets=sets)


def _original(case):
    """The one-node model an `_expanded` test writes out (its base test's), or None."""
    base = _EXPANDED.sub("", case.name)
    other = load_cases().get(base) if base != case.name else None
    if other is not None and len(other.model.graph.node) == 1:
        return other.model.graph.node[0]
    return None


def case_op(case) -> str:
    """The op type a test is about (for `_expanded` tests, the op that was expanded)."""
    node = _original(case)
    if node is not None:
        return node.op_type
    return case.model.graph.node[0].op_type if case.model.graph.node else "(none)"


def is_selected(case) -> bool:
    from aotml.onnx_import import CONVERTERS
    nodes = case.model.graph.node
    return bool(nodes) and all(n.domain in ("", "ai.onnx") and n.op_type in CONVERTERS
                               for n in nodes)


def selected_names() -> list[str]:
    return [name for name, case in load_cases().items() if is_selected(case)]


# -- one case ----------------------------------------------------------------------------------


def baked_inputs(case) -> list[int]:
    """Positions of the graph inputs that feed a build-time slot (see CONST_SLOTS): of a node
    of the model, or of the op an `_expanded` test writes out (whose inputs the graph's are)."""
    model = case.model
    names = [vi.name for vi in model.graph.input]
    nodes = list(model.graph.node)
    original = _original(case)
    if original is not None:
        nodes.append(original)
    wanted = set()
    for node in nodes:
        for k in CONST_SLOTS.get(node.op_type, ()):
            if k < len(node.input) and node.input[k] in names:
                wanted.add(names.index(node.input[k]))
    return sorted(wanted)


def data_sets(case) -> list[tuple[list[np.ndarray], list[np.ndarray]]]:
    """The case's (inputs, outputs) as numpy arrays (some are stored as TensorProtos)."""
    from onnx import numpy_helper

    def array(a):
        return numpy_helper.to_array(a) if hasattr(a, "data_type") else np.asarray(a)
    return [([array(a) for a in ins], [array(a) for a in outs]) for ins, outs in case.data_sets]


def with_initializers(model, positions: list[int], arrays: list[np.ndarray]):
    """A copy of `model` where the graph inputs at `positions` are initializers of `arrays`."""
    from onnx import numpy_helper
    model = type(model).FromString(model.SerializeToString())
    inputs = list(model.graph.input)
    for k, array in zip(positions, arrays):
        model.graph.initializer.append(numpy_helper.from_array(np.asarray(array),
                                                               inputs[k].name))
    del model.graph.input[:]
    model.graph.input.extend(vi for k, vi in enumerate(inputs) if k not in positions)
    return model


def compare(got: np.ndarray, want: np.ndarray, rtol: float, atol: float) -> str | None:
    """Why `got` is not `want` at these tolerances (as np.testing.assert_allclose, and ONNX's
    runner: shape, dtype, NaN positions), or None."""
    if got.shape != want.shape:
        return f"shape {got.shape}, expected {want.shape}"
    if got.dtype != want.dtype:
        return f"dtype {got.dtype}, expected {want.dtype}"
    if want.dtype == np.bool_ or want.dtype.kind in "iu":
        bad = got != want
        if not bad.any():
            return None
        at = tuple(int(i) for i in np.argwhere(bad)[0])
        return (f"{int(bad.sum())} of {want.size} elements differ; at {at}: got {got[at]}, "
                f"expected {want[at]}")
    if want.dtype.name == "bfloat16":
        rtol = max(rtol, 2 ** -6)  # as ONNX's runner: two bfloat16 ulps
    g, w = got.astype(np.float64), want.astype(np.float64)
    nan_g, nan_w = np.isnan(g), np.isnan(w)
    if (nan_g != nan_w).any():
        at = tuple(int(i) for i in np.argwhere(nan_g != nan_w)[0])
        return f"NaN positions differ; at {at}: got {got[at]}, expected {want[at]}"
    with np.errstate(invalid="ignore", over="ignore"):
        same = (g == w) | nan_w
        err = np.where(same, 0.0, np.abs(g - w))
        bad = ~same & ~(err <= atol + rtol * np.abs(w))
    if not bad.any():
        return None
    excess = np.where(bad, err - rtol * np.abs(w), -np.inf)
    excess = np.where(np.isnan(excess), np.inf, excess)
    at = tuple(int(i) for i in np.unravel_index(int(np.argmax(excess)), w.shape))
    return (f"{int(bad.sum())} of {want.size} elements differ; worst at {at}: got {got[at]!r}, "
            f"expected {want[at]!r} (abs error {abs(g[at] - w[at]):.3g})")


def _message(e: BaseException) -> str:
    text = getattr(e, "message", None) or str(e) or type(e).__name__
    text = " ".join(text.split())
    return text[:400] + (" ..." if len(text) > 400 else "")


class TimeLimit(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise TimeLimit in this (main) thread after `seconds` (Python code only: a hang inside
    a C call ends when the call returns)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):
        raise TimeLimit(f"took more than {seconds:g} s (a hang?)")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_case(name: str) -> Result:
    """Build and run one test case; never raises."""
    case = load_cases()[name]
    op = case_op(case)
    try:
        with time_limit(TIME_LIMIT):
            return _run(case, op)
    except Exception as e:
        from aotml.onnx_import import OnnxImportError
        if isinstance(e, OnnxImportError):
            return Result(name, op, "unsupported", _message(e))
        if isinstance(e, TimeLimit):
            return Result(name, op, "crashed", _message(e))
        where = traceback.extract_tb(e.__traceback__)[-1]
        return Result(name, op, "crashed",
                      f"{type(e).__name__}: {_message(e)} "
                      f"[{Path(where.filename).name}:{where.lineno}]")


def _run(case, op: str) -> Result:
    import onnx

    import aotml
    positions = baked_inputs(case)
    builds: dict[bytes, tuple[list, list]] = {}  # baked values -> data sets using them
    for inputs, outputs in data_sets(case):
        key = b"".join(np.asarray(inputs[k]).tobytes() + str(np.asarray(inputs[k]).dtype)
                       .encode() + str(np.shape(inputs[k])).encode() for k in positions)
        builds.setdefault(key, ([inputs[k] for k in positions], []))[1].append(
            (inputs, outputs))
    with tempfile.TemporaryDirectory(prefix="aotml-onnx-") as tmp:
        for n, (baked, runs) in enumerate(builds.values()):
            model = with_initializers(case.model, positions, baked)
            path = Path(tmp) / f"{case.name}_{n}.onnx"
            onnx.save(model, path)
            compiled = aotml.load(aotml.build(path, path.with_suffix(".so")))
            for d, (inputs, outputs) in enumerate(runs):
                fed = [a for k, a in enumerate(inputs) if k not in positions]
                if len(fed) != len(compiled.inputs):
                    raise AssertionError(f"the model takes {len(compiled.inputs)} inputs, the "
                                         f"test gives {len(fed)}")
                got = compiled.run({t.name: np.asarray(a) for t, a in zip(compiled.inputs, fed)})
                got = list(got.values())
                if len(got) != len(outputs):
                    return Result(case.name, op, "failed", f"{len(got)} outputs, expected "
                                                           f"{len(outputs)}")
                for k, (g, w) in enumerate(zip(got, outputs)):
                    why = compare(g, np.asarray(w), case.rtol, case.atol)
                    if why:
                        label = case.model.graph.output[k].name
                        sets = f"data set {d}, " if len(case.data_sets) > 1 else ""
                        return Result(case.name, op, "failed",
                                      f"{sets}output '{label}': {why}")
    return Result(case.name, op, "passed")


# -- many at once -----------------------------------------------------------------------------
#
# A build costs about a quarter of a second, mostly compiling and linking the C runtime, the same
# for a one-node model as for a larger one. So `run_all(group=N)` (what the test suite does) puts
# up to N single-data-set cases side by side in one model (their names prefixed apart), builds
# that once, and runs it once; a case passes when its outputs in it match. Any case that does not
# pass there (or all of a group whose build fails) is run alone with `run_case`, so every result
# other than "passed" is the one the case gets on its own. A case the importer refuses is found by
# importing it alone first (import is cheap); its result is final.


def _import_check(case, tmp: Path, tag: str):
    """(the prepared model, None), or (None, the case's Result) when it does not import."""
    import onnx

    from aotml.onnx_import import OnnxImportError, import_onnx
    op = case_op(case)
    try:
        positions = baked_inputs(case)
        inputs = data_sets(case)[0][0]
        model = with_initializers(case.model, positions, [inputs[k] for k in positions])
        path = tmp / f"{tag}.onnx"
        onnx.save(model, path)
        import_onnx(path)
        return model, None
    except OnnxImportError as e:
        return None, Result(case.name, op, "unsupported", _message(e))
    except Exception:
        return None, run_case(case.name)  # its crash, reported the usual way


def merge(models: list[tuple[str, object]]):
    """One model holding each (tag, model) side by side, every name prefixed with its tag; the
    inputs and outputs in order, model by model. The models share their opset imports."""
    import onnx
    merged = onnx.GraphProto(name="merged")
    for tag, model in models:
        g = type(model.graph).FromString(model.graph.SerializeToString())

        def rename(name: str, tag=tag) -> str:
            return f"{tag}_{name}" if name else name
        for vi in (*g.input, *g.output, *g.value_info):
            vi.name = rename(vi.name)
            for d in vi.type.tensor_type.shape.dim:
                if d.HasField("dim_param"):
                    d.dim_param = rename(d.dim_param)
        for t in g.initializer:
            t.name = rename(t.name)
        for n in g.node:
            n.input[:] = [rename(x) for x in n.input]
            n.output[:] = [rename(x) for x in n.output]
            n.name = rename(n.name or "node")
        merged.input.extend(g.input)
        merged.output.extend(g.output)
        merged.initializer.extend(g.initializer)
        merged.value_info.extend(g.value_info)
        merged.node.extend(g.node)
    first = models[0][1]
    return onnx.helper.make_model(merged, opset_imports=list(first.opset_import),
                                  ir_version=max(m.ir_version for _, m in models))


def run_group(names: list[str]) -> list[Result]:
    """Results of these cases (same opset imports, one data set each), built as one model."""
    cases = load_cases()
    results: dict[str, Result] = {}
    ready = []  # (name, tag, prepared model)
    with tempfile.TemporaryDirectory(prefix="aotml-onnx-") as tmp:
        tmp = Path(tmp)
        for k, name in enumerate(names):
            model, result = _import_check(cases[name], tmp, f"t{k}")
            if result is not None:
                results[name] = result
            else:
                ready.append((name, f"t{k}", model))
        redo = [name for name, _, _ in ready]
        if len(ready) > 1:
            try:
                with time_limit(TIME_LIMIT):
                    passed = _run_merged(ready, tmp)
                for name in passed:
                    results[name] = Result(name, case_op(cases[name]), "passed")
                redo = [name for name, _, _ in ready if name not in passed]
            except Exception:
                pass  # each alone, below
    for name in redo:  # alone, for the result it gets on its own
        results[name] = run_case(name)
    return [results[n] for n in names]


def _run_merged(ready: list, tmp: Path) -> set[str]:
    """Build the (name, tag, model)s of `ready` as one model, run it; the names that pass."""
    import onnx

    import aotml
    cases = load_cases()
    path = tmp / "merged.onnx"
    onnx.save(merge([(tag, m) for _, tag, m in ready]), path)
    compiled = aotml.load(aotml.build(path, path.with_suffix(".so")))
    fed = [a for name, _, _ in ready for a in _fed_inputs(cases[name])]
    if len(fed) != len(compiled.inputs):
        raise AssertionError("the merged model's inputs do not line up")
    got = list(compiled.run({t.name: np.asarray(a) for t, a
                             in zip(compiled.inputs, fed)}).values())
    passed = set()
    for name, _, m in ready:
        case = cases[name]
        want = data_sets(case)[0][1]
        mine, got = got[:len(m.graph.output)], got[len(m.graph.output):]
        if len(mine) == len(want) and not any(compare(g, w, case.rtol, case.atol)
                                              for g, w in zip(mine, want)):
            passed.add(name)
    return passed


def _fed_inputs(case) -> list[np.ndarray]:
    positions = baked_inputs(case)
    return [a for k, a in enumerate(data_sets(case)[0][0]) if k not in positions]


def _groups(names: list[str], size: int) -> list[list[str]]:
    """The cases in groups of at most `size` sharing opset imports; a case with more than one
    data set (or a subgraph attribute) alone."""
    cases = load_cases()
    by_key: dict[tuple, list[str]] = defaultdict(list)
    alone = []
    for name in names:
        case = cases[name]
        if size <= 1 or len(case.data_sets) != 1 or any(
                a.type in (5, 10) for n in case.model.graph.node for a in n.attribute):
            alone.append([name])  # 5, 10: GRAPH, GRAPHS
        else:
            key = tuple((o.domain, o.version) for o in case.model.opset_import)
            by_key[key].append(name)
    groups = []
    for key in sorted(by_key):
        members = by_key[key]
        groups += [members[k:k + size] for k in range(0, len(members), size)]
    return groups + alone


# -- all of them -------------------------------------------------------------------------------


def _run_task(names: list[str]) -> list[Result]:
    return run_group(names) if len(names) > 1 else [run_case(names[0])]


def run_all(names: list[str] | None = None, jobs: int | None = None,
            group: int = 1) -> list[Result]:
    """Run the cases (all selected ones by default) on `jobs` processes, each built alone
    (group=1) or up to `group` at a time in one model (see run_group); sorted by name."""
    if names is None:
        names = selected_names()
    load_cases()  # before forking: the workers inherit the cases
    jobs = max(1, jobs or os.cpu_count() or 1)
    tasks = _groups(names, group)
    results: dict[str, Result] = {}
    if jobs == 1 or len(tasks) < 2:
        for task in tasks:
            results.update((r.name, r) for r in _run_task(task))
    else:
        ctx = multiprocessing.get_context("fork")
        try:
            with ProcessPoolExecutor(jobs, mp_context=ctx) as pool:
                futures = [pool.submit(_run_task, task) for task in tasks]
                for f in futures:
                    with contextlib.suppress(BrokenProcessPool):
                        results.update((r.name, r) for r in f.result())
        except BrokenProcessPool:
            pass
        for name in names:  # a case that killed its worker (or was lost with it): alone
            if name not in results:
                results[name] = _run_isolated(ctx, name)
    return [results[n] for n in sorted(results)]


def _run_isolated(ctx, name: str) -> Result:
    with ProcessPoolExecutor(1, mp_context=ctx) as pool:
        try:
            return pool.submit(run_case, name).result()
        except BrokenProcessPool:
            case = load_cases()[name]
            return Result(name, case_op(case), "crashed", "the process died (a signal)")


# -- the report --------------------------------------------------------------------------------


def render(results: list[Result], command: str = COMMAND) -> str:
    """The Markdown report (deterministic: sorted, nothing about the machine or the time)."""
    import onnx
    by_op: dict[str, list[Result]] = defaultdict(list)
    for r in results:
        by_op[r.op].append(r)
    from aotml.onnx_import import CONVERTERS
    total = {s: sum(r.status == s for r in results) for s in STATUSES}
    lines = [
        "# ONNX conformance",
        "",
        f"Generated by `{command}` (onnx {onnx.__version__}); a test "
        "(tests/test_onnx_conformance.py) fails when this file is out of date.",
        "",
        "ONNX's own node tests whose model uses only op types the importer converts, each "
        "compiled to a shared library with `aotml.build` and run on each of its data sets; "
        f"outputs compared with ONNX's at rtol {RTOL:g}, atol {ATOL:g} (shapes, dtypes and NaN "
        "positions must match). Inputs that carry shapes or indices (Reshape's shape, Slice's "
        "starts, reduction axes, ...) are initializers holding the test's data: aotml needs "
        "them at build time. Tests named `..._expanded` are a function op written out in "
        "simpler ops; they count under the op they expand (in *italics* where aotml has no "
        "converter for that op itself).",
        "",
        f"**{total['passed']} of {len(results)} tests pass**; "
        f"{total['unsupported']} are not supported (the reason is below), "
        f"{total['failed']} fail, {total['crashed']} crash.",
        "",
        "| op | passed | total | not supported | failed | crashed |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for op in sorted(by_op):
        rs = by_op[op]
        count = {s: sum(r.status == s for r in rs) for s in STATUSES}
        label = f"`{op}`" if op in CONVERTERS else f"*`{op}`*"
        lines.append(f"| {label} | {count['passed']} | {len(rs)} | "
                     f"{count['unsupported'] or ''} | {count['failed'] or ''} | "
                     f"{count['crashed'] or ''} |")
    lines += ["", "## Tests not passed", ""]
    missing = [r for r in results if r.status != "passed"]
    if not missing:
        lines.append("None.")
    for op in sorted(by_op):
        rs = [r for r in by_op[op] if r.status != "passed"]
        if not rs:
            continue
        lines += [f"### {op}", ""]
        lines += [f"- `{r.name}`: {r.status}: {_md(r.reason)}" for r in rs]
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", metavar="PATH", help="write the report to PATH")
    parser.add_argument("--jobs", type=int, default=None, help="processes (default: all cores)")
    parser.add_argument("--group", type=int, default=1, metavar="N",
                        help="build up to N cases in one model (faster; see run_group)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run just these tests")
    args = parser.parse_args(argv)
    if args.only:
        cases = load_cases()
        unknown = [n for n in args.only if n not in cases]
        if unknown:
            parser.error(f"no such test: {', '.join(unknown)}")
        for r in run_all(args.only, args.jobs, args.group):
            print(f"{r.name} ({r.op}): {r.status}{': ' + r.reason if r.reason else ''}")
        return 0
    text = render(run_all(jobs=args.jobs, group=args.group))
    if args.write:
        Path(args.write).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
