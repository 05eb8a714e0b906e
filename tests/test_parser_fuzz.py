"""Robustness of the front end: whatever the bytes, `aotml check` succeeds or prints a located
user error, never an internal error or a traceback.

Two sources of input:

* programs generated from the grammar (grammar/mlg.lark): weights lines, functions, inputs,
  params, bindings (tuple bindings of split too), outputs, infix expressions, calls of registry
  ops with keyword attributes of every kind, comments, blank lines, CRLF; mostly well typed, so
  that many pass the checker, and a subset of those is compiled to check code generation too;
* byte mutations (flips, insertions of tokens and non-UTF-8 bytes, deletions, duplications,
  truncations) of examples/*.mlg and tests/errors/*.mlg, checked beside the files they name.

`fuzz_graphs.check_cli` judges each run: exit 0; or exit 1 with `path:L:C: error: ...` pointing
inside the file (quoting its line L) or `error: ...` for file-level problems. A failure is shrunk
by hypothesis and saved to tests/fuzz_regressions/, which tests/test_fuzz.py replays.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import fuzz_graphs as fz
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.control import current_build_context

import aotml
from aotml import ops
from aotml.graph.ir import DTYPES

REPO = Path(__file__).resolve().parent.parent
GENERATED = 400  # programs from the grammar
MUTANTS = 600    # mutated corpus files
SETTINGS = dict(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# ---------------------------------------------------------------------------------------------
# Programs from the grammar

OP_NAMES = sorted(ops.REGISTRY)
UNARY_FLOAT = sorted(n for n, o in ops.REGISTRY.items()
                     if o.kind == "elementwise" and o.arity == 1 and not
                     any(a.required for a in o.attrs) and n not in ("cast", "copy"))
BINARY = sorted(n for n, o in ops.REGISTRY.items()
                if o.kind == "elementwise" and o.arity == 2 and n not in ("gather",))
INFIX = ("+", "-", "*", "/", "@")
WORDS = ("x", "y", "h", "w", "b", "out", "tmp", "model", "input", "relu", "split", "f", "_k9")

names_st = st.sampled_from(WORDS)
# Rare extremes: a literal past float's range, more digits than Python's int() takes.
HUGE = ("1" + "0" * 400, "9" * 5000, "99999999999999999999", "1e999", "0.0000000001e-320")
NUMBER_WEIGHTS = st.integers(0, 60)


def number(draw) -> str:
    """A numeric literal: an ordinary one, or rarely an extreme."""
    if draw(NUMBER_WEIGHTS):
        return draw(st.sampled_from(("0", "1", "2", "0.5", "1e-3", "3.", ".25", "7", "1e3")))
    return draw(st.sampled_from(HUGE))


# Sources that hit a known bug, reproducer in tests/fuzz_regressions/ -> pattern: the generator
# leaves them out, so the fuzz test keeps looking for new bugs; remove an entry once the bug is
# fixed (the reproducer's strict xfail then turns into a failure that says so).
KNOWN_BUGS: dict[str, re.Pattern] = {}  # none open (huge_float_literal, int_digits_* fixed)


def attr_value(draw, kind: str | None) -> str:
    """An attribute value in the language's syntax: usually of `kind`, sometimes not."""
    pick = draw(st.integers(0, 9))
    if pick == 9 or kind is None:
        kind = draw(st.sampled_from(("int", "float", "bool", "str", "ints", "floats")))
    if kind == "int":
        return str(draw(st.integers(-4, 4))) if draw(NUMBER_WEIGHTS) else number(draw)
    if kind == "float":
        return draw(st.sampled_from(("0.5", "-1.0", "1e-5", "2", "0.0", "-3")))
    if kind == "bool":
        return draw(st.sampled_from(("true", "false")))
    if kind == "str":
        return '"' + draw(st.sampled_from((*DTYPES, "none", "tanh", "edge", "reflect", "",
                                           "constant", "f64"))) + '"'
    items = [str(v) for v in draw(st.lists(st.integers(-3, 4), max_size=5))]
    if items and draw(st.integers(0, 19)) == 0:  # a tuple in a tuple, or an extreme
        items[-1] = draw(st.sampled_from(("(1, 2)", "()", number(draw))))
    return "(" + ", ".join(items) + ")"


class _Scope:
    """The tensor names and user functions (name, arity) an expression may use."""

    def __init__(self, names: list[str], funcs: list[tuple[str, int]]):
        self.names = names
        self.funcs = funcs


# Expression forms, repeated by weight; the first (a name) is where shrinking goes.
FORMS = ("name",) * 5 + ("number", "unary", "unary", "unary", "unary", "infix", "infix",
                         "infix", "infix", "neg", "paren", "binary", "binary", "function",
                         "function", "any_op")


def expr(draw, scope: _Scope, depth: int = 0) -> str:
    """An expression: mostly elementwise on same-shaped tensors, so that many type-check."""
    form = draw(st.sampled_from(FORMS)) if depth < 3 else "name"
    if form == "name" or not scope.names:
        return draw(st.sampled_from(scope.names)) if scope.names else number(draw)
    if form == "number":
        return number(draw)
    if form == "unary":
        return f"{draw(st.sampled_from(UNARY_FLOAT))}({expr(draw, scope, depth + 1)})"
    if form == "infix":
        op = draw(st.sampled_from(INFIX[:4] if draw(st.integers(0, 5)) else INFIX))
        return f"{expr(draw, scope, depth + 1)} {op} {expr(draw, scope, depth + 1)}"
    if form == "neg":
        return f"-{expr(draw, scope, depth + 1)}"
    if form == "paren":
        return f"({expr(draw, scope, depth + 1)})"
    if form == "binary":
        op = draw(st.sampled_from(BINARY))
        return f"{op}({expr(draw, scope, depth + 1)}, {expr(draw, scope, depth + 1)})"
    if form == "function" and scope.funcs:
        name, arity = draw(st.sampled_from(scope.funcs))
        n = arity if draw(st.integers(0, 7)) else draw(st.integers(0, 3))
        return f"{name}({', '.join(expr(draw, scope, depth + 1) for _ in range(n))})"
    # any registry op (or a misspelt one), any arguments, keyword attributes of any kind
    name = draw(st.sampled_from(OP_NAMES))
    op = ops.REGISTRY[name]
    lo = op.arity if isinstance(op.arity, int) else op.arity[0]
    n = lo if draw(st.integers(0, 5)) else draw(st.integers(0, 4))
    args = [expr(draw, scope, depth + 1) for _ in range(n)]
    for a in op.attrs:
        if a.required or draw(st.integers(0, 2)) == 0:
            args.append(f"{a.name}={attr_value(draw, a.kind)}")
    if draw(st.integers(0, 9)) == 0:
        args.append(f"{draw(names_st)}={attr_value(draw, None)}")
    if draw(st.integers(0, 19)) == 0:
        name = name[:-1] or "q"  # a misspelt op
    sep = ",\n        " if draw(st.integers(0, 5)) == 0 else ", "  # calls may span lines
    return f"{name}({sep.join(args)})"


def tensor_type(draw, shape: tuple[int, ...]) -> tuple[str, str]:
    """(the type as written, its dtype): mostly f32 of `shape`, sometimes anything."""
    dtype = "f32" if draw(st.integers(0, 9)) else draw(st.sampled_from((*DTYPES, "f64", "int")))
    dims = [str(d) for d in shape]
    if draw(st.integers(0, 19)) == 0:
        dims = [draw(st.sampled_from(("0", "-1", "N", "1", "3", "99999999999999", "2", *HUGE)))
                for _ in range(draw(st.integers(0, 3)))]
    return f"{dtype}[{', '.join(dims)}]", dtype


@st.composite
def programs(draw) -> tuple[str, dict[str, np.ndarray]]:
    """(source text, the arrays of w.npz)."""
    shape = tuple(draw(st.lists(st.sampled_from((2, 3, 4, 1)), min_size=1, max_size=3)))
    lines: list[str] = []
    weights: dict[str, np.ndarray] = {}
    funcs: list[tuple[str, int]] = []
    for k in range(draw(st.integers(0, 2))):
        params = [f"a{j}" for j in range(draw(st.integers(1, 3)))]
        scope = _Scope(list(params), list(funcs))
        lines.append(f"def f{k}({', '.join(params)}) {{")
        for j in range(draw(st.integers(0, 2))):
            lines.append(f"    v{j} = {expr(draw, scope)}")
            scope.names.append(f"v{j}")
        lines += [f"    return {expr(draw, scope)}", "}"]
        funcs.append((f"f{k}", len(params)))
    scope = _Scope([], funcs)
    body = []
    for k in range(draw(st.integers(1, 3))):
        body.append(f"input x{k}: {tensor_type(draw, shape)[0]}")
        scope.names.append(f"x{k}")
    if draw(st.integers(0, 3)) == 0:
        lines.insert(0, 'weights "w.npz"')
        for k in range(draw(st.integers(1, 2))):
            written, dtype = tensor_type(draw, shape)
            body.append(f"param p{k}: {written}")
            scope.names.append(f"p{k}")
            if draw(st.integers(0, 15)):  # else missing from the file
                data = np.linspace(-1, 1, int(np.prod(shape))).reshape(shape)
                weights[f"p{k}"] = data.astype(DTYPES.get(dtype, np.float64))
    for k in range(draw(st.integers(1, 5))):
        if draw(st.integers(0, 9)) == 0:
            axis = draw(st.integers(-2, 1))
            sizes = f", sizes={attr_value(draw, 'ints')}" if draw(st.booleans()) else ""
            body.append(f"s{k}, u{k} = split({draw(st.sampled_from(scope.names))}, "
                        f"axis={axis}{sizes})")
            scope.names += [f"s{k}", f"u{k}"]
        else:
            body.append(f"t{k} = {expr(draw, scope)}")
            scope.names.append(f"t{k}")
    for k in range(draw(st.integers(1, 2))):
        if draw(st.booleans()):
            body.append(f"output o{k} = {expr(draw, scope)}")
        else:
            body.append(f"output {draw(st.sampled_from(scope.names))}")
    comment = " # a comment, with (brackets) and = signs"
    lines += ["", "model m {", *[
        ("    " if draw(st.integers(0, 7)) else "\t") + line
        + (comment if draw(st.integers(0, 5)) == 0 else "") for line in body], "}"]
    if draw(st.integers(0, 4)) == 0:
        lines.insert(0, "# generated by tests/test_parser_fuzz.py")
    newline = "\r\n" if draw(st.integers(0, 9)) == 0 else "\n"
    return newline.join(lines) + newline, weights


def _check(path: Path, found_by: str, companions: dict[str, bytes]) -> str | None:
    problem = fz.check_cli(path)
    if problem and current_build_context().is_final:
        saved = fz.save_check_reproducer(path.read_bytes(), problem, found_by,
                                         companions=companions)
        problem += f"\nsaved as {saved}"
    return problem


@settings(max_examples=GENERATED, **SETTINGS)
@given(program=programs(), build=st.integers(0, 2))
def test_generated_program_checks_cleanly(tmp_path_factory, program, build):
    """A program from the grammar is accepted or rejected with a located error; a third of the
    accepted ones are compiled too, which must not fail."""
    text, weights = program
    assume(not any(p.search(text) for p in KNOWN_BUGS.values()))
    folder = tmp_path_factory.mktemp("gen")
    if weights:
        np.savez(folder / "w.npz", **weights)
    path = folder / "m.mlg"
    path.write_text(text)
    companions = {"w.npz": (folder / "w.npz").read_bytes()} if weights else {}
    problem = _check(path, "tests/test_parser_fuzz.py: generated program", companions)
    assert problem is None, f"{problem}\n--- source ---\n{text}"
    if build == 0 and _accepted(path):
        try:
            aotml.build(path, folder / "m.so")
        except Exception as e:  # checked fine, so building must not fail
            if current_build_context().is_final:
                fz.save_check_reproducer(path.read_bytes(), f"build: {e!r}",
                                         "tests/test_parser_fuzz.py: generated program",
                                         build=True, companions=companions)
            raise AssertionError(f"build failed after a clean check: {e!r}\n{text}") from e


def _accepted(path: Path) -> bool:
    """Whether `aotml check` accepts the file (exit 0), quietly."""
    from aotml.driver import frontend

    try:
        frontend(path)
    except aotml.CompileError:
        return False
    return True


# ---------------------------------------------------------------------------------------------
# Mutated corpus files

CORPUS = sorted((REPO / "examples").glob("*.mlg")) + sorted((REPO / "tests/errors").glob("*.mlg"))
DIRECTIVE = re.compile(r"^# (npz|npy|garbage): (\S+)(.*)$", re.M)
ARRAY = re.compile(r"(\w+)=(f32|f64)\[([\d,\s]*)\]")
TOKENS = (
    # punctuation and layout of the grammar
    b"(", b")", b"{", b"}", b"[", b"]", b",", b"=", b"-", b"+", b"@", b"*", b"/", b"#", b'"',
    b":", b"\n", b"\r\n", b"\r", b"\t", b" ", b"\\",
    # bytes and characters a lexer may trip on: NUL, invalid UTF-8, BOM, zero-width and no-break
    # spaces, line separators that str.splitlines() knows and the grammar does not, an emoji
    b"\x00", b"\xff", b"\xc3\x28", b"\xef\xbb\xbf", b"\xe2\x80\x8b", b"\xc2\xa0", b"\x0b",
    b"\x0c", b"\x1c", b"\xc2\x85", b"\xe2\x80\xa8", b"\xf0\x9f\x98\x80",
    # numbers at the edges
    b"1e999", b"-0", b"0.", b".5", b"99999999999999999999", b"1e-999",
    # keywords, dtypes, ops, attributes
    b"model", b"input", b"output", b"param", b"def", b"return", b"weights", b"f16", b"bf16",
    b"bool", b"i64", b"split", b"axis=", b"true", b"x", b"relu(",
)


@pytest.fixture(scope="module")
def staging(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("mutants")


def stage(root: Path, src: Path) -> Path:
    """A folder under `root` for mutants of `src`, holding the files its directives (or, for
    an example, its weights) name; made once."""
    folder = root / src.stem
    if folder.exists():
        return folder
    folder.mkdir()
    if src.parent.name == "examples":
        for npz in src.parent.glob("*.npz"):
            shutil.copy(npz, folder / npz.name)
    for kind, name, rest in DIRECTIVE.findall(src.read_text()):
        if kind == "garbage":
            (folder / name).write_bytes(b"not an archive\x00\xff" * 4)
        elif kind == "npz":
            np.savez(folder / name, **{
                k: np.ones([int(d) for d in dims.split(",") if d.strip()],
                           np.float32 if dt == "f32" else np.float64)
                for k, dt, dims in ARRAY.findall(rest)})
        else:  # npy: FILE f32[3]
            np.save(folder / name, np.ones(3, np.float32))
    return folder


mutations = st.tuples(st.integers(0, 6), st.integers(0, 10**6), st.integers(0, 255),
                      st.sampled_from(TOKENS))


def mutate(data: bytes, steps) -> bytes:
    """Apply (kind, position, byte, token) edits: flip, set, insert, delete, duplicate,
    truncate, swap lines."""
    for kind, pos, byte, token in steps:
        at = pos % (len(data) + 1)
        if kind == 0 and data:  # flip one bit
            at %= len(data)
            data = data[:at] + bytes([data[at] ^ (1 << (byte % 8))]) + data[at + 1:]
        elif kind == 1 and data:  # set a byte
            at %= len(data)
            data = data[:at] + bytes([byte]) + data[at + 1:]
        elif kind == 2:  # insert a token
            data = data[:at] + token + data[at:]
        elif kind == 3:  # delete a run
            data = data[:at] + data[at + 1 + byte % 8:]
        elif kind == 4:  # duplicate a run elsewhere
            run = data[at:at + 1 + byte % 24]
            to = (pos * 7 + byte) % (len(data) + 1)
            data = data[:to] + run + data[to:]
        elif kind == 5:  # truncate
            data = data[:at]
        else:  # swap two lines
            lines = data.split(b"\n")
            i, j = at % len(lines), (at + byte) % len(lines)
            lines[i], lines[j] = lines[j], lines[i]
            data = b"\n".join(lines)
    return data


@settings(max_examples=MUTANTS, **SETTINGS)
@given(name=st.sampled_from([p.name for p in CORPUS]),
       steps=st.lists(mutations, min_size=1, max_size=4))
def test_mutated_file_checks_cleanly(staging, name, steps):
    """A corpus file with a few bytes changed is accepted or rejected with a located error."""
    src = next(p for p in CORPUS if p.name == name)
    folder = stage(staging, src)
    path = folder / f"mutant_{src.stem}.mlg"
    data = mutate(src.read_bytes(), steps)
    path.write_bytes(data)
    companions = {p.name: p.read_bytes() for p in folder.iterdir()  # those it names
                  if p.is_file() and p.suffix != ".mlg" and p.name.encode() in data}
    problem = _check(path, f"tests/test_parser_fuzz.py: {name} mutated by {steps}", companions)
    assert problem is None, f"{problem}\n--- bytes ---\n{data!r}"


def test_mutations_apply():
    """The mutator edits bytes as documented (and can produce undecodable files)."""
    assert mutate(b"abc", [(2, 1, 0, b"\xff")]) == b"a\xffbc"
    assert mutate(b"abc", [(3, 0, 1, b"")]) == b"c"
    assert mutate(b"abc", [(5, 2, 0, b"")]) == b"ab"
    assert mutate(b"a\nb", [(6, 0, 1, b"")]) == b"b\na"
