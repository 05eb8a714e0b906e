"""The machinery of the op tests: build one op into a real .so, run it on fresh random inputs,
compare with the float64 reference.

Each `tests/test_ops*.py` module defines `SAMPLES: dict[op name, list[Sample]]`; a test checks
that the union covers the whole registry, so an op without samples fails the suite.

The bound is rtol (1e-5 for f32) plus, for ops whose output elements accumulate `terms` values,
`terms`·eps32 times `magnitude` (the same computation on absolute values, or the largest input
magnitude when not given). Non-f32 results (integers, bool, casts) are compared bit for bit.
"""

from __future__ import annotations

import importlib
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

import aotml
from aotml.ops import REGISTRY

EPS32 = float(np.finfo(np.float32).eps)


@dataclass
class Sample:
    """One test case of an op: input shapes, attributes, and how to draw and judge it."""

    shapes: tuple                          # a dim may be a symbol's name: ("N", 4)
    attrs: dict = field(default_factory=dict)
    dtypes: tuple | None = None            # per input; default all f32
    # for restricted domains: rng -> arrays; (rng, concrete shapes) -> arrays with symbols
    inputs: Callable | None = None
    terms: int = 1                         # values accumulated into one output element
    magnitude: Callable | None = None      # arrays (float64) -> |terms| scale for atol
    rtol: float = 1e-5
    id: str = ""
    # with symbolic dims: the values to run with, one draw each (the model is built once)
    sizes: tuple[dict, ...] = ({"N": 1, "S": 3}, {"N": 5, "S": 2}, {"N": 2, "S": 7})

    @property
    def symbols(self) -> list[str]:
        found = {d: None for shape in self.shapes for d in shape if isinstance(d, str)}
        return list(found)

    def concrete(self, values: dict) -> list[tuple[int, ...]]:
        return [tuple(values[d] if isinstance(d, str) else d for d in shape)
                for shape in self.shapes]


def same_on_abs(op: str, attrs: dict) -> Callable:
    """The magnitude of an accumulating op: the op itself on absolute values."""
    bound = REGISTRY[op].bind_attrs(attrs)
    return lambda xs: REGISTRY[op].reference([np.abs(a) for a in xs], bound)


def conv_sample(x, w, bias: bool = False, **attrs) -> Sample:
    """An f32 conv2d case: input and weight shapes, a bias of w[0] when `bias`."""
    shapes = (x, w, (w[0],)) if bias else (x, w)
    return Sample(shapes, attrs, terms=w[1] * w[2] * w[3] + bias,
                  magnitude=same_on_abs("conv2d", attrs))


def _attr(v) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, Dim):
        return v.name
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, tuple):
        return "(" + ", ".join(_attr(x) for x in v) + ("," if len(v) == 1 else "") + ")"
    return str(v)


@dataclass(frozen=True)
class Dim:
    """A symbolic dim written into an attribute: `shape=(Dim("N"), 4)` is `shape=(N, 4)`."""

    name: str


def source(op: str, s: Sample) -> str:
    dtypes = s.dtypes or ("f32",) * len(s.shapes)
    decls = "\n".join(f"    input x{i}: {dt}[{', '.join(map(str, shape))}]"
                      for i, (shape, dt) in enumerate(zip(s.shapes, dtypes)))
    args = [f"x{i}" for i in range(len(s.shapes))]
    args += [f"{k}={_attr(v)}" for k, v in s.attrs.items()]
    return f"model m {{\n{decls}\n    output y = {op}({', '.join(args)})\n}}\n"


def draw(rng, shape, dtype: str) -> np.ndarray:
    """Fresh values of a dtype: floats in [-2, 2), integers in [-20, 20), random bools."""
    if dtype == "bool":
        return rng.random(shape) < 0.5
    if dtype in ("i32", "i64"):
        return rng.integers(-20, 20, size=shape).astype("int32" if dtype == "i32" else "int64")
    x = rng.uniform(-2.0, 2.0, size=shape).astype(np.float32)
    return x.astype({"f32": "float32", "f16": "float16", "bf16": "bfloat16"}[dtype])


def case_id(op: str, s: Sample) -> str:
    if s.id:
        return f"{op}-{s.id}"
    dims = "x".join("_".join(map(str, shape)) for shape in s.shapes)
    return f"{op}-{dims}" + "".join(f"-{k}{_attr(v)}" for k, v in s.attrs.items())


def params(samples: dict[str, list[Sample]]) -> list:
    return [pytest.param(op, s, id=case_id(op, s)) for op, ss in samples.items() for s in ss]


def check(tmp_path: Path, op: str, s: Sample, draws: int = 2, **build_options) -> None:
    """Build `op` on the sample's shapes (with `build_options`, a target say) and compare
    with the reference on `draws` inputs."""
    src = tmp_path / "m.mlg"
    src.write_text(source(op, s))
    model = aotml.load(aotml.build(src, tmp_path / "m.so", **build_options))
    # a stable seed per case (str hashes change per process), so a failure reproduces
    rng = np.random.default_rng(zlib.crc32(case_id(op, s).encode()))
    dtypes = s.dtypes or ("f32",) * len(s.shapes)
    symbols = s.symbols
    runs = [{k: v[k] for k in symbols} for v in s.sizes] if symbols else [{}] * draws
    for values in runs:
        shapes = s.concrete(values)
        arrays = ((s.inputs(rng, shapes) if symbols else s.inputs(rng)) if s.inputs is not None
                  else [draw(rng, shape, dt) for shape, dt in zip(shapes, dtypes)])
        named = {f"x{i}": a for i, a in enumerate(arrays)}
        got = model(**named)["y"]
        exact = aotml.interpret(src, precise=True, **named)["y"]
        assert got.shape == exact.shape and got.dtype == exact.dtype
        if got.dtype != np.float32:
            np.testing.assert_array_equal(np.atleast_1d(got).view(np.uint8),
                                          np.atleast_1d(exact).view(np.uint8))
            continue
        wide = [a.astype(np.float64) for a in arrays]
        if s.magnitude is not None:
            scale = s.magnitude(wide)
        else:
            scale = max((float(np.max(np.abs(a))) for a in wide if a.size), default=0.0)
        within(got, exact, s.rtol + (s.terms * EPS32 if s.terms > 1 else 0.0),
               2 * s.terms * EPS32 * scale if s.terms > 1 else 0.0)


def within(got, exact, rtol, atol) -> None:
    """|got - exact| <= rtol·|exact| + atol elementwise (atol may be an array); NaN == NaN."""
    got64, exact64 = got.astype(np.float64), exact.astype(np.float64)
    err = np.abs(got64 - exact64)
    bound = rtol * np.abs(exact64) + atol
    bad = ~(err <= bound) & ~(np.isnan(got64) & np.isnan(exact64)) & ~(got64 == exact64)
    assert not bad.any(), (f"{int(bad.sum())} of {bad.size} elements off; worst error "
                           f"{float(np.max(np.where(bad, err, 0))):.3g}")


def check_error(tmp_path: Path, inputs: str, call: str, message: str) -> None:
    """`call` (with a ^ before the construct at fault) over the declared `inputs` is rejected
    with `message`, located at the ^."""
    prefix = "  output y = "
    src = tmp_path / "e.mlg"
    src.write_text(f"model m {{\n{inputs}{prefix}{call.replace('^', '')}\n}}\n")
    with pytest.raises(aotml.CompileError) as e:
        aotml.build(src, tmp_path / "e.so")
    line = inputs.count("\n") + 2
    assert message in e.value.message
    assert (e.value.span.line, e.value.span.col) == (line, len(prefix) + call.index("^") + 1)


def all_samples() -> dict[str, list[Sample]]:
    """The union of SAMPLES over every tests/test_ops*.py module."""
    merged: dict[str, list[Sample]] = {}
    for path in sorted(Path(__file__).parent.glob("test_ops*.py")):
        module = importlib.import_module(path.stem)
        for op, samples in module.SAMPLES.items():
            assert op not in merged, f"{op} has samples in two modules"
            merged[op] = samples
    return merged
