"""Score the device-side R-peak detectors against the MIT-BIH beat annotations.

Sensitivity (Se) and positive predictivity (+P) with the usual 150 ms matching tolerance (each
annotated beat matched at most once), and the offset between detected and annotated R peaks, over
the 44 non-paced records (MLII lead). Our own matcher, not PhysioNet's bxb (no exclusions).

``--detector batch`` scores :func:`edgeexit.runtime.peaks.detect_r_peaks` on each whole record;
``--detector stream`` the causal detector of ``run --stream``
(:class:`edgeexit.runtime.stream.StreamDetector`) fed in 1 s blocks, scored both with this matcher
and with the stream's own online matcher (the figures ``run --stream`` reports).

    .venv/bin/python tools/peaks_benchmark.py --mitdb ../shared/data/mitdb
    .venv/bin/python tools/peaks_benchmark.py --detector stream --records ds2
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import wfdb

from edgeexit.data.mitbih import AAMI_MAP, DS1, DS2
from edgeexit.runtime.peaks import detect_r_peaks
from edgeexit.runtime.stream import MATCH_S, StreamDetector, _Scorer


def stream_peaks(x: np.ndarray, fs: float, block_s: float = 1.0) -> np.ndarray:
    """The R peaks the streaming detector commits when ``x`` arrives in ``block_s`` blocks."""
    det = StreamDetector(fs)
    n = max(1, round(block_s * fs))
    out: list[int] = []
    for i in range(0, x.size, n):
        out += det.push(x[i:i + n])
    return np.asarray(out + det.flush(), np.int64)


def online_scores(det: np.ndarray, ann: np.ndarray, tol: int, end: int) -> tuple[int, int, int]:
    """(tp, fn, fp) of the stream's online matcher (``run --stream``'s summary)."""
    sc = _Scorer(ann, np.zeros(ann.size, np.int64), tol, 1)
    for p in det.tolist():
        sc.match(p)
    sc.finish(end)
    return sc.tp, sc.fn, sc.fp


def match(det: np.ndarray, ann: np.ndarray, tol: int) -> tuple[np.ndarray, np.ndarray]:
    """Greedy nearest-first matching; returns (matched annotation mask, offsets of matches)."""
    j = np.searchsorted(ann, det)
    pairs = []
    for k in (j - 1, j):
        ok = (k >= 0) & (k < ann.size)
        d = np.abs(det[ok] - ann[k[ok]])
        sel = d <= tol
        pairs.append(np.stack([np.flatnonzero(ok)[sel], k[ok][sel], d[sel]], 1))
    pairs = np.concatenate(pairs)
    pairs = pairs[np.argsort(pairs[:, 2], kind="stable")]
    used_det = np.zeros(det.size, bool)
    used_ann = np.zeros(ann.size, bool)
    offsets = []
    for a, b, _ in pairs:
        if not used_det[a] and not used_ann[b]:
            used_det[a] = used_ann[b] = True
            offsets.append(det[a] - ann[b])
    return used_ann, np.asarray(offsets)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mitdb", default="../shared/data/mitdb", help="WFDB directory")
    p.add_argument("--records", default=None,
                   help="comma-separated records, or ds1 / ds2 (default DS1+DS2)")
    p.add_argument("--detector", choices=("batch", "stream"), default="batch")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    named = {"ds1": list(DS1), "ds2": list(DS2)}
    records = (named.get(a.records.lower()) or a.records.split(",")) if a.records else sorted(DS1 + DS2)
    tp = fn = fp = 0
    online = np.zeros(3, np.int64)
    offsets, rows = [], []
    for rec in records:
        r = wfdb.rdrecord(f"{a.mitdb}/{rec}")
        ann = wfdb.rdann(f"{a.mitdb}/{rec}", "atr")
        lead = r.sig_name.index("MLII") if "MLII" in r.sig_name else 0
        beats = np.asarray([s for s, sym in zip(ann.sample, ann.symbol) if sym in AAMI_MAP])
        t0 = time.perf_counter()
        x = r.p_signal[:, lead]
        det = detect_r_peaks(x, r.fs) if a.detector == "batch" else stream_peaks(x, r.fs)
        seconds = time.perf_counter() - t0
        tol = int(round(MATCH_S * r.fs))
        online += online_scores(det, beats, tol, x.size)
        matched, offs = match(det, beats, tol)
        r_tp, r_fn, r_fp = int(matched.sum()), int((~matched).sum()), int(det.size - matched.sum())
        tp, fn, fp = tp + r_tp, fn + r_fn, fp + r_fp
        offsets.append(np.abs(offs) / r.fs * 1000.0)
        rows.append({"record": rec, "se": r_tp / max(r_tp + r_fn, 1), "ppv": r_tp / max(r_tp + r_fp, 1),
                     "missed": r_fn, "extra": r_fp, "seconds": round(seconds, 3)})
    off = np.concatenate(offsets)
    total = {"records": len(records), "beats": tp + fn, "se": tp / (tp + fn), "ppv": tp / (tp + fp),
             "missed": fn, "extra": fp, "median_offset_ms": float(np.median(off)),
             "p90_offset_ms": float(np.percentile(off, 90)), "detector": a.detector,
             "seconds": round(sum(r["seconds"] for r in rows), 2),
             "online_se": float(online[0] / (online[0] + online[1])),
             "online_ppv": float(online[0] / (online[0] + online[2]))}
    if a.json:
        print(json.dumps({"total": total, "records": rows}, indent=2))
        return
    for row in sorted(rows, key=lambda r: min(r["se"], r["ppv"]))[:8]:
        print(f"{row['record']}: Se {100 * row['se']:.2f}%  +P {100 * row['ppv']:.2f}%  "
              f"missed {row['missed']}  extra {row['extra']}  {row['seconds']} s")
    print(f"TOTAL {total['records']} records, {total['beats']} beats: Se {100 * total['se']:.2f}%  "
          f"+P {100 * total['ppv']:.2f}%  median offset {total['median_offset_ms']:.2f} ms  "
          f"(p90 {total['p90_offset_ms']:.1f} ms)  detector {a.detector} {total['seconds']} s")
    print(f"online matcher (run --stream's): Se {100 * total['online_se']:.2f}%  "
          f"+P {100 * total['online_ppv']:.2f}%")


if __name__ == "__main__":
    main()
