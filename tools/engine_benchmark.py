"""What the device spends beside the network, in one run: the engine per policy, the policy
against the monolithic model and its floor, and the stream per beat.

1. **Engine** (``tools/decision_overhead.py``): for every policy, ``Engine.predict`` against the
   native inference of the same segments (LiteRT ``Invoke`` / onnxruntime IO-bound run), and
   each step of ``predict`` alone; the engine's own microseconds per segment run.
2. **Policy / monolithic**: per window, ``Engine.predict`` under the bundle's policy and the
   monolithic graph through the same backend (window in, logits out), in rotating blocks; the
   ratio against its *floor*: the native time of the segments the policy runs over the
   monolithic graph's native time (what early exit could give if the engine cost nothing).
3. **Stream** (:func:`edgeexit.runtime.stream.stream_classify` on MIT-BIH records read from their
   signal files): compute time per beat split into R-peak detection, context (windows, RR and
   morphology channels) and inference, and the compute real-time factor (the records'
   annotations are not read: a device has none to match). Labels of a bundle not
   trained on MIT-BIH mean nothing; the times do. Timed in CPU seconds of the process
   (``time.process_time``: what a shared machine's other jobs take is not counted; one thread).

Medians over rounds; the machine may be shared, so compare the columns of one run. ``--out-dir``
writes the three tables (``edgeexit.results``), named ``engine-overhead-<name>``,
``policy-floor-<name>`` and ``stream-per-beat-<name>``.

    .venv/bin/python tools/engine_benchmark.py /tmp/engine-qs/bundle --quick
    .venv/bin/python tools/engine_benchmark.py BUNDLE --records 100,103 --out-dir results --name quickstart
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import decision_overhead  # noqa: E402

from edgeexit.errors import EdgeExitError  # noqa: E402
from edgeexit.runtime.engine import Engine  # noqa: E402
from edgeexit.runtime.stream import open_source, stream_classify  # noqa: E402


def policy_floor(bundle: str, backend: str, x: np.ndarray, rounds: int) -> dict:
    """The bundle's policy against the monolithic graph, and the floor of that ratio."""
    engine = Engine.from_bundle(bundle, backend=backend, threads=1, load_monolithic=True)
    mono = engine.monolithic
    links = decision_overhead._links(engine, x)
    exits = np.array([engine.predict(xi).exit_index for xi in x])
    chains = [links[: k + 1] for k in range(len(links))]
    mono_link = mono.link(None)
    if mono_link is None:
        raise EdgeExitError(f"the {backend} monolithic session offers no batch-1 buffers to time")
    m_in, m_out, m_run = mono_link

    runs = [chains[k] for k in exits]
    predict = engine.predict

    def policy(i):
        predict(x[i])

    def monolithic(i):
        m_in[0] = x[i]
        m_run()
        z = m_out[-1].tolist()[0]
        z.index(max(z))

    def native_chain(i):
        for link in runs[i]:
            link[2]()

    def native_mono(i):
        m_run()

    def empty(i):
        pass

    us = decision_overhead._time({"policy": policy, "monolithic": monolithic,
                                  "native_chain": native_chain, "native_monolithic": native_mono,
                                  "empty": empty},
                                 rounds, len(x))
    ratio = us["policy"] / us["monolithic"]
    floor = us["native_chain"] / us["native_monolithic"]
    return {"policy": engine.policy.describe()["name"], "windows": len(x),
            "segments_run_per_window": round(float((exits + 1).mean()), 4),
            "exit_fractions": [round(float(v), 4) for v in
                               np.bincount(exits, minlength=len(links)) / len(x)],
            "us_per_window": {k: round(v, 3) for k, v in us.items()},
            "ratio": round(ratio, 4), "floor": round(floor, 4),
            "ratio_over_floor": round(ratio / floor, 4)}


def stream_per_beat(bundle: str, backend: str, mitdb: str, records: list[str],
                    seconds: float | None, detector: dict | None = None) -> dict:
    """Compute time per beat of ``stream_classify`` on whole (or the first ``seconds`` of)
    records, split by step; and the answers' delay (signal seconds after their R peak).
    ``detector``: :class:`~edgeexit.runtime.stream.StreamDetector` settings (e.g. ``hop_s``)."""
    engine = Engine.from_bundle(bundle, backend=backend, threads=1)
    rows, delays = [], []
    for rec in records:
        src = open_source(os.path.join(mitdb, rec), block_seconds=1.0)
        src.annotations = None  # a device has none: matching them is not its work
        if seconds is not None:
            src.blocks = _first(src.blocks, round(seconds * src.fs))
        summary = None
        # CPU time of this process: a shared machine's preemptions do not count as work
        for ev in stream_classify(engine, src, clock=time.process_time, detector=detector):
            if ev.get("summary"):
                summary = ev
            elif "delay_s" in ev:
                delays.append(ev["delay_s"])
        split = summary["compute_split_s"]
        beats = max(1, summary["beats"])
        rows.append({"record": rec, "beats": summary["beats"], "signal_s": summary["signal_s"],
                     "compute_s": summary["compute_s"],
                     "us_per_beat": {k: round(1e6 * v / beats, 2) for k, v in split.items()},
                     "other_us_per_beat": round(1e6 * (summary["compute_s"] - sum(split.values())) / beats, 2),
                     "compute_realtime_factor": summary["compute_realtime_factor"]})
    beats = sum(r["beats"] for r in rows)
    total = {k: sum(r["us_per_beat"][k] * r["beats"] for r in rows) / beats
             for k in ("detection", "context", "inference")}
    total["other"] = sum(r["other_us_per_beat"] * r["beats"] for r in rows) / beats
    signal = sum(r["signal_s"] for r in rows)
    compute = sum(r["compute_s"] for r in rows)
    pre = total["detection"] + total["context"]
    watts = _active_watts(engine)
    return {"records": rows, "beats": beats,
            "us_per_beat": {k: round(v, 2) for k, v in total.items()},
            "preprocessing_over_inference": round(pre / total["inference"], 3),
            # an ESTIMATE: this host's CPU microseconds x the bundle's target preset's active watts
            # per core (uJ); the split between the two is what carries over to a device
            "energy_uj_per_beat_estimated": None if watts is None else {
                "preprocessing": round(pre * watts, 2),
                "inference": round(total["inference"] * watts, 2), "active_w_per_core": watts},
            "compute_realtime_factor": round(signal / compute, 1),
            "delay_s": {"mean": round(float(np.mean(delays)), 3) if delays else None,
                        "p90": round(float(np.percentile(delays, 90)), 3) if delays else None}}


def _active_watts(engine) -> float | None:
    """The bundle's target preset's active watts per core, or None (no power model)."""
    power = getattr(getattr(engine.manifest, "target", None), "power", None)
    w = getattr(power, "active_w_per_core", None)
    return None if w is None else float(w)


def _first(blocks, n: int):
    for b in blocks:
        if n <= 0:
            return
        yield b[:n]
        n -= b.size


def _write(out_dir: str, name: str, engine_rep: dict, floor: dict, stream: dict) -> None:
    from edgeexit.results import write_table

    cols = ("predict", "native", *decision_overhead.STEPS, "other")
    rows = [[p, v["segments_run_per_window"], *[v["us_per_window"][c] for c in cols],
             v["engine_own_us_per_segment"]] for p, v in engine_rep["policies"].items()]
    note = f"bundle {engine_rep['bundle']}, {engine_rep['backend']}, 1 thread, medians of rounds"
    write_table(Path(out_dir) / f"engine-overhead-{name}.json",
                title="Engine.predict per window against the native inference, by step (us)",
                columns=["policy", "segments_per_window", *[f"{c}_us" for c in cols],
                         "engine_us_per_segment"], rows=rows, command=sys.argv, notes=note)
    u = floor["us_per_window"]
    write_table(Path(out_dir) / f"policy-floor-{name}.json",
                title="The bundle's policy against the monolithic graph, and its floor",
                columns=["policy", "segments_per_window", "policy_us", "monolithic_us",
                         "native_chain_us", "native_monolithic_us", "ratio", "floor",
                         "ratio_over_floor"],
                rows=[[floor["policy"], floor["segments_run_per_window"], u["policy"],
                       u["monolithic"], u["native_chain"], u["native_monolithic"],
                       floor["ratio"], floor["floor"], floor["ratio_over_floor"]]],
                command=sys.argv, notes=note)
    s, e = stream["us_per_beat"], stream["energy_uj_per_beat_estimated"] or {}
    write_table(Path(out_dir) / f"stream-per-beat-{name}.json",
                title="run --stream: compute per beat by step (us), energy ESTIMATE and real-time factor",
                columns=["records", "beats", "detection_us", "context_us", "inference_us",
                         "other_us", "preprocessing_over_inference", "preprocessing_uj_est",
                         "inference_uj_est", "compute_realtime_factor", "delay_mean_s"],
                rows=[[",".join(r["record"] for r in stream["records"]), stream["beats"],
                       s["detection"], s["context"], s["inference"], s["other"],
                       stream["preprocessing_over_inference"], e.get("preprocessing"),
                       e.get("inference"), stream["compute_realtime_factor"],
                       stream["delay_s"]["mean"]]],
                command=sys.argv,
                notes=note + (f"; energy per beat is an ESTIMATE: this host's CPU time x the target "
                              f"preset's {e['active_w_per_core']} W per active core" if e else ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle")
    ap.add_argument("--backend", default="litert", choices=["litert", "onnxruntime"])
    ap.add_argument("--data", default=None,
                    help="windows as for decision_overhead.py --data (default: the bundle's test data)")
    ap.add_argument("--limit", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--mitdb", default="../shared/data/mitdb")
    ap.add_argument("--records", default="100,103,105,113,212,231")
    ap.add_argument("--hop-s", type=float, default=None,
                    help="the stream detector's step in seconds (default: StreamDetector's, 2 s)")
    ap.add_argument("--quick", action="store_true",
                    help="200 windows, 7 rounds, the first 5 minutes of 2 records")
    ap.add_argument("--out-dir", default=None, help="write the tables here (e.g. results)")
    ap.add_argument("--name", default=None, help="table name suffix (default: the bundle's)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    records, seconds = a.records.split(","), None
    if a.quick:
        a.limit, a.rounds, records, seconds = min(a.limit, 200), min(a.rounds, 7), records[:2], 300.0
    t0 = time.perf_counter()
    try:
        eng = decision_overhead.measure(a.bundle, a.backend, 1, a.data, a.limit, a.rounds, 0.5)
        x, _ = decision_overhead._windows(Engine.from_bundle(a.bundle, backend=a.backend, threads=1),
                                          a.bundle, a.data, a.limit)
        floor = policy_floor(a.bundle, a.backend, x, a.rounds)
        stream = stream_per_beat(a.bundle, a.backend, a.mitdb, records, seconds,
                                 None if a.hop_s is None else {"hop_s": a.hop_s})
    except EdgeExitError as e:
        raise SystemExit(f"Error: {e}") from None
    rep = {"engine": eng, "policy_floor": floor, "stream": stream,
           "seconds": round(time.perf_counter() - t0, 1)}
    if a.out_dir:
        _write(a.out_dir, a.name or Path(a.bundle.rstrip("/")).parent.name, eng, floor, stream)
    if a.json:
        print(json.dumps(rep, indent=2))
        return
    _print(rep)


def _print(rep: dict) -> None:
    eng, floor, stream = rep["engine"], rep["policy_floor"], rep["stream"]
    decision_overhead.print_table(eng)
    u = floor["us_per_window"]
    print(f"\npolicy {floor['policy']} ({floor['segments_run_per_window']:.2f} segments/window): "
          f"{u['policy']:.1f} us vs monolithic {u['monolithic']:.1f} us = {floor['ratio']:.3f}x; "
          f"floor (native {u['native_chain']:.1f} / {u['native_monolithic']:.1f} us) "
          f"{floor['floor']:.3f}x; ratio / floor {floor['ratio_over_floor']:.3f}")
    s = stream["us_per_beat"]
    print(f"\nstream, {stream['beats']} beats of {', '.join(r['record'] for r in stream['records'])}: "
          f"detection {s['detection']:.1f} + context {s['context']:.1f} + inference "
          f"{s['inference']:.1f} + other {s['other']:.1f} us per beat; preprocessing / inference "
          f"{stream['preprocessing_over_inference']:.2f}; {stream['compute_realtime_factor']:.0f}x "
          f"real time (compute); answers {stream['delay_s']['mean']} s after their R peak (mean)")
    e = stream["energy_uj_per_beat_estimated"]
    if e:
        print(f"energy per beat, ESTIMATE ({e['active_w_per_core']} W per active core x CPU time): "
              f"preprocessing {e['preprocessing']:.1f} uJ + inference {e['inference']:.1f} uJ")


if __name__ == "__main__":
    main()
