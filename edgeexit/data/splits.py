"""Splits of the training side: the validation beats training holds out, and folds by record.

Both are deterministic (seeded) and torch-free, so that every stage that needs the same split
rebuilds it here rather than reaching into training: export calibrates exit thresholds on the
very validation beats the model was validated on (:meth:`ValidationSplit.recorded` reads them
from the checkpoint), and cross-validation (:mod:`edgeexit.cv`) and cross-fitting
(:mod:`edgeexit.crossfit`) cut the training records into the same folds (:func:`assign_folds`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping

import numpy as np

from edgeexit.data.dataset import BeatDataset, stratified_split
from edgeexit.errors import ConfigError, DataError

log = logging.getLogger(__name__)

VAL_SPLITS = ("auto", "record", "beat")


@dataclasses.dataclass(frozen=True)
class ValidationSplit:
    """How training holds validation beats out of its training data.

    Attributes:
        how: ``record`` holds out whole records (no patient on both sides), ``beat`` a stratified
            beat sample, ``auto`` = ``record`` when the data has at least 5 records
            (``TrainConfig.val_split``).
        fraction: share of the training beats held out (``TrainConfig.val_fraction``).
        seed: the draw (``TrainConfig.seed``).
    """

    how: str = "auto"
    fraction: float = 0.15
    seed: int = 0

    def __post_init__(self) -> None:
        if self.how not in VAL_SPLITS:
            raise ConfigError(f"unknown val split {self.how!r}; choose {', '.join(VAL_SPLITS)}")
        if not 0.0 < self.fraction < 1.0:
            raise ConfigError(f"val fraction must lie in (0, 1), got {self.fraction}")

    @classmethod
    def recorded(cls, train_config: Mapping | None) -> ValidationSplit:
        """The split of a checkpoint's recorded training settings (its ``meta["train_config"]``,
        :meth:`edgeexit.train.TrainConfig.to_dict`); the defaults where it records none."""
        tc = train_config or {}
        default = cls()
        return cls(how=tc.get("val_split", default.how),
                   fraction=tc.get("val_fraction", default.fraction),
                   seed=tc.get("seed", default.seed))

    def apply(self, data: BeatDataset) -> tuple[BeatDataset, BeatDataset]:
        """``(training, validation)`` parts of ``data``: the same beats for the same data."""
        n_records = 0 if data.groups is None else int(np.unique(data.groups).size)
        by_record = self.how == "record" or (self.how == "auto" and n_records >= 5)
        if by_record and data.groups is None:
            raise DataError("val split 'record' needs record ids (groups) in the data; use 'beat'")
        groups = data.groups if by_record else None
        keep, held = stratified_split(data.y, self.fraction, self.seed, groups)
        log.info(
            "validation: %d beats held out by %s, %d left for training",
            held.size,
            "record" if by_record else "beat",
            keep.size,
        )
        return data.subset(keep), data.subset(held)


def assign_folds(y: np.ndarray, groups: np.ndarray, folds: int) -> dict[str, int]:
    """Record -> fold, spreading the records rich in rare classes (every class but 0) over folds:
    records in the order of their count of rare-class beats, round robin."""
    names = np.unique(groups)
    rare = {g: int((y[groups == g] != 0).sum()) for g in names}
    order = sorted(names, key=lambda g: (-rare[g], str(g)))
    return {str(g): i % folds for i, g in enumerate(order)}
