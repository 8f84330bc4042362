"""Robustness on the device path, MIT-BIH DS2 streamed end to end, next to the window-level figures.

For every model directory (``model.pt``; default: the shared DS1-trained models
/work/models/standard-seed{0,1,2} and /work/models/rdi-seed{0,1,2} that exist):

1. export an fp32 ONNX bundle for rpi4 with the max_prob policy (thresholds calibrated on the
   validation records training held out): WORK/<model>/bundle;
2. stream DS2's 22 records through it end to end (``edgeexit evaluate BUNDLE --records``, the
   library's :func:`edgeexit.robust.stream.evaluate.evaluate_stream`): clean, synthetic muscle
   noise at 12 / 6 / 0 dB mixed into the continuous signal, and the attacks on the continuous
   signal (timing, white-box PGD through the device path, Square through the runtime) at
   0.05 / 0.1 / 0.2 mV, DeepSloth at the largest: WORK/<model>/stream/report.json;
3. today's window-level evaluation of the same bundle (``edgeexit evaluate``: the DS2 windows cut
   at the annotated R peaks, RR context held, policy-aware PGD at the same budgets, the same
   noise kind per window): WORK/<model>/window/report.json.

Every report is skipped when it exists (resumable; ``--table-only`` rewrites the table). The table
(results/stream-robustness.json, or ``--out``) has one row per model and input, and one per method
with the mean over the seeds present.

    nice -n 10 .venv/bin/python tools/stream_robustness.py --quick --work runs/stream-robustness
    nice -n 10 .venv/bin/python tools/stream_robustness.py --work runs/stream-robustness-full

Full: whole records (30 min each), PGD 10 steps x 2 rounds, Square 100 queries, 1000 windows at
window level. Quick: the first 3 minutes of every DS2 record, PGD 5 steps x 2 rounds, Square 30
queries, 500 windows, no DeepSloth.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MODELS = [f"/work/models/{m}-seed{s}" for m in ("standard", "rdi") for s in (0, 1, 2)]
EPS = (0.05, 0.1, 0.2)
SNR = (12.0, 6.0, 0.0)
COLUMNS = ["model", "method", "seed", "input", "eps", "det_se", "det_ppv", "false_det",
           "accuracy", "macro_f1", "S_se", "V_se", "window_accuracy", "window_macro_f1",
           "window_S_se", "window_V_se", "same_beats_window_acc", "same_beats_e2e_acc"]

log = logging.getLogger("stream_robustness")


def settings(quick: bool) -> dict:
    if quick:
        return {"minutes": 3.0, "steps": 5, "rounds": 2, "queries": 30, "limit": 500,
                "attacks": ("timing", "pgd", "square")}
    return {"minutes": None, "steps": 10, "rounds": 2, "queries": 100, "limit": 1000,
            "attacks": ("timing", "pgd", "square", "slowdown")}


def export(model_dir: Path, out: Path) -> Path:
    from edgeexit.export.bundle import ExportConfig, export_bundle

    if not (out / "manifest.json").is_file():
        export_bundle(model_dir / "model.pt", out, ExportConfig(
            target="rpi4", precision="fp32", formats=("onnx",), monolithic=False))
    return out


def stream_report(bundle: Path, mitdb: Path, out: Path, s: dict, threads: int) -> dict:
    from edgeexit.robust.stream.evaluate import StreamEvalConfig, evaluate_stream

    if not (out / "report.json").is_file():
        cfg = StreamEvalConfig(eps=s["eps"], attacks=s["attacks"], noise=("ma",), snr_db=SNR,
                               minutes=s["minutes"], steps=s["steps"], rounds=s["rounds"],
                               square_queries=s["queries"], threads=threads)
        evaluate_stream(bundle, str(mitdb), config=cfg, out_dir=out,
                        progress=lambda what, d, n: log.info("stream %s: %s (%d/%d)", bundle, what, d, n))
    return json.loads((out / "report.json").read_text())


def window_report(bundle: Path, out: Path, s: dict, threads: int) -> dict:
    from edgeexit.robust.evaluate import EvalConfig, evaluate

    if not (out / "report.json").is_file():
        cfg = EvalConfig(eps=s["eps"], attacks=("policy",), sanity_eps=None, noise=("ma",), snr_db=SNR,
                         limit=s["limit"], steps=2 * s["steps"], threads=threads)
        evaluate(bundle, config=cfg, out_dir=out,
                 progress=lambda what, d, n: log.info("window %s: %s (%d/%d)", bundle, what, d, n))
    return json.loads((out / "report.json").read_text())


def _w(m: dict | None) -> list:
    if m is None:
        return [None] * 4
    p = m["policy"]
    return [p["accuracy"], p["macro_f1"], p["sensitivity"].get("S"), p["sensitivity"].get("V")]


def rows_of(name: str, method: str, seed, stream: dict, window: dict) -> list[list]:
    wnoise = {n["snr_db"]: n for n in window.get("noise", [])}
    watk = {a["eps"]: a for a in window.get("attacks", []) if a["attack"] == "policy"}

    def row(inp, eps, m, w, same=None):
        return [name, method, seed, inp, eps, m["detection"]["sensitivity"], m["detection"]["ppv"],
                m["detection"]["fp"], m["accuracy"], m["macro_f1"], m["sensitivity"].get("S"),
                m["sensitivity"].get("V"), *_w(w),
                None if same is None else same["window_context_held_accuracy"],
                None if same is None else same["end_to_end_accuracy"]]

    out = [row("clean", None, stream["clean"], window.get("clean"))]
    out += [row(f"noise ma {n['snr_db']:g} dB", None, n, wnoise.get(n["snr_db"]))
            for n in stream["noise"]]
    out += [row(a["attack"], a["eps"], a, watk.get(a["eps"]) if a["attack"] == "pgd" else None,
                a.get("same_beats")) for a in stream["attacks"]]
    return out


def means(rows: list[list]) -> list[list]:
    """One row per (method, input, eps): the mean over the seeds present."""
    groups: dict = {}
    for r in rows:
        groups.setdefault((r[1], r[3], r[4]), []).append(r)
    out = []
    for (method, inp, eps), rs in groups.items():
        cells = []
        for j in range(5, len(COLUMNS)):
            vals = [r[j] for r in rs if r[j] is not None]
            cells.append(float(np.mean(vals)) if vals else None)
        out.append([f"mean of {len(rs)}", method, "mean", inp, eps, *cells])
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS), help="model directories (model.pt inside)")
    ap.add_argument("--mitdb", type=Path, default=REPO.parent / "shared" / "data" / "mitdb")
    ap.add_argument("--work", type=Path, required=True, help="bundles and reports go here")
    ap.add_argument("--out", type=Path, default=REPO / "results" / "stream-robustness.json")
    ap.add_argument("--quick", action="store_true", help="the reduced settings (see above)")
    ap.add_argument("--no-window", action="store_true", help="skip the window-level evaluation")
    ap.add_argument("--table-only", action="store_true", help="only (re)write the table")
    ap.add_argument("--minutes", type=float, default=None, help="override the minutes per record")
    ap.add_argument("--eps", default=",".join(f"{e:g}" for e in EPS),
                    help="attack budgets in mV, comma-separated (a subset: a shorter run)")
    ap.add_argument("--attacks", default=None,
                    help="stream attacks, comma-separated (default: the mode's; e.g. pgd,timing "
                         "for a shorter full run)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    s = settings(args.quick)
    if args.minutes:
        s["minutes"] = args.minutes
    s["eps"] = tuple(float(e) for e in args.eps.split(",") if e.strip())
    if args.attacks:
        s["attacks"] = tuple(a.strip() for a in args.attacks.split(",") if a.strip())
    rows = []
    for d in [Path(m) for m in args.models.split(",") if m]:
        if not (d / "model.pt").is_file():
            log.warning("%s: no model.pt, skipped", d)
            continue
        work = args.work / d.name
        if args.table_only and not (work / "stream" / "report.json").is_file():
            continue
        t0 = time.perf_counter()
        bundle = export(d, work / "bundle")
        stream = stream_report(bundle, args.mitdb, work / "stream", s, args.threads)
        window = {} if args.no_window else window_report(bundle, work / "window", s, args.threads)
        # the model family is the directory's name without "-seedN" (rdift-seed0: rdi fine-tuned),
        # the training method the checkpoint's (stream["target"]["method"])
        family, _, seed = d.name.rpartition("-seed") if "-seed" in d.name else (d.name, "", None)
        method = f"{family} ({stream['target']['method']})"
        rows += rows_of(d.name, method, seed, stream, window)
        log.info("%s done in %.0f s", d.name, time.perf_counter() - t0)
    if not rows:
        log.error("no model evaluated")
        return 1
    from edgeexit.results import read_table, to_markdown, write_table

    what = (f"the first {s['minutes']:g} min of each DS2 record" if s["minutes"]
            else "whole DS2 records") + (" (--quick)" if args.quick else "")
    argv = list(sys.argv if argv is None else ["tools/stream_robustness.py", *argv])
    command = [a for a in argv if a != "--table-only"]  # what measures it (the reports are cached)
    path = write_table(
        args.out, command=command, title="Robustness on the device path: MIT-BIH DS2 streamed end to end vs window level",
        columns=COLUMNS, rows=rows + means(rows),
        notes=(f"{what}; fp32 ONNX bundles for rpi4, max_prob policy. Stream columns: detections "
               "matched to annotations within 150 ms, accuracy / macro-F1 (N,S,V,F) / S and V "
               "sensitivity with missed beats counted against their class. window_*: the same "
               "bundle on DS2 windows cut at the annotated R peaks, RR context held (edgeexit "
               "evaluate, policy-aware PGD at the same eps; noise per window at the same SNR; "
               f"{s['limit']} class-stratified windows). same_beats_*: on the beats the PGD "
               "attacked, the window attack with the context held vs the end-to-end attack. "
               "Budgets: Linf mV on the raw samples."),
        extra={"settings": s, "eps": s["eps"], "snr_db": SNR})
    print(to_markdown(read_table(path)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
