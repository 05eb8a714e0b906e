"""The C ABI as a C program sees it: real programs compiled with `cc`, linked to a built model.

Programs are compiled with -Wall -Werror and run on inputs generated here; what they print or
write is checked against the manifest, the header, the numpy reference interpreter, or the exact
status code and message the runtime gives for a bad argument.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import aotml
from conftest import ABI_MODEL_SOURCE, rand

CC = shutil.which("cc")
pytestmark = pytest.mark.skipif(CC is None, reason="no C compiler 'cc' on PATH")

RTOL = 1e-5
ATOL = 1e-6

SOURCE_M = ABI_MODEL_SOURCE  # see conftest.py: its byte sizes and workspace

# Shared by the C programs: reading and writing raw float32 files, a fatal exit.
C_IO = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void die(const char *what) {
    fprintf(stderr, "fatal: %s\n", what);
    exit(3);
}

__attribute__((unused)) static void read_f32(const char *path, float *dst, size_t n) {
    FILE *f = fopen(path, "rb");
    if (!f) die(path);
    if (fread(dst, sizeof(float), n, f) != n) die(path);
    if (fgetc(f) != EOF) die("input file longer than the tensor");
    fclose(f);
}

__attribute__((unused)) static void write_f32(const char *path, const float *src, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(src, sizeof(float), n, f) != n) die(path);
    fclose(f);
}
"""


# ---------------------------------------------------------------------------------------------
# helpers


def _build(folder: Path, source: str, name: str, weights: dict | None = None) -> SimpleNamespace:
    """Build `source` into folder/<name>.so and .h; returns paths and the loaded model."""
    folder.mkdir(parents=True, exist_ok=True)
    if weights is not None:
        np.savez(folder / "weights.npz", **weights)
    src = folder / f"{name}.mlg"
    src.write_text(source)
    so = Path(aotml.build(src, folder / f"{name}.so"))
    header = so.with_suffix(".h")
    assert header.is_file(), f"no header beside {so}"
    return SimpleNamespace(dir=folder, so=so, header=header, src=src, model=aotml.load(so))


def _element_macros(lib) -> dict[str, tuple[str, int]]:
    """tensor name -> (its `<NAME>_..._ELEMENTS` macro, value), read from the model's header."""
    found = {}
    pattern = r"^#define (\w+_ELEMENTS) (\d+)u\s+/\* (\w+): f32\["
    for macro, value, tensor in re.findall(pattern, lib.header.read_text(), re.M):
        assert tensor not in found, f"two macros for tensor {tensor}"
        found[tensor] = (macro, int(value))
    return found


def _compile(folder: Path, code: str, libs, name: str = "prog", flags=()) -> Path:
    """Compile `code` against the headers and libraries `libs` (built models); returns the exe.

    The program names element counts `N_<model>_<tensor>`: each is defined here as the header's
    own macro for that tensor (so a missing macro fails to compile)."""
    shim = [f"#define N_{lib.model.name}_{tensor} {macro}"
            for lib in libs for tensor, (macro, _) in _element_macros(lib).items()]
    c_file = folder / f"{name}.c"
    c_file.write_text("\n".join(shim) + "\n" + code)
    exe = folder / name
    cmd = [CC, "-std=c11", "-O1", "-Wall", "-Werror", *flags]
    cmd += [f"-I{lib.dir}" for lib in libs]
    cmd += [str(c_file), *(str(lib.so) for lib in libs)]
    cmd += [f"-Wl,-rpath,{lib.dir}" for lib in libs]
    cmd += ["-lpthread", "-lm", "-o", str(exe)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stderr}"
    return exe


def _run(exe: Path, *args) -> str:
    """Run a compiled program; it must exit 0. Returns its stdout."""
    proc = subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, (f"{exe.name} exited {proc.returncode}:\n"
                                  f"{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def _read_f32(path: Path, shape) -> np.ndarray:
    data = np.fromfile(path, dtype=np.float32)
    assert data.size == int(np.prod(shape)), f"{path} holds {data.size} floats"
    return data.reshape(shape)


def _check_against_reference(src: Path, inputs: dict, got: dict) -> None:
    ref = aotml.interpret(src, **inputs)
    assert set(ref) == set(got)
    for name, want in ref.items():
        np.testing.assert_allclose(got[name], want, rtol=RTOL, atol=ATOL, err_msg=name)


@pytest.fixture(scope="module")
def model_m(tmp_path_factory):
    """The two-input, two-output model `m` with a weight and a workspace."""
    rng = np.random.default_rng(1234)
    built = _build(tmp_path_factory.mktemp("m"), SOURCE_M, "m",
                   weights={"w": rand(rng, (7, 7), -1.0, 1.0)})
    assert built.model.workspace_bytes > 0
    return built


# ---------------------------------------------------------------------------------------------
# the typed entry on real inputs

TYPED_PROGRAM = C_IO + r"""
#include "m.h"

/* argv: x.bin y.bin s.bin t.bin. The outputs start as NaN so an unwritten element shows. */
int main(int argc, char **argv) {
    static float x[N_m_x], y[N_m_y], s[N_m_s], t[N_m_t];
    if (argc != 5) die("usage");
    read_f32(argv[1], x, N_m_x);
    read_f32(argv[2], y, N_m_y);
    memset(s, 0xff, sizeof s);
    memset(t, 0xff, sizeof t);
    void *ws = aligned_alloc(64, (M_WORKSPACE_BYTES + 63) / 64 * 64);
    if (!ws) die("aligned_alloc");
    int rc = m_run(x, y, s, t, ws);
    if (rc != AOTML_OK) {
        fprintf(stderr, "m_run: %d %s\n", rc, m_last_error());
        return 2;
    }
    if (m_last_error()[0] != '\0') die("last_error not empty after success");
    write_f32(argv[3], s, N_m_s);
    write_f32(argv[4], t, N_m_t);
    free(ws);
    return 0;
}
"""


def test_typed_entry_matches_interpreter(model_m, tmp_path):
    """`m_run` from C on fresh random inputs gives the reference interpreter's outputs."""
    exe = _compile(tmp_path, TYPED_PROGRAM, [model_m])
    for seed in (7, 8, 9):
        _run_and_check(exe, model_m, tmp_path, seed)


MISALIGNED_PROGRAM = C_IO + r"""
#include "m.h"

/* Every buffer 4 bytes past a 64-byte boundary: the ABI recommends alignment, not requires it.
 * argv: x.bin y.bin s.bin t.bin */
int main(int argc, char **argv) {
    if (argc != 5) die("usage");
    char *block = aligned_alloc(64, 4096 + M_WORKSPACE_BYTES);
    if (!block) die("aligned_alloc");
    memset(block, 0xff, 4096 + M_WORKSPACE_BYTES);
    float *x = (float *)(block + 4), *y = (float *)(block + 516), *s = (float *)(block + 1028);
    float *t = (float *)(block + 1540);
    void *ws = block + 2052;
    read_f32(argv[1], x, N_m_x);
    read_f32(argv[2], y, N_m_y);
    int rc = m_run(x, y, s, t, ws);
    if (rc != AOTML_OK) {
        fprintf(stderr, "m_run: %d %s\n", rc, m_last_error());
        return 2;
    }
    write_f32(argv[3], s, N_m_s);
    write_f32(argv[4], t, N_m_t);
    return 0;
}
"""


def test_typed_entry_with_misaligned_buffers(model_m, tmp_path):
    """Inputs, outputs and workspace off any vector alignment still give correct results."""
    exe = _compile(tmp_path, MISALIGNED_PROGRAM, [model_m])
    _run_and_check(exe, model_m, tmp_path, seed=21)


def _run_and_check(exe, model_m, tmp_path, seed: int) -> None:
    """Run a program taking x.bin y.bin s.bin t.bin on fresh inputs; check s and t."""
    rng = np.random.default_rng(seed)
    inputs = {"x": rand(rng, (3, 7)), "y": rand(rng, (7,))}
    for name, a in inputs.items():
        a.tofile(tmp_path / f"{name}.bin")
    _run(exe, *(tmp_path / f for f in ("x.bin", "y.bin", "s.bin", "t.bin")))
    got = {"s": _read_f32(tmp_path / "s.bin", (3, 7)), "t": _read_f32(tmp_path / "t.bin", (7,))}
    _check_against_reference(model_m.src, inputs, got)


# ---------------------------------------------------------------------------------------------
# argument checks: one program tries every bad call and prints `label|status|message|untouched`

CHECKS_PROGRAM = r"""
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "m.h"

static float x[N_m_x], y[N_m_y], s[N_m_s], t[N_m_t];
static float s_ok[N_m_s], t_ok[N_m_t];
static const aotml_model *m;

/* Outputs start as a sentinel before every call; `untouched` says whether a call left them. */
static void reset(void) {
    memset(s, 0xab, sizeof s);
    memset(t, 0xab, sizeof t);
}

static int untouched(void) {
    unsigned char ref[sizeof s];
    memset(ref, 0xab, sizeof ref);
    return memcmp(s, ref, sizeof s) == 0 && memcmp(t, ref, sizeof t) == 0;
}

static void report(const char *label, int rc, const char *typed_error) {
    const char *err = m->last_error();
    /* the typed entry's last_error and the model's must be one message */
    if (strcmp(err, typed_error) != 0) printf("%s|mismatch|%s|%s\n", label, err, typed_error);
    printf("%s|%d|%s|%d\n", label, rc, err, untouched());
}

#define GENERIC(label, ...) do { reset(); int rc_ = m->run(NULL, __VA_ARGS__); \
                                 report(label, rc_, m_last_error()); } while (0)
#define TYPED(label, ...) do { reset(); int rc_ = m_run(__VA_ARGS__); \
                               report(label, rc_, m_last_error()); } while (0)

int main(void) {
    m = m_model();
    for (unsigned i = 0; i < N_m_x; i++) x[i] = sinf((float)i * 0.7f) * 1.5f;
    for (unsigned i = 0; i < N_m_y; i++) y[i] = cosf((float)i * 1.3f) - 0.2f;

    const uint64_t wsb = M_WORKSPACE_BYTES;
    /* the workspace block has room for one output right after the workspace */
    char *block = aligned_alloc(64, (wsb + sizeof t + 63) / 64 * 64);
    void *ws = block;
    const void *ins[2] = {x, y};
    void *outs[2] = {s, t};
    uint64_t in_b[2] = {sizeof x, sizeof y};
    uint64_t out_b[2] = {sizeof s, sizeof t};

    /* the reference result: typed entry, caller's workspace */
    if (m_run(x, y, s_ok, t_ok, ws) != AOTML_OK) return 2;

    const void *ins_null1[2] = {x, NULL};
    void *outs_null0[2] = {NULL, t};
    uint64_t in_b_bad[2] = {sizeof x, sizeof y - 4};
    uint64_t out_b_bad[2] = {sizeof s + 4, sizeof t};

    GENERIC("null_inputs", NULL, in_b, 2, outs, out_b, 2, ws, wsb);
    GENERIC("null_input_ptr", ins_null1, in_b, 2, outs, out_b, 2, ws, wsb);
    GENERIC("null_input_bytes", ins, NULL, 2, outs, out_b, 2, ws, wsb);
    GENERIC("null_outputs", ins, in_b, 2, NULL, out_b, 2, ws, wsb);
    GENERIC("null_output_ptr", ins, in_b, 2, outs_null0, out_b, 2, ws, wsb);
    GENERIC("null_output_bytes", ins, in_b, 2, outs, NULL, 2, ws, wsb);
    GENERIC("few_inputs", ins, in_b, 1, outs, out_b, 2, ws, wsb);
    GENERIC("many_inputs", ins, in_b, 3, outs, out_b, 2, ws, wsb);
    GENERIC("few_outputs", ins, in_b, 2, outs, out_b, 1, ws, wsb);
    GENERIC("many_outputs", ins, in_b, 2, outs, out_b, 3, ws, wsb);
    GENERIC("input_size", ins, in_b_bad, 2, outs, out_b, 2, ws, wsb);
    GENERIC("output_size", ins, in_b, 2, outs, out_b_bad, 2, ws, wsb);
    GENERIC("workspace_small", ins, in_b, 2, outs, out_b, 2, ws, wsb - 1);
    GENERIC("workspace_null", ins, in_b, 2, outs, out_b, 2, NULL, wsb);

    void *outs_on_x[2] = {x, t};                        /* s is exactly x */
    void *outs_on_x_tail[2] = {s, x + N_m_x - 1}; /* t shares x's last float */
    void *outs_on_s[2] = {s, s + 3};                     /* t inside s */
    void *outs_on_ws[2] = {s, ws};
    void *outs_on_ws_tail[2] = {s, block + wsb - 4};    /* t shares the workspace's last 4 bytes */
    GENERIC("overlap_input", ins, in_b, 2, outs_on_x, out_b, 2, ws, wsb);
    GENERIC("overlap_input_tail", ins, in_b, 2, outs_on_x_tail, out_b, 2, ws, wsb);
    GENERIC("overlap_output", ins, in_b, 2, outs_on_s, out_b, 2, ws, wsb);
    GENERIC("overlap_workspace", ins, in_b, 2, outs_on_ws, out_b, 2, ws, wsb);
    GENERIC("overlap_workspace_tail", ins, in_b, 2, outs_on_ws_tail, out_b, 2, ws, wsb);

    /* typed entry: never allocates, checks its pointers and overlaps too */
    TYPED("typed_null_workspace", x, y, s, t, NULL);
    TYPED("typed_null_input", NULL, y, s, t, ws);
    TYPED("typed_null_output", x, y, s, NULL, ws);
    TYPED("typed_overlap", x, y, s, (float *)x, ws);

    /* successful generic calls: own workspace, and an output right after the workspace */
    GENERIC("before_ok", ins, in_b, 1, outs, out_b, 2, ws, wsb);
    GENERIC("generic_alloc", ins, in_b, 2, outs, out_b, 2, NULL, 0);
    printf("generic_alloc_same|%d\n",
           memcmp(s, s_ok, sizeof s) == 0 && memcmp(t, t_ok, sizeof t) == 0);
    GENERIC("generic_own_ws", ins, in_b, 2, outs, out_b, 2, ws, wsb);
    printf("generic_own_ws_same|%d\n",
           memcmp(s, s_ok, sizeof s) == 0 && memcmp(t, t_ok, sizeof t) == 0);
    float *t_after = (float *)(block + wsb);
    void *outs_adjacent[2] = {s, t_after};
    reset();
    int rc = m->run(NULL, ins, in_b, 2, outs_adjacent, out_b, 2, ws, wsb);
    printf("adjacent_ok|%d|%s|%d\n", rc, m->last_error(),
           memcmp(s, s_ok, sizeof s) == 0 && memcmp(t_after, t_ok, sizeof t) == 0);
    /* inputs may alias one another: y read through x's first floats */
    const void *ins_alias[2] = {x, x};
    uint64_t in_b_alias[2] = {sizeof x, sizeof y};
    GENERIC("inputs_alias", ins_alias, in_b_alias, 2, outs, out_b, 2, ws, wsb);
    free(block);
    return 0;
}
"""

# label -> (status, fragment of the message)
ERROR_CASES = {
    "null_inputs": (1, "the input pointer array is NULL"),
    "null_input_ptr": (1, "input 1 ('y') is NULL"),
    "null_input_bytes": (1, "the input byte-size array is NULL"),
    "null_outputs": (1, "the output pointer array is NULL"),
    "null_output_ptr": (1, "output 0 ('s') is NULL"),
    "null_output_bytes": (1, "the output byte-size array is NULL"),
    "few_inputs": (2, "expected 2 inputs, got 1"),
    "many_inputs": (2, "expected 2 inputs, got 3"),
    "few_outputs": (2, "expected 2 outputs, got 1"),
    "many_outputs": (2, "expected 2 outputs, got 3"),
    "input_size": (3, "input 1 ('y') has 24 bytes, expected 28"),
    "output_size": (3, "output 0 ('s') has 88 bytes, expected 84"),
    "workspace_small": (4, "workspace has {wsm1} bytes, the model needs {ws}"),
    "workspace_null": (1, "workspace is NULL (it needs {ws} bytes)"),
    "overlap_input": (5, "output 's' overlaps input 'x'"),
    "overlap_input_tail": (5, "output 't' overlaps input 'x'"),
    "overlap_output": (5, "output 't' overlaps output 's'"),
    "overlap_workspace": (5, "output 't' overlaps the workspace"),
    "overlap_workspace_tail": (5, "output 't' overlaps the workspace"),
    "typed_null_workspace": (1, "workspace is NULL (it needs {ws} bytes)"),
    "typed_null_input": (1, "input 0 ('x') is NULL"),
    "typed_null_output": (1, "output 1 ('t') is NULL"),
    "typed_overlap": (5, "output 't' overlaps input 'x'"),
}


@pytest.fixture(scope="module")
def checks(model_m, tmp_path_factory):
    """Runs the argument-check program once; returns {label: [fields...]}."""
    exe = _compile(tmp_path_factory.mktemp("checks"), CHECKS_PROGRAM, [model_m])
    rows = {}
    for line in _run(exe).splitlines():
        label, *fields = line.split("|")
        assert label not in rows, f"label {label} printed twice"
        rows[label] = fields
    return rows


@pytest.mark.parametrize("label", sorted(ERROR_CASES))
def test_bad_call_returns_status_and_message(checks, model_m, label):
    """Each bad argument gets its exact status, a message naming it, and no output is written."""
    status, fragment = ERROR_CASES[label]
    ws = model_m.model.workspace_bytes
    fragment = fragment.format(ws=ws, wsm1=ws - 1)
    assert label in checks, f"the program printed no line for {label}"
    rc, message, untouched = checks[label]
    assert int(rc) == status, f"{label}: status {rc} ({message!r}), expected {status}"
    assert fragment in message, f"{label}: {message!r} does not contain {fragment!r}"
    assert untouched == "1", f"{label}: a failed call wrote the outputs"


def test_error_statuses_match_header(model_m):
    """The status numbers used above are the ones aotml.h declares."""
    header = model_m.header.read_text()
    for name, value in [("AOTML_OK", 0), ("AOTML_ERR_NULL_POINTER", 1), ("AOTML_ERR_ARG_COUNT", 2),
                        ("AOTML_ERR_ARG_SIZE", 3), ("AOTML_ERR_WORKSPACE", 4),
                        ("AOTML_ERR_OVERLAP", 5), ("AOTML_ERR_DEVICE", 9)]:
        assert re.search(rf"\b{name} = {value}\b", header), name


def test_message_functions_agree(checks):
    """`m_last_error()` and `m_model()->last_error()` return the same message on every call."""
    assert not any(fields[0] == "mismatch" for fields in checks.values()), checks


def test_generic_entry_allocates_own_workspace(checks):
    """Workspace NULL with 0 bytes: the generic entry allocates one, succeeds, and clears the
    error left by the failed call before it."""
    rc, before, _ = checks["before_ok"]
    assert int(rc) == 2 and before != ""
    rc, message, untouched = checks["generic_alloc"]
    assert (int(rc), message, untouched) == (0, "", "0")
    assert checks["generic_alloc_same"] == ["1"]


def test_generic_entry_with_caller_workspace(checks):
    """The generic entry with the caller's workspace gives the typed entry's result exactly."""
    rc, message, _ = checks["generic_own_ws"]
    assert (int(rc), message) == (0, "")
    assert checks["generic_own_ws_same"] == ["1"]


def test_output_adjacent_to_workspace_is_not_overlap(checks):
    """An output that starts at the byte after the workspace's end is accepted and correct."""
    assert checks["adjacent_ok"] == ["0", "", "1"]


def test_inputs_may_alias_each_other(checks):
    """Two inputs sharing memory are allowed (only outputs may not overlap)."""
    rc, message, untouched = checks["inputs_alias"]
    assert (int(rc), message, untouched) == (0, "", "0")


# ---------------------------------------------------------------------------------------------
# the manifest, read from C

MANIFEST_PROGRAM = r"""
#include <stdio.h>
#include "m.h"

/* for loaders that dlopen the library; no header declares it */
const aotml_model *aotml_model_v1(void);

static void tensor(const char *kind, const aotml_tensor_info *t) {
    printf("%s %s %d %d", kind, t->name, (int)t->dtype, (int)t->rank);
    for (int k = 0; k < t->rank; k++) printf(" %lld", (long long)t->shape[k]);
    printf(" bytes %llu\n", (unsigned long long)t->bytes);
}

int main(void) {
    const aotml_model *m = m_model();
    printf("abi %u %d\n", m->abi_version, AOTML_ABI_VERSION);
    printf("profile %s\n", m->profile ? "set" : "NULL");
    printf("name %s\n", m->name);
    printf("version %s\n", m->aotml_version);
    printf("hash %s\n", m->build_hash);
    printf("counts %u %u\n", m->n_inputs, m->n_outputs);
    for (uint32_t i = 0; i < m->n_inputs; i++) tensor("input", &m->inputs[i]);
    for (uint32_t i = 0; i < m->n_outputs; i++) tensor("output", &m->outputs[i]);
    printf("workspace %llu %llu\n", (unsigned long long)m->workspace_bytes,
           (unsigned long long)M_WORKSPACE_BYTES);
    printf("weights %llu\n", (unsigned long long)m->weights_bytes);
    printf("elements %u %u %u %u\n", N_m_x, N_m_y, N_m_s, N_m_t);
    printf("same %d\n", aotml_model_v1() == m);
    printf("error [%s]\n", m_last_error());
    int three = m_set_num_threads(3);
    int now = m->num_threads();
    printf("threads %d %d %d\n", three, now, m->set_num_threads(1));
    printf("null record %d [%s]\n", m->run_args(NULL), m->last_error());
    return 0;
}
"""


def test_manifest_from_c(model_m, tmp_path):
    """The manifest a C program reads matches the header's macros and the Python loader."""
    exe = _compile(tmp_path, MANIFEST_PROGRAM, [model_m])
    lines = _run(exe).splitlines()
    rows = {}
    tensors = []
    for line in lines:
        key, _, rest = line.partition(" ")
        if key in ("input", "output"):
            tensors.append(line.split())
        else:
            rows[key] = rest
    abi, abi_macro = map(int, rows["abi"].split())
    assert abi == abi_macro == 6
    assert rows["profile"] == "NULL"  # a plain build times nothing
    assert rows["threads"] == "3 3 1"
    assert rows["null"] == "record 1 [the run's argument record is NULL]"
    assert rows["name"] == "m"
    assert rows["version"] == aotml.__version__
    assert re.fullmatch(r"[0-9a-f]{64}", rows["hash"]), rows["hash"]
    assert rows["hash"] == model_m.model.build_hash
    assert f"build hash {rows['hash']}" in model_m.header.read_text()
    assert rows["counts"] == "2 2"
    assert tensors == [
        ["input", "x", "1", "2", "3", "7", "bytes", "84"],
        ["input", "y", "1", "1", "7", "bytes", "28"],
        ["output", "s", "1", "2", "3", "7", "bytes", "84"],
        ["output", "t", "1", "1", "7", "bytes", "28"],
    ]
    ws, ws_macro = map(int, rows["workspace"].split())
    assert ws == ws_macro == model_m.model.workspace_bytes > 0
    assert int(rows["weights"]) >= 7 * 7 * 4
    assert rows["elements"] == "21 7 21 7"
    macros = _element_macros(model_m)
    assert {k: v for k, (_, v) in macros.items()} == {"x": 21, "y": 7, "s": 21, "t": 7}
    assert all(macro.startswith("M_") for macro, _ in macros.values()), macros
    assert rows["same"] == "1"
    assert rows["error"] == "[]"


# ---------------------------------------------------------------------------------------------
# threads

THREADS_PROGRAM = "#define _POSIX_C_SOURCE 200809L\n" + C_IO + r"""
#include <pthread.h>
#include "m.h"

#define THREADS 4
#define CALLS 200

/* argv: in.bin (THREADS sets of x then y), ref.bin (the single-threaded outputs, written) */
static float xs[THREADS][N_m_x], ys[THREADS][N_m_y];
static float s_ref[THREADS][N_m_s], t_ref[THREADS][N_m_t];
static pthread_barrier_t barrier;

typedef struct job { int id; int mismatches; int failures; int error_kept; } job;

static void *worker(void *arg) {
    job *j = arg;
    float s[N_m_s], t[N_m_t];
    void *ws = aligned_alloc(64, (M_WORKSPACE_BYTES + 63) / 64 * 64);
    const aotml_model *m = m_model();
    /* a failure whose message is this thread's own: last_error is per thread */
    const void *ins[2] = {xs[j->id], ys[j->id]};
    void *outs[2] = {s, t};
    uint64_t in_b[2] = {sizeof xs[0], (uint64_t)(100 + j->id)};
    uint64_t out_b[2] = {sizeof s, sizeof t};
    if (m->run(NULL, ins, in_b, 2, outs, out_b, 2, ws, M_WORKSPACE_BYTES) != AOTML_ERR_ARG_SIZE)
        j->failures++;
    char want[64];
    snprintf(want, sizeof want, "has %d bytes", 100 + j->id);
    pthread_barrier_wait(&barrier);
    j->error_kept = strstr(m_last_error(), want) != NULL;
    in_b[1] = sizeof ys[0];
    for (int c = 0; c < CALLS; c++) {
        int k = (j->id + c) % THREADS;
        memset(s, 0, sizeof s);
        memset(t, 0, sizeof t);
        int rc;
        if (c % 2) {
            rc = m_run(xs[k], ys[k], s, t, ws);
        } else {
            const void *ins_k[2] = {xs[k], ys[k]};
            rc = m->run(NULL, ins_k, in_b, 2, outs, out_b, 2, c % 4 ? ws : NULL,
                        c % 4 ? M_WORKSPACE_BYTES : 0);
        }
        if (rc != AOTML_OK) j->failures++;
        if (memcmp(s, s_ref[k], sizeof s) || memcmp(t, t_ref[k], sizeof t)) j->mismatches++;
    }
    free(ws);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 3) die("usage");
    FILE *f = fopen(argv[1], "rb");
    if (!f) die(argv[1]);
    for (int k = 0; k < THREADS; k++)
        if (fread(xs[k], sizeof xs[k], 1, f) != 1 || fread(ys[k], sizeof ys[k], 1, f) != 1)
            die("short input");
    fclose(f);
    void *ws = aligned_alloc(64, (M_WORKSPACE_BYTES + 63) / 64 * 64);
    f = fopen(argv[2], "wb");
    if (!f) die(argv[2]);
    for (int k = 0; k < THREADS; k++) {
        if (m_run(xs[k], ys[k], s_ref[k], t_ref[k], ws) != AOTML_OK) die(m_last_error());
        fwrite(s_ref[k], sizeof s_ref[k], 1, f);
        fwrite(t_ref[k], sizeof t_ref[k], 1, f);
    }
    fclose(f);
    free(ws);
    pthread_barrier_init(&barrier, NULL, THREADS);
    pthread_t threads[THREADS];
    job jobs[THREADS];
    for (int k = 0; k < THREADS; k++) {
        jobs[k] = (job){k, 0, 0, 0};
        if (pthread_create(&threads[k], NULL, worker, &jobs[k])) die("pthread_create");
    }
    for (int k = 0; k < THREADS; k++) pthread_join(threads[k], NULL);
    for (int k = 0; k < THREADS; k++)
        printf("thread %d mismatches %d failures %d error_kept %d\n", k, jobs[k].mismatches,
               jobs[k].failures, jobs[k].error_kept);
    return 0;
}
"""


def test_threads_run_one_model_at_once(model_m, tmp_path):
    """4 pthreads x 200 calls on different inputs, each with its own workspace, all give the
    single-threaded results; last_error is kept per thread."""
    exe = _compile(tmp_path, THREADS_PROGRAM, [model_m])
    rng = np.random.default_rng(99)
    sets = [{"x": rand(rng, (3, 7)), "y": rand(rng, (7,))} for _ in range(4)]
    with open(tmp_path / "in.bin", "wb") as f:
        for inputs in sets:
            f.write(inputs["x"].tobytes() + inputs["y"].tobytes())
    out = _run(exe, tmp_path / "in.bin", tmp_path / "ref.bin")
    assert out.splitlines() == [f"thread {k} mismatches 0 failures 0 error_kept 1"
                                for k in range(4)]
    ref = np.fromfile(tmp_path / "ref.bin", dtype=np.float32).reshape(4, 28)
    for k, inputs in enumerate(sets):
        got = {"s": ref[k, :21].reshape(3, 7), "t": ref[k, 21:]}
        _check_against_reference(model_m.src, inputs, got)


# ---------------------------------------------------------------------------------------------
# two models in one program

SOURCE_A = """model a {
    input x: f32[7]
    h = tanh(x) * 3
    output y = sigmoid(h - max(h))
}
"""

SOURCE_B = """model b {
    input x: f32[1, 3]
    input z: f32[3, 5]
    h = relu(x @ z)
    output y = softmax(h + 1, axis=-1)
    output n = max(h * 2, axis=1)
}
"""

TWO_MODELS_PROGRAM = C_IO + r"""
#include "a.h"
#include "b.h"

/* argv: ax.bin bx.bin bz.bin ay.bin by.bin bn.bin */
int main(int argc, char **argv) {
    static float ax[N_a_x], ay[N_a_y];
    static float bx[N_b_x], bz[N_b_z], by[N_b_y], bn[N_b_n];
    if (argc != 7) die("usage");
    read_f32(argv[1], ax, N_a_x);
    read_f32(argv[2], bx, N_b_x);
    read_f32(argv[3], bz, N_b_z);
    void *wa = aligned_alloc(64, (A_WORKSPACE_BYTES + 63) / 64 * 64 + 64);
    void *wb = aligned_alloc(64, (B_WORKSPACE_BYTES + 63) / 64 * 64 + 64);
    /* a failure in b leaves a's message alone: each library keeps its own */
    int bad = b_run(bx, bz, by, bn, NULL);
    printf("b_fail %d [%s] [%s]\n", bad, b_last_error(), a_last_error());
    int ra = a_run(ax, ay, wa);
    int rb = b_run(bx, bz, by, bn, wb);
    printf("rc %d %d [%s] [%s]\n", ra, rb, a_last_error(), b_last_error());
    printf("names %s %s\n", a_model()->name, b_model()->name);
    printf("inputs %u %u\n", a_model()->n_inputs, b_model()->n_inputs);
    printf("distinct %d\n", (const void *)a_model() != (const void *)b_model());
    /* one thread pool per process: a size set through one library is the other's */
    int set_a = a_set_num_threads(3), seen_b = b_model()->num_threads();
    int set_b = b_set_num_threads(2), seen_a = a_model()->num_threads();
    printf("pool %d %d %d %d\n", set_a, seen_b, set_b, seen_a);
    write_f32(argv[4], ay, N_a_y);
    write_f32(argv[5], by, N_b_y);
    write_f32(argv[6], bn, N_b_n);
    return 0;
}
"""


def test_two_models_in_one_program(tmp_path):
    """Models `a` and `b` (both with an input named x) link into one program and both run
    correctly through their own typed entries, manifests and error messages, on one pool."""
    a = _build(tmp_path / "a", SOURCE_A, "a")
    b = _build(tmp_path / "b", SOURCE_B, "b")
    assert a.model.workspace_bytes > 0 and b.model.workspace_bytes > 0
    exe = _compile(tmp_path, TWO_MODELS_PROGRAM, [a, b])
    rng = np.random.default_rng(5)
    a_in = {"x": rand(rng, (7,))}
    b_in = {"x": rand(rng, (1, 3)), "z": rand(rng, (3, 5))}
    a_in["x"].tofile(tmp_path / "ax.bin")
    b_in["x"].tofile(tmp_path / "bx.bin")
    b_in["z"].tofile(tmp_path / "bz.bin")
    files = [tmp_path / f for f in ("ax.bin", "bx.bin", "bz.bin", "ay.bin", "by.bin", "bn.bin")]
    lines = _run(exe, *files).splitlines()
    b_ws = b.model.workspace_bytes
    assert lines == [
        f"b_fail 1 [workspace is NULL (it needs {b_ws} bytes)] []",
        "rc 0 0 [] []",
        "names a b",
        "inputs 1 2",
        "distinct 1",
        "pool 3 3 2 2",
    ]
    _check_against_reference(a.src, a_in, {"y": _read_f32(files[3], (7,))})
    _check_against_reference(b.src, b_in, {"y": _read_f32(files[4], (1, 5)),
                                           "n": _read_f32(files[5], (1,))})


# ---------------------------------------------------------------------------------------------
# tensor names that meet the generated C


NAMED_PROGRAM = r"""
#include <stdio.h>
#include <stdlib.h>
#include "k.h"

int main(void) {
    float in[K_IN_ELEMENTS] = {-1.5f, 0.25f, 2.0f};
    float o[N_k_o];
    void *ws = aligned_alloc(64, (K_WORKSPACE_BYTES + 63) / 64 * 64);
    int rc = k_run(in, o, ws);
    printf("%d [%s] %.9g %.9g %.9g\n", rc, k_last_error(), o[0], o[1], o[2]);
    return 0;
}
"""


# names of the typed entry's locals, parameters and callee in the generated glue, and C keywords
@pytest.mark.parametrize("name", ["model", "int", "impl", "ins", "outs", "workspace",
                                  "aotml_rt_run"])
def test_typed_entry_with_input_named_like_glue_identifier(tmp_path, name):
    """An input may be named like a C keyword or an identifier of the generated glue and the
    typed entry still builds and computes relu(x * 2 + 1)."""
    source = (f"model k {{\n    input {name}: f32[3]\n    h = {name} * 2\n"
              "    output o = relu(h + 1)\n}\n")
    built = _build(tmp_path, source, "k")
    program = NAMED_PROGRAM.replace("K_IN_ELEMENTS", f"N_k_{name}")
    exe = _compile(tmp_path, program, [built])
    rc, err, *values = _run(exe).split()
    assert (rc, err) == ("0", "[]")
    np.testing.assert_allclose([float(v) for v in values], [0.0, 1.5, 5.0], rtol=RTOL)


def test_header_macros_distinct_for_names_differing_in_case(tmp_path):
    """Inputs `a` and `A` get distinct element-count macros with their own values, and the
    header compiles warning-free."""
    source = ("model c {\n    input a: f32[3]\n    input A: f32[5]\n"
              "    output o = sum(a, axis=0) + A\n}\n")
    built = _build(tmp_path, source, "c")
    macros = re.findall(r"^#define (\w+_ELEMENTS) ", built.header.read_text(), re.M)
    assert len(macros) == len(set(macros)) == 3, macros
    program = ('#include <stdio.h>\n#include "c.h"\n'
               'int main(void) { printf("%u %u %u\\n", N_c_a, N_c_A, N_c_o); return 0; }\n')
    exe = _compile(tmp_path, program, [built])
    assert _run(exe).split() == ["3", "5", "5"]
