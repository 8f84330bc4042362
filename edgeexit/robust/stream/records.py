"""Continuous annotated records for the stream-level evaluation: WFDB records or synthetic ones.

A :class:`StreamRecord` is one lead of one recording in mV with its beat annotations (AAMI class
indices). :func:`load_records` reads them from a WFDB directory (the device's own reader,
:mod:`edgeexit.runtime.wfdb`: MLII where the record has it, else the first lead) or simulates
them (:func:`edgeexit.data.synthetic.synthetic_records`, so the evaluation runs offline).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path

import numpy as np

from edgeexit.data import AAMI_CLASSES
from edgeexit.errors import ConfigError, DataError
from edgeexit.runtime.wfdb import read_annotations, read_blocks, read_header

log = logging.getLogger(__name__)

SYNTHETIC = "synthetic"
BEATS_PER_SYNTHETIC_RECORD = 300  # about four minutes of signal per simulated patient
SYNTHETIC_PATIENTS = 4  # simulated patients streamed at the least (however few the beats)


@dataclasses.dataclass(frozen=True)
class StreamRecord:
    """One lead of one recording: ``signal`` float64 mV ``[T]`` at ``fs`` Hz, the annotated beats
    ``ann_samples`` (int64, increasing) and their classes ``ann_labels`` (indices into
    ``classes``)."""

    name: str
    signal: np.ndarray
    fs: float
    ann_samples: np.ndarray
    ann_labels: np.ndarray
    classes: tuple[str, ...] = AAMI_CLASSES

    @property
    def seconds(self) -> float:
        return self.signal.size / self.fs

    def with_signal(self, signal: np.ndarray) -> StreamRecord:
        """The same record and annotations with another signal (noisy, attacked)."""
        return dataclasses.replace(self, signal=np.asarray(signal, np.float64))

    def describe(self) -> dict:
        counts = np.bincount(self.ann_labels, minlength=len(self.classes))
        return {"name": self.name, "seconds": round(self.seconds, 1), "beats": int(self.ann_samples.size),
                "classes": {c: int(n) for c, n in zip(self.classes, counts) if n}}


def _cut(rec: StreamRecord, minutes: float | None) -> StreamRecord:
    if minutes is None:
        return rec
    n = min(rec.signal.size, int(round(minutes * 60.0 * rec.fs)))
    keep = rec.ann_samples < n
    return dataclasses.replace(rec, signal=rec.signal[:n], ann_samples=rec.ann_samples[keep],
                               ann_labels=rec.ann_labels[keep])


def wfdb_record(base: str | Path, minutes: float | None = None) -> StreamRecord:
    """A WFDB record's MLII lead (else its first) in mV with its AAMI beat annotations."""
    base = Path(base)
    head = read_header(base)
    names = [s["name"] for s in head["signals"]]
    ch = names.index("MLII") if "MLII" in names else 0
    ann = read_annotations(base)
    if ann is None:
        raise DataError(f"{base}: no beat annotations ({base.name}.atr): the stream evaluation "
                        "scores beats against them")
    signal = np.concatenate(list(read_blocks(base, head, ch, 1 << 16))).astype(np.float64)
    return _cut(StreamRecord(base.name, signal, float(head["fs"]), ann[0], ann[1]), minutes)


def _default_names(directory: Path) -> list[str]:
    """DS2 where the directory holds MIT-BIH's DS2 (the inter-patient test records), else every
    annotated record."""
    from edgeexit.data.mitbih import DS2

    if all((directory / f"{r}.hea").is_file() and (directory / f"{r}.atr").is_file() for r in DS2):
        return list(DS2)
    return sorted(p.stem for p in directory.glob("*.hea") if p.with_suffix(".atr").is_file())


def synthetic_stream_records(n_beats: int = 1200, *, seed: int = 1000, fs: float = 360.0,
                             window: int = 256, patients: int | None = None) -> list[StreamRecord]:
    """Simulated continuous records, annotated with their true R peaks: ``patients`` simulated
    patients (default: at least :data:`SYNTHETIC_PATIENTS`, one per
    :data:`BEATS_PER_SYNTHETIC_RECORD` beats beyond that), each streaming its share of
    ``n_beats`` from its start.

    The patients do not depend on ``n_beats``: they are those of a pool of at least
    ``patients x`` :data:`BEATS_PER_SYNTHETIC_RECORD` beats, each cut to the first
    ``n_beats / pool`` of its beats. So 60 and 300 beats stream the same patients, shorter or
    longer, and a figure's change with the beats streamed is not a change of patients (attack
    strength varies several-fold between simulated patients)."""
    from edgeexit.data.synthetic import SyntheticECGConfig, synthetic_records

    n_beats = int(n_beats)
    if n_beats < 1 or (patients is not None and patients < 1):
        raise ConfigError(f"synthetic records need n_beats >= 1 and patients >= 1, got {n_beats}, "
                          f"{patients}")
    if patients is None:
        patients = max(SYNTHETIC_PATIENTS, n_beats // BEATS_PER_SYNTHETIC_RECORD)
    pool = max(n_beats, int(patients) * BEATS_PER_SYNTHETIC_RECORD) if patients > 1 else n_beats
    cfg = SyntheticECGConfig(n_beats=pool, seed=int(seed), fs=fs, window=int(window),
                             n_records=int(patients))
    recs = [StreamRecord(r["name"], r["signal"], r["fs"], r["r_peaks"], r["labels"])
            for r in synthetic_records(cfg)]
    return [_first_beats(r, math.ceil(r.ann_samples.size * n_beats / pool)) for r in recs]


def _first_beats(rec: StreamRecord, n: int) -> StreamRecord:
    """``rec`` cut after its first ``n`` annotated beats (midway to the next one)."""
    if n >= rec.ann_samples.size:
        return rec
    end = int((rec.ann_samples[n - 1] + rec.ann_samples[n]) // 2)
    return dataclasses.replace(rec, signal=rec.signal[:end], ann_samples=rec.ann_samples[:n],
                               ann_labels=rec.ann_labels[:n])


def load_records(source: str, *, names: tuple[str, ...] | None = None, minutes: float | None = None,
                 synthetic: dict | None = None) -> list[StreamRecord]:
    """The records of ``source``: a WFDB directory (``names``, default DS2 where it holds
    MIT-BIH, else every annotated record) or ``synthetic`` (``synthetic``: keyword arguments of
    :func:`synthetic_stream_records`); each cut to its first ``minutes`` when given."""
    if minutes is not None and not minutes > 0:
        raise ConfigError(f"--minutes must be > 0, got {minutes}")
    if source == SYNTHETIC:
        recs = synthetic_stream_records(**(synthetic or {}))
        if names:
            recs = [r for r in recs if r.name in set(names)]
        return [_cut(r, minutes) for r in recs]
    d = Path(source)
    if not d.is_dir():
        raise DataError(f"--records {source}: not a directory of WFDB records (or 'synthetic')")
    names = list(names) if names else _default_names(d)
    missing = [n for n in names if not (d / f"{n}.hea").is_file()]
    if missing or not names:
        raise DataError(f"--records {d}: no WFDB record(s) {', '.join(missing) or '(none found)'}; "
                        "give a directory of .hea/.dat/.atr files")
    return [wfdb_record(d / n, minutes) for n in names]
