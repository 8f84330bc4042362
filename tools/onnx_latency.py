"""Batch-1 onnxruntime latency: monolithic model vs the chain of its exit segments, fp32 and int8.

Exports a model (random init with the input normalisation fitted on synthetic data, optionally
trained for a few epochs, or loaded from a checkpoint) as one monolithic ONNX graph and as one
graph per exit segment, quantizes all of them to static int8 (QDQ), and times the four variants
interleaved in one loop (so drifts in machine load hit all of them alike):

* ``mono``  - input -> final logits in one session;
* ``chain`` - segment 0 -> segment 1 -> ... -> last segment (every exit's logits computed, no
  early exit: the worst case of the multi-exit device loop), also reported cumulatively per exit.

It also reports the int8-vs-fp32 top-1 agreement of every exit and the fp32 ONNX-vs-PyTorch error.

Example:
    python tools/onnx_latency.py --runs 2000 --threads 1
    python tools/onnx_latency.py --train-epochs 2   # agreement on a (briefly) trained model
"""

from __future__ import annotations

import argparse
import logging
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgeexit.data.synthetic import SyntheticECGConfig, generate_synthetic  # noqa: E402
from edgeexit.export.onnx import export_onnx, quantize_onnx_int8  # noqa: E402
from edgeexit.export.split import (  # noqa: E402
    INPUT_NAME,
    Monolithic,
    feat_name,
    logits_name,
    segment_inputs,
    split_model,
)
from edgeexit.models import ModelConfig, create_model  # noqa: E402
from edgeexit.runtime.backends.onnxruntime import OnnxRuntimeBackend  # noqa: E402


def build_model(args: argparse.Namespace, train_data):
    """The model to measure: a checkpoint, a briefly trained model, or random init + fitted norm."""
    if args.checkpoint:
        from edgeexit.checkpoint import load_checkpoint

        return load_checkpoint(args.checkpoint).model
    if args.train_epochs > 0:
        from edgeexit.train import TrainConfig, train

        cfg = TrainConfig(model=args.model, width=args.width, epochs=args.train_epochs,
                          threads=args.torch_threads, patience=0)
        return train(train_data, cfg).model
    torch.manual_seed(args.seed)
    model = create_model(ModelConfig(args.model, train_data.x.shape[1], len(train_data.classes),
                                     train_data.x.shape[2], width=args.width)).eval()
    model.fit_input_norm(torch.from_numpy(train_data.x))
    return model


def export_all(model, calib: np.ndarray, out: Path, dynamo: bool,
               flavours: dict[str, str]) -> dict[str, list[Path]]:
    """fp32 files of the monolithic model and of every segment, and their int8 versions.

    ``flavours`` maps a suffix (``8``, ``8u``) to the activation type (``int8``, ``uint8``).
    """
    x = torch.from_numpy(calib)
    files: dict[str, list[Path]] = {"mono32": [], "chain32": []}
    for tag in flavours:
        files[f"mono{tag}"], files[f"chain{tag}"] = [], []
    p = export_onnx(Monolithic(model).eval(), x[:2], out / "mono.onnx", input_name=INPUT_NAME,
                    output_names=[logits_name(model.num_exits - 1)], dynamo=dynamo)
    files["mono32"].append(p)
    for tag, act in flavours.items():
        files[f"mono{tag}"].append(
            quantize_onnx_int8(p, calib, out / f"mono.{act}.onnx", activations=act))
    inputs = segment_inputs(model, x)
    for k, seg in enumerate(split_model(model)):
        names = [logits_name(k)] if seg.last else [feat_name(k), logits_name(k)]
        in_name = INPUT_NAME if k == 0 else feat_name(k - 1)
        p = export_onnx(seg, inputs[k][:2], out / f"seg{k}.onnx", input_name=in_name,
                        output_names=names, dynamo=dynamo)
        files["chain32"].append(p)
        for tag, act in flavours.items():
            files[f"chain{tag}"].append(quantize_onnx_int8(
                p, inputs[k].numpy(), out / f"seg{k}.{act}.onnx", activations=act))
    return files


def run_chain(sessions, x: np.ndarray) -> list[np.ndarray]:
    """Logits of every exit, chaining the segments (feat_k feeds segment k + 1)."""
    logits = []
    h = x
    for s in sessions[:-1]:
        h, lg = s.run(h)
        logits.append(lg)
    logits.append(sessions[-1].run(h)[0])
    return logits


def agreement(sessions: dict, x: np.ndarray, y: np.ndarray, model, batch: int = 256) -> None:
    """Print int8-vs-fp32 top-1 agreement per exit, accuracies, and the fp32 ONNX error."""
    outs: dict[str, list] = {name: [] for name in sessions}
    for i in range(0, len(x), batch):
        xb = x[i : i + batch]
        for name, sess in sessions.items():
            outs[name].append(run_chain(sess, xb) if name.startswith("chain") else sess[0].run(xb))
    cat = {n: [np.concatenate([b[k] for b in v]) for k in range(len(v[0]))]
           for n, v in outs.items()}
    with torch.no_grad():
        ref = [t.numpy() for t in model(torch.from_numpy(x))]
    err = max(float(np.abs(a - r).max()) for a, r in zip(cat["chain32"], ref))
    err_mono = float(np.abs(cat["mono32"][0] - ref[-1]).max())
    print(f"\nfp32 ONNX vs PyTorch max abs logit error: chain {err:.2e}, mono {err_mono:.2e}")
    pred = ref[-1].argmax(1)
    shares = np.bincount(pred, minlength=ref[-1].shape[1]) / len(pred)
    print(f"fp32 final-exit predicted class shares: {np.round(shares, 3).tolist()}")
    for name in sessions:
        if name.endswith("32") or not name.startswith("chain"):
            continue
        tag = name[len("chain"):]
        print(f"int8 ({name}) vs fp32 top-1 agreement on {len(x)} synthetic beats (other seed):")
        for k, (a, b) in enumerate(zip(cat["chain32"], cat[name])):
            print(f"  exit {k} (chain): {np.mean(a.argmax(1) == b.argmax(1)):.4f}")
        mono = np.mean(cat["mono32"][0].argmax(1) == cat[f"mono{tag}"][0].argmax(1))
        print(f"  final (mono):   {mono:.4f}")
        same = np.mean(cat[name][-1].argmax(1) == cat[f"mono{tag}"][0].argmax(1))
        print(f"  int8 chain vs int8 mono, final exit: {same:.4f}")
        acc32 = [np.mean(lg.argmax(1) == y) for lg in cat["chain32"]]
        acc8 = [np.mean(lg.argmax(1) == y) for lg in cat[name]]
        print("  accuracy per exit fp32 / int8: "
              + ", ".join(f"{a:.3f}/{b:.3f}" for a, b in zip(acc32, acc8)))


def time_interleaved(sessions: dict, x: np.ndarray, runs: int, warmup: int, seed: int):
    """Median-ready per-run timings (ns) of every variant, interleaved in one loop."""
    names = list(sessions)
    n_seg = len(sessions["chain32"])
    times = {n: [] for n in names}
    cumulative = {n: [[] for _ in range(n_seg)] for n in names if n.startswith("chain")}
    rng = np.random.default_rng(seed)
    clock = time.perf_counter_ns
    for i in range(warmup + runs):
        xi = x[i % len(x)][None]  # [1, C, L], C-contiguous
        order = rng.permutation(len(names))  # no variant always runs right after another
        for j in order:
            name = names[j]
            sess = sessions[name]
            if name.startswith("mono"):
                t0 = clock()
                sess[0].run(xi)
                dt = clock() - t0
                if i >= warmup:
                    times[name].append(dt)
                continue
            t0 = clock()
            h = xi
            marks = []
            for s in sess[:-1]:
                h = s.run(h)[0]
                marks.append(clock())
            sess[-1].run(h)
            marks.append(clock())
            if i >= warmup:
                times[name].append(marks[-1] - t0)
                for k, m in enumerate(marks):
                    cumulative[name][k].append(m - t0)
    return times, cumulative


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="resnet1d")
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--checkpoint", help="measure this trained checkpoint instead")
    ap.add_argument("--train-epochs", type=int, default=0,
                    help="train this many epochs on synthetic data first (0: random init)")
    ap.add_argument("--torch-threads", type=int, default=None)
    ap.add_argument("--runs", type=int, default=2000)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    ap.add_argument("--calib", type=int, default=512, help="calibration windows for int8")
    ap.add_argument("--eval-beats", type=int, default=2000)
    ap.add_argument("--train-beats", type=int, default=6000)
    ap.add_argument("--legacy", action="store_true", help="use the TorchScript exporter")
    ap.add_argument("--uint8", action="store_true",
                    help="also time U8S8 (uint8 activations) int8 files: what x86 onnxruntime "
                         "fuses everywhere (int8 activations are ARM's native choice)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-dir", help="keep the ONNX files here (default: a temporary directory)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    train_data = generate_synthetic(SyntheticECGConfig(n_beats=args.train_beats, seed=args.seed))
    eval_data = generate_synthetic(SyntheticECGConfig(n_beats=args.eval_beats, seed=args.seed + 1))
    model = build_model(args, train_data).eval()
    rng = np.random.default_rng(args.seed)
    calib = train_data.x[rng.choice(len(train_data.x), min(args.calib, len(train_data.x)),
                                    replace=False)]

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out_dir or tmp)
        out.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        flavours = {"8": "int8", **({"8u": "uint8"} if args.uint8 else {})}
        files = export_all(model, calib, out, dynamo=not args.legacy, flavours=flavours)
        print(f"exported and quantized in {time.perf_counter() - t0:.1f} s "
              f"({'legacy' if args.legacy else 'dynamo'} exporter) to {out}")
        for name, paths in files.items():
            print(f"  {name:8s} {sum(p.stat().st_size for p in paths) / 1024:8.1f} KiB "
                  f"in {len(paths)} file(s)")
        backend = OnnxRuntimeBackend()
        sessions = {n: [backend.load(p, threads=args.threads) for p in ps]
                    for n, ps in files.items()}
        agreement(sessions, eval_data.x, eval_data.y, model)
        times, cumulative = time_interleaved(sessions, eval_data.x, args.runs, args.warmup,
                                             args.seed)

    import onnxruntime

    med = {n: statistics.median(t) / 1e3 for n, t in times.items()}
    p90 = {n: float(np.percentile(t, 90)) / 1e3 for n, t in times.items()}
    print(f"\nbatch 1, {args.threads} thread(s), {args.runs} runs after {args.warmup} warm-up, "
          f"interleaved; onnxruntime {onnxruntime.__version__}, {platform.machine()}, "
          f"{platform.processor() or platform.platform()}")
    print(f"model {args.model} width {args.width}: median / p90 latency in microseconds")
    for n in times:
        print(f"  {n:8s} {med[n]:9.1f} {p90[n]:9.1f}")
    for n, cum in cumulative.items():
        steps = ", ".join(f"exit {k}: {statistics.median(c) / 1e3:.1f}" for k, c in enumerate(cum))
        print(f"  {n} cumulative median to {steps}")
    print("ratios (of medians):")
    for tag in ["32", *flavours]:
        print(f"  chain/mono {tag:3s} = {med[f'chain{tag}'] / med[f'mono{tag}']:.3f}")
    for tag in flavours:
        print(f"  int{tag}/fp32 mono  = {med[f'mono{tag}'] / med['mono32']:.3f}")
        print(f"  int{tag}/fp32 chain = {med[f'chain{tag}'] / med['chain32']:.3f}")

if __name__ == "__main__":
    main()
