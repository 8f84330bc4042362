"""The in-memory data set every part of edgeexit passes around, and its npz/csv file formats.

A :class:`BeatDataset` holds beat windows ``x [N, C, L]`` in physical units (mV for ECG signal
channels; seconds or ratios for RR context channels), integer labels ``y [N]``, the class names,
the sampling rate, channel names and, when known, the record (patient) each beat came from.

File formats:
    ``.npz``: arrays ``x`` (``[N, C, L]`` or ``[N, L]``), ``y`` (``[N]`` int), optional ``classes``
    (strings), ``fs``, ``channels``, ``groups``. Written by :meth:`BeatDataset.save_npz`.
    ``.csv``: one beat per row, first column the label (class name or index), the other columns
    the samples of a single-channel window; an optional header row is skipped.
"""

from __future__ import annotations

import csv
import io
import dataclasses
import logging
import os
from pathlib import Path

import numpy as np

from edgeexit.errors import DataError
from edgeexit.fileio import atomic_write
from edgeexit.runtime.aami import AAMI_CLASSES

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, eq=False)
class BeatDataset:
    """Beat windows with labels.

    Attributes:
        x: float32 windows, shape ``[N, C, L]``.
        y: int64 labels in ``range(len(classes))``, shape ``[N]``.
        classes: class names; label ``k`` is ``classes[k]``.
        fs: sampling rate in Hz.
        channels: one name per channel (``"ecg"``, or RR context names).
        groups: record/patient id of every beat (str array ``[N]``), or None when unknown.
        signal_channels: how many leading channels are signal in ``units`` (the rest is context).
        units: physical units of the signal channels.
        source: a short description of where the data came from (logged and stored in checkpoints).
        templates: with the morphology channels, every window's template (float32 ``[N, L]``:
            the median of the previous windows of its recording, which the channels were computed
            against), so that an attack or a noise on the waveform can recompute them
            (:mod:`edgeexit.robust.context`), on any sample of the data; kept by :meth:`subset`
            and the ``.npz`` files. None when unknown.
        times: every beat's R peak in seconds from the start of its recording (float64 ``[N]``),
            so that a protocol can cut a recording at a point in time (the first minutes of a
            wearer, :mod:`edgeexit.adapt`); kept by :meth:`subset` and the ``.npz`` files.
            None when unknown.
    """

    x: np.ndarray
    y: np.ndarray
    classes: tuple[str, ...]
    fs: float = 360.0
    channels: tuple[str, ...] = ("ecg",)
    groups: np.ndarray | None = None
    signal_channels: int = 1
    units: str = "mV"
    source: str = ""
    templates: np.ndarray | None = None
    times: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.validate()

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def input_shape(self) -> tuple[int, int]:
        """``(C, L)`` of one window."""
        return int(self.x.shape[1]), int(self.x.shape[2])

    def validate(self) -> None:
        """Raise :class:`DataError` on wrong shapes, labels out of range, NaN or Inf."""
        where = f" in {self.source}" if self.source else ""
        if self.x.ndim != 3:
            raise DataError(f"beat windows must have shape [N, C, L], got {self.x.shape}{where}")
        if self.y.ndim != 1 or self.y.shape[0] != self.x.shape[0]:
            raise DataError(
                f"labels must have shape [N] = [{self.x.shape[0]}], got {self.y.shape}{where}"
            )
        if len(self.channels) != self.x.shape[1]:
            raise DataError(
                f"{len(self.channels)} channel names for {self.x.shape[1]} channels{where}"
            )
        if not 1 <= self.signal_channels <= self.x.shape[1]:
            raise DataError(f"signal_channels={self.signal_channels} out of range{where}")
        if len(self) == 0:
            raise DataError(f"the data set is empty{where}")
        if self.y.min() < 0 or self.y.max() >= len(self.classes):
            raise DataError(
                f"labels must lie in 0..{len(self.classes) - 1} for classes {list(self.classes)}, "
                f"got {int(self.y.min())}..{int(self.y.max())}{where}"
            )
        bad = ~np.isfinite(self.x)
        if bad.any():
            first = int(np.argwhere(bad.reshape(len(self), -1).any(axis=1))[0, 0])
            raise DataError(
                f"{int(bad.sum())} NaN/Inf values in the beat windows (first in beat {first}){where}:"
                " clean or drop those beats"
            )
        if self.groups is not None and self.groups.shape != self.y.shape:
            raise DataError(f"groups must have shape {self.y.shape}, got {self.groups.shape}{where}")
        if self.templates is not None and self.templates.shape != (len(self), self.x.shape[2]):
            raise DataError(f"templates must have shape {(len(self), self.x.shape[2])}, got "
                            f"{self.templates.shape}{where}")
        if self.times is not None and (self.times.shape != self.y.shape
                                       or not np.isfinite(self.times).all()):
            raise DataError(f"times must be finite seconds of shape {self.y.shape}, got "
                            f"{self.times.shape}{where}")
        if self.templates is not None and not np.isfinite(self.templates).all():
            raise DataError(f"{int((~np.isfinite(self.templates)).sum())} NaN/Inf values in the "
                            f"morphology templates{where}: write the file again (or drop its "
                            "'templates' array to have them rebuilt from the beats)")

    def subset(self, index: np.ndarray) -> BeatDataset:
        """The beats at ``index`` (an index array or boolean mask), all metadata kept."""
        groups = None if self.groups is None else self.groups[index]
        templates = None if self.templates is None else self.templates[index]
        times = None if self.times is None else self.times[index]
        return dataclasses.replace(self, x=self.x[index], y=self.y[index], groups=groups,
                                   templates=templates, times=times)

    def class_counts(self) -> dict[str, int]:
        """Number of beats of every class, in class order (classes with no beats included)."""
        counts = np.bincount(self.y, minlength=len(self.classes))
        return {name: int(c) for name, c in zip(self.classes, counts)}

    def describe(self) -> dict:
        """A JSON-ready summary: size, shape, sampling rate, channels, class counts, records."""
        return {
            "source": self.source,
            "beats": len(self),
            "input_shape": list(self.input_shape),
            "fs": self.fs,
            "channels": list(self.channels),
            "units": self.units,
            "records": None if self.groups is None else int(np.unique(self.groups).size),
            "class_counts": self.class_counts(),
        }

    def save_npz(self, path: str | os.PathLike) -> Path:
        """Write the data set to ``path`` (``.npz``) atomically: a failed write leaves nothing."""
        path = Path(path)
        arrays = {
            "x": self.x,
            "y": self.y,
            "classes": np.asarray(self.classes),
            "fs": np.float64(self.fs),
            "channels": np.asarray(self.channels),
            "signal_channels": np.int64(self.signal_channels),
            "units": np.asarray(self.units),
        }
        if self.groups is not None:
            arrays["groups"] = np.asarray(self.groups).astype(str)
        if self.templates is not None:
            arrays["templates"] = np.asarray(self.templates, np.float32)
        if self.times is not None:
            arrays["times"] = np.asarray(self.times, np.float64)
        atomic_write(path, lambda f: np.savez_compressed(f, **arrays))
        log.info("wrote %d beats to %s", len(self), path)
        return path


def concatenate(parts: list[BeatDataset], source: str | None = None) -> BeatDataset:
    """The beats of ``parts`` one after another (one channel layout and class list), with their
    record ids, templates and times where every part has them.

    Raises:
        DataError: no parts, or parts of different shapes, classes or channels.
    """
    if not parts:
        raise DataError("nothing to concatenate: give at least one data set")
    first = parts[0]
    for p in parts[1:]:
        if (p.input_shape, p.classes, p.channels) != (first.input_shape, first.classes, first.channels):
            raise DataError(f"cannot join {p.source} ({p.input_shape}, {list(p.channels)}) to "
                            f"{first.source} ({first.input_shape}, {list(first.channels)})")

    def joined(name: str):
        arrays = [getattr(p, name) for p in parts]
        return None if any(a is None for a in arrays) else np.concatenate(arrays)

    return dataclasses.replace(first, x=np.concatenate([p.x for p in parts]),
                               y=np.concatenate([p.y for p in parts]), groups=joined("groups"),
                               templates=joined("templates"), times=joined("times"),
                               source=source or " + ".join(dict.fromkeys(p.source for p in parts)))


def load_npz(path: str | os.PathLike) -> BeatDataset:
    """Read a data set written by :meth:`BeatDataset.save_npz` (or any npz with ``x`` and ``y``)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except Exception as e:  # zipfile/pickle errors: not an npz we can read
        raise DataError(f"cannot read {path} as .npz: {e}") from e
    for key in ("x", "y"):
        if key not in data:
            raise DataError(f"{path} has no array '{key}' (found: {sorted(data)})")
    x = np.asarray(data["x"], dtype=np.float32)
    if x.ndim == 2:
        x = x[:, None, :]
    y = np.asarray(data["y"])
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"labels 'y' in {path} must be integers, got dtype {y.dtype}")
    n_classes = int(y.max()) + 1 if y.size else 0
    classes = tuple(str(c) for c in data["classes"]) if "classes" in data else None
    if classes is None:
        classes = AAMI_CLASSES if n_classes <= len(AAMI_CLASSES) else tuple(map(str, range(n_classes)))
    channels = (
        tuple(str(c) for c in data["channels"])
        if "channels" in data
        else tuple(f"ch{i}" for i in range(x.shape[1]))
    )
    return BeatDataset(
        x=x,
        y=y.astype(np.int64),
        classes=classes,
        fs=float(data.get("fs", 360.0)),
        channels=channels,
        groups=np.asarray(data["groups"]).astype(str) if "groups" in data else None,
        signal_channels=int(data.get("signal_channels", x.shape[1])),
        units=str(data.get("units", "mV")),
        source=str(path),
        templates=np.asarray(data["templates"], np.float32) if "templates" in data else None,
        times=np.asarray(data["times"], np.float64) if "times" in data else None,
    )


def load_csv(path: str | os.PathLike, fs: float = 360.0) -> BeatDataset:
    """Read single-channel beats from a CSV file: label in the first column, samples after it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    labels: list[str] = []
    rows: list[list[float]] = []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path} is not UTF-8 text (byte {e.start}: {e.reason}); save the CSV as UTF-8 "
            "(label, sample_1, ..., sample_L per row)"
        ) from None
    with io.StringIO(text, newline="") as f:
        for lineno, row in enumerate(csv.reader(f), start=1):
            if not row or all(not c.strip() for c in row):
                continue
            try:
                values = [float(c) for c in row[1:]]
            except ValueError:
                if lineno == 1 and not rows:  # a header row
                    continue
                raise DataError(f"{path}:{lineno}: non-numeric sample value") from None
            if rows and len(values) != len(rows[0]):
                raise DataError(
                    f"{path}:{lineno}: {len(values)} samples, but earlier rows have {len(rows[0])}"
                )
            labels.append(row[0].strip())
            rows.append(values)
    if not rows or not rows[0]:
        raise DataError(f"{path} holds no beats (expected: label, sample_1, ..., sample_L per row)")
    if all(lab.lstrip("-").isdigit() for lab in labels):
        y = np.asarray([int(lab) for lab in labels], dtype=np.int64)
        classes = AAMI_CLASSES if y.max() < len(AAMI_CLASSES) else tuple(map(str, range(y.max() + 1)))
    else:
        known = [c for c in AAMI_CLASSES if c in set(labels)]
        extra = sorted(set(labels) - set(AAMI_CLASSES))
        classes = tuple(known + extra)
        y = np.asarray([classes.index(lab) for lab in labels], dtype=np.int64)
    x = np.asarray(rows, dtype=np.float32)[:, None, :]
    return BeatDataset(x=x, y=y, classes=classes, fs=fs, source=str(path), signal_channels=1)


def stratified_split(
    y: np.ndarray, fraction: float, seed: int, groups: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into ``(keep, held_out)`` with about ``fraction`` held out.

    Without ``groups`` the split is stratified by class. With ``groups`` (record ids) whole
    records are held out, so no patient appears on both sides; records are drawn at random until
    the held-out part reaches ``fraction`` of the beats.
    """
    if not 0.0 < fraction < 1.0:
        raise DataError(f"split fraction must lie strictly between 0 and 1, got {fraction}")
    rng = np.random.default_rng(seed)
    if groups is not None:
        names, inverse = np.unique(groups, return_inverse=True)
        order = rng.permutation(names.size)
        sizes = np.bincount(inverse)
        chosen: list[int] = []
        total = 0
        for g in order:
            if total >= fraction * y.size:
                break
            chosen.append(int(g))
            total += int(sizes[g])
        held = np.isin(inverse, chosen)
        if held.all() or not held.any():
            raise DataError(
                f"cannot hold out {fraction:.0%} of {names.size} records by patient: need more records"
            )
        return np.flatnonzero(~held), np.flatnonzero(held)
    held_parts = []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n = int(round(fraction * idx.size))
        if idx.size > 1:
            n = min(max(n, 1), idx.size - 1)
        held_parts.append(idx[:n])
    held = np.sort(np.concatenate(held_parts))
    keep = np.setdiff1d(np.arange(y.size), held)
    return keep, held


def stratified_index(data: BeatDataset, limit: int | None, seed: int) -> np.ndarray | None:
    """The indices (increasing) of :func:`stratified_sample`'s beats; None = all of ``data``."""
    if limit is None or limit >= len(data):
        return None
    _, held = stratified_split(data.y, limit / len(data), seed)
    return np.sort(held)


def stratified_sample(data: BeatDataset, limit: int | None, seed: int) -> BeatDataset:
    """About ``limit`` beats of ``data``, every class in proportion (seeded), in their original
    order; all of ``data`` when ``limit`` is None or not smaller."""
    index = stratified_index(data, limit, seed)
    return data if index is None else data.subset(index)


_TEMPLATE_TOLERANCE = 1e-4  # recomputed vs stored morphology features on clean windows (float32)


def rebuild_templates(data: BeatDataset, r_offset: int) -> np.ndarray:
    """Every window's morphology template, float32 ``[N, L]``, rebuilt from the data set itself.

    The windows of a recording must lie together and in recording order, as the loaders write
    them; the template of each is the median of the previous windows of its recording, as
    :class:`~edgeexit.runtime.preprocess.BeatTemplate` keeps them on the device. Exact for
    MIT-BIH; where the data leaves out a record's first beats (the synthetic generator's lead-in),
    the templates of its first ``TEMPLATE_BEATS`` windows are built from fewer beats.

    Raises:
        DataError: the data has no groups (records), a record's windows are not contiguous, or
            the features recomputed from the rebuilt templates differ from the stored ones (the
            windows are not every beat of their recordings in order, e.g. a sample).
    """
    from edgeexit.runtime.preprocess import morph_templates

    if data.groups is None:
        raise DataError("the morphology channels cannot be recomputed under attack: the data "
                        "names no record per window (groups)")
    x = np.asarray(data.x, np.float32)
    g = np.asarray(data.groups)
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    if len(starts) != len(np.unique(g)):
        raise DataError("the morphology channels cannot be recomputed under attack: the windows "
                        "of a record are not contiguous (the data must hold each recording's "
                        "beats in order, as `edgeexit data generate` writes them)")
    out = np.empty((len(x), x.shape[-1]), np.float32)
    bounds = [*starts.tolist(), len(x)]
    for a, b in zip(bounds[:-1], bounds[1:]):
        out[a:b] = morph_templates(x[a:b, 0], r_offset, data.fs)
    check_templates(data, out, r_offset, starts)
    return out


def check_templates(data: BeatDataset, templates: np.ndarray, r_offset: int,
                    starts: np.ndarray | None = None) -> None:
    """Raise :class:`DataError` unless ``templates`` give back the data's stored morphology
    channels (on up to 500 windows, past the first ``TEMPLATE_BEATS`` of each record when
    ``starts``, the first window of every record, is given; at most 1% may differ)."""
    from edgeexit.runtime.preprocess import MORPH_FEATURES, TEMPLATE_BEATS, BeatTemplate

    x = data.x
    n = len(x)
    pool = np.arange(n)
    if starts is not None:
        # A record's first beats may have had earlier beats behind them that the data does not
        # hold (the synthetic generator's lead-in): their rebuilt templates are not exact.
        first = np.repeat(starts, np.diff([*starts.tolist(), n]))
        settled = np.flatnonzero(pool - first >= TEMPLATE_BEATS)
        pool = settled if len(settled) else pool
    probe = pool[np.linspace(0, len(pool) - 1, min(len(pool), 500)).astype(int)]
    idx = [list(data.channels).index(c) for c in MORPH_FEATURES]
    beat = BeatTemplate(x.shape[-1], r_offset, data.fs)
    got = np.stack([beat.compare(x[i, 0], templates[i]) for i in probe])
    bad = np.abs(got - x[probe][:, idx, 0]).max(axis=1) > _TEMPLATE_TOLERANCE
    if bad.mean() > 0.01:
        raise DataError(
            f"the morphology channels cannot be recomputed under attack: for {bad.mean():.0%} of "
            "the windows probed, the templates do not give the stored features (the data must "
            "hold every beat of each recording, in order, or carry its templates: write it "
            "again with this version)")
