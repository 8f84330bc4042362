"""The device's footprint: `edgeexit run` of one window, per backend: wall time from the start of
the process to the answer, its peak resident memory, and the resident memory each library adds.

For each backend (LiteRT, onnxruntime) and ``--runs`` times each, in alternation:

* ``edgeexit run BUNDLE --input ONE.npy --backend B`` as its own process (``--python``: the
  interpreter of the install to measure, e.g. a venv with the wheel and ``[runtime]`` only):
  wall seconds until it exits, and its peak resident set (``ru_maxrss`` of the child);
* one process that imports, in order, what ``run`` needs and reads its resident set
  (``/proc/self/status`` VmRSS) after each step: the interpreter, numpy, click, the CLI, the
  backend's package, the loaded engine, the first answer.

Medians over the runs. Timings are of a shared machine: compare the backends (and a before /
after) measured in one run.

    .venv/bin/python tools/device_footprint.py /tmp/engine-qs/bundle --runs 5
    .venv/bin/python tools/device_footprint.py BUNDLE --python /tmp/device-venv/bin/python \\
        --out results/device_footprint.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BACKENDS = {"litert": "ai_edge_litert.interpreter", "onnxruntime": "onnxruntime"}

_STEPS = r"""
import importlib, json, sys, time
t0 = time.perf_counter()
def rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
out = [("python", rss(), 0.0)]
def step(name, fn):
    fn()
    out.append((name, rss(), time.perf_counter() - t0))
bundle, x_path, backend, module = sys.argv[1:5]
step("numpy", lambda: importlib.import_module("numpy"))
step("click", lambda: importlib.import_module("click"))
step("edgeexit.cli", lambda: importlib.import_module("edgeexit.cli"))
step(backend, lambda: importlib.import_module(module))
import numpy as np
from edgeexit.runtime.engine import Engine
eng = []
step("engine loaded", lambda: eng.append(Engine.from_bundle(bundle, backend=backend, threads=1)))
x = np.load(x_path)[0]
step("first answer", lambda: eng[0].predict(x))
print(json.dumps(out))
"""


def _child(cmd: list[str], env: dict) -> tuple[float, int, str]:
    """Run ``cmd``; (wall seconds, peak RSS in kB, stdout). Reaped with ``os.wait4`` for its
    resource usage."""
    with tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, env=env, text=True)
        out = p.stdout.read()
        _, status, usage = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        p.stdout.close()
        if p.returncode != 0:
            err.seek(0)
            raise SystemExit(f"Error: {' '.join(cmd[:4])} ... failed ({p.returncode}): "
                             f"{err.read().strip()[-400:]}")
    return wall, usage.ru_maxrss, out


def measure(bundle: str, python: str, runs: int, x_path: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", TF_CPP_MIN_LOG_LEVEL="3")
    cli = {b: [] for b in BACKENDS}
    steps = {b: [] for b in BACKENDS}
    for _ in range(runs):
        for b, module in BACKENDS.items():
            wall, peak, _ = _child([python, "-m", "edgeexit", "run", bundle, "--input", x_path,
                                    "--backend", b], env)
            cli[b].append((wall, peak))
            _, _, out = _child([python, "-c", _STEPS, bundle, x_path, b, module], env)
            steps[b].append(json.loads(out))
    report = {"bundle": bundle, "python": python, "runs": runs, "backends": {}}
    for b in BACKENDS:
        walls, peaks = zip(*cli[b])
        names = [s[0] for s in steps[b][0]]
        rss = np.median([[s[1] for s in run] for run in steps[b]], axis=0)
        t = np.median([[s[2] for s in run] for run in steps[b]], axis=0)
        report["backends"][b] = {
            "run_wall_s": round(float(np.median(walls)), 3),
            "run_max_rss_mb": round(float(np.median(peaks)) / 1024, 1),
            "steps": [{"step": n, "rss_mb": round(float(r) / 1024, 1),
                       "added_mb": round(float(r - (rss[i - 1] if i else 0)) / 1024, 1),
                       "t_s": round(float(ti), 3)}
                      for i, (n, r, ti) in enumerate(zip(names, rss, t))],
        }
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle")
    ap.add_argument("--python", default=sys.executable, help="interpreter of the install to measure")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="2 runs")
    ap.add_argument("--out", default=None, help="write the table (results/NAME.json)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        with np.load(Path(a.bundle) / "golden.npz") as z:
            x_path = str(Path(tmp) / "one.npy")
            np.save(x_path, np.ascontiguousarray(z["inputs"][:1], np.float32))
        rep = measure(a.bundle, a.python, 2 if a.quick else a.runs, x_path)
    if a.out:
        from edgeexit.results import write_table

        rows = [[b, r["run_wall_s"], r["run_max_rss_mb"],
                 *[s["added_mb"] for s in r["steps"]]] for b, r in rep["backends"].items()]
        names = [s["step"] for s in next(iter(rep["backends"].values()))["steps"]]
        names[4] = "backend package"  # the step named after each row's backend
        names = [n.replace(".", "_").replace(" ", "_") for n in names]
        write_table(a.out, title="edgeexit run of one window: wall, peak RSS, RSS added per step",
                    columns=["backend", "run_wall_s", "run_max_rss_mb", *[f"{n}_mb" for n in names]],
                    rows=rows, command=sys.argv, extra=rep,
                    notes=f"medians of {rep['runs']} runs, backends alternating; {a.python}")
    if a.json:
        print(json.dumps(rep, indent=2))
        return
    for b, r in rep["backends"].items():
        print(f"{b}: edgeexit run of one window {r['run_wall_s']:.3f} s, peak RSS "
              f"{r['run_max_rss_mb']:.1f} MB")
        for s in r["steps"]:
            print(f"  {s['step']:16} {s['rss_mb']:6.1f} MB  (+{s['added_mb']:5.1f})  at {s['t_s']:.3f} s")


if __name__ == "__main__":
    main()
