"""Where the all-exits segmented path spends its time beyond the monolithic model (LiteRT, batch 1).

Loads a bundle's ``.tflite`` segments and monolithic graph with the ``litert`` backend and times,
side by side in one run (every variant over a block of ``--calls`` windows, variants rotating,
``--rounds`` rounds; medians of the per-round means):

* ``native``: the native ``Invoke`` of each interpreter only: no Python, no copies. The chain's
  excess over the monolithic model here is computation: the early exit heads, the layout
  transposes at the segment boundaries and the interpreter's own fixed cost per call;
* ``session``: :meth:`LiteRTSession.run` chained as the engine chains it (``copy=False``): adds
  the Python call, the input copy and the output views per segment;
* ``engine``: :meth:`Engine.run_all` against :meth:`Engine.run_monolithic`, what
  ``edgeexit bench`` compares (adds the input check and the per-segment clock);
* with ``--checkpoint``: the same model's stages converted without their exit heads (into a
  temporary directory), timed ``native``, which splits the native excess into heads and
  boundaries + per-call cost; each stage is also timed alone (``native_stage_k``: stage 0 is the
  stem, input normalisation included).

Example:
    python tools/segment_overhead.py runs/mitdb-seed4/bundle-rpi4 --checkpoint runs/mitdb-seed4/model.pt
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgeexit.runtime.backends.litert import LiteRTBackend  # noqa: E402
from edgeexit.runtime.engine import Engine  # noqa: E402


def _native(session):
    if session._fast is None:
        raise SystemExit("this LiteRT interpreter has no native handle; nothing to take apart")
    return session._fast[2]


def _stage_only_chain(checkpoint: str, tmp: Path, threads: int):
    """Native invokes of the model's stages converted without exit heads."""
    import torch

    from edgeexit.checkpoint import load_checkpoint
    from edgeexit.export.split import fold_batchnorm, segment_inputs
    from edgeexit.export.tflite import export_tflite

    model = load_checkpoint(checkpoint).model.eval()
    c, length = model.config.in_channels, model.config.input_length
    inputs = segment_inputs(model, torch.randn(1, c, length))
    invokes = []
    for k, (stage, x) in enumerate(zip(model.stages, inputs)):
        path = tmp / f"stage_{k}.tflite"
        export_tflite(fold_batchnorm(stage), x, path, input_name="x", output_names=["feat"])
        invokes.append(_native(LiteRTBackend().load(path, threads)))
    return invokes


def measure(bundle: str, checkpoint: str | None, rounds: int, calls: int, threads: int) -> dict:
    engine = Engine.from_bundle(bundle, backend="litert", threads=threads, load_monolithic=True)
    x = np.random.default_rng(0).standard_normal((1, *engine.input_shape)).astype(np.float32)
    segs, mono = engine.sessions, engine.monolithic
    seg_inv, mono_inv = [_native(s) for s in segs], _native(mono)

    def session_chain():
        h = x
        for s in segs:
            h = s.run(h, copy=False)[0]

    variants = {
        "native_chain": lambda: [f() for f in seg_inv],
        "native_monolithic": mono_inv,
        "session_chain": session_chain,
        "session_monolithic": lambda: mono.run(x, copy=False),
        "engine_all_exits": lambda: engine.run_all(x),
        "engine_monolithic": lambda: engine.run_monolithic(x),
    }
    with tempfile.TemporaryDirectory() as tmp:
        if checkpoint:
            stage_inv = _stage_only_chain(checkpoint, Path(tmp), threads)
            variants["native_stages_only"] = lambda: [f() for f in stage_inv]
            for k, f in enumerate(stage_inv):  # where the model's own time goes, stage by stage
                variants[f"native_stage_{k}"] = f
        for f in variants.values():  # warm-up
            for _ in range(calls):
                f()
        names = list(variants)
        per_round = {k: [] for k in names}
        for r in range(rounds):
            for k in names[r % len(names):] + names[: r % len(names)]:
                f = variants[k]
                t0 = time.perf_counter_ns()
                for _ in range(calls):
                    f()
                per_round[k].append((time.perf_counter_ns() - t0) / calls / 1e3)
    us = {k: float(np.median(v)) for k, v in per_round.items()}

    def ratio(a, b):
        return float(np.median(np.array(per_round[a]) / np.array(per_round[b])))

    mono_us = us["native_monolithic"]
    out = {
        "bundle": bundle,
        "threads": threads,
        "median_us": {k: round(v, 2) for k, v in us.items()},
        "ratios": {
            "native": round(ratio("native_chain", "native_monolithic"), 4),
            "session": round(ratio("session_chain", "session_monolithic"), 4),
            "engine": round(ratio("engine_all_exits", "engine_monolithic"), 4),
        },
        # the chain's excess over the monolithic model, in us and as a share of it
        "excess_us": {
            "native (heads + boundaries + per-call)": round(us["native_chain"] - mono_us, 2),
            "python (session layer)": round(
                (us["session_chain"] - us["native_chain"])
                - (us["session_monolithic"] - mono_us), 2),
            "engine (checks, clocks)": round(
                (us["engine_all_exits"] - us["session_chain"])
                - (us["engine_monolithic"] - us["session_monolithic"]), 2),
        },
    }
    if checkpoint:
        out["excess_us"]["of which early heads"] = round(us["native_chain"] - us["native_stages_only"], 2)
        out["excess_us"]["of which boundaries + per-call"] = round(us["native_stages_only"] - mono_us, 2)
    out["excess_share_of_monolithic"] = {k: round(v / mono_us, 4) for k, v in out["excess_us"].items()}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle", help="bundle directory with .tflite segments and monolithic graph")
    ap.add_argument("--checkpoint", help="the bundle's model.pt: also time stages without heads")
    ap.add_argument("--rounds", type=int, default=40, help="timed rounds per variant")
    ap.add_argument("--calls", type=int, default=100, help="calls per variant per round")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", action="store_true", help="print JSON only")
    a = ap.parse_args()
    res = measure(a.bundle, a.checkpoint, a.rounds, a.calls, a.threads)
    if a.json:
        print(json.dumps(res, indent=2))
        return
    for k, v in res["median_us"].items():
        print(f"{k:24s} {v:8.2f} us")
    print("all-exits / monolithic: " + ", ".join(f"{k} {v:.3f}" for k, v in res["ratios"].items()))
    print("excess of the chain over the monolithic model:")
    for k, v in res["excess_us"].items():
        print(f"  {k:36s} {v:6.2f} us  ({100 * res['excess_share_of_monolithic'][k]:5.1f}%)")


if __name__ == "__main__":
    main()
