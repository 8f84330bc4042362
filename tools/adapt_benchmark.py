"""Patient-specific protocol on MIT-BIH DS2 (AAMI EC57): adapt on the first N minutes of every
record, score the rest; the global model, the labelled adaptation and the unsupervised one on
exactly the same scored beats, for several general models (methods x seeds).

For every (method, seed, N) it runs :func:`edgeexit.adapt.patient_specific` over DS2's 22 records
and writes, via :mod:`edgeexit.results`:

- ``results/adapt_benchmark.json``: pooled gross statistics (accuracy, macro-F1 over N/S/V/F, S
  and V sensitivity and PPV) per model and mode, the mean over seeds, the final exit's accuracy
  under PGD (Linf 0.1 mV, 10 steps, a class-stratified sample of scored beats per record) and the
  seconds per adaptation (wall clock, ``--threads`` torch threads);
- ``results/adapt_benchmark_records.json``: the same per record, for every run.

Each finished (method, seed, N) is kept in ``--cache`` (JSON), so an interrupted run resumes and
the tables are written from whatever has finished. Full run (from the repository root)::

    nice -n 10 .venv/bin/python tools/adapt_benchmark.py --mitdb ../shared/data/mitdb \
        --models /work/models --cache runs/adapt_benchmark.json

``--quick``: standard seed 0, N = 5 only, six S/V-rich records (a smoke run of a few minutes).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

from edgeexit.adapt import AdaptConfig, patient_specific, replay_buffer
from edgeexit.checkpoint import load_checkpoint
from edgeexit.data import load_npz
from edgeexit.data.mitbih import DS1, DS2, load_mitbih
from edgeexit.results import write_table

QUICK_RECORDS = ("200", "202", "213", "222", "232", "233")
STATS = ("accuracy", "macro_f1", "S_se", "S_ppv", "V_se", "V_ppv")
ROBUST_EPS = 0.1


def _data(mitdb: str, records, cache: Path | None, name: str, spec):
    """``records`` cut as ``spec`` says, from an ``.npz`` cache when one is there."""
    path = None if cache is None else cache.with_name(f"{cache.stem}-{name}.npz")
    if path is not None and path.is_file():
        return load_npz(path)
    data = load_mitbih(mitdb, list(records), window=spec.window, rr_context=spec.rr_context,
                       morph_context=spec.morph_context)
    if path is not None:
        data.save_npz(path)
    return data


def _run_one(ckpt_path: Path, test, train, config: AdaptConfig, robust_limit: int) -> dict:
    ckpt = load_checkpoint(ckpt_path)
    replay = replay_buffer(ckpt, config.replay, config.seed, train)
    start = time.perf_counter()
    report = patient_specific(ckpt, test, config, replay=replay, robust_eps=ROBUST_EPS,
                              robust_limit=robust_limit,
                              progress=lambda r, i, n: logging.info("record %s (%d/%d)", r, i, n))
    report["elapsed_s"] = round(time.perf_counter() - start, 1)
    return report


def _rows(done: dict) -> tuple[list[list], list[list]]:
    """The pooled table (every model, then the mean over seeds) and the per-record table."""
    rows, groups = [], {}
    for key, rep in sorted(done.items()):
        method, seed, minutes = key.split("|")[:3]
        for mode, g in rep["pooled"].items():
            secs = [e["seconds"][mode] for e in rep["records"].values()]
            cpu = [e.get("cpu_seconds", {}).get(mode, np.nan) for e in rep["records"].values()]
            robust = rep.get("robust", {}).get(mode, {}).get("accuracy")
            row = [method, seed, float(minutes), mode, g["beats"], *[g.get(s, 0.0) for s in STATS],
                   robust, float(np.mean(secs)), float(np.max(secs)), float(np.mean(cpu)),
                   float(np.max(cpu))]
            rows.append(row)
            groups.setdefault((method, float(minutes), mode), []).append(row)
    for (method, minutes, mode), rs in sorted(groups.items()):
        if len(rs) > 1:
            cols = np.array([[r[i] if r[i] is not None else np.nan for i in range(5, 16)] for r in rs])
            rows.append([method, f"mean of {len(rs)}", minutes, mode, rs[0][4],
                         *[float(v) for v in np.nanmean(cols, axis=0)]])
    per_record = []
    for key, rep in sorted(done.items()):
        method, seed, minutes = key.split("|")[:3]
        for record, entry in rep["records"].items():
            for mode in rep["pooled"]:
                g = entry[mode]
                per_record.append([method, seed, float(minutes), record, mode, g["beats"],
                                   g.get("S_beats", 0), g.get("V_beats", 0),
                                   *[g.get(s, 0.0) for s in STATS], entry["seconds"][mode],
                                   entry.get("cpu_seconds", {}).get(mode)])
    return rows, per_record


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mitdb", required=True, help="the MIT-BIH directory")
    ap.add_argument("--models", default="/work/models",
                    help="directory of METHOD-seedS/model.pt general models (DS1-trained)")
    ap.add_argument("--methods", default="standard,rdi")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--minutes", default="5,2.5", help="N values; the later ones for seed 0 only")
    ap.add_argument("--records", default=None, help="DS2 records (default: all 22)")
    ap.add_argument("--trainable", default="heads", choices=("heads", "all"))
    ap.add_argument("--loss", default=None, choices=("parent", "clean"),
                    help="the adaptation's loss (default: edgeexit.adapt's, clean)")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--replay", type=int, default=None)
    ap.add_argument("--robust-limit", type=int, default=50, help="beats per record attacked")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache", default="runs/adapt_benchmark.json",
                    help="JSON of finished runs (resumed), beside it the cut data as .npz")
    ap.add_argument("--results", default="results", help="where the tables go")
    ap.add_argument("--name", default=None,
                    help="table name (default adapt_benchmark, adapt_benchmark_quick with --quick)")
    ap.add_argument("--quick", action="store_true", help="standard seed 0, N = 5, six records")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("edgeexit").setLevel(logging.WARNING)
    methods = ["standard"] if args.quick else args.methods.split(",")
    seeds = [0] if args.quick else [int(s) for s in args.seeds.split(",")]
    minutes = [5.0] if args.quick else [float(m) for m in args.minutes.split(",")]
    records = QUICK_RECORDS if args.quick else tuple(args.records.split(",")) if args.records else DS2
    overrides = {k: v for k, v in (("epochs", args.epochs), ("replay", args.replay),
                                   ("loss", args.loss)) if v is not None}
    cache = Path(args.cache)
    cache.parent.mkdir(parents=True, exist_ok=True)
    # settings other than the defaults are other runs too
    variant = "".join(f"|{k}={v}" for k, v in (("trainable", args.trainable), *overrides.items())
                      if not (k == "trainable" and v == "heads"))
    every = json.loads(cache.read_text()) if cache.is_file() else {}
    done = {k: v for k, v in every.items() if k.endswith("|" + ",".join(records) + variant)}
    first = load_checkpoint(Path(args.models) / f"{methods[0]}-seed{seeds[0]}" / "model.pt")
    spec = first.data_spec(args.mitdb)
    test = _data(args.mitdb, DS2, cache, "ds2", spec)
    test = test.subset(np.flatnonzero(np.isin(test.groups, records)))
    train = _data(args.mitdb, DS1, cache, "ds1", spec)
    plan = [(m, s, n) for n in minutes for m in methods for s in seeds if n == minutes[0] or s == seeds[0]]
    for method, seed, n in plan:
        key = f"{method}|{seed}|{n}|{','.join(records)}{variant}"  # other records: other runs
        path = Path(args.models) / f"{method}-seed{seed}" / "model.pt"
        if key in done or not path.is_file():
            logging.info("%s: %s", key, "done" if key in done else f"no {path}: skipped")
            continue
        config = AdaptConfig(minutes=n, trainable=args.trainable, seed=seed, threads=args.threads,
                             **overrides)
        logging.info("%s: adapting %d records", key, len(records))
        done[key] = _run_one(path, test, train, config, args.robust_limit)
        every[key] = done[key]
        cache.write_text(json.dumps(every))
        _write(done, args, records)
    _write(done, args, records)
    return 0


def _write(done: dict, args, records) -> None:
    if not done:
        return
    rows, per_record = _rows(done)
    note = ("QUICK (standard seed 0, N = 5, records " + ",".join(records) + "). " if args.quick else "")
    note += (f"DS2 records {len(records)}; adaptation: trainable {args.trainable}"
             + "".join(f", {k} {v}" for k, v in (("epochs", args.epochs), ("replay", args.replay),
                                                  ("loss", args.loss)) if v is not None) + ", "
             + f"{args.threads} torch thread(s), general models in {args.models}; robust: final exit "
             f"under PGD Linf {ROBUST_EPS} mV, 10 steps, {args.robust_limit} stratified scored "
             "beats per record; seconds: wall clock per adaptation (labelled: training and "
             "threshold calibration, no data loading); cpu_seconds: the process's CPU time for it "
             "(what it takes on an idle core at 1 thread; the wall clock grows with the host's "
             "load).")
    base = Path(args.results) / (args.name or ("adapt_benchmark_quick" if args.quick
                                               else "adapt_benchmark"))
    write_table(base.with_suffix(".json"), title="Patient-specific protocol on MIT-BIH DS2",
                columns=["method", "seed", "minutes", "mode", "scored_beats", *STATS,
                         "robust_acc_0.1mV", "seconds_mean", "seconds_max", "cpu_seconds_mean",
                         "cpu_seconds_max"],
                rows=rows, command=["python", "tools/adapt_benchmark.py", *sys.argv[1:]], notes=note)
    write_table(base.with_name(base.name + "_records.json"),
                title="Patient-specific protocol on MIT-BIH DS2, per record",
                columns=["method", "seed", "minutes", "record", "mode", "scored_beats", "S_beats",
                         "V_beats", *STATS, "seconds", "cpu_seconds"],
                rows=per_record, command=["python", "tools/adapt_benchmark.py", *sys.argv[1:]],
                notes=note)


if __name__ == "__main__":
    sys.exit(main())
