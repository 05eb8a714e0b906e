"""Write the weights of every example model beside it, deterministically:
examples/mlp.npz, examples/lenet.npz, examples/encoder.npz.

    python examples/make_weights.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from make_mlp_weights import make as make_mlp

HERE = Path(__file__).resolve().parent


def _init(rng, shape, fan_in):
    return (rng.standard_normal(shape) * np.sqrt(2 / fan_in)).astype(np.float32)


def make_lenet(path: Path) -> Path:
    rng = np.random.default_rng(5)
    arrays = {"c1_w": _init(rng, (6, 1, 5, 5), 25), "c2_w": _init(rng, (16, 6, 5, 5), 150),
              "f1_w": _init(rng, (120, 784), 784), "f2_w": _init(rng, (84, 120), 120),
              "f3_w": _init(rng, (10, 84), 84)}
    for name, n in (("c1_b", 6), ("c2_b", 16), ("f1_b", 120), ("f2_b", 84), ("f3_b", 10)):
        arrays[name] = (rng.standard_normal(n) * 0.05).astype(np.float32)
    np.savez(path, **arrays)
    return path


def make_encoder(path: Path, d: int = 32, hidden: int = 64) -> Path:
    rng = np.random.default_rng(6)
    arrays = {}
    for name in ("wq", "wk", "wv", "wo"):
        arrays[name] = _init(rng, (d, d), d)
    arrays["w1"], arrays["w2"] = _init(rng, (hidden, d), d), _init(rng, (d, hidden), hidden)
    for name, n in (("bq", d), ("bk", d), ("bv", d), ("bo", d), ("b1", hidden), ("b2", d)):
        arrays[name] = (rng.standard_normal(n) * 0.05).astype(np.float32)
    for name in ("ln1", "ln2"):
        arrays[f"{name}_g"] = (1 + 0.1 * rng.standard_normal(d)).astype(np.float32)
        arrays[f"{name}_b"] = (0.1 * rng.standard_normal(d)).astype(np.float32)
    np.savez(path, **arrays)
    return path


if __name__ == "__main__":
    for made in (make_mlp(HERE / "mlp.npz"), make_lenet(HERE / "lenet.npz"),
                 make_encoder(HERE / "encoder.npz")):
        print(f"wrote {made}")
