"""MIT-BIH Arrhythmia Database (WFDB records) to :class:`BeatDataset`, with the AAMI classes.

Every annotated beat of a record becomes one window cut around its R peak by
:func:`edgeexit.runtime.preprocess.beat_windows` (the function the device uses too, so training
and deployment see identical inputs), labelled with its AAMI EC57 class (:data:`AAMI_MAP`).

Splits:
    ``inter-patient`` (the default, de Chazal et al. 2004): train on the records :data:`DS1`,
    test on :data:`DS2`; no patient is on both sides. The paced records :data:`PACED` are left out.
    ``random``: a stratified beat-level split of DS1 + DS2. Beats of the same patient land on both
    sides, which inflates accuracy to ~99%; it exists only to reproduce papers that used it.

Example:
    >>> train, test = load_mitbih_split("../shared/data/mitdb")
    >>> train.source, train.input_shape
    ('mitdb:DS1 (22 records)', (8, 256))

The database is not part of edgeexit. Anything derived from it must credit Moody & Mark (2001),
Goldberger et al. (2000), DOI 10.13026/C2F305 (ODC-By 1.0).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from edgeexit.data.dataset import AAMI_CLASSES, BeatDataset, stratified_split
from edgeexit.errors import ConfigError, DataError
from edgeexit.runtime.aami import AAMI_MAP
from edgeexit.runtime.preprocess import (
    MORPH_FEATURES,
    RR_FEATURES,
    beat_windows,
    default_r_offset,
    morph_templates,
)

log = logging.getLogger(__name__)

DS1: tuple[str, ...] = (
    "101", "106", "108", "109", "112", "114", "115", "116", "118", "119", "122",
    "124", "201", "203", "205", "207", "208", "209", "215", "220", "223", "230",
)  # fmt: skip
"""De Chazal's training records (inter-patient split)."""

DS2: tuple[str, ...] = (
    "100", "103", "105", "111", "113", "117", "121", "123", "200", "202", "210",
    "212", "213", "214", "219", "221", "222", "228", "231", "232", "233", "234",
)  # fmt: skip
"""De Chazal's test records (inter-patient split)."""

PACED: tuple[str, ...] = ("102", "104", "107", "217")
"""Records with a pacemaker, left out of both splits (AAMI EC57 recommends so)."""

SPLITS: tuple[str, ...] = ("inter-patient", "random")
"""Valid ``split`` names of :func:`load_mitbih_split`."""

DEFAULT_LEAD = "MLII"

Progress = Callable[[int, int], None] | None

# Unit names wfdb may report, and the factor that turns them into mV.
_TO_MV = {"mv": 1.0, "uv": 1e-3, "µv": 1e-3, "μv": 1e-3, "microvolts": 1e-3, "v": 1e3}

_LABEL = {name: k for k, name in enumerate(AAMI_CLASSES)}


def _wfdb():
    # Imported lazily: the synthetic default must work where wfdb is not installed.
    try:
        import wfdb
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise DataError(
            "reading WFDB records needs the 'wfdb' package: pip install wfdb"
        ) from e
    return wfdb


def _check_directory(directory: str | os.PathLike) -> Path:
    path = Path(directory)
    if not path.exists():
        raise DataError(
            f"WFDB directory not found: {path} (give the folder holding the MIT-BIH "
            ".hea/.dat/.atr files, e.g. from https://physionet.org/content/mitdb/1.0.0/)"
        )
    if not path.is_dir():
        raise DataError(f"{path} is not a directory: give the folder holding the WFDB records")
    return path


def list_records(directory: str | os.PathLike) -> list[str]:
    """Names of the WFDB records in ``directory`` (every ``NAME.hea``), sorted.

    Raises:
        DataError: the directory does not exist.
    """
    path = _check_directory(directory)
    return sorted(p.stem for p in path.glob("*.hea") if p.is_file())


@dataclasses.dataclass(frozen=True)
class _Header:
    name: str
    base: str  # path without extension, as wfdb wants it
    sig_name: tuple[str, ...]


def _short_list(names: Sequence[str], n: int = 12) -> str:
    shown = ", ".join(names[:n])
    return shown + (f", ... ({len(names)} in all)" if len(names) > n else "")


def _check_records(
    path: Path, records: Sequence[str], need_signal: bool = True
) -> dict[str, _Header | None]:
    """Fail before any slow work if a record is missing a file; return the headers read.

    Checking all records up front means a typo in the last record name fails at once instead of
    after a minute of loading.
    """
    wfdb = _wfdb()
    available = list_records(path)
    if not available:
        raise DataError(
            f"no WFDB records in {path} (no .hea files): give the folder holding the MIT-BIH "
            ".hea/.dat/.atr files"
        )
    headers: dict[str, _Header | None] = {}
    for name in records:
        base = path / name
        if not base.with_name(name + ".hea").is_file():
            raise DataError(
                f"record {name} not found in {path} (no {name}.hea); records there: "
                f"{_short_list(available)}"
            )
        if not base.with_name(name + ".atr").is_file():
            raise DataError(
                f"record {name} in {path} has no beat annotations ({name}.atr missing): "
                "every record needs its .hea, .dat and .atr files"
            )
        if not need_signal:
            headers[name] = None
            continue
        try:
            header = wfdb.rdheader(os.fspath(base))
        except Exception as e:  # wfdb raises plain ValueError/IndexError on bad headers
            raise DataError(f"cannot read the header {base}.hea: {e}") from e
        for file_name in dict.fromkeys(header.file_name or ()):
            if not (path / file_name).is_file():
                raise DataError(
                    f"record {name} in {path} is missing its signal file {file_name} "
                    "(every record needs its .hea, .dat and .atr files)"
                )
        headers[name] = _Header(name, os.fspath(base), tuple(header.sig_name or ()))
    return headers


def _read_beats(base: str, name: str) -> tuple[np.ndarray, np.ndarray]:
    """R-peak samples (sorted, unique) and AAMI labels of every beat annotation of a record."""
    wfdb = _wfdb()
    try:
        ann = wfdb.rdann(base, "atr")
    except Exception as e:
        raise DataError(f"cannot read the annotations {base}.atr: {e}") from e
    symbols = np.asarray(ann.symbol, dtype=object)
    samples = np.asarray(ann.sample, dtype=np.int64)
    is_beat = np.fromiter((s in AAMI_MAP for s in symbols), dtype=bool, count=symbols.size)
    samples, symbols = samples[is_beat], symbols[is_beat]
    labels = np.fromiter(
        (_LABEL[AAMI_MAP[s]] for s in symbols), dtype=np.int64, count=symbols.size
    )
    # MIT-BIH is sorted and has no two beats at one sample; other WFDB databases may not be, and
    # RR intervals need strictly increasing peaks.
    order = np.argsort(samples, kind="stable")
    samples, labels = samples[order], labels[order]
    unique = np.r_[True, np.diff(samples) > 0]
    if not unique.all():
        log.warning(
            "record %s: %d beat annotations share a sample with another; keeping the first",
            name, int((~unique).sum()),
        )
        samples, labels = samples[unique], labels[unique]
    return samples, labels


def annotation_counts(
    directory: str | os.PathLike, records: Iterable[str] | None = None
) -> dict[str, int]:
    """Beats per AAMI class counted from the annotations alone (no windowing, nothing dropped).

    Args:
        directory: the WFDB directory.
        records: record names; None means every record except :data:`PACED`.

    Returns:
        ``{class: count}`` for every class of :data:`AAMI_CLASSES`, in that order.
    """
    path = _check_directory(directory)
    names = _resolve_records(path, records)
    _check_records(path, names, need_signal=False)
    counts = np.zeros(len(AAMI_CLASSES), dtype=np.int64)
    for name in names:
        _, labels = _read_beats(os.fspath(path / name), name)
        counts += np.bincount(labels, minlength=len(AAMI_CLASSES))
    return {c: int(n) for c, n in zip(AAMI_CLASSES, counts)}


def _resolve_records(path: Path, records: Iterable[str] | None) -> list[str]:
    if records is None:
        names = [r for r in list_records(path) if r not in PACED]
        if not names:
            raise DataError(
                f"no WFDB records in {path} (no .hea files other than the paced records "
                f"{', '.join(PACED)}): give the folder holding the MIT-BIH .hea/.dat/.atr files"
            )
        return names
    if isinstance(records, (str, int)):
        records = [records]  # one name, not its characters
    names = [str(r) for r in records]
    if not names:
        raise DataError("no records requested: give at least one record name (e.g. '100')")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DataError(f"records requested more than once: {', '.join(dupes)}")
    return names


def _pick_lead(header: _Header, lead: str) -> int:
    if lead in header.sig_name:
        return header.sig_name.index(lead)
    have = ", ".join(header.sig_name) or "none"
    if lead == DEFAULT_LEAD and header.sig_name:
        # 102 and 104 lack MLII (surgical dressings); their first lead is the usual stand-in.
        log.warning(
            "record %s has no lead %s (it has %s): using its first lead %s instead",
            header.name, lead, have, header.sig_name[0],
        )
        return 0
    raise DataError(
        f"record {header.name} has no lead {lead!r} (it has: {have}); choose one of those "
        f"leads or leave the record out"
    )


def _describe(path: Path, names: Sequence[str]) -> str:
    for label, group in (("DS1", DS1), ("DS2", DS2), ("DS1+DS2", DS1 + DS2)):
        if sorted(names) == sorted(group):
            return f"{path.name}:{label} ({len(names)} records)"
    if len(names) <= 5:
        return f"{path.name}:{','.join(names)} ({len(names)} record{'s' * (len(names) > 1)})"
    return f"{path.name}:{len(names)} records"


def _load(
    path: Path,
    names: Sequence[str],
    *,
    lead: str,
    window: int,
    r_offset: int | None,
    rr_context: bool,
    progress: Progress,
    morph_context: bool = False,
    done: int,
    total: int,
) -> BeatDataset:
    """Load ``names`` (already resolved); report progress as ``done + i`` of ``total``."""
    if window < 1:
        raise ConfigError(f"window must be a positive number of samples, got {window}")
    if r_offset is not None and not 0 <= r_offset < window:
        raise ConfigError(
            f"r_offset must lie in 0..{window - 1} for window {window}, got {r_offset}"
        )
    wfdb = _wfdb()
    headers = _check_records(path, names)
    source = _describe(path, names)
    start = time.perf_counter()
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    gs: list[np.ndarray] = []
    ts: list[np.ndarray] = []  # morphology templates, with morph_context
    rs: list[np.ndarray] = []  # R-peak times (s)
    leads: list[str] = []
    fs: float | None = None
    for i, name in enumerate(names, start=1):
        header = headers[name]
        assert header is not None
        signal, rec_fs, lead_read = _read_signal(wfdb, path, header, name, lead)
        if fs is None:
            fs = float(rec_fs)
        elif float(rec_fs) != fs:
            raise DataError(
                f"record {name} is sampled at {rec_fs} Hz but earlier records at {fs} Hz: "
                "load records of one sampling rate together"
            )
        leads.append(lead_read)
        # RR context comes from *all* beats of the record (Q included), exactly as the device
        # sees a continuous beat stream; windows near the ends are dropped afterwards.
        peaks, labels = _read_beats(header.base, name)
        if peaks.size < (2 if rr_context else 1):
            log.warning("record %s has %d beat annotations: skipped", name, peaks.size)
        else:
            x, y, t, r = _cut_beats(signal, peaks, labels, fs, name, window=window,
                                    r_offset=r_offset, rr_context=rr_context,
                                    morph_context=morph_context)
            xs.append(x)
            rs.append(r / fs)
            ys.append(y)
            gs.append(np.full(y.size, name))
            if morph_context:
                ts.append(t)
        del signal
        if progress is not None:
            progress(done + i, total)

    if not xs or sum(len(y) for y in ys) == 0:
        raise DataError(f"no beats could be cut from {source} in {path}")
    # The channel is named after the lead actually read; records mixing leads (MLII plus a
    # fallback lead) keep the requested name, the fallback having been logged.
    lead_name = leads[0] if len(set(leads)) == 1 else lead
    channels = ((lead_name,) + (RR_FEATURES if rr_context else ())
                + (MORPH_FEATURES if morph_context else ()))
    data = _beat_dataset(xs, ys, gs, ts if morph_context else None, fs, channels, source, rs)
    log.info(
        "loaded %d beats from %s in %.1f s (window %d, R at %d): %s",
        len(data), source, time.perf_counter() - start, window,
        default_r_offset(window) if r_offset is None else r_offset, data.class_counts(),
    )
    return data


def _beat_dataset(xs: list[np.ndarray], ys, gs, ts, fs: float, channels: tuple[str, ...],
                  source: str, rs) -> BeatDataset:
    """The records' beats as one data set (``xs`` is emptied as it is joined, to free the
    per-record copies before the data set is built)."""
    x = np.concatenate(xs) if len(xs) > 1 else xs[0]
    xs.clear()
    return BeatDataset(
        x=x,
        y=np.concatenate(ys).astype(np.int64),
        classes=AAMI_CLASSES,
        fs=float(fs),
        channels=channels,
        groups=np.concatenate(gs).astype(str),
        signal_channels=1,
        units="mV",
        source=source,
        templates=None if ts is None else np.concatenate(ts),
        times=np.concatenate(rs).astype(np.float64),
    )


def _read_signal(wfdb, path: Path, header, name: str, lead: str) -> tuple[np.ndarray, float, str]:
    """Lead ``lead`` (or its fallback) of record ``name`` in mV (float32), its sampling rate as
    the header gives it, and the name of the lead read."""
    channel = _pick_lead(header, lead)
    try:
        rec = wfdb.rdrecord(header.base, channels=[channel])
    except Exception as e:
        raise DataError(f"cannot read the signal of record {name} in {path}: {e}") from e
    unit = (rec.units[0] if rec.units else "mV") or "mV"
    scale = _TO_MV.get(unit.strip().lower())
    if scale is None:
        raise DataError(
            f"record {name}, lead {rec.sig_name[0]}: unknown signal units {unit!r} "
            "(expected mV, uV or V)"
        )
    signal = rec.p_signal[:, 0].astype(np.float32)
    if scale != 1.0:
        signal *= np.float32(scale)
    return signal, rec.fs, rec.sig_name[0]


def _cut_beats(signal: np.ndarray, peaks: np.ndarray, labels: np.ndarray, fs: float, name: str, *,
               window: int, r_offset: int | None, rr_context: bool,
               morph_context: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
    """One record's beat windows, their labels, (with ``morph_context``) the morphology
    templates each was computed against and their R-peak samples; windows holding invalid
    samples are dropped."""
    x, kept = beat_windows(
        signal, peaks, fs, window=window, r_offset=r_offset, rr_context=rr_context,
        morph_context=morph_context,
    )
    templates = None
    if morph_context:  # what each beat's morphology channels were computed against
        off = default_r_offset(window) if r_offset is None else r_offset
        templates = morph_templates(x[:, 0], off, fs)
    finite = np.isfinite(x).all(axis=(1, 2))
    if not finite.all():
        # wfdb turns invalid samples into NaN; such windows cannot be used.
        log.warning(
            "record %s: %d beat windows hold invalid samples (NaN): dropped",
            name, int((~finite).sum()),
        )
        x, kept = x[finite], kept[finite]
        if morph_context:
            templates = templates[finite]
    if peaks.size - kept.size:
        log.debug(
            "record %s: %d beats too close to the ends dropped",
            name, peaks.size - kept.size,
        )
    return x, labels[kept], templates, peaks[kept]


def load_mitbih(
    directory: str | os.PathLike,
    records: Iterable[str] | None = None,
    *,
    lead: str = DEFAULT_LEAD,
    window: int = 256,
    r_offset: int | None = None,
    rr_context: bool = True,
    morph_context: bool = False,
    progress: Progress = None,
) -> BeatDataset:
    """Cut every annotated beat of some MIT-BIH records into labelled windows.

    Args:
        directory: folder holding the WFDB records (``NAME.hea``, ``.dat``, ``.atr``).
        records: record names; None means every record in ``directory`` except :data:`PACED`.
        lead: signal to use, by name (record 114 has its leads swapped). With the default
            ``MLII``, records without it (102, 104) fall back to their first lead, with a warning.
        window: samples per window.
        r_offset: samples before the R peak; None for
            :func:`~edgeexit.runtime.preprocess.default_r_offset`.
        rr_context: append the RR-interval channels
            :data:`~edgeexit.runtime.preprocess.RR_FEATURES`.
        morph_context: append the morphology channels
            :data:`~edgeexit.runtime.preprocess.MORPH_FEATURES` (each beat against the record's
            previous beats).
        progress: called with ``(records done, records in all)`` after each record, or None.

    Returns:
        A :class:`BeatDataset` with classes :data:`AAMI_CLASSES` (always all five), ``x`` of shape
        ``[N, 1 (+ len(RR_FEATURES)), window]`` in mV, and the record name of every beat in ``groups``.

    Raises:
        DataError: the directory or a record (or one of its files) is missing, a record lacks an
            explicitly requested lead, or a file cannot be read.
        ConfigError: ``window``/``r_offset`` out of range.
    """
    path = _check_directory(directory)
    names = _resolve_records(path, records)
    return _load(
        path, names, lead=lead, window=window, r_offset=r_offset, rr_context=rr_context,
        morph_context=morph_context,
        progress=progress, done=0, total=len(names),
    )


def load_mitbih_split(
    directory: str | os.PathLike,
    split: str = "inter-patient",
    *,
    window: int = 256,
    r_offset: int | None = None,
    rr_context: bool = True,
    morph_context: bool = False,
    seed: int = 0,
    test_fraction: float = 0.5,
    progress: Progress = None,
) -> tuple[BeatDataset, BeatDataset]:
    """The training and test sets of MIT-BIH under a named split.

    Args:
        directory: folder holding the WFDB records; it must hold all of :data:`DS1` and :data:`DS2`.
        split: ``inter-patient`` (train :data:`DS1`, test :data:`DS2`) or ``random`` (a stratified,
            seeded beat-level split of DS1 + DS2, holding out ``test_fraction``; patients leak
            between the two sides, so accuracy is inflated, and a warning says so).
        window: samples per window.
        r_offset: samples before the R peak; None for the default.
        rr_context: append the RR-interval channels.
        morph_context: append the morphology channels (see :func:`load_mitbih`).
        seed: seed of the random split (unused by ``inter-patient``).
        test_fraction: held-out fraction of the random split (unused by ``inter-patient``).
        progress: called with ``(records done, 44)`` after each record, or None.

    Returns:
        ``(train, test)``.

    Raises:
        ConfigError: unknown ``split``.
        DataError: see :func:`load_mitbih`.
    """
    # Validate the cheap things first: a typo in the split name should not cost a minute of loading.
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
    path = _check_directory(directory)
    _check_records(path, DS1 + DS2, need_signal=False)
    common = dict(
        lead=DEFAULT_LEAD, window=window, r_offset=r_offset, rr_context=rr_context,
        morph_context=morph_context,
        progress=progress, total=len(DS1) + len(DS2),
    )
    if split == "inter-patient":
        train = _load(path, DS1, done=0, **common)
        test = _load(path, DS2, done=len(DS1), **common)
        return train, test

    message = (
        "split='random' splits MIT-BIH beats at random: beats of the same patient land in both "
        "train and test, so test accuracy is inflated (~99%) and says little about new patients; "
        "use split='inter-patient' (DS1/DS2) for results you report"
    )
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction must lie strictly between 0 and 1, got {test_fraction}")
    log.warning(message)
    warnings.warn(message, UserWarning, stacklevel=2)
    data = _load(path, DS1 + DS2, done=0, **common)
    keep, held = stratified_split(data.y, test_fraction, seed)
    base = f"{path.name}:DS1+DS2 random beat split (seed {seed})"
    train = dataclasses.replace(data.subset(keep), source=f"{base}, train")
    test = dataclasses.replace(data.subset(held), source=f"{base}, test")
    return train, test
