"""The engine's own time per early-exit decision, apart from the native inference (batch 1).

For every exit policy, ``Engine.predict`` runs over the windows (a seeded sample of what
``edgeexit bench`` would run, or the bundle's golden inputs), and beside it, in the same run, in
blocks whose order rotates, each step of it alone (every variant runs the steps of the segments
each window runs under that policy):

* ``predict``: :meth:`Engine.predict` per window, what a device pays;
* ``native``: only the native inference (LiteRT's ``Invoke``; onnxruntime's IO-bound run), on
  the engine's buffers as they are, no Python around them;
* ``check``: only the input check :meth:`Engine.predict` does on a well-formed window (type,
  dtype, shape, one dot product of the copied window against the range limit);
* ``copy``: only the copies into the segments' input buffers (the window into the first; for
  LiteRT the features between interpreters; onnxruntime shares them);
* ``output``: only reading each exit's logits as Python floats (``tolist``);
* ``decision``: only :meth:`Policy.stop` on logits recorded beforehand (``ensemble``:
  :meth:`Policy.step`, which also makes its answer; the others' answer is made on demand);
* ``timing``: only the clock reads and the list of segment times;
* ``result``: only the label and the :class:`~edgeexit.runtime.engine.ExitResult`.

Every window is timed on its own, in every round; reported per policy (per window the median
over rounds, then the mean over windows, less the cost of an empty timed call): microseconds per window of each
variant, ``other`` = ``predict`` less every step (the loop, calls, attribute reads), the decision
time per exit, and the engine's own time per segment run ((``predict`` - ``native``) / segments
run). The policy the bundle was calibrated for uses its thresholds; the others get thresholds for
the timing only (calibrated on the windows' labels with the same margin, or, without labels, the
median confidence of each exit): their accuracy on those windows means nothing.

Example:
    python tools/decision_overhead.py runs/mitdb-seed4/bundle-ensemble --limit 1000
    python tools/decision_overhead.py /tmp/engine-qs/bundle --quick --json
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
from edgeexit.runtime.engine import Engine, ExitResult  # noqa: E402
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


def _links(engine: Engine, x: np.ndarray) -> list:
    """The engine's batch-1 chain (bound by one predict), per segment (input, logits, run, src).
    An engine from before the chain (to time a previous version side by side): LiteRT's own
    buffers of its sessions, in the same form."""
    engine.predict(x[0])
    if getattr(engine, "_links", None) is not None:
        return engine._links
    fast = [getattr(sess, "_fast", None) for sess in engine.sessions]
    if any(f is None for f in fast):
        raise EdgeExitError(f"the {engine.backend} sessions offer no batch-1 buffers to time")
    links, prev = [], None
    for in_view, outs, invoke in fast:
        links.append((in_view, outs[-1][0], invoke, prev))
        prev = outs[0]
    engine._first = (links[0][0][0], links[0][0].reshape(-1))
    return links


def _variants(engine: Engine, x: np.ndarray, rows, exits: np.ndarray, links: list) -> dict:
    """Per step of :meth:`Engine.predict`, a function of the window index ``i`` that runs that
    step alone for window ``i`` (for the segments it runs)."""
    pol, clock, classes = engine.policy, time.perf_counter_ns, engine.classes
    decide = pol.stop if pol.answers_softmax else pol.step
    limit = engine._energy_limit
    f32, shape = np.dtype(np.float32), engine.input_shape
    chains = [links[: k + 1] for k in range(len(links))]
    runs = [chains[k] for k in exits]  # per window, the links it runs
    probs = [[0.9] + [0.1 / (len(classes) - 1)] * (len(classes) - 1)] * len(x)
    first, flat = engine._first
    predict = engine.predict

    def v_predict(i):
        predict(x[i])

    def v_native(i):
        for link in runs[i]:
            link[2]()

    def v_check(i):
        xi = x[i]
        if type(xi) is np.ndarray and xi.dtype is f32 and xi.shape == shape:
            if not flat.dot(flat) <= limit:
                raise AssertionError("a window failed the range check")

    def v_copy(i):
        first[...] = x[i]
        for inp, _, _, src in runs[i]:
            if src is not None:
                inp[...] = src

    def v_output(i):
        for link in runs[i]:
            link[1].tolist()

    def v_decision(i):  # what predict calls at every exit run: stop, or step (ensemble)
        r = rows[i]
        for j in range(exits[i] + 1):
            decide(j, r[j].tolist()[0])

    def v_timing(i):
        times = []
        for _ in runs[i]:
            t0 = clock()
            times.append(clock() - t0)
        tuple(times)

    def v_result(i):
        z = probs[i]
        label = z.index(max(z))
        ExitResult(label, classes[label], None, exits[i], (), z)

    def v_empty(i):
        pass

    return {"predict": v_predict, "native": v_native, "check": v_check, "copy": v_copy,
            "output": v_output, "decision": v_decision, "timing": v_timing, "result": v_result,
            "empty": v_empty}


def _time(variants: dict, rounds: int, n: int) -> dict[str, float]:
    """Microseconds per window of each variant: every window timed on its own in every round
    (the variants' order rotates), the median over rounds per window (a shared machine preempts
    a process for milliseconds now and then: medians drop those), the mean over windows, less the
    ``empty`` variant's time (the clock reads and the call)."""
    for f in variants.values():
        for i in range(n):
            f(i)  # warm-up
    names, clock = list(variants), time.perf_counter_ns
    ns = {k: np.zeros((rounds, n), np.int64) for k in names}
    for r in range(rounds):
        for k in names[r % len(names):] + names[: r % len(names)]:
            f, row = variants[k], ns[k][r]
            for i in range(n):
                t0 = clock()
                f(i)
                row[i] = clock() - t0
    us = {k: float(np.median(v, axis=0).mean()) / 1e3 for k, v in ns.items()}
    empty = us.pop("empty", 0.0)
    return {k: max(0.0, v - empty) for k, v in us.items()}


STEPS = ("check", "copy", "output", "decision", "timing", "result")


def measure(bundle: str, backend: str, threads: int, data: str | None, limit: int, rounds: int,
            margin: float) -> dict:
    engine = Engine.from_bundle(bundle, backend=backend, threads=threads)
    x, y = _windows(engine, bundle, data, limit)
    n, m = len(x), engine.manifest.num_exits
    logits, _ = engine.run_all(x) if backend == "onnxruntime" else _run_all_single(engine, x)
    probs = [softmax(z.astype(np.float64)) for z in logits]
    rows = [[z[i : i + 1].copy() for z in logits] for i in range(n)]  # [1, K] per exit
    report = {"bundle": bundle, "backend": engine.backend, "threads": engine.threads,
              "windows": n, "rounds": rounds, "policies": {}}
    for name, policy in _policies(engine, probs, y, margin).items():
        engine.policy = policy
        links = _links(engine, x)
        exits = np.array([engine.predict(xi).exit_index for xi in x])
        us = _time(_variants(engine, x, rows, exits, links), rounds, n)
        seg_runs = float((exits + 1).mean())
        us["other"] = us["predict"] - us["native"] - sum(us[k] for k in STEPS)
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
    ap.add_argument("--quick", action="store_true", help="200 windows, 7 rounds")
    ap.add_argument("--margin", type=float, default=0.5,
                    help="accuracy margin (points) for the policies calibrated here")
    ap.add_argument("--json", action="store_true", help="print JSON only")
    a = ap.parse_args()
    if a.quick:
        a.limit, a.rounds = min(a.limit, 200), min(a.rounds, 7)
    try:
        res = measure(a.bundle, a.backend, a.threads, a.data, a.limit, a.rounds, a.margin)
    except EdgeExitError as e:
        raise SystemExit(f"Error: {e}") from None
    if a.json:
        print(json.dumps(res, indent=2))
        return
    print_table(res)


def print_table(res: dict) -> None:
    """The report of :func:`measure` as a text table (us per window, by step)."""
    print(f"{res['bundle']}: {res['windows']} windows, {res['backend']}, {res['threads']} thread(s)")
    cols = ("predict", "native", *STEPS, "other")
    print(f"{'policy':9} {'segs/win':>8} " + " ".join(f"{c:>8}" for c in cols)
          + f" {'engine/segment':>14}   (us per window)")
    for name, p in res["policies"].items():
        u = p["us_per_window"]
        print(f"{name:9} {p['segments_run_per_window']:8.2f} " + " ".join(f"{u[c]:8.2f}" for c in cols)
              + f" {p['engine_own_us_per_segment']:14.2f}")


if __name__ == "__main__":
    main()
