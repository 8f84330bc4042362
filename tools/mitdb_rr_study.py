"""Why S and F beats of MIT-BIH DS2 are hard: where they come from, and an RR-only classifier.

Prints how many S and F beats the dominant record of each split holds, for record 232 the median pre-RR interval of its S and N beats, and trains a small
network on the RR context features alone (DS1 -> DS2, the same class weighting as `edgeexit train`)
to show how many DS2 S beats, and how many of record 232's, timing alone can find.

    .venv/bin/python tools/mitdb_rr_study.py --mitdb ../shared/data/mitdb
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from edgeexit.data.mitbih import load_mitbih_split
from edgeexit.metrics import classification_report
from edgeexit.train import class_weights


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mitdb", default="../shared/data/mitdb", help="WFDB directory")
    p.add_argument("--steps", type=int, default=300, help="full-batch Adam steps")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    train, test = load_mitbih_split(a.mitdb)
    s, n, f = (train.classes.index(c) for c in "SNF")
    pre = train.channels.index("pre_rr")
    in_232 = test.groups == "232"
    facts = {
        "ds2_S_beats": int((test.y == s).sum()),
        "record_232_S_beats": int((in_232 & (test.y == s)).sum()),
        "record_232_median_pre_rr_S_s": float(np.median(test.x[in_232 & (test.y == s), pre, 0])),
        "record_232_median_pre_rr_N_s": float(np.median(test.x[in_232 & (test.y == n), pre, 0])),
        "ds1_F_beats": int((train.y == f).sum()),
        "record_208_F_beats": int(((train.groups == "208") & (train.y == f)).sum()),
        "ds2_F_beats": int((test.y == f).sum()),
        "record_213_F_beats": int(((test.groups == "213") & (test.y == f)).sum()),
    }
    feats = slice(train.signal_channels, None)  # the RR context channels, constant over the window
    f_tr, f_te = train.x[:, feats, 0], test.x[:, feats, 0]
    mu, sd = f_tr.mean(0), f_tr.std(0)
    x_tr = torch.from_numpy((f_tr - mu) / sd)
    x_te = torch.from_numpy((f_te - mu) / sd)
    torch.manual_seed(a.seed)
    k = len(train.classes)
    net = torch.nn.Sequential(torch.nn.Linear(x_tr.shape[1], 32), torch.nn.ReLU(), torch.nn.Linear(32, k))
    w = class_weights(train.y, k, "sqrt", 10.0)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    y_tr = torch.from_numpy(train.y)
    for _ in range(a.steps):
        loss = torch.nn.functional.cross_entropy(net(x_tr), y_tr, weight=torch.from_numpy(w))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        pred = net(x_te).argmax(1).numpy()
    report = classification_report(test.y, pred, test.classes)
    facts["rr_only_S_sensitivity_DS2"] = report["per_class"]["S"]["sensitivity"]
    facts["rr_only_S_sensitivity_232"] = float((pred[in_232 & (test.y == s)] == s).mean())
    facts["rr_only_accuracy_DS2"] = report["accuracy"]
    print(json.dumps(facts, indent=2))


if __name__ == "__main__":
    main()
