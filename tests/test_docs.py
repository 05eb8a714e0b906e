"""docs/architecture.md prints the IRs of its examples: they must be what the compiler prints
today (built for an AVX-512 cpu, as the document says, whatever the host)."""

from __future__ import annotations

import re

import numpy as np

from aotml.driver import build
from conftest import REPO

TARGET = {"target_triple": "x86_64-unknown-linux-gnu", "target_cpu": "znver4"}


def _blocks(text: str) -> list[str]:
    return re.findall(r"```\n(.*?)```", text, re.S)


def _block(blocks: list[str], start: str) -> str:
    found = [b for b in blocks if b.startswith(start)]
    assert len(found) == 1, f"{len(found)} blocks in docs/architecture.md start with {start!r}"
    return found[0]


def test_the_printed_graph_and_loop_ir_are_the_compilers(tmp_path, monkeypatch):
    blocks = _blocks((REPO / "docs" / "architecture.md").read_text())
    monkeypatch.chdir(tmp_path)  # the IR names the source as it was given
    (tmp_path / "tiny.mlg").write_text(_block(blocks, 'weights "tiny.npz"'))
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "tiny.npz", w=rng.standard_normal((3, 4)).astype(np.float32),
             b=rng.standard_normal(4).astype(np.float32))
    dumps = build("tiny.mlg", "tiny.o", dump="graph,loops", **TARGET).dumps
    assert _block(blocks, "graph tiny(") == dumps["graph"] + "\n"
    assert _block(blocks, "program tiny (") == dumps["loops"] + "\n"

    (tmp_path / "sym.mlg").write_text(_block(blocks, "model sym {"))
    loops = build("sym.mlg", "sym.o", dump="loops", **TARGET).dumps["loops"]
    assert _block(blocks, "program sym (") == loops[:loops.index("\n}\n") + 3]
