"""Data: the built-in synthetic ECG, the MIT-BIH (WFDB) loader, npz/csv files, and splits.

:func:`load_source` turns one data *source* string into a :class:`BeatDataset`:

=======================  =====================================================================
``synthetic``            the built-in seeded generator (:mod:`edgeexit.data.synthetic`)
a directory              WFDB records, MIT-BIH style (:mod:`edgeexit.data.mitbih`)
``FILE.npz``             arrays written by :meth:`BeatDataset.save_npz` (or any ``x``/``y`` npz)
``FILE.csv``             one single-channel beat per row, label first
=======================  =====================================================================

:func:`load_train_test` adds the test set that belongs to a source: a fresh synthetic seed, the
MIT-BIH DS2 records (de Chazal inter-patient split), or a test file of the user's.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from edgeexit.config import dataclass_from_dict
from edgeexit.data.dataset import (
    AAMI_CLASSES,
    BeatDataset,
    load_csv,
    load_npz,
    stratified_index,
    stratified_sample,
    stratified_split,
)
from edgeexit.data.mitbih import DS1, DS2, SPLITS, Progress, load_mitbih, load_mitbih_split
from edgeexit.data.splits import ValidationSplit, assign_folds
from edgeexit.errors import ConfigError, DataError
from edgeexit.runtime.preprocess import MORPH_FEATURES

log = logging.getLogger(__name__)

SYNTHETIC = "synthetic"
TEST_SEED_OFFSET = 1000  # the synthetic test set uses other simulated patients than training
CALIBRATION_SEED_OFFSET = 2000  # and threshold calibration others again (neither train nor test)
SIDES = ("train", "test", "calibration")
SYNTHETIC_BEATS_PER_PATIENT = 125
"""Beats per simulated patient of a synthetic data set of more than 24 x 125 beats (smaller ones
keep the generator's 24 patients): the patients grow with the beats, about two minutes each. At
250 beats per patient the default 6000 training beats held six paced patients (a paced record is
~40% paced, paced beats 10%), too few to span the paced morphologies (pacing-spike height, QRS
polarity and width): the models trained on them answered F for nearly every beat of some unseen
paced patients (90 of 91 beats of two of the six paced test patients of seed 1); with twice the
patients at the same beats they recognise them (``results/synthetic-patients.json``)."""

__all__ = [
    "AAMI_CLASSES",
    "BeatDataset",
    "DataSpec",
    "ValidationSplit",
    "assign_folds",
    "load_csv",
    "load_npz",
    "load_source",
    "load_split",
    "load_train_test",
    "stratified_index",
    "stratified_sample",
    "stratified_split",
    "synthetic_patients",
]


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """Where training data comes from and how it is cut.

    Attributes:
        source: ``synthetic``, a WFDB directory, or an ``.npz``/``.csv`` file.
        test_source: a separate test set (file or directory), or None for the source's default.
        split: for WFDB directories: ``inter-patient`` (DS1 train / DS2 test, the default) or
            ``random`` (beat-level; leaks patients, inflates accuracy).
        n_beats: synthetic only: beats to generate for training (the test set gets a third),
            from :func:`synthetic_patients` simulated patients.
        seed: seed of the synthetic generator and of random splits.
        window: samples per beat window.
        rr_context: append RR-interval context channels (synthetic and WFDB sources).
        morph_context: append morphology context channels: each beat against the same
            recording's previous beats (:data:`edgeexit.runtime.preprocess.MORPH_FEATURES`;
            synthetic and WFDB sources).
        test_fraction: held-out fraction when a file source has no test set of its own.
    """

    source: str = SYNTHETIC
    test_source: str | None = None
    split: str = "inter-patient"
    n_beats: int = 6000
    seed: int = 0
    window: int = 256
    rr_context: bool = True
    test_fraction: float = 0.2
    morph_context: bool = False

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ConfigError(f"unknown split {self.split!r}; choose one of {', '.join(SPLITS)}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DataSpec:
        """The spec recorded by :meth:`to_dict` (in a checkpoint or a bundle's provenance)."""
        return dataclass_from_dict(cls, d, "data spec keys")


def synthetic_patients(n_beats: int) -> int:
    """How many simulated patients a synthetic data set of ``n_beats`` beats is drawn from: the
    generator's default (24), or one per :data:`SYNTHETIC_BEATS_PER_PATIENT` beats if more."""
    from edgeexit.data.synthetic import SyntheticECGConfig

    return max(SyntheticECGConfig.n_records, int(n_beats) // SYNTHETIC_BEATS_PER_PATIENT)


def _synthetic(spec: DataSpec, n_beats: int, seed: int) -> BeatDataset:
    from edgeexit.data.synthetic import SyntheticECGConfig, generate_synthetic

    cfg = SyntheticECGConfig(
        n_beats=n_beats, seed=seed, window=spec.window, rr_context=spec.rr_context,
        morph_context=spec.morph_context, n_records=synthetic_patients(n_beats),
    )
    return generate_synthetic(cfg)


def load_source(source: str, spec: DataSpec | None = None, progress: Progress = None) -> BeatDataset:
    """Load every beat of one source (a WFDB directory loads all non-paced records)."""
    spec = spec or DataSpec(source=source)
    if source == SYNTHETIC:
        return _synthetic(spec, spec.n_beats, spec.seed)
    path = Path(source)
    if path.is_dir():
        return load_mitbih(path, window=spec.window, rr_context=spec.rr_context,
                           morph_context=spec.morph_context, progress=progress)
    if not path.exists():
        raise DataError(
            f"data source not found: {source} (give 'synthetic', a WFDB directory, or a .npz/.csv file)"
        )
    if path.suffix not in (".npz", ".csv"):
        raise DataError(f"unsupported data file {source}: use .npz or .csv (or a WFDB directory)")
    data = load_npz(path) if path.suffix == ".npz" else load_csv(path)
    if spec.morph_context and not set(MORPH_FEATURES) <= set(data.channels):
        raise DataError(
            f"{source} holds windows already cut, without the morphology channels "
            f"({', '.join(MORPH_FEATURES)}) that --morph-context asks for: write the file with "
            "`edgeexit data generate --morph-context`, or train on a WFDB directory"
        )
    if data.templates is None and set(MORPH_FEATURES) <= set(data.channels):
        data = _rebuilt_templates(data)
    return data


def _rebuilt_templates(data: BeatDataset) -> BeatDataset:
    """A file with morphology channels but no templates (written before they were kept): rebuilt
    from its records' beats, or left without (a warning) where the file is not every beat of
    each recording in order."""
    from edgeexit.data.dataset import rebuild_templates
    from edgeexit.runtime.preprocess import default_r_offset

    try:
        return dataclasses.replace(
            data, templates=rebuild_templates(data, default_r_offset(data.x.shape[-1])))
    except DataError as e:
        log.warning("%s: no morphology templates (%s); attacks on a sample of it cannot "
                    "recompute the morphology channels", data.source, e)
        return data


def load_split(spec: DataSpec, which: str, progress: Progress = None) -> BeatDataset:
    """One side (``train`` or ``test``) of :func:`load_train_test`, reading only that side's records
    where the source allows it (synthetic data, the MIT-BIH inter-patient split).

    ``calibration`` (synthetic data only): beats of simulated patients that are in neither the
    training nor the test set (as many beats as training, ``seed + 2000``), for calibrating
    exit thresholds on new patients. Other sources have no such side: calibrate on records of the
    target population that training never saw (``edgeexit calibrate --data``).
    """
    if which not in SIDES:
        raise DataError(f"unknown split side {which!r}; choose {', '.join(SIDES)}")
    if which == "calibration":
        if spec.source != SYNTHETIC or spec.test_source is not None:
            raise DataError(
                f"{spec.source} has no calibration side of its own: give records from the target "
                "population that training never saw (a WFDB directory or an .npz/.csv file)"
            )
        return _synthetic(spec, spec.n_beats, spec.seed + CALIBRATION_SEED_OFFSET)
    train = which == "train"
    if spec.source == SYNTHETIC and spec.test_source is None:
        if train:
            return _synthetic(spec, spec.n_beats, spec.seed)
        return _synthetic(spec, max(spec.n_beats // 3, 100), spec.seed + TEST_SEED_OFFSET)
    path = Path(spec.source)
    if path.is_dir() and spec.test_source is None and spec.split == "inter-patient":
        return load_mitbih(
            path, DS1 if train else DS2, window=spec.window, rr_context=spec.rr_context,
            morph_context=spec.morph_context, progress=progress
        )
    return load_train_test(spec, progress)[0 if train else 1]


def load_train_test(spec: DataSpec, progress: Progress = None) -> tuple[BeatDataset, BeatDataset]:
    """The training set and the test set of ``spec`` (the test set never feeds training decisions).

    - synthetic: training beats from ``seed``; test beats (a third as many) from other simulated
      patients (``seed + 1000``).
    - WFDB directory: :func:`edgeexit.data.mitbih.load_mitbih_split` with ``spec.split``.
    - file: the file's beats; the test set is ``test_source`` if given, otherwise a held-out
      ``test_fraction`` (whole records when the file knows them).
    """
    if spec.source == SYNTHETIC and spec.test_source is None:
        train = _synthetic(spec, spec.n_beats, spec.seed)
        test = _synthetic(spec, max(spec.n_beats // 3, 100), spec.seed + TEST_SEED_OFFSET)
        return train, test
    path = Path(spec.source)
    if path.is_dir() and spec.test_source is None:
        return load_mitbih_split(
            path,
            spec.split,
            window=spec.window,
            rr_context=spec.rr_context,
            morph_context=spec.morph_context,
            seed=spec.seed,
            progress=progress,
        )
    data = load_source(spec.source, spec, progress)
    if spec.test_source is not None:
        test = load_source(spec.test_source, spec, progress)
        if test.input_shape != data.input_shape or test.classes != data.classes:
            raise DataError(
                f"test set {spec.test_source} has shape {test.input_shape} and classes "
                f"{list(test.classes)}, but training data has {data.input_shape} and "
                f"{list(data.classes)}"
            )
        return data, test
    keep, held = stratified_split(data.y, spec.test_fraction, spec.seed, data.groups)
    log.info("no test set given: holding out %d of %d beats of %s", held.size, len(data), spec.source)
    return data.subset(keep), data.subset(held)
