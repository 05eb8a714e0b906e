"""Export the PyTorch models that tests/test_onnx_models.py imports, as small ONNX files.

The .onnx files beside this script are checked in, so the test suite needs no torch; this script
regenerates them (same seeds, same bytes up to the exporter's version):

    pip install torch==2.13.0 && python tests/models/export_models.py [--out DIR]

Each model is exported with `torch.onnx.export(..., dynamo=False)` at opset 17 in eval mode
(no dropout). `MODELS` names them; `build_model(name)` gives the torch module with its weights
(fixed seed) and `example_inputs(name, batch)` its inputs, so a test can compare torch's own output
with aotml's.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OPSET = 17
SEED = 0

# name -> (input names, input shapes without the batch dim, dynamic batch?, output names)
MODELS = {
    "mlp": (["x"], [(784,)], True, ["logits"]),
    "cnn": (["x"], [(1, 28, 28)], True, ["logits"]),
    "encoder_layer": (["x", "key_padding_mask"], [(16, 64), (16,)], True, ["y"]),
}


def _modules():
    import torch
    from torch import nn

    class Mlp(nn.Module):
        """784 -> 256 -> 128 -> 10 with relu (Gemm + Relu in ONNX)."""

        def __init__(self):
            super().__init__()
            self.fc1, self.fc2, self.fc3 = nn.Linear(784, 256), nn.Linear(256, 128), \
                nn.Linear(128, 10)

        def forward(self, x):
            return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))

    class Cnn(nn.Module):
        """Two conv/relu/pool stages (max, then average) and a linear head, NCHW 1x28x28."""

        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
            self.conv2 = nn.Conv2d(8, 16, 3, padding=1, stride=1)
            self.pool1 = nn.MaxPool2d(2)
            self.pool2 = nn.AvgPool2d(2)
            self.flatten = nn.Flatten()  # ONNX Flatten: no Shape computation on the batch
            self.fc = nn.Linear(16 * 7 * 7, 10)

        def forward(self, x):
            x = self.pool1(torch.relu(self.conv1(x)))
            x = self.pool2(torch.relu(self.conv2(x)))
            return self.fc(self.flatten(x))

    class EncoderLayer(nn.Module):
        """nn.TransformerEncoderLayer, batch_first, gelu, pre-norm: width 64, 4 heads, MLP 128,
        with a key padding mask (bool, true = padding: the Where/Equal mask pattern in ONNX).

        Wrapped so that the exporter sees forward(x, mask) only: given the layer itself, the
        legacy exporter turns the default `is_causal=False` into a tensor, which attention
        refuses."""

        def __init__(self):
            super().__init__()
            self.layer = nn.TransformerEncoderLayer(
                d_model=64, nhead=4, dim_feedforward=128, dropout=0.0, activation="gelu",
                batch_first=True, norm_first=True)

        def forward(self, x, key_padding_mask):
            return self.layer(x, src_key_padding_mask=key_padding_mask)

    return {"mlp": Mlp, "cnn": Cnn, "encoder_layer": EncoderLayer}


def build_model(name: str):
    """The torch module for `name`, in eval mode, with its seeded weights."""
    import torch

    torch.manual_seed(SEED)
    model = _modules()[name]()
    if name == "encoder_layer":
        # a small random offset on every LayerNorm so their bias and scale are exercised
        with torch.no_grad():
            for mod in model.modules():
                if isinstance(mod, torch.nn.LayerNorm):
                    mod.weight.add_(0.1 * torch.randn_like(mod.weight))
                    mod.bias.add_(0.1 * torch.randn_like(mod.bias))
    return model.eval()


def example_inputs(name: str, batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs for `name`: floats uniform in [-1, 1); a padding mask that leaves each
    sequence 1 to all of its tokens."""
    rng = np.random.default_rng(seed)
    names, shapes, _, _ = MODELS[name]
    out = {}
    for n, s in zip(names, shapes):
        if n == "key_padding_mask":
            valid = rng.integers(1, s[-1] + 1, (batch, 1))
            out[n] = np.arange(s[-1])[None, :] >= valid
        else:
            out[n] = rng.uniform(-1, 1, (batch, *s)).astype(np.float32)
    return out


def export(name: str, out: Path) -> Path:
    """Write `out/<name>.onnx`, its batch axis dynamic ("batch") where MODELS says so."""
    import torch

    model = build_model(name)
    names, _, dynamic, out_names = MODELS[name]
    # a dynamic batch is traced at 2 (a 1 would be taken for a broadcast dim); a static one at 1
    args = tuple(torch.from_numpy(a) for a in example_inputs(name, 2 if dynamic else 1).values())
    dynamic_axes = {n: {0: "batch"} for n in names + out_names} if dynamic else None
    path = out / f"{name}.onnx"
    # the "fast path" of nn.TransformerEncoderLayer is one fused aten op with no ONNX export
    torch.backends.mha.set_fastpath_enabled(False)
    with torch.no_grad():
        torch.onnx.export(model, args, str(path), input_names=names, output_names=out_names,
                          opset_version=OPSET, dynamo=False, dynamic_axes=dynamic_axes,
                          do_constant_folding=True)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="folder for the .onnx files")
    parser.add_argument("models", nargs="*", default=list(MODELS), help="which models")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.models:
        path = export(name, args.out)
        print(f"wrote {path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
