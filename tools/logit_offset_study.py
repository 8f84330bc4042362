"""Per-class logit offsets chosen on DS1 out-of-fold answers: does a shifted decision rule lift S on DS2?

Issue 14's S sensitivity sits at 20-36% where the target is 60%. A cheap lever that needs no new
training recipe: add one offset per class to the final exit's logits (N fixed at 0), choosing the
offsets on DS1 only, then apply them unchanged to DS2.

1. Out-of-fold logits on DS1: the cross-validation of the recipe (``--cv-json``, a
   ``tools/cv_search.py`` result: its config, overrides and best epoch) is trained again fold by
   fold for the best epoch count on the CV's own learning-rate schedule. That reproduces the
   CV's models at that epoch (same seed, same folds). The final exit's logits on each fold's
   held-out records are kept.
2. Offsets: coordinate search over a grid (``--grid``) that maximises the pooled out-of-fold
   macro-F1 (N/S/V/F, the CV's score). DS2 is not loaded until the offsets are fixed.
3. DS2: for every final-seed checkpoint of that recipe (``--checkpoints``), the final exit's
   macro-F1, S and V sensitivity/precision, without and with the offsets.

An offset on the logits is a shift of the last layer's bias, so a chosen one could be folded
into the exported head (nothing changes on the device). This tool only measures it.

    .venv/bin/python tools/logit_offset_study.py --mitdb ../shared/data/mitdb \\
        --cv-json runs/cv-search/cv-morph-rrscale-rraug-16ep.json \\
        --checkpoints runs/cv-search/final-morph-rrscale-rraug-16ep-seed{0,1,2,3,4}/model.pt \\
        --out runs/logit-offset --workers 2
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def _cv_search():
    spec = importlib.util.spec_from_file_location("cv_search", HERE / "cv_search.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["cv_search"] = mod
    spec.loader.exec_module(mod)
    return mod


def _fold_job(fold: int, a: dict) -> dict:
    """Train fold ``fold`` of the recipe's CV for the best epoch count; its held-out logits."""
    import torch

    from edgeexit.data.splits import assign_folds
    from edgeexit.train import train

    torch.set_num_threads(1)
    cvs = _cv_search()
    data, _ = cvs._load(a["mitdb"], False, a["overrides"])
    # the CV's own config (cv_search: _config, then cross_validate: select last, no patience)
    full = a["config"]["epochs"]
    cfg = cvs._config(a["overrides"], full, a["config"]["seed"])
    rebuilt = cfg.to_dict()
    assert all(rebuilt[k] == v for k, v in a["config"].items() if k not in ("select", "patience")), \
        "the recipe's config does not rebuild from its overrides"
    cfg = dataclasses.replace(cfg, epochs=a["epoch"], schedule_epochs=full, select="last", patience=0)
    fold_of = assign_folds(data.y, data.groups, a["folds"])
    held = np.array([fold_of[str(g)] for g in data.groups]) == fold
    got = {}

    def on_epoch(epoch, logits):
        if epoch == a["epoch"]:
            got["logits"] = logits[-1].astype(np.float32)  # the final exit

    t0 = time.perf_counter()
    train(data.subset(np.flatnonzero(~held)), cfg, val=data.subset(np.flatnonzero(held)),
          on_epoch=on_epoch)
    return {"fold": fold, "index": np.flatnonzero(held), "logits": got["logits"],
            "seconds": round(time.perf_counter() - t0, 1)}


def score(y: np.ndarray, logits: np.ndarray, offsets: np.ndarray, classes) -> dict:
    from edgeexit.cv import compact_report
    from edgeexit.metrics import classification_report

    return compact_report(classification_report(y, (logits + offsets).argmax(axis=1), classes))


def fit_offsets(y, logits, classes, grid, passes: int = 4) -> tuple[np.ndarray, float]:
    """Coordinate search: per class but the first (N), the offset in ``grid`` that maximises the
    pooled macro-F1; ``passes`` sweeps."""
    off = np.zeros(logits.shape[1])
    best = score(y, logits, off, classes)["score"]
    for _ in range(passes):
        moved = False
        for c in range(1, logits.shape[1]):
            for v in grid:
                trial = off.copy()
                trial[c] = v
                s = score(y, logits, trial, classes)["score"]
                if s > best + 1e-9:
                    best, off, moved = s, trial, True
        if not moved:
            break
    return off, best


def _ds2_logits(checkpoint: str, x: np.ndarray) -> np.ndarray:
    import torch

    from edgeexit.checkpoint import load_checkpoint

    model = load_checkpoint(checkpoint).model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(x), 2048):
            out.append(model(torch.from_numpy(x[i : i + 2048]))[-1].numpy())
    return np.concatenate(out)


def _row(name, r):
    s, v = r.get("S", {}), r.get("V", {})
    return (f"| {name} | {r['score']:.3f} | {100 * s.get('se', 0):.1f} / {100 * s.get('ppv', 0):.1f} | "
            f"{100 * v.get('se', 0):.1f} / {100 * v.get('ppv', 0):.1f} | {100 * r['accuracy']:.1f}% |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mitdb", required=True)
    ap.add_argument("--cv-json", required=True, type=Path)
    ap.add_argument("--checkpoints", nargs="+", required=True)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--folds", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--grid", default="-3:3:0.25", help="offset grid lo:hi:step (logit units)")
    args = ap.parse_args()
    cv = json.loads(args.cv_json.read_text())
    lo, hi, step = (float(v) for v in args.grid.split(":"))
    grid = np.round(np.arange(lo, hi + step / 2, step), 6)
    args.out.mkdir(parents=True, exist_ok=True)
    oof_path = args.out / "oof.npz"
    cvs = _cv_search()
    data, _ = cvs._load(args.mitdb, False, cv["overrides"])
    if oof_path.exists():
        logits = np.load(oof_path)["logits"]
        print(f"reusing {oof_path}", file=sys.stderr)
    else:
        a = {"mitdb": args.mitdb, "overrides": cv["overrides"], "config": cv["config"],
             "epoch": int(cv["best_epoch"]), "folds": args.folds}
        logits = np.zeros((len(data), len(data.classes)), np.float32)
        with ProcessPoolExecutor(args.workers) as ex:
            for r in ex.map(_fold_job, range(args.folds), [a] * args.folds):
                logits[r["index"]] = r["logits"]
                print(f"fold {r['fold']}: {r['seconds']} s", file=sys.stderr, flush=True)
        np.savez(oof_path, logits=logits, y=data.y)
    classes = data.classes
    none = np.zeros(len(classes))
    base = score(data.y, logits, none, classes)
    off, best = fit_offsets(data.y, logits, classes, grid)
    tuned = score(data.y, logits, off, classes)
    print(f"DS1 out-of-fold (epoch {cv['best_epoch']}; the CV reported pooled "
          f"{cv['pooled'][cv['best_epoch'] - 1][-1]['score']:.3f}): macro-F1 {base['score']:.3f} -> "
          f"{best:.3f} with offsets {dict(zip(classes, off.tolist()))}")
    _, test = cvs._load(args.mitdb, True, cv["overrides"])
    x = test.x.astype(np.float32)
    rows, results = [], []
    for ck in args.checkpoints:
        z = _ds2_logits(ck, x)
        r0, r1 = score(test.y, z, none, classes), score(test.y, z, off, classes)
        results.append({"checkpoint": ck, "without": r0, "with": r1})
        rows += [_row(f"{ck} without", r0), _row(f"{ck} **with offsets**", r1)]
    m0 = [r["without"]["score"] for r in results]
    m1 = [r["with"]["score"] for r in results]
    summary = {"offsets": dict(zip(classes, off.tolist())), "ds1_oof": {"without": base, "with": tuned},
               "ds2": results, "ds2_mean": [float(np.mean(m0)), float(np.mean(m1))],
               "ds2_spread": [float(np.ptp(m0)), float(np.ptp(m1))]}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print("| final exit on DS2 | macro-F1 | S se / ppv (%) | V se / ppv (%) | accuracy |")
    print("|---|---|---|---|---|")
    print(_row("DS1 out-of-fold without", base))
    print(_row("DS1 out-of-fold with offsets", tuned))
    print("\n".join(rows))
    print(f"DS2 mean macro-F1 {np.mean(m0):.3f} -> {np.mean(m1):.3f}; spread {np.ptp(m0):.3f} -> {np.ptp(m1):.3f}")


if __name__ == "__main__":
    main()
