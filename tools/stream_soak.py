"""Soak test of streaming: 100,000 beats through a bundle, resident memory at start, every N beats
and at the end, and the real-time factor.

The signal is a WFDB record repeated end to end (default: MIT-BIH 100 when ``--mitdb`` holds it)
or, without one, a synthetic spike train with T waves, baseline wander and noise at 360 Hz. The
bundle must take one lead (+ RR context) at the signal's rate; ``--synthetic`` streams at the
bundle's ``fs`` (360 Hz when not recorded).

    .venv/bin/python tools/stream_soak.py runs/mitdb-seed4/bundle-max_prob --beats 100000 \
        --record ../shared/data/mitdb/100
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np

from edgeexit.runtime.engine import Engine
from edgeexit.runtime.stream import Source, open_source, resident_kb, stream_classify


def synthetic(fs: float, seconds: float = 600.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(seconds * fs)
    t = np.arange(n) / fs
    x = 0.3 * np.sin(2 * np.pi * 0.25 * t) + rng.normal(0.0, 0.03, n)
    r = 0.5
    k = np.arange(-int(0.05 * fs), int(0.05 * fs) + 1)
    kt = np.arange(-int(0.15 * fs), int(0.15 * fs) + 1)
    while r < seconds - 1.0:
        p = int(r * fs)
        x[p + k] += 1.2 * np.exp(-0.5 * (k / (0.01 * fs)) ** 2)
        x[p + int(0.28 * fs) + kt] += 0.3 * np.exp(-0.5 * (kt / (0.045 * fs)) ** 2)
        r += rng.uniform(0.65, 1.05)
    return x


def repeat_blocks(signal: np.ndarray, block: int):
    while True:  # the record end to end, forever (the consumer stops)
        for i in range(0, signal.size, block):
            yield signal[i:i + block]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle")
    p.add_argument("--beats", type=int, default=100_000)
    p.add_argument("--every", type=int, default=10_000, help="print memory every N beats")
    p.add_argument("--record", default=None, help="WFDB record to repeat (default: synthetic)")
    p.add_argument("--block-seconds", type=float, default=1.0)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    engine = Engine.from_bundle(a.bundle, threads=1)
    if a.record:
        src = open_source(a.record, block_seconds=60.0)
        fs, sig = src.fs, np.concatenate(list(src.blocks))
    else:
        fs = engine.manifest.input.fs or 360.0
        sig = synthetic(fs)
    source = Source(a.record or "synthetic", fs, repeat_blocks(sig, max(1, round(a.block_seconds * fs))))
    rows = [{"beats": 0, "rss_kb": resident_kb(), "signal_s": 0.0, "wall_s": 0.0}]
    print(json.dumps(rows[0]) if a.json else f"start: RSS {rows[0]['rss_kb']} kB", flush=True)
    t0 = time.perf_counter()
    n = 0
    for ev in stream_classify(engine, source):
        n += 1
        if n % a.every == 0 or n == a.beats:
            row = {"beats": n, "rss_kb": resident_kb(), "signal_s": round(ev["r_time_s"], 1),
                   "wall_s": round(time.perf_counter() - t0, 2)}
            row["realtime_factor"] = round(row["signal_s"] / row["wall_s"], 1)
            rows.append(row)
            print(json.dumps(row) if a.json else
                  f"{n} beats ({row['signal_s'] / 3600:.2f} h of signal): RSS {row['rss_kb']} kB, "
                  f"{row['realtime_factor']}x real time", flush=True)
        if n >= a.beats:
            break
    first = rows[1] if len(rows) > 1 else rows[0]
    end = {"end": True, "beats": n, "rss_start_kb": rows[0]["rss_kb"], "rss_first_report_kb": first["rss_kb"],
           "rss_end_kb": rows[-1]["rss_kb"], "growth_after_first_report_kb": rows[-1]["rss_kb"] - first["rss_kb"],
           "signal_h": round(rows[-1]["signal_s"] / 3600, 2), "realtime_factor": rows[-1].get("realtime_factor")}
    print(json.dumps(end) if a.json else
          f"end: {n} beats, {end['signal_h']} h of signal, RSS {end['rss_start_kb']} kB at start, "
          f"{end['rss_first_report_kb']} kB at {first['beats']} beats, {end['rss_end_kb']} kB at the end "
          f"(+{end['growth_after_first_report_kb']} kB), {end['realtime_factor']}x real time")


if __name__ == "__main__":
    main()
