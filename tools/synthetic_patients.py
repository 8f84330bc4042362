"""Quick starts before and after the synthetic data's patients grew with the beats, side by side.

Issue 27: the quick start's stream check answered F for the paced beats of its one paced test
patient (Q sensitivity 4%), because 6,000 training beats from 24 simulated patients held only six
paced ones. Since then a synthetic data set draws one patient per
:data:`edgeexit.data.SYNTHETIC_BEATS_PER_PATIENT` beats (48 for the training set). This tool reads
quick-start runs of both (and of a later main, ``qs-main-sN``, where there) and writes the
comparison table. The runs, from the repository root of a checkout before the change
(``before``) and of one after it (``after``), each under ``/usr/bin/time``
(seeds 0, 4 and 5 stream a paced test patient; seeds 1 and 2 do not, their runs skip the check)::

    for N in 0 4 5; do /usr/bin/time -v -o DIR/time-after-sN.txt \\
        edgeexit quickstart --out DIR/qs-after-sN --threads 1 --seed N; done
    for N in 1 2; do ... --no-evaluate; done
    python tools/synthetic_patients.py DIR --out results/synthetic-patients.json
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from edgeexit.results import write_table

COLUMNS = [
    "seed", "training data", "test accuracy trained / deployed (2,000 windows)",
    "deployed test Se F / Q %",
    "stream clean: standard / robust", "robust stream Se % (N S V F Q)",
    "robust stream: noise 6 dB / timing 0.1 mV / PGD 0.1 mV", "quick start CPU user+sys / wall (s)",
]
VARIANTS = {"before": "24 patients (6 paced)", "after": "48 patients (12 paced)",
            "main": "48 patients, later main (minor-beat flag)"}


def _cpu(path: Path) -> str:
    """``user+sys / wall`` seconds from a ``/usr/bin/time -v`` output file ("-" without one)."""
    if not path.is_file():
        return "-"
    text = path.read_text()
    user, sys_ = (float(re.search(rf"{k} time \(seconds\): ([\d.]+)", text).group(1))
                  for k in ("User", "System"))
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", text).group(1)
    seconds = sum(float(p) * 60 ** i for i, p in enumerate(reversed(wall.split(":"))))
    return f"{user + sys_:.0f} / {seconds:.0f}"


def _row(root: Path, seed: int, variant: str) -> list | None:
    run = root / f"qs-{variant}-s{seed}"
    if not (run / "summary.json").is_file():
        return None
    st = json.loads((run / "summary.json").read_text())["stages"]
    test = f"{100 * st['compress']['accuracy'][0]:.1f} / {100 * st['compress']['accuracy'][1]:.1f}%"
    per_class = json.loads((run / "compressed" / "metrics.json").read_text())["exits"][-1]["test"][
        "per_class"]
    fq = " / ".join(f"{100 * per_class[c]['sensitivity']:.0f}" for c in "FQ")
    stream = {(r["model"].split()[0], r["input"].split(" ")[1]): r["accuracy"]
              for r in st.get("evaluate", {}).get("rows", []) if r["input"].startswith("stream")}
    report = run / "evaluate" / "stream" / "report.json"
    if not stream or not report.is_file():
        return [seed, VARIANTS[variant], test, fq, "-", "-", "-", _cpu(root / f"time-{variant}-s{seed}.txt")]
    se = json.loads(report.read_text())["clean"]["sensitivity"]
    pct = lambda v: f"{100 * v:.1f}"  # noqa: E731
    return [seed, VARIANTS[variant], test, fq,
            f"{pct(stream['standard', 'clean'])} / {pct(stream['robust', 'clean'])}%",
            " ".join(f"{100 * se[c]:.0f}" for c in "NSVFQ"),
            " / ".join(pct(stream["robust", k]) for k in ("muscle", "timing", "PGD")) + "%",
            _cpu(root / f"time-{variant}-s{seed}.txt")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path,
                    help="directory of the qs-{before,after,main}-sN quick starts (any missing)")
    ap.add_argument("--seeds", default="0,4,5,1,2")
    ap.add_argument("--out", type=Path, default=Path("results/synthetic-patients.json"))
    ap.add_argument("--commits", default="", help="the commits of the runs, for the notes")
    a = ap.parse_args()
    rows = [r for s in map(int, a.seeds.split(",")) for v in VARIANTS
            if (r := _row(a.runs, s, v)) is not None]
    write_table(
        a.out, title="Quick start before / after: training patients per beat (issue 27)",
        columns=COLUMNS, rows=rows,
        command=f"edgeexit quickstart --out DIR/qs-VARIANT-sN --threads 1 --seed N (under "
                f"/usr/bin/time -v; seeds 1, 2 with --no-evaluate); python "
                f"tools/synthetic_patients.py DIR --seeds {a.seeds} --commits '{a.commits}'",
        notes=("before: 6,000 training beats from 24 simulated patients (the generator's "
               "default); after: one patient per 125 beats (edgeexit.data.synthetic_patients), "
               "48; main: the same on a later main (the detector's minor-beat flag added). "
               "The 2,000 test windows (24 patients) and the 4 streamed patients are the "
               "same on both sides. Stream: 300 beats of the 4 test patients (seed + 1000) "
               "through the device path; seeds 0, 4 and 5 stream a paced patient (48, 17, 56 Q "
               "beats), seeds 1 and 2 none (their runs skip the check). Accuracy of the trained "
               "model's and the pruned, ctxadv fine-tuned model's final exit on the test "
               "windows; one training thread, the CPU time of the whole quick start."
               + (f" Runs at: {a.commits}." if a.commits else "")))


if __name__ == "__main__":
    main()
