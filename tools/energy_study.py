"""Energy-calibrated exit thresholds on MIT-BIH, end to end through the CLI, for several bundles.

For every bundle given (each is copied first; the original is left as it is):

1. ``edgeexit bench COPY --data MITDB --split train --limit N --meter M --json``: per-segment
   energy (and latency) measured on DS1 beats (the costs only; no DS2 beat is looked at);
2. ``edgeexit calibrate COPY --data MITDB --records R --bench that.json --cost energy
   --pareto-plot OUT/pareto.png``: thresholds at the lowest expected energy whose accuracy loss
   holds on the bundle's own validation records (R, read from its manifest);
3. ``edgeexit bench COPY --meter M --report OUT/report``: DS2 (all of it by default) with the
   report and its plots.

Prints one Markdown row per bundle: DS2 accuracy loss, energy per inference of the policy and the
monolithic model (above idle and gross), their ratios, and the latency ratio.

    .venv/bin/python tools/energy_study.py runs/mitdb-seed0/bundle-max_prob ... \\
        --mitdb ../shared/data/mitdb --out runs/energy-study [--quick]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from edgeexit.runtime.manifest import read_manifest


def edgeexit(*args: str) -> str:
    cmd = [str(Path(sys.executable).with_name("edgeexit")), *map(str, args)]
    print("$ edgeexit " + " ".join(map(str, args)),
          file=sys.stderr, flush=True)
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr[-2000:]}")
    return r.stdout


def study(bundle: Path, out: Path, args) -> dict:
    copy = out / "bundle"
    if copy.exists():
        shutil.rmtree(copy)
    shutil.copytree(bundle, copy)
    cal = read_manifest(copy).policy.calibration
    records = None if cal is None else cal.validation_records
    if not records:
        sys.exit(f"{bundle}: its manifest lists no validation records to calibrate on")
    common = ["--backend", args.backend, "--threads", "1", "--meter", args.meter,
              "--energy-seconds", str(args.energy_seconds), "--no-progress"]
    cost = json.loads(edgeexit("bench", copy, "--data", args.mitdb, "--split", "train",
                               "--limit", args.cost_beats, *common, "--json"))
    (out / "cost-bench.json").write_text(json.dumps(cost, indent=2))
    cal = json.loads(edgeexit("calibrate", copy, "--data", args.mitdb, "--records", ",".join(records),
                              "--bench", out / "cost-bench.json", "--cost", "energy",
                              "--pareto-plot", out / "pareto.png", "--json"))
    (out / "calibrate.json").write_text(json.dumps(cal, indent=2))
    limit = ["--limit", "5000"] if args.quick else []
    r = json.loads(edgeexit("bench", copy, *limit, *common, "--report", out / "report", "--json"))
    e, a = r["energy"], r["accuracy"]
    pe = e["per_inference_mj"]
    c = cal["policy"]["calibration"]
    return {"bundle": str(bundle), "policy": r["policy"]["name"], "cpu": r["host"]["cpu"],
            "meter": e["meter"], "kind": e["kind"], "thresholds": cal["policy"]["thresholds"],
            "val_loss": c["loss_points"], "val_bound": c["loss_bound"],
            "ds2_final": a["final_exit"], "ds2_loss": a["policy_loss_points"],
            "exits": r["exit_fractions"], "samples": r["samples"],
            "policy_mj": pe["policy"]["above_idle"], "mono_mj": pe["monolithic"]["above_idle"],
            "energy_ratio": e["ratios"]["policy_vs_monolithic"],
            "energy_ratio_gross": e["ratios"]["policy_vs_monolithic_gross"],
            "energy_vs_all": e["ratios"]["policy_vs_all_exits"],
            "latency_ratio": r["ratios"]["policy_vs_monolithic"], "report": str(out / "report")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundles", nargs="+", type=Path)
    ap.add_argument("--mitdb", required=True)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--meter", default="auto")
    ap.add_argument("--backend", default="litert")
    ap.add_argument("--energy-seconds", type=float, default=1.0)
    ap.add_argument("--cost-beats", default="2000", help="DS1 beats of the cost bench")
    ap.add_argument("--quick", action="store_true", help="5,000 DS2 beats instead of all")
    args = ap.parse_args()
    rows = []
    for b in args.bundles:
        t0 = time.perf_counter()
        name = f"{b.parent.name}-{b.name}"
        row = study(b, args.out / name, args)
        row["seconds"] = round(time.perf_counter() - t0, 1)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "rows.json").write_text(json.dumps(rows, indent=2))
    print(f"CPU: {rows[0]['cpu']}; meter: {rows[0]['meter']} ({rows[0]['kind']})")
    print("| bundle | policy | thresholds | DS2 final exit | DS2 loss (points) | exits taken | "
          "policy mJ | monolithic mJ | **energy policy / monolithic** (above idle; gross) | "
          "policy / all exits | latency policy / monolithic |")
    print("|" + "---|" * 11)
    for w in rows:
        print(f"| {w['bundle']} | {w['policy']} | {' '.join(f'{t:.2f}' for t in w['thresholds'])} | "
              f"{100 * w['ds2_final']:.1f}% | {w['ds2_loss']:.2f} | "
              f"{' / '.join(f'{100 * f:.1f}' for f in w['exits'])}% | {w['policy_mj']:.5f} | "
              f"{w['mono_mj']:.5f} | **{w['energy_ratio']:.3f}**; {w['energy_ratio_gross']:.3f} | "
              f"{w['energy_vs_all']:.3f} | {w['latency_ratio']:.3f} |")


if __name__ == "__main__":
    main()
