"""The engine's own time per early-exit decision, apart from the native inference (batch 1).

For every exit policy, ``Engine.predict`` runs over the windows (a seeded sample of what
``edgeexit bench`` would run, or the bundle's golden inputs), and beside it, in the same run, in blocks whose order rotates:

* ``predict``: :meth:`Engine.predict` per window, what a device pays;
* ``native``: only the native inference of the segments that window runs (LiteRT's ``Invoke``;
  for onnxruntime ``InferenceSession.run`` on the segment's real input), no Python around them;
* ``decision``: only the decisions the engine takes for that window: per segment run, exit k's
  logits to Python floats (``tolist``) and :meth:`Policy.step`, on logits recorded beforehand;
* ``check``: only :meth:`Engine.check_input` of the window.

Reported per policy (medians over rounds of the per-round means): microseconds per window of each
variant, the decision time per exit (``decision`` / segments run), and the engine's own time per
segment run ((``predict`` - ``native``) / segments run: input check, copies in and out of the
interpreter, clocks, decisions, the result object). The policy the bundle was calibrated for uses
its thresholds; the others get thresholds for the timing only (calibrated on the windows' labels
with the same margin, or, without labels, the median confidence of each exit): their accuracy on
those windows means nothing.

Example:
    python tools/decision_overhead.py runs/mitdb-seed4/bundle-ensemble --limit 1000
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgeexit.calibrate import CalibrationConfig, calibrate_thresholds  # noqa: E402
from edgeexit.errors import EdgeExitError  # noqa: E402
from edgeexit.runtime.engine import Engine  # noqa: E402
from edgeexit.runtime.policy import POLICIES, exit_scores, make_policy, softmax  # noqa: E402
from edgeexit.data.bench import bench_data  # noqa: E402


def _windows(engine: Engine, bundle: str, data: str | None, limit: int):
    """The bundle's golden inputs (``--data golden``), else what ``edgeexit bench`` would run."""
    if data == "golden":
        with np.load(Path(bundle) / "golden.npz") as z:
            x, y = z["inputs"], z["labels"] if "labels" in z.files else None
        return np.ascontiguousarray(x[:limit], np.float32), None if y is None else y[:limit]
    x, y, _ = bench_data(engine, data, "test", limit)
    return x, y


def _policies(engine: Engine, probs: list[np.ndarray], y, margin: float) -> dict:
    spec = engine.manifest.policy
    m = engine.manifest.num_exits
    out = {}
    for name in POLICIES:
        if name == "fixed":
            out[name] = make_policy("fixed", m, exit_index=m - 1)
        elif name == "budget":  # a latency budget never reached: every exit reads the clock
            out[name] = make_policy("budget", m, budget={"limit": 1e12, "unit": "us",
                                                         "segment_costs": [0.0] * m})
        elif name == spec.name and spec.thresholds is not None:
            out[name] = make_policy(name, m, spec.thresholds)
        elif y is not None:
            cal = calibrate_thresholds(probs, y, [float(s.macs) for s in engine.manifest.segments],
                                       CalibrationConfig(name, margin))
            out[name] = make_policy(name, m, cal.thresholds)
        else:
            med = [float(np.median(s)) for s in exit_scores(name, probs)[:-1]]
            out[name] = make_policy(name, m, [-v for v in med] if name == "entropy" else med)
    return out


def _native_calls(engine: Engine, x: np.ndarray):
    """Per segment, a function that runs its native inference on the buffers as they are."""
    calls = []
    for sess in engine.sessions:
        fast = getattr(sess, "_fast", None)
        if fast is not None:  # LiteRT: the native Invoke
            calls.append(fast[2])
        else:  # onnxruntime: InferenceSession.run on a fixed real input of the segment
            calls.append(None)
    if all(c is not None for c in calls):
        return calls
    feats, h = [], x[:1]
    for sess in engine.sessions:
        feats.append(h)
        out = sess.run(h)
        h = out[0]
    return [
        (lambda s=sess, f=f: s._run(s._outputs, {s.input_name: f}))
        if c is None else c
        for sess, f, c in zip(engine.sessions, feats, calls)
    ]


def measure(bundle: str, backend: str, threads: int, data: str | None, limit: int, rounds: int,
            margin: float) -> dict:
    engine = Engine.from_bundle(bundle, backend=backend, threads=threads)
    x, y = _windows(engine, bundle, data, limit)
    n, m = len(x), engine.manifest.num_exits
    logits, _ = engine.run_all(x) if backend == "onnxruntime" else _run_all_single(engine, x)
    probs = [softmax(z.astype(np.float64)) for z in logits]
    rows = [[z[i : i + 1].copy() for z in logits] for i in range(n)]  # [1, K] per exit
    native = _native_calls(engine, x)
    clock = time.perf_counter_ns
    report = {"bundle": bundle, "backend": engine.backend, "threads": engine.threads,
              "windows": n, "rounds": rounds, "policies": {}}
    for name, policy in _policies(engine, probs, y, margin).items():
        engine.policy = policy
        step = policy.step
        exits = np.array([engine.predict(xi).exit_index for xi in x])
        runs = exits + 1

        def v_predict():
            for xi in x:
                engine.predict(xi)

        def v_native(exits=exits):
            for k in exits:
                for f in native[: k + 1]:
                    f()

        def v_decision(exits=exits, step=step):
            for r, k in zip(rows, exits):
                for j in range(k + 1):
                    step(j, r[j].tolist()[0])

        def v_check():
            for xi in x:
                engine.check_input(xi, False)

        variants = {"predict": v_predict, "native": v_native, "decision": v_decision,
                    "check": v_check}
        for f in variants.values():
            f()  # warm-up
        names = list(variants)
        per_round = {k: [] for k in names}
        for r in range(rounds):
            for k in names[r % len(names):] + names[: r % len(names)]:
                t0 = clock()
                variants[k]()
                per_round[k].append((clock() - t0) / n / 1e3)
        us = {k: float(np.median(v)) for k, v in per_round.items()}
        seg_runs = float(runs.mean())
        report["policies"][name] = {
            "thresholds": policy.describe().get("thresholds"),
            "exit_fractions": [round(float(v), 4) for v in np.bincount(exits, minlength=m) / n],
            "segments_run_per_window": round(seg_runs, 4),
            "us_per_window": {k: round(v, 3) for k, v in us.items()},
            "decision_us_per_exit": round(us["decision"] / seg_runs, 3),
            "engine_own_us_per_segment": round((us["predict"] - us["native"]) / seg_runs, 3),
        }
    return report


def _run_all_single(engine: Engine, x: np.ndarray):
    parts = [engine.run_all(x[i : i + 1])[0] for i in range(len(x))]
    return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))], None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle", help="bundle directory")
    ap.add_argument("--backend", default="litert", choices=["litert", "onnxruntime"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data", default=None,
                    help="windows as for `edgeexit bench --data` (default: the test side of the "
                         "data recorded in the bundle), or 'golden' (the bundle's golden.npz)")
    ap.add_argument("--limit", type=int, default=1000, help="windows at most (seeded sample)")
    ap.add_argument("--rounds", type=int, default=15, help="timed rounds per variant")
    ap.add_argument("--margin", type=float, default=0.5,
                    help="accuracy margin (points) for the policies calibrated here")
    ap.add_argument("--json", action="store_true", help="print JSON only")
    a = ap.parse_args()
    try:
        res = measure(a.bundle, a.backend, a.threads, a.data, a.limit, a.rounds, a.margin)
    except EdgeExitError as e:
        raise SystemExit(f"Error: {e}") from None
    if a.json:
        print(json.dumps(res, indent=2))
        return
    print(f"{res['bundle']}: {res['windows']} windows, {res['backend']}, {res['threads']} thread(s)")
    print(f"{'policy':9} {'segs/win':>8} {'predict':>8} {'native':>8} {'decision':>8} {'check':>6}"
          f" {'decision/exit':>13} {'engine/segment':>14}   (us)")
    for name, p in res["policies"].items():
        u = p["us_per_window"]
        print(f"{name:9} {p['segments_run_per_window']:8.2f} {u['predict']:8.2f} {u['native']:8.2f} "
              f"{u['decision']:8.2f} {u['check']:6.2f} {p['decision_us_per_exit']:13.2f} "
              f"{p['engine_own_us_per_segment']:14.2f}")


if __name__ == "__main__":
    main()
