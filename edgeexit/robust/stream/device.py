"""The device path on a whole record, and its beats scored against the annotations.

:func:`run_device` streams a record's signal through
:func:`edgeexit.runtime.stream.stream_classify` (the very code of ``edgeexit run --stream``: the
R-peak detector, the RR and morphology context, the engine and its exit policy), optionally
keeping the input window of every beat it answered (for the white-box and black-box attacks,
which craft on what the device computed).

:func:`score` matches the detections to the annotated beats as AAMI EC57 does (each detection
to the nearest unused annotation within 150 ms, :data:`~edgeexit.runtime.stream.MATCH_S`) and
reports detection sensitivity / PPV and, for the classes: a confusion matrix of the matched,
answered beats; missed beats (no detection, or a detection the device did not answer) counted
against their class's sensitivity; false detections counted against the PPV of the class the
device gave them (EC57's extra-beat row). Beats the device flags unreadable (its signal-quality
index, ``min_sqi``) are counted apart, per annotated class, with their share of all annotated
beats: neither right, wrong nor missed (flagging every beat shows as a share of 1).
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from edgeexit.metrics import NSVF
from edgeexit.runtime.engine import InputError
from edgeexit.runtime.stream import MATCH_S, Source, stream_classify

log = logging.getLogger(__name__)

BLOCK_S = 1.0  # seconds of signal per block handed to the stream (the labels do not depend on it)


@dataclasses.dataclass
class DeviceRun:
    """What the device did on one record: every committed R peak (``peaks``), the answered beats
    (``r_samples``, ``labels``, ``exits``, ``inference_us``: the engine's time per beat), the
    refused ones (``refused``), the input windows (``windows``, with ``capture``) and the
    stream's summary."""

    peaks: np.ndarray
    r_samples: np.ndarray
    labels: np.ndarray
    exits: np.ndarray
    inference_us: np.ndarray
    refused: np.ndarray
    windows: np.ndarray | None
    summary: dict
    unreadable: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, bool))
    """Per answered beat: flagged unreadable by the device's signal-quality index (``min_sqi``)."""


class _Capture:
    """An engine that keeps a copy of every input ``stream_classify`` hands to ``predict``."""

    def __init__(self, engine) -> None:
        self._engine = engine
        self.inputs: list[np.ndarray] = []

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def predict(self, x):
        res = self._engine.predict(x)  # InputError: not kept (the beat is refused)
        self.inputs.append(np.array(x, np.float32, copy=True))
        return res


def run_device(engine, signal: np.ndarray, fs: float, *, capture: bool = False,
               detector: dict | None = None, name: str = "record",
               min_sqi: float | None = None) -> DeviceRun:
    """Stream ``signal`` (mV ``[T]``) through ``engine`` as ``run --stream`` does (``min_sqi``:
    as ``run --stream --min-sqi``, beats below the quality index are flagged unreadable)."""
    x = np.asarray(signal, np.float64)
    step = max(1, int(round(BLOCK_S * fs)))
    src = Source(name, float(fs), iter([x[i:i + step] for i in range(0, x.size, step)]))
    eng = _Capture(engine) if capture else engine
    r, y, ex, us, refused, flagged, summary = [], [], [], [], [], [], {}
    extra = {} if min_sqi is None else {"min_sqi": min_sqi}
    for ev in stream_classify(eng, src, keep_beats=True, detector=detector, **extra):
        if ev.get("summary"):
            summary = ev
        elif "error" in ev:
            refused.append(ev["r_sample"])
        else:
            r.append(ev["r_sample"])
            y.append(ev["label_index"])
            ex.append(ev["exit"])
            us.append(sum(ev["segment_us"]))
            flagged.append(bool(ev.get("unreadable", False)))
    windows = np.stack(eng.inputs) if capture and eng.inputs else None
    return DeviceRun(np.asarray(summary.get("all_peaks", []), np.int64), np.asarray(r, np.int64),
                     np.asarray(y, np.int64), np.asarray(ex, np.int64), np.asarray(us, np.float64),
                     np.asarray(refused, np.int64), windows,
                     {k: v for k, v in summary.items() if k not in ("all_peaks", "r_samples", "labels")},
                     np.asarray(flagged, bool))


def match(ann: np.ndarray, det: np.ndarray, tol: int) -> np.ndarray:
    """For every detection (in order), the index of the annotation it matches, or -1: the nearest
    annotation within ``tol`` samples not matched before (as the stream's own scorer does)."""
    out = np.full(det.size, -1, np.int64)
    used = np.zeros(ann.size, bool)
    lo = 0
    for i, r in enumerate(det.tolist()):
        while lo < ann.size and ann[lo] < r - tol:
            lo += 1
        best, bd = -1, tol + 1
        j = lo
        while j < ann.size and ann[j] <= r + tol:
            d = abs(int(ann[j]) - r)
            if not used[j] and d < bd:
                best, bd = j, d
            j += 1
        if best >= 0:
            used[best] = True
            out[i] = best
    return out


@dataclasses.dataclass
class Tally:
    """Counts over one or more records (see :func:`score`)."""

    k: int
    n_exits: int = 0  # exits of the bundle (the histogram's length; grown when a run has more)
    confusion: np.ndarray = None  # [annotated, answered] of matched, answered beats
    missed: np.ndarray = None  # annotated beats of each class with no answered detection
    false: np.ndarray = None  # false detections by the class the device answered
    flagged: np.ndarray = None  # annotated beats whose detection the device flagged unreadable
    flagged_false: int = 0  # false detections flagged unreadable
    minor: int = 0  # detections the device flagged minor (out of their neighbours' context)
    tp: int = 0
    fp: int = 0
    fn: int = 0
    exits: np.ndarray = None
    inference_us: float = 0.0
    answered: int = 0
    signal_s: float = 0.0

    def __post_init__(self) -> None:
        self.confusion = np.zeros((self.k, self.k), np.int64)
        self.missed = np.zeros(self.k, np.int64)
        self.false = np.zeros(self.k, np.int64)
        self.flagged = np.zeros(self.k, np.int64)
        self.exits = np.zeros(self.n_exits, np.int64)

    def add(self, ann: np.ndarray, labels: np.ndarray, run: DeviceRun, fs: float) -> np.ndarray:
        """Count one record; returns, per annotated beat, the device's answer (-1: none)."""
        m = match(ann, run.peaks, int(round(MATCH_S * fs)))
        self.tp += int((m >= 0).sum())
        self.fp += int((m < 0).sum())
        self.fn += int(ann.size - (m >= 0).sum())
        answer = np.full(ann.size, -1, np.int64)
        flagged = np.zeros(ann.size, bool)
        at = {int(r): i for i, r in enumerate(run.r_samples.tolist())}
        unreadable = run.unreadable if run.unreadable.size == run.r_samples.size else \
            np.zeros(run.r_samples.size, bool)
        for p, a in zip(run.peaks.tolist(), m.tolist()):
            i = at.get(p)
            if i is None:
                continue
            if a >= 0 and unreadable[i]:
                flagged[a] = True  # counted apart: neither right nor wrong, nor missed
            elif a >= 0:
                answer[a] = run.labels[i]
            elif unreadable[i]:
                self.flagged_false += 1
            else:
                self.false[run.labels[i]] += 1
        self.flagged += np.bincount(labels[flagged], minlength=self.k)
        ok = answer >= 0
        np.add.at(self.confusion, (labels[ok], answer[ok]), 1)
        self.missed += np.bincount(labels[~ok & ~flagged], minlength=self.k)
        n_ex = int(run.exits.max(initial=-1)) + 1
        if n_ex > self.exits.size:
            self.exits = np.pad(self.exits, (0, n_ex - self.exits.size))
        self.exits[:n_ex] += np.bincount(run.exits, minlength=n_ex)
        self.inference_us += float(run.inference_us.sum())
        self.answered += int(run.r_samples.size)
        self.signal_s += float(run.summary.get("signal_s", 0.0))
        self.minor += int(run.summary.get("minor_beats", 0))
        return answer

    def report(self, classes: tuple[str, ...], active_w: float | None = None) -> dict:
        return score_report(self, classes, active_w)


def _div(a, b) -> float:
    return float(a) / float(b) if b else 0.0


def score_report(t: Tally, classes: tuple[str, ...], active_w: float | None = None) -> dict:
    """The figures of a :class:`Tally` (JSON-ready)."""
    c = t.confusion
    per = {}
    f1s = {}
    for i, name in enumerate(classes):
        annotated = int(c[i].sum() + t.missed[i])
        se = _div(c[i, i], annotated)
        ppv = _div(c[i, i], c[:, i].sum() + t.false[i])
        f1s[name] = _div(2 * se * ppv, se + ppv)
        per[name] = {"sensitivity": se, "ppv": ppv, "f1": f1s[name], "annotated": annotated,
                     "flagged_unreadable": int(t.flagged[i]),
                     "missed": int(t.missed[i]), "false_detections_as": int(t.false[i])}
    headline = [n for n in NSVF if n in classes and per[n]["annotated"]] or \
        [n for n in classes if per[n]["annotated"]]
    total = int(c.sum() + t.missed.sum())
    n_flagged = int(t.flagged.sum())
    us = _div(t.inference_us, t.answered)
    out = {
        "detection": {"tolerance_s": MATCH_S, "tp": t.tp, "fp": t.fp, "fn": t.fn,
                      "sensitivity": _div(t.tp, t.tp + t.fn), "ppv": _div(t.tp, t.tp + t.fp),
                      "minor": t.minor},
        "accuracy": _div(np.trace(c), total),
        "matched_accuracy": _div(np.trace(c), c.sum()),
        "macro_f1": float(np.mean([f1s[n] for n in headline])) if headline else 0.0,
        "macro_f1_over": headline,
        "sensitivity": {n: per[n]["sensitivity"] for n in classes if per[n]["annotated"]},
        "per_class": per,
        "confusion": c.tolist(),
        "answered": t.answered,
        "flagged_unreadable": {"annotated": n_flagged, "false_detections": t.flagged_false,
                               "fraction": _div(n_flagged, total + n_flagged),
                               "by_class": {n: int(v) for n, v in zip(classes, t.flagged) if v}},
        "exit_histogram": [_div(e, t.answered) for e in t.exits.tolist()],
        "inference_us_per_beat": us,
        "signal_s": round(t.signal_s, 1),
    }
    if active_w is not None:  # an ESTIMATE: the target preset's active watts x inference time
        out["energy_uj_per_beat_estimated"] = us * active_w
    return out


__all__ = ["DeviceRun", "InputError", "Tally", "match", "run_device", "score_report"]
