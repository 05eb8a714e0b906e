"""Every diagnostic in tests/errors/: `aotml check` reports it at the right place, without a trace.

Each corpus file holds one error. Its leading comment lines say what to expect:

    # expect: LINE:COL: SUBSTRING          the caret's place and part of the message (required)
    # hint: TEXT                           a `hint:` line holding TEXT (none printed if absent)
    # note: TEXT                           a `note:` line holding TEXT; {path} is the file's path
    # npz: FILE NAME=f32[2,3] NAME=f64[4]  an .npz beside the source with random arrays
    # npy: FILE f32[3]                     a bare .npy beside the source (not an archive)
    # garbage: FILE                        a file of bytes that no numpy loader accepts

Each case is copied alone into a temporary folder, its weights written there, and checked.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from aotml.cli import main

REPO = Path(__file__).resolve().parent.parent
CORPUS = Path(__file__).resolve().parent / "errors"
CORPUS_FILES = sorted(CORPUS.glob("*.mlg"))

DIRECTIVE = re.compile(r"^# (expect|hint|note|npz|npy|garbage): (.*)$")
EXPECT = re.compile(r"^(\d+):(\d+): (.+)$")
ARRAY = re.compile(r"^(f32|f64)\[(\d+(?:,\d+)*)\]$")
NP_DTYPES = {"f32": np.float32, "f64": np.float64}

# Cases run through a real `python -m aotml check` subprocess; the rest run in-process.
SUBPROCESS_CASES = {
    "syntax_unexpected_token", "unknown_op", "matmul_inner_mismatch", "name_defined_twice",
    "weights_wrong_dtype", "weights_is_npy",
}

# Known bugs in aotml, case name -> reason: run as strict xfails. None is open now.
KNOWN_BUGS: dict[str, str] = {}


@dataclass
class Case:
    """What one corpus file expects, and the files it needs beside it."""

    path: Path
    line: int
    col: int
    message: str
    hints: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    npz: list[tuple[str, dict[str, tuple[str, tuple[int, ...]]]]] = field(default_factory=list)
    npy: list[tuple[str, tuple[str, tuple[int, ...]]]] = field(default_factory=list)
    garbage: list[str] = field(default_factory=list)


def _array_spec(text: str) -> tuple[str, tuple[int, ...]]:
    m = ARRAY.match(text.replace(" ", ""))
    if not m:
        raise ValueError(f"bad array spec {text!r}")
    return m.group(1), tuple(int(d) for d in m.group(2).split(","))


def parse_case(path: Path) -> Case:
    """Read the directives of one corpus file; raises ValueError if they are malformed."""
    expects, fields = [], {"hint": [], "note": [], "npz": [], "npy": [], "garbage": []}
    for line in path.read_text().splitlines():
        if not line.startswith("# "):
            continue
        m = DIRECTIVE.match(line)
        if m is None:
            if re.match(r"^# [\w-]+:", line):
                raise ValueError(f"{path.name}: unknown directive {line!r}")
            continue
        key, value = m.groups()
        if key == "expect":
            expects.append(value)
        elif key == "npz":
            file, *items = value.split()
            arrays = {}
            for item in items:
                name, _, spec = item.partition("=")
                arrays[name] = _array_spec(spec)
            fields["npz"].append((file, arrays))
        elif key == "npy":
            file, spec = value.split(maxsplit=1)
            fields["npy"].append((file, _array_spec(spec)))
        else:
            fields[key].append(value.strip())
    if len(expects) != 1:
        raise ValueError(f"{path.name}: needs exactly one '# expect:' line, has {len(expects)}")
    m = EXPECT.match(expects[0])
    if m is None:
        raise ValueError(f"{path.name}: '# expect:' must read LINE:COL: SUBSTRING")
    return Case(path, int(m.group(1)), int(m.group(2)), m.group(3), fields["hint"],
                fields["note"], fields["npz"], fields["npy"], fields["garbage"])


def materialize(case: Case, folder: Path) -> Path:
    """Copy the case alone into `folder` with the weights files it names; return its path."""
    rng = np.random.default_rng(sum(map(ord, case.path.name)))

    def array(spec):
        dtype, shape = spec
        return rng.standard_normal(shape).astype(NP_DTYPES[dtype])

    src = folder / case.path.name
    shutil.copyfile(case.path, src)
    for file, arrays in case.npz:
        np.savez(folder / file, **{name: array(spec) for name, spec in arrays.items()})
    for file, spec in case.npy:
        with open(folder / file, "wb") as f:  # np.save(path) would append '.npy' to the name
            np.save(f, array(spec))
    for file in case.garbage:
        (folder / file).write_bytes(b"\x00\x01 this is not a numpy file \xff\xfe" * 8)
    return src


def check_diagnostic(case: Case, src: Path, stderr: str) -> None:
    """Assert stderr is exactly the located diagnostic the case expects."""
    assert "Traceback" not in stderr
    assert "internal compiler error" not in stderr
    lines = stderr.rstrip("\n").split("\n")
    assert len(lines) >= 3, stderr
    head = re.match(re.escape(str(src)) + r":(\d+):(\d+): error: (.*)$", lines[0])
    assert head is not None, f"first line is not 'FILE:LINE:COL: error: ...': {lines[0]!r}"
    assert (int(head.group(1)), int(head.group(2))) == (case.line, case.col), lines[0]
    assert case.message in head.group(3)

    source_lines = src.read_text().splitlines()
    quoted = source_lines[case.line - 1] if case.line <= len(source_lines) else ""
    assert lines[1] == "    " + quoted
    caret = lines[2]
    assert caret.startswith("    ")
    assert re.fullmatch(r"[ \t]*\^~*", caret[4:]), f"not a caret line: {caret!r}"
    assert caret[4:].index("^") == case.col - 1, f"caret not at column {case.col}: {caret!r}"
    # The padding mirrors the quoted line's tabs, so the caret lines up on screen too.
    assert caret[4:4 + case.col - 1] == "".join(
        c if c == "\t" else " " for c in quoted[:case.col - 1]).ljust(case.col - 1)

    rest = lines[3:]
    notes = [line[len("note: "):] for line in rest if line.startswith("note: ")]
    hints = [line[len("hint: "):] for line in rest if line.startswith("hint: ")]
    assert len(notes) + len(hints) == len(rest), f"unexpected trailing lines: {rest}"
    expected_notes = [n.replace("{path}", str(src)) for n in case.notes]
    assert len(notes) == len(expected_notes), notes
    for want, got in zip(expected_notes, notes):
        assert want in got
    assert len(hints) == len(case.hints), hints
    for want, got in zip(case.hints, hints):
        assert want in got


def _python_m_aotml_check(src: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    return subprocess.run([sys.executable, "-m", "aotml", "check", str(src)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def _params(names):
    out = []
    for path in CORPUS_FILES:
        if path.stem not in names:
            continue
        marks = []
        if path.stem in KNOWN_BUGS:
            marks.append(pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[path.stem]))
        out.append(pytest.param(path, id=path.stem, marks=marks))
    return out


ALL_NAMES = {p.stem for p in CORPUS_FILES}


@pytest.mark.parametrize("path", _params(ALL_NAMES - SUBPROCESS_CASES))
def test_diagnostic_in_process(path, tmp_path, capsys):
    """`aotml check` (in-process) exits 1 with the located diagnostic the file expects."""
    case = parse_case(path)
    src = materialize(case, tmp_path)
    rc = main(["check", str(src)])
    out, err = capsys.readouterr()
    assert rc == 1
    assert out == ""
    check_diagnostic(case, src, err)


@pytest.mark.parametrize("path", _params(SUBPROCESS_CASES))
def test_diagnostic_subprocess(path, tmp_path):
    """`python -m aotml check` exits 1 with the located diagnostic the file expects."""
    case = parse_case(path)
    src = materialize(case, tmp_path)
    proc = _python_m_aotml_check(src)
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == ""
    check_diagnostic(case, src, proc.stderr)


def test_corpus_is_complete():
    """Every corpus file has one well-formed `# expect:` line and its line exists in the file."""
    assert CORPUS_FILES, f"no .mlg files in {CORPUS}"
    assert not [p.name for p in CORPUS.iterdir() if p.suffix != ".mlg"], "stray files in corpus"
    for path in CORPUS_FILES:
        case = parse_case(path)  # raises on a missing or malformed expect line
        assert 1 <= case.line <= len(path.read_text().splitlines()), path.name
        assert case.col >= 1, path.name
    assert SUBPROCESS_CASES <= ALL_NAMES
    assert set(KNOWN_BUGS) <= ALL_NAMES


def test_corpus_reader_rejects_bad_cases(tmp_path):
    """The corpus reader refuses a file without an expect line, or with a misspelled directive."""
    bare = tmp_path / "bare.mlg"
    bare.write_text("model m {\n}\n")
    with pytest.raises(ValueError, match="exactly one"):
        parse_case(bare)
    typo = tmp_path / "typo.mlg"
    typo.write_text("# expect: 1:1: x\n# hnit: y\n")
    with pytest.raises(ValueError, match="unknown directive"):
        parse_case(typo)


def test_check_accepts_a_valid_model(tmp_path, capsys):
    """Control: a correct model with weights passes `check` (so the corpus errors are real)."""
    np.savez(tmp_path / "w.npz", b=np.zeros(3, np.float32))
    src = tmp_path / "ok.mlg"
    src.write_text('weights "w.npz"\nmodel m {\n    input x: f32[2, 3]\n    param b: f32[3]\n'
                   "    output y = softmax(x + b, axis=1)\n}\n")
    assert main(["check", str(src)]) == 0
    out, err = capsys.readouterr()
    assert out == "model m(x: f32[2, 3]) -> (y: f32[2, 3])\n"
    assert err == ""


def test_long_expression_compiles(tmp_path, capsys):
    """A 500-term sum is checked like any other expression (no RecursionError)."""
    src = tmp_path / "long.mlg"
    src.write_text("model m {\n    input x: f32[3]\n    output y = "
                   + " + ".join(["x"] * 500) + "\n}\n")
    assert main(["check", str(src)]) == 0
    out, err = capsys.readouterr()
    assert (out, err) == ("model m(x: f32[3]) -> (y: f32[3])\n", "")


def test_absurdly_long_expression_is_a_user_error(tmp_path):
    """A 30000-term sum is refused with a diagnostic (exit 1), not a crash or a traceback."""
    src = tmp_path / "huge_sum.mlg"
    src.write_text("model m {\n    input x: f32[3]\n    output y = "
                   + " + ".join(["x"] * 30000) + "\n}\n")
    proc = _python_m_aotml_check(src)
    assert "Traceback" not in proc.stderr
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert proc.stderr.startswith(f"{src}:")
    assert "error: expression is nested too deeply" in proc.stderr.split("\n")[0]
