"""Files that travel with the package: the grammar and the C runtime.

In a wheel they are installed as `aotml/_grammar` and `aotml/_runtime`; in a source checkout they
are the top-level `grammar/` and `runtime/` folders.
"""

from __future__ import annotations

from pathlib import Path

_PKG = Path(__file__).resolve().parent


def _find(installed: str, checkout: str) -> Path:
    for candidate in (_PKG / installed, _PKG.parent / checkout):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"aotml is installed without its '{checkout}' folder "
                            f"(looked in {_PKG})")


def grammar_dir() -> Path:
    return _find("_grammar", "grammar")


def runtime_dir() -> Path:
    return _find("_runtime", "runtime")
