"""Shared test helpers: build a model from source text into a temporary folder, and run it."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import aotml

# Every pass is followed by the graph verifier in tests.
os.environ.setdefault("AOTML_VERIFY", "1")

REPO = Path(__file__).resolve().parent.parent

# The model the C-ABI and Python-API tests call: two inputs, a weight, two outputs, and
# intermediates (`h`, `x @ w`) so it needs a workspace. x: 84 bytes, y: 28, s: 84, t: 28.
ABI_MODEL_SOURCE = """weights "weights.npz"

model m {
    input x: f32[3, 7]
    input y: f32[7]
    param w: f32[7, 7]
    h = relu(x @ w * 2 + y)
    output s = softmax(h, axis=-1)
    output t = sum(h, axis=0)
}
"""


@pytest.fixture
def build_model(tmp_path):
    """build_model(source_text, weights=None, name='m') -> loaded aotml model.

    `weights` is a dict of arrays saved as `weights.npz` beside the source; the source should
    then start with `weights "weights.npz"`.
    """
    counter = [0]

    def build(source: str, weights: dict | None = None, name: str = "m", **options):
        counter[0] += 1
        folder = tmp_path / f"build{counter[0]}"
        folder.mkdir()
        if weights is not None:
            np.savez(folder / "weights.npz", **weights)
        src = folder / f"{name}.mlg"
        src.write_text(source)
        so = aotml.build(src, folder / f"{name}.so", **options)
        model = aotml.load(so)
        model.source_path = src
        return model

    return build


def rand(rng: np.random.Generator, shape, low=-2.0, high=2.0) -> np.ndarray:
    """Fresh float32 values in [low, high): never all zeros or ones."""
    return rng.uniform(low, high, size=shape).astype(np.float32)
