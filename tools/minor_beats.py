"""What the detector's minor-beat flag (``edgeexit.runtime.peaks.MINOR_AMPLITUDE``) costs and buys.

A detection under a fraction of the recent full-size beats' amplitude is a *minor* beat: answered,
but left out of its neighbours' RR intervals and morphology template. For each fraction given:

- ``mitdb``: the real beats of MIT-BIH records (DS1 by default, where the fraction is chosen) that
  the batch detector flags minor, per annotated class, and how many of its false detections it
  flags (the cost: a flagged real beat's neighbours lose it from their context);
- ``parts OUT``: the robust bundle under the strongest timing variant taken apart (shrinking
  alone, bursts alone, both; both with a perfect flag or a perfect detector);
- ``quickstart OUT``: the quick start's two bundles (``OUT/bundle``, the deployed robust one, and
  ``OUT/bundle-standard``) on its four simulated test patients (300 streamed beats): clean accuracy
  and accuracy under the amplitude-aware timing attack at 0.1 mV, its strongest variant per
  patient as the quick start's check measures it (the gain; every variant in the table's
  ``extra``).

    .venv/bin/python tools/minor_beats.py mitdb --fractions 0,0.4,0.5,0.6
    .venv/bin/python tools/minor_beats.py quickstart runs/quickstart --fractions 0,0.4,0.5,0.6
    .venv/bin/python tools/minor_beats.py parts runs/quickstart

Each writes a table to ``results/`` (``--out``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("minor_beats")


def _fractions(text: str) -> list[float]:
    return [float(v) for v in text.split(",")]


def mitdb(args) -> list[list]:
    from edgeexit.data.mitbih import DS1, DS2
    from edgeexit.robust.stream.device import match
    from edgeexit.robust.stream.records import wfdb_record
    from edgeexit.runtime import peaks as P

    names = {"ds1": DS1, "ds2": DS2}.get(args.records, tuple(args.records.split(",")))
    flagged = {f: np.zeros(5, np.int64) for f in args.fractions}
    false = {f: [0, 0] for f in args.fractions}
    annotated = np.zeros(5, np.int64)
    for name in names:
        rec = wfdb_record(args.mitdb / name)
        annotated += np.bincount(rec.ann_labels[rec.ann_labels >= 0], minlength=5)
        for f in args.fractions:
            P.MINOR_AMPLITUDE = f
            peaks, minor = P.detect_beats(rec.signal, rec.fs)
            m = match(rec.ann_samples, peaks, round(0.15 * rec.fs))
            ok = m >= 0
            flagged[f] += np.bincount(rec.ann_labels[m[ok]][minor[ok]], minlength=5)
            false[f][0] += int((~ok).sum())
            false[f][1] += int(minor[~ok].sum())
        log.info("%s done", name)
    return [[args.records, f, *flagged[f].tolist(), int(flagged[f].sum()),
             round(100 * flagged[f].sum() / annotated.sum(), 3), *false[f], *annotated.tolist()]
            for f in args.fractions]


MITDB_COLUMNS = ["records", "fraction", "flagged_N", "flagged_S", "flagged_V", "flagged_F",
                 "flagged_Q", "flagged", "flagged_pct", "false_detections", "false_flagged",
                 "annotated_N", "annotated_S", "annotated_V", "annotated_F", "annotated_Q"]


def quickstart(args) -> tuple[list[list], list[list]]:
    """The rows (clean, strongest timing variant per patient) and every variant's rows."""
    from edgeexit.robust.stream.attacks import TIMING_VARIANTS, TimingAttack, _end_to_end_accuracy
    from edgeexit.robust.stream.device import Tally
    from edgeexit.robust.stream.evaluate import StreamEvalConfig, _records_for, device_path
    from edgeexit.runtime import peaks as P

    rows, variants = [], []
    out = args.out_dir
    for model, bundle, ck in (("standard", out / "bundle-standard", out / "model.pt"),
                              ("robust", out / "bundle", out / "compressed" / "model.pt")):
        device, t = device_path(bundle, ck, threads=1)
        recs = _records_for("synthetic", t, StreamEvalConfig(synthetic_beats=args.beats))
        classes = tuple(device.engine.classes)

        def score(runs) -> tuple[float, int]:
            tally = Tally(len(classes))
            for r in recs:
                tally.add(r.ann_samples, r.ann_labels, runs[r.name], r.fs)
            rep = tally.report(classes)
            return round(100 * rep["accuracy"], 1), int(rep["detection"]["fp"])

        for f in args.fractions:
            P.MINOR_AMPLITUDE = f
            clean = {r.name: device.run(r.signal) for r in recs}
            rows.append([model, f, "clean", *score(clean), ""])
            best = {r.name: (2.0, None) for r in recs}
            for place, shrink, every in TIMING_VARIANTS:
                runs, per = {}, []
                for r in recs:
                    run = device.run(TimingAttack(args.eps, place=place, shrink=shrink, every=every)(r, clean[r.name]))
                    runs[r.name] = run
                    acc = _end_to_end_accuracy(r, run)
                    per.append(round(100 * acc, 1))
                    if acc < best[r.name][0]:
                        best[r.name] = (acc, run)
                name = f"timing {place}{' shrunk' if shrink else ''} every {every}"
                variants.append([model, f, name, *score(runs), " / ".join(map(str, per))])
            runs = {k: v[1] for k, v in best.items()}
            per = [round(100 * v[0], 1) for v in best.values()]
            rows.append([model, f, "timing: strongest per patient", *score(runs), " / ".join(map(str, per))])
            log.info("%s fraction %g: %s", model, f, rows[-1])
    return rows, variants


def parts(args) -> list[list]:
    """The quick start's robust bundle under the strongest timing variant (bursts where the
    signal is tallest in every interval, beats shrunk by 2 eps), taken apart: the shrinking
    alone, the bursts alone, both; and both scored with a perfect flag (every false detection
    minor) or a perfect detector (only the real beats' detections), from the windows cut offline
    at those peaks."""
    from edgeexit.robust.stream.attacks import TimingAttack, _shrink
    from edgeexit.robust.stream.device import Tally, match
    from edgeexit.robust.stream.evaluate import StreamEvalConfig, _records_for, device_path
    from edgeexit.runtime.peaks import detect_beats
    from edgeexit.runtime.preprocess import beat_windows

    out = args.out_dir
    device, t = device_path(out / "bundle", out / "compressed" / "model.pt", threads=1)
    recs = _records_for("synthetic", t, StreamEvalConfig(synthetic_beats=args.beats))
    classes, eng, eps = tuple(device.engine.classes), device.engine, args.eps
    streamed = {k: Tally(len(classes)) for k in ("shrink", "bursts", "both")}
    offline = {"perfect flag": [0, 0], "perfect detector": [0, 0]}
    for r in recs:
        clean = device.run(r.signal)
        shrink = np.zeros_like(r.signal)
        _shrink(shrink, r.signal, clean.peaks, r.fs, eps)
        bursts = TimingAttack(eps, place="amplitude", shrink=False, every=1)(r, clean) - r.signal
        both = TimingAttack(eps, place="amplitude", shrink=True, every=1)(r, clean)
        for name, x in (("shrink", r.signal + shrink), ("bursts", r.signal + bursts), ("both", both)):
            streamed[name].add(r.ann_samples, r.ann_labels, device.run(x), r.fs)
        peaks, minor = detect_beats(both, r.fs)
        m = match(r.ann_samples, peaks, round(0.15 * r.fs))
        real = m >= 0
        for name, p, flags, ann in (("perfect flag", peaks, minor | ~real, m),
                                    ("perfect detector", peaks[real], None, m[real])):
            w, kept = beat_windows(both.astype(np.float32), p, r.fs, eng.input_shape[-1],
                                   r_offset=device.r_offset, rr_context=True, minor=flags)
            a = ann[kept]
            got = np.array([eng.predict(v).label for v in w[a >= 0]])
            offline[name][0] += int((got == r.ann_labels[a[a >= 0]]).sum())
            offline[name][1] += int(r.ann_samples.size)
    rows = [["shrink only (no burst)", round(100 * streamed["shrink"].report(classes)["accuracy"], 1)],
            ["bursts only", round(100 * streamed["bursts"].report(classes)["accuracy"], 1)],
            ["both (the attack), streamed", round(100 * streamed["both"].report(classes)["accuracy"], 1)]]
    rows += [[f"both, {k} (offline windows)", round(100 * c / n, 1)] for k, (c, n) in offline.items()]
    return rows


QUICKSTART_COLUMNS = ["model", "fraction", "input", "accuracy_pct", "false_detections",
                      "per_patient_pct"]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    m = sub.add_parser("mitdb", help="real beats flagged minor on MIT-BIH, per class")
    m.add_argument("--mitdb", type=Path, default=REPO.parent / "shared" / "data" / "mitdb")
    m.add_argument("--records", default="ds1", help="ds1, ds2 or comma-separated record names")
    q = sub.add_parser("quickstart", help="the quick start's bundles under the timing attack")
    t = sub.add_parser("parts", help="the strongest timing variant on the quick start, taken apart")
    for p in (q, t):
        p.add_argument("out_dir", type=Path, help="an `edgeexit quickstart --out` directory")
        p.add_argument("--beats", type=int, default=300, help="streamed beats (the quick start's check)")
        p.add_argument("--eps", type=float, default=0.1, help="attack budget in mV")
    for p in (m, q):
        p.add_argument("--fractions", type=_fractions, default=[0.0, 0.4, 0.5, 0.6],
                       help="MINOR_AMPLITUDE values, comma-separated (0: no flag)")
    for p in (m, q, t):
        p.add_argument("--out", type=Path, default=None, help="the results table (.json)")
    args = ap.parse_args(argv)
    if args.what != "mitdb" and not (args.out_dir / "bundle" / "manifest.json").is_file():
        ap.error(f"{args.out_dir}: no quick start output here (no bundle/manifest.json); "
                 "give the directory of `edgeexit quickstart --out DIR`")
    if args.what == "mitdb" and not args.mitdb.is_dir():
        ap.error(f"--mitdb {args.mitdb}: not a directory of MIT-BIH records")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from edgeexit.results import to_markdown, write_table

    extra = None
    if args.what == "mitdb":
        rows, cols = mitdb(args), MITDB_COLUMNS
        title = f"Real MIT-BIH beats ({args.records}) the detector flags minor, per MINOR_AMPLITUDE"
    elif args.what == "parts":
        rows, cols = parts(args), ["input", "accuracy_pct"]
        title = (f"The quick start's robust bundle under the strongest timing variant at {args.eps:g} mV, "
                 "taken apart")
    else:
        (rows, variants), cols = quickstart(args), QUICKSTART_COLUMNS
        extra = {"variants": {"columns": cols, "rows": variants}}
        title = (f"Quick start bundles on {args.beats} streamed beats, timing attack {args.eps:g} mV, "
                 "per MINOR_AMPLITUDE")
    out = args.out or REPO / "results" / f"minor-beats-{args.what}.json"
    path = write_table(out, title=title, columns=cols, rows=rows, extra=extra,
                       command=["tools/minor_beats.py", *argv])
    from edgeexit.results import read_table

    print(to_markdown(read_table(path)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
