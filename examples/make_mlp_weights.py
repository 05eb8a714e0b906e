"""Write examples/mlp.npz: deterministic He-initialized weights for examples/mlp.mlg."""

from pathlib import Path

import numpy as np


def make(path: Path) -> Path:
    rng = np.random.default_rng(20261123)
    arrays = {
        "w1": rng.standard_normal((784, 128)) * np.sqrt(2 / 784),
        "b1": rng.standard_normal(128) * 0.1,
        "w2": rng.standard_normal((128, 10)) * np.sqrt(2 / 128),
        "b2": rng.standard_normal(10) * 0.1,
    }
    np.savez(path, **{k: v.astype(np.float32) for k, v in arrays.items()})
    return path


def example_input() -> np.ndarray:
    """The input mlp_app.c builds too: exact in float32, so C and Python see the same bits."""
    i = np.arange(784)
    return (((i * 37) % 101) / np.float32(100)).astype(np.float32).reshape(1, 784)


if __name__ == "__main__":
    print(f"wrote {make(Path(__file__).resolve().parent / 'mlp.npz')}")
