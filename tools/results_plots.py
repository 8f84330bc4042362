"""The docs' plots, drawn from the tables in results/ (results/plots/*.png; the docs site serves
them under results/plots/).

- Robustness curves: final-exit macro-F1 against the attack budget (max-average PGD, Linf, mV),
  per training method, from ``robustness-ranked-first.json`` and ``robustness-6epoch.json``.
- The quick start's report plots (accuracy against latency and energy as the exit threshold
  varies, exits taken, latency per segment, energy per inference), drawn by the same code as
  ``edgeexit bench --report`` from ``quickstart-report.json``. ``--quickstart RUN`` first stores
  the bench report of a quick start run (``RUN/report/report.json``) there as a results table.

    .venv/bin/edgeexit quickstart --out runs/quickstart
    .venv/bin/python tools/results_plots.py --quickstart runs/quickstart
    .venv/bin/python tools/results_plots.py            # the plots again, from results/ alone
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import shlex
import sys
from pathlib import Path

from edgeexit.report import load_result, plot_bench
from edgeexit.results import read_table, write_table

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "results"
_FIRST = re.compile(r"-?\d+(?:\.\d+)?")


def _numbers(cell) -> list[float]:
    """The macro-F1 figures of a cell: ``0.433 ± 0.036 (82.7%)`` -> [0.433];
    ``0.411 / 0.284 / 0.140 (25.8%)`` -> [0.411, 0.284, 0.140]."""
    if isinstance(cell, (int, float)):
        return [float(cell)]
    text = re.sub(r"\(.*?\)|±\s*[\d.]+", "", str(cell))
    return [float(v) for v in _FIRST.findall(text)]


def store_quickstart_report(run: Path, results: Path = RESULTS) -> Path:
    """``RUN/report/report.json`` (the quick start's bench) as ``results/quickstart-report.json``."""
    r = load_result(run / "report")
    lat, acc = r["latency_us"], r.get("accuracy") or {}
    energy = ((r.get("energy") or {}).get("per_inference_mj") or {})
    rows = [[path, lat[key]["mean"], acc.get(akey),
             (energy.get(key) or {}).get("above_idle")]
            for path, key, akey in (("early-exit policy", "policy", "policy"),
                                    ("monolithic", "monolithic", "monolithic"),
                                    ("all exits", "all_exits", "final_exit"))]
    summary = run / "summary.json"
    ran = json.loads(summary.read_text()).get("command") if summary.is_file() else None
    ran = ran if ran and "--out" in ran else f"{ran or 'edgeexit quickstart'} --out {run}"
    command = (f"{ran} && .venv/bin/python "
               f"tools/results_plots.py --quickstart {shlex.quote(str(run))}")
    when = dt.datetime.fromtimestamp((run / "report" / "report.json").stat().st_mtime, dt.timezone.utc)
    host = r.get("host") or {}
    return write_table(results / "quickstart-report.json",
                       title="The quick start's bench on the test patients",
                       columns=["path", "mean latency (us)", "accuracy", "energy (mJ, above idle)"],
                       rows=rows, command=command, extra={"bench": r},
                       measured={"date": when.date().isoformat(), "cpu": host.get("cpu"),
                                 "cpus": host.get("cores")},
                       notes="extra.bench is the whole bench report (its date: when it was "
                             "written); the plots are drawn from it.")


def robustness_curves(out: Path, results: Path = RESULTS) -> list[Path]:
    from edgeexit.plots import pyplot, save_png

    plt = pyplot()
    files = []
    first = read_table(results / "robustness-ranked-first.json")
    curves = {}
    for row in first.rows:
        model, what, follows = row[0], row[1], row[2]
        name = model.split(" / ")[0]
        if what == "clean, final exit":
            curves.setdefault(name, {})[0.0] = _numbers(follows)[0]
        elif what.startswith("max-average PGD 0.05 / 0.1 / 0.2"):
            curves.setdefault(name, {}).update(zip((0.05, 0.1, 0.2), _numbers(follows)))
    earlier = read_table(results / "robustness-6epoch.json")
    curves6 = {}
    for row in earlier.rows:
        name, policy = row[0].split(" / ")
        if policy == "max_prob":
            curves6[name] = dict(zip((0.0, 0.05, 0.1, 0.2), (_numbers(c)[0] for c in row[1:5])))
    for fname, title, data in (
            ("robustness-ranked-first.png", first.title.split(":")[0] + " (seeds 0-2)", curves),
            ("robustness-6epoch.png", "the earlier 6-epoch recipe (seeds 0-2; superseded)", curves6)):
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for name, pts in data.items():
            eps = sorted(pts)
            ax.plot(eps, [pts[e] for e in eps], "-o", ms=4, label=name)
        ax.set_xlabel("max-average PGD budget, mV (Linf, waveform only; 0 = clean)")
        ax.set_ylabel("final exit macro-F1 (N/S/V/F), MIT-BIH DS2")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        files.append(save_png(fig, out / fname))
    return files


def quickstart_plots(out: Path, results: Path = RESULTS) -> list[Path]:
    table = read_table(results / "quickstart-report.json")
    staging = out / ".quickstart"
    staging.mkdir(parents=True, exist_ok=True)
    files = []
    for f in plot_bench(table.extra["bench"], staging):
        files.append(f.replace(out / f"quickstart-{f.name}"))
    staging.rmdir()
    return files


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quickstart", type=Path, metavar="RUN",
                    help="store RUN/report/report.json (a quick start run) in results/ first")
    ap.add_argument("--out", type=Path, default=RESULTS / "plots", help="where the PNGs go")
    args = ap.parse_args(argv)
    if args.quickstart is not None:
        print(f"stored {store_quickstart_report(args.quickstart)}")
    args.out.mkdir(parents=True, exist_ok=True)
    files = robustness_curves(args.out)
    if (RESULTS / "quickstart-report.json").is_file():
        files += quickstart_plots(args.out)
    for f in files:
        print(f"wrote {f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
