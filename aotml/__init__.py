"""aotml: an ahead-of-time compiler from .mlg graphs to native shared libraries."""

from __future__ import annotations

__version__ = "0.1.0"

import os
from pathlib import Path

import numpy as np

from aotml.errors import AotmlError, CompileError, InternalError, LoadError, RunError


def build(source: str | os.PathLike, out_so: str | os.PathLike, **options) -> Path:
    """Compile an .mlg file (or text) to a shared library and header; returns the .so path.

    Options: target_cpu, target_triple, opt_level (0-3), dump ("graph,loops,llvm,asm").
    """
    from aotml.driver import build as _build

    return _build(source, out_so, **options).so_path


def load(path: str | os.PathLike, device: str | None = None):
    """Load a compiled model; returns an `aotml.loader.Model`. `device` ("auto", "cpu",
    "cuda", "cuda:N") chooses where its runs go; see `Model.select_device`."""
    from aotml.loader import load as _load

    return _load(path, device)


def interpret(source: str | os.PathLike, precise: bool = False,
              **arrays: np.ndarray) -> dict[str, np.ndarray]:
    """Run an .mlg model with the numpy reference interpreter."""
    from aotml.driver import frontend
    from aotml.graph.interpret import interpret_graph

    return interpret_graph(frontend(source), arrays, precise=precise)


__all__ = ["build", "load", "interpret", "AotmlError", "CompileError", "InternalError",
           "LoadError", "RunError", "__version__"]
