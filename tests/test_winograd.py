"""conv2d by Winograd's F(2x2, 3x3) (aotml/ops/winograd.py).

End to end against the float64 reference (opcheck's bound), on shapes that reach every piece:
odd output heights and widths (a half tile row and column), padding 0, 1, 2 and one-sided,
chunk rows widened by tiles past the image, tile rows left over after the slots, several
slots, batch 2 and a symbolic batch, with and without a bias, and the weight transform both
at run time (a weight given as an input) and folded at build time (a parameter), which must
give the same bits. Then: the same bits at every thread count, the relu fused into the
output transform, the error against the direct conv's, what an inf input reaches, when the
form is (not) taken, and `--no-winograd`.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from opcheck import EPS32, check, conv_sample, within

import aotml
from aotml.codegen.llvm_cpu import CpuTarget
from aotml.driver import build
from aotml.graph.ir import TensorType
from aotml.graph.symbolic import symbol
from aotml.loops.build import Names, Operand
from aotml.loops.ir import Buffer, For, Store
from aotml.ops import REGISTRY, winograd
from conftest import REPO, rand

LANES = CpuTarget().capabilities.vector_bits // 32  # this host's, as a build uses


_conv = conv_sample


CASES = [
    # odd output height and width: a half tile row after the chunks, a half tile column
    _conv((1, 32, 17, 23), (32, 32, 3, 3), bias=True, padding=1),
    # no padding, batch 2, 33 input and 40 output channels
    _conv((2, 33, 14, 34), (40, 33, 3, 3)),
    # padding 2: the output larger than the input
    _conv((1, 32, 9, 12), (32, 32, 3, 3), bias=True, padding=2),
    # one-sided (top 2, left 0, bottom 1, right 3): 14 x 15 out, a tile row left over
    _conv((1, 32, 13, 14), (36, 32, 3, 3), padding=(2, 0, 1, 3)),
    # many tile rows: several slots of several chunks
    _conv((1, 32, 48, 40), (32, 32, 3, 3), bias=True, padding=1),
    # a symbolic batch
    _conv(("N", 32, 10, 30), (32, 32, 3, 3), bias=True, padding=1),
]


def _lower(x, w, bias=False, lanes=LANES, dtype="f32", **attrs):
    op = REGISTRY["conv2d"]
    bound = op.bind_attrs(attrs)
    shapes = [x, w] + ([(w[0],)] if bias else [])
    out = op.infer([TensorType(dtype, s) for s in shapes], bound)
    buffers = [Buffer(name, dtype, s) for name, s in zip(("x", "w", "b"), shapes)]
    return op.lower(Buffer("y", dtype, out.shape), [Operand(b.shape, buffer=b) for b in buffers],
                    bound, Names(lanes=lanes))


def _walk(stmts):
    for s in stmts:
        yield s
        if isinstance(s, For):
            yield from _walk(s.body)


def _takes_winograd(body) -> bool:
    return any(isinstance(s, Store) and "wino_m" in s.buffer.name for s in _walk(body))


@pytest.mark.parametrize("sample", CASES, ids=lambda s: "x".join(map(str, s.shapes[0])))
def test_matches_reference_with_the_weights_transformed_at_run_time(tmp_path, sample):
    x, w = sample.shapes[:2]
    concrete_x = tuple(2 if isinstance(d, str) else d for d in x)
    assert _takes_winograd(_lower(concrete_x, w, len(sample.shapes) == 3, **sample.attrs))
    check(tmp_path, "conv2d", sample)


@settings(max_examples=8, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_random_shapes_match_the_reference(tmp_path_factory, data):
    """Random channel counts, image sizes, one-sided paddings and batches (derandomized, so
    CI draws the same ones), each taking the form (shapes it declines are drawn again)."""
    c, m = data.draw(st.integers(32, 40)), data.draw(st.integers(32, 44))
    h, w = data.draw(st.integers(6, 30)), data.draw(st.integers(6, 40))
    pads = tuple(data.draw(st.integers(0, 2)) for _ in range(4))
    n = data.draw(st.integers(1, 2))
    bias = data.draw(st.booleans())
    sample = conv_sample((n, c, h, w), (m, c, 3, 3), bias=bias, padding=pads)
    assume(_takes_winograd(_lower((n, c, h, w), (m, c, 3, 3), bias, padding=pads)))
    check(tmp_path_factory.mktemp("random"), "conv2d", sample, draws=1)


@pytest.fixture
def leftover_rows(monkeypatch):
    """Chunks of at most 3 slots: 13 full tile rows leave one row after them."""
    monkeypatch.setattr(winograd, "SLOTS", 3)


def test_tile_rows_left_over_after_the_slots(tmp_path, leftover_rows):
    sample = _conv((1, 32, 26, 16), (32, 32, 3, 3), bias=True, padding=1)
    r, w, s, k = winograd._plan(13, 13, 8, 32, 32, LANES)
    assert s * k * r < 13  # rows do remain for slot 0 afterwards
    check(tmp_path, "conv2d", sample)


def test_the_plan_for_the_cnn_conv():
    # 112x112 out: 56 tiles a row; 2 rows a chunk make 112 tiles, whole AVX-512 vectors
    assert winograd._plan(56, 56, 56, 32, 64, 16) == (2, 56, 4, 7)
    # 5 tiles a row would need 8 or 16 (AVX-512): declined
    assert winograd._plan(5, 5, 5, 64, 64, 16) is None
    # with 8-lane vectors, chunks of whole vectors: 7 tiles a row widened to 8
    r, w, s, k = winograd._plan(7, 7, 7, 32, 32, 8)
    assert r * w % 8 == 0 and w == 8 and s * k * r == 7


MODEL = """weights "w.npz"
model m {{
    input x: f32[2, 32, 21, 30]
    {decl} w: f32[48, 32, 3, 3]
    param b: f32[48]
    output y = relu(conv2d(x, w, b, padding=1))
}}"""


def _build(tmp_path, decl: str, **options):
    src = tmp_path / f"{decl}.mlg"
    src.write_text(MODEL.format(decl=decl))
    return build(src, tmp_path / f"{decl}{len(options)}.so", dump="loops", report=True,
                 **options)


@pytest.fixture
def weights(tmp_path):
    rng = np.random.default_rng(7)
    arrays = {"w": rand(rng, (48, 32, 3, 3)), "b": rand(rng, (48,))}
    np.savez(tmp_path / "w.npz", **arrays)
    return arrays


def test_folded_weights_give_the_bits_of_the_run_time_transform(tmp_path, weights):
    """A parameter's 16 transformed matrices are computed at build time (loops/fold.py, in
    numpy, f32 op by op): the library holds them and not the weight, the kernel no longer
    transforms it, and the output equals, bit for bit, the kernel that transforms the same
    weight given as an input."""
    folded = _build(tmp_path, "param")
    loops = folded.dumps["loops"]
    assert "wino_m" in loops and "conv2d + relu" in folded.dumps["report"]
    kernel = loops[loops.index("kernel k"):]
    assert " w[" not in kernel  # the weight is not read: its transform is a weight now
    assert "wino_u0[" in kernel
    at_run_time = _build(tmp_path, "input")
    assert "w[" in at_run_time.dumps["loops"]
    x = rand(np.random.default_rng(8), (2, 32, 21, 30))
    got = aotml.load(folded.so_path)(x=x)["y"]
    again = aotml.load(at_run_time.so_path)(x=x, w=weights["w"])["y"]
    np.testing.assert_array_equal(got.view(np.uint32), again.view(np.uint32))
    exact = np.maximum(REGISTRY["conv2d"].reference(
        [x.astype(np.float64), weights["w"].astype(np.float64), weights["b"].astype(np.float64)],
        REGISTRY["conv2d"].bind_attrs({"padding": 1})), 0)
    within(got, exact, 1e-5, 2 * 32 * 9 * EPS32 * np.abs(exact).max())


def test_the_report_names_the_form(tmp_path, weights):
    """`--report` says which algorithm each conv took, and the chunking of a Winograd one."""
    lines = _build(tmp_path, "param").dumps["report"].splitlines()
    at = lines.index("schedules:")
    assert lines[at + 1].startswith("  k0_conv2d: Winograd F(2x2, 3x3): ")
    assert "chunks, each " in lines[at + 1] and "(15 in the image's rows)" in lines[at + 1]
    direct = _build(tmp_path, "param", winograd=False).dumps["report"]
    assert "k0_conv2d: implicit GEMM: the input unfolded" in direct  # 30 columns: narrow


def test_the_same_bits_at_every_thread_count(tmp_path, weights):
    model = aotml.load(_build(tmp_path, "param").so_path)
    x = rand(np.random.default_rng(9), (2, 32, 21, 30))
    outs = []
    for n in (1, 2, 3):
        model.set_num_threads(n)
        outs.append(model(x=x)["y"])
    for other in outs[1:]:
        np.testing.assert_array_equal(outs[0].view(np.uint32), other.view(np.uint32))


def test_the_error_stays_near_the_direct_convs(tmp_path, weights):
    """Against float64: the largest error relative to the sum of absolute terms, Winograd's
    within twice the direct conv's on the same inputs."""
    fast = aotml.load(_build(tmp_path, "param").so_path)
    slow_result = _build(tmp_path, "param", winograd=False)
    assert "wino" not in slow_result.dumps["loops"]
    slow = aotml.load(slow_result.so_path)
    rng = np.random.default_rng(10)
    attrs = REGISTRY["conv2d"].bind_attrs({"padding": 1})
    worst = {"winograd": 0.0, "direct": 0.0}
    for _ in range(3):
        x = rand(rng, (2, 32, 21, 30))
        wide = [x.astype(np.float64), weights["w"].astype(np.float64),
                weights["b"].astype(np.float64)]
        exact = REGISTRY["conv2d"].reference(wide, attrs)
        scale = REGISTRY["conv2d"].reference([np.abs(a) for a in wide], attrs)
        live = exact > 0  # where the relu passes the sum on
        for name, model in (("winograd", fast), ("direct", slow)):
            err = np.abs(model(x=x)["y"].astype(np.float64) - exact)[live] / scale[live]
            worst[name] = max(worst[name], float(err.max()))
    assert worst["winograd"] <= 2 * worst["direct"], worst
    assert worst["winograd"] < 32 * 9 * EPS32


def test_an_inf_input_reaches_its_tiles_only(tmp_path, weights):
    """Input (10, 13) is inside the patches of tile rows 4..5 (output rows 8..11) and tile
    columns 6..7 (output columns 12..15) at padding 1: those outputs may be NaN or inf,
    every other is finite (the relu makes some of the direct conv's -inf 0)."""
    model = aotml.load(_build(tmp_path, "param").so_path)
    x = rand(np.random.default_rng(11), (2, 32, 21, 30))
    x[0, 4, 10, 13] = np.inf
    y = model(x=x)["y"]
    bad = ~np.isfinite(y)
    assert bad[0, :, 9:12, 12:15].any()
    bad[0, :, 8:12, 12:16] = False
    assert not bad.any()


def test_where_the_form_is_taken():
    assert _takes_winograd(_lower((1, 32, 20, 20), (32, 32, 3, 3), padding=1))
    # no vector width (a GPU's lowering), stride, dilation, other kernels, few channels,
    # f16, a narrow output: the other forms
    assert not _takes_winograd(_lower((1, 32, 20, 20), (32, 32, 3, 3), lanes=None, padding=1))
    assert not _takes_winograd(_lower((1, 32, 20, 20), (32, 32, 3, 3), stride=2, padding=1))
    assert not _takes_winograd(_lower((1, 32, 20, 20), (32, 32, 3, 3), dilation=2, padding=2))
    assert not _takes_winograd(_lower((1, 32, 20, 20), (32, 32, 5, 5), padding=2))
    assert not _takes_winograd(_lower((1, 16, 20, 20), (32, 16, 3, 3), padding=1))
    assert not _takes_winograd(_lower((1, 32, 20, 20), (16, 32, 3, 3), padding=1))
    assert not _takes_winograd(_lower((1, 32, 20, 20), (32, 32, 3, 3), dtype="f16", padding=1))
    assert not _takes_winograd(_lower((1, 32, 6, 6), (32, 32, 3, 3), padding=1))
    # 10x10 at AVX-512: 5 tiles a row, widened to 8 or 16, wastes more than the form saves
    assert not _takes_winograd(_lower((1, 64, 10, 10), (64, 64, 3, 3), lanes=16, padding=1))


def test_one_slot_with_a_batch_declines():
    """8x8 at AVX-512 is one chunk, one slot: at batch 1 its nests run in parallel on their
    own (the loops of one iteration are opened); a batch would run on one thread."""
    assert _takes_winograd(_lower((1, 64, 8, 8), (64, 64, 3, 3), lanes=16, padding=1))
    assert not _takes_winograd(_lower((2, 64, 8, 8), (64, 64, 3, 3), lanes=16, padding=1))


def test_the_slot_loop_runs_in_parallel():
    body = _lower((1, 32, 48, 40), (32, 32, 3, 3), bias=True, padding=1)
    from aotml.loops.ir import Kernel
    from aotml.loops.schedule import parallelize
    kernel = parallelize(Kernel("k", (), ("y",), tuple(body)))
    slot = [s for s in kernel.body if isinstance(s, For) and s.var.name.startswith("s")]
    assert slot and slot[0].parallel
    # with a symbolic batch too: the batch runs inside each slot
    body = _lower((symbol("N"), 32, 48, 40), (32, 32, 3, 3), bias=True, padding=1)
    kernel = parallelize(Kernel("k", (), ("y",), tuple(body)))
    slot = [s for s in kernel.body if isinstance(s, For) and s.var.name.startswith("s")]
    assert slot and slot[0].parallel


def test_no_winograd_on_the_command_line(tmp_path, weights):
    src = tmp_path / "param.mlg"
    src.write_text(MODEL.format(decl="param"))
    dumps = []
    for flags in ([], ["--no-winograd"]):
        run = subprocess.run([sys.executable, "-m", "aotml", "build", str(src), "-o",
                              str(tmp_path / "d.so"), "--dump", "loops", *flags],
                             cwd=REPO, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        dumps.append(run.stdout)
    assert "_wino_m[" in dumps[0] and "_wino_" not in dumps[1]
