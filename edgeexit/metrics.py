"""Classification metrics per exit, in numpy (shared by training, evaluation and the device bench).

Every figure here is computed from a confusion matrix, so they all agree with each other.
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)

NSVF = ("N", "S", "V", "F")
"""The AAMI classes that MIT-BIH macro-F1 is conventionally reported over (Q is too rare)."""


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """``cm[t, p]`` = number of samples of true class t predicted as p; shape ``[K, K]``."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    return np.bincount(y_true * num_classes + y_pred, minlength=num_classes**2).reshape(
        num_classes, num_classes
    )


def _safe_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.divide(a, b, out=np.zeros_like(a, dtype=np.float64), where=b > 0)


def classification_report(
    y_true: np.ndarray, y_pred: np.ndarray, classes: tuple[str, ...] | list[str]
) -> dict:
    """Accuracy, macro-F1 and per-class sensitivity/precision/F1 as a JSON-ready dict.

    ``macro_f1`` averages over the classes present in ``y_true``; when the classes include the
    AAMI N, S, V and F, ``macro_f1_nsvf`` averages over those four (the MIT-BIH convention).
    """
    k = len(classes)
    cm = confusion_matrix(y_true, y_pred, k).astype(np.float64)
    tp = np.diag(cm)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    sens = _safe_div(tp, support)
    prec = _safe_div(tp, predicted)
    f1 = _safe_div(2 * sens * prec, sens + prec)
    present = support > 0
    report = {
        "accuracy": float(tp.sum() / max(cm.sum(), 1.0)),
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class": {
            name: {
                "sensitivity": float(sens[i]),
                "precision": float(prec[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(classes)
        },
        "confusion": cm.astype(np.int64).tolist(),
    }
    if all(c in classes for c in NSVF):
        idx = [list(classes).index(c) for c in NSVF]
        report["macro_f1_nsvf"] = float(f1[idx].mean())
    return report


def headline_macro_f1(report: dict) -> float:
    """The macro-F1 a :func:`classification_report` is judged by: over N, S, V, F where the
    classes have them (the MIT-BIH convention), else over the classes present."""
    return float(report.get("macro_f1_nsvf", report["macro_f1"]))


def gross_statistics(report: dict) -> dict:
    """AAMI EC57's gross statistics of a :func:`classification_report` over pooled beats (every
    beat of every record counted once): accuracy, the headline macro-F1, and the sensitivity
    and positive predictive value of S and V (fractions; 0 where a class is absent)."""
    per = report["per_class"]
    out = {"beats": int(sum(c["support"] for c in per.values())),
           "accuracy": report["accuracy"], "macro_f1": headline_macro_f1(report)}
    for c in ("S", "V"):
        if c in per:
            out[f"{c}_se"] = per[c]["sensitivity"]
            out[f"{c}_ppv"] = per[c]["precision"]
            out[f"{c}_beats"] = per[c]["support"]
    return out


def warn_one_class(y, what: str) -> None:
    """Log a warning when labels ``y`` hold fewer than two classes: ``what`` (training,
    calibration) then runs, but learns or measures nothing about telling classes apart."""
    found = np.unique(np.asarray(y))
    if found.size < 2:
        log.warning("the %s labels hold %s class only (%s): the result cannot tell classes apart; "
                    "check the data source and its split", what, found.size,
                    ", ".join(map(str, found.tolist())) or "none")
