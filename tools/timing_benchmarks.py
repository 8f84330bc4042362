"""How closely the timed parts of the runtime follow the clock: measured side by side with what a
perfect clock would give, as ratios (1.000 = exact). These were assertions of unit tests, where a
busy or slow machine made them fail; the unit tests now check the same code with clocks they
control, and this script measures the real thing on the machine it runs on.

* ``ina226``: an INA226 power file (a fake sysfs tree in a temporary directory) that a thread
  rewrites every 0.5 ms with 4 W + 2 W sin(2 pi t / 0.6 s); the meter's energy over ``--seconds``
  against the profile's integral over the same window.
* ``estimate``: the CPU-time estimate's CPU fraction of a busy loop (1.0 when the loop has a core
  to itself) and of a sleep (0.0).
* ``bench`` (with ``--bundle``): ``bench_engine`` against the INA226 with a 4 W + 0.5 W ripple of
  50 ms; each path's energy per inference against 4 W x its metered seconds.
* ``realtime`` (with ``--bundle`` of single-lead beats, as ``edgeexit run --stream`` takes):
  ``stream_classify(realtime=True)`` over ``--stream-seconds`` of signal in 0.5 s blocks; wall
  seconds against signal seconds.

Example (a bundle: ``edgeexit quickstart --out runs/qs``, or any ``edgeexit export``):
    python tools/timing_benchmarks.py --bundle runs/qs/bundle --json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgeexit.runtime.energy import make_meter  # noqa: E402


class _PowerFile:
    """A fake INA226 under ``root`` whose power1_input a thread rewrites with ``watts(t)``."""

    def __init__(self, root: str, watts):
        dev = os.path.join(root, "sys/class/hwmon/hwmon0")
        os.makedirs(dev)
        for name, text in (("name", "ina226"), ("update_interval", "1")):
            with open(os.path.join(dev, name), "w") as f:
                f.write(text + "\n")
        self.path, self.watts = os.path.join(dev, "power1_input"), watts
        self.halt = threading.Event()
        self._write()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _write(self) -> None:
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.write(f"{round(self.watts(time.monotonic()) * 1e6)}\n")
        os.replace(tmp, self.path)

    def _run(self) -> None:
        while not self.halt.is_set():
            self._write()
            time.sleep(0.0005)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.halt.set()
        self.thread.join()


def ina226(seconds: float) -> dict:
    t_ref, period = time.monotonic(), 0.6

    def watts(t):
        return 4.0 + 2.0 * math.sin(2 * math.pi * (t - t_ref) / period)

    def energy(a, b):
        def phase(t):
            return math.cos(2 * math.pi * (t - t_ref) / period)
        return 4.0 * (b - a) - 2.0 * period / (2 * math.pi) * (phase(b) - phase(a))

    with tempfile.TemporaryDirectory() as root, _PowerFile(root, watts):
        with make_meter("ina2xx", root=root) as m:
            m.start()
            time.sleep(seconds)
            r = m.stop()
    want = energy(r.start, r.start + r.seconds)
    return {"measured_j": r.joules, "profile_j": want, "ratio": r.joules / want,
            "samples": len(r.samples), "rate_hz": len(r.samples) / r.seconds, "nominal_hz": m.rate_hz}


def estimate(seconds: float) -> dict:
    m = make_meter("estimate", power={"idle_w": 2.5, "active_w_per_core": 1.25, "source": "bench"})
    m.start()
    c0 = time.process_time()
    while time.process_time() - c0 < seconds:
        pass
    busy = m.stop()
    m.start()
    time.sleep(seconds)
    idle = m.stop()
    return {"busy_cpu_fraction": busy.cpu_seconds / busy.seconds,
            "sleep_cpu_fraction": idle.cpu_seconds / idle.seconds}


def bench(bundle: str, seconds: float) -> dict:
    from edgeexit.runtime.engine import Engine
    from edgeexit.data.bench import bench_data
    from edgeexit.runtime.profile import bench_engine

    engine = Engine.from_bundle(bundle, backend="onnxruntime", threads=1, load_monolithic=True)
    x, y = bench_data(engine, None, "test", 32)[:2]
    with tempfile.TemporaryDirectory() as root, \
            _PowerFile(root, lambda t: 4.0 + 0.5 * math.sin(2 * math.pi * t / 0.05)):
        with make_meter("ina2xx", root=root) as meter:
            e = bench_engine(engine, x, y, warmup=2, meter=meter, energy_seconds=seconds,
                             energy_rounds=2).to_dict()["energy"]
    out = {"idle_w": e["idle_w"], "idle_ratio": e["idle_w"] / 4.0}
    for name, got in (("policy", e["per_inference_mj"]["policy"]),
                      ("monolithic", e["per_inference_mj"]["monolithic"]),
                      ("all_exits", e["per_inference_mj"]["all_exits"])):
        key = "prefix_" + str(len(e["prefix_mj"]) - 1) if name == "all_exits" else name
        want = 1e3 * 4.0 * e["metered_seconds"][key] / e["inferences"][key]
        out[f"{name}_ratio"] = got["gross"] / want
    return out


def realtime(bundle: str, seconds: float) -> dict:
    from edgeexit.runtime.engine import Engine
    from edgeexit.runtime.stream import Source, stream_classify

    engine = Engine.from_bundle(bundle, threads=1)
    fs = float(engine.manifest.input.fs or 360.0)
    t = np.arange(int(seconds * fs)) / fs
    x = (np.exp(-0.5 * (((t % 0.8) - 0.4) / 0.01) ** 2) + 0.01 * np.sin(7 * t)).astype(np.float32)
    block = int(0.5 * fs)
    src = Source("memory", fs, iter([x[i:i + block] for i in range(0, x.size, block)]))
    summary = list(stream_classify(engine, src, realtime=True))[-1]
    return {"signal_s": summary["signal_s"], "wall_s": summary["wall_s"],
            "ratio": summary["wall_s"] / summary["signal_s"], "beats": summary["beats"]}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", default=None, help="a bundle for the bench and realtime checks")
    ap.add_argument("--seconds", type=float, default=0.3, help="metered seconds (default 0.3)")
    ap.add_argument("--stream-seconds", type=float, default=3.0, help="realtime: signal seconds")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    a = ap.parse_args(argv)
    res = {"ina226": ina226(a.seconds), "estimate": estimate(a.seconds)}
    if a.bundle:
        res["bench"] = bench(a.bundle, a.seconds * 2)
        res["realtime"] = realtime(a.bundle, a.stream_seconds)
    res["host"] = {"cpus": os.cpu_count(), "load_1min": os.getloadavg()[0]}
    if a.json:
        print(json.dumps(res, indent=2))
        return
    for check, values in res.items():
        print(f"{check}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                       for k, v in values.items()))
    if not a.bundle:
        print("bench, realtime: skipped (give --bundle)")


if __name__ == "__main__":
    main()
