"""Model selection by leave-records-out cross-validation on the training records.

A model's own validation split (3-4 of MIT-BIH's 22 DS1 records) does not predict how it does on
new patients: which records it holds out moves the chosen epoch and the score more than the
recipe does. Cross-validation by record uses all of them: the training records are cut into
``folds`` groups (:func:`edgeexit.data.splits.assign_folds`: the records rich in rare classes spread
round robin over the folds); for each fold a model is trained on the other groups for every epoch
up to ``config.epochs``, and every exit is scored on the held-out records after every epoch.

The epoch count is chosen from the mean over folds of the final exit's score (macro-F1 over N, S,
V, F where the classes have them; the fewest epochs among ties), never from the test split: the
final model then trains on the training records for exactly that many epochs and keeps the last
one (``TrainConfig(select="last")``), so that no single hold-out chooses anything. Recipes
(hyperparameters, data options) are compared by the same mean (:func:`cross_validate` on each;
``tools/cv_search.py``). Pooled out-of-fold scores (every held-out beat of every fold in one
confusion matrix) are reported beside the mean: rare classes (F: a few records) make single
folds noisy.

Host side (trains with torch); ``edgeexit train --cv K`` runs it, through :func:`run_training`
(what ``edgeexit train`` runs, with or without cross-validation: it sits here, above both).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgeexit.data import BeatDataset, DataSpec, load_train_test
from edgeexit.data.splits import assign_folds
from edgeexit.errors import DataError
from edgeexit.fileio import atomic_write
from edgeexit.metrics import classification_report, headline_macro_f1
from edgeexit.training.distributed import is_main_process

if TYPE_CHECKING:
    from edgeexit.train import TrainConfig, TrainResult

__all__ = ["CVResult", "compact_report", "cross_validate", "run_training"]

log = logging.getLogger(__name__)


def compact_report(report: dict) -> dict:
    """Accuracy, the selection score and each class's sensitivity / precision (JSON-ready)."""
    out = {"accuracy": round(report["accuracy"], 6), "score": round(headline_macro_f1(report), 6)}
    for name, c in report["per_class"].items():
        if c["support"] or c["precision"]:
            out[name] = {"se": round(c["sensitivity"], 4), "ppv": round(c["precision"], 4),
                         "n": c["support"]}
    return out


@dataclasses.dataclass(frozen=True)
class CVResult:
    """Per-fold and pooled out-of-fold scores of every exit after every epoch.

    ``per_fold[f][e][k]``: fold f, epoch e + 1, exit k (:func:`compact_report`); ``pooled[e][k]``
    the same over all folds' held-out beats; ``folds[f]``: the records fold f held out.
    """

    folds: tuple[tuple[str, ...], ...]
    fold_beats: tuple[int, ...]
    per_fold: tuple[tuple[tuple[dict, ...], ...], ...]
    pooled: tuple[tuple[dict, ...], ...]
    config: dict
    source: str

    @property
    def epochs(self) -> int:
        return len(self.pooled)

    def curve(self, exit_index: int = -1) -> list[float]:
        """Mean over folds of the selection score after each epoch (exit ``exit_index``)."""
        return [float(np.mean([f[e][exit_index]["score"] for f in self.per_fold]))
                for e in range(self.epochs)]

    def spread(self, epoch: int, exit_index: int = -1) -> tuple[float, float]:
        """(min, max) over folds of the score after ``epoch`` (from 1)."""
        s = [f[epoch - 1][exit_index]["score"] for f in self.per_fold]
        return float(min(s)), float(max(s))

    @property
    def best_epoch(self) -> int:
        """The epoch count (from 1) with the best mean final-exit score; the fewest among ties."""
        c = np.round(self.curve(), 6)
        return int(np.argmax(c)) + 1

    @property
    def best_score(self) -> float:
        return self.curve()[self.best_epoch - 1]

    def to_dict(self) -> dict:
        e = self.best_epoch
        return {
            "source": self.source, "config": self.config,
            "folds": [list(f) for f in self.folds], "fold_beats": list(self.fold_beats),
            "best_epoch": e, "best_mean_score": round(self.best_score, 6),
            "fold_scores_at_best": [f[e - 1][-1]["score"] for f in self.per_fold],
            "mean_score_per_epoch": [round(v, 6) for v in self.curve()],
            "mean_score_per_epoch_per_exit": [[round(v, 6) for v in self.curve(k)]
                                              for k in range(len(self.pooled[0]))],
            "pooled": [list(p) for p in self.pooled],
            "per_fold": [[list(ep) for ep in f] for f in self.per_fold],
        }

    def table(self) -> str:
        """Markdown: the score per epoch (mean, min-max over folds, pooled) and, at the chosen
        epoch, every fold and exit with S and V sensitivity / precision."""
        lines = ["| epoch | mean score (final exit) | min - max over folds | pooled score | pooled S se / ppv | pooled V se / ppv |",
                 "|---|---|---|---|---|---|"]
        curve, best = self.curve(), self.best_epoch
        for e in range(1, self.epochs + 1):
            lo, hi = self.spread(e)
            p = self.pooled[e - 1][-1]
            mark = " **(chosen)**" if e == best else ""
            lines.append(f"| {e}{mark} | {curve[e - 1]:.3f} | {lo:.3f} - {hi:.3f} | {p['score']:.3f} "
                         f"| {_sp(p, 'S')} | {_sp(p, 'V')} |")
        e = best
        lines += ["", f"At epoch {e}, per fold (final exit) and per exit (pooled):", "",
                  "| fold | held-out records | beats | score | accuracy | S se / ppv | V se / ppv |",
                  "|---|---|---|---|---|---|---|"]
        for i, (recs, n, f) in enumerate(zip(self.folds, self.fold_beats, self.per_fold)):
            r = f[e - 1][-1]
            lines.append(f"| {i} | {' '.join(recs)} | {n} | {r['score']:.3f} | {100 * r['accuracy']:.1f}% "
                         f"| {_sp(r, 'S')} | {_sp(r, 'V')} |")
        lines += ["", "| exit | pooled score | accuracy | S se / ppv | V se / ppv |", "|---|---|---|---|---|"]
        for k, r in enumerate(self.pooled[e - 1]):
            lines.append(f"| {k} | {r['score']:.3f} | {100 * r['accuracy']:.1f}% | {_sp(r, 'S')} | {_sp(r, 'V')} |")
        return "\n".join(lines) + "\n"


def _sp(r: dict, name: str) -> str:
    c = r.get(name)
    return "-" if c is None else f"{100 * c['se']:.1f}% / {100 * c['ppv']:.1f}%"


def cross_validate(
    data: BeatDataset,
    config,
    folds: int = 4,
    progress: Callable[[str], None] | None = None,
    train_progress: bool = False,
) -> CVResult:
    """Leave-records-out cross-validation of ``config`` (a :class:`edgeexit.train.TrainConfig`)
    on ``data`` (the training side; see the module docstring). Every fold trains all
    ``config.epochs`` epochs (no early stop) and is scored on its held-out records after each.
    """
    from edgeexit.train import train

    if folds < 2:
        raise DataError(f"cross-validation needs at least 2 folds, got {folds}")
    n_records = 0 if data.groups is None else int(np.unique(data.groups).size)
    if n_records < 2 * folds:
        raise DataError(
            f"cross-validation by record needs at least {2 * folds} records with ids; "
            f"{data.source} has {n_records}: use fewer folds (--cv), or data with record ids"
        )
    config = dataclasses.replace(config, select="last", patience=0)
    fold_of = assign_folds(data.y, data.groups, folds)
    fold = np.array([fold_of[str(g)] for g in data.groups])
    held_records, fold_beats, per_fold = [], [], []
    preds: dict[str, np.ndarray] = {}  # "y": [epoch, exit, beat] out-of-fold answers
    for f in range(folds):
        held = fold == f
        held_records.append(tuple(sorted({str(g) for g in data.groups[held]}, key=_record_key)))
        fold_beats.append(int(held.sum()))
        if progress:
            progress(f"fold {f + 1}/{folds}: training without records {' '.join(held_records[-1])}")
        part = data.subset(np.flatnonzero(held))
        scores: list[tuple[dict, ...]] = []

        def on_epoch(epoch: int, logits: np.ndarray, part=part, held=held, scores=scores) -> None:
            if not preds:
                preds["y"] = np.zeros((config.epochs, logits.shape[0], len(data)), np.int16)
            yhat = logits.argmax(axis=-1)
            preds["y"][epoch - 1][:, held] = yhat
            scores.append(tuple(compact_report(classification_report(part.y, p, data.classes))
                                for p in yhat))

        train(data.subset(np.flatnonzero(~held)), config, val=part, on_epoch=on_epoch,
              progress=train_progress)
        per_fold.append(tuple(scores))
        log.info("fold %d/%d (%s): final-exit score per epoch %s", f + 1, folds, " ".join(held_records[-1]),
                 " ".join(f"{s[-1]['score']:.3f}" for s in scores))
    pooled = tuple(tuple(compact_report(classification_report(data.y, p, data.classes)) for p in preds["y"][e])
                   for e in range(config.epochs))
    return CVResult(tuple(held_records), tuple(fold_beats), tuple(per_fold), pooled, config.to_dict(),
                    f"{data.source} (training side, {folds}-fold cross-validation by record)")


def _record_key(name: str):
    return (0, int(name), "") if name.isdigit() else (1, 0, name)


TRAIN_FILES = frozenset({"model.pt", "metrics.json", "cv.json", "cv.md"})  # what `train --out` holds


def run_training(
    spec: DataSpec,
    config: TrainConfig,
    out_dir: str | os.PathLike | None,
    progress: bool = False,
    cv_folds: int | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> TrainResult:
    """Load the data of ``spec`` (train and test) and :func:`edgeexit.train.train` on it: what
    `edgeexit train` runs.

    ``cv_folds``: first choose the epoch count by leave-records-out cross-validation on the
    training side (:func:`edgeexit.cv.cross_validate`; written to ``OUT/cv.json`` and
    ``OUT/cv.md``), then train for exactly that many epochs, keeping the last; the test split is
    evaluated once, at the end.
    """
    from edgeexit.torchdevice import resolve_device
    from edgeexit.train import train

    resolve_device(config.device)  # no GPU for --device cuda: say so before loading any data
    train_set, test_set = _load(spec, progress)
    extra = {}
    if cv_folds:
        config, extra["cv"] = _choose_epochs(train_set, config, cv_folds, out_dir, progress, on_stage)
    return train(train_set, config, test=test_set, out_dir=out_dir, progress=progress, data_spec=spec,
                 meta=extra)


def _load(spec: DataSpec, progress: bool) -> tuple[BeatDataset, BeatDataset]:
    """The training and test sides of ``spec``, with a progress bar over the records."""
    t0 = time.perf_counter()
    bar = None

    def record_progress(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            from tqdm import tqdm

            bar = tqdm(total=total, desc="reading records", unit="record", leave=False)
        bar.update(done - bar.n)

    try:
        train_set, test_set = load_train_test(spec, progress=record_progress if progress else None)
    finally:
        if bar is not None:
            bar.close()
    log.info("data: %d training beats %s, %d test beats %s (%.1f s)", len(train_set),
             train_set.class_counts(), len(test_set), test_set.class_counts(),
             time.perf_counter() - t0)
    return train_set, test_set


def _choose_epochs(train_set: BeatDataset, config: TrainConfig, folds: int, out_dir,
                   progress: bool, on_stage) -> tuple[TrainConfig, dict]:
    """Cross-validate ``config`` over ``folds`` record folds; returns the config that trains for
    the chosen epochs on the folds' schedule, keeping the last, and the summary for the metrics
    (``OUT/cv.json`` and ``OUT/cv.md`` written by rank 0)."""
    cv = cross_validate(train_set, config, folds, progress=on_stage, train_progress=progress)
    d, table = cv.to_dict(), cv.table()
    if out_dir is not None and is_main_process():  # rank 0 writes, as train()
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        text = json.dumps(d, indent=2).encode()
        atomic_write(out / "cv.json", lambda f: f.write(text))
        atomic_write(out / "cv.md", lambda f: f.write(table.encode()))
    summary = {k: d[k] for k in ("source", "folds", "best_epoch", "best_mean_score",
                                 "fold_scores_at_best", "mean_score_per_epoch")}
    summary["table"] = table
    if on_stage:
        on_stage(f"cross-validation chose {cv.best_epoch} epochs (mean final-exit score "
                 f"{cv.best_score:.3f}); training the model for them (its validation records "
                 "choose nothing now; export calibrates on them)")
    return dataclasses.replace(config, epochs=cv.best_epoch, select="last",
                               schedule_epochs=config.epochs), summary
