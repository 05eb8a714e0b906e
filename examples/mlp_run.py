"""Run the compiled MLP from Python and check it against the reference interpreter."""

import sys
from pathlib import Path

import numpy as np

import aotml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_mlp_weights import example_input  # noqa: E402

so = sys.argv[1] if len(sys.argv) > 1 else "build/mlp.so"
model = aotml.load(so)
x = example_input()
probs = model(x=x)["probs"]
ref = aotml.interpret(Path(__file__).resolve().parent / "mlp.mlg", x=x)["probs"]
rel = float(np.max(np.abs(probs - ref) / np.maximum(np.abs(ref), 1e-30)))
print(f"python: {model}")
print(f"python: top class {int(np.argmax(probs))} (p = {probs[0].max():.6f}); "
      f"max relative difference from the interpreter {rel:.2e}")
if rel > 1e-5:
    sys.exit("python: compiled model disagrees with the interpreter")

# the batch is symbolic (N <= 64): the same library runs any batch size
batch = np.random.default_rng(0).uniform(0, 1, (5, 784)).astype(np.float32)
got = model(x=batch)["probs"]
ref = aotml.interpret(Path(__file__).resolve().parent / "mlp.mlg", x=batch)["probs"]
print(f"python: batch of {len(batch)}: classes {np.argmax(got, axis=1).tolist()}, max relative "
      f"difference {float(np.max(np.abs(got - ref) / np.maximum(np.abs(ref), 1e-30))):.2e}")
if not np.allclose(got, ref, rtol=1e-5, atol=1e-7):
    sys.exit("python: compiled batch disagrees with the interpreter")
