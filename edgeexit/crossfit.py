"""Cross-fitted exit confidences: calibration data from every training record, none of them seen.

A model's own validation split holds few records (3-4 of MIT-BIH's 22 DS1 records), too few for
thresholds that hold on new patients. Cross-fitting finds more without touching the test split:
the training records are cut into ``folds`` groups; for each, a model is trained with the
checkpoint's own recipe (:class:`edgeexit.train.TrainConfig` as recorded) on the other groups and
predicts every exit on the held-out group. The out-of-fold softmaxes of all training records then
stand in for the deployed model's on new patients (the same recipe, trained on almost as much
data), and :func:`edgeexit.calibrate.calibrate_thresholds` bounds the loss over all those records.

Records are assigned to folds in the order of their count of rare-class beats (S, V, F, Q), round
robin, so the few records rich in them spread across folds.

Host side (trains with torch); ``edgeexit calibrate BUNDLE --cross-fit K`` runs it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable

import numpy as np

from edgeexit.data.splits import assign_folds

__all__ = ["CrossFit", "assign_folds", "cross_fit"]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class CrossFit:
    """Out-of-fold softmaxes of every exit (``probs``, each ``[N, K]``), labels, record ids, and
    which records each fold held out."""

    probs: list[np.ndarray]
    y: np.ndarray
    groups: np.ndarray
    folds: tuple[tuple[str, ...], ...]
    source: str

    def describe(self) -> dict:
        return {"folds": [list(f) for f in self.folds], "beats": int(len(self.y)),
                "records": int(np.unique(self.groups).size), "source": self.source}


def cross_fit(
    checkpoint: str | os.PathLike,
    folds: int = 4,
    threads: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> CrossFit:
    """Train ``folds`` models with ``checkpoint``'s recipe, each on all but one group of its
    training records, and collect every exit's out-of-fold softmax (see the module docstring)."""
    import torch

    from edgeexit.checkpoint import load_checkpoint
    from edgeexit.data import load_split
    from edgeexit.errors import DataError
    from edgeexit.train import predict_exits, recorded_train_config, train

    if folds < 2:
        raise DataError(f"cross-fitting needs at least 2 folds, got {folds}")
    ckpt = load_checkpoint(checkpoint)
    meta = ckpt.meta or {}
    spec = ckpt.data_spec(None, f" ({checkpoint}); cross-fitting needs it")
    data = load_split(spec, "train")
    if data.groups is None or np.unique(data.groups).size < 2 * folds:
        n = 0 if data.groups is None else np.unique(data.groups).size
        raise DataError(
            f"cross-fitting by record needs at least {2 * folds} records with ids; {spec.source} "
            f"has {n}: use fewer --cross-fit folds, or calibrate on other records with --data"
        )
    config = recorded_train_config(meta)
    if threads is not None:
        config = dataclasses.replace(config, threads=threads)
    fold_of = assign_folds(data.y, data.groups, folds)
    fold = np.array([fold_of[str(g)] for g in data.groups])
    probs = [np.zeros((len(data), len(data.classes))) for _ in range(ckpt.model.num_exits)]
    held_records = []
    for f in range(folds):
        held = fold == f
        held_records.append(tuple(sorted({str(g) for g in data.groups[held]})))
        if progress:
            progress(f"fold {f + 1}/{folds}: training without records {', '.join(held_records[-1])}")
        model = train(data.subset(~held), config).model
        logits = predict_exits(model, np.ascontiguousarray(data.x[held], np.float32))
        z = torch.from_numpy(logits.astype(np.float64))
        for k, p in enumerate(torch.softmax(z, dim=-1).numpy()):
            probs[k][held] = p
        log.info("fold %d/%d: %d held-out beats, final-exit accuracy %.3f", f + 1, folds,
                 int(held.sum()), float((logits[-1].argmax(-1) == data.y[held]).mean()))
    return CrossFit(probs, data.y, data.groups, tuple(held_records),
                    f"{spec.source} (training side, {folds}-fold cross-fit by record)")
