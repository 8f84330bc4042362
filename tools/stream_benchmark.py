"""Stream whole MIT-BIH records through a bundle as if live, and score the stream.

For every record (default: the 22 DS2 records, MLII lead, read block by block from the ``.dat``
file by :func:`edgeexit.runtime.stream.open_source`):

- beat detection sensitivity / PPV against the annotations (150 ms, each annotation matched once),
- classification against the annotations, and agreement with the offline path on the SAME peaks
  (``beat_windows`` over the whole record, ``Engine.predict`` per beat: identical windows should
  give identical answers), and with the offline batch detector (``windows_from_signal``) on the
  beats both found,
- the real-time factor (signal seconds / wall seconds; one thread),
- resident memory (VmRSS) when the stream passes its first minute and at its last beat.

    .venv/bin/python tools/stream_benchmark.py runs/mitdb-seed4/bundle-max_prob \
        --mitdb ../shared/data/mitdb
"""

from __future__ import annotations

import argparse
import json
import os
from array import array

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np

from edgeexit.data.mitbih import DS2
from edgeexit.runtime.engine import Engine
from edgeexit.runtime.peaks import windows_from_signal
from edgeexit.runtime.preprocess import beat_windows
from edgeexit.runtime.stream import _input_spec, open_source, resident_kb, stream_classify


def one_record(engine: Engine, base: str, block_s: float, offline: bool) -> dict:
    src = open_source(base, block_seconds=block_s)
    fs = src.fs
    r_seen, y_seen = array("q"), array("q")
    rss_first = None
    summary = None
    for ev in stream_classify(engine, src, keep_beats=offline):
        if ev.get("summary"):
            summary = ev
            break
        r_seen.append(ev["r_sample"])
        y_seen.append(ev["label_index"])
        if rss_first is None and ev["r_time_s"] >= 60.0:
            rss_first = resident_kb()
    rss_last = resident_kb()
    row = {"record": os.path.basename(base), "beats": summary["beats"],
           "se": summary["detection"]["sensitivity"], "ppv": summary["detection"]["ppv"],
           "tp": summary["detection"]["tp"], "fp": summary["detection"]["fp"],
           "fn": summary["detection"]["fn"],
           "accuracy": summary["classification"]["accuracy"],
           "confusion": summary["classification"]["confusion"],
           "signal_s": summary["signal_s"], "wall_s": summary["wall_s"],
           "rtf": summary["realtime_factor"],
           "rss_first_min_kb": rss_first, "rss_last_kb": rss_last,
           "rss_growth_kb": None if rss_first is None else rss_last - rss_first,
           "compute_s": summary["compute_s"], "compute_split_s": summary["compute_split_s"]}
    if offline:
        sig = np.concatenate(list(open_source(base, block_seconds=60.0).blocks)).astype(np.float32)
        peaks = np.frombuffer(r_seen, np.int64)
        ys = np.frombuffer(y_seen, np.int64)
        # the offline path on the same peaks: all stream peaks (incl. the first, dropped ones)
        window, r_offset, rr, morph = _input_spec(engine, fs)
        x, kept = beat_windows(sig, np.asarray(summary["all_peaks"]), fs, window=window, r_offset=r_offset,
                               rr_context=rr, morph_context=morph)
        r_off = np.asarray(summary["all_peaks"])[kept]
        same = np.isin(r_off, peaks)
        y_off = np.array([engine.predict(x[i]).label for i in np.flatnonzero(same)])
        order = np.searchsorted(peaks, r_off[same])
        row["offline_same_peaks"] = {"beats": int(same.sum()), "missing_in_stream": int((~same).sum()),
                                     "label_agreement": float(np.mean(y_off == ys[order]))}
        # the batch detector
        xb, rb = windows_from_signal(sig, fs, window=window, r_offset=r_offset, rr_context=rr,
                                     morph_context=morph)
        both = np.isin(rb, peaks)
        yb = engine.predict_batch(xb[both]).labels
        row["batch_detector"] = {"peaks": int(rb.size), "identical_peaks": int(both.sum()),
                                 "label_agreement": float(np.mean(yb == ys[np.searchsorted(peaks, rb[both])]))}
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle")
    p.add_argument("--mitdb", default="../shared/data/mitdb")
    p.add_argument("--records", default=None, help="comma-separated (default: DS2)")
    p.add_argument("--block-seconds", type=float, default=1.0)
    p.add_argument("--no-offline", action="store_true", help="skip the offline comparisons")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    engine = Engine.from_bundle(a.bundle, threads=1)
    records = a.records.split(",") if a.records else list(DS2)
    rows = []
    for rec in records:
        row = one_record(engine, os.path.join(a.mitdb, rec), a.block_seconds, not a.no_offline)
        rows.append(row)
        if not a.json:
            extra = ""
            if "offline_same_peaks" in row:
                extra = (f"  offline same peaks {100 * row['offline_same_peaks']['label_agreement']:.2f}%"
                         f"  batch detector: {row['batch_detector']['identical_peaks']}/"
                         f"{row['batch_detector']['peaks']} identical peaks, labels "
                         f"{100 * row['batch_detector']['label_agreement']:.2f}%")
            print(f"{row['record']}: {row['beats']} beats  Se {100 * row['se']:.2f}%  +P {100 * row['ppv']:.2f}%"
                  f"  acc {100 * row['accuracy']:.2f}%  RTF {row['rtf']:.0f}x  RSS growth "
                  f"{row['rss_growth_kb']} kB{extra}", flush=True)
    tp, fp, fn = (sum(r[k] for r in rows) for k in ("tp", "fp", "fn"))
    conf = np.sum([r["confusion"] for r in rows], axis=0)
    pooled = {"records": len(rows), "beats": sum(r["beats"] for r in rows), "se": tp / (tp + fn),
              "ppv": tp / (tp + fp), "tp": tp, "fp": fp, "fn": fn,
              "accuracy": float(np.trace(conf) / conf.sum()), "confusion": conf.tolist(),
              "rtf": sum(r["signal_s"] for r in rows) / sum(r["wall_s"] for r in rows),
              "max_rss_growth_kb": max(r["rss_growth_kb"] for r in rows),
              "rss_first_kb": rows[0]["rss_first_min_kb"], "rss_end_kb": rows[-1]["rss_last_kb"]}
    if rows and "offline_same_peaks" in rows[0]:
        n = sum(r["offline_same_peaks"]["beats"] for r in rows)
        pooled["offline_same_peaks_agreement"] = sum(
            r["offline_same_peaks"]["label_agreement"] * r["offline_same_peaks"]["beats"] for r in rows) / n
        nb = sum(r["batch_detector"]["identical_peaks"] for r in rows)
        pooled["batch_detector_identical_peaks"] = nb
        pooled["batch_detector_peaks"] = sum(r["batch_detector"]["peaks"] for r in rows)
        pooled["batch_detector_label_agreement"] = sum(
            r["batch_detector"]["label_agreement"] * r["batch_detector"]["identical_peaks"] for r in rows) / nb
    if a.json:
        print(json.dumps({"pooled": pooled, "records": rows}, indent=2))
        return
    print(f"POOLED {pooled['records']} records, {pooled['beats']} beats: Se {100 * pooled['se']:.2f}%  "
          f"+P {100 * pooled['ppv']:.2f}%  accuracy vs annotations {100 * pooled['accuracy']:.2f}%  "
          f"RTF {pooled['rtf']:.0f}x  max RSS growth first->last minute {pooled['max_rss_growth_kb']} kB  "
          f"RSS {pooled['rss_first_kb']} -> {pooled['rss_end_kb']} kB")
    if "offline_same_peaks_agreement" in pooled:
        print(f"offline path on the same peaks: {100 * pooled['offline_same_peaks_agreement']:.3f}% same labels; "
              f"batch detector: {pooled['batch_detector_identical_peaks']}/{pooled['batch_detector_peaks']} "
              f"identical peaks, {100 * pooled['batch_detector_label_agreement']:.3f}% same labels")


if __name__ == "__main__":
    main()
