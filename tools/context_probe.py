"""How far the context scalars alone go: a linear classifier on the RR and morphology channels.

Every MIT-BIH window with ``--morph-context`` carries ten constant channels (seven RR features,
three morphology features; ``edgeexit.runtime.preprocess``). This fits a multinomial logistic
regression on them alone (log of the RR values and ratios, standardised on the training side;
full-batch Adam, seeded), with plain or class-balanced cross-entropy (``--max-class-weight``;
see :func:`fit` for how these weights differ from ``edgeexit train --class-weighting balanced``),
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

from edgeexit.data.splits import assign_folds
from edgeexit.cv import compact_report
from edgeexit.data.mitbih import DS1, DS2, load_mitbih
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
    w = None
    if max_weight > 0:  # inverse frequency with mean 1 over the classes, capped at max_weight; N
        # then weighs about 0.2, so S can weigh ~50x N: more than training's class_weights
        # ("balanced": N weighs 1, the cap is relative to it), which found less S (README)
        counts = np.bincount(y, minlength=classes).astype(np.float64)
        w = np.minimum(np.where(counts > 0, counts.sum() / (classes * np.maximum(counts, 1)), 0.0),
                       max_weight).astype(np.float32)
    lin = torch.nn.Linear(x.shape[1], classes)
    opt = torch.optim.Adam(lin.parameters(), lr=1e-2)
    loss = torch.nn.CrossEntropyLoss(weight=None if w is None else torch.from_numpy(w))
    yt = torch.from_numpy(y)
    for _ in range(steps):
        opt.zero_grad()
        loss(lin(xt), yt).backward()
        opt.step()

    def predict(xn: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return lin(torch.tensor((xn - mu) / sd, dtype=torch.float32)).argmax(1).numpy()

    return predict


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
    train = load_mitbih(a.mitdb, DS1, morph_context=True)
    test = load_mitbih(a.mitdb, DS2, morph_context=True) if a.test else None
    classes = len(train.classes)
    xtr = scalars(train.x, train.channels)
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
               "cv_pooled": compact_report(classification_report(train.y, oof, train.classes))}
        if test is not None:
            pred = fit(xtr, train.y, classes, mw, a.seed)(scalars(test.x, test.channels))
            run["ds2"] = compact_report(classification_report(test.y, pred, test.classes))
        out["runs"].append(run)
        print(f"max class weight {mw:g}: CV mean {run['cv_mean']:.3f} (folds {per_fold}), pooled "
              f"{run['cv_pooled']['score']:.3f}, S {run['cv_pooled']['S']}"
              + (f"; DS2 {run['ds2']['score']:.3f}, S {run['ds2']['S']}, V {run['ds2']['V']}"
                 if test is not None else ""), file=sys.stderr)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    from edgeexit.errors import EdgeExitError

    try:
        sys.exit(main())
    except EdgeExitError as e:  # a missing directory or checkpoint: one line, not a traceback
        raise SystemExit(f"error: {e}") from None
