"""How far the context scalars alone go: a linear classifier on the RR and morphology channels.

Every MIT-BIH window with ``--morph-context`` carries ten constant channels (seven RR features,
three morphology features; ``edgeexit.runtime.preprocess``). This fits a multinomial logistic
regression on them alone (log of the RR values and ratios, standardised on the training side;
full-batch Adam, seeded), with plain or class-balanced cross-entropy (``--max-class-weight``),
and reports it two ways:

- leave-records-out cross-validation on DS1 (the folds of ``edgeexit train --cv``: mean over
  folds of the macro-F1 over N/S/V/F, and the pooled out-of-fold figures), which is what a model
  choice may look at;
- DS1 -> DS2 once (``--test``), for comparison with the CNN recipes of the README.

It is the de Chazal et al. (2004) kind of model without their morphology features; the README
("MIT-BIH, late fusion of the context") says what it showed and why ``--context-fusion`` exists.

    .venv/bin/python tools/context_probe.py --mitdb ../shared/data/mitdb --test
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch

from edgeexit.crossfit import assign_folds
from edgeexit.data.mitbih import load_mitbih_split
from edgeexit.metrics import classification_report, headline_macro_f1
from edgeexit.runtime.preprocess import MORPH_FEATURES, RR_FEATURES
from edgeexit.summary import machine_info

LOG_FEATURES = (*RR_FEATURES, "qrs_amp_ratio")  # positive, multiplicative: taken as logs


def scalars(x: np.ndarray, channels: tuple[str, ...]) -> np.ndarray:
    """The ten context scalars of windows ``[N, C, L]`` (float64), logs where multiplicative."""
    names = (*RR_FEATURES, *MORPH_FEATURES)
    f = np.stack([x[:, channels.index(n), 0] for n in names], axis=1).astype(np.float64)
    for i, n in enumerate(names):
        if n in LOG_FEATURES:
            f[:, i] = np.log(np.clip(f[:, i], 1e-3, None))
        elif n == "beat_dev":
            f[:, i] = np.log1p(np.clip(f[:, i], 0.0, None))
    return f


def fit(x: np.ndarray, y: np.ndarray, classes: int, max_weight: float, seed: int, steps: int = 400):
    """A seeded multinomial logistic regression; returns ``predict(x) -> labels``."""
    torch.manual_seed(seed)
    mu, sd = x.mean(0), x.std(0) + 1e-6
    xt = torch.tensor((x - mu) / sd, dtype=torch.float32)
    counts = np.bincount(y, minlength=classes).astype(float)
    w = np.ones(classes)
    if max_weight > 0:  # balanced, capped (as TrainConfig's class_weighting="balanced")
        w = np.minimum(np.where(counts > 0, counts.sum() / (classes * np.maximum(counts, 1)), 0.0), max_weight)
    lin = torch.nn.Linear(x.shape[1], classes)
    opt = torch.optim.Adam(lin.parameters(), lr=1e-2)
    loss = torch.nn.CrossEntropyLoss(weight=torch.tensor(w, dtype=torch.float32))
    yt = torch.from_numpy(y)
    for _ in range(steps):
        opt.zero_grad()
        loss(lin(xt), yt).backward()
        opt.step()

    def predict(xn: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return lin(torch.tensor((xn - mu) / sd, dtype=torch.float32)).argmax(1).numpy()

    return predict


def summary(report: dict) -> dict:
    pc = report["per_class"]
    return {"macro_f1_nsvf": round(headline_macro_f1(report), 4), "accuracy": round(report["accuracy"], 4),
            **{c: {"se": round(pc[c]["sensitivity"], 4), "ppv": round(pc[c]["precision"], 4)} for c in "NSVF"}}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mitdb", default="../shared/data/mitdb")
    p.add_argument("--folds", type=int, default=4)
    p.add_argument("--max-class-weight", default="0,10",
                   help="comma-separated: 0 = plain cross-entropy, W = balanced weights capped at W")
    p.add_argument("--test", action="store_true", help="also train on DS1 and test on DS2 once")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    torch.set_num_threads(1)
    train, test = load_mitbih_split(a.mitdb, morph_context=True)
    classes = len(train.classes)
    xtr, xte = scalars(train.x, train.channels), scalars(test.x, test.channels)
    fold_of = assign_folds(train.y, train.groups, a.folds)
    fold = np.array([fold_of[str(g)] for g in train.groups])
    out = {"host": machine_info()["cpu"], "features": [*RR_FEATURES, *MORPH_FEATURES], "runs": []}
    for mw in (float(v) for v in a.max_class_weight.split(",")):
        oof, per_fold = np.zeros_like(train.y), []
        for f in range(a.folds):
            held = fold == f
            oof[held] = fit(xtr[~held], train.y[~held], classes, mw, a.seed)(xtr[held])
            per_fold.append(round(headline_macro_f1(classification_report(train.y[held], oof[held], train.classes)), 4))
        run = {"max_class_weight": mw, "cv_fold_macro_f1": per_fold, "cv_mean": round(float(np.mean(per_fold)), 4),
               "cv_pooled": summary(classification_report(train.y, oof, train.classes))}
        if a.test:
            pred = fit(xtr, train.y, classes, mw, a.seed)(xte)
            run["ds2"] = summary(classification_report(test.y, pred, test.classes))
        out["runs"].append(run)
        print(f"max class weight {mw:g}: CV mean {run['cv_mean']:.3f} (folds {per_fold}), pooled "
              f"{run['cv_pooled']['macro_f1_nsvf']:.3f}, S {run['cv_pooled']['S']}"
              + (f"; DS2 {run['ds2']['macro_f1_nsvf']:.3f}, S {run['ds2']['S']}, V {run['ds2']['V']}"
                 if a.test else ""), file=sys.stderr)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
