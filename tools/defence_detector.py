"""The R-peak detector under a timing attack and the per-beat signal-quality index (issue 27).

``detector``: every DS2 record (MLII) through :func:`edgeexit.runtime.peaks.detect_r_peaks`
(the decision phase the stream detector shares), clean and with the naive timing attack of
issue 27: a Gaussian pulse (``--pulse-ms`` wide at half height, ``--eps`` mV) in the diastole of
every beat (``--phase`` of the way to the next annotated R peak). Sensitivity, PPV and extra
detections (150 ms matching), with the search-back's floor
(:data:`~edgeexit.runtime.peaks.SEARCH_BACK_MIN_SIGNAL`) at each value of ``--floors`` (0: Pan &
Tompkins' search-back as before).

``sqi``: the per-beat quality index (:func:`edgeexit.runtime.quality.beat_sqi`) of DS2's beats,
clean and with synthetic muscle noise at 12, 6, 0 and -6 dB mixed into the windows, and the
share of beats flagged unreadable at each threshold of ``--thresholds``.

    PYTHONPATH=. .venv/bin/python tools/defence_detector.py detector --out results/defence_detector.json
    PYTHONPATH=. .venv/bin/python tools/defence_detector.py sqi --out results/defence_sqi.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _records(mitdb: str, names):
    import wfdb

    from edgeexit.data.mitbih import AAMI_MAP

    for rec in names:
        r = wfdb.rdrecord(f"{mitdb}/{rec}")
        ann = wfdb.rdann(f"{mitdb}/{rec}", "atr")
        lead = r.sig_name.index("MLII") if "MLII" in r.sig_name else 0
        beats = np.asarray([s for s, sym in zip(ann.sample, ann.symbol) if sym in AAMI_MAP])
        yield rec, r.p_signal[:, lead].astype(np.float64), float(r.fs), beats


def pulses(x: np.ndarray, beats: np.ndarray, fs: float, eps: float, width_ms: float,
           phase: float) -> np.ndarray:
    """``x`` with a Gaussian pulse of height ``eps`` (mV) at ``phase`` of every RR interval."""
    sigma = width_ms / 1000.0 * fs / 2.3548  # FWHM -> sigma, samples
    half = int(np.ceil(4 * sigma))
    bump = eps * np.exp(-0.5 * (np.arange(-half, half + 1) / sigma) ** 2)
    out = x.copy()
    for a, b in zip(beats[:-1], beats[1:]):
        c = int(a + phase * (b - a))
        if half <= c < x.size - half:
            out[c - half:c + half + 1] += bump
    return out


def detector(args) -> tuple[list, list]:
    from edgeexit.data.mitbih import DS2
    from edgeexit.runtime import peaks
    from edgeexit.runtime.stream import MATCH_S
    from peaks_benchmark import match

    floors = [float(v) for v in args.floors.split(",")]
    totals = {(f, a): np.zeros(3, np.int64) for f in floors for a in ("clean", "attacked")}
    per_record = []
    for rec, x, fs, beats in _records(args.mitdb, DS2):
        tol = int(round(MATCH_S * fs))
        xa = pulses(x, beats, fs, args.eps, args.pulse_ms, args.phase)
        for f in floors:
            peaks.SEARCH_BACK_MIN_SIGNAL = f
            for name, sig in (("clean", x), ("attacked", xa)):
                det = peaks.detect_r_peaks(sig, fs)
                matched, _ = match(det, beats, tol)
                tp, fn = int(matched.sum()), int((~matched).sum())
                fp = int(det.size - tp)
                totals[(f, name)] += (tp, fn, fp)
                per_record.append([rec, f, name, tp, fn, fp])
    rows = []
    for (f, name), (tp, fn, fp) in totals.items():
        rows.append([f, name, int(tp + fn), round(tp / (tp + fn), 5), round(tp / (tp + fp), 5),
                     int(fn), int(fp)])
    return rows, per_record


def sqi(args) -> list:
    from edgeexit.data.mitbih import DS2
    from edgeexit.robust.noise import add_noise
    from edgeexit.runtime.preprocess import beat_windows, default_r_offset
    from edgeexit.runtime.quality import beat_sqi

    thresholds = [float(v) for v in args.thresholds.split(",")]
    window = 256
    off = default_r_offset(window)
    wins, fs = [], 360.0
    for rec, x, fs, beats in _records(args.mitdb, DS2):
        w, _ = beat_windows(x, beats, fs, window)
        wins.append(w[:, :1])
    w = np.concatenate(wins).astype(np.float32)
    rng = np.random.default_rng(0)
    w = w[np.sort(rng.choice(len(w), min(args.limit, len(w)), replace=False))]
    rows = []
    for snr in (None, 12.0, 6.0, 0.0, -6.0):
        xs = w if snr is None else add_noise(w, "ma", snr, fs=fs, signal_channels=1, seed=0)
        q = np.array([beat_sqi(v[0], off, fs) for v in xs])
        rows.append(["clean" if snr is None else f"ma {snr:g} dB", len(q),
                     round(float(np.median(q)), 2)]
                    + [round(float((q < t).mean()), 4) for t in thresholds])
    return rows


def main(argv=None) -> int:
    from edgeexit.results import write_table

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("step", choices=["detector", "sqi"])
    p.add_argument("--mitdb", default="../shared/data/mitdb")
    p.add_argument("--eps", type=float, default=0.2)
    p.add_argument("--pulse-ms", type=float, default=8.0)
    p.add_argument("--phase", type=float, default=0.6)
    p.add_argument("--floors", default="0,0.3")
    p.add_argument("--thresholds", default="2,3,4,5")
    p.add_argument("--limit", type=int, default=5000)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    if args.step == "detector":
        rows, per_record = detector(args)
        write_table(args.out, title=f"DS2 R-peak detection, clean and with a {args.eps:g} mV "
                    f"{args.pulse_ms:g} ms pulse at {args.phase:g} of every RR", columns=[
                        "search-back floor", "signal", "beats", "Se", "PPV", "missed", "extra"],
                    rows=rows, command=" ".join(sys.argv), extra={"per_record": per_record})
    else:
        rows = sqi(args)
        write_table(args.out, title="Per-beat SQI on DS2 windows (MLII), muscle noise mixed in",
                    columns=["input", "beats", "median SQI"]
                    + [f"flagged at SQI < {t}" for t in args.thresholds.split(",")],
                    rows=rows, command=" ".join(sys.argv))
    print(f"wrote {args.out} ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
