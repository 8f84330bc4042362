"""Batch-1 latency of a model as one monolithic ``.tflite`` versus its chain of segment files.

Exports ``--family`` (default: full-size ``resnet1d``, 5 classes, 8 x 256 inputs) four ways --
monolithic and per-segment, fp32 and int8 (PT2E, float boundaries) -- with
:func:`edgeexit.export.tflite.export_tflite`, loads every file with the ``litert`` backend
(``--threads`` interpreter threads) and times ``session.run`` on single windows, all variants
interleaved in one loop (``--runs`` rounds after ``--warmup``), so that drift of the host hits
every variant alike. A chain runs every segment (every exit head included), i.e. the cost of
reaching the last exit. Also reported:

* the cost of the float boundaries: the int8 chain once more from files whose QUANTIZE /
  DEQUANTIZE boundary ops are stripped (int8 in, int8 out, run through the bare interpreter and
  fed int8 tensors directly), against the int8 chain through the same bare calls;
* int8 versus fp32 top-1 agreement (and both versus PyTorch) on held-out synthetic windows.

The model is trained for ``--train-steps`` Adam steps on synthetic ECG first: at random
initialisation it predicts one class for everything, which makes agreement meaningless.

Example:
    python tools/tflite_latency.py --runs 2000 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgeexit.data.synthetic import SyntheticECGConfig, generate_synthetic
from edgeexit.export.split import Monolithic, segment_specs, split_model
from edgeexit.export.tflite import export_tflite
from edgeexit.models import ModelConfig, create_model
from edgeexit.runtime.backends.litert import LiteRTBackend


def _train(model, steps: int, seed: int) -> None:
    """Fit the input normalisation and take a few Adam steps on synthetic beats (in place)."""
    train = generate_synthetic(SyntheticECGConfig(n_beats=3000, seed=seed + 100))
    x, y = torch.from_numpy(train.x), torch.from_numpy(train.y)
    model.fit_input_norm(x)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (64,), generator=gen)
        loss = sum(torch.nn.functional.cross_entropy(z, y[idx]) for z in model(x[idx]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def _strip_float_boundaries(src: Path, dst: Path) -> None:
    """The file without the QUANTIZE after its input and the DEQUANTIZEs before its outputs."""
    from ai_edge_litert import schema_py_generated as fb
    from ai_edge_litert.tools import flatbuffer_utils as utils

    model = utils.read_model_from_bytearray(bytearray(src.read_bytes()))
    sg, sig = model.subgraphs[0], model.signatureDefs[0]
    code = [utils.get_builtin_code_from_operator_code(oc) for oc in model.operatorCodes]
    remap, keep = {}, []
    for op in sg.operators:
        kind = code[op.opcodeIndex]
        if kind == fb.BuiltinOperator.QUANTIZE and op.inputs[0] in sg.inputs:
            remap[int(op.inputs[0])] = int(op.outputs[0])
        elif kind == fb.BuiltinOperator.DEQUANTIZE and op.outputs[0] in sg.outputs:
            remap[int(op.outputs[0])] = int(op.inputs[0])
        else:
            keep.append(op)
    sg.operators = keep
    sg.inputs = [remap.get(int(i), int(i)) for i in sg.inputs]
    sg.outputs = [remap.get(int(i), int(i)) for i in sg.outputs]
    for tm in list(sig.inputs) + list(sig.outputs):
        tm.tensorIndex = remap.get(int(tm.tensorIndex), int(tm.tensorIndex))
    dst.write_bytes(bytes(utils.convert_object_to_bytearray(model)))


class _Bare:
    """A file run through the bare interpreter calls (set_tensor / invoke / get_tensor)."""

    def __init__(self, path: Path, threads: int) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.it = Interpreter(model_path=str(path), num_threads=threads)
        self.it.allocate_tensors()
        self.inp = self.it.get_input_details()[0]
        self.out = [d["index"] for d in self.it.get_output_details()]

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        self.it.set_tensor(self.inp["index"], x)
        self.it.invoke()
        return [self.it.get_tensor(i) for i in self.out]


def _chain(sessions):
    def run(x):
        for s in sessions:
            out = s.run(x)
            x = out[0]
        return out

    return run


def _export(
    model, calib: torch.Tensor, root: Path, int8: bool, backend
) -> tuple[Path, list[Path], dict]:
    """Monolithic file and segment files; int8 segment k calibrated on int8 segment k-1's output."""
    times = {}
    tag = "int8" if int8 else "fp32"
    t = time.perf_counter()
    mono = export_tflite(Monolithic(model).eval(), calib[:1], root / f"mono_{tag}.tflite",
                         int8=int8, calibration=calib if int8 else None, output_names=["logits"])
    times["monolithic"] = time.perf_counter() - t
    h, segs = calib, []
    for seg, spec in zip(split_model(model), segment_specs(model, tuple(calib.shape[1:]))):
        t = time.perf_counter()
        path = export_tflite(seg, h[:1], root / f"segment_{spec.index}_{tag}.tflite", int8=int8,
                             calibration=h if int8 else None, input_name=spec.input_name,
                             output_names=spec.output_names)
        times[f"segment_{spec.index}"] = time.perf_counter() - t
        segs.append(path)
        if not seg.last:
            if int8:
                h = torch.from_numpy(backend.load(path, threads=1).run(h.numpy())[0])
            else:
                with torch.no_grad():
                    h = seg(h)[0]
    return mono, segs, times


def _agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float((a.argmax(-1) == b.argmax(-1)).mean())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--family", default="resnet1d")
    ap.add_argument("--runs", type=int, default=2000, help="timed rounds (every variant each)")
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1, help="LiteRT interpreter threads")
    ap.add_argument("--calibration", type=int, default=256, help="int8 calibration windows")
    ap.add_argument("--eval", type=int, default=1000, help="held-out windows for agreement")
    ap.add_argument("--train-steps", type=int, default=150)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="keep the files here (default: temp)")
    args = ap.parse_args(argv)

    torch.manual_seed(args.seed)
    torch.set_num_threads(1)  # small tensors: one thread trains and converts fastest
    model = create_model(ModelConfig(args.family, in_channels=8, num_classes=5))
    _train(model, args.train_steps, args.seed)
    held = generate_synthetic(SyntheticECGConfig(n_beats=args.calibration + args.eval,
                                                 seed=args.seed + 200))
    calib = torch.from_numpy(held.x[: args.calibration])
    xe = held.x[args.calibration :]
    ye = held.y[args.calibration :]

    backend = LiteRTBackend()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.out or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        mono32, segs32, t32 = _export(model, calib, root, False, backend)
        mono8, segs8, t8 = _export(model, calib, root, True, backend)
        raw8 = []
        for p in segs8:
            raw = p.with_name(p.stem + "_int8io.tflite")
            _strip_float_boundaries(p, raw)
            raw8.append(raw)
        print(f"conversion seconds fp32: {', '.join(f'{k} {v:.1f}' for k, v in t32.items())}")
        print(f"conversion seconds int8: {', '.join(f'{k} {v:.1f}' for k, v in t8.items())}")

        def load(p: Path):
            return backend.load(p, threads=args.threads)

        variants = {  # name -> (function, fixed argument or None for the current window)
            "mono_fp32": (load(mono32).run, None),
            "chain_fp32": (_chain([load(p) for p in segs32]), None),
            "mono_int8": (load(mono8).run, None),
            "chain_int8": (_chain([load(p) for p in segs8]), None),
        }
        # the float boundaries' cost: every int8 segment with and without its QUANTIZE/DEQUANTIZE
        # boundary ops, through the same bare interpreter calls, on a fixed input of its own
        # input type (int8 kernels do not depend on the values)
        for k, (p, raw) in enumerate(zip(segs8, raw8)):
            for tag, path in (("float_io", p), ("int8_io", raw)):
                bare = _Bare(path, args.threads)
                x0 = np.zeros(bare.inp["shape"], bare.inp["dtype"])
                variants[f"seg{k}_int8_{tag}"] = (bare.run, x0)

        # agreement on the held-out windows (the chain's exits one by one)
        with torch.no_grad():
            ref = [z.numpy() for z in model(torch.from_numpy(xe))]
        s32 = [load(p) for p in segs32]
        s8 = [load(p) for p in segs8]
        h32, h8, ex32, ex8 = xe, xe, [], []
        for a, b in zip(s32, s8):
            o32, o8 = a.run(h32), b.run(h8)
            ex32.append(o32[-1])
            ex8.append(o8[-1])
            h32, h8 = o32[0], o8[0]
        m32, m8 = load(mono32).run(xe)[0], load(mono8).run(xe)[0]
        print(f"\nheld-out windows: {len(xe)}; last-exit accuracy of the quickly trained model "
              f"(PyTorch): {float((ref[-1].argmax(-1) == ye).mean()):.3f}")
        print(f"fp32 max abs logit error vs PyTorch: monolithic {np.abs(m32 - ref[-1]).max():.2g}, "
              f"chain {max(float(np.abs(a - b).max()) for a, b in zip(ex32, ref)):.2g}")
        print(f"int8 vs fp32 top-1 agreement: monolithic {_agreement(m8, m32):.4f}, chain exits "
              + ", ".join(f"{_agreement(a, b):.4f}" for a, b in zip(ex8, ex32)))
        print(f"int8 vs PyTorch top-1 agreement: monolithic {_agreement(m8, ref[-1]):.4f}, chain "
              "exits " + ", ".join(f"{_agreement(a, b):.4f}" for a, b in zip(ex8, ref)))

        # interleaved timing
        names = list(variants)
        samples = {k: [] for k in names}
        xs = [np.ascontiguousarray(xe[i : i + 1]) for i in range(min(len(xe), 256))]
        clock = time.perf_counter_ns
        for r in range(args.warmup + args.runs):
            x = xs[r % len(xs)]
            shift = r % len(names)
            for k in names[shift:] + names[:shift]:  # rotate who goes first
                fn, fixed = variants[k]
                arg = x if fixed is None else fixed
                t0 = clock()
                fn(arg)
                dt = clock() - t0
                if r >= args.warmup:
                    samples[k].append(dt / 1000.0)

    med = {k: statistics.median(v) for k, v in samples.items()}
    q = {k: statistics.quantiles(v, n=10) for k, v in samples.items()}
    print(f"\n{args.family}, batch 1, {args.threads} thread(s), {args.runs} interleaved runs "
          f"after {args.warmup} warm-up (microseconds):")
    for k in names:
        print(f"  {k:20s} median {med[k]:9.1f}   p10 {q[k][0]:9.1f}   p90 {q[k][-1]:9.1f}")
    print("ratios:")
    print(f"  chain / monolithic   fp32 {med['chain_fp32'] / med['mono_fp32']:.3f}   "
          f"int8 {med['chain_int8'] / med['mono_int8']:.3f}")
    print(f"  int8 / fp32          monolithic {med['mono_int8'] / med['mono_fp32']:.3f}   "
          f"chain {med['chain_int8'] / med['chain_fp32']:.3f}")
    with_io = sum(med[f"seg{k}_int8_float_io"] for k in range(len(segs8)))
    without = sum(med[f"seg{k}_int8_int8_io"] for k in range(len(segs8)))
    print(f"  float boundaries: int8 segments with float I/O {with_io:.1f} us in all, with int8 "
          f"I/O {without:.1f} us: +{with_io - without:.1f} us "
          f"(+{100 * (with_io - without) / without:.1f}%) for {len(segs8)} segments")


if __name__ == "__main__":
    main()
